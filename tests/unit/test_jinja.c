/* tests/unit/test_jinja.c - the Jinja2 interpreter and chat templates against Jinja2 itself.
 *
 * The references are tests/fixtures/chat_templates/: expected.json (public chat templates over
 * conversations with unicode, quotes and template syntax in content, rendered by Jinja2 as
 * transformers configures it) and constructs.json (one small template per construct), both made
 * by tests/fixtures/make_chat_template_fixtures.py. Outputs must match byte for byte; where Jinja2
 * fails the C renderer must fail too, and a raise_exception() must carry the same message.
 * The rest checks parse errors (with their line), limits, and model-directory loading. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/chat_template.h"
#include "engine/jinja.h"
#include "testutil.h"

#define CT_DIR YM_FIXTURE_DIR "/chat_templates"

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (p != NULL && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    fclose(f);
    if (p != NULL) {
        p[n] = '\0';
        *len = (size_t)n;
    }
    return p;
}

/* Print where got and want first differ; returns 1 when they are equal. */
static int same_bytes(const char *label, const char *got, size_t ng, const char *want, size_t nw)
{
    if (ng == nw && memcmp(got, want, nw) == 0)
        return 1;
    size_t i = 0;
    while (i < ng && i < nw && got[i] == want[i])
        i++;
    size_t from = i > 30 ? i - 30 : 0;
    fprintf(stderr, "%s: outputs differ at byte %zu (got %zu bytes, want %zu)\n", label, i, ng, nw);
    fprintf(stderr, "  got:  ...%.*s\n", (int)((ng - from) < 80 ? ng - from : 80), got + from);
    fprintf(stderr, "  want: ...%.*s\n", (int)((nw - from) < 80 ? nw - from : 80), want + from);
    return 0;
}

/* One case: render src with vars and compare with the Jinja2 result in c ("output" or
 * "error"). Returns 1 on agreement. */
static int check_case(const char *label, const char *src, size_t src_len, json_t *vars,
                      const json_t *c, int64_t now)
{
    ym_diag diag = { { 0 }, { 0 } };
    ym_jinja_t *t = NULL;
    const json_t *want = json_object_get(c, "output");
    const json_t *werr = json_object_get(c, "error");
    const char *wtype = json_string_value(json_object_get(werr, "type"));
    ym_err err = ym_jinja_parse(src, src_len, &t, &diag);
    if (err != YM_OK) {
        if (werr != NULL && strcmp(wtype, "syntax") == 0)
            return 1;
        fprintf(stderr, "%s: parse failed: %s\n", label, diag.msg);
        return 0;
    }
    char *out = NULL;
    size_t n = 0;
    ym_jinja_opts o = { .now = now };
    err = ym_jinja_render(t, vars, &o, &out, &n, &diag);
    ym_jinja_free(t);
    int ok;
    if (want != NULL) {
        if (err != YM_OK) {
            fprintf(stderr, "%s: render failed: %s\n", label, diag.msg);
            ok = 0;
        } else {
            ok = same_bytes(label, out, n, json_string_value(want), json_string_length(want));
        }
    } else if (err == YM_OK) {
        fprintf(stderr, "%s: rendered, but Jinja2 fails (%s: %s)\n", label, wtype,
                json_string_value(json_object_get(werr, "message")));
        ok = 0;
    } else if (strcmp(wtype, "raise") == 0) {
        const char *wmsg = json_string_value(json_object_get(werr, "message"));
        ok = strcmp(diag.param, YM_JINJA_RAISED) == 0 && strcmp(diag.msg, wmsg) == 0;
        if (!ok)
            fprintf(stderr, "%s: want raise_exception('%s'), got [%s] %s\n", label, wmsg, diag.param, diag.msg);
    } else if (strcmp(wtype, "syntax") == 0) {
        fprintf(stderr, "%s: Jinja2 rejects the template at parse time, we fail only when rendering\n", label);
        ok = 1; /* Jinja2 checks some names at compile time; failing at all is what matters */
    } else {
        ok = strcmp(diag.param, YM_JINJA_RAISED) != 0; /* a template error, not a raise */
        if (!ok)
            fprintf(stderr, "%s: want a %s, got a raise: %s\n", label, wtype, diag.msg);
    }
    free(out);
    return ok;
}

START_TEST(test_jinja_real_templates_match_jinja2)
{
    json_error_t je;
    json_t *exp = json_load_file(CT_DIR "/expected.json", 0, &je);
    json_t *man = json_load_file(CT_DIR "/MANIFEST.json", 0, &je);
    json_t *convs = json_load_file(CT_DIR "/conversations.json", 0, &je);
    ck_assert_msg(exp && man && convs, "fixtures: %s", je.text);
    int64_t now = json_integer_value(json_object_get(exp, "now"));
    size_t i, bad = 0, n_out = 0, n_raise = 0;
    json_t *c;
    json_array_foreach(json_object_get(exp, "cases"), i, c) {
        const char *file = json_string_value(json_object_get(c, "template"));
        const char *conv = json_string_value(json_object_get(c, "conversation"));
        const json_t *tm = NULL, *e;
        size_t k;
        json_array_foreach(json_object_get(man, "templates"), k, e)
            if (strcmp(json_string_value(json_object_get(e, "file")), file) == 0)
                tm = e;
        ck_assert_msg(tm != NULL, "%s not in MANIFEST.json", file);
        char path[1024];
        snprintf(path, sizeof(path), "%s/templates/%s", CT_DIR, file);
        size_t len;
        char *src = read_all(path, &len);
        ck_assert_msg(src != NULL, "cannot read %s", path);
        json_t *vars = json_pack("{s:O, s:n, s:n, s:O}", "messages", json_object_get(convs, conv),
                                 "tools", "documents", "add_generation_prompt",
                                 json_object_get(c, "add_generation_prompt"));
        if (json_object_get(c, "tools") != NULL)
            json_object_set(vars, "tools", json_object_get(c, "tools"));
        if (json_is_string(json_object_get(tm, "bos_token")))
            json_object_set(vars, "bos_token", json_object_get(tm, "bos_token"));
        if (json_is_string(json_object_get(tm, "eos_token")))
            json_object_set(vars, "eos_token", json_object_get(tm, "eos_token"));
        char label[512];
        snprintf(label, sizeof(label), "%s over %s (add_generation_prompt=%s)", file, conv,
                 json_is_true(json_object_get(c, "add_generation_prompt")) ? "true" : "false");
        bad += !check_case(label, src, len, vars, c, now);
        n_out += json_object_get(c, "output") != NULL;
        n_raise += json_object_get(c, "error") != NULL;
        json_decref(vars);
        free(src);
    }
    fprintf(stderr, "chat templates: %zu cases (%zu outputs, %zu errors), %zu disagree with Jinja2\n",
            json_array_size(json_object_get(exp, "cases")), n_out, n_raise, bad);
    ck_assert_int_gt(n_out, 300);
    ck_assert_uint_eq(bad, 0);
    json_decref(exp);
    json_decref(man);
    json_decref(convs);
}
END_TEST

START_TEST(test_jinja_constructs_match_jinja2)
{
    json_error_t je;
    json_t *exp = json_load_file(CT_DIR "/constructs.json", 0, &je);
    ck_assert_msg(exp != NULL, "constructs.json: %s", je.text);
    int64_t now = json_integer_value(json_object_get(exp, "now"));
    size_t i, bad = 0;
    json_t *c;
    json_array_foreach(json_object_get(exp, "cases"), i, c) {
        const json_t *src = json_object_get(c, "template");
        bad += !check_case(json_string_value(json_object_get(c, "name")), json_string_value(src),
                           json_string_length(src), json_object_get(c, "vars"), c, now);
    }
    fprintf(stderr, "constructs: %zu cases, %zu disagree with Jinja2\n",
            json_array_size(json_object_get(exp, "cases")), bad);
    ck_assert_uint_eq(bad, 0);
    json_decref(exp);
}
END_TEST

static ym_err parse_str(const char *src, ym_diag *diag)
{
    ym_jinja_t *t = NULL;
    ym_err err = ym_jinja_parse(src, strlen(src), &t, diag);
    ck_assert(err == YM_OK || t == NULL);
    ym_jinja_free(t);
    return err;
}

START_TEST(test_jinja_parse_errors_name_construct_and_line)
{
    static const struct {
        const char *src, *want;
    } cases[] = {
        { "a\n{{ x|nosuch }}", "line 2: unknown filter 'nosuch'" },
        { "{% if x is nosuch %}{% endif %}", "line 1: unknown test 'nosuch'" },
        { "\n\n{% frobnicate %}", "line 3: unknown tag 'frobnicate'" },
        { "{% for m in messages %}\n{% if x %}\n", "unclosed 'if' block (opened at line 2): expected 'elif'" },
        { "{% for m in messages %}\nx", "line 2: unclosed 'for' block (opened at line 1): expected 'else'" },
        { "{% endfor %}", "line 1: unexpected 'endfor' (no block is open)" },
        { "{% if x %}{% endfor %}", "line 1: unexpected 'endfor' in 'if' block (opened at line 1)" },
        { "x\n{{ 1 + }}", "line 2: unexpected end of print statement '}}'" },
        { "{{ 1", "line 1: unexpected end of template inside a variable tag (missing '}}')" },
        { "{# never closed", "line 1: missing end of comment tag" },
        { "{{ 'abc }}", "line 1: unterminated string literal" },
        { "{{ (1 }}", "line 1: unexpected '}', expected ')'" },
        { "{% for x in y recursive %}{% endfor %}", "line 1: recursive for loops are not supported" },
        { "{{ a ? b }}", "line 1: unexpected character '?' in a tag" },
        { "{% raw %}never closed", "line 1: missing end of raw directive" },
        { "{% set %}", "line 1: expected a name, got end of statement block '%}'" },
        { "{{ 99999999999999999999 }}", "line 1: integer literal 99999999999999999999 is too large" },
        { "\xff{{ x }}", "template is not valid UTF-8" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ym_diag diag = { { 0 }, { 0 } };
        ck_assert_int_eq(parse_str(cases[i].src, &diag), YM_EINVAL);
        ck_assert_msg(strstr(diag.msg, cases[i].want) != NULL, "%s: got '%s', want '%s'",
                      cases[i].src, diag.msg, cases[i].want);
    }
}
END_TEST

static ym_err render_str(const char *src, const char *vars_json, const ym_jinja_opts *o,
                         char **out, ym_diag *diag)
{
    ym_jinja_t *t = NULL;
    ym_err err = ym_jinja_parse(src, strlen(src), &t, diag);
    ck_assert_msg(err == YM_OK, "%s: %s", src, diag->msg);
    json_t *vars = vars_json ? json_loads(vars_json, 0, NULL) : NULL;
    err = ym_jinja_render(t, vars, o, out, NULL, diag);
    json_decref(vars);
    ym_jinja_free(t);
    return err;
}

START_TEST(test_jinja_runtime_errors_and_limits)
{
    ym_diag diag = { { 0 }, { 0 } };
    char *out = NULL;
    /* an undefined value used: Jinja2's message, with our line */
    ck_assert_int_eq(render_str("\n{{ x.y }}", NULL, NULL, &out, &diag), YM_EINVAL);
    ck_assert_str_eq(diag.msg, "line 2: 'x' is undefined");
    ck_assert_str_eq(diag.param, "template");
    ck_assert_ptr_null(out);
    /* raise_exception: the message alone */
    ck_assert_int_eq(render_str("{{ raise_exception('no ' ~ 1) }}", NULL, NULL, &out, &diag), YM_EINVAL);
    ck_assert_str_eq(diag.msg, "no 1");
    ck_assert_str_eq(diag.param, YM_JINJA_RAISED);
    /* a template that would run for ever stops at the step limit */
    ym_jinja_opts o = { .max_steps = 100000 };
    ck_assert_int_eq(render_str("{% for i in range(100000) %}{% for j in range(100000) %}"
                                "{% endfor %}{% endfor %}", NULL, &o, &out, &diag), YM_EINVAL);
    ck_assert_msg(strstr(diag.msg, "steps") != NULL, "%s", diag.msg);
    /* output and memory limits */
    ym_jinja_opts o2 = { .max_output = 1000 };
    ck_assert_int_eq(render_str("{% for i in range(1000) %}xx{% endfor %}", NULL, &o2, &out, &diag), YM_EINVAL);
    ck_assert_msg(strstr(diag.msg, "output longer") != NULL, "%s", diag.msg);
    ym_jinja_opts o3 = { .max_memory = 1 << 20 };
    ck_assert_int_eq(render_str("{% set ns = namespace(s='x') %}{% for i in range(40) %}"
                                "{% set ns.s = ns.s ~ ns.s %}{% endfor %}", NULL, &o3, &out, &diag), YM_EINVAL);
    /* runaway recursion and self-holding values stop with an error, not a crash */
    ck_assert_int_eq(render_str("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, NULL, &out, &diag), YM_EINVAL);
    ck_assert_msg(strstr(diag.msg, "recursion") != NULL, "%s", diag.msg);
    ck_assert_int_eq(render_str("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", NULL, NULL, &out, &diag), YM_EINVAL);
    ck_assert_int_eq(render_str("{% set ns = namespace() %}{% set ns.me = [ns] %}{{ ns.me|tojson }}", NULL, NULL, &out, &diag), YM_EINVAL);
    /* vars must be an object */
    ck_assert_int_eq(render_str("x", "[1]", NULL, &out, &diag), YM_EINVAL);
    /* NUL bytes pass through with their length */
    size_t n = 0;
    ym_jinja_t *t = NULL;
    ck_assert_int_eq(ym_jinja_parse("a\0b{{ 'c' }}", 12, &t, &diag), YM_OK);
    ck_assert_int_eq(ym_jinja_render(t, NULL, NULL, &out, &n, &diag), YM_OK);
    ck_assert_uint_eq(n, 4);
    ck_assert(memcmp(out, "a\0bc", 4) == 0);
    free(out);
    ym_jinja_free(t);
}
END_TEST

START_TEST(test_jinja_parsed_once_renders_many_times)
{
    ym_diag diag = { { 0 }, { 0 } };
    ym_jinja_t *t = NULL;
    const char *src = "{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}";
    ck_assert_int_eq(ym_jinja_parse(src, strlen(src), &t, &diag), YM_OK);
    for (int i = 0; i < 50; i++) {
        json_t *vars = json_pack("{s:[{s:s,s:i}]}", "messages", "role", "user", "content", i);
        char *out = NULL, want[64];
        ck_assert_int_eq(ym_jinja_render(t, vars, NULL, &out, NULL, &diag), YM_OK);
        snprintf(want, sizeof(want), "user:%d;", i);
        ck_assert_str_eq(out, want);
        free(out);
        json_decref(vars);
    }
    ym_jinja_free(t);
}
END_TEST

/* A model directory with the given files (NULL content: absent). */
static void write_file(const char *dir, const char *name, const char *content)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (content == NULL) {
        unlink(path);
        return;
    }
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(content, f);
    fclose(f);
}

static char *apply(const char *dir, const char *messages, int agp, ym_err *err, ym_diag *diag)
{
    ym_chat_template_t *ct = NULL;
    *err = ym_chat_template_load(dir, &ct, diag);
    if (*err != YM_OK)
        return NULL;
    json_t *m = json_loads(messages, 0, NULL);
    char *out = NULL;
    *err = ym_chat_template_apply(ct, m, agp, NULL, &out, NULL, diag);
    json_decref(m);
    ym_chat_template_free(ct);
    return out;
}

START_TEST(test_chat_template_loads_model_directory)
{
    char dir[] = "/tmp/ym_ct_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ym_diag diag = { { 0 }, { 0 } };
    ym_err err;
    const char *msgs = "[{\"role\":\"user\",\"content\":\"hi\"}]";
    char *out;

    /* nothing there */
    ck_assert_ptr_null(apply(dir, msgs, 0, &err, &diag));
    ck_assert_int_eq(err, YM_ENOENT);
    /* a string template, token strings and {"content": ...} objects */
    write_file(dir, "tokenizer_config.json",
               "{\"bos_token\": \"<s>\", \"eos_token\": {\"content\": \"</s>\", \"lstrip\": false},"
               " \"chat_template\": \"{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}"
               "{% if add_generation_prompt %}>{% endif %}{{ eos_token }}{{ tools }}\"}");
    out = apply(dir, msgs, 1, &err, &diag);
    ck_assert_msg(err == YM_OK, "%s", diag.msg);
    ck_assert_str_eq(out, "<s>[hi]></s>None");
    free(out);
    /* the list of named templates: "default" */
    write_file(dir, "tokenizer_config.json",
               "{\"bos_token\": null, \"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"},"
               " {\"name\": \"default\", \"template\": \"D{{ bos_token is defined }}\"}]}");
    out = apply(dir, msgs, 0, &err, &diag);
    ck_assert_msg(err == YM_OK, "%s", diag.msg);
    ck_assert_str_eq(out, "DFalse");
    free(out);
    write_file(dir, "tokenizer_config.json", "{\"chat_template\": [{\"name\": \"x\", \"template\": \"T\"}]}");
    ck_assert_ptr_null(apply(dir, msgs, 0, &err, &diag));
    ck_assert_int_eq(err, YM_EFORMAT);
    ck_assert_msg(strstr(diag.msg, "'default'") != NULL, "%s", diag.msg);
    /* chat_template.jinja wins over tokenizer_config.json's, which still gives the tokens */
    write_file(dir, "tokenizer_config.json", "{\"eos_token\": \"E\", \"chat_template\": \"old\"}");
    write_file(dir, "chat_template.jinja", "new{{ eos_token }}\n");
    out = apply(dir, msgs, 0, &err, &diag);
    ck_assert_msg(err == YM_OK, "%s", diag.msg);
    ck_assert_str_eq(out, "newE");
    free(out);
    /* malformed files */
    write_file(dir, "chat_template.jinja", "{% if %}");
    ck_assert_ptr_null(apply(dir, msgs, 0, &err, &diag));
    ck_assert_int_eq(err, YM_EFORMAT);
    ck_assert_msg(strstr(diag.msg, "chat_template.jinja: line 1") != NULL, "%s", diag.msg);
    write_file(dir, "chat_template.jinja", NULL);
    write_file(dir, "tokenizer_config.json", "{\"chat_template\": 5}");
    ck_assert_ptr_null(apply(dir, msgs, 0, &err, &diag));
    ck_assert_int_eq(err, YM_EFORMAT);
    write_file(dir, "tokenizer_config.json", "{\"chat_template\": \"x\", \"bos_token\": 1}");
    ck_assert_ptr_null(apply(dir, msgs, 0, &err, &diag));
    ck_assert_int_eq(err, YM_EFORMAT);
    write_file(dir, "tokenizer_config.json", "{not json");
    ck_assert_ptr_null(apply(dir, msgs, 0, &err, &diag));
    ck_assert_int_eq(err, YM_EFORMAT);
    /* messages must be an array */
    write_file(dir, "tokenizer_config.json", "{\"chat_template\": \"x\"}");
    ck_assert_ptr_null(apply(dir, "{}", 0, &err, &diag));
    ck_assert_int_eq(err, YM_EINVAL);
    write_file(dir, "tokenizer_config.json", NULL);
    rmdir(dir);
}
END_TEST

START_TEST(test_chat_template_default_model_renders_as_jinja2)
{
    /* The embedded model's template, through the loader, against the Jinja2 fixture. */
    json_error_t je;
    json_t *exp = json_load_file(CT_DIR "/shakespeare.json", 0, &je);
    ck_assert_msg(exp != NULL, "shakespeare.json: %s", je.text);
    ym_chat_template_t *ct = NULL;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_msg(ym_chat_template_load(YM_FIXTURE("../../models/shakespeare-mamba"), &ct, &diag) == YM_OK,
                  "%s", diag.msg);
    size_t i, bad = 0;
    json_t *c;
    json_array_foreach(json_object_get(exp, "cases"), i, c) {
        char *out = NULL;
        size_t n = 0;
        ym_err err = ym_chat_template_apply(ct, json_object_get(c, "messages"),
                                            json_is_true(json_object_get(c, "add_generation_prompt")),
                                            NULL, &out, &n, &diag);
        const json_t *want = json_object_get(c, "output");
        if (want == NULL) {
            bad += err == YM_OK;
        } else if (err != YM_OK) {
            fprintf(stderr, "shakespeare case %zu: %s\n", i, diag.msg);
            bad++;
        } else {
            bad += !same_bytes("shakespeare", out, n, json_string_value(want), json_string_length(want));
        }
        free(out);
    }
    ck_assert_uint_eq(bad, 0);
    ym_chat_template_free(ct);
    json_decref(exp);
}
END_TEST

Suite *jinja_suite(void)
{
    Suite *s = suite_create("jinja");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_jinja_real_templates_match_jinja2);
    tcase_add_test(tc, test_jinja_constructs_match_jinja2);
    tcase_add_test(tc, test_jinja_parse_errors_name_construct_and_line);
    tcase_add_test(tc, test_jinja_runtime_errors_and_limits);
    tcase_add_test(tc, test_jinja_parsed_once_renders_many_times);
    tcase_add_test(tc, test_chat_template_loads_model_directory);
    tcase_add_test(tc, test_chat_template_default_model_renders_as_jinja2);
    suite_add_tcase(s, tc);
    return s;
}

/* tests/unit/test_tokenizer.c - tokenizer.json byte-level BPE against Hugging Face tokenizers.
 *
 * References: tests/fixtures/<name>/cases.json (ids from HF tokenizers, see each README), and the
 * inline ids of the variant tests below, produced by HF tokenizers 0.23.2 (its Node binding,
 * encode(text, add_special_tokens=false)) on the GPT-NeoX tokenizer.json edited the same way
 * the test edits it. Every fixture directory with both tokenizer.json and cases.json is run. */
#include <dirent.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/tokenizer.h"
#include "engine/tokenizer_int.h"
#include "testutil.h"

#define REPL "\xEF\xBF\xBD" /* U+FFFD */

static ym_tok_t *neox; /* loaded once per test process (checked fixture) */

static void neox_setup(void)
{
    ym_diag diag = {0};
    ym_err err = ym_tok_load(YM_FIXTURE("gpt-neox/tokenizer.json"), &neox, &diag);
    ck_assert_msg(err == YM_OK, "load: %s", diag.msg);
}

static void neox_teardown(void)
{
    ym_tok_free(neox);
    neox = NULL;
}

static ym_ids encode(const ym_tok_t *tok, const char *s, size_t n)
{
    ym_ids ids = {0};
    ck_assert_int_eq(ym_tok_encode(tok, s, n, &ids), YM_OK);
    return ids;
}

static void print_ids(const char *what, const int32_t *v, size_t n)
{
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, " %d", v[i]);
    fprintf(stderr, "\n");
}

/* Runs one cases.json against a loaded tokenizer; returns the number of failing cases. */
static int run_cases(const ym_tok_t *tok, const char *cases_path)
{
    json_error_t jerr;
    json_t *root = json_load_file(cases_path, 0, &jerr);
    ck_assert_msg(root != NULL, "%s: %s", cases_path, jerr.text);
    json_t *cases = json_object_get(root, "cases");
    ck_assert_msg(json_is_array(cases) && json_array_size(cases) > 0, "%s: no cases", cases_path);
    bool prefix = ym__tok_adds_prefix_space(tok);
    int bad = 0;
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        json_t *text = json_object_get(c, "text");
        json_t *want = json_object_get(c, "ids");
        ck_assert(json_is_string(text) && json_is_array(want));
        const char *s = json_string_value(text);
        size_t n = json_string_length(text);
        ym_ids got = encode(tok, s, n);
        bool same = got.n == json_array_size(want);
        for (size_t k = 0; same && k < got.n; k++)
            same = got.v[k] == (int32_t)json_integer_value(json_array_get(want, k));
        if (!same) {
            fprintf(stderr, "%s case %zu: ids differ from HF for \"%s\"\n", cases_path, i, s);
            print_ids("got", got.v, got.n);
            bad++;
        }
        /* decode(encode(x)) gives x back as the normalizer left it (a prefix space aside). */
        char *dec, *norm;
        size_t dn, nn;
        ck_assert_int_eq(ym_tok_decode(tok, got.v, got.n, &dec, &dn), YM_OK);
        ck_assert_int_eq(ym__tok_normalize(tok, s, n, &norm, &nn), YM_OK);
        json_t *want_dec = json_object_get(c, "decoded");
        if (json_is_string(want_dec)) {
            if (dn != json_string_length(want_dec) ||
                memcmp(dec, json_string_value(want_dec), dn) != 0) {
                fprintf(stderr, "%s case %zu: decoded \"%s\", want \"%s\"\n", cases_path, i, dec,
                        json_string_value(want_dec));
                bad++;
            }
        } else if (!prefix && (dn != nn || memcmp(dec, norm, dn) != 0)) {
            fprintf(stderr, "%s case %zu: decode(encode(x)) = \"%s\", want \"%s\"\n", cases_path, i,
                    dec, norm);
            bad++;
        }
        free(dec);
        free(norm);
        ym_ids_deinit(&got);
    }
    json_decref(root);
    return bad;
}

START_TEST(test_tok_gpt_neox_cases_match_hf)
{
    ck_assert_int_eq(run_cases(neox, YM_FIXTURE("gpt-neox/cases.json")), 0);
}
END_TEST

START_TEST(test_tok_gpt_neox_decode_gives_text_back)
{
    json_t *root = json_load_file(YM_FIXTURE("gpt-neox/cases.json"), 0, NULL);
    ck_assert_ptr_nonnull(root);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(root, "cases"), i, c)
    {
        json_t *text = json_object_get(c, "text");
        ym_ids ids = encode(neox, json_string_value(text), json_string_length(text));
        char *dec;
        size_t dn;
        ck_assert_int_eq(ym_tok_decode(neox, ids.v, ids.n, &dec, &dn), YM_OK);
        ck_assert_uint_eq(dn, json_string_length(text));
        ck_assert_mem_eq(dec, json_string_value(text), dn);
        ck_assert_uint_eq(strlen(dec), dn);
        free(dec);
        ym_ids_deinit(&ids);
    }
    json_decref(root);
}
END_TEST

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

START_TEST(test_tok_every_fixture_matches_hf)
{
    DIR *d = opendir(YM_FIXTURE_DIR);
    ck_assert_ptr_nonnull(d);
    struct dirent *de;
    int n_dirs = 0, bad = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char tj[4096], cj[4096];
        snprintf(tj, sizeof(tj), "%s/%s/tokenizer.json", YM_FIXTURE_DIR, de->d_name);
        snprintf(cj, sizeof(cj), "%s/%s/cases.json", YM_FIXTURE_DIR, de->d_name);
        if (!file_exists(tj) || !file_exists(cj))
            continue;
        ym_tok_t *tok;
        ym_diag diag = {0};
        ym_err err = ym_tok_load(tj, &tok, &diag);
        ck_assert_msg(err == YM_OK, "%s: %s", tj, diag.msg);
        bad += run_cases(tok, cj);
        ym_tok_free(tok);
        n_dirs++;
    }
    closedir(d);
    ck_assert_int_ge(n_dirs, 1);
    ck_assert_int_eq(bad, 0);
}
END_TEST

START_TEST(test_tok_lookups_and_token_bytes)
{
    ck_assert_int_eq(ym_tok_n_vocab(neox), 50277);
    ck_assert_int_eq(ym_tok_eos_id(neox), 0);
    ck_assert_int_eq(ym_tok_id(neox, "<|endoftext|>"), 0);
    ck_assert_int_eq(ym_tok_id(neox, "<|padding|>"), 1);
    ck_assert_int_eq(ym_tok_id(neox, "Hello"), 12092);
    ck_assert_int_eq(ym_tok_id(neox, "\xC4\xA0Hello"), 24387); /* "ĠHello" */
    ck_assert_int_eq(ym_tok_id(neox, "no such token here"), -1);
    ck_assert(ym_tok_is_special(neox, 0));
    ck_assert(ym_tok_is_special(neox, 1));
    ck_assert(!ym_tok_is_special(neox, 50274)); /* added, not special */
    ck_assert(!ym_tok_is_special(neox, 12092));
    ck_assert(!ym_tok_is_special(neox, -1));
    ck_assert(!ym_tok_is_special(neox, 50277));
    size_t n;
    const char *b = ym_tok_token_bytes(neox, 24387, &n);
    ck_assert_uint_eq(n, 6);
    ck_assert_mem_eq(b, " Hello", 6);
    b = ym_tok_token_bytes(neox, 50274, &n);
    ck_assert_uint_eq(n, 4);
    ck_assert_mem_eq(b, "    ", 4);
    b = ym_tok_token_bytes(neox, 0, &n);
    ck_assert_uint_eq(n, 13);
    ck_assert_mem_eq(b, "<|endoftext|>", 13);
    /* 🦙 is [22692, 101, 236] after a space: partial UTF-8 per token. */
    b = ym_tok_token_bytes(neox, 101, &n);
    ck_assert_uint_eq(n, 1);
    ck_assert_ptr_null(ym_tok_token_bytes(neox, -1, &n));
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(ym_tok_token_bytes(neox, 50277, &n));
}
END_TEST

START_TEST(test_tok_decode_rejects_unknown_id)
{
    int32_t ids[] = {12092, 50277};
    char *text = (char *)1;
    size_t n = 7;
    ck_assert_int_eq(ym_tok_decode(neox, ids, 2, &text, &n), YM_EINVAL);
    ck_assert_ptr_null(text);
    ids[1] = -5;
    ck_assert_int_eq(ym_tok_decode(neox, ids, 2, &text, &n), YM_EINVAL);
    ck_assert_int_eq(ym_tok_decode(neox, NULL, 0, &text, &n), YM_OK);
    ck_assert_str_eq(text, "");
    ck_assert_uint_eq(n, 0);
    free(text);
}
END_TEST

START_TEST(test_tok_decode_replaces_partial_utf8_like_from_utf8_lossy)
{
    /* " 🦙" is [22692, 101, 236]; its first two tokens end inside the emoji. */
    int32_t ids[] = {22692, 101};
    char *text;
    size_t n;
    ck_assert_int_eq(ym_tok_decode(neox, ids, 2, &text, &n), YM_OK);
    ck_assert_str_eq(text, " " REPL); /* F0 9F A6: one maximal invalid subpart */
    free(text);
}
END_TEST

/* Invalid input bytes become U+FFFD per maximal invalid subpart, as String::from_utf8_lossy
 * (the expected strings follow the Rust documentation's rule), then tokenize as that text. */
START_TEST(test_tok_invalid_utf8_encodes_as_replacement_chars)
{
    static const struct {
        const char *in;
        size_t n;
        const char *lossy;
        size_t ln;
    } cases[] = {
        /* Octal escapes, so that a letter after one is not read as a hex digit. */
        {"a\200b", 3, "a" REPL "b", 5},
        {"\342\202A", 3, REPL "A", 4},                    /* truncated 3-byte sequence: one */
        {"\360\200x", 3, REPL REPL "x", 7},               /* F0 80 can never start a char */
        {"\355\240\200", 3, REPL REPL REPL, 9},           /* a surrogate */
        {"\300\257", 2, REPL REPL, 6},                    /* overlong */
        {"\364\220\200\200", 4, REPL REPL REPL REPL, 12}, /* above U+10FFFF */
        {"\377 Hello \360\237\246", 11, REPL " Hello " REPL, 13},
        {"x\000y", 3, "x\000y", 3}, /* NUL is valid */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t ln = cases[i].ln;
        ym_ids got = encode(neox, cases[i].in, cases[i].n);
        ym_ids want = encode(neox, cases[i].lossy, ln);
        ck_assert_msg(got.n == want.n && memcmp(got.v, want.v, got.n * sizeof(int32_t)) == 0,
                      "case %zu", i);
        char *dec;
        size_t dn;
        ck_assert_int_eq(ym_tok_decode(neox, got.v, got.n, &dec, &dn), YM_OK);
        ck_assert_uint_eq(dn, ln);
        ck_assert_mem_eq(dec, cases[i].lossy, ln);
        free(dec);
        ym_ids_deinit(&got);
        ym_ids_deinit(&want);
    }
}
END_TEST

START_TEST(test_tok_encode_appends_to_ids)
{
    ym_ids ids = {0};
    ck_assert_int_eq(ym_tok_encode(neox, "Hello", 5, &ids), YM_OK);
    ck_assert_int_eq(ym_tok_encode(neox, " world", 6, &ids), YM_OK);
    ck_assert_uint_eq(ids.n, 2);
    ck_assert_int_eq(ids.v[0], 12092);
    ck_assert_int_eq(ids.v[1], 1533);
    ck_assert_int_eq(ym_tok_encode(neox, NULL, 0, &ids), YM_OK);
    ck_assert_uint_eq(ids.n, 2);
    ym_ids_deinit(&ids);
    ym_ids_deinit(&ids); /* leaves {0}; twice is fine */
    ym_ids_deinit(NULL);
}
END_TEST

/* Long inputs: one huge word (the heap path), long space runs (added tokens back to back). */
START_TEST(test_tok_long_inputs_round_trip)
{
    size_t n = 200000;
    char *s = malloc(n);
    ck_assert_ptr_nonnull(s);
    for (size_t i = 0; i < n; i++)
        s[i] = (char)('a' + (i * 7 % 26));
    memset(s + 1000, ' ', 5000);
    memset(s + 100000, '\n', 3000);
    ym_ids ids = encode(neox, s, n);
    ck_assert_uint_gt(ids.n, 0);
    char *dec;
    size_t dn;
    ck_assert_int_eq(ym_tok_decode(neox, ids.v, ids.n, &dec, &dn), YM_OK);
    ck_assert_uint_eq(dn, n);
    ck_assert(memcmp(dec, s, n) == 0);
    free(dec);
    free(s);
    ym_ids_deinit(&ids);
}
END_TEST

typedef struct job {
    const char *text;
    size_t n;
    ym_ids ids;
    ym_err err;
} job;

static void *encode_job(void *arg)
{
    job *j = arg;
    for (int r = 0; r < 3; r++) {
        j->ids.n = 0;
        j->err = ym_tok_encode(neox, j->text, j->n, &j->ids);
    }
    return NULL;
}

START_TEST(test_tok_encode_from_many_threads_gives_same_ids)
{
    json_t *root = json_load_file(YM_FIXTURE("gpt-neox/cases.json"), 0, NULL);
    ck_assert_ptr_nonnull(root);
    char *text = NULL;
    size_t n = 0;
    for (int rep = 0; rep < 40; rep++) {
        size_t i;
        json_t *c;
        json_array_foreach(json_object_get(root, "cases"), i, c)
        {
            json_t *t = json_object_get(c, "text");
            text = realloc(text, n + json_string_length(t) + 1);
            memcpy(text + n, json_string_value(t), json_string_length(t));
            n += json_string_length(t);
            text[n++] = (char)('a' + rep % 26);
        }
    }
    json_decref(root);
    ym_ids want = encode(neox, text, n);
    enum { N_THREADS = 4 };
    job jobs[N_THREADS];
    pthread_t th[N_THREADS];
    for (int k = 0; k < N_THREADS; k++) {
        jobs[k] = (job){.text = text, .n = n};
        ck_assert_int_eq(pthread_create(&th[k], NULL, encode_job, &jobs[k]), 0);
    }
    for (int k = 0; k < N_THREADS; k++) {
        pthread_join(th[k], NULL);
        ck_assert_int_eq(jobs[k].err, YM_OK);
        ck_assert_uint_eq(jobs[k].ids.n, want.n);
        ck_assert(memcmp(jobs[k].ids.v, want.v, want.n * sizeof(int32_t)) == 0);
        ym_ids_deinit(&jobs[k].ids);
    }
    ym_ids_deinit(&want);
    free(text);
}
END_TEST

/* ---- variants of the GPT-NeoX tokenizer.json, checked against HF ------------------------- */

static const char GPT2_RE[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static void add_token(json_t *added, int id, const char *content, bool single_word, bool lstrip,
                      bool rstrip, bool normalized, bool special)
{
    json_array_append_new(added,
                          json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", id, "content", content,
                                    "single_word", single_word, "lstrip", lstrip, "rstrip", rstrip,
                                    "normalized", normalized, "special", special));
}

/* Variant A: prefix space, Sequence[NFKC, Lowercase], merges as pairs, added tokens with each
 * flag. Variant B: Sequence[Split(GPT-2), ByteLevel(use_regex=false)], ignore_merges. */
static ym_tok_t *load_variant(char which)
{
    json_t *root = json_load_file(YM_FIXTURE("gpt-neox/tokenizer.json"), 0, NULL);
    ck_assert_ptr_nonnull(root);
    json_t *model = json_object_get(root, "model");
    if (which == 'A') {
        json_object_set_new(json_object_get(root, "pre_tokenizer"), "add_prefix_space",
                            json_true());
        json_object_set_new(root, "normalizer",
                            json_pack("{s:s,s:[{s:s},{s:s}]}", "type", "Sequence", "normalizers",
                                      "type", "NFKC", "type", "Lowercase"));
        json_t *merges = json_object_get(model, "merges");
        json_t *pairs = json_array();
        size_t i;
        json_t *m;
        json_array_foreach(merges, i, m)
        {
            const char *s = json_string_value(m);
            const char *sp = strchr(s, ' ');
            json_array_append_new(pairs, json_pack("[s%s]", s, (size_t)(sp - s), sp + 1));
        }
        json_object_set_new(model, "merges", pairs);
        json_t *added = json_object_get(root, "added_tokens");
        add_token(added, 50277, "<mask>", false, true, false, false, true);
        add_token(added, 50278, "[X]", false, false, true, false, true);
        add_token(added, 50279, "qxw", true, false, false, false, false);
        add_token(added, 50280, "Caf\xC3\xA9", false, false, false, true, false);
    } else {
        json_object_set_new(root, "pre_tokenizer",
                            json_pack("{s:s,s:[{s:s,s:{s:s},s:s,s:b},{s:s,s:b,s:b,s:b}]}", "type",
                                      "Sequence", "pretokenizers", "type", "Split", "pattern",
                                      "Regex", GPT2_RE, "behavior", "Isolated", "invert", 0, "type",
                                      "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1,
                                      "use_regex", 0));
        json_object_set_new(model, "ignore_merges", json_true());
    }
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    ym_tok_t *tok;
    ym_diag diag = {0};
    ym_err err = ym_tok_parse(s, strlen(s), &tok, &diag);
    free(s);
    ck_assert_msg(err == YM_OK, "variant %c: %s", which, diag.msg);
    return tok;
}

typedef struct vcase {
    const char *text;
    int32_t ids[20];
    int n;
} vcase;

static const char *const VTEXT[] = {
    "Hello World",                                      /* 0 */
    "a <mask> b  <mask>c",                              /* 1 */
    "x [X]   y",                                        /* 2 */
    "qxw qxws aqxw _qxw qxw.",                          /* 3 */
    "CAF\xC3\x89 Caf\xC3\xA9 cafe\xCC\x81 caf\xC3\xA9", /* 4: CAFÉ Café café café */
    /* 5: ﬁne ① ½ ＡＢＣ */
    "\xEF\xAC\x81ne \xE2\x91\xA0 \xC2\xBD \xEF\xBC\xA1\xEF\xBC\xA2\xEF\xBC\xA3",
    "\xC4\xB0stanbul \xCE\xA3\xCE\x91\xCE\xA3", /* 6: İstanbul ΣΑΣ */
    "<|endoftext|>Hi<|endoftext|>",             /* 7 */
    "    Hello\n    Hello",                     /* 8 */
    "It's 'RE 'll  don't",                      /* 9 */
    "\xC2\xA0\xE3\x80\x80x\xE2\x80\xA8y",       /* 10: NBSP, U+3000, x, U+2028, y */
};

#define IDS(...) {__VA_ARGS__}, (sizeof((int32_t[]){__VA_ARGS__}) / sizeof(int32_t))

static void check_variant(char which, const vcase *vc, size_t n_vc)
{
    ym_tok_t *tok = load_variant(which);
    int bad = 0;
    for (size_t i = 0; i < n_vc; i++) {
        ym_ids got = encode(tok, vc[i].text, strlen(vc[i].text));
        if (got.n != (size_t)vc[i].n || memcmp(got.v, vc[i].ids, got.n * sizeof(int32_t)) != 0) {
            fprintf(stderr, "variant %c case %zu (\"%s\"): ids differ from HF\n", which, i,
                    vc[i].text);
            print_ids("got ", got.v, got.n);
            print_ids("want", vc[i].ids, (size_t)vc[i].n);
            bad++;
        }
        ym_ids_deinit(&got);
    }
    ym_tok_free(tok);
    ck_assert_int_eq(bad, 0);
}

START_TEST(test_tok_variant_prefix_nfkc_lower_added_flags_match_hf)
{
    const vcase vc[] = {
        {VTEXT[0], IDS(23120, 1533)},
        {VTEXT[1], IDS(247, 50277, 270, 50277, 260)},
        {VTEXT[2], IDS(1269, 209, 50278, 340)},
        {VTEXT[3], IDS(50279, 2805, 89, 8819, 247, 82, 89, 88, 795, 82, 89, 88, 209, 50279, 964)},
        {VTEXT[4], IDS(50280, 209, 50280, 209, 50280, 209, 50280)},
        {VTEXT[5], IDS(4030, 337, 337, 40859, 19, 490, 68)},
        {VTEXT[6], IDS(891, 136, 218, 36563, 9529, 40051)},
        {VTEXT[7], IDS(0, 14260, 0)},
        {VTEXT[8], IDS(50274, 23120, 187, 50274, 23120)},
        {VTEXT[9], IDS(352, 434, 686, 250, 686, 620, 50276, 1053, 626)},
        {VTEXT[10], IDS(50276, 1269, 40702, 90)},
    };
    check_variant('A', vc, sizeof(vc) / sizeof(vc[0]));
}
END_TEST

START_TEST(test_tok_variant_split_sequence_ignore_merges_match_hf)
{
    const vcase vc[] = {
        {VTEXT[0], IDS(12092, 3645)},
        {VTEXT[1], IDS(66, 654, 12477, 31, 270, 50276, 29, 12477, 31, 68)},
        {VTEXT[2], IDS(89, 544, 57, 62, 50275, 90)},
        {VTEXT[3],
         IDS(82, 89, 88, 2805, 89, 8819, 247, 82, 89, 88, 795, 82, 89, 88, 2805, 89, 88, 15)},
        {VTEXT[4], IDS(4280, 39, 17483, 42107, 860, 36241, 36241)},
        {VTEXT[5], IDS(46992, 212, 570, 3384, 228, 243, 24142, 209, 3193, 96, 3193, 97, 3193, 98)},
        {VTEXT[6], IDS(128, 110, 36563, 37849, 138, 228, 138, 98)},
        {VTEXT[7], IDS(0, 12764, 0)},
        {VTEXT[8], IDS(50274, 12092, 187, 50274, 12092)},
        {VTEXT[9], IDS(1147, 434, 686, 1848, 686, 620, 50276, 9903, 626)},
        {VTEXT[10], IDS(575, 19409, 89, 40702, 90)},
    };
    check_variant('B', vc, sizeof(vc) / sizeof(vc[0]));
}
END_TEST

/* ---- malformed tokenizer.json ------------------------------------------------------------- */

#define PRE   "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false}"
#define VOCAB "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2}"
#define MINI  "{" PRE ",\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[\"a b\"]}}"

START_TEST(test_tok_minimal_file_parses)
{
    ym_tok_t *tok;
    ym_diag diag = {0};
    ck_assert_int_eq(ym_tok_parse(MINI, strlen(MINI), &tok, &diag), YM_OK);
    ck_assert_int_eq(ym_tok_n_vocab(tok), 3);
    ck_assert_int_eq(ym_tok_eos_id(tok), -1);
    ym_ids ids = encode(tok, "abab", 4);
    ck_assert_uint_eq(ids.n, 2);
    ck_assert_int_eq(ids.v[0], 2);
    ck_assert_int_eq(ids.v[1], 2);
    ym_ids_deinit(&ids);
    ym_tok_free(tok);
    ym_tok_free(NULL);
}
END_TEST

START_TEST(test_tok_rejects_malformed_files_naming_the_field)
{
    static const struct {
        const char *json;
        const char *field; /* must appear in the message */
    } bad[] = {
        {"", "JSON"},
        {"not json", "JSON"},
        {"[1,2]", "top level"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[\"a b\"]", "JSON"},
        {"{" PRE "}", "model"},
        {"{" PRE ",\"model\":[]}", "model"},
        {"{" PRE ",\"model\":{\"type\":\"WordPiece\"," VOCAB ",\"merges\":[]}}", "model.type"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\",\"vocab\":[\"a\"],\"merges\":[]}}", "model.vocab"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\"," VOCAB "}}", "model.merges"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"0\"},\"merges\":[]}}",
         "model.vocab[\"a\"]"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}}",
         "model.vocab[\"a\"]"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":2147483647},\"merges\":[]}}",
         "model.vocab[\"a\"]"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}",
         "already used"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"a\":1},\"merges\":[]}}",
         "JSON"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[\"a c\"]}}",
         "model.merges[0]"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[\"b a\"]}}",
         "model.merges[0]: merged token"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[\"a b\",\"ab\"]}}",
         "model.merges[1]"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[[\"a\"]]}}",
         "model.merges[0]"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[7]}}", "model.merges[0]"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[],\"dropout\":0.1}}",
         "model.dropout"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[],\"unk_token\":\"?\"}}",
         "model.unk_token"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[],\"fuse_unk\":1}}",
         "model.fuse_unk"},
        {"{" PRE ",\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[],"
         "\"continuing_subword_prefix\":\"##\"}}",
         "model.continuing_subword_prefix"},
        {"{\"model\":{\"type\":\"BPE\"," VOCAB ",\"merges\":[]}}", "pre_tokenizer"},
        {"{\"pre_tokenizer\":{\"type\":\"Whitespace\"},\"model\":{" VOCAB ",\"merges\":[]}}",
         "pre_tokenizer.type"},
        {"{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"ByteLevel\"},"
         "{\"type\":\"Split\"}]},\"model\":{" VOCAB ",\"merges\":[]}}",
         "pre_tokenizer.pretokenizers[0]"},
        {"{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","
         "\"pattern\":{\"Regex\":\"\\\\s+\"},\"behavior\":\"Isolated\"},{\"type\":\"ByteLevel\"}]},"
         "\"model\":{" VOCAB ",\"merges\":[]}}",
         "pre_tokenizer.pretokenizers[0].pattern"},
        {"{" PRE ",\"normalizer\":{\"type\":\"Replace\"},\"model\":{" VOCAB ",\"merges\":[]}}",
         "normalizer.type"},
        {"{" PRE ",\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},"
         "{\"type\":\"StripAccents\"}]},\"model\":{" VOCAB ",\"merges\":[]}}",
         "normalizer.normalizers[1].type"},
        {"{" PRE ",\"normalizer\":7,\"model\":{" VOCAB ",\"merges\":[]}}", "normalizer"},
        {"{" PRE ",\"decoder\":{\"type\":\"WordPiece\"},\"model\":{" VOCAB ",\"merges\":[]}}",
         "decoder.type"},
        {"{" PRE ",\"added_tokens\":{},\"model\":{" VOCAB ",\"merges\":[]}}", "added_tokens"},
        {"{" PRE ",\"added_tokens\":[{\"id\":3}],\"model\":{" VOCAB ",\"merges\":[]}}",
         "added_tokens[0].content"},
        {"{" PRE ",\"added_tokens\":[{\"content\":\"x\"}],\"model\":{" VOCAB ",\"merges\":[]}}",
         "added_tokens[0].id"},
        {"{" PRE ",\"added_tokens\":[{\"id\":1,\"content\":\"x\"}],\"model\":{" VOCAB
         ",\"merges\":[]}}",
         "added_tokens[0]"},
        {"{" PRE ",\"added_tokens\":[{\"id\":0,\"content\":\"b\"}],\"model\":{" VOCAB
         ",\"merges\":[]}}",
         "added_tokens[0]"},
        {"{" PRE
         ",\"added_tokens\":[{\"id\":3,\"content\":\"x\",\"lstrip\":\"yes\"}],\"model\":{" VOCAB
         ",\"merges\":[]}}",
         "added_tokens[0].lstrip"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ym_tok_t *tok = (ym_tok_t *)1;
        ym_diag diag = {0};
        ym_err err = ym_tok_parse(bad[i].json, strlen(bad[i].json), &tok, &diag);
        ck_assert_msg(err == YM_EFORMAT, "case %zu: got %s (%s)", i, ym_err_name(err), diag.msg);
        ck_assert_ptr_null(tok);
        ck_assert_msg(strstr(diag.msg, bad[i].field) != NULL, "case %zu: \"%s\" lacks \"%s\"", i,
                      diag.msg, bad[i].field);
    }
}
END_TEST

START_TEST(test_tok_load_missing_file_is_enoent)
{
    ym_tok_t *tok = (ym_tok_t *)1;
    ym_diag diag = {0};
    ck_assert_int_eq(ym_tok_load(YM_FIXTURE("no-such-dir/tokenizer.json"), &tok, &diag), YM_ENOENT);
    ck_assert_ptr_null(tok);
    ck_assert_ptr_nonnull(strstr(diag.msg, "no-such-dir"));
}
END_TEST

Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("gpt-neox");
    tcase_add_checked_fixture(tc, neox_setup, neox_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_tok_gpt_neox_cases_match_hf);
    tcase_add_test(tc, test_tok_gpt_neox_decode_gives_text_back);
    tcase_add_test(tc, test_tok_lookups_and_token_bytes);
    tcase_add_test(tc, test_tok_decode_rejects_unknown_id);
    tcase_add_test(tc, test_tok_decode_replaces_partial_utf8_like_from_utf8_lossy);
    tcase_add_test(tc, test_tok_invalid_utf8_encodes_as_replacement_chars);
    tcase_add_test(tc, test_tok_encode_appends_to_ids);
    tcase_add_test(tc, test_tok_long_inputs_round_trip);
    tcase_add_test(tc, test_tok_encode_from_many_threads_gives_same_ids);
    suite_add_tcase(s, tc);

    TCase *tv = tcase_create("variants");
    tcase_set_timeout(tv, 120);
    tcase_add_test(tv, test_tok_every_fixture_matches_hf);
    tcase_add_test(tv, test_tok_variant_prefix_nfkc_lower_added_flags_match_hf);
    tcase_add_test(tv, test_tok_variant_split_sequence_ignore_merges_match_hf);
    suite_add_tcase(s, tv);

    TCase *tm = tcase_create("malformed");
    tcase_add_test(tm, test_tok_minimal_file_parses);
    tcase_add_test(tm, test_tok_rejects_malformed_files_naming_the_field);
    tcase_add_test(tm, test_tok_load_missing_file_is_enoent);
    suite_add_tcase(s, tm);
    return s;
}

/* tests/server/test_server_units.c - Check suites for the server's parts that need no socket:
 * settings (server/conf.c), request bodies (server/request.c), metrics (server/metrics.c) and
 * the scheduler (server/sched.c) driven directly on the default model.
 * The scheduler's expected outputs come from the engine itself run without the scheduler
 * (one sequence, whole-prompt prefill, token-by-token decode), an independent path. */
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/forward.h"
#include "engine/state.h"
#include "server/conf.h"
#include "server/disktier.h"
#include "server/metrics.h"
#include "server/multipart.h"
#include "server/request.h"
#include "server/router.h"
#include "server/sched.h"
#include "server/statecache.h"
#include "server/store.h"
#include "server/tenants.h"

/* ---------- settings ---------- */

static ym_err conf_from(const char *json, ym_conf *c, ym_diag *d)
{
    return ym_conf_parse_json(c, json, strlen(json), d);
}

START_TEST(test_conf_defaults_and_file_values)
{
    ym_conf c;
    ym_diag d = {0};
    ck_assert_int_eq(conf_from("{}", &c, &d), YM_OK);
    ck_assert_uint_eq(c.port, 8080);
    ck_assert_str_eq(c.host, "127.0.0.1");
    ck_assert_uint_eq(c.default_max_tokens, 16);
    ym_conf_deinit(&c);
    ck_assert_int_eq(conf_from("{\"port\": 0, \"host\": \"::1\", \"log_level\": \"warn\"}", &c, &d),
                     YM_OK);
    ck_assert_uint_eq(c.port, 0);
    ck_assert_str_eq(c.host, "::1");
    ck_assert_str_eq(c.log_level, "warn");
    ym_conf_deinit(&c);
}
END_TEST

START_TEST(test_conf_rejects_bad_files)
{
    static const struct {
        const char *json;
        const char *param; /* "" when the problem is not one setting */
    } bad[] = {
        {"", ""},
        {"[]", ""},
        {"{\"port\": 1, \"port\": 2}", ""},
        {"{\"prot\": 1}", "prot"},
        {"{\"config\": \"x\"}", "config"},
        {"{\"port\": \"80\"}", "port"},
        {"{\"port\": 65536}", "port"},
        {"{\"port\": -1}", "port"},
        {"{\"port\": 1.5}", "port"},
        {"{\"max_running\": 0}", "max_running"},
        {"{\"max_running\": 300, \"max_batch_tokens\": 200}", "max_running"},
        {"{\"default_max_tokens\": 10, \"max_tokens_cap\": 5}", "default_max_tokens"},
        {"{\"log_level\": \"loud\"}", "log_level"},
        {"{\"log_format\": 1}", "log_format"},
        {"{\"host\": \"\"}", "host"},
        {"{\"model\": \"a\\u0000b\"}", ""}, /* jansson refuses NUL in strings */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ym_conf c;
        ym_diag d = {0};
        ck_assert_msg(conf_from(bad[i].json, &c, &d) == YM_EINVAL, "accepted %s", bad[i].json);
        ck_assert_msg(d.msg[0] != '\0', "no message for %s", bad[i].json);
        ck_assert_msg(strcmp(d.param, bad[i].param) == 0, "%s: param '%s'", bad[i].json, d.param);
        ck_assert_ptr_null(c.host); /* left empty */
    }
}
END_TEST

START_TEST(test_conf_precedence_env_over_file_flags_over_env)
{
    char path[] = "/tmp/yunmin-conf-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *json = "{\"port\": 1111, \"max_queue\": 7, \"threads\": 3}";
    ck_assert_int_eq(write(fd, json, strlen(json)), (int)strlen(json));
    close(fd);
    char *env[] = {"YUNMIN_PORT=2222", "YUNMIN_MAX_QUEUE=9", "UNRELATED=1", NULL};
    char *argv[] = {"yunmind", "--config", path, "--port", "3333", NULL};
    ym_conf c;
    ym_diag d = {0};
    int action = -1;
    ck_assert_int_eq(ym_conf_load(&c, 5, argv, env, &action, &d), YM_OK);
    ck_assert_int_eq(action, 0);
    ck_assert_uint_eq(c.port, 3333);     /* flag */
    ck_assert_uint_eq(c.max_queue, 9);   /* env over file */
    ck_assert_uint_eq(c.threads, 3);     /* file */
    ck_assert_str_eq(c.config, path);

    /* A reload applies what may change live and keeps the rest. */
    ym_conf next;
    char *env2[] = {"YUNMIN_PORT=4444", "YUNMIN_MAX_QUEUE=11", NULL};
    char *argv2[] = {"yunmind", "--config", path, NULL};
    ck_assert_int_eq(ym_conf_load(&next, 3, argv2, env2, &action, &d), YM_OK);
    ck_assert_int_eq(ym_conf_apply_reload(&c, &next), 1);
    ck_assert_uint_eq(c.max_queue, 11);
    ck_assert_uint_eq(c.port, 3333);
    ym_conf_deinit(&next);
    ym_conf_deinit(&c);
    unlink(path);

    char *bad_env[] = {"YUNMIN_PORT=eighty", NULL};
    char *argv3[] = {"yunmind", NULL};
    ck_assert_int_eq(ym_conf_load(&c, 1, argv3, bad_env, &action, &d), YM_EINVAL);
    ck_assert_ptr_nonnull(strstr(d.msg, "YUNMIN_PORT"));
    char *argv4[] = {"yunmind", "--port", NULL};
    ck_assert_int_eq(ym_conf_load(&c, 2, argv4, env2, &action, &d), YM_EINVAL);
    char *argv5[] = {"yunmind", "--help", NULL};
    ck_assert_int_eq(ym_conf_load(&c, 2, argv5, env2, &action, &d), YM_OK);
    ck_assert_int_eq(action, 1);
    ym_conf_deinit(&c);
}
END_TEST

/* ---------- request bodies ---------- */

static const ym_req_limits LIM = {.max_tokens_cap = 1000, .default_max_tokens = 16,
                                  .max_prompt_tokens = 50};

START_TEST(test_creq_full_request)
{
    const char *body = "{\"model\": \"m\", \"prompt\": \"hi\", \"max_tokens\": 7,"
                       " \"temperature\": 0.5, \"top_p\": 0.9, \"top_k\": 40, \"min_p\": 0.05,"
                       " \"presence_penalty\": 0.1, \"frequency_penalty\": -0.2,"
                       " \"repetition_penalty\": 1.1, \"seed\": -3, \"stop\": [\"a\", \"\", \"bc\"],"
                       " \"stream\": true, \"stream_options\": {\"include_usage\": true},"
                       " \"logprobs\": 2, \"user\": \"u\", \"unknown_field\": [1, 2],"
                       " \"session_id\": \"c-1.a_b~c:d@e+f=g\", \"return_tokens_as_token_ids\": true}";
    ym_creq q;
    json_t *root;
    ym_diag d = {0};
    ck_assert_int_eq(ym_creq_parse(body, strlen(body), &LIM, &q, &root, &d), YM_OK);
    ck_assert_str_eq(q.model, "m");
    ck_assert_uint_eq(q.prompt_len, 2);
    ck_assert_int_eq(q.max_tokens, 7);
    ck_assert_float_eq(q.sampling.temperature, 0.5f);
    ck_assert_int_eq(q.sampling.top_k, 40);
    ck_assert_int_eq(q.sampling.has_seed, 1);
    ck_assert_uint_eq(q.sampling.seed, (uint64_t)-3);
    ck_assert_int_eq(q.n_stops, 2); /* the empty one is dropped */
    ck_assert_str_eq(q.stops[1], "bc");
    ck_assert_int_eq(q.stream, 1);
    ck_assert_int_eq(q.include_usage, 1);
    ck_assert_int_eq(q.logprobs, 2);
    ck_assert_int_eq(q.sampling.n_logprobs, 2);
    ck_assert_str_eq(q.session_id, "c-1.a_b~c:d@e+f=g");
    ck_assert_int_eq(q.tokens_as_ids, 1);
    ck_assert_int_eq(q.sampling.n_logit_bias, 0);
    ym_creq_deinit(&q);
    json_decref(root);
    const char *bias = "{\"prompt\": \"x\", \"logit_bias\": {\"0\": -100, \"42\": 2.5,"
                       " \"2147483647\": 100}}";
    ck_assert_int_eq(ym_creq_parse(bias, strlen(bias), &LIM, &q, &root, &d), YM_OK);
    ck_assert_int_eq(q.sampling.n_logit_bias, 3);
    int seen = 0;
    for (int i = 0; i < 3; i++) {
        const ym_logit_bias *b = &q.sampling.logit_bias[i];
        seen |= (b->id == 0 && b->bias == -100.0f) << 0;
        seen |= (b->id == 42 && b->bias == 2.5f) << 1;
        seen |= (b->id == 2147483647 && b->bias == 100.0f) << 2;
    }
    ck_assert_int_eq(seen, 7);
    ym_creq_deinit(&q);
    json_decref(root);
}
END_TEST

START_TEST(test_creq_prompt_forms_and_defaults)
{
    ym_creq q;
    json_t *root;
    ym_diag d = {0};
    const char *ids = "{\"prompt\": [[5, 6, 7]], \"max_tokens\": null, \"temperature\": null}";
    ck_assert_int_eq(ym_creq_parse(ids, strlen(ids), &LIM, &q, &root, &d), YM_OK);
    ck_assert_uint_eq(q.n_prompt_ids, 3);
    ck_assert_int_eq(q.prompt_ids[2], 7);
    ck_assert_int_eq(q.max_tokens, 16);
    ck_assert_float_eq(q.sampling.temperature, 1.0f); /* OpenAI's default */
    ck_assert_int_eq(q.logprobs, -1);
    ym_creq_deinit(&q);
    json_decref(root);
    const char *nul = "{\"prompt\": [\"a\\u0000b\"], \"stop\": \"x\"}";
    ck_assert_int_eq(ym_creq_parse(nul, strlen(nul), &LIM, &q, &root, &d), YM_OK);
    ck_assert_uint_eq(q.prompt_len, 3);
    ck_assert_int_eq(q.n_stops, 1);
    ym_creq_deinit(&q);
    json_decref(root);
}
END_TEST

START_TEST(test_creq_prompt_lists)
{
    ym_creq q;
    json_t *root;
    ym_diag d = {0};
    const char *texts = "{\"prompt\": [\"ab\", \"c\\u0000d\", \"e\"], \"n\": 5}";
    ck_assert_int_eq(ym_creq_parse(texts, strlen(texts), &LIM, &q, &root, &d), YM_OK);
    ck_assert_int_eq(q.n_prompts, 3);
    ck_assert_int_eq(q.n_choices, 5);
    ck_assert_uint_eq(q.prompt_len, 2);
    ck_assert_uint_eq(q.more[0].len, 3);
    ck_assert_int_eq(memcmp(q.more[0].text, "c\0d", 3), 0);
    ck_assert_str_eq(q.more[1].text, "e");
    ck_assert_ptr_null(q.prompt_ids);
    ym_creq_deinit(&q);
    json_decref(root);
    const char *ids = "{\"prompt\": [[1, 2], [3], [4, 5, 6]]}";
    ck_assert_int_eq(ym_creq_parse(ids, strlen(ids), &LIM, &q, &root, &d), YM_OK);
    ck_assert_int_eq(q.n_prompts, 3);
    ck_assert_uint_eq(q.n_prompt_ids, 2);
    ck_assert_uint_eq(q.more[0].n_ids, 1);
    ck_assert_int_eq(q.more[0].ids[0], 3);
    ck_assert_uint_eq(q.more[1].n_ids, 3);
    ck_assert_int_eq(q.more[1].ids[2], 6);
    ck_assert_ptr_null(q.prompt);
    ym_creq_deinit(&q);
    json_decref(root);
    /* One id list is one prompt, as OpenAI reads it; a string is one prompt. */
    const char *one = "{\"prompt\": [7, 8]}";
    ck_assert_int_eq(ym_creq_parse(one, strlen(one), &LIM, &q, &root, &d), YM_OK);
    ck_assert_int_eq(q.n_prompts, 1);
    ck_assert_uint_eq(q.n_prompt_ids, 2);
    ym_creq_deinit(&q);
    json_decref(root);
    /* 16 choices in all is the limit: 4 prompts times n = 4 pass, 17 prompts do not. */
    const char *sixteen = "{\"prompt\": [\"a\", \"b\", \"c\", \"d\"], \"n\": 4}";
    ck_assert_int_eq(ym_creq_parse(sixteen, strlen(sixteen), &LIM, &q, &root, &d), YM_OK);
    ck_assert_int_eq(q.n_prompts * q.n_choices, YM_MAX_CHOICES);
    ym_creq_deinit(&q);
    json_decref(root);
    /* The chat body has one prompt. */
    const char *chat = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}";
    ck_assert_int_eq(ym_chatreq_parse(chat, strlen(chat), &LIM, &q, &root, &d), YM_OK);
    ck_assert_int_eq(q.n_prompts, 1);
    ym_creq_deinit(&q);
    json_decref(root);
}
END_TEST

START_TEST(test_creq_rejects_each_bad_field)
{
    static const struct {
        const char *json, *param;
    } bad[] = {
        {"{", ""},
        {"\"x\"", ""},
        {"{}", "prompt"},
        {"{\"prompt\": null}", "prompt"},
        {"{\"prompt\": \"\"}", "prompt"},
        {"{\"prompt\": []}", "prompt"},
        {"{\"prompt\": [1, \"a\"]}", "prompt"},
        {"{\"prompt\": [1.5]}", "prompt"},
        {"{\"prompt\": [-1]}", "prompt"},
        {"{\"prompt\": [4294967296]}", "prompt"},
        {"{\"prompt\": [\"a\", [1]]}", "prompt"},
        {"{\"prompt\": [[1], \"a\"]}", "prompt"},
        {"{\"prompt\": [\"a\", 5]}", "prompt"},
        {"{\"prompt\": [\"a\", null]}", "prompt"},
        {"{\"prompt\": [\"a\", \"\"]}", "prompt"},
        {"{\"prompt\": [[1], []]}", "prompt"},
        {"{\"prompt\": [[1], [2, \"x\"]]}", "prompt"},
        {"{\"prompt\": [[1], [-2]]}", "prompt"},
        {"{\"prompt\": [[]]}", "prompt"},
        {"{\"prompt\": [\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\","
         "\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\"]}", "prompt"},
        {"{\"prompt\": [\"a\", \"b\", \"c\"], \"n\": 6}", "prompt"},
        {"{\"prompt\": {}}", "prompt"},
        {"{\"prompt\": \"x\", \"model\": 5}", "model"},
        {"{\"prompt\": \"x\", \"session_id\": 5}", "session_id"},
        {"{\"prompt\": \"x\", \"session_id\": \"\"}", "session_id"},
        {"{\"prompt\": \"x\", \"session_id\": \"a b\"}", "session_id"},
        {"{\"prompt\": \"x\", \"session_id\": \"a/b\"}", "session_id"},
        {"{\"prompt\": \"x\", \"session_id\": \"a\\u0000b\"}", "session_id"},
        {"{\"prompt\": \"x\", \"session_id\": \"\\u00e9\"}", "session_id"},
        {"{\"prompt\": \"x\", \"return_tokens_as_token_ids\": 1}", "return_tokens_as_token_ids"},
        {"{\"prompt\": \"x\", \"max_tokens\": 1001}", "max_tokens"},
        {"{\"prompt\": \"x\", \"max_tokens\": \"5\"}", "max_tokens"},
        {"{\"prompt\": \"x\", \"temperature\": 2.5}", "temperature"},
        {"{\"prompt\": \"x\", \"temperature\": -0.1}", "temperature"},
        {"{\"prompt\": \"x\", \"top_p\": 0}", "top_p"},
        {"{\"prompt\": \"x\", \"top_p\": 1.01}", "top_p"},
        {"{\"prompt\": \"x\", \"top_k\": -2}", "top_k"},
        {"{\"prompt\": \"x\", \"top_k\": 1.5}", "top_k"},
        {"{\"prompt\": \"x\", \"min_p\": -1}", "min_p"},
        {"{\"prompt\": \"x\", \"presence_penalty\": 2.1}", "presence_penalty"},
        {"{\"prompt\": \"x\", \"frequency_penalty\": true}", "frequency_penalty"},
        {"{\"prompt\": \"x\", \"repetition_penalty\": 0}", "repetition_penalty"},
        {"{\"prompt\": \"x\", \"n\": 17}", "n"},
        {"{\"prompt\": \"x\", \"n\": 0}", "n"},
        {"{\"prompt\": \"x\", \"best_of\": 2}", "best_of"},
        {"{\"prompt\": \"x\", \"logprobs\": 21}", "logprobs"},
        {"{\"prompt\": \"x\", \"logprobs\": true}", "logprobs"},
        {"{\"prompt\": \"x\", \"seed\": 1.5}", "seed"},
        {"{\"prompt\": \"x\", \"stream\": 1}", "stream"},
        {"{\"prompt\": \"x\", \"echo\": \"yes\"}", "echo"},
        {"{\"prompt\": \"x\", \"stream_options\": {}}", "stream_options"},
        {"{\"prompt\": \"x\", \"stream\": true, \"stream_options\": 1}", "stream_options"},
        {"{\"prompt\": \"x\", \"stream\": true, \"stream_options\": {\"include_usage\": 1}}",
         "stream_options.include_usage"},
        {"{\"prompt\": \"x\", \"stop\": 1}", "stop"},
        {"{\"prompt\": \"x\", \"stop\": [1]}", "stop"},
        {"{\"prompt\": \"x\", \"stop\": [\"a\\u0000\"]}", "stop"},
        {"{\"prompt\": \"x\", \"stop\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\","
         "\"10\",\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}",
         "stop"},
        {"{\"prompt\": \"x\", \"suffix\": \"s\"}", "suffix"},
        {"{\"prompt\": \"x\", \"logit_bias\": {\"1\": 100.5}}", "logit_bias"},
        {"{\"prompt\": \"x\", \"logit_bias\": {\"1\": -101}}", "logit_bias"},
        {"{\"prompt\": \"x\", \"logit_bias\": {\"1\": \"5\"}}", "logit_bias"},
        {"{\"prompt\": \"x\", \"logit_bias\": {\"01\": 5}}", "logit_bias"},
        {"{\"prompt\": \"x\", \"logit_bias\": {\"-1\": 5}}", "logit_bias"},
        {"{\"prompt\": \"x\", \"logit_bias\": {\"1.0\": 5}}", "logit_bias"},
        {"{\"prompt\": \"x\", \"logit_bias\": {\"\": 5}}", "logit_bias"},
        {"{\"prompt\": \"x\", \"logit_bias\": {\"4294967296\": 5}}", "logit_bias"},
        {"{\"prompt\": \"x\", \"logit_bias\": [1]}", "logit_bias"},
        {"{\"prompt\": \"x\", \"user\": 1}", "user"},
        {"{\"prompt\": \"x\", \"ignore_eos\": 0}", "ignore_eos"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ym_creq q;
        json_t *root = (json_t *)1;
        ym_diag d = {0};
        ym_err e = ym_creq_parse(bad[i].json, strlen(bad[i].json), &LIM, &q, &root, &d);
        ck_assert_msg(e == YM_EINVAL, "accepted %s", bad[i].json);
        ck_assert_msg(strcmp(d.param, bad[i].param) == 0, "%s: param '%s' (%s)", bad[i].json,
                      d.param, d.msg);
        ck_assert_msg(d.msg[0] != '\0', "%s: no message", bad[i].json);
        ck_assert_ptr_null(root);
        ck_assert_ptr_null(q.prompt_ids);
    }
}
END_TEST

START_TEST(test_chatreq_messages_and_fields)
{
    const char *body =
        "{\"model\": \"m\", \"messages\": [{\"role\": \"system\", \"content\": \"s\"},"
        " {\"role\": \"developer\", \"content\": \"\"},"
        " {\"role\": \"user\", \"name\": \"n\","
        " \"content\": [{\"type\": \"text\", \"text\": \"a\"},"
        " {\"type\": \"text\", \"text\": \"b\\u0000c\"}]},"
        " {\"role\": \"assistant\", \"content\": \"x\"}],"
        " \"max_tokens\": 9, \"max_completion_tokens\": 7, \"temperature\": 0, \"seed\": 4,"
        " \"stop\": \"q\", \"logprobs\": true, \"top_logprobs\": 3, \"stream\": true,"
        " \"stream_options\": {\"include_usage\": true},"
        " \"response_format\": {\"type\": \"text\"},"
        " \"tools\": [], \"tool_choice\": \"none\", \"session_id\": \"s1\"}";
    ym_creq q;
    json_t *root;
    ym_diag d = {0};
    ck_assert_int_eq(ym_chatreq_parse(body, strlen(body), &LIM, &q, &root, &d), YM_OK);
    ck_assert_ptr_null(q.prompt);
    ck_assert_uint_eq(json_array_size(q.messages), 4);
    json_t *u = json_array_get(q.messages, 2);
    ck_assert_str_eq(json_string_value(json_object_get(u, "role")), "user");
    ck_assert_str_eq(json_string_value(json_object_get(u, "name")), "n");
    json_t *c = json_object_get(u, "content");
    ck_assert_uint_eq(json_string_length(c), 4); /* "a" + "b\0c": text parts joined */
    ck_assert_mem_eq(json_string_value(c), "ab\0c", 4);
    ck_assert_int_eq(q.max_tokens, 7); /* max_completion_tokens wins */
    ck_assert_int_eq(q.logprobs, 3);
    ck_assert_int_eq(q.sampling.n_logprobs, 3);
    ck_assert_int_eq(q.include_usage, 1);
    ck_assert_str_eq(q.session_id, "s1");
    ck_assert_int_eq(q.n_stops, 1);
    ym_creq_deinit(&q);
    ck_assert_ptr_null(q.messages);
    json_decref(root);
    const char *plain = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}],"
                        " \"logprobs\": true}";
    ck_assert_int_eq(ym_chatreq_parse(plain, strlen(plain), &LIM, &q, &root, &d), YM_OK);
    ck_assert_int_eq(q.logprobs, 0);
    ck_assert_int_eq(q.max_tokens, 16);
    ym_creq_deinit(&q);
    json_decref(root);
}
END_TEST

START_TEST(test_chatreq_rejects_each_bad_field)
{
#define U "\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]"
    static const struct {
        const char *json, *param;
    } bad[] = {
        {"{}", "messages"},
        {"{\"messages\": []}", "messages"},
        {"{\"messages\": {}}", "messages"},
        {"{\"messages\": [1]}", "messages[0]"},
        {"{\"messages\": [{\"content\": \"x\"}]}", "messages[0].role"},
        {"{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}", "messages[0].role"},
        {"{\"messages\": [{\"role\": \"function\", \"content\": \"x\"}]}", "messages[0].role"},
        {"{\"messages\": [{\"role\": \"user\"}]}", "messages[0].content"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "messages[0].content"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\","
         " \"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\": \"u\"}}]}]}",
         "messages[1].content[0]"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"input_audio\"}]}]}",
         "messages[0].content[0]"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"text\": \"a\"}]}]}",
         "messages[0].content[0]"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}",
         "messages[0].content[0]"},
        {"{\"messages\": [{\"role\": \"assistant\", \"content\": \"a\", \"tool_calls\": []}]}",
         "messages[0].tool_calls"},
        {"{\"messages\": [{\"role\": \"assistant\", \"content\": \"a\", \"audio\": {}}]}",
         "messages[0].audio"},
        {"{" U ", \"tools\": [{\"type\": \"function\"}]}", "tools"},
        {"{" U ", \"tool_choice\": \"auto\"}", "tool_choice"},
        {"{" U ", \"functions\": []}", "functions"},
        {"{" U ", \"function_call\": \"auto\"}", "function_call"},
        {"{" U ", \"response_format\": {\"type\": \"json_object\"}}", "response_format"},
        {"{" U ", \"response_format\": \"text\"}", "response_format"},
        {"{" U ", \"audio\": {\"voice\": \"x\"}}", "audio"},
        {"{" U ", \"modalities\": [\"text\", \"audio\"]}", "modalities"},
        {"{" U ", \"prediction\": {}}", "prediction"},
        {"{" U ", \"session_append\": true}", "session_append"},
        {"{" U ", \"max_tokens\": 1001}", "max_tokens"},
        {"{" U ", \"max_completion_tokens\": -1}", "max_completion_tokens"},
        {"{" U ", \"logprobs\": 2}", "logprobs"},
        {"{" U ", \"top_logprobs\": 2}", "top_logprobs"},
        {"{" U ", \"logprobs\": true, \"top_logprobs\": 21}", "top_logprobs"},
        {"{" U ", \"n\": 17}", "n"},
        {"{" U ", \"logit_bias\": {\"1\": 200}}", "logit_bias"},
        {"{" U ", \"temperature\": 3}", "temperature"},
        {"{" U ", \"stop\": [1]}", "stop"},
        {"{" U ", \"stream_options\": {\"include_usage\": true}}", "stream_options"},
        {"{" U ", \"session_id\": \"a b\"}", "session_id"},
        {"{" U ", \"model\": 1}", "model"},
    };
#undef U
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ym_creq q;
        json_t *root = (json_t *)1;
        ym_diag d = {0};
        ym_err e = ym_chatreq_parse(bad[i].json, strlen(bad[i].json), &LIM, &q, &root, &d);
        ck_assert_msg(e == YM_EINVAL, "accepted %s", bad[i].json);
        ck_assert_msg(strcmp(d.param, bad[i].param) == 0, "%s: param '%s' (%s)", bad[i].json,
                      d.param, d.msg);
        ck_assert_msg(d.msg[0] != '\0', "%s: no message", bad[i].json);
        ck_assert_ptr_null(root);
        ck_assert_ptr_null(q.messages);
    }
}
END_TEST

START_TEST(test_tokenize_bodies)
{
    const char *text = NULL, *model = NULL;
    size_t len = 0, n = 0;
    int32_t *ids = NULL;
    json_t *root;
    ym_diag d = {0};
    const char *ok = "{\"prompt\": \"abc\", \"model\": \"m\"}";
    ck_assert_int_eq(ym_tokreq_parse(ok, strlen(ok), &text, &len, &model, &root, &d), YM_OK);
    ck_assert_uint_eq(len, 3);
    ck_assert_str_eq(model, "m");
    json_decref(root);
    const char *bad = "{\"text\": \"abc\"}";
    ck_assert_int_eq(ym_tokreq_parse(bad, strlen(bad), &text, &len, &model, &root, &d), YM_EINVAL);
    ck_assert_str_eq(d.param, "prompt");
    const char *toks = "{\"tokens\": [1, 2]}";
    ck_assert_int_eq(ym_detokreq_parse(toks, strlen(toks), &ids, &n, &model, &root, &d), YM_OK);
    ck_assert_uint_eq(n, 2);
    free(ids);
    json_decref(root);
    const char *empty = "{\"tokens\": []}";
    ck_assert_int_eq(ym_detokreq_parse(empty, strlen(empty), &ids, &n, &model, &root, &d), YM_OK);
    ck_assert_uint_eq(n, 0);
    json_decref(root);
    const char *badt = "{\"tokens\": [1, -1]}";
    ck_assert_int_eq(ym_detokreq_parse(badt, strlen(badt), &ids, &n, &model, &root, &d),
                     YM_EINVAL);
    ck_assert_str_eq(d.param, "tokens");
    ck_assert_ptr_null(ids);
}
END_TEST

/* ---------- metrics ---------- */

START_TEST(test_metrics_text_format)
{
    ym_metrics_t *m = ym_metrics_new();
    ym_metrics_add(m, YM_M_GEN_TOKENS, 5);
    ym_metrics_set(m, YM_G_QUEUE, 3);
    ym_metrics_observe(m, YM_H_TTFT, 0.003);
    ym_metrics_observe(m, YM_H_TTFT, 0.5);
    ym_metrics_observe(m, YM_H_TTFT, 1000);
    ym_metrics_request(m, "/v1/completions", 200);
    ym_metrics_request(m, "/v1/completions", 200);
    ym_metrics_request(m, "/v1/completions", 400);
    char *t;
    size_t len;
    ck_assert_int_eq(ym_metrics_render(m, &t, &len), 0);
    ck_assert_uint_eq(strlen(t), len);
    ck_assert_ptr_nonnull(strstr(t, "\nyunmin_generation_tokens_total 5\n"));
    ck_assert_ptr_nonnull(strstr(t, "\nyunmin_queue_depth 3\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "yunmin_http_requests_total{route=\"/v1/completions\",status=\"200\"} 2\n"));
    ck_assert_ptr_nonnull(
        strstr(t, "yunmin_http_requests_total{route=\"/v1/completions\",status=\"400\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(t, "yunmin_time_to_first_token_seconds_bucket{le=\"0.005\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(t, "yunmin_time_to_first_token_seconds_bucket{le=\"0.5\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(t, "yunmin_time_to_first_token_seconds_bucket{le=\"30\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(t, "yunmin_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(t, "yunmin_time_to_first_token_seconds_count 3\n"));
    /* Every line is a comment or "name{labels} value". */
    for (char *line = strtok(t, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#')
            continue;
        char *sp = strrchr(line, ' ');
        ck_assert_ptr_nonnull(sp);
        char *end;
        strtod(sp + 1, &end);
        ck_assert_msg(*end == '\0', "bad value in %s", line);
    }
    free(t);
    ym_metrics_free(m);
}
END_TEST

/* ---------- tenants ---------- */

/* Hashes are made by the code under test only after checking it against the SHA-256 test
 * vector of FIPS 180-2 ("abc"), so the file lines below are independent of it. */
START_TEST(test_tenants_hash_matches_sha256_vector)
{
    ck_assert_int_eq(ym_tenants_init(), 0);
    char h[72];
    ym_tenants_hash_key("abc", 3, h);
    ck_assert_str_eq(h, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    char k1[48], k2[48];
    ym_tenants_new_key(k1);
    ym_tenants_new_key(k2);
    ck_assert_uint_eq(strlen(k1), 46);
    ck_assert_str_ne(k1, k2);
}
END_TEST

#define HASH_ABC "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define HASH_EMPTY "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

START_TEST(test_tenants_auth)
{
    ck_assert_int_eq(ym_tenants_init(), 0);
    const char *json = "{\"tenants\": [{\"name\": \"a\", \"keys\": [\"" HASH_ABC "\"],"
                       " \"max_concurrent\": 3}, {\"name\": \"b-2.x_\", \"keys\": [\"" HASH_EMPTY
                       "\"], \"admin\": true}]}";
    ym_tenants_t *t;
    ym_diag d = {0};
    ck_assert_int_eq(ym_tenants_parse(json, strlen(json), &t, &d), YM_OK);
    ck_assert_int_eq(ym_tenants_is_open(t), 0);
    const ym_tenant *a = ym_tenants_auth(t, "Bearer abc");
    ck_assert_ptr_nonnull(a);
    ck_assert_str_eq(a->name, "a");
    ck_assert_uint_eq(a->max_concurrent, 3);
    ck_assert_int_eq(a->admin, 0);
    ck_assert_ptr_eq(ym_tenants_auth(t, "bearer   abc  "), a);
    ck_assert_ptr_null(ym_tenants_auth(t, NULL));
    ck_assert_ptr_null(ym_tenants_auth(t, "Bearer "));  /* the empty key is never accepted */
    ck_assert_ptr_null(ym_tenants_auth(t, "Bearer abcd"));
    ck_assert_ptr_null(ym_tenants_auth(t, "Basic abc"));
    ck_assert_ptr_null(ym_tenants_auth(t, "abc"));
    ym_tenants_free(t);
    ck_assert_int_eq(ym_tenants_open(&t), YM_OK);
    ck_assert_str_eq(ym_tenants_auth(t, NULL)->name, "default");
    ym_tenants_free(t);
}
END_TEST

START_TEST(test_tenants_rejects_bad_files)
{
    static const char *bad[] = {
        "",
        "[]",
        "{}",
        "{\"tenants\": []}",
        "{\"tenants\": [1]}",
        "{\"tenants\": [{\"keys\": [\"" HASH_ABC "\"]}]}",
        "{\"tenants\": [{\"name\": \"../x\", \"keys\": [\"" HASH_ABC "\"]}]}",
        "{\"tenants\": [{\"name\": \"..\", \"keys\": [\"" HASH_ABC "\"]}]}",
        "{\"tenants\": [{\"name\": \"\", \"keys\": [\"" HASH_ABC "\"]}]}",
        "{\"tenants\": [{\"name\": \"a\", \"keys\": []}]}",
        "{\"tenants\": [{\"name\": \"a\", \"keys\": [\"abc\"]}]}",
        "{\"tenants\": [{\"name\": \"a\", \"keys\": [\"sha256:zz\"]}]}",
        "{\"tenants\": [{\"name\": \"a\", \"keys\": [\"" HASH_ABC "\"], \"max_concurrent\": -1}]}",
        "{\"tenants\": [{\"name\": \"a\", \"keys\": [\"" HASH_ABC "\"], \"color\": 1}]}",
        "{\"tenants\": [{\"name\": \"a\", \"keys\": [\"" HASH_ABC "\"], \"admin\": 1}]}",
        "{\"tenants\": [{\"name\": \"a\", \"keys\": [\"" HASH_ABC "\"]},"
        " {\"name\": \"a\", \"keys\": [\"" HASH_EMPTY "\"]}]}",
        "{\"tenants\": [{\"name\": \"a\", \"keys\": [\"" HASH_ABC "\"]},"
        " {\"name\": \"b\", \"keys\": [\"" HASH_ABC "\"]}]}",
        "{\"tenants\": [], \"extra\": 1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ym_tenants_t *t = (ym_tenants_t *)1;
        ym_diag d = {0};
        ck_assert_msg(ym_tenants_parse(bad[i], strlen(bad[i]), &t, &d) == YM_EINVAL,
                      "accepted %s", bad[i]);
        ck_assert_ptr_null(t);
        ck_assert_msg(d.msg[0] != '\0', "no message for %s", bad[i]);
    }
}
END_TEST

/* ---------- multipart ---------- */

typedef struct mp_seen {
    char names[8][64];
    char data[8][256];
    size_t len[8];
    int n, ended;
    int refuse_name; /* part_begin refuses a part with this index */
} mp_seen;

static int mp_begin(void *arg, const char *name, ym_diag *diag)
{
    mp_seen *s = arg;
    if (s->n == s->refuse_name) {
        ym_diag_set(diag, YM_EINVAL, "refused %s", name);
        return -1;
    }
    snprintf(s->names[s->n], sizeof(s->names[0]), "%s", name);
    s->len[s->n] = 0;
    return 0;
}

static int mp_data(void *arg, const char *d, size_t n, ym_diag *diag)
{
    mp_seen *s = arg;
    ck_assert_uint_le(s->len[s->n] + n, sizeof(s->data[0]));
    memcpy(s->data[s->n] + s->len[s->n], d, n);
    s->len[s->n] += n;
    return 0;
}

static int mp_end(void *arg, ym_diag *diag)
{
    mp_seen *s = arg;
    s->n++;
    s->ended++;
    return 0;
}

static const ym_mp_cb MP_CB = {mp_begin, mp_data, mp_end};

/* Parse body fed in pieces of `step` bytes (0 = all at once). */
static ym_err mp_parse(const char *ctype, const char *body, size_t len, size_t step, mp_seen *s,
                       ym_diag *d)
{
    memset(s, 0, sizeof(*s));
    s->refuse_name = -1;
    ym_mp_t *mp;
    ym_err e = ym_mp_new(ctype, &MP_CB, s, &mp, d);
    if (e != YM_OK)
        return e;
    for (size_t off = 0; off < len && e == YM_OK;) {
        size_t n = step == 0 || off + step > len ? len - off : step;
        e = ym_mp_feed(mp, body + off, n, d);
        off += n;
    }
    if (e == YM_OK)
        e = ym_mp_finish(mp, d);
    ym_mp_free(mp);
    return e;
}

START_TEST(test_multipart_parts_any_split)
{
    /* Built here from the RFC 2046 grammar: preamble, three parts (one empty, one holding
     * CRLF, "--" and a near-delimiter), transport padding, epilogue. */
    static const char body[] =
        "preamble to ignore\r\n"
        "--XyZ\r\n"
        "Content-Disposition: form-data; name=\"adapter_config.json\"\r\n"
        "Content-Type: application/json\r\n\r\n"
        "{\"r\": 8}\r\n"
        "--XyZ  \r\n"
        "content-disposition: form-data; name=\"lora/adapter_model.safetensors\"; "
        "filename=\"x.bin\"\r\n\r\n"
        "a\r\nb--XyZ\r\n-XyZ\r\n--XY\r\n"
        "--XyZ\r\n"
        "Content-Disposition: form-data; filename=\"empty.txt\"\r\n\r\n"
        "\r\n--XyZ--\r\nepilogue";
    static const char *names[] = {"adapter_config.json", "lora/adapter_model.safetensors",
                                  "empty.txt"};
    static const char *datas[] = {"{\"r\": 8}", "a\r\nb--XyZ\r\n-XyZ\r\n--XY", ""};
    size_t len = sizeof(body) - 1;
    for (size_t step = 0; step <= len; step += (step < 12 ? 1 : 7)) {
        mp_seen s;
        ym_diag d = {0};
        ck_assert_msg(mp_parse("multipart/form-data; boundary=XyZ", body, len, step, &s, &d) ==
                          YM_OK,
                      "step %zu: %s", step, d.msg);
        ck_assert_int_eq(s.n, 3);
        for (int i = 0; i < 3; i++) {
            ck_assert_str_eq(s.names[i], names[i]);
            ck_assert_uint_eq(s.len[i], strlen(datas[i]));
            ck_assert_msg(memcmp(s.data[i], datas[i], s.len[i]) == 0, "step %zu part %d", step,
                          i);
        }
    }
    mp_seen s;
    ym_diag d = {0};
    ck_assert_int_eq(mp_parse("multipart/form-data; boundary=\"XyZ\"", body, len, 3, &s, &d),
                     YM_OK);
}
END_TEST

START_TEST(test_multipart_rejects_malformed)
{
    static const struct {
        const char *ctype, *body;
    } bad[] = {
        {"application/json", "{}"},
        {"multipart/form-data", "--x\r\n"},
        {"multipart/form-data; boundary=", "--\r\n"},
        {"multipart/form-data; boundary=b", ""},
        {"multipart/form-data; boundary=b", "--b\r\nContent-Disposition: form-data; "
                                            "name=\"a\"\r\n\r\nno end"},
        {"multipart/form-data; boundary=b", "--b\r\nX-No-Disposition: 1\r\n\r\nd\r\n--b--"},
        {"multipart/form-data; boundary=b", "--b\r\nContent-Disposition: attachment; "
                                            "name=\"a\"\r\n\r\nd\r\n--b--"},
        {"multipart/form-data; boundary=b", "--b\r\nno colon here\r\n\r\nd\r\n--b--"},
        {"multipart/form-data; boundary=b", "--bX\r\n"},
        {"multipart/form-data; boundary=b", "--b\r\nContent-Disposition: form-data; "
                                            "name=\"unterminated\r\n\r\nd\r\n--b--"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        mp_seen s;
        ym_diag d = {0};
        ck_assert_msg(mp_parse(bad[i].ctype, bad[i].body, strlen(bad[i].body), 0, &s, &d) ==
                          YM_EINVAL,
                      "accepted case %zu", i);
        ck_assert_msg(d.msg[0] != '\0', "case %zu: no message", i);
    }
    /* Oversized headers. */
    char big[20000];
    int n = snprintf(big, sizeof(big), "--b\r\nContent-Disposition: form-data; name=a\r\nX: ");
    memset(big + n, 'x', sizeof(big) - (size_t)n - 1);
    big[sizeof(big) - 1] = '\0';
    mp_seen s;
    ym_diag d = {0};
    ck_assert_int_eq(mp_parse("multipart/form-data; boundary=b", big, strlen(big), 1000, &s, &d),
                     YM_EINVAL);
    /* A refused part stops the parse with the callback's message. */
    static const char two[] = "--b\r\nContent-Disposition: form-data; name=ok\r\n\r\n1\r\n"
                              "--b\r\nContent-Disposition: form-data; name=\"../etc\"\r\n\r\n2"
                              "\r\n--b--";
    memset(&s, 0, sizeof(s));
    s.refuse_name = 1;
    ym_mp_t *mp;
    memset(&d, 0, sizeof(d));
    ck_assert_int_eq(ym_mp_new("multipart/form-data; boundary=b", &MP_CB, &s, &mp, &d), YM_OK);
    ck_assert_int_eq(ym_mp_feed(mp, two, sizeof(two) - 1, &d), YM_EINVAL);
    ck_assert_str_eq(d.msg, "refused ../etc");
    ck_assert_int_eq(ym_mp_feed(mp, "x", 1, &d), YM_EINVAL);
    ym_mp_free(mp);
}
END_TEST

/* ---------- adapter store ---------- */

/* One upload's worth of store work: a fresh directory with one file, committed as <name>. */
static void store_put(const char *root, const char *name, uint64_t *version, uint64_t *replaced)
{
    char tmp[4096];
    ym_diag d = {0};
    ck_assert_int_eq(ym_store_begin(root, "t", tmp, sizeof(tmp), &d), YM_OK);
    int fd = ym_store_open_part(tmp, "adapter_config.json", &d);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "{}", 2), 2);
    ck_assert_int_eq(ym_store_close_part(fd), 0);
    ck_assert_msg(ym_store_commit(root, "t", name, tmp, version, replaced, &d) == YM_OK, "%s",
                  d.msg);
}

START_TEST(test_store_commit_reports_what_it_replaced)
{
    /* The answer to an upload (201 new, 200 replaced) comes from here, not from the registry,
     * which the store watcher may have updated with this very version first. */
    char root[] = "/tmp/yunmin-store-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(root));
    uint64_t v1, v2, v3, r1, r2, r3;
    store_put(root, "a", &v1, &r1);
    store_put(root, "a", &v2, &r2);
    store_put(root, "b", &v3, &r3);
    ck_assert_uint_eq(r1, 0);
    ck_assert_uint_eq(r2, v1);
    ck_assert_uint_gt(v2, v1);
    ck_assert_uint_eq(r3, 0);
    ym_diag d = {0};
    ck_assert_int_eq(ym_store_remove(root, "t", "a", &d), YM_OK);
    store_put(root, "a", &v1, &r1);
    ck_assert_uint_eq(r1, 0);
    ym_store_rmtree(root);
}
END_TEST

/* ---------- scheduler ---------- */

typedef struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int wakes;
} waiter;

static void on_wake(void *arg)
{
    waiter *w = arg;
    pthread_mutex_lock(&w->lock);
    w->wakes++;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

typedef struct fixture {
    ym_model_t *model;
    ym_tok_t *tok;
    ym_metrics_t *metrics;
    waiter w;
} fixture;

static void fixture_init(fixture *f)
{
    ym_diag d = {0};
    ck_assert_int_eq(ym_model_load(YM_MODEL_DIR, &f->model, &d), YM_OK);
    ck_assert_int_eq(ym_tok_load(YM_MODEL_DIR "/tokenizer.json", &f->tok, &d), YM_OK);
    f->metrics = ym_metrics_new();
    pthread_mutex_init(&f->w.lock, NULL);
    pthread_cond_init(&f->w.cond, NULL);
}

static void fixture_deinit(fixture *f)
{
    ym_model_unref(f->model);
    ym_tok_free(f->tok);
    ym_metrics_free(f->metrics);
}

/* Greedy ids of a prompt by the engine alone: whole-prompt prefill, then one token a step. */
static int reference_greedy(fixture *f, const int32_t *prompt, int n_prompt, int n_gen,
                            int32_t *out)
{
    ym_ctx_t *ctx;
    ym_state_t *st;
    ck_assert_int_eq(ym_ctx_new(f->model, n_prompt, 1, &ctx), YM_OK);
    ck_assert_int_eq(ym_state_new(&f->model->cfg, &st), YM_OK);
    int nv = f->model->cfg.n_vocab, n_real = ym_tok_n_vocab(f->tok);
    float *logits = malloc((size_t)nv * sizeof(float));
    int seq_start[2] = {0, n_prompt};
    ym_state_t *states[1] = {st};
    ym_batch b = {.n_seq = 1, .tokens = prompt, .seq_start = seq_start, .states = states,
                  .logits = YM_LOGITS_LAST};
    ck_assert_int_eq(ym_forward(ctx, &b, logits, NULL), YM_OK);
    int n = 0;
    for (; n < n_gen; n++) {
        int best = 0;
        for (int i = 1; i < n_real && i < nv; i++)
            if (logits[i] > logits[best])
                best = i;
        out[n] = best;
        if (best == ym_tok_eos_id(f->tok)) {
            n++;
            break;
        }
        seq_start[1] = 1;
        int32_t id = best;
        b.tokens = &id;
        ck_assert_int_eq(ym_forward(ctx, &b, logits, NULL), YM_OK);
    }
    free(logits);
    ym_state_free(st);
    ym_ctx_free(ctx);
    return n;
}

static ym_gen *make_gen(fixture *f, const char *text, int max_tokens, int greedy, int logprobs)
{
    ym_ids ids = {0};
    ck_assert_int_eq(ym_tok_encode(f->tok, text, strlen(text), &ids), YM_OK);
    ym_gen_params p = {
        .prompt = ids.v,
        .n_prompt = ids.n,
        .sampling = ym_sampling_default(),
        .max_tokens = max_tokens,
        .ignore_eos = 0,
        .id = "test",
    };
    if (greedy)
        p.sampling.temperature = 0;
    p.sampling.n_logprobs = logprobs;
    ym_gen *g;
    ck_assert_int_eq(ym_gen_new(&p, &g), YM_OK);
    return g;
}

/* Drain a job's output until it finishes; returns the finish reason, the ids in *ids. */
static ym_finish wait_job(fixture *f, ym_sched_t *s, ym_gen *g, int32_t *ids, int *n_ids,
                          int max_ids)
{
    ym_gen_delta d = {0};
    *n_ids = 0;
    for (int spins = 0; spins < 200000; spins++) {
        ym_gen_take(g, &d);
        for (int i = 0; i < d.n_toks && *n_ids < max_ids; i++)
            ids[(*n_ids)++] = d.toks[i].id;
        if (d.finish != YM_FINISH_NONE) {
            ym_finish fin = d.finish;
            ym_gen_delta_deinit(&d);
            /* Drop the ready-list references as the loop would. */
            for (ym_gen *r = ym_sched_take_ready(s), *next; r != NULL; r = next) {
                next = ym_sched_ready_next(s, r);
                ym_gen_unref(r);
            }
            return fin;
        }
        usleep(200);
    }
    ym_gen_delta_deinit(&d);
    ck_abort_msg("job never finished");
    return YM_FINISH_NONE;
}


/* --- state cache --- */

static ym_state_t *filled_state(const ym_config *cfg, float v, int64_t n_tokens)
{
    ym_state_t *st;
    ck_assert_int_eq(ym_state_new(cfg, &st), YM_OK);
    size_t nc = (size_t)st->n_layer * st->d_inner * (st->d_conv - 1);
    size_t ns = (size_t)st->n_layer * st->d_inner * st->d_state;
    for (size_t i = 0; i < nc; i++)
        st->conv[i] = v + (float)i * 1e-3f;
    for (size_t i = 0; i < ns; i++)
        st->ssm[i] = -v - (float)i * 1e-3f;
    st->n_tokens = n_tokens;
    return st;
}

static const ym_config small_cfg = {.n_layer = 2, .d_inner = 8, .d_conv = 4, .d_state = 4,
                                    .d_model = 4, .n_vocab = 16, .dt_rank = 1};

START_TEST(test_skeys_separate_what_they_should)
{
    ym_skey a, b, r1, r2, c1, c2;
    ym_skey_session(&a, "acme", "s1");
    ym_skey_session(&b, "globex", "s1");
    ck_assert(!ym_skey_equal(&a, &b)); /* sessions are per tenant */
    ym_skey_session(&b, "acm", "es1");
    ck_assert(!ym_skey_equal(&a, &b)); /* the boundary between the parts counts */
    ym_skey_root(&r1, "acme", "");
    ym_skey_root(&r2, "acme", "voice@1000");
    ck_assert(!ym_skey_equal(&r1, &r2)); /* adapters change the state */
    ym_skey_root(&r2, "acme", "voice@1001");
    ym_skey_root(&b, "acme", "voice@1000");
    ck_assert(!ym_skey_equal(&r2, &b)); /* so does their version */
    int32_t t1[4] = {1, 2, 3, 4}, t2[4] = {1, 2, 3, 5};
    ym_skey_chain(&c1, &r1, t1, 4, NULL, 0);
    ym_skey_chain(&c2, &r1, t2, 4, NULL, 0);
    ck_assert(!ym_skey_equal(&c1, &c2));
    ym_skey_chain(&c2, &r1, t1, 4, NULL, 0);
    ck_assert(ym_skey_equal(&c1, &c2)); /* deterministic */
    ym_skey_chain(&c2, &r2, t1, 4, NULL, 0);
    ck_assert(!ym_skey_equal(&c1, &c2));
    ym_skey_chain(&c2, &r1, t1, 1, t1 + 1, 3); /* the split does not matter */
    ck_assert(ym_skey_equal(&c1, &c2));
    /* A history hash does not depend on where it is split, only on the tokens. */
    ym_skey h1, h2, h3;
    ym_skey_history(&h1, &r1, t1, 4, NULL, 0);
    ym_skey_history(&h2, &r1, t1, 2, t1 + 2, 2);
    ym_skey_history(&h3, &r1, t1, 3, NULL, 0);
    ck_assert(ym_skey_equal(&h1, &h2));
    ck_assert(!ym_skey_equal(&h1, &h3));
    /* ... nor on how it was fed as the tokens arrived; a forked running hash goes on alone. */
    ym_shist run, fork;
    ym_shist_init(&run, &r1);
    ym_shist_update(&run, t1, 1);
    fork = run;
    ym_shist_update(&run, t1 + 1, 3);
    ym_shist_final(&run, &h2);
    ck_assert(ym_skey_equal(&h1, &h2));
    ym_shist_update(&fork, t1 + 1, 2);
    ym_shist_final(&fork, &h2);
    ck_assert(ym_skey_equal(&h3, &h2));
    ym_shist_final(&fork, &h2); /* final leaves the running state as it was */
    ck_assert(ym_skey_equal(&h3, &h2));
}
END_TEST

START_TEST(test_scache_lru_budget_and_pins)
{
    ym_metrics_t *m = ym_metrics_new();
    ym_state_t *probe = filled_state(&small_cfg, 0, 1);
    size_t one = ym_scache_entry_bytes(probe);
    ym_state_free(probe);
    ym_scache_t *c;
    ck_assert_int_eq(ym_scache_new(3 * one, m, &c), YM_OK);
    ym_skey k[5];
    for (int i = 0; i < 5; i++) {
        char id[8];
        snprintf(id, sizeof(id), "s%d", i);
        ym_skey_session(&k[i], "t", id);
    }
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(ym_scache_put(c, &k[i], YM_SC_SESSION, NULL,
                                       filled_state(&small_cfg, (float)i, i + 1)), 1);
    ym_scache_stats st;
    ym_scache_get_stats(c, &st);
    ck_assert_uint_eq(st.bytes, 3 * one);
    ck_assert_int_eq(st.n_sessions, 3);
    /* Touch 0: 1 is now the least recently used and goes first. */
    ck_assert_int_eq(ym_scache_touch(c, &k[0]), 1);
    ck_assert_int_eq(ym_scache_put(c, &k[3], YM_SC_PREFIX, NULL,
                                   filled_state(&small_cfg, 3, 4)), 1);
    ck_assert_int_eq(ym_scache_touch(c, &k[1]), 0);
    ck_assert_int_eq(ym_scache_touch(c, &k[0]), 1);
    ym_scache_get_stats(c, &st);
    ck_assert_int_eq(st.n_sessions, 2);
    ck_assert_int_eq(st.n_prefixes, 1);
    ck_assert_uint_eq(st.evictions, 1);
    /* A pinned entry is neither evicted nor freed: its state stays readable. */
    ym_sc_entry *e2 = ym_scache_pin(c, &k[2]);
    ck_assert_ptr_nonnull(e2);
    ck_assert_int_eq(ym_scache_put(c, &k[4], YM_SC_SESSION, NULL,
                                   filled_state(&small_cfg, 4, 5)), 1);
    ck_assert_int_eq(ym_scache_touch(c, &k[2]), 1); /* 3 went instead (LRU, unpinned) */
    ck_assert_int_eq(ym_scache_touch(c, &k[3]), 0);
    /* Replacing or removing a pinned entry unlinks it; the pin holder still reads it. */
    ck_assert_int_eq(ym_scache_put(c, &k[2], YM_SC_SESSION, NULL,
                                   filled_state(&small_cfg, 9, 10)), 1);
    ck_assert_int_eq(ym_sc_entry_state(e2)->n_tokens, 3);
    ck_assert_float_eq(ym_sc_entry_state(e2)->ssm[0], -2.0f);
    ym_scache_unpin(c, e2); /* freed now (ASan checks) */
    ym_sc_entry *e = ym_scache_pin(c, &k[2]);
    ck_assert_int_eq(ym_sc_entry_state(e)->n_tokens, 10);
    ym_scache_unpin(c, e);
    /* Everything pinned: a new entry is refused, nothing is lost. */
    ym_sc_entry *p0 = ym_scache_pin(c, &k[0]), *p2 = ym_scache_pin(c, &k[2]),
                *p4 = ym_scache_pin(c, &k[4]);
    ck_assert_int_eq(ym_scache_put(c, &k[1], YM_SC_SESSION, NULL,
                                   filled_state(&small_cfg, 1, 2)), 0);
    ym_scache_unpin(c, p0);
    ym_scache_unpin(c, p2);
    ym_scache_unpin(c, p4);
    /* Larger than the whole budget: refused. Shrinking the budget evicts. */
    ym_scache_set_budget(c, one);
    ym_scache_get_stats(c, &st);
    ck_assert_uint_le(st.bytes, one);
    ck_assert_int_eq(st.n_sessions + st.n_prefixes, 1);
    ck_assert_int_eq(ym_scache_remove(c, &k[2]) + ym_scache_remove(c, &k[0]) +
                         ym_scache_remove(c, &k[4]), 1);
    ck_assert_int_eq(ym_scache_remove(c, &k[4]), 0);
    ym_scache_set_budget(c, 0);
    ck_assert_int_eq(ym_scache_put(c, &k[1], YM_SC_SESSION, NULL,
                                   filled_state(&small_cfg, 1, 2)), 0);
    /* The metrics follow. */
    char *text;
    size_t len;
    ck_assert_int_eq(ym_metrics_render(m, &text, &len), 0);
    ck_assert_ptr_nonnull(strstr(text, "\nyunmin_cache_bytes 0\n"));
    ck_assert_ptr_nonnull(strstr(text, "\nyunmin_cache_budget_bytes 0\n"));
    ck_assert_ptr_nonnull(strstr(text, "\nyunmin_cache_evictions_total 4\n"));
    free(text);
    ym_scache_free(c);
    ym_metrics_free(m);
}
END_TEST

START_TEST(test_scache_many_entries_grow_the_table)
{
    ym_state_t *probe = filled_state(&small_cfg, 0, 1);
    size_t one = ym_scache_entry_bytes(probe);
    ym_state_free(probe);
    ym_scache_t *c;
    ck_assert_int_eq(ym_scache_new(1000 * one, NULL, &c), YM_OK);
    ym_skey root, k;
    ym_skey_root(&root, "t", "");
    for (int32_t i = 0; i < 1500; i++) {
        ym_skey_chain(&k, &root, &i, 1, NULL, 0);
        ck_assert_int_eq(ym_scache_put(c, &k, YM_SC_PREFIX, NULL,
                                       filled_state(&small_cfg, (float)i, i + 1)), 1);
    }
    int found = 0;
    for (int32_t i = 0; i < 1500; i++) {
        ym_skey_chain(&k, &root, &i, 1, NULL, 0);
        ym_sc_entry *e = ym_scache_pin(c, &k);
        if (e != NULL) {
            ck_assert_int_eq(ym_sc_entry_state(e)->n_tokens, i + 1);
            ck_assert_int_ge(i, 500); /* the oldest 500 were evicted */
            found++;
        }
        ym_scache_unpin(c, e);
    }
    ck_assert_int_eq(found, 1000);
    ym_scache_free(c);
}
END_TEST

START_TEST(test_session_blob_round_trip_and_rejections)
{
    unsigned char fp[32], other[32];
    memset(fp, 7, sizeof(fp));
    memset(other, 8, sizeof(other));
    ym_state_t *st = filled_state(&small_cfg, 0.5f, 42);
    ym_skey hist, got_hist;
    memset(hist.b, 3, sizeof(hist.b));
    size_t n = ym_session_blob_size(st);
    unsigned char *blob = malloc(n);
    ck_assert_int_eq(ym_session_blob_write(st, &hist, fp, blob, n - 1), YM_EINVAL);
    ck_assert_int_eq(ym_session_blob_write(st, &hist, fp, blob, n), YM_OK);
    ym_state_t *back = NULL;
    ym_diag d = {0};
    ck_assert_int_eq(ym_session_blob_read(blob, n, st, fp, &back, &got_hist, &d), YM_OK);
    ck_assert(ym_skey_equal(&hist, &got_hist));
    ck_assert_int_eq(back->n_tokens, 42);
    ck_assert_int_eq(memcmp(back->ssm, st->ssm, 2 * 8 * 4 * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(back->conv, st->conv, 2 * 8 * 3 * sizeof(float)), 0);
    ym_state_free(back);
    /* Every truncation, and a flipped bit anywhere, is refused. */
    for (size_t len = 0; len < n; len += (len < 200 ? 1 : 97)) {
        ck_assert_int_eq(ym_session_blob_read(blob, len, st, fp, &back, &got_hist, &d),
                         YM_EFORMAT);
        ck_assert_ptr_null(back);
    }
    for (size_t i = 0; i < n; i += (i < 120 ? 1 : 13)) {
        if (i >= 40 && i < 72)
            continue; /* the history hash is not checked here: it only has to match prompts */
        if (i >= 72 + 24 && i < 72 + 32)
            continue; /* n_tokens: any positive count is a valid state */
        blob[i] ^= 0x10;
        ym_err err = ym_session_blob_read(blob, n, st, fp, &back, &got_hist, &d);
        ck_assert_msg(err == YM_EFORMAT, "byte %zu flipped, accepted", i);
        blob[i] ^= 0x10;
    }
    ck_assert_int_eq(ym_session_blob_read(blob, n, st, other, &back, &got_hist, &d),
                     YM_EFORMAT);
    ck_assert_ptr_nonnull(strstr(d.msg, "another model"));
    ym_config big = small_cfg;
    big.d_inner = 16;
    ym_state_t *big_st = filled_state(&big, 0, 1);
    ck_assert_int_eq(ym_session_blob_read(blob, n, big_st, fp, &back, &got_hist, &d), YM_EFORMAT);
    ym_state_free(big_st);
    /* A NaN in the state (checksum made right) is refused. */
    st->ssm[3] = NAN;
    ck_assert_int_eq(ym_session_blob_write(st, &hist, fp, blob, n), YM_OK);
    ck_assert_int_eq(ym_session_blob_read(blob, n, st, fp, &back, &got_hist, &d),
                     YM_EFORMAT);
    ck_assert_ptr_nonnull(strstr(d.msg, "not finite"));
    free(blob);
    ym_state_free(st);
}
END_TEST

static ym_gen *make_gen_ids(const int32_t *ids, int n, int max_tokens, const char *tenant,
                            const char *identity, const char *session)
{
    int32_t *copy = malloc((size_t)n * sizeof(int32_t));
    memcpy(copy, ids, (size_t)n * sizeof(int32_t));
    ym_gen_params p = {
        .prompt = copy,
        .n_prompt = (size_t)n,
        .sampling = ym_sampling_default(),
        .max_tokens = max_tokens,
        .id = "test",
        .tenant = tenant,
        .identity = identity,
        .session_id = session,
    };
    p.sampling.temperature = 0;
    ym_gen *g;
    ck_assert_int_eq(ym_gen_new(&p, &g), YM_OK);
    return g;
}

/* Run one job to its end: its ids in out, the prompt tokens it resumed in *cached, the tokens
 * it fed to the model after its prompt (all but the last sampled one) in *fed. */
/* With a disk tier: run_job waits for the tier's writes after each job, as the server's
 * response waits for its session's file (and the checkpoints are on disk for the next job). */
static ym_scache_t *tier_cache;

static int run_job(fixture *f, ym_sched_t *s, ym_gen *g, int32_t *out, int max, int *cached,
                   int *fed)
{
    int n;
    ck_assert_int_eq(ym_sched_submit(s, g), YM_OK);
    ym_finish fin = wait_job(f, s, g, out, &n, max);
    if (tier_cache != NULL)
        ym_scache_flush(tier_cache);
    *fed = fin == YM_FINISH_STOP ? n : n - 1; /* an end-of-text token is sampled, not fed */
    ym_gen_delta d = {0};
    ym_gen_take(g, &d);
    *cached = d.n_cached;
    ym_gen_delta_deinit(&d);
    ym_gen_unref(g);
    return n;
}

/* Loop 0: the RAM cache. Loop 1: a RAM budget of one byte over a disk tier, so every session
 * and checkpoint is resumed from its file, read by the scheduler's lookup threads before
 * admission (the engine thread reads RAM only). */
START_TEST(test_sched_resumed_sessions_and_prefixes_equal_cold_runs)
{
    fixture f = {0};
    fixture_init(&f);
    ym_scache_t *cache;
    ck_assert_int_eq(ym_scache_new(_i == 0 ? 64u << 20 : 1, f.metrics, &cache), YM_OK);
    char dir[] = "/tmp/ym-sched-tier-XXXXXX";
    ym_disktier_t *disk = NULL; /* the cache's once set */
    tier_cache = NULL;
    if (_i == 1) {
        ck_assert_ptr_nonnull(mkdtemp(dir));
        ym_state_t *like;
        unsigned char fp[32];
        ck_assert_int_eq(ym_state_new_for_model(f.model, &like), YM_OK);
        ym_model_fingerprint(f.model, fp);
        ym_disktier_opts dopts = {.dir = dir, .secret = "test"};
        ck_assert_int_eq(ym_disktier_open(&dopts, like, fp, f.metrics, &disk, NULL), YM_OK);
        ym_state_free(like);
        ym_scache_set_disk(cache, disk);
        tier_cache = cache;
    }
    /* Small chunks and interval so a 100-token history crosses many of both. */
    ym_sched_opts o = {.max_running = 4, .max_batch_tokens = 16, .prefill_chunk = 7,
                       .max_queue = 16, .n_threads = 1, .checkpoint_interval = 16};
    ym_sched_t *s;
    ck_assert_int_eq(ym_sched_new(f.model, f.tok, &o, f.metrics, cache, on_wake, &f.w, &s, NULL),
                     YM_OK);
    enum { NG = 12, MAXH = 400 };
    int32_t hist[MAXH], got[NG], want[NG];
    int nh = 0, cached, n, fed, prev_nh = 0, prev_fed = 0;
    ym_ids ids = {0};
    const char *opening = "First Citizen:\nBefore we proceed any further, hear me speak.\n";
    ym_tok_encode(f.tok, opening, strlen(opening), &ids);
    memcpy(hist, ids.v, ids.n * sizeof(int32_t));
    nh = (int)ids.n;
    ym_ids_deinit(&ids);
    ym_tok_encode(f.tok, "\nAll:\n", 6, &ids);
    int resumed_turns = 0;
    for (int turn = 0; turn < 6; turn++) {
        n = run_job(&f, s, make_gen_ids(hist, nh, NG, "acme", "", "conv"), got, NG, &cached, &fed);
        int n_want = reference_greedy(&f, hist, nh, NG, want);
        if (n_want > 0 && want[n_want - 1] == ym_tok_eos_id(f.tok))
            n_want--;
        ck_assert_int_eq(n, n_want);
        for (int k = 0; k < n; k++)
            ck_assert_msg(got[k] == want[k], "turn %d token %d: %d != %d", turn, k, got[k],
                          want[k]);
        /* The state holds the history up to the last fed token: all but the last sampled. */
        if (turn > 0) {
            ck_assert_int_eq(cached, prev_nh + prev_fed);
            resumed_turns++;
        }
        prev_nh = nh;
        prev_fed = fed;
        memcpy(hist + nh, got, (size_t)n * sizeof(int32_t));
        nh += n;
        memcpy(hist + nh, ids.v, ids.n * sizeof(int32_t));
        nh += (int)ids.n;
        ck_assert_int_lt(nh + NG + 8, MAXH);
    }
    ck_assert_int_eq(resumed_turns, 5);
    /* Another tenant's job with the same tokens and session id resumes nothing. */
    n = run_job(&f, s, make_gen_ids(hist, nh, NG, "globex", "", "conv"), got, NG, &cached, &fed);
    ck_assert_int_eq(cached, 0);
    /* Same tenant, other adapter identity: nothing either (checkpoints are keyed by it). */
    n = run_job(&f, s, make_gen_ids(hist, nh, 1, "acme", "voice@1", NULL), got, NG, &cached, &fed);
    ck_assert_int_eq(cached, 0);
    /* No session, same tenant and identity: the longest checkpoint below the prompt's end. */
    n = run_job(&f, s, make_gen_ids(hist, nh, NG, "acme", "", NULL), got, NG, &cached, &fed);
    /* Checkpoints exist up to the last turn's history (prompt and fed tokens). */
    int last = prev_nh + prev_fed < nh - 1 ? prev_nh + prev_fed : nh - 1;
    ck_assert_int_eq(cached, (last / 16) * 16);
    ck_assert_int_gt(cached, 64);
    int n_want = reference_greedy(&f, hist, nh, NG, want);
    if (n_want > 0 && want[n_want - 1] == ym_tok_eos_id(f.tok))
        n_want--;
    ck_assert_int_eq(n, n_want);
    for (int k = 0; k < n; k++)
        ck_assert_int_eq(got[k], want[k]);
    /* A prompt that does not extend the session runs without it and replaces it. */
    hist[3] = hist[3] == 5 ? 6 : 5; /* longer than the session's history, but not its extension */
    n = run_job(&f, s, make_gen_ids(hist, nh, 2, "acme", "", "conv"), got, NG, &cached, &fed);
    ck_assert_int_eq(cached, 0); /* every checkpoint of this prompt is after token 3 too */
    ym_skey key;
    ym_skey_session(&key, "acme", "conv");
    ym_sc_entry *e = ym_scache_pin(cache, &key);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(ym_sc_entry_state(e)->n_tokens, nh + fed);
    uint64_t serial = ym_sc_entry_serial(e);
    int64_t held = ym_sc_entry_state(e)->n_tokens;
    ym_scache_unpin(cache, e);
    /* An appended turn checked against an entry that has been replaced since (another serial)
     * fails with YM_EEXIST and leaves the session as it is. */
    int32_t more[2] = {7, 8};
    int32_t *copy = malloc(sizeof(more));
    memcpy(copy, more, sizeof(more));
    ym_gen_params ap = {.prompt = copy, .n_prompt = 2, .sampling = ym_sampling_default(),
                        .max_tokens = 2, .id = "test", .tenant = "acme", .identity = "",
                        .session_id = "conv", .append = 1, .append_serial = serial + 1000,
                        .append_base = held};
    ym_gen *ag;
    ck_assert_int_eq(ym_gen_new(&ap, &ag), YM_OK);
    ck_assert_int_eq(ym_sched_submit(s, ag), YM_OK);
    ck_assert_int_eq(wait_job(&f, s, ag, got, &n, NG), YM_FINISH_ERROR);
    ym_gen_delta dd = {0};
    ym_gen_take(ag, &dd);
    ck_assert_int_eq(dd.error, YM_EEXIST);
    ym_gen_delta_deinit(&dd);
    ym_gen_unref(ag);
    e = ym_scache_pin(cache, &key);
    ck_assert_uint_eq(ym_sc_entry_serial(e), serial);
    ym_scache_unpin(cache, e);
    /* With the right serial it resumes the whole history. */
    copy = malloc(sizeof(more));
    memcpy(copy, more, sizeof(more));
    ap.prompt = copy;
    ap.append_serial = serial;
    ck_assert_int_eq(ym_gen_new(&ap, &ag), YM_OK);
    n = run_job(&f, s, ag, got, NG, &cached, &fed);
    ck_assert_int_eq(cached, held);
    ym_ids_deinit(&ids);
    ym_sched_free(s);
    if (_i == 1) {
        /* Every resume came from a file: RAM never held a state. */
        ym_disktier_stats ds;
        ym_disktier_get_stats(disk, &ds);
        ck_assert_uint_gt(ds.hits, 5);
        ym_scache_stats st;
        ym_scache_get_stats(cache, &st);
        ck_assert_int_eq(st.n_sessions + st.n_prefixes, 0);
    }
    ym_scache_free(cache);
    tier_cache = NULL;
    if (_i == 1) {
        DIR *dp = opendir(dir);
        for (struct dirent *de; dp != NULL && (de = readdir(dp)) != NULL;) {
            char path[512];
            snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
            if (de->d_name[0] != '.' || strlen(de->d_name) > 2)
                unlink(path);
        }
        if (dp != NULL)
            closedir(dp);
        rmdir(dir);
    }
    fixture_deinit(&f);
}
END_TEST

START_TEST(test_sched_batched_greedy_equals_engine_alone)
{
    fixture f = {0};
    fixture_init(&f);
    static const char *prompts[] = {"ROMEO:", "JULIET:\nO Romeo, Romeo", "First Citizen:\nWe",
                                    "KING HENRY:\nOnce more unto the breach, dear friends",
                                    "To be", "MENENIUS:"};
    enum { NP = 6, NG = 24 };
    ym_sched_opts o = {.max_running = 4, .max_batch_tokens = 8, .prefill_chunk = 3,
                       .max_queue = 16, .n_threads = 1};
    ym_sched_t *s;
    ck_assert_int_eq(ym_sched_new(f.model, f.tok, &o, f.metrics, NULL, on_wake, &f.w, &s, NULL), YM_OK);
    ym_gen *g[NP];
    for (int i = 0; i < NP; i++) {
        g[i] = make_gen(&f, prompts[i], NG, 1, 0);
        ck_assert_int_eq(ym_sched_submit(s, g[i]), YM_OK);
    }
    for (int i = 0; i < NP; i++) {
        int32_t got[NG], want[NG];
        int n_got, n_want;
        ym_ids ids = {0};
        ym_tok_encode(f.tok, prompts[i], strlen(prompts[i]), &ids);
        n_want = reference_greedy(&f, ids.v, (int)ids.n, NG, want);
        ym_ids_deinit(&ids);
        ym_finish fin = wait_job(&f, s, g[i], got, &n_got, NG);
        ck_assert(fin == YM_FINISH_LENGTH || fin == YM_FINISH_STOP);
        /* An end-of-text token ends the job without appearing in its output. */
        if (fin == YM_FINISH_STOP)
            n_want--;
        ck_assert_int_eq(n_got, n_want);
        for (int k = 0; k < n_got; k++)
            ck_assert_msg(got[k] == want[k], "prompt %d token %d: %d != %d", i, k, got[k],
                          want[k]);
        ym_gen_unref(g[i]);
    }
    ck_assert_int_eq(ym_sched_n_active(s), 0);
    ym_sched_free(s);
    fixture_deinit(&f);
}
END_TEST

START_TEST(test_sched_queue_limit_and_cancel)
{
    fixture f = {0};
    fixture_init(&f);
    ym_sched_opts o = {.max_running = 1, .max_batch_tokens = 4, .prefill_chunk = 4,
                       .max_queue = 1, .n_threads = 1};
    ym_sched_t *s;
    ck_assert_int_eq(ym_sched_new(f.model, f.tok, &o, f.metrics, NULL, on_wake, &f.w, &s, NULL), YM_OK);
    ym_gen *a = make_gen(&f, "ROMEO:", 1 << 20, 0, 0);
    ym_gen *b = make_gen(&f, "JULIET:", 1 << 20, 0, 0);
    ym_gen *c = make_gen(&f, "NURSE:", 4, 0, 0);
    ck_assert_int_eq(ym_sched_submit(s, a), YM_OK);
    /* Wait until a runs, so b is the one waiting. */
    for (int i = 0; i < 10000 && ym_sched_n_active(s) != 1; i++)
        usleep(100);
    usleep(20000);
    ck_assert_int_eq(ym_sched_submit(s, b), YM_OK);
    ck_assert_int_eq(ym_sched_submit(s, c), YM_EBUSY);
    int32_t ids[8];
    int n;
    ym_gen_cancel(a);
    ck_assert_int_eq(wait_job(&f, s, a, ids, &n, 8), YM_FINISH_CANCELLED);
    ym_gen_cancel(b);
    ck_assert_int_eq(wait_job(&f, s, b, ids, &n, 8), YM_FINISH_CANCELLED);
    for (int i = 0; i < 10000 && ym_sched_n_active(s) != 0; i++)
        usleep(100);
    ck_assert_int_eq(ym_sched_n_active(s), 0);
    /* Room again. */
    ck_assert_int_eq(ym_sched_submit(s, c), YM_OK);
    ck_assert(wait_job(&f, s, c, ids, &n, 8) != YM_FINISH_CANCELLED);
    ck_assert_int_le(n, 4);
    ym_gen_unref(a);
    ym_gen_unref(b);
    ym_gen_unref(c);
    ym_sched_free(s);
    fixture_deinit(&f);
}
END_TEST

START_TEST(test_sched_stop_cancels_running_and_queued)
{
    fixture f = {0};
    fixture_init(&f);
    ym_sched_opts o = {.max_running = 1, .max_batch_tokens = 4, .prefill_chunk = 4,
                       .max_queue = 4, .n_threads = 1};
    ym_sched_t *s;
    ck_assert_int_eq(ym_sched_new(f.model, f.tok, &o, f.metrics, NULL, on_wake, &f.w, &s, NULL), YM_OK);
    ym_gen *g[3];
    for (int i = 0; i < 3; i++) {
        g[i] = make_gen(&f, "ROMEO:", 1 << 20, 0, 3);
        ck_assert_int_eq(ym_sched_submit(s, g[i]), YM_OK);
    }
    usleep(20000);
    ym_sched_free(s); /* must not hang; every job ends cancelled */
    for (int i = 0; i < 3; i++) {
        ym_gen_delta d = {0};
        ym_gen_take(g[i], &d);
        ck_assert_int_eq(d.finish, YM_FINISH_CANCELLED);
        ym_gen_delta_deinit(&d);
        ym_gen_unref(g[i]);
    }
    fixture_deinit(&f);
}
END_TEST

/* --- the router --- */

START_TEST(test_router_matches_method_and_pattern)
{
    static const ym_route t[] = {
        {"GET", "/v1/adapters", YM_AUTH_TENANT, YM_BODY_REQUEST, NULL, NULL, NULL, NULL},
        {"GET", "/v1/adapters/{name}", YM_AUTH_TENANT, YM_BODY_REQUEST, NULL, NULL, NULL, NULL},
        {"PUT", "/v1/adapters/{name}", YM_AUTH_TENANT, YM_BODY_STREAM, NULL, NULL, NULL, NULL},
        {"GET", "/admin/sessions/{tenant}/{id}", YM_AUTH_ADMIN, YM_BODY_REQUEST, NULL, NULL,
         NULL, NULL},
    };
    size_t n = sizeof(t) / sizeof(t[0]);
    ym_match m;
    ck_assert_int_eq(ym_router_match(t, n, "GET", "/v1/adapters", &m), 0);
    ck_assert_ptr_eq(m.route, &t[0]);
    ck_assert_ptr_null(m.params[0]);
    ck_assert_int_eq(ym_router_match(t, n, "PUT", "/v1/adapters/romeo", &m), 0);
    ck_assert_ptr_eq(m.route, &t[2]);
    ck_assert_str_eq(m.params[0], "romeo");
    ck_assert_str_eq(m.label, "/v1/adapters/{name}");
    /* The last parameter takes the rest, so a handler can refuse a bad name with a 400. */
    ck_assert_int_eq(ym_router_match(t, n, "HEAD", "/v1/adapters/a/b", &m), 0);
    ck_assert_ptr_eq(m.route, &t[1]);
    ck_assert_str_eq(m.params[0], "a/b");
    ck_assert_int_eq(ym_router_match(t, n, "GET", "/admin/sessions/alpha/s-1/x", &m), 0);
    ck_assert_str_eq(m.params[0], "alpha");
    ck_assert_str_eq(m.params[1], "s-1/x");
    /* A known path with another method: 405 and the methods it allows. */
    ck_assert_int_eq(ym_router_match(t, n, "DELETE", "/v1/adapters/romeo", &m), 405);
    ck_assert_ptr_null(m.route);
    ck_assert_str_eq(m.allow, "GET, PUT");
    ck_assert_str_eq(m.label, "/v1/adapters/{name}");
    ck_assert_int_eq(ym_router_match(t, n, "GET", "/v1/adapters//", &m), 0);
    ck_assert_str_eq(m.params[0], "/"); /* the handler refuses the name */
    /* Unknown paths, empty parameters, missing segments: 404. */
    const char *unknown[] = {"/v1/adapters/", "/v1/adapter", "/admin/sessions/a",
                             "/admin/sessions//x", "", "/", "/v1/adaptersx"};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        ck_assert_msg(ym_router_match(t, n, "GET", unknown[i], &m) == 404, "%s matched",
                      unknown[i]);
        ck_assert_str_eq(m.label, "other");
    }
}
END_TEST

/* --- the error table against docs/API.md --- */

static const char *type_for_status(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 429:
        return "rate_limit_error";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

/* ---------- one error path ---------- */

/* The transport (server/httpd.c) is the only writer of errors and the only user of MHD: every
 * other server file returns ym_err + diag (or, for work that ends after its handler returned,
 * hands them to ym_hreq_fail). So no other file may name MHD, call ym_hreq_respond_error, or
 * answer ym_hreq_respond_json / _text with a status of 300 or more. Exceptions, each for a
 * reason: probes.c's /readyz answers 503 with its own status body (a probe's answer, not an
 * error). */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *s = malloc((size_t)n + 1);
    if (s != NULL) {
        size_t got = fread(s, 1, (size_t)n, f);
        s[got] = '\0';
    }
    fclose(f);
    return s;
}

/* The status argument (the second) of each call to fn in src: every 3-digit number in it. */
static int bad_status(const char *src, const char *fn, char *why, size_t cap)
{
    for (const char *p = strstr(src, fn); p != NULL; p = strstr(p + 1, fn)) {
        const char *a = strchr(p, ',');
        if (a == NULL)
            break;
        int depth = 0;
        const char *e = a + 1;
        for (; *e && !(depth == 0 && (*e == ',' || *e == ')')); e++)
            depth += *e == '(' ? 1 : *e == ')' ? -1 : 0;
        for (const char *q = a + 1; q + 3 <= e; q++) {
            if (q[0] >= '1' && q[0] <= '9' && q[1] >= '0' && q[1] <= '9' && q[2] >= '0' &&
                q[2] <= '9' && (q + 3 == e || q[3] < '0' || q[3] > '9') &&
                (q == a + 1 || q[-1] < '0' || q[-1] > '9') && q[0] >= '3') {
                snprintf(why, cap, "%s with status %.3s", fn, q);
                return 1;
            }
        }
    }
    return 0;
}

START_TEST(test_only_the_transport_writes_errors)
{
    DIR *d = opendir(YM_SOURCE_ROOT "/server");
    ck_assert_ptr_nonnull(d);
    int n_files = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len < 3 || strcmp(de->d_name + len - 2, ".c") != 0 ||
            strcmp(de->d_name, "httpd.c") == 0)
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/server/%s", YM_SOURCE_ROOT, de->d_name);
        char *src = slurp(path);
        ck_assert_msg(src != NULL, "cannot read %s", path);
        n_files++;
        char why[128] = "";
        int probes = strcmp(de->d_name, "probes.c") == 0;
        ck_assert_msg(strstr(src, "MHD_") == NULL, "server/%s uses MHD", de->d_name);
        ck_assert_msg(strstr(src, "ym_hreq_respond_error(") == NULL,
                      "server/%s writes an error itself: return ym_err + diag (or ym_hreq_fail)",
                      de->d_name);
        ck_assert_msg(probes || !bad_status(src, "ym_hreq_respond_json(", why, sizeof(why)),
                      "server/%s: %s", de->d_name, why);
        ck_assert_msg(!bad_status(src, "ym_hreq_respond_text(", why, sizeof(why)),
                      "server/%s: %s", de->d_name, why);
        free(src);
    }
    closedir(d);
    ck_assert_int_ge(n_files, 10);
    /* The check itself can fail: a status past 2xx in a call is found. */
    char why[128];
    ck_assert(bad_status("ym_hreq_respond_json(r, 404, x);", "ym_hreq_respond_json(", why,
                         sizeof(why)));
    ck_assert(bad_status("ym_hreq_respond_json(r, ok ? 200 : 503, x);", "ym_hreq_respond_json(",
                         why, sizeof(why)));
    ck_assert(!bad_status("ym_hreq_respond_json(r, existed ? 200 : 201, x);",
                          "ym_hreq_respond_json(", why, sizeof(why)));
}
END_TEST

START_TEST(test_err_table_matches_api_md_error_table)
{
    /* docs/API.md's error table: "| STATUS ... | when | `code`, `code` |" rows. */
    FILE *f = fopen(YM_SOURCE_ROOT "/docs/API.md", "r");
    ck_assert_msg(f != NULL, "cannot open docs/API.md");
    char line[4096];
    struct {
        int status;
        char code[64];
        int seen;
    } doc[128];
    int n_doc = 0, in_errors = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "## ", 3) == 0)
            in_errors = strncmp(line, "## Errors", 9) == 0;
        if (!in_errors || line[0] != '|' || line[1] != ' ' || line[2] < '1' || line[2] > '5')
            continue;
        int status = atoi(line + 2);
        char *last = strrchr(line, '|');
        *last = '\0';
        char *cell = strrchr(line, '|') + 1; /* the codes column */
        for (char *p = strchr(cell, '`'); p != NULL; p = strchr(p, '`')) {
            char *q = strchr(p + 1, '`');
            ck_assert_ptr_nonnull(q);
            ck_assert_int_lt(n_doc, 128);
            doc[n_doc].status = status;
            snprintf(doc[n_doc].code, sizeof(doc[0].code), "%.*s", (int)(q - p - 1), p + 1);
            doc[n_doc].seen = 0;
            n_doc++;
            p = q + 1;
        }
    }
    fclose(f);
    ck_assert_int_gt(n_doc, 10);
    /* Every row of err.h with a code is in the page, with its status; its type follows the
     * status as the page says. */
    static const struct {
        ym_err err;
        const char *name;
        int http;
        const char *type, *code;
    } rows[] = {
#define X(nm, vl, st, ty, cd, ms) {YM_##nm, #nm, st, ty, cd},
        YM_ERR_MAP(X)
#undef X
    };
    int n_table = 0;
    for (size_t k = 0; k < sizeof(rows) / sizeof(rows[0]); k++) {
        ck_assert_int_eq(ym_err_http_status(rows[k].err), rows[k].http);
        if (rows[k].code == NULL)
            continue;
        int found = 0;
        for (int i = 0; i < n_doc; i++) {
            if (strcmp(doc[i].code, rows[k].code) != 0)
                continue;
            ck_assert_msg(doc[i].status == rows[k].http, "%s: docs/API.md says %d, err.h %d",
                          doc[i].code, doc[i].status, rows[k].http);
            doc[i].seen = found = 1;
        }
        ck_assert_msg(found, "YM_%s's code %s is not in docs/API.md's error table",
                      rows[k].name, rows[k].code);
        ck_assert_str_eq(ym_err_type(rows[k].err), type_for_status(rows[k].http));
        ck_assert_str_eq(ym_err_code(rows[k].err), rows[k].code);
        n_table++;
    }
    ck_assert_int_gt(n_table, 10);
    /* And every code on the page is one of err.h's. */
    for (int i = 0; i < n_doc; i++)
        ck_assert_msg(doc[i].seen, "docs/API.md lists %s (%d), which err.h does not have",
                      doc[i].code, doc[i].status);
}
END_TEST

static Suite *server_suite(void)
{
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("conf");
    tcase_add_test(tc, test_conf_defaults_and_file_values);
    tcase_add_test(tc, test_err_table_matches_api_md_error_table);
    tcase_add_test(tc, test_only_the_transport_writes_errors);
    tcase_add_test(tc, test_router_matches_method_and_pattern);
    tcase_add_test(tc, test_conf_rejects_bad_files);
    tcase_add_test(tc, test_conf_precedence_env_over_file_flags_over_env);
    suite_add_tcase(s, tc);
    tc = tcase_create("request");
    tcase_add_test(tc, test_creq_full_request);
    tcase_add_test(tc, test_creq_prompt_forms_and_defaults);
    tcase_add_test(tc, test_creq_prompt_lists);
    tcase_add_test(tc, test_creq_rejects_each_bad_field);
    tcase_add_test(tc, test_chatreq_messages_and_fields);
    tcase_add_test(tc, test_chatreq_rejects_each_bad_field);
    tcase_add_test(tc, test_tokenize_bodies);
    suite_add_tcase(s, tc);
    tc = tcase_create("metrics");
    tcase_add_test(tc, test_metrics_text_format);
    suite_add_tcase(s, tc);
    tc = tcase_create("tenants");
    tcase_add_test(tc, test_tenants_hash_matches_sha256_vector);
    tcase_add_test(tc, test_tenants_auth);
    tcase_add_test(tc, test_tenants_rejects_bad_files);
    suite_add_tcase(s, tc);
    tc = tcase_create("multipart");
    tcase_add_test(tc, test_multipart_parts_any_split);
    tcase_add_test(tc, test_multipart_rejects_malformed);
    suite_add_tcase(s, tc);
    tc = tcase_create("store");
    tcase_add_test(tc, test_store_commit_reports_what_it_replaced);
    suite_add_tcase(s, tc);
    tc = tcase_create("statecache");
    tcase_add_test(tc, test_skeys_separate_what_they_should);
    tcase_add_test(tc, test_scache_lru_budget_and_pins);
    tcase_add_test(tc, test_scache_many_entries_grow_the_table);
    tcase_add_test(tc, test_session_blob_round_trip_and_rejections);
    suite_add_tcase(s, tc);

    tc = tcase_create("sched");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_sched_batched_greedy_equals_engine_alone);
    tcase_add_loop_test(tc, test_sched_resumed_sessions_and_prefixes_equal_cold_runs, 0, 2);
    tcase_add_test(tc, test_sched_queue_limit_and_cancel);
    tcase_add_test(tc, test_sched_stop_cancels_running_and_queued);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(server_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

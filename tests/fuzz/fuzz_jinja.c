/* tests/fuzz/fuzz_jinja.c - arbitrary bytes as a chat template, rendered over a fixed
 * conversation (or, after a NUL byte, over the JSON object that follows as the variables).
 *
 * Must never crash, hang or leak: a template that parses renders or fails with a message, and
 * the step, output and memory limits bound what a render may do. Seeds: the public templates
 * and construct templates of tests/fixtures/chat_templates/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine/jinja.h"

static const char *const fixed_vars =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
    " {\"role\": \"user\", \"content\": \"Hi {{ x }} \\u00e9 \\ud83c\\udf31\"},"
    " {\"role\": \"assistant\", \"content\": \" ok \", \"tool_calls\": [{\"function\":"
    " {\"name\": \"f\", \"arguments\": {\"a\": [1, 2.5, null, true]}}}]},"
    " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"part\"}]}],"
    " \"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"add_generation_prompt\": true,"
    " \"tools\": null, \"documents\": null}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *src = (const char *)data;
    const uint8_t *nul = memchr(data, 0, size);
    size_t src_len = nul ? (size_t)(nul - data) : size;
    json_t *vars = nul ? json_loadb((const char *)nul + 1, size - src_len - 1, 0, NULL)
                       : json_loads(fixed_vars, 0, NULL);
    ym_diag diag = { { 0 }, { 0 } };
    ym_jinja_t *t = NULL;
    if (ym_jinja_parse(src, src_len, &t, &diag) != YM_OK) {
        YM_ASSERT(t == NULL && diag.msg[0] != '\0');
        json_decref(vars);
        return 0;
    }
    ym_jinja_opts o = { .now = 1722000000, .max_output = 1 << 20, .max_memory = 64 << 20,
                        .max_steps = 200000 };
    char *out = NULL;
    size_t n = 0;
    ym_err err = ym_jinja_render(t, json_is_object(vars) ? vars : NULL, &o, &out, &n, &diag);
    if (err == YM_OK)
        YM_ASSERT(out != NULL && n <= o.max_output && out[n] == '\0');
    else
        YM_ASSERT(out == NULL && diag.msg[0] != '\0');
    free(out);
    ym_jinja_free(t);
    json_decref(vars);
    return 0;
}

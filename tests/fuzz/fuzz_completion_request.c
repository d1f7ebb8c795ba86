/* tests/fuzz/fuzz_completion_request.c - arbitrary bytes as a /v1/completions body (and as
 * /v1/chat/completions, /v1/tokenize and /v1/detokenize bodies).
 *
 * Must never crash or leak; an accepted request satisfies every bound the server relies on
 * (a prompt list's kinds and its 16-choice limit too), and a refused one carries a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const ym_req_limits lim = {.max_tokens_cap = 4096, .default_max_tokens = 16,
                               .max_prompt_tokens = 1024};
    ym_creq q;
    json_t *root = NULL;
    ym_diag diag = {{0}, {0}};
    if (ym_creq_parse((const char *)data, size, &lim, &q, &root, &diag) == YM_OK) {
        YM_ASSERT(root != NULL);
        /* No count limit on ids here: the server refuses a long prompt after tokenization,
         * whatever its form (max_prompt_tokens). */
        YM_ASSERT((q.prompt != NULL && q.prompt_len > 0) ||
                  (q.prompt_ids != NULL && q.n_prompt_ids > 0));
        YM_ASSERT(q.max_tokens >= 0 && q.max_tokens <= 4096);
        YM_ASSERT(q.n_stops >= 0 && q.n_stops <= YM_MAX_STOPS);
        for (int i = 0; i < q.n_stops; i++)
            YM_ASSERT(strlen(q.stops[i]) > 0 && strlen(q.stops[i]) <= YM_MAX_STOP_BYTES);
        YM_ASSERT(q.logprobs >= -1 && q.logprobs <= YM_MAX_LOGPROBS);
        YM_ASSERT(ym_sampling_validate(&q.sampling, NULL) == YM_OK);
        for (size_t i = 0; i < q.n_prompt_ids; i++)
            YM_ASSERT(q.prompt_ids[i] >= 0);
        /* A list of prompts: all of one kind, none empty, at most 16 choices in all. */
        YM_ASSERT(q.n_prompts >= 1 && q.n_choices >= 1 &&
                  q.n_prompts * q.n_choices <= YM_MAX_CHOICES);
        for (int k = 1; k < q.n_prompts; k++) {
            const ym_creq_prompt *p = &q.more[k - 1];
            if (q.prompt != NULL)
                YM_ASSERT(p->text != NULL && p->len > 0 && p->ids == NULL);
            else
                YM_ASSERT(p->text == NULL && p->ids != NULL && p->n_ids > 0);
            for (size_t i = 0; i < p->n_ids; i++)
                YM_ASSERT(p->ids[i] >= 0);
        }
        for (int k = q.n_prompts; k < YM_MAX_CHOICES; k++)
            YM_ASSERT(q.more[k - 1].text == NULL && q.more[k - 1].ids == NULL);
        ym_creq_deinit(&q);
        json_decref(root);
    } else {
        YM_ASSERT(root == NULL && diag.msg[0] != '\0');
    }

    if (ym_chatreq_parse((const char *)data, size, &lim, &q, &root, &diag) == YM_OK) {
        YM_ASSERT(root != NULL && q.prompt == NULL && q.prompt_ids == NULL && q.n_prompts == 1);
        YM_ASSERT(json_is_array(q.messages) && json_array_size(q.messages) > 0);
        for (size_t i = 0; i < json_array_size(q.messages); i++) {
            json_t *m = json_array_get(q.messages, i);
            YM_ASSERT(json_is_string(json_object_get(m, "role")));
            YM_ASSERT(json_is_string(json_object_get(m, "content")));
        }
        YM_ASSERT(q.max_tokens >= 0 && q.max_tokens <= 4096);
        YM_ASSERT(q.logprobs >= -1 && q.logprobs <= YM_MAX_LOGPROBS);
        YM_ASSERT(ym_sampling_validate(&q.sampling, NULL) == YM_OK);
        ym_creq_deinit(&q);
        json_decref(root);
    } else {
        YM_ASSERT(root == NULL && q.messages == NULL);
    }

    const char *text, *model;
    size_t len;
    if (ym_tokreq_parse((const char *)data, size, &text, &len, &model, &root, &diag) == YM_OK) {
        YM_ASSERT(text != NULL);
        json_decref(root);
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (ym_detokreq_parse((const char *)data, size, &ids, &n, &model, &root, &diag) == YM_OK) {
        YM_ASSERT(n == 0 || ids != NULL);
        free(ids);
        json_decref(root);
    }
    return 0;
}

/* engine/sampling.h - turning logits into the next token.
 *
 * Order of operations (as vLLM / HF transformers do):
 *   1. repetition_penalty (HF/CTRL): for every token seen in prompt or output,
 *      logit = logit > 0 ? logit / p : logit * p;
 *   2. frequency / presence penalties (OpenAI): for every token generated so far,
 *      logit -= count * frequency_penalty + (count > 0) * presence_penalty;
 *   2b. logit_bias (OpenAI): logit[id] += bias for each listed id (bias in [-100, 100]: -100
 *      bans the token in practice, +100 makes it the only choice);
 *   3. temperature == 0 -> greedy (argmax; ties go to the lowest id);
 *      else logits / temperature, then top_k, top_p, min_p filtering, then a draw from the
 *      seeded generator. Same seed and same logits -> same tokens.
 * Logprobs are those of the model's raw distribution (log_softmax of the logits before any
 * penalty or temperature), as vLLM reports by default.
 * A sampler belongs to one sequence and is used by one thread at a time. */
#ifndef YM_ENGINE_SAMPLING_H
#define YM_ENGINE_SAMPLING_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

#define YM_MAX_LOGPROBS 20
#define YM_MAX_LOGIT_BIAS 300 /* entries of logit_bias (OpenAI's limit) */

typedef struct ym_logit_bias {
    int32_t id;               /* a token id, < the sampler's n_vocab */
    float bias;               /* [-100, 100] */
} ym_logit_bias;

typedef struct ym_sampling {
    float temperature;        /* >= 0; 0 = greedy                      default 1.0 */
    float top_p;              /* (0, 1]                                default 1.0 */
    int top_k;                /* 0 or -1 = off, else >= 1              default 0   */
    float min_p;              /* [0, 1]                                default 0.0 */
    float presence_penalty;   /* [-2, 2]                               default 0.0 */
    float frequency_penalty;  /* [-2, 2]                               default 0.0 */
    float repetition_penalty; /* > 0; 1 = off                          default 1.0 */
    uint64_t seed;            /* used when has_seed; else drawn from the OS */
    int has_seed;
    int n_logprobs;           /* alternatives to report per token, [0, YM_MAX_LOGPROBS] */
    int n_logit_bias;         /* [0, YM_MAX_LOGIT_BIAS]                default 0   */
    ym_logit_bias logit_bias[YM_MAX_LOGIT_BIAS]; /* distinct ids */
} ym_sampling;

ym_sampling ym_sampling_default(void);
/* Range checks; diag->param names the field ("top_p", ...). */
ym_err ym_sampling_validate(const ym_sampling *s, ym_diag *diag);

typedef struct ym_logprob {
    int32_t id;
    float logprob;
} ym_logprob;

typedef struct ym_sample {
    int32_t id;                          /* the chosen token */
    float logprob;                       /* its raw log-probability */
    int n_top;                           /* = n_logprobs */
    ym_logprob top[YM_MAX_LOGPROBS];     /* most likely tokens, best first */
} ym_sample;

typedef struct ym_sampler ym_sampler_t;

/* New sampler for a vocabulary of n_vocab ids. New object in *out (ym_sampler_free).
 * YM_EINVAL when s does not validate or a logit_bias id is >= n_vocab. */
ym_err ym_sampler_new(const ym_sampling *s, int n_vocab, ym_sampler_t **out);
void ym_sampler_free(ym_sampler_t *sp); /* NULL-safe */
/* Tokens of the prompt (they count for repetition_penalty only). */
void ym_sampler_add_prompt(ym_sampler_t *sp, const int32_t *ids, size_t n);
/* Choose the next token from logits [n_vocab] (scratch: modified in place), record it as
 * generated, and describe it in *out (may be NULL). Returns the id. */
int32_t ym_sampler_sample(ym_sampler_t *sp, float *logits, ym_sample *out);
/* Describe token id under logits [n_vocab] (unchanged) as ym_sampler_sample describes a chosen
 * token: its raw log-probability and the n_logprobs most likely tokens, without choosing or
 * recording anything (scoring a prompt's tokens). */
void ym_sampler_score(ym_sampler_t *sp, const float *logits, int32_t id, ym_sample *out);

#endif

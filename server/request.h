/* server/request.h - parsing and validating the JSON bodies of the /v1 routes.
 *
 * Pure functions of the body bytes and the limits: no sockets, no engine, so the unit tests
 * and the fuzz target call them directly. Strings in the results are borrowed from the parsed
 * document (*root), which the caller keeps until it is done with the result and then releases
 * with json_decref(). Errors: YM_EINVAL (400) with diag->param naming the field, ym_diag.msg a
 * sentence for the client. Loop thread (or any thread: no shared state). */
#ifndef YM_SERVER_REQUEST_H
#define YM_SERVER_REQUEST_H
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"
#include "engine/sampling.h"

#define YM_MAX_STOPS 16
#define YM_MAX_CHOICES 16 /* choices of one request: n times the prompts */
#define YM_MAX_STOP_BYTES 256

typedef struct ym_req_limits {
    int64_t max_tokens_cap;     /* max_tokens above this -> 400 */
    int64_t default_max_tokens; /* when max_tokens is absent or null */
    int64_t max_prompt_tokens;  /* token-id prompts longer than this -> 400 */
    int64_t max_session_id_bytes; /* longer session_id -> 400 (0: 256) */
} ym_req_limits;

/* A further prompt of a completions request whose prompt is a list (prompts 1.. of it). */
typedef struct ym_creq_prompt {
    const char *text;           /* borrowed; text prompt, or NULL when ids is used */
    size_t len;                 /* bytes of text (it may hold NUL bytes) */
    int32_t *ids;               /* owned (free()), token-id prompt, range-checked later */
    size_t n_ids;
} ym_creq_prompt;

typedef struct ym_creq {
    const char *model;          /* borrowed; NULL = the base model */
    /* The first (or only) prompt: */
    const char *prompt;         /* borrowed; text prompt, or NULL when prompt_ids is used */
    size_t prompt_len;          /* bytes of prompt (it may hold NUL bytes) */
    int32_t *prompt_ids;        /* owned (free()), token-id prompt, range-checked later */
    size_t n_prompt_ids;
    /* Completions' list of prompts (OpenAI's batch form: several strings, or several id
     * lists): n_prompts in all, prompts 1..n_prompts-1 in more[]; each gets n_choices
     * choices, n_prompts * n_choices <= YM_MAX_CHOICES. 1 for a single prompt and for chat. */
    int n_prompts;
    ym_creq_prompt more[YM_MAX_CHOICES - 1];
    ym_sampling sampling;
    int64_t max_tokens;
    const char *stops[YM_MAX_STOPS]; /* borrowed */
    int n_stops;
    int n_choices;              /* n: 1..YM_MAX_CHOICES */
    int stream;
    int include_usage;          /* stream_options.include_usage */
    int echo;
    int ignore_eos;             /* vLLM's extension: keep going past end-of-text */
    int tokens_as_ids;          /* vLLM's return_tokens_as_token_ids: logprobs name tokens
                                 * "token_id:N" (exact ids, e.g. to extend a session) */
    int logprobs;               /* -1 = none, else alternatives per token [0, YM_MAX_LOGPROBS] */
    const char *user;           /* borrowed; for logs */
    json_t *adapters;           /* borrowed; array of adapter names to compose, or NULL */
    const char *session_id;     /* borrowed; or NULL */
    int session_append;         /* the prompt is only what follows the session's history */
    json_t *messages;           /* owned (chat): [{"role", "content": string[, "name"]}], each
                                 * content's text parts joined; NULL for completions */
} ym_creq;

/* A session id is 1..max bytes of [A-Za-z0-9] and -._~:@+= (usable in a URL path as is).
 * YM_OK, or YM_EINVAL with a message in diag (param "session_id"). */
ym_err ym_session_id_check(const char *id, size_t len, size_t max, ym_diag *diag);

/* POST /v1/completions. On success *root holds the document (new reference). */
ym_err ym_creq_parse(const char *body, size_t len, const ym_req_limits *lim, ym_creq *out,
                     json_t **root, ym_diag *diag);
/* POST /v1/chat/completions: the same result, with messages instead of a prompt (prompt and
 * prompt_ids NULL); logprobs is top_logprobs (0 without it) when logprobs is true, else -1. */
ym_err ym_chatreq_parse(const char *body, size_t len, const ym_req_limits *lim, ym_creq *out,
                        json_t **root, ym_diag *diag);
void ym_creq_deinit(ym_creq *r); /* frees the id prompts and messages; NULL-safe */

/* POST /v1/tokenize: {"prompt": "text", "model"?} -> borrowed text in *text, its length in *text_len. */
ym_err ym_tokreq_parse(const char *body, size_t len, const char **text, size_t *text_len,
                       const char **model, json_t **root, ym_diag *diag);
/* POST /v1/detokenize: {"tokens": [ids], "model"?} -> new array in *ids (free()). */
ym_err ym_detokreq_parse(const char *body, size_t len, int32_t **ids, size_t *n,
                         const char **model, json_t **root, ym_diag *diag);

#endif

/* engine/err.h - the one error enum of yunmin, and the diagnostic that carries detail.
 *
 * Every function that can fail returns ym_err. Where detail helps it also takes an optional
 * ym_diag * (may be NULL) that receives a one-line message and, for requests, the name of the
 * parameter that was wrong. The table gives each error its HTTP status, OpenAI error type and
 * error code; only the server's one error writer (server/httpd.c) reads those columns, and
 * docs/API.md's error table lists the same pairs (a test compares them). The engine returns
 * the general errors (EINVAL .. ECANCELED); the specific ones below them exist so that each
 * code a client may see has its own row. */
#ifndef YM_ENGINE_ERR_H
#define YM_ENGINE_ERR_H

/* X(name, value, HTTP status, OpenAI error type, error code (NULL = none), message) */
#define YM_ERR_MAP(X)                                                                              \
    X(OK, 0, 0, NULL, NULL, "success")                                                             \
    X(EINVAL, -1, 400, "invalid_request_error", "invalid_request", "invalid request")              \
    X(EAUTH, -2, 401, "authentication_error", "invalid_api_key", "missing or unknown API key")     \
    X(EPERM, -3, 403, "permission_error", "forbidden", "not allowed for this tenant")              \
    X(ENOENT, -4, 404, "not_found_error", "not_found", "no such model, adapter or session")        \
    X(EEXIST, -5, 409, "invalid_request_error", "session_mismatch",                                \
      "conflicts with the current version")                                                        \
    X(ETOOBIG, -6, 413, "invalid_request_error", "body_too_large", "request body too large")       \
    X(EFORMAT, -7, 422, "invalid_request_error", "invalid_adapter",                                \
      "malformed model, adapter or sparsity file")                                                 \
    X(ELIMIT, -8, 429, "rate_limit_error", "concurrency_limit", "tenant limit reached")            \
    X(EBUSY, -9, 503, "server_error", "queue_full", "queue full or draining")                      \
    X(ENOMEM, -10, 503, "server_error", NULL, "out of memory")                                     \
    X(EIO, -11, 500, "server_error", NULL, "i/o error")                                            \
    X(ECANCELED, -12, 503, "server_error", "cancelled", "request cancelled")                       \
    X(EPROMPT, -13, 400, "invalid_request_error", "prompt_too_long",                               \
      "prompt longer than max_prompt_tokens")                                                      \
    X(ENAME, -14, 400, "invalid_request_error", "name_taken", "the name is the base model's")      \
    X(EUPLOADS_OFF, -15, 403, "permission_error", "uploads_disabled",                              \
      "adapter uploads are disabled")                                                              \
    X(EQUOTA, -16, 403, "permission_error", "adapter_limit", "the tenant's adapter limit")         \
    X(ENOMODEL, -17, 404, "not_found_error", "model_not_found", "no such model")                   \
    X(ENOADAPTER, -18, 404, "not_found_error", "adapter_not_found", "no such adapter")             \
    X(ENOSESSION, -19, 404, "not_found_error", "session_not_found", "no such session")             \
    X(EMETHOD, -20, 405, "invalid_request_error", "method_not_allowed", "method not allowed")      \
    X(EUPLOADBIG, -21, 413, "invalid_request_error", "upload_too_large", "upload too large")       \
    X(ESTATE, -22, 422, "invalid_request_error", "invalid_session_state",                          \
      "malformed session state")                                                                   \
    X(ELOADING, -23, 503, "server_error", "loading", "the model is still loading")                 \
    X(EDRAINING, -24, 503, "server_error", "draining", "the server is draining")                   \
    X(ENOSPC, -25, 507, "server_error", NULL, "no space left on the disk")                         \
    X(ECACHEFULL, -26, 507, "server_error", "cache_full", "the state cache is full")

typedef enum {
#define X(name, val, http, type, code, msg) YM_##name = (val),
    YM_ERR_MAP(X)
#undef X
} ym_err;

/* Detail for an error: a one-line message and, for requests, the offending parameter. */
typedef struct ym_diag {
    char msg[512];
    char param[64];
} ym_diag;

const char *ym_strerror(ym_err e); /* "queue full or draining"; static storage */
const char *ym_err_name(ym_err e); /* "YM_EBUSY"; static storage */
int ym_err_http_status(ym_err e);  /* the HTTP column; 500 for an unknown value */
const char *ym_err_type(ym_err e); /* "server_error"; static; "server_error" when unknown */
const char *ym_err_code(ym_err e); /* "queue_full"; static; NULL when none */

/* Format a message into diag (NULL-safe) and return err, so a failure reads
 *     return ym_diag_set(diag, YM_EFORMAT, "tensor %s: shape %s, want %s", ...); */
ym_err ym_diag_set(ym_diag *diag, ym_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* As ym_diag_set, and also record the parameter name (for request validation). */
ym_err ym_diag_param(ym_diag *diag, ym_err err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Stays on in release builds: for invariants whose failure means memory corruption. */
#define YM_ASSERT(x)                                                                               \
    do {                                                                                           \
        if (!(x))                                                                                  \
            ym__assert_fail(#x, __FILE__, __LINE__);                                               \
    } while (0)
_Noreturn void ym__assert_fail(const char *expr, const char *file, int line);

#endif

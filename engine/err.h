/* engine/err.h - the one error enum of yunmin, and the diagnostic that carries detail.
 *
 * Every function that can fail returns ym_err. Where detail helps it also takes an optional
 * ym_diag * (may be NULL) that receives a one-line message and, for requests, the name of the
 * parameter that was wrong. Only server/http_error.c reads the HTTP column. */
#ifndef YM_ENGINE_ERR_H
#define YM_ENGINE_ERR_H

#define YM_ERR_MAP(X)                                                                              \
    X(OK, 0, 0, "success")                                                                         \
    X(EINVAL, -1, 400, "invalid request")                                                          \
    X(EAUTH, -2, 401, "missing or unknown API key")                                                \
    X(EPERM, -3, 403, "not allowed for this tenant")                                               \
    X(ENOENT, -4, 404, "no such model, adapter or session")                                        \
    X(EEXIST, -5, 409, "conflicts with the current version")                                       \
    X(ETOOBIG, -6, 413, "request body too large")                                                  \
    X(EFORMAT, -7, 422, "malformed model, adapter or sparsity file")                               \
    X(ELIMIT, -8, 429, "tenant limit reached")                                                     \
    X(EBUSY, -9, 503, "queue full or draining")                                                    \
    X(ENOMEM, -10, 503, "out of memory")                                                           \
    X(EIO, -11, 500, "i/o error")                                                                  \
    X(ECANCELED, -12, 0, "request cancelled")

typedef enum {
#define X(name, val, http, msg) YM_##name = (val),
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

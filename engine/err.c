/* engine/err.c - names and messages of ym_err, and ym_diag formatting. Any thread. */
#include "engine/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct row {
    ym_err err;
    int http;
    const char *name, *type, *code, *msg;
} rows[] = {
#define X(name, val, http, type, code, msg) {YM_##name, http, "YM_" #name, type, code, msg},
    YM_ERR_MAP(X)
#undef X
};

static const struct row *find(ym_err e)
{
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        if (rows[i].err == e)
            return &rows[i];
    return NULL;
}

const char *ym_strerror(ym_err e)
{
    const struct row *r = find(e);
    return r != NULL ? r->msg : "unknown error";
}

const char *ym_err_name(ym_err e)
{
    const struct row *r = find(e);
    return r != NULL ? r->name : "YM_UNKNOWN";
}

int ym_err_http_status(ym_err e)
{
    const struct row *r = find(e);
    return r != NULL ? r->http : 500;
}

const char *ym_err_type(ym_err e)
{
    const struct row *r = find(e);
    return r != NULL && r->type != NULL ? r->type : "server_error";
}

const char *ym_err_code(ym_err e)
{
    const struct row *r = find(e);
    return r != NULL ? r->code : NULL;
}

static void vset(ym_diag *diag, const char *fmt, va_list ap)
{
    vsnprintf(diag->msg, sizeof(diag->msg), fmt, ap);
}

ym_err ym_diag_set(ym_diag *diag, ym_err err, const char *fmt, ...)
{
    if (diag != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vset(diag, fmt, ap);
        va_end(ap);
    }
    return err;
}

ym_err ym_diag_param(ym_diag *diag, ym_err err, const char *param, const char *fmt, ...)
{
    if (diag != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vset(diag, fmt, ap);
        va_end(ap);
        snprintf(diag->param, sizeof(diag->param), "%s", param != NULL ? param : "");
    }
    return err;
}

_Noreturn void ym__assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "yunmin: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

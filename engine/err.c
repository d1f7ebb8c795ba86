/* engine/err.c - names and messages of ym_err, and ym_diag formatting. Any thread. */
#include "engine/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *ym_strerror(ym_err e)
{
    switch (e) {
#define X(name, val, http, msg)                                                                    \
    case YM_##name:                                                                                \
        return msg;
        YM_ERR_MAP(X)
#undef X
    }
    return "unknown error";
}

const char *ym_err_name(ym_err e)
{
    switch (e) {
#define X(name, val, http, msg)                                                                    \
    case YM_##name:                                                                                \
        return "YM_" #name;
        YM_ERR_MAP(X)
#undef X
    }
    return "YM_UNKNOWN";
}

int ym_err_http_status(ym_err e)
{
    switch (e) {
#define X(name, val, http, msg)                                                                    \
    case YM_##name:                                                                                \
        return http;
        YM_ERR_MAP(X)
#undef X
    }
    return 500;
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

/* server/router.c - method + path pattern -> route (server/router.h).
 *
 * Owns: nothing; pure functions over a caller's table. Runs: any thread (the loop thread in the
 * daemon). Must not: know any handler, allocate, or read past the url's NUL. */
#include "server/router.h"

#include <stdio.h>
#include <string.h>

/* Does url match pattern? Params are copied into m->buf and pointed to by m->params. */
static int match_path(const char *pattern, const char *url, ym_match *m)
{
    const char *p = pattern, *u = url;
    size_t used = 0;
    int n_params = 0;
    while (*p) {
        if (*p != '{') {
            if (*p != *u)
                return 0;
            p++;
            u++;
            continue;
        }
        const char *close = strchr(p, '}');
        if (close == NULL || n_params == YM_ROUTE_MAX_PARAMS)
            return 0;
        p = close + 1;
        /* The last {param} takes the rest of the path; others one segment. */
        size_t len = *p == '\0' ? strlen(u) : strcspn(u, "/");
        if (len == 0 || used + len + 1 > sizeof(m->buf))
            return 0;
        memcpy(m->buf + used, u, len);
        m->buf[used + len] = '\0';
        m->params[n_params++] = m->buf + used;
        used += len + 1;
        u += len;
    }
    return *u == '\0';
}

int ym_router_match(const ym_route *table, size_t n, const char *method, const char *url,
                    ym_match *m)
{
    memset(m, 0, sizeof(*m));
    m->method = method;
    m->url = url;
    m->label = "other";
    const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method;
    int path_known = 0;
    size_t allow_len = 0;
    for (size_t i = 0; i < n; i++) {
        ym_match probe;
        memset(probe.params, 0, sizeof(probe.params));
        if (!match_path(table[i].pattern, url, &probe))
            continue;
        if (strcmp(table[i].method, want) == 0) {
            memcpy(m->buf, probe.buf, sizeof(m->buf));
            for (int k = 0; k < YM_ROUTE_MAX_PARAMS; k++)
                m->params[k] = probe.params[k] ? m->buf + (probe.params[k] - probe.buf) : NULL;
            m->route = &table[i];
            m->label = table[i].pattern;
            return 0;
        }
        if (!path_known)
            m->label = table[i].pattern;
        path_known = 1;
        int k = snprintf(m->allow + allow_len, sizeof(m->allow) - allow_len, "%s%s",
                         allow_len ? ", " : "", table[i].method);
        if (k > 0 && allow_len + (size_t)k < sizeof(m->allow))
            allow_len += (size_t)k;
    }
    return path_known ? 405 : 404;
}

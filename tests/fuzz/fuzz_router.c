/* tests/fuzz/fuzz_router.c - arbitrary request paths (and methods) against a route table of
 * yunmind's shape.
 *
 * Must never crash or read past the path; a match names a route of the method asked (GET for
 * HEAD), with non-empty parameters that are pieces of the path; a 405 lists the allowed
 * methods. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "server/router.h"

static const ym_route table[] = {
    {"POST", "/v1/completions", YM_AUTH_TENANT, YM_BODY_REQUEST, NULL, NULL, NULL, NULL},
    {"GET", "/v1/models/{id}", YM_AUTH_TENANT, YM_BODY_REQUEST, NULL, NULL, NULL, NULL},
    {"GET", "/v1/adapters/{name}", YM_AUTH_TENANT, YM_BODY_REQUEST, NULL, NULL, NULL, NULL},
    {"PUT", "/v1/adapters/{name}", YM_AUTH_TENANT, YM_BODY_STREAM, NULL, NULL, NULL, NULL},
    {"GET", "/admin/sessions/{tenant}/{id}", YM_AUTH_ADMIN, YM_BODY_REQUEST, NULL, NULL, NULL,
     NULL},
    {"GET", "/healthz", YM_AUTH_NONE, YM_BODY_REQUEST, NULL, NULL, NULL, NULL},
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *methods[] = {"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"};
    if (size < 1)
        return 0;
    const char *method = methods[data[0] % 6];
    char *url = malloc(size);
    YM_ASSERT(url != NULL);
    memcpy(url, data + 1, size - 1);
    url[size - 1] = '\0';
    ym_match m;
    int rc = ym_router_match(table, sizeof(table) / sizeof(table[0]), method, url, &m);
    YM_ASSERT(rc == 0 || rc == 404 || rc == 405);
    if (rc == 0) {
        YM_ASSERT(m.route != NULL && strcmp(m.label, m.route->pattern) == 0);
        YM_ASSERT(strcmp(m.route->method, strcmp(method, "HEAD") == 0 ? "GET" : method) == 0);
        for (int i = 0; i < YM_ROUTE_MAX_PARAMS && m.params[i] != NULL; i++)
            YM_ASSERT(m.params[i][0] != '\0' && strstr(url, m.params[i]) != NULL);
    } else if (rc == 405) {
        YM_ASSERT(m.route == NULL && m.allow[0] != '\0');
    } else {
        YM_ASSERT(m.route == NULL && strcmp(m.label, "other") == 0);
    }
    free(url);
    return 0;
}

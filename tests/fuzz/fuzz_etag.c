/* tests/fuzz/fuzz_etag.c - arbitrary If-None-Match values against the playground's ETags.
 *
 * Must never crash or read past the value's NUL; a value that is exactly one of the tags, or
 * "*", matches it; whatever else, the answer is 0 or 1. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/err.h"
#include "server/playground.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *v = malloc(size + 1);
    YM_ASSERT(v != NULL);
    memcpy(v, data, size);
    v[size] = '\0';
    for (size_t i = 0; i < ym_playground_n_assets; i++) {
        const char *etag = ym_playground_assets[i].etag;
        int m = ym_etag_match(v, etag);
        YM_ASSERT(m == 0 || m == 1);
        if (strcmp(v, etag) == 0 || strcmp(v, "*") == 0)
            YM_ASSERT(m == 1);
    }
    free(v);
    return 0;
}

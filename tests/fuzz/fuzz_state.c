/* tests/fuzz/fuzz_state.c - ym_state_deserialize on arbitrary bytes: never crashes, and a
 * refused input leaves the state as it was. States come back from the state cache and from
 * operators' imports, so this parser sees outside bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ym_state_t *s;
    static float *before;
    static size_t n_ssm;
    if (s == NULL) {
        ym_config c;
        memset(&c, 0, sizeof(c));
        c.n_layer = 2;
        c.d_inner = 4;
        c.d_conv = 3;
        c.d_state = 2;
        YM_ASSERT(ym_state_new(&c, &s) == YM_OK);
        n_ssm = (size_t)c.n_layer * c.d_inner * c.d_state;
        before = calloc(n_ssm, sizeof(float));
    }
    for (size_t i = 0; i < n_ssm; i++)
        s->ssm[i] = before[i] = (float)i;
    ym_diag d;
    if (ym_state_deserialize(s, data, size, &d) != YM_OK) {
        YM_ASSERT(memcmp(s->ssm, before, n_ssm * sizeof(float)) == 0);
    } else {
        size_t w = 0;
        uint8_t buf[512];
        YM_ASSERT(ym_state_serialized_size(s) == size && size <= sizeof(buf));
        YM_ASSERT(ym_state_serialize(s, buf, sizeof(buf), &w) == YM_OK && w == size);
        YM_ASSERT(memcmp(buf, data, size) == 0); /* the format has one encoding */
    }
    return 0;
}

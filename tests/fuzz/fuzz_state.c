/* tests/fuzz/fuzz_state.c - ym_state_deserialize on arbitrary bytes: never crashes, and a
 * refused input leaves the state as it was; an accepted one formats back to the same bytes
 * (version 1 inputs: the same but for the version and the checksum). States come back from the state cache and from
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
        /* The format has one encoding per version: a version 2 input comes back byte for byte;
         * a version 1 input (still read) comes back as version 2, the same but for the
         * version field and the checksum. */
        if (data[4] == 2) {
            YM_ASSERT(memcmp(buf, data, size) == 0);
        } else {
            YM_ASSERT(data[4] == 1 && buf[4] == 2);
            YM_ASSERT(memcmp(buf, data, 4) == 0 && memcmp(buf + 5, data + 5, 35) == 0);
            YM_ASSERT(memcmp(buf + 48, data + 48, size - 48) == 0);
        }
    }
    return 0;
}

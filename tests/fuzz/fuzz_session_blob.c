/* tests/fuzz/fuzz_session_blob.c - ym_session_blob_read on arbitrary bytes: an admin's import
 * of a session state (PUT /admin/sessions/...). Never crashes; what it accepts has the model's
 * dimensions, finite values, a positive token count, and writes back to the same bytes (an
 * embedded version 1 state: the same but for its version field and checksum). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/statecache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The dimensions and fingerprint of tests/fuzz/make_session_seed.py's seeds. */
    ym_config c;
    memset(&c, 0, sizeof(c));
    c.n_layer = 2;
    c.d_inner = 4;
    c.d_conv = 3;
    c.d_state = 2;
    unsigned char fp[32];
    memset(fp, 0xab, sizeof(fp));
    static ym_state_t *like;
    if (like == NULL)
        YM_ASSERT(ym_state_new(&c, &like) == YM_OK);
    ym_state_t *st = NULL;
    ym_skey hist;
    ym_diag d;
    if (ym_session_blob_read(data, size, like, fp, &st, &hist, &d) != YM_OK) {
        YM_ASSERT(st == NULL);
        return 0;
    }
    YM_ASSERT(st->n_layer == 2 && st->d_inner == 4 && st->n_tokens > 0);
    for (size_t i = 0; i < 2 * 4 * 2; i++)
        YM_ASSERT(isfinite(st->ssm[i]));
    size_t n = ym_session_blob_size(st);
    YM_ASSERT(n == size);
    uint8_t *buf = malloc(n);
    YM_ASSERT(buf != NULL && ym_session_blob_write(st, &hist, fp, buf, n) == YM_OK);
    /* One encoding per state version: the state (at the blob's end) comes back as version 2;
     * a version 1 input differs only in that version field and the checksum. */
    size_t so = n - ym_state_serialized_size(st);
    if (data[so + 4] == 2) {
        YM_ASSERT(memcmp(buf, data, n) == 0);
    } else {
        YM_ASSERT(data[so + 4] == 1 && buf[so + 4] == 2);
        YM_ASSERT(memcmp(buf, data, so + 4) == 0 && memcmp(buf + so + 5, data + so + 5, 35) == 0);
        YM_ASSERT(memcmp(buf + so + 48, data + so + 48, n - so - 48) == 0);
    }
    free(buf);
    ym_state_free(st);
    return 0;
}

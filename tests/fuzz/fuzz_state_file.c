/* tests/fuzz/fuzz_state_file.c - ym_state_file_parse on arbitrary bytes: a file of the state
 * cache's disk tier (state_dir). The input is the file without its MAC; the target appends the
 * right MAC, so the fuzzer reaches the parsing behind it (a wrong MAC is refused first, and is
 * tested in tests/server/test_disktier.c). Never crashes; what it accepts has the model's
 * dimensions, finite values, a positive token count, and formats back to the same bytes (an
 * embedded version 1 state: the same but for its version field, checksum and the MAC). */
#include <math.h>
#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/disktier.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ym_config c;
    memset(&c, 0, sizeof(c));
    c.n_layer = 2;
    c.d_inner = 4;
    c.d_conv = 3;
    c.d_state = 2;
    unsigned char fp[32], key[32];
    memset(fp, 0xab, sizeof(fp));
    memset(key, 0x5c, sizeof(key));
    static ym_state_t *like;
    if (like == NULL) {
        YM_ASSERT(sodium_init() >= 0);
        YM_ASSERT(ym_state_new(&c, &like) == YM_OK);
    }
    if (size > (1u << 20))
        return 0;
    uint8_t *file = malloc(size + 32);
    YM_ASSERT(file != NULL);
    memcpy(file, data, size);
    crypto_generichash(file + size, 32, file, size, key, 32);
    ym_skey k = {{0}};
    if (size >= YM_STATE_FILE_HEADER + 32)
        memcpy(k.b, data + YM_STATE_FILE_HEADER, 32); /* the name the file claims */
    ym_sc_kind kind;
    ym_sc_meta meta;
    ym_state_t *st = NULL;
    ym_diag d;
    if (ym_state_file_parse(file, size + 32, &k, like, fp, key, &kind, &meta, &st, &d) != YM_OK) {
        YM_ASSERT(st == NULL);
        free(file);
        return 0;
    }
    YM_ASSERT(st->n_layer == 2 && st->d_inner == 4 && st->n_tokens > 0);
    YM_ASSERT(kind == YM_SC_SESSION || kind == YM_SC_PREFIX);
    for (size_t i = 0; i < 2 * 4 * 2; i++)
        YM_ASSERT(isfinite(st->ssm[i]));
    uint8_t *back = NULL;
    size_t n = 0;
    YM_ASSERT(ym_state_file_format(&k, kind, &meta, st, fp, key, &back, &n) == YM_OK);
    YM_ASSERT(n == size + 32);
    /* One encoding per state version: the embedded state (just before the MAC) comes back as
     * version 2; a version 1 input differs only in that version field, the checksum and the
     * MAC over them. */
    size_t so = size - ym_state_serialized_size(st);
    if (file[so + 4] == 2) {
        YM_ASSERT(memcmp(back, file, n) == 0);
    } else {
        YM_ASSERT(file[so + 4] == 1 && back[so + 4] == 2);
        YM_ASSERT(memcmp(back, file, so + 4) == 0 && memcmp(back + so + 5, file + so + 5, 35) == 0);
        YM_ASSERT(memcmp(back + so + 48, file + so + 48, size - so - 48) == 0);
    }
    free(back);
    free(file);
    ym_state_free(st);
    return 0;
}

/* tests/fuzz/fuzz_sparsity.c - ym_sparsity_parse on arbitrary bytes: never crashes, never
 * reads outside the input, and an accepted profile is internally consistent (the served
 * layout is a bijection between kept channels and [0, n_kept)). Profiles arrive with models
 * and through --sparsity, so this parser sees outside bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "engine/sparsity.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ym_sparsity *sp = NULL;
    ym_diag d;
    if (ym_sparsity_parse(data, size, &sp, &d) != YM_OK) {
        YM_ASSERT(sp == NULL);
        return 0;
    }
    for (int l = 0; l < sp->n_layer; l++) {
        const ym_sparsity_layer *L = &sp->layers[l];
        YM_ASSERT(L->n_kept >= 0 && L->n_kept <= sp->d_inner);
        for (int p = 0; p < L->n_kept; p++)
            YM_ASSERT(ym_sparsity_served_channel(sp, l, L->kept[p]) == p);
        int n_dropped = 0;
        for (int c = 0; c < sp->d_inner; c++)
            n_dropped += ym_sparsity_served_channel(sp, l, c) == -1;
        YM_ASSERT(n_dropped + L->n_kept == sp->d_inner);
    }
    ym_sparsity_free(sp);
    return 0;
}

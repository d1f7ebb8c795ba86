/* tests/fuzz/fuzz_sparsity.c - ym_sparsity_parse on arbitrary bytes: never crashes, never
 * reads outside the input, and an accepted profile is internally consistent (the served
 * layout is a bijection between kept units, channels or heads, and [0, n_kept); the logits
 * array of its kind exists and the other kind's does not). Both kinds are seeded in the corpus
 * (valid_* channels, heads_* heads). Profiles arrive with models and through --sparsity, so
 * this parser sees outside bytes. */
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
    const int heads = sp->kind == YM_SPARSITY_HEADS, nu = ym_sparsity_n_unit(sp);
    YM_ASSERT(heads ? sp->d_inner == 0 && sp->n_head > 0 : sp->n_head == 0 && sp->d_inner > 0);
    for (int l = 0; l < sp->n_layer; l++) {
        const ym_sparsity_layer *L = &sp->layers[l];
        YM_ASSERT(heads ? L->head_logits != NULL && L->channel_logits == NULL
                        : L->channel_logits != NULL && L->head_logits == NULL);
        YM_ASSERT(L->n_kept >= 0 && L->n_kept <= nu);
        for (int p = 0; p < L->n_kept; p++) {
            YM_ASSERT(ym_sparsity_served_channel(sp, l, L->kept[p]) == p);
            YM_ASSERT(!heads || p == 0 || L->kept[p] > L->kept[p - 1]); /* heads keep order */
        }
        int n_dropped = 0;
        int64_t live = 0;
        for (int c = 0; c < nu; c++) {
            n_dropped += ym_sparsity_served_channel(sp, l, c) == -1;
            for (int n = 0; n < sp->d_state; n++)
                live += ym_sparsity_state_kept(sp, l, c, n);
        }
        YM_ASSERT(n_dropped + L->n_kept == nu);
        YM_ASSERT(live == L->n_live);
    }
    ym_sparsity_free(sp);
    return 0;
}

/* tests/fuzz/fuzz_config.c - arbitrary bytes as config.json.
 *
 * Must never crash; an accepted config has every size inside the bounds the engine relies on
 * (so state and parameter sizes are computed without overflow). */
#include <stdint.h>
#include <string.h>

#include "engine/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ym_config c;
    ym_diag diag = { { 0 }, { 0 } };
    if (ym_config_parse((const char *)data, size, &c, &diag) != YM_OK) {
        YM_ASSERT(diag.msg[0] != '\0');
        return 0;
    }
    YM_ASSERT(c.d_model >= 1 && c.d_model <= 65536 && c.n_layer >= 1 && c.n_layer <= 1024);
    YM_ASSERT(c.d_inner >= 1 && c.d_state >= 1 && c.d_conv >= 1);
    if (c.arch == YM_ARCH_MAMBA2) {
        YM_ASSERT(c.dt_rank == 0 && c.n_head >= 1 && c.head_dim >= 1 && c.n_group >= 1);
        YM_ASSERT((long long)c.n_head * c.head_dim == c.d_inner && c.n_head % c.n_group == 0);
        YM_ASSERT(c.chunk_size >= 1 && c.dt_min >= 0.0f && c.dt_min < c.dt_max);
        YM_ASSERT(c.gated_norm_eps > 0.0f && c.gated_norm_eps < 1.0f);
    } else {
        YM_ASSERT(c.dt_rank >= 1);
    }
    if (c.arch == YM_ARCH_FALCON_MAMBA)
        YM_ASSERT(c.mixer_rms_eps > 0.0f && c.mixer_rms_eps < 1.0f);
    YM_ASSERT(c.n_vocab >= 1 && c.n_vocab <= (4 << 20));
    YM_ASSERT(c.norm_eps > 0.0f && c.norm_eps < 1.0f);
    YM_ASSERT(ym_config_state_bytes(&c) > 0 && ym_config_n_params(&c) > 0);
    return 0;
}

/* tests/fuzz/fuzz_adapter_config.c - arbitrary bytes as adapter_config.json (PEFT) and as
 * adapter_set.json.
 *
 * Must never crash or leak; an accepted PEFT config resolves (for a 3-layer model) to modules
 * the engine can apply: LoRA ranks >= 1 and finite alphas, IA³ input scaling only on targeted
 * modules; an accepted set names 1..YM_ADAPTER_SET_MAX safe sub-directory names. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "adapters/adapter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ym_diag diag = {{0}, {0}};
    ym_peft_config pc;
    if (ym_peft_config_parse((const char *)data, size, &pc, &diag) == YM_OK) {
        ym_peft_module mods[3 * YM_PROJ_N];
        if (ym_peft_config_resolve(&pc, 3, mods, &diag) == YM_OK) {
            int any = 0;
            for (int i = 0; i < 3 * YM_PROJ_N; i++) {
                any |= mods[i].targeted;
                if (mods[i].targeted && pc.type == YM_PEFT_LORA)
                    YM_ASSERT(mods[i].r >= 1 && isfinite(mods[i].alpha));
                if (!mods[i].targeted)
                    YM_ASSERT(!mods[i].ff && mods[i].r == 0);
            }
            YM_ASSERT(any);
        } else {
            YM_ASSERT(diag.msg[0] != '\0');
        }
    } else {
        YM_ASSERT(diag.msg[0] != '\0');
    }
    ym_peft_config_deinit(&pc);
    ym_peft_config_deinit(&pc); /* idempotent */

    ym_adapter_set_config sc;
    if (ym_adapter_set_config_parse((const char *)data, size, &sc, &diag) == YM_OK) {
        YM_ASSERT(sc.n_adapters >= 1 && sc.n_adapters <= YM_ADAPTER_SET_MAX);
        for (int i = 0; i < sc.n_adapters; i++)
            YM_ASSERT(strchr(sc.adapters[i], '/') == NULL && strcmp(sc.adapters[i], "..") != 0);
    }
    ym_adapter_set_config_deinit(&sc);
    return 0;
}

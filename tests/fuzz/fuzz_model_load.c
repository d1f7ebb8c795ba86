/* tests/fuzz/fuzz_model_load.c - arbitrary bytes as the model.safetensors of a tiny model
 * (hidden 8, one layer, vocabulary 5, state 2, conv 2, d_inner 16), loaded in every weight
 * type: the binder (engine/model.c) must refuse what does not fit with YM_EFORMAT, never read
 * outside the file, and a model it accepts must be whole. Covers the int8 matrices and their
 * scale tensors (docs/FORMATS.md). Seed: corpus/fuzz_model_load (made by make_model_seed.py). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/model.h"
#include "engine/weight.h"

static char dir[64];

static int setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/ym-fuzz-model-%d", (int)getpid());
    char path[128];
    snprintf(path, sizeof(path), "mkdir -p %s", dir);
    if (system(path) != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs("{\"model_type\":\"mamba\",\"hidden_size\":8,\"num_hidden_layers\":1,"
          "\"vocab_size\":5,\"state_size\":2,\"conv_kernel\":2,\"intermediate_size\":16,"
          "\"time_step_rank\":1,\"use_bias\":false,\"tie_word_embeddings\":true}", f);
    return fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        if (setup() != 0)
            abort();
        ready = 1;
    }
    char path[128];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        abort();
    static const ym_wtype types[] = {YM_WT_AUTO, YM_WT_F32, YM_WT_BF16, YM_WT_INT8};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        ym_model_t *m = NULL;
        ym_diag diag = {0};
        ym_err err = ym_model_load_as(dir, types[i], &m, &diag);
        if (err != YM_OK) {
            YM_ASSERT(m == NULL && diag.msg[0] != '\0');
            continue;
        }
        /* every value of every matrix readable, and finite */
        const ym_weight *w[] = {&m->embed, &m->lm_head, &m->layers[0].in_proj,
                                &m->layers[0].x_proj, &m->layers[0].out_proj};
        for (size_t j = 0; j < sizeof(w) / sizeof(w[0]); j++) {
            YM_ASSERT(types[i] == YM_WT_AUTO || w[j]->type == types[i]);
            for (int r = 0; r < w[j]->n_rows; r++)
                for (int k = 0; k < w[j]->n_cols; k++) {
                    float v = ym_weight_at(w[j], r, k);
                    YM_ASSERT(v == v);
                }
        }
        ym_model_unref(m);
    }
    return 0;
}

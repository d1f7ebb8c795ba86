/* tests/fuzz/fuzz_safetensors.c - arbitrary bytes as a whole .safetensors file.
 *
 * The parser must never read outside the buffer or crash; when it accepts, the header must obey
 * every rule it promises (engine/safetensors.h): spans inside the data section, sorted, tiling it
 * exactly, each as long as its shape and dtype say. Float tensors are also converted, so a bad
 * span would show up as an out-of-bounds read under ASan. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ym_st_header h;
    ym_diag diag = { { 0 }, { 0 } };
    if (ym_st_header_parse(data, size, &h, &diag) != YM_OK) {
        YM_ASSERT(h.n_tensors == 0 && h.tensors == NULL && h.n_meta == 0 && h.meta == NULL);
        YM_ASSERT(diag.msg[0] != '\0');
        ym_st_header_deinit(&h);
        return 0;
    }
    YM_ASSERT(h.data_offset >= 8 && h.data_offset <= size);
    uint64_t data_size = size - h.data_offset;
    uint64_t pos = 0;
    for (int i = 0; i < h.n_tensors; i++) {
        const ym_st_tensor *t = &h.tensors[i];
        YM_ASSERT(t->begin == pos && t->begin <= t->end && t->end <= data_size);
        YM_ASSERT(t->n_dim >= 0 && t->n_dim <= YM_ST_MAX_DIM);
        YM_ASSERT((uint64_t)ym_st_tensor_numel(t) * ym_dtype_size(t->dtype) == t->end - t->begin);
        YM_ASSERT((const uint8_t *)t->data == data + h.data_offset + t->begin);
        YM_ASSERT(ym_st_header_find(&h, t->name) == t);
        pos = t->end;
        int64_t n = ym_st_tensor_numel(t);
        if (n > 0 && n <= 4096) {
            float *f = malloc((size_t)n * sizeof(float));
            ym_err err = ym_st_tensor_to_f32(t, f, &diag);
            YM_ASSERT(err == YM_OK || (t->dtype != YM_DT_F32 && t->dtype != YM_DT_F16 &&
                                       t->dtype != YM_DT_BF16 && t->dtype != YM_DT_F64));
            free(f);
        }
    }
    YM_ASSERT(pos == data_size);
    for (int i = 0; i < h.n_meta; i++)
        YM_ASSERT(strcmp(ym_st_header_meta(&h, h.meta[i].key), h.meta[i].value) == 0);
    ym_st_header_deinit(&h);
    ym_st_header_deinit(&h);
    return 0;
}

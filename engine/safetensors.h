/* engine/safetensors.h - the safetensors format: strict header parsing, mmap'd files, sharded
 * sets (model.safetensors.index.json), dtype conversion, and a small writer.
 *
 * Header rules enforced (each failure is YM_EFORMAT with a message naming the tensor):
 * 8-byte little-endian header length within the file; header is a JSON object; every entry
 * but "__metadata__" has "dtype" (known), "shape" (non-negative ints) and "data_offsets"
 * [begin, end] with begin <= end; end - begin == product(shape) * dtype size; spans inside
 * the data section; spans do not overlap; the spans cover the data section exactly (no
 * trailing garbage, no holes); "__metadata__" maps strings to strings; no duplicate names.
 * Parsed headers and mapped files are immutable after construction: any thread may read. */
#ifndef YM_ENGINE_SAFETENSORS_H
#define YM_ENGINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "engine/err.h"

typedef enum {
    YM_DT_F32,
    YM_DT_F16,
    YM_DT_BF16,
    YM_DT_F64,
    YM_DT_I64,
    YM_DT_I32,
    YM_DT_I16,
    YM_DT_I8,
    YM_DT_U8,
    YM_DT_BOOL,
} ym_dtype;

#define YM_ST_MAX_DIM 8

typedef struct ym_st_tensor {
    char *name;                      /* owned by the header */
    ym_dtype dtype;
    int n_dim;
    int64_t shape[YM_ST_MAX_DIM];    /* row-major, PyTorch order */
    uint64_t begin, end;             /* byte span relative to the data section */
    const void *data;                /* borrowed: into the buffer given to parse / the mapping */
} ym_st_tensor;

typedef struct ym_st_meta {
    char *key;   /* owned */
    char *value; /* owned */
} ym_st_meta;

typedef struct ym_st_header {
    ym_st_tensor *tensors; /* owned, [n_tensors], sorted by begin */
    int n_tensors;
    ym_st_meta *meta;      /* owned, [n_meta] */
    int n_meta;
    uint64_t data_offset;  /* 8 + header length */
} ym_st_header;

/* Parse and validate the header of a whole file held in buf[0..size). On success tensors'
 * data pointers point into buf. On failure *h is left safe to deinit. */
ym_err ym_st_header_parse(const uint8_t *buf, size_t size, ym_st_header *h, ym_diag *diag);
void ym_st_header_deinit(ym_st_header *h); /* NULL-safe, idempotent */
const ym_st_tensor *ym_st_header_find(const ym_st_header *h, const char *name); /* or NULL */
const char *ym_st_header_meta(const ym_st_header *h, const char *key);           /* or NULL */

size_t ym_dtype_size(ym_dtype dt);
const char *ym_dtype_name(ym_dtype dt);             /* "F32", ... */
int64_t ym_st_tensor_numel(const ym_st_tensor *t);

/* A set of tensors from one file or a sharded checkpoint, mmap'd read-only. */
typedef struct ym_st_set ym_st_set_t;

/* Open one .safetensors file. New object in *out (ym_st_set_free). */
ym_err ym_st_set_open_file(const char *path, ym_st_set_t **out, ym_diag *diag);
/* Open a model directory: model.safetensors, or model.safetensors.index.json and its shards
 * (every tensor of the index must be in the shard it names, every shard tensor in the index). */
ym_err ym_st_set_open_dir(const char *dir, ym_st_set_t **out, ym_diag *diag);
void ym_st_set_free(ym_st_set_t *set); /* NULL-safe; invalidates all tensor pointers */
int ym_st_set_n_tensors(const ym_st_set_t *set);
const ym_st_tensor *ym_st_set_tensor(const ym_st_set_t *set, int i);       /* borrowed */
const ym_st_tensor *ym_st_set_find(const ym_st_set_t *set, const char *name); /* or NULL */
/* Metadata value of the first file that has the key, or NULL. */
const char *ym_st_set_meta(const ym_st_set_t *set, const char *key);

/* Convert a float tensor (F32/F16/BF16/F64) to f32 into dst [numel]. Other dtypes: YM_EFORMAT. */
ym_err ym_st_tensor_to_f32(const ym_st_tensor *t, float *dst, ym_diag *diag);

/* Scalar conversions (exact where the format allows; f32->bf16 rounds to nearest even). */
float ym_bf16_to_f32(uint16_t v);
uint16_t ym_f32_to_bf16(float v);
float ym_f16_to_f32(uint16_t v);
uint16_t ym_f32_to_f16(float v);

/* Writer: tensors given by name, dtype, shape and bytes; metadata optional (may be NULL).
 * Writes to a temporary file beside path, fsyncs, then renames: never a half-written file. */
typedef struct ym_st_wtensor {
    const char *name;
    ym_dtype dtype;
    int n_dim;
    int64_t shape[YM_ST_MAX_DIM];
    const void *data; /* numel * dtype size bytes */
} ym_st_wtensor;
ym_err ym_st_write(const char *path, const ym_st_wtensor *t, int n_tensors,
                   const ym_st_meta *meta, int n_meta, ym_diag *diag);

#endif

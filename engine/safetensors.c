/* engine/safetensors.c - the safetensors format: strict header validation, read-only mappings
 * of one file or a sharded set, float conversion to f32, and an atomic writer.
 *
 * Owns: parsed headers (names, metadata strings) and the mappings of a set. Tensor data is never
 * copied here: a tensor's data pointer is borrowed from the caller's buffer or from the mapping.
 * Thread: any. Parsing and opening run on the libuv pool at model/adapter load; a finished
 * header or set is immutable, so every thread may read it without locks.
 * Must not: trust a byte of the file. Every offset is checked before it is turned into a
 * pointer, so a malformed file is YM_EFORMAT and never a read outside the buffer. A mapped file
 * that is truncated by someone else while mapped can still raise SIGBUS; model directories are
 * written atomically (ym_st_write, the adapter store) so that does not happen to our own files.
 * Assumes a little-endian host, as the format's byte order is little-endian. */
#include "engine/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/buf.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "yunmin reads safetensors data in place and needs a little-endian host"
#endif

/* The reference implementation's limit: a larger header is refused before JSON sees it. */
#define ST_MAX_HEADER ((uint64_t)100000000)
#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"
#define ST_MAX_INDEX ((size_t)64 << 20)

/* ---- dtypes ---------------------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [YM_DT_F32] = { "F32", 4 }, [YM_DT_F16] = { "F16", 2 }, [YM_DT_BF16] = { "BF16", 2 },
    [YM_DT_F64] = { "F64", 8 }, [YM_DT_I64] = { "I64", 8 }, [YM_DT_I32] = { "I32", 4 },
    [YM_DT_I16] = { "I16", 2 }, [YM_DT_I8] = { "I8", 1 },   [YM_DT_U8] = { "U8", 1 },
    [YM_DT_BOOL] = { "BOOL", 1 },
};
#define N_DTYPES ((int)(sizeof(dtypes) / sizeof(dtypes[0])))

size_t ym_dtype_size(ym_dtype dt)
{
    return (int)dt >= 0 && (int)dt < N_DTYPES ? dtypes[dt].size : 0;
}

const char *ym_dtype_name(ym_dtype dt)
{
    return (int)dt >= 0 && (int)dt < N_DTYPES ? dtypes[dt].name : "?";
}

static bool dtype_from_name(const char *s, ym_dtype *out)
{
    for (int i = 0; i < N_DTYPES; i++) {
        if (strcmp(s, dtypes[i].name) == 0) {
            *out = (ym_dtype)i;
            return true;
        }
    }
    return false;
}

int64_t ym_st_tensor_numel(const ym_st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->n_dim; i++)
        n *= t->shape[i]; /* cannot overflow: the parser and writer checked the product */
    return n;
}

/* numel of a shape, or -1 when a dimension is negative or the product passes INT64_MAX. */
static int64_t shape_numel(const int64_t *shape, int n_dim)
{
    int64_t n = 1;
    for (int i = 0; i < n_dim; i++) {
        if (shape[i] < 0)
            return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i])
            return -1;
        n *= shape[i];
    }
    return n;
}

/* ---- scalar conversions ---------------------------------------------------------------- */

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float ym_bf16_to_f32(uint16_t v)
{
    /* bf16 is the top half of an f32: exact by definition. */
    return bits_f32((uint32_t)v << 16);
}

uint16_t ym_f32_to_bf16(float v)
{
    uint32_t u = f32_bits(v);
    /* A NaN must stay a NaN: truncation could clear every mantissa bit left, so force quiet. */
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u);
    /* Round to nearest, ties to even; a carry out of the mantissa bumps the exponent, and
     * past the largest finite value it lands exactly on infinity, as it should. */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Branch-free so the conversion loop vectorizes (F16 checkpoints convert at load):
 * normal: rebias the exponent 15 -> 127, i.e. add 112 << 23 to the shifted exponent+mantissa;
 * inf/NaN (exponent 31): add 224 << 23 instead, giving exponent 255 (a NaN keeps its payload
 * and quiet bit); zero/subnormal: the value is em * 2^-24, exact as an f32 product. */
static inline float f16_to_f32_inline(uint16_t h)
{
    /* Masks instead of conditionals: GCC does not if-convert the nested select. */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    int32_t em = h & 0x7fff;
    uint32_t normal = ((uint32_t)em << 13) + (112u << 23) + (uint32_t)(em >= 0x7c00) * (112u << 23);
    uint32_t sub = f32_bits((float)em * 0x1p-24f);
    uint32_t is_sub = 0u - (uint32_t)(em < 0x0400);
    return bits_f32(sign | (normal & ~is_sub) | (sub & is_sub));
}

float ym_f16_to_f32(uint16_t v)
{
    return f16_to_f32_inline(v);
}

uint16_t ym_f32_to_f16(float v)
{
    uint32_t u = f32_bits(v);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    int exp = (int)((u >> 23) & 0xffu);
    uint32_t man = u & 0x7fffffu;
    if (exp == 0xff) /* inf, or a NaN kept quiet so no payload truncation makes it inf */
        return (uint16_t)(sign | 0x7c00u | (man != 0 ? 0x200u | (man >> 13) : 0u));
    int e = exp - 127 + 15; /* biased half exponent */
    if (e >= 31)            /* >= 65536: past even the rounding boundary 65520 */
        return (uint16_t)(sign | 0x7c00u);
    if (e >= 1) {
        uint32_t half = ((uint32_t)e << 10) | (man >> 13);
        uint32_t rest = man & 0x1fffu;
        /* Ties to even; the carry may run into the exponent (up to infinity): intended. */
        if (rest > 0x1000u || (rest == 0x1000u && (half & 1u)))
            half++;
        return (uint16_t)(sign | half);
    }
    if (e < -10) /* below 2^-25, half the smallest subnormal: rounds to zero */
        return sign;
    /* Subnormal result in units of 2^-24: (man | hidden bit) * 2^(exp - 150 + 24). */
    uint32_t m = man | 0x800000u;
    int shift = 14 - e; /* 14..24 */
    uint32_t half = m >> shift;
    uint32_t rest = m & ((1u << shift) - 1u);
    uint32_t tie = 1u << (shift - 1);
    if (rest > tie || (rest == tie && (half & 1u)))
        half++; /* may become 0x400, the smallest normal: the encoding is still right */
    return (uint16_t)(sign | half);
}

/* Hot at model load (F16/BF16 checkpoints): plain loops the compiler vectorizes. The data of a
 * tensor is only as aligned as the file makes it, so odd addresses take a byte-wise path. */
ym_err ym_st_tensor_to_f32(const ym_st_tensor *t, float *dst, ym_diag *diag)
{
    int64_t n = ym_st_tensor_numel(t);
    const uint8_t *src = t->data;
    if (n == 0)
        return YM_OK;
    switch (t->dtype) {
    case YM_DT_F32:
        memcpy(dst, src, (size_t)n * 4);
        return YM_OK;
    case YM_DT_BF16:
        if (((uintptr_t)src & 1) == 0) {
            const uint16_t *s = (const uint16_t *)src;
            uint32_t *d = (uint32_t *)dst;
            for (int64_t i = 0; i < n; i++)
                d[i] = (uint32_t)s[i] << 16;
        } else {
            for (int64_t i = 0; i < n; i++)
                dst[i] = ym_bf16_to_f32((uint16_t)(src[2 * i] | (src[2 * i + 1] << 8)));
        }
        return YM_OK;
    case YM_DT_F16:
        if (((uintptr_t)src & 1) == 0) {
            const uint16_t *s = (const uint16_t *)src;
            for (int64_t i = 0; i < n; i++)
                dst[i] = f16_to_f32_inline(s[i]);
        } else {
            for (int64_t i = 0; i < n; i++)
                dst[i] = f16_to_f32_inline((uint16_t)(src[2 * i] | (src[2 * i + 1] << 8)));
        }
        return YM_OK;
    case YM_DT_F64:
        for (int64_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, src + 8 * i, 8);
            dst[i] = (float)v;
        }
        return YM_OK;
    default:
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: dtype %s is not a float type", t->name,
                           ym_dtype_name(t->dtype));
    }
}

/* ---- header parsing -------------------------------------------------------------------- */

void ym_st_header_deinit(ym_st_header *h)
{
    if (h == NULL)
        return;
    for (int i = 0; i < h->n_tensors; i++)
        free(h->tensors[i].name);
    free(h->tensors);
    for (int i = 0; i < h->n_meta; i++) {
        free(h->meta[i].key);
        free(h->meta[i].value);
    }
    free(h->meta);
    memset(h, 0, sizeof(*h));
}

const ym_st_tensor *ym_st_header_find(const ym_st_header *h, const char *name)
{
    for (int i = 0; i < h->n_tensors; i++)
        if (strcmp(h->tensors[i].name, name) == 0)
            return &h->tensors[i];
    return NULL;
}

const char *ym_st_header_meta(const ym_st_header *h, const char *key)
{
    for (int i = 0; i < h->n_meta; i++)
        if (strcmp(h->meta[i].key, key) == 0)
            return h->meta[i].value;
    return NULL;
}

static int cmp_by_span(const void *a, const void *b)
{
    const ym_st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name); /* names are unique: a total order, so the result is fixed */
}

/* Read one tensor entry of the header into *t (name already set). */
static ym_err parse_entry(ym_st_tensor *t, json_t *v, uint64_t data_size, ym_diag *diag)
{
    const char *name = t->name;
    if (!json_is_object(v))
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: header entry is not an object", name);

    json_t *jdt = json_object_get(v, "dtype");
    if (jdt == NULL)
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: no dtype", name);
    if (!json_is_string(jdt))
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: dtype is not a string", name);
    if (!dtype_from_name(json_string_value(jdt), &t->dtype))
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: unknown or unsupported dtype '%.32s'",
                           name, json_string_value(jdt));

    json_t *jshape = json_object_get(v, "shape");
    if (jshape == NULL)
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: no shape", name);
    if (!json_is_array(jshape))
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: shape is not an array", name);
    if (json_array_size(jshape) > YM_ST_MAX_DIM)
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: %zu dimensions, at most %d supported",
                           name, json_array_size(jshape), YM_ST_MAX_DIM);
    t->n_dim = (int)json_array_size(jshape);
    for (int i = 0; i < t->n_dim; i++) {
        json_t *d = json_array_get(jshape, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return ym_diag_set(diag, YM_EFORMAT,
                               "tensor %s: shape[%d] is not a non-negative integer", name, i);
        t->shape[i] = json_integer_value(d);
    }
    int64_t numel = shape_numel(t->shape, t->n_dim);
    size_t esize = ym_dtype_size(t->dtype);
    if (numel < 0 || (uint64_t)numel > UINT64_MAX / esize)
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: shape overflows", name);

    json_t *joff = json_object_get(v, "data_offsets");
    if (joff == NULL)
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: no data_offsets", name);
    if (!json_is_array(joff) || json_array_size(joff) != 2)
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: data_offsets is not [begin, end]", name);
    json_t *jb = json_array_get(joff, 0), *je = json_array_get(joff, 1);
    if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
        json_integer_value(je) < 0)
        return ym_diag_set(diag, YM_EFORMAT,
                           "tensor %s: data_offsets are not non-negative integers", name);
    t->begin = (uint64_t)json_integer_value(jb);
    t->end = (uint64_t)json_integer_value(je);
    if (t->begin > t->end)
        return ym_diag_set(diag, YM_EFORMAT, "tensor %s: data_offsets [%llu, %llu]: begin > end",
                           name, (unsigned long long)t->begin, (unsigned long long)t->end);
    uint64_t want = (uint64_t)numel * esize;
    if (t->end - t->begin != want)
        return ym_diag_set(diag, YM_EFORMAT,
                           "tensor %s: data_offsets span %llu bytes, shape and dtype %s need %llu",
                           name, (unsigned long long)(t->end - t->begin), ym_dtype_name(t->dtype),
                           (unsigned long long)want);
    if (t->end > data_size)
        return ym_diag_set(diag, YM_EFORMAT,
                           "tensor %s: data_offsets [%llu, %llu] outside the data section (%llu "
                           "bytes)",
                           name, (unsigned long long)t->begin, (unsigned long long)t->end,
                           (unsigned long long)data_size);
    return YM_OK;
}

static ym_err parse_meta(ym_st_header *h, json_t *v, ym_diag *diag)
{
    if (!json_is_object(v))
        return ym_diag_set(diag, YM_EFORMAT, "__metadata__ is not an object");
    size_t n = json_object_size(v);
    if (n == 0)
        return YM_OK;
    if ((h->meta = calloc(n, sizeof(*h->meta))) == NULL)
        return YM_ENOMEM;
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        if (!json_is_string(val))
            return ym_diag_set(diag, YM_EFORMAT, "__metadata__ key %s: value is not a string",
                               key);
        ym_st_meta *m = &h->meta[h->n_meta];
        m->key = strdup(key);
        m->value = strdup(json_string_value(val));
        h->n_meta++; /* counted before the check so deinit frees a half-made pair */
        if (m->key == NULL || m->value == NULL)
            return YM_ENOMEM;
    }
    return YM_OK;
}

/* Sorted by begin, the spans must tile [0, data_size) exactly: each begins where the previous
 * one ended. Empty tensors (begin == end) may sit at any boundary. */
static ym_err check_tiling(const ym_st_header *h, uint64_t data_size, ym_diag *diag)
{
    uint64_t pos = 0;
    const ym_st_tensor *prev = NULL;
    for (int i = 0; i < h->n_tensors; i++) {
        const ym_st_tensor *t = &h->tensors[i];
        if (t->begin < pos)
            return ym_diag_set(diag, YM_EFORMAT,
                               "tensor %s: data_offsets [%llu, %llu] overlap tensor %s [%llu, "
                               "%llu]",
                               t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                               prev->name, (unsigned long long)prev->begin,
                               (unsigned long long)prev->end);
        if (t->begin > pos)
            return ym_diag_set(diag, YM_EFORMAT,
                               "tensor %s: %llu unused bytes before its data_offsets [%llu, %llu]",
                               t->name, (unsigned long long)(t->begin - pos),
                               (unsigned long long)t->begin, (unsigned long long)t->end);
        pos = t->end;
        prev = t;
    }
    if (pos != data_size) {
        if (prev == NULL)
            return ym_diag_set(diag, YM_EFORMAT, "no tensors, but %llu bytes of data",
                               (unsigned long long)data_size);
        return ym_diag_set(diag, YM_EFORMAT, "%llu trailing bytes after the last tensor, %s",
                           (unsigned long long)(data_size - pos), prev->name);
    }
    return YM_OK;
}

static ym_err parse_object(json_t *root, const uint8_t *data, uint64_t data_size, ym_st_header *h,
                           ym_diag *diag)
{
    size_t n = json_object_size(root);
    if (json_object_get(root, "__metadata__") != NULL)
        n--;
    if (n > 0 && (h->tensors = calloc(n, sizeof(*h->tensors))) == NULL)
        return YM_ENOMEM;
    const char *key;
    json_t *val;
    ym_err err;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if ((err = parse_meta(h, val, diag)) != YM_OK)
                return err;
            continue;
        }
        ym_st_tensor *t = &h->tensors[h->n_tensors];
        if ((t->name = strdup(key)) == NULL)
            return YM_ENOMEM;
        h->n_tensors++;
        if ((err = parse_entry(t, val, data_size, diag)) != YM_OK)
            return err;
        t->data = data + t->begin;
    }
    if (h->n_tensors > 1)
        qsort(h->tensors, (size_t)h->n_tensors, sizeof(*h->tensors), cmp_by_span);
    return check_tiling(h, data_size, diag);
}

ym_err ym_st_header_parse(const uint8_t *buf, size_t size, ym_st_header *h, ym_diag *diag)
{
    memset(h, 0, sizeof(*h));
    if (size < 8)
        return ym_diag_set(diag, YM_EFORMAT, "file of %zu bytes is too short for a safetensors "
                                             "header length", size);
    uint64_t n;
    memcpy(&n, buf, 8);
    if (n == 0)
        return ym_diag_set(diag, YM_EFORMAT, "header length is 0");
    if (n > ST_MAX_HEADER)
        return ym_diag_set(diag, YM_EFORMAT, "header length %llu exceeds the limit of %llu bytes",
                           (unsigned long long)n, (unsigned long long)ST_MAX_HEADER);
    if (n > size - 8)
        return ym_diag_set(diag, YM_EFORMAT,
                           "header length %llu runs past the end of the file (%zu bytes)",
                           (unsigned long long)n, size);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return ym_diag_set(diag, YM_EFORMAT, "header is not valid JSON: %s (at byte %d)",
                           jerr.text, jerr.position);
    ym_err err;
    if (!json_is_object(root)) {
        err = ym_diag_set(diag, YM_EFORMAT, "header is not a JSON object");
    } else {
        h->data_offset = 8 + n;
        err = parse_object(root, buf + h->data_offset, (uint64_t)size - h->data_offset, h, diag);
    }
    json_decref(root);
    if (err != YM_OK) {
        ym_st_header_deinit(h);
        if (err == YM_ENOMEM)
            ym_diag_set(diag, err, "out of memory parsing a safetensors header");
    }
    return err;
}

/* ---- mapped files and sets ------------------------------------------------------------- */

typedef struct st_file {
    char *path;  /* owned */
    void *map;   /* owned mapping of the whole file */
    size_t size;
    ym_st_header h;
} st_file;

struct ym_st_set {
    st_file *files;             /* owned, [n_files] */
    int n_files;
    const ym_st_tensor **all;   /* [n_all], file order then span order; borrowed from files */
    const ym_st_tensor **by_name; /* the same, sorted by name for ym_st_set_find */
    int n_all;
};

static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (p == NULL)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static ym_err errno_err(int e)
{
    if (e == ENOENT || e == ENOTDIR)
        return YM_ENOENT;
    if (e == ENOMEM)
        return YM_ENOMEM;
    return YM_EIO;
}

/* Map f->path and parse its header. Diagnostics are prefixed with the file's path. */
static ym_err map_file(st_file *f, ym_diag *diag)
{
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return ym_diag_set(diag, errno_err(e), "%s: %s", f->path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return ym_diag_set(diag, YM_EFORMAT, "%s: not a regular file", f->path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return ym_diag_set(diag, YM_EFORMAT, "%s: %lld bytes, too short for safetensors",
                           f->path, (long long)sb.st_size);
    }
    f->size = (size_t)sb.st_size;
    void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (p == MAP_FAILED)
        return ym_diag_set(diag, errno_err(e), "%s: mmap: %s", f->path, strerror(e));
    f->map = p;
    ym_diag d = { { 0 }, { 0 } };
    ym_err err = ym_st_header_parse(p, f->size, &f->h, &d);
    if (err != YM_OK)
        return ym_diag_set(diag, err, "%s: %s", f->path, d.msg);
    return YM_OK;
}

void ym_st_set_free(ym_st_set_t *set)
{
    if (set == NULL)
        return;
    for (int i = 0; i < set->n_files; i++) {
        st_file *f = &set->files[i];
        ym_st_header_deinit(&f->h);
        if (f->map != NULL)
            munmap(f->map, f->size);
        free(f->path);
    }
    free(set->files);
    free(set->all);
    free(set->by_name);
    free(set);
}

static int cmp_by_name(const void *a, const void *b)
{
    const ym_st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Gather every file's tensors into the set's two views; a name in two files is YM_EFORMAT. */
static ym_err build_index(ym_st_set_t *set, ym_diag *diag)
{
    size_t n = 0;
    for (int i = 0; i < set->n_files; i++)
        n += (size_t)set->files[i].h.n_tensors;
    if (n > INT_MAX)
        return ym_diag_set(diag, YM_EFORMAT, "too many tensors (%zu)", n);
    if (n == 0)
        return YM_OK;
    set->all = malloc(n * sizeof(*set->all));
    set->by_name = malloc(n * sizeof(*set->by_name));
    if (set->all == NULL || set->by_name == NULL)
        return YM_ENOMEM;
    for (int i = 0; i < set->n_files; i++)
        for (int j = 0; j < set->files[i].h.n_tensors; j++)
            set->all[set->n_all++] = &set->files[i].h.tensors[j];
    memcpy(set->by_name, set->all, n * sizeof(*set->all));
    qsort(set->by_name, n, sizeof(*set->by_name), cmp_by_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(set->by_name[i - 1]->name, set->by_name[i]->name) == 0)
            return ym_diag_set(diag, YM_EFORMAT, "tensor %s appears in more than one file",
                               set->by_name[i]->name);
    return YM_OK;
}

static ym_err set_new(int n_files, ym_st_set_t **out)
{
    ym_st_set_t *set = calloc(1, sizeof(*set));
    if (set == NULL)
        return YM_ENOMEM;
    if ((set->files = calloc((size_t)n_files, sizeof(*set->files))) == NULL) {
        free(set);
        return YM_ENOMEM;
    }
    set->n_files = n_files;
    *out = set;
    return YM_OK;
}

ym_err ym_st_set_open_file(const char *path, ym_st_set_t **out, ym_diag *diag)
{
    ym_st_set_t *set;
    ym_err err;
    *out = NULL;
    if ((err = set_new(1, &set)) != YM_OK)
        return ym_diag_set(diag, err, "out of memory");
    if ((set->files[0].path = strdup(path)) == NULL) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
        goto fail;
    }
    if ((err = map_file(&set->files[0], diag)) != YM_OK)
        goto fail;
    if ((err = build_index(set, diag)) != YM_OK)
        goto fail;
    *out = set;
    return YM_OK;
fail:
    ym_st_set_free(set);
    return err;
}

/* Read a whole small file (the index) into a NUL-terminated buffer. */
static ym_err read_small(const char *path, size_t limit, char **out, size_t *len, ym_diag *diag)
{
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        int e = errno;
        return ym_diag_set(diag, errno_err(e), "%s: %s", path, strerror(e));
    }
    ym_buf b = YM_BUF_INIT;
    ym_err err = ym_buf_read(&b, fp, limit);
    fclose(fp);
    if (err == YM_OK && (*out = ym_buf_take(&b, len)) == NULL)
        err = YM_ENOMEM;
    ym_buf_deinit(&b);
    if (err == YM_ETOOBIG)
        return ym_diag_set(diag, YM_EFORMAT, "%s: larger than %zu bytes", path, limit);
    if (err == YM_ENOMEM)
        return ym_diag_set(diag, YM_ENOMEM, "%s: out of memory", path);
    if (err != YM_OK)
        return ym_diag_set(diag, YM_EIO, "%s: read error", path);
    return YM_OK;
}

/* A shard must be a plain file name beside the index: no path can escape the directory. */
static bool shard_name_ok(const char *s)
{
    return s[0] != '\0' && s[0] != '.' && strchr(s, '/') == NULL && strchr(s, '\\') == NULL;
}

static ym_err open_sharded(const char *dir, const char *index_path, ym_st_set_t **out,
                           ym_diag *diag)
{
    char *text = NULL;
    size_t len = 0;
    json_t *root = NULL;
    const char **shards = NULL;
    ym_st_set_t *set = NULL;
    int n_shards = 0;
    ym_err err;

    if ((err = read_small(index_path, ST_MAX_INDEX, &text, &len, diag)) != YM_OK)
        return err;
    json_error_t jerr;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (root == NULL)
        return ym_diag_set(diag, YM_EFORMAT, "%s: not valid JSON: %s (line %d)", index_path,
                           jerr.text, jerr.line);
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(map)) {
        err = ym_diag_set(diag, YM_EFORMAT, "%s: no weight_map object", index_path);
        goto fail;
    }

    /* Distinct shards, in order of first mention. */
    size_t n_map = json_object_size(map);
    if ((shards = calloc(n_map > 0 ? n_map : 1, sizeof(*shards))) == NULL) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
        goto fail;
    }
    const char *name;
    json_t *val;
    json_object_foreach(map, name, val) {
        if (!json_is_string(val) || !shard_name_ok(json_string_value(val))) {
            err = ym_diag_set(diag, YM_EFORMAT,
                              "%s: tensor %s: shard is not a file name in the model directory",
                              index_path, name);
            goto fail;
        }
        const char *s = json_string_value(val);
        int k = 0;
        while (k < n_shards && strcmp(shards[k], s) != 0)
            k++;
        if (k == n_shards)
            shards[n_shards++] = s;
    }
    if (n_shards == 0) {
        err = ym_diag_set(diag, YM_EFORMAT, "%s: weight_map is empty", index_path);
        goto fail;
    }

    if ((err = set_new(n_shards, &set)) != YM_OK) {
        ym_diag_set(diag, err, "out of memory");
        goto fail;
    }
    for (int i = 0; i < n_shards; i++) {
        if ((set->files[i].path = path_join(dir, shards[i])) == NULL) {
            err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
            goto fail;
        }
        if ((err = map_file(&set->files[i], diag)) != YM_OK) {
            if (err == YM_ENOENT)
                err = ym_diag_set(diag, YM_EFORMAT, "%s names shard %s, which does not exist",
                                  index_path, shards[i]);
            goto fail;
        }
    }

    /* The index and the shards must agree both ways. */
    json_object_foreach(map, name, val) {
        const char *s = json_string_value(val);
        int k = 0;
        while (strcmp(shards[k], s) != 0)
            k++;
        if (ym_st_header_find(&set->files[k].h, name) == NULL) {
            err = ym_diag_set(diag, YM_EFORMAT, "%s: tensor %s is not in its shard %s",
                              index_path, name, s);
            goto fail;
        }
    }
    for (int i = 0; i < n_shards; i++) {
        const ym_st_header *h = &set->files[i].h;
        for (int j = 0; j < h->n_tensors; j++) {
            json_t *v = json_object_get(map, h->tensors[j].name);
            if (v == NULL || strcmp(json_string_value(v), shards[i]) != 0) {
                err = ym_diag_set(diag, YM_EFORMAT, "%s: tensor %s of shard %s is %s",
                                  index_path, h->tensors[j].name, shards[i],
                                  v == NULL ? "missing from the index"
                                            : "listed under another shard");
                goto fail;
            }
        }
    }
    if ((err = build_index(set, diag)) != YM_OK)
        goto fail;
    free(shards);
    json_decref(root);
    *out = set;
    return YM_OK;
fail:
    ym_st_set_free(set);
    free(shards);
    json_decref(root);
    return err;
}

ym_err ym_st_set_open_dir(const char *dir, ym_st_set_t **out, ym_diag *diag)
{
    *out = NULL;
    char *single = path_join(dir, ST_SINGLE_NAME);
    char *index = path_join(dir, ST_INDEX_NAME);
    ym_err err;
    struct stat sb;
    if (single == NULL || index == NULL)
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
    else if (stat(single, &sb) == 0) /* as transformers: a single file wins over an index */
        err = ym_st_set_open_file(single, out, diag);
    else if (stat(index, &sb) == 0)
        err = open_sharded(dir, index, out, diag);
    else
        err = ym_diag_set(diag, YM_ENOENT, "%s: no %s or %s", dir, ST_SINGLE_NAME, ST_INDEX_NAME);
    free(single);
    free(index);
    return err;
}

int ym_st_set_n_tensors(const ym_st_set_t *set)
{
    return set->n_all;
}

const ym_st_tensor *ym_st_set_tensor(const ym_st_set_t *set, int i)
{
    return i >= 0 && i < set->n_all ? set->all[i] : NULL;
}

const ym_st_tensor *ym_st_set_find(const ym_st_set_t *set, const char *name)
{
    int lo = 0, hi = set->n_all;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(set->by_name[mid]->name, name);
        if (c == 0)
            return set->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *ym_st_set_meta(const ym_st_set_t *set, const char *key)
{
    for (int i = 0; i < set->n_files; i++) {
        const char *v = ym_st_header_meta(&set->files[i].h, key);
        if (v != NULL)
            return v;
    }
    return NULL;
}

/* ---- writer ---------------------------------------------------------------------------- */

static ym_err write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = write(fd, b, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return YM_EIO;
        }
        b += w;
        n -= (size_t)w;
    }
    return YM_OK;
}

static void fsync_parent(const char *path)
{
    /* Make the rename itself durable. Best effort: some filesystems refuse fsync on a dir. */
    const char *slash = strrchr(path, '/');
    char *dir = slash == NULL ? strdup(".")
                              : strndup(path, (size_t)(slash - path + (slash == path)));
    if (dir == NULL)
        return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

/* Writes data in order of decreasing element size, so that every tensor lands on a multiple of
 * its own element size (the data section starts 8-aligned): F32 is then used in place. */
static int cmp_align(const void *a, const void *b, void *ctx)
{
    const ym_st_wtensor *t = ctx;
    int x = *(const int *)a, y = *(const int *)b;
    size_t sx = ym_dtype_size(t[x].dtype), sy = ym_dtype_size(t[y].dtype);
    if (sx != sy)
        return sx > sy ? -1 : 1;
    return x < y ? -1 : x > y; /* stable: input order among equals */
}

static json_t *build_header(const ym_st_wtensor *t, const int *order, int n_tensors,
                            const ym_st_meta *meta, int n_meta, ym_diag *diag, ym_err *err)
{
    json_t *root = json_object();
    *err = YM_ENOMEM;
    if (root == NULL)
        return NULL;
    if (n_meta > 0) {
        json_t *m = json_object();
        if (m == NULL || json_object_set_new(root, "__metadata__", m) != 0)
            goto fail;
        for (int i = 0; i < n_meta; i++) {
            if (meta[i].key == NULL || meta[i].value == NULL) {
                *err = ym_diag_set(diag, YM_EINVAL, "metadata %d: NULL key or value", i);
                goto fail;
            }
            json_t *v = json_string(meta[i].value);
            if (v == NULL) {
                *err = ym_diag_set(diag, YM_EINVAL, "metadata %s: value is not UTF-8",
                                   meta[i].key);
                goto fail;
            }
            if (json_object_get(m, meta[i].key) != NULL ||
                json_object_set_new(m, meta[i].key, v) != 0) {
                *err = ym_diag_set(diag, YM_EINVAL, "metadata %s: duplicate or invalid key",
                                   meta[i].key);
                goto fail;
            }
        }
    }
    uint64_t off = 0;
    for (int k = 0; k < n_tensors; k++) {
        const ym_st_wtensor *w = &t[order[k]];
        json_t *e = json_object(), *shape = json_array(), *offs = json_array();
        if (e == NULL || shape == NULL || offs == NULL) {
            json_decref(e);
            json_decref(shape);
            json_decref(offs);
            goto fail;
        }
        uint64_t bytes = (uint64_t)shape_numel(w->shape, w->n_dim) * ym_dtype_size(w->dtype);
        for (int d = 0; d < w->n_dim; d++)
            json_array_append_new(shape, json_integer(w->shape[d]));
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_array_append_new(offs, json_integer((json_int_t)(off + bytes)));
        off += bytes;
        json_object_set_new(e, "dtype", json_string(ym_dtype_name(w->dtype)));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets", offs);
        if (json_object_set_new(root, w->name, e) != 0) {
            *err = ym_diag_set(diag, YM_EINVAL, "tensor %s: name is not UTF-8", w->name);
            goto fail;
        }
    }
    *err = YM_OK;
    return root;
fail:
    if (*err == YM_ENOMEM)
        ym_diag_set(diag, YM_ENOMEM, "out of memory building a safetensors header");
    json_decref(root);
    return NULL;
}

static ym_err check_wtensors(const ym_st_wtensor *t, int n_tensors, ym_diag *diag)
{
    for (int i = 0; i < n_tensors; i++) {
        const ym_st_wtensor *w = &t[i];
        if (w->name == NULL || strcmp(w->name, "__metadata__") == 0)
            return ym_diag_set(diag, YM_EINVAL, "tensor %d: missing or reserved name", i);
        if (ym_dtype_size(w->dtype) == 0)
            return ym_diag_set(diag, YM_EINVAL, "tensor %s: unknown dtype", w->name);
        if (w->n_dim < 0 || w->n_dim > YM_ST_MAX_DIM)
            return ym_diag_set(diag, YM_EINVAL, "tensor %s: %d dimensions", w->name, w->n_dim);
        int64_t numel = shape_numel(w->shape, w->n_dim);
        if (numel < 0 || (uint64_t)numel > ((uint64_t)INT64_MAX >> 4))
            return ym_diag_set(diag, YM_EINVAL, "tensor %s: invalid shape", w->name);
        if (numel > 0 && w->data == NULL)
            return ym_diag_set(diag, YM_EINVAL, "tensor %s: no data", w->name);
        for (int j = 0; j < i; j++)
            if (strcmp(t[j].name, w->name) == 0)
                return ym_diag_set(diag, YM_EINVAL, "tensor %s: duplicate name", w->name);
    }
    return YM_OK;
}

ym_err ym_st_write(const char *path, const ym_st_wtensor *t, int n_tensors,
                   const ym_st_meta *meta, int n_meta, ym_diag *diag)
{
    ym_err err;
    int *order = NULL;
    json_t *root = NULL;
    char *text = NULL, *tmp = NULL;
    int fd = -1;

    if (n_tensors < 0 || (n_tensors > 0 && t == NULL) || n_meta < 0 || (n_meta > 0 && !meta))
        return ym_diag_set(diag, YM_EINVAL, "invalid tensor or metadata list");
    if ((err = check_wtensors(t, n_tensors, diag)) != YM_OK)
        return err;
    if ((order = malloc(((size_t)n_tensors + 1) * sizeof(*order))) == NULL)
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    for (int i = 0; i < n_tensors; i++)
        order[i] = i;
    qsort_r(order, (size_t)n_tensors, sizeof(*order), cmp_align, (void *)t);

    if ((root = build_header(t, order, n_tensors, meta, n_meta, diag, &err)) == NULL)
        goto done;
    if ((text = json_dumps(root, JSON_COMPACT)) == NULL) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
        goto done;
    }
    /* Pad the header with spaces to a multiple of 8, as the reference writer does, so the data
     * section (and with the ordering above, every tensor) is aligned. */
    size_t hlen = strlen(text);
    size_t padded = (hlen + 7) & ~(size_t)7;
    char *ptext = realloc(text, padded + 1);
    if (ptext == NULL) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
        goto done;
    }
    text = ptext;
    memset(text + hlen, ' ', padded - hlen);

    size_t plen = strlen(path);
    if ((tmp = malloc(plen + 16)) == NULL) {
        err = ym_diag_set(diag, YM_ENOMEM, "out of memory");
        goto done;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", 12);
    if ((fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
        int e = errno;
        free(tmp);
        tmp = NULL;
        err = ym_diag_set(diag, errno_err(e), "%s: cannot create a temporary file: %s", path,
                          strerror(e));
        goto done;
    }
    (void)fchmod(fd, 0644);
    uint64_t n = padded;
    err = write_all(fd, &n, 8);
    if (err == YM_OK)
        err = write_all(fd, text, padded);
    for (int k = 0; k < n_tensors && err == YM_OK; k++) {
        const ym_st_wtensor *w = &t[order[k]];
        size_t bytes = (size_t)shape_numel(w->shape, w->n_dim) * ym_dtype_size(w->dtype);
        if (bytes > 0)
            err = write_all(fd, w->data, bytes);
    }
    if (err == YM_OK && fsync(fd) != 0)
        err = YM_EIO;
    if (err != YM_OK) {
        err = ym_diag_set(diag, YM_EIO, "%s: write failed: %s", tmp, strerror(errno));
        goto done;
    }
    if (close(fd) != 0) {
        fd = -1;
        err = ym_diag_set(diag, YM_EIO, "%s: close failed: %s", tmp, strerror(errno));
        goto done;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        err = ym_diag_set(diag, YM_EIO, "%s: rename failed: %s", path, strerror(errno));
        goto done;
    }
    free(tmp);
    tmp = NULL;
    fsync_parent(path);
    err = YM_OK;
done:
    if (fd >= 0)
        close(fd);
    if (tmp != NULL) {
        unlink(tmp);
        free(tmp);
    }
    free(text);
    json_decref(root);
    free(order);
    return err;
}

/* tests/unit/test_safetensors.c - the safetensors module: writer/parser round trips, every header
 * rule, float conversions against independent references, sharded sets. */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/safetensors.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static char *tmpdir_new(void)
{
    char tmpl[] = "/tmp/ym-st-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    ck_assert_ptr_nonnull(d);
    return strdup(d);
}

static void tmpdir_free(char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        ck_assert_int_eq(unlink(path), 0);
    }
    closedir(d);
    ck_assert_int_eq(rmdir(dir), 0);
    free(dir);
}

static int dir_count(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static char *join(const char *dir, const char *name)
{
    static char buf[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof(buf[k]), "%s/%s", dir, name);
    return buf[k];
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_ptr_nonnull(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    ck_assert_uint_eq(fread(b, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return b;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(p, 1, n, fp), n);
    fclose(fp);
}

/* A file from a literal header and n_data bytes of data (filled with a pattern). */
static uint8_t *make_file(const char *header, size_t n_data, size_t *len)
{
    size_t hl = strlen(header);
    uint8_t *b = malloc(8 + hl + n_data + 1);
    uint64_t n = hl;
    memcpy(b, &n, 8);
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < n_data; i++)
        b[8 + hl + i] = (uint8_t)(i * 7 + 1);
    *len = 8 + hl + n_data;
    return b;
}

/* Parse a file built from header + data; expect YM_EFORMAT and a message containing want. */
static void expect_bad(const char *header, size_t n_data, const char *want)
{
    size_t len;
    uint8_t *b = make_file(header, n_data, &len);
    ym_st_header h;
    ym_diag diag = { { 0 }, { 0 } };
    ym_err err = ym_st_header_parse(b, len, &h, &diag);
    ck_assert_msg(err == YM_EFORMAT, "header %s: got %d, want YM_EFORMAT", header, err);
    ck_assert_msg(strstr(diag.msg, want) != NULL, "header %s: message '%s' lacks '%s'", header,
                  diag.msg, want);
    ck_assert_int_eq(h.n_tensors, 0);
    ck_assert_ptr_null(h.tensors);
    ym_st_header_deinit(&h);
    ym_st_header_deinit(&h); /* idempotent */
    free(b);
}

static uint64_t rng_state = 0x1234567887654321ull;
static uint64_t next_u64(void)
{
    /* xorshift64*: independent of the generator inside the engine. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

/* ---- round trips ------------------------------------------------------------------------ */

START_TEST(test_st_write_then_parse_round_trips_every_dtype_and_metadata)
{
    char *dir = tmpdir_new();
    /* One tensor per dtype, with shapes of 0..3 dimensions, an empty one and odd byte counts
     * (the 1-byte types first in the list, so the writer has to order for alignment). */
    static const ym_dtype dts[] = { YM_DT_U8,  YM_DT_BOOL, YM_DT_I8,  YM_DT_BF16, YM_DT_F16,
                                    YM_DT_I16, YM_DT_F32,  YM_DT_I32, YM_DT_F64,  YM_DT_I64 };
    enum { N = sizeof(dts) / sizeof(dts[0]) + 2 };
    ym_st_wtensor w[N];
    uint8_t *bufs[N];
    char names[N][32];
    for (int i = 0; i < N; i++) {
        ym_dtype dt = i < N - 2 ? dts[i] : (i == N - 2 ? YM_DT_F32 : YM_DT_BF16);
        snprintf(names[i], sizeof(names[i]), "t%d.%s", i, ym_dtype_name(dt));
        w[i] = (ym_st_wtensor){ .name = names[i], .dtype = dt };
        if (i == N - 2) { /* empty */
            w[i].n_dim = 2;
            w[i].shape[0] = 3;
            w[i].shape[1] = 0;
        } else if (i == N - 1) { /* scalar */
            w[i].n_dim = 0;
        } else {
            w[i].n_dim = 1 + i % 3;
            for (int d = 0; d < w[i].n_dim; d++)
                w[i].shape[d] = 1 + (i + 2 * d) % 5;
        }
        int64_t numel = 1;
        for (int d = 0; d < w[i].n_dim; d++)
            numel *= w[i].shape[d];
        size_t bytes = (size_t)numel * ym_dtype_size(dt);
        bufs[i] = malloc(bytes + 1);
        for (size_t j = 0; j < bytes; j++)
            bufs[i][j] = (uint8_t)next_u64();
        if (dt == YM_DT_BOOL)
            for (size_t j = 0; j < bytes; j++)
                bufs[i][j] &= 1;
        w[i].data = bufs[i];
    }
    ym_st_meta meta[] = { { "format", "pt" }, { "note", "h\xc3\xa9llo \"quoted\"" } };
    const char *path = join(dir, "x.safetensors");
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_st_write(path, w, N, meta, 2, &diag), YM_OK);
    ck_assert_int_eq(dir_count(dir), 1); /* no temporary file left beside it */

    /* Through a buffer, and through the mapping. */
    size_t len;
    uint8_t *buf = read_all(path, &len);
    ym_st_header h;
    ck_assert_int_eq(ym_st_header_parse(buf, len, &h, &diag), YM_OK);
    ck_assert_uint_eq(h.data_offset % 8, 0);
    ym_st_set_t *set;
    ck_assert_int_eq(ym_st_set_open_file(path, &set, &diag), YM_OK);
    ck_assert_int_eq(h.n_tensors, N);
    ck_assert_int_eq(ym_st_set_n_tensors(set), N);
    for (int i = 0; i < N; i++) {
        const ym_st_tensor *a = ym_st_header_find(&h, names[i]);
        const ym_st_tensor *b = ym_st_set_find(set, names[i]);
        ck_assert_ptr_nonnull(a);
        ck_assert_ptr_nonnull(b);
        for (int k = 0; k < 2; k++) {
            const ym_st_tensor *t = k ? b : a;
            ck_assert_str_eq(t->name, names[i]);
            ck_assert_int_eq(t->dtype, w[i].dtype);
            ck_assert_int_eq(t->n_dim, w[i].n_dim);
            for (int d = 0; d < t->n_dim; d++)
                ck_assert_int_eq(t->shape[d], w[i].shape[d]);
            size_t bytes = (size_t)ym_st_tensor_numel(t) * ym_dtype_size(t->dtype);
            ck_assert_uint_eq(t->end - t->begin, bytes);
            ck_assert(bytes == 0 || memcmp(t->data, bufs[i], bytes) == 0);
            /* The writer orders by element size, so each tensor is aligned to it. */
            ck_assert_uint_eq((uintptr_t)t->data % ym_dtype_size(t->dtype), 0);
        }
    }
    for (int i = 1; i < h.n_tensors; i++) /* sorted by begin, tiling the data */
        ck_assert_uint_eq(h.tensors[i].begin, h.tensors[i - 1].end);
    ck_assert_str_eq(ym_st_header_meta(&h, "format"), "pt");
    ck_assert_str_eq(ym_st_header_meta(&h, "note"), meta[1].value);
    ck_assert_str_eq(ym_st_set_meta(set, "note"), meta[1].value);
    ck_assert_ptr_null(ym_st_set_meta(set, "nope"));
    ck_assert_ptr_null(ym_st_set_find(set, "nope"));
    ck_assert_ptr_null(ym_st_header_find(&h, "nope"));
    ck_assert_ptr_null(ym_st_set_tensor(set, N));
    ym_st_header_deinit(&h);
    ym_st_set_free(set);
    ym_st_set_free(NULL);
    free(buf);

    /* Writing again replaces the file atomically, and a file without tensors is valid. */
    ck_assert_int_eq(ym_st_write(path, NULL, 0, NULL, 0, &diag), YM_OK);
    ck_assert_int_eq(ym_st_set_open_file(path, &set, &diag), YM_OK);
    ck_assert_int_eq(ym_st_set_n_tensors(set), 0);
    ym_st_set_free(set);
    ck_assert_int_eq(dir_count(dir), 1);
    for (int i = 0; i < N; i++)
        free(bufs[i]);
    tmpdir_free(dir);
}
END_TEST

START_TEST(test_st_write_rejects_bad_tensor_lists)
{
    char *dir = tmpdir_new();
    float v[2] = { 1, 2 };
    ym_st_wtensor w[2] = {
        { .name = "a", .dtype = YM_DT_F32, .n_dim = 1, .shape = { 2 }, .data = v },
        { .name = "a", .dtype = YM_DT_F32, .n_dim = 1, .shape = { 2 }, .data = v },
    };
    ym_diag diag = { { 0 }, { 0 } };
    const char *path = join(dir, "x.safetensors");
    ck_assert_int_eq(ym_st_write(path, w, 2, NULL, 0, &diag), YM_EINVAL);
    ck_assert_ptr_nonnull(strstr(diag.msg, "duplicate"));
    w[1].name = "__metadata__";
    ck_assert_int_eq(ym_st_write(path, w, 2, NULL, 0, &diag), YM_EINVAL);
    w[1].name = "b";
    w[1].shape[0] = -1;
    ck_assert_int_eq(ym_st_write(path, w, 2, NULL, 0, &diag), YM_EINVAL);
    w[1].shape[0] = 2;
    w[1].data = NULL;
    ck_assert_int_eq(ym_st_write(path, w, 2, NULL, 0, &diag), YM_EINVAL);
    ck_assert_int_eq(dir_count(dir), 0);
    /* A directory that does not exist: an error, not a crash. */
    w[1].data = v;
    ck_assert_int_ne(ym_st_write("/nonexistent-ym-dir/x.safetensors", w, 2, NULL, 0, &diag),
                     YM_OK);
    tmpdir_free(dir);
}
END_TEST

/* ---- header rules ------------------------------------------------------------------------- */

START_TEST(test_st_header_rejects_bad_lengths)
{
    ym_st_header h;
    ym_diag diag = { { 0 }, { 0 } };
    uint8_t small[7] = { 0 };
    ck_assert_int_eq(ym_st_header_parse(small, sizeof(small), &h, &diag), YM_EFORMAT);
    ym_st_header_deinit(&h);

    const char *hdr = "{}";
    size_t len;
    uint8_t *b = make_file(hdr, 0, &len);
    uint64_t n;
    const uint64_t bad[] = { 0, 3, (uint64_t)1 << 40, UINT64_MAX, 200000000 };
    const char *want[] = { "header length is 0", "past the end", "exceeds the limit",
                           "exceeds the limit", "exceeds the limit" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        n = bad[i];
        memcpy(b, &n, 8);
        ck_assert_int_eq(ym_st_header_parse(b, len, &h, &diag), YM_EFORMAT);
        ck_assert_msg(strstr(diag.msg, want[i]) != NULL, "%s", diag.msg);
        ym_st_header_deinit(&h);
    }
    /* The right length parses: no tensors, no data. */
    n = 2;
    memcpy(b, &n, 8);
    ck_assert_int_eq(ym_st_header_parse(b, len, &h, &diag), YM_OK);
    ck_assert_int_eq(h.n_tensors, 0);
    ck_assert_uint_eq(h.data_offset, 10);
    ym_st_header_deinit(&h);
    free(b);
}
END_TEST

START_TEST(test_st_header_rejects_each_malformed_entry_naming_the_tensor)
{
#define T(name, body) "\"" name "\":{" body "}"
    expect_bad("{not json", 0, "not valid JSON");
    expect_bad("[1, 2]", 0, "not a JSON object");
    expect_bad("\"w\"", 0, "JSON");
    expect_bad("{\"w\":[1]}", 0, "w");
    expect_bad("{" T("weird", "\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]") "}", 1,
               "weird");
    expect_bad("{" T("nodt", "\"shape\":[1],\"data_offsets\":[0,4]") "}", 4, "nodt");
    expect_bad("{" T("dtnum", "\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]") "}", 4, "dtnum");
    expect_bad("{" T("noshape", "\"dtype\":\"F32\",\"data_offsets\":[0,4]") "}", 4, "noshape");
    expect_bad("{" T("negshape", "\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]") "}", 4,
               "negshape");
    expect_bad("{" T("realshape", "\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]") "}",
               4, "realshape");
    expect_bad("{" T("strshape", "\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]") "}",
               4, "strshape");
    expect_bad("{" T("objshape", "\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]") "}", 4,
               "objshape");
    expect_bad("{" T("ninedims",
                     "\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]") "}",
               1, "ninedims");
    expect_bad("{" T("bigshape", "\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],"
                                 "\"data_offsets\":[0,8]") "}",
               8, "bigshape");
    expect_bad("{" T("nooffs", "\"dtype\":\"F32\",\"shape\":[1]") "}", 4, "nooffs");
    expect_bad("{" T("oneoff", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]") "}", 4,
               "oneoff");
    expect_bad("{" T("threeoff", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]") "}",
               4, "threeoff");
    expect_bad("{" T("negoff", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]") "}", 4,
               "negoff");
    expect_bad("{" T("realoff", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]") "}",
               4, "realoff");
    expect_bad("{" T("backwards", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]") "}", 8,
               "backwards");
    expect_bad("{" T("span", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]") "}", 4,
               "span");
    expect_bad("{" T("outside", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]") "}", 4,
               "outside");
    expect_bad("{" T("a", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]") "," T(
                   "overlapper", "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]") "}",
               12, "overlapper");
    expect_bad("{" T("a", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]") "," T(
                   "afterhole", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]") "}",
               12, "afterhole");
    expect_bad("{" T("lasttensor", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]") "}",
               9, "lasttensor");
    expect_bad("{" T("late", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]") "}", 8,
               "late");
    expect_bad("{}", 3, "no tensors");
    expect_bad("{" T("twice", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]") "," T(
                   "twice", "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]") "}",
               8, "twice");
    expect_bad("{\"__metadata__\":{\"ok\":\"yes\",\"numkey\":1}}", 0, "numkey");
    expect_bad("{\"__metadata__\":{\"nullkey\":null}}", 0, "nullkey");
    expect_bad("{\"__metadata__\":[\"x\"]}", 0, "__metadata__");
    expect_bad("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__");
#undef T
}
END_TEST

START_TEST(test_st_header_accepts_space_padding_and_empty_tensors)
{
    /* Spaces after the JSON (the reference writer pads to 8), an empty tensor at a boundary. */
    const char *hdr = "{\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[4,4]},"
                      "\"w\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}     ";
    size_t len;
    uint8_t *b = make_file(hdr, 4, &len);
    ym_st_header h;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_st_header_parse(b, len, &h, &diag), YM_OK);
    ck_assert_int_eq(h.n_tensors, 2);
    ck_assert_str_eq(h.tensors[0].name, "w"); /* sorted by begin */
    ck_assert_int_eq(ym_st_tensor_numel(ym_st_header_find(&h, "e")), 0);
    ym_st_header_deinit(&h);
    free(b);
}
END_TEST

/* ---- conversions ------------------------------------------------------------------------ */

/* The value of an f16 bit pattern from the IEEE 754 binary16 definition, in double. */
static double f16_value(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

/* Nearest binary16 to x (finite f32), ties to even, by search over the ordered finite codes;
 * overflow at 65520 (65504 + half an ulp) goes to infinity, as IEEE rounding says. */
static uint16_t f16_nearest(float x)
{
    double a = fabs((double)x);
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    if (a >= 65520.0)
        return sign | 0x7c00;
    int lo = 0, hi = 0x7bff; /* largest code with value <= a */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (f16_value((uint16_t)mid) <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    uint16_t c = (uint16_t)lo;
    if (c < 0x7bff) {
        double d0 = a - f16_value(c), d1 = f16_value((uint16_t)(c + 1)) - a;
        if (d1 < d0 || (d1 == d0 && (c & 1)))
            c++;
    }
    return sign | c;
}

START_TEST(test_f16_conversions_match_the_ieee_definition)
{
    /* Every pattern: f16 -> f32 is exact (equals the defined value) and comes back unchanged. */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ym_f16_to_f32((uint16_t)h);
        int e = (h >> 10) & 31;
        if (e == 31 && (h & 1023)) {
            ck_assert(isnan(f));
            ck_assert(isnan(ym_f16_to_f32(ym_f32_to_f16(f))));
            continue;
        }
        if (e == 31)
            ck_assert(isinf(f) && (signbit(f) != 0) == ((h >> 15) != 0));
        else
            ck_assert_msg((double)f == f16_value((uint16_t)h), "h=0x%04x", h);
        ck_assert_msg(ym_f32_to_f16(f) == h, "h=0x%04x -> %g -> 0x%04x", h, (double)f,
                      ym_f32_to_f16(f));
    }
    /* f32 -> f16 rounding: random bit patterns over the interesting exponents, and the exact
     * midpoints between neighbouring f16 values (the ties). */
    for (int i = 0; i < 200000; i++) {
        uint64_t r = next_u64();
        uint32_t exp = 127 - 30 + (uint32_t)(r >> 58) % 48; /* 2^-30 .. 2^17 */
        uint32_t bits = ((uint32_t)(r >> 32) & 0x807fffffu) | (exp << 23);
        float x;
        memcpy(&x, &bits, 4);
        ck_assert_msg(ym_f32_to_f16(x) == f16_nearest(x), "x=%a: got 0x%04x want 0x%04x",
                      (double)x, ym_f32_to_f16(x), f16_nearest(x));
    }
    for (uint32_t h = 0; h < 0x7bff; h++) {
        float mid = (float)((f16_value((uint16_t)h) + f16_value((uint16_t)(h + 1))) / 2);
        ck_assert_msg(ym_f32_to_f16(mid) == f16_nearest(mid), "mid after 0x%04x", h);
        ck_assert_msg(ym_f32_to_f16(-mid) == f16_nearest(-mid), "-mid after 0x%04x", h);
    }
    ck_assert_uint_eq(ym_f32_to_f16(65519.99f), 0x7bff);
    ck_assert_uint_eq(ym_f32_to_f16(65520.0f), 0x7c00);
    ck_assert_uint_eq(ym_f32_to_f16(1e30f), 0x7c00);
    ck_assert_uint_eq(ym_f32_to_f16(-INFINITY), 0xfc00);
    ck_assert(isnan(ym_f16_to_f32(ym_f32_to_f16(NAN))));
    float snan;
    uint32_t sb = 0x7f800001u; /* a NaN whose payload lives only in the low bits */
    memcpy(&snan, &sb, 4);
    ck_assert(isnan(ym_f16_to_f32(ym_f32_to_f16(snan))));
#if defined(__FLT16_MAX__)
    /* And against the compiler's own conversion, where it has one. */
    for (int i = 0; i < 200000; i++) {
        uint32_t bits = (uint32_t)next_u64();
        float x;
        memcpy(&x, &bits, 4);
        if (isnan(x))
            continue;
        _Float16 y = (_Float16)x;
        uint16_t yb;
        memcpy(&yb, &y, 2);
        ck_assert_msg(ym_f32_to_f16(x) == yb, "x=%a", (double)x);
    }
#endif
}
END_TEST

START_TEST(test_bf16_conversions_round_to_nearest_even)
{
    /* Definitional patterns: bf16 is the top half of an f32. */
    ck_assert(ym_bf16_to_f32(0x3f80) == 1.0f);
    ck_assert(ym_bf16_to_f32(0xc000) == -2.0f);
    ck_assert(isinf(ym_bf16_to_f32(0x7f80)));
    ck_assert(isnan(ym_bf16_to_f32(0x7fc0)));
    for (uint32_t v = 0; v < 65536; v++) {
        float f = ym_bf16_to_f32((uint16_t)v);
        uint32_t bits;
        memcpy(&bits, &f, 4);
        ck_assert_uint_eq(bits, v << 16);
        if (isnan(f))
            ck_assert(isnan(ym_bf16_to_f32(ym_f32_to_bf16(f))));
        else
            ck_assert_uint_eq(ym_f32_to_bf16(f), v);
    }
    /* Rounding against the nearest of the two neighbouring bf16 values, computed in double. */
    for (int i = 0; i < 500000; i++) {
        uint32_t bits = (uint32_t)next_u64();
        float x;
        memcpy(&x, &bits, 4);
        if (isnan(x)) {
            ck_assert(isnan(ym_bf16_to_f32(ym_f32_to_bf16(x))));
            continue;
        }
        uint16_t lo = (uint16_t)(bits >> 16), hi = (uint16_t)(lo + 1);
        double a = fabs((double)x);
        double vlo = fabs((double)ym_bf16_to_f32(lo));
        uint16_t want = lo;
        if ((bits & 0xffff) != 0) {
            /* The next magnitude up; past the largest finite value it is infinity, reached when
             * x is at least halfway to 2^128. */
            double vhi = (hi & 0x7fff) == 0x7f80 ? ldexp(1.0, 128)
                                                 : fabs((double)ym_bf16_to_f32(hi));
            double d0 = a - vlo, d1 = vhi - a;
            if (d1 < d0 || (d1 == d0 && (lo & 1)))
                want = hi;
        }
        ck_assert_msg(ym_f32_to_bf16(x) == want, "x=%a: got 0x%04x want 0x%04x", (double)x,
                      ym_f32_to_bf16(x), want);
    }
    /* The tie cases by construction: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7. */
    ck_assert_uint_eq(ym_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    ck_assert_uint_eq(ym_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
}
END_TEST

START_TEST(test_st_tensor_to_f32_converts_every_float_dtype_aligned_or_not)
{
    enum { N = 1001 };
    char *dir = tmpdir_new();
    float ref[N];
    uint16_t h16[N], b16[N];
    double f64[N];
    uint8_t one = 7;
    for (int i = 0; i < N; i++) {
        ref[i] = (float)((double)(int64_t)next_u64() * 0x1p-60);
        b16[i] = ym_f32_to_bf16(ref[i]);
        h16[i] = ym_f32_to_f16(ref[i]);
        f64[i] = (double)ref[i];
    }
    /* The 1-byte tensor is written last, so the data of everything before stays aligned; a
     * hand-built header below puts one first to misalign the rest. */
    ym_st_wtensor w[] = {
        { .name = "f32", .dtype = YM_DT_F32, .n_dim = 1, .shape = { N }, .data = ref },
        { .name = "bf16", .dtype = YM_DT_BF16, .n_dim = 1, .shape = { N }, .data = b16 },
        { .name = "f16", .dtype = YM_DT_F16, .n_dim = 1, .shape = { N }, .data = h16 },
        { .name = "f64", .dtype = YM_DT_F64, .n_dim = 1, .shape = { N }, .data = f64 },
        { .name = "u8", .dtype = YM_DT_U8, .n_dim = 1, .shape = { 1 }, .data = &one },
    };
    const char *path = join(dir, "c.safetensors");
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_st_write(path, w, 5, NULL, 0, &diag), YM_OK);
    ym_st_set_t *set;
    ck_assert_int_eq(ym_st_set_open_file(path, &set, &diag), YM_OK);
    float out[N];
    const char *names[] = { "f32", "bf16", "f16", "f64" };
    for (int k = 0; k < 4; k++) {
        const ym_st_tensor *t = ym_st_set_find(set, names[k]);
        ck_assert_int_eq(ym_st_tensor_to_f32(t, out, &diag), YM_OK);
        for (int i = 0; i < N; i++) {
            float want = k == 1 ? ym_bf16_to_f32(b16[i]) : k == 2 ? ym_f16_to_f32(h16[i]) : ref[i];
            ck_assert_msg(out[i] == want, "%s[%d]", names[k], i);
        }
    }
    ck_assert_int_eq(ym_st_tensor_to_f32(ym_st_set_find(set, "u8"), out, &diag), YM_EFORMAT);
    ck_assert_ptr_nonnull(strstr(diag.msg, "u8"));
    ym_st_set_free(set);

    /* Misaligned: a 1-byte tensor first, then bf16, f16, f32 at odd addresses. */
    char hdr[512];
    snprintf(hdr, sizeof(hdr),
             "{\"u\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[%d],\"data_offsets\":[1,%d]},"
             "\"h\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[%d,%d]},"
             "\"f\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[%d,%d]}}",
             N, 1 + 2 * N, N, 1 + 2 * N, 1 + 4 * N, N, 1 + 4 * N, 1 + 8 * N);
    size_t len;
    uint8_t *b = make_file(hdr, 1 + 8 * (size_t)N, &len);
    uint8_t *data = b + len - (1 + 8 * (size_t)N);
    if (((uintptr_t)data & 1) != 0) { /* shift by one byte: tensors at data + 1 are then odd */
        memmove(b + 9, b + 8, len - 8);
        b[8] = ' ';
        uint64_t hl = strlen(hdr) + 1;
        memcpy(b, &hl, 8);
        data++;
    }
    memcpy(data + 1, b16, 2 * N);
    memcpy(data + 1 + 2 * N, h16, 2 * N);
    memcpy(data + 1 + 4 * N, ref, 4 * N);
    ym_st_header h;
    ck_assert_int_eq(ym_st_header_parse(b, (size_t)(data - b) + 1 + 8 * N, &h, &diag), YM_OK);
    const char *mis[] = { "b", "h", "f" };
    for (int k = 0; k < 3; k++) {
        const ym_st_tensor *t = ym_st_header_find(&h, mis[k]);
        ck_assert_uint_eq((uintptr_t)t->data & 1, 1);
        ck_assert_int_eq(ym_st_tensor_to_f32(t, out, &diag), YM_OK);
        for (int i = 0; i < N; i++) {
            float want = k == 0 ? ym_bf16_to_f32(b16[i]) : k == 1 ? ym_f16_to_f32(h16[i]) : ref[i];
            ck_assert_msg(out[i] == want, "%s[%d]", mis[k], i);
        }
    }
    ym_st_header_deinit(&h);
    free(b);
    tmpdir_free(dir);
}
END_TEST

/* ---- sets: single file in a directory, shards ----------------------------------------------- */

static float shard_vals[4][6];

static void write_shard(const char *path, int first, int n)
{
    ym_st_wtensor w[4];
    char names[4][16];
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof(names[i]), "w%d", first + i);
        for (int j = 0; j < 6; j++)
            shard_vals[first + i][j] = (float)(first + i) * 10 + (float)j;
        w[i] = (ym_st_wtensor){ .name = names[i], .dtype = YM_DT_F32, .n_dim = 2,
                                .shape = { 2, 3 }, .data = shard_vals[first + i] };
    }
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_st_write(path, w, n, NULL, 0, &diag), YM_OK);
}

static void write_text(const char *path, const char *s)
{
    write_bytes(path, s, strlen(s));
}

static const char *good_index =
    "{\"metadata\":{\"total_size\":96},\"weight_map\":{\"w0\":\"model-00001-of-00002.safetensors\","
    "\"w1\":\"model-00001-of-00002.safetensors\",\"w2\":\"model-00002-of-00002.safetensors\","
    "\"w3\":\"model-00002-of-00002.safetensors\"}}";

START_TEST(test_st_set_opens_sharded_checkpoints)
{
    char *dir = tmpdir_new();
    write_shard(join(dir, "model-00001-of-00002.safetensors"), 0, 2);
    write_shard(join(dir, "model-00002-of-00002.safetensors"), 2, 2);
    write_text(join(dir, "model.safetensors.index.json"), good_index);
    ym_st_set_t *set;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_st_set_open_dir(dir, &set, &diag), YM_OK);
    ck_assert_int_eq(ym_st_set_n_tensors(set), 4);
    for (int i = 0; i < 4; i++) {
        char name[8];
        snprintf(name, sizeof(name), "w%d", i);
        const ym_st_tensor *t = ym_st_set_find(set, name);
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(memcmp(t->data, shard_vals[i], sizeof(shard_vals[i])), 0);
    }
    ym_st_set_free(set);

    /* A single model.safetensors beside it is preferred, as transformers does. */
    write_shard(join(dir, "model.safetensors"), 3, 1);
    ck_assert_int_eq(ym_st_set_open_dir(dir, &set, &diag), YM_OK);
    ck_assert_int_eq(ym_st_set_n_tensors(set), 1);
    ym_st_set_free(set);
    unlink(join(dir, "model.safetensors"));
    tmpdir_free(dir);
}
END_TEST

static void expect_bad_index(const char *index, const char *want)
{
    char *dir = tmpdir_new();
    write_shard(join(dir, "model-00001-of-00002.safetensors"), 0, 2);
    write_shard(join(dir, "model-00002-of-00002.safetensors"), 2, 2);
    write_text(join(dir, "model.safetensors.index.json"), index);
    ym_st_set_t *set = (ym_st_set_t *)1;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_st_set_open_dir(dir, &set, &diag), YM_EFORMAT);
    ck_assert_ptr_null(set);
    ck_assert_msg(strstr(diag.msg, want) != NULL, "'%s' lacks '%s'", diag.msg, want);
    tmpdir_free(dir);
}

START_TEST(test_st_set_rejects_inconsistent_shard_indexes)
{
    /* Names a shard that does not exist. */
    expect_bad_index("{\"weight_map\":{\"w0\":\"model-00001-of-00002.safetensors\","
                     "\"w1\":\"model-00001-of-00002.safetensors\",\"w2\":\"gone.safetensors\","
                     "\"w3\":\"model-00002-of-00002.safetensors\"}}",
                     "gone.safetensors");
    /* Puts w2 in the first shard, which does not hold it. */
    expect_bad_index("{\"weight_map\":{\"w0\":\"model-00001-of-00002.safetensors\","
                     "\"w1\":\"model-00001-of-00002.safetensors\","
                     "\"w2\":\"model-00001-of-00002.safetensors\","
                     "\"w3\":\"model-00002-of-00002.safetensors\"}}",
                     "w2");
    /* Leaves out w3, which the second shard has. */
    expect_bad_index("{\"weight_map\":{\"w0\":\"model-00001-of-00002.safetensors\","
                     "\"w1\":\"model-00001-of-00002.safetensors\","
                     "\"w2\":\"model-00002-of-00002.safetensors\"}}",
                     "w3");
    /* Names a tensor no shard has. */
    expect_bad_index("{\"weight_map\":{\"w0\":\"model-00001-of-00002.safetensors\","
                     "\"w1\":\"model-00001-of-00002.safetensors\","
                     "\"w2\":\"model-00002-of-00002.safetensors\","
                     "\"w3\":\"model-00002-of-00002.safetensors\","
                     "\"w9\":\"model-00002-of-00002.safetensors\"}}",
                     "w9");
    /* Escapes the directory. */
    expect_bad_index("{\"weight_map\":{\"w0\":\"../model-00001-of-00002.safetensors\"}}", "w0");
    expect_bad_index("{\"weight_map\":{\"w0\":7}}", "w0");
    expect_bad_index("{\"weight_map\":[]}", "weight_map");
    expect_bad_index("{\"weight_map\":{}}", "empty");
    expect_bad_index("{\"weight_map\":{\"w0\":\"a\",\"w0\":\"b\"}}", "w0");
    expect_bad_index("not json", "JSON");
}
END_TEST

START_TEST(test_st_set_reports_missing_and_malformed_files)
{
    char *dir = tmpdir_new();
    ym_st_set_t *set;
    ym_diag diag = { { 0 }, { 0 } };
    ck_assert_int_eq(ym_st_set_open_dir(dir, &set, &diag), YM_ENOENT);
    ck_assert_ptr_null(set);
    ck_assert_int_eq(ym_st_set_open_file(join(dir, "none.safetensors"), &set, &diag), YM_ENOENT);
    write_text(join(dir, "model.safetensors"), "short");
    ck_assert_int_eq(ym_st_set_open_dir(dir, &set, &diag), YM_EFORMAT);
    ck_assert_ptr_nonnull(strstr(diag.msg, "model.safetensors"));
    size_t len;
    uint8_t *b = make_file("{\"bad\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                           &len);
    write_bytes(join(dir, "model.safetensors"), b, len);
    free(b);
    ck_assert_int_eq(ym_st_set_open_dir(dir, &set, &diag), YM_EFORMAT);
    ck_assert_ptr_nonnull(strstr(diag.msg, "bad"));
    tmpdir_free(dir);
}
END_TEST

Suite *safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_st_write_then_parse_round_trips_every_dtype_and_metadata);
    tcase_add_test(tc, test_st_write_rejects_bad_tensor_lists);
    tcase_add_test(tc, test_st_header_rejects_bad_lengths);
    tcase_add_test(tc, test_st_header_rejects_each_malformed_entry_naming_the_tensor);
    tcase_add_test(tc, test_st_header_accepts_space_padding_and_empty_tensors);
    tcase_add_test(tc, test_f16_conversions_match_the_ieee_definition);
    tcase_add_test(tc, test_bf16_conversions_round_to_nearest_even);
    tcase_add_test(tc, test_st_tensor_to_f32_converts_every_float_dtype_aligned_or_not);
    tcase_add_test(tc, test_st_set_opens_sharded_checkpoints);
    tcase_add_test(tc, test_st_set_rejects_inconsistent_shard_indexes);
    tcase_add_test(tc, test_st_set_reports_missing_and_malformed_files);
    suite_add_tcase(s, tc);
    return s;
}

/* engine/state.c - recurrent state objects: create, reset, copy, serialize.
 *
 * A state is plain memory owned by one sequence; whoever runs that sequence (the engine
 * thread) is the only one to touch it. Serialization is for the state cache (sessions,
 * prefix checkpoints, export between replicas): a fixed header that names the dimensions and
 * carries a checksum, so a state cannot be loaded into the wrong model or loaded half-written. */
#include "engine/state.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h> /* XXH3 with the widest vectors the CPU has (AVX2, AVX-512) */
#define STATE_XXH3 XXH3_64bits_dispatch
#else
#define STATE_XXH3 XXH3_64bits
#endif

#include "engine/sparse.h"
#include "engine/ssd.h"

#define STATE_MAGIC 0x54534d59u /* "YMST" little-endian */
#define STATE_VERSION 2u        /* written; version 1 is still read */
#define STATE_HEADER 48

static size_t conv_floats(const ym_state_t *s)
{
    if (s->conv_off != NULL)
        return (size_t)s->conv_off[s->n_layer];
    return (size_t)s->n_layer * s->conv_ch * (size_t)(s->d_conv - 1);
}

static size_t ssm_floats(const ym_state_t *s)
{
    if (s->ssm_off != NULL)
        return (size_t)s->ssm_off[s->n_layer];
    return (size_t)s->n_layer * s->d_inner * (size_t)s->d_state;
}

size_t ym_state_floats(const ym_state_t *s)
{
    return conv_floats(s) + ssm_floats(s);
}

/* A zeroed state with these dimensions and, when offs is given, the compact layout of
 * conv_off/ssm_off [n_layer + 1] (copied); NULL on no memory. */
static ym_state_t *state_make(int n_layer, int d_inner, int conv_ch, int d_conv, int d_state,
                              const int64_t *conv_off, const int64_t *ssm_off, const void *layout)
{
    ym_state_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->n_layer = n_layer;
    s->d_inner = d_inner;
    s->conv_ch = conv_ch;
    s->d_conv = d_conv;
    s->d_state = d_state;
    s->layout = layout;
    if (conv_off != NULL) {
        size_t n = ((size_t)n_layer + 1) * sizeof(int64_t);
        if ((s->conv_off = malloc(n)) == NULL || (s->ssm_off = malloc(n)) == NULL)
            goto oom;
        memcpy(s->conv_off, conv_off, n);
        memcpy(s->ssm_off, ssm_off, n);
    }
    size_t nc = conv_floats(s), ns = ssm_floats(s);
    s->conv = nc > 0 ? aligned_alloc(64, ((nc * sizeof(float)) + 63) & ~(size_t)63) : NULL;
    s->ssm = aligned_alloc(64, (((ns > 0 ? ns : 1) * sizeof(float)) + 63) & ~(size_t)63);
    if ((nc > 0 && s->conv == NULL) || s->ssm == NULL)
        goto oom;
    ym_state_reset(s);
    return s;
oom:
    ym_state_free(s);
    return NULL;
}

ym_err ym_state_new(const ym_config *cfg, ym_state_t **out)
{
    *out = NULL;
    if (cfg->n_layer < 1 || cfg->d_inner < 1 || cfg->d_conv < 1 || cfg->d_state < 1)
        return YM_EINVAL;
    *out = state_make(cfg->n_layer, cfg->d_inner, ym_config_conv_channels(cfg), cfg->d_conv,
                      cfg->d_state, NULL, NULL, NULL);
    return *out != NULL ? YM_OK : YM_ENOMEM;
}

ym_err ym_state_new_for_model(const ym_model_t *m, ym_state_t **out)
{
    if (!ym_model_is_sparse(m))
        return ym_state_new(&m->cfg, out);
    *out = NULL;
    const ym_config *cfg = &m->cfg;
    int64_t *co = calloc((size_t)cfg->n_layer + 1, sizeof(int64_t));
    int64_t *so = calloc((size_t)cfg->n_layer + 1, sizeof(int64_t));
    if (co != NULL && so != NULL)
        for (int l = 0; l < cfg->n_layer; l++) {
            const ym_layer *L = &m->layers[l];
            int64_t nssm = 0; /* the scan plan's blocked layout: blocks at their offsets */
            for (int b = 0; L->scan != NULL && b < L->scan->n_blocks; b++) {
                const ym_scan_block *B = &L->scan->blocks[b];
                if (B->off + (int64_t)B->n_u * B->w > nssm)
                    nssm = B->off + (int64_t)B->n_u * B->w;
            }
            if (L->scan == NULL)
                nssm = (int64_t)L->d_inner * cfg->d_state;
            int64_t conv_ch = L->d_inner;
            if (L->ssd_plan != NULL) { /* Mamba-2: kept heads' live entries; conv over x|B|C */
                nssm = L->ssd_plan->n_state;
                conv_ch += 2 * (int64_t)cfg->n_group * cfg->d_state;
            }
            /* 16-float multiples keep every layer's arrays 64-byte aligned */
            co[l + 1] = co[l] + (conv_ch * (cfg->d_conv - 1) + 15) / 16 * 16;
            so[l + 1] = so[l] + (nssm + 15) / 16 * 16;
        }
    if (co != NULL && so != NULL)
        *out = state_make(cfg->n_layer, cfg->d_inner, ym_config_conv_channels(cfg), cfg->d_conv,
                          cfg->d_state, co, so, m);
    free(co);
    free(so);
    return *out != NULL ? YM_OK : YM_ENOMEM;
}

ym_err ym_state_new_like(const ym_state_t *src, ym_state_t **out)
{
    *out = state_make(src->n_layer, src->d_inner, src->conv_ch, src->d_conv, src->d_state,
                      src->conv_off,
                      src->ssm_off, src->layout);
    return *out != NULL ? YM_OK : YM_ENOMEM;
}

void ym_state_free(ym_state_t *s)
{
    if (s == NULL)
        return;
    free(s->conv);
    free(s->ssm);
    free(s->conv_off);
    free(s->ssm_off);
    free(s);
}

void ym_state_reset(ym_state_t *s)
{
    if (s->conv != NULL)
        memset(s->conv, 0, conv_floats(s) * sizeof(float));
    memset(s->ssm, 0, ssm_floats(s) * sizeof(float));
    s->n_tokens = 0;
}

static int same_dims(const ym_state_t *a, const ym_state_t *b)
{
    if (a->n_layer != b->n_layer || a->d_inner != b->d_inner || a->conv_ch != b->conv_ch ||
        a->d_conv != b->d_conv ||
        a->d_state != b->d_state || (a->conv_off == NULL) != (b->conv_off == NULL))
        return 0;
    size_t n = ((size_t)a->n_layer + 1) * sizeof(int64_t);
    return a->conv_off == NULL ||
           (memcmp(a->conv_off, b->conv_off, n) == 0 && memcmp(a->ssm_off, b->ssm_off, n) == 0);
}

ym_err ym_state_copy(ym_state_t *dst, const ym_state_t *src)
{
    if (!same_dims(dst, src))
        return YM_EINVAL;
    if (dst == src)
        return YM_OK;
    if (src->conv != NULL)
        memcpy(dst->conv, src->conv, conv_floats(src) * sizeof(float));
    memcpy(dst->ssm, src->ssm, ssm_floats(src) * sizeof(float));
    dst->n_tokens = src->n_tokens;
    return YM_OK;
}

float *ym_state_conv(ym_state_t *s, int layer)
{
    if (s->conv_off != NULL)
        return s->conv + s->conv_off[layer];
    return s->conv + (size_t)layer * s->conv_ch * (size_t)(s->d_conv - 1);
}

float *ym_state_ssm(ym_state_t *s, int layer)
{
    if (s->ssm_off != NULL)
        return s->ssm + s->ssm_off[layer];
    return s->ssm + (size_t)layer * s->d_inner * (size_t)s->d_state;
}

size_t ym_state_serialized_size(const ym_state_t *s)
{
    return STATE_HEADER + (conv_floats(s) + ssm_floats(s)) * sizeof(float);
}

/* The payload checksum guards against truncation and bit rot, not against an adversary (the
 * tiers' MAC does that). Version 2: XXH3-64 (seed 0), tens of GB/s on this engine's CPUs.
 * Version 1: FNV-1a-64, byte-serial (a few hundred MB/s), read so that files and store entries
 * written before version 2 stay usable. */
static uint64_t payload_sum(uint32_t version, const void *p, size_t n);

/* FNV-1a, 64-bit (version 1). */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t payload_sum(uint32_t version, const void *p, size_t n)
{
    if (version == 1)
        return fnv1a(0xcbf29ce484222325ull, p, n);
    return (uint64_t)STATE_XXH3(p, n);
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Header: magic, version, n_layer, d_inner, d_conv, d_state (u32 each), n_tokens (i64),
 * payload bytes (u64), checksum of the payload (u64): XXH3-64 in version 2, FNV-1a-64 in
 * version 1. All little-endian. The payload is the
 * raw float arrays: this engine only runs on little-endian hosts (checked at build). */
ym_err ym_state_serialize(const ym_state_t *s, void *buf, size_t cap, size_t *n_written)
{
    size_t need = ym_state_serialized_size(s);
    *n_written = 0;
    if (cap < need)
        return YM_EINVAL;
    unsigned char *p = buf;
    size_t cb = conv_floats(s) * sizeof(float), sb = ssm_floats(s) * sizeof(float);
    if (cb > 0)
        memcpy(p + STATE_HEADER, s->conv, cb);
    memcpy(p + STATE_HEADER + cb, s->ssm, sb);
    uint64_t sum = payload_sum(STATE_VERSION, p + STATE_HEADER, cb + sb);
    put32(p + 0, STATE_MAGIC);
    put32(p + 4, STATE_VERSION);
    put32(p + 8, (uint32_t)s->n_layer);
    put32(p + 12, (uint32_t)s->d_inner);
    put32(p + 16, (uint32_t)s->d_conv);
    put32(p + 20, (uint32_t)s->d_state);
    put64(p + 24, (uint64_t)s->n_tokens);
    put64(p + 32, (uint64_t)(cb + sb));
    put64(p + 40, sum);
    *n_written = need;
    return YM_OK;
}

ym_err ym_state_deserialize(ym_state_t *s, const void *buf, size_t len, ym_diag *diag)
{
    const unsigned char *p = buf;
    if (len < STATE_HEADER)
        return ym_diag_set(diag, YM_EFORMAT, "state: %zu bytes, shorter than the header", len);
    if (get32(p) != STATE_MAGIC)
        return ym_diag_set(diag, YM_EFORMAT, "state: bad magic");
    uint32_t version = get32(p + 4);
    if (version != 1 && version != STATE_VERSION)
        return ym_diag_set(diag, YM_EFORMAT, "state: version %u, want 1 or %u", version,
                           STATE_VERSION);
    uint32_t nl = get32(p + 8), di = get32(p + 12), dc = get32(p + 16), ds = get32(p + 20);
    if (nl != (uint32_t)s->n_layer || di != (uint32_t)s->d_inner || dc != (uint32_t)s->d_conv ||
        ds != (uint32_t)s->d_state)
        return ym_diag_set(diag, YM_EFORMAT,
                           "state: dims n_layer=%u d_inner=%u d_conv=%u d_state=%u, model has "
                           "%d %d %d %d",
                           nl, di, dc, ds, s->n_layer, s->d_inner, s->d_conv, s->d_state);
    size_t cb = conv_floats(s) * sizeof(float), sb = ssm_floats(s) * sizeof(float);
    if (get64(p + 32) != cb + sb || len != STATE_HEADER + cb + sb)
        return ym_diag_set(diag, YM_EFORMAT, "state: payload of %zu bytes, want %zu",
                           len - STATE_HEADER, cb + sb);
    int64_t n_tokens = (int64_t)get64(p + 24);
    if (n_tokens < 0)
        return ym_diag_set(diag, YM_EFORMAT, "state: negative token count");
    /* Hot for large states (2.8 MB for a 130m model): one pass over the payload. */
    if (payload_sum(version, p + STATE_HEADER, cb + sb) != get64(p + 40))
        return ym_diag_set(diag, YM_EFORMAT, "state: checksum mismatch (version %u)", version);
    if (cb > 0)
        memcpy(s->conv, p + STATE_HEADER, cb);
    memcpy(s->ssm, p + STATE_HEADER + cb, sb);
    s->n_tokens = n_tokens;
    return YM_OK;
}

/* engine/sampling.c - penalties, temperature, top-k / top-p / min-p and a seeded draw.
 *
 * Runs on the engine thread (or the CLI's), once per generated token per sequence; a sampler
 * belongs to one sequence. Hot path: no allocation per token (all scratch is sized to n_vocab
 * in ym_sampler_new), and no full sort: greedy and plain temperature sampling are a few O(V)
 * passes written to vectorize (with an AVX2 clone picked at load time); top-k keeps a heap
 * of k in one pass that skips whole blocks; top-p finds a probability floor from a histogram
 * of mass, then runs a mass-weighted quickselect over the few ids above it.
 *
 * Candidates are ordered by (logit descending, id ascending), a strict total order, so every
 * filter keeps a well-defined prefix of that order and ties always favour the lowest id (as
 * greedy does). The generator is xoshiro256** seeded through splitmix64 (Vigna), so a seed
 * gives the same tokens on every machine for the same logits. */
#include "engine/sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

ym_sampling ym_sampling_default(void)
{
    ym_sampling s = {
        .temperature = 1.0f,
        .top_p = 1.0f,
        .top_k = 0,
        .min_p = 0.0f,
        .presence_penalty = 0.0f,
        .frequency_penalty = 0.0f,
        .repetition_penalty = 1.0f,
        .seed = 0,
        .has_seed = 0,
        .n_logprobs = 0,
    };
    return s;
}

ym_err ym_sampling_validate(const ym_sampling *s, ym_diag *diag)
{
    /* Written as !(x in range) so NaN is rejected too. */
    if (!(s->temperature >= 0.0f && isfinite(s->temperature)))
        return ym_diag_param(diag, YM_EINVAL, "temperature",
                             "temperature must be a finite number >= 0, got %g",
                             (double)s->temperature);
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f))
        return ym_diag_param(diag, YM_EINVAL, "top_p", "top_p must be in (0, 1], got %g",
                             (double)s->top_p);
    if (s->top_k < -1)
        return ym_diag_param(diag, YM_EINVAL, "top_k",
                             "top_k must be -1 or 0 (off) or >= 1, got %d", s->top_k);
    if (!(s->min_p >= 0.0f && s->min_p <= 1.0f))
        return ym_diag_param(diag, YM_EINVAL, "min_p", "min_p must be in [0, 1], got %g",
                             (double)s->min_p);
    if (!(s->presence_penalty >= -2.0f && s->presence_penalty <= 2.0f))
        return ym_diag_param(diag, YM_EINVAL, "presence_penalty",
                             "presence_penalty must be in [-2, 2], got %g",
                             (double)s->presence_penalty);
    if (!(s->frequency_penalty >= -2.0f && s->frequency_penalty <= 2.0f))
        return ym_diag_param(diag, YM_EINVAL, "frequency_penalty",
                             "frequency_penalty must be in [-2, 2], got %g",
                             (double)s->frequency_penalty);
    if (!(s->repetition_penalty > 0.0f && isfinite(s->repetition_penalty)))
        return ym_diag_param(diag, YM_EINVAL, "repetition_penalty",
                             "repetition_penalty must be a finite number > 0, got %g",
                             (double)s->repetition_penalty);
    if (s->n_logprobs < 0 || s->n_logprobs > YM_MAX_LOGPROBS)
        return ym_diag_param(diag, YM_EINVAL, "logprobs", "logprobs must be in [0, %d], got %d",
                             YM_MAX_LOGPROBS, s->n_logprobs);
    if (s->n_logit_bias < 0 || s->n_logit_bias > YM_MAX_LOGIT_BIAS)
        return ym_diag_param(diag, YM_EINVAL, "logit_bias",
                             "logit_bias may list at most %d tokens, got %d", YM_MAX_LOGIT_BIAS,
                             s->n_logit_bias);
    for (int i = 0; i < s->n_logit_bias; i++) {
        const ym_logit_bias *b = &s->logit_bias[i];
        if (b->id < 0)
            return ym_diag_param(diag, YM_EINVAL, "logit_bias",
                                 "logit_bias: %d is not a token id", b->id);
        if (!(b->bias >= -100.0f && b->bias <= 100.0f))
            return ym_diag_param(diag, YM_EINVAL, "logit_bias",
                                 "logit_bias: the bias of token %d must be in [-100, 100], got %g",
                                 b->id, (double)b->bias);
        for (int j = 0; j < i; j++)
            if (s->logit_bias[j].id == b->id)
                return ym_diag_param(diag, YM_EINVAL, "logit_bias",
                                     "logit_bias lists token %d twice", b->id);
    }
    return YM_OK;
}

/* Block of ids whose probabilities are summed together, so a draw walks blocks first. */
#define BLOCK 256

/* Probability buckets for top-p: p in [0, 1] by its top bits (exponent, 3 mantissa bits). */
#define HIST 1024
static inline int hist_bucket(float p)
{
    uint32_t b;
    memcpy(&b, &p, sizeof(b));
    b >>= 20;
    return b < HIST ? (int)b : HIST - 1;
}

/* One candidate of the filtered distribution. */
typedef struct cand {
    float l;    /* penalized logit: the ordering key */
    float p;    /* exp((l - max) / T), unnormalized */
    int32_t id;
} cand;

struct ym_sampler {
    ym_sampling s;
    int n_vocab;
    uint64_t rng[4];     /* xoshiro256** state */
    uint32_t *count;     /* owned, [n_vocab]: times generated */
    int32_t *seen_pos;   /* owned, [n_vocab]: index into seen, or -1 */
    int32_t *seen;       /* owned, [n_vocab]: distinct ids of prompt and output, first-seen order */
    int n_seen;
    float *saved;        /* owned, [n_vocab]: raw logits of seen ids before the penalties */
    float *prob;         /* owned, [n_vocab]: scratch, exp of the scaled logits */
    double *blk;         /* owned, [n_vocab / BLOCK + 1]: sums of prob per block */
    double *hist;        /* owned, [2 * HIST]: mass per probability bucket (top-p) */
    cand *cands;         /* owned, [n_vocab]: scratch for top-k / top-p */
    float bias_saved[YM_MAX_LOGIT_BIAS]; /* logits of the biased ids before their bias */
};

/* ---- generator ------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double uniform01(uint64_t s[4])
{
    return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53;
}

static uint64_t os_seed(void)
{
    uint64_t seed;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) == (ssize_t)sizeof(seed))
        return seed;
    /* No entropy yet (early boot): a weaker seed is better than failing a request. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((uint64_t)ts.tv_sec * 1000000007ULL) ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)&ts;
}

/* ---- sampler lifetime ------------------------------------------------------------------ */

ym_err ym_sampler_new(const ym_sampling *s, int n_vocab, ym_sampler_t **out)
{
    ym_sampler_t *sp;
    *out = NULL;
    if (n_vocab <= 0 || ym_sampling_validate(s, NULL) != YM_OK)
        return YM_EINVAL;
    for (int i = 0; i < s->n_logit_bias; i++)
        if (s->logit_bias[i].id >= n_vocab)
            return YM_EINVAL;
    if ((sp = calloc(1, sizeof(*sp))) == NULL)
        return YM_ENOMEM;
    sp->s = *s;
    sp->n_vocab = n_vocab;
    size_t nv = (size_t)n_vocab;
    sp->count = calloc(nv, sizeof(*sp->count));
    sp->seen_pos = malloc(nv * sizeof(*sp->seen_pos));
    sp->seen = malloc(nv * sizeof(*sp->seen));
    sp->saved = malloc(nv * sizeof(*sp->saved));
    sp->prob = malloc(nv * sizeof(*sp->prob));
    sp->cands = malloc(nv * sizeof(*sp->cands));
    sp->blk = malloc((nv / BLOCK + 1) * sizeof(*sp->blk));
    sp->hist = malloc(2 * HIST * sizeof(*sp->hist));
    if (sp->count == NULL || sp->seen_pos == NULL || sp->seen == NULL || sp->saved == NULL ||
        sp->prob == NULL || sp->cands == NULL || sp->blk == NULL ||
        sp->hist == NULL)
        goto fail;
    for (size_t i = 0; i < nv; i++)
        sp->seen_pos[i] = -1;
    uint64_t x = s->has_seed ? s->seed : os_seed();
    for (int i = 0; i < 4; i++)
        sp->rng[i] = splitmix64(&x);
    *out = sp;
    return YM_OK;
fail:
    ym_sampler_free(sp);
    return YM_ENOMEM;
}

void ym_sampler_free(ym_sampler_t *sp)
{
    if (sp == NULL)
        return;
    free(sp->count);
    free(sp->seen_pos);
    free(sp->seen);
    free(sp->saved);
    free(sp->prob);
    free(sp->cands);
    free(sp->blk);
    free(sp->hist);
    free(sp);
}

static void mark_seen(ym_sampler_t *sp, int32_t id)
{
    if (sp->seen_pos[id] < 0) {
        sp->seen_pos[id] = sp->n_seen;
        sp->seen[sp->n_seen++] = id;
    }
}

void ym_sampler_add_prompt(ym_sampler_t *sp, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < sp->n_vocab)
            mark_seen(sp, ids[i]);
}

/* ---- selection helpers ----------------------------------------------------------------- */

/* a comes before b: higher logit, then lower id. */
static inline int before(const cand *a, const cand *b)
{
    return a->l > b->l || (a->l == b->l && a->id < b->id);
}

static inline void cswap(cand *a, cand *b)
{
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Partition c[lo, hi) around a median-of-three pivot; returns the pivot's final index q:
 * c[lo, q) come before it, c(q, hi) after. *mass = sum of p over c[lo, q). */
static int partition(cand *c, int lo, int hi, double *mass)
{
    int mid = lo + (hi - lo) / 2, last = hi - 1;
    /* Median of three to last, so sorted input (equal logits in id order) stays O(n). */
    if (before(&c[mid], &c[lo]))
        cswap(&c[mid], &c[lo]);
    if (before(&c[last], &c[lo]))
        cswap(&c[last], &c[lo]);
    if (before(&c[mid], &c[last]))
        cswap(&c[mid], &c[last]);
    cand pivot = c[last];
    int store = lo;
    double m = 0.0;
    for (int i = lo; i < last; i++) {
        if (before(&c[i], &pivot)) {
            m += c[i].p;
            cswap(&c[i], &c[store]);
            store++;
        }
    }
    cswap(&c[store], &c[last]);
    *mass = m;
    return store;
}

/* Selection scans skip whole blocks whose largest value cannot enter the kept set: one
 * vectorized max per block instead of a compare and branch per id. */
#define SKIP_BLOCK 32

/* The float's bits mapped so that unsigned order is float order; NaN maps to 0, below
 * everything (-inf maps to 0x007FFFFF). Integer compares vectorize where float ones may not
 * (-ftrapping-math keeps a float compare from being if-converted). */
static inline uint32_t order_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    uint32_t neg = -(u >> 31);             /* all ones for negative numbers */
    uint32_t k = u ^ (neg | 0x80000000u);  /* negative: flip all bits; positive: the sign */
    return k & -(uint32_t)((u & 0x7FFFFFFFu) <= 0x7F800000u); /* NaN -> 0 */
}

/* Whether some x[0, n) is larger than thr (never for NaN). */
static inline int block_beats(const float *x, int n, float thr)
{
    uint32_t bm = 0;
    for (int j = 0; j < n; j++) {
        uint32_t k = order_key(x[j]);
        bm = k > bm ? k : bm;
    }
    return bm > order_key(thr);
}

/* The k first ids of logits[0, n) in candidate order (NaN skipped) into c[0, k), as a heap
 * whose root is the last of them; returns how many (k, or fewer when NaNs leave fewer).
 * One pass; an id enters only when it beats the root, which after the first few hundred ids
 * is rare, so this is O(V) in practice and O(V log k) at worst. */
static int heap_top_k(cand *c, const float *logits, int n, int k)
{
    int h = 0;
    for (int i0 = 0; i0 < n; i0 += SKIP_BLOCK) {
        int i1 = i0 + SKIP_BLOCK < n ? i0 + SKIP_BLOCK : n;
        if (h == k && !block_beats(logits + i0, i1 - i0, c[0].l))
            continue;
        for (int i = i0; i < i1; i++) {
            float v = logits[i];
            if (h == k) {
                /* Ids come in increasing order, so an equal logit never beats the root. */
                if (!(v > c[0].l))
                    continue;
                int j = 0;
                cand x = {v, 0.0f, i};
                for (;;) { /* sift down: a child that comes after x moves up */
                    int a = 2 * j + 1, b = a + 1, w;
                    if (a >= h)
                        break;
                    w = b < h && before(&c[a], &c[b]) ? b : a;
                    if (!before(&x, &c[w]))
                        break;
                    c[j] = c[w];
                    j = w;
                }
                c[j] = x;
            } else if (v == v) {
                int j = h++;
                cand x = {v, 0.0f, i};
                while (j > 0 && before(&c[(j - 1) / 2], &x)) { /* sift up: root is the last */
                    c[j] = c[(j - 1) / 2];
                    j = (j - 1) / 2;
                }
                c[j] = x;
            }
        }
    }
    return h;
}

/* The shortest prefix (in candidate order) of c[0, n) whose mass reaches target: its members
 * are moved to c[0, cut) and cut returned. Expected O(n): each step keeps one side. */
static int select_top_p(cand *c, int n, double target)
{
    int lo = 0, hi = n;
    while (lo < hi) {
        double g;
        int q = partition(c, lo, hi, &g);
        if (g >= target) {
            hi = q;
        } else if (g + c[q].p >= target) {
            return q + 1;
        } else {
            target -= g + c[q].p;
            lo = q + 1;
        }
    }
    /* Only reached when rounding left the target unmet by everything: keep everything seen. */
    return lo > 0 ? lo : 1;
}

/* ---- O(V) passes ------------------------------------------------------------------------
 * Hot path. Written as independent lanes so that the compiler vectorizes them without
 * -ffast-math (a plain reduction over floats may not be reordered). */

#define LANES 16

/* An AVX2/FMA copy next to the baseline one, chosen when the program loads (GCC's ifunc
 * target clones): the default build targets plain x86-64. Not under ThreadSanitizer, whose
 * instrumentation of the ifunc resolver runs before its runtime is up and crashes. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) &&                           \
    !defined(__SANITIZE_THREAD__)
#define VEC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VEC_CLONES
#endif

/* Largest value of x[0, n); NaN is ignored; -inf when there is none. */
VEC_CLONES static float vec_max(const float *x, int n)
{
    uint32_t mv[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            uint32_t k = order_key(x[i + j]);
            mv[j] = k > mv[j] ? k : mv[j];
        }
    uint32_t mk = 0;
    for (int j = 0; j < LANES; j++)
        mk = mv[j] > mk ? mv[j] : mk;
    for (; i < n; i++) {
        uint32_t k = order_key(x[i]);
        mk = k > mk ? k : mk;
    }
    if (mk == 0)
        return -INFINITY;
    uint32_t u = mk & 0x80000000u ? mk ^ 0x80000000u : ~mk;
    float m;
    memcpy(&m, &u, sizeof(m));
    return m;
}

/* exp(x) for x <= 0 to about 2 ulp (Cephes' expf polynomial, round-to-nearest by the
 * 1.5 * 2^23 trick so no libm call blocks vectorization). Below -87 (and NaN) gives 0:
 * such a token weighs less than 1e-38 of the best one. */
static inline float exp_nonpos(float x)
{
    const float shift = 12582912.0f; /* 1.5 * 2^23 */
    float t = x * 1.44269504088896341f + shift;
    float n = t - shift;
    uint32_t ti;
    memcpy(&ti, &t, sizeof(ti));
    uint32_t ni = ti - 0x4B400000u; /* the integer n (mod 2^32), from t's mantissa */
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = (ni + 127u) << 23; /* 2^n; n >= -126 when x >= -87 */
    float scale, y;
    memcpy(&scale, &bits, sizeof(scale));
    y = p * scale;
    /* The range test on the bits: a float compare would stop the vectorizer (under
     * -ftrapping-math it may not be if-converted). |x| <= 87 is false for NaN. */
    uint32_t xb, yb;
    memcpy(&xb, &x, sizeof(xb));
    memcpy(&yb, &y, sizeof(yb));
    yb &= -(uint32_t)((xb & 0x7FFFFFFFu) <= 0x42AE0000u); /* 87.0f */
    memcpy(&y, &yb, sizeof(y));
    return y;
}

/* prob[i] = exp((x[i] - m) * inv_t), zeroed below floor; blk[b] = sum of block b (double).
 * Returns the total. */
VEC_CLONES static double vec_exp_sum(float *prob, double *blk, const float *x, int n, float m,
                                     float inv_t, float floor_p)
{
    /* v and floor_p are >= 0 (never NaN), so comparing their bits compares the values. */
    uint32_t fb;
    memcpy(&fb, &floor_p, sizeof(fb));
    for (int i = 0; i < n; i++) {
        float v = exp_nonpos((x[i] - m) * inv_t);
        uint32_t vb;
        memcpy(&vb, &v, sizeof(vb));
        vb &= -(uint32_t)(vb >= fb);
        memcpy(&prob[i], &vb, sizeof(vb));
    }
    double total = 0.0;
    for (int b = 0; b * BLOCK < n; b++) {
        int lo = b * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
        /* Float lanes within a block (at most 256 terms each <= 1: exact enough), then
         * double across blocks. */
        float sv[LANES] = {0};
        int i = lo;
        for (; i + LANES <= hi; i += LANES)
            for (int j = 0; j < LANES; j++)
                sv[j] += prob[i + j];
        double bs = 0.0;
        for (int j = 0; j < LANES; j++)
            bs += sv[j];
        for (; i < hi; i++)
            bs += prob[i];
        blk[b] = bs;
        total += bs;
    }
    return total;
}

/* The first id whose running sum of prob exceeds r (r in [0, total)), via block sums;
 * -1 if rounding left r beyond every positive entry (the caller falls back). */
static int32_t draw_blocks(const float *prob, const double *blk, int n, double r)
{
    int32_t last = -1;
    for (int b = 0; b * BLOCK < n; b++) {
        if (blk[b] <= 0.0)
            continue;
        int lo = b * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
        if (r >= blk[b]) {
            r -= blk[b];
            for (int i = hi - 1; i >= lo; i--)
                if (prob[i] > 0.0f) {
                    last = i;
                    break;
                }
            continue;
        }
        double acc = 0.0;
        for (int i = lo; i < hi; i++) {
            if (prob[i] > 0.0f) {
                acc += prob[i];
                last = i;
                if (r < acc)
                    return i;
            }
        }
    }
    return last;
}

/* ---- raw logprobs ---------------------------------------------------------------------- */

/* log(sum exp(l)) of the raw logits (the sum in double); the top n raw logits (best first;
 * ties to the lowest id) into top[]. Uses sp->prob and sp->blk as scratch. */
static double raw_stats(ym_sampler_t *sp, const float *logits, ym_logprob *top, int n_top)
{
    const int nv = sp->n_vocab;
    float m = vec_max(logits, nv);
    double lse;
    if (isfinite(m))
        lse = (double)m + log(vec_exp_sum(sp->prob, sp->blk, logits, nv, m, 1.0f, 0.0f));
    else
        lse = m; /* +inf somewhere or nothing finite: no meaningful distribution */
    if (n_top > 0) {
        int have = 0;
        for (int i0 = 0; i0 < nv; i0 += SKIP_BLOCK) {
            int i1 = i0 + SKIP_BLOCK < nv ? i0 + SKIP_BLOCK : nv;
            if (have == n_top && !block_beats(logits + i0, i1 - i0, top[have - 1].logprob))
                continue;
            for (int i = i0; i < i1; i++) {
                float l = logits[i];
                if (l == l && (have < n_top || l > top[have - 1].logprob)) {
                    int j = have < n_top ? have++ : n_top - 1;
                    while (j > 0 && l > top[j - 1].logprob) {
                        top[j] = top[j - 1];
                        j--;
                    }
                    top[j].id = i;
                    top[j].logprob = l;
                }
            }
        }
        for (int j = 0; j < have; j++)
            top[j].logprob = (float)((double)top[j].logprob - lse);
        for (int j = have; j < n_top; j++) { /* only when NaNs crowd out the vocabulary */
            top[j].id = -1;
            top[j].logprob = -INFINITY;
        }
    }
    return lse;
}

/* ---- the sampler ----------------------------------------------------------------------- */

/* Argmax, ties to the lowest id; NaN never wins (all NaN: id 0). */
static int32_t argmax(const float *l, int n)
{
    float m = vec_max(l, n);
    for (int i = 0; i < n; i++)
        if (l[i] == m)
            return i;
    return 0;
}

void ym_sampler_score(ym_sampler_t *sp, const float *logits, int32_t id, ym_sample *out)
{
    out->n_top = sp->s.n_logprobs;
    double lse = raw_stats(sp, logits, out->top, sp->s.n_logprobs);
    out->id = id;
    out->logprob = (float)((double)logits[id] - lse);
}

/* Hot path: one call per generated token. */
int32_t ym_sampler_sample(ym_sampler_t *sp, float *logits, ym_sample *out)
{
    const ym_sampling *s = &sp->s;
    const int nv = sp->n_vocab;
    double lse = 0.0;
    int32_t id;

    if (out != NULL) {
        out->n_top = s->n_logprobs;
        lse = raw_stats(sp, logits, out->top, s->n_logprobs);
    }

    /* 1-2. Penalties, only over tokens already seen (saving the raw values first). */
    const int rep = s->repetition_penalty != 1.0f;
    const int freq = s->frequency_penalty != 0.0f || s->presence_penalty != 0.0f;
    if (rep || freq) {
        for (int j = 0; j < sp->n_seen; j++) {
            int32_t t = sp->seen[j];
            float l = logits[t];
            sp->saved[j] = l;
            if (rep)
                l = l > 0.0f ? l / s->repetition_penalty : l * s->repetition_penalty;
            uint32_t c = sp->count[t];
            if (freq && c > 0)
                l -= (float)c * s->frequency_penalty + s->presence_penalty;
            logits[t] = l;
        }
    }

    /* 2b. logit_bias, after the penalties (saving each logit first, for its raw logprob). */
    for (int j = 0; j < s->n_logit_bias; j++) {
        const ym_logit_bias *b = &s->logit_bias[j];
        sp->bias_saved[j] = logits[b->id];
        logits[b->id] += b->bias;
    }

    /* 3. Greedy. */
    float m = s->temperature > 0.0f ? vec_max(logits, nv) : -INFINITY;
    if (s->temperature == 0.0f || !isfinite(m)) {
        /* An infinite or missing maximum leaves nothing to weigh: take the argmax. */
        id = argmax(logits, nv);
        goto done;
    }

    const float inv_t = 1.0f / s->temperature;
    const int top_k = s->top_k > 0 && s->top_k < nv ? s->top_k : 0;
    const int top_p = s->top_p < 1.0f;
    const float min_p = s->min_p;

    if (!top_k && !top_p) {
        /* Plain temperature (and min-p): O(V) vectorized passes in id order, no candidate
         * list. min_p keeps p >= min_p * p_max, and p_max = exp(0) = 1. */
        double z = vec_exp_sum(sp->prob, sp->blk, logits, nv, m, inv_t, min_p);
        id = draw_blocks(sp->prob, sp->blk, nv, uniform01(sp->rng) * z);
        if (id < 0)
            id = argmax(logits, nv);
        goto done;
    }

    /* Filtered: a short candidate list (top-k by a heap, or for top-p alone the ids above a
     * probability floor that still hold enough mass), cut by mass (top-p), then by min-p;
     * what is left is drawn from in list order. */
    cand *c = sp->cands;
    int n;
    double z = 0.0;
    if (top_k) {
        n = heap_top_k(c, logits, nv, top_k);
        for (int i = 0; i < n; i++) {
            c[i].p = exp_nonpos((c[i].l - m) * inv_t);
            z += c[i].p;
        }
        if (top_p)
            n = select_top_p(c, n, (double)s->top_p * z);
    } else {
        z = vec_exp_sum(sp->prob, sp->blk, logits, nv, m, inv_t, 0.0f);
        const double target = (double)s->top_p * z;
        /* Mass per probability bucket (float exponent and 3 mantissa bits, so each bucket
         * spans a factor of at most 1.125), summed from the top down: the lowest bucket
         * needed gives a floor, and the ids with p >= floor are a prefix of candidate order
         * (p grows with the logit) holding the target mass, so the nucleus lies among them.
         * Two histograms alternate to keep neighbouring ids from waiting on each other. */
        double *h0 = sp->hist, *h1 = sp->hist + HIST;
        memset(sp->hist, 0, 2 * HIST * sizeof(*sp->hist));
        int i = 0;
        for (; i + 2 <= nv; i += 2) {
            h0[hist_bucket(sp->prob[i])] += sp->prob[i];
            h1[hist_bucket(sp->prob[i + 1])] += sp->prob[i + 1];
        }
        if (i < nv)
            h0[hist_bucket(sp->prob[i])] += sp->prob[i];
        double acc = 0.0;
        int fb = HIST - 1;
        for (; fb > 0; fb--) {
            acc += h0[fb] + h1[fb];
            if (acc >= target)
                break;
        }
        n = 0;
        for (i = 0; i < nv; i++) {
            if (hist_bucket(sp->prob[i]) >= fb && logits[i] == logits[i]) {
                c[n].l = logits[i];
                c[n].p = sp->prob[i];
                c[n].id = i;
                n++;
            }
        }
        n = select_top_p(c, n, target);
    }
    if (top_p) {
        z = 0.0;
        for (int i = 0; i < n; i++)
            z += c[i].p;
    }
    if (min_p > 0.0f) {
        /* The best candidate is always kept (its p is 1), so n stays >= 1. */
        int w = 0;
        z = 0.0;
        for (int i = 0; i < n; i++) {
            if (c[i].p >= min_p) {
                c[w++] = c[i];
                z += c[i].p;
            }
        }
        n = w;
    }
    double r = uniform01(sp->rng) * z, acc = 0.0;
    id = -1;
    for (int i = 0; i < n; i++) {
        if (c[i].p > 0.0f) {
            acc += c[i].p;
            id = c[i].id;
            if (r < acc)
                break;
        }
    }
    if (id < 0)
        id = argmax(logits, nv);

done:
    if (out != NULL) {
        int j = sp->seen_pos[id];
        float raw = logits[id];
        if ((rep || freq) && j >= 0) {
            raw = sp->saved[j];
        } else {
            for (int k = 0; k < s->n_logit_bias; k++)
                if (s->logit_bias[k].id == id)
                    raw = sp->bias_saved[k];
        }
        out->id = id;
        out->logprob = (float)((double)raw - lse);
    }
    sp->count[id]++;
    mark_seen(sp, id);
    return id;
}

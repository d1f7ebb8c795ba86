/* tools/bench.c - `yunmin bench`: engine speed against this machine's own floors.
 *
 * Everything is measured in one run, because absolute times drift on shared machines:
 *   - memory read bandwidth, read the way decode reads its weights: every thread runs the
 *     engine's own GEMV (ym_matmul, one row) over its slice of the rows of a 1 GiB f32 matrix
 *     (far past the caches), so the floor weight_bytes / bandwidth is one decode can at best
 *     reach, not a figure a weaker probe loop underestimates. The probe and batch-1 decode
 *     alternate in --rounds rounds (probe, decode, probe, decode, ...): the floor fraction is
 *     the best decode over the best probe, so neither side's bad moment counts, and each
 *     round's own pair (taken seconds apart) is reported with the median of the pairs;
 *   - the floor window by window (--windows): batch-1 decode steps, each between two passes
 *     that move the step's own bytes the step's way and do nothing else (walk_task), so that
 *     each step has beside it what the machine delivered to a pure stream of its bytes;
 *   - the OpenBLAS sgemm rate at a prefill-like shape, run the way the engine runs it (each
 *     core its own slice, single-threaded BLAS) and with OpenBLAS's own threads; the better
 *     of the two is the peak;
 *   - prefill of a 512-token prompt, and decode at batch 1, 4, 16, 64 (batch 16 in every
 *     round right after batch 1 when both are asked for: their ratio is a target).
 * Without --model the model is synthetic with mamba-130m's shapes (random weights made in
 * process). With --adapters N, only the adapter comparison runs: decode of a 16-row batch
 * (--batches' first value) with every row on the base model, against the same batch with
 * the rows spread over N random LoRA adapters (rank --rank, all four projections), measured
 * alternately in one run. With --sparsity the served sparse model is measured too, in the same process,
 * alternating with the dense one (best of the rounds each), so the speed-up is a ratio of two
 * figures taken under the same conditions. Runs on the CLI's thread; nothing else is running. */
#include <cblas.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "adapters/adapter.h"
#include "engine/blas.h"
#include "engine/forward.h"
#include "engine/kernels.h"
#include "engine/model.h"
#include "engine/pool.h"
#include "engine/sparse.h"
#include "engine/ssd.h"
#include "engine/state.h"
#include "engine/weight.h"
#include "tools/cli.h"



/* CPU seconds of all this process's threads (time on a core, including stalls on memory
 * and spinning, not time spent descheduled). */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- memory bandwidth ---- */
typedef struct {
    ym_weight w; /* [rows, BW_COLS] f32 */
    const float *x;
    float *y;
} bw_job;

#define BW_COLS 4096

static void bw_task(void *arg, int ith, int nth)
{
    bw_job *j = arg;
    int n = j->w.n_rows;
    int lo = (int)((long)n * ith / nth), hi = (int)((long)n * (ith + 1) / nth);
    ym_matmul(j->y + lo, n, j->x, BW_COLS, 1, &j->w, lo, hi, 0.0f, NULL);
}

/* The probe's matrix, made once and read again in every round: 1 GiB of f32 on huge pages,
 * like the engine's weights (the floor must not include TLB misses that the engine does not
 * pay). Returns 0, or -1 when out of memory (j left empty). */
static int bw_init(bw_job *j)
{
    const int rows = 1 << 16; /* x 4096 f32 = 1 GiB */
    size_t n = (size_t)rows * BW_COLS;
    float *a = aligned_alloc((size_t)2 << 20, n * sizeof(float));
    float *x = malloc(sizeof(float) * BW_COLS), *y = malloc(sizeof(float) * (size_t)rows);
    memset(j, 0, sizeof(*j));
    if (a == NULL || x == NULL || y == NULL) {
        free(a), free(x), free(y);
        return -1;
    }
    madvise(a, n * sizeof(float), MADV_HUGEPAGE);
    for (size_t i = 0; i < n; i++)
        a[i] = (float)(i & 7);
    for (int k = 0; k < BW_COLS; k++)
        x[k] = 1.0f / (float)(k + 1);
    *j = (bw_job){.w = {YM_WT_F32, rows, BW_COLS, a, NULL}, .x = x, .y = y};
    return 0;
}

static void bw_deinit(bw_job *j)
{
    free((void *)j->w.data);
    free((void *)j->x);
    free(j->y);
    memset(j, 0, sizeof(*j));
}

/* One probe: the best of 5 passes over the matrix, GB/s (0 when bw_init failed). */
static double bw_measure(ym_pool_t *pool, bw_job *j)
{
    if (j->w.data == NULL)
        return 0;
    double bytes = (double)j->w.n_rows * BW_COLS * sizeof(float), best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        ym_pool_run(pool, bw_task, j);
        double gbs = bytes / (now() - t0) / 1e9;
        if (gbs > best)
            best = gbs;
    }
    return best;
}

/* ---- the floor window by window ---- */

/* The decode step's own bytes, and nothing else: every matrix of the model read in the
 * forward's order (each layer's in_proj, x_proj, out_proj, then lm_head) with the engine's
 * one-row product, and a state of the model's size read and written once; no barrier, no
 * other work. The bytes are cut into units of about WALK_UNIT bytes (a block of a matrix's
 * rows, or of the state) that the threads take in order from a shared counter: a thread
 * that is descheduled leaves its units to the others, which a step split by a fixed plan
 * cannot do, so that a pass is the fastest these threads could move these bytes. */
#define WALK_UNIT (1 << 20)

typedef struct {
    const ym_weight *w; /* NULL: the state's floats [r0, r1) */
    size_t r0, r1;
} walk_unit;

typedef struct {
    walk_unit *units; /* [n_units] */
    int n_units;
    atomic_int next;
    const float *x; /* [max n_cols] */
    float *y;       /* [max n_rows] */
    float *state;   /* [n_state] */
    float *scratch; /* per thread ym_matmul_scratch(max n_cols) floats, as the forward's */
    size_t scratch_n;
    float k; /* 1: the state is multiplied by a value the compiler cannot see */
} walk_job;

static void walk_task(void *arg, int ith, int nth)
{
    walk_job *j = arg;
    float *scr = j->scratch + (size_t)ith * j->scratch_n;
    (void)nth;
    for (;;) {
        int i = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (i >= j->n_units)
            return;
        const walk_unit *u = &j->units[i];
        if (u->w != NULL) {
            /* with the scratch, as the forward calls it: int8 and bf16 weights take the same
             * kernels as in a decode step (without it int8 would widen, at 0.4 of the speed) */
            ym_matmul(j->y + u->r0, u->w->n_rows, j->x, u->w->n_cols, 1, u->w, (int)u->r0,
                      (int)u->r1, 0.0f, scr);
        } else {
            /* locals: through j, each store could change j->k, and the loop would stay
             * scalar with a reload per element (a third of the engine's own state rate) */
            float *st = j->state;
            const float k = j->k;
            for (size_t e = u->r0; e < u->r1; e++)
                st[e] *= k;
        }
    }
}

/* Appends the units of w (a block of rows each), or of the state when w is NULL (n floats);
 * with units NULL, only counts them. */
static int walk_units(walk_unit *units, int n, const ym_weight *w, size_t n_state)
{
    size_t rows = w != NULL ? (size_t)w->n_rows : n_state;
    size_t row_bytes = w != NULL ? (rows > 0 ? ym_weight_bytes(w) / rows : 1) : sizeof(float);
    size_t per = WALK_UNIT / (row_bytes > 0 ? row_bytes : 1);
    per = per > 0 ? per : 1;
    for (size_t r = 0; r < rows; r += per, n++)
        if (units != NULL)
            units[n] = (walk_unit){w, r, r + per < rows ? r + per : rows};
    return n;
}

/* Bytes of one sequence's state as m runs it (ym_state_new_for_model: compact for a sparse
 * model, as the server allocates it); 0 when it cannot be made. */
static size_t model_state_bytes(const ym_model_t *m)
{
    ym_state_t *s = NULL;
    if (ym_state_new_for_model(m, &s) != YM_OK)
        return 0;
    size_t n = ym_state_floats(s) * sizeof(float);
    ym_state_free(s);
    return n;
}

static int walk_init(walk_job *j, const ym_model_t *m, int n_threads)
{
    int rows = m->lm_head.n_rows, cols = m->lm_head.n_cols;
    size_t n_state = model_state_bytes(m) / sizeof(float);
    memset(j, 0, sizeof(*j));
    for (int pass = 0; pass < 2; pass++) { /* count, then fill */
        int n = 0;
        for (int l = 0; l < m->cfg.n_layer; l++) {
            const ym_weight *w[] = {&m->layers[l].in_proj, &m->layers[l].x_proj,
                                    &m->layers[l].out_proj};
            for (int i = 0; i < 3; i++) {
                rows = w[i]->n_rows > rows ? w[i]->n_rows : rows;
                cols = w[i]->n_cols > cols ? w[i]->n_cols : cols;
                n = walk_units(j->units, n, w[i], 0);
            }
        }
        n = walk_units(j->units, n, NULL, n_state);
        n = walk_units(j->units, n, &m->lm_head, 0);
        if (pass == 0 && (j->units = calloc((size_t)n, sizeof(walk_unit))) == NULL)
            return -1;
        j->n_units = n;
    }
    j->k = 1.0f;
    float *x = calloc((size_t)cols, sizeof(float));
    j->y = calloc((size_t)rows, sizeof(float));
    j->state = calloc(n_state + 1, sizeof(float));
    j->scratch_n = (ym_matmul_scratch(cols) + 15) / 16 * 16;
    j->scratch = aligned_alloc(64, sizeof(float) * j->scratch_n * (size_t)n_threads);
    if (x == NULL || j->y == NULL || j->state == NULL || j->scratch == NULL) {
        free(x), free(j->y), free(j->state), free(j->units), free(j->scratch);
        return -1;
    }
    for (int i = 0; i < cols; i++)
        x[i] = 1.0f / (float)(i + 1);
    for (size_t i = 0; i < n_state; i++)
        j->state[i] = (float)(i & 7);
    j->x = x;
    return 0;
}

/* One pass over all the units; seconds. */
static double walk_pass(ym_pool_t *pool, walk_job *j)
{
    atomic_store(&j->next, 0);
    double t0 = now();
    ym_pool_run(pool, walk_task, j);
    return now() - t0;
}

static void walk_deinit(walk_job *j)
{
    free((void *)j->x);
    free(j->y);
    free(j->state);
    free(j->units);
    free(j->scratch);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The value at quantile q (0..1) of n sorted values, linear between neighbours; 0 if none. */
static double quantile(const double *v, int n, double q)
{
    if (n == 0)
        return 0;
    double k = q * (n - 1);
    int i = (int)k;
    return i + 1 < n ? v[i] + (k - i) * (v[i + 1] - v[i]) : v[n - 1];
}

static int32_t rand_token(int n_vocab);

/* The floor window by window. A batch-1 decode that goes on from step to step (its state
 * carried over) alternates with passes of walk_task over the same model:
 *     P_0 D_0 P_1 D_1 ... P_{n-1} D_{n-1} P_n
 * A pass is the decode step less everything that is not moving its bytes, so no step can
 * be faster than a pass under the same conditions. Writes the seconds of each decode step
 * td[n] and of each pass tp[n + 1], and the CPU seconds of the process during each, cd[n]
 * and cp[n + 1]; returns 0, or -1 when out of memory. */
static int floor_windows(ym_ctx_t *ctx, const ym_model_t *m, ym_pool_t *pool, int n_threads,
                         int n, double *td, double *tp, double *cd, double *cp)
{
    ym_state_t *s = NULL;
    walk_job wj;
    int32_t tok = 0;
    int st[2] = {0, 1};
    float *logits = malloc(sizeof(float) * (size_t)m->cfg.n_vocab);
    if (logits == NULL || walk_init(&wj, m, n_threads) != 0) {
        free(logits);
        return -1;
    }
    if (ym_state_new_for_model(m, &s) != YM_OK) {
        free(logits);
        walk_deinit(&wj);
        return -1;
    }
    ym_state_t *ss[1] = {s};
    ym_batch b = {.n_seq = 1, .tokens = &tok, .seq_start = st, .states = ss,
                  .logits = YM_LOGITS_LAST};
    for (int k = 0; k < 2; k++) { /* warm-up: a step and a pass, as in the windows */
        tok = rand_token(m->cfg.n_vocab);
        ym_forward(ctx, &b, logits, NULL);
        (void)walk_pass(pool, &wj);
    }
    double c0 = cpu_now();
    tp[0] = walk_pass(pool, &wj);
    cp[0] = cpu_now() - c0;
    for (int i = 0; i < n; i++) {
        tok = rand_token(m->cfg.n_vocab);
        c0 = cpu_now();
        double t0 = now();
        ym_forward(ctx, &b, logits, NULL);
        td[i] = now() - t0;
        cd[i] = cpu_now() - c0;
        c0 = cpu_now();
        tp[i + 1] = walk_pass(pool, &wj);
        cp[i + 1] = cpu_now() - c0;
    }
    ym_state_free(s);
    walk_deinit(&wj);
    free(logits);
    return 0;
}

/* Resident set size of this process, bytes (VmRSS), or 0. */
static long long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long kb = 0;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmRSS: %lld kB", &kb) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kb * 1024;
}

/* ---- sgemm peak ---- */
typedef struct {
    int M, N, K;
    const float *A, *B;
    float *C;
} gemm_job;

static void gemm_task(void *arg, int ith, int nth)
{
    gemm_job *g = arg;
    int n0 = (int)((long)g->N * ith / nth), n1 = (int)((long)g->N * (ith + 1) / nth);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->M, n1 - n0, g->K, 1.0f, g->A, g->K,
                g->B + (size_t)n0 * g->K, g->K, 0.0f, g->C + n0, g->N);
}

static double measure_sgemm(ym_pool_t *pool, int n_threads, double *engine_way, double *blas_way)
{
    int M = 512, N = 3072, K = 768;
    float *A = malloc(sizeof(float) * (size_t)M * K), *B = malloc(sizeof(float) * (size_t)N * K);
    float *C = malloc(sizeof(float) * (size_t)M * N);
    if (!A || !B || !C) {
        free(A);
        free(B);
        free(C);
        return 0;
    }
    for (size_t i = 0; i < (size_t)M * K; i++)
        A[i] = (float)((i * 7) % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)N * K; i++)
        B[i] = (float)((i * 5) % 11) * 0.01f;
    double flop = 2.0 * M * N * K;
    gemm_job g = {M, N, K, A, B, C};
    double best_e = 0, best_b = 0;
    openblas_set_num_threads(1);
    for (int rep = 0; rep < 6; rep++) {
        double t0 = now();
        ym_pool_run(pool, gemm_task, &g);
        double r = flop / (now() - t0) / 1e9;
        if (r > best_e && rep > 0)
            best_e = r;
    }
    openblas_set_num_threads(n_threads);
    for (int rep = 0; rep < 6; rep++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K, 0.0f, C,
                    N);
        double r = flop / (now() - t0) / 1e9;
        if (r > best_b && rep > 0)
            best_b = r;
    }
    openblas_set_num_threads(1);
    free(A);
    free(B);
    free(C);
    *engine_way = best_e;
    *blas_way = best_b;
    return best_e > best_b ? best_e : best_b;
}

/* FLOPs of the projections for one token (multiply-add = 2), plus lm_head when counted.
 * Each layer's own d_inner: a sparse layer counts its kept channels only. */
static double token_flops(const ym_model_t *m, int with_head)
{
    const ym_config *c = &m->cfg;
    double dm = c->d_model, P = c->dt_rank + 2.0 * c->d_state, f = 0;
    if (c->arch == YM_ARCH_MAMBA2) { /* in_proj [z|xBC|dt] and out_proj */
        double di = c->d_inner, n_in = di + ym_config_conv_channels(c) + c->n_head;
        f = c->n_layer * 2.0 * (dm * n_in + di * dm);
        return f + (with_head ? 2.0 * dm * c->n_vocab : 0.0);
    }
    for (int l = 0; l < c->n_layer; l++) {
        double di = m->layers[l].d_inner;
        f += 2.0 * (dm * 2 * di + di * P + c->dt_rank * di + di * dm);
    }
    return f + (with_head ? 2.0 * dm * c->n_vocab : 0.0);
}

/* FLOPs of the scan for one token: per state entry computed, dt*A, exp, the multiply-add into
 * s, dt*x*B and the multiply-add into y: 6 (exp counted as 1). Lanes the masked scan computes
 * for dead entries of a block count too: they are work done. */
static double scan_flops(const ym_model_t *m)
{
    return 6.0 * (double)m->n_scan_lanes;
}

static uint32_t rng_state = 12345;
static int32_t rand_token(int n_vocab)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (int32_t)((rng_state >> 8) % (uint32_t)n_vocab);
}

static double bench_prefill(ym_ctx_t *ctx, const ym_model_t *m, int n_prompt, int reps)
{
    ym_state_t *s = NULL;
    if (ym_state_new_for_model(m, &s) != YM_OK)
        return 0;
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)n_prompt);
    float *logits = malloc(sizeof(float) * (size_t)m->cfg.n_vocab);
    for (int i = 0; i < n_prompt; i++)
        toks[i] = rand_token(m->cfg.n_vocab);
    int st[2] = {0, n_prompt};
    ym_state_t *ss[1] = {s};
    ym_batch b = {.n_seq = 1, .tokens = toks, .seq_start = st, .states = ss,
                  .logits = YM_LOGITS_LAST};
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) {
        ym_state_reset(s);
        double t0 = now();
        ym_forward(ctx, &b, logits, NULL);
        double t = now() - t0;
        if (r > 0 && t < best)
            best = t;
    }
    free(toks);
    free(logits);
    ym_state_free(s);
    return n_prompt / best;
}

static double bench_decode_adapted(ym_ctx_t *ctx, const ym_model_t *m, int batch, int steps,
                                   const ym_adapt *const *adapters)
{
    ym_state_t **s = calloc((size_t)batch, sizeof(*s));
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)batch);
    int *st = malloc(sizeof(int) * (size_t)(batch + 1));
    float *logits = malloc(sizeof(float) * (size_t)batch * m->cfg.n_vocab);
    for (int i = 0; i < batch; i++)
        ym_state_new_for_model(m, &s[i]);
    for (int i = 0; i <= batch; i++)
        st[i] = i;
    ym_batch b = {.n_seq = batch, .tokens = toks, .seq_start = st, .states = s,
                  .logits = YM_LOGITS_LAST, .adapters = adapters};
    double t0 = 0;
    for (int k = 0; k < steps + 2; k++) {
        if (k == 2)
            t0 = now(); /* two warm-up steps */
        for (int i = 0; i < batch; i++)
            toks[i] = rand_token(m->cfg.n_vocab);
        ym_forward(ctx, &b, logits, NULL);
    }
    double t = now() - t0;
    for (int i = 0; i < batch; i++)
        ym_state_free(s[i]);
    free(s);
    free(toks);
    free(st);
    free(logits);
    return (double)batch * steps / t;
}

static double bench_decode(ym_ctx_t *ctx, const ym_model_t *m, int batch, int steps)
{
    return bench_decode_adapted(ctx, m, batch, steps, NULL);
}

/* Decode of `batch` rows on the base model vs spread over n_adapters random LoRA adapters of
 * rank r (the target: >= 80 % of the base throughput at 16 rows and 16 adapters). Both
 * measured alternately, 3 rounds, best of each. Returns 0 or 1 (error printed). */
static int bench_adapters(ym_model_t *m, int n_threads, int batch, int n_adapters, int r,
                          int steps, int json, const char *model_name)
{
    ym_adapter_t **ads = calloc((size_t)n_adapters, sizeof(*ads));
    const ym_adapt **rows = calloc((size_t)batch, sizeof(*rows));
    ym_ctx_t *ctx = NULL;
    ym_diag diag = {0};
    int rc = 1;
    if (ads == NULL || rows == NULL || ym_ctx_new(m, batch, n_threads, &ctx) != YM_OK) {
        fprintf(stderr, "yunmin: bench: out of memory\n");
        goto out;
    }
    for (int i = 0; i < n_adapters; i++)
        if (ym_adapter_new_random_lora(m, r, (1u << YM_PROJ_N) - 1, (uint64_t)i + 1, &ads[i],
                                       &diag) != YM_OK) {
            fprintf(stderr, "yunmin: bench: %s\n", diag.msg);
            goto out;
        }
    for (int i = 0; i < batch; i++)
        rows[i] = ym_adapter_applied(ads[i % n_adapters]);
    if (!json)
        fprintf(stderr, "bench: %s, %d threads, decode batch %d: base vs %d LoRA adapters r=%d "
                "(all four projections)\n", model_name, n_threads, batch, n_adapters, r);
    /* Shared machines drift: pair each adapted run with the base run just before it and
     * report the median of the pairs' ratios (and the best of each, for reference). */
    enum { ROUNDS = 7 };
    double base = 0, adapted = 0, ratio[ROUNDS];
    for (int round = 0; round < ROUNDS; round++) {
        double b0 = bench_decode_adapted(ctx, m, batch, steps, NULL);
        double a0 = bench_decode_adapted(ctx, m, batch, steps, rows);
        base = b0 > base ? b0 : base;
        adapted = a0 > adapted ? a0 : adapted;
        ratio[round] = b0 > 0 ? a0 / b0 : 0;
    }
    for (int i = 1; i < ROUNDS; i++) /* insertion sort: seven values */
        for (int j = i; j > 0 && ratio[j] < ratio[j - 1]; j--) {
            double t = ratio[j];
            ratio[j] = ratio[j - 1];
            ratio[j - 1] = t;
        }
    double median = ratio[ROUNDS / 2];
    ym_adapter_info info;
    ym_adapter_info_get(ads[0], &info);
    if (json) {
        printf("{\"model\": \"%s\", \"threads\": %d, \"batch\": %d, \"adapters\": %d, "
               "\"rank\": %d, \"adapter_params\": %zu, \"base_tok_s\": %.2f, "
               "\"adapters_tok_s\": %.2f, \"ratio_median\": %.4f, \"ratio_min\": %.4f, "
               "\"ratio_max\": %.4f}\n", model_name, n_threads, batch, n_adapters, r,
               info.n_params, base, adapted, median, ratio[0], ratio[ROUNDS - 1]);
    } else {
        printf("decode batch %d, base model       %8.1f tok/s (best of %d)\n", batch, base,
               ROUNDS);
        printf("decode batch %d, %d adapters r=%-3d %8.1f tok/s (best of %d; %.1f M parameters "
               "each)\n", batch, n_adapters, r, adapted, ROUNDS, (double)info.n_params / 1e6);
        printf("adapters / base, median of %d paired runs: %.0f%% (range %.0f%%-%.0f%%)\n",
               ROUNDS, 100.0 * median, 100.0 * ratio[0], 100.0 * ratio[ROUNDS - 1]);
    }
    rc = 0;
out:
    for (int i = 0; ads != NULL && i < n_adapters; i++)
        ym_adapter_unref(ads[i]);
    free(ads);
    free(rows);
    ym_ctx_free(ctx);
    return rc;
}

/* The scan alone, one thread, one token at a time through every layer (the kernel the model
 * runs: dense, or masked over its blocks), on a state that evolves as in decode. Inputs are
 * fixed plausible values (dt in [0.01, 0.1], x and z O(1), B and C O(1)). Microseconds per
 * token, best of 9 runs of 256 tokens (one thread on a shared machine: the best is the
 * least disturbed). */
static double bench_ssd_step(const ym_model_t *m);
static double bench_scan(const ym_model_t *m)
{
    const ym_config *c = &m->cfg;
    if (c->arch == YM_ARCH_MAMBA2)
        return bench_ssd_step(m);
    const int di = c->d_inner, N = c->d_state;
    float *x = malloc(sizeof(float) * di), *dt = malloc(sizeof(float) * di);
    float *z = malloc(sizeof(float) * di), *y = malloc(sizeof(float) * di);
    float *bc = malloc(sizeof(float) * 2 * (size_t)N);
    ym_state_t *s = NULL;
    if (!x || !dt || !z || !y || !bc || ym_state_new(c, &s) != YM_OK) {
        free(x), free(dt), free(z), free(y), free(bc);
        return 0;
    }
    for (int d = 0; d < di; d++) {
        dt[d] = 0.01f + 0.09f * (float)((d * 37) % 101) / 100.0f;
        x[d] = (float)((d * 53) % 17) / 8.0f - 1.0f;
        z[d] = (float)((d * 29) % 13) / 6.0f - 1.0f;
    }
    for (int n = 0; n < 2 * N; n++)
        bc[n] = (float)((n * 7) % 11) / 5.0f - 1.0f;
    double best = 1e30;
    for (int rep = 0; rep < 9; rep++) {
        double t0 = now();
        for (int t = 0; t < 256; t++)
            for (int l = 0; l < c->n_layer; l++) {
                const ym_layer *L = &m->layers[l];
                if (L->d_inner == 0)
                    continue;
                if (L->scan != NULL)
                    ym_scan_masked_f32(y, ym_state_ssm(s, l), L->scan, L->D, x, dt, z, bc, 2 * N,
                                       1, di, N, 0, L->scan->n_blocks);
                else
                    ym_scan_f32(y, ym_state_ssm(s, l), L->A, L->D, x, dt, z, bc, 2 * N, 1, di,
                                N, 0, L->d_inner);
            }
        double us = (now() - t0) * 1e6 / 256;
        best = us < best ? us : best;
    }
    ym_state_free(s);
    free(x), free(dt), free(z), free(y), free(bc);
    return best;
}

/* Mamba-2: the SSD decode step alone (ym_ssd_step_f32, all heads), one thread, as bench_scan. */
static double bench_ssd_step(const ym_model_t *m)
{
    const ym_config *c = &m->cfg;
    const int di = c->d_inner, H = c->n_head, GN = c->n_group * c->d_state;
    ym_ssd_dims d = {H, c->head_dim, c->n_group, c->d_state};
    float *x = malloc(sizeof(float) * di), *y = malloc(sizeof(float) * di);
    float *dt = malloc(sizeof(float) * H), *bc = malloc(sizeof(float) * 2 * (size_t)GN);
    ym_state_t *s = NULL;
    if (!x || !y || !dt || !bc || ym_state_new(c, &s) != YM_OK) {
        free(x), free(y), free(dt), free(bc);
        return 0;
    }
    for (int i = 0; i < di; i++)
        x[i] = (float)((i * 53) % 17) / 8.0f - 1.0f;
    for (int h = 0; h < H; h++)
        dt[h] = 0.01f + 0.09f * (float)((h * 37) % 101) / 100.0f;
    for (int n = 0; n < 2 * GN; n++)
        bc[n] = (float)((n * 7) % 11) / 5.0f - 1.0f;
    double best = 1e30;
    for (int rep = 0; rep < 9; rep++) {
        double t0 = now();
        for (int t = 0; t < 256; t++)
            for (int l = 0; l < c->n_layer; l++) {
                const ym_layer *L = &m->layers[l];
                ym_ssd_step_f32(y, ym_state_ssm(s, l), x, dt, L->A, L->D, bc, bc + GN, &d, 0, H);
            }
        double us = (now() - t0) * 1e6 / 256;
        best = us < best ? us : best;
    }
    ym_state_free(s);
    free(x), free(y), free(dt), free(bc);
    return best;
}

/* --arch: a random model of the family with the published small shapes: mamba-130m for mamba1
 * and falcon_mamba (Falcon-Mamba's norms on the same shapes), mamba2-130m for mamba2. */
static int synthetic_arch(const char *arch, ym_wtype wt, int have_wt, ym_model_t **out)
{
    ym_config c;
    memset(&c, 0, sizeof(c));
    c.d_model = 768;
    c.n_layer = 24;
    c.d_inner = 1536;
    c.d_conv = 4;
    c.use_conv_bias = 1;
    c.tie_embeddings = 1;
    c.norm_eps = 1e-5f;
    c.bos_id = c.eos_id = c.pad_id = -1;
    if (strcmp(arch, "mamba1") == 0 || strcmp(arch, "falcon_mamba") == 0) {
        c.arch = arch[0] == 'm' ? YM_ARCH_MAMBA1 : YM_ARCH_FALCON_MAMBA;
        c.d_state = 16;
        c.dt_rank = 48;
        c.n_vocab = 50280;
        c.mixer_rms_eps = c.arch == YM_ARCH_FALCON_MAMBA ? 1e-6f : 0.0f;
    } else if (strcmp(arch, "mamba2") == 0) { /* state-spaces/mamba2-130m */
        c.arch = YM_ARCH_MAMBA2;
        c.d_state = 128;
        c.n_head = 24;
        c.head_dim = 64;
        c.n_group = 1;
        c.chunk_size = 256;
        c.n_vocab = 50288;
        c.dt_min = 0.0f;
        c.dt_max = INFINITY;
        c.gated_norm_eps = 1e-5f;
    } else {
        fprintf(stderr, "yunmin: bench: --arch '%s' is not one of mamba1, mamba2, falcon_mamba\n",
                arch);
        return 2;
    }
    ym_diag diag = {0};
    if (ym_model_new_random_as(&c, 1, have_wt ? wt : YM_WT_F32, out, &diag) != YM_OK) {
        fprintf(stderr, "yunmin: bench: %s\n", diag.msg);
        return 1;
    }
    return 0;
}

/* Median of n values (sorted in place; the mean of the middle two when n is even), 0 if none. */
static double median(double *v, int n)
{
    for (int i = 1; i < n; i++) /* insertion sort: a few values */
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Batch-1 decode over the floor bandwidth / bytes, for each round's own probe and decode: a
 * JSON array of n_rounds values (empty without a probe or batch 1), and their median. */
static json_t *round_fractions(const double *bw_r, const double *dec1_r, int n_rounds,
                               double bytes, double *median_out)
{
    json_t *a = json_array();
    double *f = calloc((size_t)n_rounds, sizeof(double));
    int n = 0;
    for (int r = 0; f != NULL && r < n_rounds; r++)
        if (bw_r[r] > 0 && dec1_r[r] > 0) {
            f[n] = dec1_r[r] / (bw_r[r] * 1e9 / bytes);
            json_array_append_new(a, json_real(f[n]));
            n++;
        }
    *median_out = f != NULL ? median(f, n) : 0;
    free(f);
    return a;
}

static json_t *json_reals(const double *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_real(v[i]));
    return a;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: yunmin bench [--model DIR] [--json] [--threads N] [--prompt N] [--steps N]\n"
               "                    [--batches 1,4,16,64] [--sparsity FILE] [--rounds N] [--no-floors]\n"
               "                    [--adapters N [--rank R]] [--weights f32|bf16|int8|auto]\n"
               "                    [--arch mamba1|mamba2|falcon_mamba] [--windows N]\n"
               "Without --model: a synthetic model with mamba-130m's shapes (random weights);\n"
               "--model synthetic:mamba-1.4b or synthetic:falcon-mamba-7b for the bigger ones.\n"
               "--weights: the type the matrices are served in (default: the checkpoint's own,\n"
               "f32 for synthetic models).\n"
               "--arch: a synthetic model of that family (random weights): mamba-130m's shapes\n"
               "for mamba1 and falcon_mamba, mamba2-130m's for mamba2.\n"
               "--rounds N (default 2): rounds of a bandwidth probe followed by batch-1 decode;\n"
               "the floor fraction is the best decode over the best probe, and each round's\n"
               "own pair and their median are in --json. With batches 1 and 16 both asked\n"
               "for, batch 16 runs in every round after batch 1 (best of the rounds each;\n"
               "each round's ratio and their median in --json).\n"
               "--windows N (default 48; 0: off): after the rounds, N batch-1 decode steps,\n"
               "each between two passes that move the step's own bytes the step's way (every\n"
               "matrix through the same kernel, the state read and written) with nothing\n"
               "else to do; the faster pass over the step, per window, and the median and\n"
               "quartiles of the windows are the floor fraction under the same neighbours\n"
               "(decode_floor_with_state_window_* in --json).\n"
               "--sparsity: also measure the model served under that profile, alternating\n"
               "with the dense one in this process (best of the rounds each), and report the\n"
               "speed-ups.\n"
               "--no-floors: skip the bandwidth and sgemm measurements (one round, unless\n"
               "--sparsity).\n"
               "--adapters N: only decode of a batch of --batches' first value (default 16)\n"
               "rows, base model vs rows spread over N random LoRA adapters of rank R (8).\n");
}

int ym_cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"json", no_argument, 0, 'j'},
        {"threads", required_argument, 0, 't'}, {"prompt", required_argument, 0, 'p'},
        {"steps", required_argument, 0, 's'},  {"batches", required_argument, 0, 'b'},
        {"adapters", required_argument, 0, 'a'}, {"rank", required_argument, 0, 'k'},
        {"sparsity", required_argument, 0, 'S'}, {"no-floors", no_argument, 0, 'F'},
        {"rounds", required_argument, 0, 'r'}, {"weights", required_argument, 0, 'W'},
        {"arch", required_argument, 0, 'A'}, {"windows", required_argument, 0, 'w'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    const char *arch = NULL;
    const char *model_dir = NULL, *batches = NULL, *sparsity = NULL, *weights = NULL;
    ym_wtype wt;
    int json = 0, n_threads = 0, n_prompt = 512, steps = 32, n_adapters = 0, rank = 8;
    int floors = 1, rounds = 2, n_win = 48;
    optind = 1;
    opterr = 0;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (o) {
        case 'm': model_dir = optarg; break;
        case 'A': arch = optarg; break;
        case 'j': json = 1; break;
        case 'b': batches = optarg; break;
        case 'S': sparsity = optarg; break;
        case 'F': floors = 0; break;
        case 'W':
            if (cli_parse_weights(optarg, &wt) != 0)
                return 2;
            weights = optarg;
            break;
        case 'r':
        case 'w':
        case 't':
        case 'p':
        case 'a':
        case 'k':
        case 's': {
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || v < (o == 't' || o == 'w' ? 0 : 1) ||
                v > (o == 'a' || o == 'k' ? 4096 : 1000000)) {
                fprintf(stderr, "yunmin: bench: bad value '%s' for --%s\n", optarg,
                        o == 't' ? "threads" : o == 'p' ? "prompt" : o == 'a' ? "adapters"
                        : o == 'k' ? "rank" : o == 'r' ? "rounds" : o == 'w' ? "windows"
                        : "steps");
                return 2;
            }
            if (o == 'r')
                rounds = (int)v;
            else if (o == 'w')
                n_win = (int)v;
            else if (o == 't')
                n_threads = (int)v;
            else if (o == 'p')
                n_prompt = (int)v;
            else if (o == 'a')
                n_adapters = (int)v;
            else if (o == 'k')
                rank = (int)v;
            else
                steps = (int)v;
            break;
        }
        case 'h': usage(stdout); return 0;
        default:
            fprintf(stderr, "yunmin: bench: unknown or incomplete option '%s'\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "yunmin: bench: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (batches == NULL)
        batches = n_adapters > 0 ? "16" : "1,4,16,64";
    int bs[16], n_bs = 0;
    for (const char *p = batches; *p != '\0' && n_bs < 16;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 4096 || (*end != ',' && *end != '\0')) {
            fprintf(stderr, "yunmin: bench: bad --batches '%s'\n", batches);
            return 2;
        }
        bs[n_bs++] = (int)v;
        p = *end == ',' ? end + 1 : end;
    }
    if (n_threads == 0)
        n_threads = ym_n_cores();

    ym_model_t *m = NULL, *dm_dense = NULL;
    const char *model_name = model_dir != NULL ? model_dir : "synthetic mamba-130m shapes";
    if (arch != NULL && model_dir != NULL) {
        fprintf(stderr, "yunmin: bench: --arch and --model exclude each other\n");
        return 2;
    }
    if (arch != NULL) {
        int rc = synthetic_arch(arch, wt, weights != NULL, &m);
        if (rc != 0)
            return rc;
        model_name = strcmp(arch, "mamba2") == 0 ? "synthetic mamba2-130m shapes"
                     : strcmp(arch, "mamba1") == 0 ? "synthetic mamba-130m shapes"
                                                   : "synthetic falcon_mamba, mamba-130m shapes";
    } else if (cli_load_model_as(model_dir != NULL ? model_dir : CLI_SYNTHETIC_130M, weights,
                                 &m) != 0) {
        return 1;
    }
    if (sparsity != NULL) {
        dm_dense = ym_model_ref(m);
        if (cli_apply_sparsity(sparsity, &m) != 0) {
            ym_model_unref(m);
            ym_model_unref(dm_dense);
            return 1;
        }
    }
    if (n_adapters > 0) {
        int rc = bench_adapters(m, n_threads, bs[0], n_adapters, rank, steps, json, model_name);
        ym_model_unref(m);
        return rc;
    }
    int max_b = n_prompt;
    for (int i = 0; i < n_bs; i++)
        if (bs[i] > max_b)
            max_b = bs[i];
    ym_ctx_t *ctx = NULL, *ctx_dense = NULL;
    if (ym_ctx_new(m, max_b, n_threads, &ctx) != YM_OK ||
        (dm_dense != NULL && ym_ctx_new(dm_dense, max_b, n_threads, &ctx_dense) != YM_OK)) {
        fprintf(stderr, "yunmin: bench: out of memory\n");
        ym_ctx_free(ctx);
        ym_model_unref(m);
        ym_model_unref(dm_dense);
        return 1;
    }
    /* The model and the contexts, touched once by a decode step: what a server holds. */
    (void)bench_decode(ctx, m, 1, 1);
    long long rss = rss_bytes();
    ym_pool_t *pool = NULL;
    ym_pool_new(n_threads, &pool);
    if (!json)
        fprintf(stderr, "bench: %s%s%s, %s weights, %d threads, BLAS core %s, kernels %s, "
                "matmul %s\n", model_name, sparsity ? " under " : "", sparsity ? sparsity : "",
                ym_wtype_name(m->wtype), n_threads, ym_blas_core(), ym_kernels_isa(),
                ym_matmul_isa());
    double bw = 0, gemm_engine = 0, gemm_blas = 0, sgemm = 0;
    bw_job probe = {0};
    if (floors) {
        if (bw_init(&probe) != 0)
            fprintf(stderr, "yunmin: bench: no memory for the bandwidth probe; floors are 0\n");
        sgemm = measure_sgemm(pool, n_threads, &gemm_engine, &gemm_blas);
    }
    /* Each round: a bandwidth probe, then batch-1 decode right after it, so that each round's
     * floor and decode see the same neighbours. Prefill and the other batch sizes run in the
     * first round only, or in every round under --sparsity (sparse and dense alternate, best
     * of the rounds each: drift on a shared machine hits both alike). Without floors or
     * sparsity there is nothing to pair: one round. */
    int n_rounds = floors || ctx_dense != NULL ? rounds : 1;
    double *bw_r = calloc((size_t)n_rounds, sizeof(double));
    double *dec1_r = calloc((size_t)n_rounds, sizeof(double));
    double *dec16_r = calloc((size_t)n_rounds, sizeof(double));
    if (bw_r == NULL || dec1_r == NULL || dec16_r == NULL) {
        fprintf(stderr, "yunmin: bench: out of memory\n");
        free(bw_r), free(dec1_r), free(dec16_r);
        bw_deinit(&probe);
        ym_pool_free(pool);
        ym_ctx_free(ctx);
        ym_ctx_free(ctx_dense);
        ym_model_unref(m);
        ym_model_unref(dm_dense);
        return 1;
    }
    double prefill = 0, dec[16] = {0}, prefill_d = 0, dec_d[16] = {0};
    int i1 = -1, i16 = -1; /* indices of batch 1 and 16 in bs, if measured */
    for (int i = 0; i < n_bs; i++) {
        if (bs[i] == 1)
            i1 = i;
        if (bs[i] == 16)
            i16 = i;
    }
    /* Batch 16 against batch 1 (a target of its own): with both measured, batch 16 runs in
     * every round right after batch 1, so that each round gives a pair taken under the same
     * load and both figures are the best of as many runs. */
    const int pair16 = i1 >= 0 && i16 >= 0 && ctx_dense == NULL;
    for (int round = 0; round < n_rounds; round++) {
        double v;
        if (floors) {
            bw_r[round] = bw_measure(pool, &probe);
            bw = bw_r[round] > bw ? bw_r[round] : bw;
        }
        if (i1 >= 0) {
            dec1_r[round] = bench_decode(ctx, m, 1, steps);
            dec[i1] = dec1_r[round] > dec[i1] ? dec1_r[round] : dec[i1];
            if (ctx_dense != NULL) {
                v = bench_decode(ctx_dense, dm_dense, 1, steps);
                dec_d[i1] = v > dec_d[i1] ? v : dec_d[i1];
            }
        }
        if (pair16) {
            dec16_r[round] = bench_decode(ctx, m, 16, steps / 2 + 1);
            dec[i16] = dec16_r[round] > dec[i16] ? dec16_r[round] : dec[i16];
        }
        if (round > 0 && ctx_dense == NULL)
            continue;
        if (ctx_dense != NULL) {
            v = bench_prefill(ctx_dense, dm_dense, n_prompt, 3);
            prefill_d = v > prefill_d ? v : prefill_d;
        }
        v = bench_prefill(ctx, m, n_prompt, 3);
        prefill = v > prefill ? v : prefill;
        for (int i = 0; i < n_bs; i++) {
            if (i == i1 || (pair16 && i == i16))
                continue;
            int st = bs[i] >= 16 ? steps / 2 + 1 : steps;
            if (ctx_dense != NULL) {
                v = bench_decode(ctx_dense, dm_dense, bs[i], st);
                dec_d[i] = v > dec_d[i] ? v : dec_d[i];
            }
            v = bench_decode(ctx, m, bs[i], st);
            dec[i] = v > dec[i] ? v : dec[i];
        }
    }
    /* The floor window by window (floor_windows): after the rounds, batch 1 only. Window i's
     * fraction is the faster of the two passes on either side of decode step i (each pass
     * the step's own bytes moved the step's way, started within milliseconds of it) over
     * the step's time. Also the quietest pass over the quietest step of the run (the same
     * length, sampled alternately). */
    const double state_bytes = (double)model_state_bytes(m);
    const double step_bytes = (double)m->weight_bytes + 2.0 * state_bytes;
    int n_w = floors && i1 >= 0 ? n_win : 0;
    double *win = calloc((size_t)n_w + 1, sizeof(double));
    double *win_sorted = calloc((size_t)n_w + 1, sizeof(double));
    double *w_td = calloc((size_t)n_w + 1, sizeof(double));
    double *w_tp = calloc((size_t)n_w + 1, sizeof(double));
    double *w_cd = calloc((size_t)n_w + 1, sizeof(double));
    double *w_cp = calloc((size_t)n_w + 1, sizeof(double));
    double *win_cpu = calloc((size_t)n_w + 1, sizeof(double));
    double win_best = 0, win_bw_med = 0;
    if (n_w > 0 && (win == NULL || win_sorted == NULL || w_td == NULL || w_tp == NULL ||
                    w_cd == NULL || w_cp == NULL || win_cpu == NULL ||
                    floor_windows(ctx, m, pool, n_threads, n_w, w_td, w_tp, w_cd, w_cp) != 0)) {
        fprintf(stderr, "yunmin: bench: out of memory for the floor windows\n");
        n_w = 0;
    }
    if (n_w > 0) {
        double td_min = w_td[0], tp_min = w_tp[0];
        for (int i = 0; i < n_w; i++) {
            double tp = w_tp[i] < w_tp[i + 1] ? w_tp[i] : w_tp[i + 1];
            win[i] = tp / w_td[i];
            double cp = w_cp[i] < w_cp[i + 1] ? w_cp[i] : w_cp[i + 1];
            win_cpu[i] = w_cd[i] > 0 ? cp / w_cd[i] : 0;
            td_min = w_td[i] < td_min ? w_td[i] : td_min;
            tp_min = w_tp[i + 1] < tp_min ? w_tp[i + 1] : tp_min;
        }
        win_best = tp_min / td_min;
        for (int i = 0; i <= n_w; i++) /* the passes' rates, GB/s, for their median */
            w_tp[i] = step_bytes / w_tp[i] / 1e9;
        qsort(w_tp, (size_t)n_w + 1, sizeof(double), cmp_double);
        win_bw_med = quantile(w_tp, n_w + 1, 0.5);
        memcpy(win_sorted, win, sizeof(double) * (size_t)n_w);
        qsort(win_sorted, (size_t)n_w, sizeof(double), cmp_double);
        qsort(win_cpu, (size_t)n_w, sizeof(double), cmp_double);
    }
    free(w_td);
    free(w_tp);
    free(w_cd);
    free(w_cp);
    bw_deinit(&probe);
    ym_pool_free(pool);

    double scan_us = bench_scan(m), scan_us_d = dm_dense != NULL ? bench_scan(dm_dense) : 0;
    double floor_tok_s = floors ? bw * 1e9 / (double)m->weight_bytes : 0;
    double dec1 = 0, dec16 = 0;
    for (int i = 0; i < n_bs; i++) {
        if (bs[i] == 1)
            dec1 = dec[i];
        if (bs[i] == 16)
            dec16 = dec[i];
    }
    double prefill_gflops = prefill * token_flops(m, 0) / 1e9;
    json_t *o_json = json_object();
    json_t *dj = json_object();
    for (int i = 0; i < n_bs; i++) {
        char key[16];
        snprintf(key, sizeof(key), "%d", bs[i]);
        json_object_set_new(dj, key, json_real(dec[i]));
    }
    json_object_set_new(o_json, "model", json_string(model_name));
    json_object_set_new(o_json, "threads", json_integer(n_threads));
    json_object_set_new(o_json, "blas_core", json_string(ym_blas_core()));
    json_object_set_new(o_json, "kernels", json_string(ym_kernels_isa()));
    json_object_set_new(o_json, "weights", json_string(ym_wtype_name(m->wtype)));
    json_object_set_new(o_json, "matmul", json_string(ym_matmul_isa()));
    json_object_set_new(o_json, "weight_bytes", json_integer((json_int_t)m->weight_bytes));
    json_object_set_new(o_json, "resident_weight_bytes",
                        json_integer((json_int_t)m->resident_bytes));
    json_object_set_new(o_json, "rss_bytes", json_integer((json_int_t)rss));
    json_object_set_new(o_json, "bandwidth_gb_s", json_real(bw));
    json_object_set_new(o_json, "sgemm_gflop_s", json_real(sgemm));
    json_object_set_new(o_json, "sgemm_gflop_s_engine_split", json_real(gemm_engine));
    json_object_set_new(o_json, "sgemm_gflop_s_openblas_threads", json_real(gemm_blas));
    json_object_set_new(o_json, "prefill_tokens", json_integer(n_prompt));
    json_object_set_new(o_json, "prefill_tok_s", json_real(prefill));
    json_object_set_new(o_json, "prefill_gflop_s", json_real(prefill_gflops));
    json_object_set_new(o_json, "decode_tok_s", dj);
    json_object_set_new(o_json, "decode_floor_tok_s", json_real(floor_tok_s));
    json_object_set_new(o_json, "decode_floor_fraction",
                        json_real(dec1 > 0 && floor_tok_s > 0 ? dec1 / floor_tok_s : 0));
    /* Each round's own probe and batch-1 decode, and the fractions paired within a round. */
    double frac_med = 0, frac_state_med = 0;
    json_t *frac_r = round_fractions(bw_r, dec1_r, floors ? n_rounds : 0,
                                     (double)m->weight_bytes, &frac_med);
    json_t *frac_state_r = round_fractions(bw_r, dec1_r, floors ? n_rounds : 0,
                                           (double)m->weight_bytes + 2.0 * state_bytes,
                                           &frac_state_med);
    json_object_set_new(o_json, "rounds", json_integer(n_rounds));
    json_object_set_new(o_json, "bandwidth_gb_s_rounds", json_reals(bw_r, floors ? n_rounds : 0));
    json_object_set_new(o_json, "decode1_tok_s_rounds", json_reals(dec1_r, i1 >= 0 ? n_rounds : 0));
    json_object_set_new(o_json, "decode_floor_fraction_rounds", frac_r);
    json_object_set_new(o_json, "decode_floor_fraction_median", json_real(frac_med));
    json_object_set_new(o_json, "prefill_peak_fraction",
                        json_real(sgemm > 0 ? prefill_gflops / sgemm : 0));
    /* The model as measured: projection and scan FLOPs per token, live fractions. */
    const ym_config *mc = &m->cfg;
    double all_ch = (double)mc->n_layer * mc->d_inner, all_st = all_ch * mc->d_state;
    json_object_set_new(o_json, "sparsity", sparsity ? json_string(sparsity) : json_null());
    json_object_set_new(o_json, "channel_live_fraction",
                        json_real((double)m->n_channels_kept / all_ch));
    json_object_set_new(o_json, "state_live_fraction",
                        json_real((double)m->n_states_live / all_st));
    json_object_set_new(o_json, "scan_lane_fraction", json_real((double)m->n_scan_lanes / all_st));
    json_object_set_new(o_json, "scan_block_fill",
                        json_real(m->n_scan_lanes > 0
                                      ? (double)m->n_states_live / (double)m->n_scan_lanes
                                      : 1.0));
    json_object_set_new(o_json, "flops_per_token_projections", json_real(token_flops(m, 0)));
    json_object_set_new(o_json, "flops_per_token_head", json_real(token_flops(m, 1) - token_flops(m, 0)));
    json_object_set_new(o_json, "flops_per_token_scan", json_real(scan_flops(m)));
    json_object_set_new(o_json, "scan_us_per_token", json_real(scan_us));
    if (dm_dense != NULL) {
        json_t *dd = json_object(), *ddj = json_object(), *sp = json_object();
        json_object_set_new(dd, "weight_bytes", json_integer((json_int_t)dm_dense->weight_bytes));
        json_object_set_new(dd, "prefill_tok_s", json_real(prefill_d));
        for (int i = 0; i < n_bs; i++) {
            char key[16];
            snprintf(key, sizeof(key), "%d", bs[i]);
            json_object_set_new(ddj, key, json_real(dec_d[i]));
            json_object_set_new(sp, key, json_real(dec_d[i] > 0 ? dec[i] / dec_d[i] : 0));
        }
        json_object_set_new(dd, "decode_tok_s", ddj);
        json_object_set_new(dd, "flops_per_token_projections", json_real(token_flops(dm_dense, 0)));
        json_object_set_new(dd, "flops_per_token_scan", json_real(scan_flops(dm_dense)));
        json_object_set_new(dd, "scan_us_per_token", json_real(scan_us_d));
        json_object_set_new(o_json, "dense", dd);
        json_object_set_new(o_json, "decode_speedup", sp);
        json_object_set_new(o_json, "prefill_speedup",
                            json_real(prefill_d > 0 ? prefill / prefill_d : 0));
        /* The decode ideal: bytes read per token, dense over sparse. */
        double ideal = (double)dm_dense->weight_bytes / (double)m->weight_bytes;
        json_object_set_new(o_json, "ideal_byte_ratio", json_real(ideal));
        double sp1 = 0;
        for (int i = 0; i < n_bs; i++)
            if (bs[i] == 1 && dec_d[i] > 0)
                sp1 = dec[i] / dec_d[i];
        json_object_set_new(o_json, "decode1_fraction_of_ideal",
                            json_real(ideal > 1.0 ? (sp1 - 1.0) / (ideal - 1.0) : 0));
        json_object_set_new(o_json, "decode1_ratio_of_ideal", json_real(sp1 / ideal));
    }
    /* The state too is read and written once per token: the floor counting it. */
    double floor_state = floors ? bw * 1e9 / ((double)m->weight_bytes + 2.0 * state_bytes) : 0;
    json_object_set_new(o_json, "arch", json_string(ym_arch_name(m->cfg.arch)));
    json_object_set_new(o_json, "state_bytes", json_integer((json_int_t)state_bytes));
    json_object_set_new(o_json, "decode_floor_with_state_tok_s", json_real(floor_state));
    json_object_set_new(o_json, "decode_floor_with_state_fraction",
                        json_real(dec1 > 0 && floor_state > 0 ? dec1 / floor_state : 0));
    json_object_set_new(o_json, "decode_floor_with_state_fraction_rounds", frac_state_r);
    json_object_set_new(o_json, "decode_floor_with_state_fraction_median",
                        json_real(frac_state_med));
    /* The floor window by window: per window, the faster pass beside it over the decode
     * step's time; the median, quartiles and extremes of the windows; the quietest pass over
     * the quietest step; the passes' median rate counted as step_bytes. The weights-only
     * median is the same ratio times the weight bytes' share of a step. */
    json_object_set_new(o_json, "floor_windows", json_integer(n_w));
    json_object_set_new(o_json, "decode_floor_with_state_windows", json_reals(win, n_w));
    json_object_set_new(o_json, "decode_floor_with_state_window_median",
                        json_real(quantile(win_sorted, n_w, 0.5)));
    json_object_set_new(o_json, "decode_floor_with_state_window_q25",
                        json_real(quantile(win_sorted, n_w, 0.25)));
    json_object_set_new(o_json, "decode_floor_with_state_window_q75",
                        json_real(quantile(win_sorted, n_w, 0.75)));
    json_object_set_new(o_json, "decode_floor_with_state_window_min",
                        json_real(quantile(win_sorted, n_w, 0.0)));
    json_object_set_new(o_json, "decode_floor_with_state_window_max",
                        json_real(quantile(win_sorted, n_w, 1.0)));
    json_object_set_new(o_json, "decode_floor_with_state_window_best_over_best",
                        json_real(win_best));
    json_object_set_new(o_json, "bandwidth_gb_s_window_median", json_real(win_bw_med));
    /* The same windows in CPU seconds of the process: time descheduled counts on neither
     * side, so on a loaded machine this is the closer to what a quiet one gives. */
    json_object_set_new(o_json, "decode_floor_with_state_window_cpu_median",
                        json_real(quantile(win_cpu, n_w, 0.5)));
    json_object_set_new(o_json, "decode_floor_with_state_window_cpu_q25",
                        json_real(quantile(win_cpu, n_w, 0.25)));
    json_object_set_new(o_json, "decode_floor_with_state_window_cpu_q75",
                        json_real(quantile(win_cpu, n_w, 0.75)));
    json_object_set_new(o_json, "decode_floor_window_median",
                        json_real(quantile(win_sorted, n_w, 0.5) * (double)m->weight_bytes /
                                  step_bytes));
    json_object_set_new(o_json, "prefill_vs_token_by_token", json_real(dec1 > 0 ? prefill / dec1 : 0));
    json_object_set_new(o_json, "decode_batch16_speedup", json_real(dec1 > 0 ? dec16 / dec1 : 0));
    /* Each round's batch-16 decode and its ratio to the same round's batch 1, and the median
     * of those ratios (empty and 0 unless both batch sizes were asked for; round_fractions
     * with 1e9 bytes divides the second array by the first). */
    double sp16_med = 0;
    json_t *sp16_r = round_fractions(dec1_r, dec16_r, pair16 ? n_rounds : 0, 1e9, &sp16_med);
    json_object_set_new(o_json, "decode16_tok_s_rounds", json_reals(dec16_r, pair16 ? n_rounds : 0));
    json_object_set_new(o_json, "decode_batch16_speedup_rounds", sp16_r);
    json_object_set_new(o_json, "decode_batch16_speedup_median", json_real(sp16_med));
    if (json) {
        char *s = json_dumps(o_json, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
        printf("%s\n", s);
        free(s);
    } else {
        if (dm_dense != NULL) {
            printf("sparsity %s: channels %.1f%% kept, states %.1f%% live, block fill %.1f%%\n",
                   sparsity, 100.0 * (double)m->n_channels_kept / all_ch,
                   100.0 * (double)m->n_states_live / all_st,
                   m->n_scan_lanes > 0 ? 100.0 * (double)m->n_states_live / (double)m->n_scan_lanes
                                       : 100.0);
            printf("weights per token: dense %.1f MB, sparse %.1f MB (ideal ratio %.3f)\n",
                   (double)dm_dense->weight_bytes / 1e6, (double)m->weight_bytes / 1e6,
                   (double)dm_dense->weight_bytes / (double)m->weight_bytes);
            printf("prefill %d tokens: dense %.1f tok/s, sparse %.1f tok/s (x%.3f)\n", n_prompt,
                   prefill_d, prefill, prefill_d > 0 ? prefill / prefill_d : 0);
            for (int i = 0; i < n_bs; i++)
                printf("decode batch %-3d: dense %.1f tok/s, sparse %.1f tok/s (x%.3f)\n", bs[i],
                       dec_d[i], dec[i], dec_d[i] > 0 ? dec[i] / dec_d[i] : 0);
            printf("scan alone (1 thread): dense %.1f us/token, sparse %.1f us/token (%.3f of "
                   "dense; lanes %.3f, live %.3f of dense)\n",
                   scan_us_d, scan_us, scan_us_d > 0 ? scan_us / scan_us_d : 0,
                   (double)m->n_scan_lanes / all_st, (double)m->n_states_live / all_st);
        }
        if (floors) {
            printf("memory read bandwidth   %8.2f GB/s  -> decode floor %.1f tok/s (best of %d "
                   "rounds; %.1f MB %s weights; RSS %.1f MB)\n", bw, floor_tok_s, n_rounds,
                   (double)m->weight_bytes / 1e6, ym_wtype_name(m->wtype), (double)rss / 1e6);
            printf("sgemm 512x3072x768      %8.1f GFLOP/s (engine split %.1f, OpenBLAS threads %.1f)\n",
                   sgemm, gemm_engine, gemm_blas);
            printf("prefill %d tokens      %8.1f tok/s = %.1f GFLOP/s = %.0f%% of sgemm\n", n_prompt,
                   prefill, prefill_gflops, 100.0 * prefill_gflops / sgemm);
        } else {
            printf("prefill %d tokens      %8.1f tok/s = %.1f GFLOP/s\n", n_prompt, prefill,
                   prefill_gflops);
        }
        for (int i = 0; i < n_bs; i++)
            printf("decode batch %-3d        %8.1f tok/s%s\n", bs[i], dec[i],
                   bs[i] == 1 ? "" : "");
        if (dec1 > 0 && floor_tok_s > 0) {
            printf("decode batch 1 = %.0f%% of the bandwidth floor (best decode / best probe)",
                   100.0 * dec1 / floor_tok_s);
            if (dec16 > 0)
                printf("; batch 16 = %.1fx batch 1", dec16 / dec1);
            printf("\n");
            printf("each round's probe and decode:");
            for (size_t r = 0; r < json_array_size(frac_r); r++)
                printf(" %.0f%%", 100.0 * json_real_value(json_array_get(frac_r, r)));
            printf(" (median %.0f%%)\n", 100.0 * frac_med);
        }
        if (n_w > 0)
            printf("decode batch 1 step by step beside passes that move its %.1f MB (weights "
                   "+ state read and written) and nothing else, %d windows: median %.0f%% of the "
                   "floor (quartiles %.0f%%-%.0f%%, range %.0f%%-%.0f%%; in CPU time median "
                   "%.0f%%)\n", step_bytes / 1e6, n_w, 100.0 * quantile(win_sorted, n_w, 0.5),
                   100.0 * quantile(win_sorted, n_w, 0.25),
                   100.0 * quantile(win_sorted, n_w, 0.75),
                   100.0 * quantile(win_sorted, n_w, 0.0), 100.0 * quantile(win_sorted, n_w, 1.0),
                   100.0 * quantile(win_cpu, n_w, 0.5));
    }
    json_decref(o_json);
    free(bw_r);
    free(dec1_r);
    free(dec16_r);
    free(win);
    free(win_sorted);
    free(win_cpu);
    ym_ctx_free(ctx);
    ym_ctx_free(ctx_dense);
    ym_model_unref(m);
    ym_model_unref(dm_dense);
    return 0;
}

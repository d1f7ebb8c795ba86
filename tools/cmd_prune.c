/* tools/cmd_prune.c - `yunmin prune`: search the per-layer channel allocation of the fastest
 * sparsity profile whose held-out perplexity stays within a budget, write it, and measure it.
 *
 * Owns: the whole command (scores, search, evaluation, decode timing, report). Runs on the
 * CLI's thread plus the engine's pool. Must not: touch the engine's internals (it uses only
 * ym_model_new_sparse, ym_forward, the state readers and engine/order.c), or trust its own
 * search figures for the written file (the written profile is loaded back and evaluated).
 *
 * Steps (docs/ENGINE.md, "Pruning"):
 *   1. Split the calibration text: tokenize it whole and cut it into windows of --ctx tokens;
 *      round(F x windows) of them (at least 1, at most --eval-tokens / --ctx), spread evenly
 *      (the centres of equal stretches of the text), are the held-out part, the rest, in
 *      order, the score part. A corpus of many documents thus gets a held-out sample from its
 *      start, middle and end, not its last document.
 *   2. Scores: run the first --tokens tokens of the score part through the dense model token
 *      by token; after each token read every channel's state energy e[d, t] = sum_n s[d, n]^2.
 *      A channel's score is its mean energy (the magnitude baseline of `yunmin calibrate`).
 *      The score part is read as one stream: the state carries over the gap where a held-out
 *      window was cut out, as it does over a document boundary.
 *   3. Search: start dense. A step drops one block (--block channels, a multiple of the scan's
 *      SIMD block, 16) from one layer: the lowest-scored block that layer still keeps. The
 *      layer is the one whose candidate has the lowest held-out perplexity (the engine's own
 *      forward of the served sparse model, perplexity's protocol: windows of --ctx tokens from
 *      a fresh state). Every layer's block costs the same bytes and FLOPs (all layers have the
 *      same shapes), so the least damage per step is the least damage per unit of speed. Stop
 *      when the best candidate would exceed the budget, when no channel is left, or after
 *      --max-evals evaluations; keep the last accepted profile. --search lazy (the default) re-evaluates
 *      only the layer whose last measured cost is lowest, until that one is fresh (CELF, a
 *      heuristic: it assumes a layer's cost does not fall when other layers lose channels);
 *      every layer is measured once before the first choice.
 *   4. Write it with the correlation scan order of its kept channels (as `yunmin calibrate`),
 *      load it back and evaluate it; compare with the uniform allocation of the same scores
 *      at the same sparsity, and with --compare PROFILE (a learned profile) at its own
 *      sparsity and re-thresholded to the found one.
 *   5. Batch-1 decode tokens/s of every profile against the dense model, interleaved in
 *      rounds in this process (the median and quartiles of the per-round ratios; best / best). */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward.h"
#include "engine/order.h"
#include "engine/sparse.h"
#include "engine/sparsity.h"
#include "engine/state.h"
#include "engine/utf8.h"
#include "tools/cli.h"

/* Bytes of logits held at once (as `yunmin perplexity`, so the two batch windows alike). */
#define LOGITS_BUDGET ((size_t)256 << 20)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: yunmin prune [--model DIR] --text FILE --out FILE [options]\n"
            "  --max-ppl-increase P   quality budget: held-out perplexity at most dense x (1+P);\n"
            "                         '5%%' or 0.05 (default 5%%)\n"
            "  --heldout F            the fraction of the text's --ctx windows held out (0.1):\n"
            "                         every (1/F)-th window, spread evenly from the start to the\n"
            "                         end of the text; the others are the score part (the\n"
            "                         summary's heldout_windows lists the held-out ones)\n"
            "  --tokens N             score tokens from the start of the score part (2048)\n"
            "  --eval-tokens N        at most N / ctx held-out windows, still spread (8192)\n"
            "  --ctx N                tokens per held-out window, fresh state each (256)\n"
            "  --block N              channels dropped per step, a multiple of 16 (16)\n"
            "  --search lazy|greedy   lazy (default): re-measure only the layer whose last\n"
            "                         measured cost is lowest, until it is fresh; greedy: every\n"
            "                         layer measured at every step (about 5x the evaluations)\n"
            "  --max-evals N          stop the search after N evaluations (2000)\n"
            "  --compare PROFILE      a (learned) profile: its perplexity and speed beside the\n"
            "                         search's at its sparsity, and re-thresholded at the found one\n"
            "  --compare-out FILE     write the searched profile at the compared sparsity there\n"
            "  --speed-steps N        decode steps per timing (200; 0 = no timing)\n"
            "  --speed-rounds N       dense/pruned timings alternated N times (30); the\n"
            "                         speed-up is the median of the rounds' ratios (and their\n"
            "                         quartiles; best / best too): short alternating timings,\n"
            "                         so drift hits both alike\n"
            "  --starts K             start channels tried for the scan order path (8; 0 = all)\n"
            "  --tokenizer DIR        tokenizer.json from DIR (default: the model's)\n"
            "  --threads N            engine threads\n"
            "  --json                 the summary as JSON on stdout (else a table)\n"
            "Progress lines go to stderr. Scores: mean state energy per channel (the magnitude\n"
            "baseline of `yunmin calibrate`), over the score part (never the held-out part).\n");
}

enum {
    OPT_BUDGET = 256,
    OPT_HELDOUT,
    OPT_TOKENS,
    OPT_EVAL_TOKENS,
    OPT_CTX,
    OPT_BLOCK,
    OPT_SEARCH,
    OPT_MAX_EVALS,
    OPT_COMPARE,
    OPT_COMPARE_OUT,
    OPT_SPEED_STEPS,
    OPT_SPEED_ROUNDS,
    OPT_STARTS,
    OPT_TOKENIZER,
    OPT_THREADS,
    OPT_JSON,
};

/* The held-out windows and what evaluating a model on them needs. */
typedef struct evalset {
    const int32_t *ids; /* borrowed [n] */
    size_t n;
    int W;              /* window length (--ctx) */
    size_t n_windows;
    size_t per_batch;   /* windows per ym_forward */
    int n_threads;
    int nv;
    ym_state_t **states; /* owned [per_batch] */
    int *seq_start;      /* owned [per_batch + 1] */
    float *logits;       /* owned [per_batch * W, nv] */
    size_t n_scored;
    int n_evals;
} evalset;

static ym_err evalset_init(evalset *ev, const ym_config *cfg, const int32_t *ids, size_t n,
                           int W, int n_threads)
{
    memset(ev, 0, sizeof(*ev));
    ev->ids = ids;
    ev->n = n;
    ev->W = W;
    ev->nv = cfg->n_vocab;
    ev->n_threads = n_threads;
    ev->n_windows = n / (size_t)W + (n % (size_t)W >= 2 ? 1 : 0);
    size_t pb = LOGITS_BUDGET / ((size_t)ev->nv * sizeof(float) * (size_t)W);
    if (pb < 1)
        pb = 1;
    if (pb > ev->n_windows)
        pb = ev->n_windows;
    ev->per_batch = pb;
    ev->states = calloc(pb, sizeof(*ev->states));
    ev->seq_start = malloc((pb + 1) * sizeof(int));
    ev->logits = malloc(pb * (size_t)W * (size_t)ev->nv * sizeof(float));
    if (ev->states == NULL || ev->seq_start == NULL || ev->logits == NULL)
        return YM_ENOMEM;
    for (size_t k = 0; k < pb; k++)
        if (ym_state_new(cfg, &ev->states[k]) != YM_OK)
            return YM_ENOMEM;
    for (size_t w = 0; w < ev->n_windows; w++) {
        size_t lo = w * (size_t)W, hi = lo + (size_t)W < n ? lo + (size_t)W : n;
        ev->n_scored += hi - lo - 1;
    }
    return YM_OK;
}

static void evalset_deinit(evalset *ev)
{
    for (size_t k = 0; ev->states != NULL && k < ev->per_batch; k++)
        ym_state_free(ev->states[k]);
    free(ev->states);
    free(ev->seq_start);
    free(ev->logits);
}

/* Mean NLL of the held-out windows under model m, `yunmin perplexity`'s protocol and batching:
 * each window from a fresh state, every token but its first scored (so a window's figure here
 * equals `yunmin logits --ids` of its tokens, scored the same way). */
static ym_err eval_nll(evalset *ev, ym_model_t *m, double *nll, ym_diag *diag)
{
    ym_ctx_t *ctx = NULL;
    size_t per_batch = ev->per_batch, W = (size_t)ev->W;
    ym_err err = ym_ctx_new(m, (int)(per_batch * W), ev->n_threads, &ctx);
    if (err != YM_OK)
        return err;
    if ((size_t)ym_ctx_n_rows_max(ctx) < per_batch * W) {
        per_batch = (size_t)ym_ctx_n_rows_max(ctx) / W;
        if (per_batch < 1) {
            int rows = ym_ctx_n_rows_max(ctx);
            ym_ctx_free(ctx);
            return ym_diag_set(diag, YM_EINVAL, "a window of %zu rows exceeds the engine's %d",
                               W, rows);
        }
    }
    double sum = 0;
    for (size_t w0 = 0; w0 < ev->n_windows; w0 += per_batch) {
        size_t nb = ev->n_windows - w0 < per_batch ? ev->n_windows - w0 : per_batch;
        size_t first = w0 * W;
        ev->seq_start[0] = 0;
        for (size_t k = 0; k < nb; k++) {
            size_t lo = first + k * W, hi = lo + W < ev->n ? lo + W : ev->n;
            ev->seq_start[k + 1] = ev->seq_start[k] + (int)(hi - lo);
            ym_state_reset(ev->states[k]);
        }
        ym_batch b = {.n_seq = (int)nb, .tokens = ev->ids + first, .seq_start = ev->seq_start,
                      .states = ev->states, .logits = YM_LOGITS_ALL};
        if ((err = ym_forward(ctx, &b, ev->logits, diag)) != YM_OK)
            break;
        for (size_t k = 0; k < nb; k++)
            for (int r = ev->seq_start[k] + 1; r < ev->seq_start[k + 1]; r++)
                sum += cli_nll(ev->logits + (size_t)(r - 1) * (size_t)ev->nv, ev->nv, b.tokens[r]);
    }
    ym_ctx_free(ctx);
    ev->n_evals++;
    *nll = sum / (double)ev->n_scored;
    return err;
}

/* Mean held-out NLL of base served under sp. */
static ym_err eval_profile(evalset *ev, ym_model_t *base, const ym_sparsity *sp, double *nll,
                           ym_diag *diag)
{
    ym_model_t *m = NULL;
    ym_err err = ym_model_new_sparse(base, sp, &m, diag);
    if (err == YM_OK)
        err = eval_nll(ev, m, nll, diag);
    ym_model_unref(m);
    return err;
}

/* A channel-only profile: layer l keeps the channels rank[l][0..n_keep[l]) (rank: channels by
 * score, highest first), every state entry of a kept channel, identity order. */
static ym_err make_profile(const ym_config *cfg, const int32_t *rank, const int *n_keep,
                           const char *method, ym_sparsity **out, ym_diag *diag)
{
    const int nl = cfg->n_layer, di = cfg->d_inner;
    ym_sparsity *sp = NULL;
    ym_err err = ym_sparsity_new(nl, di, cfg->d_state, method, &sp);
    if (err != YM_OK)
        return err;
    for (int l = 0; l < nl; l++) {
        float *cl = sp->layers[l].channel_logits;
        for (int d = 0; d < di; d++)
            cl[d] = -1.0f;
        for (int k = 0; k < n_keep[l]; k++)
            cl[rank[(size_t)l * di + k]] = 1.0f;
    }
    if ((err = ym_sparsity_finish(sp, diag)) != YM_OK) {
        ym_sparsity_free(sp);
        return err;
    }
    *out = sp;
    return YM_OK;
}

static const double *sort_key;
static int cmp_desc(const void *a, const void *b) /* by sort_key descending, ties by index */
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (sort_key[i] != sort_key[j])
        return sort_key[i] > sort_key[j] ? -1 : 1;
    return (i > j) - (i < j);
}

/* Batch-1 decode rate on ctx (a context of the model timed) with state s: steps tokens after
 * two warm-up steps, token k = toks[k % n]. 0 on failure. */
static double decode_rate(ym_ctx_t *ctx, ym_state_t *s, float *logits, const int32_t *toks,
                          size_t n, int steps)
{
    int st[2] = {0, 1};
    ym_state_t *ss[1] = {s};
    double t0 = 0;
    ym_state_reset(s);
    for (int k = 0; k < steps + 2; k++) {
        if (k == 2)
            t0 = cli_now();
        ym_batch b = {.n_seq = 1, .tokens = toks + (size_t)k % n, .seq_start = st, .states = ss,
                      .logits = YM_LOGITS_LAST};
        if (ym_forward(ctx, &b, logits, NULL) != YM_OK)
            return 0;
    }
    return steps / (cli_now() - t0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The q-quantile of v[0..n) sorted ascending, linear between neighbours. */
static double quantile(const double *v, int n, double q)
{
    double pos = q * (n - 1);
    int i = (int)pos;
    return i + 1 < n ? v[i] + (pos - i) * (v[i + 1] - v[i]) : v[n - 1];
}

/* One speed entry: a served model timed against the dense one. */
typedef struct speed {
    const char *name;
    ym_model_t *m;    /* borrowed */
    ym_ctx_t *ctx;    /* owned, one row */
    ym_state_t *st;   /* owned */
    double best;   /* best tok/s over the rounds */
    double ratio[256];
} speed;

static json_t *ppl_json(double nll_dense, double nll)
{
    json_t *o = json_object();
    json_object_set_new(o, "ppl", json_real(exp(nll)));
    json_object_set_new(o, "ppl_increase", json_real(exp(nll - nll_dense) - 1.0));
    return o;
}

static int total_of(const int *v, int n)
{
    int s = 0;
    for (int i = 0; i < n; i++)
        s += v[i];
    return s;
}

/* Spread `total` kept channels evenly over nl layers of di channels (the first `total % nl`
 * layers get one more): the uniform allocation at that sparsity. */
static void uniform_alloc(int total, int nl, int di, int *n_keep)
{
    for (int l = 0; l < nl; l++) {
        n_keep[l] = total / nl + (l < total % nl ? 1 : 0);
        if (n_keep[l] > di)
            n_keep[l] = di;
    }
}

int ym_cmd_prune(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"text", required_argument, NULL, 'x'},
        {"out", required_argument, NULL, 'o'},
        {"max-ppl-increase", required_argument, NULL, OPT_BUDGET},
        {"heldout", required_argument, NULL, OPT_HELDOUT},
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"eval-tokens", required_argument, NULL, OPT_EVAL_TOKENS},
        {"ctx", required_argument, NULL, OPT_CTX},
        {"block", required_argument, NULL, OPT_BLOCK},
        {"search", required_argument, NULL, OPT_SEARCH},
        {"max-evals", required_argument, NULL, OPT_MAX_EVALS},
        {"compare", required_argument, NULL, OPT_COMPARE},
        {"compare-out", required_argument, NULL, OPT_COMPARE_OUT},
        {"speed-steps", required_argument, NULL, OPT_SPEED_STEPS},
        {"speed-rounds", required_argument, NULL, OPT_SPEED_ROUNDS},
        {"starts", required_argument, NULL, OPT_STARTS},
        {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model_arg = NULL, *text_path = NULL, *out_path = NULL, *cmp_path = NULL;
    const char *tok_dir = NULL, *search = "lazy", *cmp_out = NULL;
    double budget = 0.05, heldout = 0.1;
    long n_tok_want = 2048, n_eval_max = 8192, ctx_len = 256, block = YM_SCAN_BLOCK;
    long max_evals = 2000, speed_steps = 200, speed_rounds = 30, n_starts = 8, n_threads = 0;
    int as_json = 0, c, bad = 0;
    optind = 1;
    opterr = 0;
    while (!bad && (c = getopt_long(argc, argv, ":m:x:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_arg = optarg; break;
        case 'x': text_path = optarg; break;
        case 'o': out_path = optarg; break;
        case OPT_BUDGET: {
            /* "5%" or a fraction. */
            char buf[64];
            size_t len = strlen(optarg);
            int pct = len > 0 && optarg[len - 1] == '%';
            if (len == 0 || len >= sizeof(buf))
                return cli_error(CLI_USAGE, "invalid value '%s' for --max-ppl-increase", optarg);
            memcpy(buf, optarg, len + 1);
            if (pct)
                buf[len - 1] = '\0';
            if (cli_parse_double("--max-ppl-increase", buf, &budget) != 0)
                return CLI_USAGE;
            if (pct)
                budget /= 100.0;
            if (!(budget >= 0 && budget <= 10))
                return cli_error(CLI_USAGE, "invalid value '%s' for --max-ppl-increase: must be "
                                            "in [0%%, 1000%%]", optarg);
            break;
        }
        case OPT_HELDOUT:
            if (cli_parse_double("--heldout", optarg, &heldout) != 0)
                return CLI_USAGE;
            if (!(heldout > 0 && heldout < 1))
                return cli_error(CLI_USAGE, "invalid value '%s' for --heldout: must be in (0, 1)",
                                 optarg);
            break;
        case OPT_TOKENS: bad = cli_parse_long("--tokens", optarg, 3, 1L << 20, &n_tok_want); break;
        case OPT_EVAL_TOKENS:
            bad = cli_parse_long("--eval-tokens", optarg, 2, 1L << 24, &n_eval_max);
            break;
        case OPT_CTX: bad = cli_parse_long("--ctx", optarg, 2, 1L << 16, &ctx_len); break;
        case OPT_BLOCK:
            bad = cli_parse_long("--block", optarg, YM_SCAN_BLOCK, 1L << 16, &block);
            if (!bad && block % YM_SCAN_BLOCK != 0)
                return cli_error(CLI_USAGE, "invalid value '%s' for --block: must be a multiple "
                                            "of %d", optarg, YM_SCAN_BLOCK);
            break;
        case OPT_SEARCH: search = optarg; break;
        case OPT_MAX_EVALS:
            bad = cli_parse_long("--max-evals", optarg, 1, 1L << 30, &max_evals);
            break;
        case OPT_COMPARE: cmp_path = optarg; break;
        case OPT_COMPARE_OUT: cmp_out = optarg; break;
        case OPT_SPEED_STEPS:
            bad = cli_parse_long("--speed-steps", optarg, 0, 1L << 24, &speed_steps);
            break;
        case OPT_SPEED_ROUNDS:
            bad = cli_parse_long("--speed-rounds", optarg, 1, 256, &speed_rounds);
            break;
        case OPT_STARTS: bad = cli_parse_long("--starts", optarg, 0, 1L << 20, &n_starts); break;
        case OPT_TOKENIZER: tok_dir = optarg; break;
        case OPT_THREADS: bad = cli_parse_long("--threads", optarg, 0, 1024, &n_threads); break;
        case OPT_JSON: as_json = 1; break;
        case 'h': usage(stdout); return CLI_OK;
        default: return cli_bad_option("prune", argv, c);
        }
    }
    if (bad)
        return CLI_USAGE;
    if (optind < argc)
        return cli_extra_arg("prune", argv[optind]);
    if (text_path == NULL)
        return cli_error(CLI_USAGE, "prune: --text is required");
    if (out_path == NULL)
        return cli_error(CLI_USAGE, "prune: --out is required");
    if (cmp_out != NULL && cmp_path == NULL)
        return cli_error(CLI_USAGE, "prune: --compare-out needs --compare");
    int lazy = strcmp(search, "lazy") == 0;
    if (!lazy && strcmp(search, "greedy") != 0)
        return cli_error(CLI_USAGE, "prune: --search must be greedy or lazy, not '%s'", search);

    const char *dir = cli_model_dir(model_arg);
    if (tok_dir == NULL && cli_is_synthetic(dir))
        return cli_error(CLI_USAGE, "prune: the synthetic model has no tokenizer: give "
                                    "--tokenizer DIR");
    double t_start = cli_now();
    ym_model_t *base = NULL, *pruned_m = NULL, *cmp_m = NULL, *cmp_search_m = NULL;
    ym_tok_t *tok = NULL;
    ym_sparsity *best = NULL, *cand = NULL, *written = NULL, *cmp = NULL, *tmp = NULL;
    ym_sparsity *cmp_search = NULL;
    ym_ctx_t *ctx = NULL;
    ym_state_t *state = NULL;
    char *text = NULL;
    size_t text_len = 0;
    ym_ids all_ids = {0}, score_ids = {0}, eval_ids = {0};
    size_t *held_win = NULL; /* owned [n_held]: the held-out window indices, ascending */
    evalset ev = {0};
    float *E = NULL, *ent = NULL;
    double *score = NULL, *X = NULL, *R = NULL, *cost = NULL, *lkey = NULL;
    int32_t *rank = NULL, *perm = NULL, *gidx = NULL;
    int *n_keep = NULL, *n_try = NULL, *n_keep_cmp = NULL, *fresh = NULL, *n_keep_budget = NULL;
    json_t *steps_j = json_array();
    ym_diag diag = {0};
    ym_err err;
    int rc;
    if ((rc = cli_load_model(dir, &base)) != 0)
        goto done;
    const ym_config *cfg = &base->cfg;
    if (cfg->arch != YM_ARCH_MAMBA1) {
        rc = cli_error(CLI_FAIL, "prune: channel sparsity is served for Mamba-1 models only, "
                                 "not %s", ym_arch_name(cfg->arch));
        goto done;
    }
    if ((rc = cli_load_tokenizer(tok_dir != NULL ? tok_dir : dir, &tok)) != 0)
        goto done;
    if ((rc = cli_read_file(text_path, &text, &text_len)) != 0)
        goto done;
    const int nl = cfg->n_layer, di = cfg->d_inner, N = cfg->d_state;
    if (di % block != 0) {
        rc = cli_error(CLI_USAGE, "prune: --block %ld does not divide the model's d_inner %d",
                       block, di);
        goto done;
    }

    /* ---- 1. the split: held-out windows spread evenly over the whole text ---- */
    if ((err = ym_tok_encode(tok, text, text_len, &all_ids)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "prune: tokenizing %s: %s", text_path, ym_strerror(err));
        goto done;
    }
    const size_t W = (size_t)ctx_len;
    /* Windows of W tokens; a last partial one is a window if it has >= 2 tokens (one token
     * alone cannot be scored and stays in the score part). */
    const size_t n_win = all_ids.n / W + (all_ids.n % W >= 2 ? 1 : 0);
    size_t n_held = cli_heldout_count(n_win, heldout);
    const size_t n_held_max = (size_t)n_eval_max / W > 0 ? (size_t)n_eval_max / W : 1;
    int eval_cut = n_held > n_held_max;
    if (eval_cut)
        n_held = n_held_max;
    if (n_win < 2 || n_held >= n_win) {
        rc = cli_error(CLI_FAIL, "prune: %s gives %zu tokens: too few for a held-out window and "
                                 "a score part (%zu windows of --ctx %ld tokens)",
                       text_path, all_ids.n, n_win, ctx_len);
        goto done;
    }
    held_win = malloc(sizeof(size_t) * n_held);
    if (held_win == NULL) {
        rc = cli_error(CLI_FAIL, "prune: out of memory");
        goto done;
    }
    cli_heldout_windows(n_win, n_held, held_win); /* spread from the start to the end */
    for (size_t w = 0, i = 0; w * W < all_ids.n; w++) {
        size_t lo = w * W, hi = lo + W < all_ids.n ? lo + W : all_ids.n;
        int held = i < n_held && held_win[i] == w;
        i += held;
        for (size_t j = lo; j < hi; j++)
            if ((err = ym_ids_push(held ? &eval_ids : &score_ids, all_ids.v[j])) != YM_OK) {
                rc = cli_error(CLI_FAIL, "prune: out of memory");
                goto done;
            }
    }
    const int T = score_ids.n < (size_t)n_tok_want ? (int)score_ids.n : (int)n_tok_want;
    /* The held-out windows, concatenated: each W tokens but possibly the last, so the evalset
     * cuts the concatenation into exactly these windows. */
    const size_t n_eval = eval_ids.n;
    if (T < 3) {
        rc = cli_error(CLI_FAIL, "prune: the score part of %s gives %d tokens, need at least 3",
                       text_path, T);
        goto done;
    }
    for (size_t i = 0; i < all_ids.n; i++) {
        int32_t id = all_ids.v[i];
        if (id < 0 || id >= cfg->n_vocab) {
            rc = cli_error(CLI_FAIL, "prune: token id %d outside the model's vocabulary", id);
            goto done;
        }
    }
    if (cmp_path != NULL) {
        if (ym_sparsity_load(cmp_path, &cmp, &diag) != YM_OK ||
            ym_sparsity_check(cmp, cfg, &diag) != YM_OK) {
            rc = cli_error(CLI_FAIL, "prune: --compare profile %s: %s", cmp_path, diag.msg);
            goto done;
        }
    }
    if ((err = evalset_init(&ev, cfg, eval_ids.v, n_eval, (int)ctx_len, (int)n_threads)) !=
        YM_OK) {
        rc = cli_error(CLI_FAIL, "prune: out of memory");
        goto done;
    }
    fprintf(stderr, "prune: %s: %d layers x %d channels; score part %d tokens, held-out %zu "
                    "tokens in %zu of the text's %zu windows%s\n",
            dir, nl, di, T, ev.n_scored, ev.n_windows, n_win,
            eval_cut ? " (fewer windows: --eval-tokens)" : "");

    /* ---- 2. scores from the dense run over the score part ---- */
    double t0 = cli_now();
    E = calloc((size_t)nl * di * T, sizeof(float)); /* [l][d][t] */
    ent = malloc(sizeof(float) * (size_t)di * N);
    score = calloc((size_t)nl * di, sizeof(double));
    rank = malloc(sizeof(int32_t) * (size_t)nl * di);
    n_keep = malloc(sizeof(int) * (size_t)nl);
    n_try = malloc(sizeof(int) * (size_t)nl);
    n_keep_cmp = malloc(sizeof(int) * (size_t)nl);
    cost = malloc(sizeof(double) * (size_t)nl);
    fresh = malloc(sizeof(int) * (size_t)nl);
    if (!E || !ent || !score || !rank || !n_keep || !n_try || !n_keep_cmp || !cost || !fresh ||
        !steps_j || ym_ctx_new(base, 1, (int)n_threads, &ctx) != YM_OK ||
        ym_state_new(cfg, &state) != YM_OK) {
        rc = cli_error(CLI_FAIL, "prune: out of memory");
        goto done;
    }
    for (int t = 0; t < T; t++) {
        int st[2] = {0, 1};
        ym_state_t *ss[1] = {state};
        ym_batch b = {.n_seq = 1, .tokens = score_ids.v + t, .seq_start = st, .states = ss,
                      .logits = YM_LOGITS_NONE};
        if ((err = ym_forward(ctx, &b, NULL, &diag)) != YM_OK) {
            rc = cli_error(CLI_FAIL, "prune: %s", diag.msg);
            goto done;
        }
        for (int l = 0; l < nl; l++) {
            ym_model_state_entries(base, l, ym_state_ssm(state, l), ent);
            for (int d = 0; d < di; d++) {
                double e = 0;
                for (int n = 0; n < N; n++)
                    e += (double)ent[(size_t)d * N + n] * ent[(size_t)d * N + n];
                E[((size_t)l * di + d) * T + t] = (float)e;
                score[(size_t)l * di + d] += e / T;
            }
        }
    }
    ym_ctx_free(ctx);
    ctx = NULL;
    for (int l = 0; l < nl; l++) {
        int32_t *r = rank + (size_t)l * di;
        for (int d = 0; d < di; d++)
            r[d] = d;
        sort_key = score + (size_t)l * di;
        qsort(r, (size_t)di, sizeof(int32_t), cmp_desc);
    }
    double t_scores = cli_now() - t0;
    double nll_dense = 0;
    if ((err = eval_nll(&ev, base, &nll_dense, &diag)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "prune: %s", diag.msg[0] ? diag.msg : ym_strerror(err));
        goto done;
    }
    const double nll_limit = nll_dense + log1p(budget);
    fprintf(stderr, "prune: scores in %.1f s; dense held-out ppl %.4f, budget %.4f (+%.2f%%)\n",
            t_scores, exp(nll_dense), exp(nll_limit), 100 * budget);

    /* ---- 3. the search ---- */
    t0 = cli_now();
    for (int l = 0; l < nl; l++) {
        n_keep[l] = di;
        fresh[l] = 0;
        /* -inf: every layer is measured before the first choice (lazy rule); a cost is the
         * increase of the held-out NLL that dropping the layer's next block caused when last
         * measured. */
        cost[l] = -INFINITY;
    }
    double nll_cur = nll_dense;
    int n_steps = 0, target_total = -1, cmp_total = -1;
    const char *stop = NULL, *stop_compare = NULL;
    int keep_at_budget_total = -1;
    n_keep_budget = malloc(sizeof(int) * (size_t)nl);
    if (n_keep_budget == NULL) {
        rc = cli_error(CLI_FAIL, "prune: out of memory");
        goto done;
    }
    memcpy(n_keep_budget, n_keep, sizeof(int) * (size_t)nl);
    if (cmp != NULL) {
        cmp_total = 0;
        for (int l = 0; l < nl; l++)
            cmp_total += cmp->layers[l].n_kept;
    }
    double nll_budget = nll_dense, nll_cmp_search = NAN;
    /* Phase 1 within the budget; phase 2 (only with --compare) goes on past it, ignoring the
     * budget, down to the compared profile's channel count. */
    for (int phase = 1; phase <= 2; phase++) {
        if (phase == 2) {
            if (cmp == NULL || cmp_total >= total_of(n_keep, nl) || stop == NULL ||
                strcmp(stop, "max-evals") == 0)
                break;
            target_total = cmp_total;
            for (int l = 0; l < nl; l++)
                fresh[l] = 0;
            fprintf(stderr, "prune: going on past the budget to the compared profile's %d "
                            "channels\n", cmp_total);
        }
        for (;;) {
            if (phase == 2 && total_of(n_keep, nl) <= target_total) {
                break;
            }
            int l_best = -1;
            double nll_best = INFINITY;
            int out_of_evals = 0;
            for (;;) {
                /* The layer to evaluate next: greedy = every layer not yet fresh this step;
                 * lazy = the one of lowest last-measured cost, if it is not fresh yet. */
                int l_eval = -1;
                if (!lazy) {
                    for (int l = 0; l < nl && l_eval < 0; l++)
                        if (!fresh[l] && n_keep[l] > 0)
                            l_eval = l;
                } else {
                    int l_min = -1;
                    for (int l = 0; l < nl; l++)
                        if (n_keep[l] > 0 && (l_min < 0 || cost[l] < cost[l_min]))
                            l_min = l;
                    if (l_min >= 0 && !fresh[l_min])
                        l_eval = l_min;
                }
                if (l_eval < 0)
                    break;
                if (ev.n_evals >= max_evals) {
                    out_of_evals = 1;
                    break;
                }
                memcpy(n_try, n_keep, sizeof(int) * (size_t)nl);
                n_try[l_eval] -= (int)block;
                double nll;
                if ((err = make_profile(cfg, rank, n_try, "prune", &cand, &diag)) != YM_OK ||
                    (err = eval_profile(&ev, base, cand, &nll, &diag)) != YM_OK) {
                    rc = cli_error(CLI_FAIL, "prune: %s", diag.msg[0] ? diag.msg : ym_strerror(err));
                    goto done;
                }
                ym_sparsity_free(cand);
                cand = NULL;
                cost[l_eval] = nll - nll_cur;
                fresh[l_eval] = 1;
            }
            if (out_of_evals) {
                if (phase == 1)
                    stop = "max-evals";
                else
                    stop_compare = "max-evals";
                break;
            }
            for (int l = 0; l < nl; l++)
                if (n_keep[l] > 0 && fresh[l] && cost[l] < (l_best < 0 ? INFINITY : cost[l_best]))
                    l_best = l;
            if (l_best < 0) {
                if (phase == 1)
                    stop = "all-dropped";
                break;
            }
            nll_best = nll_cur + cost[l_best];
            if (phase == 1 && nll_best > nll_limit) {
                stop = "budget";
                break;
            }
            n_keep[l_best] -= (int)block;
            nll_cur = nll_best;
            n_steps++;
            for (int l = 0; l < nl; l++)
                fresh[l] = 0;
            if (phase == 1) {
                memcpy(n_keep_budget, n_keep, sizeof(int) * (size_t)nl);
                nll_budget = nll_cur;
            }
            int tot = total_of(n_keep, nl);
            json_t *sj = json_object();
            json_object_set_new(sj, "layer", json_integer(l_best));
            json_object_set_new(sj, "kept", json_integer(n_keep[l_best]));
            json_object_set_new(sj, "sparsity", json_real(1.0 - (double)tot / ((double)nl * di)));
            json_object_set_new(sj, "ppl", json_real(exp(nll_cur)));
            json_object_set_new(sj, "evals", json_integer(ev.n_evals));
            json_object_set_new(sj, "within_budget", json_boolean(phase == 1));
            json_array_append_new(steps_j, sj);
            fprintf(stderr, "prune: step %d: layer %d -> %d kept; sparsity %.1f%%, ppl %.4f "
                            "(%+.2f%%); %d evals, %.1f s\n",
                    n_steps, l_best, n_keep[l_best], 100.0 * (1.0 - (double)tot / ((double)nl * di)),
                    exp(nll_cur), 100.0 * (exp(nll_cur - nll_dense) - 1.0), ev.n_evals,
                    cli_now() - t0);
        }
        if (phase == 1) {
            keep_at_budget_total = total_of(n_keep_budget, nl);
        } else if (total_of(n_keep, nl) <= target_total) {
            memcpy(n_keep_cmp, n_keep, sizeof(int) * (size_t)nl);
            nll_cmp_search = nll_cur;
        }
    }
    if (stop == NULL)
        stop = "budget";
    double t_search = cli_now() - t0;
    (void)nll_budget;

    /* ---- 4. the written profile: kept channels in correlation order ---- */
    t0 = cli_now();
    if ((err = make_profile(cfg, rank, n_keep_budget, "prune", &best, &diag)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "prune: %s", diag.msg);
        goto done;
    }
    X = malloc(sizeof(double) * (size_t)di * T);
    R = malloc(sizeof(double) * (size_t)di * di);
    perm = malloc(sizeof(int32_t) * (size_t)di);
    gidx = malloc(sizeof(int32_t) * (size_t)nl * di);
    lkey = malloc(sizeof(double) * (size_t)nl * di);
    if (!X || !R || !perm || !gidx || !lkey) {
        rc = cli_error(CLI_FAIL, "prune: out of memory");
        goto done;
    }
    for (int l = 0; l < nl; l++) {
        ym_sparsity_layer *L = &best->layers[l];
        const int nk = L->n_kept;
        /* L->kept lists the kept channels ascending (identity order). */
        for (int k = 0; k < nk; k++)
            for (int t = 0; t < T; t++)
                X[(size_t)k * T + t] = E[((size_t)l * di + L->kept[k]) * T + t];
        for (int k = 0; k < nk; k++)
            perm[k] = k;
        if (nk > 1 && ((err = ym_order_abs_corr(X, nk, T, R)) != YM_OK ||
                       (err = ym_order_derive(R, nk, n_starts == 0 ? nk : (int)n_starts, 0,
                                              perm)) != YM_OK)) {
            rc = cli_error(CLI_FAIL, "prune: out of memory");
            goto done;
        }
        int32_t *kept_copy = gidx; /* scratch: the kept list before scan_order is rewritten */
        memcpy(kept_copy, L->kept, sizeof(int32_t) * (size_t)nk);
        int k = 0;
        for (; k < nk; k++)
            L->scan_order[k] = kept_copy[perm[k]];
        for (int d = 0; d < di; d++)
            if (!(L->channel_logits[d] > 0))
                L->scan_order[k++] = d;
    }
    if ((err = ym_sparsity_finish(best, &diag)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "prune: %s", diag.msg);
        goto done;
    }
    char budget_s[32], tok_s[32], heldout_s[32], block_s[32];
    snprintf(budget_s, sizeof(budget_s), "%.6g", budget);
    snprintf(tok_s, sizeof(tok_s), "%d", T);
    snprintf(heldout_s, sizeof(heldout_s), "%.6g", heldout);
    snprintf(block_s, sizeof(block_s), "%ld", block);
    ym_st_meta extra[6] = {
        {(char *)"order", (char *)"correlation-nn"},
        {(char *)"calibration_tokens", tok_s},
        {(char *)"masks_from", (char *)"prune-search"},
        {(char *)"max_ppl_increase", budget_s},
        {(char *)"heldout_fraction", heldout_s},
        {(char *)"block", block_s},
    };
    snprintf(best->method, sizeof(best->method), "prune-%s", lazy ? "lazy" : "greedy");
    if ((err = ym_sparsity_save(best, out_path, extra, 6, &diag)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "prune: %s", diag.msg);
        goto done;
    }
    /* What is served is the file: load it back and measure that. */
    double nll_written = 0;
    if ((err = ym_sparsity_load(out_path, &written, &diag)) != YM_OK ||
        (err = ym_model_new_sparse(base, written, &pruned_m, &diag)) != YM_OK ||
        (err = eval_nll(&ev, pruned_m, &nll_written, &diag)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "prune: the written profile: %s", diag.msg);
        goto done;
    }
    double t_order = cli_now() - t0;

    /* ---- comparisons at the same sparsity ---- */
    const int found_total = keep_at_budget_total;
    double nll_uniform = NAN, nll_cmp = NAN, nll_cmp_re = NAN, nll_uniform_cmp = NAN;
    uniform_alloc(found_total, nl, di, n_try);
    if ((err = make_profile(cfg, rank, n_try, "uniform", &tmp, &diag)) != YM_OK ||
        (err = eval_profile(&ev, base, tmp, &nll_uniform, &diag)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "prune: %s", diag.msg);
        goto done;
    }
    ym_sparsity_free(tmp);
    tmp = NULL;
    if (cmp != NULL) {
        if ((err = ym_model_new_sparse(base, cmp, &cmp_m, &diag)) != YM_OK ||
            (err = eval_nll(&ev, cmp_m, &nll_cmp, &diag)) != YM_OK) {
            rc = cli_error(CLI_FAIL, "prune: --compare: %s", diag.msg);
            goto done;
        }
        /* The learned logits re-thresholded globally (one threshold for the whole model, as
         * they were trained) to keep as many channels as the found profile. */
        for (int l = 0; l < nl; l++)
            for (int d = 0; d < di; d++) {
                gidx[(size_t)l * di + d] = l * di + d;
                lkey[(size_t)l * di + d] = cmp->layers[l].channel_logits[d];
            }
        sort_key = lkey;
        qsort(gidx, (size_t)nl * di, sizeof(int32_t), cmp_desc);
        int32_t *rk = malloc(sizeof(int32_t) * (size_t)nl * di);
        if (rk == NULL) {
            rc = cli_error(CLI_FAIL, "prune: out of memory");
            goto done;
        }
        for (int l = 0; l < nl; l++)
            n_try[l] = 0;
        for (int k = 0; k < found_total; k++) {
            int l = gidx[k] / di;
            rk[(size_t)l * di + n_try[l]++] = gidx[k] % di;
        }
        err = make_profile(cfg, rk, n_try, "learned-rethresholded", &tmp, &diag);
        free(rk);
        if (err != YM_OK || (err = eval_profile(&ev, base, tmp, &nll_cmp_re, &diag)) != YM_OK) {
            rc = cli_error(CLI_FAIL, "prune: %s", diag.msg);
            goto done;
        }
        ym_sparsity_free(tmp);
        tmp = NULL;
        uniform_alloc(cmp_total, nl, di, n_try);
        if ((err = make_profile(cfg, rank, n_try, "uniform", &tmp, &diag)) != YM_OK ||
            (err = eval_profile(&ev, base, tmp, &nll_uniform_cmp, &diag)) != YM_OK) {
            rc = cli_error(CLI_FAIL, "prune: %s", diag.msg);
            goto done;
        }
        ym_sparsity_free(tmp);
        tmp = NULL;
        if (!isnan(nll_cmp_search)) {
            extra[0].value = (char *)"identity"; /* this one is not reordered */
            extra[2].value = (char *)"prune-search-past-budget";
            if ((err = make_profile(cfg, rank, n_keep_cmp, "prune", &cmp_search, &diag)) != YM_OK ||
                (err = ym_model_new_sparse(base, cmp_search, &cmp_search_m, &diag)) != YM_OK ||
                (cmp_out != NULL &&
                 (err = ym_sparsity_save(cmp_search, cmp_out, extra, 6, &diag)) != YM_OK)) {
                rc = cli_error(CLI_FAIL, "prune: %s", diag.msg);
                goto done;
            }
        }
    }

    /* ---- 5. decode speed, interleaved with the dense model ---- */
    t0 = cli_now();
    speed sp[4];
    int n_sp = 0;
    memset(sp, 0, sizeof(sp));
    sp[n_sp++] = (speed){.name = "dense", .m = base};
    sp[n_sp++] = (speed){.name = "pruned", .m = pruned_m};
    if (cmp_m != NULL)
        sp[n_sp++] = (speed){.name = "compare", .m = cmp_m};
    if (cmp_search_m != NULL)
        sp[n_sp++] = (speed){.name = "searched_at_compare", .m = cmp_search_m};
    float *dec_logits = malloc(sizeof(float) * (size_t)cfg->n_vocab);
    int speed_ok = dec_logits != NULL;
    for (int i = 0; i < n_sp && speed_steps > 0; i++)
        if (ym_ctx_new(sp[i].m, 1, (int)n_threads, &sp[i].ctx) != YM_OK ||
            ym_state_new(cfg, &sp[i].st) != YM_OK)
            speed_ok = 0;
    for (int r = 0; r < speed_rounds && speed_steps > 0 && speed_ok; r++) {
        double rate[4] = {0};
        for (int i = 0; i < n_sp; i++) {
            rate[i] = decode_rate(sp[i].ctx, sp[i].st, dec_logits, score_ids.v, (size_t)T,
                                  (int)speed_steps);
            if (rate[i] > sp[i].best)
                sp[i].best = rate[i];
        }
        for (int i = 1; i < n_sp; i++)
            sp[i].ratio[r] = rate[0] > 0 ? rate[i] / rate[0] : 0;
        fprintf(stderr, "prune: speed round %d: dense %.1f tok/s, pruned %.1f tok/s (x%.3f)\n",
                r + 1, rate[0], rate[1], sp[1].ratio[r]);
    }
    for (int i = 0; i < n_sp; i++) {
        ym_ctx_free(sp[i].ctx);
        ym_state_free(sp[i].st);
    }
    free(dec_logits);
    if (!speed_ok) {
        rc = cli_error(CLI_FAIL, "prune: out of memory");
        goto done;
    }
    double t_speed = cli_now() - t0;
    double t_total = cli_now() - t_start;

    /* ---- report ---- */
    const int all = nl * di;
    json_t *o = json_object(), *jl = json_array();
    json_object_set_new(o, "model", json_string(dir));
    json_object_set_new(o, "text", json_string(text_path));
    json_object_set_new(o, "out", json_string(out_path));
    json_object_set_new(o, "method", json_string(best->method));
    json_object_set_new(o, "max_ppl_increase", json_real(budget));
    json_object_set_new(o, "block", json_integer(block));
    json_object_set_new(o, "score_tokens", json_integer(T));
    json_object_set_new(o, "heldout_fraction", json_real(heldout));
    json_object_set_new(o, "heldout_tokens_scored", json_integer((json_int_t)ev.n_scored));
    json_object_set_new(o, "heldout_cut", json_boolean(eval_cut));
    json_object_set_new(o, "text_tokens", json_integer((json_int_t)all_ids.n));
    json_object_set_new(o, "score_part_tokens", json_integer((json_int_t)score_ids.n));
    json_object_set_new(o, "windows", json_integer((json_int_t)n_win));
    json_t *hw = json_array();
    for (size_t i = 0; hw != NULL && i < n_held; i++)
        json_array_append_new(hw, json_integer((json_int_t)held_win[i]));
    json_object_set_new(o, "heldout_windows", hw);
    json_object_set_new(o, "ctx", json_integer(ctx_len));
    json_object_set_new(o, "evals", json_integer(ev.n_evals));
    json_object_set_new(o, "steps", json_integer(n_steps));
    json_object_set_new(o, "stop", json_string(stop));
    for (int l = 0; l < nl; l++)
        json_array_append_new(jl, json_integer(written->layers[l].n_kept));
    json_object_set_new(o, "layers_kept", jl);
    json_object_set_new(o, "channels_kept", json_integer(found_total));
    json_object_set_new(o, "channels_total", json_integer(all));
    json_object_set_new(o, "sparsity", json_real(1.0 - (double)found_total / all));
    json_object_set_new(o, "ppl_dense", json_real(exp(nll_dense)));
    json_object_set_new(o, "ppl_pruned", json_real(exp(nll_written)));
    json_object_set_new(o, "ppl_increase", json_real(exp(nll_written - nll_dense) - 1.0));
    json_object_set_new(o, "within_budget", json_boolean(nll_written <= nll_limit));
    json_object_set_new(o, "weight_bytes_ratio",
                        json_real((double)base->weight_bytes / (double)pruned_m->weight_bytes));
    json_t *ju = ppl_json(nll_dense, nll_uniform);
    json_object_set_new(ju, "sparsity", json_real(1.0 - (double)found_total / all));
    json_object_set_new(o, "uniform", ju);
    json_t *js = json_object();
    double med[4] = {0}, q1[4] = {0}, q3[4] = {0};
    for (int i = 1; i < n_sp && speed_steps > 0; i++) {
        double tmpd[256];
        memcpy(tmpd, sp[i].ratio, sizeof(double) * (size_t)speed_rounds);
        qsort(tmpd, (size_t)speed_rounds, sizeof(double), cmp_double);
        med[i] = quantile(tmpd, (int)speed_rounds, 0.5);
        q1[i] = quantile(tmpd, (int)speed_rounds, 0.25);
        q3[i] = quantile(tmpd, (int)speed_rounds, 0.75);
    }
    if (speed_steps > 0) {
        json_object_set_new(js, "steps", json_integer(speed_steps));
        json_object_set_new(js, "rounds", json_integer(speed_rounds));
        for (int i = 0; i < n_sp; i++) {
            json_t *e = json_object();
            json_object_set_new(e, "best_tok_s", json_real(sp[i].best));
            if (i > 0) {
                json_object_set_new(e, "speedup_best", json_real(sp[i].best / sp[0].best));
                json_object_set_new(e, "speedup_median", json_real(med[i]));
                json_object_set_new(e, "speedup_q1", json_real(q1[i]));
                json_object_set_new(e, "speedup_q3", json_real(q3[i]));
            }
            json_object_set_new(js, sp[i].name, e);
        }
    }
    json_object_set_new(o, "decode_batch1", js);
    if (cmp != NULL) {
        json_t *jc = json_object(), *jf = json_object(), *jp;
        json_object_set_new(jc, "profile", json_string(cmp_path));
        json_object_set_new(jc, "method", json_string(cmp->method));
        json_object_set_new(jc, "channels_kept", json_integer(cmp_total));
        json_object_set_new(jc, "sparsity", json_real(1.0 - (double)cmp_total / all));
        json_object_set_new(jc, "learned", ppl_json(nll_dense, nll_cmp));
        if (!isnan(nll_cmp_search)) {
            jp = ppl_json(nll_dense, nll_cmp_search);
            json_object_set_new(jp, "channels_kept", json_integer(total_of(n_keep_cmp, nl)));
            json_t *jk = json_array();
            for (int l = 0; l < nl; l++)
                json_array_append_new(jk, json_integer(n_keep_cmp[l]));
            json_object_set_new(jp, "layers_kept", jk);
            json_object_set_new(jc, "searched", jp);
        } else {
            json_object_set_new(jc, "searched", json_null());
        }
        json_object_set_new(jc, "uniform", ppl_json(nll_dense, nll_uniform_cmp));
        json_object_set_new(jc, "search_stopped",
                            json_string(stop_compare != NULL ? stop_compare : "reached"));
        json_t *jk = json_array();
        for (int l = 0; l < nl; l++)
            json_array_append_new(jk, json_integer(cmp->layers[l].n_kept));
        json_object_set_new(jc, "learned_layers_kept", jk);
        json_object_set_new(o, "compare_at_its_sparsity", jc);
        json_object_set_new(jf, "sparsity", json_real(1.0 - (double)found_total / all));
        json_object_set_new(jf, "learned_rethresholded", ppl_json(nll_dense, nll_cmp_re));
        json_object_set_new(o, "compare_at_found_sparsity", jf);
    }
    json_t *jt = json_object();
    json_object_set_new(jt, "scores", json_real(t_scores));
    json_object_set_new(jt, "search", json_real(t_search));
    json_object_set_new(jt, "order_and_check", json_real(t_order));
    json_object_set_new(jt, "speed", json_real(t_speed));
    json_object_set_new(jt, "total", json_real(t_total));
    json_object_set_new(o, "seconds", jt);
    json_object_set_new(o, "search_steps", steps_j);
    steps_j = NULL;
    if (as_json) {
        char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
        if (s != NULL)
            puts(s);
        free(s);
    } else {
        printf("prune: %s -> %s (%s search, %d evals, %d steps, stopped: %s, %.1f s)\n", dir,
               out_path, lazy ? "lazy" : "greedy", ev.n_evals, n_steps, stop, t_total);
        printf("channels kept per layer:");
        for (int l = 0; l < nl; l++)
            printf(" %d", written->layers[l].n_kept);
        printf("  (of %d)\n", di);
        printf("sparsity %.2f%%: held-out ppl dense %.4f, pruned %.4f (%+.2f%%, budget %+.2f%%)\n",
               100.0 * (1.0 - (double)found_total / all), exp(nll_dense), exp(nll_written),
               100.0 * (exp(nll_written - nll_dense) - 1.0), 100.0 * budget);
        printf("uniform allocation at the same sparsity: ppl %.4f (%+.2f%%)\n", exp(nll_uniform),
               100.0 * (exp(nll_uniform - nll_dense) - 1.0));
        if (cmp != NULL) {
            printf("learned %s re-thresholded to that sparsity: ppl %.4f (%+.2f%%)\n", cmp_path,
                   exp(nll_cmp_re), 100.0 * (exp(nll_cmp_re - nll_dense) - 1.0));
            printf("at the learned profile's sparsity %.2f%%: learned ppl %.4f, uniform %.4f, ",
                   100.0 * (1.0 - (double)cmp_total / all), exp(nll_cmp), exp(nll_uniform_cmp));
            if (isnan(nll_cmp_search))
                printf("searched: not reached (%s)\n",
                       stop_compare != NULL ? "--max-evals" : "the search stopped first");
            else
                printf("searched %.4f\n", exp(nll_cmp_search));
        }
        if (speed_steps > 0)
            for (int i = 1; i < n_sp; i++)
                printf("decode batch 1, %s: x%.3f median of %ld rounds (quartiles %.3f-%.3f); "
                       "best %.1f tok/s against dense %.1f (x%.3f)\n",
                       sp[i].name, med[i], speed_rounds, q1[i], q3[i], sp[i].best, sp[0].best,
                       sp[i].best / sp[0].best);
    }
    json_decref(o);
    if (fflush(stdout) != 0)
        rc = cli_error(CLI_FAIL, "prune: cannot write the output");
done:
    json_decref(steps_j);
    free(n_keep_budget);
    free(E);
    free(ent);
    free(score);
    free(X);
    free(R);
    free(cost);
    free(lkey);
    free(rank);
    free(perm);
    free(gidx);
    free(n_keep);
    free(n_try);
    free(n_keep_cmp);
    free(fresh);
    free(text);
    evalset_deinit(&ev);
    ym_ids_deinit(&all_ids);
    ym_ids_deinit(&score_ids);
    ym_ids_deinit(&eval_ids);
    free(held_win);
    ym_state_free(state);
    ym_ctx_free(ctx);
    ym_sparsity_free(best);
    ym_sparsity_free(cand);
    ym_sparsity_free(written);
    ym_sparsity_free(cmp);
    ym_sparsity_free(tmp);
    ym_sparsity_free(cmp_search);
    ym_tok_free(tok);
    ym_model_unref(pruned_m);
    ym_model_unref(cmp_m);
    ym_model_unref(cmp_search_m);
    ym_model_unref(base);
    return rc;
}

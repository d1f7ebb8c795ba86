/* tools/cmd_calibrate.c - `yunmin calibrate`: derive the correlation scan order of a sparsity
 * profile from calibration text (docs/ARCHITECTURE.md §4), and write baseline masks.
 *
 * Steps: run the text token by token (through the model served under --sparsity IN when
 * given, else the dense model); after each token read every layer's SSM state and record each
 * channel's state energy e[d, t] = sum_n s[d, n]^2 and each entry's |s[d, n]|; choose the masks
 * (IN's, all kept, or a magnitude / random baseline at the requested sparsity); per layer build
 * the |Pearson| correlation matrix of the kept channels' energy series and take the nearest-
 * neighbour Hamiltonian path (best of --starts start channels, optionally 2-opt improved,
 * engine/order.c); report path cost and block fill for identity, a seeded random order and the
 * derived order; write the profile with the derived order (kept channels in path order, then
 * the dropped ones in index order - their place does not matter, they are not served).
 * CLI thread plus the engine's pool. */
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
#include "tools/cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: yunmin calibrate [--model DIR] --text FILE --out FILE [options]\n"
            "  --tokens N                calibration tokens from the start of the text (256)\n"
            "  --sparsity IN             take the masks of this profile, run the model under it\n"
            "  --baseline magnitude|random  write baseline masks instead (from the dense run)\n"
            "  --channel-sparsity F      baseline: fraction of channels dropped per layer (0)\n"
            "  --state-sparsity F        baseline: fraction of kept state entries dropped (0)\n"
            "  --order correlation|identity|mask  the order written (correlation; mask: a path\n"
            "                            over the state masks' similarity, for comparison)\n"
            "  --two-opt                 improve the nearest-neighbour path with 2-opt\n"
            "  --starts K                start channels tried for the path (8; 0 = all)\n"
            "  --seed S                  random order and random baseline seed (1)\n"
            "  --tokenizer DIR           tokenizer.json from DIR (default: the model's)\n"
            "  --threads N               engine threads\n"
            "  --json                    the report as JSON on stdout (else a table)\n"
            "Magnitude baseline: channels ranked by mean state energy, entries by mean |s|,\n"
            "both over the calibration run; the lowest are dropped, per layer.\n");
}

enum {
    OPT_TOKENS = 256,
    OPT_BASELINE,
    OPT_CH_SP,
    OPT_ST_SP,
    OPT_ORDER,
    OPT_TWO_OPT,
    OPT_STARTS,
    OPT_SEED,
    OPT_TOKENIZER,
    OPT_THREADS,
    OPT_JSON,
};

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void shuffle(int32_t *p, int n, uint64_t *s)
{
    for (int k = n - 1; k > 0; k--) {
        int j = (int)(rng_next(s) % (uint64_t)(k + 1));
        int32_t t = p[k];
        p[k] = p[j];
        p[j] = t;
    }
}

/* Indices [0, n) sorted by score ascending (ties by index): the first ones are dropped. */
static const double *sort_score;
static int cmp_score(const void *a, const void *b)
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (sort_score[i] != sort_score[j])
        return sort_score[i] < sort_score[j] ? -1 : 1;
    return (i > j) - (i < j);
}

typedef struct layer_report {
    int n_kept;
    double cost[4];  /* identity, random, derived (correlation), mask similarity */
    double fill[4];
    int64_t lanes[4];
    int64_t live;
} layer_report;

int ym_cmd_calibrate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"text", required_argument, NULL, 'x'},
        {"out", required_argument, NULL, 'o'},
        {"sparsity", required_argument, NULL, 's'},
        {"tokens", required_argument, NULL, OPT_TOKENS},
        {"baseline", required_argument, NULL, OPT_BASELINE},
        {"channel-sparsity", required_argument, NULL, OPT_CH_SP},
        {"state-sparsity", required_argument, NULL, OPT_ST_SP},
        {"order", required_argument, NULL, OPT_ORDER},
        {"two-opt", no_argument, NULL, OPT_TWO_OPT},
        {"starts", required_argument, NULL, OPT_STARTS},
        {"seed", required_argument, NULL, OPT_SEED},
        {"tokenizer", required_argument, NULL, OPT_TOKENIZER},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model_arg = NULL, *text_path = NULL, *out_path = NULL, *in_path = NULL;
    const char *baseline = NULL, *order_arg = "correlation", *tok_dir = NULL;
    long n_tok_want = 256, n_threads = 0, n_starts = 8;
    double ch_sp = 0, st_sp = 0;
    uint64_t seed = 1;
    int two_opt = 0, as_json = 0, have_ch = 0, have_st = 0, c, bad = 0;
    optind = 1;
    opterr = 0;
    while (!bad && (c = getopt_long(argc, argv, ":m:x:o:s:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_arg = optarg; break;
        case 'x': text_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 's': in_path = optarg; break;
        case OPT_TOKENS: bad = cli_parse_long("--tokens", optarg, 3, 1L << 20, &n_tok_want); break;
        case OPT_BASELINE: baseline = optarg; break;
        case OPT_CH_SP: bad = cli_parse_double("--channel-sparsity", optarg, &ch_sp); have_ch = 1; break;
        case OPT_ST_SP: bad = cli_parse_double("--state-sparsity", optarg, &st_sp); have_st = 1; break;
        case OPT_ORDER: order_arg = optarg; break;
        case OPT_TWO_OPT: two_opt = 1; break;
        case OPT_STARTS: bad = cli_parse_long("--starts", optarg, 0, 1L << 20, &n_starts); break;
        case OPT_SEED: bad = cli_parse_u64("--seed", optarg, &seed); break;
        case OPT_TOKENIZER: tok_dir = optarg; break;
        case OPT_THREADS: bad = cli_parse_long("--threads", optarg, 0, 1024, &n_threads); break;
        case OPT_JSON: as_json = 1; break;
        case 'h': usage(stdout); return CLI_OK;
        default: return cli_bad_option("calibrate", argv, c);
        }
    }
    if (bad)
        return CLI_USAGE;
    if (optind < argc)
        return cli_extra_arg("calibrate", argv[optind]);
    if (text_path == NULL)
        return cli_error(CLI_USAGE, "calibrate: --text is required");
    if (out_path == NULL)
        return cli_error(CLI_USAGE, "calibrate: --out is required");
    if (baseline != NULL && strcmp(baseline, "magnitude") != 0 && strcmp(baseline, "random") != 0)
        return cli_error(CLI_USAGE, "calibrate: --baseline must be magnitude or random, not '%s'",
                         baseline);
    if (baseline != NULL && in_path != NULL)
        return cli_error(CLI_USAGE, "calibrate: --baseline and --sparsity exclude each other");
    if (baseline == NULL && (have_ch || have_st))
        return cli_error(CLI_USAGE, "calibrate: --channel-sparsity and --state-sparsity need "
                                    "--baseline");
    if (ch_sp < 0 || ch_sp > 1 || st_sp < 0 || st_sp > 1)
        return cli_error(CLI_USAGE, "calibrate: sparsity fractions must be in [0, 1]");
    int identity_order = strcmp(order_arg, "identity") == 0;
    int mask_order = strcmp(order_arg, "mask") == 0;
    if (!identity_order && !mask_order && strcmp(order_arg, "correlation") != 0)
        return cli_error(CLI_USAGE, "calibrate: --order must be correlation, identity or mask, "
                                    "not '%s'",
                         order_arg);

    const char *dir = cli_model_dir(model_arg);
    if (tok_dir == NULL && cli_is_synthetic(dir))
        return cli_error(CLI_USAGE, "calibrate: the synthetic model has no tokenizer: give "
                                    "--tokenizer DIR");
    ym_model_t *base = NULL, *run_m = NULL;
    ym_tok_t *tok = NULL;
    ym_sparsity *in = NULL, *out = NULL;
    ym_ctx_t *ctx = NULL;
    ym_state_t *state = NULL;
    char *text = NULL;
    size_t text_len = 0;
    ym_ids ids = {0};
    float *E = NULL, *ent = NULL;
    double *absS = NULL, *X = NULL, *R = NULL, *score = NULL;
    int32_t *perm = NULL, *idx = NULL, *kept = NULL, *perm_c = NULL, *perm_m = NULL;
    double *RM = NULL;
    uint8_t *live = NULL;
    layer_report *rep = NULL;
    ym_diag diag = {0};
    ym_err err;
    int rc;
    if ((rc = cli_load_model(dir, &base)) != 0)
        goto done;
    if ((rc = cli_load_tokenizer(tok_dir != NULL ? tok_dir : dir, &tok)) != 0)
        goto done;
    if ((rc = cli_read_file(text_path, &text, &text_len)) != 0)
        goto done;
    if ((err = ym_tok_encode(tok, text, text_len, &ids)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "calibrate: %s", ym_strerror(err));
        goto done;
    }
    const ym_config *cfg = &base->cfg;
    const int nl = cfg->n_layer, di = cfg->d_inner, N = cfg->d_state;
    const int T = ids.n < (size_t)n_tok_want ? (int)ids.n : (int)n_tok_want;
    if (T < 3) {
        rc = cli_error(CLI_FAIL, "calibrate: %s gives %d tokens, need at least 3", text_path, T);
        goto done;
    }
    for (int t = 0; t < T; t++)
        if (ids.v[t] < 0 || ids.v[t] >= cfg->n_vocab) {
            rc = cli_error(CLI_FAIL, "calibrate: token id %d outside the model's vocabulary",
                           ids.v[t]);
            goto done;
        }
    if (in_path != NULL) {
        if ((err = ym_sparsity_load(in_path, &in, &diag)) != YM_OK ||
            (err = ym_sparsity_check(in, cfg, &diag)) != YM_OK) {
            rc = cli_error(CLI_FAIL, "calibrate: sparsity profile %s: %s", in_path, diag.msg);
            goto done;
        }
        if (in->kind != YM_SPARSITY_CHANNELS) {
            rc = cli_error(CLI_FAIL, "calibrate: %s is a head profile (Mamba-2); calibrate "
                           "orders Mamba-1 channels", in_path);
            goto done;
        }
        if ((err = ym_model_new_sparse(base, in, &run_m, &diag)) != YM_OK) {
            rc = cli_error(CLI_FAIL, "calibrate: %s", diag.msg);
            goto done;
        }
    } else {
        run_m = ym_model_ref(base);
    }

    /* ---- the calibration run ---- */
    E = calloc((size_t)nl * di * T, sizeof(float)); /* [l][d][t], original channel d */
    absS = calloc((size_t)nl * di * N, sizeof(double));
    ent = malloc(sizeof(float) * (size_t)di * N);
    if (E == NULL || absS == NULL || ent == NULL ||
        ym_ctx_new(run_m, 1, (int)n_threads, &ctx) != YM_OK ||
        ym_state_new(cfg, &state) != YM_OK) {
        rc = cli_error(CLI_FAIL, "calibrate: out of memory");
        goto done;
    }
    double t0 = cli_now();
    for (int t = 0; t < T; t++) {
        int st[2] = {0, 1};
        ym_state_t *ss[1] = {state};
        ym_batch b = {.n_seq = 1, .tokens = ids.v + t, .seq_start = st, .states = ss,
                      .logits = YM_LOGITS_NONE};
        if ((err = ym_forward(ctx, &b, NULL, &diag)) != YM_OK) {
            rc = cli_error(CLI_FAIL, "calibrate: %s", diag.msg);
            goto done;
        }
        for (int l = 0; l < nl; l++) {
            const int np = run_m->layers[l].d_inner;
            ym_model_state_entries(run_m, l, ym_state_ssm(state, l), ent);
            for (int p = 0; p < np; p++) {
                int d = in != NULL ? in->layers[l].kept[p] : p;
                double e = 0;
                for (int n = 0; n < N; n++) {
                    double v = ent[(size_t)p * N + n];
                    e += v * v;
                    absS[((size_t)l * di + d) * N + n] += fabs(v);
                }
                E[((size_t)l * di + d) * T + t] = (float)e;
            }
        }
    }
    double t_run = cli_now() - t0;

    /* ---- masks ---- */
    const char *method = in != NULL ? in->method : baseline != NULL ? baseline : "dense";
    if ((err = ym_sparsity_new(nl, di, N, method, &out)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "calibrate: out of memory");
        goto done;
    }
    score = malloc(sizeof(double) * (size_t)di * N);
    idx = malloc(sizeof(int32_t) * (size_t)di * N);
    kept = malloc(sizeof(int32_t) * (size_t)di);
    perm = malloc(sizeof(int32_t) * (size_t)di);
    X = malloc(sizeof(double) * (size_t)di * T);
    R = malloc(sizeof(double) * (size_t)di * di);
    RM = malloc(sizeof(double) * (size_t)di * di);
    perm_c = malloc(sizeof(int32_t) * (size_t)di);
    perm_m = malloc(sizeof(int32_t) * (size_t)di);
    live = malloc((size_t)di * N);
    rep = calloc((size_t)nl, sizeof(*rep));
    if (!score || !idx || !kept || !perm || !X || !R || !RM || !perm_c || !perm_m || !live ||
        !rep) {
        rc = cli_error(CLI_FAIL, "calibrate: out of memory");
        goto done;
    }
    uint64_t mask_rng = seed ^ 0x5851f42d4c957f2dull;
    for (int l = 0; l < nl; l++) {
        ym_sparsity_layer *O = &out->layers[l];
        if (in != NULL) {
            memcpy(O->channel_logits, in->layers[l].channel_logits, sizeof(float) * di);
            memcpy(O->state_logits, in->layers[l].state_logits, sizeof(float) * di * N);
            continue;
        }
        if (baseline == NULL)
            continue; /* all kept */
        int n_drop = (int)lround(ch_sp * di);
        for (int d = 0; d < di; d++) {
            idx[d] = d;
            double s = 0;
            for (int t = 0; t < T; t++)
                s += E[((size_t)l * di + d) * T + t];
            score[d] = s / T;
        }
        if (baseline[0] == 'r') {
            shuffle(idx, di, &mask_rng);
        } else {
            sort_score = score;
            qsort(idx, (size_t)di, sizeof(int32_t), cmp_score);
        }
        for (int k = 0; k < n_drop; k++)
            O->channel_logits[idx[k]] = -1.0f;
        /* Entries of kept channels: the requested fraction of them dropped. */
        int m = 0;
        for (int d = 0; d < di; d++)
            if (O->channel_logits[d] > 0)
                for (int n = 0; n < N; n++) {
                    idx[m] = d * N + n;
                    score[d * N + n] = absS[((size_t)l * di + d) * N + n] / T;
                    m++;
                }
        int n_sdrop = (int)lround(st_sp * m);
        if (baseline[0] == 'r') {
            shuffle(idx, m, &mask_rng);
        } else {
            sort_score = score;
            qsort(idx, (size_t)m, sizeof(int32_t), cmp_score);
        }
        for (int k = 0; k < n_sdrop; k++)
            O->state_logits[idx[k]] = -1.0f;
    }

    /* ---- orders ---- */
    uint64_t order_rng = seed;
    for (int l = 0; l < nl; l++) {
        ym_sparsity_layer *O = &out->layers[l];
        int nk = 0;
        for (int d = 0; d < di; d++)
            if (O->channel_logits[d] > 0)
                kept[nk++] = d;
        for (int k = 0; k < nk; k++) {
            for (int t = 0; t < T; t++)
                X[(size_t)k * T + t] = E[((size_t)l * di + kept[k]) * T + t];
            for (int n = 0; n < N; n++)
                live[(size_t)k * N + n] = O->state_logits[(size_t)kept[k] * N + n] > 0;
        }
        if ((err = ym_order_abs_corr(X, nk, T, R)) != YM_OK) {
            rc = cli_error(CLI_FAIL, "calibrate: out of memory");
            goto done;
        }
        /* The mask-similarity path: a comparison (what fill an order can reach under this
         * state mask), not the seed's order. */
        ym_order_mask_similarity(live, nk, N, RM);
        layer_report *r = &rep[l];
        r->n_kept = nk;
        int starts = n_starts == 0 ? nk : (int)n_starts;
        for (int which = 0; which < 4; which++) {
            int32_t *p = which == 2 ? perm_c : which == 3 ? perm_m : perm;
            for (int k = 0; k < nk; k++)
                p[k] = k;
            if (which == 1)
                shuffle(p, nk, &order_rng);
            if ((which == 2 && ym_order_derive(R, nk, starts, two_opt, p) != YM_OK) ||
                (which == 3 && ym_order_derive(RM, nk, starts, two_opt, p) != YM_OK)) {
                rc = cli_error(CLI_FAIL, "calibrate: out of memory");
                goto done;
            }
            r->cost[which] = ym_order_path_cost(R, nk, p, nk);
            r->fill[which] = ym_order_block_fill(live, N, p, nk, YM_SCAN_BLOCK,
                                                 &r->lanes[which], &r->live);
        }
        int k = 0;
        if (identity_order) {
            for (int d = 0; d < di; d++)
                O->scan_order[d] = d;
        } else {
            const int32_t *p = mask_order ? perm_m : perm_c;
            for (; k < nk; k++)
                O->scan_order[k] = kept[p[k]];
            for (int d = 0; d < di; d++)
                if (!(O->channel_logits[d] > 0))
                    O->scan_order[k++] = d;
        }
    }
    if ((err = ym_sparsity_finish(out, &diag)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "calibrate: %s", diag.msg);
        goto done;
    }
    char tok_s[32], seed_s[32];
    snprintf(tok_s, sizeof(tok_s), "%d", T);
    snprintf(seed_s, sizeof(seed_s), "%llu", (unsigned long long)seed);
    const char *order_name = identity_order ? "identity"
                             : mask_order   ? (two_opt ? "mask-nn+2opt" : "mask-nn")
                             : two_opt      ? "correlation-nn+2opt"
                                            : "correlation-nn";
    ym_st_meta extra[4] = {
        {(char *)"order", (char *)order_name},
        {(char *)"calibration_tokens", tok_s},
        {(char *)"seed", seed_s},
        {(char *)"masks_from", (char *)(in_path != NULL ? in_path : baseline != NULL ? "calibration" : "none")},
    };
    if ((err = ym_sparsity_save(out, out_path, extra, 4, &diag)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "calibrate: %s", diag.msg);
        goto done;
    }

    /* ---- report ---- */
    static const char *const names[4] = {"identity", "random", "derived", "mask"};
    double tot_cost[4] = {0}, tot_lanes[4] = {0}, tot_live = 0;
    int64_t tot_kept = 0;
    for (int l = 0; l < nl; l++) {
        for (int w = 0; w < 4; w++) {
            tot_cost[w] += rep[l].cost[w];
            tot_lanes[w] += (double)rep[l].lanes[w];
        }
        tot_live += (double)rep[l].live;
        tot_kept += rep[l].n_kept;
    }
    if (as_json) {
        json_t *o = json_object(), *jl = json_array();
        json_object_set_new(o, "model", json_string(dir));
        json_object_set_new(o, "out", json_string(out_path));
        json_object_set_new(o, "method", json_string(method));
        json_object_set_new(o, "order", json_string(order_name));
        json_object_set_new(o, "tokens", json_integer(T));
        json_object_set_new(o, "run_seconds", json_real(t_run));
        json_object_set_new(o, "block_width", json_integer(YM_SCAN_BLOCK));
        json_object_set_new(o, "channels_kept", json_integer(tot_kept));
        json_object_set_new(o, "states_live", json_integer((json_int_t)tot_live));
        for (int l = 0; l < nl; l++) {
            json_t *e = json_object(), *jc = json_object(), *jf = json_object();
            for (int w = 0; w < 4; w++) {
                json_object_set_new(jc, names[w], json_real(rep[l].cost[w]));
                json_object_set_new(jf, names[w], json_real(rep[l].fill[w]));
            }
            json_object_set_new(e, "channels_kept", json_integer(rep[l].n_kept));
            json_object_set_new(e, "path_cost", jc);
            json_object_set_new(e, "block_fill", jf);
            json_array_append_new(jl, e);
        }
        json_t *jc = json_object(), *jf = json_object();
        for (int w = 0; w < 4; w++) {
            json_object_set_new(jc, names[w], json_real(tot_cost[w]));
            json_object_set_new(jf, names[w], json_real(tot_lanes[w] > 0 ? tot_live / tot_lanes[w] : 1.0));
        }
        json_object_set_new(o, "path_cost", jc);
        json_object_set_new(o, "block_fill", jf);
        json_object_set_new(o, "layers", jl);
        char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
        if (s != NULL)
            puts(s);
        free(s);
        json_decref(o);
    } else {
        printf("calibrate: %d tokens in %.1f s; masks %s; order %s -> %s\n", T, t_run, method,
               order_name, out_path);
        printf("path cost = -sum |corr| of neighbours (lower is better); block fill = live "
               "entries / lanes computed (blocks of %d)\n",
               YM_SCAN_BLOCK);
        printf("(\"mask\": a path over the state masks' Jaccard similarity, for comparison)\n");
        printf("%-6s %5s  %10s %10s %10s %10s  %7s %7s %7s %7s\n", "layer", "kept", "cost:id",
               "random", "derived", "mask", "fill:id", "random", "derived", "mask");
        for (int l = 0; l < nl; l++)
            printf("%-6d %5d  %10.2f %10.2f %10.2f %10.2f  %7.3f %7.3f %7.3f %7.3f\n", l,
                   rep[l].n_kept, rep[l].cost[0], rep[l].cost[1], rep[l].cost[2], rep[l].cost[3],
                   rep[l].fill[0], rep[l].fill[1], rep[l].fill[2], rep[l].fill[3]);
        double f[4];
        for (int w = 0; w < 4; w++)
            f[w] = tot_lanes[w] > 0 ? tot_live / tot_lanes[w] : 1.0;
        printf("%-6s %5lld  %10.2f %10.2f %10.2f %10.2f  %7.3f %7.3f %7.3f %7.3f\n", "total",
               (long long)tot_kept, tot_cost[0], tot_cost[1], tot_cost[2], tot_cost[3], f[0], f[1],
               f[2], f[3]);
    }
    if (fflush(stdout) != 0)
        rc = cli_error(CLI_FAIL, "calibrate: cannot write the output");
done:
    free(E);
    free(ent);
    free(absS);
    free(X);
    free(R);
    free(RM);
    free(perm_c);
    free(perm_m);
    free(score);
    free(perm);
    free(idx);
    free(kept);
    free(live);
    free(rep);
    free(text);
    ym_ids_deinit(&ids);
    ym_state_free(state);
    ym_ctx_free(ctx);
    ym_sparsity_free(in);
    ym_sparsity_free(out);
    ym_tok_free(tok);
    ym_model_unref(run_m);
    ym_model_unref(base);
    return rc;
}

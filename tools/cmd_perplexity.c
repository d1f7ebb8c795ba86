/* tools/cmd_perplexity.c - `yunmin perplexity`: the perplexity of a text file.
 *
 * The protocol matches tools/train/evaluate.py exactly, so the two can be compared:
 *   1. with --tail-fraction F, keep only the last characters of the text: the first
 *      floor(n_chars * (1 - F)) characters (Unicode code points, computed in integers with F in
 *      millionths) are skipped; for F = 0.1 that is the toolkit's held-out split, the last
 *      n - (n * 9) // 10 characters (tools/train/yunmin_train/data.py);
 *   2. tokenize it; cut the ids into consecutive non-overlapping windows of --ctx tokens
 *      (a last partial window counts if it has >= 2 tokens); with --heldout F keep only the
 *      windows `yunmin prune --heldout F` holds out (cli_heldout_windows);
 *   3. run each window from a fresh state; score every token but the first of its window:
 *      NLL = -log_softmax(logits of the previous position)[token], in double;
 *   4. ppl = exp(mean NLL over the scored tokens).
 * Several windows go through one ym_forward (each its own sequence and state, YM_LOGITS_ALL),
 * as many as fit in the row budget and the logits buffer (LOGITS_BUDGET). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/forward.h"
#include "engine/state.h"
#include "engine/utf8.h"
#include "tools/cli.h"

/* Bytes of logits held at once: rows * n_vocab * 4 (256 MiB is 1335 rows of 50280). */
#define LOGITS_BUDGET ((size_t)256 << 20)

static void usage(FILE *f)
{
    fprintf(f, "usage: yunmin perplexity [--model DIR] --file PATH [--ctx N]\n"
               "               [--tail-fraction F | --heldout F] [--threads N]\n"
               "               [--weights f32|bf16|int8|auto] [--sparsity FILE]\n"
               "  --ctx N             tokens per window, each from a fresh state (default 256)\n"
               "  --tail-fraction F   evaluate only the last F of the file's characters, (0, 1]\n"
               "  --heldout F         evaluate only the windows `yunmin prune --heldout F` holds\n"
               "                      out: round(F x windows), spread over the text, (0, 1)\n"
               "  --weights T         the matrices' type (default auto: the checkpoint's own)\n"
               "  --sparsity FILE     serve the model under this sparsity profile\n"
               "Prints {\"tokens\": scored, \"nll\": mean, \"ppl\": exp(nll), \"windows\": W}\n"
               "(with --heldout also \"heldout_windows\": the indices of the windows scored).\n");
}

enum { OPT_CTX = 256, OPT_TAIL, OPT_HELDOUT, OPT_THREADS, OPT_WEIGHTS, OPT_SPARSITY };

int ym_cmd_perplexity(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"file", required_argument, NULL, 'f'},
        {"ctx", required_argument, NULL, OPT_CTX},
        {"tail-fraction", required_argument, NULL, OPT_TAIL},
        {"heldout", required_argument, NULL, OPT_HELDOUT},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"weights", required_argument, NULL, OPT_WEIGHTS},
        {"sparsity", required_argument, NULL, OPT_SPARSITY},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model_arg = NULL, *file = NULL, *weights = NULL, *sparsity = NULL;
    ym_wtype wt;
    long ctx_len = 256, n_threads = 0;
    double tail = 0.0, heldout = 0.0;
    int has_tail = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:f:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model_arg = optarg;
            break;
        case 'f':
            file = optarg;
            break;
        case OPT_CTX:
            if (cli_parse_long("--ctx", optarg, 2, 1L << 20, &ctx_len) != 0)
                return CLI_USAGE;
            break;
        case OPT_TAIL:
            if (cli_parse_double("--tail-fraction", optarg, &tail) != 0)
                return CLI_USAGE;
            if (!(tail > 0.0 && tail <= 1.0))
                return cli_error(CLI_USAGE, "invalid value '%s' for --tail-fraction: must be "
                                            "in (0, 1]", optarg);
            has_tail = 1;
            break;
        case OPT_HELDOUT:
            if (cli_parse_double("--heldout", optarg, &heldout) != 0)
                return CLI_USAGE;
            if (!(heldout > 0.0 && heldout < 1.0))
                return cli_error(CLI_USAGE, "invalid value '%s' for --heldout: must be in "
                                            "(0, 1)", optarg);
            break;
        case OPT_THREADS:
            if (cli_parse_long("--threads", optarg, 0, 1024, &n_threads) != 0)
                return CLI_USAGE;
            break;
        case OPT_WEIGHTS:
            if (cli_parse_weights(optarg, &wt) != 0)
                return CLI_USAGE;
            weights = optarg;
            break;
        case OPT_SPARSITY:
            sparsity = optarg;
            break;
        case 'h':
            usage(stdout);
            return CLI_OK;
        default:
            return cli_bad_option("perplexity", argv, c);
        }
    }
    if (optind < argc)
        return cli_extra_arg("perplexity", argv[optind]);
    if (file == NULL)
        return cli_error(CLI_USAGE, "perplexity: --file is required");
    if (has_tail && heldout > 0.0)
        return cli_error(CLI_USAGE, "perplexity: --tail-fraction and --heldout exclude each "
                                    "other");

    const char *dir = cli_model_dir(model_arg);
    char *data = NULL;
    size_t len = 0;
    ym_tok_t *tok = NULL;
    ym_model_t *model = NULL;
    ym_ctx_t *ctx = NULL;
    ym_state_t **states = NULL;
    int *seq_start = NULL;
    float *logits = NULL;
    ym_ids ids = {0}, held_ids = {0};
    size_t *held_win = NULL, n_held = 0;
    int rc, n_states = 0;
    ym_err err;
    if ((rc = cli_read_file(file, &data, &len)) != 0)
        goto out;
    if ((rc = cli_load_tokenizer(dir, &tok)) != 0 || (rc = cli_load_model_as(dir, weights, &model)) != 0 ||
        (rc = cli_apply_sparsity(sparsity, &model)) != 0)
        goto out;

    /* 1. The held-out tail, counted in characters as the toolkit counts them. */
    size_t off = 0;
    if (has_tail) {
        size_t n_chars = ym_utf8_count((const unsigned char *)data, len);
        unsigned long long keep_ppm = 1000000ull - (unsigned long long)llround(tail * 1e6);
        size_t skip = (size_t)((unsigned long long)n_chars * keep_ppm / 1000000ull);
        off = ym_utf8_offset((const unsigned char *)data, len, skip);
    }
    /* 2. Tokens and windows. */
    if ((err = ym_tok_encode(tok, data + off, len - off, &ids)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "perplexity: tokenizing %s: %s", file, ym_strerror(err));
        goto out;
    }
    const int nv = model->cfg.n_vocab;
    for (size_t i = 0; i < ids.n; i++) {
        if (ids.v[i] >= nv) {
            rc = cli_error(CLI_FAIL, "perplexity: token id %d is outside the model's %d rows",
                           ids.v[i], nv);
            goto out;
        }
    }
    const size_t W = (size_t)ctx_len;
    size_t n_windows = ids.n / W + (ids.n % W >= 2 ? 1 : 0);
    if (n_windows == 0) {
        rc = cli_error(CLI_FAIL, "perplexity: %s has %zu tokens%s, too few to score", file, ids.n,
                       has_tail ? " in its tail" : "");
        goto out;
    }

    /* 2b. --heldout: only the windows prune holds out, concatenated (each W tokens but possibly
     * the last, so the cut below gives back exactly these windows). */
    if (heldout > 0.0) {
        n_held = cli_heldout_count(n_windows, heldout); /* <= n_windows: heldout < 1 */
        if ((held_win = malloc(sizeof(size_t) * n_held)) == NULL) {
            rc = cli_error(CLI_FAIL, "out of memory");
            goto out;
        }
        cli_heldout_windows(n_windows, n_held, held_win);
        for (size_t i = 0; i < n_held; i++) {
            size_t lo = held_win[i] * W, hi = lo + W < ids.n ? lo + W : ids.n;
            for (size_t j = lo; j < hi; j++)
                if (ym_ids_push(&held_ids, ids.v[j]) != YM_OK) {
                    rc = cli_error(CLI_FAIL, "out of memory");
                    goto out;
                }
        }
        ym_ids t = ids;
        ids = held_ids;
        held_ids = t;
        n_windows = n_held;
    }

    /* 3. Batches of whole windows within the logits budget (at least one window). */
    size_t per_batch = LOGITS_BUDGET / ((size_t)nv * sizeof(float) * W);
    if (per_batch < 1)
        per_batch = 1;
    if (per_batch > n_windows)
        per_batch = n_windows;
    const int rows_max = (int)(per_batch * W);
    if ((err = ym_ctx_new(model, rows_max, (int)n_threads, &ctx)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "perplexity: %s", ym_strerror(err));
        goto out;
    }
    /* The context may hold fewer rows than asked for: respect its limit. */
    if ((size_t)ym_ctx_n_rows_max(ctx) < per_batch * W) {
        per_batch = (size_t)ym_ctx_n_rows_max(ctx) / W;
        if (per_batch < 1) {
            rc = cli_error(CLI_FAIL, "perplexity: a window of %zu rows exceeds the engine's %d",
                           W, ym_ctx_n_rows_max(ctx));
            goto out;
        }
    }
    states = calloc(per_batch, sizeof(*states));
    seq_start = malloc((per_batch + 1) * sizeof(*seq_start));
    logits = malloc(per_batch * W * (size_t)nv * sizeof(float));
    if (states == NULL || seq_start == NULL || logits == NULL) {
        rc = cli_error(CLI_FAIL, "out of memory");
        goto out;
    }
    for (; n_states < (int)per_batch; n_states++) {
        if ((err = ym_state_new(&model->cfg, &states[n_states])) != YM_OK) {
            rc = cli_error(CLI_FAIL, "perplexity: %s", ym_strerror(err));
            goto out;
        }
    }

    double nll_sum = 0.0;
    size_t n_scored = 0;
    for (size_t w0 = 0; w0 < n_windows; w0 += per_batch) {
        size_t nb = n_windows - w0 < per_batch ? n_windows - w0 : per_batch;
        size_t first = w0 * W;
        seq_start[0] = 0;
        for (size_t k = 0; k < nb; k++) {
            size_t lo = first + k * W, hi = lo + W < ids.n ? lo + W : ids.n;
            seq_start[k + 1] = seq_start[k] + (int)(hi - lo);
            ym_state_reset(states[k]);
        }
        ym_batch batch = {
            .n_seq = (int)nb,
            .tokens = ids.v + first, /* windows are consecutive: one slice of the ids */
            .seq_start = seq_start,
            .states = states,
            .logits = YM_LOGITS_ALL,
        };
        ym_diag diag = {0};
        if ((err = ym_forward(ctx, &batch, logits, &diag)) != YM_OK) {
            rc = cli_error(CLI_FAIL, "perplexity: %s", diag.msg[0] ? diag.msg : ym_strerror(err));
            goto out;
        }
        /* 4. Every token but each window's first, scored by the row before it. */
        for (size_t k = 0; k < nb; k++) {
            for (int r = seq_start[k] + 1; r < seq_start[k + 1]; r++) {
                nll_sum += cli_nll(logits + (size_t)(r - 1) * (size_t)nv, nv, batch.tokens[r]);
                n_scored++;
            }
        }
    }
    double nll = nll_sum / (double)n_scored;
    printf("{\"tokens\": %zu, \"nll\": ", n_scored);
    cli_print_double(stdout, nll);
    fputs(", \"ppl\": ", stdout);
    cli_print_double(stdout, exp(nll));
    printf(", \"windows\": %zu", n_windows);
    if (held_win != NULL) {
        fputs(", \"heldout_windows\": [", stdout);
        for (size_t i = 0; i < n_held; i++)
            printf("%s%zu", i ? ", " : "", held_win[i]);
        fputc(']', stdout);
    }
    fputs("}\n", stdout);
    if (fflush(stdout) != 0)
        rc = cli_error(CLI_FAIL, "perplexity: cannot write the output");
out:
    for (int i = 0; i < n_states; i++)
        ym_state_free(states[i]);
    free(states);
    free(seq_start);
    free(logits);
    ym_ctx_free(ctx);
    ym_ids_deinit(&ids);
    ym_ids_deinit(&held_ids);
    free(held_win);
    ym_model_unref(model);
    ym_tok_free(tok);
    free(data);
    return rc;
}

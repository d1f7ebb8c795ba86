/* tools/cmd_logits.c - `yunmin logits`: the logits of every position of a token sequence,
 * {"logits": [[...], ...]} on stdout, one row per position, each float as %.9g (enough digits
 * to round-trip a float32). One ym_forward call with YM_LOGITS_ALL on a fresh state: what
 * the conformance tests compare against the PyTorch reference. With --adapter (repeatable),
 * the adapters are composed and applied unmerged, as the server applies them. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/forward.h"
#include "engine/state.h"
#include "tools/cli.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: yunmin logits [--model DIR] --ids 1,2,3 [--adapter DIR]... [--threads N]\n"
               "                    [--sparsity FILE] [--weights f32|bf16|int8|auto]\n"
               "Prints {\"logits\": [[...], ...]}: one row of n_vocab floats per position,\n"
               "from a fresh state. --adapter: a PEFT LoRA/IA3 directory or an adapter set;\n"
               "several are composed (LoRA deltas add, IA3 scales multiply). --sparsity serves\n"
               "the model under a sparsity profile (yunmin.sparsity.safetensors; only used\n"
               "when given). The two cannot be combined yet. --weights: the type the matrices\n"
               "are served in (default auto: the checkpoint's own).\n");
}

int ym_cmd_logits(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"ids", required_argument, NULL, 'i'},
        {"threads", required_argument, NULL, 't'},
        {"adapter", required_argument, NULL, 'a'},
        {"sparsity", required_argument, NULL, 's'},
        {"weights", required_argument, NULL, 'W'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model_arg = NULL, *ids_arg = NULL, *sparsity = NULL, *weights = NULL;
    ym_wtype wt;
    long n_threads = 0;
    const char *adapter_dirs[CLI_MAX_ADAPTERS];
    int n_adapters = 0;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:i:t:a:s:W:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model_arg = optarg;
            break;
        case 'i':
            ids_arg = optarg;
            break;
        case 't':
            if (cli_parse_long("--threads", optarg, 0, 1024, &n_threads) != 0)
                return CLI_USAGE;
            break;
        case 'a':
            if (n_adapters == CLI_MAX_ADAPTERS)
                return cli_error(CLI_USAGE, "logits: at most %d --adapter options",
                                 CLI_MAX_ADAPTERS);
            adapter_dirs[n_adapters++] = optarg;
            break;
        case 's':
            sparsity = optarg;
            break;
        case 'W':
            if (cli_parse_weights(optarg, &wt) != 0)
                return CLI_USAGE;
            weights = optarg;
            break;
        case 'h':
            usage(stdout);
            return CLI_OK;
        default:
            return cli_bad_option("logits", argv, c);
        }
    }
    if (optind < argc)
        return cli_extra_arg("logits", argv[optind]);
    if (ids_arg == NULL)
        return cli_error(CLI_USAGE, "logits: --ids is required");

    ym_model_t *model = NULL;
    ym_ctx_t *ctx = NULL;
    ym_state_t *state = NULL;
    float *logits = NULL;
    ym_ids ids = {0};
    ym_adapter_t *adapter = NULL;
    int rc = cli_load_model_as(cli_model_dir(model_arg), weights, &model);
    if (rc != 0)
        return rc;
    if ((rc = cli_apply_sparsity(sparsity, &model)) != 0)
        goto out;
    if ((rc = cli_load_adapters(model, adapter_dirs, n_adapters, &adapter)) != 0)
        goto out;
    const int nv = model->cfg.n_vocab;
    if ((rc = cli_parse_ids("--ids", ids_arg, nv, &ids)) != 0)
        goto out;
    if (ids.n > (1u << 20)) {
        rc = cli_error(CLI_USAGE, "logits: too many ids (%zu)", ids.n);
        goto out;
    }
    const int n = (int)ids.n;
    ym_err err = ym_ctx_new(model, n, (int)n_threads, &ctx);
    if (err == YM_OK)
        err = ym_state_new(&model->cfg, &state);
    logits = malloc((size_t)n * (size_t)nv * sizeof(float));
    if (err != YM_OK || logits == NULL) {
        rc = cli_error(CLI_FAIL, "logits: %s", ym_strerror(err != YM_OK ? err : YM_ENOMEM));
        goto out;
    }
    int seq_start[2] = {0, n};
    ym_state_t *states[1] = {state};
    const ym_adapt *adapts[1] = {ym_adapter_applied(adapter)};
    ym_batch batch = {
        .n_seq = 1,
        .tokens = ids.v,
        .seq_start = seq_start,
        .states = states,
        .logits = YM_LOGITS_ALL,
        .adapters = adapter != NULL ? adapts : NULL,
    };
    ym_diag diag = {0};
    if ((err = ym_forward(ctx, &batch, logits, &diag)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "logits: %s", diag.msg[0] ? diag.msg : ym_strerror(err));
        goto out;
    }
    fputs("{\"logits\": [", stdout);
    for (int r = 0; r < n; r++) {
        const float *row = logits + (size_t)r * (size_t)nv;
        fputs(r ? ", [" : "[", stdout);
        for (int v = 0; v < nv; v++) {
            if (v)
                fputs(", ", stdout);
            if (isfinite(row[v]))
                printf("%.9g", (double)row[v]);
            else
                fputs("null", stdout); /* JSON has no NaN or infinity */
        }
        fputc(']', stdout);
    }
    fputs("]}\n", stdout);
    if (fflush(stdout) != 0)
        rc = cli_error(CLI_FAIL, "logits: cannot write the output");
out:
    free(logits);
    ym_state_free(state);
    ym_ctx_free(ctx);
    ym_ids_deinit(&ids);
    ym_adapter_unref(adapter);
    ym_model_unref(model);
    return rc;
}

/* tools/cmd_generate.c - `yunmin generate`: text from a prompt, streamed to stdout.
 *
 * The prompt is prefilled as one chunk (one ym_forward, YM_LOGITS_LAST), then tokens are
 * decoded one at a time: sample, stream the certain text (ym_textout: whole UTF-8 characters,
 * stop strings held back and never printed), forward the token. Stops at EOS (not printed),
 * a stop string, or --max-tokens. A one-line summary goes to stderr at the end. With
 * --adapter (repeatable), the adapters are composed and applied unmerged. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/forward.h"
#include "engine/sampling.h"
#include "engine/state.h"
#include "engine/textout.h"
#include "tools/cli.h"

#define MAX_STOPS 16

static void usage(FILE *f)
{
    fprintf(f,
            "usage: yunmin generate [--model DIR] -p|--prompt TEXT [options]\n"
            "  -n, --max-tokens N          tokens to generate at most (default 128)\n"
            "  --temperature T             0 = greedy (default 0.8)\n"
            "  --top-p P                   nucleus sampling, (0, 1] (default 1)\n"
            "  --top-k K                   keep the K most likely tokens, 0 = off (default 0)\n"
            "  --min-p P                   drop tokens below P x the best one's probability\n"
            "  --repetition-penalty R      HF/CTRL penalty on prompt and output tokens (1 = off)\n"
            "  --presence-penalty X        OpenAI presence penalty, [-2, 2]\n"
            "  --frequency-penalty X       OpenAI frequency penalty, [-2, 2]\n"
            "  --seed S                    reproducible sampling\n"
            "  --stop STR                  stop before this text (repeatable, up to %d)\n"
            "  --threads N                 engine threads (default: one per core)\n"
            "  --adapter DIR               PEFT LoRA/IA3 adapter or adapter set (repeatable:\n"
            "                              composed, LoRA deltas add, IA3 scales multiply)\n"
            "  --sparsity FILE             serve under this sparsity profile\n"
            "  --weights f32|bf16|int8     the matrices' type (default: the checkpoint's own)\n"
            "  --echo                      print the prompt before the generated text\n"
            "Text goes to stdout as it is produced; a summary line goes to stderr.\n",
            MAX_STOPS);
}

enum {
    OPT_TEMPERATURE = 256,
    OPT_TOP_P,
    OPT_TOP_K,
    OPT_MIN_P,
    OPT_REPETITION,
    OPT_PRESENCE,
    OPT_FREQUENCY,
    OPT_SEED,
    OPT_STOP,
    OPT_THREADS,
    OPT_ECHO,
    OPT_ADAPTER,
    OPT_SPARSITY,
    OPT_WEIGHTS,
};

static int write_out(const char *s, size_t n)
{
    if (n > 0 && fwrite(s, 1, n, stdout) != n)
        return -1;
    return fflush(stdout);
}

/* Parse a float option into *dst (range checks are ym_sampling_validate's). */
static int parse_float(const char *opt, const char *s, float *dst)
{
    double v;
    if (cli_parse_double(opt, s, &v) != 0)
        return CLI_USAGE;
    *dst = (float)v;
    return 0;
}

int ym_cmd_generate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"prompt", required_argument, NULL, 'p'},
        {"max-tokens", required_argument, NULL, 'n'},
        {"temperature", required_argument, NULL, OPT_TEMPERATURE},
        {"top-p", required_argument, NULL, OPT_TOP_P},
        {"top-k", required_argument, NULL, OPT_TOP_K},
        {"min-p", required_argument, NULL, OPT_MIN_P},
        {"repetition-penalty", required_argument, NULL, OPT_REPETITION},
        {"presence-penalty", required_argument, NULL, OPT_PRESENCE},
        {"frequency-penalty", required_argument, NULL, OPT_FREQUENCY},
        {"seed", required_argument, NULL, OPT_SEED},
        {"stop", required_argument, NULL, OPT_STOP},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"echo", no_argument, NULL, OPT_ECHO},
        {"adapter", required_argument, NULL, OPT_ADAPTER},
        {"sparsity", required_argument, NULL, OPT_SPARSITY},
        {"weights", required_argument, NULL, OPT_WEIGHTS},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model_arg = NULL, *prompt = NULL, *sparsity = NULL, *weights = NULL;
    ym_wtype wt;
    const char *stops[MAX_STOPS];
    int n_stops = 0, echo = 0;
    const char *adapter_dirs[CLI_MAX_ADAPTERS];
    int n_adapters = 0;
    long max_tokens = 128, n_threads = 0, top_k = 0;
    ym_sampling sp = ym_sampling_default();
    sp.temperature = 0.8f;
    int c, bad = 0;
    optind = 1;
    opterr = 0;
    while (!bad && (c = getopt_long(argc, argv, ":m:p:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model_arg = optarg;
            break;
        case 'p':
            prompt = optarg;
            break;
        case 'n':
            bad = cli_parse_long("--max-tokens", optarg, 0, 1L << 24, &max_tokens);
            break;
        case OPT_TEMPERATURE:
            bad = parse_float("--temperature", optarg, &sp.temperature);
            break;
        case OPT_TOP_P:
            bad = parse_float("--top-p", optarg, &sp.top_p);
            break;
        case OPT_TOP_K:
            bad = cli_parse_long("--top-k", optarg, -1, 1L << 30, &top_k);
            sp.top_k = (int)top_k;
            break;
        case OPT_MIN_P:
            bad = parse_float("--min-p", optarg, &sp.min_p);
            break;
        case OPT_REPETITION:
            bad = parse_float("--repetition-penalty", optarg, &sp.repetition_penalty);
            break;
        case OPT_PRESENCE:
            bad = parse_float("--presence-penalty", optarg, &sp.presence_penalty);
            break;
        case OPT_FREQUENCY:
            bad = parse_float("--frequency-penalty", optarg, &sp.frequency_penalty);
            break;
        case OPT_SEED:
            bad = cli_parse_u64("--seed", optarg, &sp.seed);
            sp.has_seed = 1;
            break;
        case OPT_STOP:
            if (n_stops == MAX_STOPS)
                return cli_error(CLI_USAGE, "generate: at most %d --stop strings", MAX_STOPS);
            stops[n_stops++] = optarg;
            break;
        case OPT_THREADS:
            bad = cli_parse_long("--threads", optarg, 0, 1024, &n_threads);
            break;
        case OPT_ECHO:
            echo = 1;
            break;
        case OPT_ADAPTER:
            if (n_adapters == CLI_MAX_ADAPTERS)
                return cli_error(CLI_USAGE, "generate: at most %d --adapter options",
                                 CLI_MAX_ADAPTERS);
            adapter_dirs[n_adapters++] = optarg;
            break;
        case OPT_SPARSITY:
            sparsity = optarg;
            break;
        case OPT_WEIGHTS:
            if (cli_parse_weights(optarg, &wt) != 0)
                return CLI_USAGE;
            weights = optarg;
            break;
        case 'h':
            usage(stdout);
            return CLI_OK;
        default:
            return cli_bad_option("generate", argv, c);
        }
    }
    if (bad)
        return CLI_USAGE;
    if (optind < argc)
        return cli_extra_arg("generate", argv[optind]);
    if (prompt == NULL)
        return cli_error(CLI_USAGE, "generate: --prompt is required");
    if (prompt[0] == '\0')
        return cli_error(CLI_USAGE, "generate: the prompt is empty");
    ym_diag diag = {0};
    if (ym_sampling_validate(&sp, &diag) != YM_OK)
        return cli_error(CLI_USAGE, "generate: %s", diag.msg);

    const char *dir = cli_model_dir(model_arg);
    ym_model_t *model = NULL;
    ym_tok_t *tok = NULL;
    ym_ctx_t *ctx = NULL;
    ym_state_t *state = NULL;
    ym_sampler_t *sampler = NULL;
    ym_textout_t *tout = NULL;
    float *logits = NULL;
    ym_ids ids = {0};
    ym_adapter_t *adapter = NULL;
    ym_err err = YM_OK;
    int rc;
    if ((rc = cli_load_tokenizer(dir, &tok)) != 0)
        goto out;
    if ((rc = cli_load_model_as(dir, weights, &model)) != 0)
        goto out;
    if ((rc = cli_apply_sparsity(sparsity, &model)) != 0)
        goto out;
    if ((rc = cli_load_adapters(model, adapter_dirs, n_adapters, &adapter)) != 0)
        goto out;
    const int nv = model->cfg.n_vocab;
    /* Embedding rows past the tokenizer's vocabulary are padding (50280 rows for 50277
     * tokens): never sample them. */
    const int n_real = ym_tok_n_vocab(tok) < nv ? ym_tok_n_vocab(tok) : nv;
    const int32_t eos = ym_tok_eos_id(tok);

    if ((err = ym_tok_encode(tok, prompt, strlen(prompt), &ids)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "generate: tokenizing the prompt: %s", ym_strerror(err));
        goto out;
    }
    if (ids.n > (1u << 24)) {
        rc = cli_error(CLI_USAGE, "generate: the prompt is too long (%zu tokens)", ids.n);
        goto out;
    }
    const int n_prompt = (int)ids.n;
    if ((err = ym_ctx_new(model, n_prompt, (int)n_threads, &ctx)) != YM_OK ||
        (err = ym_state_new(&model->cfg, &state)) != YM_OK ||
        (err = ym_sampler_new(&sp, nv, &sampler)) != YM_OK ||
        (err = ym_textout_new(tok, stops, n_stops, &tout)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "generate: %s", ym_strerror(err));
        goto out;
    }
    if ((logits = malloc((size_t)nv * sizeof(float))) == NULL) {
        rc = cli_error(CLI_FAIL, "out of memory");
        goto out;
    }
    ym_sampler_add_prompt(sampler, ids.v, ids.n);
    if (echo && write_out(prompt, strlen(prompt)) != 0) {
        rc = cli_error(CLI_FAIL, "generate: cannot write the output");
        goto out;
    }

    /* Prefill: the whole prompt in one call. */
    int seq_start[2] = {0, n_prompt};
    ym_state_t *states[1] = {state};
    const ym_adapt *adapts[1] = {ym_adapter_applied(adapter)};
    ym_batch batch = {
        .n_seq = 1,
        .tokens = ids.v,
        .seq_start = seq_start,
        .states = states,
        .logits = YM_LOGITS_LAST,
        .adapters = adapter != NULL ? adapts : NULL,
    };
    double t0 = cli_now();
    if ((err = ym_forward(ctx, &batch, logits, &diag)) != YM_OK) {
        rc = cli_error(CLI_FAIL, "generate: %s", diag.msg[0] ? diag.msg : ym_strerror(err));
        goto out;
    }
    double t_prefill = cli_now() - t0;

    /* Decode. */
    long n_gen = 0, n_decode = 0;
    const char *why = "length";
    const char *piece;
    size_t len;
    t0 = cli_now();
    /* The end rules (end-of-text, stop strings, max_tokens) and the text come from the
     * sequence unit (engine/textout.h), the same as the server's. */
    ym_textout_set_rules(tout, eos, 0, max_tokens);
    while (n_gen < max_tokens) {
        for (int i = n_real; i < nv; i++)
            logits[i] = -INFINITY;
        int32_t id = ym_sampler_sample(sampler, logits, NULL);
        n_gen++;
        ym_seq_end end = ym_textout_step(tout, id, &piece, &len);
        if (write_out(piece, len) != 0) {
            rc = cli_error(CLI_FAIL, "generate: cannot write the output");
            goto out;
        }
        if (end != YM_SEQ_GOING) {
            why = end == YM_SEQ_EOS ? "eos" : end == YM_SEQ_STOP ? "stop" : "length";
            break;
        }
        seq_start[1] = 1;
        batch.tokens = &id;
        if ((err = ym_forward(ctx, &batch, logits, &diag)) != YM_OK) {
            rc = cli_error(CLI_FAIL, "generate: %s", diag.msg[0] ? diag.msg : ym_strerror(err));
            goto out;
        }
        n_decode++;
    }
    double t_decode = cli_now() - t0;
    /* The text ends with a newline, so the summary line on stderr (and the shell's prompt)
     * starts on a line of its own wherever stdout and stderr go. */
    if (write_out("\n", 1) != 0) {
        rc = cli_error(CLI_FAIL, "generate: cannot write the output");
        goto out;
    }

    char decode_rate[64] = "n/a";
    if (n_decode > 0 && t_decode > 0)
        snprintf(decode_rate, sizeof(decode_rate), "%.1f tok/s", (double)n_decode / t_decode);
    fprintf(stderr,
            "yunmin: prompt %d tokens (prefill %.1f tok/s), generated %ld tokens (decode %s), "
            "finish: %s\n",
            n_prompt, t_prefill > 0 ? n_prompt / t_prefill : 0.0, n_gen, decode_rate, why);
    rc = CLI_OK;
out:
    free(logits);
    ym_textout_free(tout);
    ym_sampler_free(sampler);
    ym_state_free(state);
    ym_ctx_free(ctx);
    ym_ids_deinit(&ids);
    ym_adapter_unref(adapter);
    ym_model_unref(model);
    ym_tok_free(tok);
    return rc;
}

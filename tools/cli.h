/* tools/cli.h - the `yunmin` CLI: one function per subcommand, and the helpers they share.
 *
 * Each ym_cmd_* takes the subcommand's own argv (argv[0] is the subcommand's name), parses it
 * with getopt_long and returns the process exit status: 0 on success, CLI_FAIL (1) for a
 * runtime error, CLI_USAGE (2) for a usage error. Errors are one line on stderr,
 * "yunmin: <message>"; results go to stdout. Single-threaded (the engine's pool aside). */
#ifndef YM_TOOLS_CLI_H
#define YM_TOOLS_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "adapters/adapter.h"
#include "engine/model.h"
#include "engine/tokenizer.h"

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

int ym_cmd_generate(int argc, char **argv);
int ym_cmd_logits(int argc, char **argv);
int ym_cmd_tokenize(int argc, char **argv);
int ym_cmd_detokenize(int argc, char **argv);
int ym_cmd_inspect(int argc, char **argv);
int ym_cmd_perplexity(int argc, char **argv);
int ym_cmd_bench(int argc, char **argv); /* tools/bench.c */
int ym_cmd_calibrate(int argc, char **argv);
int ym_cmd_prune(int argc, char **argv); /* tools/cmd_prune.c */
int ym_cmd_chat_template(int argc, char **argv);
int ym_cmd_quantize(int argc, char **argv); /* tools/cmd_quantize.c */

/* Print "yunmin: <message>" as one line on stderr; returns code (CLI_FAIL or CLI_USAGE). */
int cli_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The usage error for getopt_long's return value c ('?' unknown option, ':' missing value),
 * naming the option as the user wrote it. Call right after getopt_long returned c.
 * Returns CLI_USAGE. */
int cli_bad_option(const char *cmd, char **argv, int c);
/* A positional argument nobody asked for. Returns CLI_USAGE. */
int cli_extra_arg(const char *cmd, const char *arg);

/* The model directory: flag if given, else $YUNMIN_MODEL, else the embedded default
 * (YM_DEFAULT_MODEL, set at build time). Borrowed. */
const char *cli_model_dir(const char *flag);

/* Strict number parsing: the whole string, within range. Return 0 on success, else print the
 * usage error naming opt ("--max-tokens") and return CLI_USAGE. */
int cli_parse_long(const char *opt, const char *s, long lo, long hi, long *out);
int cli_parse_u64(const char *opt, const char *s, uint64_t *out);
int cli_parse_double(const char *opt, const char *s, double *out);
/* "1,2,3" (spaces and one pair of surrounding brackets allowed; at least one id), each in
 * [0, n_vocab). Prints the usage error and returns CLI_USAGE on failure; on success fills
 * *ids (ym_ids_deinit) and returns 0. */
int cli_parse_ids(const char *opt, const char *s, int n_vocab, ym_ids *ids);

/* -log_softmax(row)[target] over nv logits, in double (the perplexity protocol's NLL,
 * shared by `perplexity` and `prune`). */
double cli_nll(const float *row, int nv, int32_t target);

/* Whole file into a new NUL-terminated buffer (free). Prints the error and returns CLI_FAIL
 * on failure, else 0. */
int cli_read_file(const char *path, char **data, size_t *len);

/* Load DIR/tokenizer.json, or the model in DIR; print the error (exit 1: a missing directory
 * or file, a malformed one) and return CLI_FAIL, else 0. New references in *out. */
int cli_load_tokenizer(const char *dir, ym_tok_t **out);
int cli_load_model(const char *dir, ym_model_t **out);
/* As cli_load_model, the matrices in the type named by weights ("f32", "bf16", "int8",
 * "auto"; NULL = auto: the checkpoint's own). A bad name is a usage error (CLI_USAGE). */
int cli_load_model_as(const char *dir, const char *weights, ym_model_t **out);
/* --weights value -> *out; prints the usage error and returns CLI_USAGE on a bad name. */
int cli_parse_weights(const char *s, ym_wtype *out);

/* --adapter DIR options, repeatable: at most CLI_MAX_ADAPTERS, all composed in order. */
#define CLI_MAX_ADAPTERS 16
/* Load dirs[0..n) against model (a PEFT adapter or an adapter set each) and compose them when
 * n > 1; n == 0 leaves *out NULL. Prints the error naming the directory and returns CLI_FAIL,
 * else 0. New reference in *out (ym_adapter_unref). */
int cli_load_adapters(ym_model_t *model, const char *const *dirs, int n, ym_adapter_t **out);
/* When path is not NULL: load the sparsity profile at path (engine/sparsity.h) and replace
 * *model (a dense model, reference taken over) with the served sparse model. Prints the error
 * (exit 1: missing or malformed file, profile for another shape) and returns CLI_FAIL, else 0.
 * The profile is found only through the flag, never beside the model. */
int cli_apply_sparsity(const char *path, ym_model_t **model);

/* The model spec naming the synthetic model with mamba-130m's shapes and random weights (for
 * benchmarks and calibration experiments; no tokenizer): --model synthetic:mamba-130m. */
#define CLI_SYNTHETIC_130M "synthetic:mamba-130m"
/* The same for mamba-1.4b's shapes and Falcon-Mamba-7B's (d_model 4096, 64 layers, vocab
 * 65024, untied head): for benchmarks of the bigger shapes, e.g. with --weights int8. */
#define CLI_SYNTHETIC_1_4B "synthetic:mamba-1.4b"
#define CLI_SYNTHETIC_FALCON_7B "synthetic:falcon-mamba-7b"
int cli_is_synthetic(const char *dir);

/* The held-out part of a text cut into n_win windows of --ctx tokens (`yunmin prune`'s, and
 * `yunmin perplexity --heldout`'s): max(1, round(frac * n_win)) windows, window i of them
 * floor((2i + 1) n_win / (2 n_held)), the centres of n_held equal stretches of the text, so the
 * sample spans its start, middle and end (ascending). */
size_t cli_heldout_count(size_t n_win, double frac);
void cli_heldout_windows(size_t n_win, size_t n_held, size_t *out);

double cli_now(void); /* monotonic seconds */
/* Write a JSON double as %.17g, or null when it is not finite (JSON has no NaN). */
void cli_print_double(FILE *f, double v);

#endif

/* tools/yunmin.c - the `yunmin` command line: main() and subcommand dispatch.
 *
 * Each subcommand lives in its own file (tools/cmd_*.c, tools/bench.c) and returns the exit
 * status itself: 0 success, 1 runtime error, 2 usage error (tools/cli.h). Single thread
 * except for the engine's own pool. */
#include <stdio.h>
#include <string.h>

#include "engine/blas.h"
#include "engine/log.h"
#include "tools/cli.h"

typedef struct subcommand {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} subcommand;

static const subcommand subcommands[] = {
    {"generate", ym_cmd_generate, "generate text from a prompt, streamed to stdout"},
    {"logits", ym_cmd_logits, "print the logits of every position of a token sequence (JSON)"},
    {"tokenize", ym_cmd_tokenize, "text to token ids (JSON)"},
    {"detokenize", ym_cmd_detokenize, "token ids to text (JSON)"},
    {"inspect", ym_cmd_inspect, "describe a model directory"},
    {"perplexity", ym_cmd_perplexity, "perplexity of a text file (JSON)"},
    {"bench", ym_cmd_bench, "engine speed against this machine's floors"},
    {"calibrate", ym_cmd_calibrate, "derive a sparsity profile's scan order from text"},
    {"prune", ym_cmd_prune, "search the fastest channel profile within a perplexity budget"},
    {"chat-template", ym_cmd_chat_template, "render a conversation with a chat template (JSON)"},
    {"quantize", ym_cmd_quantize, "rewrite a model with int8 (or bf16/f32) matrices"},
};
#define N_SUBCOMMANDS (sizeof(subcommands) / sizeof(subcommands[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: yunmin <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < N_SUBCOMMANDS; i++)
        fprintf(f, "  %-11s %s\n", subcommands[i].name, subcommands[i].help);
    fprintf(f, "\n'yunmin <command> --help' describes a command's options.\n"
               "The model directory is --model DIR, else $YUNMIN_MODEL, else the embedded\n"
               "default model.\n");
}

int main(int argc, char **argv)
{
    ym_blas_reexec(argv); /* first: OpenBLAS reads OPENBLAS_CORETYPE when it loads */
    ym_log_set_plain(1);
    ym_log_set_level(YM_LOG_WARN);

    if (argc < 2)
        return cli_error(CLI_USAGE, "no command given (see yunmin --help)");
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return CLI_OK;
    }
    for (size_t i = 0; i < N_SUBCOMMANDS; i++)
        if (strcmp(cmd, subcommands[i].name) == 0)
            return subcommands[i].run(argc - 1, argv + 1);
    if (cmd[0] == '-')
        return cli_error(CLI_USAGE, "unknown option %s (see yunmin --help)", cmd);
    return cli_error(CLI_USAGE, "unknown command '%s' (see yunmin --help)", cmd);
}

/* tools/cmd_tokenize.c - `yunmin tokenize`: text to token ids, {"ids": [...]} on stdout.
 * Needs only DIR/tokenizer.json, so it works on a directory holding just a tokenizer. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/cli.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: yunmin tokenize [--model DIR] (--text STR | --file PATH)\n"
               "Prints {\"ids\": [...]}: the ids Hugging Face tokenizers gives for the text\n"
               "(DIR/tokenizer.json; DIR needs nothing else).\n");
}

int ym_cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"text", required_argument, NULL, 't'},
        {"file", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model = NULL, *text = NULL, *file = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:t:f:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 't':
            text = optarg;
            break;
        case 'f':
            file = optarg;
            break;
        case 'h':
            usage(stdout);
            return CLI_OK;
        default:
            return cli_bad_option("tokenize", argv, c);
        }
    }
    if (optind < argc)
        return cli_extra_arg("tokenize", argv[optind]);
    if ((text == NULL) == (file == NULL))
        return cli_error(CLI_USAGE, "tokenize: give exactly one of --text and --file");

    char *data = NULL;
    size_t len;
    if (file != NULL) {
        if (cli_read_file(file, &data, &len) != 0)
            return CLI_FAIL;
    } else {
        len = strlen(text);
    }
    ym_tok_t *tok = NULL;
    int rc = cli_load_tokenizer(cli_model_dir(model), &tok);
    if (rc != 0) {
        free(data);
        return rc;
    }
    ym_ids ids = {0};
    ym_err err = ym_tok_encode(tok, data != NULL ? data : text, len, &ids);
    if (err != YM_OK) {
        rc = cli_error(CLI_FAIL, "tokenize: %s", ym_strerror(err));
    } else {
        fputs("{\"ids\": [", stdout);
        for (size_t i = 0; i < ids.n; i++)
            printf(i ? ", %d" : "%d", ids.v[i]);
        fputs("]}\n", stdout);
        if (fflush(stdout) != 0)
            rc = cli_error(CLI_FAIL, "tokenize: cannot write the output");
    }
    ym_ids_deinit(&ids);
    ym_tok_free(tok);
    free(data);
    return rc;
}

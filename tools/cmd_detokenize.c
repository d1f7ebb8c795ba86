/* tools/cmd_detokenize.c - `yunmin detokenize`: token ids to text, {"text": "..."} on stdout.
 * Needs only DIR/tokenizer.json. The text is JSON-escaped by jansson. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "tools/cli.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: yunmin detokenize [--model DIR] --ids 1,2,3\n"
               "Prints {\"text\": \"...\"}: the ids decoded as Hugging Face's decode does\n"
               "(special tokens kept; DIR needs only tokenizer.json).\n");
}

int ym_cmd_detokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"ids", required_argument, NULL, 'i'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model = NULL, *ids_arg = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:i:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'i':
            ids_arg = optarg;
            break;
        case 'h':
            usage(stdout);
            return CLI_OK;
        default:
            return cli_bad_option("detokenize", argv, c);
        }
    }
    if (optind < argc)
        return cli_extra_arg("detokenize", argv[optind]);
    if (ids_arg == NULL)
        return cli_error(CLI_USAGE, "detokenize: --ids is required");

    ym_tok_t *tok = NULL;
    int rc = cli_load_tokenizer(cli_model_dir(model), &tok);
    if (rc != 0)
        return rc;
    ym_ids ids = {0};
    if ((rc = cli_parse_ids("--ids", ids_arg, ym_tok_n_vocab(tok), &ids)) != 0) {
        ym_tok_free(tok);
        return rc;
    }
    char *text = NULL;
    size_t len = 0;
    ym_err err = ym_tok_decode(tok, ids.v, ids.n, &text, &len);
    if (err != YM_OK) {
        rc = cli_error(CLI_FAIL, "detokenize: %s", ym_strerror(err));
    } else {
        json_t *obj = json_object();
        json_t *str = json_stringn(text, len); /* NULL only for invalid UTF-8 */
        if (obj == NULL || str == NULL || json_object_set_new(obj, "text", str) != 0) {
            rc = cli_error(CLI_FAIL, "detokenize: the decoded text is not valid UTF-8");
        } else {
            char *out = json_dumps(obj, 0);
            if (out == NULL) {
                rc = cli_error(CLI_FAIL, "out of memory");
            } else {
                puts(out);
                free(out);
                if (fflush(stdout) != 0)
                    rc = cli_error(CLI_FAIL, "detokenize: cannot write the output");
            }
        }
        json_decref(obj);
    }
    free(text);
    ym_ids_deinit(&ids);
    ym_tok_free(tok);
    return rc;
}

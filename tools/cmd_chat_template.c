/* tools/cmd_chat_template.c - `yunmin chat-template`: a conversation to the prompt text a
 * model's chat template makes of it, {"prompt": "..."} on stdout (engine/chat_template.h). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "engine/chat_template.h"
#include "tools/cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: yunmin chat-template [--model DIR | --template FILE] --messages FILE\n"
            "                            [--bos-token S] [--eos-token S] [--add-generation-prompt]\n"
            "Prints {\"prompt\": \"...\"}: the messages (a JSON array of {\"role\", \"content\"}\n"
            "objects, or {\"messages\": [...]}) rendered with the model's chat template\n"
            "(DIR/chat_template.jinja or the chat_template of DIR/tokenizer_config.json, with its\n"
            "bos/eos tokens), or with the Jinja2 template in FILE. --bos-token and --eos-token\n"
            "override the token strings. A template that raises an exception exits with 1 and\n"
            "its message.\n");
}

/* One line: the message with its line breaks as spaces. */
static int fail_line(int code, const char *prefix, const char *msg)
{
    char line[600];
    snprintf(line, sizeof(line), "%s", msg);
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return cli_error(code, "chat-template: %s%s", prefix, line);
}

int ym_cmd_chat_template(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"template", required_argument, NULL, 't'},
        {"messages", required_argument, NULL, 'M'},
        {"bos-token", required_argument, NULL, 'b'},
        {"eos-token", required_argument, NULL, 'e'},
        {"add-generation-prompt", no_argument, NULL, 'g'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model = NULL, *tfile = NULL, *mfile = NULL, *bos = NULL, *eos = NULL;
    int add_gen = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:t:M:b:e:gh", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 't': tfile = optarg; break;
        case 'M': mfile = optarg; break;
        case 'b': bos = optarg; break;
        case 'e': eos = optarg; break;
        case 'g': add_gen = 1; break;
        case 'h':
            usage(stdout);
            return CLI_OK;
        default:
            return cli_bad_option("chat-template", argv, c);
        }
    }
    if (optind < argc)
        return cli_extra_arg("chat-template", argv[optind]);
    if (model != NULL && tfile != NULL)
        return cli_error(CLI_USAGE, "chat-template: give at most one of --model and --template");
    if (mfile == NULL)
        return cli_error(CLI_USAGE, "chat-template: --messages FILE is required");

    char *mtext = NULL;
    size_t mlen;
    if (cli_read_file(mfile, &mtext, &mlen) != 0)
        return CLI_FAIL;
    json_error_t je;
    json_t *doc = json_loadb(mtext, mlen, JSON_ALLOW_NUL, &je);
    free(mtext);
    if (doc == NULL)
        return cli_error(CLI_FAIL, "chat-template: %s: invalid JSON at line %d: %s", mfile, je.line, je.text);
    json_t *messages = json_is_object(doc) ? json_object_get(doc, "messages") : doc;
    if (!json_is_array(messages)) {
        json_decref(doc);
        return cli_error(CLI_FAIL, "chat-template: %s: want a JSON array of messages or {\"messages\": [...]}", mfile);
    }

    ym_chat_template_t *ct = NULL;
    ym_diag diag = { { 0 }, { 0 } };
    ym_err err;
    int rc = CLI_OK;
    if (tfile != NULL) {
        char *src = NULL;
        size_t slen;
        if (cli_read_file(tfile, &src, &slen) != 0) {
            json_decref(doc);
            return CLI_FAIL;
        }
        err = ym_chat_template_new(src, slen, NULL, NULL, &ct, &diag);
        free(src);
        if (err != YM_OK) {
            json_decref(doc);
            char prefix[300];
            snprintf(prefix, sizeof(prefix), "%.280s: ", tfile);
            return fail_line(CLI_FAIL, prefix, diag.msg);
        }
    } else {
        err = ym_chat_template_load(cli_model_dir(model), &ct, &diag);
        if (err != YM_OK) {
            json_decref(doc);
            return fail_line(CLI_FAIL, "", diag.msg);
        }
    }
    if ((bos != NULL && ym_chat_template_set_bos(ct, bos) != YM_OK) ||
        (eos != NULL && ym_chat_template_set_eos(ct, eos) != YM_OK)) {
        rc = cli_error(CLI_FAIL, "chat-template: out of memory");
        goto done;
    }
    char *prompt = NULL;
    size_t plen = 0;
    err = ym_chat_template_apply(ct, messages, add_gen, NULL, &prompt, &plen, &diag);
    if (err != YM_OK) {
        if (strcmp(diag.param, YM_JINJA_RAISED) == 0)
            rc = fail_line(CLI_FAIL, "the template raised an exception: ", diag.msg);
        else
            rc = fail_line(CLI_FAIL, "", diag.msg);
        goto done;
    }
    json_t *res = json_object();
    json_object_set_new(res, "prompt", json_stringn_nocheck(prompt, plen));
    char *s = json_dumps(res, 0);
    json_decref(res);
    free(prompt);
    if (s == NULL) {
        rc = cli_error(CLI_FAIL, "chat-template: out of memory");
        goto done;
    }
    fputs(s, stdout);
    fputc('\n', stdout);
    free(s);
    if (fflush(stdout) != 0)
        rc = cli_error(CLI_FAIL, "chat-template: cannot write the output");
done:
    ym_chat_template_free(ct);
    json_decref(doc);
    return rc;
}

/* server/tokens.c - POST /v1/tokenize and /v1/detokenize.
 *
 * Owns: nothing. Runs: loop thread (the tokenizer is read-only, shared). Must not: touch the
 * connection (it answers through ym_hreq_respond_*). */
#include <stdlib.h>
#include <string.h>

#include "server/server.h"

/* POST /v1/tokenize: text -> the tokenizer's ids. */
ym_err ym_tokens_encode(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    if (srv->tok == NULL)
        return ym_server_ready(srv, diag);
    const char *text = NULL, *model = NULL;
    size_t len = 0;
    json_t *root = NULL;
    ym_err err = ym_tokreq_parse(r->body.p, r->body.len, &text, &len, &model, &root, diag);
    if (err != YM_OK)
        return err;
    ym_ids ids = {0};
    if ((err = ym_models_check(srv, model, diag)) == YM_OK) {
        if ((err = ym_tok_encode(srv->tok, text, len, &ids)) != YM_OK) {
            ym_diag_param(diag, err, "prompt", "cannot tokenize: %s", ym_strerror(err));
        } else {
            json_t *arr = json_array();
            for (size_t i = 0; i < ids.n; i++)
                json_array_append_new(arr, json_integer(ids.v[i]));
            ym_hreq_respond_json(r, 200, json_pack("{s:o,s:I}", "tokens", arr, "count",
                                                   (json_int_t)ids.n));
        }
    }
    ym_ids_deinit(&ids);
    json_decref(root);
    return err;
}

/* POST /v1/detokenize: ids (of the tokenizer's vocabulary) -> text. */
ym_err ym_tokens_decode(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    if (srv->tok == NULL)
        return ym_server_ready(srv, diag);
    int32_t *ids = NULL;
    size_t n = 0;
    const char *model = NULL;
    json_t *root = NULL;
    ym_err err = ym_detokreq_parse(r->body.p, r->body.len, &ids, &n, &model, &root, diag);
    if (err != YM_OK)
        return err;
    if ((err = ym_models_check(srv, model, diag)) == YM_OK) {
        int nv = ym_tok_n_vocab(srv->tok);
        size_t bad = n;
        for (size_t i = 0; i < n && bad == n; i++)
            if (ids[i] >= nv)
                bad = i;
        char *text = NULL;
        size_t len = 0;
        if (bad < n) {
            err = ym_diag_param(diag, YM_EINVAL, "tokens",
                                "tokens[%zu] = %d is not a token id (vocabulary size %d)", bad,
                                ids[bad], nv);
        } else if ((err = ym_tok_decode(srv->tok, ids, n, &text, &len)) != YM_OK) {
            ym_diag_param(diag, err, "tokens", "cannot decode: %s", ym_strerror(err));
        } else {
            ym_hreq_respond_json(r, 200, json_pack("{s:o}", "prompt", ym_json_text(text, len)));
            free(text);
        }
    }
    free(ids);
    json_decref(root);
    return err;
}

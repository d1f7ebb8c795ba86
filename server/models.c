/* server/models.c - GET /v1/models[/{id}]: the served model and the caller's adapters, as
 * OpenAI model objects; and the check every handler makes of a request's "model".
 *
 * Owns: nothing. Runs: loop thread. Must not: touch the connection (it answers through
 * ym_hreq_respond_*). */
#include <string.h>

#include "server/server.h"

static json_t *model_object(ym_server_t *srv)
{
    return json_pack("{s:s,s:s,s:I,s:s}", "id", srv->model_name, "object", "model", "created",
                     (json_int_t)srv->created, "owned_by", "yunmin");
}

ym_err ym_models_check(const ym_server_t *srv, const char *model, ym_diag *diag)
{
    if (model == NULL || strcmp(model, srv->model_name) == 0)
        return YM_OK;
    return ym_diag_param(diag, YM_ENOMODEL, "model",
                         "the model '%s' does not exist (this server serves '%s')", model,
                         srv->model_name);
}

/* GET /v1/models and GET /v1/models/{id}: the served model and the caller's adapters. */
ym_err ym_models_get(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    if (srv->tok == NULL)
        return ym_server_ready(srv, diag);
    if (m->params[0] == NULL) {
        json_t *data = ym_adapters_models(r);
        json_array_insert_new(data, 0, model_object(srv));
        ym_hreq_respond_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
        return YM_OK;
    }
    const char *id = m->params[0];
    json_t *adapters = ym_adapters_models(r);
    json_t *found = NULL;
    for (size_t i = 0; i < json_array_size(adapters) && found == NULL; i++)
        if (strcmp(json_string_value(json_object_get(json_array_get(adapters, i), "id")), id) ==
            0)
            found = json_incref(json_array_get(adapters, i));
    json_decref(adapters);
    if (strcmp(id, srv->model_name) == 0) {
        json_decref(found);
        ym_hreq_respond_json(r, 200, model_object(srv));
    } else if (found != NULL) {
        ym_hreq_respond_json(r, 200, found);
    } else {
        return ym_diag_param(diag, YM_ENOMODEL, "model", "the model '%s' does not exist", id);
    }
    return YM_OK;
}

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

int ym_models_check(ym_hreq *r, const char *model)
{
    if (model == NULL || strcmp(model, r->srv->model_name) == 0)
        return 0;
    ym_hreq_respond_error(r, YM_ENOMODEL, "model",
                          "the model '%s' does not exist (this server serves '%s')", model,
                          r->srv->model_name);
    return -1;
}

/* GET /v1/models and GET /v1/models/{id}: the served model and the caller's adapters. */
void ym_models_get(ym_hreq *r, const ym_match *m)
{
    ym_server_t *srv = r->srv;
    if (srv->tok == NULL) {
        ym_server_check_ready(r);
        return;
    }
    if (m->params[0] == NULL) {
        json_t *data = ym_adapters_models(r);
        json_array_insert_new(data, 0, model_object(srv));
        ym_hreq_respond_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
        return;
    }
    const char *id = m->params[0];
    json_t *adapters = ym_adapters_models(r);
    json_t *found = NULL;
    for (size_t i = 0; i < json_array_size(adapters) && found == NULL; i++)
        if (strcmp(json_string_value(json_object_get(json_array_get(adapters, i), "id")), id) ==
            0)
            found = json_incref(json_array_get(adapters, i));
    json_decref(adapters);
    if (strcmp(id, srv->model_name) == 0)
        ym_hreq_respond_json(r, 200, model_object(srv));
    else if (found != NULL)
        ym_hreq_respond_json(r, 200, found);
    else
        ym_hreq_respond_error(r, YM_ENOMODEL, "model",
                              "the model '%s' does not exist", id);
}

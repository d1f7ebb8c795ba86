/* server/routes.c - the route table: every method + path yunmind serves, its handler, the key
 * it needs and its body limit (docs/API.md describes each route).
 *
 * Owns: the table (static, read-only). Runs: read by the loop thread. Must not: hold logic; a
 * route's behaviour lives in the file named for its resource (completions.c, chat.c, models.c,
 * tokens.c, adapters.c, sessions.c, probes.c, www.c). main.c hands the table to the transport. */
#include "server/server.h"

const ym_route ym_routes[] = {
    /* method, pattern, key needed, body; handler [, body hooks of a streamed body] */
    {"POST", "/v1/completions", YM_AUTH_TENANT, YM_BODY_REQUEST,
     ym_completions_create, NULL, NULL, NULL},
    {"POST", "/v1/chat/completions", YM_AUTH_TENANT, YM_BODY_REQUEST,
     ym_chat_create, NULL, NULL, NULL},
    {"GET", "/v1/models", YM_AUTH_TENANT, YM_BODY_REQUEST,
     ym_models_get, NULL, NULL, NULL},
    {"GET", "/v1/models/{id}", YM_AUTH_TENANT, YM_BODY_REQUEST,
     ym_models_get, NULL, NULL, NULL},
    {"GET", "/v1/adapters", YM_AUTH_TENANT, YM_BODY_REQUEST,
     ym_adapters_list, NULL, NULL, NULL},
    {"GET", "/v1/adapters/{name}", YM_AUTH_TENANT, YM_BODY_REQUEST,
     ym_adapters_get, NULL, NULL, NULL},
    {"PUT", "/v1/adapters/{name}", YM_AUTH_TENANT, YM_BODY_STREAM,
     ym_adapters_put, ym_adapters_put_begin, ym_adapters_put_data, ym_adapters_put_abort},
    {"DELETE", "/v1/adapters/{name}", YM_AUTH_TENANT, YM_BODY_REQUEST,
     ym_adapters_delete, NULL, NULL, NULL},
    {"GET", "/v1/sessions/{id}", YM_AUTH_TENANT, YM_BODY_REQUEST,
     ym_sessions_get, NULL, NULL, NULL},
    {"DELETE", "/v1/sessions/{id}", YM_AUTH_TENANT, YM_BODY_REQUEST,
     ym_sessions_delete, NULL, NULL, NULL},
    {"GET", "/admin/sessions/{tenant}/{id}", YM_AUTH_ADMIN, YM_BODY_REQUEST,
     ym_sessions_export, NULL, NULL, NULL},
    {"PUT", "/admin/sessions/{tenant}/{id}", YM_AUTH_ADMIN, YM_BODY_UPLOAD,
     ym_sessions_import, NULL, NULL, NULL},
    {"POST", "/v1/tokenize", YM_AUTH_TENANT, YM_BODY_REQUEST,
     ym_tokens_encode, NULL, NULL, NULL},
    {"POST", "/v1/detokenize", YM_AUTH_TENANT, YM_BODY_REQUEST,
     ym_tokens_decode, NULL, NULL, NULL},
    {"GET", "/healthz", YM_AUTH_NONE, YM_BODY_REQUEST,
     ym_probes_healthz, NULL, NULL, NULL},
    {"GET", "/readyz", YM_AUTH_NONE, YM_BODY_REQUEST,
     ym_probes_readyz, NULL, NULL, NULL},
    {"GET", "/metrics", YM_AUTH_NONE, YM_BODY_REQUEST,
     ym_probes_metrics, NULL, NULL, NULL},
    /* The web playground: static files, no key (the page asks for one when it needs it). */
    {"GET", "/", YM_AUTH_NONE, YM_BODY_REQUEST,
     ym_www_get, NULL, NULL, NULL},
    {"GET", "/playground/{file}", YM_AUTH_NONE, YM_BODY_REQUEST,
     ym_www_get, NULL, NULL, NULL},
};
const size_t ym_n_routes = sizeof(ym_routes) / sizeof(ym_routes[0]);

/* server/probes.c - GET /healthz, /readyz and /metrics (no key needed: probes and scrapers),
 * and the readiness check the model-using handlers make.
 *
 * Owns: nothing. Runs: loop thread. Must not: touch the connection (it answers through
 * ym_hreq_respond_*). */
#include "server/server.h"

/* GET /healthz: 200 while the process runs (liveness). */
ym_err ym_probes_healthz(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    ym_hreq_respond_json(r, 200, json_pack("{s:s}", "status", "ok"));
    return YM_OK;
}

/* GET /readyz: 200 once the model is loaded and while not draining. */
ym_err ym_probes_readyz(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    ym_server_t *srv = r->srv;
    const char *st = srv->draining ? "draining" : srv->ready ? "ready" : "loading";
    ym_hreq_respond_json(r, srv->ready && !srv->draining ? 200 : 503,
                         json_pack("{s:s}", "status", st));
    return YM_OK;
}

/* GET /metrics: Prometheus text format. */
ym_err ym_probes_metrics(ym_hreq *r, const ym_match *m, ym_diag *diag)
{
    char *text = NULL;
    size_t len = 0;
    if (ym_metrics_render(r->srv->metrics, &text, &len) != 0)
        return ym_diag_set(diag, YM_ENOMEM, "out of memory");
    ym_hreq_respond_text(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
    return YM_OK;
}

ym_err ym_server_ready(ym_server_t *srv, ym_diag *diag)
{
    if (srv->draining) {
        ym_metrics_add(srv->metrics, YM_M_REJECTED_BUSY, 1);
        return ym_diag_set(diag, YM_EDRAINING,
                           "the server is shutting down; retry on another replica");
    }
    if (srv->sched == NULL)
        return ym_diag_set(diag, YM_ELOADING, "the model is still loading");
    return YM_OK;
}

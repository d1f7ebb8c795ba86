/* server/probes.c - GET /healthz, /readyz and /metrics (no key needed: probes and scrapers),
 * and the readiness check the model-using handlers make.
 *
 * Owns: nothing. Runs: loop thread. Must not: touch the connection (it answers through
 * ym_hreq_respond_*). */
#include "server/server.h"

/* GET /healthz: 200 while the process runs (liveness). */
void ym_probes_healthz(ym_hreq *r, const ym_match *m)
{
    ym_hreq_respond_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

/* GET /readyz: 200 once the model is loaded and while not draining. */
void ym_probes_readyz(ym_hreq *r, const ym_match *m)
{
    ym_server_t *srv = r->srv;
    const char *st = srv->draining ? "draining" : srv->ready ? "ready" : "loading";
    ym_hreq_respond_json(r, srv->ready && !srv->draining ? 200 : 503,
                         json_pack("{s:s}", "status", st));
}

/* GET /metrics: Prometheus text format. */
void ym_probes_metrics(ym_hreq *r, const ym_match *m)
{
    char *text = NULL;
    size_t len = 0;
    if (ym_metrics_render(r->srv->metrics, &text, &len) != 0)
        ym_hreq_respond_error(r, YM_ENOMEM, NULL, "out of memory");
    else
        ym_hreq_respond_text(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

int ym_server_check_ready(ym_hreq *r)
{
    ym_server_t *srv = r->srv;
    if (srv->draining) {
        ym_metrics_add(srv->metrics, YM_M_REJECTED_BUSY, 1);
        ym_hreq_respond_error(r, YM_EDRAINING, NULL,
                              "the server is shutting down; retry on another replica");
        return -1;
    }
    if (srv->sched == NULL) {
        ym_hreq_respond_error(r, YM_ELOADING, NULL, "the model is still loading");
        return -1;
    }
    return 0;
}

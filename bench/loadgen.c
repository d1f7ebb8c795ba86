/* bench/loadgen.c - closed-loop load client for yunmind's streaming /v1/completions.
 *
 * N clients, each one keep-alive HTTP/1.1 connection, all driven by one thread on one epoll
 * set, so the client takes as little CPU as possible from the server it measures (the machine
 * has two cores). Each client loops: POST /v1/completions with stream: true, ignore_eos: true,
 * max_tokens M and stream_options.include_usage, reads the SSE stream to its end, and sends the
 * next request at once. Parsing is minimal on purpose: the chunked transfer coding is undone
 * and each "data:" line is classified by a few fixed substrings; no JSON library.
 *
 * What is measured (times taken right after each read() returns):
 *   - TTFT: request written -> first content chunk (an event with a non-empty "choices").
 *   - ITL: gap between successive content chunks of one stream (as vLLM's benchmark defines
 *     it). A chunk carries every token the server had ready when it wrote, so a chunk may
 *     hold several tokens; chunks_per_token says how often that happened.
 *   - TPOT: (last content chunk - first) / (tokens - 1) per request; unaffected by chunking.
 *   - tokens: the usage chunk's completion_tokens (exact; chunks do not map to tokens).
 *   - tok/s: tokens delivered inside the window [warmup, warmup + duration], while every
 *     client is busy: each request's completion_tokens are spread evenly over its content
 *     chunks and the chunks inside the window are counted (exact when each chunk is one
 *     token). After the window no new request starts; those in flight finish (up to
 *     --drain-s) so the server is idle for the next run.
 * Latency percentiles use the requests that started inside the window (they run to the end,
 * during the drain if need be: a window may be shorter than one request at high load).
 * A request counts as an error on a non-200 status, an "error" event, a stream without
 * [DONE], a connection failure, or completion_tokens != max_tokens.
 *
 * Output: one JSON object on stdout; progress and errors on stderr. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_BUF (64 * 1024)
#define HDR_MAX (16 * 1024)
#define ERR_KEEP 200

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A growable array of doubles (latency samples, chunk times). */
typedef struct {
    double *v;
    size_t n;
    size_t cap;
} dvec;

static void dvec_push(dvec *a, double x)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 1024;
        double *v = realloc(a->v, cap * sizeof(double));
        if (v == NULL) {
            fprintf(stderr, "loadgen: out of memory\n");
            exit(1);
        }
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
}

enum { C_IDLE, C_CONNECTING, C_WRITING, C_HEADERS, C_BODY };
enum { CH_SIZE, CH_DATA, CH_DATA_END, CH_TRAILER };

typedef struct conn {
    int fd;
    int state;
    size_t wr_off;
    /* Response head. */
    char hdr[HDR_MAX];
    size_t hdr_len;
    int status;
    int chunked;
    long long content_left; /* without chunked: bytes of body still to come, -1 = to close */
    int close_after;
    /* Chunked decoder. */
    int cstate;
    unsigned long long chunk_left;
    char sizeline[64];
    size_t sizeline_len;
    /* SSE lines (body bytes after de-chunking). */
    char *line;
    size_t line_len;
    size_t line_cap;
    /* The request this client sends: g->request, or its own copy with an X-Session-Id
     * header (owned then, freed with the client). */
    char *request;
    size_t request_len;
    /* The request in flight. */
    double t_send;
    dvec chunk_t; /* times of content chunks */
    long tokens;  /* completion_tokens from the usage chunk, -1 before it */
    int done;     /* [DONE] seen */
    int failed;   /* an "error" event */
    char err[ERR_KEEP + 1]; /* start of a non-200 body, for the report */
    size_t err_len;
} conn;

typedef struct {
    /* Settings. */
    struct sockaddr_in addr;
    char *request; /* owned: the whole HTTP request, sent again and again */
    size_t request_len;
    int n_clients;
    int max_tokens;
    long max_requests; /* 0: run for the duration */
    double t_start, t_warm, t_stop, drain_s;
    /* State. */
    int ep;
    conn *conns;
    int n_active; /* connections not idle: connecting or with a request in flight */
    long started;
    int stopping;
    /* Results. */
    dvec ttft, itl, tpot;
    double window_tokens;
    long req_ok, req_window, errors;
    long err_status, err_stream, err_conn, err_count;
    char first_err[ERR_KEEP + 64];
    double t_last_end;
} loadgen;

static void record_error(loadgen *g, long *counter, const char *fmt, const char *detail)
{
    g->errors++;
    (*counter)++;
    if (g->first_err[0] == '\0')
        snprintf(g->first_err, sizeof(g->first_err), fmt, detail ? detail : "");
}

static int set_events(loadgen *g, conn *c, uint32_t ev)
{
    struct epoll_event e = {.events = ev, .data.ptr = c};
    return epoll_ctl(g->ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void set_state(loadgen *g, conn *c, int state)
{
    g->n_active += (state != C_IDLE) - (c->state != C_IDLE);
    c->state = state;
}

static void conn_close(loadgen *g, conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(g->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    set_state(g, c, C_IDLE);
}

static void reset_response(conn *c)
{
    c->hdr_len = 0;
    c->status = 0;
    c->chunked = 0;
    c->content_left = -1;
    c->close_after = 0;
    c->cstate = CH_SIZE;
    c->chunk_left = 0;
    c->sizeline_len = 0;
    c->line_len = 0;
    c->chunk_t.n = 0;
    c->tokens = -1;
    c->done = 0;
    c->failed = 0;
    c->err_len = 0;
}

static int may_start(loadgen *g, double t)
{
    /* A server that rejects everything would make us spin: give up after many errors. */
    if (g->errors > 100L * g->n_clients)
        g->stopping = 1;
    if (g->stopping)
        return 0;
    if (g->max_requests > 0)
        return g->started < g->max_requests;
    return t < g->t_stop;
}

/* Write what is left of the request; 0 done, 1 would block, -1 error. */
static int conn_write(loadgen *g, conn *c)
{
    (void)g;
    while (c->wr_off < c->request_len) {
        ssize_t n = send(c->fd, c->request + c->wr_off, c->request_len - c->wr_off,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 1;
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->wr_off += (size_t)n;
    }
    return 0;
}

/* Write the request on the connected c and wait for the answer. */
static void send_request(loadgen *g, conn *c)
{
    reset_response(c);
    c->wr_off = 0;
    c->t_send = now();
    g->started++;
    int w = conn_write(g, c);
    if (w < 0) {
        record_error(g, &g->err_conn, "send: %s", strerror(errno));
        conn_close(g, c);
        return;
    }
    set_state(g, c, w == 0 ? C_HEADERS : C_WRITING);
    set_events(g, c, w == 0 ? EPOLLIN : EPOLLOUT);
}

/* Send the next request on c, connecting first when it has no connection. */
static void conn_start_request(loadgen *g, conn *c)
{
    if (c->fd >= 0) {
        send_request(g, c);
        return;
    }
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        record_error(g, &g->err_conn, "socket: %s", strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(g->ep, EPOLL_CTL_ADD, c->fd, &e);
    set_state(g, c, C_CONNECTING);
    if (connect(c->fd, (struct sockaddr *)&g->addr, sizeof(g->addr)) != 0 &&
        errno != EINPROGRESS) {
        record_error(g, &g->err_conn, "connect: %s", strerror(errno));
        conn_close(g, c);
    }
}

/* The request on c ended (well or not); record it and go on. */
static void conn_finish(loadgen *g, conn *c, int ok)
{
    double t_end = c->chunk_t.n > 0 ? c->chunk_t.v[c->chunk_t.n - 1] : now();
    if (ok && c->status != 200) {
        ok = 0;
        c->err[c->err_len] = '\0';
        char d[ERR_KEEP + 32];
        snprintf(d, sizeof(d), "%d %s", c->status, c->err);
        record_error(g, &g->err_status, "HTTP %s", d);
    } else if (ok && (c->failed || !c->done)) {
        ok = 0;
        record_error(g, &g->err_stream, "%s",
                     c->failed ? "an error event in the stream" : "stream ended without [DONE]");
    } else if (ok && (c->tokens != g->max_tokens || c->chunk_t.n == 0)) {
        ok = 0;
        char d[64];
        snprintf(d, sizeof(d), "%ld", c->tokens);
        record_error(g, &g->err_count, "completion_tokens %s != max_tokens", d);
    } else if (!ok) {
        record_error(g, &g->err_conn, "%s", "connection closed during a response");
    }
    if (ok) {
        g->req_ok++;
        if (t_end > g->t_last_end)
            g->t_last_end = t_end;
        /* Tokens inside the window: each chunk stands for tokens / chunks of them. */
        double per_chunk = (double)c->tokens / (double)c->chunk_t.n;
        for (size_t i = 0; i < c->chunk_t.n; i++)
            if (c->chunk_t.v[i] >= g->t_warm && c->chunk_t.v[i] <= g->t_stop)
                g->window_tokens += per_chunk;
        if (c->t_send >= g->t_warm && c->t_send <= g->t_stop) {
            g->req_window++;
            dvec_push(&g->ttft, c->chunk_t.v[0] - c->t_send);
            for (size_t i = 1; i < c->chunk_t.n; i++)
                dvec_push(&g->itl, c->chunk_t.v[i] - c->chunk_t.v[i - 1]);
            if (c->tokens > 1)
                dvec_push(&g->tpot, (t_end - c->chunk_t.v[0]) / (double)(c->tokens - 1));
        }
    }
    if (!ok || c->close_after)
        conn_close(g, c);
    if (may_start(g, now()))
        conn_start_request(g, c); /* on the same connection, or a new one */
    else
        set_state(g, c, C_IDLE); /* an open one stays in the epoll set: a close is noticed */
}

/* One complete SSE line of the current response (without its newline). */
static void sse_line(conn *c, const char *s, size_t n, double t)
{
    if (n < 5 || memcmp(s, "data:", 5) != 0)
        return; /* blank separators, ": ping" comments, other fields */
    s += 5;
    n -= 5;
    if (n > 0 && *s == ' ') {
        s++;
        n--;
    }
    if (n == 6 && memcmp(s, "[DONE]", 6) == 0) {
        c->done = 1;
        return;
    }
    if (n >= 8 && memcmp(s, "{\"error\"", 8) == 0) {
        c->failed = 1;
        return;
    }
    if (memmem(s, n, "\"choices\":[]", 12) != NULL) {
        const char *k = memmem(s, n, "\"completion_tokens\":", 20);
        if (k != NULL)
            c->tokens = strtol(k + 20, NULL, 10); /* the line ends in '}', strtol stops there */
        return;
    }
    if (memmem(s, n, "\"choices\":[{", 12) != NULL)
        dvec_push(&c->chunk_t, t);
}

/* Body bytes (de-chunked) of the current response. */
static void body_bytes(conn *c, const char *p, size_t n, double t)
{
    if (c->status != 200) {
        size_t k = n < ERR_KEEP - c->err_len ? n : ERR_KEEP - c->err_len;
        memcpy(c->err + c->err_len, p, k);
        c->err_len += k;
        return;
    }
    for (size_t i = 0; i < n;) {
        const char *nl = memchr(p + i, '\n', n - i);
        size_t k = nl ? (size_t)(nl - (p + i)) : n - i;
        if (c->line_len + k + 1 > c->line_cap) {
            size_t cap = c->line_cap ? c->line_cap : 4096;
            while (cap < c->line_len + k + 1)
                cap *= 2;
            char *l = realloc(c->line, cap);
            if (l == NULL) {
                fprintf(stderr, "loadgen: out of memory\n");
                exit(1);
            }
            c->line = l;
            c->line_cap = cap;
        }
        memcpy(c->line + c->line_len, p + i, k);
        c->line_len += k;
        i += k;
        if (nl != NULL) {
            size_t len = c->line_len;
            if (len > 0 && c->line[len - 1] == '\r')
                len--;
            sse_line(c, c->line, len, t);
            c->line_len = 0;
            i++;
        }
    }
}

/* Parse the response head in c->hdr (complete, ends with CRLF CRLF). 0 or -1. */
static int parse_head(conn *c)
{
    c->hdr[c->hdr_len] = '\0';
    if (sscanf(c->hdr, "HTTP/1.%*d %d", &c->status) != 1)
        return -1;
    if (strncmp(c->hdr, "HTTP/1.0", 8) == 0)
        c->close_after = 1;
    for (char *l = strstr(c->hdr, "\r\n"); l != NULL && l[2] != '\r';) {
        l += 2;
        char *end = strstr(l, "\r\n");
        if (end == NULL)
            break;
        *end = '\0';
        if (strncasecmp(l, "content-length:", 15) == 0)
            c->content_left = strtoll(l + 15, NULL, 10);
        else if (strncasecmp(l, "transfer-encoding:", 18) == 0 && strcasestr(l, "chunked"))
            c->chunked = 1;
        else if (strncasecmp(l, "connection:", 11) == 0 && strcasestr(l, "close"))
            c->close_after = 1;
        *end = '\r';
        l = end;
    }
    if (c->chunked)
        c->content_left = -1;
    return 0;
}

/* Feed received bytes through head, chunked decoding and SSE. Returns 1 when the response is
 * complete, 0 when more is needed, -1 on a protocol error. */
static int conn_feed(conn *c, const char *p, size_t n, double t)
{
    size_t i = 0;
    if (c->state == C_HEADERS) {
        /* Copy byte by byte until CRLF CRLF: heads are small and come once per request. */
        while (i < n) {
            if (c->hdr_len + 1 >= HDR_MAX)
                return -1;
            c->hdr[c->hdr_len++] = p[i++];
            if (c->hdr_len >= 4 && memcmp(c->hdr + c->hdr_len - 4, "\r\n\r\n", 4) == 0) {
                if (parse_head(c) != 0)
                    return -1;
                c->state = C_BODY;
                if (!c->chunked && c->content_left == 0)
                    return 1;
                break;
            }
        }
    }
    if (c->state != C_BODY)
        return 0;
    if (!c->chunked) {
        size_t k = n - i;
        if (c->content_left >= 0 && (long long)k > c->content_left)
            k = (size_t)c->content_left;
        body_bytes(c, p + i, k, t);
        if (c->content_left >= 0) {
            c->content_left -= (long long)k;
            return c->content_left == 0;
        }
        return 0; /* body until close */
    }
    while (i < n) {
        switch (c->cstate) {
        case CH_SIZE:
        case CH_TRAILER: {
            char ch = p[i++];
            if (ch != '\n') {
                if (c->sizeline_len + 1 < sizeof(c->sizeline))
                    c->sizeline[c->sizeline_len++] = ch;
                continue;
            }
            c->sizeline[c->sizeline_len] = '\0';
            size_t len = c->sizeline_len;
            c->sizeline_len = 0;
            if (c->cstate == CH_TRAILER) {
                if (len == 0 || (len == 1 && c->sizeline[0] == '\r'))
                    return 1; /* the empty line after the last chunk */
                continue;
            }
            char *end;
            c->chunk_left = strtoull(c->sizeline, &end, 16);
            if (end == c->sizeline)
                return -1;
            c->cstate = c->chunk_left == 0 ? CH_TRAILER : CH_DATA;
            break;
        }
        case CH_DATA: {
            size_t k = n - i;
            if (k > c->chunk_left)
                k = (size_t)c->chunk_left;
            body_bytes(c, p + i, k, t);
            i += k;
            c->chunk_left -= k;
            if (c->chunk_left == 0)
                c->cstate = CH_DATA_END;
            break;
        }
        case CH_DATA_END:
            if (p[i++] == '\n')
                c->cstate = CH_SIZE;
            break;
        }
    }
    return 0;
}

static void on_event(loadgen *g, conn *c, char *buf)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            record_error(g, &g->err_conn, "connect: %s", strerror(err));
            conn_close(g, c);
            return;
        }
        send_request(g, c);
        return;
    }
    if (c->state == C_WRITING) {
        int w = conn_write(g, c);
        if (w < 0) {
            record_error(g, &g->err_conn, "send: %s", strerror(errno));
            conn_close(g, c);
        } else if (w == 0) {
            set_state(g, c, C_HEADERS);
            set_events(g, c, EPOLLIN);
        }
        return;
    }
    for (;;) {
        ssize_t n = recv(c->fd, buf, READ_BUF, 0);
        double t = now();
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (c->state == C_IDLE) { /* an idle keep-alive connection closed or spoke */
            conn_close(g, c);
            return;
        }
        if (n <= 0) {
            /* A body without length ends at close; anything else is cut short. */
            int complete = n == 0 && c->state == C_BODY && !c->chunked && c->content_left < 0;
            c->close_after = 1;
            conn_finish(g, c, complete);
            return;
        }
        int r = conn_feed(c, buf, (size_t)n, t);
        if (r < 0) {
            record_error(g, &g->err_conn, "%s", "malformed HTTP response");
            conn_close(g, c);
            if (may_start(g, now()))
                conn_start_request(g, c);
            return;
        }
        if (r == 1) {
            conn_finish(g, c, 1);
            if (c->fd < 0 || c->state != C_HEADERS)
                return;
        }
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array, in ms; -1 when empty. */
static double pct_ms(const dvec *a, double p)
{
    if (a->n == 0)
        return -1;
    size_t k = (size_t)(p / 100.0 * (double)a->n + 0.999999);
    if (k < 1)
        k = 1;
    if (k > a->n)
        k = a->n;
    return 1e3 * a->v[k - 1];
}

static double mean_ms(const dvec *a)
{
    double s = 0;
    for (size_t i = 0; i < a->n; i++)
        s += a->v[i];
    return a->n ? 1e3 * s / (double)a->n : -1;
}

static void print_stats(const char *name, dvec *a)
{
    qsort(a->v, a->n, sizeof(double), cmp_double);
    printf("  \"%s\": {\"n\": %zu, \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"mean\": %.3f, "
           "\"max\": %.3f},\n",
           name, a->n, pct_ms(a, 50), pct_ms(a, 90), pct_ms(a, 99), mean_ms(a), pct_ms(a, 100));
}

/* Append s to the JSON string being built in b (escaped). */
static size_t json_escape(char *b, size_t cap, const char *s)
{
    size_t j = 0;
    for (; *s != '\0' && j + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            b[j++] = '\\';
            b[j++] = (char)ch;
        } else if (ch < 0x20) {
            j += (size_t)snprintf(b + j, cap - j, "\\u%04x", ch);
        } else {
            b[j++] = (char)ch;
        }
    }
    b[j] = '\0';
    return j;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: loadgen --url http://127.0.0.1:PORT [options]\n"
            "  --clients N       concurrent streaming clients (1)\n"
            "  --duration S      measured window in seconds (20)\n"
            "  --warmup S        seconds before the window, not measured (3)\n"
            "  --requests N      instead of a duration: stop after N requests in all;\n"
            "                    the window is then the whole run\n"
            "  --max-tokens N    tokens per request; ignore_eos makes it exact (64)\n"
            "  --prompt TEXT     the prompt (a short line of verse)\n"
            "  --model ID        the model field (left out by default)\n"
            "  --seed N          sample with temperature 1 and this seed (default: greedy)\n"
            "  --drain-s S       after the window, wait this long for streams in flight (60)\n"
            "  --session PREFIX  client i sends X-Session-Id: PREFIX-i on every request, so\n"
            "                    each request stores that session's state (the state tiers'\n"
            "                    write path); the prompt does not extend the session's\n"
            "                    history, so every request runs its prompt in full\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"url", required_argument, 0, 'u'},       {"clients", required_argument, 0, 'c'},
        {"duration", required_argument, 0, 'd'},  {"warmup", required_argument, 0, 'w'},
        {"requests", required_argument, 0, 'r'},  {"max-tokens", required_argument, 0, 'n'},
        {"prompt", required_argument, 0, 'p'},    {"model", required_argument, 0, 'm'},
        {"seed", required_argument, 0, 's'},      {"drain-s", required_argument, 0, 'D'},
        {"session", required_argument, 0, 'S'},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *url = NULL, *prompt = "Now is the winter of our discontent made glorious summer",
               *model = NULL, *session = NULL;
    double duration = 20, warmup = 3, drain = 60;
    long clients = 1, requests = 0, max_tokens = 64, seed = -1;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'u': url = optarg; break;
        case 'c': clients = strtol(optarg, NULL, 10); break;
        case 'd': duration = strtod(optarg, NULL); break;
        case 'w': warmup = strtod(optarg, NULL); break;
        case 'r': requests = strtol(optarg, NULL, 10); break;
        case 'n': max_tokens = strtol(optarg, NULL, 10); break;
        case 'p': prompt = optarg; break;
        case 'm': model = optarg; break;
        case 's': seed = strtol(optarg, NULL, 10); break;
        case 'D': drain = strtod(optarg, NULL); break;
        case 'S': session = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    int port = 0;
    char host[64] = "";
    if (url == NULL || sscanf(url, "http://%63[0-9.]:%d", host, &port) != 2 || port <= 0 ||
        port > 65535 || clients < 1 || clients > 10000 || max_tokens < 1 || duration <= 0 ||
        warmup < 0 || requests < 0 || drain < 0 ||
        (session != NULL && (session[0] == '\0' || strlen(session) > 200 ||
                             strspn(session, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                             "0123456789-._~:@+=") != strlen(session)))) {
        usage(stderr);
        return 2;
    }
    static loadgen g;
    g.addr.sin_family = AF_INET;
    g.addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &g.addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --url needs an IPv4 address, got '%s'\n", host);
        return 2;
    }
    g.n_clients = (int)clients;
    g.max_tokens = (int)max_tokens;
    g.max_requests = requests;
    g.drain_s = drain;

    /* The request, built once. */
    char esc_prompt[8192], esc_model[512], sampling[64], body[10000];
    json_escape(esc_prompt, sizeof(esc_prompt), prompt);
    json_escape(esc_model, sizeof(esc_model), model ? model : "");
    if (seed >= 0)
        snprintf(sampling, sizeof(sampling), "\"temperature\":1,\"seed\":%ld", seed);
    else
        snprintf(sampling, sizeof(sampling), "\"temperature\":0");
    int blen = snprintf(body, sizeof(body),
                        "{%s%s%s\"prompt\":\"%s\",\"max_tokens\":%ld,%s,\"ignore_eos\":true,"
                        "\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                        model ? "\"model\":\"" : "", model ? esc_model : "", model ? "\"," : "",
                        esc_prompt, max_tokens, sampling);
    size_t cap = (size_t)blen + 512;
    g.request = malloc(cap);
    g.conns = calloc((size_t)clients, sizeof(conn));
    char *buf = malloc(READ_BUF);
    struct epoll_event *evs = calloc((size_t)clients, sizeof(*evs));
    if (g.request == NULL || g.conns == NULL || buf == NULL || evs == NULL) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    g.request_len = (size_t)snprintf(g.request, cap,
                                     "POST /v1/completions HTTP/1.1\r\n"
                                     "Host: %s:%d\r\n"
                                     "Content-Type: application/json\r\n"
                                     "Accept: text/event-stream\r\n"
                                     "Content-Length: %d\r\n"
                                     "\r\n%s",
                                     host, port, blen, body);
    for (int i = 0; i < g.n_clients; i++) {
        conn *c = &g.conns[i];
        c->request = g.request;
        c->request_len = g.request_len;
        if (session == NULL)
            continue;
        size_t ccap = g.request_len + strlen(session) + 64;
        c->request = malloc(ccap);
        if (c->request == NULL) {
            fprintf(stderr, "loadgen: out of memory\n");
            return 1;
        }
        c->request_len = (size_t)snprintf(c->request, ccap,
                                          "POST /v1/completions HTTP/1.1\r\n"
                                          "Host: %s:%d\r\n"
                                          "X-Session-Id: %s-%d\r\n"
                                          "Content-Type: application/json\r\n"
                                          "Accept: text/event-stream\r\n"
                                          "Content-Length: %d\r\n"
                                          "\r\n%s",
                                          host, port, session, i, blen, body);
    }
    if ((g.ep = epoll_create1(EPOLL_CLOEXEC)) < 0) {
        perror("loadgen: epoll_create1");
        return 1;
    }

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    g.t_start = now();
    g.t_warm = requests > 0 ? g.t_start : g.t_start + warmup;
    g.t_stop = requests > 0 ? 1e300 : g.t_warm + duration;
    for (int i = 0; i < g.n_clients; i++) {
        g.conns[i].fd = -1;
        if (may_start(&g, now()))
            conn_start_request(&g, &g.conns[i]);
    }
    double deadline = requests > 0 ? 1e300 : g.t_stop + drain;
    while (g.n_active > 0) {
        double t = now();
        if (t > deadline)
            break;
        int timeout = (int)((deadline - t) * 1e3) + 1;
        if (timeout > 1000)
            timeout = 1000;
        int n = epoll_wait(g.ep, evs, g.n_clients, timeout);
        if (n < 0 && errno != EINTR) {
            perror("loadgen: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++)
            on_event(&g, evs[i].data.ptr, buf);
    }
    double t_end = now();
    long unfinished = g.n_active;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                 1e-6 * (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) +
                 (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 1e-6 * (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec);
    if (requests > 0)
        g.t_stop = g.t_last_end > g.t_warm ? g.t_last_end : t_end;
    double window = g.t_stop - g.t_warm;
    if (requests > 0) { /* every chunk was inside the window */
        g.window_tokens = (double)g.req_ok * (double)max_tokens;
    }
    size_t n_chunks = g.itl.n + g.ttft.n; /* content chunks of the window's requests */
    char err_esc[2 * sizeof(g.first_err)];
    json_escape(err_esc, sizeof(err_esc), g.first_err);

    printf("{\n  \"clients\": %d,\n  \"max_tokens\": %d,\n  \"window_s\": %.3f,\n"
           "  \"warmup_s\": %.3f,\n  \"requests\": %ld,\n  \"requests_in_window\": %ld,\n"
           "  \"tokens\": %.0f,\n  \"tok_s\": %.3f,\n  \"requests_s\": %.3f,\n",
           g.n_clients, g.max_tokens, window, g.t_warm - g.t_start, g.req_ok, g.req_window,
           g.window_tokens, window > 0 ? g.window_tokens / window : 0,
           window > 0 ? (double)g.req_window / window : 0);
    printf("  \"chunks_per_token\": %.4f,\n",
           g.req_window > 0 ? (double)n_chunks / ((double)g.req_window * (double)max_tokens) : 0);
    print_stats("ttft_ms", &g.ttft);
    print_stats("itl_ms", &g.itl);
    print_stats("tpot_ms", &g.tpot);
    printf("  \"errors\": %ld,\n  \"errors_by_kind\": {\"http_status\": %ld, \"stream\": %ld, "
           "\"connection\": %ld, \"token_count\": %ld, \"unfinished\": %ld},\n"
           "  \"first_error\": \"%s\",\n  \"client_cpu_s\": %.3f,\n  \"wall_s\": %.3f\n}\n",
           g.errors + unfinished, g.err_status, g.err_stream, g.err_conn, g.err_count, unfinished,
           err_esc, cpu, t_end - g.t_start);
    for (int i = 0; i < g.n_clients; i++) {
        if (g.conns[i].fd >= 0)
            close(g.conns[i].fd);
        free(g.conns[i].line);
        free(g.conns[i].chunk_t.v);
        if (g.conns[i].request != g.request)
            free(g.conns[i].request);
    }
    free(g.ttft.v);
    free(g.itl.v);
    free(g.tpot.v);
    free(g.conns);
    free(g.request);
    free(buf);
    free(evs);
    close(g.ep);
    return g.errors + unfinished > 0 ? 1 : 0;
}

/* engine/log.h - structured log lines: one JSON object per line on stderr.
 * {"ts":"2026-11-29T02:24:36.123Z","level":"info","req":"...","msg":"..."}. Any thread. */
#ifndef YM_ENGINE_LOG_H
#define YM_ENGINE_LOG_H

typedef enum { YM_LOG_DEBUG, YM_LOG_INFO, YM_LOG_WARN, YM_LOG_ERROR } ym_log_level;

/* req may be NULL. Lines below the current level are dropped. */
void ym_log(ym_log_level level, const char *req, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void ym_log_set_level(ym_log_level level);
/* Human-readable "yunmin: msg" lines instead of JSON (the CLI's choice). */
void ym_log_set_plain(int plain);

#endif

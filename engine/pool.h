/* engine/pool.h - a small fork-join thread pool for the forward pass.
 *
 * ym_pool_run(pool, fn, arg) calls fn(arg, i, n) for i in [0, n) on n threads (the caller is
 * thread 0) and returns when all have finished. Workers spin briefly, then sleep on a condvar.
 * One caller at a time. */
#ifndef YM_ENGINE_POOL_H
#define YM_ENGINE_POOL_H

#include "engine/err.h"

typedef struct ym_pool ym_pool_t;
typedef void (*ym_pool_fn)(void *arg, int ith, int nth);

ym_err ym_pool_new(int n_threads, ym_pool_t **out); /* n_threads >= 1 */
void ym_pool_free(ym_pool_t *pool);                 /* NULL-safe; joins the workers */
int ym_pool_n_threads(const ym_pool_t *pool);
void ym_pool_run(ym_pool_t *pool, ym_pool_fn fn, void *arg);
/* Inside fn: wait until every thread of the current run has reached this point. */
void ym_pool_barrier(ym_pool_t *pool);
int ym_n_cores(void); /* usable cores: online, in our affinity mask, within a cgroup CPU limit; >= 1 */

#endif

/* engine/pool.c - fork-join thread pool for the forward pass (engine thread + workers).
 *
 * The engine thread is thread 0 of every run; workers 1..n-1 wait for a new generation
 * number, call fn, and count themselves done. Waits spin for a short while (a forward pass is
 * many short phases) and then sleep on a condvar, so an idle engine costs no CPU.
 * Barriers inside fn are sense-reversing spin barriers (phases last microseconds to
 * milliseconds). Only the engine thread calls ym_pool_run. */
#include "engine/pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* How long a waiting thread spins before it yields or sleeps. A pause instruction takes about
 * 140 cycles on recent Intel cores, so 4000 of them are roughly 200 µs: longer than the gap
 * between two decode steps, much shorter than a time slice. Spinning longer hurts badly when
 * another process holds the other core: the partner we wait for cannot run. */
#define SPIN_RUN 4000
#define SPIN_BARRIER 1000

struct ym_pool {
    int n_threads;
    pthread_t *threads; /* owned, [n_threads - 1] */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_uint generation; /* bumped for each run; workers wait for a change */
    atomic_int n_done;
    atomic_int stop;
    ym_pool_fn fn;
    void *arg;
    /* barrier */
    atomic_int bar_count;
    atomic_uint bar_gen;
    atomic_int bar_sleepers; /* threads asleep on bar_gen */
    atomic_int run_sleeping; /* the engine thread is asleep on n_done */
};

/* Sleeping, not yielding, once a wait has spun long enough: when another process holds a
 * core, the partner we wait for is runnable but has no CPU; a sleeping waiter frees its core
 * and the scheduler's idle balancing moves the partner there at once, where sched_yield()
 * keeps the core busy with us. Spinning first keeps the common case free of system calls. */
static void futex_wait(void *addr, unsigned val)
{
    syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(void *addr)
{
    syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

typedef struct {
    ym_pool_t *pool;
    int ith;
} worker_arg;

static void *worker_main(void *p)
{
    worker_arg wa = *(worker_arg *)p;
    free(p);
    ym_pool_t *pool = wa.pool;
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&pool->stop, memory_order_acquire)) {
            if (++spins < SPIN_RUN) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&pool->lock);
            while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->wake, &pool->lock);
            pthread_mutex_unlock(&pool->lock);
        }
        if (atomic_load(&pool->stop))
            return NULL;
        seen = gen;
        pool->fn(pool->arg, wa.ith, pool->n_threads);
        atomic_fetch_add(&pool->n_done, 1);
        if (atomic_load(&pool->run_sleeping))
            futex_wake_all(&pool->n_done);
    }
}

/* A container's CPU limit (cgroup v2 cpu.max "QUOTA PERIOD", or "max"), rounded up; 0 when
 * there is none. More threads than the quota only queue behind each other at every barrier. */
static int cgroup_cpu_limit(void)
{
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
    if (f == NULL)
        return 0;
    char quota[32] = "";
    long period = 0;
    int n = fscanf(f, "%31s %ld", quota, &period);
    fclose(f);
    if (n != 2 || period <= 0 || strcmp(quota, "max") == 0)
        return 0;
    long q = strtol(quota, NULL, 10);
    return q > 0 ? (int)((q + period - 1) / period) : 0;
}

int ym_n_cores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int c = CPU_COUNT(&set);
        if (c > 0 && (n <= 0 || c < n))
            n = c;
    }
    int limit = cgroup_cpu_limit();
    if (limit > 0 && (n <= 0 || limit < n))
        n = limit;
    return n > 0 ? (int)n : 1;
}

ym_err ym_pool_new(int n_threads, ym_pool_t **out)
{
    *out = NULL;
    if (n_threads < 1)
        return YM_EINVAL;
    ym_pool_t *pool = calloc(1, sizeof(*pool));
    if (pool == NULL)
        return YM_ENOMEM;
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    if (n_threads > 1 && (pool->threads = calloc((size_t)n_threads - 1, sizeof(pthread_t))) == NULL)
        goto fail;
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof(*wa));
        if (wa == NULL)
            goto fail;
        wa->pool = pool;
        wa->ith = i;
        if (pthread_create(&pool->threads[i - 1], NULL, worker_main, wa) != 0) {
            free(wa);
            goto fail;
        }
        pool->n_threads = i + 1; /* so ym_pool_free joins exactly the ones started */
    }
    pool->n_threads = n_threads;
    *out = pool;
    return YM_OK;
fail:
    ym_pool_free(pool);
    return YM_ENOMEM;
}

void ym_pool_free(ym_pool_t *pool)
{
    if (pool == NULL)
        return;
    pthread_mutex_lock(&pool->lock);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 1; i < pool->n_threads && pool->threads != NULL; i++)
        if (pool->threads[i - 1])
            pthread_join(pool->threads[i - 1], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    free(pool->threads);
    free(pool);
}

int ym_pool_n_threads(const ym_pool_t *pool)
{
    return pool->n_threads;
}

void ym_pool_run(ym_pool_t *pool, ym_pool_fn fn, void *arg)
{
    if (pool->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->n_done, 0, memory_order_relaxed);
    pthread_mutex_lock(&pool->lock);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    fn(arg, 0, pool->n_threads);
    int spins = 0, done;
    while ((done = atomic_load(&pool->n_done)) < pool->n_threads - 1) {
        if (++spins < SPIN_BARRIER) {
            cpu_relax();
            continue;
        }
        atomic_store(&pool->run_sleeping, 1);
        if (atomic_load(&pool->n_done) == done)
            futex_wait(&pool->n_done, (unsigned)done);
        atomic_store(&pool->run_sleeping, 0);
    }
}

void ym_pool_barrier(ym_pool_t *pool)
{
    int n = pool->n_threads;
    if (n == 1)
        return;
    /* Read the generation before arriving: it cannot advance until we have arrived. */
    unsigned gen = atomic_load_explicit(&pool->bar_gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&pool->bar_count, 1, memory_order_acq_rel) == n - 1) {
        atomic_store_explicit(&pool->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add(&pool->bar_gen, 1);
        if (atomic_load(&pool->bar_sleepers) > 0)
            futex_wake_all(&pool->bar_gen);
        return;
    }
    int spins = 0;
    while (atomic_load_explicit(&pool->bar_gen, memory_order_acquire) == gen) {
        if (++spins < SPIN_BARRIER) {
            cpu_relax();
            continue;
        }
        /* seq_cst: either the releaser sees us counted, or we see its new generation. */
        atomic_fetch_add(&pool->bar_sleepers, 1);
        if (atomic_load(&pool->bar_gen) == gen)
            futex_wait(&pool->bar_gen, gen);
        atomic_fetch_sub(&pool->bar_sleepers, 1);
    }
}

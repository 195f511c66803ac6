/*
 * pool.c -- the runtime's thread pool: runs the tasks 0..n-1 of one job on the calling thread and up to
 * nthreads - 1 persistent workers, for the kernels of a decode step or a prefill (linears, attention).
 *
 * Why not OpenMP's parallel for: a parallel region ends only when every thread of the team has reached its
 * closing barrier. A small model's decode step is ~300 such regions of a few microseconds each; on a machine
 * whose cores are shared with other processes, a thread that is descheduled before it even starts holds the
 * region for a scheduler time slice (milliseconds). Here the caller claims tasks itself and waits only for tasks
 * that a worker has actually claimed: a worker that wakes late finds nothing left and goes back to waiting. Which
 * thread runs a task never changes what the task computes (each task's output elements have a fixed operation
 * sequence), so results are identical at any thread count and whoever runs what.
 *
 * Protocol. One 64-bit atomic `state` = generation (high 32 bits) | next task index (low 31 bits) | CLOSED
 * (bit 31). A job is published by writing its fields, then state = (gen, 0, open) with release order; a task is
 * claimed by a CAS of (gen, i, open) -> (gen, i + 1, open) with i < ntasks. The caller closes the job (CLOSED set,
 * release fence) after `done` == ntasks, and only then may the fields be rewritten for the next job. A worker
 * copies the fields after an acquire load of an open state and validates them by its first successful CAS: if any
 * field it read had been rewritten for a later job, the job was closed before, so the CAS (which compares the
 * whole state) fails (the seqlock argument: writer close + release fence before the field stores, reader field
 * loads + acquire fence before the CAS). Idle workers spin briefly, then sleep on a condition variable; the
 * publisher signals it only when someone sleeps (sleepers and state are both seq_cst, so one of the two sides
 * always sees the other).
 *
 * Nested use (a task that calls a kernel which would use the pool), a call from inside an OpenMP parallel region,
 * or a second thread calling while a job runs: that call runs its tasks serially on its own thread. After fork()
 * the child starts with no workers (they are created again on first use).
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define POOL_RELAX() _mm_pause()
#else
#define POOL_RELAX() ((void)0)
#endif

#include "kernels.h"

#define POOL_MAX 64                 /* workers + the caller */
#define POOL_CLOSED (1ull << 31)
#define POOL_IDX_MASK (POOL_CLOSED - 1)
#define POOL_SPIN 20000             /* pause iterations an idle worker polls before it sleeps (~0.1-0.5 ms) */
#define POOL_WAIT_SPIN 32           /* pause iterations the caller polls between yields of its core */
#define POOL_YIELD_EVERY 32         /* an idle worker yields its core every this many polls (power of two) */

static _Atomic uint64_t g_state = POOL_CLOSED; /* gen 0, closed */
static _Atomic(uq_pool_fn) g_fn;
static _Atomic(void *) g_arg;
static _Atomic int64_t g_ntasks;
static _Atomic int g_nwork;        /* participants of the current job: the caller (0) and workers 1..nwork-1 */
static _Atomic int64_t g_done;
static _Atomic int g_sleepers;
static _Atomic int g_busy;         /* a job is running (a second caller runs serially) */
static int g_nworkers;             /* workers started (guarded by g_mu) */
static int g_atfork;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static _Thread_local int t_in_task;

static inline uint32_t gen_of(uint64_t s) { return (uint32_t)(s >> 32); }

/* Claims the next task of generation g (ntasks nt): its index, or -1 when none is left or the job changed. */
static inline int64_t claim(uint32_t g, int64_t nt) {
    uint64_t s = atomic_load_explicit(&g_state, memory_order_relaxed);
    for (;;) {
        if (gen_of(s) != g || (s & POOL_CLOSED) || (int64_t)(s & POOL_IDX_MASK) >= nt) return -1;
        if (atomic_compare_exchange_weak_explicit(&g_state, &s, s + 1, memory_order_acq_rel, memory_order_relaxed))
            return (int64_t)(s & POOL_IDX_MASK);
    }
}

static void run_tasks(uint32_t g, uq_pool_fn fn, void *arg, int64_t nt, int worker) {
    int64_t t, ran = 0;
    t_in_task = 1;
    while ((t = claim(g, nt)) >= 0) {
        fn(arg, t, worker);
        ran++;
    }
    t_in_task = 0;
    if (ran) atomic_fetch_add_explicit(&g_done, ran, memory_order_release);
}

static void *worker_main(void *p) {
    const int w = (int)(intptr_t)p;
    uint32_t seen = gen_of(atomic_load(&g_state));
    for (;;) {
        uint64_t s = 0;
        int got = 0;
        for (int i = 0; i < POOL_SPIN; i++) {
            s = atomic_load_explicit(&g_state, memory_order_acquire);
            if (gen_of(s) != seen && !(s & POOL_CLOSED)) {
                got = 1;
                break;
            }
            POOL_RELAX();
            if ((i & (POOL_YIELD_EVERY - 1)) == POOL_YIELD_EVERY - 1) sched_yield();
        }
        if (!got) {
            pthread_mutex_lock(&g_mu);
            atomic_fetch_add(&g_sleepers, 1);
            for (;;) {
                s = atomic_load(&g_state);
                if (gen_of(s) != seen && !(s & POOL_CLOSED)) break;
                pthread_cond_wait(&g_cv, &g_mu);
            }
            atomic_fetch_sub(&g_sleepers, 1);
            pthread_mutex_unlock(&g_mu);
        }
        const uint32_t g = gen_of(s);
        seen = g;
        uq_pool_fn fn = atomic_load_explicit(&g_fn, memory_order_relaxed);
        void *arg = atomic_load_explicit(&g_arg, memory_order_relaxed);
        const int64_t nt = atomic_load_explicit(&g_ntasks, memory_order_relaxed);
        const int nw = atomic_load_explicit(&g_nwork, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (w >= nw) continue; /* not a participant of this job (fewer threads asked for) */
        run_tasks(g, fn, arg, nt, w);
    }
    return NULL;
}

static void pool_after_fork(void) {
    g_nworkers = 0;
    atomic_store(&g_sleepers, 0);
    atomic_store(&g_busy, 0);
    atomic_store(&g_state, POOL_CLOSED);
    pthread_mutex_init(&g_mu, NULL);
    pthread_cond_init(&g_cv, NULL);
}

/* Starts workers up to n - 1; returns how many participants the pool can give (1 when none could start). */
static int ensure_workers(int n) {
    if (n > POOL_MAX) n = POOL_MAX;
    pthread_mutex_lock(&g_mu);
    if (!g_atfork) {
        g_atfork = 1;
        (void)pthread_atfork(NULL, NULL, pool_after_fork);
    }
    while (g_nworkers < n - 1) {
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &at, worker_main, (void *)(intptr_t)(g_nworkers + 1));
        pthread_attr_destroy(&at);
        if (rc != 0) break;
        g_nworkers++;
    }
    int have = g_nworkers + 1;
    pthread_mutex_unlock(&g_mu);
    return have < n ? have : n;
}

void uq_pool_run(int64_t ntasks, int nthreads, uq_pool_fn fn, void *arg) {
    if (ntasks <= 0) return;
    int serial = nthreads <= 1 || ntasks == 1 || t_in_task || ntasks > (int64_t)POOL_IDX_MASK;
#ifdef _OPENMP
    serial = serial || omp_in_parallel();
#endif
    int expect = 0;
    if (!serial && !atomic_compare_exchange_strong(&g_busy, &expect, 1)) serial = 1;
    if (!serial && (nthreads = ensure_workers(nthreads)) <= 1) {
        atomic_store(&g_busy, 0);
        serial = 1;
    }
    if (serial) { /* tasks' own kernel calls may still use the pool when it is free (e.g. one task asked for) */
        for (int64_t t = 0; t < ntasks; t++) fn(arg, t, 0);
        return;
    }
    const uint32_t g = gen_of(atomic_load_explicit(&g_state, memory_order_relaxed)) + 1;
    atomic_store_explicit(&g_fn, fn, memory_order_relaxed);
    atomic_store_explicit(&g_arg, arg, memory_order_relaxed);
    atomic_store_explicit(&g_ntasks, ntasks, memory_order_relaxed);
    atomic_store_explicit(&g_nwork, nthreads, memory_order_relaxed);
    atomic_store_explicit(&g_done, 0, memory_order_relaxed);
    atomic_store(&g_state, (uint64_t)g << 32); /* seq_cst: publishes the fields (release) and orders the sleeper check */
    if (atomic_load(&g_sleepers) > 0) {
        pthread_mutex_lock(&g_mu);
        pthread_cond_broadcast(&g_cv);
        pthread_mutex_unlock(&g_mu);
    }
    run_tasks(g, fn, arg, ntasks, 0);
    /* wait only for tasks a worker has claimed and not finished */
    for (int i = 0; atomic_load_explicit(&g_done, memory_order_acquire) < ntasks; i++) {
        if (i < POOL_WAIT_SPIN) {
            POOL_RELAX();
        } else {
            sched_yield();
            i = 0;
        }
    }
    atomic_store_explicit(&g_state, ((uint64_t)g << 32) | POOL_CLOSED | (uint64_t)ntasks, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store(&g_busy, 0);
}

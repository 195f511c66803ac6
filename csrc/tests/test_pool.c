/* test_pool.c -- the kernels' thread pool (kernels/pool.c): every task runs exactly once with a worker id below the
 * thread count, whatever the task count; nested calls, calls from OpenMP threads and from several threads at once
 * run their tasks too (serially when the pool is taken); and the pool's workers come back after a fork-free
 * sequence of many small jobs (the decode pattern: thousands of jobs of a few tasks). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>

#include "test.h"

#include "../kernels/kernels.h"

#define MAXT 4096

typedef struct {
    _Atomic int count[MAXT];
    _Atomic int bad_worker;
    int nthreads;
    int nested;      /* tasks call the pool again with this many tasks */
    _Atomic long inner;
} pool_case;

static void inner_task(void *arg, int64_t t, int worker) {
    pool_case *c = arg;
    (void)t;
    if (worker != 0) atomic_fetch_add(&c->bad_worker, 1); /* nested calls run serially on the calling thread */
    atomic_fetch_add(&c->inner, 1);
}

static void count_task(void *arg, int64_t t, int worker) {
    pool_case *c = arg;
    if (worker < 0 || worker >= c->nthreads) atomic_fetch_add(&c->bad_worker, 1);
    atomic_fetch_add(&c->count[t], 1);
    if (c->nested) uq_pool_run(c->nested, c->nthreads, inner_task, c);
}

/* Runs one job; returns the number of tasks that did not run exactly once. */
static int run_case(pool_case *c, int64_t ntasks, int nthreads, int nested) {
    memset(c, 0, sizeof *c);
    c->nthreads = nthreads;
    c->nested = nested;
    uq_pool_run(ntasks, nthreads, count_task, c);
    int wrong = 0;
    for (int64_t t = 0; t < MAXT; t++) wrong += atomic_load(&c->count[t]) != (t < ntasks ? 1 : 0);
    return wrong;
}

static void *caller(void *p) {
    pool_case *c = p;
    int wrong = 0;
    for (int rep = 0; rep < 200; rep++) wrong += run_case(c, 1 + rep % 37, 3, 0) + atomic_load(&c->bad_worker);
    return (void *)(intptr_t)wrong;
}

void test_pool(void) {
    static pool_case c;
    const int64_t counts[] = {0, 1, 2, 3, 7, 64, 1000, MAXT};
    const int threads[] = {1, 2, 3, 8};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++)
        for (size_t k = 0; k < sizeof threads / sizeof threads[0]; k++) {
            int wrong = run_case(&c, counts[i], threads[k], 0);
            CHECK(wrong == 0 && atomic_load(&c.bad_worker) == 0, "%lld tasks, %d threads: %d tasks not run once, %d "
                  "bad worker ids", (long long)counts[i], threads[k], wrong, atomic_load(&c.bad_worker));
        }
    /* the decode pattern: many tiny jobs back to back */
    int wrong = 0, bad = 0;
    for (int rep = 0; rep < 20000; rep++) {
        wrong += run_case(&c, 1 + rep % 9, 2, 0);
        bad += atomic_load(&c.bad_worker);
    }
    CHECK(wrong == 0 && bad == 0, "20000 small jobs: %d tasks not run once, %d bad worker ids", wrong, bad);
    /* nested: every task's inner job runs all its tasks, serially */
    wrong = run_case(&c, 50, 2, 5);
    CHECK(wrong == 0 && atomic_load(&c.inner) == 250 && atomic_load(&c.bad_worker) == 0,
          "nested: %d outer tasks wrong, %ld inner tasks (want 250), %d bad worker ids", wrong,
          atomic_load(&c.inner), atomic_load(&c.bad_worker));
    /* callers inside an OpenMP region and several plain threads at once */
    static pool_case oc[3];
    int owrong = 0;
#pragma omp parallel for num_threads(3)
    for (int i = 0; i < 3; i++) {
        int w = run_case(&oc[i], 100, 2, 0) + atomic_load(&oc[i].bad_worker);
#pragma omp atomic
        owrong += w;
    }
    CHECK(owrong == 0, "jobs from OpenMP threads: %d wrong", owrong);
    static pool_case pc[3];
    pthread_t th[3];
    int started = 0, pwrong = 0;
    for (int i = 0; i < 3; i++) started += pthread_create(&th[i], NULL, caller, &pc[i]) == 0;
    CHECK(started == 3, "started %d of 3 caller threads", started);
    for (int i = 0; i < started; i++) {
        void *r;
        pthread_join(th[i], &r);
        pwrong += (int)(intptr_t)r;
    }
    CHECK(pwrong == 0, "jobs from 3 threads at once: %d wrong", pwrong);
}

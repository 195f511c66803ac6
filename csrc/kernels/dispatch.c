/*
 * dispatch.c -- run-time choice of the kernel path (ref / avx2 / avx512) from the CPU's features and the
 * environment (UNIQL_KERNELS, UNIQL_Q4_ACT, UNIQL_NUM_THREADS) and the thread count (the benchmark helpers
 * are in bench.c). Process-wide configuration (like ggml's CPU feature table); set it while no forward pass runs.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../linalg/blas.h"
#include "kernels.h"

static const uq_kpath *g_path = &uq_kpath_ref;
static int g_inited = 0;
static uq_status g_init_status = UQ_OK;
static char g_init_msg[256];
static int g_q4_act = UQ_Q4_ACT_FP32;
static int g_threads = 0;

int uq_k_cpu_has(const char *name) {
#ifdef UQ_K_X86
    __builtin_cpu_init();
    if (!strcmp(name, "ref")) return 1;
    if (!strcmp(name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (!strcmp(name, "avx512"))
        return uq_k_cpu_has("avx2") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    return 0;
#else
    return !strcmp(name, "ref");
#endif
}

static const uq_kpath *path_by_name(const char *name) {
    if (!strcmp(name, "ref")) return &uq_kpath_ref;
#ifdef UQ_K_X86
    if (!strcmp(name, "avx2")) return &uq_kpath_avx2;
    if (!strcmp(name, "avx512")) return &uq_kpath_avx512;
#endif
    return NULL;
}

static const uq_kpath *best_path(void) {
#ifdef UQ_K_X86
    if (uq_k_cpu_has("avx512")) return &uq_kpath_avx512;
    if (uq_k_cpu_has("avx2")) return &uq_kpath_avx2;
#endif
    return &uq_kpath_ref;
}

static int known_name(const char *name) {
    return !strcmp(name, "auto") || !strcmp(name, "ref") || !strcmp(name, "avx2") || !strcmp(name, "avx512");
}

static const char *missing_features(const char *name) {
    if (!strcmp(name, "avx2")) return "avx2, fma and f16c";
    return "avx2, fma, f16c, avx512f, avx512bw, avx512vl and avx512vnni";
}

static int default_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* The default activation mode of int4 linears: int8 where the CPU has int8 dot products (AVX2 vpmaddubsw,
 * AVX-512 VNNI), fp32 otherwise. It depends on the CPU, not on the forced path, so UNIQL_KERNELS=ref on an AVX2
 * machine computes the same W4A8 logits as the avx2 path. */
static int auto_q4_act(void) { return uq_k_cpu_has("avx2") || uq_k_cpu_has("avx512") ? UQ_Q4_ACT_INT8 : UQ_Q4_ACT_FP32; }

/* Reads the environment; the first failure is remembered and returned by every later uq_kernels_init. */
static uq_status init_from_env(void) {
    /* Every variable is read even when an earlier one is invalid (a bad UNIQL_KERNELS must not make the valid
     * UNIQL_Q4_ACT / UNIQL_NUM_THREADS be ignored); the first invalid one is the status and message returned. */
    uq_status st = UQ_OK;
    g_path = best_path();
    g_threads = default_threads();
    const char *k = getenv("UNIQL_KERNELS");
    if (k && *k) {
        if (!known_name(k))
            st = uq_set_error(UQ_ERR_ARG, "UNIQL_KERNELS='%s' is not one of auto, ref, avx2, avx512", k);
        else if (strcmp(k, "auto") && !uq_k_cpu_has(k))
            st = uq_set_error(UQ_ERR_UNSUPPORTED, "UNIQL_KERNELS=%s needs %s, which this CPU lacks", k,
                              missing_features(k));
        else if (strcmp(k, "auto"))
            g_path = path_by_name(k);
    }
    g_q4_act = auto_q4_act();
    const char *a = getenv("UNIQL_Q4_ACT");
    if (a && *a) {
        if (!strcmp(a, "fp32"))
            g_q4_act = UQ_Q4_ACT_FP32;
        else if (!strcmp(a, "int8"))
            g_q4_act = UQ_Q4_ACT_INT8;
        else if (strcmp(a, "auto") && st == UQ_OK)
            st = uq_set_error(UQ_ERR_ARG, "UNIQL_Q4_ACT='%s' is not one of auto, fp32, int8", a);
    }
    const char *n = getenv("UNIQL_NUM_THREADS");
    if (n && *n) {
        char *end;
        errno = 0;
        long v = strtol(n, &end, 10);
        if (errno || *end || v < 1 || v > 4096) {
            if (st == UQ_OK)
                st = uq_set_error(UQ_ERR_ARG, "UNIQL_NUM_THREADS='%s' is not an integer in [1, 4096]", n);
        } else {
            g_threads = (int)v;
            uq_blas_set_threads(g_threads);
        }
    }
    return st;
}

uq_status uq_kernels_init(void) {
    int done;
#pragma omp atomic read
    done = g_inited;
    if (!done) {
#pragma omp critical(uq_kernels_init)
        if (!g_inited) {
            g_init_status = init_from_env();
            if (g_init_status != UQ_OK) {
                strncpy(g_init_msg, uq_last_error(), sizeof g_init_msg - 1);
                g_path = &uq_kpath_ref; /* kernels that cannot fail fall back to the reference path */
            }
#pragma omp atomic write
            g_inited = 1;
        }
    }
    if (g_init_status != UQ_OK) return uq_set_error(g_init_status, "%s", g_init_msg);
    return UQ_OK;
}

const uq_kpath *uq_k_path(void) {
    if (!g_inited) (void)uq_kernels_init();
    return g_path;
}

int uq_k_threads(void) {
    if (!g_inited) (void)uq_kernels_init();
    return g_threads > 0 ? g_threads : 1;
}

int uq_k_q4_int8(void) {
    if (!g_inited) (void)uq_kernels_init();
    return g_q4_act == UQ_Q4_ACT_INT8;
}

uq_status uq_kernels_set(const char *name) {
    if (!name) return uq_set_error(UQ_ERR_ARG, "kernels_set: NULL name");
    if (!known_name(name))
        return uq_set_error(UQ_ERR_ARG, "kernels_set: '%s' is not one of auto, ref, avx2, avx512", name);
    (void)uq_kernels_init();
    if (!strcmp(name, "auto")) {
        g_path = best_path();
    } else {
        if (!uq_k_cpu_has(name))
            return uq_set_error(UQ_ERR_UNSUPPORTED, "kernels_set: path %s needs %s, which this CPU lacks", name,
                                missing_features(name));
        g_path = path_by_name(name);
    }
    g_init_status = UQ_OK; /* an explicit choice overrides a bad environment */
    return UQ_OK;
}

const char *uq_kernels_name(void) { return uq_k_path()->name; }

uq_status uq_kernels_available(const char *name, int *out) {
    if (!name || !out) return uq_set_error(UQ_ERR_ARG, "kernels_available: NULL argument");
    if (!known_name(name))
        return uq_set_error(UQ_ERR_ARG, "kernels_available: '%s' is not one of auto, ref, avx2, avx512", name);
    *out = !strcmp(name, "auto") ? 1 : uq_k_cpu_has(name);
    return UQ_OK;
}

uq_status uq_kernels_set_q4_act(int mode) {
    if (mode != UQ_Q4_ACT_FP32 && mode != UQ_Q4_ACT_INT8 && mode != UQ_Q4_ACT_AUTO)
        return uq_set_error(UQ_ERR_ARG,
                            "kernels_set_q4_act: mode %d is not UQ_Q4_ACT_FP32 (0), UQ_Q4_ACT_INT8 (1) or "
                            "UQ_Q4_ACT_AUTO (2)", mode);
    (void)uq_kernels_init();
    g_q4_act = mode == UQ_Q4_ACT_AUTO ? auto_q4_act() : mode;
    return UQ_OK;
}

int uq_kernels_q4_act(void) {
    (void)uq_kernels_init();
    return g_q4_act;
}

uq_status uq_kernels_set_threads(int n) {
    if (n < 1) return uq_set_error(UQ_ERR_ARG, "kernels_set_threads: n must be >= 1, got %d", n);
    (void)uq_kernels_init();
    g_threads = n;
    uq_blas_set_threads(n);
    return UQ_OK;
}

int uq_kernels_threads(void) { return uq_k_threads(); }

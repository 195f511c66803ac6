/*
 * bench.c -- the benchmark helpers of `python -m uniql.bench` (uniql.h "kernel benchmarks"):
 *   read bandwidth  GB/s = bytes / t of a streaming vector sum over a buffer (best of reps)
 *   peak            multiply-adds per second of a register-only fp32 FMA / int8 dot-product loop
 *   linear          best t of uq_linear_forward
 *   OpenBLAS        t of the fp32 dequantization and best t of sgemv / sgemm (linalg/blas.h) on the dequantized
 *                   weight.
 */
#include <limits.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../linalg/blas.h"
#include "kernels.h"

/* ------------------------------------------------------------------------------ benchmarks ---- */

static double now_s(void) {
#ifdef _OPENMP
    return omp_get_wtime();
#else
    return 0.0;
#endif
}

#ifdef UQ_K_X86
#include <immintrin.h>
/* Reads n floats as 4 concurrent streams of n/4 (several streams per core, as a GEMV over row blocks has). */
__attribute__((target("avx512f"))) static float stream_sum_avx512(const float *p, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const int64_t q = n / 64 * 16;
    for (int64_t i = 0; i + 16 <= q; i += 16) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + q + i));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + 2 * q + i));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + 3 * q + i));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}
__attribute__((target("avx2"))) static float stream_sum_avx2(const float *p, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const int64_t q = n / 32 * 8;
    for (int64_t i = 0; i + 8 <= q; i += 8) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + q + i));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + 2 * q + i));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + 3 * q + i));
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    return uq_k_reduce8(t);
}

/* Register-only peak loops: 12 independent accumulators, iters steps; returns a value to keep them live. */
__attribute__((target("avx512f,avx512vnni"))) static float peak_vnni512(int64_t iters) {
    __m512i a[12], w = _mm512_set1_epi8(3), x = _mm512_set1_epi8(-1);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm512_setzero_si512();
    for (int64_t it = 0; it < iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) __asm__("vpdpbusd %[x], %[w], %[a]" : [a] "+v"(a[i]) : [w] "v"(w), [x] "v"(x));
#pragma GCC unroll 12
    for (int i = 1; i < 12; i++) a[0] = _mm512_add_epi32(a[0], a[i]);
    return (float)_mm512_reduce_add_epi32(a[0]);
}
__attribute__((target("avx512f"))) static float peak_fma512(int64_t iters) {
    __m512 a[12], w = _mm512_set1_ps(1.0f), x = _mm512_set1_ps(1e-7f);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm512_setzero_ps();
    for (int64_t it = 0; it < iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) __asm__("vfmadd231ps %[x], %[w], %[a]" : [a] "+v"(a[i]) : [w] "v"(w), [x] "v"(x));
#pragma GCC unroll 12
    for (int i = 1; i < 12; i++) a[0] = _mm512_add_ps(a[0], a[i]);
    return _mm512_reduce_add_ps(a[0]);
}
/* AVX2's int8 dot product: vpmaddubsw ymm = 32 u8 x s8 multiplies summed in pairs to int16 (the widening
 * vpmaddwd a real kernel also needs is not counted, so this is an upper bound). */
__attribute__((target("avx2"))) static float peak_maddubs256(int64_t iters) {
    __m256i a[12], w = _mm256_set1_epi8(3), x = _mm256_set1_epi8(-1);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm256_setzero_si256();
    for (int64_t it = 0; it < iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) __asm__("vpmaddubsw %[x], %[w], %[a]" : [a] "+v"(a[i]) : [w] "v"(w), [x] "v"(x));
#pragma GCC unroll 12
    for (int i = 1; i < 12; i++) a[0] = _mm256_add_epi16(a[0], a[i]);
    int16_t t[16];
    _mm256_storeu_si256((__m256i *)t, a[0]);
    return (float)t[0];
}
__attribute__((target("avx2,fma"))) static float peak_fma256(int64_t iters) {
    __m256 a[12], w = _mm256_set1_ps(1.0f), x = _mm256_set1_ps(1e-7f);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = _mm256_setzero_ps();
    for (int64_t it = 0; it < iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) __asm__("vfmadd231ps %[x], %[w], %[a]" : [a] "+v"(a[i]) : [w] "v"(w), [x] "v"(x));
#pragma GCC unroll 12
    for (int i = 1; i < 12; i++) a[0] = _mm256_add_ps(a[0], a[i]);
    float t[8];
    _mm256_storeu_ps(t, a[0]);
    return uq_k_reduce8(t);
}
#endif

uq_status uq_bench_peak(int which, int nthreads, double *gmacs) {
    if (!gmacs) return uq_set_error(UQ_ERR_ARG, "bench_peak: NULL output");
    if (nthreads < 1) return uq_set_error(UQ_ERR_ARG, "bench_peak: nthreads %d must be >= 1", nthreads);
    if (which != 0 && which != 1) return uq_set_error(UQ_ERR_ARG, "bench_peak: which %d is not 0 (fp32) or 1 (int8)", which);
#ifdef UQ_K_X86
    const int v512 = uq_k_cpu_has("avx512"), v2 = uq_k_cpu_has("avx2");
    if (!v2 && !v512)
        return uq_set_error(UQ_ERR_UNSUPPORTED, "bench_peak: %s needs %s", which ? "int8" : "fp32",
                            which ? "avx2 or avx512vnni" : "avx2+fma");
    const int64_t iters = 20000000;
    double best = 1e30;
    volatile float sink = 0;
    for (int r = 0; r < 3; r++) {
        float part[256] = {0};
        double t0 = now_s();
#pragma omp parallel for num_threads(nthreads) schedule(static)
        for (int th = 0; th < nthreads; th++)
            part[th & 255] = which ? (v512 ? peak_vnni512(iters) : peak_maddubs256(iters))
                                   : v512 ? peak_fma512(iters) : peak_fma256(iters);
        double dt = now_s() - t0;
        for (int th = 0; th < nthreads && th < 256; th++) sink += part[th];
        if (dt < best) best = dt;
    }
    (void)sink;
    /* MACs per instruction: vpdpbusd zmm 64, vpmaddubsw ymm 32, vfmadd zmm 16, ymm 8 */
    double per = which ? (v512 ? 64.0 : 32.0) : v512 ? 16.0 : 8.0;
    *gmacs = (double)iters * 12.0 * per * nthreads / best / 1e9;
    return UQ_OK;
#else
    return uq_set_error(UQ_ERR_UNSUPPORTED, "bench_peak: x86 only");
#endif
}

#ifdef UQ_K_X86
static float stream_sum(const float *p, int64_t n) {
    if (uq_k_cpu_has("avx512")) return stream_sum_avx512(p, n);
    if (uq_k_cpu_has("avx2")) return stream_sum_avx2(p, n);
    float a[8] = {0};
    for (int64_t i = 0; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) a[l] += p[i + l];
    return uq_k_reduce8(a);
}
#else
static float stream_sum(const float *p, int64_t n) {
    float a[8] = {0};
    for (int64_t i = 0; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) a[l] += p[i + l];
    return uq_k_reduce8(a);
}
#endif

uq_status uq_bench_read_bw(size_t bytes, int reps, int nthreads, double *gbps) {
    if (!gbps) return uq_set_error(UQ_ERR_ARG, "bench_read_bw: NULL output");
    if (bytes < (1u << 20)) return uq_set_error(UQ_ERR_ARG, "bench_read_bw: bytes %zu < 1 MiB", bytes);
    if (reps < 1 || nthreads < 1)
        return uq_set_error(UQ_ERR_ARG, "bench_read_bw: reps %d and nthreads %d must be >= 1", reps, nthreads);
    int64_t n = (int64_t)(bytes / sizeof(float)) / (64 * nthreads) * (64 * nthreads);
    float *buf;
    uq_status st = uq_alloc((size_t)n * sizeof(float), (void **)&buf);
    if (st != UQ_OK) return st;
    int64_t per = n / nthreads;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t i = 0; i < n; i++) buf[i] = (float)(i & 7) * 0.125f; /* first touch by the reading thread */
    double best = 1e30;
    volatile float sink = 0;
    for (int r = 0; r < reps; r++) {
        float part[256] = {0};
        double t0 = now_s();
#pragma omp parallel for num_threads(nthreads) schedule(static)
        for (int th = 0; th < nthreads; th++) part[th & 255] = stream_sum(buf + th * per, per);
        double dt = now_s() - t0;
        for (int th = 0; th < nthreads && th < 256; th++) sink += part[th];
        if (dt < best) best = dt;
    }
    (void)sink;
    uq_free(buf);
    *gbps = (double)n * sizeof(float) / best / 1e9;
    return UQ_OK;
}

uq_status uq_bench_linear(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out, int64_t keep_out,
                          int64_t nseg_in, int64_t keep_in, float *y, int reps, double *best_s) {
    if (!best_s) return uq_set_error(UQ_ERR_ARG, "bench_linear: NULL output");
    if (reps < 1) return uq_set_error(UQ_ERR_ARG, "bench_linear: reps %d must be >= 1", reps);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        uq_status st = uq_linear_forward(L, x, T, nseg_out, keep_out, nseg_in, keep_in, y);
        double dt = now_s() - t0;
        if (st != UQ_OK) return st;
        if (dt < best) best = dt;
    }
    *best_s = best;
    return UQ_OK;
}

uq_status uq_bench_blas(const uq_linear *L, const float *x, int64_t T, float *y, int reps, int nthreads,
                        double *dequant_s, double *blas_s) {
    if (!L || !x || !y || !dequant_s || !blas_s) return uq_set_error(UQ_ERR_ARG, "bench_blas: NULL argument");
    if (T < 1 || reps < 1) return uq_set_error(UQ_ERR_ARG, "bench_blas: T %lld and reps %d must be >= 1",
                                               (long long)T, reps);
    if (L->rows < 1 || L->cols < 1 || L->rows > INT_MAX || L->cols > INT_MAX || T > INT_MAX)
        return uq_set_error(UQ_ERR_SHAPE, "bench_blas: shape (%lld, %lld) outside BLAS int range",
                            (long long)L->rows, (long long)L->cols);
    const int64_t R = L->rows, C = L->cols;
    float *W;
    size_t nb;
    uq_status st = uq_size_mul(R, C, sizeof(float), &nb);
    if (st != UQ_OK || (st = uq_alloc(nb, (void **)&W)) != UQ_OK) return st;
    double t0 = now_s();
    if (L->kind == UQ_W_F32) {
        memcpy(W, L->w, nb);
    } else if (L->kind == UQ_W_F16) {
        st = uq_convert_f16_to_f32(L->w16, R * C, W);
    } else if (L->kind == UQ_W_Q4) {
        if (L->scale_cols != (C + L->group - 1) / L->group) {
            uq_free(W);
            return uq_set_error(UQ_ERR_SHAPE, "bench_blas: int4 weight must have one column segment");
        }
        const int64_t rb = UQ_Q4_ROW_BYTES(C);
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++) {
                uint8_t b = L->packed[r * rb + c / 2];
                int q = (c & 1) ? b >> 4 : b & 15;
                W[r * C + c] = (float)(q - UQ_Q4_OFFSET) * uq_h2f(L->scales[r * L->scale_cols + c / L->group]);
            }
    } else {
        st = uq_set_error(UQ_ERR_ARG, "bench_blas: unknown weight kind %d", (int)L->kind);
    }
    *dequant_s = now_s() - t0;
    if (st != UQ_OK) {
        uq_free(W);
        return st;
    }
    int old = uq_blas_get_threads();
    if (nthreads > 0) uq_blas_set_threads(nthreads);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t1 = now_s();
        if (T == 1)
            uq_blas_sgemv(R, C, W, x, y);
        else
            uq_blas_sgemm_xwt(T, R, C, x, W, y);
        double dt = now_s() - t1;
        if (dt < best) best = dt;
    }
    if (nthreads > 0) uq_blas_set_threads(old);
    *blas_s = best;
    uq_free(W);
    return UQ_OK;
}

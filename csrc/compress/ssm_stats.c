/*
 * ssm_stats.c -- calibration statistics of a Mamba2 mixer for sorting (docs/design.md §3.2), from the captures of
 * uq_hy_layer_forward (B, C after conv1d + SiLU; Delta = clamp(softplus(dt + dt_bias)); x after conv1d + SiLU).
 *
 *   state dims      dB[h][n] += scale * sum_t (Delta_t[h] B_t[g(h)][n])^2,  c[g][n] += scale * sum_t C_t[g][n]^2
 *   head channels   chunk-local states S_c[h][p][n] = sum_{t in c} exp(A_h sum_{tau in c, tau > t} Delta_tau[h])
 *                   Delta_t[h] x_t[h][p] B_t[g(h)][n],  A_h = -exp(A_log[h]),  as samples (c, n) x features (h, p)
 *
 * Everything in float64; the second moment of the state samples is uq_cov_accumulate_f64's job.
 */
#include "uniql.h"

#include <math.h>
#include <string.h>

static uq_status chk_sizes(const char *fn, int64_t T, int64_t H, int64_t G, int64_t N) {
    if (T < 1 || H < 1 || G < 1 || N < 1)
        return uq_set_error(UQ_ERR_ARG, "%s: T, H, G and N must be >= 1, got %lld, %lld, %lld, %lld", fn,
                            (long long)T, (long long)H, (long long)G, (long long)N);
    if (H % G)
        return uq_set_error(UQ_ERR_ARG, "%s: H (%lld heads) must be a multiple of G (%lld groups)", fn, (long long)H,
                            (long long)G);
    return UQ_OK;
}

uq_status uq_ssm_bc_moments(const float *B, const float *C, const float *dt, int64_t T, int64_t H, int64_t G,
                            int64_t N, double scale, double *dB_acc, double *c_acc) {
    static const char fn[] = "uq_ssm_bc_moments";
    if (!B || !C || !dt || !dB_acc || !c_acc) return uq_set_error(UQ_ERR_ARG, "%s: NULL argument", fn);
    uq_status st = chk_sizes(fn, T, H, G, N);
    if (st != UQ_OK) return st;
    if (!isfinite(scale)) return uq_set_error(UQ_ERR_ARG, "%s: scale must be finite, got %g", fn, scale);
    if ((st = uq_check_finite_f32(B, T * G * N, "uq_ssm_bc_moments: B")) != UQ_OK ||
        (st = uq_check_finite_f32(C, T * G * N, "uq_ssm_bc_moments: C")) != UQ_OK ||
        (st = uq_check_finite_f32(dt, T * H, "uq_ssm_bc_moments: dt")) != UQ_OK)
        return st;
    const int64_t hpg = H / G;
    for (int64_t h = 0; h < H; h++) {
        const int64_t g = h / hpg;
        for (int64_t n = 0; n < N; n++) {
            double acc = 0.0;
            for (int64_t t = 0; t < T; t++) {
                double v = (double)dt[t * H + h] * (double)B[(t * G + g) * N + n];
                acc += v * v;
            }
            dB_acc[h * N + n] += scale * acc;
        }
    }
    for (int64_t j = 0; j < G * N; j++) {
        double acc = 0.0;
        for (int64_t t = 0; t < T; t++) {
            double v = (double)C[t * G * N + j];
            acc += v * v;
        }
        c_acc[j] += scale * acc;
    }
    return UQ_OK;
}

uq_status uq_ssm_chunk_states(const float *x, const float *B, const float *dt, const float *A_log, int64_t T,
                              int64_t H, int64_t P, int64_t G, int64_t N, int64_t chunk, double *S) {
    static const char fn[] = "uq_ssm_chunk_states";
    if (!x || !B || !dt || !A_log || !S) return uq_set_error(UQ_ERR_ARG, "%s: NULL argument", fn);
    uq_status st = chk_sizes(fn, T, H, G, N);
    if (st != UQ_OK) return st;
    if (P < 1 || chunk < 1)
        return uq_set_error(UQ_ERR_ARG, "%s: P and chunk must be >= 1, got %lld and %lld", fn, (long long)P,
                            (long long)chunk);
    if ((st = uq_check_finite_f32(x, T * H * P, "uq_ssm_chunk_states: x")) != UQ_OK ||
        (st = uq_check_finite_f32(B, T * G * N, "uq_ssm_chunk_states: B")) != UQ_OK ||
        (st = uq_check_finite_f32(dt, T * H, "uq_ssm_chunk_states: dt")) != UQ_OK ||
        (st = uq_check_finite_f32(A_log, H, "uq_ssm_chunk_states: A_log")) != UQ_OK)
        return st;
    const int64_t nc = (T + chunk - 1) / chunk, HP = H * P, hpg = H / G;
    size_t bytes;
    if ((st = uq_size_mul(nc * N, HP, sizeof(double), &bytes)) != UQ_OK) return st;
    memset(S, 0, bytes);
    for (int64_t c = 0; c < nc; c++) {
        const int64_t t0 = c * chunk, t1 = t0 + chunk < T ? t0 + chunk : T;
        double *Sc = S + c * N * HP; /* (N, H*P) */
        for (int64_t h = 0; h < H; h++) {
            const double A = -exp((double)A_log[h]);
            const int64_t g = h / hpg;
            double cum = 0.0; /* sum of Delta over tau > t within the chunk */
            for (int64_t t = t1 - 1; t >= t0; t--) {
                const double d = (double)dt[t * H + h];
                const double w = exp(A * cum) * d;
                const float *xt = x + t * HP + h * P;
                const float *bt = B + (t * G + g) * N;
                for (int64_t n = 0; n < N; n++) {
                    const double wb = w * (double)bt[n];
                    double *row = Sc + n * HP + h * P;
                    for (int64_t p = 0; p < P; p++) row[p] += wb * (double)xt[p];
                }
                cum += d;
            }
        }
    }
    return UQ_OK;
}

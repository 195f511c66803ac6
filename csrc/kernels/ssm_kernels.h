/*
 * ssm_kernels.h -- internal kernels of the Mamba2 / hybrid runtime (not part of the public API).
 *
 * Arguments are validated by csrc/runtime/ssm.c; these functions cannot fail and return void. As in
 * kernels.h, each output element is computed by a float operation sequence that depends only on that
 * element's inputs and the keep sizes (not on T beyond chunk alignment, thread count or stored sizes).
 */
#ifndef UQ_SSM_KERNELS_H
#define UQ_SSM_KERNELS_H

#include <stdint.h>

#include "uniql.h"

/* Depthwise causal conv1d + SiLU over T tokens of nc channels.
 *   in (T, nc) packed; chan[c] = stored channel of packed column c; w (Cs, K), b (Cs) or NULL;
 *   state (Cs, K-1): the last K-1 inputs of every stored channel, oldest first (only chan[] rows touched);
 *   out[t][c] = silu(b + sum_k w[ch][k] * u[t + k - (K-1)]) with u[<0] read from the state;
 *   afterwards the state holds the last K-1 inputs. out must not overlap in. K <= UQ_HY_MAX_CONV. */
void uq_ks_conv1d_silu(const float *restrict in, int64_t T, int64_t nc, const int64_t *restrict chan,
                       const float *restrict w, const float *restrict b, int64_t K, float *restrict state,
                       float *restrict out);

/* dt (T, H) in place: Delta = clamp(softplus(dt + bias), lo, hi); softplus(v) = v for v > 20, else
 * log1p(exp(v)) (torch's threshold). */
void uq_ks_dt_softplus(float *dt, int64_t T, int64_t H, const float *bias, float lo, float hi);

/* One Mamba2 selective scan call. Head h reads group g = h / (H/G). Computed state prefix (Pc, Nc), kept
 * read-out prefix (Pk <= Pc, Nk <= Nc), stored state (H, Ps, Ns). */
typedef struct {
    int64_t T, H, G;
    int64_t Pc, Nc;     /* channels / state dims whose state is updated */
    int64_t Pk, Nk;     /* channels read out / state dims used in the read-out */
    int64_t Ps, Ns;     /* stored state dims (strides of S) */
    int64_t chunk;      /* SSD chunk length (chunked form only) */
    const float *x;     /* (T, H*Pc) */
    const float *B, *C; /* (T, G*Nc) */
    const float *dt;    /* (T, H) Delta */
    const float *A;     /* (H) = -exp(A_log) */
    const float *D;     /* (H) */
    float *S;           /* (H, Ps, Ns), updated in place */
    float *y;           /* (T, H*Pk) = scan output + D x */
} uq_ks_scan;

/* Sequential recurrence (decode, and the _ref twin of the chunked form); OpenMP over heads. */
void uq_ks_ssm_scan_seq(const uq_ks_scan *a, int nthreads);
/* Chunked SSD form (prefill): per head and chunk of L tokens, with a_t = Delta_t A and
 * seg(t, s) = sum_{s < tau <= t} a_tau (summed from tau = t down), cum_t = seg(t, -1):
 *   y_t[p] = sum_{s <= t} (C_t . B_s)[:Nk] exp(seg(t, s)) Delta_s x_s[p] + exp(cum_t) (C_t . S[p])[:Nk] + D x_t[p]
 *   S[p][n] <- exp(cum_{L-1}) S[p][n] + sum_s exp(cum_{L-1} - cum_s) Delta_s x_s[p] B_s[n]
 * The C_t . B_s products are computed once per group and chunk (shared by the group's heads).
 * shared: uq_ks_scan_shared(G, chunk) floats; work: nthreads * uq_ks_scan_work(chunk) floats.
 * OpenMP over (group, token) pairs, then over heads, chunk by chunk. */
int64_t uq_ks_scan_work(int64_t chunk);
int64_t uq_ks_scan_shared(int64_t G, int64_t chunk);
void uq_ks_ssm_scan_chunked(const uq_ks_scan *a, float *shared, float *work, int nthreads);

/* y (T, H*Pk) in place: y = y * silu(z) (z (T, H*Pk)), then per group of (H/G)*Pk consecutive channels
 * y = y / sqrt(mean(y^2) + eps) * w[h*Ps + p] (mean in float64). */
void uq_ks_gated_rmsnorm(float *restrict y, const float *restrict z, int64_t T, int64_t H, int64_t G, int64_t Pk, const float *w,
                         int64_t Ps, double eps);

/* x[i] = max(x[i], 0)^2, n elements. */
void uq_ks_relu2(float *x, int64_t n);

#endif

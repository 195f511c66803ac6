/*
 * ssm_kernels.c -- kernels of the Mamba2 / hybrid runtime (semantics in ssm_kernels.h):
 *   causal conv1d + SiLU   out_t = silu(b + sum_k w[k] u_{t+k-(K-1)}), rolling state of the last K-1 inputs
 *   Delta                   clamp(softplus(dt + dt_bias), lo, hi)
 *   selective scan          S <- exp(Delta A) S + (Delta B) x^T ; y = S C + D x  (recurrence, and the chunked
 *                           SSD form: intra-chunk (C_t.B_s) exp(seg(t,s)) Delta_s x_s + inter-chunk state)
 *   gated RMSNorm           y = rmsnorm_groups(y * silu(z)) * w     (norm after the gate, as HF)
 *   split-head attention    softmax((q_rot.k_rot + q_pass.k_pass) * scale) v, GQA, over the KV cache
 *   relu^2
 * RoPE (full or partial, pair-interleaved, freq index map) is uq_k_rope of ops.c, shared with the transformer.
 * Parallel loops run over independent heads / channels / (token, head) pairs only, so results do not depend
 * on the thread count.
 */
#include <math.h>
#include <string.h>


#include "kernels.h"
#include "ssm_kernels.h"

#define UQ_SSM_PAR_MIN 65536

static inline float silu(float v) { return v / (1.0f + expf(-v)); }

typedef struct {
    const float *in, *w, *b;
    const int64_t *chan;
    float *state, *out;
    int64_t T, nc, K;
} conv_job;

#define UQ_CONV_TASK 64 /* channels per pool task */

static void conv_task(void *arg, int64_t task, int worker) {
    const conv_job *j = arg;
    (void)worker;
    const int64_t T = j->T, nc = j->nc, K = j->K, K1 = K - 1;
    const int64_t c1 = (task + 1) * UQ_CONV_TASK < nc ? (task + 1) * UQ_CONV_TASK : nc;
    for (int64_t c = task * UQ_CONV_TASK; c < c1; c++) {
        const int64_t ch = j->chan[c];
        float *st = j->state + ch * K1;
        const float *wc = j->w + ch * K;
        const float bias = j->b ? j->b[ch] : 0.0f;
        for (int64_t t = 0; t < T; t++) {
            float acc = bias;
            for (int64_t k = 0; k < K; k++) {
                int64_t idx = t + k - K1;
                float v = idx >= 0 ? j->in[idx * nc + c] : st[K1 + idx];
                acc += wc[k] * v;
            }
            j->out[t * nc + c] = silu(acc);
        }
        float tmp[UQ_HY_MAX_CONV];
        for (int64_t i = 0; i < K1; i++) {
            int64_t ii = T + i; /* index into [state (K1) | in (T)] */
            tmp[i] = ii < K1 ? st[ii] : j->in[(ii - K1) * nc + c];
        }
        for (int64_t i = 0; i < K1; i++) st[i] = tmp[i];
    }
}

void uq_ks_conv1d_silu(const float *restrict in, int64_t T, int64_t nc, const int64_t *restrict chan,
                       const float *restrict w, const float *restrict b, int64_t K, float *restrict state,
                       float *restrict out) {
    conv_job j = {.in = in, .w = w, .b = b, .chan = chan, .state = state, .out = out, .T = T, .nc = nc, .K = K};
    uq_pool_run((nc + UQ_CONV_TASK - 1) / UQ_CONV_TASK, T * nc * K >= UQ_SSM_PAR_MIN ? uq_k_threads() : 1, conv_task,
                &j);
}

void uq_ks_dt_softplus(float *dt, int64_t T, int64_t H, const float *bias, float lo, float hi) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            float v = dt[t * H + h] + bias[h];
            float sp = v > 20.0f ? v : log1pf(expf(v));
            if (sp < lo) sp = lo;
            if (sp > hi) sp = hi;
            dt[t * H + h] = sp;
        }
}

/* ------------------------------------------------------------------------------- scan ---- */

static void scan_head_seq(const uq_ks_scan *a, int64_t h) {
    const int64_t H = a->H, g = h / (H / a->G);
    const int64_t ldx = H * a->Pc, ldbc = a->G * a->Nc, ldy = H * a->Pk;
    const float A = a->A[h], Dh = a->D[h];
    float *S = a->S + h * a->Ps * a->Ns;
    for (int64_t t = 0; t < a->T; t++) {
        const float dtv = a->dt[t * H + h], dA = expf(dtv * A);
        const float *xt = a->x + t * ldx + h * a->Pc;
        const float *Bt = a->B + t * ldbc + g * a->Nc, *Ct = a->C + t * ldbc + g * a->Nc;
        float *yt = a->y + t * ldy + h * a->Pk;
        for (int64_t p = 0; p < a->Pc; p++) {
            float *Sp = S + p * a->Ns;
            const float xp = xt[p];
            for (int64_t n = 0; n < a->Nc; n++) Sp[n] = Sp[n] * dA + (dtv * Bt[n]) * xp;
        }
        for (int64_t p = 0; p < a->Pk; p++) yt[p] = uq_k_dot(Ct, S + p * a->Ns, a->Nk) + Dh * xt[p];
    }
}

/* The two scan tasks' loops start on 64-byte lines: with unchanged code, their placement moved with other files' changes
 * (Mamba2 prefill 7% slower, or decode 8% slower, depending on where they landed); aligned loops measured as the base
 * or better (benchmarks/hybrid_int4_speed.py, 1 thread). */
__attribute__((optimize("align-loops=64"))) static void scan_seq_task(void *arg, int64_t h, int worker) {
    (void)worker;
    scan_head_seq(arg, h);
}

void uq_ks_ssm_scan_seq(const uq_ks_scan *a, int nthreads) {
    uq_pool_run(a->H, a->T * a->H * a->Pc * a->Nc >= UQ_SSM_PAR_MIN ? nthreads : 1, scan_seq_task, (void *)a);
}

int64_t uq_ks_scan_work(int64_t chunk) { return 4 * chunk; }
int64_t uq_ks_scan_shared(int64_t G, int64_t chunk) { return G * chunk * chunk; }

/* CB[g][t][s] = (C_t . B_s)[:Nk] of group g for the chunk's tokens, s <= t (shared by the group's heads). */
static void chunk_cb(const uq_ks_scan *a, int64_t c0, int64_t L, float *CB, int64_t i) {
    const int64_t L0 = a->chunk, ldbc = a->G * a->Nc, g = i / L, t = i % L;
    const float *Ct = a->C + (c0 + t) * ldbc + g * a->Nc;
    float *row = CB + (g * L0 + t) * L0;
    for (int64_t s = 0; s <= t; s++) row[s] = uq_k_dot(Ct, a->B + (c0 + s) * ldbc + g * a->Nc, a->Nk);
}

/* One head over the chunk [c0, c0 + L): outputs (reading the state at chunk start), then the state update. */
static void chunk_head(const uq_ks_scan *a, int64_t c0, int64_t L, const float *CB, int64_t h, float *work) {
    const int64_t H = a->H, g = h / (H / a->G), L0 = a->chunk;
    const int64_t ldx = H * a->Pc, ldbc = a->G * a->Nc, ldy = H * a->Pk;
    const int64_t Pc = a->Pc, Nc = a->Nc, Pk = a->Pk, Nk = a->Nk, Ns = a->Ns;
    const float A = a->A[h], Dh = a->D[h];
    float *S = a->S + h * a->Ps * Ns;
    float *av = work, *cum = work + L0, *coef = work + 2 * L0, *sdec = work + 3 * L0;
    float run = 0.0f;
    for (int64_t s = 0; s < L; s++) {
        av[s] = a->dt[(c0 + s) * H + h] * A;
        run += av[s];
        cum[s] = run;
    }
    for (int64_t t = 0; t < L; t++) {
        const float *Ct = a->C + (c0 + t) * ldbc + g * Nc, *cbt = CB + (g * L0 + t) * L0;
        const float *xt = a->x + (c0 + t) * ldx + h * Pc;
        float *yt = a->y + (c0 + t) * ldy + h * Pk;
        float acc = 0.0f;
        for (int64_t s = t; s >= 0; s--) { /* coef_s = (C_t . B_s) exp(seg(t, s)) Delta_s */
            coef[s] = cbt[s] * expf(acc) * a->dt[(c0 + s) * H + h];
            acc += av[s];
        }
        for (int64_t p = 0; p < Pk; p++) yt[p] = 0.0f;
        for (int64_t s = 0; s <= t; s++) {
            const float cs = coef[s], *xs = a->x + (c0 + s) * ldx + h * Pc;
            for (int64_t p = 0; p < Pk; p++) yt[p] += cs * xs[p];
        }
        const float eo = expf(cum[t]);
        for (int64_t p = 0; p < Pk; p++) yt[p] = (yt[p] + eo * uq_k_dot(Ct, S + p * Ns, Nk)) + Dh * xt[p];
    }
    const float dec = expf(cum[L - 1]);
    for (int64_t s = 0; s < L; s++) sdec[s] = expf(cum[L - 1] - cum[s]) * a->dt[(c0 + s) * H + h];
    for (int64_t p = 0; p < Pc; p++) {
        float *Sp = S + p * Ns;
        for (int64_t n = 0; n < Nc; n++) Sp[n] *= dec;
        for (int64_t s = 0; s < L; s++) {
            const float cp = sdec[s] * a->x[(c0 + s) * ldx + h * Pc + p];
            const float *Bs = a->B + (c0 + s) * ldbc + g * Nc;
            for (int64_t n = 0; n < Nc; n++) Sp[n] += cp * Bs[n];
        }
    }
}

/* One chunk of uq_ks_ssm_scan_chunked: its C B^T rows, then its heads (per-worker scratch). */
typedef struct {
    const uq_ks_scan *a;
    float *shared, *work;
    int64_t c0, L, per;
} chunk_job;

static void chunk_cb_task(void *arg, int64_t i, int worker) {
    const chunk_job *j = arg;
    (void)worker;
    chunk_cb(j->a, j->c0, j->L, j->shared, i);
}

/* loops on 64-byte lines: see scan_seq_task */
__attribute__((optimize("align-loops=64"))) static void chunk_head_task(void *arg, int64_t h, int worker) {
    const chunk_job *j = arg;
    chunk_head(j->a, j->c0, j->L, j->shared, h, j->work + (int64_t)worker * j->per);
}

void uq_ks_ssm_scan_chunked(const uq_ks_scan *a, float *shared, float *work, int nthreads) {
    const int nth = a->T * a->H * a->Pc * a->Nc >= UQ_SSM_PAR_MIN ? nthreads : 1;
    for (int64_t c0 = 0; c0 < a->T; c0 += a->chunk) {
        chunk_job j = {.a = a, .shared = shared, .work = work, .c0 = c0,
                       .L = a->T - c0 < a->chunk ? a->T - c0 : a->chunk, .per = uq_ks_scan_work(a->chunk)};
        uq_pool_run(a->G * j.L, nth, chunk_cb_task, &j);
        uq_pool_run(a->H, nth, chunk_head_task, &j);
    }
}

/* ------------------------------------------------------------------------------ norm ---- */

void uq_ks_gated_rmsnorm(float *restrict y, const float *restrict z, int64_t T, int64_t H, int64_t G, int64_t Pk, const float *w,
                         int64_t Ps, double eps) {
    const int64_t n = H * Pk, gsz = (H / G) * Pk;
    for (int64_t t = 0; t < T; t++) {
        float *yt = y + t * n;
        const float *zt = z + t * n;
        for (int64_t i = 0; i < n; i++) yt[i] = yt[i] * silu(zt[i]);
        for (int64_t g = 0; g < G; g++) {
            float *yg = yt + g * gsz;
            double ss = 0.0;
            for (int64_t i = 0; i < gsz; i++) ss += (double)yg[i] * yg[i];
            const float inv = (float)(1.0 / sqrt(ss / (double)gsz + eps));
            for (int64_t i = 0; i < gsz; i++) {
                int64_t hh = g * (H / G) + i / Pk, p = i % Pk;
                yg[i] = w[hh * Ps + p] * (yg[i] * inv);
            }
        }
    }
}

void uq_ks_relu2(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float v = x[i] > 0.0f ? x[i] : 0.0f;
        x[i] = v * v;
    }
}

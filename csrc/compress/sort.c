/*
 * sort.c -- structured weight sorting scores, permutations and layer-wise allocation (docs/design.md §3).
 *
 *   keep size       k = g * rint(rho * full / g), clamped to [g, full]; rho == 1 -> full
 *   argsort         stable descending (ties by ascending index): a bottom-up merge sort
 *   MLP ridge       s_i = 1 - lambda [(G + lambda I)^{-1}]_ii                  (uq_linalg_spd_inv_diag)
 *   Q/K (RoPE)      s_i = sqrt(C_K,ii * sum_{h in g} C_Qh,ii); pairs sorted by s_j + s_{j+half};
 *                   runtime layout: row 2j <- p_j, row 2j+1 <- p_j + half, freq[g][j] = p_j
 *   SSM state       s_m = sum_{h in g} sqrt(E[(Delta_h B_m)^2]) sqrt(E[C_m^2])
 *   SSM channels    ridge leverage over H*P features, then a per-head argsort
 *   importance      s_l = 1 - mean_b cos(x_lb, y_lb)
 *   allocation      phi_l = L (1 - rho_bar) softmax(-s / eps)_l, clip [0, max_prune], rho_l = 1 - phi_l
 *
 * Everything here is O(n) or O(n log n) on statistics except the ridge scores (one Cholesky, in linalg/).
 */
#include "uniql.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Keep-size granularities and the layouts that rely on them (docs/design.md §3.1, §3.5). */
_Static_assert(UQ_GRAN_HEAD % 4 == 0, "head-dim keeps hold whole RoPE pairs (r/4 pairs + r/2 pass dims if partial)");
_Static_assert(UQ_GRAN_MLP % UQ_Q4_DEFAULT_GROUP == 0, "an MLP keep never cuts a default int4 group of down_proj");
_Static_assert(UQ_GRAN_SSM_HEAD % 2 == 0, "SSM head-channel keeps are even: out_proj int4 column prefixes are bytes");
_Static_assert(UQ_GRAN_SSM_STATE >= 1 && UQ_GRAN_MLP >= 1, "granularities are positive");

/* ------------------------------------------------------------------------------ helpers ---- */

static uq_status chk_finite(const char *fn, const char *name, const double *x, int64_t count) {
    for (int64_t i = 0; i < count; i++)
        if (!isfinite(x[i]))
            return uq_set_error(UQ_ERR_NUMERIC, "%s: %s contains %s at flat index %lld", fn, name,
                                isnan(x[i]) ? "NaN" : "Inf", (long long)i);
    return UQ_OK;
}

static uq_status chk_nonneg(const char *fn, const char *name, const double *x, int64_t count) {
    for (int64_t i = 0; i < count; i++)
        if (x[i] < 0.0)
            return uq_set_error(UQ_ERR_ARG, "%s: %s must be >= 0 (a second-moment diagonal), got %g at flat index %lld",
                                fn, name, x[i], (long long)i);
    return UQ_OK;
}

/* Stable descending argsort of s[0..n) into perm, tmp: n int64 of workspace. Merge sort: a run element
 * from the left run wins ties, which keeps ascending index order among equal scores. */
static void argsort_desc_ws(const double *s, int64_t n, int64_t *perm, int64_t *tmp) {
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    int64_t *src = perm, *dst = tmp;
    for (int64_t w = 1; w < n; w *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * w) {
            int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int64_t a = lo, b = mid, o = lo;
            while (a < mid && b < hi) dst[o++] = (s[src[b]] > s[src[a]]) ? src[b++] : src[a++];
            while (a < mid) dst[o++] = src[a++];
            while (b < hi) dst[o++] = src[b++];
        }
        int64_t *t = src; src = dst; dst = t;
    }
    if (src != perm) memcpy(perm, src, (size_t)n * sizeof(int64_t));
}

/* ---------------------------------------------------------------------------- keep size ---- */

uq_status uq_keep_size(int64_t full, double keep_ratio, int64_t granularity, int64_t *out) {
    static const char fn[] = "uq_keep_size";
    if (!out) return uq_set_error(UQ_ERR_ARG, "%s: out is NULL", fn);
    if (full < 1) return uq_set_error(UQ_ERR_ARG, "%s: full must be >= 1, got %lld", fn, (long long)full);
    if (granularity < 1 || granularity > full)
        return uq_set_error(UQ_ERR_ARG, "%s: granularity must be in [1, full = %lld], got %lld", fn, (long long)full,
                            (long long)granularity);
    if (!(keep_ratio >= 0.0 && keep_ratio <= 1.0))
        return uq_set_error(UQ_ERR_ARG, "%s: keep_ratio must be in [0, 1], got %g", fn, keep_ratio);
    if (keep_ratio == 1.0) {
        *out = full;
        return UQ_OK;
    }
    /* same expression order as Python's g * round(rho * full / g); rint rounds half to even */
    double units = rint(keep_ratio * (double)full / (double)granularity);
    int64_t k = (int64_t)units * granularity;
    if (k < granularity) k = granularity;
    if (k > full) k = full;
    *out = k;
    return UQ_OK;
}

uq_status uq_keep_granularity(int64_t size, int64_t granularity, int64_t min_granularity, int64_t *out) {
    static const char fn[] = "uq_keep_granularity";
    if (!out) return uq_set_error(UQ_ERR_ARG, "%s: out is NULL", fn);
    if (granularity < 1)
        return uq_set_error(UQ_ERR_ARG, "%s: granularity must be >= 1, got %lld", fn, (long long)granularity);
    if (min_granularity < 1 || min_granularity > size)
        return uq_set_error(UQ_ERR_ARG, "%s: min_granularity must be in [1, size = %lld], got %lld", fn,
                            (long long)size, (long long)min_granularity);
    int64_t g = size / 8 < granularity ? size / 8 : granularity;
    int64_t p = 0;
    if (g >= 1) {
        p = 1;
        while (p <= g / 2) p *= 2;
    }
    *out = p > min_granularity ? p : min_granularity;
    return UQ_OK;
}

/* ------------------------------------------------------------------------------ argsort ---- */

uq_status uq_argsort_desc(const double *scores, int64_t n, int64_t *perm) {
    static const char fn[] = "uq_argsort_desc";
    if (!scores || !perm) return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn, scores ? "perm" : "scores");
    if (n < 1) return uq_set_error(UQ_ERR_ARG, "%s: n must be >= 1, got %lld", fn, (long long)n);
    uq_status st = chk_finite(fn, "scores", scores, n);
    if (st != UQ_OK) return st;
    int64_t *tmp = NULL;
    if ((st = uq_alloc((size_t)n * sizeof(int64_t), (void **)&tmp)) != UQ_OK) return st;
    argsort_desc_ws(scores, n, perm, tmp);
    uq_free(tmp);
    return UQ_OK;
}

/* --------------------------------------------------------------------------- MLP ridge ---- */

static uq_status ridge_scores(const char *fn, const double *G, int64_t n, double lambda, double *scores) {
    if (!G || !scores) return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn, G ? "scores" : "G");
    if (n < 1) return uq_set_error(UQ_ERR_ARG, "%s: n must be >= 1, got %lld", fn, (long long)n);
    if (!(lambda > 0.0) || !isfinite(lambda))
        return uq_set_error(UQ_ERR_ARG, "%s: lambda must be finite and > 0, got %g", fn, lambda);
    uq_status st = uq_linalg_spd_inv_diag(G, n, lambda, scores);
    if (st != UQ_OK) {
        if (st == UQ_ERR_NUMERIC) { /* keep linalg's detail (copied: the message buffer is reused) */
            char detail[512];
            snprintf(detail, sizeof detail, "%s", uq_last_error());
            return uq_set_error(st, "%s: G (is it a PSD second moment?): %s", fn, detail);
        }
        return st;
    }
    for (int64_t i = 0; i < n; i++) scores[i] = 1.0 - lambda * scores[i];
    return UQ_OK;
}

uq_status uq_sort_ridge_scores(const double *G, int64_t n, double lambda, double *scores) {
    return ridge_scores("uq_sort_ridge_scores", G, n, lambda, scores);
}

/* --------------------------------------------------------------------------------- Q/K ---- */

int64_t uq_sort_qk_npairs(uq_rope_mode mode, int64_t d) {
    switch (mode) {
    case UQ_ROPE_FULL: return d / 2;
    case UQ_ROPE_PARTIAL: return d / 4;
    default: return 0;
    }
}

uq_status uq_sort_qk(const double *cq_diag, const double *ck_diag, int64_t n_heads, int64_t n_kv, int64_t d,
                     uq_rope_mode mode, double *scores, int32_t *freq, int64_t *row_perm) {
    static const char fn[] = "uq_sort_qk";
    if (!cq_diag || !ck_diag || !row_perm)
        return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn, !cq_diag ? "cq_diag" : !ck_diag ? "ck_diag" : "row_perm");
    if (mode != UQ_ROPE_FULL && mode != UQ_ROPE_PARTIAL && mode != UQ_ROPE_NONE)
        return uq_set_error(UQ_ERR_ARG, "%s: unknown rope mode %d (0 full, 1 partial, 2 none)", fn, (int)mode);
    if (n_heads < 1 || n_kv < 1 || d < 1)
        return uq_set_error(UQ_ERR_ARG, "%s: n_heads, n_kv and d must be >= 1, got %lld, %lld, %lld", fn,
                            (long long)n_heads, (long long)n_kv, (long long)d);
    if (n_heads % n_kv != 0)
        return uq_set_error(UQ_ERR_SHAPE, "%s: n_heads (%lld) must be a multiple of n_kv (%lld)", fn,
                            (long long)n_heads, (long long)n_kv);
    if (mode == UQ_ROPE_FULL && d % 2 != 0)
        return uq_set_error(UQ_ERR_SHAPE, "%s: head dim d = %lld must be even for RoPE pairs", fn, (long long)d);
    if (mode == UQ_ROPE_PARTIAL && d % 4 != 0)
        return uq_set_error(UQ_ERR_SHAPE, "%s: head dim d = %lld must be a multiple of 4 for partial RoPE pairs", fn,
                            (long long)d);
    if (mode != UQ_ROPE_NONE && !freq) return uq_set_error(UQ_ERR_ARG, "%s: freq is NULL", fn);
    size_t bytes;
    uq_status st = uq_size_mul(n_heads, d, sizeof(double), &bytes);
    if (st != UQ_OK) return st;
    if ((st = chk_finite(fn, "cq_diag", cq_diag, n_heads * d)) != UQ_OK) return st;
    if ((st = chk_finite(fn, "ck_diag", ck_diag, n_kv * d)) != UQ_OK) return st;
    if ((st = chk_nonneg(fn, "cq_diag", cq_diag, n_heads * d)) != UQ_OK) return st;
    if ((st = chk_nonneg(fn, "ck_diag", ck_diag, n_kv * d)) != UQ_OK) return st;

    double *s = NULL; /* s (d) | t (d/2) */
    int64_t *p = NULL; /* p (d) | tmp (d) */
    if ((st = uq_alloc((size_t)(2 * d) * sizeof(double), (void **)&s)) != UQ_OK) goto exit;
    if ((st = uq_alloc((size_t)(2 * d) * sizeof(int64_t), (void **)&p)) != UQ_OK) goto exit;
    double *t = s + d;
    int64_t *tmp = p + d;
    int64_t hpg = n_heads / n_kv, np = uq_sort_qk_npairs(mode, d);
    for (int64_t g = 0; g < n_kv; g++) {
        for (int64_t i = 0; i < d; i++) {
            double q = 0.0;
            for (int64_t h = g * hpg; h < (g + 1) * hpg; h++) q += cq_diag[h * d + i];
            s[i] = sqrt(q * ck_diag[g * d + i]);
        }
        if (scores) memcpy(scores + g * d, s, (size_t)d * sizeof(double));
        int64_t *rp = row_perm + g * d;
        if (mode == UQ_ROPE_NONE) {
            argsort_desc_ws(s, d, rp, tmp);
            continue;
        }
        /* rotary block of `2 * np` dims starting at 0; dim j pairs with j + np */
        for (int64_t j = 0; j < np; j++) t[j] = s[j] + s[j + np];
        argsort_desc_ws(t, np, p, tmp);
        for (int64_t j = 0; j < np; j++) {
            freq[g * np + j] = (int32_t)p[j];
            rp[2 * j] = p[j];
            rp[2 * j + 1] = p[j] + np;
        }
        if (mode == UQ_ROPE_PARTIAL) { /* pass dims [d/2, d) by their own scores s[d/2:d], not the rotary half's */
            int64_t half = d / 2;
            argsort_desc_ws(s + half, half, p, tmp);
            for (int64_t k = 0; k < half; k++) rp[half + k] = half + p[k];
        }
    }
exit:
    uq_free(s);
    uq_free(p);
    return st;
}

uq_status uq_sort_qk_keep_rows(uq_rope_mode mode, int64_t d, int64_t r, int64_t *rows) {
    static const char fn[] = "uq_sort_qk_keep_rows";
    if (!rows) return uq_set_error(UQ_ERR_ARG, "%s: rows is NULL", fn);
    if (mode != UQ_ROPE_FULL && mode != UQ_ROPE_PARTIAL && mode != UQ_ROPE_NONE)
        return uq_set_error(UQ_ERR_ARG, "%s: unknown rope mode %d (0 full, 1 partial, 2 none)", fn, (int)mode);
    if (d < 1) return uq_set_error(UQ_ERR_ARG, "%s: d must be >= 1, got %lld", fn, (long long)d);
    if (r < 1 || r > d)
        return uq_set_error(UQ_ERR_RANGE, "%s: keep size r = %lld must be in [1, d = %lld]", fn, (long long)r,
                            (long long)d);
    if (mode == UQ_ROPE_FULL && (r % 2 != 0 || d % 2 != 0))
        return uq_set_error(UQ_ERR_RANGE, "%s: full RoPE keeps whole pairs: r = %lld and d = %lld must be even", fn,
                            (long long)r, (long long)d);
    if (mode == UQ_ROPE_PARTIAL && (r % 4 != 0 || d % 4 != 0))
        return uq_set_error(UQ_ERR_RANGE,
                            "%s: partial RoPE keeps r/4 whole pairs + r/2 pass dims: r = %lld and d = %lld must be "
                            "multiples of 4", fn, (long long)r, (long long)d);
    if (mode != UQ_ROPE_PARTIAL) {
        for (int64_t k = 0; k < r; k++) rows[k] = k;
    } else {
        for (int64_t k = 0; k < r / 2; k++) {
            rows[k] = k;
            rows[r / 2 + k] = d / 2 + k;
        }
    }
    return UQ_OK;
}

/* --------------------------------------------------------------------------------- SSM ---- */

uq_status uq_sort_ssm_state(const double *dB_diag, const double *c_diag, int64_t H, int64_t G, int64_t N,
                            double *scores, int64_t *perm) {
    static const char fn[] = "uq_sort_ssm_state";
    if (!dB_diag || !c_diag || !perm)
        return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn, !dB_diag ? "dB_diag" : !c_diag ? "c_diag" : "perm");
    if (H < 1 || G < 1 || N < 1)
        return uq_set_error(UQ_ERR_ARG, "%s: H, G and N must be >= 1, got %lld, %lld, %lld", fn, (long long)H,
                            (long long)G, (long long)N);
    if (H % G != 0)
        return uq_set_error(UQ_ERR_SHAPE, "%s: H (%lld heads) must be a multiple of G (%lld groups)", fn,
                            (long long)H, (long long)G);
    size_t bytes;
    uq_status st = uq_size_mul(H, N, sizeof(double), &bytes);
    if (st != UQ_OK) return st;
    if ((st = chk_finite(fn, "dB_diag", dB_diag, H * N)) != UQ_OK) return st;
    if ((st = chk_finite(fn, "c_diag", c_diag, G * N)) != UQ_OK) return st;
    if ((st = chk_nonneg(fn, "dB_diag", dB_diag, H * N)) != UQ_OK) return st;
    if ((st = chk_nonneg(fn, "c_diag", c_diag, G * N)) != UQ_OK) return st;
    double *s = NULL;
    int64_t *tmp = NULL;
    if ((st = uq_alloc((size_t)N * sizeof(double), (void **)&s)) != UQ_OK) goto exit;
    if ((st = uq_alloc((size_t)N * sizeof(int64_t), (void **)&tmp)) != UQ_OK) goto exit;
    int64_t hpg = H / G;
    for (int64_t g = 0; g < G; g++) {
        for (int64_t m = 0; m < N; m++) {
            double b = 0.0;
            for (int64_t h = g * hpg; h < (g + 1) * hpg; h++) b += sqrt(dB_diag[h * N + m]);
            s[m] = b * sqrt(c_diag[g * N + m]);
        }
        if (scores) memcpy(scores + g * N, s, (size_t)N * sizeof(double));
        argsort_desc_ws(s, N, perm + g * N, tmp);
    }
exit:
    uq_free(s);
    uq_free(tmp);
    return st;
}

uq_status uq_sort_ssm_head_channels(const double *Gm, int64_t H, int64_t P, double lambda, double *scores,
                                    int64_t *perm) {
    static const char fn[] = "uq_sort_ssm_head_channels";
    if (!Gm || !perm) return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn, Gm ? "perm" : "Gm");
    if (H < 1 || P < 1)
        return uq_set_error(UQ_ERR_ARG, "%s: H and P must be >= 1, got %lld, %lld", fn, (long long)H, (long long)P);
    size_t bytes;
    uq_status st = uq_size_mul(H, P, sizeof(double), &bytes);
    if (st != UQ_OK) return st;
    int64_t n = H * P;
    double *s = NULL;
    int64_t *tmp = NULL;
    if ((st = uq_alloc((size_t)n * sizeof(double), (void **)&s)) != UQ_OK) goto exit;
    if ((st = uq_alloc((size_t)P * sizeof(int64_t), (void **)&tmp)) != UQ_OK) goto exit;
    if ((st = ridge_scores(fn, Gm, n, lambda, s)) != UQ_OK) goto exit;
    for (int64_t h = 0; h < H; h++) argsort_desc_ws(s + h * P, P, perm + h * P, tmp);
    if (scores) memcpy(scores, s, (size_t)n * sizeof(double));
exit:
    uq_free(s);
    uq_free(tmp);
    return st;
}

/* -------------------------------------------------------------------------- allocation ---- */

uq_status uq_alloc_block_importance(const float *x, const float *y, int64_t L, int64_t B, int64_t n,
                                    double *importance) {
    static const char fn[] = "uq_alloc_block_importance";
    if (!x || !y || !importance)
        return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn, !x ? "x" : !y ? "y" : "importance");
    if (L < 1 || B < 1 || n < 1)
        return uq_set_error(UQ_ERR_ARG, "%s: L, B and n must be >= 1, got %lld, %lld, %lld", fn, (long long)L,
                            (long long)B, (long long)n);
    size_t bytes;
    uq_status st = uq_size_mul(L * B, n, sizeof(float), &bytes);
    if (st != UQ_OK) return st;
    if ((st = uq_check_finite_f32(x, L * B * n, "x")) != UQ_OK) return st;
    if ((st = uq_check_finite_f32(y, L * B * n, "y")) != UQ_OK) return st;
    for (int64_t l = 0; l < L; l++) {
        double csum = 0.0;
        for (int64_t b = 0; b < B; b++) {
            const float *a = x + (l * B + b) * n, *c = y + (l * B + b) * n;
            double dot = 0.0, na = 0.0, nc = 0.0;
            for (int64_t i = 0; i < n; i++) {
                dot += (double)a[i] * c[i];
                na += (double)a[i] * a[i];
                nc += (double)c[i] * c[i];
            }
            double den = na * nc;
            csum += dot / sqrt(den > 1e-16 ? den : 1e-16);
        }
        importance[l] = 1.0 - csum / (double)B;
    }
    return UQ_OK;
}

uq_status uq_alloc_keep_ratios(const double *importance, int64_t L, double global_keep, double eps,
                               double max_prune, double *keep_ratios) {
    static const char fn[] = "uq_alloc_keep_ratios";
    if (!importance || !keep_ratios)
        return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn, importance ? "keep_ratios" : "importance");
    if (L < 1) return uq_set_error(UQ_ERR_ARG, "%s: L must be >= 1, got %lld", fn, (long long)L);
    if (!(global_keep >= 0.0 && global_keep <= 1.0))
        return uq_set_error(UQ_ERR_ARG, "%s: global_keep must be in [0, 1], got %g", fn, global_keep);
    if (!(eps > 0.0) || !isfinite(eps))
        return uq_set_error(UQ_ERR_ARG, "%s: eps must be finite and > 0, got %g", fn, eps);
    if (!(max_prune >= 0.0 && max_prune <= 1.0))
        return uq_set_error(UQ_ERR_ARG, "%s: max_prune must be in [0, 1], got %g", fn, max_prune);
    uq_status st = chk_finite(fn, "importance", importance, L);
    if (st != UQ_OK) return st;
    /* softmax(-s/eps) = exp(-(s - min s)/eps) / sum: the largest exponent is 0, no overflow */
    double smin = importance[0];
    for (int64_t l = 1; l < L; l++) smin = importance[l] < smin ? importance[l] : smin;
    double z = 0.0;
    for (int64_t l = 0; l < L; l++) z += exp(-(importance[l] - smin) / eps);
    double total = (double)L * (1.0 - global_keep);
    for (int64_t l = 0; l < L; l++) {
        double phi = total * exp(-(importance[l] - smin) / eps) / z;
        phi = phi < 0.0 ? 0.0 : phi > max_prune ? max_prune : phi;
        keep_ratios[l] = 1.0 - phi;
    }
    return UQ_OK;
}

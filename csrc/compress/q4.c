/*
 * q4.c -- int4 weight quantization (format version 1, see the int4 section of uniql.h): round-to-nearest and
 * GPTQ, plus pack / unpack / dequantize.
 *
 *   per row r and group g (columns [g*G, min((g+1)*G, cols))):
 *     s = (float)(max_c |w[r][c]| / 7.5),  q = clamp(rint(w / s) + 8, 0, 15),  w_hat = (q - 8) * s
 *
 * GPTQ (Frantar et al. 2022) minimises ||X W^T - X W_hat^T|| column by column with H = X^T X:
 *   H <- H + damp * mean(diag H) I,  H^{-1} = U^T U (U upper, float64; from the Cholesky factor of the
 *   order-reversed H and one triangular inverse, without forming H^{-1}),
 *   for each column i (natural order): quantize w_i, err_i = (w_i - w_hat_i) / U_ii, w_j -= err_i U_ij (j > i).
 * The updates of columns after the current block are deferred and applied with one dgemm per block
 * ("lazy batch" updates); a block ends early at a group start so that every group's scale is taken from
 * weights that already hold the error of all earlier columns. All error feedback is in float64.
 */
#include "uniql.h"


#include "../linalg/blas.h"
#include <math.h>
#include <string.h>

_Static_assert(UQ_Q4_OFFSET == 8, "int4 codes 0..15 hold q - 8 (7.5 steps either side); the pad nibble is 8");
_Static_assert(UQ_Q4_ROW_BYTES(1) == 1 && UQ_Q4_ROW_BYTES(2) == 1 && UQ_Q4_ROW_BYTES(3) == 2, "two codes per byte");
_Static_assert(UQ_Q4_NGROUPS(129, 128) == 2 && UQ_Q4_NGROUPS(128, 128) == 1, "a short last group has its own scale");

/* Scale of a group from its absolute maximum; UQ_ERR_NUMERIC if it does not fit float32. */
static inline uq_status q4_scale(double amax, float *s) {
    double v = amax / 7.5;
    if (!(v <= (double)3.4028234663852886e38))
        return uq_set_error(UQ_ERR_NUMERIC, "int4 quantizer: group maximum %g gives a scale beyond float32", amax);
    *s = (float)v;
    return UQ_OK;
}

static inline uint8_t q4_code_z(double w, float s, int z) {
    if (s == 0.0f) return (uint8_t)z;
    double q = rint(w / (double)s) + (double)z;
    q = q < 0.0 ? 0.0 : q > 15.0 ? 15.0 : q;
    return (uint8_t)q;
}
static inline uint8_t q4_code(double w, float s) { return q4_code_z(w, s, UQ_Q4_OFFSET); }

/* Sets nibble c of a packed row (even c: whole byte with a pad nibble 8 above, odd c: high nibble). Columns
 * must be written in increasing order. */
static inline void q4_put(uint8_t *prow, int64_t c, uint8_t q) {
    if (c & 1)
        prow[c >> 1] = (uint8_t)((prow[c >> 1] & 0x0f) | (q << 4));
    else
        prow[c >> 1] = (uint8_t)(q | (UQ_Q4_OFFSET << 4));
}

static uq_status q4_check(const char *fn, const void *W, int64_t rows, int64_t cols, int64_t ldw, int64_t group,
                          const void *packed, const void *scales) {
    if (!W || !packed || !scales)
        return uq_set_error(UQ_ERR_ARG, "%s: %s is NULL", fn, !W ? "W" : !packed ? "packed" : "scales");
    if (rows <= 0 || cols <= 0)
        return uq_set_error(UQ_ERR_ARG, "%s: rows and cols must be positive, got (%lld, %lld)", fn, (long long)rows,
                            (long long)cols);
    if (ldw < cols)
        return uq_set_error(UQ_ERR_ARG, "%s: ldw (%lld) must be >= cols (%lld)", fn, (long long)ldw, (long long)cols);
    if (group < 1) return uq_set_error(UQ_ERR_ARG, "%s: group must be >= 1, got %lld", fn, (long long)group);
    size_t bytes;
    return uq_size_mul(rows, ldw, sizeof(double), &bytes);
}

static uq_status q4_check_finite_w(const char *fn, const float *W, int64_t rows, int64_t cols, int64_t ldw) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            if (!isfinite(W[r * ldw + c]))
                return uq_set_error(UQ_ERR_NUMERIC, "%s: W contains %s at row %lld, column %lld", fn,
                                    isnan(W[r * ldw + c]) ? "NaN" : "Inf", (long long)r, (long long)c);
    return UQ_OK;
}

/* Given scales (UQ_Q4_FIXED_SCALES): finite and >= 0. */
static uq_status q4_check_scales(const char *fn, const float *scales, int64_t rows, int64_t ng) {
    for (int64_t i = 0; i < rows * ng; i++)
        if (!(scales[i] >= 0.0f) || !isfinite(scales[i]))
            return uq_set_error(UQ_ERR_NUMERIC, "%s: given scale %g at row %lld, group %lld is not finite and >= 0",
                                fn, (double)scales[i], (long long)(i / ng), (long long)(i % ng));
    return UQ_OK;
}

uq_status uq_q4_quantize_rtn(const float *W, int64_t rows, int64_t cols, int64_t ldw, int64_t group,
                             uint8_t *packed, float *scales) {
    static const char fn[] = "uq_q4_quantize_rtn";
    uq_status st = q4_check(fn, W, rows, cols, ldw, group, packed, scales);
    if (st != UQ_OK) return st;
    if ((st = q4_check_finite_w(fn, W, rows, cols, ldw)) != UQ_OK) return st;
    int64_t ng = UQ_Q4_NGROUPS(cols, group), rb = UQ_Q4_ROW_BYTES(cols);
    for (int64_t r = 0; r < rows; r++) {
        const float *w = W + r * ldw;
        uint8_t *prow = packed + r * rb;
        for (int64_t g = 0; g < ng; g++) {
            int64_t c0 = g * group, c1 = c0 + group < cols ? c0 + group : cols;
            float amax = 0.0f;
            for (int64_t c = c0; c < c1; c++) amax = fabsf(w[c]) > amax ? fabsf(w[c]) : amax;
            float s = 0.0f;
            if ((st = q4_scale((double)amax, &s)) != UQ_OK) return st;
            scales[r * ng + g] = s;
            for (int64_t c = c0; c < c1; c++) q4_put(prow, c, q4_code((double)w[c], s));
        }
    }
    return UQ_OK;
}

/* Scale of a group of values w[0..len) (error-updated weights): absmax / 7.5, or with UQ_Q4_MSE_SCALE the scale
 * of the grid amax / (7.5 + k / 8), k = 0..Q4_MSE_STEPS, with the smallest squared rounding error (ties: the
 * larger scale). k = 4 is amax / 8, which puts a negative extreme exactly on code 0 (the value -8 s). */
#define Q4_MSE_STEPS 20
static uq_status q4_group_scale(const double *w, int64_t len, int64_t stride, int mse, float *out) {
    double amax = 0.0;
    for (int64_t c = 0; c < len; c++) amax = fabs(w[c * stride]) > amax ? fabs(w[c * stride]) : amax;
    uq_status st = q4_scale(amax, out);
    if (st != UQ_OK || !mse || amax == 0.0) return st;
    double best = INFINITY;
    float best_s = *out;
    for (int k = 0; k <= Q4_MSE_STEPS; k++) {
        float s = (float)(amax / (7.5 + 0.125 * k));
        if (!(s > 0.0f)) continue;
        double err = 0.0;
        for (int64_t c = 0; c < len && err < best; c++) {
            double v = w[c * stride], d = v - (double)((int)q4_code(v, s) - UQ_Q4_OFFSET) * (double)s;
            err += d * d;
        }
        if (err < best) {
            best = err;
            best_s = s;
        }
    }
    *out = best_s;
    return UQ_OK;
}

/* Asymmetric parameters of a group (UQ_Q4_ASYM, see uniql.h): range [lo, hi] with 0 inside, s = (hi - lo) / 15,
 * z = clamp(rint(-lo / s), 0, 15); mse: the range shrunk by 15 / (15 + k/4), k = 0..Q4_MSE_STEPS, z kept, with the
 * least squared rounding error (ties: the larger scale). */
static uq_status q4_group_asym(const double *w, int64_t len, int64_t stride, int mse, float *out, uint8_t *zout) {
    double lo = 0.0, hi = 0.0;
    for (int64_t c = 0; c < len; c++) {
        const double v = w[c * stride];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    *zout = UQ_Q4_OFFSET;
    *out = 0.0f;
    if (hi - lo == 0.0) return UQ_OK;
    const double range = hi - lo;
    if (!(range / 15.0 <= (double)3.4028234663852886e38))
        return uq_set_error(UQ_ERR_NUMERIC, "int4 quantizer: group range %g gives a scale beyond float32", range);
    const float s0 = (float)(range / 15.0);
    if (!(s0 > 0.0f)) return UQ_OK; /* a range below float32's smallest step: codes z, value 0 */
    double zr = rint(-lo / (double)s0);
    const int z = zr < 0.0 ? 0 : zr > 15.0 ? 15 : (int)zr;
    *zout = (uint8_t)z;
    *out = s0;
    if (!mse) return UQ_OK;
    double best = INFINITY;
    for (int k = 0; k <= Q4_MSE_STEPS; k++) {
        const float s = (float)(range / (15.0 + 0.25 * k));
        if (!(s > 0.0f)) continue;
        double err = 0.0;
        for (int64_t c = 0; c < len && err < best; c++) {
            const double v = w[c * stride], d = v - (double)((int)q4_code_z(v, s, z) - z) * (double)s;
            err += d * d;
        }
        if (err < best) {
            best = err;
            *out = s;
        }
    }
    return UQ_OK;
}

/* The damped Hessian of GPTQ (full symmetric, dead columns H_ii = 1) into Hd and the target weights (dead columns
 * 0) into Wd: what uq_q4_quantize_gptq_z quantizes against and the re-fit measures its error with. */
static void q4_damped(const float *W, int64_t rows, int64_t cols, int64_t ldw, const double *H, double damp,
                      double *Hd, double *Wd) {
    uq_linalg_sym_from_lower(H, cols, Hd);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) Wd[r * cols + c] = (double)W[r * ldw + c];
    double mean = 0.0;
    for (int64_t i = 0; i < cols; i++) {
        if (Hd[i * cols + i] == 0.0) {
            Hd[i * cols + i] = 1.0;
            for (int64_t r = 0; r < rows; r++) Wd[r * cols + i] = 0.0;
        }
        mean += Hd[i * cols + i];
    }
    mean /= (double)cols;
    for (int64_t i = 0; i < cols; i++) Hd[i * cols + i] += damp * mean;
}

/* Scale (and zero point) of a group: q4_group_scale with z = 8, or q4_group_asym. */
static uq_status q4_group_params(const double *w, int64_t len, int mse, int asym, float *s, uint8_t *z) {
    if (asym) return q4_group_asym(w, len, 1, mse, s, z);
    *z = UQ_Q4_OFFSET;
    return q4_group_scale(w, len, 1, mse, s);
}

uq_status uq_q4_quantize_gptq(const float *W, int64_t rows, int64_t cols, int64_t ldw, const double *H,
                              int64_t group, double damp, int64_t block, uint8_t *packed, float *scales) {
    return uq_q4_quantize_gptq_z(W, rows, cols, ldw, H, group, damp, block, 0, packed, scales, NULL);
}

uq_status uq_q4_quantize_gptq_ex(const float *W, int64_t rows, int64_t cols, int64_t ldw, const double *H,
                                 int64_t group, double damp, int64_t block, int flags, uint8_t *packed,
                                 float *scales) {
    if (flags & UQ_Q4_ASYM)
        return uq_set_error(UQ_ERR_ARG, "uq_q4_quantize_gptq_ex: UQ_Q4_ASYM needs zero points "
                            "(uq_q4_quantize_gptq_z)");
    return uq_q4_quantize_gptq_z(W, rows, cols, ldw, H, group, damp, block, flags, packed, scales, NULL);
}

uq_status uq_q4_quantize_gptq_z(const float *W, int64_t rows, int64_t cols, int64_t ldw, const double *H,
                                int64_t group, double damp, int64_t block, int flags, uint8_t *packed,
                                float *scales, uint8_t *zeros) {
    static const char fn[] = "uq_q4_quantize_gptq";
    uq_status st = q4_check(fn, W, rows, cols, ldw, group, packed, scales);
    if (st != UQ_OK) return st;
    if (!H) return uq_set_error(UQ_ERR_ARG, "%s: H is NULL", fn);
    if (!(damp >= 0.0) || !isfinite(damp))
        return uq_set_error(UQ_ERR_ARG, "%s: damp must be finite and >= 0, got %g", fn, damp);
    if (block < 0) return uq_set_error(UQ_ERR_ARG, "%s: block must be >= 0, got %lld", fn, (long long)block);
    if (flags & ~(UQ_Q4_MSE_SCALE | UQ_Q4_ACT_ORDER | UQ_Q4_ASYM | UQ_Q4_FIXED_SCALES))
        return uq_set_error(UQ_ERR_ARG, "%s: unknown flags 0x%x", fn, (unsigned)flags);
    if ((flags & UQ_Q4_ASYM) && !zeros)
        return uq_set_error(UQ_ERR_ARG, "%s: UQ_Q4_ASYM needs a zeros output", fn);
    const int fixed = (flags & UQ_Q4_FIXED_SCALES) != 0;
    if (fixed && (flags & UQ_Q4_ASYM))
        return uq_set_error(UQ_ERR_ARG, "%s: UQ_Q4_FIXED_SCALES is symmetric only (no UQ_Q4_ASYM)", fn);
    if (fixed && (st = q4_check_scales(fn, scales, rows, UQ_Q4_NGROUPS(cols, group))) != UQ_OK) return st;
    if (cols > INT32_MAX || rows > INT32_MAX)
        return uq_set_error(UQ_ERR_ARG, "%s: (%lld, %lld) exceeds the BLAS integer range", fn, (long long)rows,
                            (long long)cols);
    const int mse = (flags & UQ_Q4_MSE_SCALE) != 0, act = (flags & UQ_Q4_ACT_ORDER) != 0;
    const int asym = (flags & UQ_Q4_ASYM) != 0;
    if (block == 0) block = group;
    if (block > cols) block = cols;
    size_t hbytes, wbytes, ebytes, cbytes;
    if ((st = uq_size_mul(cols, cols, sizeof(double), &hbytes)) != UQ_OK) return st;
    if ((st = uq_size_mul(rows, cols, sizeof(double), &wbytes)) != UQ_OK) return st;
    if ((st = uq_size_mul(rows, block, sizeof(double), &ebytes)) != UQ_OK) return st;
    if ((st = uq_size_mul(act ? rows : 1, act ? cols : 1, 1, &cbytes)) != UQ_OK) return st;
    if ((st = q4_check_finite_w(fn, W, rows, cols, ldw)) != UQ_OK) return st;
    for (int64_t i = 0; i < cols * cols; i++)
        if (!isfinite(H[i]))
            return uq_set_error(UQ_ERR_NUMERIC, "%s: H contains %s at row %lld, column %lld", fn,
                                isnan(H[i]) ? "NaN" : "Inf", (long long)(i / cols), (long long)(i % cols));

    double *U = NULL, *Wd = NULL, *E = NULL, *Hs = NULL;
    int64_t *perm = NULL;
    uint8_t *codes = NULL;
    int64_t ng = UQ_Q4_NGROUPS(cols, group), rb = UQ_Q4_ROW_BYTES(cols);
    uint8_t *zp = NULL; /* zero points (rows, ng): the caller's, or scratch when it passes none */
    if ((st = uq_alloc((size_t)(rows * ng), (void **)&zp)) != UQ_OK) return st;
    if ((st = uq_alloc(hbytes, (void **)&U)) != UQ_OK) goto exit;
    if ((st = uq_alloc(wbytes, (void **)&Wd)) != UQ_OK) goto exit;
    if ((st = uq_alloc(ebytes, (void **)&E)) != UQ_OK) goto exit;
    if ((st = uq_alloc((size_t)cols * sizeof(int64_t), (void **)&perm)) != UQ_OK) goto exit;
    if (act && (st = uq_alloc(cbytes, (void **)&codes)) != UQ_OK) goto exit;

    /* Hessian copy, dead columns, damping (natural order) */
    q4_damped(W, rows, cols, ldw, H, damp, U, Wd);
    for (int64_t i = 0; i < cols; i++) perm[i] = i;
    if (fixed) memset(zp, UQ_Q4_OFFSET, (size_t)(rows * ng));
    if (act) {
        /* activation order with static groups: every group's scale from the (dead-column-zeroed) weights before
         * any error feedback, in natural groups (so the stored groups stay contiguous and any column prefix stays
         * exact); then the columns are quantized in descending diag(H) order (stable). */
        for (int64_t r = 0; r < rows && !fixed; r++)
            for (int64_t g = 0; g < ng; g++) {
                int64_t c0 = g * group, c1 = c0 + group < cols ? c0 + group : cols;
                if ((st = q4_group_params(Wd + r * cols + c0, c1 - c0, mse, asym, &scales[r * ng + g],
                                          &zp[r * ng + g])) != UQ_OK)
                    goto exit;
            }
        double *diag = NULL; /* descending diag(H), ties by column (stable) */
        if ((st = uq_alloc((size_t)cols * sizeof(double), (void **)&diag)) != UQ_OK) goto exit;
        for (int64_t i = 0; i < cols; i++) diag[i] = U[i * cols + i];
        st = uq_argsort_desc(diag, cols, perm);
        uq_free(diag);
        if (st != UQ_OK) goto exit;
        if ((st = uq_alloc(hbytes, (void **)&Hs)) != UQ_OK) goto exit;
        for (int64_t a = 0; a < cols; a++)
            for (int64_t b = 0; b < cols; b++) Hs[a * cols + b] = U[perm[a] * cols + perm[b]];
        memcpy(U, Hs, hbytes);
        uq_free(Hs);
        Hs = NULL;
        if ((st = uq_alloc((size_t)cols * sizeof(double), (void **)&Hs)) != UQ_OK) goto exit; /* row scratch */
        for (int64_t r = 0; r < rows; r++) {
            double *w = Wd + r * cols;
            for (int64_t c = 0; c < cols; c++) Hs[c] = w[perm[c]];
            memcpy(w, Hs, (size_t)cols * sizeof(double));
        }
        uq_free(Hs);
        Hs = NULL;
    }

    /* U = chol_upper(H^{-1}) (H^{-1} = U^T U) without forming H^{-1}: with J the order-reversing permutation,
     * J H J = L L^T gives H^{-1} = (J L^{-1} J)^T (J L^{-1} J) and J L^{-1} J is upper triangular with a
     * positive diagonal, hence the unique factor. Cost potrf + trtri (2n^3/3) instead of potrf + potri + potrf
     * (4n^3/3). J M J of a row-major n x n buffer is the reversal of its n^2 elements. Column-major 'U' on the
     * buffer is the row-major lower triangle, so the buffer's row-major lower triangle holds L, then L^{-1}. */
    size_t nn = (size_t)cols * (size_t)cols;
    for (size_t a = 0, b = nn - 1; a < b; a++, b--) {
        double t = U[a];
        U[a] = U[b];
        U[b] = t;
    }
    int64_t info = uq_la_potrf_upper_cm(cols, U);
    if (info > 0) {
        st = uq_set_error(UQ_ERR_NUMERIC,
                          "%s: damped Hessian is not positive definite (its trailing principal minor of order %d, "
                          "i.e. columns %lld.., is not positive); increase damp or check H", fn, (int)info,
                          (long long)(cols - info));
        goto exit;
    }
    if (info == 0) info = uq_la_trtri_upper_cm(cols, U);
    if (info != 0) {
        st = uq_set_error(info < 0 ? UQ_ERR_INTERNAL : UQ_ERR_NUMERIC,
                          "%s: inverse Cholesky of the damped Hessian failed (info %d)", fn, (int)info);
        goto exit;
    }
    for (size_t a = 0, b = nn - 1; a < b; a++, b--) { /* row-major upper triangle now holds U */
        double t = U[a];
        U[a] = U[b];
        U[b] = t;
    }

    for (int64_t i0 = 0; i0 < cols;) {
        int64_t i1 = i0 + block < cols ? i0 + block : cols;
        if (!act) {
            int64_t next_group = (i0 / group + 1) * group; /* first group start after i0 */
            if (next_group < i1) i1 = next_group;
        }
        int64_t bs = i1 - i0;
        /* rows are independent inside a block (a scale depends on its own row only): row-outer order keeps
         * the row's block segment in L1 and the block of U in L2 */
        for (int64_t r = 0; r < rows; r++) {
            double *w = Wd + r * cols, *e = E + r * bs;
            uint8_t *prow = packed + r * rb;
            for (int64_t i = i0; i < i1; i++) {
                int64_t col = perm[i], g = col / group;
                if (!act && !fixed && i % group == 0) { /* group start == block start: all earlier error in Wd */
                    int64_t c1 = i + group < cols ? i + group : cols;
                    if ((st = q4_group_params(w + i, c1 - i, mse, asym, &scales[r * ng + g], &zp[r * ng + g])) !=
                        UQ_OK)
                        goto exit;
                }
                const double *urow = U + i * cols;
                float s = scales[r * ng + g];
                const int z = zp[r * ng + g];
                uint8_t q = q4_code_z(w[i], s, z);
                if (act)
                    codes[r * cols + col] = q;
                else
                    q4_put(prow, i, q);
                double ei = (w[i] - (double)((int)q - z) * (double)s) / urow[i];
                e[i - i0] = ei;
                for (int64_t j = i + 1; j < i1; j++) w[j] -= ei * urow[j];
            }
        }
        if (i1 < cols) /* Wd[:, i1:] -= E (rows, bs) @ U[i0:i1, i1:] */
            uq_blas_dgemm(0, 0, rows, cols - i1, bs, -1.0, E, bs, U + i0 * cols + i1, cols, 1.0, Wd + i1, cols);
        i0 = i1;
    }
    if (act) st = uq_q4_pack(codes, rows, cols, packed);
    if (st == UQ_OK && zeros) memcpy(zeros, zp, (size_t)(rows * ng));
exit:
    uq_free(zp);
    uq_free(U);
    uq_free(Wd);
    uq_free(E);
    uq_free(Hs);
    uq_free(perm);
    uq_free(codes);
    return st;
}

/* ------------------------------------------------------------------------------ scale re-fit ----- */

/* In place: A (n, n) SPD row-major -> its lower Cholesky factor, then b <- A^{-1} b. 0, or -1 if not positive
 * definite (a pivot <= tiny relative to the diagonal's largest entry). */
static int q4_chol_solve(double *A, double *b, int64_t n) {
    double dmax = 0.0;
    for (int64_t i = 0; i < n; i++) dmax = A[i * n + i] > dmax ? A[i * n + i] : dmax;
    for (int64_t j = 0; j < n; j++) {
        double d = A[j * n + j];
        for (int64_t k = 0; k < j; k++) d -= A[j * n + k] * A[j * n + k];
        if (!(d > 1e-13 * dmax)) return -1;
        d = sqrt(d);
        A[j * n + j] = d;
        for (int64_t i = j + 1; i < n; i++) {
            double v = A[i * n + j];
            for (int64_t k = 0; k < j; k++) v -= A[i * n + k] * A[j * n + k];
            A[i * n + j] = v / d;
        }
    }
    for (int64_t i = 0; i < n; i++) { /* L y = b */
        double v = b[i];
        for (int64_t k = 0; k < i; k++) v -= A[i * n + k] * b[k];
        b[i] = v / A[i * n + i];
    }
    for (int64_t i = n - 1; i >= 0; i--) { /* L^T x = y */
        double v = b[i];
        for (int64_t k = i + 1; k < n; k++) v -= A[k * n + i] * b[k];
        b[i] = v / A[i * n + i];
    }
    return 0;
}

/* Per row r: err[r] = (w - w_hat)^T Hd (w - w_hat) with w_hat = Qd[r] * scales (group-wise); D and DH are
 * (rows, cols) scratch. */
static void q4_row_errors(const double *Wd, const double *Qd, const float *scales, const double *Hd, int64_t rows,
                          int64_t cols, int64_t group, double *D, double *DH, double *err) {
    int64_t ng = UQ_Q4_NGROUPS(cols, group);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            D[r * cols + c] = Wd[r * cols + c] - Qd[r * cols + c] * (double)scales[r * ng + c / group];
    uq_blas_dgemm(0, 0, rows, cols, cols, 1.0, D, cols, Hd, cols, 0.0, DH, cols);
    for (int64_t r = 0; r < rows; r++) {
        double e = 0.0;
        for (int64_t c = 0; c < cols; c++) e += D[r * cols + c] * DH[r * cols + c];
        err[r] = e;
    }
}

/* The re-fit itself on prepared Hd / Wd and codes Qd = q - 8 (doubles): see uq_q4_refit_scales. Scratch: V, HW
 * (rows, cols) doubles, M (rows, ng, ng), b (rows, ng). Returns the number of rows whose scales changed. */
static int64_t q4_refit(const double *Wd, const double *Qd, const double *Hd, int64_t rows, int64_t cols,
                        int64_t group, float *scales, double *V, double *HW, double *M, double *b, double *A,
                        int64_t *act) {
    int64_t ng = UQ_Q4_NGROUPS(cols, group), changed = 0;
    /* b[r][g] = sum_{c in g} q_c (Hd w)_c ;  M[r][g][h] = sum_{c in g, d in h} q_c Hd_cd q_d */
    uq_blas_dgemm(0, 0, rows, cols, cols, 1.0, Wd, cols, Hd, cols, 0.0, HW, cols);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < ng; g++) {
            int64_t c0 = g * group, c1 = c0 + group < cols ? c0 + group : cols;
            double v = 0.0;
            for (int64_t c = c0; c < c1; c++) v += Qd[r * cols + c] * HW[r * cols + c];
            b[r * ng + g] = v;
        }
    for (int64_t g = 0; g < ng; g++) {
        int64_t c0 = g * group, c1 = c0 + group < cols ? c0 + group : cols;
        /* V = Qd[:, c0:c1] Hd[c0:c1, :], then M[r][g][h] = sum_{d in h} V[r][d] Qd[r][d] for h >= g */
        uq_blas_dgemm(0, 0, rows, cols - c0, c1 - c0, 1.0, Qd + c0, cols, Hd + c0 * cols + c0, cols, 0.0, V, cols);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t h = g; h < ng; h++) {
                int64_t d0 = h * group, d1 = d0 + group < cols ? d0 + group : cols;
                double v = 0.0;
                for (int64_t d = d0; d < d1; d++) v += V[r * cols + d - c0] * Qd[r * cols + d];
                M[(r * ng + g) * ng + h] = v;
                M[(r * ng + h) * ng + g] = v;
            }
    }
    for (int64_t r = 0; r < rows; r++) {
        /* active groups: those with a nonzero code (an all-8 group's scale does not change w_hat) */
        int64_t na = 0;
        for (int64_t g = 0; g < ng; g++)
            if (M[(r * ng + g) * ng + g] > 0.0) act[na++] = g;
        if (na == 0) continue;
        double *x = b + r * ng; /* solved in place over the active groups, packed to the front */
        for (int64_t i = 0; i < na; i++) {
            for (int64_t j = 0; j < na; j++) A[i * na + j] = M[(r * ng + act[i]) * ng + act[j]];
            x[i] = x[act[i]];
        }
        if (q4_chol_solve(A, x, na) != 0) continue;
        int ok = 1;
        for (int64_t i = 0; i < na && ok; i++) ok = x[i] > 0.0 && x[i] <= 65504.0; /* float16-storable */
        if (!ok) continue;
        for (int64_t i = 0; i < na; i++) scales[r * ng + act[i]] = (float)x[i];
        changed++;
    }
    return changed;
}

/* uq_q4_refit_scales (passes == 0: packed_in / scales are the given quantization, packed_out NULL) and
 * uq_q4_quantize_gptq_refit (passes >= 1: outputs packed_out / scales). */
static uq_status q4_refit_driver(const char *fn, const float *W, int64_t rows, int64_t cols, int64_t ldw,
                                 const double *H, int64_t group, double damp, int64_t block, int flags, int passes,
                                 const uint8_t *packed_in, uint8_t *packed_out, float *scales, double *err) {
    uq_status st = q4_check(fn, W, rows, cols, ldw, group, passes ? (const void *)packed_out : packed_in, scales);
    if (st != UQ_OK) return st;
    if (!H) return uq_set_error(UQ_ERR_ARG, "%s: H is NULL", fn);
    if (!(damp >= 0.0) || !isfinite(damp))
        return uq_set_error(UQ_ERR_ARG, "%s: damp must be finite and >= 0, got %g", fn, damp);
    if (block < 0) return uq_set_error(UQ_ERR_ARG, "%s: block must be >= 0, got %lld", fn, (long long)block);
    if (passes < 0 || passes > 64)
        return uq_set_error(UQ_ERR_ARG, "%s: passes must be in 1..64, got %d", fn, passes);
    if (flags & ~(UQ_Q4_MSE_SCALE | UQ_Q4_ACT_ORDER))
        return uq_set_error(UQ_ERR_ARG, "%s: flags 0x%x: the re-fit takes UQ_Q4_MSE_SCALE and UQ_Q4_ACT_ORDER only "
                            "(symmetric int4, its own scales)", fn, (unsigned)flags);
    if (cols > INT32_MAX || rows > INT32_MAX)
        return uq_set_error(UQ_ERR_ARG, "%s: (%lld, %lld) exceeds the BLAS integer range", fn, (long long)rows,
                            (long long)cols);
    const int64_t ng = UQ_Q4_NGROUPS(cols, group), rb = UQ_Q4_ROW_BYTES(cols);
    size_t hb, wb, mb;
    if ((st = uq_size_mul(cols, cols, sizeof(double), &hb)) != UQ_OK) return st;
    if ((st = uq_size_mul(rows, cols, sizeof(double), &wb)) != UQ_OK) return st;
    if ((st = uq_size_mul(rows * ng, ng, sizeof(double), &mb)) != UQ_OK) return st;
    if ((st = q4_check_finite_w(fn, W, rows, cols, ldw)) != UQ_OK) return st;
    for (int64_t i = 0; i < cols; i++)
        for (int64_t j = 0; j <= i; j++)
            if (!isfinite(H[i * cols + j]))
                return uq_set_error(UQ_ERR_NUMERIC, "%s: H contains %s at row %lld, column %lld", fn,
                                    isnan(H[i * cols + j]) ? "NaN" : "Inf", (long long)i, (long long)j);
    if (!passes && (st = q4_check_scales(fn, scales, rows, ng)) != UQ_OK) return st;

    double *Hd = NULL, *Wd = NULL, *Qd = NULL, *V = NULL, *HW = NULL, *M = NULL, *bv = NULL, *A = NULL;
    double *e_best = NULL, *e_new = NULL;
    int64_t *act = NULL;
    uint8_t *pk = NULL, *codes = NULL;
    float *sc = NULL;
    if ((st = uq_alloc(hb, (void **)&Hd)) != UQ_OK) goto exit;
    if ((st = uq_alloc(wb, (void **)&Wd)) != UQ_OK) goto exit;
    if ((st = uq_alloc(wb, (void **)&Qd)) != UQ_OK) goto exit;
    if ((st = uq_alloc(wb, (void **)&V)) != UQ_OK) goto exit;
    if ((st = uq_alloc(wb, (void **)&HW)) != UQ_OK) goto exit;
    if ((st = uq_alloc(mb, (void **)&M)) != UQ_OK) goto exit;
    if ((st = uq_alloc((size_t)(rows * ng) * sizeof(double), (void **)&bv)) != UQ_OK) goto exit;
    if ((st = uq_alloc((size_t)(ng * ng) * sizeof(double), (void **)&A)) != UQ_OK) goto exit;
    if ((st = uq_alloc((size_t)rows * sizeof(double), (void **)&e_best)) != UQ_OK) goto exit;
    if ((st = uq_alloc((size_t)rows * sizeof(double), (void **)&e_new)) != UQ_OK) goto exit;
    if ((st = uq_alloc((size_t)ng * sizeof(int64_t), (void **)&act)) != UQ_OK) goto exit;
    if ((st = uq_alloc((size_t)(rows * rb), (void **)&pk)) != UQ_OK) goto exit;
    if ((st = uq_alloc((size_t)(rows * cols), (void **)&codes)) != UQ_OK) goto exit;
    if ((st = uq_alloc((size_t)(rows * ng) * sizeof(float), (void **)&sc)) != UQ_OK) goto exit;
    q4_damped(W, rows, cols, ldw, H, damp, Hd, Wd);

    /* candidate k = 1..passes: codes from GPTQ (k = 1: the caller's flags and scale choice; k > 1: the best
     * scales so far held fixed), then the scale re-fit; per row the candidate (codes, scales) with the least
     * Hessian-weighted error wins, the GPTQ result itself included (ties: the earlier). passes == 0: the given
     * codes and scales, then their re-fit. */
    const int last = passes ? passes : 1;
    for (int k = 1; k <= last; k++) {
        if (!passes) {
            memcpy(pk, packed_in, (size_t)(rows * rb));
            memcpy(sc, scales, (size_t)(rows * ng) * sizeof(float));
        } else {
            if (k > 1) memcpy(sc, scales, (size_t)(rows * ng) * sizeof(float));
            st = uq_q4_quantize_gptq_z(W, rows, cols, ldw, H, group, damp, block,
                                       k == 1 ? flags : (flags & UQ_Q4_ACT_ORDER) | UQ_Q4_FIXED_SCALES, pk,
                                       k == 1 ? scales : sc, NULL);
            if (st != UQ_OK) goto exit;
            if (k == 1) memcpy(sc, scales, (size_t)(rows * ng) * sizeof(float));
        }
        if ((st = uq_q4_unpack(pk, rows, cols, codes)) != UQ_OK) goto exit;
        for (size_t i = 0; i < (size_t)(rows * cols); i++) Qd[i] = (double)((int)codes[i] - UQ_Q4_OFFSET);
        if (k == 1) { /* the starting point: the given / first GPTQ quantization */
            q4_row_errors(Wd, Qd, scales, Hd, rows, cols, group, V, HW, e_best);
            if (passes) memcpy(packed_out, pk, (size_t)(rows * rb));
        }
        q4_refit(Wd, Qd, Hd, rows, cols, group, sc, V, HW, M, bv, A, act);
        q4_row_errors(Wd, Qd, sc, Hd, rows, cols, group, V, HW, e_new);
        for (int64_t r = 0; r < rows; r++)
            if (e_new[r] < e_best[r]) {
                e_best[r] = e_new[r];
                if (passes) memcpy(packed_out + r * rb, pk + r * rb, (size_t)rb);
                memcpy(scales + r * ng, sc + r * ng, (size_t)ng * sizeof(float));
            }
    }
    if (err) memcpy(err, e_best, (size_t)rows * sizeof(double));
exit:
    uq_free(Hd);
    uq_free(Wd);
    uq_free(Qd);
    uq_free(V);
    uq_free(HW);
    uq_free(M);
    uq_free(bv);
    uq_free(A);
    uq_free(e_best);
    uq_free(e_new);
    uq_free(act);
    uq_free(pk);
    uq_free(codes);
    uq_free(sc);
    return st;
}

uq_status uq_q4_refit_scales(const float *W, int64_t rows, int64_t cols, int64_t ldw, const double *H,
                             int64_t group, double damp, const uint8_t *packed, float *scales, double *err) {
    return q4_refit_driver("uq_q4_refit_scales", W, rows, cols, ldw, H, group, damp, 0, 0, 0, packed, NULL, scales,
                           err);
}

uq_status uq_q4_quantize_gptq_refit(const float *W, int64_t rows, int64_t cols, int64_t ldw, const double *H,
                                    int64_t group, double damp, int64_t block, int flags, int passes,
                                    uint8_t *packed, float *scales, double *err) {
    if (passes < 1)
        return uq_set_error(UQ_ERR_ARG, "uq_q4_quantize_gptq_refit: passes must be in 1..64, got %d", passes);
    return q4_refit_driver("uq_q4_quantize_gptq_refit", W, rows, cols, ldw, H, group, damp, block, flags, passes,
                           packed, packed, scales, err);
}

uq_status uq_q4_pack(const uint8_t *codes, int64_t rows, int64_t cols, uint8_t *packed) {
    if (!codes || !packed) return uq_set_error(UQ_ERR_ARG, "uq_q4_pack: %s is NULL", codes ? "packed" : "codes");
    if (rows <= 0 || cols <= 0)
        return uq_set_error(UQ_ERR_ARG, "uq_q4_pack: rows and cols must be positive, got (%lld, %lld)",
                            (long long)rows, (long long)cols);
    int64_t rb = UQ_Q4_ROW_BYTES(cols);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *c = codes + r * cols;
        for (int64_t j = 0; j < cols; j++)
            if (c[j] > 15)
                return uq_set_error(UQ_ERR_RANGE, "uq_q4_pack: code %u at row %lld, column %lld is above 15",
                                    (unsigned)c[j], (long long)r, (long long)j);
        uint8_t *p = packed + r * rb;
        for (int64_t b = 0; b < cols / 2; b++) p[b] = (uint8_t)(c[2 * b] | (c[2 * b + 1] << 4));
        if (cols & 1) p[rb - 1] = (uint8_t)(c[cols - 1] | (UQ_Q4_OFFSET << 4));
    }
    return UQ_OK;
}

uq_status uq_q4_unpack(const uint8_t *packed, int64_t rows, int64_t cols, uint8_t *codes) {
    if (!codes || !packed) return uq_set_error(UQ_ERR_ARG, "uq_q4_unpack: %s is NULL", codes ? "packed" : "codes");
    if (rows <= 0 || cols <= 0)
        return uq_set_error(UQ_ERR_ARG, "uq_q4_unpack: rows and cols must be positive, got (%lld, %lld)",
                            (long long)rows, (long long)cols);
    int64_t rb = UQ_Q4_ROW_BYTES(cols);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *p = packed + r * rb;
        uint8_t *c = codes + r * cols;
        for (int64_t j = 0; j < cols; j++) c[j] = (uint8_t)((p[j >> 1] >> ((j & 1) * 4)) & 0x0f);
    }
    return UQ_OK;
}

uq_status uq_q4_dequantize(const uint8_t *packed, const float *scales, int64_t rows, int64_t cols, int64_t group,
                           float *W) {
    return uq_q4_dequantize_z(packed, scales, NULL, rows, cols, group, W);
}

uq_status uq_q4_dequantize_z(const uint8_t *packed, const float *scales, const uint8_t *zeros, int64_t rows,
                             int64_t cols, int64_t group, float *W) {
    static const char fn[] = "uq_q4_dequantize";
    uq_status st = q4_check(fn, W, rows, cols, cols, group, packed, scales);
    if (st != UQ_OK) return st;
    int64_t ng = UQ_Q4_NGROUPS(cols, group), rb = UQ_Q4_ROW_BYTES(cols);
    if (zeros)
        for (int64_t i = 0; i < rows * ng; i++)
            if (zeros[i] > 15)
                return uq_set_error(UQ_ERR_RANGE, "%s: zero point %u at row %lld, group %lld is above 15", fn,
                                    (unsigned)zeros[i], (long long)(i / ng), (long long)(i % ng));
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *p = packed + r * rb;
        const float *s = scales + r * ng;
        float *w = W + r * cols;
        for (int64_t j = 0; j < cols; j++) {
            int q = (p[j >> 1] >> ((j & 1) * 4)) & 0x0f, z = zeros ? zeros[r * ng + j / group] : UQ_Q4_OFFSET;
            w[j] = (float)((double)(q - z) * (double)s[j / group]);
        }
    }
    return UQ_OK;
}

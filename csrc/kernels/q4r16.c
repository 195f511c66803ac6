/*
 * q4r16.c -- the R16 kernel layout of int4 weights (uniql.h, UQ_Q4_R16): geometry, repacking from the
 * row-major format (once, at model load), element access, and the plain C twins of the R16 kernels.
 *
 * R16 block b, chunk k: byte 4l + m = q[l][m] | q[l][m + 4] << 4 (row l of the block, column m of the chunk).
 * fp32 activations (the one sequence of every path): per row and token,
 *   tot = 0; for each kept group: gs = 0; gs = fma((float)(q - 8), x[c], gs) over its kept columns in order;
 *   tot = fma(gs, scale, tot).
 * int8 activations: isum = sum (q - 8) xq (exact int32), tot = tot + (float)isum * (scale * xs) per group.
 * scale: the float value of the stored float16 scale (uq_h2f; exact).
 */
#include <math.h>
#include <string.h>

#include "kernels.h"

/* The geometry is written out as 16 rows, 8 columns and 64-byte chunks here and in every R16 kernel. */
_Static_assert(UQ_Q4_R16_ROWS == 16 && UQ_Q4_R16_COLS == 8, "R16: blocks of 16 rows x chunks of 8 columns");
_Static_assert(UQ_Q4_R16_ROWS * UQ_Q4_R16_COLS / 2 == 64, "R16: a chunk is 16 rows x 8 int4 codes = 64 bytes");
_Static_assert(UQ_Q4_DEFAULT_GROUP % UQ_Q4_R16_COLS == 0, "R16: the default int4 group can be repacked");

uq_status uq_q4_r16_size(int64_t rows, int64_t cols, int64_t group, int64_t scale_cols, int64_t nseg_out,
                         int64_t nseg_in, int64_t *nblk, int64_t *blk_bytes, int64_t *nscales) {
    if (!nblk || !blk_bytes || !nscales) return uq_set_error(UQ_ERR_ARG, "q4_r16_size: NULL output");
    if (rows < 1 || cols < 1 || group < 1 || scale_cols < 1 || nseg_out < 1 || nseg_in < 1)
        return uq_set_error(UQ_ERR_ARG, "q4_r16_size: rows %lld, cols %lld, group %lld, scale_cols %lld and segments "
                            "(%lld, %lld) must be >= 1", (long long)rows, (long long)cols, (long long)group,
                            (long long)scale_cols, (long long)nseg_out, (long long)nseg_in);
    if (rows % nseg_out || cols % nseg_in)
        return uq_set_error(UQ_ERR_SHAPE, "q4_r16_size: segments (%lld, %lld) do not divide shape (%lld, %lld)",
                            (long long)nseg_out, (long long)nseg_in, (long long)rows, (long long)cols);
    if (group % UQ_Q4_R16_COLS)
        return uq_set_error(UQ_ERR_SHAPE, "q4_r16_size: group %lld is not a multiple of %d", (long long)group,
                            UQ_Q4_R16_COLS);
    const int64_t rb = (rows / nseg_out + 15) / 16, cc = (cols / nseg_in + 7) / 8;
    *nblk = nseg_out * rb;
    *blk_bytes = nseg_in * cc * 64;
    *nscales = *nblk * scale_cols * 16;
    return UQ_OK;
}

static inline int rm_code(const uq_linear *L, int64_t row, int64_t col) {
    uint8_t b = L->packed[row * UQ_Q4_ROW_BYTES(L->cols) + (col >> 1)];
    return (col & 1) ? b >> 4 : b & 15;
}

uq_status uq_q4_repack_r16(const uq_linear *L, int64_t nseg_out, int64_t nseg_in, uint8_t *packed,
                           uint16_t *scales) {
    if (!L || !packed || !scales) return uq_set_error(UQ_ERR_ARG, "q4_repack_r16: NULL argument");
    if (L->kind != UQ_W_Q4 || L->layout != UQ_Q4_ROWMAJOR || !L->packed || !L->scales)
        return uq_set_error(UQ_ERR_ARG, "q4_repack_r16: needs a row-major int4 weight");
    int64_t nblk, bb, ns;
    uq_status st = uq_q4_r16_size(L->rows, L->cols, L->group, L->scale_cols, nseg_out, nseg_in, &nblk, &bb, &ns);
    if (st != UQ_OK) return st;
    const int64_t seg_out = L->rows / nseg_out, seg_in = L->cols / nseg_in, g = L->group;
    const int64_t gps = (seg_in + g - 1) / g, rb = (seg_out + 15) / 16, cc = (seg_in + 7) / 8;
    if (nseg_in > 1 && (seg_in & 1))
        return uq_set_error(UQ_ERR_SHAPE, "q4_repack_r16: int4 head segments must have even width, got %lld",
                            (long long)seg_in);
    if (L->scale_cols != nseg_in * gps)
        return uq_set_error(UQ_ERR_SHAPE, "q4_repack_r16: %lld scale columns, expected %lld", (long long)L->scale_cols,
                            (long long)(nseg_in * gps));
#pragma omp parallel for schedule(static) num_threads(uq_k_threads())
    for (int64_t b = 0; b < nblk; b++) {
        const int64_t so = b / rb, i = b % rb;
        uint8_t *dst = packed + b * bb;
        uint16_t *sd = scales + b * L->scale_cols * 16;
        for (int l = 0; l < 16; l++) {
            const int64_t r = 16 * i + l, row = so * seg_out + r;
            const int valid = r < seg_out;
            for (int64_t c = 0; c < L->scale_cols; c++) sd[c * 16 + l] = valid ? L->scales[row * L->scale_cols + c] : 0;
            for (int64_t si = 0; si < nseg_in; si++)
                for (int64_t j = 0; j < cc; j++) {
                    uint8_t *ch = dst + (si * cc + j) * 64 + 4 * l;
                    int q[8];
                    for (int m = 0; m < 8; m++) {
                        const int64_t c = 8 * j + m;
                        q[m] = valid && c < seg_in ? rm_code(L, row, si * seg_in + c) : UQ_Q4_OFFSET;
                    }
                    for (int m = 0; m < 4; m++) ch[m] = (uint8_t)(q[m] | q[m + 4] << 4);
                }
        }
    }
    return UQ_OK;
}

uq_status uq_q4_r16_prefix_in_size(const uq_linear *L, int64_t keep_in, int64_t *packed_bytes, int64_t *nscales) {
    if (!L || !packed_bytes || !nscales) return uq_set_error(UQ_ERR_ARG, "q4_r16_prefix_in_size: NULL argument");
    if (L->kind != UQ_W_Q4 || L->layout != UQ_Q4_R16 || !L->packed || !L->scales || L->nseg_in < 1 ||
        L->nseg_out < 1 || L->group < 1 || L->cols % L->nseg_in)
        return uq_set_error(UQ_ERR_ARG, "q4_r16_prefix_in_size: needs an int4 weight in the R16 layout");
    const int64_t seg_in = L->cols / L->nseg_in, g = L->group;
    if (keep_in < 1 || keep_in > seg_in || (L->nseg_in > 1 && (keep_in & 1)))
        return uq_set_error(UQ_ERR_RANGE, "q4_r16_prefix_in_size: keep_in %lld outside [1, %lld]%s", (long long)keep_in,
                            (long long)seg_in, L->nseg_in > 1 ? " or odd (int4 head segments have even width)" : "");
    if (L->scale_cols != L->nseg_in * ((seg_in + g - 1) / g))
        return uq_set_error(UQ_ERR_SHAPE, "q4_r16_prefix_in_size: %lld scale columns, expected %lld",
                            (long long)L->scale_cols, (long long)(L->nseg_in * ((seg_in + g - 1) / g)));
    int64_t nblk, bb, ns;
    uq_status st = uq_q4_r16_size(L->rows, L->nseg_in * keep_in, g, L->nseg_in * ((keep_in + g - 1) / g), L->nseg_out,
                                  L->nseg_in, &nblk, &bb, &ns);
    if (st != UQ_OK) return st;
    *packed_bytes = nblk * bb;
    *nscales = ns;
    return UQ_OK;
}

uq_status uq_q4_r16_prefix_in(const uq_linear *L, int64_t keep_in, uint8_t *packed, uint16_t *scales, uq_linear *out) {
    int64_t pb, ns;
    uq_status st = uq_q4_r16_prefix_in_size(L, keep_in, &pb, &ns);
    if (st != UQ_OK) return st;
    if (!packed || !scales || !out) return uq_set_error(UQ_ERR_ARG, "q4_r16_prefix_in: NULL argument");
    const int64_t nsi = L->nseg_in, seg_in = L->cols / nsi, seg_out = L->rows / L->nseg_out, g = L->group;
    const int64_t cc = (seg_in + 7) / 8, kc = (keep_in + 7) / 8, gps = (seg_in + g - 1) / g, kg = (keep_in + g - 1) / g;
    const int64_t nblk = L->nseg_out * ((seg_out + 15) / 16), sc = L->scale_cols, ksc = nsi * kg;
    /* whole chunks, bytes as they are: a partial last chunk keeps the codes of the columns past keep_in, which the
     * kernels read against zero int8 activations or skip (fp32) in either layout, so the results are the same */
#pragma omp parallel for schedule(static) num_threads(uq_k_threads())
    for (int64_t b = 0; b < nblk; b++) {
        for (int64_t si = 0; si < nsi; si++) {
            memcpy(packed + (b * nsi + si) * kc * 64, L->packed + (b * nsi + si) * cc * 64, (size_t)kc * 64);
            memcpy(scales + (b * ksc + si * kg) * 16, L->scales + (b * sc + si * gps) * 16,
                   (size_t)kg * 16 * sizeof(uint16_t));
        }
    }
    *out = *L;
    out->cols = nsi * keep_in;
    out->scale_cols = ksc;
    out->packed = packed;
    out->scales = scales;
    return UQ_OK;
}

int uq_k_r16_code(const uq_linear *L, int64_t row, int64_t col) {
    const int64_t seg_out = L->rows / L->nseg_out, seg_in = L->cols / L->nseg_in;
    const int64_t rb = (seg_out + 15) / 16, cc = (seg_in + 7) / 8;
    const int64_t so = row / seg_out, r = row % seg_out, si = col / seg_in, c = col % seg_in;
    const uint8_t *blk = L->packed + (so * rb + r / 16) * (L->nseg_in * cc * 64);
    const uint8_t byte = blk[(si * cc + c / 8) * 64 + 4 * (r % 16) + (c % 8) % 4];
    return (c % 8) < 4 ? byte & 15 : byte >> 4;
}

float uq_k_r16_scale(const uq_linear *L, int64_t row, int64_t sc) {
    const int64_t seg_out = L->rows / L->nseg_out, rb = (seg_out + 15) / 16;
    const int64_t so = row / seg_out, r = row % seg_out;
    return uq_h2f(L->scales[((so * rb + r / 16) * L->scale_cols + sc) * 16 + r % 16]);
}

static inline int blk_code(const uint8_t *blk, int64_t chunk, int l, int m) {
    const uint8_t byte = blk[chunk * 64 + 4 * l + (m & 3)];
    return m < 4 ? byte & 15 : byte >> 4;
}

void uq_k_r16_f32_ref(const uint8_t *const *wb, const uint16_t *const *sb, int nb, const float *x, int64_t ldx,
                      int64_t T, const uq_k_chunk *g, int64_t ng, float *out, int64_t ldo) {
    for (int i = 0; i < nb; i++)
        for (int64_t t = 0; t < T; t++)
            for (int l = 0; l < 16; l++) {
                float tot = 0.0f;
                for (int64_t k = 0; k < ng; k++) {
                    const float *xk = x + t * ldx + g[k].xcol;
                    float gs = 0.0f;
                    for (int64_t c = 0; c < g[k].n; c++)
                        gs = fmaf((float)(blk_code(wb[i], g[k].wcol + c / 8, l, (int)(c % 8)) - UQ_Q4_OFFSET), xk[c], gs);
                    tot = fmaf(gs, uq_h2f(sb[i][g[k].scol * 16 + l]), tot);
                }
                out[t * ldo + 16 * i + l] = tot;
            }
}

void uq_k_r16_q8_ref(const uint8_t *const *wb, const uint16_t *const *sb, int nb, const int8_t *xq, int64_t ldq,
                     const float *xs, const int32_t *xsum, int64_t ldg, int64_t T, const uq_k_chunk *g, int64_t ng,
                     float *out, int64_t ldo, const uq_k_r16_pf *pf) {
    (void)xsum;
    (void)pf;
    for (int i = 0; i < nb; i++)
        for (int64_t t = 0; t < T; t++)
            for (int l = 0; l < 16; l++) {
                float tot = 0.0f;
                for (int64_t k = 0; k < ng; k++) {
                    const int8_t *q = xq + t * ldq + g[k].xq;
                    int32_t isum = 0;
                    for (int64_t c = 0; c < g[k].n; c++)
                        isum += (blk_code(wb[i], g[k].wcol + c / 8, l, (int)(c % 8)) - UQ_Q4_OFFSET) * q[c];
                    tot = tot + (float)isum * (uq_h2f(sb[i][g[k].scol * 16 + l]) * xs[t * ldg + k]);
                }
                out[t * ldo + 16 * i + l] = tot;
            }
}

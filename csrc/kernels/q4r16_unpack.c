/*
 * q4r16_unpack.c -- the inverse of uq_q4_repack_r16: an int4 weight in the kernels' R16 layout back to the
 * row-major format (same codes, same scales), so a resident weight can be cut or extended and repacked
 * when the pruning rate changes (see "memory that follows the rate" in uniql.h).
 */
#include <string.h>

#include "kernels.h"
#include "uniql.h"

uq_status uq_q4_unpack_r16(const uq_linear *L, uint8_t *packed, float *scales) {
    if (!L || !packed || !scales) return uq_set_error(UQ_ERR_ARG, "q4_unpack_r16: NULL argument");
    if (L->kind != UQ_W_Q4 || L->layout != UQ_Q4_R16 || !L->packed || !L->scales)
        return uq_set_error(UQ_ERR_ARG, "q4_unpack_r16: needs an int4 weight in the R16 layout");
    int64_t nblk, bb, ns;
    uq_status st = uq_q4_r16_size(L->rows, L->cols, L->group, L->scale_cols, L->nseg_out, L->nseg_in, &nblk, &bb,
                                  &ns);
    if (st != UQ_OK) return st;
    const int64_t rb = UQ_Q4_ROW_BYTES(L->cols);
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < L->rows; row++) {
        uint8_t *dst = packed + row * rb;
        memset(dst, 0, (size_t)rb);
        for (int64_t c = 0; c < L->cols; c++) {
            const int q = uq_k_r16_code(L, row, c);
            dst[c >> 1] |= (uint8_t)((c & 1) ? q << 4 : q);
        }
        for (int64_t sc = 0; sc < L->scale_cols; sc++) scales[row * L->scale_cols + sc] = uq_k_r16_scale(L, row, sc);
    }
    return UQ_OK;
}

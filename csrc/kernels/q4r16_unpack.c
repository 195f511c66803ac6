/*
 * q4r16_unpack.c -- the inverse of uq_q4_repack_r16: an int4 weight in the kernels' R16 layout back to the
 * row-major format (same codes, same scales), so a resident weight can be cut or extended and repacked
 * when the pruning rate changes (see "memory that follows the rate" in uniql.h).
 */
#include <string.h>

#include "kernels.h"
#include "uniql.h"

uq_status uq_q4_unpack_r16(const uq_linear *L, uint8_t *packed, uint16_t *scales) {
    if (!L || !packed || !scales) return uq_set_error(UQ_ERR_ARG, "q4_unpack_r16: NULL argument");
    if (L->kind != UQ_W_Q4 || L->layout != UQ_Q4_R16 || !L->packed || !L->scales)
        return uq_set_error(UQ_ERR_ARG, "q4_unpack_r16: needs an int4 weight in the R16 layout");
    int64_t nblk, bb, ns;
    uq_status st = uq_q4_r16_size(L->rows, L->cols, L->group, L->scale_cols, L->nseg_out, L->nseg_in, &nblk, &bb,
                                  &ns);
    if (st != UQ_OK) return st;
    const int64_t seg_out = L->rows / L->nseg_out, seg_in = L->cols / L->nseg_in, sc = L->scale_cols;
    const int64_t rbk = (seg_out + 15) / 16, cc = (seg_in + 7) / 8, rowb = UQ_Q4_ROW_BYTES(L->cols);
    memset(packed, 0, (size_t)(L->rows * rowb));
    for (int64_t b = 0; b < nblk; b++) { /* the block order of uq_q4_repack_r16, read instead of written */
        const int64_t so = b / rbk, i = b % rbk;
        const uint8_t *blk = L->packed + b * bb;
        const uint16_t *sb = L->scales + b * sc * 16;
        for (int l = 0; l < 16 && 16 * i + l < seg_out; l++) {
            const int64_t row = so * seg_out + 16 * i + l;
            uint8_t *dst = packed + row * rowb;
            for (int64_t c = 0; c < sc; c++) scales[row * sc + c] = sb[c * 16 + l];
            for (int64_t si = 0; si < L->nseg_in; si++)
                for (int64_t j = 0; j < cc; j++) {
                    const uint8_t *ch = blk + (si * cc + j) * 64 + 4 * l;
                    for (int m = 0; m < 8 && 8 * j + m < seg_in; m++) {
                        const int64_t col = si * seg_in + 8 * j + m;
                        const int q = m < 4 ? ch[m] & 15 : ch[m - 4] >> 4;
                        dst[col >> 1] |= (uint8_t)((col & 1) ? q << 4 : q);
                    }
                }
        }
    }
    return UQ_OK;
}

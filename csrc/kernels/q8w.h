/*
 * q8w.h -- int8 weights (UQ_W_Q8, see q8w.c and uniql.h): internal entry points of the linear driver and the
 * embedding gather. Arguments are validated by the callers (uq_q8w_check).
 */
#ifndef UQ_Q8W_H
#define UQ_Q8W_H

#include <stdint.h>

#include "uniql.h"

/* The int8 part of linear validation: codes/scales present, group >= 1, scale_cols = nseg_in * groups per
 * segment. `where` names the weight in the message. */
uq_status uq_q8w_check(const uq_linear *L, int64_t nseg_in, const char *where);
/* uq_linear_forward for an int8 weight (validated), on the current kernel path with nth threads. */
uq_status uq_q8w_linear(const uq_linear *L, const float *x, int64_t T, int64_t nseg_out, int64_t keep_out,
                        int64_t nseg_in, int64_t keep_in, float *y, int nth);
/* out (cols) = row `row` of an int8 embedding, q * scale. */
void uq_q8w_embed_row(const uq_linear *E, int64_t row, float *out);

#endif

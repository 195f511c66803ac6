/*
 * transformer_impl.h -- the transformer runtime's model and state structs, shared by transformer.c (one
 * sequence) and batch.c (several sequences per decode step). Internal: not part of the public API.
 */
#ifndef UQ_TRANSFORMER_IMPL_H
#define UQ_TRANSFORMER_IMPL_H

#include "uniql.h"

struct uq_tf_model {
    uq_tf_config cfg;
    uq_linear embed, lm_head;
    const float *final_norm;
    uq_tf_layer_weights *layers; /* (L) copied descriptors; freq_map points into maps or is NULL */
    int32_t *maps;               /* concatenated copies of the freq maps */
    int64_t *K, *R;              /* (L) stored intermediate size and stored head dim */
    int64_t *k_keep, *r_keep;    /* (L) current keep sizes */
    int64_t Kmax, Rmax;
    float *inv_freq;             /* (d/2) */
};

struct uq_tf_state {
    const uq_tf_model *m;
    int64_t max_seq, max_chunk, pos, half;
    int nthreads;
    size_t bytes;
    float *cache;                /* all layers: K then V of layer l at kc[l], vc[l] */
    float **kc, **vc;            /* (L) each (n_kv, max_seq, R_l) */
    float *cos_tab, *sin_tab;    /* (max_seq, d/2) */
    float *x, *xn, *tmp;         /* (max_chunk, hidden) */
    float *q, *att;              /* (max_chunk, n_heads * Rmax) */
    float *kb, *vb;              /* (max_chunk, n_kv * Rmax) */
    float *g, *u;                /* (max_chunk, Kmax) */
    float *scores;               /* (nthreads * n_heads / n_kv, max_seq) */
};

/* lm_head logits (n, V) of n normalised rows xn (n, H) of a batched decode step (batch.c; ssm_batch.c uses it too);
 * r16: an R16 copy of a row-major int4 head or NULL. */
uq_status uq_batch_head(const uq_linear *head, const uq_linear *r16, const float *xn, int64_t n, int64_t H, int64_t V,
                        float *logits);

#endif /* UQ_TRANSFORMER_IMPL_H */

/*
 * batch.c -- batched decoding of the transformer runtime: one new token for each of n sequences per call, each
 * sequence with its own state (KV cache, position), so sequences can join and leave between calls (continuous
 * batching). The linears run once over the n rows of the step (the weights are read once for every sequence:
 * the reason to batch on a memory-bound CPU); RoPE, the KV cache writes and attention run per sequence.
 *
 * Bit-identical to decoding each sequence alone with uq_tf_forward (T = 1): every kernel computes each output
 * element with a fixed sequence of float operations that depends only on that element's row (token) and its
 * inputs, never on T or the thread count (uniql.h "Determinism"); W4A8 quantizes activations per token. So row i
 * of a batched linear equals the same linear of sequence i alone, and attention runs the same per-head
 * operations (uq_k_attention) whether the heads or the sequences are spread over the threads.
 */
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../kernels/kernels.h"
#include "transformer_impl.h"
#include "uniql.h"

struct uq_tf_batch {
    const uq_tf_model *m;
    int64_t max_batch;
    size_t bytes;
    float *x, *xn, *tmp; /* (max_batch, hidden) */
    float *q, *att;      /* (max_batch, n_heads * Rmax) */
    float *kb, *vb;      /* (max_batch, n_kv * Rmax) */
    float *g, *u;        /* (max_batch, Kmax) */
    uq_linear head;      /* optional R16 copy of a row-major int4 lm_head (kind 0 = none) */
};

void uq_tf_batch_free(uq_tf_batch *b) {
    if (!b) return;
    uq_free(b->x);
    uq_free(b->xn);
    uq_free(b->tmp);
    uq_free(b->q);
    uq_free(b->att);
    uq_free(b->kb);
    uq_free(b->vb);
    uq_free(b->g);
    uq_free(b->u);
    uq_free(b);
}

static uq_status batch_buf(float **p, int64_t a, int64_t b, size_t *total) {
    size_t n;
    uq_status st = uq_size_mul(a, b, sizeof(float), &n);
    if (st != UQ_OK) return st;
    *total += n;
    return uq_alloc(n, (void **)p);
}

uq_status uq_tf_batch_init(const uq_tf_model *m, int64_t max_batch, uq_tf_batch **out) {
    if (!m || !out) return uq_set_error(UQ_ERR_ARG, "tf_batch_init: NULL argument");
    *out = NULL;
    if (max_batch < 1)
        return uq_set_error(UQ_ERR_ARG, "tf_batch_init: max_batch must be >= 1, got %lld", (long long)max_batch);
    const int64_t H = m->cfg.hidden_size, nh = m->cfg.num_heads, nkv = m->cfg.num_kv_heads;
    uq_tf_batch *b;
    uq_status st = uq_calloc(sizeof *b, (void **)&b);
    if (st != UQ_OK) return st;
    b->m = m;
    b->max_batch = max_batch;
    size_t tot = sizeof *b;
    if ((st = batch_buf(&b->x, max_batch, H, &tot)) != UQ_OK || (st = batch_buf(&b->xn, max_batch, H, &tot)) != UQ_OK ||
        (st = batch_buf(&b->tmp, max_batch, H, &tot)) != UQ_OK ||
        (st = batch_buf(&b->q, max_batch, nh * m->Rmax, &tot)) != UQ_OK ||
        (st = batch_buf(&b->att, max_batch, nh * m->Rmax, &tot)) != UQ_OK ||
        (st = batch_buf(&b->kb, max_batch, nkv * m->Rmax, &tot)) != UQ_OK ||
        (st = batch_buf(&b->vb, max_batch, nkv * m->Rmax, &tot)) != UQ_OK ||
        (st = batch_buf(&b->g, max_batch, m->Kmax, &tot)) != UQ_OK ||
        (st = batch_buf(&b->u, max_batch, m->Kmax, &tot)) != UQ_OK) {
        uq_tf_batch_free(b);
        return st;
    }
    b->bytes = tot;
    *out = b;
    return UQ_OK;
}

size_t uq_tf_batch_bytes(const uq_tf_batch *b) { return b ? b->bytes : 0; }

uq_status uq_tf_batch_set_head(uq_tf_batch *b, const uq_linear *head) {
    if (!b || !head) return uq_set_error(UQ_ERR_ARG, "tf_batch_set_head: NULL argument");
    const uq_linear *L = &b->m->lm_head;
    if (L->kind != UQ_W_Q4 || L->layout == UQ_Q4_R16)
        return uq_set_error(UQ_ERR_UNSUPPORTED,
                            "tf_batch_set_head: the model's lm_head is not a row-major int4 weight");
    if (head->kind != UQ_W_Q4 || head->layout != UQ_Q4_R16 || head->nseg_out != 1 || head->nseg_in != 1 ||
        head->rows != L->rows || head->cols != L->cols || head->group != L->group || head->bias)
        return uq_set_error(UQ_ERR_SHAPE, "tf_batch_set_head: want the (%lld, %lld) int4 lm_head in one-segment R16 "
                            "layout, group %lld, no bias", (long long)L->rows, (long long)L->cols, (long long)L->group);
    uq_status st = uq_linear_check(head, "lm_head (R16 copy)", -1, L->rows, L->cols, 1);
    if (st != UQ_OK) return st;
    b->head = *head;
    return UQ_OK;
}

int64_t uq_tf_batch_max(const uq_tf_batch *b) { return b ? b->max_batch : 0; }

/* Attention of one query row per sequence. With at least as many sequences as threads the sequences are spread
 * over the threads (each call then runs on one thread: the nested region is inactive); else each sequence's
 * heads use all threads. Either way every head runs the same operations, so results do not change. */
static void batch_attention(const uq_tf_model *m, uq_tf_state *const *states, int64_t n, int64_t l, float *q,
                            float *att, int64_t r, int nthreads) {
    const int64_t nh = m->cfg.num_heads, nkv = m->cfg.num_kv_heads, R = m->R[l];
    const float scale = (float)(1.0 / sqrt((double)m->cfg.head_dim));
    int64_t work = 0;
    for (int64_t i = 0; i < n; i++) work += (states[i]->pos + 1) * nh * r;
    const int across = n >= nthreads && nthreads > 1 && work >= 65536;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) if (across)
    for (int64_t i = 0; i < n; i++) {
        uq_tf_state *s = states[i];
        uq_k_attention(q + i * nh * r, 1, nh, nkv, r, r, r, s->kc[l], s->vc[l], s->max_seq, R, s->pos, scale,
                       att + i * nh * r, s->scores, across ? 1 : s->nthreads);
    }
}

static uq_status batch_layer(const uq_tf_model *m, uq_tf_batch *b, uq_tf_state *const *states, int64_t n,
                             int64_t l) {
    const uq_tf_config *c = &m->cfg;
    const uq_tf_layer_weights *lw = &m->layers[l];
    const int64_t H = c->hidden_size, nh = c->num_heads, nkv = c->num_kv_heads;
    const int64_t R = m->R[l], r = m->r_keep[l], k = m->k_keep[l];
    uq_status st;
    uq_k_rmsnorm(b->x, n, H, lw->attn_norm, c->rms_norm_eps, b->xn);
    if ((st = uq_linear_forward(&lw->q, b->xn, n, nh, r, 1, H, b->q)) != UQ_OK) return st;
    if ((st = uq_linear_forward(&lw->k, b->xn, n, nkv, R, 1, H, b->kb)) != UQ_OK) return st;
    if ((st = uq_linear_forward(&lw->v, b->xn, n, nkv, R, 1, H, b->vb)) != UQ_OK) return st;
    for (int64_t i = 0; i < n; i++) {
        uq_tf_state *s = states[i];
        float *qi = b->q + i * nh * r, *ki = b->kb + i * nkv * R, *vi = b->vb + i * nkv * R;
        uq_k_rope(qi, 1, nh, nh / nkv, r, r, lw->freq_map, R / 2, s->cos_tab, s->sin_tab, s->half, s->pos);
        uq_k_rope(ki, 1, nkv, 1, R, R, lw->freq_map, R / 2, s->cos_tab, s->sin_tab, s->half, s->pos);
        for (int64_t g = 0; g < nkv; g++) {
            size_t off = (size_t)((g * s->max_seq + s->pos) * R);
            memcpy(s->kc[l] + off, ki + g * R, (size_t)R * sizeof(float));
            memcpy(s->vc[l] + off, vi + g * R, (size_t)R * sizeof(float));
        }
    }
    batch_attention(m, states, n, l, b->q, b->att, r, uq_k_threads());
    if ((st = uq_linear_forward(&lw->o, b->att, n, 1, H, nh, r, b->tmp)) != UQ_OK) return st;
    uq_k_add(b->x, b->tmp, n * H);
    uq_k_rmsnorm(b->x, n, H, lw->mlp_norm, c->rms_norm_eps, b->xn);
    if ((st = uq_linear_forward(&lw->gate, b->xn, n, 1, k, 1, H, b->g)) != UQ_OK) return st;
    if ((st = uq_linear_forward(&lw->up, b->xn, n, 1, k, 1, H, b->u)) != UQ_OK) return st;
    uq_k_silu_mul(b->g, b->u, n * k);
    if ((st = uq_linear_forward(&lw->down, b->g, n, 1, H, 1, k, b->tmp)) != UQ_OK) return st;
    uq_k_add(b->x, b->tmp, n * H);
    return UQ_OK;
}

/* The lm_head over n rows. A row-major int4 lm_head (a tied int4 embedding: the gather needs that layout) runs one
 * row at a time below 24 rows: there its multi-token kernels are slower than separate single-token calls (SmolLM2's
 * 49152 x 576 head, W4A8, one thread, AVX-512: 0.71 ms at T = 1, 12.4 ms at T = 2, 12.6 ms at T = 16, 16.6 ms at
 * T = 32), and each row's result is the same either way, unless an R16 copy of it was given (uq_tf_batch_set_head)
 * and activations are int8. Every other layout runs once over all rows. */
uq_status uq_batch_head(const uq_linear *head, const uq_linear *r16, const float *xn, int64_t n, int64_t H, int64_t V,
                        float *logits) {
    /* with int8 activations both layouts compute the same exact integer group sums, scaled and added in group order
     * (uniql.h "kernels"), so the R16 copy changes nothing but the speed */
    if (r16 && r16->kind == UQ_W_Q4 && n > 1 && uq_kernels_q4_act() == UQ_Q4_ACT_INT8)
        return uq_linear_forward(r16, xn, n, 1, V, 1, H, logits);
    if (head->kind != UQ_W_Q4 || head->layout == UQ_Q4_R16 || n >= 24)
        return uq_linear_forward(head, xn, n, 1, V, 1, H, logits);
    for (int64_t i = 0; i < n; i++) {
        uq_status st = uq_linear_forward(head, xn + i * H, 1, 1, V, 1, H, logits + i * V);
        if (st != UQ_OK) return st;
    }
    return UQ_OK;
}

uq_status uq_tf_decode_batch(const uq_tf_model *m, uq_tf_batch *b, uq_tf_state *const *states, const int32_t *ids,
                             int64_t n, float *logits) {
    if (!m || !b || !states || !ids || !logits) return uq_set_error(UQ_ERR_ARG, "tf_decode_batch: NULL argument");
    if (b->m != m) return uq_set_error(UQ_ERR_STATE, "tf_decode_batch: the batch was built for another model");
    if (n < 1 || n > b->max_batch)
        return uq_set_error(UQ_ERR_ARG, "tf_decode_batch: %lld sequences outside [1, max_batch = %lld]",
                            (long long)n, (long long)b->max_batch);
    for (int64_t i = 0; i < n; i++) {
        const uq_tf_state *s = states[i];
        if (!s) return uq_set_error(UQ_ERR_ARG, "tf_decode_batch: state %lld is NULL", (long long)i);
        if (s->m != m)
            return uq_set_error(UQ_ERR_STATE, "tf_decode_batch: state %lld was built for another model", (long long)i);
        if (s->pos >= s->max_seq)
            return uq_set_error(UQ_ERR_RANGE, "tf_decode_batch: sequence %lld at position %lld: KV cache full "
                                "(max_seq %lld)", (long long)i, (long long)s->pos, (long long)s->max_seq);
        if (ids[i] < 0 || ids[i] >= m->cfg.vocab_size)
            return uq_set_error(UQ_ERR_RANGE, "tf_decode_batch: token id %d of sequence %lld outside [0, %lld)",
                                (int)ids[i], (long long)i, (long long)m->cfg.vocab_size);
        for (int64_t j = 0; j < i; j++)
            if (states[j] == s)
                return uq_set_error(UQ_ERR_ARG, "tf_decode_batch: sequences %lld and %lld share one state",
                                    (long long)j, (long long)i);
    }
    const int64_t H = m->cfg.hidden_size, V = m->cfg.vocab_size;
    uq_status st;
    uq_k_embed(&m->embed, ids, n, b->x);
    for (int64_t l = 0; l < m->cfg.num_layers; l++)
        if ((st = batch_layer(m, b, states, n, l)) != UQ_OK) return st;
    uq_k_rmsnorm(b->x, n, H, m->final_norm, m->cfg.rms_norm_eps, b->xn);
    if ((st = uq_batch_head(&m->lm_head, &b->head, b->xn, n, H, V, logits)) != UQ_OK) return st;
    for (int64_t i = 0; i < n; i++) states[i]->pos += 1;
    return UQ_OK;
}

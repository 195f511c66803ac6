/*
 * ssm_batch.c -- batched decoding of the runtime (every architecture): one new token for each of n sequences per call,
 * each with its own uq_hy_state (conv and SSM states, KV caches, position). Every linear (in_proj views, q/k/v/o,
 * MLP, lm_head) runs once over the n rows; the causal conv1d, the selective-scan recurrence, RoPE, the KV cache
 * writes and attention run per sequence on that sequence's state. Row-wise kernels (RMSNorm, softplus, the gated
 * norm, SiLU products) run over all rows at once: each row's operations are those of the row alone.
 *
 * Bit-identical to decoding each sequence alone with uq_hy_forward (T = 1, which takes the recurrence): every
 * kernel's operations per output element depend only on its token row, and the scan, conv and attention of a
 * sequence are the same calls with T = 1, only spread differently over threads.
 */
#include <string.h>

#include "../kernels/kernels.h"
#include "../kernels/ssm_kernels.h"
#include "ssm_impl.h"
#include "uniql.h"

struct uq_hy_batch {
    const uq_hy_model *m;
    int64_t max_batch;
    size_t bytes;
    float *x, *xn, *tmp;      /* (max_batch, hidden) */
    float *z, *xi, *xo, *y;   /* (max_batch, H*Pmax) */
    float *bi, *bo, *ci, *co; /* (max_batch, G*Nmax) */
    float *dt;                /* (max_batch, H) */
    float *q, *qa, *qb, *att; /* (max_batch, n_heads*Rmax) */
    float *kb, *vb;           /* (max_batch, n_kv*Rmax) */
    float *g, *u;             /* (max_batch, Kmax) */
    int64_t *chan;            /* conv channel maps of x, B and C: (H*Pmax + 2*G*Nmax) */
    uq_linear head;           /* optional R16 copy of a row-major int4 lm_head (kind 0 = none) */
};

void uq_hy_batch_free(uq_hy_batch *b) {
    if (!b) return;
    float *bufs[] = {b->x, b->xn, b->tmp, b->z, b->xi, b->xo, b->y, b->bi, b->bo, b->ci, b->co, b->dt,
                     b->q, b->qa, b->qb, b->att, b->kb, b->vb, b->g, b->u};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) uq_free(bufs[i]);
    uq_free(b->chan);
    uq_free(b);
}

static uq_status hbuf(float **p, int64_t a, int64_t b, size_t *total) {
    size_t n;
    uq_status st = uq_size_mul(a, b > 0 ? b : 1, sizeof(float), &n);
    if (st != UQ_OK) return st;
    *total += n;
    return uq_alloc(n, (void **)p);
}

uq_status uq_hy_batch_init(const uq_hy_model *m, int64_t max_batch, uq_hy_batch **out) {
    if (!m || !out) return uq_set_error(UQ_ERR_ARG, "hy_batch_init: NULL argument");
    *out = NULL;
    if (max_batch < 1)
        return uq_set_error(UQ_ERR_ARG, "hy_batch_init: max_batch must be >= 1, got %lld", (long long)max_batch);
    const uq_hy_config *c = &m->cfg;
    const int64_t hid = c->hidden_size, mb = max_batch;
    const int64_t H = m->any_mamba ? c->ssm_heads : 0, G = m->any_mamba ? c->ssm_groups : 0;
    const int64_t nh = m->any_attn ? c->num_heads : 0, nkv = m->any_attn ? c->num_kv_heads : 0;
    const int64_t HP = H * m->Pmax, GN = G * m->Nmax;
    uq_hy_batch *b;
    uq_status st = uq_calloc(sizeof *b, (void **)&b);
    if (st != UQ_OK) return st;
    b->m = m;
    b->max_batch = mb;
    size_t tot = sizeof *b;
    if ((st = hbuf(&b->x, mb, hid, &tot)) != UQ_OK || (st = hbuf(&b->xn, mb, hid, &tot)) != UQ_OK ||
        (st = hbuf(&b->tmp, mb, hid, &tot)) != UQ_OK || (st = hbuf(&b->z, mb, HP, &tot)) != UQ_OK ||
        (st = hbuf(&b->xi, mb, HP, &tot)) != UQ_OK || (st = hbuf(&b->xo, mb, HP, &tot)) != UQ_OK ||
        (st = hbuf(&b->y, mb, HP, &tot)) != UQ_OK || (st = hbuf(&b->bi, mb, GN, &tot)) != UQ_OK ||
        (st = hbuf(&b->bo, mb, GN, &tot)) != UQ_OK || (st = hbuf(&b->ci, mb, GN, &tot)) != UQ_OK ||
        (st = hbuf(&b->co, mb, GN, &tot)) != UQ_OK || (st = hbuf(&b->dt, mb, H, &tot)) != UQ_OK ||
        (st = hbuf(&b->q, mb, nh * m->Rmax, &tot)) != UQ_OK || (st = hbuf(&b->qa, mb, nh * m->Rmax, &tot)) != UQ_OK ||
        (st = hbuf(&b->qb, mb, nh * m->Rmax, &tot)) != UQ_OK || (st = hbuf(&b->att, mb, nh * m->Rmax, &tot)) != UQ_OK ||
        (st = hbuf(&b->kb, mb, nkv * m->Rmax, &tot)) != UQ_OK ||
        (st = hbuf(&b->vb, mb, nkv * m->Rmax, &tot)) != UQ_OK ||
        (st = hbuf(&b->g, mb, m->Kmax, &tot)) != UQ_OK || (st = hbuf(&b->u, mb, m->Kmax, &tot)) != UQ_OK ||
        (st = uq_alloc((size_t)(HP + 2 * GN + 1) * sizeof(int64_t), (void **)&b->chan)) != UQ_OK) {
        uq_hy_batch_free(b);
        return st;
    }
    b->bytes = tot + (size_t)(HP + 2 * GN + 1) * sizeof(int64_t);
    *out = b;
    return UQ_OK;
}

size_t uq_hy_batch_bytes(const uq_hy_batch *b) { return b ? b->bytes : 0; }

int64_t uq_hy_batch_max(const uq_hy_batch *b) { return b ? b->max_batch : 0; }

uq_status uq_hy_batch_set_head(uq_hy_batch *b, const uq_linear *head) {
    if (!b || !head) return uq_set_error(UQ_ERR_ARG, "hy_batch_set_head: NULL argument");
    const uq_linear *L = &b->m->lm_head;
    if (L->kind != UQ_W_Q4 || L->layout == UQ_Q4_R16)
        return uq_set_error(UQ_ERR_UNSUPPORTED,
                            "hy_batch_set_head: the model's lm_head is not a row-major int4 weight");
    if (head->kind != UQ_W_Q4 || head->layout != UQ_Q4_R16 || head->nseg_out != 1 || head->nseg_in != 1 ||
        head->rows != L->rows || head->cols != L->cols || head->group != L->group || head->bias)
        return uq_set_error(UQ_ERR_SHAPE, "hy_batch_set_head: want the (%lld, %lld) int4 lm_head in one-segment R16 "
                            "layout, group %lld, no bias", (long long)L->rows, (long long)L->cols, (long long)L->group);
    uq_status st = uq_linear_check(head, "lm_head (R16 copy)", -1, L->rows, L->cols, 1);
    if (st != UQ_OK) return st;
    b->head = *head;
    return UQ_OK;
}

/* Spread per-sequence work over the threads when there are at least as many sequences as threads (each call then
 * runs single-threaded: a pool task's kernel calls run serially), else let each call use its own threads. */
static int across(int64_t n, int nthreads) { return nthreads > 1 && n >= nthreads; }

/* Per-sequence work of a batched layer, one pool task per sequence. */
typedef struct {
    const uq_hy_model *m;
    uq_hy_batch *b;
    uq_hy_state *const *S;
    int64_t l;
    int ac;
    uq_ks_scan a0;
} rows_job;

static void mamba_row_task(void *arg, int64_t i, int worker) {
    const rows_job *j = arg;
    (void)worker;
    const uq_hy_model *m = j->m;
    uq_hy_batch *b = j->b;
    uq_hy_state *s = j->S[i];
    const int64_t l = j->l, H = j->a0.H, G = j->a0.G, Pc = j->a0.Pc, Nc = j->a0.Nc, Pk = j->a0.Pk;
    const int64_t ox = i * H * Pc, obc = i * G * Nc;
    uq_hy_mamba_conv(m, l, s->conv[l], b->xi + ox, b->bi + obc, b->ci + obc, 1, b->chan, b->xo + ox, b->bo + obc,
                     b->co + obc);
    uq_ks_scan a = j->a0;
    a.x = b->xo + ox, a.B = b->bo + obc, a.C = b->co + obc, a.dt = b->dt + i * H, a.S = s->ssm[l];
    a.y = b->y + i * H * Pk;
    uq_ks_ssm_scan_seq(&a, j->ac ? 1 : s->nthreads);
}

static uq_status mamba_rows(const uq_hy_model *m, uq_hy_batch *b, uq_hy_state *const *S, int64_t n, int64_t l) {
    const uq_ks_scan a0 = uq_hy_scan_args(m, l, 1);
    uq_status st = uq_hy_mamba_in(m, l, b->xn, n, b->z, b->xi, b->bi, b->ci, b->dt, b->chan);
    if (st != UQ_OK) return st;
    const int nth = uq_k_threads(), ac = across(n, nth);
    rows_job j = {.m = m, .b = b, .S = S, .l = l, .ac = ac, .a0 = a0};
    uq_pool_run(n, ac ? nth : 1, mamba_row_task, &j);
    return uq_hy_mamba_out(m, l, b->y, b->z, n, b->tmp, b->x);
}

static void attn_row_task(void *arg, int64_t i, int worker) {
    const rows_job *j = arg;
    (void)worker;
    const uq_hy_model *m = j->m;
    const uq_hy_config *c = &m->cfg;
    uq_hy_batch *b = j->b;
    uq_hy_state *s = j->S[i];
    const int64_t l = j->l, nh = c->num_heads, nkv = c->num_kv_heads;
    const int64_t R = m->stored[l][KEEP_ATTN], r = m->keep[l][KEEP_ATTN];
    float *qi = b->q + i * nh * r, *ki = b->kb + i * nkv * R, *vi = b->vb + i * nkv * R;
    uq_hy_attn_rope_store(m, s, l, qi, ki, vi, 1, s->pos);
    uq_hy_attend(m, s, l, qi, 1, s->pos, b->att + i * nh * r, j->ac ? 1 : s->nthreads);
}

static uq_status attn_rows(const uq_hy_model *m, uq_hy_batch *b, uq_hy_state *const *S, int64_t n, int64_t l) {
    const uq_hy_config *c = &m->cfg;
    const int64_t hid = c->hidden_size, nh = c->num_heads, r = m->keep[l][KEEP_ATTN];
    uq_status st;
    if ((st = uq_hy_attn_qkv(m, l, b->xn, n, b->q, b->qa, b->qb, b->kb, b->vb)) != UQ_OK) return st;
    const int nth = uq_k_threads(), ac = across(n, nth);
    rows_job j = {.m = m, .b = b, .S = S, .l = l, .ac = ac};
    uq_pool_run(n, ac ? nth : 1, attn_row_task, &j);
    if ((st = uq_linear_forward(uq_hy_out_proj(m, l, r), b->att, n, 1, hid, nh, r, b->tmp)) != UQ_OK) return st;
    uq_k_add(b->x, b->tmp, n * hid);
    return UQ_OK;
}

/* The lm_head over n rows. A row-major int4 lm_head (a tied int4 embedding: the gather needs that layout) runs one
 * row at a time below 24 rows: there its multi-token kernels are slower than separate single-token calls (SmolLM2's
 * 49152 x 576 head, W4A8, one thread, AVX-512: 0.71 ms at T = 1, 12.4 ms at T = 2, 12.6 ms at T = 16, 16.6 ms at
 * T = 32), and each row's result is the same either way, unless an R16 copy of it was given (uq_hy_batch_set_head)
 * and activations are int8. Every other layout runs once over all rows. */
static uq_status batch_head(const uq_linear *head, const uq_linear *r16, const float *xn, int64_t n, int64_t H, int64_t V,
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

uq_status uq_hy_decode_batch(const uq_hy_model *m, uq_hy_batch *b, uq_hy_state *const *states, const int32_t *ids,
                             int64_t n, float *logits) {
    if (!m || !b || !states || !ids || !logits) return uq_set_error(UQ_ERR_ARG, "hy_decode_batch: NULL argument");
    if (b->m != m) return uq_set_error(UQ_ERR_STATE, "hy_decode_batch: the batch was built for another model");
    if (n < 1 || n > b->max_batch)
        return uq_set_error(UQ_ERR_ARG, "hy_decode_batch: %lld sequences outside [1, max_batch = %lld]",
                            (long long)n, (long long)b->max_batch);
    for (int64_t i = 0; i < n; i++) {
        const uq_hy_state *s = states[i];
        if (!s) return uq_set_error(UQ_ERR_ARG, "hy_decode_batch: state %lld is NULL", (long long)i);
        if (s->m != m)
            return uq_set_error(UQ_ERR_STATE, "hy_decode_batch: state %lld was built for another model", (long long)i);
        if (s->pos >= s->max_seq)
            return uq_set_error(UQ_ERR_RANGE, "hy_decode_batch: sequence %lld at position %lld: %s full "
                                "(max_seq %lld)", (long long)i, (long long)s->pos, m->any_attn ? "KV cache" : "state",
                                (long long)s->max_seq);
        if (ids[i] < 0 || ids[i] >= m->cfg.vocab_size)
            return uq_set_error(UQ_ERR_RANGE, "hy_decode_batch: token id %d of sequence %lld outside [0, %lld)",
                                (int)ids[i], (long long)i, (long long)m->cfg.vocab_size);
        for (int64_t j = 0; j < i; j++)
            if (states[j] == s)
                return uq_set_error(UQ_ERR_ARG, "hy_decode_batch: sequences %lld and %lld share one state",
                                    (long long)j, (long long)i);
    }
    const uq_hy_config *c = &m->cfg;
    const int64_t hid = c->hidden_size, V = c->vocab_size;
    uq_status st;
    uq_k_embed(&m->embed, ids, n, b->x);
    for (int64_t l = 0; l < c->num_layers; l++) {
        const uq_hy_layer_weights *lw = &m->layers[l];
        uq_k_rmsnorm(b->x, n, hid, lw->norm, c->norm_eps, b->xn);
        if (lw->kind == UQ_HY_MAMBA)
            st = mamba_rows(m, b, states, n, l);
        else if (lw->kind == UQ_HY_ATTN)
            st = attn_rows(m, b, states, n, l);
        else
            st = uq_hy_mlp(m, l, b->xn, n, b->g, b->u, b->tmp, b->x, NULL);
        if (st != UQ_OK) return st;
        if (m->has_ffn[l]) {
            uq_k_rmsnorm(b->x, n, hid, lw->ffn_norm, c->norm_eps, b->xn);
            if ((st = uq_hy_mlp(m, l, b->xn, n, b->g, b->u, b->tmp, b->x, NULL)) != UQ_OK) return st;
        }
    }
    const float *hin;
    if ((st = uq_hy_head_input(m, b->x, n, b->xn, b->tmp, &hin)) != UQ_OK ||
        (st = batch_head(&m->lm_head, &b->head, hin, n, hid, V, logits)) != UQ_OK)
        return st;
    for (int64_t i = 0; i < n; i++) states[i]->pos += 1;
    return UQ_OK;
}

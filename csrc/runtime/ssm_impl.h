/*
 * ssm_impl.h -- the runtime's model and state structs and its row-view helper, shared by ssm.c (one
 * sequence) and ssm_batch.c (several sequences per decode step). Internal: not part of the public API.
 */
#ifndef UQ_SSM_IMPL_H
#define UQ_SSM_IMPL_H

#include "../kernels/ssm_kernels.h"
#include "uniql.h"

enum { KEEP_MLP = 0, KEEP_ATTN = 1, KEEP_SSM_HEAD = 2, KEEP_SSM_STATE = 3 };
_Static_assert(KEEP_MLP == 0 && KEEP_ATTN == 1 && KEEP_SSM_HEAD == 2 && KEEP_SSM_STATE == 3,
               "keep order {mlp, attn, ssm_head, ssm_state} of uq_hy_get_keep / uq_hy_set_keep and the bindings");

/* A mixer's output projection (o_proj, Mamba out_proj: per-head input segments) cut to its current keep, made by
 * uq_hy_set_keep with uq_q4_r16_prefix_in when the weight is R16 int4 and the keep drops whole chunks of every head:
 * the same bytes, contiguous (buf: codes then scales; L.packed NULL: none). */
typedef struct {
    uq_linear L;
    void *buf;
    int64_t keep;
    size_t bytes;
} uq_hy_outc;

struct uq_hy_model {
    uq_hy_config cfg;
    uq_linear embed, lm_head;
    const float *final_norm;
    uq_linear final_mix;         /* (hidden, hidden) float32 F (rows 0: none): head input RMSNorm(x) F^T */
    uq_hy_layer_weights *layers; /* (L) copied descriptors; freq_map points into maps or is NULL */
    int32_t *maps;               /* concatenated copies of the freq maps */
    float *Aneg;                 /* (L, H) = -exp(A_log) of Mamba layers (rows of other layers unused) */
    int64_t (*stored)[4];        /* (L) stored sizes {K, R, Ps, Ns}, 0 when absent */
    int64_t (*keep)[4];          /* (L) current keeps */
    int64_t *Rrot;               /* (L) stored rotary rows per head */
    int64_t *has_ffn;            /* (L) 1 when the layer has an MLP sub-block after its mixer */
    int32_t options;
    int64_t Kmax, Rmax, Pmax, Nmax; /* largest stored K, R, Ps, Ns */
    int any_mamba, any_attn, any_mlp;
    float *inv_freq;             /* (rope_dim/2) */
    uq_hy_outc *outc;            /* (L) compact copies of the mixers' output projections (uq_hy_out_proj) */
};

struct uq_hy_state {
    const uq_hy_model *m;
    int64_t max_seq, max_chunk, pos, half;
    int nthreads;
    size_t bytes;
    float **conv, **ssm;         /* (L) Mamba layers: (H*Ps + 2*G*Ns, K-1) and (H, Ps, Ns); else NULL */
    void **kc, **vc;             /* (L) attention layers: (n_kv, max_seq, R) float, or float16 as uint16_t (kv16);
                                  * else NULL */
    int kv16;                    /* the KV cache holds float16 (UQ_KV_F16) */
    float *cos_tab, *sin_tab;    /* (max_seq, rope_dim/2) */
    float *x, *xn, *tmp;         /* (max_chunk, hidden) */
    float *z, *xi, *xo, *y;      /* (max_chunk, H*Pmax) */
    float *bi, *bo, *ci, *co;    /* (max_chunk, G*Nmax) */
    float *dt;                   /* (max_chunk, H) */
    float *q, *qa, *qb, *att;    /* (max_chunk, n_heads*Rmax) */
    float *kb, *vb;              /* (max_chunk, n_kv*Rmax) */
    float *g, *u;                /* (max_chunk, Kmax) */
    float *scores;               /* nthreads * ((n_heads / n_kv) * max_seq + 2 * Rmax): uq_k_attention(_f16) scratch */
    float *work;                 /* (nthreads, uq_ks_scan_work(chunk)) */
    float *cb;                   /* uq_ks_scan_shared(G, chunk): per-group C B^T of a chunk */
    int64_t *chan;               /* (max(H*Pmax, G*Nmax)) conv channel map */
};

/* Scan arguments of Mamba layer l for T tokens: sizes from the stored sizes, keeps and options (computed Pc, Nc:
 * stored, or the keeps with UQ_HY_OPT_KEPT_STATE); the caller sets x, B, C, dt, S and y. */
static inline uq_ks_scan uq_hy_scan_args(const uq_hy_model *m, int64_t l, int64_t T) {
    const uq_hy_config *c = &m->cfg;
    const int kept = (m->options & UQ_HY_OPT_KEPT_STATE) != 0;
    uq_ks_scan a = {.T = T, .H = c->ssm_heads, .G = c->ssm_groups, .chunk = c->chunk_size,
                    .Ps = m->stored[l][KEEP_SSM_HEAD], .Ns = m->stored[l][KEEP_SSM_STATE],
                    .Pk = m->keep[l][KEEP_SSM_HEAD], .Nk = m->keep[l][KEEP_SSM_STATE],
                    .A = m->Aneg + l * c->ssm_heads, .D = m->layers[l].D};
    a.Pc = kept ? a.Pk : a.Ps;
    a.Nc = kept ? a.Nk : a.Ns;
    return a;
}

/* The output projection of layer l's mixer (o_proj or out_proj) for a call at input keep `keep` per head: its compact
 * copy when one was made for that keep, else the stored weight (the same results either way). */
static inline const uq_linear *uq_hy_out_proj(const uq_hy_model *m, int64_t l, int64_t keep) {
    const uq_hy_outc *c = &m->outc[l];
    if (c->L.packed && c->keep == keep) return &c->L;
    return m->layers[l].kind == UQ_HY_ATTN ? &m->layers[l].o : &m->layers[l].out_proj;
}

/* Rows [row0, row0 + rows) of L as a descriptor of its own. For a segmented call the caller guarantees that
 * only existing rows are addressed (rows may then be nominal, see the Q pass view in attn_chunk). Row-major
 * layouts only: uq_hy_model_init rejects R16 int4 for the descriptors viewed here (in_proj, partial-RoPE q). */
static inline uq_linear view_rows(const uq_linear *L, int64_t row0, int64_t rows) {
    uq_linear v = *L;
    v.rows = rows;
    if (L->kind == UQ_W_F32) {
        v.w = L->w + row0 * L->cols;
    } else if (L->kind == UQ_W_F16) {
        v.w16 = L->w16 + row0 * L->cols;
    } else { /* int4 (two codes a byte) or int8 (one code a byte) rows */
        v.packed = L->packed + row0 * (L->kind == UQ_W_Q8 ? L->cols : UQ_Q4_ROW_BYTES(L->cols));
        v.scales = L->scales + row0 * L->scale_cols;
    }
    if (L->bias) v.bias = L->bias + row0;
    return v;
}

/* Shared by ssm.c (one sequence) and ssm_batch.c (one token of each sequence), defined in ssm.c: the Mamba
 * in-projections (+ Delta and the conv channel maps), the attention Q / K / V projections and the RoPE + KV-cache
 * writer. */
uq_status uq_hy_mamba_in(const uq_hy_model *m, int64_t l, const float *xn, int64_t T, float *z, float *xi, float *bi,
                         float *ci, float *dt, int64_t *chan);
/* conv1d + SiLU of x, B and C (T tokens of one sequence, its conv state conv) with chan from uq_hy_mamba_in. */
void uq_hy_mamba_conv(const uq_hy_model *m, int64_t l, float *conv, const float *xi, const float *bi, const float *ci,
                      int64_t T, const int64_t *chan, float *xo, float *bo, float *co);
/* The MLP of layer l over xn (T, hidden) at its keep k: g, u (T, k) scratch (g = the down_proj input, copied to
 * z_cap unless NULL), tmp (T, hidden), x += MLP. */
/* The lm_head's input for T rows of X: RMSNorm(X) * final_norm into xn, then (with a final mix) xn F^T into tmp;
 * *out points at the result. xn and tmp: (T, hidden) scratch. */
uq_status uq_hy_head_input(const uq_hy_model *m, const float *X, int64_t T, float *xn, float *tmp, const float **out);
uq_status uq_hy_mlp(const uq_hy_model *m, int64_t l, const float *xn, int64_t T, float *g, float *u, float *tmp,
                    float *x, float *z_cap);
/* Gated RMSNorm of y (T, H*Pk) by z in place, out_proj into tmp (T, hidden), x += tmp. */
uq_status uq_hy_mamba_out(const uq_hy_model *m, int64_t l, float *y, const float *z, int64_t T, float *tmp, float *x);
void uq_hy_attn_rope_store(const uq_hy_model *m, uq_hy_state *s, int64_t l, float *q, float *kb, const float *vb,
                           int64_t T, int64_t pos0);
/* Causal attention of layer l for q (T, nh, r) at positions pos0.. over s's KV cache (float32 or float16) into out
 * (T, nh, r), on at most nthreads threads: the one attention call of prefill, decode and batched decode. */
void uq_hy_attend(const uq_hy_model *m, uq_hy_state *s, int64_t l, const float *q, int64_t T, int64_t pos0,
                  float *out, int nthreads);
uq_status uq_hy_attn_qkv(const uq_hy_model *m, int64_t l, const float *xn, int64_t T, float *q, float *qa,
                         float *qb, float *kb, float *vb);

#endif /* UQ_SSM_IMPL_H */

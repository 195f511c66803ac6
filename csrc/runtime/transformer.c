/*
 * transformer.c -- forward pass of Llama/Qwen2 decoder-only transformers at per-layer keep sizes.
 *
 * Per layer (k = MLP keep, r = attention head-dim keep, R = stored/cached head dim):
 *   h  = RMSNorm(x) * w_attn
 *   q  = h Wq_sel^T + bq       (first r rows of every head)      k, v = h Wk/v^T + b (all R rows: cache width)
 *   q, k <- RoPE (pair-interleaved, pair j at frequency index freq[kv][j], angles of the original head dim d)
 *   cache[pos..] <- k, v ;  a = softmax(q k[:r]^T / sqrt(d) + causal) v[:r]   (GQA: head h reads h / (H/H_kv))
 *   x  = x + a Wo_sel^T (+ bo)  (first r columns of every head's R-wide segment)
 *   h  = RMSNorm(x) * w_mlp ;  z = silu(h Wg[:k]^T) * (h Wu[:k]^T) ;  x = x + z Wd[:, :k]^T
 * logits = RMSNorm(x) * w_final  W_lm^T.
 * RoPE inverse frequencies: theta^(-2f/d), with Llama-3 scaling exactly as transformers'
 * _compute_llama3_parameters; angle = fl32(inv_freq_f32 * pos) as transformers computes it.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../kernels/kernels.h"
#include "uniql.h"

#include "transformer_impl.h"

/* ------------------------------------------------------------------------------- model ---- */

static uq_status check_config(const uq_tf_config *c) {
    if (c->arch != UQ_ARCH_LLAMA && c->arch != UQ_ARCH_QWEN2)
        return uq_set_error(UQ_ERR_UNSUPPORTED, "unsupported architecture %d", (int)c->arch);
    const struct { const char *n; int64_t v; } pos[] = {
        {"vocab_size", c->vocab_size}, {"hidden_size", c->hidden_size}, {"intermediate_size", c->intermediate_size},
        {"num_layers", c->num_layers}, {"num_heads", c->num_heads}, {"num_kv_heads", c->num_kv_heads},
        {"head_dim", c->head_dim},
    };
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v < 1) return uq_set_error(UQ_ERR_ARG, "config %s must be >= 1, got %lld", pos[i].n, (long long)pos[i].v);
    if (c->vocab_size > INT32_MAX)
        return uq_set_error(UQ_ERR_ARG, "config vocab_size %lld exceeds int32 token ids", (long long)c->vocab_size);
    if (c->num_heads % c->num_kv_heads)
        return uq_set_error(UQ_ERR_ARG, "config num_heads %lld is not a multiple of num_kv_heads %lld",
                            (long long)c->num_heads, (long long)c->num_kv_heads);
    if (c->head_dim & 1) return uq_set_error(UQ_ERR_ARG, "config head_dim %lld must be even", (long long)c->head_dim);
    if (!(c->rms_norm_eps > 0.0)) return uq_set_error(UQ_ERR_ARG, "config rms_norm_eps must be > 0, got %g", c->rms_norm_eps);
    if (!(c->rope_theta > 0.0)) return uq_set_error(UQ_ERR_ARG, "config rope_theta must be > 0, got %g", c->rope_theta);
    if (c->rope_type == UQ_ROPE_LLAMA3) {
        if (!(c->rope_factor > 0.0) || !(c->rope_low_freq_factor > 0.0) || !(c->rope_high_freq_factor > 0.0) ||
            c->rope_high_freq_factor == c->rope_low_freq_factor || !(c->rope_original_max_pos > 0.0))
            return uq_set_error(UQ_ERR_ARG,
                                "config llama3 rope scaling needs factor, low/high freq factors (distinct) and "
                                "original_max_position_embeddings > 0, got %g, %g, %g, %g",
                                c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor,
                                c->rope_original_max_pos);
    } else if (c->rope_type != UQ_ROPE_DEFAULT) {
        return uq_set_error(UQ_ERR_UNSUPPORTED, "unsupported rope type %d", (int)c->rope_type);
    }
    return UQ_OK;
}

/* inv_freq[f] as transformers computes it (default or llama3), rounded to float32. */
static void compute_inv_freq(const uq_tf_config *c, float *inv) {
    const int64_t d = c->head_dim;
    for (int64_t f = 0; f < d / 2; f++) {
        double x = 1.0 / pow(c->rope_theta, (double)(2 * f) / (double)d);
        if (c->rope_type == UQ_ROPE_LLAMA3) {
            const double pi = 3.14159265358979323846;
            double old = c->rope_original_max_pos, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
            double low_wl = old / lo, high_wl = old / hi, wl = 2.0 * pi / x;
            if (wl > low_wl) {
                x = x / c->rope_factor;
            } else if (!(wl < high_wl)) {
                double sm = (old / wl - lo) / (hi - lo);
                x = (1.0 - sm) * x / c->rope_factor + sm * x;
            }
        }
        inv[f] = (float)x;
    }
}

void uq_tf_model_free(uq_tf_model *m) {
    if (!m) return;
    uq_free(m->layers);
    uq_free(m->maps);
    uq_free(m->K);
    uq_free(m->R);
    uq_free(m->k_keep);
    uq_free(m->r_keep);
    uq_free(m->inv_freq);
    uq_free(m);
}

uq_status uq_tf_model_init(const uq_tf_config *cfg, const uq_tf_weights *w, uq_tf_model **out) {
    if (!cfg || !w || !out) return uq_set_error(UQ_ERR_ARG, "tf_model_init: NULL argument");
    *out = NULL;
    uq_status st = check_config(cfg);
    if (st != UQ_OK) return st;
    if ((st = uq_kernels_init()) != UQ_OK) return st; /* a bad UNIQL_KERNELS etc. fails here, clearly */
    const int64_t L = cfg->num_layers, H = cfg->hidden_size, nh = cfg->num_heads, nkv = cfg->num_kv_heads;
    const int64_t d = cfg->head_dim, V = cfg->vocab_size;
    if (!w->layers || !w->final_norm) return uq_set_error(UQ_ERR_ARG, "tf_model_init: layers or final_norm is NULL");
    if ((st = uq_linear_check(&w->embed, "embed_tokens", -1, V, H, 1)) != UQ_OK) return st;
    if (w->embed.bias) return uq_set_error(UQ_ERR_ARG, "embed_tokens: an embedding has no bias");
    if (w->embed.kind == UQ_W_Q4 && w->embed.layout != UQ_Q4_ROWMAJOR)
        return uq_set_error(UQ_ERR_ARG, "embed_tokens: the embedding gather needs the row-major int4 layout");
    if ((st = uq_linear_check(&w->lm_head, "lm_head", -1, V, H, 1)) != UQ_OK) return st;
    int64_t nmap = 0;
    for (int64_t l = 0; l < L; l++) {
        const uq_tf_layer_weights *lw = &w->layers[l];
        if (!lw->attn_norm || !lw->mlp_norm)
            return uq_set_error(UQ_ERR_ARG, "layer %lld: norm weight is NULL", (long long)l);
        int64_t qr = lw->q.rows;
        if (qr < 1 || qr % nh || (qr / nh) & 1 || qr / nh > d)
            return uq_set_error(UQ_ERR_SHAPE,
                                "layer %lld q_proj: %lld rows is not num_heads %lld x an even head dim <= %lld",
                                (long long)l, (long long)qr, (long long)nh, (long long)d);
        int64_t R = qr / nh, K = lw->gate.rows;
        if (K < 1 || K > cfg->intermediate_size)
            return uq_set_error(UQ_ERR_SHAPE, "layer %lld gate_proj: %lld rows outside [1, intermediate_size %lld]",
                                (long long)l, (long long)K, (long long)cfg->intermediate_size);
        if ((st = uq_linear_check(&lw->q, "q_proj", l, nh * R, H, 1)) != UQ_OK) return st;
        if ((st = uq_linear_check(&lw->k, "k_proj", l, nkv * R, H, 1)) != UQ_OK) return st;
        if ((st = uq_linear_check(&lw->v, "v_proj", l, nkv * R, H, 1)) != UQ_OK) return st;
        if ((st = uq_linear_check(&lw->o, "o_proj", l, H, nh * R, nh)) != UQ_OK) return st;
        if ((st = uq_linear_check(&lw->gate, "gate_proj", l, K, H, 1)) != UQ_OK) return st;
        if ((st = uq_linear_check(&lw->up, "up_proj", l, K, H, 1)) != UQ_OK) return st;
        if ((st = uq_linear_check(&lw->down, "down_proj", l, H, K, 1)) != UQ_OK) return st;
        if (lw->freq_map) {
            for (int64_t i = 0; i < nkv * (R / 2); i++)
                if (lw->freq_map[i] < 0 || lw->freq_map[i] >= d / 2)
                    return uq_set_error(UQ_ERR_RANGE, "layer %lld freq_map[%lld][%lld] = %d outside [0, %lld)",
                                        (long long)l, (long long)(i / (R / 2)), (long long)(i % (R / 2)),
                                        (int)lw->freq_map[i], (long long)(d / 2));
            nmap += nkv * (R / 2);
        }
    }
    uq_tf_model *m;
    if ((st = uq_calloc(sizeof *m, (void **)&m)) != UQ_OK) return st;
    size_t lb = (size_t)L * sizeof(int64_t);
    if ((st = uq_calloc((size_t)L * sizeof(uq_tf_layer_weights), (void **)&m->layers)) != UQ_OK ||
        (st = uq_alloc((size_t)nmap * sizeof(int32_t), (void **)&m->maps)) != UQ_OK ||
        (st = uq_alloc(lb, (void **)&m->K)) != UQ_OK || (st = uq_alloc(lb, (void **)&m->R)) != UQ_OK ||
        (st = uq_alloc(lb, (void **)&m->k_keep)) != UQ_OK || (st = uq_alloc(lb, (void **)&m->r_keep)) != UQ_OK ||
        (st = uq_alloc((size_t)(d / 2) * sizeof(float), (void **)&m->inv_freq)) != UQ_OK) {
        uq_tf_model_free(m);
        return st;
    }
    m->cfg = *cfg;
    m->embed = w->embed;
    m->lm_head = w->lm_head;
    m->final_norm = w->final_norm;
    int64_t moff = 0;
    for (int64_t l = 0; l < L; l++) {
        m->layers[l] = w->layers[l];
        m->R[l] = m->r_keep[l] = w->layers[l].q.rows / nh;
        m->K[l] = m->k_keep[l] = w->layers[l].gate.rows;
        if (m->R[l] > m->Rmax) m->Rmax = m->R[l];
        if (m->K[l] > m->Kmax) m->Kmax = m->K[l];
        if (w->layers[l].freq_map) {
            int64_t n = nkv * (m->R[l] / 2);
            memcpy(m->maps + moff, w->layers[l].freq_map, (size_t)n * sizeof(int32_t));
            m->layers[l].freq_map = m->maps + moff;
            moff += n;
        }
    }
    compute_inv_freq(cfg, m->inv_freq);
    *out = m;
    return UQ_OK;
}

uq_status uq_tf_set_keep(uq_tf_model *m, int64_t layer, int64_t mlp_keep, int64_t attn_keep) {
    if (!m) return uq_set_error(UQ_ERR_ARG, "set_keep: NULL model");
    if (layer < 0 || layer >= m->cfg.num_layers)
        return uq_set_error(UQ_ERR_RANGE, "set_keep: layer %lld outside [0, %lld)", (long long)layer,
                            (long long)m->cfg.num_layers);
    if (mlp_keep >= 0 && (mlp_keep < 1 || mlp_keep > m->K[layer]))
        return uq_set_error(UQ_ERR_RANGE, "set_keep: layer %lld MLP keep %lld outside [1, %lld]", (long long)layer,
                            (long long)mlp_keep, (long long)m->K[layer]);
    if (attn_keep >= 0 && (attn_keep < 2 || attn_keep > m->R[layer] || (attn_keep & 1)))
        return uq_set_error(UQ_ERR_RANGE, "set_keep: layer %lld attention keep %lld must be even and in [2, %lld]",
                            (long long)layer, (long long)attn_keep, (long long)m->R[layer]);
    if (mlp_keep >= 0) m->k_keep[layer] = mlp_keep;
    if (attn_keep >= 0) m->r_keep[layer] = attn_keep;
    return UQ_OK;
}

uq_status uq_tf_get_keep(const uq_tf_model *m, int64_t layer, int64_t *mlp_keep, int64_t *attn_keep,
                         int64_t *mlp_stored, int64_t *attn_stored) {
    if (!m) return uq_set_error(UQ_ERR_ARG, "get_keep: NULL model");
    if (layer < 0 || layer >= m->cfg.num_layers)
        return uq_set_error(UQ_ERR_RANGE, "get_keep: layer %lld outside [0, %lld)", (long long)layer,
                            (long long)m->cfg.num_layers);
    if (mlp_keep) *mlp_keep = m->k_keep[layer];
    if (attn_keep) *attn_keep = m->r_keep[layer];
    if (mlp_stored) *mlp_stored = m->K[layer];
    if (attn_stored) *attn_stored = m->R[layer];
    return UQ_OK;
}

/* ------------------------------------------------------------------------------- state ---- */

void uq_tf_state_free(uq_tf_state *s) {
    if (!s) return;
    uq_free(s->cache);
    uq_free(s->kc);
    uq_free(s->vc);
    uq_free(s->cos_tab);
    uq_free(s->sin_tab);
    uq_free(s->x);
    uq_free(s->xn);
    uq_free(s->tmp);
    uq_free(s->q);
    uq_free(s->att);
    uq_free(s->kb);
    uq_free(s->vb);
    uq_free(s->g);
    uq_free(s->u);
    uq_free(s->scores);
    uq_free(s);
}

/* *p = float buffer of a * b elements; adds its size to *total. */
static uq_status state_buf(float **p, int64_t a, int64_t b, size_t *total) {
    size_t n;
    uq_status st = uq_size_mul(a, b, sizeof(float), &n);
    if (st != UQ_OK) return st;
    *total += n;
    return uq_alloc(n, (void **)p);
}

uq_status uq_tf_state_init(const uq_tf_model *m, int64_t max_seq, int64_t max_chunk, uq_tf_state **out) {
    if (!m || !out) return uq_set_error(UQ_ERR_ARG, "tf_state_init: NULL argument");
    *out = NULL;
    if (max_seq < 1 || max_chunk < 1)
        return uq_set_error(UQ_ERR_ARG, "tf_state_init: max_seq and max_chunk must be >= 1, got %lld and %lld",
                            (long long)max_seq, (long long)max_chunk);
    if (max_chunk > max_seq) max_chunk = max_seq;
    const uq_tf_config *c = &m->cfg;
    const int64_t L = c->num_layers, H = c->hidden_size, nh = c->num_heads, nkv = c->num_kv_heads;
    uq_tf_state *s;
    uq_status st = uq_calloc(sizeof *s, (void **)&s);
    if (st != UQ_OK) return st;
    s->m = m;
    s->max_seq = max_seq;
    s->max_chunk = max_chunk;
    s->half = c->head_dim / 2;
    s->nthreads = uq_k_threads();
    int64_t cache_elems = 0;
    for (int64_t l = 0; l < L; l++) {
        int64_t per = nkv * m->R[l];
        if (per > INT64_MAX / 2 / max_seq || cache_elems > INT64_MAX / 4 - 2 * per * max_seq) {
            uq_tf_state_free(s);
            return uq_set_error(UQ_ERR_RANGE, "tf_state_init: KV cache size overflows (max_seq %lld)",
                                (long long)max_seq);
        }
        cache_elems += 2 * per * max_seq;
    }
    size_t tot = 0;
    if ((st = state_buf(&s->cache, cache_elems, 1, &tot)) != UQ_OK ||
        (st = uq_alloc((size_t)L * sizeof(float *), (void **)&s->kc)) != UQ_OK ||
        (st = uq_alloc((size_t)L * sizeof(float *), (void **)&s->vc)) != UQ_OK ||
        (st = state_buf(&s->cos_tab, max_seq, s->half, &tot)) != UQ_OK ||
        (st = state_buf(&s->sin_tab, max_seq, s->half, &tot)) != UQ_OK ||
        (st = state_buf(&s->x, max_chunk, H, &tot)) != UQ_OK || (st = state_buf(&s->xn, max_chunk, H, &tot)) != UQ_OK ||
        (st = state_buf(&s->tmp, max_chunk, H, &tot)) != UQ_OK ||
        (st = state_buf(&s->q, max_chunk, nh * m->Rmax, &tot)) != UQ_OK ||
        (st = state_buf(&s->att, max_chunk, nh * m->Rmax, &tot)) != UQ_OK ||
        (st = state_buf(&s->kb, max_chunk, nkv * m->Rmax, &tot)) != UQ_OK ||
        (st = state_buf(&s->vb, max_chunk, nkv * m->Rmax, &tot)) != UQ_OK ||
        (st = state_buf(&s->g, max_chunk, m->Kmax, &tot)) != UQ_OK ||
        (st = state_buf(&s->u, max_chunk, m->Kmax, &tot)) != UQ_OK ||
        (st = state_buf(&s->scores, s->nthreads * (nh / nkv), max_seq, &tot)) != UQ_OK) {
        uq_tf_state_free(s);
        return st;
    }
    s->bytes = tot + sizeof *s + 2 * (size_t)L * sizeof(float *);
    int64_t off = 0;
    for (int64_t l = 0; l < L; l++) {
        int64_t per = nkv * m->R[l] * max_seq;
        s->kc[l] = s->cache + off;
        s->vc[l] = s->cache + off + per;
        off += 2 * per;
    }
    for (int64_t p = 0; p < max_seq; p++)
        for (int64_t f = 0; f < s->half; f++) {
            float a = m->inv_freq[f] * (float)p; /* float32 product, as transformers */
            s->cos_tab[p * s->half + f] = (float)cos((double)a);
            s->sin_tab[p * s->half + f] = (float)sin((double)a);
        }
    *out = s;
    return UQ_OK;
}

uq_status uq_tf_state_reset(uq_tf_state *s) {
    if (!s) return uq_set_error(UQ_ERR_ARG, "tf_state_reset: NULL state");
    s->pos = 0;
    return UQ_OK;
}

uq_status uq_tf_state_truncate(uq_tf_state *s, int64_t pos) {
    if (!s) return uq_set_error(UQ_ERR_ARG, "tf_state_truncate: NULL state");
    if (pos < 0 || pos > s->pos)
        return uq_set_error(UQ_ERR_RANGE, "tf_state_truncate: position %lld outside [0, %lld]", (long long)pos,
                            (long long)s->pos);
    s->pos = pos; /* K/V rows >= pos are never read before forward overwrites them (causal attention) */
    return UQ_OK;
}

int64_t uq_tf_state_pos(const uq_tf_state *s) { return s ? s->pos : 0; }

size_t uq_tf_state_bytes(const uq_tf_state *s) { return s ? s->bytes : 0; }

/* ----------------------------------------------------------------------------- forward ---- */

static void copy_rows(float *dst, const float *src, int64_t T, int64_t n) {
    memcpy(dst, src, (size_t)(T * n) * sizeof(float));
}

/* One layer over x (Tc, hidden) in place at positions pos0.., writing K/V into the cache. Captures (may be
 * NULL) are written at row offset row0. */
static uq_status layer_chunk(const uq_tf_model *m, uq_tf_state *s, int64_t l, float *x, int64_t Tc, int64_t pos0,
                             const uq_tf_capture *cap, int64_t row0) {
    const uq_tf_config *c = &m->cfg;
    const uq_tf_layer_weights *lw = &m->layers[l];
    const int64_t H = c->hidden_size, nh = c->num_heads, nkv = c->num_kv_heads;
    const int64_t R = m->R[l], r = m->r_keep[l], k = m->k_keep[l];
    uq_status st;
    uq_k_rmsnorm(x, Tc, H, lw->attn_norm, c->rms_norm_eps, s->xn);
    if (cap && cap->attn_in) copy_rows(cap->attn_in + row0 * H, s->xn, Tc, H);
    if ((st = uq_linear_forward(&lw->q, s->xn, Tc, nh, r, 1, H, s->q)) != UQ_OK) return st;
    if ((st = uq_linear_forward(&lw->k, s->xn, Tc, nkv, R, 1, H, s->kb)) != UQ_OK) return st;
    if ((st = uq_linear_forward(&lw->v, s->xn, Tc, nkv, R, 1, H, s->vb)) != UQ_OK) return st;
    uq_k_rope(s->q, Tc, nh, nh / nkv, r, r, lw->freq_map, R / 2, s->cos_tab, s->sin_tab, s->half, pos0);
    uq_k_rope(s->kb, Tc, nkv, 1, R, R, lw->freq_map, R / 2, s->cos_tab, s->sin_tab, s->half, pos0);
    if (cap && cap->q) copy_rows(cap->q + row0 * nh * r, s->q, Tc, nh * r);
    if (cap && cap->k)
        for (int64_t t = 0; t < Tc; t++)
            for (int64_t g = 0; g < nkv; g++)
                memcpy(cap->k + ((row0 + t) * nkv + g) * r, s->kb + (t * nkv + g) * R, (size_t)r * sizeof(float));
    float *kc = s->kc[l], *vc = s->vc[l];
    for (int64_t t = 0; t < Tc; t++)
        for (int64_t g = 0; g < nkv; g++) {
            size_t off = (size_t)((g * s->max_seq + pos0 + t) * R);
            memcpy(kc + off, s->kb + (t * nkv + g) * R, (size_t)R * sizeof(float));
            memcpy(vc + off, s->vb + (t * nkv + g) * R, (size_t)R * sizeof(float));
        }
    uq_k_attention(s->q, Tc, nh, nkv, r, r, r, kc, vc, s->max_seq, R, pos0, (float)(1.0 / sqrt((double)c->head_dim)),
                   s->att, s->scores, s->nthreads);
    if (cap && cap->attn_out) copy_rows(cap->attn_out + row0 * nh * r, s->att, Tc, nh * r);
    if ((st = uq_linear_forward(&lw->o, s->att, Tc, 1, H, nh, r, s->tmp)) != UQ_OK) return st;
    uq_k_add(x, s->tmp, Tc * H);
    uq_k_rmsnorm(x, Tc, H, lw->mlp_norm, c->rms_norm_eps, s->xn);
    if (cap && cap->mlp_in) copy_rows(cap->mlp_in + row0 * H, s->xn, Tc, H);
    if ((st = uq_linear_forward(&lw->gate, s->xn, Tc, 1, k, 1, H, s->g)) != UQ_OK) return st;
    if ((st = uq_linear_forward(&lw->up, s->xn, Tc, 1, k, 1, H, s->u)) != UQ_OK) return st;
    uq_k_silu_mul(s->g, s->u, Tc * k);
    if (cap && cap->mlp_z) copy_rows(cap->mlp_z + row0 * k, s->g, Tc, k);
    if ((st = uq_linear_forward(&lw->down, s->g, Tc, 1, H, 1, k, s->tmp)) != UQ_OK) return st;
    uq_k_add(x, s->tmp, Tc * H);
    return UQ_OK;
}

static uq_status check_state(const uq_tf_model *m, const uq_tf_state *s, const char *fn) {
    if (!m || !s) return uq_set_error(UQ_ERR_ARG, "%s: NULL model or state", fn);
    if (s->m != m) return uq_set_error(UQ_ERR_STATE, "%s: the state was built for another model", fn);
    return UQ_OK;
}

static uq_status check_ids(const uq_tf_model *m, const int32_t *ids, int64_t T, const char *fn) {
    if (!ids) return uq_set_error(UQ_ERR_ARG, "%s: ids is NULL", fn);
    if (T < 1) return uq_set_error(UQ_ERR_ARG, "%s: T must be >= 1 (no tokens), got %lld", fn, (long long)T);
    for (int64_t t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= m->cfg.vocab_size)
            return uq_set_error(UQ_ERR_RANGE, "%s: token id %d at index %lld outside [0, %lld)", fn, (int)ids[t],
                                (long long)t, (long long)m->cfg.vocab_size);
    return UQ_OK;
}

uq_status uq_tf_forward(const uq_tf_model *m, uq_tf_state *s, const int32_t *ids, int64_t T, int64_t n_logits,
                        float *logits) {
    uq_status st = check_state(m, s, "tf_forward");
    if (st != UQ_OK) return st;
    if (!logits) return uq_set_error(UQ_ERR_ARG, "tf_forward: logits is NULL");
    if ((st = check_ids(m, ids, T, "tf_forward")) != UQ_OK) return st;
    if (n_logits < 1 || n_logits > T)
        return uq_set_error(UQ_ERR_ARG, "tf_forward: n_logits %lld outside [1, T = %lld]", (long long)n_logits,
                            (long long)T);
    if (T > s->max_seq - s->pos)
        return uq_set_error(UQ_ERR_RANGE, "tf_forward: positions %lld..%lld beyond max_seq %lld (KV cache full)",
                            (long long)s->pos, (long long)(s->pos + T - 1), (long long)s->max_seq);
    const int64_t H = m->cfg.hidden_size, V = m->cfg.vocab_size, first = T - n_logits;
    for (int64_t c0 = 0; c0 < T; c0 += s->max_chunk) {
        int64_t Tc = T - c0 < s->max_chunk ? T - c0 : s->max_chunk;
        uq_k_embed(&m->embed, ids + c0, Tc, s->x);
        for (int64_t l = 0; l < m->cfg.num_layers; l++)
            if ((st = layer_chunk(m, s, l, s->x, Tc, s->pos + c0, NULL, 0)) != UQ_OK) return st;
        int64_t a = first > c0 ? first : c0; /* first row of this chunk that needs logits */
        if (a < c0 + Tc) {
            int64_t nr = c0 + Tc - a;
            uq_k_rmsnorm(s->x + (a - c0) * H, nr, H, m->final_norm, m->cfg.rms_norm_eps, s->xn);
            if ((st = uq_linear_forward(&m->lm_head, s->xn, nr, 1, V, 1, H, logits + (a - first) * V)) != UQ_OK)
                return st;
        }
    }
    s->pos += T;
    return UQ_OK;
}

uq_status uq_tf_embed(const uq_tf_model *m, const int32_t *ids, int64_t T, float *X) {
    if (!m || !X) return uq_set_error(UQ_ERR_ARG, "tf_embed: NULL argument");
    uq_status st = check_ids(m, ids, T, "tf_embed");
    if (st != UQ_OK) return st;
    uq_k_embed(&m->embed, ids, T, X);
    return UQ_OK;
}

uq_status uq_tf_layer_forward(const uq_tf_model *m, uq_tf_state *s, int64_t layer, const float *X, int64_t T,
                              float *Y, const uq_tf_capture *cap) {
    uq_status st = check_state(m, s, "tf_layer_forward");
    if (st != UQ_OK) return st;
    if (!X || !Y) return uq_set_error(UQ_ERR_ARG, "tf_layer_forward: X or Y is NULL");
    if (layer < 0 || layer >= m->cfg.num_layers)
        return uq_set_error(UQ_ERR_RANGE, "tf_layer_forward: layer %lld outside [0, %lld)", (long long)layer,
                            (long long)m->cfg.num_layers);
    if (T < 1) return uq_set_error(UQ_ERR_ARG, "tf_layer_forward: T must be >= 1, got %lld", (long long)T);
    if (T > s->max_seq)
        return uq_set_error(UQ_ERR_RANGE, "tf_layer_forward: T %lld beyond max_seq %lld", (long long)T,
                            (long long)s->max_seq);
    const int64_t H = m->cfg.hidden_size;
    if (Y != X) memmove(Y, X, (size_t)(T * H) * sizeof(float));
    s->pos = 0;
    for (int64_t c0 = 0; c0 < T; c0 += s->max_chunk) {
        int64_t Tc = T - c0 < s->max_chunk ? T - c0 : s->max_chunk;
        if ((st = layer_chunk(m, s, layer, Y + c0 * H, Tc, c0, cap, c0)) != UQ_OK) return st;
    }
    return UQ_OK;
}

uq_status uq_tf_head(const uq_tf_model *m, uq_tf_state *s, const float *X, int64_t T, float *logits) {
    uq_status st = check_state(m, s, "tf_head");
    if (st != UQ_OK) return st;
    if (!X || !logits) return uq_set_error(UQ_ERR_ARG, "tf_head: X or logits is NULL");
    if (T < 1) return uq_set_error(UQ_ERR_ARG, "tf_head: T must be >= 1, got %lld", (long long)T);
    const int64_t H = m->cfg.hidden_size, V = m->cfg.vocab_size;
    for (int64_t c0 = 0; c0 < T; c0 += s->max_chunk) {
        int64_t Tc = T - c0 < s->max_chunk ? T - c0 : s->max_chunk;
        uq_k_rmsnorm(X + c0 * H, Tc, H, m->final_norm, m->cfg.rms_norm_eps, s->xn);
        if ((st = uq_linear_forward(&m->lm_head, s->xn, Tc, 1, V, 1, H, logits + c0 * V)) != UQ_OK) return st;
    }
    return UQ_OK;
}

uq_status uq_tf_get_config(const uq_tf_model *m, uq_tf_config *out) {
    if (!m || !out) return uq_set_error(UQ_ERR_ARG, "get_config: NULL argument");
    *out = m->cfg;
    return UQ_OK;
}

/* ------------------------------------------------------------------- rate-following memory ---- */

uq_status uq_tf_state_transfer(const uq_tf_state *src, uq_tf_state *dst) {
    if (!src || !dst) return uq_set_error(UQ_ERR_ARG, "tf_state_transfer: NULL state");
    const uq_tf_model *ms = src->m, *md = dst->m;
    const int64_t L = ms->cfg.num_layers, nkv = ms->cfg.num_kv_heads;
    if (md->cfg.num_layers != L || md->cfg.num_kv_heads != nkv)
        return uq_set_error(UQ_ERR_SHAPE, "tf_state_transfer: models differ (%lld vs %lld layers, %lld vs %lld KV heads)",
                            (long long)L, (long long)md->cfg.num_layers, (long long)nkv,
                            (long long)md->cfg.num_kv_heads);
    if (src->pos > dst->max_seq)
        return uq_set_error(UQ_ERR_RANGE, "tf_state_transfer: %lld cached tokens exceed the new state's max_seq %lld",
                            (long long)src->pos, (long long)dst->max_seq);
    for (int64_t l = 0; l < L; l++) {
        const int64_t Rs = ms->R[l], Rd = md->R[l], n = Rs < Rd ? Rs : Rd;
        for (int64_t h = 0; h < nkv; h++)
            for (int64_t t = 0; t < src->pos; t++) {
                const float *ks = src->kc[l] + (h * src->max_seq + t) * Rs, *vs = src->vc[l] + (h * src->max_seq + t) * Rs;
                float *kd = dst->kc[l] + (h * dst->max_seq + t) * Rd, *vd = dst->vc[l] + (h * dst->max_seq + t) * Rd;
                memcpy(kd, ks, (size_t)n * sizeof(float));
                memcpy(vd, vs, (size_t)n * sizeof(float));
                if (Rd > n) {
                    memset(kd + n, 0, (size_t)(Rd - n) * sizeof(float));
                    memset(vd + n, 0, (size_t)(Rd - n) * sizeof(float));
                }
            }
    }
    dst->pos = src->pos;
    return UQ_OK;
}

/*
 * ssm.c -- the runtime: the forward pass of every architecture (Llama, Qwen2: attention + MLP stacks; Mamba2,
 * Nemotron-H, Bamba: Mamba2 / attention / MLP stacks) at per-layer keep sizes (semantics and elastic layout: "the
 * runtime: every layer kind" in uniql.h).
 *
 * Per layer:  x = x + mixer(RMSNorm(x) * norm)  [;  x = x + MLP(RMSNorm(x) * ffn_norm) ]
 *   Mamba2:    [z | x | B | C | dt] = h W_in^T ; x, B, C = silu(conv1d) ; Delta = clamp(softplus(dt + dt_bias)) ;
 *              selective scan (chunked SSD for prefill, recurrence for decode) ; y = gnorm(y * silu(z)) W_out^T
 *   attention: q, k, v = h W^T ; RoPE on the rotary rows (pair-interleaved, freq index map) ; causal GQA
 *              softmax(q k^T / sqrt(d)) v over the KV cache ; o_proj
 *   MLP:       silu(h Wg^T) * (h Wu^T) Wd^T  or  relu(h Wu^T)^2 Wd^T
 * logits = RMSNorm(x) * w_final  W_lm^T.
 * Sub-matrices of a fused weight (the z/x/B/C/dt rows of in_proj, the pass rows of Q heads) are addressed as
 * row-offset views of the same descriptor and computed with the segmented uq_linear_forward (no copies).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../kernels/kernels.h"
#include "../kernels/ssm_kernels.h"
#include "uniql.h"

#include "ssm_impl.h"

/* ------------------------------------------------------------------------------- model ---- */

#define POS(name, v)                                                                                             \
    do {                                                                                                         \
        if ((v) < 1) return uq_set_error(UQ_ERR_ARG, "config %s must be >= 1, got %lld", name, (long long)(v)); \
    } while (0)

static uq_status check_config(const uq_hy_config *c, const uq_hy_weights *w) {
    POS("vocab_size", c->vocab_size);
    POS("hidden_size", c->hidden_size);
    POS("num_layers", c->num_layers);
    if (c->vocab_size > INT32_MAX)
        return uq_set_error(UQ_ERR_ARG, "config vocab_size %lld exceeds int32 token ids", (long long)c->vocab_size);
    if (!(c->norm_eps > 0.0)) return uq_set_error(UQ_ERR_ARG, "config norm_eps must be > 0, got %g", c->norm_eps);
    int mamba = 0, attn = 0, mlp = 0;
    for (int64_t l = 0; l < c->num_layers; l++) {
        int32_t k = w->layers[l].kind;
        if (k == UQ_HY_MAMBA) mamba = 1;
        else if (k == UQ_HY_ATTN) attn = 1;
        else if (k == UQ_HY_MLP) mlp = 1;
        else return uq_set_error(UQ_ERR_ARG, "layer %lld: unknown layer kind %d", (long long)l, (int)k);
        if (k == UQ_HY_MLP || w->layers[l].ffn_norm) mlp = 1;
    }
    if (mamba) {
        POS("ssm_heads", c->ssm_heads);
        POS("ssm_head_dim", c->ssm_head_dim);
        POS("ssm_groups", c->ssm_groups);
        POS("ssm_state", c->ssm_state);
        POS("chunk_size", c->chunk_size);
        if (c->ssm_heads % c->ssm_groups)
            return uq_set_error(UQ_ERR_SHAPE, "config ssm_heads %lld is not a multiple of ssm_groups %lld",
                                (long long)c->ssm_heads, (long long)c->ssm_groups);
        if (c->conv_kernel < 1 || c->conv_kernel > UQ_HY_MAX_CONV)
            return uq_set_error(UQ_ERR_ARG, "config conv_kernel %lld outside [1, %d]", (long long)c->conv_kernel,
                                UQ_HY_MAX_CONV);
        if (isnan(c->dt_min) || isnan(c->dt_max) || c->dt_min > c->dt_max)
            return uq_set_error(UQ_ERR_ARG, "config time step limit [%g, %g] is not an interval", c->dt_min, c->dt_max);
    }
    if (attn) {
        POS("num_heads", c->num_heads);
        POS("num_kv_heads", c->num_kv_heads);
        POS("head_dim", c->head_dim);
        if (c->num_heads % c->num_kv_heads)
            return uq_set_error(UQ_ERR_SHAPE, "config num_heads %lld is not a multiple of num_kv_heads %lld",
                                (long long)c->num_heads, (long long)c->num_kv_heads);
        if (c->rope_dim < 0 || c->rope_dim > c->head_dim || (c->rope_dim & 1))
            return uq_set_error(UQ_ERR_ARG, "config rope_dim %lld must be even and in [0, head_dim %lld]",
                                (long long)c->rope_dim, (long long)c->head_dim);
        if (c->rope_dim > 0 && !(c->rope_theta > 0.0))
            return uq_set_error(UQ_ERR_ARG, "config rope_theta must be > 0, got %g", c->rope_theta);
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
    }
    if (mlp) {
        POS("intermediate_size", c->intermediate_size);
        if (c->mlp_act != UQ_HY_ACT_SILU_GATED && c->mlp_act != UQ_HY_ACT_RELU2)
            return uq_set_error(UQ_ERR_ARG, "config mlp_act %d unknown", (int)c->mlp_act);
    }
    return UQ_OK;
}

/* inv_freq[f] = theta^(-2f/rope_dim) as transformers computes it (default, or llama3 scaling exactly as its
 * _compute_llama3_parameters), rounded to float32. */
static void compute_inv_freq(const uq_hy_config *c, float *inv) {
    const int64_t d = c->rope_dim;
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

static uq_status check_mamba(const uq_hy_config *c, const uq_hy_layer_weights *lw, int64_t l, int64_t *Ps,
                             int64_t *Ns) {
    const int64_t H = c->ssm_heads, G = c->ssm_groups, hid = c->hidden_size;
    if (!lw->conv_w || !lw->dt_bias || !lw->A_log || !lw->D || !lw->gnorm)
        return uq_set_error(UQ_ERR_ARG, "layer %lld: Mamba conv1d weight, dt_bias, A_log, D or norm weight is NULL",
                            (long long)l);
    int64_t oc = lw->out_proj.cols;
    if (oc < H || oc % H || oc / H > c->ssm_head_dim)
        return uq_set_error(UQ_ERR_SHAPE,
                            "layer %lld out_proj: %lld columns is not ssm_heads %lld x a head dim in [1, %lld]",
                            (long long)l, (long long)oc, (long long)H, (long long)c->ssm_head_dim);
    *Ps = oc / H;
    uq_status st;
    if (lw->in_part[0].rows > 0) { /* z, x, B, C, dt as five descriptors (any layout built for these segments) */
        int64_t br = lw->in_part[2].rows;
        if (br < G || br % G || br / G > c->ssm_state)
            return uq_set_error(UQ_ERR_SHAPE, "layer %lld in_proj B part: %lld rows is not ssm_groups %lld x N in "
                                "[1, %lld]", (long long)l, (long long)br, (long long)G, (long long)c->ssm_state);
        *Ns = br / G;
        static const char *nm[5] = {"in_proj z part", "in_proj x part", "in_proj B part", "in_proj C part",
                                    "in_proj dt part"};
        const int64_t rows[5] = {H * *Ps, H * *Ps, G * *Ns, G * *Ns, H};
        for (int i = 0; i < 5; i++)
            if ((st = uq_linear_check(&lw->in_part[i], nm[i], l, rows[i], hid, 1)) != UQ_OK) return st;
        return uq_linear_check(&lw->out_proj, "out_proj", l, hid, H * *Ps, H);
    }
    int64_t rem = lw->in_proj.rows - 2 * H * *Ps - H;
    if (rem < 2 * G || rem % (2 * G) || rem / (2 * G) > c->ssm_state)
        return uq_set_error(UQ_ERR_SHAPE,
                            "layer %lld in_proj: %lld rows is not 2*H*P + 2*G*N + H = [z, x, B, C, dt] with H %lld, "
                            "P %lld, G %lld and N in [1, %lld]",
                            (long long)l, (long long)lw->in_proj.rows, (long long)H, (long long)*Ps, (long long)G,
                            (long long)c->ssm_state);
    *Ns = rem / (2 * G);
    if (lw->in_proj.kind == UQ_W_Q4 && lw->in_proj.layout != UQ_Q4_ROWMAJOR)
        return uq_set_error(UQ_ERR_UNSUPPORTED, "layer %lld in_proj: int4 layout %d is not supported for the fused "
                            "weight, whose z/x/B/C/dt rows are read as row views (give R16 weights as in_part)",
                            (long long)l, (int)lw->in_proj.layout);
    if ((st = uq_linear_check(&lw->in_proj, "in_proj", l, lw->in_proj.rows, hid, 1)) != UQ_OK) return st;
    if ((st = uq_linear_check(&lw->out_proj, "out_proj", l, hid, H * *Ps, H)) != UQ_OK) return st;
    return UQ_OK;
}

static uq_status check_attn(const uq_hy_config *c, const uq_hy_layer_weights *lw, int64_t l, int64_t *R,
                            int64_t *Rrot) {
    const int64_t nh = c->num_heads, nkv = c->num_kv_heads, d = c->head_dim, hid = c->hidden_size;
    int64_t qr = lw->q.rows;
    if (qr < nh || qr % nh || qr / nh > d)
        return uq_set_error(UQ_ERR_SHAPE, "layer %lld q_proj: %lld rows is not num_heads %lld x a head dim in [1, %lld]",
                            (long long)l, (long long)qr, (long long)nh, (long long)d);
    *R = qr / nh;
    if (c->rope_dim == 0) {
        if (lw->rot_rows != 0)
            return uq_set_error(UQ_ERR_SHAPE, "layer %lld: rot_rows %lld given but the model has no RoPE", (long long)l,
                                (long long)lw->rot_rows);
        *Rrot = 0;
    } else if (lw->rot_rows == 0) {
        if ((*R * c->rope_dim) % d)
            return uq_set_error(UQ_ERR_SHAPE,
                                "layer %lld: stored head dim %lld has no whole rotary share (rope_dim %lld of %lld): "
                                "give rot_rows",
                                (long long)l, (long long)*R, (long long)c->rope_dim, (long long)d);
        *Rrot = *R * c->rope_dim / d;
    } else {
        *Rrot = lw->rot_rows;
    }
    if (*Rrot < 0 || (*Rrot & 1) || *Rrot > *R || *Rrot > c->rope_dim || *R - *Rrot > d - c->rope_dim)
        return uq_set_error(UQ_ERR_SHAPE,
                            "layer %lld: rotary rows %lld must be even, <= rope_dim %lld, and the pass rows %lld "
                            "<= %lld",
                            (long long)l, (long long)*Rrot, (long long)c->rope_dim, (long long)(*R - *Rrot),
                            (long long)(d - c->rope_dim));
    if (*Rrot > 0 && *Rrot < *R && lw->q.kind == UQ_W_Q4 && lw->q.layout != UQ_Q4_ROWMAJOR)
        return uq_set_error(UQ_ERR_UNSUPPORTED, "layer %lld q_proj: int4 layout %d is not supported with partial RoPE; "
                            "the runtime reads the pass rows as a view of the row-major layout", (long long)l,
                            (int)lw->q.layout);
    uq_status st;
    if ((st = uq_linear_check(&lw->q, "q_proj", l, nh * *R, hid, 1)) != UQ_OK) return st;
    if ((st = uq_linear_check(&lw->k, "k_proj", l, nkv * *R, hid, 1)) != UQ_OK) return st;
    if ((st = uq_linear_check(&lw->v, "v_proj", l, nkv * *R, hid, 1)) != UQ_OK) return st;
    if ((st = uq_linear_check(&lw->o, "o_proj", l, hid, nh * *R, nh)) != UQ_OK) return st;
    if (lw->freq_map)
        for (int64_t i = 0; i < nkv * (*Rrot / 2); i++)
            if (lw->freq_map[i] < 0 || lw->freq_map[i] >= c->rope_dim / 2)
                return uq_set_error(UQ_ERR_RANGE, "layer %lld freq_map[%lld][%lld] = %d outside [0, %lld)",
                                    (long long)l, (long long)(i / (*Rrot / 2)), (long long)(i % (*Rrot / 2)),
                                    (int)lw->freq_map[i], (long long)(c->rope_dim / 2));
    return UQ_OK;
}

static uq_status check_mlp(const uq_hy_config *c, const uq_hy_layer_weights *lw, int64_t l, int64_t *K) {
    const int64_t hid = c->hidden_size;
    *K = lw->up.rows;
    if (*K < 1 || *K > c->intermediate_size)
        return uq_set_error(UQ_ERR_SHAPE, "layer %lld up_proj: %lld rows outside [1, intermediate_size %lld]",
                            (long long)l, (long long)*K, (long long)c->intermediate_size);
    uq_status st;
    if (c->mlp_act == UQ_HY_ACT_SILU_GATED && (st = uq_linear_check(&lw->gate, "gate_proj", l, *K, hid, 1)) != UQ_OK)
        return st;
    if ((st = uq_linear_check(&lw->up, "up_proj", l, *K, hid, 1)) != UQ_OK) return st;
    if ((st = uq_linear_check(&lw->down, "down_proj", l, hid, *K, 1)) != UQ_OK) return st;
    return UQ_OK;
}

void uq_hy_model_free(uq_hy_model *m) {
    if (!m) return;
    uq_free(m->layers);
    uq_free(m->maps);
    uq_free(m->Aneg);
    uq_free(m->stored);
    uq_free(m->keep);
    uq_free(m->Rrot);
    uq_free(m->has_ffn);
    uq_free(m->inv_freq);
    if (m->outc)
        for (int64_t l = 0; l < m->cfg.num_layers; l++) uq_free(m->outc[l].buf);
    uq_free(m->outc);
    uq_free(m);
}

uq_status uq_hy_model_init(const uq_hy_config *cfg, const uq_hy_weights *w, uq_hy_model **out) {
    if (!cfg || !w || !out) return uq_set_error(UQ_ERR_ARG, "hy_model_init: NULL argument");
    *out = NULL;
    if (!w->layers || !w->final_norm) return uq_set_error(UQ_ERR_ARG, "hy_model_init: layers or final_norm is NULL");
    uq_status st = check_config(cfg, w);
    if (st != UQ_OK) return st;
    if ((st = uq_kernels_init()) != UQ_OK) return st; /* a bad UNIQL_KERNELS etc. fails here, clearly */
    const int64_t L = cfg->num_layers, hid = cfg->hidden_size, V = cfg->vocab_size;
    if ((st = uq_linear_check(&w->embed, "embeddings", -1, V, hid, 1)) != UQ_OK) return st;
    if (w->embed.bias) return uq_set_error(UQ_ERR_ARG, "embeddings: an embedding has no bias");
    if (w->embed.kind == UQ_W_Q4 && w->embed.layout != UQ_Q4_ROWMAJOR)
        return uq_set_error(UQ_ERR_UNSUPPORTED, "embeddings: int4 layout %d is not supported; the embedding gather "
                            "reads rows of the row-major layout", (int)w->embed.layout);
    if ((st = uq_linear_check(&w->lm_head, "lm_head", -1, V, hid, 1)) != UQ_OK) return st;
    uq_hy_model *m;
    if ((st = uq_calloc(sizeof *m, (void **)&m)) != UQ_OK) return st;
    const int64_t H = cfg->ssm_heads > 0 ? cfg->ssm_heads : 0;
    size_t lb = (size_t)L * sizeof(int64_t);
    if ((st = uq_calloc((size_t)L * sizeof(uq_hy_layer_weights), (void **)&m->layers)) != UQ_OK ||
        (st = uq_calloc((size_t)L * sizeof m->stored[0], (void **)&m->stored)) != UQ_OK ||
        (st = uq_calloc((size_t)L * sizeof m->keep[0], (void **)&m->keep)) != UQ_OK ||
        (st = uq_calloc(lb, (void **)&m->Rrot)) != UQ_OK || (st = uq_calloc(lb, (void **)&m->has_ffn)) != UQ_OK ||
        (st = uq_calloc((size_t)L * sizeof(uq_hy_outc), (void **)&m->outc)) != UQ_OK ||
        (st = uq_calloc((size_t)(L * (H > 0 ? H : 1)) * sizeof(float), (void **)&m->Aneg)) != UQ_OK ||
        (st = uq_calloc((size_t)(cfg->rope_dim > 0 ? cfg->rope_dim / 2 : 1) * sizeof(float), (void **)&m->inv_freq)) !=
            UQ_OK)
        goto fail;
    int64_t nmap = 0;
    for (int64_t l = 0; l < L; l++) {
        const uq_hy_layer_weights *lw = &w->layers[l];
        if (!lw->norm) {
            st = uq_set_error(UQ_ERR_ARG, "layer %lld: norm weight is NULL", (long long)l);
            goto fail;
        }
        int64_t *sz = m->stored[l];
        if (lw->kind == UQ_HY_MAMBA) {
            if ((st = check_mamba(cfg, lw, l, &sz[KEEP_SSM_HEAD], &sz[KEEP_SSM_STATE])) != UQ_OK) goto fail;
            m->any_mamba = 1;
            for (int64_t h = 0; h < H; h++) m->Aneg[l * H + h] = -expf(lw->A_log[h]);
        } else if (lw->kind == UQ_HY_ATTN) {
            if ((st = check_attn(cfg, lw, l, &sz[KEEP_ATTN], &m->Rrot[l])) != UQ_OK) goto fail;
            m->any_attn = 1;
            if (lw->freq_map) nmap += cfg->num_kv_heads * (m->Rrot[l] / 2);
        }
        m->has_ffn[l] = lw->kind != UQ_HY_MLP && lw->ffn_norm != NULL;
        if (lw->kind == UQ_HY_MLP || m->has_ffn[l]) {
            if ((st = check_mlp(cfg, lw, l, &sz[KEEP_MLP])) != UQ_OK) goto fail;
            m->any_mlp = 1;
        }
        for (int i = 0; i < 4; i++) m->keep[l][i] = sz[i];
        if (sz[KEEP_MLP] > m->Kmax) m->Kmax = sz[KEEP_MLP];
        if (sz[KEEP_ATTN] > m->Rmax) m->Rmax = sz[KEEP_ATTN];
        if (sz[KEEP_SSM_HEAD] > m->Pmax) m->Pmax = sz[KEEP_SSM_HEAD];
        if (sz[KEEP_SSM_STATE] > m->Nmax) m->Nmax = sz[KEEP_SSM_STATE];
    }
    if ((st = uq_alloc((size_t)(nmap > 0 ? nmap : 1) * sizeof(int32_t), (void **)&m->maps)) != UQ_OK) goto fail;
    m->cfg = *cfg;
    m->embed = w->embed;
    m->lm_head = w->lm_head;
    m->final_norm = w->final_norm;
    if (w->final_mix) {
        for (int64_t i = 0; i < hid * hid; i++)
            if (!isfinite(w->final_mix[i])) {
                st = uq_set_error(UQ_ERR_ARG, "final_mix: entry %lld is not finite", (long long)i);
                goto fail;
            }
        m->final_mix = (uq_linear){.kind = UQ_W_F32, .rows = hid, .cols = hid, .w = w->final_mix};
    }
    if (w->final_mix16) {
        if (w->final_mix) {
            st = uq_set_error(UQ_ERR_ARG, "final_mix: give final_mix or final_mix16, not both");
            goto fail;
        }
        for (int64_t i = 0; i < hid * hid; i++)
            if ((w->final_mix16[i] & 0x7c00u) == 0x7c00u) { /* exponent all ones: Inf or NaN */
                st = uq_set_error(UQ_ERR_ARG, "final_mix: entry %lld is not finite", (long long)i);
                goto fail;
            }
        m->final_mix = (uq_linear){.kind = UQ_W_F16, .rows = hid, .cols = hid, .w16 = w->final_mix16};
    }
    int64_t moff = 0;
    for (int64_t l = 0; l < L; l++) {
        m->layers[l] = w->layers[l];
        m->layers[l].freq_map = NULL;
        if (w->layers[l].kind == UQ_HY_ATTN && w->layers[l].freq_map) {
            int64_t n = cfg->num_kv_heads * (m->Rrot[l] / 2);
            memcpy(m->maps + moff, w->layers[l].freq_map, (size_t)n * sizeof(int32_t));
            m->layers[l].freq_map = m->maps + moff;
            moff += n;
        }
    }
    compute_inv_freq(cfg, m->inv_freq);
    *out = m;
    return UQ_OK;
fail:
    uq_hy_model_free(m);
    return st;
}

static uq_status check_layer(const uq_hy_model *m, int64_t layer, const char *fn) {
    if (!m) return uq_set_error(UQ_ERR_ARG, "%s: NULL model", fn);
    if (layer < 0 || layer >= m->cfg.num_layers)
        return uq_set_error(UQ_ERR_RANGE, "%s: layer %lld outside [0, %lld)", fn, (long long)layer,
                            (long long)m->cfg.num_layers);
    return UQ_OK;
}

/* The compact copy of layer l's mixer output projection at input keep `keep` into *c (zeroed first; L.packed stays NULL
 * when none is wanted: option UQ_HY_OPT_NO_COMPACT, a weight that is not R16 int4 with per-head segments, the stored
 * keep, an odd keep, or a keep that drops no whole chunk of a head). */
static uq_status out_compact(const uq_hy_model *m, int64_t l, int64_t keep, uq_hy_outc *c) {
    memset(c, 0, sizeof *c);
    const uq_hy_layer_weights *lw = &m->layers[l];
    const uq_linear *W = lw->kind == UQ_HY_ATTN ? &lw->o : lw->kind == UQ_HY_MAMBA ? &lw->out_proj : NULL;
    if (!W || (m->options & UQ_HY_OPT_NO_COMPACT) || W->kind != UQ_W_Q4 || W->layout != UQ_Q4_R16 || W->nseg_in < 2)
        return UQ_OK;
    const int64_t seg_in = W->cols / W->nseg_in;
    if (keep >= seg_in || (keep & 1) || (keep + 7) / 8 == (seg_in + 7) / 8) return UQ_OK;
    int64_t pb, ns;
    uq_status st = uq_q4_r16_prefix_in_size(W, keep, &pb, &ns);
    if (st != UQ_OK) return st;
    const size_t bytes = (size_t)pb + (size_t)ns * sizeof(uint16_t); /* pb: whole 64-byte chunks, so scales align */
    if ((st = uq_alloc(bytes, &c->buf)) != UQ_OK) return st;
    if ((st = uq_q4_r16_prefix_in(W, keep, (uint8_t *)c->buf, (uint16_t *)((uint8_t *)c->buf + pb), &c->L)) != UQ_OK) {
        uq_free(c->buf);
        memset(c, 0, sizeof *c);
        return st;
    }
    c->keep = keep;
    c->bytes = bytes;
    return UQ_OK;
}

/* The mixer-output keep of layer l (attention head dims or SSM head channels; 0 for an MLP layer). */
static int64_t out_keep(const uq_hy_model *m, int64_t l) {
    const int32_t kind = m->layers[l].kind;
    return kind == UQ_HY_ATTN ? m->keep[l][KEEP_ATTN] : kind == UQ_HY_MAMBA ? m->keep[l][KEEP_SSM_HEAD] : 0;
}

/* Makes layer l's compact copy follow its current keep (nothing changes on failure). */
static uq_status out_follow(uq_hy_model *m, int64_t l) {
    const int64_t keep = out_keep(m, l);
    uq_hy_outc *c = &m->outc[l];
    if (c->L.packed && c->keep == keep && !(m->options & UQ_HY_OPT_NO_COMPACT)) return UQ_OK;
    uq_hy_outc n;
    uq_status st = out_compact(m, l, keep, &n);
    if (st != UQ_OK) return st;
    uq_free(c->buf);
    *c = n;
    return UQ_OK;
}

uq_status uq_hy_compact_bytes(const uq_hy_model *m, int64_t *bytes) {
    if (!m || !bytes) return uq_set_error(UQ_ERR_ARG, "hy_compact_bytes: NULL argument");
    size_t t = 0;
    for (int64_t l = 0; l < m->cfg.num_layers; l++) t += m->outc[l].bytes;
    *bytes = (int64_t)t;
    return UQ_OK;
}

uq_status uq_hy_set_keep(uq_hy_model *m, int64_t layer, int64_t mlp_keep, int64_t attn_keep, int64_t ssm_head_keep,
                         int64_t ssm_state_keep) {
    uq_status st = check_layer(m, layer, "hy_set_keep");
    if (st != UQ_OK) return st;
    static const char *what[4] = {"MLP", "attention", "SSM head-channel", "SSM state"};
    const int64_t v[4] = {mlp_keep, attn_keep, ssm_head_keep, ssm_state_keep};
    const int64_t *sz = m->stored[layer];
    for (int i = 0; i < 4; i++) {
        if (v[i] < 0) continue;
        if (sz[i] == 0)
            return uq_set_error(UQ_ERR_RANGE, "hy_set_keep: layer %lld has no %s component (keep %lld given)",
                                (long long)layer, what[i], (long long)v[i]);
        if (v[i] < 1 || v[i] > sz[i])
            return uq_set_error(UQ_ERR_RANGE, "hy_set_keep: layer %lld %s keep %lld outside [1, %lld]", (long long)layer,
                                what[i], (long long)v[i], (long long)sz[i]);
    }
    if (attn_keep >= 0) {
        int64_t R = sz[KEEP_ATTN], Rr = m->Rrot[layer];
        if (Rr == R && (attn_keep & 1))
            return uq_set_error(UQ_ERR_RANGE, "hy_set_keep: layer %lld attention keep %lld must be even (whole RoPE "
                                "pairs)", (long long)layer, (long long)attn_keep);
        if ((attn_keep * Rr) % R || ((attn_keep * Rr / R) & 1))
            return uq_set_error(UQ_ERR_RANGE,
                                "hy_set_keep: layer %lld attention keep %lld has rotary share %lld * %lld / %lld that "
                                "is not an even integer (whole RoPE pairs)",
                                (long long)layer, (long long)attn_keep, (long long)attn_keep, (long long)Rr,
                                (long long)R);
    }
    int64_t was[4];
    for (int i = 0; i < 4; i++) {
        was[i] = m->keep[layer][i];
        if (v[i] >= 0) m->keep[layer][i] = v[i];
    }
    if ((st = out_follow(m, layer)) != UQ_OK) /* out of memory for the copy: the keeps stay as they were */
        for (int i = 0; i < 4; i++) m->keep[layer][i] = was[i];
    return st;
}

uq_status uq_hy_get_keep(const uq_hy_model *m, int64_t layer, int64_t *keep, int64_t *stored) {
    uq_status st = check_layer(m, layer, "hy_get_keep");
    if (st != UQ_OK) return st;
    for (int i = 0; i < 4; i++) {
        if (keep) keep[i] = m->keep[layer][i];
        if (stored) stored[i] = m->stored[layer][i];
    }
    return UQ_OK;
}

uq_status uq_hy_layer_info(const uq_hy_model *m, int64_t layer, int32_t *kind, int32_t *has_ffn) {
    uq_status st = check_layer(m, layer, "hy_layer_info");
    if (st != UQ_OK) return st;
    if (kind) *kind = m->layers[layer].kind;
    if (has_ffn) *has_ffn = (int32_t)m->has_ffn[layer];
    return UQ_OK;
}

uq_status uq_hy_set_options(uq_hy_model *m, int32_t options) {
    if (!m) return uq_set_error(UQ_ERR_ARG, "hy_set_options: NULL model");
    if (options & ~(UQ_HY_OPT_SEQUENTIAL_SCAN | UQ_HY_OPT_KEPT_STATE | UQ_HY_OPT_NO_COMPACT))
        return uq_set_error(UQ_ERR_ARG, "hy_set_options: unknown option bits 0x%x", (unsigned)options);
    const int32_t was = m->options;
    m->options = options;
    for (int64_t l = 0; l < m->cfg.num_layers; l++) {
        uq_status st = out_follow(m, l);
        if (st != UQ_OK) { /* out of memory: back to the previous options (their copies are still in place) */
            m->options = was;
            for (int64_t k = 0; k <= l; k++) (void)out_follow(m, k);
            return st;
        }
    }
    return UQ_OK;
}

int32_t uq_hy_get_options(const uq_hy_model *m) { return m ? m->options : 0; }

uq_status uq_hy_get_config(const uq_hy_model *m, uq_hy_config *out) {
    if (!m || !out) return uq_set_error(UQ_ERR_ARG, "hy_get_config: NULL argument");
    *out = m->cfg;
    return UQ_OK;
}

/* ------------------------------------------------------------------------------- state ---- */

void uq_hy_state_free(uq_hy_state *s) {
    if (!s) return;
    if (s->m) {
        for (int64_t l = 0; l < s->m->cfg.num_layers; l++) {
            if (s->conv) uq_free(s->conv[l]);
            if (s->ssm) uq_free(s->ssm[l]);
            if (s->kc) uq_free(s->kc[l]);
            if (s->vc) uq_free(s->vc[l]);
        }
    }
    uq_free(s->conv);
    uq_free(s->ssm);
    uq_free(s->kc);
    uq_free(s->vc);
    float *bufs[] = {s->cos_tab, s->sin_tab, s->x, s->xn, s->tmp, s->z, s->xi, s->xo, s->y, s->bi, s->bo, s->ci,
                     s->co, s->dt, s->q, s->qa, s->qb, s->att, s->kb, s->vb, s->g, s->u, s->scores, s->work, s->cb};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) uq_free(bufs[i]);
    uq_free(s->chan);
    uq_free(s);
}

/* *p = zeroed buffer of a * b elements of elem bytes (at least one); adds its size to *total. */
static uq_status ebuf(void **p, int64_t a, int64_t b, size_t elem, size_t *total) {
    size_t n;
    uq_status st = uq_size_mul(a > 0 ? a : 1, b > 0 ? b : 1, elem, &n);
    if (st != UQ_OK) return st;
    *total += n;
    return uq_calloc(n, p);
}

/* *p = zeroed float buffer of a * b elements (at least one); adds its size to *total. */
static uq_status sbuf(float **p, int64_t a, int64_t b, size_t *total) {
    return ebuf((void **)p, a, b, sizeof(float), total);
}

uq_status uq_hy_state_init(const uq_hy_model *m, int64_t max_seq, int64_t max_chunk, uq_hy_state **out) {
    return uq_hy_state_init_kv(m, max_seq, max_chunk, UQ_KV_F32, out);
}

uq_status uq_hy_state_init_kv(const uq_hy_model *m, int64_t max_seq, int64_t max_chunk, int32_t kv_dtype,
                              uq_hy_state **out) {
    if (!m || !out) return uq_set_error(UQ_ERR_ARG, "hy_state_init: NULL argument");
    *out = NULL;
    if (kv_dtype != UQ_KV_F32 && kv_dtype != UQ_KV_F16)
        return uq_set_error(UQ_ERR_ARG, "hy_state_init: unknown KV-cache dtype %d (UQ_KV_F32 = 0, UQ_KV_F16 = 1)",
                            (int)kv_dtype);
    if (max_seq < 1 || max_chunk < 1)
        return uq_set_error(UQ_ERR_ARG, "hy_state_init: max_seq and max_chunk must be >= 1, got %lld and %lld",
                            (long long)max_seq, (long long)max_chunk);
    const uq_hy_config *c = &m->cfg;
    if (max_chunk > max_seq) max_chunk = max_seq;
    if (m->any_mamba) max_chunk = (max_chunk + c->chunk_size - 1) / c->chunk_size * c->chunk_size;
    const int64_t L = c->num_layers, hid = c->hidden_size;
    const int64_t H = m->any_mamba ? c->ssm_heads : 0, G = m->any_mamba ? c->ssm_groups : 0;
    const int64_t nh = m->any_attn ? c->num_heads : 0, nkv = m->any_attn ? c->num_kv_heads : 0;
    uq_hy_state *s;
    uq_status st = uq_calloc(sizeof *s, (void **)&s);
    if (st != UQ_OK) return st;
    s->m = m;
    s->max_seq = max_seq;
    s->max_chunk = max_chunk;
    s->half = c->rope_dim / 2;
    s->nthreads = uq_k_threads();
    s->kv16 = kv_dtype == UQ_KV_F16;
    const size_t kv_elem = s->kv16 ? sizeof(uint16_t) : sizeof(float);
    size_t tot = 0;
    if ((st = uq_calloc((size_t)L * sizeof(float *), (void **)&s->conv)) != UQ_OK ||
        (st = uq_calloc((size_t)L * sizeof(float *), (void **)&s->ssm)) != UQ_OK ||
        (st = uq_calloc((size_t)L * sizeof(void *), (void **)&s->kc)) != UQ_OK ||
        (st = uq_calloc((size_t)L * sizeof(void *), (void **)&s->vc)) != UQ_OK)
        goto fail;
    for (int64_t l = 0; l < L; l++) {
        const int64_t *sz = m->stored[l];
        if (m->layers[l].kind == UQ_HY_MAMBA) {
            int64_t Ps = sz[KEEP_SSM_HEAD], Ns = sz[KEEP_SSM_STATE];
            if ((st = sbuf(&s->conv[l], H * Ps + 2 * G * Ns, c->conv_kernel - 1, &tot)) != UQ_OK ||
                (st = sbuf(&s->ssm[l], H * Ps, Ns, &tot)) != UQ_OK)
                goto fail;
        } else if (m->layers[l].kind == UQ_HY_ATTN) {
            int64_t per = nkv * sz[KEEP_ATTN];
            if (per > INT64_MAX / max_seq) {
                st = uq_set_error(UQ_ERR_RANGE, "hy_state_init: KV cache size overflows (max_seq %lld)",
                                  (long long)max_seq);
                goto fail;
            }
            if ((st = ebuf(&s->kc[l], per, max_seq, kv_elem, &tot)) != UQ_OK ||
                (st = ebuf(&s->vc[l], per, max_seq, kv_elem, &tot)) != UQ_OK)
                goto fail;
        }
    }
    const int64_t mc = max_chunk, HP = H * m->Pmax, GN = G * m->Nmax;
    if ((st = sbuf(&s->cos_tab, max_seq, s->half, &tot)) != UQ_OK || (st = sbuf(&s->sin_tab, max_seq, s->half, &tot)) != UQ_OK ||
        (st = sbuf(&s->x, mc, hid, &tot)) != UQ_OK || (st = sbuf(&s->xn, mc, hid, &tot)) != UQ_OK ||
        (st = sbuf(&s->tmp, mc, hid, &tot)) != UQ_OK || (st = sbuf(&s->z, mc, HP, &tot)) != UQ_OK ||
        (st = sbuf(&s->xi, mc, HP, &tot)) != UQ_OK || (st = sbuf(&s->xo, mc, HP, &tot)) != UQ_OK ||
        (st = sbuf(&s->y, mc, HP, &tot)) != UQ_OK || (st = sbuf(&s->bi, mc, GN, &tot)) != UQ_OK ||
        (st = sbuf(&s->bo, mc, GN, &tot)) != UQ_OK || (st = sbuf(&s->ci, mc, GN, &tot)) != UQ_OK ||
        (st = sbuf(&s->co, mc, GN, &tot)) != UQ_OK || (st = sbuf(&s->dt, mc, H, &tot)) != UQ_OK ||
        (st = sbuf(&s->q, mc, nh * m->Rmax, &tot)) != UQ_OK || (st = sbuf(&s->qa, mc, nh * m->Rmax, &tot)) != UQ_OK ||
        (st = sbuf(&s->qb, mc, nh * m->Rmax, &tot)) != UQ_OK || (st = sbuf(&s->att, mc, nh * m->Rmax, &tot)) != UQ_OK ||
        (st = sbuf(&s->kb, mc, nkv * m->Rmax, &tot)) != UQ_OK || (st = sbuf(&s->vb, mc, nkv * m->Rmax, &tot)) != UQ_OK ||
        (st = sbuf(&s->g, mc, m->Kmax, &tot)) != UQ_OK || (st = sbuf(&s->u, mc, m->Kmax, &tot)) != UQ_OK ||
        (st = sbuf(&s->scores, s->nthreads, (nkv > 0 ? nh / nkv : 1) * max_seq + 2 * m->Rmax, &tot)) != UQ_OK ||
        (st = sbuf(&s->work, s->nthreads, m->any_mamba ? uq_ks_scan_work(c->chunk_size) : 1, &tot)) != UQ_OK ||
        (st = sbuf(&s->cb, m->any_mamba ? uq_ks_scan_shared(G, c->chunk_size) : 1, 1, &tot)) != UQ_OK)
        goto fail;
    {
        size_t nb = (size_t)(HP + 2 * GN + 1) * sizeof(int64_t); /* the conv channel maps of x, B and C */
        if ((st = uq_alloc(nb, (void **)&s->chan)) != UQ_OK) goto fail;
        tot += nb;
    }
    s->bytes = tot + sizeof *s + 4 * (size_t)L * sizeof(float *);
    for (int64_t p = 0; p < max_seq; p++)
        for (int64_t f = 0; f < s->half; f++) {
            float a = m->inv_freq[f] * (float)p; /* float32 product, as transformers */
            s->cos_tab[p * s->half + f] = (float)cos((double)a);
            s->sin_tab[p * s->half + f] = (float)sin((double)a);
        }
    *out = s;
    return UQ_OK;
fail:
    uq_hy_state_free(s);
    return st;
}

uq_status uq_hy_state_reset(uq_hy_state *s) {
    if (!s) return uq_set_error(UQ_ERR_ARG, "hy_state_reset: NULL state");
    const uq_hy_model *m = s->m;
    const uq_hy_config *c = &m->cfg;
    for (int64_t l = 0; l < c->num_layers; l++) {
        if (m->layers[l].kind != UQ_HY_MAMBA) continue;
        int64_t Ps = m->stored[l][KEEP_SSM_HEAD], Ns = m->stored[l][KEEP_SSM_STATE];
        int64_t cd = c->ssm_heads * Ps + 2 * c->ssm_groups * Ns;
        if (c->conv_kernel > 1) memset(s->conv[l], 0, (size_t)(cd * (c->conv_kernel - 1)) * sizeof(float));
        memset(s->ssm[l], 0, (size_t)(c->ssm_heads * Ps * Ns) * sizeof(float));
    }
    s->pos = 0;
    return UQ_OK;
}

uq_status uq_hy_state_truncate(uq_hy_state *s, int64_t pos) {
    if (!s) return uq_set_error(UQ_ERR_ARG, "hy_state_truncate: NULL state");
    if (pos < 0 || pos > s->pos)
        return uq_set_error(UQ_ERR_RANGE, "hy_state_truncate: position %lld outside [0, %lld]", (long long)pos,
                            (long long)s->pos);
    if (pos < s->pos && s->m->any_mamba)
        return uq_set_error(UQ_ERR_UNSUPPORTED, "hy_state_truncate: a Mamba layer's state cannot go back to an "
                            "earlier position (reset and re-run the prefix)");
    s->pos = pos; /* K/V rows >= pos are never read before forward overwrites them (causal attention) */
    return UQ_OK;
}

/* Elements [0, n) of the cache row at element offset os of src's block S into the row at od of dst's block D (dtypes
 * may differ: float16 -> float32 is exact, float32 -> float16 rounds to nearest even), zeros in [n, nd). */
static void copy_kv_row(const uq_hy_state *src, const void *S, int64_t os, const uq_hy_state *dst, void *D, int64_t od,
                        int64_t n, int64_t nd) {
    if (src->kv16 == dst->kv16) {
        const size_t e = src->kv16 ? sizeof(uint16_t) : sizeof(float);
        memcpy((char *)D + od * e, (const char *)S + os * e, (size_t)n * e);
        memset((char *)D + (od + n) * e, 0, (size_t)(nd - n) * e);
    } else if (dst->kv16) {
        uq_k_f32_to_f16((const float *)S + os, n, (uint16_t *)D + od);
        memset((uint16_t *)D + od + n, 0, (size_t)(nd - n) * sizeof(uint16_t));
    } else {
        (void)uq_convert_f16_to_f32((const uint16_t *)S + os, n, (float *)D + od);
        memset((float *)D + od + n, 0, (size_t)(nd - n) * sizeof(float));
    }
}

uq_status uq_hy_state_transfer(const uq_hy_state *src, uq_hy_state *dst) {
    if (!src || !dst) return uq_set_error(UQ_ERR_ARG, "hy_state_transfer: NULL state");
    const uq_hy_model *ms = src->m, *md = dst->m;
    const int64_t L = ms->cfg.num_layers, nkv = ms->any_attn ? ms->cfg.num_kv_heads : 0;
    if (md->cfg.num_layers != L || (nkv && md->cfg.num_kv_heads != nkv))
        return uq_set_error(UQ_ERR_SHAPE, "hy_state_transfer: models differ (%lld vs %lld layers, %lld vs %lld KV heads)",
                            (long long)L, (long long)md->cfg.num_layers, (long long)nkv,
                            (long long)md->cfg.num_kv_heads);
    if (src->pos > dst->max_seq)
        return uq_set_error(UQ_ERR_RANGE, "hy_state_transfer: %lld cached tokens exceed the new state's max_seq %lld",
                            (long long)src->pos, (long long)dst->max_seq);
    for (int64_t l = 0; l < L; l++) {
        const int32_t kind = ms->layers[l].kind;
        if (md->layers[l].kind != kind)
            return uq_set_error(UQ_ERR_SHAPE, "hy_state_transfer: layer %lld kinds differ", (long long)l);
        if (kind == UQ_HY_MAMBA && (ms->stored[l][KEEP_SSM_HEAD] != md->stored[l][KEEP_SSM_HEAD] ||
                                    ms->stored[l][KEEP_SSM_STATE] != md->stored[l][KEEP_SSM_STATE]))
            return uq_set_error(UQ_ERR_UNSUPPORTED, "hy_state_transfer: layer %lld Mamba stored sizes differ",
                                (long long)l);
    }
    for (int64_t l = 0; l < L; l++) {
        if (ms->layers[l].kind == UQ_HY_MAMBA) {
            const uq_hy_config *c = &ms->cfg;
            int64_t Ps = ms->stored[l][KEEP_SSM_HEAD], Ns = ms->stored[l][KEEP_SSM_STATE];
            int64_t cd = c->ssm_heads * Ps + 2 * c->ssm_groups * Ns;
            if (c->conv_kernel > 1) memcpy(dst->conv[l], src->conv[l], (size_t)(cd * (c->conv_kernel - 1)) * sizeof(float));
            memcpy(dst->ssm[l], src->ssm[l], (size_t)(c->ssm_heads * Ps * Ns) * sizeof(float));
            continue;
        }
        if (ms->layers[l].kind != UQ_HY_ATTN) continue;
        const int64_t Rs = ms->stored[l][KEEP_ATTN], Rd = md->stored[l][KEEP_ATTN], n = Rs < Rd ? Rs : Rd;
        for (int64_t h = 0; h < nkv; h++)
            for (int64_t t = 0; t < src->pos; t++) {
                copy_kv_row(src, src->kc[l], (h * src->max_seq + t) * Rs, dst, dst->kc[l], (h * dst->max_seq + t) * Rd,
                            n, Rd);
                copy_kv_row(src, src->vc[l], (h * src->max_seq + t) * Rs, dst, dst->vc[l], (h * dst->max_seq + t) * Rd,
                            n, Rd);
            }
    }
    dst->pos = src->pos;
    return UQ_OK;
}

int64_t uq_hy_state_pos(const uq_hy_state *s) { return s ? s->pos : 0; }

size_t uq_hy_state_bytes(const uq_hy_state *s) { return s ? s->bytes : 0; }

int32_t uq_hy_state_kv_dtype(const uq_hy_state *s) { return s && s->kv16 ? UQ_KV_F16 : UQ_KV_F32; }

size_t uq_hy_state_kv_bytes(const uq_hy_state *s) {
    if (!s) return 0;
    const uq_hy_model *m = s->m;
    size_t n = 0;
    for (int64_t l = 0; l < m->cfg.num_layers; l++)
        if (m->layers[l].kind == UQ_HY_ATTN)
            n += 2 * (size_t)(m->cfg.num_kv_heads * m->stored[l][KEEP_ATTN] * s->max_seq);
    return n * (s->kv16 ? sizeof(uint16_t) : sizeof(float));
}

/* ----------------------------------------------------------------------------- forward ---- */

static void copy_rows(float *dst, const float *src, int64_t n) { memcpy(dst, src, (size_t)n * sizeof(float)); }

/* The in-projections of Mamba layer l over xn (T, hidden), shared by mamba_chunk (one sequence) and ssm_batch.c (one
 * token of each sequence): z (T, H*Pk) at the kept head channels, x (T, H*Pc), B and C (T, G*Nc) at the computed
 * ones (uq_hy_capture), Delta (T, H) = clamp(softplus(dt + dt_bias)); the z / x / B / C / dt rows are the five
 * in_part descriptors when given (R16: W4A8 kernels), else row views of the fused in_proj. chan (H*Pc + 2*G*Nc) gets the conv channel maps of x, B and C, one after the
 * other (stored channel = segment start + head / group * stored size + index). */
uq_status uq_hy_mamba_in(const uq_hy_model *m, int64_t l, const float *xn, int64_t T, float *z, float *xi, float *bi,
                         float *ci, float *dt, int64_t *chan) {
    const uq_hy_config *c = &m->cfg;
    const uq_hy_layer_weights *lw = &m->layers[l];
    const int64_t hid = c->hidden_size, H = c->ssm_heads, G = c->ssm_groups;
    const int64_t Ps = m->stored[l][KEEP_SSM_HEAD], Ns = m->stored[l][KEEP_SSM_STATE];
    const int64_t Pk = m->keep[l][KEEP_SSM_HEAD], Nk = m->keep[l][KEEP_SSM_STATE];
    const int kept = (m->options & UQ_HY_OPT_KEPT_STATE) != 0;
    const int64_t Pc = kept ? Pk : Ps, Nc = kept ? Nk : Ns;
    const int64_t rx = H * Ps, rb = 2 * H * Ps, rc = rb + G * Ns, rdt = rc + G * Ns;
    uq_status st;
    const int parts = lw->in_part[0].rows > 0;
    uq_linear vz = parts ? lw->in_part[0] : view_rows(&lw->in_proj, 0, H * Ps);
    uq_linear vx = parts ? lw->in_part[1] : view_rows(&lw->in_proj, rx, H * Ps);
    uq_linear vb = parts ? lw->in_part[2] : view_rows(&lw->in_proj, rb, G * Ns);
    uq_linear vc = parts ? lw->in_part[3] : view_rows(&lw->in_proj, rc, G * Ns);
    uq_linear vdt = parts ? lw->in_part[4] : view_rows(&lw->in_proj, rdt, H);
    if ((st = uq_linear_forward(&vz, xn, T, H, Pk, 1, hid, z)) != UQ_OK ||
        (st = uq_linear_forward(&vx, xn, T, H, Pc, 1, hid, xi)) != UQ_OK ||
        (st = uq_linear_forward(&vb, xn, T, G, Nc, 1, hid, bi)) != UQ_OK ||
        (st = uq_linear_forward(&vc, xn, T, G, Nc, 1, hid, ci)) != UQ_OK ||
        (st = uq_linear_forward(&vdt, xn, T, 1, H, 1, hid, dt)) != UQ_OK)
        return st;
    int64_t *cx = chan, *cb = cx + H * Pc, *cc = cb + G * Nc;
    for (int64_t h = 0; h < H; h++)
        for (int64_t p = 0; p < Pc; p++) cx[h * Pc + p] = h * Ps + p;
    for (int64_t g = 0; g < G; g++)
        for (int64_t n = 0; n < Nc; n++) {
            cb[g * Nc + n] = H * Ps + g * Ns + n;
            cc[g * Nc + n] = H * Ps + G * Ns + g * Ns + n;
        }
    uq_ks_dt_softplus(dt, T, H, lw->dt_bias, (float)c->dt_min, (float)c->dt_max);
    return UQ_OK;
}

void uq_hy_mamba_conv(const uq_hy_model *m, int64_t l, float *conv, const float *xi, const float *bi, const float *ci,
                      int64_t T, const int64_t *chan, float *xo, float *bo, float *co) {
    const uq_hy_layer_weights *lw = &m->layers[l];
    const uq_ks_scan a = uq_hy_scan_args(m, l, T);
    const int64_t K = m->cfg.conv_kernel, *cx = chan, *cb = cx + a.H * a.Pc, *cc = cb + a.G * a.Nc;
    uq_ks_conv1d_silu(xi, T, a.H * a.Pc, cx, lw->conv_w, lw->conv_b, K, conv, xo);
    uq_ks_conv1d_silu(bi, T, a.G * a.Nc, cb, lw->conv_w, lw->conv_b, K, conv, bo);
    uq_ks_conv1d_silu(ci, T, a.G * a.Nc, cc, lw->conv_w, lw->conv_b, K, conv, co);
}

uq_status uq_hy_mamba_out(const uq_hy_model *m, int64_t l, float *y, const float *z, int64_t T, float *tmp, float *x) {
    const uq_hy_layer_weights *lw = &m->layers[l];
    const int64_t hid = m->cfg.hidden_size, H = m->cfg.ssm_heads, Pk = m->keep[l][KEEP_SSM_HEAD];
    uq_ks_gated_rmsnorm(y, z, T, H, m->cfg.ssm_groups, Pk, lw->gnorm, m->stored[l][KEEP_SSM_HEAD], m->cfg.norm_eps);
    uq_status st = uq_linear_forward(uq_hy_out_proj(m, l, Pk), y, T, 1, hid, H, Pk, tmp);
    if (st != UQ_OK) return st;
    uq_k_add(x, tmp, T * hid);
    return UQ_OK;
}

/* RoPE of attention layer l on q (T, nh, r) and kb (T, nkv, R) at positions pos0.., and the K / V rows into s's
 * cache: the one KV-cache writer of prefill, decode and batched decode. */
void uq_hy_attn_rope_store(const uq_hy_model *m, uq_hy_state *s, int64_t l, float *q, float *kb, const float *vb,
                           int64_t T, int64_t pos0) {
    const uq_hy_layer_weights *lw = &m->layers[l];
    const int64_t nh = m->cfg.num_heads, nkv = m->cfg.num_kv_heads;
    const int64_t R = m->stored[l][KEEP_ATTN], Rr = m->Rrot[l], r = m->keep[l][KEEP_ATTN], rr = r * Rr / R;
    if (Rr > 0) {
        uq_k_rope(q, T, nh, nh / nkv, r, rr, lw->freq_map, Rr / 2, s->cos_tab, s->sin_tab, s->half, pos0);
        uq_k_rope(kb, T, nkv, 1, R, Rr, lw->freq_map, Rr / 2, s->cos_tab, s->sin_tab, s->half, pos0);
    }
    for (int64_t t = 0; t < T; t++)
        for (int64_t g = 0; g < nkv; g++) {
            const int64_t off = (g * s->max_seq + pos0 + t) * R;
            const float *k = kb + (t * nkv + g) * R, *v = vb + (t * nkv + g) * R;
            if (s->kv16) {
                uq_k_f32_to_f16(k, R, (uint16_t *)s->kc[l] + off);
                uq_k_f32_to_f16(v, R, (uint16_t *)s->vc[l] + off);
            } else {
                memcpy((float *)s->kc[l] + off, k, (size_t)R * sizeof(float));
                memcpy((float *)s->vc[l] + off, v, (size_t)R * sizeof(float));
            }
        }
}

void uq_hy_attend(const uq_hy_model *m, uq_hy_state *s, int64_t l, const float *q, int64_t T, int64_t pos0,
                  float *out, int nthreads) {
    const uq_hy_config *c = &m->cfg;
    const int64_t nh = c->num_heads, nkv = c->num_kv_heads;
    const int64_t R = m->stored[l][KEEP_ATTN], Rr = m->Rrot[l], r = m->keep[l][KEEP_ATTN], rr = r * Rr / R;
    const float scale = (float)(1.0 / sqrt((double)c->head_dim));
    if (s->kv16)
        uq_k_attention_f16(q, T, nh, nkv, r, rr, Rr, s->kc[l], s->vc[l], s->max_seq, R, pos0, scale, out, s->scores,
                           nthreads);
    else
        uq_k_attention(q, T, nh, nkv, r, rr, Rr, s->kc[l], s->vc[l], s->max_seq, R, pos0, scale, out, s->scores,
                       nthreads);
}

/* Mamba2 mixer over h = s->xn (Tc, hidden); adds its output to x. */
static uq_status mamba_chunk(const uq_hy_model *m, uq_hy_state *s, int64_t l, float *x, int64_t Tc, int chunked,
                             const uq_hy_capture *cap, int64_t row0) {
    uq_ks_scan a = uq_hy_scan_args(m, l, Tc);
    const int64_t H = a.H, G = a.G, Pc = a.Pc, Nc = a.Nc, Pk = a.Pk;
    uq_status st = uq_hy_mamba_in(m, l, s->xn, Tc, s->z, s->xi, s->bi, s->ci, s->dt, s->chan);
    if (st != UQ_OK) return st;
    uq_hy_mamba_conv(m, l, s->conv[l], s->xi, s->bi, s->ci, Tc, s->chan, s->xo, s->bo, s->co);
    if (cap) {
        if (cap->ssm_x) copy_rows(cap->ssm_x + row0 * H * Pc, s->xo, Tc * H * Pc);
        if (cap->ssm_B) copy_rows(cap->ssm_B + row0 * G * Nc, s->bo, Tc * G * Nc);
        if (cap->ssm_C) copy_rows(cap->ssm_C + row0 * G * Nc, s->co, Tc * G * Nc);
        if (cap->ssm_dt) copy_rows(cap->ssm_dt + row0 * H, s->dt, Tc * H);
    }
    a.x = s->xo, a.B = s->bo, a.C = s->co, a.dt = s->dt, a.S = s->ssm[l], a.y = s->y;
    if (chunked)
        uq_ks_ssm_scan_chunked(&a, s->cb, s->work, s->nthreads);
    else
        uq_ks_ssm_scan_seq(&a, s->nthreads);
    if (!(cap && cap->ssm_out)) return uq_hy_mamba_out(m, l, s->y, s->z, Tc, s->tmp, x);
    uq_ks_gated_rmsnorm(s->y, s->z, Tc, H, G, Pk, m->layers[l].gnorm, a.Ps, m->cfg.norm_eps);
    copy_rows(cap->ssm_out + row0 * H * Pk, s->y, Tc * H * Pk);
    if ((st = uq_linear_forward(uq_hy_out_proj(m, l, Pk), s->y, Tc, 1, m->cfg.hidden_size, H, Pk, s->tmp)) != UQ_OK)
        return st;
    uq_k_add(x, s->tmp, Tc * m->cfg.hidden_size);
    return UQ_OK;
}

/* The Q, K and V projections of attention layer l over xn (T, hidden), shared by attn_chunk (one sequence) and
 * ssm_batch.c (one token of each sequence): q (T, nh, r) at the current keep r, kb / vb (T, nkv, R) at the stored
 * width R (the KV cache stays valid across rate changes). With partial RoPE and 0 < r < R, the rotary rows [0, rr)
 * and the pass rows [Rr, Rr + rp) of every head are two segmented calls into qa / qb, interleaved into q: the pass
 * view starts at row Rr and keeps the head stride R; its last head's rows end at (nh-1)*R + Rr + rp <= nh*R
 * (nominal rows beyond the array are never addressed). */
uq_status uq_hy_attn_qkv(const uq_hy_model *m, int64_t l, const float *xn, int64_t T, float *q, float *qa,
                         float *qb, float *kb, float *vb) {
    const uq_hy_config *c = &m->cfg;
    const uq_hy_layer_weights *lw = &m->layers[l];
    const int64_t hid = c->hidden_size, nh = c->num_heads, nkv = c->num_kv_heads;
    const int64_t R = m->stored[l][KEEP_ATTN], Rr = m->Rrot[l], r = m->keep[l][KEEP_ATTN];
    const int64_t rr = r * Rr / R, rp = r - rr;
    uq_status st;
    if (r == R || rp == 0 || rr == 0) {
        /* one prefix segment per head: all rows, only rotary rows, or only pass rows (no RoPE); Q, K and V in one
         * call (one activation pass and one thread-pool job when all three are R16 int4) */
        const uq_linear *Ls[3] = {&lw->q, &lw->k, &lw->v};
        const int64_t nso[3] = {nh, nkv, nkv}, ko[3] = {r, R, R};
        float *ys[3] = {q, kb, vb};
        return uq_linear_forward_multi(3, Ls, xn, T, nso, ko, 1, hid, ys);
    } else {
        uq_linear vp = view_rows(&lw->q, Rr, nh * R);
        if ((st = uq_linear_forward(&lw->q, xn, T, nh, rr, 1, hid, qa)) != UQ_OK ||
            (st = uq_linear_forward(&vp, xn, T, nh, rp, 1, hid, qb)) != UQ_OK)
            return st;
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < nh; h++) {
                float *dst = q + (t * nh + h) * r;
                memcpy(dst, qa + (t * nh + h) * rr, (size_t)rr * sizeof(float));
                memcpy(dst + rr, qb + (t * nh + h) * rp, (size_t)rp * sizeof(float));
            }
    }
    if ((st = uq_linear_forward(&lw->k, xn, T, nkv, R, 1, hid, kb)) != UQ_OK) return st;
    return uq_linear_forward(&lw->v, xn, T, nkv, R, 1, hid, vb);
}

/* Attention over h = s->xn (Tc, hidden) at positions pos0..; adds its output to x. */
static uq_status attn_chunk(const uq_hy_model *m, uq_hy_state *s, int64_t l, float *x, int64_t Tc, int64_t pos0,
                            const uq_hy_capture *cap, int64_t row0) {
    const uq_hy_config *c = &m->cfg;
    const int64_t hid = c->hidden_size, nh = c->num_heads, nkv = c->num_kv_heads;
    const int64_t R = m->stored[l][KEEP_ATTN], r = m->keep[l][KEEP_ATTN];
    uq_status st;
    if ((st = uq_hy_attn_qkv(m, l, s->xn, Tc, s->q, s->qa, s->qb, s->kb, s->vb)) != UQ_OK) return st;
    uq_hy_attn_rope_store(m, s, l, s->q, s->kb, s->vb, Tc, pos0);
    if (cap && cap->q) copy_rows(cap->q + row0 * nh * r, s->q, Tc * nh * r);
    if (cap && cap->k) copy_rows(cap->k + row0 * nkv * R, s->kb, Tc * nkv * R);
    uq_hy_attend(m, s, l, s->q, Tc, pos0, s->att, s->nthreads);
    if (cap && cap->attn_out) copy_rows(cap->attn_out + row0 * nh * r, s->att, Tc * nh * r);
    if ((st = uq_linear_forward(uq_hy_out_proj(m, l, r), s->att, Tc, 1, hid, nh, r, s->tmp)) != UQ_OK) return st;
    uq_k_add(x, s->tmp, Tc * hid);
    return UQ_OK;
}

uq_status uq_hy_mlp(const uq_hy_model *m, int64_t l, const float *xn, int64_t T, float *g, float *u, float *tmp,
                    float *x, float *z_cap) {
    const uq_hy_config *c = &m->cfg;
    const uq_hy_layer_weights *lw = &m->layers[l];
    const int64_t hid = c->hidden_size, k = m->keep[l][KEEP_MLP];
    uq_status st;
    if (c->mlp_act == UQ_HY_ACT_SILU_GATED) {
        const uq_linear *Ls[2] = {&lw->gate, &lw->up};
        const int64_t nso[2] = {1, 1}, ko[2] = {k, k};
        float *ys[2] = {g, u};
        if ((st = uq_linear_forward_multi(2, Ls, xn, T, nso, ko, 1, hid, ys)) != UQ_OK) return st;
        uq_k_silu_mul(g, u, T * k);
    } else {
        if ((st = uq_linear_forward(&lw->up, xn, T, 1, k, 1, hid, g)) != UQ_OK) return st;
        uq_ks_relu2(g, T * k);
    }
    if (z_cap) copy_rows(z_cap, g, T * k);
    if ((st = uq_linear_forward(&lw->down, g, T, 1, hid, 1, k, tmp)) != UQ_OK) return st;
    uq_k_add(x, tmp, T * hid);
    return UQ_OK;
}

/* MLP over h = s->xn (Tc, hidden); adds its output to x. */
static uq_status mlp_chunk(const uq_hy_model *m, uq_hy_state *s, int64_t l, float *x, int64_t Tc,
                           const uq_hy_capture *cap, int64_t row0) {
    const int64_t hid = m->cfg.hidden_size;
    if (cap && cap->mlp_in) copy_rows(cap->mlp_in + row0 * hid, s->xn, Tc * hid);
    float *z_cap = cap && cap->mlp_z ? cap->mlp_z + row0 * m->keep[l][KEEP_MLP] : NULL;
    return uq_hy_mlp(m, l, s->xn, Tc, s->g, s->u, s->tmp, x, z_cap);
}

/* One layer over x (Tc, hidden) in place at positions pos0..; captures (cap may be NULL) at row offset row0. */
static uq_status layer_chunk(const uq_hy_model *m, uq_hy_state *s, int64_t l, float *x, int64_t Tc, int64_t pos0,
                             int chunked, const uq_hy_capture *cap, int64_t row0) {
    const uq_hy_config *c = &m->cfg;
    const uq_hy_layer_weights *lw = &m->layers[l];
    uq_status st;
    uq_k_rmsnorm(x, Tc, c->hidden_size, lw->norm, c->norm_eps, s->xn);
    if (cap && cap->mixer_in) copy_rows(cap->mixer_in + row0 * c->hidden_size, s->xn, Tc * c->hidden_size);
    if (lw->kind == UQ_HY_MAMBA)
        st = mamba_chunk(m, s, l, x, Tc, chunked, cap, row0);
    else if (lw->kind == UQ_HY_ATTN)
        st = attn_chunk(m, s, l, x, Tc, pos0, cap, row0);
    else
        st = mlp_chunk(m, s, l, x, Tc, cap, row0);
    if (st != UQ_OK || !m->has_ffn[l]) return st;
    uq_k_rmsnorm(x, Tc, c->hidden_size, lw->ffn_norm, c->norm_eps, s->xn);
    return mlp_chunk(m, s, l, x, Tc, cap, row0);
}

uq_status uq_hy_forward(const uq_hy_model *m, uq_hy_state *s, const int32_t *ids, int64_t T, int64_t n_logits,
                        float *logits) {
    if (!m || !s) return uq_set_error(UQ_ERR_ARG, "hy_forward: NULL model or state");
    if (s->m != m) return uq_set_error(UQ_ERR_STATE, "hy_forward: the state was built for another model");
    if (!ids || !logits) return uq_set_error(UQ_ERR_ARG, "hy_forward: ids or logits is NULL");
    if (T < 1) return uq_set_error(UQ_ERR_ARG, "hy_forward: T must be >= 1 (no tokens), got %lld", (long long)T);
    if (n_logits < 1 || n_logits > T)
        return uq_set_error(UQ_ERR_ARG, "hy_forward: n_logits %lld outside [1, T = %lld]", (long long)n_logits,
                            (long long)T);
    const int64_t hid = m->cfg.hidden_size, V = m->cfg.vocab_size, first = T - n_logits;
    for (int64_t t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= V)
            return uq_set_error(UQ_ERR_RANGE, "hy_forward: token id %d at index %lld outside [0, %lld)", (int)ids[t],
                                (long long)t, (long long)V);
    if (T > s->max_seq - s->pos)
        return uq_set_error(UQ_ERR_RANGE, "hy_forward: positions %lld..%lld beyond max_seq %lld (%s full)",
                            (long long)s->pos, (long long)(s->pos + T - 1), (long long)s->max_seq,
                            m->any_attn ? "KV cache" : "state");
    const int chunked = T > 1 && !(m->options & UQ_HY_OPT_SEQUENTIAL_SCAN);
    uq_status st;
    for (int64_t c0 = 0; c0 < T; c0 += s->max_chunk) {
        int64_t Tc = T - c0 < s->max_chunk ? T - c0 : s->max_chunk;
        uq_k_embed(&m->embed, ids + c0, Tc, s->x);
        for (int64_t l = 0; l < m->cfg.num_layers; l++)
            if ((st = layer_chunk(m, s, l, s->x, Tc, s->pos + c0, chunked, NULL, 0)) != UQ_OK) return st;
        int64_t a = first > c0 ? first : c0;
        if (a < c0 + Tc) {
            int64_t nr = c0 + Tc - a;
            const float *hin;
            if ((st = uq_hy_head_input(m, s->x + (a - c0) * hid, nr, s->xn, s->tmp, &hin)) != UQ_OK ||
                (st = uq_linear_forward(&m->lm_head, hin, nr, 1, V, 1, hid, logits + (a - first) * V)) != UQ_OK)
                return st;
        }
    }
    s->pos += T;
    return UQ_OK;
}

/* ------------------------------------------------------------------ compression pipeline ---- */

uq_status uq_hy_embed(const uq_hy_model *m, const int32_t *ids, int64_t T, float *X) {
    if (!m || !ids || !X) return uq_set_error(UQ_ERR_ARG, "hy_embed: NULL argument");
    if (T < 1) return uq_set_error(UQ_ERR_ARG, "hy_embed: T must be >= 1, got %lld", (long long)T);
    for (int64_t t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= m->cfg.vocab_size)
            return uq_set_error(UQ_ERR_RANGE, "hy_embed: token id %d at index %lld outside [0, %lld)", (int)ids[t],
                                (long long)t, (long long)m->cfg.vocab_size);
    uq_k_embed(&m->embed, ids, T, X);
    return UQ_OK;
}

uq_status uq_hy_head_input(const uq_hy_model *m, const float *X, int64_t T, float *xn, float *tmp, const float **out) {
    const int64_t hid = m->cfg.hidden_size;
    uq_k_rmsnorm(X, T, hid, m->final_norm, m->cfg.norm_eps, xn);
    *out = xn;
    if (m->final_mix.rows == 0) return UQ_OK;
    uq_status st = uq_linear_forward(&m->final_mix, xn, T, 1, hid, 1, hid, tmp);
    if (st == UQ_OK) *out = tmp;
    return st;
}

uq_status uq_hy_head(const uq_hy_model *m, uq_hy_state *s, const float *X, int64_t T, float *logits) {
    if (!m || !s) return uq_set_error(UQ_ERR_ARG, "hy_head: NULL model or state");
    if (s->m != m) return uq_set_error(UQ_ERR_STATE, "hy_head: the state was built for another model");
    if (!X || !logits) return uq_set_error(UQ_ERR_ARG, "hy_head: X or logits is NULL");
    if (T < 1) return uq_set_error(UQ_ERR_ARG, "hy_head: T must be >= 1, got %lld", (long long)T);
    const int64_t hid = m->cfg.hidden_size, V = m->cfg.vocab_size;
    for (int64_t c0 = 0; c0 < T; c0 += s->max_chunk) {
        int64_t Tc = T - c0 < s->max_chunk ? T - c0 : s->max_chunk;
        const float *hin;
        uq_status st = uq_hy_head_input(m, X + c0 * hid, Tc, s->xn, s->tmp, &hin);
        if (st == UQ_OK) st = uq_linear_forward(&m->lm_head, hin, Tc, 1, V, 1, hid, logits + c0 * V);
        if (st != UQ_OK) return st;
    }
    return UQ_OK;
}

uq_status uq_hy_layer_forward(const uq_hy_model *m, uq_hy_state *s, int64_t layer, const float *X, int64_t T,
                              float *Y, const uq_hy_capture *cap) {
    if (!m || !s) return uq_set_error(UQ_ERR_ARG, "hy_layer_forward: NULL model or state");
    if (s->m != m) return uq_set_error(UQ_ERR_STATE, "hy_layer_forward: the state was built for another model");
    if (!X || !Y) return uq_set_error(UQ_ERR_ARG, "hy_layer_forward: X or Y is NULL");
    if (layer < 0 || layer >= m->cfg.num_layers)
        return uq_set_error(UQ_ERR_RANGE, "hy_layer_forward: layer %lld outside [0, %lld)", (long long)layer,
                            (long long)m->cfg.num_layers);
    if (T < 1) return uq_set_error(UQ_ERR_ARG, "hy_layer_forward: T must be >= 1, got %lld", (long long)T);
    if (T > s->max_seq)
        return uq_set_error(UQ_ERR_RANGE, "hy_layer_forward: T %lld beyond max_seq %lld", (long long)T,
                            (long long)s->max_seq);
    const int64_t hid = m->cfg.hidden_size;
    const int chunked = T > 1 && !(m->options & UQ_HY_OPT_SEQUENTIAL_SCAN);
    uq_status st = uq_hy_state_reset(s);
    if (st != UQ_OK) return st;
    if (Y != X) memmove(Y, X, (size_t)(T * hid) * sizeof(float));
    for (int64_t c0 = 0; c0 < T && st == UQ_OK; c0 += s->max_chunk) {
        int64_t Tc = T - c0 < s->max_chunk ? T - c0 : s->max_chunk;
        st = layer_chunk(m, s, layer, Y + c0 * hid, Tc, c0, chunked, cap, c0);
    }
    uq_hy_state_reset(s);
    return st;
}

/* test_ssm.c -- C tests of the Mamba2 / hybrid runtime: the chunked scan against its sequential _ref twin,
 * a tiny deterministic hybrid model (Mamba2 + partial-RoPE attention + MLP layers): prefill = decode =
 * sequential scan, keep changes, truncated-equals-kept, and bad-argument statuses. */
#include "test.h"

#include "../kernels/ssm_kernels.h"

/* scan order tolerance (float32, chunk 4, a few dozen tokens) */
#define SSM_ORDER_TOL 1e-5

static double max_rel(const float *a, const float *b, int64_t n) {
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > num) num = d;
        if (fabs((double)b[i]) > den) den = fabs((double)b[i]);
    }
    return den > 0.0 ? num / den : num;
}

static void fill(float *x, int64_t n, double scale, double shift, unsigned long long *s) {
    for (int64_t i = 0; i < n; i++) x[i] = (float)(shift + scale * uq_test_rand(s));
}

static void test_scan_kernels(void) {
    enum { T = 19, H = 4, G = 2, Ps = 6, Ns = 5 };
    unsigned long long seed = 77;
    float x[T * H * Ps], B[T * G * Ns], C[T * G * Ns], dt[T * H], A[H], D[H];
    float S1[H * Ps * Ns], S2[H * Ps * Ns], y1[T * H * Ps], y2[T * H * Ps], work[4 * 4 * 8], shared[G * 4 * 4];
    fill(x, T * H * Ps, 1.0, 0.0, &seed);
    fill(B, T * G * Ns, 1.0, 0.0, &seed);
    fill(C, T * G * Ns, 1.0, 0.0, &seed);
    fill(dt, T * H, 0.3, 0.5, &seed);
    fill(A, H, 0.5, -1.0, &seed);
    fill(D, H, 0.5, 1.0, &seed);
    /* kept read-out prefix (Pk, Nk) < computed (Pc, Nc) = stored: chunk lengths 4 (ragged last chunk) and 1 */
    for (int64_t chunk = 1; chunk <= 4; chunk += 3) {
        fill(S1, H * Ps * Ns, 0.5, 0.0, &seed);
        memcpy(S2, S1, sizeof S1);
        uq_ks_scan a = {.T = T, .H = H, .G = G, .Pc = Ps, .Nc = Ns, .Pk = 4, .Nk = 3, .Ps = Ps, .Ns = Ns,
                        .chunk = chunk, .x = x, .B = B, .C = C, .dt = dt, .A = A, .D = D, .S = S1, .y = y1};
        uq_ks_scan b = a;
        b.S = S2;
        b.y = y2;
        uq_ks_ssm_scan_seq(&a, 2);
        uq_ks_ssm_scan_chunked(&b, shared, work, 2);
        CHECK(max_rel(y2, y1, T * H * 4) < SSM_ORDER_TOL, "chunk %lld: chunked y vs sequential, rel %g", (long long)chunk,
              max_rel(y2, y1, T * H * 4));
        CHECK(max_rel(S2, S1, H * Ps * Ns) < SSM_ORDER_TOL, "chunk %lld: chunked state vs sequential, rel %g",
              (long long)chunk, max_rel(S2, S1, H * Ps * Ns));
    }
}

/* ---------------------------------------------------------------------------- tiny model ---- */

enum { V = 11, HID = 16, L = 3, SH = 4, SP = 4, SG = 2, SN = 4, SK = 3, NH = 2, NKV = 1, HD = 8, DI = 6 };
#define IN_ROWS (2 * SH * SP + 2 * SG * SN + SH)
#define CONV_CH (SH * SP + 2 * SG * SN)

typedef struct {
    float emb[V * HID], fnorm[HID], norm[L][HID], ffn_norm[L][HID];
    float in_proj[IN_ROWS * HID], conv_w[CONV_CH * SK], conv_b[CONV_CH], dt_bias[SH], A_log[SH], D[SH],
        gnorm[SH * SP], out_proj[HID * SH * SP];
    float q[NH * HD * HID], k[NKV * HD * HID], v[NKV * HD * HID], o[HID * NH * HD];
    float gate[L][DI * HID], up[L][DI * HID], down[L][HID * DI];
} tiny_w;

static uq_linear lin(const float *w, int64_t rows, int64_t cols) {
    uq_linear Lr = {.kind = UQ_W_F32, .rows = rows, .cols = cols, .w = w};
    return Lr;
}

static void tiny_build(tiny_w *t, uq_hy_config *c, uq_hy_layer_weights *lw, uq_hy_weights *w) {
    unsigned long long s = 12345;
    fill(t->emb, V * HID, 1.0, 0.0, &s);
    fill(t->fnorm, HID, 0.1, 1.0, &s);
    fill(&t->norm[0][0], L * HID, 0.1, 1.0, &s);
    fill(&t->ffn_norm[0][0], L * HID, 0.1, 1.0, &s);
    fill(t->in_proj, IN_ROWS * HID, 0.3, 0.0, &s);
    fill(t->conv_w, CONV_CH * SK, 0.5, 0.0, &s);
    fill(t->conv_b, CONV_CH, 0.1, 0.0, &s);
    fill(t->dt_bias, SH, 0.2, 0.0, &s);
    fill(t->A_log, SH, 0.3, 0.0, &s);
    fill(t->D, SH, 0.1, 1.0, &s);
    fill(t->gnorm, SH * SP, 0.1, 1.0, &s);
    fill(t->out_proj, HID * SH * SP, 0.3, 0.0, &s);
    fill(t->q, NH * HD * HID, 0.3, 0.0, &s);
    fill(t->k, NKV * HD * HID, 0.3, 0.0, &s);
    fill(t->v, NKV * HD * HID, 0.3, 0.0, &s);
    fill(t->o, HID * NH * HD, 0.3, 0.0, &s);
    fill(&t->gate[0][0], L * DI * HID, 0.3, 0.0, &s);
    fill(&t->up[0][0], L * DI * HID, 0.3, 0.0, &s);
    fill(&t->down[0][0], L * HID * DI, 0.3, 0.0, &s);
    memset(c, 0, sizeof *c);
    *c = (uq_hy_config){.vocab_size = V, .hidden_size = HID, .num_layers = L, .norm_eps = 1e-5, .ssm_heads = SH,
                        .ssm_head_dim = SP, .ssm_groups = SG, .ssm_state = SN, .conv_kernel = SK, .chunk_size = 4,
                        .dt_min = 0.0, .dt_max = INFINITY, .num_heads = NH, .num_kv_heads = NKV, .head_dim = HD,
                        .rope_dim = HD / 2, .rope_theta = 10000.0, .intermediate_size = DI,
                        .mlp_act = UQ_HY_ACT_SILU_GATED};
    memset(lw, 0, L * sizeof *lw);
    /* layer 0: Mamba2 + MLP, layer 1: attention (partial RoPE) + MLP, layer 2: MLP only */
    lw[0] = (uq_hy_layer_weights){.kind = UQ_HY_MAMBA, .norm = t->norm[0], .in_proj = lin(t->in_proj, IN_ROWS, HID),
                                  .conv_w = t->conv_w, .conv_b = t->conv_b, .dt_bias = t->dt_bias, .A_log = t->A_log,
                                  .D = t->D, .gnorm = t->gnorm, .out_proj = lin(t->out_proj, HID, SH * SP)};
    lw[1] = (uq_hy_layer_weights){.kind = UQ_HY_ATTN, .norm = t->norm[1], .q = lin(t->q, NH * HD, HID),
                                  .k = lin(t->k, NKV * HD, HID), .v = lin(t->v, NKV * HD, HID),
                                  .o = lin(t->o, HID, NH * HD)};
    lw[2] = (uq_hy_layer_weights){.kind = UQ_HY_MLP, .norm = t->norm[2]};
    for (int l = 0; l < L; l++) {
        if (l < 2) lw[l].ffn_norm = t->ffn_norm[l];
        lw[l].gate = lin(t->gate[l], DI, HID);
        lw[l].up = lin(t->up[l], DI, HID);
        lw[l].down = lin(t->down[l], HID, DI);
    }
    *w = (uq_hy_weights){.embed = lin(t->emb, V, HID), .layers = lw, .final_norm = t->fnorm,
                         .lm_head = lin(t->emb, V, HID)};
}

enum { TT = 13 };

static void test_tiny_model(void) {
    static tiny_w t;
    uq_hy_config c;
    uq_hy_layer_weights lw[L];
    uq_hy_weights w;
    tiny_build(&t, &c, lw, &w);
    uq_hy_model *m = NULL, *m2 = NULL;
    uq_hy_state *s = NULL, *s2 = NULL;
    CHECK_STATUS(uq_hy_model_init(&c, &w, &m), UQ_OK);
    if (!m) return;
    CHECK_STATUS(uq_hy_state_init(m, 32, 8, &s), UQ_OK);
    if (!s) {
        uq_hy_model_free(m);
        return;
    }
    int32_t ids[TT];
    for (int i = 0; i < TT; i++) ids[i] = (i * 7 + 3) % V;
    static float full[TT * V], dec[TT * V], seq[TT * V], kept[TT * V];
    CHECK_STATUS(uq_hy_forward(m, s, ids, TT, TT, full), UQ_OK);
    CHECK(uq_hy_state_pos(s) == TT, "pos %lld", (long long)uq_hy_state_pos(s));
    CHECK(uq_check_finite_f32(full, TT * V, "logits") == UQ_OK, "non-finite logits");
    /* prefill 5 then one token at a time */
    CHECK_STATUS(uq_hy_state_reset(s), UQ_OK);
    CHECK_STATUS(uq_hy_forward(m, s, ids, 5, 5, dec), UQ_OK);
    for (int i = 5; i < TT; i++) CHECK_STATUS(uq_hy_forward(m, s, ids + i, 1, 1, dec + i * V), UQ_OK);
    CHECK(max_rel(dec, full, TT * V) < SSM_ORDER_TOL, "decode vs prefill rel %g", max_rel(dec, full, TT * V));
    /* sequential scan option */
    CHECK_STATUS(uq_hy_set_options(m, UQ_HY_OPT_SEQUENTIAL_SCAN), UQ_OK);
    CHECK_STATUS(uq_hy_state_reset(s), UQ_OK);
    CHECK_STATUS(uq_hy_forward(m, s, ids, TT, TT, seq), UQ_OK);
    CHECK(max_rel(seq, full, TT * V) < SSM_ORDER_TOL, "sequential vs chunked rel %g", max_rel(seq, full, TT * V));
    CHECK_STATUS(uq_hy_set_options(m, 0), UQ_OK);
    /* reduced keeps: differ from full, and equal a model built from truncated arrays */
    CHECK_STATUS(uq_hy_set_keep(m, 0, 3, -1, 2, 2), UQ_OK);
    CHECK_STATUS(uq_hy_set_keep(m, 1, 4, 4, -1, -1), UQ_OK);
    CHECK_STATUS(uq_hy_set_keep(m, 2, 5, -1, -1, -1), UQ_OK);
    CHECK_STATUS(uq_hy_state_reset(s), UQ_OK);
    CHECK_STATUS(uq_hy_forward(m, s, ids, TT, TT, kept), UQ_OK);
    CHECK(max_rel(kept, full, TT * V) > 1e-3, "reduced keeps changed nothing");
    {
        /* truncated Mamba layer (P' = 2, N' = 2) and attention (r = 4: 2 rotary + 2 pass rows) */
        static float tin[(2 * SH * 2 + 2 * SG * 2 + SH) * HID], tconv[(SH * 2 + 2 * SG * 2) * SK], tcb[SH * 2 + 2 * SG * 2],
            tg[SH * 2], tout[HID * SH * 2], tq[NH * 4 * HID], tk[NKV * 4 * HID], tv[NKV * 4 * HID], to[HID * NH * 4];
        int64_t r = 0, ch = 0;
        for (int part = 0; part < 2; part++) /* z, x */
            for (int h = 0; h < SH; h++)
                for (int p = 0; p < 2; p++, r++) memcpy(tin + r * HID, t.in_proj + (part * SH * SP + h * SP + p) * HID, HID * 4);
        for (int part = 0; part < 2; part++) /* B, C */
            for (int g = 0; g < SG; g++)
                for (int n = 0; n < 2; n++, r++)
                    memcpy(tin + r * HID, t.in_proj + (2 * SH * SP + part * SG * SN + g * SN + n) * HID, HID * 4);
        for (int h = 0; h < SH; h++, r++) memcpy(tin + r * HID, t.in_proj + (2 * SH * SP + 2 * SG * SN + h) * HID, HID * 4);
        for (int h = 0; h < SH; h++)
            for (int p = 0; p < 2; p++, ch++) {
                memcpy(tconv + ch * SK, t.conv_w + (h * SP + p) * SK, SK * 4);
                tcb[ch] = t.conv_b[h * SP + p];
                tg[ch] = t.gnorm[h * SP + p];
            }
        for (int part = 0; part < 2; part++)
            for (int g = 0; g < SG; g++)
                for (int n = 0; n < 2; n++, ch++) {
                    int64_t src = SH * SP + part * SG * SN + g * SN + n;
                    memcpy(tconv + ch * SK, t.conv_w + src * SK, SK * 4);
                    tcb[ch] = t.conv_b[src];
                }
        for (int i = 0; i < HID; i++)
            for (int h = 0; h < SH; h++)
                for (int p = 0; p < 2; p++) tout[i * SH * 2 + h * 2 + p] = t.out_proj[i * SH * SP + h * SP + p];
        static const int qrows[4] = {0, 1, 4, 5}; /* rotary rows 0,1 (pair 0); pass rows 4,5 */
        for (int h = 0; h < NH; h++)
            for (int j = 0; j < 4; j++) memcpy(tq + (h * 4 + j) * HID, t.q + (h * HD + qrows[j]) * HID, HID * 4);
        for (int j = 0; j < 4; j++) {
            memcpy(tk + j * HID, t.k + qrows[j] * HID, HID * 4);
            memcpy(tv + j * HID, t.v + j * HID, HID * 4);
        }
        for (int i = 0; i < HID; i++)
            for (int h = 0; h < NH; h++)
                for (int j = 0; j < 4; j++) to[i * NH * 4 + h * 4 + j] = t.o[i * NH * HD + h * HD + j];
        uq_hy_layer_weights tl[L];
        memcpy(tl, lw, sizeof tl);
        tl[0].in_proj = lin(tin, 2 * SH * 2 + 2 * SG * 2 + SH, HID);
        tl[0].conv_w = tconv;
        tl[0].conv_b = tcb;
        tl[0].gnorm = tg;
        tl[0].out_proj = lin(tout, HID, SH * 2);
        tl[0].gate = lin(t.gate[0], 3, HID);
        tl[0].up = lin(t.up[0], 3, HID);
        static float d0[HID * 3], d1[HID * 4], d2[HID * 5];
        for (int i = 0; i < HID; i++) {
            memcpy(d0 + i * 3, t.down[0] + i * DI, 3 * 4);
            memcpy(d1 + i * 4, t.down[1] + i * DI, 4 * 4);
            memcpy(d2 + i * 5, t.down[2] + i * DI, 5 * 4);
        }
        tl[0].down = lin(d0, HID, 3);
        tl[1].q = lin(tq, NH * 4, HID);
        tl[1].k = lin(tk, NKV * 4, HID);
        tl[1].v = lin(tv, NKV * 4, HID);
        tl[1].o = lin(to, HID, NH * 4);
        tl[1].rot_rows = 2;
        tl[1].gate = lin(t.gate[1], 4, HID);
        tl[1].up = lin(t.up[1], 4, HID);
        tl[1].down = lin(d1, HID, 4);
        tl[2].gate = lin(t.gate[2], 5, HID);
        tl[2].up = lin(t.up[2], 5, HID);
        tl[2].down = lin(d2, HID, 5);
        uq_hy_weights tw = w;
        tw.layers = tl;
        static float small[TT * V];
        CHECK_STATUS(uq_hy_model_init(&c, &tw, &m2), UQ_OK);
        if (m2) {
            CHECK_STATUS(uq_hy_state_init(m2, 32, 8, &s2), UQ_OK);
            if (s2) {
                CHECK_STATUS(uq_hy_forward(m2, s2, ids, TT, TT, small), UQ_OK);
                CHECK(memcmp(small, kept, sizeof small) == 0, "truncated model differs from kept sizes (rel %g)",
                      max_rel(small, kept, TT * V));
            }
        }
    }
    /* bad arguments */
    float one[V];
    CHECK_STATUS(uq_hy_forward(NULL, s, ids, 1, 1, one), UQ_ERR_ARG);
    CHECK_STATUS(uq_hy_forward(m, s, ids, 0, 1, one), UQ_ERR_ARG);
    CHECK_STATUS(uq_hy_forward(m, s, ids, 2, 3, one), UQ_ERR_ARG);
    int32_t bad[2] = {1, V};
    int64_t pos = uq_hy_state_pos(s);
    CHECK_STATUS(uq_hy_forward(m, s, bad, 2, 1, one), UQ_ERR_RANGE);
    CHECK(uq_hy_state_pos(s) == pos, "a failed call moved the position");
    static int32_t many[32];
    CHECK_STATUS(uq_hy_forward(m, s, many, 32 - TT + 1, 1, dec), UQ_ERR_RANGE); /* state full */
    if (s2) CHECK_STATUS(uq_hy_forward(m, s2, ids, 1, 1, one), UQ_ERR_STATE);
    CHECK_STATUS(uq_hy_set_keep(m, 1, -1, 6, -1, -1), UQ_ERR_RANGE); /* rotary share 3: not whole pairs */
    CHECK_STATUS(uq_hy_set_keep(m, 0, -1, -1, -1, 5), UQ_ERR_RANGE);
    CHECK_STATUS(uq_hy_set_keep(m, 0, -1, 4, -1, -1), UQ_ERR_RANGE); /* no attention in layer 0 */
    CHECK_STATUS(uq_hy_set_keep(m, 2, -1, -1, 2, -1), UQ_ERR_RANGE); /* no SSM in layer 2 */
    CHECK_STATUS(uq_hy_set_keep(m, 3, 1, -1, -1, -1), UQ_ERR_RANGE);
    CHECK_STATUS(uq_hy_set_options(m, 8), UQ_ERR_ARG);
    uq_hy_state_free(s2);
    uq_hy_model_free(m2);
    s2 = (uq_hy_state *)&t; /* any non-NULL value: must be cleared on failure */
    CHECK_STATUS(uq_hy_state_init(m, 0, 8, &s2), UQ_ERR_ARG);
    CHECK(s2 == NULL, "state pointer not cleared on failure");
    uq_hy_model *mb = NULL;
    uq_hy_config cb = c;
    cb.ssm_groups = 3;
    CHECK_STATUS(uq_hy_model_init(&cb, &w, &mb), UQ_ERR_SHAPE);
    cb = c;
    cb.conv_kernel = 0;
    CHECK_STATUS(uq_hy_model_init(&cb, &w, &mb), UQ_ERR_ARG);
    cb = c;
    cb.rope_dim = 3;
    CHECK_STATUS(uq_hy_model_init(&cb, &w, &mb), UQ_ERR_ARG);
    uq_hy_layer_weights lb[L];
    memcpy(lb, lw, sizeof lb);
    lb[0].in_proj.rows = IN_ROWS - 1;
    uq_hy_weights wb = w;
    wb.layers = lb;
    CHECK_STATUS(uq_hy_model_init(&c, &wb, &mb), UQ_ERR_SHAPE);
    CHECK(strstr(uq_last_error(), "layer 0 in_proj") != NULL, "message: %s", uq_last_error());
    memcpy(lb, lw, sizeof lb);
    lb[1].kind = 7;
    CHECK_STATUS(uq_hy_model_init(&c, &wb, &mb), UQ_ERR_ARG);
    memcpy(lb, lw, sizeof lb);
    int32_t fm[2] = {0, 2}; /* rope_dim/2 = 2 frequencies: index 2 is out of range */
    lb[1].freq_map = fm;
    CHECK_STATUS(uq_hy_model_init(&c, &wb, &mb), UQ_ERR_RANGE);
    CHECK(mb == NULL, "model pointer set on failure");
    uq_hy_state_free(s);
    uq_hy_model_free(m);
    uq_hy_model_free(NULL);
    uq_hy_state_free(NULL);
}

/* uq_ssm_bc_moments and uq_ssm_chunk_states against direct float64 loops: the chunk-local state is the
 * recurrence S <- exp(Delta A) S + Delta x B^T run from zero over the chunk. */
static void test_ssm_stats(void) {
    enum { T = 11, H = 4, G = 2, P = 3, N = 5, CH = 4, NC = 3 };
    unsigned long long seed = 91;
    float x[T * H * P], B[T * G * N], C[T * G * N], dt[T * H], A_log[H];
    fill(x, T * H * P, 1.0, 0.0, &seed);
    fill(B, T * G * N, 1.0, 0.0, &seed);
    fill(C, T * G * N, 1.0, 0.0, &seed);
    fill(dt, T * H, 0.2, 0.4, &seed);
    fill(A_log, H, 0.5, 0.0, &seed);
    double dB[H * N], cc[G * N], rdB[H * N] = {0}, rc[G * N] = {0};
    memset(dB, 0, sizeof dB);
    memset(cc, 0, sizeof cc);
    CHECK_STATUS(uq_ssm_bc_moments(B, C, dt, T, H, G, N, 0.25, dB, cc), UQ_OK);
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < H; h++)
            for (int n = 0; n < N; n++) {
                double v = (double)dt[t * H + h] * B[(t * G + h / (H / G)) * N + n];
                rdB[h * N + n] += 0.25 * v * v;
            }
        for (int j = 0; j < G * N; j++) rc[j] += 0.25 * (double)C[t * G * N + j] * C[t * G * N + j];
    }
    double err = 0.0;
    for (int i = 0; i < H * N; i++) err = fmax(err, fabs(dB[i] - rdB[i]));
    for (int i = 0; i < G * N; i++) err = fmax(err, fabs(cc[i] - rc[i]));
    CHECK(err < 1e-12, "bc moments error %g", err);
    static double S[NC * N * H * P], R[H * P * N];
    CHECK_STATUS(uq_ssm_chunk_states(x, B, dt, A_log, T, H, P, G, N, CH, S), UQ_OK);
    err = 0.0;
    for (int c = 0; c < NC; c++) {
        memset(R, 0, sizeof R);
        for (int t = c * CH; t < T && t < (c + 1) * CH; t++)
            for (int h = 0; h < H; h++) {
                double d = dt[t * H + h], decay = exp(-exp((double)A_log[h]) * d);
                for (int p = 0; p < P; p++)
                    for (int n = 0; n < N; n++) {
                        double *r = &R[(h * P + p) * N + n];
                        *r = decay * *r + d * x[t * H * P + h * P + p] * B[(t * G + h / (H / G)) * N + n];
                    }
            }
        for (int n = 0; n < N; n++)
            for (int hp = 0; hp < H * P; hp++) err = fmax(err, fabs(S[(c * N + n) * H * P + hp] - R[hp * N + n]));
    }
    CHECK(err < 1e-12, "chunk states vs recurrence error %g", err);
    CHECK_STATUS(uq_ssm_bc_moments(B, C, dt, T, 3, G, N, 1.0, dB, cc), UQ_ERR_ARG); /* H % G */
    CHECK_STATUS(uq_ssm_chunk_states(x, B, dt, A_log, T, H, P, G, N, 0, S), UQ_ERR_ARG);
    CHECK_STATUS(uq_ssm_chunk_states(NULL, B, dt, A_log, T, H, P, G, N, CH, S), UQ_ERR_ARG);
    dt[5] = NAN;
    CHECK_STATUS(uq_ssm_bc_moments(B, C, dt, T, H, G, N, 1.0, dB, cc), UQ_ERR_NUMERIC);
    CHECK_STATUS(uq_ssm_chunk_states(x, B, dt, A_log, T, H, P, G, N, CH, S), UQ_ERR_NUMERIC);
}

/* uq_hy_layer_forward: deterministic from a zero state (two calls agree, the generation state is untouched),
 * captures written, Y may alias X, bad arguments. */
static void test_layer_forward(void) {
    static tiny_w t;
    uq_hy_config c;
    uq_hy_layer_weights lw[L];
    uq_hy_weights w;
    tiny_build(&t, &c, lw, &w);
    uq_hy_model *m = NULL;
    uq_hy_state *s = NULL, *g = NULL;
    CHECK_STATUS(uq_hy_model_init(&c, &w, &m), UQ_OK);
    if (!m) return;
    CHECK_STATUS(uq_hy_state_init(m, 32, 8, &s), UQ_OK);
    CHECK_STATUS(uq_hy_state_init(m, 32, 8, &g), UQ_OK);
    if (!s || !g) goto done;
    int32_t ids[TT];
    for (int i = 0; i < TT; i++) ids[i] = (i * 5 + 1) % V;
    static float X[TT * HID], Y1[TT * HID], Y2[TT * HID], mix[TT * HID], bb[TT * SG * SN], dtc[TT * SH], q[TT * NH * HD];
    static float logits[V];
    CHECK_STATUS(uq_hy_embed(m, ids, TT, X), UQ_OK);
    CHECK_STATUS(uq_hy_forward(m, g, ids, 3, 1, logits), UQ_OK);
    for (int l = 0; l < L; l++) {
        uq_hy_capture cap;
        memset(&cap, 0, sizeof cap);
        cap.mixer_in = mix;
        if (l == 0) cap.ssm_B = bb, cap.ssm_dt = dtc;
        if (l == 1) cap.q = q;
        CHECK_STATUS(uq_hy_layer_forward(m, s, l, X, TT, Y1, &cap), UQ_OK);
        CHECK_STATUS(uq_hy_layer_forward(m, s, l, X, TT, Y2, NULL), UQ_OK);
        CHECK(memcmp(Y1, Y2, sizeof Y1) == 0, "layer %d: two calls differ", l);
        CHECK(uq_check_finite_f32(mix, TT * HID, "mixer_in") == UQ_OK, "layer %d: capture not written", l);
        if (l == 0) {
            int pos = 1;
            for (int i = 0; i < TT * SH; i++) pos &= dtc[i] > 0.0f;
            CHECK(pos, "Delta capture must be positive (softplus)");
        }
        memcpy(Y2, X, sizeof X);
        CHECK_STATUS(uq_hy_layer_forward(m, s, l, Y2, TT, Y2, NULL), UQ_OK); /* in place */
        CHECK(memcmp(Y1, Y2, sizeof Y1) == 0, "layer %d: in-place call differs", l);
        memcpy(X, Y1, sizeof X);
    }
    CHECK(uq_hy_state_pos(g) == 3 && uq_hy_state_pos(s) == 0, "positions %lld, %lld", (long long)uq_hy_state_pos(g),
          (long long)uq_hy_state_pos(s));
    CHECK_STATUS(uq_hy_layer_forward(m, s, L, X, TT, Y1, NULL), UQ_ERR_RANGE);
    CHECK_STATUS(uq_hy_layer_forward(m, s, 0, X, 33, Y1, NULL), UQ_ERR_RANGE);
    CHECK_STATUS(uq_hy_layer_forward(m, s, 0, X, 0, Y1, NULL), UQ_ERR_ARG);
    CHECK_STATUS(uq_hy_layer_forward(m, s, 0, NULL, TT, Y1, NULL), UQ_ERR_ARG);
    int32_t bad[1] = {V};
    CHECK_STATUS(uq_hy_embed(m, bad, 1, X), UQ_ERR_RANGE);
done:
    uq_hy_state_free(s);
    uq_hy_state_free(g);
    uq_hy_model_free(m);
}

/* -------------------------------------------------------------------- int4 layouts in the hybrid ---- */

/* An int4 copy of a (rows, cols) fp32 weight in both layouts: row-major (rm) and R16 built for (nso, nsi). */
typedef struct {
    uq_linear rm, r16;
    uint8_t p[HID * HID], pr[4096];
    uint16_t s[HID * HID], sr[4096]; /* float16 scales */
} hy_q4;

static int hy_q4_make(const float *W, int64_t rows, int64_t cols, int64_t nso, int64_t nsi, hy_q4 *q) {
    const int64_t g = 8, gps = (cols / nsi + g - 1) / g;
    int64_t nblk, bb, ns;
    if (uq_q4_r16_size(rows, cols, g, nsi * gps, nso, nsi, &nblk, &bb, &ns) != UQ_OK ||
        nblk * bb > (int64_t)sizeof q->pr || ns > (int64_t)(sizeof q->sr / sizeof(uint16_t)))
        return -1;
    uq_test_q4_quant_seg(W, rows, cols, nsi, g, q->p, q->s);
    q->rm = (uq_linear){.kind = UQ_W_Q4, .rows = rows, .cols = cols, .packed = q->p, .scales = q->s, .group = g,
                        .scale_cols = nsi * gps};
    return uq_test_r16_of(&q->rm, nso, nsi, q->pr, q->sr, &q->r16) == UQ_OK ? 0 : -1;
}

static void hy_logits(const uq_hy_config *c, const uq_hy_weights *w, const int32_t *ids, float *out) {
    uq_hy_model *m = NULL;
    uq_hy_state *s = NULL;
    CHECK_STATUS(uq_hy_model_init(c, w, &m), UQ_OK);
    if (m) CHECK_STATUS(uq_hy_state_init(m, 32, 8, &s), UQ_OK);
    if (s) CHECK_STATUS(uq_hy_forward(m, s, ids, TT, TT, out), UQ_OK);
    uq_hy_state_free(s);
    uq_hy_model_free(m);
}

/* The runtime reads a fused in_proj, the q_proj of a partial-RoPE head and the embedding as row-major int4 (row
 * views, row gathers): an R16 descriptor there is UQ_ERR_UNSUPPORTED naming the tensor, never read as row-major.
 * Every other linear computes the same function in R16 as in row-major int4: bit for bit with int8 activations
 * (integer sums), to float rounding with fp32 activations (another FMA order). */
static void test_hybrid_int4_layouts(void) {
    static tiny_w t;
    static hy_q4 qo, qd, qg, qu, qk, qv, bad;
    uq_hy_config c;
    uq_hy_layer_weights lw[L];
    uq_hy_weights w;
    tiny_build(&t, &c, lw, &w);
    uq_hy_model *m = NULL;
    CHECK(hy_q4_make(t.out_proj, HID, SH * SP, 1, SH, &qo) == 0 && hy_q4_make(t.down[2], HID, DI, 1, 1, &qd) == 0 &&
              hy_q4_make(t.gate[2], DI, HID, 1, 1, &qg) == 0 && hy_q4_make(t.up[2], DI, HID, 1, 1, &qu) == 0 &&
              hy_q4_make(t.k, NKV * HD, HID, NKV, 1, &qk) == 0 && hy_q4_make(t.v, NKV * HD, HID, NKV, 1, &qv) == 0 &&
              hy_q4_make(t.q, NH * HD, HID, NH, 1, &bad) == 0,
          "int4 test weights");
    /* rejected: R16 q_proj under partial RoPE, R16 embedding, R16 in_proj (only its descriptor is inspected) */
    uq_linear q_keep = lw[1].q, e_keep = w.embed, in_keep = lw[0].in_proj;
    lw[1].q = bad.r16;
    uq_clear_error();
    CHECK_STATUS(uq_hy_model_init(&c, &w, &m), UQ_ERR_UNSUPPORTED);
    CHECK(strstr(uq_last_error(), "layer 1 q_proj") != NULL, "message: %s", uq_last_error());
    lw[1].q = q_keep;
    w.embed = (uq_linear){.kind = UQ_W_Q4, .rows = V, .cols = HID, .packed = bad.pr, .scales = bad.sr, .group = 8,
                          .scale_cols = 2, .layout = UQ_Q4_R16, .nseg_out = 1, .nseg_in = 1};
    CHECK_STATUS(uq_hy_model_init(&c, &w, &m), UQ_ERR_UNSUPPORTED);
    CHECK(strstr(uq_last_error(), "embeddings") != NULL, "message: %s", uq_last_error());
    w.embed = e_keep;
    lw[0].in_proj = (uq_linear){.kind = UQ_W_Q4, .rows = IN_ROWS, .cols = HID, .packed = bad.pr, .scales = bad.sr,
                                .group = 8, .scale_cols = 2, .layout = UQ_Q4_R16, .nseg_out = 1, .nseg_in = 1};
    CHECK_STATUS(uq_hy_model_init(&c, &w, &m), UQ_ERR_UNSUPPORTED);
    CHECK(strstr(uq_last_error(), "layer 0 in_proj") != NULL, "message: %s", uq_last_error());
    lw[0].in_proj = in_keep;
    CHECK(m == NULL, "a rejected model was returned");
    /* accepted: out_proj, k, v and layer 2's MLP in R16 equal their row-major int4 twins */
    int32_t ids[TT];
    for (int i = 0; i < TT; i++) ids[i] = (i * 5 + 1) % V;
    static float a[TT * V], b[TT * V];
    const int act0 = uq_kernels_q4_act();
    for (int act = UQ_Q4_ACT_FP32; act <= UQ_Q4_ACT_INT8; act++) {
        CHECK_STATUS(uq_kernels_set_q4_act(act), UQ_OK);
        lw[0].out_proj = qo.rm, lw[1].k = qk.rm, lw[1].v = qv.rm, lw[2].gate = qg.rm, lw[2].up = qu.rm,
        lw[2].down = qd.rm;
        hy_logits(&c, &w, ids, a);
        lw[0].out_proj = qo.r16, lw[1].k = qk.r16, lw[1].v = qv.r16, lw[2].gate = qg.r16, lw[2].up = qu.r16,
        lw[2].down = qd.r16;
        hy_logits(&c, &w, ids, b);
        if (act == UQ_Q4_ACT_INT8)
            CHECK(memcmp(a, b, sizeof a) == 0, "W4A8: R16 and row-major logits differ (rel %g)", max_rel(b, a, TT * V));
        else
            CHECK(max_rel(b, a, TT * V) < SSM_ORDER_TOL, "W4A32: R16 vs row-major rel %g", max_rel(b, a, TT * V));
    }
    CHECK_STATUS(uq_kernels_set_q4_act(act0), UQ_OK);
}

/* A final mix F: logits = (RMSNorm(x) * final_norm) F^T W^T must equal the model without a mix whose head is
 * W F (products in double), to float rounding; a non-finite F entry is UQ_ERR_ARG. */
static void test_final_mix(void) {
    static tiny_w t;
    static float F[HID * HID], WF[V * HID], a[TT * V], b[TT * V];
    uq_hy_config c;
    uq_hy_layer_weights lw[L];
    uq_hy_weights w;
    tiny_build(&t, &c, lw, &w);
    unsigned long long sd = 777;
    fill(F, HID * HID, 0.4, 0.0, &sd);
    for (int v = 0; v < V; v++)
        for (int j = 0; j < HID; j++) {
            double acc = 0.0;
            for (int i = 0; i < HID; i++) acc += (double)t.emb[v * HID + i] * F[i * HID + j];
            WF[v * HID + j] = (float)acc;
        }
    int32_t ids[TT];
    for (int i = 0; i < TT; i++) ids[i] = (i * 3 + 2) % V;
    w.final_mix = F;  /* tied: the embedding table is also the head */
    hy_logits(&c, &w, ids, a);
    uq_hy_weights wr = w;
    wr.final_mix = NULL;
    wr.lm_head = lin(WF, V, HID);
    hy_logits(&c, &wr, ids, b);
    CHECK(max_rel(a, b, TT * V) < 1e-5, "final mix vs folded head: rel %g", max_rel(a, b, TT * V));
    uq_hy_weights wn = w;
    wn.final_mix = NULL;
    hy_logits(&c, &wn, ids, b);
    CHECK(max_rel(a, b, TT * V) > 1e-2, "the final mix changes nothing (rel %g)", max_rel(a, b, TT * V));
    /* float16 F (final_mix16, what quantized artifacts store): bit-identical to float32 F of the same values */
    static uint16_t F16[HID * HID];
    CHECK_STATUS(uq_convert_f32_to_f16(F, HID * HID, F16), UQ_OK);
    CHECK_STATUS(uq_convert_f16_to_f32(F16, HID * HID, F), UQ_OK);
    hy_logits(&c, &w, ids, a);
    uq_hy_weights wh = w;
    wh.final_mix = NULL;
    wh.final_mix16 = F16;
    hy_logits(&c, &wh, ids, b);
    CHECK(memcmp(a, b, sizeof a) == 0, "float16 final mix differs from float32 of the same values");
    uq_hy_model *m = NULL;
    wh.final_mix = F; /* both: refused */
    CHECK_STATUS(uq_hy_model_init(&c, &wh, &m), UQ_ERR_ARG);
    wh.final_mix = NULL;
    F16[7] = 0x7e00; /* NaN */
    CHECK_STATUS(uq_hy_model_init(&c, &wh, &m), UQ_ERR_ARG);
    CHECK(m == NULL && strstr(uq_last_error(), "final_mix: entry 7") != NULL, "message: %s", uq_last_error());
    F[5] = NAN;
    uq_clear_error();
    CHECK_STATUS(uq_hy_model_init(&c, &w, &m), UQ_ERR_ARG);
    CHECK(m == NULL && strstr(uq_last_error(), "final_mix") != NULL, "message: %s", uq_last_error());
}

void test_ssm(void) {
    test_final_mix();
    test_scan_kernels();
    test_tiny_model();
    test_ssm_stats();
    test_layer_forward();
    test_hybrid_int4_layouts();
}

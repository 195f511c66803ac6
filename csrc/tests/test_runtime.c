/* test_runtime.c -- C tests of the runtime area: segmented linear kernels (fp32, int4) against their _ref
 * twin and their determinism, a tiny transformer built in C (prefill = decode = pieces, bit for bit; keep
 * switching), NLL, sampling, and the statuses of bad arguments. */
#include "test.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* relative tolerance of float32 kernels vs float64 reference for reductions of a few hundred terms */
#define LIN_REL_TOL 1e-5


static double max_rel(const float *a, const float *b, int64_t n) {
    double e = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        e = d > e ? d : e;
        m = fabs(b[i]) > m ? fabs(b[i]) : m;
    }
    return m > 0 ? e / m : e;
}

/* fp32 activations (W4A32) against the float64 reference; W4A8 is tested in test_r16.c and below */
static void test_linear(void) {
    CHECK_STATUS(uq_kernels_set_q4_act(UQ_Q4_ACT_FP32), UQ_OK);
    unsigned long long s = 42;
    enum { ROWS = 30, COLS = 40, T = 5 };
    float W[ROWS * COLS], bias[ROWS], x[T * COLS], y[T * ROWS], yr[T * ROWS], y1[ROWS];
    uint8_t packed[ROWS * (COLS / 2)];
    uint16_t scales[ROWS * 16];
    uq_test_fill(W, ROWS * COLS, &s, 1.0);
    uq_test_fill(bias, ROWS, &s, 0.5);
    uq_test_fill(x, T * COLS, &s, 1.0);
    const int64_t cases[][5] = {/* nseg_out, keep_out, nseg_in, keep_in, group */
                                {1, 30, 1, 40, 8}, {3, 7, 2, 13, 3}, {5, 1, 4, 10, 10}, {1, 17, 1, 1, 7}, {2, 15, 2, 20, 20}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int64_t nso = cases[ci][0], ko = cases[ci][1], nsi = cases[ci][2], ki = cases[ci][3], g = cases[ci][4];
        int64_t nout = nso * ko, nin = nsi * ki, gps = (COLS / nsi + g - 1) / g;
        for (int kind = 0; kind < 2; kind++) {
            uq_linear L = {.kind = kind ? UQ_W_Q4 : UQ_W_F32, .rows = ROWS, .cols = COLS, .w = W, .bias = bias};
            if (kind) {
                uq_test_q4_quant_seg(W, ROWS, COLS, nsi, g, packed, scales);
                L.packed = packed;
                L.scales = scales;
                L.group = g;
                L.scale_cols = nsi * gps;
            }
            CHECK_STATUS(uq_linear_forward(&L, x, T, nso, ko, nsi, ki, y), UQ_OK);
            CHECK_STATUS(uq_linear_forward_ref(&L, x, T, nso, ko, nsi, ki, yr), UQ_OK);
            CHECK(max_rel(y, yr, T * nout) <= LIN_REL_TOL, "case %zu kind %d: rel err %g", ci, kind,
                  max_rel(y, yr, T * nout));
            /* determinism: one token at a time gives the same bits as T tokens */
            int same = 1;
            for (int64_t t = 0; t < T; t++) {
                uq_linear_forward(&L, x + t * nin, 1, nso, ko, nsi, ki, y1);
                same &= memcmp(y1, y + t * nout, (size_t)nout * sizeof(float)) == 0;
            }
            CHECK(same, "case %zu kind %d: T=1 differs from T=%d", ci, kind, T);
        }
    }
    /* large enough to run threaded: same bits on 1 thread and on several, at any T */
    {
        enum { BR = 256, BC = 300, BT = 3 };
        static float bw[BR * BC], bx[BT * BC], by[BT * BR], b1[BT * BR];
        static uint8_t bp[BR * BC / 2];
        static uint16_t bs[BR * 3];
        uq_test_fill(bw, BR * BC, &s, 1.0);
        uq_test_fill(bx, BT * BC, &s, 1.0);
        uq_test_q4_quant_seg(bw, BR, BC, 1, 128, bp, bs);
        uq_linear BL[2] = {{.kind = UQ_W_F32, .rows = BR, .cols = BC, .w = bw},
                           {.kind = UQ_W_Q4, .rows = BR, .cols = BC, .packed = bp, .scales = bs, .group = 128,
                            .scale_cols = 3}};
        for (int kind = 0; kind < 2; kind++) {
            uq_linear_forward(&BL[kind], bx, BT, 1, BR, 1, 250, by);
#ifdef _OPENMP
            int nt = omp_get_max_threads();
            omp_set_num_threads(1);
#endif
            for (int t = 0; t < BT; t++) uq_linear_forward(&BL[kind], bx + t * 250, 1, 1, BR, 1, 250, b1 + t * BR);
#ifdef _OPENMP
            omp_set_num_threads(nt);
#endif
            CHECK(memcmp(by, b1, sizeof by) == 0, "kind %d: threaded T=%d differs from 1 thread T=1", kind, BT);
        }
    }
    uq_linear L = {.kind = UQ_W_F32, .rows = ROWS, .cols = COLS, .w = W};
    CHECK_STATUS(uq_linear_forward(&L, x, 0, 1, 30, 1, 40, y), UQ_ERR_ARG);
    CHECK_STATUS(uq_linear_forward(&L, x, 1, 4, 7, 1, 40, y), UQ_ERR_SHAPE);  /* 4 does not divide 30 */
    CHECK_STATUS(uq_linear_forward(&L, x, 1, 1, 31, 1, 40, y), UQ_ERR_SHAPE); /* keep_out > rows */
    CHECK_STATUS(uq_linear_forward(&L, x, 1, 1, 30, 1, 0, y), UQ_ERR_SHAPE);
    CHECK_STATUS(uq_linear_forward(NULL, x, 1, 1, 30, 1, 40, y), UQ_ERR_ARG);
    uq_linear Q = {.kind = UQ_W_Q4, .rows = ROWS, .cols = COLS, .packed = packed, .scales = scales, .group = 8,
                   .scale_cols = 4};
    CHECK_STATUS(uq_linear_forward(&Q, x, 1, 1, 30, 1, 40, y), UQ_ERR_SHAPE); /* needs 5 scale columns */
    Q.scale_cols = 8;
    CHECK_STATUS(uq_linear_forward(&Q, x, 1, 1, 30, 8, 5, y), UQ_ERR_SHAPE); /* odd int4 segments */
}

/* ------------------------------------------------------------------------- tiny model ---- */

enum { V = 32, H = 16, NH = 4, NKV = 2, D = 8, I = 24, NL = 2 };

typedef struct {
    float emb[V * H], head[V * H], fnorm[H];
    float an[NL][H], mn[NL][H], q[NL][NH * D * H], k[NL][NKV * D * H], v[NL][NKV * D * H], o[NL][H * NH * D];
    float qb[NL][NH * D], g[NL][I * H], u[NL][I * H], dn[NL][H * I];
    int32_t fmap[NL][NKV * D / 2];
    uq_hy_layer_weights lw[NL];
    uq_hy_weights w;
    uq_hy_config c;
} tiny;

static uq_linear lin(const float *w, int64_t rows, int64_t cols, const float *b) {
    uq_linear L = {.kind = UQ_W_F32, .rows = rows, .cols = cols, .w = w, .bias = b};
    return L;
}

static void tiny_build(tiny *m) {
    unsigned long long s = 7;
    uq_test_fill(m->emb, V * H, &s, 1.0);
    uq_test_fill(m->head, V * H, &s, 0.5);
    for (int i = 0; i < H; i++) m->fnorm[i] = 1.0f + 0.1f * (float)uq_test_rand(&s);
    for (int l = 0; l < NL; l++) {
        for (int i = 0; i < H; i++) {
            m->an[l][i] = 1.0f + 0.1f * (float)uq_test_rand(&s);
            m->mn[l][i] = 1.0f + 0.1f * (float)uq_test_rand(&s);
        }
        uq_test_fill(m->q[l], NH * D * H, &s, 0.4);
        uq_test_fill(m->k[l], NKV * D * H, &s, 0.4);
        uq_test_fill(m->v[l], NKV * D * H, &s, 0.4);
        uq_test_fill(m->o[l], H * NH * D, &s, 0.3);
        uq_test_fill(m->qb[l], NH * D, &s, 0.1);
        uq_test_fill(m->g[l], I * H, &s, 0.4);
        uq_test_fill(m->u[l], I * H, &s, 0.4);
        uq_test_fill(m->dn[l], H * I, &s, 0.3);
        for (int gh = 0; gh < NKV; gh++)
            for (int j = 0; j < D / 2; j++) m->fmap[l][gh * D / 2 + j] = (j * 3 + gh + l) % (D / 2);
        uq_hy_layer_weights *w = &m->lw[l];
        memset(w, 0, sizeof *w);
        w->kind = UQ_HY_ATTN;
        w->norm = m->an[l];
        w->ffn_norm = m->mn[l];
        w->q = lin(m->q[l], NH * D, H, m->qb[l]);
        w->k = lin(m->k[l], NKV * D, H, NULL);
        w->v = lin(m->v[l], NKV * D, H, NULL);
        w->o = lin(m->o[l], H, NH * D, NULL);
        w->gate = lin(m->g[l], I, H, NULL);
        w->up = lin(m->u[l], I, H, NULL);
        w->down = lin(m->dn[l], H, I, NULL);
        w->freq_map = m->fmap[l];
    }
    m->w.embed = lin(m->emb, V, H, NULL);
    m->w.lm_head = lin(m->head, V, H, NULL);
    m->w.final_norm = m->fnorm;
    m->w.layers = m->lw;
    uq_hy_config c = {.vocab_size = V, .hidden_size = H, .intermediate_size = I, .mlp_act = UQ_HY_ACT_SILU_GATED,
                      .num_layers = NL, .num_heads = NH, .num_kv_heads = NKV, .head_dim = D, .rope_dim = D,
                      .norm_eps = 1e-6, .rope_theta = 10000.0, .rope_type = UQ_ROPE_LLAMA3, .rope_factor = 8.0,
                      .rope_low_freq_factor = 1.0, .rope_high_freq_factor = 4.0, .rope_original_max_pos = 4.0};
    m->c = c;
}

static void test_tiny_model(void) {
    static tiny tm;
    tiny_build(&tm);
    uq_hy_model *m = NULL, *m2 = NULL;
    uq_hy_state *s = NULL, *s2 = NULL;
    CHECK_STATUS(uq_hy_model_init(&tm.c, &tm.w, &m), UQ_OK);
    if (!m) return;
    CHECK_STATUS(uq_hy_state_init(m, 16, 4, &s), UQ_OK);
    if (!s) {
        uq_hy_model_free(m);
        return;
    }
    enum { T = 9 };
    const int32_t ids[T] = {3, 1, 4, 1, 5, 9, 2, 6, 31};
    static float full[T * V], step[T * V], part[T * V];
    CHECK_STATUS(uq_hy_forward(m, s, ids, T, T, full), UQ_OK); /* 3 chunks of 4 */
    CHECK(uq_hy_state_pos(s) == T, "pos %lld", (long long)uq_hy_state_pos(s));
    int finite = 1;
    for (int i = 0; i < T * V; i++) finite &= isfinite(full[i]) != 0;
    CHECK(finite, "non-finite logits");
    uq_hy_state_reset(s);
    for (int t = 0; t < T; t++) uq_hy_forward(m, s, ids + t, 1, 1, step + t * V);
    CHECK(memcmp(full, step, sizeof full) == 0, "decode token by token differs from prefill");
    uq_hy_state_reset(s);
    uq_hy_forward(m, s, ids, 2, 2, part);
    uq_hy_forward(m, s, ids + 2, 7, 3, part + 6 * V); /* only the last 3 rows */
    CHECK(memcmp(full + 6 * V, part + 6 * V, 3 * V * sizeof(float)) == 0, "pieces differ from whole");
    /* truncate: rewind, continue with other ids, rewind further and continue with the original ids */
    const int32_t alt[3] = {7, 8, 10};
    CHECK_STATUS(uq_hy_state_truncate(s, 4), UQ_OK);
    CHECK_STATUS(uq_hy_forward(m, s, alt, 3, 3, part), UQ_OK);
    CHECK_STATUS(uq_hy_state_truncate(s, 2), UQ_OK);
    CHECK(uq_hy_state_pos(s) == 2, "pos after truncate %lld", (long long)uq_hy_state_pos(s));
    CHECK_STATUS(uq_hy_forward(m, s, ids + 2, 7, 7, part), UQ_OK);
    CHECK(memcmp(full + 2 * V, part, 7 * V * sizeof(float)) == 0, "truncate then continue differs from whole");
    CHECK_STATUS(uq_hy_state_truncate(s, T + 1), UQ_ERR_RANGE);
    CHECK_STATUS(uq_hy_state_truncate(s, -1), UQ_ERR_RANGE);
    CHECK_STATUS(uq_hy_state_truncate(NULL, 0), UQ_ERR_ARG);
    CHECK(uq_hy_state_pos(s) == T, "failed truncate moved the position");

    /* embed + layers + head == forward */
    static float X[T * H], lg[T * V], z[T * I];
    uq_hy_capture cap = {.mlp_z = z};
    CHECK_STATUS(uq_hy_embed(m, ids, T, X), UQ_OK);
    for (int l = 0; l < NL; l++) CHECK_STATUS(uq_hy_layer_forward(m, s, l, X, T, X, l ? &cap : NULL), UQ_OK);
    CHECK_STATUS(uq_hy_head(m, s, X, T, lg), UQ_OK);
    CHECK(memcmp(lg, full, sizeof lg) == 0, "layer pieces differ from forward");
    CHECK(uq_hy_state_pos(s) == 0, "layer_forward must reset the state");

    /* reduced keep: equal to a model built on truncated weights, bit for bit */
    CHECK_STATUS(uq_hy_set_keep(m, 0, 10, 4, -1, -1), UQ_OK);
    CHECK_STATUS(uq_hy_set_keep(m, 1, -1, 6, -1, -1), UQ_OK);
    int64_t kp[4], st[4];
    CHECK_STATUS(uq_hy_get_keep(m, 1, kp, st), UQ_OK);
    const int64_t k = kp[0], r = kp[1], K = st[0], R = st[1];
    CHECK(k == I && r == 6 && K == I && R == D, "keep %lld %lld %lld %lld", (long long)k, (long long)r,
          (long long)K, (long long)R);
    static float a[T * V], b[T * V];
    uq_hy_state_reset(s);
    CHECK_STATUS(uq_hy_forward(m, s, ids, T, T, a), UQ_OK);
    static tiny tr;
    tr = tm;
    const int rk[NL] = {4, 6}, kk[NL] = {10, I};
    static float tq[NL][NH * D * H], tk[NL][NKV * D * H], tv[NL][NKV * D * H], to[NL][H * NH * D], tqb[NL][NH * D],
        tdn[NL][H * I];
    static int32_t tf[NL][NKV * D / 2];
    for (int l = 0; l < NL; l++) {
        int rr = rk[l], kq = kk[l];
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < rr; i++) {
                memcpy(tq[l] + (h * rr + i) * H, tm.q[l] + (h * D + i) * H, H * sizeof(float));
                tqb[l][h * rr + i] = tm.qb[l][h * D + i];
            }
        for (int h = 0; h < NKV; h++) {
            for (int i = 0; i < rr; i++) {
                memcpy(tk[l] + (h * rr + i) * H, tm.k[l] + (h * D + i) * H, H * sizeof(float));
                memcpy(tv[l] + (h * rr + i) * H, tm.v[l] + (h * D + i) * H, H * sizeof(float));
            }
            for (int j = 0; j < rr / 2; j++) tf[l][h * rr / 2 + j] = tm.fmap[l][h * D / 2 + j];
        }
        for (int row = 0; row < H; row++) {
            for (int h = 0; h < NH; h++)
                for (int i = 0; i < rr; i++) to[l][row * NH * rr + h * rr + i] = tm.o[l][row * NH * D + h * D + i];
            for (int i = 0; i < kq; i++) tdn[l][row * kq + i] = tm.dn[l][row * I + i];
        }
        tr.lw[l].q = lin(tq[l], NH * rr, H, tqb[l]);
        tr.lw[l].k = lin(tk[l], NKV * rr, H, NULL);
        tr.lw[l].v = lin(tv[l], NKV * rr, H, NULL);
        tr.lw[l].o = lin(to[l], H, NH * rr, NULL);
        tr.lw[l].gate = lin(tm.g[l], kq, H, NULL);
        tr.lw[l].up = lin(tm.u[l], kq, H, NULL);
        tr.lw[l].down = lin(tdn[l], H, kq, NULL);
        tr.lw[l].freq_map = tf[l];
    }
    tr.w.layers = tr.lw;
    CHECK_STATUS(uq_hy_model_init(&tr.c, &tr.w, &m2), UQ_OK);
    if (m2) {
        CHECK_STATUS(uq_hy_state_init(m2, 16, 16, &s2), UQ_OK);
        if (s2) {
            CHECK_STATUS(uq_hy_forward(m2, s2, ids, T, T, b), UQ_OK);
            CHECK(memcmp(a, b, sizeof a) == 0, "keep-reduced model differs from truncated model");
            CHECK_STATUS(uq_hy_forward(m, s2, ids, 1, 1, b), UQ_ERR_STATE); /* state of another model */
        }
    }

    /* bad arguments */
    float one[V];
    uq_hy_state_reset(s);
    const int32_t bad[2] = {1, V};
    CHECK_STATUS(uq_hy_forward(m, s, ids, 0, 1, one), UQ_ERR_ARG);
    CHECK_STATUS(uq_hy_forward(m, s, bad, 2, 1, one), UQ_ERR_RANGE);
    CHECK(strstr(uq_last_error(), "token id 32 at index 1") != NULL, "message: %s", uq_last_error());
    CHECK_STATUS(uq_hy_forward(m, s, ids, 2, 3, one), UQ_ERR_ARG);
    static int32_t many[17];
    CHECK_STATUS(uq_hy_forward(m, s, many, 17, 1, one), UQ_ERR_RANGE);
    CHECK(uq_hy_state_pos(s) == 0, "failed forward moved the position");
    CHECK_STATUS(uq_hy_set_keep(m, 1, 25, -1, -1, -1), UQ_ERR_RANGE);
    CHECK(strstr(uq_last_error(), "layer 1 MLP keep 25") != NULL, "message: %s", uq_last_error());
    CHECK_STATUS(uq_hy_set_keep(m, 0, -1, 3, -1, -1), UQ_ERR_RANGE);
    CHECK_STATUS(uq_hy_set_keep(m, 2, 4, 4, -1, -1), UQ_ERR_RANGE);
    CHECK_STATUS(uq_hy_layer_forward(m, s, 0, X, 17, X, NULL), UQ_ERR_RANGE);
    uq_hy_state *s3 = NULL;
    CHECK_STATUS(uq_hy_state_init(m, 0, 1, &s3), UQ_ERR_ARG);
    CHECK(s3 == NULL, "state returned on failure");

    uq_hy_model *bm = NULL;
    tiny_build(&tr);
    tr.lw[1].down = lin(tm.dn[1], H, I - 1, NULL);
    CHECK_STATUS(uq_hy_model_init(&tr.c, &tr.w, &bm), UQ_ERR_SHAPE);
    CHECK(strstr(uq_last_error(), "layer 1 down_proj") != NULL, "message: %s", uq_last_error());
    tiny_build(&tr);
    tr.fmap[0][3] = D / 2;
    CHECK_STATUS(uq_hy_model_init(&tr.c, &tr.w, &bm), UQ_ERR_RANGE);
    tiny_build(&tr);
    tr.c.num_kv_heads = 3;
    CHECK_STATUS(uq_hy_model_init(&tr.c, &tr.w, &bm), UQ_ERR_SHAPE);
    tiny_build(&tr);
    tr.c.rope_type = 7;
    CHECK_STATUS(uq_hy_model_init(&tr.c, &tr.w, &bm), UQ_ERR_UNSUPPORTED);
    CHECK(bm == NULL, "model returned on failure");

    uq_hy_state_free(s2);
    uq_hy_model_free(m2);
    uq_hy_state_free(s);
    uq_hy_model_free(m);
    uq_hy_state_free(NULL);
    uq_hy_model_free(NULL);
}

static void test_nll_sample(void) {
    const float lg[2 * 4] = {1.0f, 2.0f, 3.0f, 0.5f, -1.0f, 0.0f, 100.0f, 100.0f};
    const int32_t tgt[2] = {0, 3};
    double out[2];
    CHECK_STATUS(uq_nll(lg, 2, 4, tgt, out), UQ_OK);
    double want0 = log(exp(1.0) + exp(2.0) + exp(3.0) + exp(0.5)) - 1.0;
    double want1 = 100.0 + log(exp(-101.0) + exp(-100.0) + 2.0) - 100.0;
    CHECK(fabs(out[0] - want0) < 1e-12 && fabs(out[1] - want1) < 1e-12, "nll %g %g", out[0], out[1]);
    const int32_t badt[2] = {0, 4};
    CHECK_STATUS(uq_nll(lg, 2, 4, badt, out), UQ_ERR_RANGE);
    int32_t id = -1;
    uint64_t rng = 0;
    CHECK_STATUS(uq_sample(lg, 4, 0.0, 1.0, &rng, &id), UQ_OK);
    CHECK(id == 2 && rng == 0, "greedy id %d", (int)id);
    CHECK_STATUS(uq_sample(lg + 4, 4, 0.0, 1.0, &rng, &id), UQ_OK);
    CHECK(id == 2, "greedy tie must pick the first maximum, got %d", (int)id);
    uint64_t r1 = 99, r2 = 99;
    int32_t a[20], b[20];
    for (int i = 0; i < 20; i++) {
        uq_sample(lg, 4, 1.0, 0.95, &r1, &a[i]);
        uq_sample(lg, 4, 1.0, 0.95, &r2, &b[i]);
    }
    CHECK(memcmp(a, b, sizeof a) == 0, "sampling not deterministic for equal seeds");
    CHECK_STATUS(uq_sample(lg, 4, 1.0, 1.5, &rng, &id), UQ_ERR_ARG);
    CHECK_STATUS(uq_sample(lg, 4, 1.0, 0.5, NULL, &id), UQ_ERR_ARG);
}

/* ---------------------------------------------------------------------------- kernel paths ---- */

/* Every available kernel path against the float64 twin (fp32, fp16, int4 fp32-act), the int8-activation
 * path bit-exact across paths, fp16 == fp32 on the rounded weights bit for bit, and bad requests. */
static void test_kernel_paths(void) {
    static const char *paths[] = {"ref", "avx2", "avx512"};
    enum { R = 37, C = 300, TMAX = 17 };
    static float W[R * C], Wr[R * C], b[R], x[TMAX * C], y[TMAX * R], yr[TMAX * R], y8[3][TMAX * R];
    static uint16_t W16[R * C];
    static uint8_t packed[R * (C / 2)];
    static uint16_t scales[R * 64];
    unsigned long long s = 7;
    uq_test_fill(W, R * C, &s, 1.0);
    uq_test_fill(b, R, &s, 0.5);
    uq_test_fill(x, TMAX * C, &s, 1.0);
    CHECK_STATUS(uq_convert_f32_to_f16(W, R * C, W16), UQ_OK);
    CHECK_STATUS(uq_convert_f16_to_f32(W16, R * C, Wr), UQ_OK);
    const int64_t cases[][5] = {/* nseg_out, keep_out, nseg_in, keep_in, group */
                                {1, 37, 1, 300, 128}, {1, 37, 1, 129, 128}, {1, 1, 1, 1, 32}, {1, 5, 1, 31, 32},
                                {1, 36, 2, 150, 50}, {1, 20, 6, 45, 16}, {1, 11, 3, 99, 7}};
    const int64_t Ts[] = {1, 2, 5, 17};
    int have[3] = {1, 0, 0};
    uq_kernels_available("avx2", &have[1]);
    uq_kernels_available("avx512", &have[2]);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t nso = cases[ci][0], ko = cases[ci][1], nsi = cases[ci][2], ki = cases[ci][3], g = cases[ci][4];
        const int64_t gps = (C / nsi + g - 1) / g;
        uq_test_q4_quant_seg(W, R, C, nsi, g, packed, scales);
        uq_linear lf = {.kind = UQ_W_F32, .rows = R, .cols = C, .w = W, .bias = b};
        uq_linear lr = {.kind = UQ_W_F32, .rows = R, .cols = C, .w = Wr, .bias = b};
        uq_linear lh = {.kind = UQ_W_F16, .rows = R, .cols = C, .w16 = W16, .bias = b};
        uq_linear lq = {.kind = UQ_W_Q4, .rows = R, .cols = C, .packed = packed, .scales = scales, .group = g,
                        .scale_cols = nsi * gps, .bias = b};
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int64_t T = Ts[ti], n = T * nso * ko;
            for (int p = 0; p < 3; p++) {
                if (!have[p]) continue;
                CHECK_STATUS(uq_kernels_set(paths[p]), UQ_OK);
                CHECK_STATUS(uq_kernels_set_q4_act(UQ_Q4_ACT_FP32), UQ_OK);
                const uq_linear *ls[3] = {&lf, &lh, &lq};
                for (int k = 0; k < 3; k++) {
                    CHECK_STATUS(uq_linear_forward(ls[k], x, T, nso, ko, nsi, ki, y), UQ_OK);
                    CHECK_STATUS(uq_linear_forward_ref(ls[k], x, T, nso, ko, nsi, ki, yr), UQ_OK);
                    double e = max_rel(y, yr, n);
                    CHECK(e < LIN_REL_TOL, "path %s kind %d case %zu T %lld: rel err %g", paths[p], k, ci,
                          (long long)T, e);
                }
                CHECK_STATUS(uq_linear_forward(&lh, x, T, nso, ko, nsi, ki, y), UQ_OK);
                CHECK_STATUS(uq_linear_forward(&lr, x, T, nso, ko, nsi, ki, yr), UQ_OK);
                CHECK(memcmp(y, yr, (size_t)n * sizeof(float)) == 0, "path %s case %zu: fp16 != fp32 on rounded W",
                      paths[p], ci);
                CHECK_STATUS(uq_kernels_set_q4_act(UQ_Q4_ACT_INT8), UQ_OK);
                CHECK_STATUS(uq_linear_forward(&lq, x, T, nso, ko, nsi, ki, y8[p]), UQ_OK);
                if (p > 0)
                    CHECK(memcmp(y8[p], y8[0], (size_t)n * sizeof(float)) == 0,
                          "int8 activations: path %s differs from ref (case %zu, T %lld)", paths[p], ci, (long long)T);
                CHECK_STATUS(uq_linear_forward_ref(&lq, x, T, nso, ko, nsi, ki, yr), UQ_OK);
                double e8 = max_rel(y8[p], yr, n);
                CHECK(e8 < 3e-2, "int8 activations case %zu: rel err %g vs fp32", ci, e8);
            }
        }
    }
    CHECK_STATUS(uq_kernels_set("bogus"), UQ_ERR_ARG);
    CHECK(strstr(uq_last_error(), "bogus") != NULL, "kernels_set message: %s", uq_last_error());
    CHECK_STATUS(uq_kernels_set_q4_act(7), UQ_ERR_ARG);
    /* the default (auto): int8 activations where the CPU has int8 dot products (AVX2 or AVX-512 VNNI) */
    CHECK_STATUS(uq_kernels_set_q4_act(UQ_Q4_ACT_AUTO), UQ_OK);
    CHECK(uq_kernels_q4_act() == ((have[1] || have[2]) ? UQ_Q4_ACT_INT8 : UQ_Q4_ACT_FP32), "auto q4 act %d",
          uq_kernels_q4_act());
    CHECK_STATUS(uq_kernels_set_threads(0), UQ_ERR_ARG);
    double gb = 0;
    CHECK_STATUS(uq_bench_read_bw(100, 1, 1, &gb), UQ_ERR_ARG);
    for (int p = 1; p < 3; p++)
        if (!have[p]) CHECK_STATUS(uq_kernels_set(paths[p]), UQ_ERR_UNSUPPORTED);
    CHECK_STATUS(uq_kernels_set("auto"), UQ_OK);
    CHECK_STATUS(uq_kernels_set_q4_act(UQ_Q4_ACT_FP32), UQ_OK);
}

/* Row-major W4A8 with several kept output segments (a row block spans a segment boundary: its rows are not
 * consecutive, so the scales are converted row by row) and with one whole segment (one conversion per block), groups
 * of one and two 64-column blocks with short tails: every vector path equals ref bit for bit. */
static void test_q8_rowmajor_segments(void) {
    static const char *paths[] = {"ref", "avx2", "avx512"};
    enum { R = 48, C = 200, T = 3 };
    static float W[R * C], b[R], x[T * C], y[3][T * R];
    static uint8_t packed[R * (C / 2)];
    static uint16_t scales[R * 32];
    unsigned long long s = 11;
    uq_test_fill(W, R * C, &s, 1.0);
    uq_test_fill(b, R, &s, 0.5);
    uq_test_fill(x, T * C, &s, 1.0);
    const int64_t cases[][4] = {/* nseg_out, keep_out, keep_in, group */
                                {3, 7, 200, 64}, {3, 13, 136, 128}, {1, 48, 200, 128}, {1, 45, 190, 8}, {2, 3, 72, 64}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t nso = cases[ci][0], ko = cases[ci][1], ki = cases[ci][2], g = cases[ci][3];
        uq_test_q4_quant_seg(W, R, C, 1, g, packed, scales);
        uq_linear lq = {.kind = UQ_W_Q4, .rows = R, .cols = C, .packed = packed, .scales = scales, .group = g,
                        .scale_cols = (C + g - 1) / g, .bias = b};
        for (int64_t t = 1; t <= T; t += T - 1)
            for (int p = 0; p < 3; p++) {
                int av = 0;
                uq_kernels_available(paths[p], &av);
                if (!av) continue;
                CHECK_STATUS(uq_kernels_set(paths[p]), UQ_OK);
                CHECK_STATUS(uq_kernels_set_q4_act(UQ_Q4_ACT_INT8), UQ_OK);
                CHECK_STATUS(uq_linear_forward(&lq, x, t, nso, ko, 1, ki, y[p]), UQ_OK);
                if (p > 0)
                    CHECK(memcmp(y[p], y[0], (size_t)(t * nso * ko) * sizeof(float)) == 0,
                          "row-major W4A8 segments: path %s differs from ref (case %zu, T %lld)", paths[p], ci,
                          (long long)t);
            }
    }
    CHECK_STATUS(uq_kernels_set("auto"), UQ_OK);
    CHECK_STATUS(uq_kernels_set_q4_act(UQ_Q4_ACT_FP32), UQ_OK);
}

void test_runtime(void) {
    test_linear();
    test_tiny_model();
    test_nll_sample();
    test_kernel_paths();
    test_q8_rowmajor_segments();
}

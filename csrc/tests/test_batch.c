/* test_batch.c -- batched decoding (uq_hy_decode_batch) of an all-attention (Llama-shaped) model: sequences joining
 * and leaving between steps give the logits of decoding each alone, bit for bit, with float32 and float16 KV caches;
 * bad batches are rejected before any state moves. The float16 cache: logits close to the float32 cache's, states
 * moved between the two dtypes, half the cache bytes. */
#include "test.h"

enum { BV = 40, BH = 16, BNH = 4, BNKV = 2, BD = 8, BI = 24, BNL = 2, BSEQ = 12 };

typedef struct {
    float emb[BV * BH], head[BV * BH], fnorm[BH];
    float an[BNL][BH], mn[BNL][BH], q[BNL][BNH * BD * BH], k[BNL][BNKV * BD * BH], v[BNL][BNKV * BD * BH];
    float o[BNL][BH * BNH * BD], g[BNL][BI * BH], u[BNL][BI * BH], dn[BNL][BH * BI], kb[BNL][BNKV * BD];
    uq_hy_layer_weights lw[BNL];
    uq_hy_weights w;
    uq_hy_config c;
} bmodel;

static uq_linear blin(const float *w, int64_t rows, int64_t cols, const float *b) {
    uq_linear L = {.kind = UQ_W_F32, .rows = rows, .cols = cols, .w = w, .bias = b};
    return L;
}

static void bmodel_build(bmodel *m) {
    unsigned long long s = 11;
    uq_test_fill(m->emb, BV * BH, &s, 1.0);
    uq_test_fill(m->head, BV * BH, &s, 0.5);
    for (int i = 0; i < BH; i++) m->fnorm[i] = 1.0f + 0.1f * (float)uq_test_rand(&s);
    for (int l = 0; l < BNL; l++) {
        for (int i = 0; i < BH; i++) {
            m->an[l][i] = 1.0f + 0.1f * (float)uq_test_rand(&s);
            m->mn[l][i] = 1.0f + 0.1f * (float)uq_test_rand(&s);
        }
        uq_test_fill(m->q[l], BNH * BD * BH, &s, 0.4);
        uq_test_fill(m->k[l], BNKV * BD * BH, &s, 0.4);
        uq_test_fill(m->v[l], BNKV * BD * BH, &s, 0.4);
        uq_test_fill(m->o[l], BH * BNH * BD, &s, 0.3);
        uq_test_fill(m->g[l], BI * BH, &s, 0.4);
        uq_test_fill(m->u[l], BI * BH, &s, 0.4);
        uq_test_fill(m->dn[l], BH * BI, &s, 0.3);
        uq_test_fill(m->kb[l], BNKV * BD, &s, 0.1);
        uq_hy_layer_weights *w = &m->lw[l];
        memset(w, 0, sizeof *w);
        w->kind = UQ_HY_ATTN;
        w->norm = m->an[l];
        w->ffn_norm = m->mn[l];
        w->q = blin(m->q[l], BNH * BD, BH, NULL);
        w->k = blin(m->k[l], BNKV * BD, BH, m->kb[l]);
        w->v = blin(m->v[l], BNKV * BD, BH, NULL);
        w->o = blin(m->o[l], BH, BNH * BD, NULL);
        w->gate = blin(m->g[l], BI, BH, NULL);
        w->up = blin(m->u[l], BI, BH, NULL);
        w->down = blin(m->dn[l], BH, BI, NULL);
    }
    m->w.embed = blin(m->emb, BV, BH, NULL);
    m->w.lm_head = blin(m->head, BV, BH, NULL);
    m->w.final_norm = m->fnorm;
    m->w.layers = m->lw;
    uq_hy_config c = {.vocab_size = BV, .hidden_size = BH, .intermediate_size = BI, .mlp_act = UQ_HY_ACT_SILU_GATED,
                      .num_layers = BNL, .num_heads = BNH, .num_kv_heads = BNKV, .head_dim = BD, .rope_dim = BD,
                      .norm_eps = 1e-6, .rope_theta = 10000.0};
    m->c = c;
}

static void batch_case(int32_t kv) {
    static bmodel bm;
    bmodel_build(&bm);
    uq_hy_model *m = NULL;
    CHECK_STATUS(uq_hy_model_init(&bm.c, &bm.w, &m), UQ_OK);
    if (!m) return;
    CHECK_STATUS(uq_hy_set_keep(m, 1, 16, 6, -1, -1), UQ_OK); /* a reduced layer */
    enum { NS = 3 };
    uq_hy_state *bs[NS] = {0}, *one = NULL;
    uq_hy_batch *b = NULL;
    CHECK_STATUS(uq_hy_batch_init(m, 0, &b), UQ_ERR_ARG);
    CHECK_STATUS(uq_hy_batch_init(m, NS, &b), UQ_OK);
    CHECK(uq_hy_batch_max(b) == NS && uq_hy_batch_bytes(b) > 0, "batch info");
    CHECK_STATUS(uq_hy_state_init_kv(m, BSEQ, 4, kv, &one), UQ_OK);
    for (int i = 0; i < NS; i++) CHECK_STATUS(uq_hy_state_init_kv(m, BSEQ, 4, kv, &bs[i]), UQ_OK);
    if (!b || !one || !bs[0] || !bs[1] || !bs[2]) goto done;
    /* sequence i: prompt of plen[i] tokens, joins before step join[i], decodes nstep[i] tokens */
    const int plen[NS] = {3, 1, 5}, join[NS] = {0, 1, 2}, nstep[NS] = {6, 2, 4};
    static float got[NS][8][BV], want[BV], lg[NS * BV];
    int32_t feed[NS][8];
    for (int i = 0; i < NS; i++)
        for (int t = 0; t < 8; t++) feed[i][t] = (int32_t)((7 * i + 5 * t + 3) % BV);
    int done_[NS] = {0};
    for (int step = 0; step < 8; step++) {
        uq_hy_state *live[NS];
        int32_t ids[NS];
        int who[NS], n = 0;
        for (int i = 0; i < NS; i++) {
            if (join[i] == step) {
                int32_t p[5] = {1, 2, 3, 4, 5};
                CHECK_STATUS(uq_hy_forward(m, bs[i], p, plen[i], 1, want), UQ_OK);
            }
            if (join[i] <= step && done_[i] < nstep[i]) {
                live[n] = bs[i];
                ids[n] = feed[i][done_[i]];
                who[n++] = i;
            }
        }
        if (!n) continue;
        CHECK_STATUS(uq_hy_decode_batch(m, b, live, ids, n, lg), UQ_OK);
        for (int k = 0; k < n; k++) memcpy(got[who[k]][done_[who[k]]++], lg + k * BV, sizeof want);
    }
    int same = 1;
    for (int i = 0; i < NS; i++) {
        int32_t p[5] = {1, 2, 3, 4, 5};
        uq_hy_state_reset(one);
        uq_hy_forward(m, one, p, plen[i], 1, want);
        for (int t = 0; t < nstep[i]; t++) {
            uq_hy_forward(m, one, &feed[i][t], 1, 1, want);
            same &= memcmp(want, got[i][t], sizeof want) == 0;
        }
        CHECK(uq_hy_state_pos(bs[i]) == plen[i] + nstep[i], "seq %d pos %lld", i, (long long)uq_hy_state_pos(bs[i]));
    }
    CHECK(same, "batched logits differ from lone decoding (KV dtype %d)", (int)kv);
    /* errors leave every state where it was */
    int32_t ok2[2] = {1, 2}, bad2[2] = {1, BV};
    uq_hy_state *dup[2] = {bs[0], bs[0]}, *pair[2] = {bs[0], bs[1]}, *nul[2] = {bs[0], NULL};
    int64_t p0 = uq_hy_state_pos(bs[0]), p1 = uq_hy_state_pos(bs[1]);
    CHECK_STATUS(uq_hy_decode_batch(m, b, dup, ok2, 2, lg), UQ_ERR_ARG);
    CHECK_STATUS(uq_hy_decode_batch(m, b, nul, ok2, 2, lg), UQ_ERR_ARG);
    CHECK_STATUS(uq_hy_decode_batch(m, b, pair, bad2, 2, lg), UQ_ERR_RANGE);
    CHECK_STATUS(uq_hy_decode_batch(m, b, pair, ok2, 0, lg), UQ_ERR_ARG);
    CHECK_STATUS(uq_hy_decode_batch(m, b, pair, ok2, NS + 1, lg), UQ_ERR_ARG);
    CHECK_STATUS(uq_hy_decode_batch(m, b, pair, ok2, 2, NULL), UQ_ERR_ARG);
    CHECK(uq_hy_state_pos(bs[0]) == p0 && uq_hy_state_pos(bs[1]) == p1, "state moved on error");
    while (uq_hy_state_pos(bs[0]) < BSEQ) CHECK_STATUS(uq_hy_decode_batch(m, b, pair, ok2, 1, lg), UQ_OK);
    CHECK_STATUS(uq_hy_decode_batch(m, b, pair, ok2, 2, lg), UQ_ERR_RANGE); /* sequence 0 is full */
    CHECK(uq_hy_state_pos(bs[1]) == p1, "state moved on a full cache");
    {
        uq_hy_model *m2 = NULL;
        uq_hy_batch *b2 = NULL;
        CHECK_STATUS(uq_hy_model_init(&bm.c, &bm.w, &m2), UQ_OK);
        if (m2) {
            CHECK_STATUS(uq_hy_batch_init(m2, 1, &b2), UQ_OK);
            CHECK_STATUS(uq_hy_decode_batch(m, b2, pair + 1, ok2, 1, lg), UQ_ERR_STATE);
            CHECK_STATUS(uq_hy_decode_batch(m2, b2, pair + 1, ok2, 1, lg), UQ_ERR_STATE);
            uq_hy_batch_free(b2);
            uq_hy_model_free(m2);
        }
    }
done:
    for (int i = 0; i < NS; i++) uq_hy_state_free(bs[i]);
    uq_hy_state_free(one);
    uq_hy_batch_free(b);
    uq_hy_model_free(m);
    uq_hy_batch_free(NULL);
}

/* The float16 KV cache against the float32 one on the same model: prefill + decode logits within a tight tolerance
 * (K / V rounded to 11 significant bits), KV bytes halved, a bad dtype refused, and a sequence moved between the
 * dtypes (uq_hy_state_transfer) continuing as the state it was moved into computes. */
static void kv16_case(void) {
    static bmodel bm;
    bmodel_build(&bm);
    uq_hy_model *m = NULL;
    CHECK_STATUS(uq_hy_model_init(&bm.c, &bm.w, &m), UQ_OK);
    if (!m) return;
    uq_hy_state *s32 = NULL, *s16 = NULL, *x = NULL, *bad = (uq_hy_state *)&bm;
    CHECK_STATUS(uq_hy_state_init_kv(m, BSEQ, 4, 2, &bad), UQ_ERR_ARG);
    CHECK(bad == NULL, "a refused state must be NULL");
    CHECK_STATUS(uq_hy_state_init_kv(m, BSEQ, 4, UQ_KV_F32, &s32), UQ_OK);
    CHECK_STATUS(uq_hy_state_init_kv(m, BSEQ, 4, UQ_KV_F16, &s16), UQ_OK);
    CHECK_STATUS(uq_hy_state_init_kv(m, BSEQ, 4, UQ_KV_F16, &x), UQ_OK);
    if (!s32 || !s16 || !x) goto done;
    CHECK(uq_hy_state_kv_dtype(s32) == UQ_KV_F32 && uq_hy_state_kv_dtype(s16) == UQ_KV_F16, "kv dtypes");
    const size_t kb32 = uq_hy_state_kv_bytes(s32), kb16 = uq_hy_state_kv_bytes(s16);
    CHECK(kb32 == (size_t)(2 * BNL * BNKV * BD * BSEQ) * sizeof(float) && kb16 * 2 == kb32, "kv bytes %zu / %zu",
          kb32, kb16);
    CHECK(uq_hy_state_bytes(s32) - uq_hy_state_bytes(s16) == kb32 - kb16, "state bytes follow the cache");
    static float a[5 * BV], b[5 * BV];
    int32_t p[5] = {3, 1, 4, 1, 5};
    double worst = 0.0, top = 0.0;
    int differ = 0;
    CHECK_STATUS(uq_hy_forward(m, s32, p, 5, 5, a), UQ_OK);
    CHECK_STATUS(uq_hy_forward(m, s16, p, 5, 5, b), UQ_OK);
    for (int step = 0; step < 6; step++) {
        for (int i = 0; i < (step ? 1 : 5) * BV; i++) {
            worst = fmax(worst, fabs((double)a[i] - b[i]));
            top = fmax(top, fabs((double)a[i]));
            differ |= a[i] != b[i];
        }
        int32_t id = (int32_t)((7 * step + 2) % BV);
        CHECK_STATUS(uq_hy_forward(m, s32, &id, 1, 1, a), UQ_OK);
        CHECK_STATUS(uq_hy_forward(m, s16, &id, 1, 1, b), UQ_OK);
    }
    CHECK(differ && worst <= 2e-3 * top, "float16 cache logits off by %g (largest logit %g)", worst, top);
    /* float16 -> float32 -> float16 is exact: the sequence moved there and back continues bit for bit as s16 does */
    uq_hy_state *y = NULL;
    CHECK_STATUS(uq_hy_state_init_kv(m, BSEQ, 4, UQ_KV_F32, &y), UQ_OK);
    if (!y) goto done;
    CHECK_STATUS(uq_hy_state_transfer(s16, y), UQ_OK);
    CHECK_STATUS(uq_hy_state_transfer(y, x), UQ_OK);
    uq_hy_state_free(y);
    CHECK(uq_hy_state_pos(x) == uq_hy_state_pos(s16), "moved position");
    int32_t id = 9;
    CHECK_STATUS(uq_hy_forward(m, x, &id, 1, 1, a), UQ_OK);
    CHECK_STATUS(uq_hy_forward(m, s16, &id, 1, 1, b), UQ_OK);
    CHECK(memcmp(a, b, BV * sizeof(float)) == 0, "a float16 cache moved through float32 and back differs");
    /* float32 -> float16 rounds the cache: the moved sequence continues close to the float32 one */
    CHECK_STATUS(uq_hy_state_transfer(s32, x), UQ_OK);
    id = 4;
    CHECK_STATUS(uq_hy_forward(m, s32, &id, 1, 1, a), UQ_OK);
    CHECK_STATUS(uq_hy_forward(m, x, &id, 1, 1, b), UQ_OK);
    worst = 0.0;
    for (int i = 0; i < BV; i++) worst = fmax(worst, fabs((double)a[i] - b[i]));
    CHECK(worst <= 2e-3 * top, "float32 -> float16 moved state off by %g", worst);
done:
    uq_hy_state_free(s32);
    uq_hy_state_free(s16);
    uq_hy_state_free(x);
    uq_hy_model_free(m);
}

void test_batch(void) {
    batch_case(UQ_KV_F32);
    batch_case(UQ_KV_F16);
    kv16_case();
}

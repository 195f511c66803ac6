/* test_batch.c -- batched decoding (uq_hy_decode_batch) of an all-attention (Llama-shaped) model: sequences joining
 * and leaving between steps give the logits of decoding each alone, bit for bit; bad batches are rejected before any
 * state moves. */
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

void test_batch(void) {
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
    CHECK_STATUS(uq_hy_state_init(m, BSEQ, 4, &one), UQ_OK);
    for (int i = 0; i < NS; i++) CHECK_STATUS(uq_hy_state_init(m, BSEQ, 4, &bs[i]), UQ_OK);
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
    CHECK(same, "batched logits differ from lone decoding");
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

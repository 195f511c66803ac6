/* test_r16.c -- the R16 kernel layout of int4 weights: repacking (the float64 twin sees the same weight), every
 * kernel path against the ref path bit for bit (fp32 activations: the same FMA sequence; int8 activations: integer
 * sums, also equal to the row-major W4A8 kernels), the float64 twin within a reduction-length tolerance, one
 * token at a time = T tokens = 1 thread, a truncated stored weight = the full weight at that keep, and statuses. */
#include "test.h"

#include "../kernels/kernels.h"

#include "../kernels/kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* |y - y64| <= R16_TOL_FACTOR * n * eps32 * (sum |w x| + |b|): float32 FMA chains of n terms */
#define R16_TOL_FACTOR 2.0

typedef struct {
    uq_linear rm, r16;
    uint8_t *p, *pr;
    uint16_t *s, *sr; /* float16 scales, as the runtime keeps them */
} q4pair;

static int make_pair(const float *W, int64_t rows, int64_t cols, int64_t nso, int64_t nsi, int64_t g,
                     const float *bias, q4pair *q) {
    int64_t gps = (cols / nsi + g - 1) / g, nblk, bb, ns;
    memset(q, 0, sizeof *q);
    if (uq_q4_r16_size(rows, cols, g, nsi * gps, nso, nsi, &nblk, &bb, &ns) != UQ_OK) return -1;
    q->p = malloc((size_t)(rows * UQ_Q4_ROW_BYTES(cols)));
    q->s = malloc((size_t)(rows * nsi * gps) * sizeof(uint16_t));
    q->pr = malloc((size_t)(nblk * bb));
    q->sr = malloc((size_t)ns * sizeof(uint16_t));
    if (!q->p || !q->s || !q->pr || !q->sr) return -1;
    uq_test_q4_quant_seg(W, rows, cols, nsi, g, q->p, q->s);
    q->rm = (uq_linear){.kind = UQ_W_Q4, .rows = rows, .cols = cols, .packed = q->p, .scales = q->s, .group = g,
                        .scale_cols = nsi * gps, .bias = bias};
    return uq_test_r16_of(&q->rm, nso, nsi, q->pr, q->sr, &q->r16) == UQ_OK ? 0 : -1;
}

static void free_pair(q4pair *q) {
    free(q->p);
    free(q->s);
    free(q->pr);
    free(q->sr);
}

/* Makes the kernel path `name` current when the CPU has it; 0 (nothing changed) when it does not. */
static int select_path(const char *name) {
    int av = 0;
    uq_kernels_available(name, &av);
    if (av) uq_kernels_set(name);
    return av;
}

static void test_r16_paths(void) {
    const char *paths[] = {"ref", "avx2", "avx512"};
    /* rows, cols, nseg_out, keep_out, nseg_in, keep_in, group: rows not multiples of 16, keeps that cut row
     * blocks, chunks (keep_in % 8) and groups, head segments, groups 8 / 16 / 24 / 128, one group longer than
     * the segment */
    const int64_t cases[][7] = {
        {16, 128, 1, 16, 1, 128, 128}, {1, 8, 1, 1, 1, 8, 8},        {7, 31, 1, 7, 1, 31, 8},
        {33, 129, 1, 33, 1, 129, 128}, {40, 512, 1, 23, 1, 320, 128}, {48, 80, 2, 10, 2, 36, 16},
        {64, 256, 4, 9, 4, 42, 24},   {96, 96, 3, 32, 1, 96, 200},   {130, 256, 2, 50, 2, 120, 128},
        {24, 64, 3, 5, 2, 13, 8},
    };
    const int64_t Ts[] = {1, 2, 3, 5, 9, 70};
    unsigned long long seed = 7;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t rows = cases[ci][0], cols = cases[ci][1], nso = cases[ci][2], ko = cases[ci][3];
        const int64_t nsi = cases[ci][4], ki = cases[ci][5], g = cases[ci][6], nout = nso * ko, nin = nsi * ki;
        float *W = malloc((size_t)(rows * cols) * sizeof(float)), *b = malloc((size_t)rows * sizeof(float));
        float *x = malloc((size_t)(70 * nin) * sizeof(float));
        float *yref = malloc((size_t)(70 * nout) * sizeof(float)), *y = malloc((size_t)(70 * nout) * sizeof(float));
        float *y64 = malloc((size_t)(70 * nout) * sizeof(float)), *yrm = malloc((size_t)(70 * nout) * sizeof(float));
        q4pair q;
        if (!W || !b || !x || !yref || !y || !y64 || !yrm) {
            CHECK(0, "case %zu: out of memory", ci);
            return;
        }
        uq_test_fill(W, rows * cols, &seed, 1.0);
        uq_test_fill(b, rows, &seed, 0.5);
        uq_test_fill(x, 70 * nin, &seed, 1.0);
        CHECK(make_pair(W, rows, cols, nso, nsi, g, b, &q) == 0, "case %zu: setup", ci);
        for (int act = 0; act < 2; act++) {
            CHECK_STATUS(uq_kernels_set_q4_act(act ? UQ_Q4_ACT_INT8 : UQ_Q4_ACT_FP32), UQ_OK);
            for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                const int64_t T = Ts[ti];
                CHECK_STATUS(uq_kernels_set("ref"), UQ_OK);
                CHECK_STATUS(uq_linear_forward(&q.r16, x, T, nso, ko, nsi, ki, yref), UQ_OK);
                if (act == 0) {
                    CHECK_STATUS(uq_linear_forward_ref(&q.r16, x, T, nso, ko, nsi, ki, y64), UQ_OK);
                    CHECK_STATUS(uq_linear_forward_ref(&q.rm, x, T, nso, ko, nsi, ki, yrm), UQ_OK);
                    CHECK(memcmp(y64, yrm, (size_t)(T * nout) * sizeof(float)) == 0,
                          "case %zu: float64 twin of the R16 weight differs from the row-major one", ci);
                    int ok = 1;
                    for (int64_t t = 0; t < T && ok; t++)
                        for (int64_t o = 0; o < nout && ok; o++) {
                            const int64_t row = (o / ko) * (rows / nso) + o % ko;
                            double mag = fabs(b[row]);
                            for (int64_t s = 0; s < nsi; s++)
                                for (int64_t c = 0; c < ki; c++) {
                                    const int64_t col = s * (cols / nsi) + c;
                                    mag += fabs((double)W[row * cols + col] * 1.1 * x[t * nin + s * ki + c]);
                                }
                            ok = fabs((double)yref[t * nout + o] - y64[t * nout + o]) <=
                                 R16_TOL_FACTOR * (double)(nin + 1) * 1.1920929e-7 * mag + 1e-30;
                        }
                    CHECK(ok, "case %zu T %lld: R16 fp32 outside the float64 tolerance", ci, (long long)T);
                }
                for (size_t pi = 0; pi < 3; pi++) {
                    int av = 0;
                    uq_kernels_available(paths[pi], &av);
                    if (!av) continue;
                    CHECK_STATUS(uq_kernels_set(paths[pi]), UQ_OK);
                    CHECK_STATUS(uq_linear_forward(&q.r16, x, T, nso, ko, nsi, ki, y), UQ_OK);
                    CHECK(memcmp(y, yref, (size_t)(T * nout) * sizeof(float)) == 0,
                          "case %zu act %d T %lld path %s: differs from ref", ci, act, (long long)T, paths[pi]);
                    if (act) { /* W4A8 on R16 = W4A8 on the row-major weight, bit for bit */
                        CHECK_STATUS(uq_linear_forward(&q.rm, x, T, nso, ko, nsi, ki, yrm), UQ_OK);
                        CHECK(memcmp(y, yrm, (size_t)(T * nout) * sizeof(float)) == 0,
                              "case %zu T %lld path %s: R16 W4A8 differs from row-major W4A8", ci, (long long)T,
                              paths[pi]);
                    }
                    if (T == 9) { /* one token at a time, one thread */
                        int same = 1;
#ifdef _OPENMP
                        int nt = omp_get_max_threads();
                        omp_set_num_threads(1);
#endif
                        for (int64_t t = 0; t < T; t++) {
                            uq_linear_forward(&q.r16, x + t * nin, 1, nso, ko, nsi, ki, yrm);
                            same &= memcmp(yrm, y + t * nout, (size_t)nout * sizeof(float)) == 0;
                        }
#ifdef _OPENMP
                        omp_set_num_threads(nt);
#endif
                        CHECK(same, "case %zu act %d path %s: T=1 differs from T=9", ci, act, paths[pi]);
                    }
                }
            }
        }
        CHECK_STATUS(uq_kernels_set("auto"), UQ_OK);
        free_pair(&q);
        free(W);
        free(b);
        free(x);
        free(yref);
        free(y);
        free(y64);
        free(yrm);
    }
    CHECK_STATUS(uq_kernels_set_q4_act(UQ_Q4_ACT_FP32), UQ_OK);
}

/* A weight stored truncated to (ko, ki) (what loading an artifact at a rate reads) gives the bits of the full
 * weight at that keep, on every path and activation mode. */
static void test_r16_truncated(void) {
    enum { R = 48, C = 256, G = 128, KO = 23, KI = 88, T = 6 };
    static float W[R * C], x[T * KI], yf[T * KO], yt[T * KO];
    unsigned long long seed = 11;
    uq_test_fill(W, R * C, &seed, 1.0);
    uq_test_fill(x, T * KI, &seed, 1.0);
    q4pair full, tr;
    CHECK(make_pair(W, R, C, 1, 1, G, NULL, &full) == 0, "setup full");
    /* the truncated weight: the same codes and scales, as the artifact reader would slice them */
    uint8_t *pt = malloc((size_t)(KO * UQ_Q4_ROW_BYTES(KI)));
    uint16_t *st = malloc((size_t)KO * sizeof(uint16_t));
    for (int64_t r = 0; r < KO; r++) {
        memcpy(pt + r * UQ_Q4_ROW_BYTES(KI), full.p + r * UQ_Q4_ROW_BYTES(C), (size_t)UQ_Q4_ROW_BYTES(KI));
        st[r] = full.s[r * 2];
    }
    uq_linear rmt = {.kind = UQ_W_Q4, .rows = KO, .cols = KI, .packed = pt, .scales = st, .group = G, .scale_cols = 1};
    int64_t nblk, bb, ns;
    CHECK_STATUS(uq_q4_r16_size(KO, KI, G, 1, 1, 1, &nblk, &bb, &ns), UQ_OK);
    uint8_t *prt = malloc((size_t)(nblk * bb));
    uint16_t *srt = malloc((size_t)ns * sizeof(uint16_t));
    CHECK_STATUS(uq_q4_repack_r16(&rmt, 1, 1, prt, srt), UQ_OK);
    tr.r16 = rmt;
    tr.r16.layout = UQ_Q4_R16;
    tr.r16.packed = prt;
    tr.r16.scales = srt;
    tr.r16.nseg_out = tr.r16.nseg_in = 1;
    const char *paths[] = {"ref", "avx2", "avx512"};
    for (int act = 0; act < 2; act++) {
        uq_kernels_set_q4_act(act ? UQ_Q4_ACT_INT8 : UQ_Q4_ACT_FP32);
        for (size_t pi = 0; pi < 3; pi++) {
            if (!select_path(paths[pi])) continue;
            CHECK_STATUS(uq_linear_forward(&full.r16, x, T, 1, KO, 1, KI, yf), UQ_OK);
            CHECK_STATUS(uq_linear_forward(&tr.r16, x, T, 1, KO, 1, KI, yt), UQ_OK);
            CHECK(memcmp(yf, yt, sizeof yf) == 0, "act %d path %s: truncated R16 weight differs", act, paths[pi]);
        }
    }
    uq_kernels_set("auto");
    uq_kernels_set_q4_act(UQ_Q4_ACT_FP32);
    /* statuses */
    CHECK_STATUS(uq_q4_r16_size(16, 64, 12, 6, 1, 1, &nblk, &bb, &ns), UQ_ERR_SHAPE);  /* group % 8 */
    CHECK_STATUS(uq_q4_r16_size(16, 64, 8, 8, 3, 1, &nblk, &bb, &ns), UQ_ERR_SHAPE);   /* 3 does not divide 16 */
    CHECK_STATUS(uq_q4_r16_size(0, 64, 8, 8, 1, 1, &nblk, &bb, &ns), UQ_ERR_ARG);
    CHECK_STATUS(uq_q4_repack_r16(&full.r16, 1, 1, prt, srt), UQ_ERR_ARG);              /* already R16 */
    CHECK_STATUS(uq_q4_repack_r16(NULL, 1, 1, prt, srt), UQ_ERR_ARG);
    CHECK_STATUS(uq_linear_forward(&full.r16, x, 1, 2, 8, 1, KI, yf), UQ_ERR_SHAPE);   /* other segments */
    free(pt);
    free(st);
    free(prt);
    free(srt);
    free_pair(&full);
}

/* The largest int8 partial sums the kernels can meet: every code 15 (w = +1) against |xq| = 127 of one sign
 * (the AVX2 kernel adds 4 chunks of vpmaddubsw pair sums in int16: 4 * 4 * 15 * 127 = 30480 must not wrap).
 * Every path equals ref bit for bit, and ref equals the float64 twin (W4A8 is exact here: xq = +-127 = x / xs). */
static void test_r16_extremes(void) {
    enum { R = 32, C = 512, G = 128, T = 9 };
    static float W[R * C], x[T * C], yref[T * R], y[T * R], y64[T * R];
    for (int64_t i = 0; i < R * C; i++) W[i] = 1.0f;
    for (int64_t t = 0; t < T; t++)
        for (int64_t c = 0; c < C; c++) x[t * C + c] = (t & 1) ? -1.0f : 1.0f;
    q4pair q;
    CHECK(make_pair(W, R, C, 1, 1, G, NULL, &q) == 0, "extremes: setup");
    const char *paths[] = {"ref", "avx2", "avx512"};
    for (int act = 0; act < 2; act++) {
        uq_kernels_set_q4_act(act ? UQ_Q4_ACT_INT8 : UQ_Q4_ACT_FP32);
        uq_kernels_set("ref");
        CHECK_STATUS(uq_linear_forward(&q.r16, x, T, 1, R, 1, C, yref), UQ_OK);
        CHECK_STATUS(uq_linear_forward_ref(&q.r16, x, T, 1, R, 1, C, y64), UQ_OK);
        int ok = 1;
        for (int64_t i = 0; i < T * R; i++) ok &= fabs(yref[i] - y64[i]) <= 1e-5 * fabs(y64[i]) && fabs(y64[i]) > C / 2;
        CHECK(ok, "extremes act %d: ref y %g, float64 twin %g", act, (double)yref[0], (double)y64[0]);
        for (size_t pi = 1; pi < 3; pi++) {
            if (!select_path(paths[pi])) continue;
            for (int64_t T1 = 1; T1 <= T; T1++) { /* every tile of the prefill kernels, 1..8 tokens and 5 + 4 */
                CHECK_STATUS(uq_linear_forward(&q.r16, x, T1, 1, R, 1, C, y), UQ_OK);
                CHECK(memcmp(y, yref, (size_t)(T1 * R) * sizeof(float)) == 0, "extremes act %d T %d path %s: differs",
                      act, (int)T1, paths[pi]);
            }
        }
    }
    uq_kernels_set("auto");
    uq_kernels_set_q4_act(UQ_Q4_ACT_FP32);
    free_pair(&q);
}

/* The kernels the direct tests call: every path's own table (a path the CPU lacks is skipped where it is used). */
static const uq_kpath *const DIRECT_PATHS[] = {
    &uq_kpath_ref,
#ifdef UQ_K_X86
    &uq_kpath_avx2, &uq_kpath_avx512,
#endif
};

/* Pointers to the first UQ_K_R16_NB row blocks of q's R16 codes and scales (blocks bbytes / sstride apart). */
static void direct_blocks(const q4pair *q, int64_t bbytes, int64_t sstride, const uint8_t **wb, const uint16_t **sb) {
    for (int i = 0; i < UQ_K_R16_NB; i++) {
        wb[i] = q->pr + i * bbytes;
        sb[i] = q->sr + i * sstride;
    }
}

/* Whether the first n floats of each of T rows (ld apart) of y and yref are the same bits. */
static int same_rows(const float *y, const float *yref, int64_t T, int64_t ld, int64_t n) {
    int same = 1;
    for (int64_t t = 0; t < T; t++) same &= memcmp(y + t * ld, yref + t * ld, (size_t)n * sizeof(float)) == 0;
    return same;
}

/* The R16 fp32 kernels called directly (linear_r16 passes at most 64 tokens, groups of the runtime's shapes):
 * every path's r16_f32 equals the ref kernel bit for bit for T = 1..14 (every token tiling of the prefill
 * kernels), T > 64 (several passes), 1 / 3 / 8 row blocks, groups longer than a 128-column panel (pieces of
 * 128, 128, 8 and 128, 68 with a cut chunk) and a short last group, over two input segments. */
static void test_r16_kernel_direct(void) {
    enum { R = 128, NSI = 2, SEG = 600, C = NSI * SEG, G = 264, KI = 460, TMAX = 130 };
    const int64_t gps = (SEG + G - 1) / G, per = (KI + G - 1) / G, ng = NSI * per, cc = (SEG + 7) / 8;
    const int64_t bbytes = NSI * cc * 64, ldx = NSI * KI, ldo = 16 * UQ_K_R16_NB;
    static float W[R * C], x[TMAX * NSI * KI], yref[TMAX * 16 * UQ_K_R16_NB], y[TMAX * 16 * UQ_K_R16_NB];
    unsigned long long seed = 11;
    uq_test_fill(W, R * C, &seed, 1.0);
    uq_test_fill(x, TMAX * ldx, &seed, 1.0);
    q4pair q;
    CHECK(make_pair(W, R, C, 1, NSI, G, NULL, &q) == 0, "direct: setup");
    uq_k_chunk gr[NSI * 3];
    for (int64_t si = 0, k = 0; si < NSI; si++)
        for (int64_t g0 = 0; g0 < KI; g0 += G, k++)
            gr[k] = (uq_k_chunk){.wcol = si * cc + g0 / 8, .xcol = si * KI + g0, .n = KI - g0 < G ? KI - g0 : G,
                                 .scol = si * gps + g0 / G, .xq = 0};
    const uint8_t *wb[UQ_K_R16_NB];
    const uint16_t *sb[UQ_K_R16_NB];
    direct_blocks(&q, bbytes, gps * NSI * 16, wb, sb);
    const int64_t Ts[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 64, 65, 130};
    const int nbs[] = {1, 3, UQ_K_R16_NB};
    for (size_t pi = 0; pi < sizeof DIRECT_PATHS / sizeof DIRECT_PATHS[0]; pi++) {
        const uq_kpath *path = DIRECT_PATHS[pi];
        int av = 0;
        uq_kernels_available(path->name, &av);
        if (!av || !path->r16_f32) continue;
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++)
            for (size_t bi = 0; bi < sizeof nbs / sizeof nbs[0]; bi++) {
                const int64_t T = Ts[ti];
                const int nb = nbs[bi];
                memset(yref, 0, sizeof yref);
                memset(y, 0, sizeof y);
                uq_k_r16_f32_ref(wb, sb, nb, x, ldx, T, gr, ng, yref, ldo);
                path->r16_f32(wb, sb, nb, x, ldx, T, gr, ng, y, ldo);
                CHECK(same_rows(y, yref, T, ldo, 16 * nb), "direct path %s T %lld nb %d: differs from ref",
                      path->name, (long long)T, nb);
            }
    }
    free_pair(&q);
}

/* The R16 W4A8 kernels called directly (as linear_r16 calls them: <= 64 tokens, int8 activations quantized per
 * token and group in natural order): every path's r16_q8 equals the ref kernel bit for bit for T = 1..17 (every
 * token tiling: the decode tiles, the 2..4-token tiles, the avx2 prefill's tiles of 4..8 tokens and their splits
 * such as 5 + 4 for T = 9) and T = 64, on 1, 3 and 8 row blocks, over two input segments whose last group (76
 * columns) ends inside a chunk. */
static void test_r16_q8_kernel_direct(void) {
    enum { R = 128, NSI = 2, SEG = 600, C = NSI * SEG, G = 128, KI = 460, TMAX = 64 };
    const int64_t gps = (SEG + G - 1) / G, per = (KI + G - 1) / G, ng = NSI * per, cc = (SEG + 7) / 8;
    const int64_t bbytes = NSI * cc * 64, ldx = NSI * KI, ldo = 16 * UQ_K_R16_NB;
    static float W[R * C], x[TMAX * NSI * KI], xs[TMAX * NSI * 4], yref[TMAX * 16 * UQ_K_R16_NB],
        y[TMAX * 16 * UQ_K_R16_NB];
    static int32_t xsum[TMAX * NSI * 4];
    unsigned long long seed = 13;
    uq_test_fill(W, R * C, &seed, 1.0);
    uq_test_fill(x, TMAX * ldx, &seed, 1.0);
    q4pair q;
    CHECK(make_pair(W, R, C, 1, NSI, G, NULL, &q) == 0, "q8 direct: setup");
    uq_k_chunk gr[NSI * 4];
    int64_t off = 0;
    for (int64_t si = 0, k = 0; si < NSI; si++)
        for (int64_t g0 = 0; g0 < KI; g0 += G, k++) {
            gr[k] = (uq_k_chunk){.wcol = si * cc + g0 / 8, .xcol = si * KI + g0, .n = KI - g0 < G ? KI - g0 : G,
                                 .scol = si * gps + g0 / G, .xq = off};
            off += (gr[k].n + 7) / 8 * 8;
        }
    const int64_t ldq = (off + 63) / 64 * 64;
    int8_t *xq = calloc((size_t)(TMAX * ldq), 1);
    if (!xq) {
        CHECK(0, "q8 direct: out of memory");
        free_pair(&q);
        return;
    }
    for (int64_t t = 0; t < TMAX; t++) uq_k_q8_quant(x + t * ldx, gr, ng, 0, xq + t * ldq, xs + t * ng, xsum + t * ng);
    const uint8_t *wb[UQ_K_R16_NB];
    const uint16_t *sb[UQ_K_R16_NB];
    direct_blocks(&q, bbytes, gps * NSI * 16, wb, sb);
    const int nbs[] = {1, 3, UQ_K_R16_NB};
    for (size_t pi = 0; pi < sizeof DIRECT_PATHS / sizeof DIRECT_PATHS[0]; pi++) {
        const uq_kpath *path = DIRECT_PATHS[pi];
        int av = 0;
        uq_kernels_available(path->name, &av);
        if (!av || !path->r16_q8) continue;
        for (int64_t T = 1; T <= TMAX; T = T < 17 ? T + 1 : T == TMAX ? TMAX + 1 : TMAX)
            for (size_t bi = 0; bi < sizeof nbs / sizeof nbs[0]; bi++) {
                const int nb = nbs[bi];
                memset(yref, 0, sizeof yref);
                memset(y, 0, sizeof y);
                uq_k_r16_q8_ref(wb, sb, nb, xq, ldq, xs, xsum, ng, T, gr, ng, yref, ldo, NULL);
                path->r16_q8(wb, sb, nb, xq, ldq, xs, xsum, ng, T, gr, ng, y, ldo, NULL);
                CHECK(same_rows(y, yref, T, ldo, 16 * nb), "q8 direct path %s T %lld nb %d: differs from ref",
                      path->name, (long long)T, nb);
            }
    }
    free(xq);
    free_pair(&q);
}

/* The vector int8 activation quantizer (natural order) equals the scalar uq_k_q8_quant bit for bit: halfway
 * values (round half to even), NaN (ignored by amax, quantized to 0), infinities, an all-zero group, lengths
 * that are not multiples of 8. */
static void test_q8_quant0(void) {
#ifdef UQ_K_X86
    int av = 0;
    uq_kernels_available("avx2", &av);
    if (!av) return;
    enum { N = 64 };
    float x[N];
    for (int i = 0; i < N; i++) x[i] = (float)(i % 17) - 8.5f; /* amax 8.5 -> inv 127/8.5: many ties */
    x[5] = 127.0f; /* group 0: amax 127, inv 1: x = -8.5 .. 7.5 are exact ties */
    x[20] = NAN;
    x[33] = INFINITY;
    for (int i = 48; i < 56; i++) x[i] = 0.0f;
    const int64_t lens[][2] = {{0, 19}, {19, 1}, {20, 9}, {29, 8}, {37, 11}, {48, 8}, {56, 8}};
    uq_k_chunk ch[7];
    int64_t off = 0;
    for (int k = 0; k < 7; k++) {
        ch[k] = (uq_k_chunk){.wcol = 0, .xcol = lens[k][0], .scol = 0, .xq = off, .n = lens[k][1]};
        off += (lens[k][1] + 7) / 8 * 8;
    }
    int8_t qa[128] = {0}, qb[128] = {0};
    float sa[7], sb[7];
    int32_t ma[7], mb[7];
    uq_k_q8_quant(x, ch, 7, 0, qa, sa, ma);
    uq_k_q8_quant0_avx2(x, ch, 7, qb, sb, mb);
    CHECK(memcmp(qa, qb, sizeof qa) == 0, "q8_quant0: codes differ from the scalar quantizer");
    CHECK(memcmp(sa, sb, sizeof sa) == 0 && memcmp(ma, mb, sizeof ma) == 0, "q8_quant0: scales / sums differ");
    CHECK(qa[1] == -8 && qa[2] == -6 && qa[3] == -6, "q8_quant0: ties -7.5 -6.5 -5.5 not rounded half to even "
          "(%d %d %d)", qa[1], qa[2], qa[3]);
#endif
}

/* Attention on every path equals the plain loops over that path's own dot / axpy bit for bit (the vector
 * paths' multi-head multi-key score and register-blocked accumulation helpers, the GQA grouping of query heads), for
 * head dims with and without a tail of 8 or 16, GQA groups of 1, 3, 4 and 7 query heads (the helpers take up to 4
 * heads per pass), key counts with and without a tail of 4 / 8 keys, at T = 1 (decode) and T = 3. */
static void test_attention_paths(void) {
    enum { MAXS = 64, POS0 = 37, NHMAX = 8 };
    const int64_t heads[][2] = {{8, 2}, {6, 2}, {7, 1}, {2, 2}}; /* (query heads, kv heads) */
    const char *paths[] = {"ref", "avx2", "avx512"};
    const int64_t rs[] = {80, 13, 128, 24};
    unsigned long long seed = 5;
    for (size_t ri = 0; ri < sizeof rs / sizeof rs[0]; ri++) {
        const int64_t r = rs[ri], rc = r + 3;
        float *q = malloc((size_t)(3 * NHMAX * r) * sizeof(float));
        float *kc = malloc((size_t)(NHMAX * MAXS * rc) * sizeof(float));
        float *vc = malloc((size_t)(NHMAX * MAXS * rc) * sizeof(float));
        float *o = malloc((size_t)(3 * NHMAX * r) * sizeof(float)), *e = malloc((size_t)(3 * NHMAX * r) * sizeof(float));
        float *scr = malloc((size_t)(4 * NHMAX * MAXS) * sizeof(float)), *sc = malloc(MAXS * sizeof(float));
        if (!q || !kc || !vc || !o || !e || !scr || !sc) {
            CHECK(0, "attention: out of memory");
            return;
        }
        uq_test_fill(q, 3 * NHMAX * r, &seed, 1.0);
        uq_test_fill(kc, NHMAX * MAXS * rc, &seed, 1.0);
        uq_test_fill(vc, NHMAX * MAXS * rc, &seed, 1.0);
        for (size_t hi = 0; hi < sizeof heads / sizeof heads[0]; hi++) {
            const int64_t NH = heads[hi][0], NKV = heads[hi][1];
            for (size_t pi = 0; pi < 3; pi++) {
                if (!select_path(paths[pi])) continue;
                const uq_kpath *P = uq_k_path();
                for (int64_t T = 1; T <= 3; T += 2) {
                    const float scale = 0.125f;
                    uq_k_attention(q, T, NH, NKV, r, r, r, kc, vc, MAXS, rc, POS0, scale, o, scr, 4);
                    for (int64_t t = 0; t < T; t++)
                        for (int64_t h = 0; h < NH; h++) {
                            const float *qh = q + (t * NH + h) * r, *K = kc + (h / (NH / NKV)) * MAXS * rc;
                            const float *V = vc + (h / (NH / NKV)) * MAXS * rc;
                            const int64_t n = POS0 + t + 1;
                            for (int64_t s = 0; s < n; s++) sc[s] = P->dot(qh, K + s * rc, r) * scale;
                            const float inv = uq_k_softmax_inplace(sc, n); /* the scalar twin of every path's */
                            float *eh = e + (t * NH + h) * r;
                            for (int64_t j = 0; j < r; j++) eh[j] = 0.0f;
                            for (int64_t s = 0; s < n; s++) P->axpy(sc[s] * inv, V + s * rc, eh, r);
                        }
                    CHECK(memcmp(o, e, (size_t)(T * NH * r) * sizeof(float)) == 0,
                          "attention path %s r %lld heads %lld / %lld T %lld: differs from the path's dot/axpy loops",
                          paths[pi], (long long)r, (long long)NH, (long long)NKV, (long long)T);
                }
            }
        }
        uq_kernels_set("auto");
        free(q);
        free(kc);
        free(vc);
        free(o);
        free(e);
        free(scr);
        free(sc);
    }
}

/* uq_q4_unpack_r16 is the exact inverse of uq_q4_repack_r16 (segments, padding rows and columns, odd widths). */
static void test_r16_unpack(void) {
    const int64_t cases[][5] = {{37, 24, 8, 1, 1}, {48, 96, 16, 3, 1}, {30, 96, 16, 1, 3}, {16, 21, 8, 1, 1}};
    unsigned long long seed = 5;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t rows = cases[ci][0], cols = cases[ci][1], g = cases[ci][2], nso = cases[ci][3];
        const int64_t nsi = cases[ci][4], rb = UQ_Q4_ROW_BYTES(cols), sc = nsi * ((cols / nsi + g - 1) / g);
        uint8_t *p = malloc((size_t)(rows * rb)), *back = malloc((size_t)(rows * rb));
        uint16_t *s = malloc((size_t)(rows * sc) * sizeof(uint16_t)), *sback = malloc((size_t)(rows * sc) * sizeof(uint16_t));
        for (int64_t i = 0; i < rows * rb; i++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            p[i] = (uint8_t)(seed >> 56);
            if ((cols & 1) && i % rb == rb - 1) p[i] &= 15; /* the unused high nibble of an odd row is 0 */
        }
        for (int64_t i = 0; i < rows * sc; i++) s[i] = uq_test_f2h((float)uq_test_rand(&seed));
        uq_linear L = {.kind = UQ_W_Q4, .rows = rows, .cols = cols, .packed = p, .scales = s, .group = g,
                       .scale_cols = sc};
        int64_t nblk, bb, ns;
        CHECK_STATUS(uq_q4_r16_size(rows, cols, g, sc, nso, nsi, &nblk, &bb, &ns), UQ_OK);
        uint8_t *pr = malloc((size_t)(nblk * bb));
        uint16_t *sr = malloc((size_t)ns * sizeof(uint16_t));
        CHECK_STATUS(uq_q4_repack_r16(&L, nso, nsi, pr, sr), UQ_OK);
        uq_linear R = L;
        R.packed = pr;
        R.scales = sr;
        R.layout = UQ_Q4_R16;
        R.nseg_out = nso;
        R.nseg_in = nsi;
        CHECK_STATUS(uq_q4_unpack_r16(&R, back, sback), UQ_OK);
        CHECK(memcmp(back, p, (size_t)(rows * rb)) == 0, "unpack codes, case %zu", ci);
        CHECK(memcmp(sback, s, (size_t)(rows * sc) * sizeof(uint16_t)) == 0, "unpack scales, case %zu", ci);
        CHECK_STATUS(uq_q4_unpack_r16(&L, back, sback), UQ_ERR_ARG); /* a row-major weight is refused */
        CHECK_STATUS(uq_q4_unpack_r16(&R, NULL, sback), UQ_ERR_ARG);
        free(p);
        free(back);
        free(s);
        free(sback);
        free(pr);
        free(sr);
    }
}

/* uq_q4_r16_prefix_in: the compact copy of the kept columns of every input segment, called at its full width, gives
 * the stored weight's results at that keep bit for bit on every path (fp32 and int8 activations, 1 and several tokens,
 * keeps that cut a chunk and a group), holds the same codes and scales (uq_k_r16_code / uq_k_r16_scale), and bad
 * arguments give statuses. */
static void test_r16_prefix_in(void) {
    /* rows, cols, nseg_out, nseg_in, group, keep_in */
    const int64_t cases[][6] = {{40, 256, 1, 4, 64, 40}, {48, 512, 1, 4, 128, 80}, {37, 192, 1, 3, 32, 40},
                                {32, 128, 2, 2, 64, 22}, {20, 96, 1, 1, 16, 48}, {64, 512, 1, 8, 64, 16}};
    const char *paths[] = {"ref", "avx2", "avx512"};
    unsigned long long seed = 17;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t rows = cases[ci][0], cols = cases[ci][1], nso = cases[ci][2], nsi = cases[ci][3];
        const int64_t g = cases[ci][4], ki = cases[ci][5], seg_in = cols / nsi, T = 7;
        float *W = malloc((size_t)(rows * cols) * sizeof(float)), *x = malloc((size_t)(T * nsi * ki) * sizeof(float));
        float *b = malloc((size_t)rows * sizeof(float));
        float *ya = malloc((size_t)(T * rows) * sizeof(float)), *yb = malloc((size_t)(T * rows) * sizeof(float));
        uq_test_fill(W, rows * cols, &seed, 1.0);
        uq_test_fill(x, T * nsi * ki, &seed, 1.0);
        uq_test_fill(b, rows, &seed, 0.5);
        q4pair q;
        CHECK(make_pair(W, rows, cols, nso, nsi, g, ci % 2 ? b : NULL, &q) == 0, "setup case %zu", ci);
        int64_t pb = 0, ns = 0;
        CHECK_STATUS(uq_q4_r16_prefix_in_size(&q.r16, ki, &pb, &ns), UQ_OK);
        uint8_t *pc = malloc((size_t)pb);
        uint16_t *sc = malloc((size_t)ns * sizeof(uint16_t));
        uq_linear C;
        CHECK_STATUS(uq_q4_r16_prefix_in(&q.r16, ki, pc, sc, &C), UQ_OK);
        CHECK(C.cols == nsi * ki && C.rows == rows && C.nseg_in == nsi && C.nseg_out == nso && C.layout == UQ_Q4_R16,
              "case %zu: compact shape", ci);
        CHECK(pb < (int64_t)(nso * ((rows / nso + 15) / 16)) * nsi * ((seg_in + 7) / 8) * 64 || (ki + 7) / 8 == (seg_in + 7) / 8,
              "case %zu: compact not smaller", ci);
        int same = 1;
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t si = 0; si < nsi; si++)
                for (int64_t c = 0; c < ki; c++)
                    same &= uq_k_r16_code(&C, r, si * ki + c) == uq_k_r16_code(&q.r16, r, si * seg_in + c);
            for (int64_t si = 0; si < nsi; si++)
                for (int64_t k = 0; k < (ki + g - 1) / g; k++)
                    same &= uq_k_r16_scale(&C, r, si * ((ki + g - 1) / g) + k) ==
                            uq_k_r16_scale(&q.r16, r, si * ((seg_in + g - 1) / g) + k);
        }
        CHECK(same, "case %zu: compact codes / scales differ", ci);
        for (int act = 0; act < 2; act++) {
            uq_kernels_set_q4_act(act ? UQ_Q4_ACT_INT8 : UQ_Q4_ACT_FP32);
            for (size_t pi = 0; pi < 3; pi++) {
                if (!select_path(paths[pi])) continue;
                for (int64_t t = 1; t <= T; t += T - 1) {
                    const int64_t ko = rows / nso;
                    CHECK_STATUS(uq_linear_forward(&q.r16, x, t, nso, ko, nsi, ki, ya), UQ_OK);
                    CHECK_STATUS(uq_linear_forward(&C, x, t, nso, ko, nsi, ki, yb), UQ_OK);
                    CHECK(memcmp(ya, yb, (size_t)(t * rows) * sizeof(float)) == 0,
                          "case %zu act %d path %s T %lld: compact differs", ci, act, paths[pi], (long long)t);
                }
            }
        }
        uq_kernels_set("auto");
        uq_kernels_set_q4_act(UQ_Q4_ACT_FP32);
        CHECK_STATUS(uq_q4_r16_prefix_in_size(&q.r16, 0, &pb, &ns), UQ_ERR_RANGE);
        CHECK_STATUS(uq_q4_r16_prefix_in_size(&q.r16, seg_in + 1, &pb, &ns), UQ_ERR_RANGE);
        if (nsi > 1) CHECK_STATUS(uq_q4_r16_prefix_in_size(&q.r16, 3, &pb, &ns), UQ_ERR_RANGE); /* odd head width */
        CHECK_STATUS(uq_q4_r16_prefix_in_size(&q.rm, ki, &pb, &ns), UQ_ERR_ARG);                 /* row-major */
        CHECK_STATUS(uq_q4_r16_prefix_in(&q.r16, ki, NULL, sc, &C), UQ_ERR_ARG);
        CHECK_STATUS(uq_q4_r16_prefix_in_size(NULL, ki, &pb, &ns), UQ_ERR_ARG);
        free(pc);
        free(sc);
        free_pair(&q);
        free(W);
        free(x);
        free(b);
        free(ya);
        free(yb);
    }
}

/* Every path's softmax = the scalar twin bit for bit (lengths around the 8-lane blocks, scores spread over [-100, 0]
 * below the max, a -inf score, ties); each exp within 2^-21 relative of float64 exp of the same float argument
 * (a few ulps), the normaliser
 * within 1e-6 of float64; scores 87 or more below the max give exp(-87) (the clamp; < 2e-38). */
static void test_softmax_paths(void) {
    enum { N = 300 };
    const char *paths[] = {"ref", "avx2", "avx512"};
    static float x[N], a[N], b[N];
    unsigned long long seed = 11;
    for (int64_t n = 1; n < N; n += n < 40 ? 1 : 37) {
        for (int64_t s = 0; s < n; s++) x[s] = (float)(50.0 * uq_test_rand(&seed) - 50.0);
        if (n > 3) x[n / 2] = x[1]; /* a tie */
        if (n > 5) x[n - 2] = -INFINITY;
        memcpy(a, x, (size_t)n * sizeof(float));
        const float inv = uq_k_softmax_inplace(a, n);
        float m = -INFINITY;
        for (int64_t s = 0; s < n; s++) m = x[s] > m ? x[s] : m;
        double sum = 0.0, worst = 0.0;
        for (int64_t s = 0; s < n; s++) {
            const float d = x[s] - m; /* the exp's argument as the softmax rounds it */
            const double want = d < -87.0f ? exp(-87.0) : exp((double)d);
            sum += a[s];
            const double err = fabs(a[s] - want) / want;
            worst = err > worst ? err : worst;
        }
        CHECK(worst <= 1.0 / (1 << 21), "softmax n %lld: exp relative error %g", (long long)n, worst);
        CHECK(fabs(inv * sum - 1.0) <= 1e-6, "softmax n %lld: 1/sum %g, sum %g", (long long)n, inv, sum);
        for (size_t pi = 0; pi < 3; pi++) {
            if (!uq_k_cpu_has(paths[pi]) && pi > 0) continue;
            CHECK_STATUS(uq_kernels_set(paths[pi]), UQ_OK);
            const uq_kpath *P = uq_k_path();
            memcpy(b, x, (size_t)n * sizeof(float));
            const float inv2 = P->softmax ? P->softmax(b, n) : uq_k_softmax_inplace(b, n);
            CHECK(memcmp(a, b, (size_t)n * sizeof(float)) == 0 && memcmp(&inv, &inv2, sizeof inv) == 0,
                  "softmax path %s n %lld differs from the scalar twin", paths[pi], (long long)n);
        }
        uq_kernels_set("auto");
    }
    /* silu_mul: every path = the scalar loop bit for bit; within 2^-20 relative (+ 1e-35) of float64 silu * u */
    static float g[N], u[N], g2[N];
    for (int64_t n = 1; n < N; n += n < 40 ? 1 : 37) {
        for (int64_t i = 0; i < n; i++) {
            x[i] = (float)(30.0 * uq_test_rand(&seed));
            u[i] = (float)uq_test_rand(&seed);
        }
        if (n > 2) x[1] = 100.0f, x[2] = -100.0f; /* beyond the clamp both ways */
        memcpy(g, x, (size_t)n * sizeof(float));
        CHECK_STATUS(uq_kernels_set("ref"), UQ_OK);
        uq_k_silu_mul(g, u, n);
        double worst = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const double want = (double)x[i] / (1.0 + exp(-(double)x[i])) * u[i];
            const double err = fabs(g[i] - want) - 1e-35; /* g < -88: -g / exp(88) instead of ~0 */
            worst = err / fabs(want) > worst ? err / fabs(want) : worst;
        }
        CHECK(worst <= 1.0 / (1 << 20), "silu_mul n %lld: relative error %g", (long long)n, worst);
        for (size_t pi = 1; pi < 3; pi++) {
            if (!uq_k_cpu_has(paths[pi])) continue;
            CHECK_STATUS(uq_kernels_set(paths[pi]), UQ_OK);
            memcpy(g2, x, (size_t)n * sizeof(float));
            uq_k_silu_mul(g2, u, n);
            CHECK(memcmp(g, g2, (size_t)n * sizeof(float)) == 0, "silu_mul path %s n %lld differs from ref",
                  paths[pi], (long long)n);
        }
        uq_kernels_set("auto");
    }
    /* a NaN score never wins the max and comes out NaN; the others stay finite */
    float t[9] = {0.5f, NAN, -1.0f, 0.25f, -3.0f, 0.0f, 1.0f, -2.0f, 0.75f};
    const float inv = uq_k_softmax_inplace(t, 9);
    CHECK(t[1] != t[1] && t[6] == 1.0f && inv != inv, "softmax with a NaN score: t[1] %g, t[6] %g", t[1], t[6]);
}

/* uq_linear_forward_multi = the separate uq_linear_forward calls bit for bit: three R16 weights of one input (Q / K
 * / V shapes: 4 and 2 head segments, keeps that cut row blocks, a bias on two), W4A8 and W4A32, T = 1 / 3 / 20, on
 * every path; a set that mixes an fp32 weight in (not fused) too; and its argument checks. */
static void test_linear_multi(void) {
    enum { COLS = 96, G = 32, TMAX = 20 };
    const int64_t rows[3] = {64, 32, 32}, nso[3] = {4, 2, 2}, ko[3] = {13, 16, 11};
    const int64_t Ts[] = {1, 3, 20};
    const char *paths[] = {"ref", "avx2", "avx512"};
    unsigned long long seed = 21;
    q4pair q[3];
    static float W[64 * COLS], b[64], x[TMAX * COLS], ya[3][TMAX * 64], yb[3][TMAX * 64];
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        uq_test_fill(W, rows[i] * COLS, &seed, 1.0);
        uq_test_fill(b, rows[i], &seed, 0.5);
        ok &= make_pair(W, rows[i], COLS, nso[i], 1, G, i == 1 ? NULL : b, &q[i]) == 0;
    }
    CHECK(ok, "linear_multi: setup");
    uq_test_fill(x, TMAX * COLS, &seed, 1.0);
    const uq_linear *Ls[3] = {&q[0].r16, &q[1].r16, &q[2].r16};
    float *yas[3] = {ya[0], ya[1], ya[2]};
    for (int act = 0; act < 2 && ok; act++) {
        CHECK_STATUS(uq_kernels_set_q4_act(act ? UQ_Q4_ACT_INT8 : UQ_Q4_ACT_FP32), UQ_OK);
        for (size_t pi = 0; pi < 3; pi++) {
            if (!select_path(paths[pi])) continue;
            for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                const int64_t T = Ts[ti];
                for (int i = 0; i < 3; i++)
                    CHECK_STATUS(uq_linear_forward(Ls[i], x, T, nso[i], ko[i], 1, COLS, yb[i]), UQ_OK);
                CHECK_STATUS(uq_linear_forward_multi(3, Ls, x, T, nso, ko, 1, COLS, yas), UQ_OK);
                int same = 1;
                for (int i = 0; i < 3; i++) same &= memcmp(ya[i], yb[i], (size_t)(T * nso[i] * ko[i]) * sizeof(float)) == 0;
                CHECK(same, "linear_multi path %s %s T %lld: differs from separate calls", paths[pi],
                      act ? "W4A8" : "W4A32", (long long)T);
            }
        }
    }
    uq_kernels_set("auto");
    CHECK_STATUS(uq_kernels_set_q4_act(UQ_Q4_ACT_AUTO), UQ_OK);
    /* not fusable: an fp32 weight among them runs the separate calls */
    float *Wf = malloc((size_t)(32 * COLS) * sizeof(float));
    if (Wf && ok) {
        uq_test_fill(Wf, 32 * COLS, &seed, 1.0);
        const uq_linear F = {.kind = UQ_W_F32, .rows = 32, .cols = COLS, .w = Wf};
        const uq_linear *Lm[2] = {&q[0].r16, &F};
        const int64_t nm[2] = {4, 1}, km[2] = {13, 32};
        CHECK_STATUS(uq_linear_forward(&F, x, 3, 1, 32, 1, COLS, yb[1]), UQ_OK);
        CHECK_STATUS(uq_linear_forward(Lm[0], x, 3, 4, 13, 1, COLS, yb[0]), UQ_OK);
        CHECK_STATUS(uq_linear_forward_multi(2, Lm, x, 3, nm, km, 1, COLS, yas), UQ_OK);
        CHECK(memcmp(ya[0], yb[0], 3 * 52 * sizeof(float)) == 0 && memcmp(ya[1], yb[1], 3 * 32 * sizeof(float)) == 0,
              "linear_multi with an fp32 weight: differs from separate calls");
        CHECK_STATUS(uq_linear_forward_multi(0, Lm, x, 3, nm, km, 1, COLS, yas), UQ_ERR_ARG);
        CHECK_STATUS(uq_linear_forward_multi(5, Lm, x, 3, nm, km, 1, COLS, yas), UQ_ERR_ARG);
        const int64_t bad[2] = {4, 99}; /* keep_out beyond the segment */
        CHECK_STATUS(uq_linear_forward_multi(2, Lm, x, 3, nm, bad, 1, COLS, yas), UQ_ERR_SHAPE);
    }
    free(Wf);
    for (int i = 0; i < 3; i++) free_pair(&q[i]);
}

/* One-token W4A8 decode hands each pool task strided row blocks (t, t + ntask, ...: linear_r16): on every path and at 1,
 * 2 and 3 threads, the R16 results equal the row-major W4A8 ones bit for bit, for a weight whose kept blocks do not
 * split evenly into tasks (3 head segments of 200 rows, 150 kept: 30 blocks, one of each segment cut by the keep) and
 * for two such weights in one call (the gate / up job), so every block's rows land where they belong. */
static void test_r16_decode_tasks(void) {
    enum { ROWS = 600, COLS = 256, G = 64, NSO = 3, KO = 150 };
    const char *paths[] = {"ref", "avx2", "avx512"};
    unsigned long long seed = 33;
    static float W[ROWS * COLS], x[COLS], ya[2][NSO * KO], yb[2][NSO * KO];
    q4pair q[2];
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        uq_test_fill(W, ROWS * COLS, &seed, 1.0);
        ok &= make_pair(W, ROWS, COLS, NSO, 1, G, NULL, &q[i]) == 0;
    }
    CHECK(ok, "decode tasks: setup");
    uq_test_fill(x, COLS, &seed, 1.0);
    const int nt0 = uq_kernels_threads();
    CHECK_STATUS(uq_kernels_set_q4_act(UQ_Q4_ACT_INT8), UQ_OK);
    const uq_linear *Ls[2] = {&q[0].r16, &q[1].r16};
    const int64_t nso[2] = {NSO, NSO}, ko[2] = {KO, KO};
    float *yas[2] = {ya[0], ya[1]};
    for (size_t pi = 0; pi < 3 && ok; pi++) {
        if (!select_path(paths[pi])) continue;
        for (int i = 0; i < 2; i++) CHECK_STATUS(uq_linear_forward(&q[i].rm, x, 1, NSO, KO, 1, COLS, yb[i]), UQ_OK);
        for (int nt = 1; nt <= 3; nt++) {
            CHECK_STATUS(uq_kernels_set_threads(nt), UQ_OK);
            CHECK_STATUS(uq_linear_forward(&q[0].r16, x, 1, NSO, KO, 1, COLS, ya[0]), UQ_OK);
            CHECK(memcmp(ya[0], yb[0], sizeof ya[0]) == 0, "decode tasks path %s, %d threads: R16 differs from row-major",
                  paths[pi], nt);
            memset(ya, 0, sizeof ya);
            CHECK_STATUS(uq_linear_forward_multi(2, Ls, x, 1, nso, ko, 1, COLS, yas), UQ_OK);
            CHECK(memcmp(ya, yb, sizeof ya) == 0, "decode tasks path %s, %d threads: the two-weight call differs",
                  paths[pi], nt);
        }
    }
    CHECK_STATUS(uq_kernels_set_threads(nt0), UQ_OK);
    uq_kernels_set("auto");
    CHECK_STATUS(uq_kernels_set_q4_act(UQ_Q4_ACT_AUTO), UQ_OK);
    for (int i = 0; i < 2; i++) free_pair(&q[i]);
}

void test_r16(void) {
    test_r16_decode_tasks();
    test_r16_unpack();
    test_r16_prefix_in();
    test_linear_multi();
    test_softmax_paths();
    test_attention_paths();
    test_q8_quant0();
    test_r16_paths();
    test_r16_extremes();
    test_r16_truncated();
    test_r16_kernel_direct();
    test_r16_q8_kernel_direct();
}

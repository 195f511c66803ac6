/*
 * kernels.h -- internal kernels of the runtime (not part of the public API).
 *
 * Arguments are validated by the callers in csrc/runtime/; these functions cannot fail and return void.
 * Every kernel computes each output element with a fixed sequence of float operations that depends only
 * on that element's inputs (never on T, thread count or neighbouring sizes): see "Determinism" in uniql.h.
 */
#ifndef UQ_KERNELS_H
#define UQ_KERNELS_H

#include <math.h>
#include <stdint.h>

#include "uniql.h"
#include "../core/half.h"

/* Dot product of n floats with 8 lane accumulators (lane l sums indices = l mod 8, in increasing order),
 * reduced as ((a0+a4)+(a1+a5))+((a2+a6)+(a3+a7)). The one definition of "a dot product" in the runtime. */
float uq_k_dot(const float *a, const float *b, int64_t n);

/* y (T, n) = x / sqrt(mean(x^2) + eps) * w, mean accumulated in float64; y may equal x. */
void uq_k_rmsnorm(const float *restrict x, int64_t T, int64_t n, const float *restrict w, double eps,
                  float *restrict y);

/* In-place RoPE of the first nrot dims of each head of x (T, nheads, stride), pair-interleaved: rows (2j, 2j+1)
 * of head h, j < nrot/2, are pair j, rotated by angle table index f = map[(h / heads_per_map) * map_stride + j]
 * (j when map is NULL):
 *   x0' = x0 cos - x1 sin ;  x1' = x1 cos + x0 sin,  cos/sin = tab[(pos0 + t) * half + f].
 * nrot even, nrot <= stride, nrot/2 <= map_stride. Full RoPE: nrot = stride = r; partial RoPE (Bamba): the
 * rotary rows lead each head. */
void uq_k_rope(float *x, int64_t T, int64_t nheads, int64_t heads_per_map, int64_t stride, int64_t nrot,
               const int32_t *map, int64_t map_stride, const float *cos_tab, const float *sin_tab, int64_t half,
               int64_t pos0);

/* Causal GQA attention of T queries at positions pos0..pos0+T-1 over a cache that already holds
 * positions 0..pos0+T-1. q (T, n_heads * r); kc, vc (n_kv, max_seq, rc) with r <= rc; out (T, n_heads * r).
 * Query rows [0, r_rot) meet key rows [0, r_rot) and query rows [r_rot, r) key rows [k_off, k_off + r - r_rot)
 * (r_rot <= k_off, k_off + r - r_rot <= rc): r_rot = k_off = r is the plain prefix of r dims; a pruned head under
 * partial RoPE keeps r_rot rotary and r - r_rot pass rows of a cache row [R_rot rotary | pass], k_off = R_rot.
 * Values: the first r dims of every V row. Query head h reads kv head h / (n_heads / n_kv). scores:
 * (nthreads * (n_heads / n_kv), max_seq) scratch; at most nthreads OpenMP threads are used. Softmax in float
 * with float64 normaliser. With 0 < r_rot < r a score is (dot(rot rows) + dot(pass rows)) * scale, whatever k_off. */
void uq_k_attention(const float *restrict q, int64_t T, int64_t n_heads, int64_t n_kv, int64_t r, int64_t r_rot,
                    int64_t k_off, const float *restrict kc, const float *restrict vc, int64_t max_seq, int64_t rc,
                    int64_t pos0, float scale, float *restrict out, float *restrict scores, int nthreads);
/* The same over a float16 cache (IEEE binary16 K / V rows, e.g. written by uq_k_f32_to_f16): every score and output
 * equals uq_k_attention's over the rows converted to float32 (exact), bit for bit, on every path. scores:
 * (nthreads * ((n_heads / n_kv) * max_seq + 2 * rc)) scratch (the extra 2 * rc per thread: rows converted by the
 * paths without fp16 helpers and by partial RoPE). */
void uq_k_attention_f16(const float *restrict q, int64_t T, int64_t n_heads, int64_t n_kv, int64_t r, int64_t r_rot,
                        int64_t k_off, const uint16_t *restrict kc, const uint16_t *restrict vc, int64_t max_seq,
                        int64_t rc, int64_t pos0, float scale, float *restrict out, float *restrict scores,
                        int nthreads);
/* y = x rounded to float16 (to nearest even; the values of uq_convert_f32_to_f16, NaN payloads aside) with the current
 * path's converter, n elements: the KV-cache writer's conversion. */
void uq_k_f32_to_f16(const float *restrict x, int64_t n, uint16_t *restrict y);

/* exp(x) of the attention softmax (x = score - max <= 0) and the SiLU (x = -g), one definition for every path: x
 * clamped to [-87, 88] (NaN stays NaN); n = rint(x * log2(e)); r = x - n * 0.693359375 - n * -2.12194440e-4 (two
 * FMAs); the Cephes degree-5 polynomial p(r) by FMA Horner; y = fma(p, r * r, r) + 1; result y * 2^n. Within a few
 * float ulps of exp of the same argument (tested against float64); a vector path computes the same FMA sequence per
 * lane, so its results are bit-identical to this scalar one (libm's expf is neither vectorisable nor the same
 * function on every libc). */
static inline float uq_k_exp(float x) {
    if (x != x) return x;
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    const float n = rintf(x * 1.44269504088896341f);
    float r = fmaf(n, -0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    const float y = fmaf(p, r * r, r) + 1.0f;
    union { int32_t i; float f; } e = {.i = ((int32_t)n + 127) << 23};
    return y * e.f;
}

/* dst[0..n) = the float values of half bits src[0..n) (n small: a row of group scales). */
static inline void uq_k_h2f_row(const uint16_t *src, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i++) dst[i] = uq_h2f(src[i]);
}
/* The n row pointers of a row-major int4 GEMV tile of mr (1..n) rows: rows past mr repeat the last one, so the
 * tile always reads n valid rows and the caller stores only mr results. */
static inline void uq_k_tile_rows(const uint8_t *const *w, const float *const *s, int mr, int n, const uint8_t **wp,
                                  const float **sp) {
    for (int i = 0; i < n; i++) {
        wp[i] = w[i < mr ? i : mr - 1];
        sp[i] = s[i < mr ? i : mr - 1];
    }
}

/* Attention softmax of sc[0..n) in place: m = max over s (NaN never wins), sc[s] = uq_k_exp(sc[s] - m),
 * the sum in float64 over 8 lanes (lane l adds the s = l mod 8 in increasing s), reduced as uq_k_reduce8; returns
 * (float)(1 / sum). The scalar twin of every path's softmax (uq_kpath.softmax: bit-identical). */
float uq_k_softmax_inplace(float *sc, int64_t n);

/* g[i] = silu(g[i]) * u[i] = g / (1 + uq_k_exp(-g)) * u, n elements (the path's silu_mul when it has one). */
void uq_k_silu_mul(float *restrict g, const float *restrict u, int64_t n);

/* X (T, cols) = rows ids of the embedding E (fp32 copy or int4 dequantized (q - 8) * scale). */
void uq_k_embed(const uq_linear *E, const int32_t *ids, int64_t T, float *X);

/* y[i] += x[i], n elements. */
void uq_k_add(float *restrict y, const float *restrict x, int64_t n);

/* ------------------------------------------------------------------ dispatch (dispatch.c) ---- */
/* A chunk of a segmented column selection: stored-row columns [wcol, wcol + n) <-> x columns
 * [xcol, xcol + n); n <= the chunk width. scol: int4 scale column of the chunk when the whole chunk lies
 * in one group, else -1. For int8 activations a "chunk" is one group (n <= group) and xq is the byte
 * offset of its quantized activations inside a token's xq row. */
typedef struct {
    int64_t wcol, xcol, scol, xq;
    int64_t n;
} uq_k_chunk;

/* Fixed lane reductions shared by every path (so a vector path's result does not depend on how the lanes
 * are summed): reduce8 = ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)), reduce16 = reduce8(a[i] + a[i+8]). */
static inline float uq_k_reduce8(const float *a) {
    float s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
    return (s0 + s2) + (s1 + s3);
}
static inline float uq_k_reduce16(const float *a) {
    float s[8];
    for (int i = 0; i < 8; i++) s[i] = a[i] + a[i + 8];
    return uq_k_reduce8(s);
}

/* int8-activation quantization of one token's packed x (see uniql.h "kernels"): for each group chunk g,
 * xs[g], xsum[g] = sum of xq, and xq bytes at xqrow + ch[g].xq laid out in blocks of cw columns
 * [cw/2 even columns | cw/2 odd columns] (cw = 0: natural order), zero padded to whole blocks. */
void uq_k_q8_quant(const float *x, const uq_k_chunk *ch, int64_t nch, int cw, int8_t *xqrow, float *xs,
                   int32_t *xsum);

/* One kernel path. GEMV kernels take mr <= 8 stored rows and T <= 4 tokens and write acc (mr * T, V)
 * lane accumulators (row-major over (row, token)); the caller reduces them. The GEMM kernel multiplies 4
 * packed rows w4[0..3] by packed x of nr <= UQ_K_NR tokens (nr, ldx) over nvec vectors of V floats,
 * accumulating into acc (4 * nr, V). Packing: fp32-kinds rows become nvec V-float vectors per
 * chunk list (zero padded); int4 pieces of m*V columns (m = 2, or 8 for the wide kernels) become m vectors,
 * vector j holding the dequantized columns m*i + j (i = lane). */
#define UQ_K_NR 6
/* Decode prefetch plan of an R16 int8 kernel call (uq_kpath.r16_q8 at T == 1): co[c] (c < nct) = the byte offset inside
 * a row block of the c-th chunk the kernel reads (the groups in order, each group's kept chunks in order: the same for
 * every block of the call), and wn = UQ_K_R16_NB row blocks the calling thread will probably stream next (the first
 * blocks of its next task, the last one repeated to fill; NULL: none) with their scales sn (NULL: not given), so a
 * kernel can prefetch a fixed number of chunks ahead along what it will actually read, across the end of its blocks
 * into the next ones, and the next blocks' scales before it reaches them. */
typedef struct uq_k_r16_pf {
    const int64_t *co;
    int64_t nct;
    const uint8_t *const *wn;
    const uint16_t *const *sn;
} uq_k_r16_pf;

/* Prefetches the cache lines of one R16 block's float16 scales s that the groups g[0..ng) read (16 values at scol * 16
 * each), each line once. The decode kernels call it for the next blocks when their chunk prefetch moves into them: the
 * scales are a second stream (1/16 of the codes' bytes, 32 bytes a group at each group's end) that the hardware
 * prefetchers left cold at every new block (8B-shaped stack, 1 thread, in-process A/B: 1.02-1.03x faster decode). */
static inline void uq_k_r16_prefetch_scales(const uint16_t *s, const uq_k_chunk *g, int64_t ng) {
    uintptr_t last = 0;
    for (int64_t k = 0; k < ng; k++) {
        const uint16_t *p = s + g[k].scol * 16;
        if ((uintptr_t)p >> 6 != last) {
            __builtin_prefetch(p, 0, 3);
            last = (uintptr_t)p >> 6;
        }
    }
}
/* 1 while this thread runs a task of a one-token (decode) attention call, whose K / V rows come from memory: the
 * helpers may then prefetch rows ahead (prefill re-reads rows already in cache, where the prefetches only cost). Set
 * per task from the call's job, so concurrent calls of different models do not see each other's; a hint: the results
 * never depend on it. */
extern _Thread_local int uq_k_attn_cold_rows;
/* In a decode call (uq_k_attn_cold_rows), the V rows (same layout as K) of the keys the next scores helper call reads,
 * NULL for none: that helper prefetches them along with the K rows, so the accumulation helper that follows finds
 * them in cache (its own V prefetch alone ran too close ahead of its fast loop: 8B-shaped stack, 1 thread, in-process
 * A/B, attention 145 -> ~115 us per layer at 528 positions). Set by the
 * decode tasks (read only while uq_k_attn_cold_rows); a hint: the results never depend on it. */
extern _Thread_local const void *uq_k_attn_pf_v;
/* Decode-call prefetch of the scores helpers: the first r elements (es bytes each) of the K rows first .. first + count
 * - 1 (those < n; row stride rc elements), and of the same rows of V when V is not NULL (uq_k_attn_pf_v). A hint. */
static inline void uq_k_attn_prefetch_rows(const void *K, const void *V, int64_t es, int64_t rc, int64_t r, int64_t first,
                                           int count, int64_t n) {
    for (int k = 0; k < count && first + k < n; k++) {
        const int64_t o = (first + k) * rc * es;
        for (int64_t b = 0; b < r * es; b += 64) __builtin_prefetch((const char *)K + o + b, 0, 3);
        if (V)
            for (int64_t b = 0; b < r * es; b += 64) __builtin_prefetch((const char *)V + o + b, 0, 3);
    }
}
#define UQ_K_ATTN_HEADS 4 /* most query heads per attention helper call */
_Static_assert(UQ_K_ATTN_HEADS == 4, "the avx2 / avx512 attention helpers' register tiles take 1 to 4 query heads");
typedef struct {
    const char *name;
    int V;  /* fp32 lanes (8 or 16) */
    int cw; /* int8 activation block width in columns */
    float (*dot)(const float *a, const float *b, int64_t n); /* the path's fp32 dot (reduce tree as above) */
    void (*axpy)(float a, const float *x, float *y, int64_t n);
    void (*gemv_f32)(const float *const *w, int mr, const float *x, int64_t ldx, int T, const uq_k_chunk *ch,
                     int64_t nch, float *acc);
    void (*gemv_f16)(const uint16_t *const *w, int mr, const float *x, int64_t ldx, int T, const uq_k_chunk *ch,
                     int64_t nch, float *acc);
    /* int4 rows (packed row pointers, scale row pointers), x permuted per piece: xp (T, ldxp) */
    void (*gemv_q4)(const uint8_t *const *w, const float *const *s, int mr, const float *xp, int64_t ldxp, int T,
                    const uq_k_chunk *ch, int64_t nch, float *acc);
    void (*pack_f16)(const uint16_t *w, const uq_k_chunk *ch, int64_t nch, float *dst);
    void (*pack_q4)(const uint8_t *w, const float *s, const uq_k_chunk *ch, int64_t nch, float *dst);
    /* optional wide int4 pieces of 8V columns (vector j = columns 8i + j), used when group % (8V) == 0 */
    void (*gemv_q4w)(const uint8_t *const *w, const float *const *s, int mr, const float *xp, int64_t ldxp, int T,
                     const uq_k_chunk *ch, int64_t nch, float *acc);
    void (*pack_q4w)(const uint8_t *w, const float *s, const uq_k_chunk *ch, int64_t nch, float *dst);
    void (*gemm)(const float *const *w4, const float *xp, int64_t ldx, int nr, int64_t nvec, float *acc);
    /* int8 activations: optional fast uq_k_q8_quant for this path's cw (same results); */
    void (*q8_quant)(const float *x, const uq_k_chunk *ch, int64_t nch, int cw, int8_t *xqrow, float *xs,
                     int32_t *xsum);
    /* tot (mr, T) = epilogue sums for mr <= 4 rows, any T (chunks = groups) */
    void (*q8_gemv)(const uint8_t *const *w, const float *const *s, int mr, const int8_t *xq, int64_t ldq,
                    const float *xs, const int32_t *xsum, int64_t ldg, int64_t T, const uq_k_chunk *ch,
                    int64_t nch, float *tot);
    /* optional: one token, mr <= 16 rows (same results as q8_gemv), tot (mr); wn: the 16 rows of the next
     * block (prefetched; NULL for none) */
    void (*q8_gemv_16rows)(const uint8_t *const *w, const float *const *s, int mr, const int8_t *xq,
                           const float *xs, const int32_t *xsum, const uq_k_chunk *ch, int64_t nch, float *tot,
                           const uint8_t *const *wn);
    /* int8 GEMM for a block of nrows <= 32 rows (NULL when the path has none): same sums as q8_gemv, written
     * token-major: y[t * ldy + r] (r < nrows). */
    void (*q8_gemm)(const uint8_t *const *w, const float *const *s, int nrows, const int8_t *xq, int64_t ldq,
                    const float *xs, const int32_t *xsum, int64_t ldg, int64_t T, const uq_k_chunk *ch,
                    int64_t nch, float *y, int64_t ldy, void *work);
    size_t (*q8_gemm_work)(const uq_k_chunk *ch, int64_t nch); /* bytes of work for q8_gemm */
    /* int4 in the R16 layout (uniql.h), any T: nb <= UQ_K_R16_NB row blocks wb[i] (block data) with scales sb[i]
     * (the block's scale_cols * 16 float16 values, converted exactly in the kernel); groups g[0..ng): wcol = first chunk of the group inside a block,
     * n = kept columns, scol = scale column, xcol = x column (fp32), xq = byte offset of the group's int8
     * activations in a token's xq row (n values, zero padded to a multiple of 8). Writes
     * out[t * ldo + 16 i + l] = row l of block i, token t, for all 16 rows. */
    void (*r16_f32)(const uint8_t *const *wb, const uint16_t *const *sb, int nb, const float *x, int64_t ldx,
                    int64_t T, const uq_k_chunk *g, int64_t ng, float *out, int64_t ldo);
    /* pf: the decode prefetch plan (T == 1; NULL: none, e.g. prefill): hints only, the results do not depend on it */
    void (*r16_q8)(const uint8_t *const *wb, const uint16_t *const *sb, int nb, const int8_t *xq, int64_t ldq,
                   const float *xs, const int32_t *xsum, int64_t ldg, int64_t T, const uq_k_chunk *g, int64_t ng,
                   float *out, int64_t ldo, const struct uq_k_r16_pf *pf);
    /* row blocks a decode call of r16_q8 (with a plan) streams at once, one tile (0: 4); the driver hands each decode
     * task that many blocks, each a stream that the next task continues (see linear_r16) */
    int r16_decode_nb;
    /* optional attention helpers for nq (1..UQ_K_ATTN_HEADS) query heads that read the same K / V rows (one GQA group:
     * each row loaded, and converted, once for all of them), same results per head as the loops over dot / axpy they
     * replace: sc[j * ldsc + s] = dot(q + j * r, K + s * rc, r) * scale for s < n; out[j * r + i] (i < r) = sum over
     * s < n in order of axpy(p[j * ldp + s], V + s * rc) starting from 0, p = the softmax's probabilities already
     * multiplied by its normaliser (p[s] = e[s] * inv, the float product the axpy loop takes) */
    void (*attn_scores)(const float *q, int64_t nq, const float *K, int64_t rc, int64_t n, int64_t r, float scale,
                        float *sc, int64_t ldsc);
    void (*attn_accum)(const float *p, int64_t ldp, int64_t nq, const float *V, int64_t rc, int64_t n, int64_t r,
                       float *out);
    /* optional float16-cache twins (K / V rows of IEEE halves, converted exactly): the same results as attn_scores /
     * attn_accum over the converted rows, bit for bit; and the conversions of the cache writer and of the fallback
     * loops (round to nearest even: the values of uq_convert_f32_to_f16 / uq_convert_f16_to_f32, NaN payloads aside) */
    void (*attn_scores_f16)(const float *q, int64_t nq, const uint16_t *K, int64_t rc, int64_t n, int64_t r,
                            float scale, float *sc, int64_t ldsc);
    void (*attn_accum_f16)(const float *p, int64_t ldp, int64_t nq, const uint16_t *V, int64_t rc, int64_t n,
                           int64_t r, float *out);
    void (*f32_to_f16)(const float *x, int64_t n, uint16_t *y);
    void (*f16_to_f32)(const uint16_t *x, int64_t n, float *y);
    /* optional: uq_k_softmax_inplace and the element loop of uq_k_silu_mul, same results */
    float (*softmax)(float *sc, int64_t n);
    void (*silu_mul)(float *g, const float *u, int64_t n);
    /* optional: uq_k_q8_quant with cw = 0 (natural column order, what the R16 kernels read), same results */
    void (*q8_quant0)(const float *x, const uq_k_chunk *ch, int64_t nch, int8_t *xqrow, float *xs, int32_t *xsum);
} uq_kpath;

/* The AVX2 (F16C) float16 <-> float32 conversions (x86 builds; also used by the avx512 path). */
void uq_k_f32_to_f16_avx2(const float *x, int64_t n, uint16_t *y);
void uq_k_f16_to_f32_avx2(const uint16_t *x, int64_t n, float *y);
/* The AVX2 softmax and silu_mul (x86 builds; also used by the avx512 path). */
float uq_k_softmax_avx2(float *sc, int64_t n);
void uq_k_silu_mul_avx2(float *g, const float *u, int64_t n);
/* The AVX2 q8_quant0 (x86 builds; also used by the avx512 path). */
void uq_k_q8_quant0_avx2(const float *x, const uq_k_chunk *ch, int64_t nch, int8_t *xqrow, float *xs, int32_t *xsum);

#define UQ_K_R16_NB 8 /* row blocks per R16 kernel call (128 rows) */
_Static_assert(UQ_K_R16_NB * UQ_Q4_R16_ROWS == 128, "an R16 kernel call covers 8 blocks of 16 rows");
_Static_assert(UQ_Q4_R16_ROWS * UQ_Q4_R16_COLS / 2 == 64, "an R16 chunk (16 rows x 8 int4 codes) is 64 bytes");
_Static_assert(UQ_Q4_OFFSET == 8, "int4 code q means (q - 8) * scale: the W4A8 kernels subtract 8 * sum(x)");

/* The plain C twins of the R16 kernels (same layout, same results bit for bit). */
void uq_k_r16_f32_ref(const uint8_t *const *wb, const uint16_t *const *sb, int nb, const float *x, int64_t ldx,
                      int64_t T, const uq_k_chunk *g, int64_t ng, float *out, int64_t ldo);
void uq_k_r16_q8_ref(const uint8_t *const *wb, const uint16_t *const *sb, int nb, const int8_t *xq, int64_t ldq,
                     const float *xs, const int32_t *xsum, int64_t ldg, int64_t T, const uq_k_chunk *g, int64_t ng,
                     float *out, int64_t ldo, const uq_k_r16_pf *pf);
/* Code (0..15) and scale of stored row `row`, column `col` / scale column `sc` of an R16 weight. */
int uq_k_r16_code(const uq_linear *L, int64_t row, int64_t col);
float uq_k_r16_scale(const uq_linear *L, int64_t row, int64_t sc);

/* y[i] = x L[i]_sel^T (+ b) for n (1..4) weights on the same x, nseg_in and keep_in, each with its own nseg_out[i],
 * keep_out[i]: the same results as n uq_linear_forward calls. When all are R16 int4 of the same cols and group, x is
 * quantized once and all their row blocks run as one pool job (a decode step's Q / K / V or gate / up: fewer
 * synchronisations and activation passes); otherwise the n calls. */
uq_status uq_linear_forward_multi(int n, const uq_linear *const *L, const float *x, int64_t T,
                                  const int64_t *nseg_out, const int64_t *keep_out, int64_t nseg_in, int64_t keep_in,
                                  float *const *y);

/* The thread pool (pool.c): runs fn(arg, task, worker) for task = 0..ntasks-1 on the calling thread (worker 0)
 * and up to nthreads - 1 pool workers (worker ids 1..nthreads-1, each id used by one thread at a time: per-worker
 * scratch can be indexed by it); returns when every task has finished. Tasks are claimed one at a time in
 * increasing order; the caller never waits for a worker that has not claimed a task. Serial on the calling
 * thread when nthreads <= 1, ntasks == 1, inside a pool task, inside an OpenMP parallel region, or while another
 * thread's job runs. */
typedef void (*uq_pool_fn)(void *arg, int64_t task, int worker);
void uq_pool_run(int64_t ntasks, int nthreads, uq_pool_fn fn, void *arg);

/* The current path (initialised from the environment on first use; the ref path if that failed). */
const uq_kpath *uq_k_path(void);
/* Whether the CPU has a kernel path's features ("avx2": AVX2 + FMA; "avx512": AVX-512 F/BW/VL + VNNI; dispatch.c). */
int uq_k_cpu_has(const char *name);
/* Threads for parallel kernels (uq_kernels_threads). */
int uq_k_threads(void);
/* Whether int4 linears quantize activations to int8 (uq_kernels_q4_act() == UQ_Q4_ACT_INT8). */
int uq_k_q4_int8(void);

extern const uq_kpath uq_kpath_ref;
#if defined(__x86_64__) || defined(__i386__)
#define UQ_K_X86 1
extern const uq_kpath uq_kpath_avx2;
extern const uq_kpath uq_kpath_avx512;
#endif

/* Validates a weight descriptor before a model uses it: shape (rows, cols), kind, non-NULL data, and for int4 the
 * group and the per-segment scale layout (nseg_in input segments). `name` and `layer` (-1: none) make the message,
 * e.g. "layer 3 o_proj: ...". UQ_ERR_SHAPE / UQ_ERR_ARG. Used by the runtime for every linear. */
uq_status uq_linear_check(const uq_linear *L, const char *name, int64_t layer, int64_t rows, int64_t cols,
                          int64_t nseg_in);

#endif

/* test_kv16.c -- the float16 KV cache kernels: on every available path, uq_k_attention_f16 over a float16 cache
 * computes bit for bit what uq_k_attention computes over the same cache converted to float32 (full and partial RoPE
 * head layouts, head dims with and without a tail, decode and prefill chunks of 3 and 12 tokens from position 0 and
 * after a cached prefix, GQA), and the path's float32 -> float16
 * conversion rounds as uq_convert_f32_to_f16 does (normal, subnormal, overflowing values). */
#include "../kernels/kernels.h"
#include "test.h"

static void test_kv16_attention(void) {
    enum { NH = 8, NKV = 2, MAXS = 64, TMAX = 12 };
    const int64_t runs[][2] = {{1, 37}, {3, 37}, {12, 37}, {12, 0}}; /* (T, pos0) */
    const char *paths[] = {"ref", "avx2", "avx512"};
    const int64_t rs[] = {80, 13, 128, 12};
    unsigned long long seed = 7;
    for (size_t ri = 0; ri < sizeof rs / sizeof rs[0]; ri++) {
        const int64_t r = rs[ri], rc = r + 3, ncache = NKV * MAXS * rc;
        /* partial RoPE: r_rot rotary rows, the pass rows at k_off (a pruned head: k_off > r_rot) */
        const int64_t r_rot = ri == 3 ? 4 : r, k_off = ri == 3 ? 6 : r;
        float *q = malloc((size_t)(TMAX * NH * r) * sizeof(float)), *kc = malloc((size_t)ncache * sizeof(float));
        float *vc = malloc((size_t)ncache * sizeof(float)), *o = malloc((size_t)(TMAX * NH * r) * sizeof(float));
        float *e = malloc((size_t)(TMAX * NH * r) * sizeof(float));
        float *scr = malloc((size_t)(4 * ((NH / NKV) * MAXS + 2 * rc)) * sizeof(float));
        uint16_t *k16 = malloc((size_t)ncache * sizeof(uint16_t)), *v16 = malloc((size_t)ncache * sizeof(uint16_t));
        if (!q || !kc || !vc || !o || !e || !scr || !k16 || !v16) {
            CHECK(0, "kv16 attention: out of memory");
            return;
        }
        uq_test_fill(q, TMAX * NH * r, &seed, 1.0);
        uq_test_fill(kc, ncache, &seed, 3.0);
        uq_test_fill(vc, ncache, &seed, 3.0);
        /* the float32 cache holds exactly the float16 values */
        uq_convert_f32_to_f16(kc, ncache, k16);
        uq_convert_f32_to_f16(vc, ncache, v16);
        uq_convert_f16_to_f32(k16, ncache, kc);
        uq_convert_f16_to_f32(v16, ncache, vc);
        for (size_t pi = 0; pi < 3; pi++) {
            int av = 0;
            uq_kernels_available(paths[pi], &av);
            if (!av) continue;
            uq_kernels_set(paths[pi]);
            for (size_t ti = 0; ti < sizeof runs / sizeof runs[0]; ti++) {
                const int64_t T = runs[ti][0], pos0 = runs[ti][1];
                for (int nth = 1; nth <= 4; nth += 3) {
                    uq_k_attention(q, T, NH, NKV, r, r_rot, k_off, kc, vc, MAXS, rc, pos0, 0.125f, e, scr, nth);
                    uq_k_attention_f16(q, T, NH, NKV, r, r_rot, k_off, k16, v16, MAXS, rc, pos0, 0.125f, o, scr, nth);
                    CHECK(memcmp(o, e, (size_t)(T * NH * r) * sizeof(float)) == 0,
                          "float16 attention path %s r %lld r_rot %lld T %lld pos0 %lld threads %d: differs from "
                          "float32 over the converted cache", paths[pi], (long long)r, (long long)r_rot, (long long)T,
                          (long long)pos0, nth);
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
        free(k16);
        free(v16);
    }
}

static void test_kv16_convert(void) {
    enum { N = 203 };
    const char *paths[] = {"ref", "avx2", "avx512"};
    float x[N];
    unsigned long long seed = 3;
    uq_test_fill(x, N, &seed, 1.0);
    for (int i = 0; i < N; i++) {
        const int k = i % 7; /* spread over the float16 range: subnormals, normals, overflow */
        const float mag[7] = {1e-7f, 3e-5f, 1.0f, 300.0f, 65504.0f, 65519.0f, 1e6f};
        x[i] *= mag[k];
    }
    x[0] = 0.0f, x[1] = -0.0f, x[2] = 65520.0f, x[3] = -65520.0f, x[4] = 5.9604645e-08f, x[5] = 2.9802322e-08f;
    uint16_t want[N], got[N];
    uq_convert_f32_to_f16(x, N, want);
    for (size_t pi = 0; pi < 3; pi++) {
        int av = 0;
        uq_kernels_available(paths[pi], &av);
        if (!av) continue;
        uq_kernels_set(paths[pi]);
        for (int n = 0; n <= N; n += n < 17 ? 1 : 31) {
            memset(got, 0xAB, sizeof got);
            uq_k_f32_to_f16(x, n, got);
            int same = memcmp(got, want, (size_t)n * sizeof(uint16_t)) == 0;
            for (int i = n; i < N; i++) same &= got[i] == 0xABAB; /* nothing written past n */
            CHECK(same, "float16 conversion of path %s, n %d", paths[pi], n);
        }
    }
    uq_kernels_set("auto");
}

void test_kv16(void) {
    test_kv16_attention();
    test_kv16_convert();
}

/*
 * sample.c -- token-level utilities of the runtime:
 *   uq_nll:    nll_t = log sum_v exp(l_tv) - l_t,target  (max-shifted, accumulated in float64)
 *   uq_sample: greedy argmax, or softmax(l / temperature) restricted to the top-p nucleus, drawn with a
 *              caller-held splitmix64 state (deterministic for a given seed).
 */
#include <math.h>
#include <stdlib.h>

#include "uniql.h"

double uq_rng_uniform(uint64_t *rng) {
    uint64_t z = (*rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

uq_status uq_nll(const float *logits, int64_t T, int64_t vocab, const int32_t *targets, double *out_nll) {
    if (!logits || !targets || !out_nll) return uq_set_error(UQ_ERR_ARG, "nll: NULL argument");
    if (T < 1 || vocab < 1)
        return uq_set_error(UQ_ERR_ARG, "nll: T and vocab must be >= 1, got %lld and %lld", (long long)T,
                            (long long)vocab);
    for (int64_t t = 0; t < T; t++)
        if (targets[t] < 0 || targets[t] >= vocab)
            return uq_set_error(UQ_ERR_RANGE, "nll: target %lld is %d, outside [0, %lld)", (long long)t,
                                (int)targets[t], (long long)vocab);
    for (int64_t t = 0; t < T; t++) {
        const float *l = logits + t * vocab;
        double m = -INFINITY;
        for (int64_t v = 0; v < vocab; v++) {
            if (isnan(l[v]))
                return uq_set_error(UQ_ERR_NUMERIC, "nll: logits[%lld][%lld] is NaN", (long long)t, (long long)v);
            if (l[v] > m) m = l[v];
        }
        double s = 0.0;
        for (int64_t v = 0; v < vocab; v++) s += exp((double)l[v] - m);
        out_nll[t] = log(s) + m - (double)l[targets[t]];
    }
    return UQ_OK;
}

typedef struct {
    double p;
    int32_t id;
} uq_prob;

static int prob_desc(const void *a, const void *b) {
    const uq_prob *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

uq_status uq_sample(const float *logits, int64_t vocab, double temperature, double top_p, uint64_t *rng,
                    int32_t *out_id) {
    if (!logits || !rng || !out_id) return uq_set_error(UQ_ERR_ARG, "sample: NULL argument");
    if (vocab < 1 || vocab > INT32_MAX)
        return uq_set_error(UQ_ERR_ARG, "sample: vocab %lld outside [1, 2^31)", (long long)vocab);
    if (!(top_p > 0.0 && top_p <= 1.0))
        return uq_set_error(UQ_ERR_ARG, "sample: top_p must be in (0, 1], got %g", top_p);
    if (isnan(temperature)) return uq_set_error(UQ_ERR_ARG, "sample: temperature is NaN");
    int64_t best = 0;
    for (int64_t v = 0; v < vocab; v++) {
        if (isnan(logits[v])) return uq_set_error(UQ_ERR_NUMERIC, "sample: logits[%lld] is NaN", (long long)v);
        if (logits[v] > logits[best]) best = v;
    }
    if (temperature <= 0.0) {
        *out_id = (int32_t)best;
        return UQ_OK;
    }
    uq_prob *pr;
    uq_status st = uq_alloc((size_t)vocab * sizeof(uq_prob), (void **)&pr);
    if (st != UQ_OK) return st;
    double m = logits[best], sum = 0.0;
    for (int64_t v = 0; v < vocab; v++) {
        pr[v].p = exp(((double)logits[v] - m) / temperature);
        pr[v].id = (int32_t)v;
        sum += pr[v].p;
    }
    int64_t n = vocab;
    double mass = sum;
    if (top_p < 1.0) { /* nucleus: most probable first, smallest prefix whose mass reaches top_p */
        qsort(pr, (size_t)vocab, sizeof(uq_prob), prob_desc);
        double c = 0.0;
        for (n = 0; n < vocab;) {
            c += pr[n++].p;
            if (c >= top_p * sum) break;
        }
        mass = c;
    }
    double u = uq_rng_uniform(rng) * mass, c = 0.0;
    int32_t id = pr[n - 1].id;
    for (int64_t i = 0; i < n; i++) {
        c += pr[i].p;
        if (u < c) {
            id = pr[i].id;
            break;
        }
    }
    uq_free(pr);
    *out_id = id;
    return UQ_OK;
}

"""Structured sorting and allocation (uniql.compress.sorting -> C compress/sort*.c) against float64 NumPy references of
the formulas in docs/design.md §3.1-§3.6."""
import numpy as np
import pytest

import uniql
from uniql.compress import sorting as S

TOL_F64 = 1e-12  # closed-form scores, same formula in float64
TOL_RIDGE = 1e-10  # Cholesky-based diag inverse vs numpy.linalg.inv (condition number ~ 1e2)
TOL_QASVD64 = 1e-10  # relative error of the full-rank V/O change of basis, float64 weights
TOL_QASVD32 = 1e-5  # same with float32 weights in/out
TOL_OPT = 1e-8  # relative gap to the Eckart-Young optimum
TOL_ROPE = 1e-10  # attention logits through the sorted runtime layout


# ------------------------------------------------------------------------------------------- helpers --


def second_moment(rng, n, tokens=None, scale=1.0):
    """G = X^T X / 1 of tokens x n Gaussian features with uneven column scales (PSD, well conditioned)."""
    tokens = tokens or 4 * n
    X = rng.standard_normal((tokens, n)) * (scale * np.exp(rng.uniform(-1, 1, n)))
    return X.T @ X / tokens


def np_sqrtm(G, floor=S.QASVD_EIG_FLOOR):
    w, E = np.linalg.eigh(G)
    w = np.maximum(w, floor)
    return (E * np.sqrt(w)) @ E.T, (E / np.sqrt(w)) @ E.T


def np_ridge(G, lam):
    return 1.0 - lam * np.diag(np.linalg.inv(G + lam * np.eye(len(G))))


def np_argsort_desc(s):
    return np.argsort(-np.asarray(s), kind="stable")


def hf_rope(x, pos, theta):
    """HF rotate-half RoPE over the last axis of x (..., 2m): dim i pairs with i + m at frequency theta[i]."""
    m = x.shape[-1] // 2
    ang = pos[:, None] * theta[None, :]  # (T, m)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = np.concatenate([-x[..., m:], x[..., :m]], -1)
    return x * cos + rot * sin


def runtime_rope(x, pos, theta, freq):
    """Runtime pair-interleaved RoPE: rows (2j, 2j+1) rotate at theta[freq[j]]; x (T, 2*len(freq))."""
    out = x.copy()
    ang = pos[:, None] * theta[freq][None, :]
    a, c = x[:, 0::2], x[:, 1::2]
    out[:, 0::2] = a * np.cos(ang) - c * np.sin(ang)
    out[:, 1::2] = c * np.cos(ang) + a * np.sin(ang)
    return out


# ---------------------------------------------------------------------------------------- keep size --


@pytest.mark.parametrize("full,gran", [(14336, 128), (1536, 128), (128, 16), (64, 8), (128, 16), (64, 2), (96, 16)])
def test_keep_size_matches_python_round_half_even(full, gran):
    for rho in np.linspace(0.0, 1.0, 201):
        want = min(max(gran * round(rho * full / gran), gran), full)
        assert S.keep_size(full, rho, gran) == want, (full, gran, rho)
    assert S.keep_size(14336, 0.85, 128) == 12160 and S.keep_size(128, 0.85, 16) == 112
    assert S.keep_size(64, 0.85, 2) == 54


def test_keep_size_non_multiple_never_exceeds_full():
    sizes = {S.keep_size(100, rho, 16) for rho in np.linspace(0, 1, 1001)}
    assert sizes == {16, 32, 48, 64, 80, 96, 100}
    assert S.keep_size(100, 1.0, 16) == 100 and S.keep_size(100, 0.99, 16) == 96


def test_keep_granularity_small_model_rule():
    assert S.keep_granularity(14336, S.GRAN_MLP) == 128
    assert S.keep_granularity(1536, S.GRAN_MLP) == 128  # SmolLM2 MLP
    assert S.keep_granularity(64, S.GRAN_HEAD, 2) == 8  # SmolLM2 head dim
    assert S.keep_granularity(100, S.GRAN_MLP) == 8  # 12 -> power of two below
    assert S.keep_granularity(8, S.GRAN_HEAD, 2) == 2  # pairs stay whole
    assert S.keep_granularity(16, S.GRAN_HEAD, 4) == 4  # partial RoPE: r/4 pairs + r/2 pass dims
    assert S.keep_granularity(64, S.GRAN_SSM_HEAD, 2) == 2


# ------------------------------------------------------------------------------------------ argsort --


def test_argsort_desc_stable_with_ties(rng):
    s = np.floor(rng.uniform(-5, 5, 2001))  # many ties
    s[::7] = -0.0
    s[1::7] = 0.0
    np.testing.assert_array_equal(S.argsort_desc(s), np_argsort_desc(s))
    np.testing.assert_array_equal(S.argsort_desc([1.0]), [0])
    np.testing.assert_array_equal(S.argsort_desc(np.ones(9)), np.arange(9))


# ---------------------------------------------------------------------------------------------- MLP --


@pytest.mark.parametrize("lam,scale", [(1.0, 1.0), (1.0, 30.0), (1e-4, 0.1), (3.0, 1.0)])
def test_ridge_scores_match_numpy(rng, lam, scale):
    G = second_moment(rng, 48, scale=scale)
    s = S.ridge_scores(G, lam)
    ref = np_ridge(G, lam)
    np.testing.assert_allclose(s, ref, rtol=0, atol=TOL_RIDGE)
    np.testing.assert_allclose(s, np.diag(G @ np.linalg.inv(G + lam * np.eye(48))), rtol=0, atol=TOL_RIDGE)
    res = S.sort_mlp(G, lam)
    np.testing.assert_array_equal(res.perm, np_argsort_desc(res.scores))


def test_ridge_reads_lower_triangle_only(rng):
    G = second_moment(rng, 16)
    junk = np.tril(G) + np.triu(rng.standard_normal((16, 16)), 1)
    np.testing.assert_array_equal(S.ridge_scores(junk), S.ridge_scores(G))


def test_ridge_leaves_input_unchanged(rng):
    G = second_moment(rng, 16)
    G0 = G.copy()
    S.sort_mlp(G)
    np.testing.assert_array_equal(G, G0)


# ---------------------------------------------------------------------------------------------- Q/K --


def qk_stats(rng, n_heads, n_kv, d):
    return rng.uniform(0.0, 2.0, (n_heads, d)) ** 2, rng.uniform(0.0, 2.0, (n_kv, d)) ** 2


def np_qk_scores(cq, ck):
    n_heads, d = cq.shape
    n_kv = ck.shape[0]
    q = cq.reshape(n_kv, n_heads // n_kv, d).sum(1)
    return np.sqrt(q * ck)


@pytest.mark.parametrize("n_heads,n_kv,d", [(9, 3, 16), (4, 4, 8), (8, 1, 32)])
def test_sort_qk_full_matches_numpy(rng, n_heads, n_kv, d):
    cq, ck = qk_stats(rng, n_heads, n_kv, d)
    for c in (cq, ck):  # force equal pair scores for pairs 1 and 2 (tie -> ascending index)
        c[:, 1], c[:, 1 + d // 2] = c[:, 2], c[:, 2 + d // 2]
    res = S.sort_qk(cq, ck, "full")
    s = np_qk_scores(cq, ck)
    np.testing.assert_allclose(res.scores, s, rtol=TOL_F64, atol=0)
    for g in range(n_kv):
        p = np_argsort_desc(s[g, : d // 2] + s[g, d // 2:])
        np.testing.assert_array_equal(res.freq[g], p)
        want = np.empty(d, np.int64)
        want[0::2], want[1::2] = p, p + d // 2
        np.testing.assert_array_equal(res.row_perm[g], want)
    assert res.freq.dtype == np.int32 and res.row_perm.dtype == np.int64


def test_sort_qk_identity_layout_for_hf_head():
    """Equal scores: the runtime layout of an HF head is rows [0, d/2, 1, d/2+1, ...] with identity freq."""
    d = 8
    res = S.sort_qk(np.ones((2, d)), np.ones((1, d)), "full")
    np.testing.assert_array_equal(res.row_perm[0], [0, 4, 1, 5, 2, 6, 3, 7])
    np.testing.assert_array_equal(res.freq[0], np.arange(4))


@pytest.mark.parametrize("rope", ["full", "partial"])
def test_sorted_layout_preserves_attention_logits(rng, rope):
    """q.k after RoPE through the sorted runtime layout (rows permuted with proj_rows, pairs rotated at
    freq) equals HF's logits at full size, and at keep size r equals HF's logits restricted to the kept
    dims (whole pairs, original frequencies)."""
    n_heads, n_kv, d, n, T = 4, 2, 16, 24, 7
    Wq = rng.standard_normal((n_heads * d, n))
    Wk = rng.standard_normal((n_kv * d, n))
    X = rng.standard_normal((T, n))
    pos = np.arange(T, dtype=np.float64) * 3.0
    rd = d if rope == "full" else d // 2  # rotary dims
    theta = 10000.0 ** (-np.arange(rd // 2) * 2.0 / rd)
    cq, ck = qk_stats(rng, n_heads, n_kv, d)
    res = S.sort_qk(cq, ck, rope)
    hpg = n_heads // n_kv

    def hf_head(W, h):
        x = X @ W[h * d:(h + 1) * d].T
        if rope == "full":
            return hf_rope(x, pos, theta)
        return np.concatenate([hf_rope(x[:, :rd], pos, theta), x[:, rd:]], -1)

    Wq_s, Wk_s = Wq[res.proj_rows(n_heads)], Wk[res.proj_rows(n_kv)]

    def rt_head(W, h, g):
        x = X @ W[h * d:(h + 1) * d].T
        return np.concatenate([runtime_rope(x[:, :rd], pos, theta, res.freq[g]), x[:, rd:]], -1)

    for r in ([d, 8, 4] if rope == "full" else [d, 8, 4]):
        rows = res.keep_rows(r)
        for h in range(n_heads):
            g = h // hpg
            perm = res.row_perm[g]
            kept_orig = perm[rows]  # original HF dims that survive
            mask = np.zeros(d)
            mask[kept_orig] = 1.0
            ref = (hf_head(Wq, h) * mask) @ hf_head(Wk, g).T
            got = rt_head(Wq_s, h, g)[:, rows] @ rt_head(Wk_s, g, g)[:, rows].T
            np.testing.assert_allclose(got, ref, rtol=0, atol=TOL_ROPE * np.abs(ref).max())
            if rope == "full":  # kept dims are whole pairs
                lo = kept_orig[kept_orig < d // 2]
                assert set(kept_orig) == set(lo) | set(lo + d // 2)


def test_sort_qk_partial_and_none_match_numpy(rng):
    n_heads, n_kv, d = 6, 2, 16
    cq, ck = qk_stats(rng, n_heads, n_kv, d)
    s = np_qk_scores(cq, ck)
    res = S.sort_qk(cq, ck, "partial")
    assert res.freq.shape == (n_kv, d // 4)
    for g in range(n_kv):
        p = np_argsort_desc(s[g, : d // 4] + s[g, d // 4: d // 2])
        np.testing.assert_array_equal(res.freq[g], p)
        np.testing.assert_array_equal(res.row_perm[g, 0:d // 2:2], p)
        np.testing.assert_array_equal(res.row_perm[g, 1:d // 2:2], p + d // 4)
        np.testing.assert_array_equal(res.row_perm[g, d // 2:], d // 2 + np_argsort_desc(s[g, d // 2:]))
    np.testing.assert_array_equal(res.keep_rows(8), [0, 1, 2, 3, 8, 9, 10, 11])
    none = S.sort_qk(cq, ck, "none")
    assert none.freq.shape == (n_kv, 0)
    for g in range(n_kv):
        np.testing.assert_array_equal(none.row_perm[g], np_argsort_desc(s[g]))
    np.testing.assert_array_equal(none.keep_rows(5), np.arange(5))


# ---------------------------------------------------------------------------------------------- V/O --


def vo_problem(rng, n=24, n_heads=6, n_kv=2, d=4, dtype=np.float64, bias=True):
    G = second_moment(rng, n)
    wv = rng.standard_normal((n_kv * d, n)).astype(dtype)
    wo = rng.standard_normal((n, n_heads * d)).astype(dtype)
    bv = rng.standard_normal(n_kv * d).astype(dtype) if bias else None
    bo = rng.standard_normal(n).astype(dtype) if bias else None
    return G, wv, wo, bv, bo


def attention_out(X, A, wv, wo, bv, bo, n_heads, n_kv, d):
    """sum_h A_h (X V_g + bv_g) O_h + bo for per-head row-stochastic attention weights A (H, T, T)."""
    out = np.zeros((X.shape[0], wo.shape[0])) + (0.0 if bo is None else bo)
    for h in range(n_heads):
        g = h // (n_heads // n_kv)
        v = X @ wv[g * d:(g + 1) * d].T.astype(np.float64)
        if bv is not None:
            v = v + bv[g * d:(g + 1) * d]
        out += A[h] @ v @ wo[:, h * d:(h + 1) * d].T.astype(np.float64)
    return out


@pytest.mark.parametrize("split,joint", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype,tol", [(np.float64, TOL_QASVD64), (np.float32, TOL_QASVD32)])
def test_qasvd_exact_at_full_rank_with_bias_fold(rng, split, joint, dtype, tol):
    n, n_heads, n_kv, d, T = 24, 6, 2, 4, 9
    G, wv, wo, bv, bo = vo_problem(rng, n, n_heads, n_kv, d, dtype)
    before = [a.copy() for a in (G, wv, wo, bv, bo)]
    res = S.qasvd_vo(G, wv, wo, n_heads=n_heads, n_kv=n_kv, head_dim=d, bv=bv, bo=bo, split_sigma=split,
                     joint_o=joint)
    for a, b in zip((G, wv, wo, bv, bo), before):
        np.testing.assert_array_equal(a, b)  # inputs untouched
    assert res.wv.dtype == dtype and res.wo.dtype == dtype and res.bo.dtype == dtype
    X = rng.standard_normal((T, n))
    A = rng.uniform(size=(n_heads, T, T))
    A /= A.sum(-1, keepdims=True)  # attention weights sum to one: the bias fold is exact
    ref = attention_out(X, A, wv, wo, bv, bo, n_heads, n_kv, d)
    got = attention_out(X, A, res.wv, res.wo, None, res.bo, n_heads, n_kv, d)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= tol


def test_qasvd_bias_fold_equals_rotated_bias(rng):
    """bo' = bo + sum_h bv_g O_h (original O) equals bo + sum_h (bv_g W) O_h' with the rotated V bias
    bv_g' = bv_g W (W^T the orthogonal change of value basis, recovered from O_h' = W^T O_h)."""
    n, n_heads, n_kv, d = 24, 6, 2, 4
    G, wv, wo, bv, bo = vo_problem(rng, n, n_heads, n_kv, d)
    res = S.qasvd_vo(G, wv, wo, n_heads=n_heads, n_kv=n_kv, head_dim=d, bv=bv, bo=bo)
    direct, rotated = bo.copy(), bo.copy()
    for h in range(n_heads):
        g = h // (n_heads // n_kv)
        O, On = wo[:, h * d:(h + 1) * d].T, res.wo[:, h * d:(h + 1) * d].T
        Wt = np.linalg.lstsq(O.T, On.T, rcond=None)[0].T  # On = Wt O
        np.testing.assert_allclose(Wt @ Wt.T, np.eye(d), atol=1e-10)
        direct += bv[g * d:(g + 1) * d] @ O
        rotated += (bv[g * d:(g + 1) * d] @ Wt.T) @ On
    np.testing.assert_allclose(res.bo, direct, rtol=0, atol=1e-12 * np.abs(direct).max())
    np.testing.assert_allclose(res.bo, rotated, rtol=0, atol=1e-10 * np.abs(direct).max())


def test_qasvd_singular_values_and_best_whitened_subspace(rng):
    n, n_heads, n_kv, d = 24, 6, 2, 8
    G, wv, wo, _, _ = vo_problem(rng, n, n_heads, n_kv, d, bias=False)
    res = S.qasvd_vo(G, wv, wo, n_heads=n_heads, n_kv=n_kv, head_dim=d)
    assert res.bo is None
    Gh, _ = np_sqrtm(G)
    hpg = n_heads // n_kv
    for g in range(n_kv):
        V = wv[g * d:(g + 1) * d].T
        U, sig, _ = np.linalg.svd(Gh @ V, full_matrices=False)
        np.testing.assert_allclose(res.singular_values[g], sig, rtol=1e-10)
        Vn = res.wv[g * d:(g + 1) * d].T
        for r in (1, 3, 5):
            # span of the kept whitened value dims = top-r left singular subspace of G^{1/2} V_g
            Q = np.linalg.qr(Gh @ Vn[:, :r])[0]
            np.testing.assert_allclose(Q @ Q.T, U[:, :r] @ U[:, :r].T, atol=1e-9)
            for h in range(g * hpg, (g + 1) * hpg):
                O, On = wo[:, h * d:(h + 1) * d].T, res.wo[:, h * d:(h + 1) * d].T
                err = np.linalg.norm(Gh @ (V @ O - Vn[:, :r] @ On[:r]))
                # = the projection residual of the whitened product onto that subspace ...
                P = U[:, :r] @ U[:, :r].T
                np.testing.assert_allclose(err, np.linalg.norm((np.eye(n) - P) @ Gh @ V @ O), rtol=1e-9)
                # ... which cannot beat the Eckart-Young optimum of the product
                opt = np.sqrt(np.sum(np.linalg.svd(Gh @ V @ O, compute_uv=False)[r:] ** 2))
                assert err >= opt * (1 - TOL_OPT)


@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (6, 2)])
def test_qasvd_joint_o_is_optimal_rank_r_product(rng, n_heads, n_kv):
    """JOINT_O (MHA variant for n_heads == n_kv): the truncated whitened V.O of each group reaches the
    Eckart-Young optimum of G^{1/2} V_g [O_h ...], and the group's O rows are orthonormal."""
    n, d = 24, 8
    G, wv, wo, _, _ = vo_problem(rng, n, n_heads, n_kv, d, bias=False)
    res = S.qasvd_vo(G, wv, wo, n_heads=n_heads, n_kv=n_kv, head_dim=d, joint_o=True)
    Gh, _ = np_sqrtm(G)
    hpg = n_heads // n_kv
    for g in range(n_kv):
        V, Vn = wv[g * d:(g + 1) * d].T, res.wv[g * d:(g + 1) * d].T
        heads = range(g * hpg, (g + 1) * hpg)
        Ocat = np.concatenate([wo[:, h * d:(h + 1) * d].T for h in heads], 1)
        Ocat_n = np.concatenate([res.wo[:, h * d:(h + 1) * d].T for h in heads], 1)
        np.testing.assert_allclose(Ocat_n @ Ocat_n.T, np.eye(d), atol=1e-10)
        sig = np.linalg.svd(Gh @ V @ Ocat, compute_uv=False)  # rank <= d: the rest is ~0
        np.testing.assert_allclose(res.singular_values[g], sig[:d], rtol=1e-9)
        for r in (1, 3, 6):
            err = np.linalg.norm(Gh @ (V @ Ocat - Vn[:, :r] @ Ocat_n[:r]))
            opt = np.sqrt(np.sum(sig[r:] ** 2))
            assert abs(err - opt) <= TOL_OPT * np.linalg.norm(sig)


def test_qasvd_split_sigma_balances_factors(rng):
    n, n_heads, n_kv, d = 24, 4, 4, 4
    G, wv, wo, _, _ = vo_problem(rng, n, n_heads, n_kv, d, bias=False)
    a = S.qasvd_vo(G, wv, wo, n_heads=n_heads, n_kv=n_kv, head_dim=d, joint_o=True)
    b = S.qasvd_vo(G, wv, wo, n_heads=n_heads, n_kv=n_kv, head_dim=d, joint_o=True, split_sigma=True)
    np.testing.assert_allclose(a.singular_values, b.singular_values, rtol=1e-12)
    for h in range(n_heads):
        On = b.wo[:, h * d:(h + 1) * d].T  # rows scaled by sqrt(S): row norms = sqrt(sigma)
        np.testing.assert_allclose(np.linalg.norm(On, axis=1), np.sqrt(b.singular_values[h]), rtol=1e-10)


def test_qasvd_rank_deficient_G_stays_exact(rng):
    """G of rank < n (fewer tokens than features): the eigenvalue floor keeps G^{-1/2} G^{1/2} = I."""
    n, n_heads, n_kv, d = 16, 2, 1, 4
    X = rng.standard_normal((6, n))
    G = X.T @ X
    wv, wo = rng.standard_normal((d, n)), rng.standard_normal((n, n_heads * d))
    res = S.qasvd_vo(G, wv, wo, n_heads=n_heads, n_kv=n_kv, head_dim=d)
    for h in range(n_heads):
        ref = wv.T @ wo[:, h * d:(h + 1) * d].T
        got = res.wv.T @ res.wo[:, h * d:(h + 1) * d].T
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-7


# -------------------------------------------------------------------------------------------- Mamba2 --


def test_ssm_state_scores_match_numpy(rng):
    H, G, N = 8, 2, 16
    dB, C = rng.uniform(0, 3, (H, N)), rng.uniform(0, 3, (G, N))
    res = S.sort_ssm_state(dB, C)
    ref = np.sqrt(dB).reshape(G, H // G, N).sum(1) * np.sqrt(C)
    np.testing.assert_allclose(res.scores, ref, rtol=TOL_F64)
    for g in range(G):
        np.testing.assert_array_equal(res.perm[g], np_argsort_desc(ref[g]))


def test_ssm_head_channels_match_numpy(rng):
    H, P, lam = 3, 8, 1e-4
    Gm = second_moment(rng, H * P, scale=0.05)
    res = S.sort_ssm_head_channels(Gm, H, P, lam)
    ref = np_ridge(Gm, lam)
    np.testing.assert_allclose(res.scores, ref, rtol=0, atol=TOL_RIDGE)
    for h in range(H):
        np.testing.assert_array_equal(res.perm[h], np_argsort_desc(res.scores[h * P:(h + 1) * P]))


# ---------------------------------------------------------------------------------------- allocation --


def test_block_importance_matches_torch_cosine(rng):
    torch = pytest.importorskip("torch")
    L, B, n = 5, 7, 33
    x = rng.standard_normal((L, B, n)).astype(np.float32)
    y = (x + rng.standard_normal((L, B, n)) * np.linspace(0.1, 2, L)[:, None, None]).astype(np.float32)
    y[0, 0] = 0.0  # zero vector: eps clamp, cosine 0
    got = S.block_importance(x, y)
    ref = 1 - torch.nn.functional.cosine_similarity(torch.from_numpy(x).double(), torch.from_numpy(y).double(),
                                                   dim=-1).mean(-1).numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    assert np.all(np.diff(got[1:]) > 0)  # more noise -> less similar -> more important
    assert S.block_importance(x[2], y[2]) == pytest.approx(got[2], abs=TOL_F64)


def np_alloc(imp, keep, eps=0.1, maxp=0.85):
    e = np.exp(-(imp - imp.min()) / eps)
    return 1 - np.clip(len(imp) * (1 - keep) * e / e.sum(), 0, maxp)


@pytest.mark.parametrize("keep", [1.0, 0.95, 0.85, 0.75, 0.65])
def test_alloc_keep_ratios_mean_and_formula(rng, keep):
    imp = rng.uniform(0.02, 0.12, 24)
    kr = S.alloc_keep_ratios(imp, keep)
    np.testing.assert_allclose(kr, np_alloc(imp, keep), rtol=0, atol=TOL_F64)
    if np.all(1 - kr < S.ALLOC_MAX_PRUNE):
        assert np.mean(1 - kr) == pytest.approx(1 - keep, abs=TOL_F64)
    order = np.argsort(imp)
    assert np.all(np.diff(kr[order]) >= 0)  # monotone: more important -> kept more


def test_alloc_clamp_fires():
    imp = np.array([0.0, 0.5, 0.5, 0.5])
    kr = S.alloc_keep_ratios(imp, 0.6)
    assert kr[0] == pytest.approx(1 - S.ALLOC_MAX_PRUNE)
    assert np.mean(1 - kr) < 0.4  # the clip does not redistribute
    kr2 = S.alloc_keep_ratios(imp, 0.6, max_prune=0.3)
    assert kr2[0] == pytest.approx(0.7)


# ------------------------------------------------------------------------------------------ bad input --


def test_bad_inputs_raise_named_errors(rng):
    G = second_moment(rng, 8)
    with pytest.raises(uniql.InvalidArgumentError, match="lam must be finite and > 0"):
        S.ridge_scores(G, 0.0)
    with pytest.raises(uniql.InvalidArgumentError, match="lam"):
        S.sort_mlp(G, -1.0)
    with pytest.raises(uniql.ShapeError, match="G must be a non-empty square"):
        S.ridge_scores(np.zeros((3, 4)))
    Gn = G.copy()
    Gn[5, 2] = np.nan
    with pytest.raises(uniql.NumericError, match="NaN"):
        S.ridge_scores(Gn)
    with pytest.raises(uniql.NumericError, match="PSD"):
        S.ridge_scores(-10 * np.eye(4))
    with pytest.raises(uniql.NumericError, match="scores contains NaN at flat index 2"):
        S.argsort_desc([1.0, 2.0, np.nan])
    cq, ck = qk_stats(rng, 4, 2, 7)
    with pytest.raises(uniql.ShapeError, match="must be even"):
        S.sort_qk(cq, ck, "full")
    with pytest.raises(uniql.ShapeError, match="multiple of 4"):
        S.sort_qk(*qk_stats(rng, 4, 2, 6), "partial")
    with pytest.raises(uniql.ShapeError, match="multiple of n_kv"):
        S.sort_qk(*qk_stats(rng, 5, 2, 8))
    with pytest.raises(uniql.InvalidArgumentError, match="rope must be one of"):
        S.sort_qk(*qk_stats(rng, 4, 2, 8), "yarn")
    cq, ck = qk_stats(rng, 4, 2, 8)
    ck[1, 3] = np.inf
    with pytest.raises(uniql.NumericError, match="ck_diag contains Inf"):
        S.sort_qk(cq, ck)
    ck[1, 3] = -1.0
    with pytest.raises(uniql.InvalidArgumentError, match="ck_diag must be >= 0"):
        S.sort_qk(cq, ck)
    res = S.sort_qk(*qk_stats(rng, 4, 2, 8))
    with pytest.raises(uniql.RangeError, match="whole pairs"):
        res.keep_rows(3)
    with pytest.raises(uniql.InvalidArgumentError, match="global_keep must be in"):
        S.alloc_keep_ratios([0.1, 0.2], 1.5)
    with pytest.raises(uniql.InvalidArgumentError, match="global_keep"):
        S.alloc_keep_ratios([0.1, 0.2], -0.1)
    with pytest.raises(uniql.InvalidArgumentError, match="eps"):
        S.alloc_keep_ratios([0.1, 0.2], 0.8, eps=0.0)
    with pytest.raises(uniql.NumericError, match="importance contains NaN"):
        S.alloc_keep_ratios([0.1, np.nan], 0.8)
    with pytest.raises(uniql.InvalidArgumentError, match="keep_ratio must be in"):
        S.keep_size(128, 1.01, 16)
    with pytest.raises(uniql.InvalidArgumentError, match="granularity must be in"):
        S.keep_size(8, 0.5, 16)
    with pytest.raises(uniql.ShapeError, match="x and y must have the same shape"):
        S.block_importance(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(uniql.ShapeError, match="H .* must be a multiple of G"):
        S.sort_ssm_state(np.ones((3, 4)), np.ones((2, 4)))


def test_qasvd_bad_inputs(rng):
    G, wv, wo, bv, bo = vo_problem(rng, 24, 6, 2, 4)
    kw = dict(n_heads=6, n_kv=2, head_dim=4)
    with pytest.raises(uniql.ShapeError, match=r"wo must have shape \(24, 24\)"):
        S.qasvd_vo(G, wv, wo[:, :20], **kw)
    with pytest.raises(uniql.ShapeError, match="multiple of n_kv"):
        S.qasvd_vo(G, wv, wo, n_heads=6, n_kv=4, head_dim=4)
    with pytest.raises(uniql.DTypeError, match="bv must have the dtype of wv"):
        S.qasvd_vo(G, wv, wo, bv=bv.astype(np.float32), **kw)
    with pytest.raises(uniql.InvalidArgumentError, match="eig_floor"):
        S.qasvd_vo(G, wv, wo, eig_floor=0.0, **kw)
    Gn = G.copy()
    Gn[3, 1] = np.inf
    with pytest.raises(uniql.NumericError, match="G .*Inf"):
        S.qasvd_vo(Gn, wv, wo, **kw)
    wv = wv.copy()
    wv[1, 2] = np.nan
    with pytest.raises(uniql.NumericError, match="wv contains NaN"):
        S.qasvd_vo(G, wv, wo, **kw)
    with pytest.raises(uniql.UnsupportedError, match="larger than the hidden size"):
        S.qasvd_vo(np.eye(3), np.ones((8, 3)), np.ones((3, 8)), n_heads=2, n_kv=2, head_dim=4)

"""int4 quantization (uniql.compress.quant -> csrc/compress/q4.c): RTN bit-exact against a NumPy implementation of
the documented formula, GPTQ against a slow column-by-column float64 NumPy GPTQ, pack/unpack byte-exact,
error bounds, and bad inputs."""
import dataclasses

import numpy as np
import pytest

import uniql
from uniql import _C
from uniql.compress import quant as q4

TOL_HALF_STEP = 1e-5     # |w - w_hat| <= (s/2)(1 + TOL_HALF_STEP): float32 roundings of s and of 7s (~2^-20 rel.)
RTOL_SCALE_GPTQ = 1e-6   # GPTQ scales vs the float64 reference (float32 storage, different update order)
GPTQ_GAIN = 0.85         # GPTQ output error must be below this fraction of RTN's on correlated inputs


# ---------------------------------------------------------------------------------------- references


def quantize_ref(W: np.ndarray, group: int):
    """The format-v1 quantizer in NumPy: s = float32(amax / 7.5), q = clip(rint(w / s) + 8, 0, 15) (half-even)."""
    rows, cols = W.shape
    ng = -(-cols // group)
    codes = np.empty((rows, cols), np.uint8)
    scales = np.empty((rows, ng), np.float32)
    for g in range(ng):
        blk = W[:, g * group:(g + 1) * group].astype(np.float64)
        s = (np.abs(blk).max(axis=1) / 7.5).astype(np.float32)
        scales[:, g] = s
        codes[:, g * group:(g + 1) * group] = codes_of(blk, s)
    return codes, scales


def asym_codes(w: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    s64 = s.astype(np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.rint(w / s64) + z[:, None], 0, 15)
    return np.where(s64 == 0, z[:, None], q).astype(np.uint8)


def codes_of(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Symmetric codes: the grid with zero point 8."""
    return asym_codes(w, s, np.full(w.shape[0], 8, np.uint8))


def pack_ref(codes: np.ndarray) -> np.ndarray:
    rows, cols = codes.shape
    padded = np.full((rows, cols + (cols & 1)), 8, np.uint8)
    padded[:, :cols] = codes
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)


def _gptq_prepare(W: np.ndarray, H: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ's float64 preamble: H symmetrised from its lower triangle, dead columns (H_ii = 0) get H_ii = 1 and
    zero weights, relative damping of the diagonal."""
    W = W.astype(np.float64)
    H = np.tril(H) + np.tril(H, -1).T
    cols = W.shape[1]
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    return W, H + damp * np.mean(np.diag(H)) * np.eye(cols)


def gptq_ref(W: np.ndarray, H: np.ndarray, group: int, damp: float = 0.01):
    """Unblocked float64 GPTQ: dead columns, relative damping, U = chol_upper(H^-1), one column at a time,
    the group's scale from the updated weights when the group starts."""
    W, H = _gptq_prepare(W, H, damp)
    rows, cols = W.shape
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # H^-1 = U^T U
    codes = np.empty((rows, cols), np.uint8)
    scales = np.empty((rows, -(-cols // group)), np.float32)
    for i in range(cols):
        if i % group == 0:
            scales[:, i // group] = (np.abs(W[:, i:i + group]).max(axis=1) / 7.5).astype(np.float32)
        s = scales[:, i // group]
        codes[:, i] = codes_of(W[:, i:i + 1], s)[:, 0]
        err = (W[:, i] - (codes[:, i].astype(np.float64) - 8) * s.astype(np.float64)) / U[i, i]
        W[:, i + 1:] -= np.outer(err, U[i, i + 1:])
    return codes, scales


def correlated_inputs(rng, T, n, mix=0.8):
    """Tokens whose features share a few strong directions (like real activations)."""
    basis = rng.standard_normal((4, n))
    return (rng.standard_normal((T, n)) * (1 - mix) + rng.standard_normal((T, 4)) @ basis * mix).astype(np.float32)


# ----------------------------------------------------------------------------------------------- RTN


@pytest.mark.parametrize("group", [1, 4, 32, 128])
@pytest.mark.parametrize("rows", [1, 3, 7])
def test_rtn_bit_exact_and_half_step_bound(rng, group, rows):
    for cols in sorted({1, max(group - 1, 1), group, group + 1, 2 * group + 3}):
        W = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 10, (rows, 1))).astype(np.float32)
        W_before = W.copy()
        q = q4.quantize_rtn(W, group=group)
        codes, scales = quantize_ref(W, group)
        np.testing.assert_array_equal(q.scales, scales)
        np.testing.assert_array_equal(q4.unpack(q.packed, cols), codes)
        np.testing.assert_array_equal(q.packed, pack_ref(codes))
        D = q4.dequantize(q)
        assert D.dtype == np.float32 and D.shape == W.shape
        step = np.repeat(q.scales, group, axis=1)[:, :cols].astype(np.float64)
        assert np.all(np.abs(W - D.astype(np.float64)) <= 0.5 * step * (1 + TOL_HALF_STEP))
        np.testing.assert_array_equal(D, ((codes.astype(np.float64) - 8) * step).astype(np.float32))
        np.testing.assert_array_equal(W, W_before)


def test_rtn_rounds_half_to_even_and_zero_groups():
    # amax 7.5 -> s = 1 exactly: w/s = k + 0.5 rounds to even; +7.5 -> 8 clamps to 15, -7.5 -> -8 -> 0
    W = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, 7.5, -7.5, 0.0],
                  [0.0] * 8], np.float32)
    q = q4.quantize_rtn(W, group=8)
    assert q.scales.tolist() == [[1.0], [0.0]]
    assert q4.unpack(q.packed, 8).tolist() == [[8, 10, 10, 8, 6, 15, 0, 8], [8] * 8]


# ------------------------------------------------------------------------------------- pack / unpack


@pytest.mark.parametrize("cols", [1, 2, 7, 128, 129])
def test_pack_unpack_byte_exact(rng, cols):
    codes = rng.integers(0, 16, (5, cols), dtype=np.uint8)
    packed = q4.pack(codes)
    np.testing.assert_array_equal(packed, pack_ref(codes))
    np.testing.assert_array_equal(q4.unpack(packed, cols), codes)


def test_pack_rejects_codes_above_15():
    codes = np.zeros((2, 3), np.uint8)
    codes[1, 2] = 16
    with pytest.raises(uniql.RangeError, match="row 1, column 2 is above 15"):
        q4.pack(codes)
    with pytest.raises(uniql.ShapeError, match=r"packed must have shape \(rows >= 1, 2\) for cols = 4"):
        q4.unpack(np.zeros((2, 3), np.uint8), 4)


# ---------------------------------------------------------------------------------------------- GPTQ


@pytest.mark.parametrize("rows,cols,group,block", [(5, 16, 8, None), (3, 13, 4, None), (4, 9, 128, None),
                                                   (6, 24, 8, 3), (6, 24, 8, 20), (2, 10, 1, None)])
def test_gptq_matches_float64_reference(rng, rows, cols, group, block):
    X = correlated_inputs(rng, 256, cols)
    H = X.astype(np.float64).T @ X.astype(np.float64) / 256
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    H_before, W_before = H.copy(), W.copy()
    q = q4.quantize_gptq(W, H, group=group, block=block)
    codes, scales = gptq_ref(W, H, group)
    np.testing.assert_array_equal(q4.unpack(q.packed, cols), codes)
    np.testing.assert_allclose(q.scales, scales, rtol=RTOL_SCALE_GPTQ)
    np.testing.assert_array_equal(H, H_before)
    np.testing.assert_array_equal(W, W_before)


def test_gptq_identity_hessian_is_rtn(rng):
    W = rng.standard_normal((4, 20)).astype(np.float32)
    a, b = q4.quantize_rtn(W, group=8), q4.quantize_gptq(W, np.eye(20), group=8)
    np.testing.assert_array_equal(a.packed, b.packed)
    np.testing.assert_array_equal(a.scales, b.scales)


def test_gptq_output_error_below_rtn(rng):
    n, rows = 96, 48
    X = correlated_inputs(rng, 1024, n)
    cov = uniql.compress.linalg.Covariance(n)
    cov.update(X[:512])
    W = rng.standard_normal((rows, n)).astype(np.float32)
    Xt = X[512:].astype(np.float64)  # held-out tokens
    errs = {}
    for name, q in (("rtn", q4.quantize_rtn(W, group=32)), ("gptq", q4.quantize_gptq(W, cov.mean(), group=32))):
        errs[name] = np.linalg.norm(Xt @ (W - q4.dequantize(q)).T.astype(np.float64))
    assert errs["gptq"] < GPTQ_GAIN * errs["rtn"], errs


def test_gptq_dead_columns_quantize_to_zero(rng):
    X = correlated_inputs(rng, 128, 12)
    X[:, [2, 7]] = 0.0
    H = X.astype(np.float64).T @ X.astype(np.float64)
    W = rng.standard_normal((3, 12)).astype(np.float32)
    D = q4.dequantize(q4.quantize_gptq(W, H, group=4))
    assert not D[:, [2, 7]].any()
    codes, _ = gptq_ref(W, H, 4)
    np.testing.assert_array_equal(q4.unpack(q4.quantize_gptq(W, H, group=4).packed, 12), codes)


# ----------------------------------------------------------------------------------------- bad inputs


def test_quantizers_reject_bad_inputs(rng):
    W = rng.standard_normal((4, 8)).astype(np.float32)
    H = np.eye(8)
    with pytest.raises(uniql.DTypeError, match="W must have dtype float32, got float64"):
        q4.quantize_rtn(W.astype(np.float64))
    with pytest.raises(uniql.InvalidArgumentError, match="W must be C-contiguous"):
        q4.quantize_rtn(np.zeros((4, 16), np.float32)[:, ::2])
    with pytest.raises(uniql.InvalidArgumentError, match="W must be C-contiguous"):
        q4.quantize_gptq(np.asfortranarray(W), H)
    with pytest.raises(uniql.InvalidArgumentError, match="group must be >= 1, got 0"):
        q4.quantize_rtn(W, group=0)
    with pytest.raises(uniql.ShapeError, match="W must be non-empty"):
        q4.quantize_rtn(np.zeros((0, 8), np.float32))
    with pytest.raises(uniql.ShapeError, match="W must not have an empty dimension"):
        q4.quantize_rtn(np.zeros((3, 0), np.float32))
    with pytest.raises(uniql.DTypeError, match="H must have dtype float64, got float32"):
        q4.quantize_gptq(W, H.astype(np.float32))
    with pytest.raises(uniql.ShapeError, match=r"H must have shape \(8, 8\)"):
        q4.quantize_gptq(W, np.eye(7))
    with pytest.raises(uniql.InvalidArgumentError, match="damp must be >= 0"):
        q4.quantize_gptq(W, H, damp=-0.1)
    with pytest.raises(uniql.InvalidArgumentError, match="block must be >= 1"):
        q4.quantize_gptq(W, H, block=0)
    with pytest.raises(uniql.NumericError, match="not positive definite"):
        q4.quantize_gptq(W, -np.eye(8))
    Hn = H.copy()
    Hn[3, 1] = np.nan
    with pytest.raises(uniql.NumericError, match="H contains NaN at row 3, column 1"):
        q4.quantize_gptq(W, Hn)
    W[2, 5] = np.inf
    with pytest.raises(uniql.NumericError, match="W contains Inf at row 2, column 5"):
        q4.quantize_rtn(W)
    # the binding checks output shapes when called directly
    with pytest.raises(ValueError, match=r"packed must have shape \(4, 4\)"):
        _C.q4_quantize_rtn(np.zeros((4, 8), np.float32), 8, np.empty((4, 5), np.uint8), np.empty((4, 1), np.float32))


def test_quantized_tensor_is_frozen_and_validated(rng):
    q = q4.quantize_rtn(rng.standard_normal((3, 10)).astype(np.float32), group=4)
    assert (q.rows, q.cols, q.ngroups, q.group) == (3, 10, 3, 4)
    assert q.nbytes == 3 * 5 + 3 * 3 * 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.group = 8
    with pytest.raises(uniql.ShapeError, match=r"scales must have shape \(3, 3\)"):
        q4.QuantizedTensor(q.packed, q.scales[:, :2].copy(), (3, 10), 4)
    with pytest.raises(uniql.DTypeError, match="packed must have dtype uint8"):
        q4.QuantizedTensor(q.packed.astype(np.int8), q.scales, (3, 10), 4)


# ------------------------------------------------------------------------------- GPTQ options (issue 19)

def mse_scale_ref(w: np.ndarray) -> np.ndarray:
    """Per row of w (rows, len) float64: the float32 scale amax / (7.5 + k/8), k = 0..20, of least squared
    rounding error (the first such k on ties)."""
    amax = np.abs(w).max(axis=1)
    best_s = (amax / 7.5).astype(np.float32)
    best = np.full(w.shape[0], np.inf)
    for k in range(21):
        s = (amax / (7.5 + 0.125 * k)).astype(np.float32)
        d = w - (codes_of(w, s).astype(np.float64) - 8) * s.astype(np.float64)[:, None]
        err = (d * d).sum(axis=1)
        take = (err < best) & (s > 0)
        best = np.where(take, err, best)
        best_s = np.where(take, s, best_s)
    return best_s.astype(np.float32)


def gptq_grid_ref(W: np.ndarray, H: np.ndarray, group: int, act: bool, params, damp: float = 0.01):
    """Unblocked float64 GPTQ on the grid (q - z) * s, q in 0..15: ``params(block)`` gives a group's scales and zero
    points (symmetric: z = 8); static groups in natural order and columns in descending diag(H) order (act)."""
    W, H = _gptq_prepare(W, H, damp)
    rows, cols = W.shape
    ng = -(-cols // group)
    scales, zeros = np.empty((rows, ng), np.float32), np.empty((rows, ng), np.uint8)
    perm = np.argsort(-np.diag(H), kind="stable") if act else np.arange(cols)
    if act:
        for g in range(ng):
            scales[:, g], zeros[:, g] = params(W[:, g * group:(g + 1) * group])
    Hp, Wp = H[np.ix_(perm, perm)], W[:, perm]
    U = np.linalg.cholesky(np.linalg.inv(Hp)).T
    codes = np.empty((rows, cols), np.uint8)
    for i in range(cols):
        c = perm[i]
        if not act and i % group == 0:
            scales[:, i // group], zeros[:, i // group] = params(Wp[:, i:i + group])
        s, z = scales[:, c // group], zeros[:, c // group]
        codes[:, c] = asym_codes(Wp[:, i:i + 1], s, z)[:, 0]
        err = (Wp[:, i] - (codes[:, c].astype(np.float64) - z) * s.astype(np.float64)) / U[i, i]
        Wp[:, i + 1:] -= np.outer(err, U[i, i + 1:])
    return codes, scales, zeros


def gptq_options_ref(W: np.ndarray, H: np.ndarray, group: int, mse: bool, act: bool, damp: float = 0.01):
    """Symmetric GPTQ with the options: MSE-searched scales (mse), activation order with static groups (act)."""

    def params(blk):
        s = mse_scale_ref(blk) if mse else (np.abs(blk).max(axis=1) / 7.5).astype(np.float32)
        return s, np.full(blk.shape[0], 8, np.uint8)

    codes, scales, _ = gptq_grid_ref(W, H, group, act, params, damp)
    return codes, scales


@pytest.mark.parametrize("mse,act", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("rows,cols,group,block", [(5, 16, 8, None), (3, 13, 4, None), (6, 24, 8, 5)])
def test_gptq_options_match_float64_reference(rng, rows, cols, group, block, mse, act):
    X = correlated_inputs(rng, 256, cols) * rng.uniform(0.2, 3.0, cols).astype(np.float32)
    H = X.astype(np.float64).T @ X.astype(np.float64) / 256
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    q = q4.quantize_gptq(W, H, group=group, block=block, mse_scale=mse, act_order=act)
    codes, scales = gptq_options_ref(W, H, group, mse, act)
    np.testing.assert_array_equal(q4.unpack(q.packed, cols), codes)
    np.testing.assert_allclose(q.scales, scales, rtol=RTOL_SCALE_GPTQ)


def test_int8_rtn_matches_float64_formula():
    """uniql.compress.quant.quantize_int8 (C uq_q8_quantize_rtn): s = max|w| / 127 per row and group, q = rint(w / s)
    clamped to +-127, |w - q s| <= s / 2; a zero group has s = 0, q = 0; bad input is a UniqlError."""
    import uniql
    from uniql.compress.quant import quantize_int8

    rng = np.random.default_rng(3)
    W = (rng.standard_normal((7, 45)) * rng.uniform(0.1, 3, (7, 1))).astype(np.float32)
    W[2, 16:32] = 0
    q = quantize_int8(W, 16)
    Wd = W.astype(np.float64)
    for g in range(3):
        blk = Wd[:, 16 * g:16 * (g + 1)]
        s = (np.abs(blk).max(axis=1) / 127.0).astype(np.float32)
        np.testing.assert_array_equal(q.scales[:, g], s)
        sd = s.astype(np.float64)[:, None]
        want = np.where(sd > 0, np.rint(blk / np.where(sd > 0, sd, 1)), 0)
        np.testing.assert_array_equal(q.codes[:, 16 * g:16 * (g + 1)], np.clip(want, -127, 127).astype(np.int8))
        assert np.all(np.abs(blk - q.codes[:, 16 * g:16 * (g + 1)] * sd) <= sd / 2 * (1 + 1e-6))
    assert q.scales[2, 1] == 0 and not q.codes[2, 16:32].any()
    bad = W.copy()
    bad[0, 0] = np.nan
    with pytest.raises(uniql.UniqlError):
        quantize_int8(bad, 16)
    with pytest.raises(uniql.UniqlError):
        quantize_int8(W, 0)


# ------------------------------------------------------------------------- asymmetric int4 (zero points)

def asym_params_ref(w: np.ndarray, mse: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row of w (rows, len) float64: lo / hi with 0 inside, s = float32((hi - lo) / 15), z = clip(rint(-lo / s),
    0, 15); mse: the range shrunk by 15 / (15 + k/4), k = 0..20, z kept, least squared rounding error (first k on
    ties). A zero range: s = 0, z = 8."""
    lo, hi = np.minimum(w.min(axis=1), 0.0), np.maximum(w.max(axis=1), 0.0)
    rng_ = hi - lo
    s = (rng_ / 15).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(s > 0, np.clip(np.rint(-lo / s.astype(np.float64)), 0, 15), 8).astype(np.uint8)
    if mse:
        best, best_s = np.full(w.shape[0], np.inf), s.copy()
        for k in range(21):
            sk = (rng_ / (15 + 0.25 * k)).astype(np.float32)
            d = w - (asym_codes(w, sk, z).astype(np.float64) - z[:, None]) * sk.astype(np.float64)[:, None]
            err = (d * d).sum(axis=1)
            take = (err < best) & (sk > 0)
            best, best_s = np.where(take, err, best), np.where(take, sk, best_s)
        s = best_s.astype(np.float32)
    return s, z


def gptq_asym_ref(W: np.ndarray, H: np.ndarray, group: int, mse: bool, act: bool, damp: float = 0.01):
    """Unblocked float64 GPTQ with per-group zero points (static groups in natural order under act)."""
    return gptq_grid_ref(W, H, group, act, lambda blk: asym_params_ref(blk, mse), damp)


@pytest.mark.parametrize("mse,act", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("rows,cols,group,block", [(5, 16, 8, None), (3, 13, 4, None), (6, 24, 8, 5)])
def test_gptq_asym_matches_float64_reference(rng, rows, cols, group, block, mse, act):
    """asym=True: codes and zero points equal the float64 reference, scales within float32 rounding; dequantize
    gives (q - z) * s exactly (float64 product rounded once); one-signed and all-zero groups included."""
    X = correlated_inputs(rng, 256, cols) * rng.uniform(0.2, 3.0, cols).astype(np.float32)
    H = X.astype(np.float64).T @ X.astype(np.float64) / 256
    W = (rng.standard_normal((rows, cols)) + 0.7).astype(np.float32)  # skewed: zero points away from 8
    W[0, :group] = 0.0
    W[1, :group] = -np.abs(W[1, :group]) - 0.1
    q = q4.quantize_gptq(W, H, group=group, block=block, mse_scale=mse, act_order=act, asym=True)
    codes, scales, zeros = gptq_asym_ref(W, H, group, mse, act)
    np.testing.assert_array_equal(q4.unpack(q.packed, cols), codes)
    np.testing.assert_array_equal(q.zeros, zeros)
    np.testing.assert_allclose(q.scales, scales, rtol=RTOL_SCALE_GPTQ)
    assert q.zeros[0, 0] == 8 and q.scales[0, 0] == 0 and q.zeros.max() <= 15 and (q.zeros != 8).any()
    deq = (q4.unpack(q.packed, cols).astype(np.float64)
           - np.repeat(q.zeros.astype(np.float64), group, axis=1)[:, :cols]) * np.repeat(
        q.scales.astype(np.float64), group, axis=1)[:, :cols]
    np.testing.assert_array_equal(q4.dequantize(q), deq.astype(np.float32))
    assert q.nbytes == q.packed.nbytes + q.scales.nbytes + q.zeros.nbytes


def test_gptq_asym_beats_symmetric_on_skewed_weights_and_prefixes_stay_exact(rng):
    """On one-signed weights a zero point halves the step; the output error drops below the symmetric one. A kept
    column prefix (whole groups and a cut group) of an asymmetric weight dequantizes to the prefix of the full one
    (its groups' scales and zero points: exact truncation, as for the symmetric format)."""
    rows, cols, group = 16, 64, 16
    X = correlated_inputs(rng, 512, cols)
    H = X.astype(np.float64).T @ X.astype(np.float64) / 512
    W = (np.abs(rng.standard_normal((rows, cols))) + 0.2).astype(np.float32)
    qs = q4.quantize_gptq(W, H, group=group, mse_scale=True, act_order=True)
    qa = q4.quantize_gptq(W, H, group=group, mse_scale=True, act_order=True, asym=True)

    def err(q):
        E = q4.dequantize(q).astype(np.float64) - W
        return np.trace(E @ H @ E.T) / np.trace(W.astype(np.float64) @ H @ W.T.astype(np.float64))

    assert err(qa) < 0.6 * err(qs)
    full = q4.dequantize(qa)
    for keep in (32, 40):
        kg = -(-keep // group)
        cut = q4.QuantizedTensor(np.ascontiguousarray(qa.packed[:10, :keep // 2]),
                                 np.ascontiguousarray(qa.scales[:10, :kg]), (10, keep), group,
                                 np.ascontiguousarray(qa.zeros[:10, :kg]))
        np.testing.assert_array_equal(q4.dequantize(cut), full[:10, :keep])


def test_asym_zero_points_malformed_are_refused(rng):
    """Zero points must be uint8 (rows, ngroups) in 0..15 (QuantizedTensor, and the C dequantizer names the first
    bad one); the runtime refuses an asymmetric int4 tensor by name (its kernels read symmetric int4 only)."""
    W = rng.standard_normal((4, 32)).astype(np.float32)
    H = np.eye(32)
    q = q4.quantize_gptq(W, H, group=8, asym=True)
    with pytest.raises(uniql.ShapeError, match="zeros must have shape"):
        q4.QuantizedTensor(q.packed, q.scales, q.shape, q.group, np.ascontiguousarray(q.zeros[:, :3]))
    with pytest.raises(uniql.DTypeError, match="zeros"):
        q4.QuantizedTensor(q.packed, q.scales, q.shape, q.group, q.zeros.astype(np.int32))
    bad = q.zeros.copy()
    bad[2, 1] = 16
    with pytest.raises(uniql.RangeError, match=r"zero point 16 at \(2, 1\)"):
        q4.QuantizedTensor(q.packed, q.scales, q.shape, q.group, bad)
    out = np.empty(W.shape, np.float32)
    with pytest.raises(uniql.RangeError, match="zero point 16 at row 2, group 1"):
        _C.q4_dequantize(q.packed, q.scales, 8, out, bad)
    with pytest.raises(uniql.ShapeError):
        _C.q4_dequantize(q.packed, q.scales, 8, out, q.zeros[:, :2].copy())
    with pytest.raises(uniql.InvalidArgumentError, match="needs a zeros output"):
        _C.q4_quantize_gptq(W, H, 8, 0.01, 0, q.packed.copy(), q.scales.copy(), _C.Q4_ASYM)
    from uniql.models.runtime import as_q4
    with pytest.raises(uniql.UnsupportedError, match="layer.up: asymmetric int4"):
        as_q4("layer.up", q)


# ---------------------------------------------------------------------------------------- scale re-fit


def refit_ref(W: np.ndarray, H: np.ndarray, q: q4.QuantizedTensor, damp: float = 0.01):
    """Float64 reference of the scale re-fit: per row the least-squares scales of min_s (w - A s)^T Hd (w - A s),
    A[c, g(c)] = code_c - 8, over the groups with a nonzero code (the others keep theirs); and the objective."""
    Wd, Hd = _gptq_prepare(W, H, damp)
    rows, cols = W.shape
    codes = q4.unpack(q.packed, cols).astype(np.float64) - 8
    gof = np.arange(cols) // q.group
    scales = q.scales.astype(np.float64).copy()
    for r in range(rows):
        A = np.zeros((cols, q.ngroups))
        A[np.arange(cols), gof] = codes[r]
        act = np.flatnonzero(np.abs(A).sum(axis=0) > 0)
        A = A[:, act]
        scales[r, act] = np.linalg.solve(A.T @ Hd @ A, A.T @ Hd @ Wd[r])
    D = Wd - codes * scales[:, gof]
    return scales, np.einsum("rc,cd,rd->r", D, Hd, D)


def _objective(W: np.ndarray, H: np.ndarray, q: q4.QuantizedTensor, damp: float = 0.01) -> np.ndarray:
    Wd, Hd = _gptq_prepare(W, H, damp)
    D = Wd - q4.dequantize(q).astype(np.float64)
    return np.einsum("rc,cd,rd->r", D, Hd, D)


@pytest.mark.parametrize("rows,cols,group", [(6, 40, 8), (4, 37, 16), (3, 24, 24)])
def test_refit_scales_match_float64_reference(rng, rows, cols, group):
    X = correlated_inputs(rng, 256, cols) * rng.uniform(0.2, 3.0, cols).astype(np.float32)
    X[:, 3] = 0  # a dead column
    H = X.astype(np.float64).T @ X.astype(np.float64) / 256
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    W[0, :group] = 0  # an all-zero group keeps its scale
    q = q4.quantize_gptq(W, H, group, mse_scale=True, act_order=True)
    q2, err = q4.refit_scales(q, W, H)
    s_ref, e_ref = refit_ref(W, H, q)
    assert np.array_equal(q2.packed, q.packed)
    np.testing.assert_allclose(q2.scales, s_ref, rtol=1e-6)
    assert q2.scales[0, 0] == q.scales[0, 0] == 0
    np.testing.assert_allclose(err, e_ref, rtol=1e-5)
    before = _objective(W, H, q)
    assert np.all(err <= before * (1 + 1e-12)) and err.sum() < 0.99 * before.sum()


def test_gptq_refit_passes_never_worse_than_gptq(rng):
    rows, cols, group = 8, 48, 16
    X = correlated_inputs(rng, 256, cols) * rng.uniform(0.2, 3.0, cols).astype(np.float32)
    H = X.astype(np.float64).T @ X.astype(np.float64) / 256
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    kw = dict(mse_scale=True, act_order=True)
    q0 = q4.quantize_gptq(W, H, group, **kw)
    q1 = q4.quantize_gptq(W, H, group, refit=1, **kw)
    q3 = q4.quantize_gptq(W, H, group, refit=3, **kw)
    # one pass = GPTQ's codes with re-fitted scales
    assert np.array_equal(q1.packed, q0.packed)
    np.testing.assert_array_equal(q1.scales, q4.refit_scales(q0, W, H)[0].scales)
    e0, e1, e3 = (_objective(W, H, q) for q in (q0, q1, q3))
    assert np.all(e1 <= e0 * (1 + 1e-6)) and np.all(e3 <= e1 * (1 + 1e-6)) and e3.sum() < e1.sum() < e0.sum()
    # rows are independent: quantizing a row subset gives those rows
    qs = q4.quantize_gptq(np.ascontiguousarray(W[2:5]), H, group, refit=3, **kw)
    assert np.array_equal(qs.packed, q3.packed[2:5]) and np.array_equal(qs.scales, q3.scales[2:5])


def test_refit_rejects_bad_inputs(rng):
    W = rng.standard_normal((4, 8)).astype(np.float32)
    H = np.eye(8)
    q = q4.quantize_gptq(W, H, 4)
    with pytest.raises(uniql.InvalidArgumentError, match="refit is for symmetric int4"):
        q4.quantize_gptq(W, H, 4, asym=True, refit=1)
    with pytest.raises(uniql.InvalidArgumentError, match="refit must be >= 0"):
        q4.quantize_gptq(W, H, 4, refit=-1)
    with pytest.raises(uniql.InvalidArgumentError, match="refit must be an integer"):
        q4.quantize_gptq(W, H, 4, refit=True)
    with pytest.raises(uniql.InvalidArgumentError, match="passes must be in 1..64, got 65"):
        q4.quantize_gptq(W, H, 4, refit=65)
    with pytest.raises(uniql.InvalidArgumentError, match="refit_scales is for symmetric int4"):
        q4.refit_scales(q4.quantize_gptq(W, H, 4, asym=True), W, H)
    with pytest.raises(uniql.ShapeError, match=r"W must have shape \(4, 8\)"):
        q4.refit_scales(q, W[:3].copy(), H)
    with pytest.raises(uniql.ShapeError, match=r"H must have shape \(8, 8\)"):
        q4.refit_scales(q, W, np.eye(7))
    bad = q4.QuantizedTensor(q.packed, np.where(np.arange(2) == 1, np.nan, q.scales).astype(np.float32), q.shape, 4)
    with pytest.raises(uniql.NumericError, match="scale nan at row 0, group 1"):
        q4.refit_scales(bad, W, H)
    with pytest.raises(uniql.InvalidArgumentError, match="refit must be an integer in 0..64"):
        uniql.compress.CompressOptions(refit=-1)

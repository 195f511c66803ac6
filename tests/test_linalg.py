"""Second-moment accumulation and float64 linear algebra (uniql.compress.linalg -> csrc/compress/cov.c,
csrc/linalg/linalg.c) against float64 NumPy/SciPy references, by residuals where the result is not unique."""
import numpy as np
import pytest

import uniql
from uniql import _C
from uniql.compress import linalg as la

RTOL_COV = 1e-12     # float64 accumulation of float32/float64 inputs, T <= 600 terms
RTOL_RESID = 1e-11   # relative residuals ||AV - VΛ||/||A||, ||U S Vt - A||/||A|| for n <= 64
TOL_ORTH = 1e-11     # ||V^T V - I||_max
RTOL_SPD = 1e-9      # Cholesky / inverse diagonal of well-conditioned SPD matrices (cond < 1e4)
RTOL_SQRTM = 1e-9    # sqrtm vs scipy on SPD matrices


def spd(rng, n, ridge=0.5):
    B = rng.standard_normal((n, n))
    return B @ B.T / n + ridge * np.eye(n)


# ------------------------------------------------------------------------------------------- covariance


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T,n", [(1, 1), (3, 5), (600, 7), (0, 4)])
def test_covariance_matches_numpy(rng, dtype, T, n):
    X = rng.standard_normal((T, n)).astype(dtype)
    X_before = X.copy()
    c = la.Covariance(n)
    c.update(X)
    ref = X.astype(np.float64).T @ X.astype(np.float64)
    np.testing.assert_allclose(c.matrix, ref, rtol=RTOL_COV, atol=RTOL_COV * max(1.0, np.abs(ref).max()))
    np.testing.assert_array_equal(c.matrix, c.matrix.T)
    np.testing.assert_array_equal(X, X_before)
    assert c.count == T and c.sequences == 1


def test_covariance_chunks_merge_and_normalisation(rng):
    n = 6
    X = [rng.standard_normal((t, n)).astype(np.float32) for t in (300, 257, 1)]
    a, b = la.Covariance(n), la.Covariance(n)
    a.update(X[0])
    b.update(X[1], sequences=2)
    b.update(X[2], sequences=0)
    a.merge(b)
    full = np.concatenate(X).astype(np.float64)
    ref = full.T @ full
    np.testing.assert_allclose(a.matrix, ref, rtol=RTOL_COV, atol=RTOL_COV * np.abs(ref).max())
    assert (a.count, a.sequences) == (558, 3)
    np.testing.assert_allclose(a.mean(), ref / 3, rtol=RTOL_COV, atol=RTOL_COV * np.abs(ref).max())
    np.testing.assert_allclose(a.per_token(), ref / 558, rtol=RTOL_COV, atol=RTOL_COV * np.abs(ref).max())
    with pytest.raises(ValueError, match="read-only"):
        a.matrix[0, 0] = 1.0


def test_covariance_bad_inputs(rng):
    c = la.Covariance(4)
    with pytest.raises(uniql.DTypeError, match="X must have dtype float32 or float64, got float16"):
        c.update(np.zeros((2, 4), np.float16))
    with pytest.raises(uniql.DTypeError, match="X must be a numpy.ndarray"):
        c.update([[0.0] * 4])
    with pytest.raises(uniql.ShapeError, match="X must have 4 columns"):
        c.update(np.zeros((2, 5), np.float32))
    with pytest.raises(uniql.ShapeError, match="X must be 2-dimensional"):
        c.update(np.zeros((1, 2, 4), np.float32))
    with pytest.raises(uniql.InvalidArgumentError, match="X must be C-contiguous"):
        c.update(np.zeros((4, 8), np.float32)[:, ::2])
    X = rng.standard_normal((5, 4))
    X[3, 1] = np.nan
    with pytest.raises(uniql.NumericError, match="X contains NaN at row 3, column 1"):
        c.update(X)
    assert c.count == 0 and not c.matrix.any()  # a failed update changes nothing
    with pytest.raises(uniql.StateError, match="no sequence"):
        c.mean()
    with pytest.raises(uniql.InvalidArgumentError, match="n must be >= 1"):
        la.Covariance(0)
    with pytest.raises(uniql.ShapeError, match="size 3 into one of size 4"):
        c.merge(la.Covariance(3))
    # the binding checks again when called directly
    with pytest.raises(ValueError, match="X must have 4 columns"):
        _C.cov_accumulate(np.zeros((4, 4)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="G must have dtype float64"):
        _C.cov_accumulate(np.zeros((4, 4), np.float32), np.zeros((2, 4)))


# ----------------------------------------------------------------------------------------------- eigh / svd


@pytest.mark.parametrize("n", [1, 2, 17, 64])
def test_eigh_residuals(rng, n):
    A = spd(rng, n) - 0.7 * np.eye(n)  # indefinite
    A_before = A.copy()
    w, V = la.eigh(A)
    norm = np.linalg.norm(A)
    assert np.linalg.norm(A @ V - V * w) / norm < RTOL_RESID
    assert np.abs(V.T @ V - np.eye(n)).max() < TOL_ORTH
    assert np.all(np.diff(w) >= 0)
    np.testing.assert_allclose(w, np.linalg.eigvalsh(A), rtol=0, atol=RTOL_RESID * norm)
    np.testing.assert_array_equal(A, A_before)


def test_eigh_reads_lower_triangle_only(rng):
    A = spd(rng, 9)
    garbage = np.tril(A) + np.triu(np.full_like(A, 1e3), 1)
    np.testing.assert_allclose(la.eigh(garbage)[0], la.eigh(A)[0], rtol=0, atol=RTOL_RESID * np.linalg.norm(A))


@pytest.mark.parametrize("m,n", [(1, 1), (1, 5), (5, 1), (20, 7), (7, 20), (16, 16)])
def test_svd_residuals(rng, m, n):
    A = rng.standard_normal((m, n))
    U, S, Vt = la.svd(A)
    k = min(m, n)
    assert U.shape == (m, k) and S.shape == (k,) and Vt.shape == (k, n)
    assert np.linalg.norm(U * S @ Vt - A) / np.linalg.norm(A) < RTOL_RESID
    assert np.abs(U.T @ U - np.eye(k)).max() < TOL_ORTH
    assert np.abs(Vt @ Vt.T - np.eye(k)).max() < TOL_ORTH
    np.testing.assert_allclose(S, np.linalg.svd(A, compute_uv=False), rtol=RTOL_RESID, atol=RTOL_RESID * S[0])


# ----------------------------------------------------------------------------------- Cholesky / inverse diag


@pytest.mark.parametrize("n", [1, 3, 40])
def test_cholesky_and_inverse_diagonal(rng, n):
    A = spd(rng, n)
    L = la.cholesky(A)
    np.testing.assert_allclose(L, np.linalg.cholesky(A), rtol=RTOL_SPD, atol=RTOL_SPD)
    assert not np.triu(L, 1).any()
    for shift in (0.0, 1.0, -0.25):
        ref = np.diag(np.linalg.inv(A + shift * np.eye(n)))
        np.testing.assert_allclose(la.spd_inv_diag(A, shift=shift), ref, rtol=RTOL_SPD)


def test_not_spd_names_the_minor():
    A = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(uniql.NumericError, match="leading minor of order 2"):
        la.cholesky(A)
    with pytest.raises(uniql.NumericError, match="not positive definite"):
        la.spd_inv_diag(np.eye(3), shift=-2.0)


# ------------------------------------------------------------------------------------------------- sqrtm


def test_sqrtm_matches_scipy(rng):
    scipy_linalg = pytest.importorskip("scipy.linalg")
    A = spd(rng, 24)
    S = la.sqrtm(A)
    Si = la.sqrtm(A, inverse=True)
    np.testing.assert_allclose(S, scipy_linalg.sqrtm(A).real, rtol=RTOL_SQRTM, atol=RTOL_SQRTM)
    np.testing.assert_allclose(Si @ S, np.eye(24), atol=RTOL_SQRTM)
    np.testing.assert_array_equal(S, S.T)
    S2, Si2 = la.sqrtm_pair(A)
    np.testing.assert_allclose(S2, S, rtol=RTOL_SQRTM, atol=RTOL_SQRTM)
    np.testing.assert_allclose(Si2, Si, rtol=RTOL_SQRTM, atol=RTOL_SQRTM)


def test_sqrtm_floors_eigenvalues(rng):
    B = rng.standard_normal((10, 3))
    A = B @ B.T  # rank 3: seven zero eigenvalues
    floor = 1e-4
    S = la.sqrtm(A, floor=floor)
    w = np.linalg.eigvalsh(S)
    assert w.min() >= np.sqrt(floor) * (1 - RTOL_SQRTM)
    wa, V = np.linalg.eigh(A)
    ref = (V * np.sqrt(np.maximum(wa, floor))) @ V.T
    np.testing.assert_allclose(S, ref, rtol=RTOL_SQRTM, atol=RTOL_SQRTM * np.abs(ref).max())


# ------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("fn", [la.eigh, la.cholesky, la.spd_inv_diag, la.sqrtm])
def test_square_routines_reject_bad_inputs(fn):
    with pytest.raises(uniql.ShapeError, match="A must be a non-empty square matrix"):
        fn(np.zeros((3, 4)))
    with pytest.raises(uniql.ShapeError, match="A must not have an empty dimension"):
        fn(np.zeros((0, 0)))
    with pytest.raises(uniql.DTypeError, match="A must have dtype float64, got float32"):
        fn(np.eye(3, dtype=np.float32))
    with pytest.raises(uniql.InvalidArgumentError, match="A must be C-contiguous"):
        fn(np.eye(6)[::2, ::2])
    with pytest.raises(uniql.InvalidArgumentError, match="A must be C-contiguous"):
        fn(np.asfortranarray(np.arange(9.0).reshape(3, 3)))
    A = np.eye(3)
    A[1, 0] = np.nan
    with pytest.raises(uniql.NumericError, match="A contains NaN"):
        fn(A)


def test_svd_and_scalars_reject_bad_inputs():
    with pytest.raises(uniql.ShapeError, match="A must be 2-dimensional"):
        la.svd(np.zeros(4))
    with pytest.raises(uniql.ShapeError, match="A must not have an empty dimension"):
        la.svd(np.zeros((3, 0)))
    with pytest.raises(uniql.NumericError, match="A contains Inf"):
        la.svd(np.array([[1.0, np.inf]]))
    with pytest.raises(uniql.InvalidArgumentError, match="floor must be > 0"):
        la.sqrtm(np.eye(2), floor=0.0)
    with pytest.raises(uniql.InvalidArgumentError, match="shift must be finite"):
        la.spd_inv_diag(np.eye(2), shift=float("nan"))
    # C-level statuses surface unchanged through the binding
    with pytest.raises(uniql.InvalidArgumentError, match="floor must be finite and > 0"):
        _C.sqrtm(np.eye(2), -1.0, np.empty((2, 2)), None)
    with pytest.raises(ValueError, match=r"V must have shape \(2, 2\)"):
        _C.eigh(np.eye(2), np.empty(2), np.empty((3, 3)))

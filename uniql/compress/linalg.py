"""Second-moment statistics and float64 linear algebra (thin wrappers over ``uniql._C``).

Everything numeric runs in C (``csrc/compress/cov.c``, ``csrc/linalg/linalg.c``: OpenBLAS/LAPACKE in
float64). This module validates arguments (dtype, shape, contiguity: nothing is silently copied or cast),
allocates outputs with ``numpy.empty`` and keeps the bookkeeping of a :class:`Covariance` (token and
sequence counts).

Conventions: matrices are row-major float64; symmetric inputs must be symmetric and only their lower
triangle is read; ``G = sum_t x_t^T x_t`` is accumulated over tokens, and :meth:`Covariance.mean` divides by the
number of sequences (docs/design.md §2.1: ``G = (1/B) sum_b X_b^T X_b``).
"""
from __future__ import annotations

import numpy as np

from uniql import _C
from uniql.errors import DTypeError, InvalidArgumentError, ShapeError, StateError

__all__ = ["Covariance", "eigh", "svd", "cholesky", "spd_inv_diag", "sqrtm", "sqrtm_pair"]


def check_array(a: object, name: str, dtypes: tuple[type, ...], ndim: int) -> np.ndarray:
    """Returns ``a`` unchanged if it is a C-contiguous, non-empty ndarray of one of ``dtypes`` with ``ndim``
    dimensions; raises DTypeError / ShapeError / InvalidArgumentError naming ``name`` otherwise."""
    want = " or ".join(np.dtype(d).name for d in dtypes)
    if not isinstance(a, np.ndarray):
        raise DTypeError(f"{name} must be a numpy.ndarray of {want}, got {type(a).__name__}")
    if a.dtype not in [np.dtype(d) for d in dtypes]:
        raise DTypeError(f"{name} must have dtype {want}, got {a.dtype}")
    if a.ndim != ndim:
        raise ShapeError(f"{name} must be {ndim}-dimensional, got shape {a.shape}")
    if any(s == 0 for s in a.shape[1:]):
        raise ShapeError(f"{name} must not have an empty dimension, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise InvalidArgumentError(f"{name} must be C-contiguous (use numpy.ascontiguousarray), got strides "
                                   f"{a.strides}")
    if not a.flags.aligned:
        raise InvalidArgumentError(f"{name} must be aligned")
    return a


def _check_square(a: object, name: str) -> np.ndarray:
    a = check_array(a, name, (np.float64,), 2)
    if a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ShapeError(f"{name} must be a non-empty square matrix, got shape {a.shape}")
    return a


def check_positive_int(v: object, name: str, minimum: int = 1) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise InvalidArgumentError(f"{name} must be an integer, got {type(v).__name__}")
    if v < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def check_float(v: object, name: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not np.isfinite(v):
        raise InvalidArgumentError(f"{name} must be finite, got {v}")
    return v


class Covariance:
    """Running second moment ``G = sum over tokens of x^T x`` (float64, full symmetric) of n features.

    ``update(X)`` adds a (T, n) float32/float64 chunk (one sequence by default); ``merge`` adds another
    accumulator (e.g. from another worker). ``count`` is the number of tokens, ``sequences`` the number of
    sequences; ``mean()`` is ``G / sequences`` (the paper's normalisation), ``per_token()`` is ``G / count``.
    """

    def __init__(self, n: int) -> None:
        self.n = check_positive_int(n, "n")
        self._G = np.zeros((self.n, self.n), np.float64)
        self.count = 0
        self.sequences = 0

    def update(self, X: np.ndarray, sequences: int = 1) -> None:
        """G += X^T X for X (T, n) float32 or float64, C-contiguous; counts ``sequences`` sequences."""
        X = check_array(X, "X", (np.float32, np.float64), 2)
        if X.shape[1] != self.n:
            raise ShapeError(f"X must have {self.n} columns (the covariance size), got shape {X.shape}")
        sequences = check_positive_int(sequences, "sequences", minimum=0)
        _C.cov_accumulate(self._G, X)
        self.count += X.shape[0]
        self.sequences += sequences

    def merge(self, other: Covariance) -> None:
        """Adds another accumulator of the same size (matrix, tokens and sequences)."""
        if not isinstance(other, Covariance):
            raise InvalidArgumentError(f"other must be a Covariance, got {type(other).__name__}")
        if other.n != self.n:
            raise ShapeError(f"cannot merge a covariance of size {other.n} into one of size {self.n}")
        _C.cov_merge(self._G, other._G)
        self.count += other.count
        self.sequences += other.sequences

    @property
    def matrix(self) -> np.ndarray:
        """The accumulated sum (n, n) float64, as a read-only view."""
        v = self._G.view()
        v.flags.writeable = False
        return v

    def mean(self) -> np.ndarray:
        """G / sequences (a new array): the per-sequence mean used by the scores and GPTQ."""
        if self.sequences == 0:
            raise StateError("Covariance.mean(): no sequence has been accumulated")
        return self._G / self.sequences

    def per_token(self) -> np.ndarray:
        """G / count (a new array): the per-token second moment."""
        if self.count == 0:
            raise StateError("Covariance.per_token(): no token has been accumulated")
        return self._G / self.count

    def __repr__(self) -> str:
        return f"Covariance(n={self.n}, count={self.count}, sequences={self.sequences})"


def eigh(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric eigendecomposition (LAPACK dsyevd): returns (w ascending (n,), V (n, n)) with A V = V diag(w)."""
    A = _check_square(A, "A")
    n = A.shape[0]
    w = np.empty(n, np.float64)
    V = np.empty((n, n), np.float64)
    _C.eigh(A, w, V)
    return w, V


def svd(A: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD (LAPACK dgesdd): A (m, n) = U diag(S) Vt, U (m, k), S (k,) descending, Vt (k, n), k = min(m, n)."""
    A = check_array(A, "A", (np.float64,), 2)
    m, n = A.shape
    if m == 0:
        raise ShapeError(f"A must be non-empty, got shape {A.shape}")
    k = min(m, n)
    U = np.empty((m, k), np.float64)
    S = np.empty(k, np.float64)
    Vt = np.empty((k, n), np.float64)
    _C.svd(A, U, S, Vt)
    return U, S, Vt


def cholesky(A: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor L (zeros above the diagonal) of SPD A; NumericError naming the failing minor."""
    A = _check_square(A, "A")
    L = np.empty_like(A)
    _C.cholesky(A, L)
    return L


def spd_inv_diag(A: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """diag((A + shift I)^{-1}) of SPD A + shift I, from its Cholesky factor (no explicit inverse)."""
    A = _check_square(A, "A")
    shift = check_float(shift, "shift")
    d = np.empty(A.shape[0], np.float64)
    _C.spd_inv_diag(A, shift, d)
    return d


def sqrtm(A: np.ndarray, floor: float = 1e-6, inverse: bool = False) -> np.ndarray:
    """A^{1/2} (or A^{-1/2} with ``inverse=True``) of symmetric PSD A, eigenvalues floored at ``floor`` > 0."""
    A = _check_square(A, "A")
    floor = check_float(floor, "floor")
    if floor <= 0:
        raise InvalidArgumentError(f"floor must be > 0, got {floor}")
    out = np.empty_like(A)
    if inverse:
        _C.sqrtm(A, floor, None, out)
    else:
        _C.sqrtm(A, floor, out, None)
    return out


def sqrtm_pair(A: np.ndarray, floor: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(A^{1/2}, A^{-1/2}) from one eigendecomposition, eigenvalues floored at ``floor`` > 0 (QA-SVD whitening)."""
    A = _check_square(A, "A")
    floor = check_float(floor, "floor")
    if floor <= 0:
        raise InvalidArgumentError(f"floor must be > 0, got {floor}")
    S = np.empty_like(A)
    Sinv = np.empty_like(A)
    _C.sqrtm(A, floor, S, Sinv)
    return S, Sinv

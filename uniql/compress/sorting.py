"""Structured weight sorting (docs/design.md §3): typed wrappers of the C core.

Every function here validates its arguments (shapes, dtypes, value ranges: a bad one raises a
:mod:`uniql.errors` class naming the argument), allocates the outputs with ``numpy.empty`` and calls
``uniql._C``. The numerics (scores, Cholesky / eigen / SVD, permutations, the QA-SVD change of basis, softmax
allocation) all run in C; see the comments in ``csrc/include/uniql.h`` for the exact formulas.

Conventions: a permutation ``perm`` means "new position k <- original index perm[k]"; every sort is a stable
descending argsort (ties keep ascending original index); statistics are float64 second moments
``G = sum_b X_b^T X_b / B``; weights are Hugging Face ``(out, in)``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import numpy.typing as npt

from uniql import _C
from uniql.errors import DTypeError, InvalidArgumentError, ShapeError
from uniql.models.keep import ROPE_CODES, check_count, check_positive, check_unit
# the keep-size rule and the layer-wise allocation live in uniql.models.keep (loading an artifact needs them, not the
# sorts); the compression side reaches them here too
from uniql.models.keep import ALLOC_EPS, ALLOC_MAX_PRUNE, alloc_keep_ratios, keep_granularity, keep_size  # noqa: F401

logger = logging.getLogger(__name__)

RopeMode = Literal["full", "partial", "none"]

#: Standard keep-size granularities (docs/design.md §3.1).
GRAN_MLP: int = _C.GRAN_MLP
GRAN_HEAD: int = _C.GRAN_HEAD
GRAN_SSM_STATE: int = _C.GRAN_SSM_STATE
GRAN_SSM_HEAD: int = _C.GRAN_SSM_HEAD
#: Eigenvalue floor of G^{±1/2} in the QA-SVD (docs/design.md §3.2).
QASVD_EIG_FLOOR: float = 1e-6


# ----------------------------------------------------------------------------------------- helpers --


def _array(name: str, a: npt.ArrayLike, dtype: type, ndim: int) -> np.ndarray:
    """a as a C-contiguous array of dtype with ndim dimensions (ShapeError naming `name` otherwise)."""
    arr = np.asarray(a)
    if arr.ndim != ndim:
        raise ShapeError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise DTypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _square(name: str, a: npt.ArrayLike) -> np.ndarray:
    g = _array(name, a, np.float64, 2)
    if g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise ShapeError(f"{name} must be a non-empty square matrix, got shape {g.shape}")
    return g








def _rope(rope: str) -> int:
    if rope not in ROPE_CODES:
        raise InvalidArgumentError(f"rope must be one of {sorted(ROPE_CODES)}, got {rope!r}")
    return ROPE_CODES[rope]




# ------------------------------------------------------------------------------------ permutations --


def argsort_desc(scores: npt.ArrayLike) -> np.ndarray:
    """Stable descending argsort (int64); equal scores keep ascending index order."""
    s = _array("scores", scores, np.float64, 1)
    if s.size == 0:
        raise ShapeError("scores must not be empty")
    perm = np.empty(s.shape, np.int64)
    _C.argsort_desc(s, perm)
    return perm


@dataclass(frozen=True)
class RidgeSort:
    """Ridge-leverage scores and their stable descending permutation."""

    scores: np.ndarray  # (n,) float64, s_i = 1 - lam [(G + lam I)^{-1}]_ii
    perm: np.ndarray  # (n,) int64


def ridge_scores(G: npt.ArrayLike, lam: float = 1.0) -> np.ndarray:
    """``s_i = [G (G + lam I)^{-1}]_ii = 1 - lam [(G + lam I)^{-1}]_ii`` (Cholesky in C; lower triangle read)."""
    g = _square("G", G)
    lam = check_positive("lam", lam)
    s = np.empty(g.shape[0], np.float64)
    _C.ridge_scores(g, lam, s)
    return s


def sort_mlp(G: npt.ArrayLike, lam: float = 1.0) -> RidgeSort:
    """MLP channel order from G = second moment of the down_proj input (D_I x D_I), lambda = 1 by default.
    Apply as ``W_up[perm]``, ``W_gate[perm]``, ``W_down[:, perm]``."""
    s = ridge_scores(G, lam)
    return RidgeSort(scores=s, perm=argsort_desc(s))


# -------------------------------------------------------------------------------------------- Q/K --


@dataclass(frozen=True)
class QKSort:
    """RoPE-aware Q/K order of every KV group (see uq_rope_mode in uniql.h for the layouts).

    ``row_perm[g][k]``: new row k of every head of group g (its Q heads and its K head) <- original HF row.
    ``freq[g][j]``: original frequency index of the RoPE pair stored at slot j (rows 2j, 2j+1).
    """

    rope: str
    scores: np.ndarray  # (n_kv, d) float64 per-dim scores
    freq: np.ndarray  # (n_kv, npairs) int32; npairs = d/2 (full), d/4 (partial), 0 (none)
    row_perm: np.ndarray  # (n_kv, d) int64

    @property
    def head_dim(self) -> int:
        return int(self.row_perm.shape[1])

    def keep_rows(self, r: int) -> np.ndarray:
        """Rows of a (sorted) head kept at keep size r: ``0..r-1`` (full / none) or
        ``[0, r/2) U [d/2, d/2 + r/2)`` (partial: r/4 whole rotary pairs + r/2 pass dims)."""
        r = check_count("r", r)
        rows = np.empty(r, np.int64)
        _C.qk_keep_rows(ROPE_CODES[self.rope], self.head_dim, r, rows)
        return rows

    def proj_rows(self, n_heads: int) -> np.ndarray:
        """Row permutation of a whole q_proj (n_heads = number of Q heads) or k_proj (n_heads = n_kv) weight
        or bias: new row ``h*d + k`` <- original row ``h*d + row_perm[g(h)][k]``."""
        n_kv, d = self.row_perm.shape
        n_heads = check_count("n_heads", n_heads)
        if n_heads % n_kv:
            raise ShapeError(f"n_heads ({n_heads}) must be a multiple of n_kv ({n_kv})")
        group = np.arange(n_heads) // (n_heads // n_kv)
        return (np.arange(n_heads)[:, None] * d + self.row_perm[group]).reshape(-1)


def sort_qk(cq_diag: npt.ArrayLike, ck_diag: npt.ArrayLike, rope: RopeMode = "full") -> QKSort:
    """Q/K sort from the diagonals of the post-RoPE second moments: ``cq_diag`` (n_heads, d), ``ck_diag``
    (n_kv, d). Score ``s_i = sqrt(C_K,ii * sum_{h in g} C_Qh,ii)``; pairs sorted by ``s_j + s_{j+d/2}``
    (full RoPE), rotary pairs ``(i, i + d/4)`` plus pass dims by their own scores (partial), or plain per-dim
    order (none)."""
    mode = _rope(rope)
    q = _array("cq_diag", cq_diag, np.float64, 2)
    k = _array("ck_diag", ck_diag, np.float64, 2)
    n_heads, d = q.shape
    n_kv = k.shape[0]
    if k.shape[1] != d:
        raise ShapeError(f"ck_diag must have shape (n_kv, {d}) like cq_diag's head dim, got {k.shape}")
    if n_heads == 0 or n_kv == 0 or d == 0:
        raise ShapeError(f"cq_diag {q.shape} and ck_diag {k.shape} must not be empty")
    if n_heads % n_kv:
        raise ShapeError(f"n_heads ({n_heads}) must be a multiple of n_kv ({n_kv})")
    if rope == "full" and d % 2:
        raise ShapeError(f"head dim d = {d} must be even for RoPE pairs")
    if rope == "partial" and d % 4:
        raise ShapeError(f"head dim d = {d} must be a multiple of 4 for partial RoPE pairs")
    npairs = {"full": d // 2, "partial": d // 4, "none": 0}[rope]
    scores = np.empty((n_kv, d), np.float64)
    freq = np.empty((n_kv, npairs), np.int32)
    row_perm = np.empty((n_kv, d), np.int64)
    _C.sort_qk(q, k, mode, scores, freq, row_perm)
    return QKSort(rope=rope, scores=scores, freq=freq, row_perm=row_perm)


# ------------------------------------------------------------------------------------------ V/O --


@dataclass(frozen=True)
class QASVDResult:
    """Re-parameterised V/O of one attention layer (value dims of each KV group sorted by singular value).
    The v_proj bias (if any) is folded into ``bo`` and must be dropped (it is zero)."""

    wv: np.ndarray  # (n_kv*d, n) new v_proj weight
    wo: np.ndarray  # (n, n_heads*d) new o_proj weight
    bo: Optional[np.ndarray]  # (n,) new o_proj bias, None when the layer had neither v nor o bias
    singular_values: np.ndarray  # (n_kv, d) float64, descending per group


def qasvd_vo(
    G: npt.ArrayLike,
    wv: np.ndarray,
    wo: np.ndarray,
    *,
    n_heads: int,
    n_kv: int,
    head_dim: int,
    bv: Optional[np.ndarray] = None,
    bo: Optional[np.ndarray] = None,
    split_sigma: bool = False,
    joint_o: bool = False,
    eig_floor: float = QASVD_EIG_FLOOR,
) -> QASVDResult:
    """Quantization-aware SVD of V/O (GQA): ``G^{1/2} V_g = U S W^T``, ``V_g' = G^{-1/2} U S``,
    ``O_h' = W^T O_h``; exact at full rank. ``split_sigma``: S^{1/2} on both sides (ablation); ``joint_o``:
    a second SVD over the group's O heads (optimal whitened rank-r V.O product; per head when
    n_heads == n_kv). Weights float32 or float64 (all weight/bias arrays the same dtype); G float64 (n, n)
    = second moment of the attention input."""
    g = _square("G", G)
    n = g.shape[0]
    n_heads, n_kv, d = check_count("n_heads", n_heads), check_count("n_kv", n_kv), check_count("head_dim", head_dim)
    if n_heads % n_kv:
        raise ShapeError(f"n_heads ({n_heads}) must be a multiple of n_kv ({n_kv})")
    wv, wo = np.asarray(wv), np.asarray(wo)
    dtype = wv.dtype
    if dtype not in (np.float32, np.float64):
        raise DTypeError(f"wv must be float32 or float64, got {dtype}")
    named = {"wv": wv, "wo": wo, "bv": bv, "bo": bo}
    for name, a in named.items():
        if a is not None and np.asarray(a).dtype != dtype:
            raise DTypeError(f"{name} must have the dtype of wv ({dtype}), got {np.asarray(a).dtype}")
    expect = {"wv": (n_kv * d, n), "wo": (n, n_heads * d), "bv": (n_kv * d,), "bo": (n,)}
    for name, a in named.items():
        if a is not None and np.shape(a) != expect[name]:
            raise ShapeError(f"{name} must have shape {expect[name]}, got {np.shape(a)}")
    wv, wo = np.ascontiguousarray(wv), np.ascontiguousarray(wo)
    bv = None if bv is None else np.ascontiguousarray(bv)
    bo = None if bo is None else np.ascontiguousarray(bo)
    flags = (_C.QASVD_SPLIT_SIGMA if split_sigma else 0) | (_C.QASVD_JOINT_O if joint_o else 0)
    wv_out, wo_out = np.empty_like(wv), np.empty_like(wo)
    bo_out = np.empty(n, dtype) if (bv is not None or bo is not None) else None
    sv = np.empty((n_kv, d), np.float64)
    _C.qasvd_vo(g, wv, bv, wo, bo, n_heads, n_kv, d, flags, check_positive("eig_floor", eig_floor), wv_out, None, wo_out,
                bo_out, sv)
    return QASVDResult(wv=wv_out, wo=wo_out, bo=bo_out, singular_values=sv)


# ------------------------------------------------------------------------------------------ Mamba2 --


@dataclass(frozen=True)
class SSMStateSort:
    scores: np.ndarray  # (G, N) float64
    perm: np.ndarray  # (G, N) int64, per-group local state index


def sort_ssm_state(dB_diag: npt.ArrayLike, c_diag: npt.ArrayLike) -> SSMStateSort:
    """Mamba2 state-dim order per group: ``s[g][m] = sum_{h in g} sqrt(dB_diag[h][m]) * sqrt(c_diag[g][m])``.

    ``dB_diag`` (H, N): per head, the diagonal of the second moment of ``Delta_h * B`` (B of the head's group,
    after conv1d + SiLU; Delta = softplus(dt + dt_bias)). ``c_diag`` (G, N): per group, the diagonal of C's
    second moment. Head h belongs to group ``h // (H // G)``. Apply ``perm[g]`` to the group's B and C rows of
    in_proj and their conv1d channels."""
    b = _array("dB_diag", dB_diag, np.float64, 2)
    c = _array("c_diag", c_diag, np.float64, 2)
    H, N = b.shape
    G = c.shape[0]
    if c.shape[1] != N or H == 0 or G == 0 or N == 0:
        raise ShapeError(f"dB_diag (H, N) = {b.shape} and c_diag (G, N) = {c.shape} must share a non-empty N")
    if H % G:
        raise ShapeError(f"H ({H} heads) must be a multiple of G ({G} groups)")
    scores, perm = np.empty((G, N), np.float64), np.empty((G, N), np.int64)
    _C.ssm_state(b, c, scores, perm)
    return SSMStateSort(scores=scores, perm=perm)


@dataclass(frozen=True)
class SSMHeadSort:
    scores: np.ndarray  # (H*P,) float64 ridge leverage, feature index h*P + p
    perm: np.ndarray  # (H, P) int64 head-local channel order


def sort_ssm_head_channels(Gm: npt.ArrayLike, n_heads: int, head_dim: int, lam: float = 1.0) -> SSMHeadSort:
    """Mamba2 head-channel order: ridge leverage over the H*P features of ``Gm`` (feature h*P + p; e.g. the
    second moment of the chunk-local states, or of the out_proj input), then per head a descending order of
    its P channels (the same count is kept in every head). lam = 1, or 1e-4 for pure Mamba2."""
    g = _square("Gm", Gm)
    H, P = check_count("n_heads", n_heads), check_count("head_dim", head_dim)
    if g.shape[0] != H * P:
        raise ShapeError(f"Gm must have shape ({H * P}, {H * P}) = (n_heads*head_dim, ...), got {g.shape}")
    scores, perm = np.empty(H * P, np.float64), np.empty((H, P), np.int64)
    _C.ssm_head_channels(g, H, P, check_positive("lam", lam), scores, perm)
    return SSMHeadSort(scores=scores, perm=perm)


def ssm_bc_moments(B: npt.ArrayLike, C: npt.ArrayLike, dt: npt.ArrayLike, n_groups: int, scale: float = 1.0,
                   dB_acc: Optional[np.ndarray] = None, c_acc: Optional[np.ndarray] = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """State-dim statistics of one sequence, accumulated into (dB_acc (H, N), c_acc (G, N)) float64 (new zero
    arrays when None): ``dB_acc[h][n] += scale * sum_t (dt[t,h] B[t, g(h)*N + n])^2`` and
    ``c_acc[g][n] += scale * sum_t C[t, g*N + n]^2``; B, C (T, G*N) after conv1d + SiLU, dt (T, H) = Delta
    (float32, as :meth:`uniql.models.runtime.Model.layer_forward` captures them). Returns the accumulators."""
    b = _array("B", B, np.float32, 2)
    c = _array("C", C, np.float32, 2)
    d = _array("dt", dt, np.float32, 2)
    G = check_count("n_groups", n_groups)
    T, H = d.shape
    if b.shape != c.shape or b.shape[0] != T or b.shape[1] % G:
        raise ShapeError(f"B {b.shape} and C {c.shape} must both be (T = {T}, n_groups*N) with n_groups = {G}")
    N = b.shape[1] // G
    if H % G:
        raise ShapeError(f"H ({H} heads) must be a multiple of n_groups ({G})")
    for name, acc, shape in (("dB_acc", dB_acc, (H, N)), ("c_acc", c_acc, (G, N))):
        if acc is not None and (not isinstance(acc, np.ndarray) or acc.dtype != np.float64 or acc.shape != shape
                                or not acc.flags.c_contiguous):
            raise ShapeError(f"{name} must be a C-contiguous float64 array of shape {shape}")
    dB_acc = np.zeros((H, N)) if dB_acc is None else dB_acc
    c_acc = np.zeros((G, N)) if c_acc is None else c_acc
    _C.ssm_bc_moments(b, c, d, float(scale), dB_acc, c_acc)
    return dB_acc, c_acc


def ssm_chunk_states(x: npt.ArrayLike, B: npt.ArrayLike, dt: npt.ArrayLike, A_log: npt.ArrayLike, n_groups: int,
                     chunk: int) -> np.ndarray:
    """Chunk-local SSM states of one sequence as samples (docs/design.md §3.2): float64 (ceil(T/chunk)*N, H*P), row
    c*N + n, column h*P + p = ``sum_{t in c} exp(A_h sum_{tau in c, tau > t} dt[tau,h]) dt[t,h] x[t,h*P+p]
    B[t,g(h)*N+n]`` with ``A_h = -exp(A_log[h])``. x (T, H*P), B (T, G*N) after conv1d + SiLU, dt (T, H) = Delta.
    Their second moment is the statistic of :func:`sort_ssm_head_channels`."""
    xa = _array("x", x, np.float32, 2)
    b = _array("B", B, np.float32, 2)
    d = _array("dt", dt, np.float32, 2)
    a = _array("A_log", A_log, np.float32, 1)
    G, chunk = check_count("n_groups", n_groups), check_count("chunk", chunk)
    T, H = d.shape
    if xa.shape[0] != T or b.shape[0] != T or xa.shape[1] % H or b.shape[1] % G or a.shape != (H,) or H % G:
        raise ShapeError(f"x {xa.shape}, B {b.shape}, dt {d.shape}, A_log {a.shape} do not fit T = {T}, "
                         f"H = {H} heads and n_groups = {G}")
    S = np.empty((-(-T // chunk) * (b.shape[1] // G), xa.shape[1]), np.float64)
    _C.ssm_chunk_states(xa, b, d, a, G, chunk, S)
    return S


# -------------------------------------------------------------------------------------- allocation --


def block_importance(x: npt.ArrayLike, y: npt.ArrayLike) -> np.ndarray:
    """``s_l = 1 - mean_b cos(x_lb, y_lb)`` from the last-token vectors of a block's input x and output y,
    shapes (B, n) for one block (returns shape ()) or (L, B, n) (returns (L,)); cosine as torch's
    ``cosine_similarity`` (eps 1e-8), accumulated in float64 from float32 vectors."""
    xa, ya = np.asarray(x), np.asarray(y)
    if xa.shape != ya.shape:
        raise ShapeError(f"x and y must have the same shape, got {xa.shape} and {ya.shape}")
    if xa.ndim not in (2, 3) or 0 in xa.shape:
        raise ShapeError(f"x must have shape (B, n) or (L, B, n), non-empty, got {xa.shape}")
    single = xa.ndim == 2
    xf = _array("x", xa[None] if single else xa, np.float32, 3)
    yf = _array("y", ya[None] if single else ya, np.float32, 3)
    out = np.empty(xf.shape[0], np.float64)
    _C.block_importance(xf, yf, out)
    return out[0] if single else out



"""Keep sizes: how a global pruning rate becomes each layer's sizes (docs/design.md §3.1, §3.6) -- typed wrappers
of the C rule, shared by the artifact loader (any rate, at load and at ``set_rate``) and the compression pipeline
(granularities). Loading an artifact needs only this, never the sorting or quantization code.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from uniql import _C
from uniql.errors import DTypeError, InvalidArgumentError, ShapeError

#: The Q/K layouts of a head (``uq_sort_qk_keep_rows``): RoPE over the whole head, over its first half, or none.
ROPE_CODES = {"full": _C.ROPE_FULL, "partial": _C.ROPE_PARTIAL, "none": _C.ROPE_NONE}
#: Softmax temperature and pruning clamp of the layer-wise allocation (docs/design.md §3.6).
ALLOC_EPS: float = 0.1
ALLOC_MAX_PRUNE: float = 0.85


def check_positive(name: str, v: float) -> float:
    v = float(v)
    if not (np.isfinite(v) and v > 0):
        raise InvalidArgumentError(f"{name} must be finite and > 0, got {v}")
    return v


def check_unit(name: str, v: float) -> float:
    v = float(v)
    if not (0.0 <= v <= 1.0):
        raise InvalidArgumentError(f"{name} must be in [0, 1], got {v}")
    return v


def check_count(name: str, v: int, lo: int = 1) -> int:
    if isinstance(v, bool) or int(v) != v or int(v) < lo:
        raise InvalidArgumentError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def keep_size(full: int, keep_ratio: float, granularity: int) -> int:
    """``g * round_half_even(rho * full / g)`` clamped to ``[g, full]``; ``rho == 1`` gives ``full`` exactly.

    When ``full`` is not a multiple of ``g`` the reachable sizes are the multiples of ``g`` below ``full``
    and ``full`` itself; the result never exceeds ``full``.
    """
    full = check_count("full", full)
    granularity = check_count("granularity", granularity)
    if granularity > full:
        raise InvalidArgumentError(f"granularity must be in [1, full = {full}], got {granularity}")
    return _C.keep_size(full, check_unit("keep_ratio", keep_ratio), granularity)


def keep_granularity(size: int, granularity: int, min_granularity: int = 1) -> int:
    """Small-model rule: ``min(granularity, size // 8)`` rounded down to a power of two, at least
    ``min_granularity`` (2 for full-RoPE head dims: whole pairs; 4 for partial RoPE; 1 otherwise).
    Large models get ``granularity`` itself."""
    size = check_count("size", size)
    granularity = check_count("granularity", granularity)
    min_granularity = check_count("min_granularity", min_granularity)
    if min_granularity > size:
        raise InvalidArgumentError(f"min_granularity must be in [1, size = {size}], got {min_granularity}")
    return _C.keep_granularity(size, granularity, min_granularity)


def alloc_keep_ratios(
    importance: npt.ArrayLike, global_keep: float, eps: float = ALLOC_EPS, max_prune: float = ALLOC_MAX_PRUNE
) -> np.ndarray:
    """Per-layer keep ratios ``1 - clip(L (1 - global_keep) softmax(-importance / eps), 0, max_prune)``.
    Without clipping the mean pruning equals ``1 - global_keep``; clipping does not redistribute."""
    imp = np.asarray(importance)
    if imp.ndim != 1:
        raise ShapeError(f"importance must be 1-dimensional, got shape {imp.shape}")
    if imp.dtype.kind not in "fiub":
        raise DTypeError(f"importance must be numeric, got dtype {imp.dtype}")
    if imp.size == 0:
        raise ShapeError("importance must not be empty")
    imp = np.ascontiguousarray(imp, dtype=np.float64)
    out = np.empty(imp.shape, np.float64)
    _C.alloc_keep_ratios(imp, check_unit("global_keep", global_keep), check_positive("eps", eps),
                         check_unit("max_prune", max_prune), out)
    return out

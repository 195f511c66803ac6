"""int4 weight quantization (thin wrappers over ``uniql._C``; the math is in ``csrc/compress/q4.c``).

Format version 1 (the artifact/runtime layout, see the int4 section of ``csrc/include/uniql.h``):
W (rows, cols) is quantized along the input dimension in groups of ``group`` columns (the last group may be
shorter); per row and group ``s = max|w| / 7.5`` (float32), ``q = clamp(rint(w / s) + 8, 0, 15)``,
``w_hat = (q - 8) * s``. Codes are packed two per byte, low nibble = even column, rows of ``(cols + 1) // 2``
bytes (a pad nibble is 8).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uniql import _C
from uniql.errors import InvalidArgumentError, RangeError, ShapeError
from uniql.compress.linalg import check_array, check_float, check_positive_int

__all__ = ["FORMAT_VERSION", "DEFAULT_GROUP", "QuantizedTensor", "Int8Tensor", "quantize_rtn", "quantize_gptq",
           "refit_scales", "quantize_int8", "pack", "unpack",
           "dequantize"]

FORMAT_VERSION = 1
DEFAULT_GROUP = _C.Q4_DEFAULT_GROUP


def _ngroups(cols: int, group: int) -> int:
    return (cols + group - 1) // group


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """An int4 weight: ``packed`` uint8 (rows, (cols+1)//2), ``scales`` float32 (rows, ngroups),
    ``shape`` (rows, cols), ``group`` (columns per scale); ``zeros`` uint8 (rows, ngroups) in 0..15 for asymmetric
    int4 (w = (q - zero) * scale; ``quantize_gptq(asym=True)``), None for the symmetric format (zero 8). The runtime
    kernels read symmetric int4 only (an asymmetric tensor is refused there; :func:`dequantize` it)."""

    packed: np.ndarray
    scales: np.ndarray
    shape: tuple[int, int]
    group: int
    zeros: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (not isinstance(self.shape, tuple) or len(self.shape) != 2
                or not all(isinstance(v, (int, np.integer)) and v > 0 for v in self.shape)):
            raise ShapeError(f"shape must be a tuple (rows, cols) of positive ints, got {self.shape!r}")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        object.__setattr__(self, "group", check_positive_int(self.group, "group"))
        rows, cols = self.shape
        check_array(self.packed, "packed", (np.uint8,), 2)
        check_array(self.scales, "scales", (np.float32,), 2)
        if self.packed.shape != (rows, (cols + 1) // 2):
            raise ShapeError(f"packed must have shape {(rows, (cols + 1) // 2)} for shape {self.shape}, "
                             f"got {self.packed.shape}")
        want = (rows, _ngroups(cols, self.group))
        if self.scales.shape != want:
            raise ShapeError(f"scales must have shape {want} for shape {self.shape} and group {self.group}, "
                             f"got {self.scales.shape}")
        if self.zeros is not None:
            check_array(self.zeros, "zeros", (np.uint8,), 2)
            if self.zeros.shape != want:
                raise ShapeError(f"zeros must have shape {want} for shape {self.shape} and group {self.group}, "
                                 f"got {self.zeros.shape}")
            if self.zeros.size and int(self.zeros.max()) > 15:
                bad = tuple(int(i) for i in np.argwhere(self.zeros > 15)[0])
                raise RangeError(f"zeros: zero point {int(self.zeros[bad])} at {bad} is above 15 (int4 codes 0..15)")

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def ngroups(self) -> int:
        return _ngroups(self.cols, self.group)

    @property
    def nbytes(self) -> int:
        """Storage size of codes + scales (+ zero points, one byte each) in bytes."""
        return self.packed.nbytes + self.scales.nbytes + (self.zeros.nbytes if self.zeros is not None else 0)


def _check_weight(W: object) -> np.ndarray:
    W = check_array(W, "W", (np.float32,), 2)
    if W.shape[0] == 0:
        raise ShapeError(f"W must be non-empty, got shape {W.shape}")
    return W


def _outputs(rows: int, cols: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.empty((rows, (cols + 1) // 2), np.uint8), np.empty((rows, _ngroups(cols, group)), np.float32))


def quantize_rtn(W: np.ndarray, group: int = DEFAULT_GROUP) -> QuantizedTensor:
    """Round-to-nearest int4 of W (rows, cols) float32, C-contiguous."""
    W = _check_weight(W)
    group = check_positive_int(group, "group")
    packed, scales = _outputs(*W.shape, group)
    _C.q4_quantize_rtn(W, group, packed, scales)
    return QuantizedTensor(packed, scales, W.shape, group)


def quantize_gptq(W: np.ndarray, H: np.ndarray, group: int = DEFAULT_GROUP, damp: float = 0.01,
                  block: int | None = None, *, mse_scale: bool = False, act_order: bool = False,
                  asym: bool = False, refit: int = 0) -> QuantizedTensor:
    """GPTQ int4 of W (rows, cols) float32 with the input Hessian H (cols, cols) float64 (e.g.
    ``Covariance.mean()``; its scale does not matter). ``damp``: fraction of mean(diag H) added to the diagonal;
    ``block``: columns per lazy-update block (None = group). Error feedback in float64. ``mse_scale``: each group's
    scale searched (amax / (7.5 + k/8), k = 0..20) for the least squared rounding error instead of amax / 7.5;
    ``act_order``: columns in descending diag(H) order with static groups (scales from the weights before error
    feedback; groups stay contiguous in the stored format). ``asym``: a zero point per group (0..15) in place of
    the fixed 8, s = range / 15 over [min(w, 0), max(w, 0)] (``mse_scale``: the range shrunk by 15 / (15 + k/4));
    the result carries ``zeros`` (uniql.h ``UQ_Q4_ASYM``; the runtime kernels read symmetric int4 only).
    ``refit``: rounds of GPTQ + Hessian-weighted least-squares re-fit of each row's group scales for its codes
    (:func:`refit_scales`; round 1 is this GPTQ, later rounds re-run GPTQ with the best scales so far fixed), the
    best per row by the GPTQ objective, the plain GPTQ result included (C: ``uq_q4_quantize_gptq_refit``;
    symmetric only). Default: natural order, absmax scales, symmetric, no re-fit."""
    W = _check_weight(W)
    H = check_array(H, "H", (np.float64,), 2)
    cols = W.shape[1]
    if H.shape != (cols, cols):
        raise ShapeError(f"H must have shape {(cols, cols)} (W has {cols} columns), got {H.shape}")
    group = check_positive_int(group, "group")
    damp = check_float(damp, "damp")
    if damp < 0:
        raise InvalidArgumentError(f"damp must be >= 0, got {damp}")
    block = 0 if block is None else check_positive_int(block, "block")
    refit = check_positive_int(refit, "refit", minimum=0)
    packed, scales = _outputs(*W.shape, group)
    flags = (_C.Q4_MSE_SCALE if mse_scale else 0) | (_C.Q4_ACT_ORDER if act_order else 0)
    if refit:
        if asym:
            raise InvalidArgumentError("refit is for symmetric int4 (asym=False)")
        _C.q4_quantize_gptq_refit(W, H, group, damp, block, packed, scales, flags, refit)
        return QuantizedTensor(packed, scales, W.shape, group)
    flags |= _C.Q4_ASYM if asym else 0
    zeros = np.empty(scales.shape, np.uint8) if asym else None
    _C.q4_quantize_gptq(W, H, group, damp, block, packed, scales, flags, zeros)
    return QuantizedTensor(packed, scales, W.shape, group, zeros)


def refit_scales(q: QuantizedTensor, W: np.ndarray, H: np.ndarray, damp: float = 0.01
                 ) -> tuple[QuantizedTensor, np.ndarray]:
    """The symmetric int4 tensor `q` of weight W (rows, cols) float32 with its group scales re-fitted for its codes:
    per row the scales s minimising (w - w_hat(s))^T H_d (w - w_hat(s)), H_d = H + damp mean(diag H) I (dead columns
    as GPTQ: H_ii = 1, w_i = 0), a joint least-squares solve over the row's groups in float64 (C:
    ``uq_q4_refit_scales``); a row keeps its scales where the solve fails or does not lower the error. Returns the
    new tensor (same codes) and that error per row (float64, after)."""
    if not isinstance(q, QuantizedTensor):
        raise InvalidArgumentError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    if q.zeros is not None:
        raise InvalidArgumentError("refit_scales is for symmetric int4 (q has zero points)")
    W = _check_weight(W)
    if W.shape != q.shape:
        raise ShapeError(f"W must have shape {q.shape} (the tensor's), got {W.shape}")
    H = check_array(H, "H", (np.float64,), 2)
    if H.shape != (q.cols, q.cols):
        raise ShapeError(f"H must have shape {(q.cols, q.cols)}, got {H.shape}")
    damp = check_float(damp, "damp")
    if damp < 0:
        raise InvalidArgumentError(f"damp must be >= 0, got {damp}")
    scales = np.array(q.scales, np.float32, order="C")
    err = np.empty(q.rows, np.float64)
    _C.q4_refit_scales(W, H, q.group, damp, np.ascontiguousarray(q.packed), scales, err)
    return QuantizedTensor(q.packed, scales, q.shape, q.group), err


def pack(codes: np.ndarray) -> np.ndarray:
    """codes (rows, cols) uint8 in 0..15 -> packed (rows, (cols+1)//2) uint8 (RangeError on a code > 15)."""
    codes = check_array(codes, "codes", (np.uint8,), 2)
    if codes.shape[0] == 0:
        raise ShapeError(f"codes must be non-empty, got shape {codes.shape}")
    packed = np.empty((codes.shape[0], (codes.shape[1] + 1) // 2), np.uint8)
    _C.q4_pack(codes, packed)
    return packed


def unpack(packed: np.ndarray, cols: int) -> np.ndarray:
    """packed (rows, (cols+1)//2) uint8 -> codes (rows, cols) uint8."""
    packed = check_array(packed, "packed", (np.uint8,), 2)
    cols = check_positive_int(cols, "cols")
    if packed.shape[0] == 0 or packed.shape[1] != (cols + 1) // 2:
        raise ShapeError(f"packed must have shape (rows >= 1, {(cols + 1) // 2}) for cols = {cols}, "
                         f"got {packed.shape}")
    codes = np.empty((packed.shape[0], cols), np.uint8)
    _C.q4_unpack(packed, codes)
    return codes


def dequantize(q: QuantizedTensor) -> np.ndarray:
    """float32 (rows, cols) = (code - zero) * scale (zero 8 for the symmetric format)."""
    if not isinstance(q, QuantizedTensor):
        raise InvalidArgumentError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    W = np.empty(q.shape, np.float32)
    _C.q4_dequantize(q.packed, q.scales, q.group, W, q.zeros)
    return W


@dataclass(frozen=True, eq=False)
class Int8Tensor:
    """An int8 weight (the precision policy's ``int8`` storage): ``codes`` int8 (rows, cols), ``scales`` float32
    (rows, ngroups), w = code * scale; ``shape`` (rows, cols), ``group`` (columns per scale)."""

    codes: np.ndarray
    scales: np.ndarray
    shape: tuple[int, int]
    group: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        object.__setattr__(self, "group", check_positive_int(self.group, "group"))
        check_array(self.codes, "codes", (np.int8,), 2)
        check_array(self.scales, "scales", (np.float32,), 2)
        if self.codes.shape != self.shape:
            raise ShapeError(f"codes must have shape {self.shape}, got {self.codes.shape}")
        if self.scales.shape != (self.shape[0], _ngroups(self.shape[1], self.group)):
            raise ShapeError(f"scales must have shape {(self.shape[0], _ngroups(self.shape[1], self.group))}, "
                             f"got {self.scales.shape}")

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes


def quantize_int8(W: np.ndarray, group: int = DEFAULT_GROUP) -> Int8Tensor:
    """Round-to-nearest int8 of W (rows, cols) float32 per row and group (C: ``uq_q8_quantize_rtn``):
    s = max|w| / 127, q = clamp(rint(w / s), -127, 127). Its rounding error is 1/16 of int4's step, so GPTQ
    error feedback buys little here."""
    W = _check_weight(W)
    group = check_positive_int(group, "group")
    codes = np.empty(W.shape, np.int8)
    scales = np.empty((W.shape[0], _ngroups(W.shape[1], group)), np.float32)
    _C.q8_quantize_rtn(W, group, codes, scales)
    return Int8Tensor(codes, scales, W.shape, group)

"""Reading and writing safetensors files through uniql's validated C reader/writer (``uniql._C``).

Files are memory-mapped and fully validated on open (header bounds, strict JSON, dtypes, shapes, offsets,
overlaps: see the rules at the top of ``csrc/io/safetensors.c``). Dtypes: F32, F16, BF16, I8, U8, I32, I64,
F64. NumPy has no bfloat16: BF16 tensors are returned as float32 (exact conversion in C) or, with
``bf16="raw"``, as their uint16 bit patterns; to write BF16, wrap uint16 bits in :class:`BF16Array`
(``BF16Array.from_float32`` rounds float32 to nearest even) or name the tensors in ``bf16_names``.

Errors: a missing or unreadable file raises :class:`uniql.UniqlIOError` (an ``OSError``), a malformed file
:class:`uniql.FormatError` (a ``ValueError``), a valid dtype uniql does not read (BOOL, U16, F8_*, ...)
:class:`uniql.UnsupportedError`, a missing tensor name :class:`TensorNotFoundError` (both a
:class:`uniql.RangeError` and a ``KeyError``); each message names the file and the problem. Writing goes
through ``<path>.tmp.<pid>`` + fsync + rename, so a failed write never leaves a partial file under ``path``.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from uniql import _C
from uniql.errors import DTypeError, InvalidArgumentError, TensorNotFoundError

__all__ = [
    "BF16Array",
    "SafeOpen",
    "TensorNotFoundError",
    "load_file",
    "safe_open",
    "save_file",
]

BF16Mode = Literal["float32", "raw"]

# safetensors dtype -> NumPy dtype of the raw data (BF16: its uint16 bit patterns)
_ST_TO_NUMPY: dict[str, np.dtype] = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(np.uint16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "I32": np.dtype(np.int32),
    "I64": np.dtype(np.int64),
    "F64": np.dtype(np.float64),
}
# NumPy dtype -> safetensors dtype for save_file (uint16 is only written as BF16, on request)
_NUMPY_TO_ST: dict[np.dtype, str] = {v: k for k, v in _ST_TO_NUMPY.items() if k != "BF16"}


@dataclass(frozen=True)
class BF16Array:
    """bfloat16 data for :func:`save_file`: ``bits`` holds the uint16 bit patterns (any shape)."""

    bits: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.bits, np.ndarray) or self.bits.dtype != np.uint16:
            got = self.bits.dtype if isinstance(self.bits, np.ndarray) else type(self.bits).__name__
            raise DTypeError(f"BF16Array needs a numpy uint16 array of bfloat16 bit patterns, got {got}")

    @classmethod
    def from_float32(cls, x: np.ndarray) -> BF16Array:
        """Rounds float32 values to bfloat16 (nearest even, in C)."""
        src = np.ascontiguousarray(x, dtype=np.float32)
        bits = np.empty(src.shape, np.uint16)
        _C.convert(src, bits, bf16=True)
        return cls(bits)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bits.shape


def _check_bf16_mode(bf16: str) -> None:
    if bf16 not in ("float32", "raw"):
        raise InvalidArgumentError(f"bf16 must be 'float32' or 'raw', got {bf16!r}")


class SafeOpen:
    """An open safetensors file: ``keys()``, ``info(name)``, ``get(name, copy=False)``, ``metadata()``.

    ``get`` returns a read-only zero-copy view into the mapping for every dtype except BF16, which comes back
    as a new float32 array (or, with ``bf16="raw"``, a uint16 view). Views stay valid after :meth:`close`:
    the mapping is released when the last of them is garbage collected. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike[str], *, bf16: BF16Mode = "float32") -> None:
        _check_bf16_mode(bf16)
        self._path = os.fspath(path)
        self._bf16 = bf16
        self._file = _C.SafetensorsFile(self._path)

    @property
    def path(self) -> str:
        return self._path

    @property
    def closed(self) -> bool:
        return self._file.closed

    def keys(self) -> list[str]:
        """Tensor names in the order of their data in the file."""
        return self._file.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._file)

    def __contains__(self, name: object) -> bool:
        return name in self._file

    def _require(self, name: str) -> None:
        if not isinstance(name, str):
            raise DTypeError(f"tensor name must be a str, got {type(name).__name__}")
        if name not in self._file:  # raises StateError when closed
            raise TensorNotFoundError(f"'{self._path}': no tensor named '{name}'")

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype string, shape) of one tensor."""
        self._require(name)
        return self._file.info(name)

    def get(self, name: str, copy: bool = False) -> np.ndarray:
        """The tensor as a NumPy array: a read-only view into the file unless ``copy`` (BF16: see class doc)."""
        self._require(name)
        view = self._file.get(name)
        dtype, _ = self._file.info(name)
        if dtype == "BF16" and self._bf16 == "float32":
            src = view if view.flags.aligned else view.copy()
            out = np.empty(view.shape, np.float32)
            _C.convert(src, out, bf16=True)
            return out
        return view.copy() if copy else view

    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` string map ({} when absent)."""
        return self._file.metadata()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SafeOpen:
        if self._file.closed:
            self._file.keys()  # raises StateError
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} tensors"
        return f"SafeOpen({self._path!r}, {state})"


def safe_open(path: str | os.PathLike[str], *, bf16: BF16Mode = "float32") -> SafeOpen:
    """Opens and validates a safetensors file (see :class:`SafeOpen`)."""
    return SafeOpen(path, bf16=bf16)


def load_file(
    path: str | os.PathLike[str], *, names: Iterable[str] | None = None, bf16: BF16Mode = "float32"
) -> dict[str, np.ndarray]:
    """Reads tensors into new (writeable, file-independent) arrays.

    ``names`` restricts and orders what is read (default: every tensor, in file order); a missing name raises
    :class:`TensorNotFoundError`. BF16 becomes float32, or stays as uint16 bits with ``bf16="raw"``.
    """
    _check_bf16_mode(bf16)
    with SafeOpen(path, bf16=bf16) as f:
        wanted = f.keys() if names is None else list(names)
        for n in wanted:
            f._require(n)
        return {n: f.get(n, copy=True) for n in wanted}


def save_file(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray | BF16Array],
    metadata: Mapping[str, str] | None = None,
    *,
    bf16_names: Iterable[str] = (),
) -> None:
    """Writes tensors (in the mapping's order) and optional string metadata to ``path`` atomically.

    Arrays may be float32, float16, float64, int8, uint8, int32 or int64 (non-contiguous or non-native-order
    arrays are copied first); BF16 is written from :class:`BF16Array` values or from uint16 arrays whose
    names are in ``bf16_names``. Anything else raises :class:`uniql.DTypeError` before a file is created.
    """
    if not isinstance(tensors, Mapping):
        raise InvalidArgumentError(f"tensors must be a mapping of name to array, got {type(tensors).__name__}")
    bf16_set = set(bf16_names)
    unknown = bf16_set.difference(tensors)
    if unknown:
        raise InvalidArgumentError(f"bf16_names not in tensors: {sorted(unknown)}")
    names: list[str] = []
    arrays: list[np.ndarray] = []
    dtypes: list[str] = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise InvalidArgumentError(f"tensor names must be str, got {type(name).__name__}")
        if isinstance(value, BF16Array):
            arr, st = value.bits, "BF16"
        else:
            if isinstance(value, np.generic):
                value = np.asarray(value)
            if not isinstance(value, np.ndarray):
                raise DTypeError(f"tensor '{name}' must be a numpy.ndarray or BF16Array, got {type(value).__name__}")
            arr = value
            key = arr.dtype.newbyteorder("=") if arr.dtype.byteorder not in ("=", "|") else arr.dtype
            if name in bf16_set:
                if key != np.uint16:
                    raise DTypeError(f"tensor '{name}' is in bf16_names but has dtype {arr.dtype}, not uint16")
                st = "BF16"
            elif key in _NUMPY_TO_ST:
                st = _NUMPY_TO_ST[key]
            else:
                raise DTypeError(
                    f"tensor '{name}': dtype {arr.dtype} is not supported (float32, float16, float64, int8, uint8, "
                    "int32, int64; uint16 bfloat16 bits via BF16Array or bf16_names)"
                )
        target = _ST_TO_NUMPY[st]
        if arr.dtype.num != target.num or not arr.dtype.isnative:  # e.g. '>f4', or longlong for int64
            arr = arr.astype(target)
        if not (arr.flags.c_contiguous and arr.flags.aligned):
            arr = np.array(arr, order="C", copy=True)
        names.append(name)
        arrays.append(arr)
        dtypes.append(st)
    _C.st_write(os.fspath(path), names, arrays, dtypes, None if metadata is None else dict(metadata))

"""uniql's exception classes.

Every failure of the C core arrives as a subclass of :class:`UniqlError` that also derives from the matching
built-in (``ValueError`` for bad values/shapes/files, ``TypeError`` for dtypes, ``OSError`` for I/O,
``ArithmeticError`` for NaN/Inf or non-SPD matrices, ``NotImplementedError`` for unsupported requests), so
callers can catch either.
"""
from uniql._C import (  # noqa: F401  (re-exported)
    DTypeError,
    FormatError,
    InternalError,
    InvalidArgumentError,
    NumericError,
    OutOfMemoryError,
    RangeError,
    ShapeError,
    StateError,
    UniqlError,
    UniqlIOError,
    UnsupportedError,
)

__all__ = [
    "UniqlError", "InvalidArgumentError", "ShapeError", "DTypeError", "OutOfMemoryError", "UniqlIOError",
    "FormatError", "NumericError", "UnsupportedError", "RangeError", "StateError", "InternalError",
]

"""uniql's exception classes.

Every failure of the C core arrives as a subclass of :class:`UniqlError` that also derives from the matching
built-in (``ValueError`` for bad values/shapes/files, ``TypeError`` for dtypes, ``OSError`` for I/O,
``ArithmeticError`` for NaN/Inf or non-SPD matrices, ``NotImplementedError`` for unsupported requests), so
callers can catch either. Two classes are raised by Python only: :class:`ModelNotFoundError` (a model directory or
one of its files is missing; also importable from :mod:`uniql.checkpoint`) and :class:`OutputExistsError` (an output
directory exists; also importable from the modules that write artifacts and converted checkpoints).
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


class ModelNotFoundError(UniqlIOError, FileNotFoundError):
    """A model directory or one of its required files does not exist (also a ``FileNotFoundError``)."""


class OutputExistsError(UniqlIOError, FileExistsError):
    """The output directory exists and is not empty (pass overwrite=True, or --overwrite on the command line)."""


__all__ = [
    "UniqlError", "InvalidArgumentError", "ShapeError", "DTypeError", "OutOfMemoryError", "UniqlIOError",
    "FormatError", "NumericError", "UnsupportedError", "RangeError", "StateError", "InternalError",
    "ModelNotFoundError", "OutputExistsError",
]

"""uniql's exception classes.

Every failure of the C core arrives as a subclass of :class:`UniqlError` that also derives from the matching
built-in (``ValueError`` for bad values/shapes/files, ``TypeError`` for dtypes, ``OSError`` for I/O,
``ArithmeticError`` for NaN/Inf or non-SPD matrices, ``NotImplementedError`` for unsupported requests), so
callers can catch either. Four classes are raised by Python only: :class:`ModelNotFoundError` (a model directory,
one of its files or a data file uniql reads is missing; also importable from :mod:`uniql.formats.checkpoint`) and its
subclass :class:`MissingDataError` (packaged data that could not be fetched; also in :mod:`uniql.data`),
:class:`TensorNotFoundError` (a tensor name a safetensors file lacks; also importable from :mod:`uniql.formats.safetensors`)
and :class:`OutputExistsError` (an output directory exists; also importable from the modules that write artifacts
and converted checkpoints).
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
    """A model directory, one of its required files or a data file uniql reads does not exist (also a
    ``FileNotFoundError``)."""


class MissingDataError(ModelNotFoundError):
    """Packaged data (the calibration texts, the SmolLM2 GGUF) is missing and could not be fetched on first use;
    the message names the command that fixes it."""


class TensorNotFoundError(RangeError, KeyError):
    """A requested tensor name is not in a safetensors file (a :class:`RangeError` and a ``KeyError``)."""

    __str__ = Exception.__str__  # plain message, not KeyError's repr()


class OutputExistsError(UniqlIOError, FileExistsError):
    """The output directory exists and is not empty (pass overwrite=True, or --overwrite on the command line)."""


__all__ = [
    "UniqlError", "InvalidArgumentError", "ShapeError", "DTypeError", "OutOfMemoryError", "UniqlIOError",
    "FormatError", "NumericError", "UnsupportedError", "RangeError", "StateError", "InternalError",
    "ModelNotFoundError", "MissingDataError", "OutputExistsError", "TensorNotFoundError",
]

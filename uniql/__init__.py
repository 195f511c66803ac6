"""uniql: compress a language model once (UniQL: structured sorting, quantization-aware SVD, int4) and run it
on the CPU at any pruning rate, switchable between tokens.

All numerics live in the C core (``uniql._C``); this package orchestrates.
"""
from uniql import _C
from uniql.errors import *  # noqa: F401,F403
from uniql.errors import __all__ as _errors_all

__version__ = _C.version()

__all__ = ["__version__", *_errors_all]

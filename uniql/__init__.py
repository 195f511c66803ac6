"""uniql: compress a language model once (UniQL: structured sorting, quantization-aware SVD, int4) and run it
on the CPU at any pruning rate, switchable between tokens.

All numerics live in the C core (``uniql._C``); this package orchestrates.

Importing the package loads only what serving needs (the runtime, the artifact and checkpoint readers); the
compression pipeline (``compress``, ``finetune``, ``quantize_artifact``) is imported the first time one of those
names is used, so ``uniql.load(artifact)`` never imports it (nor torch).

Two entry points share their name with the submodule that defines them: ``uniql.compress`` is the function in
``uniql/compress.py`` and ``uniql.finetune`` the function in ``uniql/finetune/``. The package keeps the function
under that name even after the submodule is imported; reach a submodule itself with
``importlib.import_module("uniql.compress")`` (``import uniql.compress as m`` binds the function).
"""
import importlib as _importlib
import sys as _sys
import types as _types

from uniql import _C
from uniql.errors import *  # noqa: F401,F403
from uniql.errors import __all__ as _errors_all

__version__ = _C.version()

from uniql.checkpoint import load  # noqa: E402  (HF directory / compressed artifact -> runtime Model)
from uniql.runtime import int4_activations, set_int4_activations  # noqa: E402  (W4A8 / W4A32, process-wide)

# name -> submodule defining it, imported on first use (PEP 562)
_LAZY = {"compress": "uniql.compress",             # HF directory -> elastic artifact
         "finetune": "uniql.finetune",             # masked LoRA recovery of an unquantized artifact; needs torch
         "quantize_artifact": "uniql.requantize"}  # GPTQ int4 of an unquantized artifact


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'uniql' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # cached: the module dict, past the guard below
    return value


class _Package(_types.ModuleType):
    """Keeps the entry-point functions `compress`/`finetune` bound under their names when the import system
    binds the same-named submodule on the package (it does so on a submodule's first import)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _LAZY and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

__all__ = ["__version__", "compress", "finetune", "int4_activations", "load", "quantize_artifact",
           "set_int4_activations", *_errors_all]

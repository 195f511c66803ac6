"""uniql: compress a language model once (UniQL: structured sorting, quantization-aware SVD, int4) and run it
on the CPU at any pruning rate, switchable between tokens.

All numerics live in the C core (``uniql._C``); this package orchestrates.
"""
from uniql import _C
from uniql.errors import *  # noqa: F401,F403
from uniql.errors import __all__ as _errors_all

__version__ = _C.version()

from uniql.checkpoint import load  # noqa: E402  (HF directory / compressed artifact -> runtime Model)
from uniql.compress import compress  # noqa: E402  (HF directory -> elastic artifact; the function shadows the
#                                      submodule attribute: use importlib.import_module("uniql.compress") for it)
from uniql.finetune import finetune  # noqa: E402  (masked LoRA recovery of an unquantized artifact; needs torch)
from uniql.requantize import quantize_artifact  # noqa: E402  (GPTQ int4 of an unquantized artifact)
from uniql.runtime import int4_activations, set_int4_activations  # noqa: E402  (W4A8 / W4A32, process-wide)

__all__ = ["__version__", "compress", "finetune", "int4_activations", "load", "quantize_artifact",
           "set_int4_activations", *_errors_all]

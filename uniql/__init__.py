"""uniql: compress a language model once (UniQL: structured sorting, quantization-aware SVD, int4) and run it
on the CPU at any pruning rate, switchable between tokens.

All numerics live in the C core (``uniql._C``); this package orchestrates. Subpackages (docs/design.md, "the
layers of the code"): ``models`` (the model over the C runtime), ``formats`` (safetensors, Hugging Face
checkpoints, the artifact, GGUF), ``compress`` (the pipeline), ``finetune`` (masked LoRA recovery, PyTorch),
``eval`` (quality across rates), ``serve`` (HTTP server, adaptive rate), ``bench`` (benchmarks).

Importing the package loads only what serving needs (the runtime, the artifact and checkpoint readers); the
compression pipeline is imported the first time it is called, so ``uniql.load(artifact)`` never imports it (nor
torch). ``uniql.compress`` and ``uniql.finetune`` are the subpackages themselves, and calling one runs its entry
point (``uniql.compress(model_dir, out_dir, ...)``, ``uniql.finetune(artifact, out_dir, ...)``; see uniql.entry).
"""
import importlib as _importlib

from uniql import _C
from uniql.errors import *  # noqa: F401,F403
from uniql.errors import __all__ as _errors_all

__version__ = _C.version()

from uniql.formats.checkpoint import load  # noqa: E402  (HF directory / compressed artifact -> runtime Model)
from uniql.models.runtime import int4_activations, set_int4_activations  # noqa: E402  (W4A8 / W4A32, process-wide)

# imported on first use (PEP 562): the two callable subpackages and the GPTQ int4 of an unquantized artifact
_LAZY = {"compress": ("uniql.compress", None), "finetune": ("uniql.finetune", None),
         "quantize_artifact": ("uniql.compress.requantize", "quantize_artifact")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'uniql' has no attribute {name!r}")
    module, attr = _LAZY[name]
    m = _importlib.import_module(module)
    return m if attr is None else getattr(m, attr)


__all__ = ["__version__", "compress", "finetune", "int4_activations", "load", "quantize_artifact",
           "set_int4_activations", *_errors_all]

"""``uniql.compress``: a Hugging Face checkpoint in, one elastic artifact out; calling the package runs it.

    art = uniql.compress(model_dir, out_dir, calibration=..., quantize=True)   # = pipeline.compress

Modules (each imported on its own; importing this package imports none of them):

- :mod:`~uniql.compress.pipeline` -- the driver: calibration tokens, the layer loop, the partial directory and
  resume, embedding / lm_head, metadata and report; a Llama / Qwen2 layer's calibrate-sort-quantize steps;
- :mod:`~uniql.compress.hybrid` -- the same steps for Mamba2, Nemotron-H and Bamba layers;
- :mod:`~uniql.compress.sorting` -- the structured sorts (MLP ridge leverage, Q/K RoPE pairs, V/O
  quantization-aware SVD, SSM heads and states) and block importance, over the C core;
- :mod:`~uniql.compress.quant` -- int4 / int8 GPTQ and round-to-nearest, packing;
- :mod:`~uniql.compress.linalg` -- covariance accumulators and eigendecomposition (C, float64);
- :mod:`~uniql.compress.rotate` -- the residual rotation;
- :mod:`~uniql.compress.requantize` -- ``quantize_artifact``: GPTQ int4 of an unquantized (e.g. fine-tuned)
  artifact.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

from uniql.entry import EntryPointPackage

ENTRY_POINT = "uniql.compress.pipeline:compress"

# names of the pipeline also reachable here (imported on first use)
_FORWARD = {"compress": "uniql.compress.pipeline", "CompressOptions": "uniql.compress.pipeline",
            "DEFAULT_PRECISION": "uniql.compress.pipeline", "default_precision": "uniql.compress.pipeline",
            "quantize_artifact": "uniql.compress.requantize"}


def __getattr__(name: str) -> Any:
    if name not in _FORWARD:
        raise AttributeError(f"module 'uniql.compress' has no attribute {name!r}")
    return getattr(importlib.import_module(_FORWARD[name]), name)


sys.modules[__name__].__class__ = EntryPointPackage

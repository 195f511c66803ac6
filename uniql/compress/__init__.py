"""``uniql.compress``: a Hugging Face checkpoint in, one elastic artifact out; calling the package runs it.

    art = uniql.compress(model_dir, out_dir, calibration=..., quantize=True)   # = pipeline.compress

Modules (each imported on its own; importing this package imports none of them):

- :mod:`~uniql.compress.pipeline` -- the driver: options, calibration tokens, the one layer loop (every
  architecture), the partial directory and resume, metadata and report;
- :mod:`~uniql.compress.layers` -- a model as a stack of layers, each a list of components (attention mixer,
  Mamba2 mixer, MLP) with one sorter per component kind, and one-layer runtime models;
- :mod:`~uniql.compress.steps` -- the steps compress and quantize_artifact share: the GPTQ step of a sorted layer,
  the writer of its artifact tensors and of the embedding / lm_head, the quantization record;
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

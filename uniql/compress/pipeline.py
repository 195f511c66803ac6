"""uniql.compress: a Hugging Face checkpoint in, one elastic artifact out (docs/design.md §2-§4).

Pipeline, layer by layer, over two activation streams (each (B, T, n) float32, updated in place; only one layer's
statistics are held): X_fp runs through the original float layers, X_q through the already quantized ones.

1. calibrate: run the original layer (C runtime, fp32) on X_fp, accumulating in float64 (C) the statistics of
   each of its components (attention: the mixer input, q and k after RoPE; Mamba2: B, C, Delta and the
   chunk-local states; MLP: the down_proj input) and the last-token input/output vectors for block importance;
   X_fp <- the layer's outputs;
2. sort: MLP channels by ridge leverage, Q/K RoPE pairs by post-RoPE scores (frequency index map), V/O by the
   quantization-aware SVD (singular values absorbed into V, V bias folded into an o_proj bias), SSM state dims and
   head channels -- all in C;
3. quantize (optional, :func:`uniql.compress.steps.quantize_layer`): run the *sorted* float layer on X_q for the
   GPTQ Hessians of its linears' inputs, GPTQ int4 of every linear (groups of o_proj / out_proj inside a head's
   segment, so no rate ever cuts a group in a way that needs re-quantization);
4. propagate: X_q <- outputs of the quantized layer;
5. write: one safetensors file per layer, then lm_head (GPTQ on the final-norm output of X_q; a tied embedding
   shares the table, an untied one gets group-wise RTN), the config with the uniql metadata (block importances:
   any rate is allocated at load time), the tokenizer.

Sorting statistics and importances thus come from the float model (docs/design.md §2.1: sort, then quantize) and
GPTQ sees the inputs deployment produces (§3.5), so ``compress(quantize=True)`` writes the same layer and
embedding / lm_head files, byte for byte, as ``quantize_artifact(compress(quantize=False))`` with the same
calibration (:mod:`uniql.compress.requantize` calls the same steps).

The output is written under ``<out>.partial`` and renamed at the end: an interrupted run never leaves a directory
that loads as an artifact, and ``resume=True`` continues from the last finished layer.

Every architecture takes the same steps: a model is a stack of layers, each a list of components (attention
mixer, Mamba2 mixer, MLP), and each component kind has its sorter (:mod:`uniql.compress.layers`: Q/K RoPE pairs
and V/O QA-SVD, SSM state dims and head channels, MLP channels), fed by the one calibration pass of step 1; step 3
and the writer are :mod:`uniql.compress.steps`, shared with :mod:`uniql.compress.requantize`. Llama / Qwen2 are the
stacks whose every layer is attention + MLP; Mamba2, Nemotron-H and Bamba interleave Mamba2 mixers, attention
(without or with partial RoPE) and squared-ReLU or gated MLPs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from uniql.compress.layers import AttentionSorter, Stack
from uniql.compress.rotate import final_mix_name
from uniql.compress.sorting import block_importance
from uniql.compress.steps import (StageTimer, artifact_layer, capture_moment, head_tensors, peak_rss_mb,
                                  quant_record, quantize_layer)
from uniql.errors import (FormatError, InvalidArgumentError, OutputExistsError, RangeError, UniqlError,
                          UnsupportedError)
from uniql.formats import checkpoint
from uniql.formats import safetensors as st
from uniql.formats.artifact import FORMAT_VERSION, REST_FILE, ArtifactMeta, layer_file, publish, write_config
from uniql.models.runtime import Model, exact_int4

log = logging.getLogger(__name__)

COMPRESSIBLE = ("llama", "qwen2", "mamba2", "nemotron_h", "bamba")
SCORERS = ("uniql", "magnitude")
#: tensor classes of the precision policy (CompressOptions.precision)
PRECISION_CLASSES = ("embedding", "lm_head", "attention", "mlp", "mamba")
#: default precision policy of llama / qwen2 (``compress(precision=None)``; ``precision={}`` is int4 everywhere),
#: chosen by measured perplexity per byte on SmolLM2-135M (README, issue 19): int8 for the tied embedding / lm_head
#: table (one table for both, thanks to the final mix of a rotated tied model: the best buy per byte), every
#: down_proj and v_proj and the up_proj of the last eight layers; GPTQ int4 with groups of 64 elsewhere
DEFAULT_PRECISION = {"down_proj": "int8-g256", "v_proj": "int8-g256", "up_proj@-8--1": "int8-g256",
                     "attention": "int4-g64", "mlp": "int4-g64", "lm_head": "int8-g256"}
#: the default of a model whose head is its own table (untied): an int8 head would cost a whole int8 table more
#: than it buys per byte (SmolLM2, untied: +14 MB), so it stays GPTQ int4 g64 (the embedding RTN int4)
DEFAULT_PRECISION_UNTIED = dict(DEFAULT_PRECISION, lm_head="int4-g64")


def default_precision(tied: bool) -> dict[str, str]:
    """The default precision policy of a llama / qwen2 artifact whose embedding is (``tied``) or is not its head."""
    return dict(DEFAULT_PRECISION if tied else DEFAULT_PRECISION_UNTIED)


#: projections a precision key may name (one projection of every decoder layer, or of a layer range)
PRECISION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "in_proj",
                         "out_proj")


_LAYER_RANGE = re.compile(r"^(-?\d+)(?:-(-?\d+))?$")


def _precision_key(key: Any) -> tuple[str, int, int] | None:
    """(target, first layer, last layer) of a precision key: ``CLASS`` or ``PROJ`` (every layer) or
    ``CLASS@A-B`` / ``PROJ@A-B`` / ``PROJ@A`` (decoder layers A..B; a negative index counts from the end, as in
    Python: ``down_proj@-10--1`` is the last ten layers); None when the key is malformed."""
    if not isinstance(key, str):
        return None
    target, at, rng = key.partition("@")
    if target not in PRECISION_CLASSES + PRECISION_PROJECTIONS:
        return None
    if not at:
        return target, 0, -1
    if target in ("embedding", "lm_head"):
        return None
    m = _LAYER_RANGE.match(rng)
    if not m:
        return None
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    return (target, lo, hi) if (lo < 0) != (hi < 0) or lo <= hi else None


def _precision_spec(v: Any) -> bool:
    """Whether `v` is a valid storage: "int4", "int4-g<N>", "int8", "int8-g<N>" or "f16"."""
    if v in ("int4", "int8", "f16"):
        return True
    return (isinstance(v, str) and v.startswith(("int4-g", "int8-g")) and v[6:].isdigit() and int(v[6:]) >= 1)


def precision_class(name: str) -> str:
    """The precision class of a layer linear's name (attention, mlp or mamba)."""
    base = name[: -len(".weight")] if name.endswith(".weight") else name
    proj = base.rsplit(".", 1)[-1]
    if proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        return "attention"
    if proj in ("in_proj", "out_proj"):
        return "mamba"
    return "mlp"


@dataclass(frozen=True)
class CompressOptions:
    """Options of :func:`compress` (saved in the artifact's config and report)."""

    num_samples: int = 32          # calibration sequences
    seq_len: int = 512             # tokens per calibration sequence
    quantize: bool = True          # GPTQ int4 of every linear, int4 embedding
    group: int = 128               # int4 group size along the input dimension
    damp: float = 0.01             # GPTQ damping (fraction of mean diag H)
    max_rate: float = 0.35         # highest pruning rate the artifact serves
    mlp_lambda: float = 1.0        # ridge constant of the MLP scores
    mlp_granularity: int = 128     # keep-size granularity (shrunk for small models, docs/design.md §3.1)
    attn_granularity: int = 16
    scorer: str = "uniql"          # "uniql" (ridge / RoPE-pair scores) or "magnitude" (ablation)
    split_sigma: bool = False      # ablation: singular values split evenly between V and O
    dtype: str = "float32"         # storage of unquantized weights: "float32" or "float16"
    rotate: bool = True            # rotate the residual stream (uniql.compress.rotate) before sorting and GPTQ
    rotate_seed: int = 0           # seed of the random signs / orthogonal block of the rotation
    untie: bool = False            # rotated tied embedding: untie (second table) instead of a final mix
    mse_scale: bool = True         # GPTQ group scales searched for the least squared rounding error
    act_order: bool = True         # GPTQ columns in descending Hessian-diagonal order, static groups
    refit: int = 0                 # GPTQ rounds with a Hessian-weighted least-squares re-fit of the scales (0: none)
    precision: dict[str, str] = field(default_factory=dict)  # key -> "int4[-g<N>]", "int8[-g<N>]" or "f16"

    def gptq_kw(self) -> dict[str, Any]:
        """Keyword arguments of the GPTQ calls (:func:`gptq_blocks`)."""
        return dict(damp=self.damp, mse_scale=self.mse_scale, act_order=self.act_order, refit=self.refit)

    def storage(self, name: str, layer: int | None = None, num_layers: int = 0) -> tuple[str, int]:
        """("int4", group), ("int8", group) or ("f16", 0) of a tensor: `name` is a class (PRECISION_CLASSES) or
        a layer linear's name (its class and projection are read from it), `layer` its decoder layer (None: every
        layer) of `num_layers` (negative indices of a key count from it). The most specific key of the policy
        wins: ``PROJ@A-B``, ``CLASS@A-B``, ``PROJ``, ``CLASS``; none: int4."""
        if name in PRECISION_CLASSES:
            cls, proj = name, None
        else:
            base = name[: -len(".weight")] if name.endswith(".weight") else name
            cls, proj = precision_class(base), base.rsplit(".", 1)[-1]
        best, spec = -1, "int4"
        for key, v in self.precision.items():
            target, lo, hi = _precision_key(key)  # type: ignore[misc]  # validated in __post_init__
            scoped = "@" in key
            if scoped:
                lo, hi = (v + num_layers if v < 0 else v for v in (lo, hi))
                if layer is None or not lo <= layer <= hi:
                    continue
            rank = (2 if scoped else 0) + (1 if target == proj else 0)
            if (target == proj or target == cls) and rank > best:
                best, spec = rank, v
        if spec == "f16":
            return "f16", 0
        return spec[:4], int(spec[len("int4-g"):]) if "-g" in spec else self.group

    def __post_init__(self) -> None:
        for name in ("num_samples", "seq_len", "group", "mlp_granularity", "attn_granularity"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.refit, bool) or not isinstance(self.refit, int) or not 0 <= self.refit <= 64:
            raise InvalidArgumentError(f"refit must be an integer in 0..64, got {self.refit!r}")
        if isinstance(self.rotate_seed, bool) or not isinstance(self.rotate_seed, int) or self.rotate_seed < 0:
            raise InvalidArgumentError(f"rotate_seed must be a non-negative integer, got {self.rotate_seed!r}")
        if self.seq_len < 2:
            raise InvalidArgumentError(f"seq_len must be at least 2, got {self.seq_len}")
        if not (0.0 <= self.max_rate <= 0.85):
            raise RangeError(f"max_rate must be in [0, 0.85], got {self.max_rate}")
        if not (self.damp >= 0.0) or not (self.mlp_lambda > 0.0):
            raise InvalidArgumentError(f"damp must be >= 0 and mlp_lambda > 0, got {self.damp}, {self.mlp_lambda}")
        if self.scorer not in SCORERS:
            raise InvalidArgumentError(f"scorer must be one of {SCORERS}, got {self.scorer!r}")
        if self.dtype not in ("float32", "float16"):
            raise InvalidArgumentError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        if not isinstance(self.precision, dict):
            raise InvalidArgumentError(f"precision must be a dict of tensor class -> storage, got {self.precision!r}")
        for k, v in self.precision.items():
            if _precision_key(k) is None:
                raise InvalidArgumentError(
                    f"precision: unknown key {k!r} (a tensor class {PRECISION_CLASSES} or projection "
                    f"{PRECISION_PROJECTIONS}, optionally @A-B for decoder layers A..B)")
            if not _precision_spec(v):
                raise InvalidArgumentError(f"precision[{k!r}] must be 'int4', 'int4-g<group>', 'int8', 'int8-g<group>' "
                                           f"or 'f16', got {v!r}")


# ------------------------------------------------------------------------------ calibration ----

def calibration_tokens(tokenizer: Any, calibration: Any, num_samples: int, seq_len: int) -> np.ndarray:
    """(B, seq_len) int32 windows of consecutive tokens from a text, a file, a list of texts or token ids.

    A list (or tuple) of texts is a mix: window k comes from text k mod len(texts) (its next unused window; a text
    that has run out is skipped), so each text gives an equal share of the windows however long it is. Default
    (None): :data:`uniql.data.CALIBRATION_MIX` -- web prose (C4), code, technical prose and other languages;
    perplexity is measured on Wikipedia, which calibration never sees."""
    from uniql import data

    if calibration is None:
        calibration = data.calibration_mix()
    if isinstance(calibration, np.ndarray) or (isinstance(calibration, (list, tuple)) and calibration
                                               and all(isinstance(t, (int, np.integer)) for t in calibration)):
        ids = np.asarray(calibration)
        if ids.ndim == 2:
            ids = ids.reshape(-1)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise InvalidArgumentError("calibration token ids must be a 1-D or 2-D integer array")
        parts = [ids]
    else:
        if isinstance(calibration, os.PathLike) or (isinstance(calibration, str) and "\n" not in calibration
                                                     and len(calibration) < 4096 and Path(calibration).is_file()):
            calibration = Path(calibration).read_text(encoding="utf-8")
        texts = list(calibration) if isinstance(calibration, (list, tuple)) else [calibration]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidArgumentError("calibration must be a text, a file path, a list of texts or token ids, "
                                       f"got {type(calibration).__name__}")
        if tokenizer is None:
            raise InvalidArgumentError("calibration text needs the model's tokenizer.json (or pass token ids)")
        parts = [np.asarray(tokenizer.encode(t).ids, np.int64) for t in texts]
    avail = [p.size // seq_len for p in parts]
    n = sum(avail)
    if n < 1:
        raise InvalidArgumentError(f"calibration has {sum(p.size for p in parts)} tokens, fewer than one sequence "
                                   f"of seq_len={seq_len} in any of its texts")
    if n < num_samples:
        log.warning("calibration text gives %d sequences of %d tokens (asked for %d)", n, seq_len, num_samples)
    n = min(n, num_samples)
    rows, used, k = [], [0] * len(parts), 0
    while len(rows) < n:  # round robin over the texts that still have windows
        j = k % len(parts)
        k += 1
        if used[j] < avail[j]:
            rows.append(parts[j][used[j] * seq_len:(used[j] + 1) * seq_len])
            used[j] += 1
    return np.ascontiguousarray(np.stack(rows), dtype=np.int32)


# --------------------------------------------------------------------------------- helpers ----

def _layer_tensors(tensors: dict[str, Any], i: int, prefix: str = "model.layers.") -> dict[str, Any]:
    p = f"{prefix}{i}."
    return {prefix + "0." + k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


class LayerStream:
    """Streams a checkpoint layer by layer: the embedding / final norm / lm_head stay in memory, a decoder layer
    is read when it is needed and dropped after (peak memory: one layer, not the model). Layer tensors are named
    ``<prefix><i>.`` (``model.layers.``, or ``backbone.layers.`` for Mamba2)."""

    def __init__(self, src: Path, num_layers: int, prefix: str = "model.layers.", rotation: Any = None,
                 tied: bool = False, keep_tied: bool = False) -> None:
        self.src, self.prefix, self.rotation = src, prefix, rotation
        names = checkpoint.tensor_names(src)
        self.by_layer: list[list[str]] = [[] for _ in range(num_layers)]
        other = []
        for n in names:
            if n.startswith(prefix):
                idx = n[len(prefix):].split(".")[0]
                if not idx.isdigit() or int(idx) >= num_layers:
                    raise FormatError(f"tensor {n!r} names a layer the config does not have ({num_layers} layers)")
                self.by_layer[int(idx)].append(n)
            elif not n.endswith("rotary_emb.inv_freq"):
                other.append(n)
        self.shared = checkpoint.read_tensors(src, names=other)
        if rotation is not None:  # residual stream rotated (uniql.compress.rotate): the compressor sees a rotated model
            from uniql.compress.rotate import rotate_shared
            self._check_finite(self.shared)  # named before the rotation smears a NaN over a row
            self.shared = rotate_shared(self.shared, rotation, tied, keep_tied)

    def layer(self, i: int) -> dict[str, np.ndarray]:
        """Layer i's tensors under layer-0 names (rotated when the checkpoint is read with a rotation)."""
        raw = checkpoint.read_tensors(self.src, names=self.by_layer[i])
        if self.rotation is not None:
            from uniql.compress.rotate import rotate_layer
            self._check_finite(raw)
            return rotate_layer(_layer_tensors(raw, i, self.prefix), self.prefix + "0.", self.rotation)
        return _layer_tensors(raw, i, self.prefix)

    @staticmethod
    def _check_finite(tensors: dict[str, np.ndarray]) -> None:
        from uniql import _C

        for name, a in tensors.items():
            _C.check_finite(a, name)

    def validate(self, check_layer: Callable[[int, dict[str, np.ndarray]], None]) -> None:
        """Before anything is written: every weight finite (C scan, naming the tensor) and names/shapes
        consistent with the config (``check_layer(i, tensors)``: the runtime's validation of a one-layer model)."""
        from uniql import _C

        for name, a in self.shared.items():
            _C.check_finite(a, name)
        p0 = self.prefix + "0."
        for i in range(len(self.by_layer)):
            lay = self.layer(i)
            for name, a in lay.items():
                _C.check_finite(a, f"{self.prefix}{i}." + name[len(p0):])
            try:
                check_layer(i, lay)
            except UniqlError as e:
                raise type(e)(f"layer {i}: {e}") from None


def rotation_of(cfg: dict[str, Any], opts: CompressOptions) -> Any:
    """The residual-stream rotation of a compress run (None when ``opts.rotate`` is off)."""
    if not opts.rotate:
        return None
    from uniql.compress.rotate import Rotation

    return Rotation(int(cfg["hidden_size"]), opts.rotate_seed)


def source_tied(cfg: dict[str, Any], opts: CompressOptions) -> bool:
    """Whether the source checkpoint ties its embeddings (a rotated run unties them in the config it passes on,
    keeping the source's value under ``uniql_source_tied``, which is not written out)."""
    return bool(cfg.get("uniql_source_tied", cfg.get("tie_word_embeddings", False)))


def layer_importance(x_last: np.ndarray, y_last: np.ndarray) -> float:
    """Block importance of one layer from its last-token inputs and outputs (B, n) (docs/design.md §3.4)."""
    return float(block_importance(np.ascontiguousarray(x_last), np.ascontiguousarray(y_last)))


# ------------------------------------------------------------------------------------ layer job ----

class LayerJob:
    """The per-layer work of compress, for every architecture: a checkpoint read layer by layer
    (:class:`LayerStream`) as a :class:`~uniql.compress.layers.Stack` whose layers are lists of components, each
    with its sorter (:mod:`uniql.compress.layers`)."""

    def __init__(self, src: Path, cfg: dict[str, Any], opts: CompressOptions, T: int) -> None:
        self.cfg, self.opts, self.T = cfg, opts, T
        self.stack = Stack(cfg, checkpoint.tensor_names(src))
        self.L = self.stack.L
        self.ckpt = LayerStream(src, self.L, self.stack.prefix, rotation=rotation_of(cfg, opts),
                                tied=source_tied(cfg, opts), keep_tied=bool(cfg.get("tie_word_embeddings", False)))
        self.tensors = self.ckpt.shared    # embedding, final norm, lm_head (decoder layers are streamed)
        self.embed_name = self.stack.present(self.tensors, "embed", src)
        self.norm_name = self.stack.present(self.tensors, "final", src)
        shared = {self.embed_name: self.tensors[self.embed_name], self.norm_name: self.tensors[self.norm_name]}
        if not self.stack.config.tie_word_embeddings:
            shared["lm_head.weight"] = self.tensors["lm_head.weight"]
        self.shared = shared               # what a one-layer model needs besides its layer (not copied)
        self.ckpt.validate(lambda i, lay: self.stack.check_layer(i, self.shared, lay, src))

    def _model(self, i: int, lay: dict[str, Any], freq: np.ndarray | None = None) -> Model:
        return self.stack.model(i, self.shared, lay, freq, self.T)

    def embed(self, ids: np.ndarray) -> np.ndarray:
        emb = self._model(0, self.ckpt.layer(0))
        return np.stack([emb.embed(ids[b]) for b in range(ids.shape[0])])

    def final_hessian(self, X: np.ndarray, mix: np.ndarray | None) -> np.ndarray:
        """Second moment of the final-norm output (times the final mix `mix`^T when given): the mixer input of a
        one-layer model whose input norm is the final norm."""
        fin = self.stack.final_norm_layer(self.ckpt.layer(0), self.tensors[self.norm_name])
        return capture_moment(self._model(0, fin), X, "mixer_in", mix)

    def layer(self, i: int, lay: dict[str, Any], X: np.ndarray, Xq: np.ndarray | None, timer: StageTimer,
              info: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Calibrates and sorts layer i on the float stream X and (when Xq is given) quantizes it on the quantized
        stream Xq; both streams advance in place to the next layer's inputs. Returns (artifact tensors, block
        importance)."""
        stack, opts = self.stack, self.opts
        parts = stack.components(i)
        # 1. calibrate the original layer: one pass, every component's statistics
        t = time.perf_counter()
        model = self._model(i, lay)
        for p in parts:
            p.begin(lay, X.shape[0])
        caps = tuple(dict.fromkeys(c for p in parts for c in p.captures))
        x_last = np.ascontiguousarray(X[:, -1])
        for b in range(X.shape[0]):  # X <- the original layer's outputs, sequence by sequence
            X[b], cap = model.layer_forward(0, X[b], capture=caps)
            for p in parts:
                p.update(cap)
        del model, cap
        importance = layer_importance(x_last, X[:, -1])
        timer.add("calibrate", time.perf_counter() - t)

        # 2. sort: one sorter per component
        t = time.perf_counter()
        sl = stack.sorted_layer(i, lay, [p.sort(lay, opts) for p in parts])
        freq = next((p.freq for p in parts if isinstance(p, AttentionSorter)), None)
        timer.add("sort", time.perf_counter() - t)

        # 3. quantize on the quantized stream (Hessians of the sorted layer's inputs) and 4. propagate it
        stored = sl
        if Xq is not None:
            stored = quantize_layer(lambda tl: self._model(i, tl, freq), sl, Xq, stack.plan(parts, opts.group),
                                    opts.gptq_kw(), timer, lambda nm: opts.storage(nm, i, self.L))
        stack.with_rope_freq(stored, parts, freq)
        wdt = np.float16 if opts.dtype == "float16" else np.float32
        out_t = artifact_layer(stored, stack.p0, f"{stack.prefix}{i}.", info, wdt, stack.segments)
        return out_t, importance

# --------------------------------------------------------------------------------- compress ----

@exact_int4
def compress(model_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, calibration: Any = None,
             num_samples: int = 32, seq_len: int = 512, quantize: bool = True, max_rate: float = 0.35,
             group: int = 128, scorer: str = "uniql", split_sigma: bool = False, dtype: str = "float32",
             rotate: bool = True, rotate_seed: int = 0, mse_scale: bool = True, act_order: bool = True,
             precision: dict[str, str] | None = None, overwrite: bool = False, resume: bool = False,
             progress: bool = True, untie: bool = False, refit: int = CompressOptions.refit) -> Path:
    """Compresses a Hugging Face Llama / Qwen2 / Mamba2 / Nemotron-H / Bamba checkpoint into one artifact serving
    every pruning rate in [0, max_rate]; returns the artifact directory (default: ``<model_dir>-uniql``).

    ``calibration``: a text, a path to a text file, a list of texts (a mix: equal shares of windows) or an array
    of token ids (default: :data:`uniql.data.CALIBRATION_MIX`, C4 + code + technical + multilingual samples
    shipped by exllamav2); ``num_samples`` sequences of ``seq_len`` tokens. ``quantize``: GPTQ int4
    (group ``group``) of every linear and int4 embedding; False keeps ``dtype`` weights. ``scorer`` and
    ``split_sigma`` select ablations (transformers only). Nothing is written when an argument is invalid; an
    existing non-empty output directory needs ``overwrite=True``. ``rotate``: rotate the residual stream by a
    randomized Hadamard transform (:mod:`uniql.compress.rotate`, seed ``rotate_seed``) before sorting and
    quantization -- the same function at every rate, int4 with far smaller error; a tied embedding stays tied (the
    final norm's scale becomes the final mix, :mod:`uniql.compress.rotate`), or is untied with ``untie=True``.
    ``mse_scale`` / ``act_order`` / ``refit``: GPTQ options (:func:`uniql.compress.quant.quantize_gptq`).
    ``precision``: storage per tensor class (``embedding``, ``lm_head``, ``attention``, ``mlp``, ``mamba``) or
    projection (``q_proj`` ... ``down_proj``, ``in_proj``, ``out_proj``), optionally for decoder layers A..B only (``"down_proj@20-29"``) -> ``"int4"``
    (GPTQ, group ``group``), ``"int4-g<N>"`` (group N), ``"int8"`` / ``"int8-g<N>"`` (round-to-nearest int8,
    llama / qwen2) or ``"f16"``; the most specific key wins (``PROJ@A-B``, ``CLASS@A-B``, ``PROJ``, ``CLASS``),
    unnamed tensors are int4. None: :func:`default_precision` for llama / qwen2, int4 everywhere for hybrids;
    ``{}``: int4 everywhere.
    """
    opts = CompressOptions(num_samples=num_samples, seq_len=seq_len, quantize=quantize, group=group,
                           max_rate=max_rate, scorer=scorer, split_sigma=split_sigma, dtype=dtype, rotate=rotate,
                           rotate_seed=rotate_seed, mse_scale=mse_scale, act_order=act_order, refit=refit,
                           precision=dict(precision or {}), untie=bool(untie))
    src = Path(model_dir)
    cfg = checkpoint.read_config(src)             # unsupported architectures fail here, before any write
    if checkpoint.is_artifact(cfg):
        raise InvalidArgumentError(f"{src} is already a uniql artifact")
    arch = cfg.get("model_type")
    if arch not in COMPRESSIBLE:
        raise UnsupportedError(f"compress supports {', '.join(COMPRESSIBLE)} models, not {arch!r}")
    if arch in checkpoint.HYBRID_MODEL_TYPES and opts.scorer != "uniql" or (
            arch in checkpoint.HYBRID_MODEL_TYPES and opts.split_sigma):
        raise UnsupportedError("the scorer / split_sigma ablations exist for llama and qwen2 only")
    if opts.rotate:  # a tied embedding stays tied with a final mix (compress.rotate); untie: its own head E diag(g) Q
        src_tied = bool(cfg.get("tie_word_embeddings", False))
        cfg = dict(cfg, tie_word_embeddings=src_tied and not opts.untie, uniql_source_tied=src_tied)
    if precision is None and arch in ("llama", "qwen2"):  # the default policy (hybrids: int4 everywhere)
        opts = dataclasses.replace(opts, precision=default_precision(bool(cfg.get("tie_word_embeddings", False))))
    out = Path(out_dir) if out_dir is not None else src.with_name(src.name + "-uniql")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(f"output directory {out} exists and is not empty (pass overwrite=True)")
    tokenizer = checkpoint.load_tokenizer(src)
    ids = calibration_tokens(tokenizer, calibration, opts.num_samples, opts.seq_len)
    part = out.with_name(out.name + ".partial")
    timer = StageTimer()
    t0 = time.perf_counter()
    B, T = ids.shape
    job = LayerJob(src, cfg, opts, T)               # names, shapes, NaN/Inf: before anything is written
    tensors = job.tensors                     # embedding, final norm, lm_head (decoder layers are streamed)
    n, L = int(cfg["hidden_size"]), job.L
    timer.add("read", time.perf_counter() - t0)

    # ---- resume / fresh partial directory. The activation streams after `done` layers are saved as
    # calib_x.<done>.npy (float stream) and calib_xq.<done>.npy (quantized stream) before progress.json names `done`,
    # and the previous pair is removed only after that: a kill at any point leaves a consistent pair to resume from.
    state_path = part / "progress.json"
    streams = ("calib_x", "calib_xq") if opts.quantize else ("calib_x",)
    start, importance = 0, []
    resumed_info: dict[str, Any] = {}
    acts: list[np.ndarray] = []
    opts_json = asdict(opts)
    if resume and state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("options") != opts_json or state.get("source") != str(src.resolve()):
            raise InvalidArgumentError(f"cannot resume {part}: it was started with other options or model")
        if state.get("streams") != list(streams):
            raise InvalidArgumentError(f"cannot resume {part}: it was written by an older uniql (one activation "
                                       "stream); start again without resume")
        start, importance = int(state["done"]), list(state["importance"])
        resumed_info = dict(state["info"])
        acts = [np.load(part / f"{s}.{start}.npy") for s in streams]
        for a in acts:
            if a.shape != (B, T, n) or a.dtype != np.float32:
                raise InvalidArgumentError(f"cannot resume {part}: saved activations have shape {a.shape}")
        log.info("resuming %s after layer %d", part, start - 1)
    else:
        if part.exists():
            shutil.rmtree(part)
        part.mkdir(parents=True)
    if not acts:
        t = time.perf_counter()
        acts = [job.embed(ids)]
        if opts.quantize:
            acts.append(acts[0].copy())  # both streams start at the (float) embedding
        timer.add("calibrate", time.perf_counter() - t)
    X = acts[0]                                      # float stream: sorting statistics, block importance
    Xq = acts[1] if opts.quantize else None          # quantized stream: GPTQ Hessians, lm_head
    del acts

    info: dict[str, Any] = resumed_info  # tensor table (layers finished before an interruption included)
    bar = range(start, L)
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(bar, desc="compress", unit="layer", initial=start, total=L)

    for i in bar:
        out_t, imp = job.layer(i, job.ckpt.layer(i), X, Xq, timer, info)  # X and Xq advance in place
        importance.append(imp)
        # write the layer, then the activations and the progress record (each replaced atomically)
        t = time.perf_counter()
        st.save_file(part / layer_file(i), out_t)
        for s, a in zip(streams, (X, Xq)):
            np.save(part / f"{s}.tmp.npy", a)
            os.replace(part / f"{s}.tmp.npy", part / f"{s}.{i + 1}.npy")
        tmp = part / "progress.tmp.json"
        tmp.write_text(json.dumps({"done": i + 1, "importance": importance, "options": opts_json,
                                   "source": str(src.resolve()), "info": info, "streams": list(streams)}))
        os.replace(tmp, state_path)
        for s in streams:
            (part / f"{s}.{i}.npy").unlink(missing_ok=True)
        timer.add("write", time.perf_counter() - t)

    # ---- embedding / final norm / lm_head: GPTQ of lm_head on the final-norm output of the quantized stream
    t = time.perf_counter()
    tied = bool(cfg.get("tie_word_embeddings", False))
    rest = head_tensors(tensors, job.embed_name, job.norm_name, tied, opts, lambda F: job.final_hessian(Xq, F), info)
    st.save_file(part / REST_FILE, rest)
    mix_name = final_mix_name(job.norm_name)

    jm = job.stack.meta(opts)
    quant = quant_record(opts, jm.pop("o_group"), tied, jm.pop("quantization", {}))
    sorting = {"scorer": opts.scorer, "split_sigma": opts.split_sigma, "mlp_lambda": opts.mlp_lambda,
               "num_samples": int(B), "seq_len": int(T)}
    sorting.update(jm.pop("sorting", {}))
    if opts.rotate:
        sorting["rotation"] = {"kind": "randomized-hadamard", "seed": opts.rotate_seed,
                               "untied": bool(cfg["uniql_source_tied"]) and not tied,
                               "final_mix": mix_name in rest}
    meta = ArtifactMeta(format_version=FORMAT_VERSION if mix_name in rest else 1, architecture=arch,
                        max_rate=opts.max_rate,
                        importance=tuple(importance), quantization=quant if opts.quantize else None,
                        sorting=sorting, source=src.name, **jm)
    out_cfg = dict(cfg)
    out_cfg.pop("uniql_source_tied", None)
    out_cfg["uniql"] = meta.to_json()
    out_cfg["uniql_tensors"] = info
    write_config(part, out_cfg, src)
    timer.add("write", time.perf_counter() - t)
    (part / "progress.json").unlink(missing_ok=True)
    for tmpf in part.glob("calib_x*.npy"):
        tmpf.unlink()
    total = time.perf_counter() - t0
    report = {"source": str(src), "options": opts_json, "layers": L, "calibration_tokens": int(B * T),
              "seconds": {k: round(v, 3) for k, v in timer.t.items()}, "total_seconds": round(total, 3),
              "peak_rss_mb": round(peak_rss_mb(), 1), "importance": importance,
              "bytes": {p.name: p.stat().st_size for p in sorted(part.glob("model-*.safetensors"))}}
    (part / "uniql_report.json").write_text(json.dumps(report, indent=2) + "\n")
    publish(part, out)
    log.info("wrote %s in %.1f s (peak RSS %.0f MB)", out, total, report["peak_rss_mb"])
    return out

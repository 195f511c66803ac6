"""The model of the C runtime (:class:`Model`: one class for every architecture, run at any per-layer keep sizes,
switchable between tokens), its weight holders (:class:`Q4`, :class:`Q8`) and the Llama / Qwen2 config and reader
(Mamba2 / Nemotron-H / Bamba: :mod:`uniql.models.hybrid`).

All numerics are in the C core (``uniql._C``, one runtime ``uq_hy_*`` for every layer kind); this module validates
configs, arranges weights (by reference: arrays are kept alive here and the C model points into them), and
orchestrates generation and perplexity.

Weight layout inside the runtime (see ``csrc/include/uniql.h``, "linears and the elastic layout"): Q/K heads are
pair-interleaved (rows 2j, 2j+1 of a head form RoPE pair j). Hugging Face checkpoints use rotate-half
(dim i pairs with i + d/2); :meth:`Model.from_hf_tensors` permutes their Q/K rows (and biases) per head by
``[0, d/2, 1, d/2+1, ...]`` unless ``qk_layout="interleaved"`` says the tensors already use the runtime
layout (uniql artifacts, possibly truncated to a stored head dim R < d and an MLP size K < D_I).

int4 weights: any value of ``tensors`` with attributes ``packed`` (uint8 (rows, (cols+1)//2)), ``scales``
(float16 or float32 (rows, ngroups)), ``group`` and ``shape`` (rows, cols) -- e.g.
:class:`uniql.compress.quant.QuantizedTensor` -- is used as int4 (w = (q - 8) * scale). The runtime keeps int4 and
int8 scales in float16 (the artifact's storage; the kernels convert them exactly): float32 scales are rounded to
float16 once, by the C core, when the model is built (:func:`scales_f16`; exact for scales the compressor made,
which it rounds to float16 before storing or using them). For o_proj every head's column segment has its own groups:
scales (rows, n_heads * ceil(R / group)), which is the standard layout whenever R % group == 0.
When the group is a multiple of 8, :class:`Model` repacks each layer linear (and an untied lm_head) once, in C,
into the kernels' R16 layout (``_C.q4_repack``; 16-row blocks x 8-column chunks, uniql.h "UQ_Q4_R16") and
keeps only that copy; the embedding stays row-major (its gather reads rows).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from uniql import _C
from uniql.errors import (DTypeError, FormatError, InvalidArgumentError, RangeError, ShapeError, UniqlError,
                          UnsupportedError)

log = logging.getLogger(__name__)

__all__ = ["Model", "TransformerConfig", "model_config", "SUPPORTED_MODEL_TYPES", "int4_activations",
           "set_int4_activations", "LAYER_MAMBA", "LAYER_ATTENTION", "LAYER_MLP", "KV_DTYPES", "kv_dtype_code"]

INT4_ACTIVATIONS = ("auto", "fp32", "int8")
# KV-cache element types of a model's sequence states: "fp16" (the default: half the cache bytes, which decode streams
# every token; K / V rounded to float16 when written, read back exactly) or "fp32" (the exact cache)
KV_DTYPES = ("fp16", "fp32")
_KV_CODES = {"fp16": _C.KV_F16, "fp32": _C.KV_F32, "float16": _C.KV_F16, "float32": _C.KV_F32}
LAYER_MAMBA, LAYER_ATTENTION, LAYER_MLP = "mamba", "attention", "mlp"  # the layer kinds of the runtime


def set_int4_activations(mode: str) -> str:
    """Sets how int4 linears treat their activations, process-wide (every model, every thread); returns the
    mode now in force ("fp32" or "int8").

    "int8" (W4A8): each token's activations are quantized to int8 per weight group and multiplied with integer
    dot products -- 2-4x faster on CPUs with AVX2 or AVX-512 VNNI, at ~0.3-1% relative error on each linear's
    output (SmolLM2-135M perplexity +1.3% at rate 0). "fp32" (W4A32): exact fp32 activations, the paper's
    setting. "auto" (the default, also ``UNIQL_Q4_ACT``): int8 where the CPU has int8 dot products, else fp32.
    Change it only while no forward pass runs. Compression always runs fp32 (:func:`exact_int4`)."""
    if mode not in INT4_ACTIVATIONS:
        raise InvalidArgumentError(f"int4 activations must be one of {', '.join(INT4_ACTIVATIONS)}, got {mode!r}")
    _C.kernels_set_q4_act(mode)
    return str(_C.kernels_info()["q4_act"])


def kv_dtype_code(kv_dtype: str) -> int:
    """The C code (``_C.KV_F16`` / ``_C.KV_F32``) of a KV-cache dtype name ("fp16" or "fp32"; "float16" / "float32"
    accepted too); :class:`InvalidArgumentError` for anything else."""
    if not isinstance(kv_dtype, str) or kv_dtype not in _KV_CODES:
        raise InvalidArgumentError(f"kv_dtype must be one of {', '.join(map(repr, KV_DTYPES))}, got {kv_dtype!r}")
    return _KV_CODES[kv_dtype]


@contextlib.contextmanager
def int4_activations(mode: str) -> Iterator[str]:
    """``with int4_activations("fp32"): ...`` -- :func:`set_int4_activations` inside the block, the previous mode
    restored after it (also on an exception)."""
    prev = str(_C.kernels_info()["q4_act"])
    try:
        yield set_int4_activations(mode)
    finally:
        _C.kernels_set_q4_act(prev)


_F = TypeVar("_F", bound=Callable[..., Any])


def exact_int4(fn: _F) -> _F:
    """Runs ``fn`` with fp32 activations in int4 linears: what compression computes through quantized layers
    (GPTQ's quantized stream) must not depend on the CPU it runs on."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with int4_activations("fp32"):
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


SUPPORTED_MODEL_TYPES = {"llama": 0, "qwen2": 1}
_ROPE_TYPES = {"default": 0, "llama3": 1}
_LINEARS = (("self_attn", "q_proj", "q"), ("self_attn", "k_proj", "k"), ("self_attn", "v_proj", "v"),
            ("self_attn", "o_proj", "o"), ("mlp", "gate_proj", "gate"), ("mlp", "up_proj", "up"),
            ("mlp", "down_proj", "down"))


def _pos_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise FormatError(f"config {name} must be a positive int, got {v!r}")
    return int(v)


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture of a Llama/Qwen2 decoder. ``head_dim`` is the original d (RoPE, softmax scale)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v (and o for Llama) biases required
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedError(f"unsupported model_type {self.model_type!r} "
                                   f"(supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))})")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"):
            object.__setattr__(self, name, _pos_int(name, getattr(self, name)))
        if self.num_attention_heads % self.num_key_value_heads:
            raise FormatError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise FormatError(f"head_dim {self.head_dim} must be even (RoPE pairs)")
        if self.rope_type not in _ROPE_TYPES:
            raise UnsupportedError(f"unsupported rope type {self.rope_type!r} (supported: default, llama3)")
        if not (self.rms_norm_eps > 0 and self.rope_theta > 0):
            raise FormatError(f"rms_norm_eps and rope_theta must be > 0, got {self.rms_norm_eps}, {self.rope_theta}")
        if self.rope_type == "llama3" and not (
                self.rope_factor > 0 and self.rope_low_freq_factor > 0 and self.rope_high_freq_factor > 0
                and self.rope_high_freq_factor != self.rope_low_freq_factor
                and self.rope_original_max_position_embeddings > 0):
            raise FormatError("llama3 rope scaling needs factor, low_freq_factor != high_freq_factor and "
                             "original_max_position_embeddings, all > 0")
        object.__setattr__(self, "eos_token_ids", tuple(int(e) for e in self.eos_token_ids))

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "TransformerConfig":
        """From a Hugging Face ``config.json`` dict (rope as ``rope_parameters`` or ``rope_theta``/``rope_scaling``).
        Values of the wrong type raise FormatError naming the problem."""
        try:
            return cls._from_hf(d)
        except UniqlError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise FormatError(f"invalid transformer config: {type(e).__name__}: {e}") from None

    @classmethod
    def _from_hf(cls, d: Mapping[str, Any]) -> "TransformerConfig":
        mt = d.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedError(f"unsupported model_type {mt!r} (supported: {', '.join(sorted(SUPPORTED_MODEL_TYPES))})")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedError(f"unsupported hidden_act {act!r} (only silu)")
        if mt == "qwen2" and (d.get("use_sliding_window") or any(t != "full_attention" for t in d.get("layer_types") or [])):
            raise UnsupportedError("qwen2 sliding-window attention is not supported")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if key not in d:
                raise FormatError(f"config is missing {key!r}")
        nh = d["num_attention_heads"]
        nkv = d.get("num_key_value_heads") or nh
        hd = d.get("head_dim")
        if not hd:
            if d["hidden_size"] % nh:
                raise FormatError(f"hidden_size {d['hidden_size']} is not a multiple of num_attention_heads {nh} "
                                 "and no head_dim is given")
            hd = d["hidden_size"] // nh
        rp = dict(d.get("rope_scaling") or {})
        rp.update(d.get("rope_parameters") or {})
        theta = rp.get("rope_theta", d.get("rope_theta", 10000.0))
        rtype = rp.get("rope_type", rp.get("type", "default")) or "default"
        if rp.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)) != 1.0:
            raise UnsupportedError("partial rotary embeddings are not supported")
        eos = d.get("eos_token_id")
        eos_ids = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        qwen = mt == "qwen2"
        kw: dict[str, Any] = {}
        if rtype == "llama3":
            kw = dict(rope_factor=float(rp["factor"]), rope_low_freq_factor=float(rp["low_freq_factor"]),
                      rope_high_freq_factor=float(rp["high_freq_factor"]),
                      rope_original_max_position_embeddings=int(rp["original_max_position_embeddings"]))
        return cls(model_type=mt, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                   intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
                   num_attention_heads=nh, num_key_value_heads=nkv, head_dim=hd,
                   max_position_embeddings=d.get("max_position_embeddings", 2048),
                   rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=float(theta), rope_type=rtype,
                   tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                   attention_bias=True if qwen else bool(d.get("attention_bias", False)),
                   mlp_bias=bool(d.get("mlp_bias", False)), bos_token_id=d.get("bos_token_id"),
                   eos_token_ids=eos_ids, **kw)

    # the layer stack the runtime sees (the names of a HybridConfig): every layer attention with RoPE over the
    # whole head, then a gated-SiLU MLP sub-block
    @property
    def layer_types(self) -> tuple[str, ...]:
        return (LAYER_ATTENTION,) * self.num_hidden_layers

    ffn_after_mixer = True
    mlp_act = "silu_gated"
    ssm_heads = ssm_head_dim = ssm_groups = ssm_state = conv_kernel = 0  # no Mamba layers

    @property
    def num_heads(self) -> int:
        return self.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_key_value_heads

    @property
    def rope_dim(self) -> int:
        return self.head_dim

    def _c_dict(self) -> dict[str, Any]:
        """The C model's config: the one runtime's (uq_hy_config), every layer attention + gated-SiLU MLP with
        RoPE over the whole head."""
        return dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=self.num_hidden_layers,
                    norm_eps=float(self.rms_norm_eps), ssm_heads=0, ssm_head_dim=0, ssm_groups=0, ssm_state=0,
                    conv_kernel=0, chunk_size=0, dt_min=0.0, dt_max=0.0, num_heads=self.num_attention_heads,
                    num_kv_heads=self.num_key_value_heads, head_dim=self.head_dim, rope_dim=self.head_dim,
                    rope_theta=float(self.rope_theta), intermediate_size=self.intermediate_size,
                    mlp_act=_C.HY_ACT_SILU_GATED, rope_type=_ROPE_TYPES[self.rope_type],
                    rope_factor=float(self.rope_factor), rope_low_freq_factor=float(self.rope_low_freq_factor),
                    rope_high_freq_factor=float(self.rope_high_freq_factor),
                    rope_original_max_pos=float(self.rope_original_max_position_embeddings))


@dataclass(frozen=True)
class Q4:
    """int4 weight in the runtime (rows possibly permuted): see the module docstring."""

    packed: np.ndarray
    scales: np.ndarray
    group: int
    shape: tuple[int, int]


@dataclass(frozen=True)
class Q8:
    """int8 weight in the runtime: codes int8 (rows, cols), scales float16 (rows, scale columns), w = q * scale
    (uniql.h UQ_W_Q8; e.g. :class:`uniql.compress.quant.Int8Tensor`)."""

    codes: np.ndarray
    scales: np.ndarray
    group: int
    shape: tuple[int, int]


_R16_COLS = 8  # int4 weights whose group is a multiple of this are repacked to the kernels' R16 layout


def is_q4(v: Any) -> bool:
    return all(hasattr(v, a) for a in ("packed", "scales", "group", "shape"))


def is_q8(v: Any) -> bool:
    return all(hasattr(v, a) for a in ("codes", "scales", "group", "shape"))


def as_q8(name: str, v: Any) -> Q8:
    rows, cols = (int(x) for x in v.shape)
    if not isinstance(v.codes, np.ndarray) or v.codes.dtype != np.int8:
        raise DTypeError(f"{name}.codes must be an int8 numpy array")
    return Q8(np.ascontiguousarray(v.codes), scales_f16(f"{name}.scales", v.scales), int(v.group), (rows, cols))


def as_f32(name: str, a: Any) -> np.ndarray:
    """A float32 C-contiguous array (float16/bfloat16 converted by the C core; float64 refused)."""
    if not isinstance(a, np.ndarray):
        raise DTypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype == np.float32:
        return np.ascontiguousarray(a)
    if a.dtype == np.float16 or a.dtype.name == "bfloat16":
        src = np.ascontiguousarray(a)
        out = np.empty(a.shape, np.float32)
        if a.dtype == np.float16:
            _C.convert(src, out)
        else:
            _C.convert(src.view(np.uint16), out, bf16=True)
        return out
    raise DTypeError(f"{name} has dtype {a.dtype}; expected float32, float16 or bfloat16 (float64 is not accepted)")


def scales_f16(name: str, a: Any) -> np.ndarray:
    """Group scales of an int4 / int8 weight as the runtime keeps them: a float16 C-contiguous array (float16 taken
    as is; float32 / bfloat16 rounded to nearest by the C core). A finite scale beyond float16's range (65504) is
    refused with a :class:`RangeError` naming the tensor, as are NaN / Inf scales."""
    if isinstance(a, np.ndarray) and a.dtype == np.float16:
        out = np.ascontiguousarray(a)
    else:
        src = as_f32(name, a)
        out = np.empty(src.shape, np.float16)
        _C.convert(src, out)
    bad = ~np.isfinite(out)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        v = a[idx] if isinstance(a, np.ndarray) else out[idx]
        raise RangeError(f"{name}: scale {float(v)!r} at {idx} is not a finite float16 (|scale| <= 65504); the "
                         "runtime keeps int4 / int8 scales in float16")
    return out


def _f16(name: str, a: Any) -> np.ndarray:
    """A float16 C-contiguous array (float32/bfloat16 converted by the C core) for fp16 (UQ_W_F16) weights."""
    if isinstance(a, np.ndarray) and a.dtype == np.float16:
        return np.ascontiguousarray(a)
    src = as_f32(name, a)
    out = np.empty(src.shape, np.float16)
    _C.convert(src, out)
    return out


def as_q4(name: str, v: Any) -> Q4:
    if getattr(v, "zeros", None) is not None:
        raise UnsupportedError(f"{name}: asymmetric int4 (per-group zero points) is not supported by the runtime "
                               "kernels (symmetric int4 only); dequantize it (uniql.compress.quant.dequantize)")
    rows, cols = (int(x) for x in v.shape)
    packed, scales = v.packed, v.scales
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8:
        raise DTypeError(f"{name}.packed must be a uint8 numpy array")
    return Q4(np.ascontiguousarray(packed), scales_f16(f"{name}.scales", scales), int(v.group), (rows, cols))


def _interleave_rows(n_heads: int, d: int) -> np.ndarray:
    """Row index map rotate-half -> pair-interleaved, per head: [0, d/2, 1, d/2+1, ...]."""
    per = np.stack([np.arange(d // 2), np.arange(d // 2) + d // 2], axis=1).reshape(-1)
    return (np.arange(n_heads)[:, None] * d + per[None, :]).reshape(-1)


def permute_rows(w: np.ndarray | Q4 | Q8, idx: np.ndarray) -> np.ndarray | Q4 | Q8:
    if isinstance(w, Q4):
        return Q4(np.ascontiguousarray(w.packed[idx]), np.ascontiguousarray(w.scales[idx]), w.group, w.shape)
    if isinstance(w, Q8):
        return Q8(np.ascontiguousarray(w.codes[idx]), np.ascontiguousarray(w.scales[idx]), w.group, w.shape)
    return np.ascontiguousarray(w[idx])


def ids_array(ids: Any, what: str = "ids") -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1:
        raise InvalidArgumentError(f"{what} must be a 1-D sequence of token ids, got shape {a.shape}")
    if a.size == 0:
        raise InvalidArgumentError(f"{what} is empty: at least one token is needed")
    if not np.issubdtype(a.dtype, np.integer):
        raise DTypeError(f"{what} must be integer token ids, got dtype {a.dtype}")
    if a.min() < np.iinfo(np.int32).min or a.max() > np.iinfo(np.int32).max:
        bad = int(a[(a < np.iinfo(np.int32).min) | (a > np.iinfo(np.int32).max)][0])
        raise RangeError(f"{what}: token id {bad} outside the int32 range")
    return np.ascontiguousarray(a, dtype=np.int32)


def final_mix_name(final_norm: str) -> str:
    """Name of the final mix tensor next to final norm ``final_norm`` (``model.norm.weight`` -> ``model.norm.mix``):
    the hidden x hidden matrix between the final norm and the head of a rotated model that keeps its embedding tied
    (:mod:`uniql.compress.rotate`)."""
    return final_norm[: -len(".weight")] + ".mix" if final_norm.endswith(".weight") else final_norm + ".mix"


def linear_spec(w: Any, bias: np.ndarray | None, keep: list, segs: tuple[int, int] | None = None) -> tuple:
    """The C runtime's spec of a linear (weight: float32/float16 array, :class:`Q4` or :class:`Q8`; bias or None); the arrays
    it points into are appended to ``keep``. An int4 weight whose group is a multiple of 8 and whose call segments
    ``segs`` = (nseg_out, nseg_in) are given is repacked once, in C, into the kernels' R16 layout (only that copy
    is kept); ``segs=None`` keeps the row-major int4 format (the embedding gather and row views need it)."""
    if bias is not None:
        keep.append(bias)
    if isinstance(w, Q4):
        if segs is not None and w.group % _R16_COLS == 0:
            try:
                packed, scales = _C.q4_repack((w.packed, w.scales, w.group, w.shape[1], None), *segs)
            except UniqlError:  # an invalid weight: the model's own checks name it
                packed = None
            if packed is not None:
                keep.extend([packed, scales])
                return (packed, scales, w.group, w.shape[1], bias, (w.shape[0], *segs))
        keep.extend([w.packed, w.scales])
        return (w.packed, w.scales, w.group, w.shape[1], bias)
    if isinstance(w, Q8):
        keep.extend([w.codes, w.scales])
        return (w.codes, w.scales, w.group, w.shape[1], bias)
    keep.append(w)
    return (w, None, 0, int(w.shape[1]) if w.ndim == 2 else 0, bias)


LAYER_KINDS = (LAYER_MAMBA, LAYER_ATTENTION, LAYER_MLP)
KEEP_NAMES = ("mlp", "attn", "ssm_head", "ssm_state")  # the elastic components of a layer (uq_hy_set_keep order)
_KEEP_LABELS = {"mlp": "MLP", "attn": "attention", "ssm_head": "SSM head", "ssm_state": "SSM state"}
_KIND = {LAYER_MAMBA: _C.HY_MAMBA, LAYER_ATTENTION: _C.HY_ATTN, LAYER_MLP: _C.HY_MLP}
_LINEAR_KEYS = ("in_proj", "out_proj", "q", "k", "v", "o", "gate", "up", "down")


def model_config(config: Mapping[str, Any] | Any) -> Any:
    """A model's config from a Hugging Face ``config.json`` dict (:class:`TransformerConfig` for Llama / Qwen2, a
    :class:`uniql.models.hybrid.HybridConfig` for Mamba2 / Nemotron-H / Bamba), or ``config`` itself when it is
    already one of those."""
    if isinstance(config, Mapping):
        if config.get("model_type") in SUPPORTED_MODEL_TYPES:
            return TransformerConfig.from_hf(config)
        from uniql.models.hybrid import HybridConfig

        return HybridConfig.from_hf(config)
    return config


class Model:
    """A language model in the C runtime (one runtime for every architecture: ``uq_hy_*``) with its state (KV
    caches, SSM / conv states): a list of layers, each a mixer (attention with full, partial or no RoPE; Mamba2) or
    an MLP, a mixer followed by an MLP sub-block where the architecture has one. Llama / Qwen2 are the stacks whose
    every layer is attention + gated-SiLU MLP; Mamba2, Nemotron-H and Bamba mix Mamba2, attention and MLP layers.

    Sequences, scoring and generation; per-layer keep sizes of the elastic components (``mlp`` channels,
    ``attn`` head dims, ``ssm_head`` channels, ``ssm_state`` dims), switchable between tokens; and the pieces the
    compression pipeline runs (embed, one layer with captures, head). Build one with :meth:`from_hf_tensors`
    (Hugging Face tensor names) or load it with ``uniql.load``; artifacts give its elastic subclass
    (:class:`uniql.formats.artifact.ElasticModel`).

    Not thread-safe: one sequence at a time (the GIL is released inside C calls).
    """

    _c_forward = staticmethod(_C.hy_forward)
    _c_state_info = staticmethod(_C.hy_state_info)
    _c_state_reset = staticmethod(_C.hy_state_reset)

    def __init__(self, config: Any, embed: Any, lm_head: Any, final_norm: np.ndarray, layers: list[dict[str, Any]],
                 tokenizer: Any = None, max_seq: int | None = None, max_chunk: int = 256,
                 final_mix: np.ndarray | None = None, kv_dtype: str = "fp16") -> None:
        """Low-level constructor: prefer :meth:`from_hf_tensors`. ``config``: a :class:`TransformerConfig` or a
        ``HybridConfig``; ``embed`` / ``lm_head`` / layer linears: float32 (float16) arrays, :class:`Q4` or
        :class:`Q8`. Layer dicts in the runtime layout: ``norm``; Mamba: ``in_proj``, ``out_proj`` ((weight,
        bias-or-None) pairs), ``conv_w`` (C, K), ``conv_b``, ``dt_bias``, ``A_log``, ``D``, ``gnorm``; attention:
        ``q``, ``k``, ``v``, ``o`` pairs, ``freq_map`` (int32 (n_kv, R_rot/2) or None), ``rot_rows`` (int or None);
        MLP: ``gate`` (gated SiLU), ``up``, ``down`` pairs and, after a mixer, ``ffn_norm``. ``final_mix``: float32
        (hidden, hidden) F or None (:mod:`uniql.compress.rotate`); the head reads RMSNorm(x) * final_norm F^T.
        ``kv_dtype``: the KV cache of the model's sequences, "fp16" (default) or "fp32" (see :attr:`kv_dtype`)."""
        kv_code = kv_dtype_code(kv_dtype)
        self.config = config
        self.tokenizer = tokenizer
        keep: list[np.ndarray] = []

        # int4 linears in the kernels' R16 layout (so W4A8 where the CPU has int8 dot products), built for the
        # segments the runtime calls them with: a Mamba in_proj as its z / x / B / C rows (R16) and dt rows
        # (row-major: H rows, no padding to 16), see mamba_in_parts; row-major where the runtime reads row views
        # (q under partial RoPE: its rotary and pass rows) and for the embedding gather
        partial = 0 < config.rope_dim < config.head_dim
        segs = {"q": None if partial else (config.num_heads, 1), "k": (config.num_kv_heads, 1),
                "v": (config.num_kv_heads, 1), "o": (1, config.num_heads), "out_proj": (1, config.ssm_heads),
                "gate": (1, 1), "up": (1, 1), "down": (1, 1), "in_proj": None}

        def spec(w: Any, bias: np.ndarray | None, key: str | None = None) -> tuple:
            return linear_spec(w, bias, keep, segs.get(key) if key else None)

        if len(layers) != config.num_hidden_layers:
            raise InvalidArgumentError(f"{len(layers)} layers given, the config has {config.num_hidden_layers}")
        c_layers = []
        for t, lay in zip(config.layer_types, layers):
            d: dict[str, Any] = {"kind": _KIND[t]}
            for key, v in lay.items():
                parts = mamba_in_parts(config, v[0], v[1], lay) if key == "in_proj" else None
                if parts is not None:
                    d["in_parts"] = [linear_spec(w, b, keep, sg) for w, b, sg in parts]
                elif isinstance(v, (list, tuple)) and len(v) == 2 and key in _LINEAR_KEYS:
                    d[key] = spec(*v, key)
                elif isinstance(v, np.ndarray):
                    keep.append(v)
                    d[key] = v
                else:
                    d[key] = v
            c_layers.append(d)
        emb_spec = spec(embed, None)  # the embedding gather reads rows: row-major
        head_spec = emb_spec if lm_head is embed else spec(lm_head, None, "up")
        # a tied int4 embedding is also the lm_head, row-major: batched decoding may want an R16 copy (uniql.models.batch)
        self._tied_q4 = embed if lm_head is embed and isinstance(embed, Q4) else None
        keep.append(final_norm)
        if final_mix is not None:
            keep.append(final_mix)
        self._arrays = keep
        self._specs = (emb_spec, head_spec, final_norm, c_layers)  # what the C model points at (uniql.models.elastic_memory)
        # (hidden, hidden) or None: between the final norm and the head (uniql.compress.rotate)
        self._final_mix = final_mix
        self._cm = _C.hy_model_new(config._c_dict(), emb_spec, head_spec, final_norm, c_layers, keep, final_mix)
        if max_seq is None:
            max_seq = min(self.config.max_position_embeddings, 2048)
        self.max_seq = int(max_seq)
        self._max_chunk = int(max_chunk)
        self._kv_code = kv_code
        self._state = _C.hy_state_new(self._cm, self.max_seq, self._max_chunk, kv_code)
        self._scratch = None  # state for embed/layer_forward/head, created on demand
        self._scratch_seq = 0
        self._options = 0

    # ------------------------------------------------------------------------------ loading ----
    @classmethod
    def from_hf_tensors(cls, config: Mapping[str, Any] | Any, tensors: Mapping[str, Any], tokenizer: Any = None, *,
                        freq_maps: Sequence[np.ndarray | None] | None = None,
                        rot_rows: Sequence[int | None] | None = None, qk_layout: str = "rotate_half",
                        max_seq: int | None = None, max_chunk: int = 256, weight_dtype: str = "float32",
                        kv_dtype: str = "fp16") -> "Model":
        """Builds a model from Hugging Face tensor names (Llama / Qwen2: ``model.embed_tokens.weight``,
        ``model.layers.{i}.self_attn.q_proj.weight`` / ``.bias``, ..., ``model.norm.weight``; Mamba2:
        ``backbone.*``; Nemotron-H: ``model.*`` or ``backbone.*``; Bamba: ``model.*``; ``lm_head.weight`` optional
        with tied embeddings). ``config``: the ``config.json`` dict or a config object (:func:`model_config`).
        Values: float32/float16/bfloat16 arrays (converted once), int4 objects (``packed``, ``scales``, ``group``,
        ``shape``; see the module docstring) or, for Llama / Qwen2, int8 objects (``codes``, ``scales``, ``group``,
        ``shape``). Truncated tensors (stored sizes below the config's) are accepted with
        ``qk_layout="interleaved"`` (the runtime's layout, as artifacts store it); "rotate_half" (HF) permutes the
        Q/K rows at load. ``freq_maps``/``rot_rows``: per layer (None for non-attention layers): int32 (n_kv,
        R_rot/2) original frequency index of each stored rotary pair, and the stored rotary rows per head.
        ``max_seq``: KV cache / sequence capacity (default min(max_position_embeddings, 2048)).
        ``weight_dtype="float16"`` (Llama / Qwen2) keeps the float weight matrices in float16 (the kernels convert
        them exactly on the fly: the honest FP16 baseline); norms and biases stay float32. ``kv_dtype``: "fp16"
        (default) or "fp32" KV cache (:attr:`kv_dtype`)."""
        kv_dtype_code(kv_dtype)
        if weight_dtype not in ("float32", "float16"):
            raise InvalidArgumentError(f"weight_dtype must be 'float32' or 'float16', got {weight_dtype!r}")
        if qk_layout not in ("rotate_half", "interleaved"):
            raise InvalidArgumentError(f"qk_layout must be 'rotate_half' or 'interleaved', got {qk_layout!r}")
        cfg = model_config(config)
        L = cfg.num_hidden_layers
        for what, seq in (("freq_maps", freq_maps), ("rot_rows", rot_rows)):
            if seq is not None and len(seq) != L:
                raise InvalidArgumentError(f"{what} has {len(seq)} entries, the model has {L} layers")
        if isinstance(cfg, TransformerConfig):
            read = transformer_layers
        else:
            from uniql.models.hybrid import hybrid_layers as read

            if weight_dtype != "float32":
                raise UnsupportedError(f"weight_dtype {weight_dtype!r}: only Llama / Qwen2 keep float16 weights")
        embed, head, (final_norm, mix), layers = read(cfg, TensorReader(tensors, weight_dtype), freq_maps=freq_maps,
                                                      rot_rows=rot_rows, qk_layout=qk_layout)
        return cls(cfg, embed, head, final_norm, layers, tokenizer=tokenizer, max_seq=max_seq, max_chunk=max_chunk,
                   final_mix=mix, kv_dtype=kv_dtype)

    # ------------------------------------------------------------------------------ running ----
    @property
    def kv_dtype(self) -> str:
        """The element type of the sequence states' KV caches: "fp16" (K / V rounded to float16 when written and
        read back exactly: attention computes what it computes over a float32 cache holding the rounded values, at
        half the bytes decode streams per token) or "fp32". The pipeline pieces (:meth:`layer_forward`,
        :meth:`head`) always run a float32 cache, so compression does not depend on it."""
        return "fp16" if self._kv_code == _C.KV_F16 else "fp32"

    def kv_cache_bytes(self) -> int:
        """Bytes of the sequence state's KV caches (all attention layers, ``max_seq`` positions; part of
        :meth:`memory_bytes`)."""
        return int(self._c_state_info(self._state)[3])

    @property
    def position(self) -> int:
        """Number of tokens of the current sequence (in the KV cache / folded into the SSM state)."""
        return self._c_state_info(self._state)[0]

    def reset(self) -> None:
        """Starts a new sequence (empties the KV caches, zeroes SSM/conv states)."""
        self._c_state_reset(self._state)

    def forward(self, ids: Any, last_only: bool = False, *, n_logits: int | None = None) -> np.ndarray:
        """Continues the current sequence with ``ids``; float32 logits (T, vocab), or (1, vocab) if last_only, or
        those of the last ``n_logits`` tokens (n_logits, vocab)."""
        a = ids_array(ids)
        n = (1 if last_only else a.size) if n_logits is None else int(n_logits)
        if not 1 <= n <= a.size:
            raise InvalidArgumentError(f"n_logits {n} outside [1, {a.size}] (the number of ids)")
        out = np.empty((n, self.config.vocab_size), np.float32)
        self._c_forward(self._cm, self._state, a, out)
        return out

    def logits(self, ids: Any) -> np.ndarray:
        """float32 logits (T, vocab) of a fresh sequence."""
        a = ids_array(ids)
        self.reset()
        return self.forward(a)

    def nll(self, ids: Any) -> np.ndarray:
        """float64 (T-1,): -log p(ids[t] | ids[:t]) for t = 1..T-1 of a fresh sequence."""
        a = ids_array(ids)
        if a.size < 2:
            raise InvalidArgumentError("nll needs at least 2 tokens")
        lg = self.logits(a)
        out = np.empty(a.size - 1, np.float64)
        _C.nll(lg[:-1], a[1:], out)
        return out

    def _encode(self, text_or_ids: Any, what: str) -> tuple[np.ndarray, bool]:
        if isinstance(text_or_ids, str):
            if self.tokenizer is None:
                raise InvalidArgumentError(f"{what} is a str but the model has no tokenizer: pass token ids")
            if not text_or_ids:
                raise InvalidArgumentError(f"{what} is empty")
            enc = self.tokenizer.encode(text_or_ids)
            return ids_array(getattr(enc, "ids", enc), what), True
        return ids_array(text_or_ids, what), False

    def perplexity(self, text_or_ids: Any, window: int = 512, stride: int | None = None) -> float:
        """Sliding-window perplexity (as in Hugging Face's perplexity guide): windows of ``window`` tokens
        start every ``stride`` (default: window) tokens and each scores only tokens not scored before;
        the first token of the text is never scored. NLL computed in C (float64)."""
        ids, _ = self._encode(text_or_ids, "text")
        stride = window if stride is None else int(stride)
        if window < 2 or window > self.max_seq:
            raise InvalidArgumentError(f"window {window} must be in [2, max_seq = {self.max_seq}]")
        if not 1 <= stride <= window:
            raise InvalidArgumentError(f"stride {stride} must be in [1, window = {window}]")
        n = ids.size
        if n < 2:
            raise InvalidArgumentError("perplexity needs at least 2 tokens")
        total, count, prev_end = 0.0, 0, 0
        for begin in range(0, n, stride):
            end = min(begin + window, n)
            first = max(prev_end, begin + 1)  # first position scored in this window
            if end > first:
                self.reset()
                lg = np.empty((end - first + 1, self.config.vocab_size), np.float32)
                self._c_forward(self._cm, self._state, ids[begin:end], lg)
                nll = np.empty(end - first, np.float64)
                _C.nll(lg[:-1], ids[first:end], nll)
                total += float(nll.sum())
                count += end - first
            prev_end = end
            if end == n:
                break
        return math.exp(total / count)

    def generate(self, prompt: Any, max_new_tokens: int = 32, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0) -> str | list[int]:
        """Generates up to ``max_new_tokens`` after ``prompt`` (a fresh sequence), stopping at an
        eos_token_id of the config or when the KV cache is full. Greedy when temperature <= 0, else
        temperature + top-p sampling with a splitmix64 RNG seeded by ``seed`` (deterministic). Returns the
        generated continuation only: a str when the prompt is a str (decoded by the tokenizer), else a list
        of ids."""
        ids, is_text = self._encode(prompt, "prompt")
        if max_new_tokens < 0:
            raise InvalidArgumentError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if not 0.0 < top_p <= 1.0:
            raise InvalidArgumentError(f"top_p must be in (0, 1], got {top_p}")
        if ids.size > self.max_seq:
            raise RangeError(f"prompt has {ids.size} tokens, more than max_seq {self.max_seq}")
        rng = np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64)
        eos = set(self.config.eos_token_ids)
        out: list[int] = []
        self.reset()
        logits = self.forward(ids, last_only=True)
        for _ in range(max_new_tokens):
            tok = _C.sample(logits[0], float(temperature), float(top_p), rng)
            out.append(tok)
            if tok in eos or self.position >= self.max_seq:
                break
            logits = self.forward(np.array([tok], np.int32), last_only=True)
        if is_text:
            return self.tokenizer.decode(out)
        return out

    def truncate(self, position: int) -> None:
        """Keeps the first ``position`` tokens of the current sequence (0 <= position <= :attr:`position`); the
        next :meth:`forward` continues from there. Scores several continuations of one prefilled prefix. Only
        models without Mamba layers can (:attr:`can_truncate`, the capability uniql.eval tests): a Mamba state
        folds every token and cannot go back."""
        if not self.can_truncate:
            raise UnsupportedError("truncate: a model with Mamba layers cannot go back in a sequence (its SSM state "
                                   "folds every token); re-run the prefix instead")
        _C.hy_state_truncate(self._state, int(position))

    @property
    def can_truncate(self) -> bool:
        """Whether :meth:`truncate` works: no layer holds a state that folds tokens (Mamba)."""
        return LAYER_MAMBA not in self.layer_types

    # --------------------------------------------------------------------------- keep sizes ----
    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def layer_types(self) -> tuple[str, ...]:
        """Each layer's kind: "attention", "mamba" or "mlp" (an attention or Mamba layer may end with an MLP
        sub-block: every Llama / Qwen2 / Bamba layer does)."""
        return self.config.layer_types

    def keep(self, layer: int) -> dict[str, int]:
        """Current keep sizes of a layer's components ({mlp, attn, ssm_head, ssm_state}; absent ones omitted)."""
        k, s, _, _ = _C.hy_get_keep(self._cm, int(layer))
        return {n: v for n, v, sv in zip(KEEP_NAMES, k, s) if sv}

    def stored(self, layer: int) -> dict[str, int]:
        """Stored (loaded) sizes of a layer's components: the largest keep sizes."""
        _, s, _, _ = _C.hy_get_keep(self._cm, int(layer))
        return {n: v for n, v in zip(KEEP_NAMES, s) if v}

    def set_keep(self, layer: int, mlp: int | None = None, attn: int | None = None, ssm_head: int | None = None,
                 ssm_state: int | None = None) -> None:
        """Sets a layer's keep sizes (None = unchanged): MLP channels (1..K), attention head dims (2..R, whole RoPE
        pairs), SSM head channels, SSM state dims; takes effect at the next token (the KV cache stays valid).
        Naming a component the layer does not have is a RangeError."""
        def c(v: int | None) -> int:
            return -1 if v is None else int(v)
        _C.hy_set_keep(self._cm, int(layer), c(mlp), c(attn), c(ssm_head), c(ssm_state))

    def set_keep_all(self, mlp: int | Sequence[int | None] | None = None, attn: int | Sequence[int | None] | None = None,
                     ssm_head: int | Sequence[int | None] | None = None,
                     ssm_state: int | Sequence[int | None] | None = None) -> None:
        """Sets keep sizes of every layer: an int applies to every layer that has that component, a sequence
        gives one value (or None) per layer. Everything is validated before anything changes."""
        vals = {"mlp": mlp, "attn": attn, "ssm_head": ssm_head, "ssm_state": ssm_state}
        per: dict[str, list] = {}
        for name, v in vals.items():
            if v is None or isinstance(v, (int, np.integer)):
                per[name] = [None if v is None or name not in self.stored(i) else int(v) for i in range(self.num_layers)]
            else:
                v = list(v)
                if len(v) != self.num_layers:
                    raise InvalidArgumentError(f"{name} has {len(v)} values, the model has {self.num_layers} layers")
                per[name] = v
        for i in range(self.num_layers):
            st = self.stored(i)
            for name in KEEP_NAMES:
                v = per[name][i]
                if v is None:
                    continue
                if name not in st:
                    raise RangeError(f"set_keep_all: layer {i} ({self.layer_types[i]}) has no {name} component")
                if not 1 <= v <= st[name]:
                    raise RangeError(f"set_keep_all: layer {i} {_KEEP_LABELS[name]} keep {v} outside [1, {st[name]}]")
        saved = [self.keep(i) for i in range(self.num_layers)]
        try:
            for i in range(self.num_layers):
                self.set_keep(i, **{n: per[n][i] for n in KEEP_NAMES})
        except Exception:
            for i, k in enumerate(saved):
                self.set_keep(i, **k)
            raise

    # ------------------------------------------------------------------ compression pipeline ----
    def _scratch_state(self, T: int) -> Any:
        # a float32 KV cache whatever kv_dtype: layer_forward feeds the compression pipeline, which stays exact
        if self._scratch is None or self._scratch_seq < T:
            self._scratch_seq = max(int(T), 1)
            self._scratch = _C.hy_state_new(self._cm, self._scratch_seq, self._max_chunk)
        return self._scratch

    def embed(self, ids: Any) -> np.ndarray:
        """float32 (T, hidden) embedding rows (int4 dequantized)."""
        a = ids_array(ids)
        X = np.empty((a.size, self.config.hidden_size), np.float32)
        _C.hy_embed(self._cm, a, X)
        return X

    def head(self, X: np.ndarray) -> np.ndarray:
        """float32 logits (T, vocab) = lm_head(final RMSNorm(X))."""
        X = as_f32("X", X)
        out = np.empty((X.shape[0], self.config.vocab_size), np.float32)
        _C.hy_head(self._cm, self._scratch_state(1), X, out)
        return out

    def capture_widths(self, layer: int) -> dict[str, int]:
        """Widths of the captures :meth:`layer_forward` offers for `layer` at its current keeps (see
        ``uq_hy_capture`` in uniql.h); only the ones that exist for the layer's kind. ``attn_in`` is an attention
        layer's ``mixer_in``; ``k`` holds the kept rows of every K head, or all stored rows under partial RoPE
        (whose kept rows are not a prefix)."""
        c = self.config
        keep, stored, kind, ffn = _C.hy_get_keep(self._cm, int(layer))
        kept = bool(self._options & _C.HY_OPT_KEPT_STATE)
        Pc, Nc = (keep[2], keep[3]) if kept else (stored[2], stored[3])
        w = {"mixer_in": c.hidden_size}
        if kind == _C.HY_MAMBA:
            w.update(ssm_x=c.ssm_heads * Pc, ssm_B=c.ssm_groups * Nc, ssm_C=c.ssm_groups * Nc, ssm_dt=c.ssm_heads,
                     ssm_out=c.ssm_heads * keep[2])
        elif kind == _C.HY_ATTN:
            partial = 0 < c.rope_dim < c.head_dim
            w.update(attn_in=c.hidden_size, q=c.num_heads * keep[1],
                     k=c.num_kv_heads * (stored[1] if partial else keep[1]), attn_out=c.num_heads * keep[1])
        if kind == _C.HY_MLP or ffn:
            w.update(mlp_in=c.hidden_size, mlp_z=keep[0])
        return w

    def layer_forward(self, layer: int, X: np.ndarray, capture: Sequence[str] = ()) -> tuple[np.ndarray, dict]:
        """One layer over a causal sequence X (T, hidden) from a zero state (positions 0..T-1) at the layer's
        current keeps. ``capture``: names among :meth:`capture_widths` (mixer_in; Mamba: ssm_x, ssm_B, ssm_C,
        ssm_dt = Delta, ssm_out; attention: attn_in (= mixer_in), q, k (after RoPE), attn_out; MLP: mlp_in,
        mlp_z). Returns (Y, {name: (T, width) float32}). Does not touch the generation state."""
        X = as_f32("X", X)
        if X.ndim != 2:
            raise ShapeError(f"X must be 2-D (T, hidden), got shape {X.shape}")
        T = X.shape[0]
        widths = self.capture_widths(layer)
        caps = {}
        for name in capture:
            if name not in widths:
                raise InvalidArgumentError(f"layer {layer} ({self.layer_types[layer]}) has no capture {name!r} "
                                           f"(choose from {', '.join(widths)})")
            caps[name] = np.empty((T, widths[name]), np.float32)
        c_caps = {("mixer_in" if n == "attn_in" else n): a for n, a in caps.items()}
        k_out = caps.get("k")
        nkv, R = self.config.num_kv_heads, self.stored(layer).get("attn", 0)
        if k_out is not None and k_out.shape[1] != nkv * R:  # the C capture holds all R stored rows of a head
            c_caps["k"] = np.empty((T, nkv * R), np.float32)
        Y = np.empty_like(X)
        _C.hy_layer_forward(self._cm, self._scratch_state(T), int(layer), X, Y, **c_caps)
        if k_out is not None and c_caps["k"] is not k_out:
            r = k_out.shape[1] // nkv
            k_out[:] = c_caps["k"].reshape(T, nkv, R)[:, :, :r].reshape(T, -1)
        if "attn_in" in caps and "mixer_in" in caps:
            caps["attn_in"][:] = caps["mixer_in"]
        return Y, caps

    def set_options(self, sequential_scan: bool = False, kept_state: bool = False, compact: bool = True) -> None:
        """Execution options. ``sequential_scan``: prefill Mamba layers with the recurrence instead of the chunked
        scan (reference path). ``kept_state``: compute x/B/C, their conv and the SSM state only for the kept
        channels (faster at reduced keeps; state channels outside the keep go stale, so raise keeps only after
        :meth:`reset`). ``compact``: below the stored keep, an int4 o_proj / Mamba out_proj runs on a compact copy
        of its kept columns, made when the keep changes (:meth:`compact_bytes`; same logits, contiguous reads);
        False frees the copies and reads the stored weights in place."""
        opts = ((_C.HY_OPT_SEQUENTIAL_SCAN if sequential_scan else 0) | (_C.HY_OPT_KEPT_STATE if kept_state else 0)
                | (0 if compact else _C.HY_OPT_NO_COMPACT))
        _C.hy_set_options(self._cm, opts)
        self._options = opts

    # ---------------------------------------------------------------------------- accounting ----
    def weight_bytes(self) -> int:
        """Bytes of the weight arrays the model references (each array counted once; no KV cache)."""
        seen, total = set(), 0
        for a in self._arrays:
            if id(a) not in seen:
                seen.add(id(a))
                total += a.nbytes
        return total

    def compact_bytes(self) -> int:
        """Bytes of the compact copies of the output projections the current keeps use (see :meth:`set_options`):
        at most the dropped-chunk share of each int4 o_proj / out_proj, 0 at the stored keeps."""
        return int(_C.hy_compact_bytes(self._cm))

    def memory_bytes(self) -> int:
        """Bytes of the weights referenced by the model plus its state (KV caches, SSM/conv states, scratch; the
        scratch state of layer_forward included once it exists) and the compact output-projection copies."""
        total = self.weight_bytes() + self._c_state_info(self._state)[1] + self.compact_bytes()
        if self._scratch is not None:
            total += _C.hy_state_info(self._scratch)[1]
        return total


class TensorReader:
    """Hugging Face tensors by name, for the per-family readers of :meth:`Model.from_hf_tensors`: values arrive as
    float32 (float16 with ``weight_dtype="float16"`` for the matrices that ask), :class:`Q4` or :class:`Q8`; the
    names read are recorded so that :meth:`check_all_read` can refuse the rest."""

    def __init__(self, tensors: Mapping[str, Any], weight_dtype: str = "float32") -> None:
        self.tensors, self.weight_dtype = tensors, weight_dtype
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def get(self, name: str, required: bool = True, mat: bool = False) -> Any:
        """Tensor `name` (None when absent and not required); ``mat``: a weight matrix (float16 when asked)."""
        if name not in self.tensors:
            if required:
                raise FormatError(f"missing tensor {name!r}")
            return None
        self.used.add(name)
        v = self.tensors[name]
        if is_q4(v):
            return as_q4(name, v)
        if is_q8(v):
            return as_q8(name, v)
        return _f16(name, v) if mat and self.weight_dtype == "float16" else as_f32(name, v)

    def vec(self, name: str, required: bool = True) -> np.ndarray | None:
        """A float tensor (norms, biases, SSM parameters): int4 / int8 refused."""
        v = self.get(name, required)
        if isinstance(v, (Q4, Q8)):
            raise DTypeError(f"{name} must be a float array, not int4 / int8")
        return v

    def linear(self, prefix: str, bias: bool) -> list:
        """[weight, bias-or-None] of the linear `prefix` (``.weight``, ``.bias``; the bias required when `bias`)."""
        w = self.get(prefix + ".weight", mat=True)
        return [w, self.vec(prefix + ".bias", required=bias)]

    def first_present(self, cands: tuple[str, ...] | str) -> str:
        cands = (cands,) if isinstance(cands, str) else cands
        for n in cands:
            if n in self.tensors:
                return n
        raise FormatError(f"missing tensor {cands[0]!r}")

    def final(self, name: str, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(final norm ``name``, its final mix (n, n) or None when absent): the mix of a rotated model that keeps its
        embedding tied (:mod:`uniql.compress.rotate`) is ``<final norm>.mix``; float16 (what quantized artifacts
        store) stays float16 in memory (the C core runs it as an fp16 linear: the same results as its float32
        copy), anything else becomes float32."""
        norm = self.vec(name)
        mix_name = final_mix_name(name)
        if mix_name not in self.tensors:
            return norm, None
        self.used.add(mix_name)
        F = self.tensors[mix_name]
        if is_q4(F) or is_q8(F) or not isinstance(F, np.ndarray) or not np.issubdtype(F.dtype, np.floating):
            raise DTypeError(f"{mix_name} must be a float array")
        if F.shape != (n, n):
            raise ShapeError(f"{mix_name} has shape {F.shape}, expected {(n, n)}")
        return norm, np.ascontiguousarray(F, dtype=np.float16 if F.dtype == np.float16 else np.float32)

    def head(self, embed: Any, tied: bool) -> Any:
        """The lm_head: the embedding when tied (an ``lm_head.weight``, if present, is the same tensor)."""
        if tied:
            self.used.add("lm_head.weight")
            return embed
        return self.get("lm_head.weight", mat=True)

    def check_all_read(self) -> None:
        extra = sorted(k for k in self.tensors if k not in self.used and not k.endswith("rotary_emb.inv_freq"))
        if extra:
            raise FormatError(f"unexpected tensors: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")


def freq_map_of(freq_maps: Sequence[np.ndarray | None] | None, i: int) -> np.ndarray | None:
    """Layer i's frequency map as a C-contiguous int32 array (or None)."""
    fm = None if freq_maps is None else freq_maps[i]
    if fm is None:
        return None
    fm = np.ascontiguousarray(fm)
    if not np.issubdtype(fm.dtype, np.integer):
        raise DTypeError(f"freq_maps[{i}] must be integer, got {fm.dtype}")
    return fm.astype(np.int32, copy=False)


def transformer_layers(cfg: TransformerConfig, r: TensorReader, *, freq_maps: Sequence[np.ndarray | None] | None,
                       rot_rows: Sequence[int | None] | None, qk_layout: str) -> tuple[Any, Any, tuple, list]:
    """Llama / Qwen2 tensors (HF names) -> (embedding, lm_head, (final norm, final mix or None), runtime layer
    dicts): every layer attention (Q/K rows permuted rotate-half -> pair-interleaved unless
    ``qk_layout="interleaved"``) followed by a gated-SiLU MLP."""
    nh, nkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        lay: dict[str, Any] = {"norm": r.vec(p + "input_layernorm.weight")}
        for mod, proj, short in _LINEARS:
            need_bias = (cfg.attention_bias and mod == "self_attn"
                         and (proj != "o_proj" or cfg.model_type == "llama")) or (cfg.mlp_bias and mod == "mlp")
            lay[short] = r.linear(f"{p}{mod}.{proj}", need_bias)
        q_rows = lay["q"][0].shape[0]
        if qk_layout == "rotate_half":
            if q_rows != nh * d:
                raise ShapeError(f"layer {i} q_proj has {q_rows} rows, expected num_heads x head_dim = {nh * d} "
                                 "(truncated heads need qk_layout='interleaved')")
            for short, heads in (("q", nh), ("k", nkv)):
                idx = _interleave_rows(heads, d)
                w, b = lay[short]
                if w.shape[0] != heads * d:
                    raise ShapeError(f"layer {i} {short}_proj has {w.shape[0]} rows, expected {heads * d}")
                lay[short] = [permute_rows(w, idx), None if b is None else np.ascontiguousarray(b[idx])]
        lay["freq_map"] = freq_map_of(freq_maps, i)
        lay["rot_rows"] = None if rot_rows is None else rot_rows[i]
        lay["ffn_norm"] = r.vec(p + "post_attention_layernorm.weight")
        layers.append(lay)
    embed = r.get("model.embed_tokens.weight", mat=True)
    final = r.final("model.norm.weight", cfg.hidden_size)
    head = r.head(embed, cfg.tie_word_embeddings)
    r.check_all_read()
    return embed, head, final, layers


def mamba_in_parts(config: Any, w: Any, bias: np.ndarray | None,
                   lay: Mapping[str, Any]) -> list[tuple[Any, np.ndarray | None, tuple[int, int] | None]] | None:
    """An int4 Mamba in_proj (rows [z (H*Ps) | x (H*Ps) | B (G*Ns) | C (G*Ns) | dt (H)], Ps from out_proj) as five
    row slices with the call segments of each (H, H, G, G heads / groups; dt row-major), so that the runtime runs
    them with the R16 kernels; None (the fused row-major weight) for float weights, a group that R16 cannot take,
    or shapes that do not split (the runtime's checks then name the problem)."""
    if not isinstance(w, Q4) or w.group % 8:
        return None
    H, G = config.ssm_heads, config.ssm_groups
    out = lay.get("out_proj")
    cols = out[0].shape[1] if isinstance(out, (list, tuple)) and len(out) == 2 else 0
    if H < 1 or G < 1 or cols % H or not cols:
        return None
    Ps = cols // H
    rem = w.shape[0] - 2 * H * Ps - H
    if rem < 2 * G or rem % (2 * G):
        return None
    Ns = rem // (2 * G)
    bounds = np.cumsum([0, H * Ps, H * Ps, G * Ns, G * Ns, H])
    segs = ((H, 1), (H, 1), (G, 1), (G, 1), None)
    parts = []
    for i in range(5):
        a, b = int(bounds[i]), int(bounds[i + 1])
        part = Q4(np.array(w.packed[a:b]), np.array(w.scales[a:b]), w.group, (b - a, w.shape[1]))  # own copies
        parts.append((part, None if bias is None else np.array(bias[a:b]), segs[i]))
    return parts

"""Transformer runtime (Llama, Qwen2): run a model at any per-layer keep sizes, switchable between tokens.

All numerics are in the C core (``uniql._C``); this module validates configs, arranges weights (by
reference: arrays are kept alive here and the C model points into them), and orchestrates generation and
perplexity.

Weight layout inside the runtime (see ``csrc/include/uniql.h``, "linears and the elastic layout"): Q/K heads are
pair-interleaved (rows 2j, 2j+1 of a head form RoPE pair j). Hugging Face checkpoints use rotate-half
(dim i pairs with i + d/2); :meth:`Model.from_hf_tensors` permutes their Q/K rows (and biases) per head by
``[0, d/2, 1, d/2+1, ...]`` unless ``qk_layout="interleaved"`` says the tensors already use the runtime
layout (uniql artifacts, possibly truncated to a stored head dim R < d and an MLP size K < D_I).

int4 weights: any value of ``tensors`` with attributes ``packed`` (uint8 (rows, (cols+1)//2)), ``scales``
(float32 (rows, ngroups)), ``group`` and ``shape`` (rows, cols) -- e.g. :class:`uniql.quant.QuantizedTensor`
-- is used as int4 (w = (q - 8) * scale). For o_proj every head's column segment has its own groups:
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

__all__ = ["TransformerConfig", "Model", "SUPPORTED_MODEL_TYPES", "int4_activations", "set_int4_activations"]

INT4_ACTIVATIONS = ("auto", "fp32", "int8")


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
    """int8 weight in the runtime: codes int8 (rows, cols), scales float32 (rows, scale columns), w = q * scale
    (uniql.h UQ_W_Q8; e.g. :class:`uniql.quant.Int8Tensor`)."""

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
    return Q8(np.ascontiguousarray(v.codes), as_f32(f"{name}.scales", v.scales), int(v.group), (rows, cols))


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


def _f16(name: str, a: Any) -> np.ndarray:
    """A float16 C-contiguous array (float32/bfloat16 converted by the C core) for fp16 (UQ_W_F16) weights."""
    if isinstance(a, np.ndarray) and a.dtype == np.float16:
        return np.ascontiguousarray(a)
    src = as_f32(name, a)
    out = np.empty(src.shape, np.float16)
    _C.convert(src, out)
    return out


def as_q4(name: str, v: Any) -> Q4:
    rows, cols = (int(x) for x in v.shape)
    packed, scales = v.packed, v.scales
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8:
        raise DTypeError(f"{name}.packed must be a uint8 numpy array")
    return Q4(np.ascontiguousarray(packed), as_f32(f"{name}.scales", scales), int(v.group), (rows, cols))


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


def final_mix_tensor(tensors: Mapping[str, Any], final_norm: str, n: int, used: set) -> np.ndarray | None:
    """The final mix (uniql.rotate) next to final norm ``final_norm`` as float32 (n, n), or None when absent;
    its name is added to ``used``."""
    name = final_norm[: -len(".weight")] + ".mix"
    if name not in tensors:
        return None
    used.add(name)
    F = tensors[name]
    if isinstance(F, (Q4, Q8)) or not isinstance(F, np.ndarray) or not np.issubdtype(F.dtype, np.floating):
        raise DTypeError(f"{name} must be a float array")
    if F.shape != (n, n):
        raise ShapeError(f"{name} has shape {F.shape}, expected {(n, n)}")
    return np.ascontiguousarray(F, dtype=np.float32)


class SequenceModel:
    """A model of the C runtime (one runtime for every architecture: ``uq_hy_*``), whatever its layers: the C model
    and state, sequences, scoring, generation, the compression pipeline's pieces and accounting. Subclasses
    (``uniql.runtime.Model`` for Llama / Qwen2, ``uniql.ssm.HybridModel`` for Mamba2 / Nemotron-H / Bamba) read
    their configs and checkpoints into the runtime's layer dicts and call :meth:`_init_c`; they set ``config``
    (with vocab_size, hidden_size and eos_token_ids) and ``tokenizer``."""

    _c_forward = staticmethod(_C.hy_forward)
    _c_state_info = staticmethod(_C.hy_state_info)
    _c_state_reset = staticmethod(_C.hy_state_reset)

    def _init_c(self, c_config: dict[str, Any], emb_spec: tuple, head_spec: tuple, final_norm: np.ndarray,
                c_layers: list[dict[str, Any]], keep: list, max_seq: int | None, max_chunk: int,
                final_mix: np.ndarray | None = None) -> None:
        keep.append(final_norm)
        if final_mix is not None:
            keep.append(final_mix)
        self._arrays = keep
        self._specs = (emb_spec, head_spec, final_norm, c_layers)  # what the C model points at (uniql.elastic_memory)
        self._final_mix = final_mix  # (hidden, hidden) or None: between the final norm and the head (uniql.rotate)
        self._cm = _C.hy_model_new(c_config, emb_spec, head_spec, final_norm, c_layers, keep, final_mix)
        if max_seq is None:
            max_seq = min(self.config.max_position_embeddings, 2048)
        self.max_seq = int(max_seq)
        self._max_chunk = int(max_chunk)
        self._state = _C.hy_state_new(self._cm, self.max_seq, self._max_chunk)
        self._scratch = None  # state for embed/layer_forward/head, created on demand
        self._scratch_seq = 0

    # ------------------------------------------------------------------------------ running ----
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

    # ------------------------------------------------------------------ compression pipeline ----
    def _scratch_state(self, T: int) -> Any:
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

    # ---------------------------------------------------------------------------- accounting ----
    def weight_bytes(self) -> int:
        """Bytes of the weight arrays the model references (each array counted once; no KV cache)."""
        seen, total = set(), 0
        for a in self._arrays:
            if id(a) not in seen:
                seen.add(id(a))
                total += a.nbytes
        return total

    def memory_bytes(self) -> int:
        """Bytes of the weights referenced by the model plus its state (KV caches, SSM/conv states, scratch; the
        scratch state of layer_forward included once it exists)."""
        total = self.weight_bytes() + self._c_state_info(self._state)[1]
        if self._scratch is not None:
            total += _C.hy_state_info(self._scratch)[1]
        return total


class Model(SequenceModel):
    """A Llama/Qwen2 model in the C runtime with a KV-cache state.

    Not thread-safe: one sequence at a time (the GIL is released inside C calls).
    """

    def __init__(self, config: TransformerConfig, embed: Any, lm_head: Any, final_norm: np.ndarray,
                 layers: list[dict[str, Any]], tokenizer: Any = None, max_seq: int | None = None,
                 max_chunk: int = 256, final_mix: np.ndarray | None = None) -> None:
        """Low-level constructor: prefer :meth:`from_hf_tensors`. ``embed``/``lm_head``/layer linears are
        float32 arrays or :class:`Q4`; layers are dicts with attn_norm, q, k, v, o, mlp_norm, gate, up,
        down (each linear a (weight, bias-or-None) pair) and freq_map (int32 (n_kv, R/2) or None).
        ``final_mix``: float32 (hidden, hidden) F or None; the head reads RMSNorm(x) * final_norm F^T."""
        self.config = config
        self.tokenizer = tokenizer
        keep: list[np.ndarray] = []

        def spec(w: Any, bias: np.ndarray | None, segs: tuple[int, int] | None = None) -> tuple:
            return linear_spec(w, bias, keep, segs)

        c_layers = []
        for lay in layers:
            # one layer of the C runtime: attention mixer (norm) then a gated-SiLU MLP sub-block (ffn_norm)
            d = {"kind": _C.HY_ATTN, "norm": lay["attn_norm"], "ffn_norm": lay["mlp_norm"],
                 "freq_map": lay.get("freq_map")}
            keep.extend([lay["attn_norm"], lay["mlp_norm"]])
            if d["freq_map"] is not None:
                keep.append(d["freq_map"])
            nh, nkv = config.num_attention_heads, config.num_key_value_heads
            segs = {"q": (nh, 1), "k": (nkv, 1), "v": (nkv, 1), "o": (1, nh)}
            for _, _, short in _LINEARS:
                d[short] = spec(*lay[short], segs.get(short, (1, 1)))
            c_layers.append(d)
        emb_spec = spec(embed, None)  # the embedding gather reads rows: row-major
        head_spec = emb_spec if lm_head is embed else spec(lm_head, None, (1, 1))
        # a tied int4 embedding is also the lm_head, row-major: batched decoding may want an R16 copy (uniql.batch)
        self._tied_q4 = embed if lm_head is embed and isinstance(embed, Q4) else None
        self._init_c(config._c_dict(), emb_spec, head_spec, final_norm, c_layers, keep, max_seq, max_chunk,
                     final_mix)

    def truncate(self, position: int) -> None:
        """Keeps the first ``position`` tokens of the current sequence (0 <= position <= :attr:`position`); the
        next :meth:`forward` continues from there. Scores several continuations of one prefilled prefix. Only
        attention-only models have it (``hasattr(model, "truncate")`` is the capability uniql.zeroshot and
        uniql.eval test): a Mamba state folds every token and cannot go back."""
        _C.hy_state_truncate(self._state, int(position))

    # ------------------------------------------------------------------------------ loading ----
    @classmethod
    def from_hf_tensors(cls, config: Mapping[str, Any] | TransformerConfig, tensors: Mapping[str, Any],
                        tokenizer: Any = None, *, freq_maps: Sequence[np.ndarray | None] | None = None,
                        qk_layout: str = "rotate_half", max_seq: int | None = None,
                        max_chunk: int = 256, weight_dtype: str = "float32") -> "Model":
        """Builds a model from Hugging Face tensor names (``model.embed_tokens.weight``,
        ``model.layers.{i}.self_attn.q_proj.weight``/``.bias``, ..., ``model.norm.weight``, ``lm_head.weight``
        (optional when embeddings are tied)). Values: float32/float16/bfloat16 arrays (float16/bfloat16
        converted once), or int4 objects (see module docstring). ``qk_layout``: "rotate_half" (HF; rows are
        permuted to the runtime's pair-interleaved layout) or "interleaved" (already in runtime layout, stored
        head dim R = q rows / n_heads may be < head_dim). ``freq_maps``: per layer int32 (n_kv, R/2) frequency
        index of each stored pair, or None for identity. ``max_seq``: KV cache length (default
        min(max_position_embeddings, 2048)). ``weight_dtype="float16"`` keeps the float weight matrices (linears,
        embedding, lm_head) in float16 (float32/bfloat16 converted once; the kernels convert them exactly on the
        fly: the honest FP16 baseline); norms and biases stay float32."""
        if weight_dtype not in ("float32", "float16"):
            raise InvalidArgumentError(f"weight_dtype must be 'float32' or 'float16', got {weight_dtype!r}")
        cfg = config if isinstance(config, TransformerConfig) else TransformerConfig.from_hf(config)
        if qk_layout not in ("rotate_half", "interleaved"):
            raise InvalidArgumentError(f"qk_layout must be 'rotate_half' or 'interleaved', got {qk_layout!r}")
        L, nh, nkv, d = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        if freq_maps is not None and len(freq_maps) != L:
            raise InvalidArgumentError(f"freq_maps has {len(freq_maps)} entries, the model has {L} layers")
        used: set[str] = set()

        def get(name: str, required: bool = True, mat: bool = False) -> Any:
            if name not in tensors:
                if required:
                    raise FormatError(f"missing tensor {name!r}")
                return None
            used.add(name)
            v = tensors[name]
            if is_q4(v):
                return as_q4(name, v)
            if is_q8(v):
                return as_q8(name, v)
            return _f16(name, v) if mat and weight_dtype == "float16" else as_f32(name, v)

        def vec(name: str) -> np.ndarray:
            v = get(name)
            if isinstance(v, (Q4, Q8)):
                raise DTypeError(f"{name} must be a float array, not int4")
            return v

        layers = []
        for i in range(L):
            p = f"model.layers.{i}."
            lay: dict[str, Any] = {"attn_norm": vec(p + "input_layernorm.weight"),
                                   "mlp_norm": vec(p + "post_attention_layernorm.weight")}
            for mod, proj, short in _LINEARS:
                w = get(f"{p}{mod}.{proj}.weight", mat=True)
                need_bias = (cfg.attention_bias and mod == "self_attn"
                             and (proj != "o_proj" or cfg.model_type == "llama")) or (cfg.mlp_bias and mod == "mlp")
                b = get(f"{p}{mod}.{proj}.bias", required=need_bias)
                if isinstance(b, (Q4, Q8)):
                    raise DTypeError(f"{p}{mod}.{proj}.bias must be a float array, not int4 / int8")
                lay[short] = [w, b]
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
            fm = None if freq_maps is None else freq_maps[i]
            if fm is not None:
                fm = np.ascontiguousarray(fm)
                if fm.dtype != np.int32:
                    if not np.issubdtype(fm.dtype, np.integer):
                        raise DTypeError(f"freq_maps[{i}] must be integer, got {fm.dtype}")
                    fm = fm.astype(np.int32)
            lay["freq_map"] = fm
            layers.append(lay)
        embed = get("model.embed_tokens.weight", mat=True)
        final_norm = vec("model.norm.weight")
        mix = final_mix_tensor(tensors, "model.norm.weight", cfg.hidden_size, used)
        if cfg.tie_word_embeddings:
            head = embed
            used.add("lm_head.weight")
        else:
            head = get("lm_head.weight", mat=True)
        extra = sorted(k for k in tensors if k not in used and not k.endswith("rotary_emb.inv_freq"))
        if extra:
            raise FormatError(f"unexpected tensors: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
        return cls(cfg, embed, head, final_norm, layers, tokenizer=tokenizer, max_seq=max_seq, max_chunk=max_chunk,
                   final_mix=mix)

    # --------------------------------------------------------------------------- keep sizes ----
    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def keep(self, layer: int) -> tuple[int, int]:
        """(MLP keep k, attention head-dim keep r) of a layer."""
        keep, _, _, _ = _C.hy_get_keep(self._cm, int(layer))
        return keep[0], keep[1]

    def stored(self, layer: int) -> tuple[int, int]:
        """(stored intermediate size K, stored head dim R) of a layer: the largest keep sizes."""
        _, stored, _, _ = _C.hy_get_keep(self._cm, int(layer))
        return stored[0], stored[1]

    def set_keep(self, layer: int, mlp: int | None = None, attn: int | None = None) -> None:
        """Sets layer's MLP keep (1..K) and/or attention head-dim keep (even, 2..R); takes effect at the next
        token. The KV cache stays valid."""
        _C.hy_set_keep(self._cm, int(layer), -1 if mlp is None else int(mlp), -1 if attn is None else int(attn), -1, -1)

    def set_keep_all(self, mlp: int | Sequence[int] | None = None, attn: int | Sequence[int] | None = None) -> None:
        """Sets keep sizes of every layer: an int for all layers or one value per layer."""
        def per_layer(v: Any, what: str) -> list:
            if v is None or isinstance(v, (int, np.integer)):
                return [v] * self.num_layers
            v = list(v)
            if len(v) != self.num_layers:
                raise InvalidArgumentError(f"{what} has {len(v)} values, the model has {self.num_layers} layers")
            return v
        ms, rs = per_layer(mlp, "mlp"), per_layer(attn, "attn")
        for layer in range(self.num_layers):  # validate everything before changing anything
            K, R = self.stored(layer)
            if ms[layer] is not None and not 1 <= ms[layer] <= K:
                raise RangeError(f"set_keep_all: layer {layer} MLP keep {ms[layer]} outside [1, {K}]")
            if rs[layer] is not None and (not 2 <= rs[layer] <= R or rs[layer] % 2):
                raise RangeError(f"set_keep_all: layer {layer} attention keep {rs[layer]} must be even and in [2, {R}]")
        for layer in range(self.num_layers):
            self.set_keep(layer, ms[layer], rs[layer])

    # ------------------------------------------------------------------ compression pipeline ----
    def layer_forward(self, layer: int, X: np.ndarray, capture: Iterable[str] = ()) -> tuple[np.ndarray, dict]:
        """One decoder layer over a causal sequence X (T, hidden) at positions 0..T-1 and the layer's current
        keep sizes. ``capture``: names among attn_in (T, hidden), q (T, n_heads*r), k (T, n_kv*r) (after RoPE),
        attn_out (T, n_heads*r), mlp_in (T, hidden), mlp_z (T, k). Returns (Y, {name: array}). Does not touch
        the generation KV cache."""
        X = as_f32("X", X)
        if X.ndim != 2:
            raise InvalidArgumentError(f"X must be 2-D (T, hidden), got shape {X.shape}")
        T = X.shape[0]
        c = self.config
        k, r = self.keep(layer)
        widths = {"attn_in": c.hidden_size, "q": c.num_attention_heads * r, "k": c.num_key_value_heads * r,
                  "attn_out": c.num_attention_heads * r, "mlp_in": c.hidden_size, "mlp_z": k}
        caps = {}
        for name in capture:
            if name not in widths:
                raise InvalidArgumentError(f"unknown capture {name!r} (choose from {', '.join(widths)})")
            caps[name] = np.empty((T, widths[name]), np.float32)
        Y = np.empty_like(X)
        c_caps = {("mixer_in" if n == "attn_in" else n): a for n, a in caps.items()}
        k_full = caps.get("k")
        if k_full is not None and r != self.stored(layer)[1]:  # the C capture holds all R stored rows of a head
            c_caps["k"] = np.empty((T, c.num_key_value_heads * self.stored(layer)[1]), np.float32)
        _C.hy_layer_forward(self._cm, self._scratch_state(T), int(layer), X, Y, **c_caps)
        if k_full is not None and c_caps["k"] is not k_full:
            R = self.stored(layer)[1]
            k_full[:] = c_caps["k"].reshape(T, c.num_key_value_heads, R)[:, :, :r].reshape(T, -1)
        return Y, caps

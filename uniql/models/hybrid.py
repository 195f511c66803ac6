"""Mamba2, Nemotron-H and Bamba: their Hugging Face configs and tensors, read into the one model class of the C
runtime (:class:`uniql.models.runtime.Model`, which runs them at any per-layer keep sizes, switchable between
tokens).

Architectures (``model_type``):

* ``mamba2`` (Mamba2ForCausalLM): every layer ``x + Mamba2(RMSNorm(x))``.
* ``nemotron_h`` (NemotronHForCausalLM): ``hybrid_override_pattern`` (or ``layers_block_type``) of ``M``
  (Mamba2), ``*`` (attention, no RoPE) and ``-`` (MLP ``relu(x Wu^T)^2 Wd^T``); ``E`` (MoE) is not supported.
* ``bamba`` (BambaForCausalLM): Mamba2 layers and attention layers (``attn_layer_indices``) with partial RoPE
  (rotary on the first ``partial_rotary_factor * head_dim`` dims), each followed by a gated SiLU MLP.

Runtime layout of attention heads (see ``uniql.h``, "the runtime: every layer kind"): the rotary rows of a Q/K
head come first, pair-interleaved (rows 2j, 2j+1 = RoPE pair j), then the pass rows. A Hugging Face head
``[rot (rotate-half) | pass]`` is converted at load by permuting its rotary rows ``[0, rd/2, 1, rd/2+1, ...]``
(``qk_layout="rotate_half"``, the default); uniql artifacts already use the runtime layout
(``qk_layout="interleaved"``, possibly truncated: give ``rot_rows`` per layer when the rotary share of a stored
head is not ``R * rope_dim / head_dim``).

Elastic keep sizes per layer: ``mlp`` (MLP channels, prefix), ``attn`` (head dims: ``r * R_rot / R`` rotary rows
-- whole pairs -- and the rest pass rows of every Q/K head, the first ``r`` of every V head / o_proj
segment), ``ssm_head`` (P' channels of every Mamba head) and ``ssm_state`` (N' state dims of every group). The
SSM state is held at the stored sizes; by default it is computed for every stored channel so keeps can change
between tokens exactly (like the KV cache); ``kept_state=True`` computes only the kept channels (faster, see
:meth:`uniql.models.runtime.Model.set_options`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np

from uniql import _C
from uniql.errors import DTypeError, FormatError, InvalidArgumentError, RangeError, ShapeError, UnsupportedError
from uniql.models.runtime import (LAYER_ATTENTION, LAYER_MAMBA, LAYER_MLP, LAYER_KINDS, TensorReader,
                                  freq_map_of, permute_rows)

log = logging.getLogger(__name__)

__all__ = ["HybridConfig", "Mamba2Config", "NemotronHConfig", "BambaConfig", "SUPPORTED_SSM_TYPES", "HF_NAMES",
           "hybrid_layers", "rope_mode", "rope_rows", "LAYER_MAMBA", "LAYER_ATTENTION", "LAYER_MLP"]

_ACT = {"silu_gated": _C.HY_ACT_SILU_GATED, "relu2": _C.HY_ACT_RELU2}
_NEMOTRON_PATTERN = {"M": LAYER_MAMBA, "*": LAYER_ATTENTION, "-": LAYER_MLP}
_NEMOTRON_TYPES = {"linear_attention": LAYER_MAMBA, "mamba": LAYER_MAMBA, "full_attention": LAYER_ATTENTION,
                   "attention": LAYER_ATTENTION, "mlp": LAYER_MLP}


def _pos(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise FormatError(f"config {name} must be a positive int, got {v!r}")
    return int(v)


def _eos(d: Mapping[str, Any]) -> tuple[int, ...]:
    eos = d.get("eos_token_id")
    return () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)


def _json_float(x: Any) -> float:
    """A config float; transformers 5 saves non-finite floats as {"__float__": "Infinity"}."""
    if isinstance(x, dict) and set(x) == {"__float__"}:
        x = x["__float__"]
    try:
        return float(x)
    except (TypeError, ValueError):
        raise FormatError(f"config value {x!r} is not a number") from None


def _dt_limit(v: Any) -> tuple[float, float]:
    if v is None:
        return 0.0, math.inf
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise FormatError(f"time_step_limit must be a pair [min, max], got {v!r}")
    lo, hi = (_json_float(x) for x in v)
    return lo, hi


@dataclass(frozen=True)
class HybridConfig:
    """Normalised architecture of a Mamba2 / hybrid model (use the ``from_hf`` of a subclass, or
    :meth:`HybridConfig.from_hf` which dispatches on ``model_type``). Sizes are the original ones; stored
    (truncated) sizes come from the tensors."""

    model_type: str
    vocab_size: int
    hidden_size: int
    layer_types: tuple[str, ...]
    ffn_after_mixer: bool = False  # Bamba: every layer has a second sub-block x + MLP(RMSNorm(x))
    norm_eps: float = 1e-5
    # Mamba2 mixers
    ssm_heads: int = 0
    ssm_head_dim: int = 0
    ssm_groups: int = 1
    ssm_state: int = 0
    conv_kernel: int = 4
    chunk_size: int = 256
    dt_min: float = 0.0
    dt_max: float = math.inf
    mamba_bias: bool = False  # in_proj / out_proj biases
    conv_bias: bool = True
    # attention
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    rope_dim: int = 0  # rotary dims of a head: 0 (none), head_dim (full) or head_dim/2 (Bamba)
    rope_theta: float = 10000.0
    attention_bias: bool = False
    # MLP
    intermediate_size: int = 0
    mlp_act: str = "silu_gated"  # or "relu2"
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "eos_token_ids", tuple(int(e) for e in self.eos_token_ids))
        for name in ("vocab_size", "hidden_size", "max_position_embeddings"):
            object.__setattr__(self, name, _pos(name, getattr(self, name)))
        if not self.layer_types:
            raise FormatError("config has no layers")
        for i, t in enumerate(self.layer_types):
            if t not in LAYER_KINDS:
                raise UnsupportedError(f"layer {i}: unsupported layer type {t!r} (supported: mamba, attention, mlp)")
        if not self.norm_eps > 0:
            raise FormatError(f"norm_eps must be > 0, got {self.norm_eps}")
        if LAYER_MAMBA in self.layer_types:
            for name in ("ssm_heads", "ssm_head_dim", "ssm_groups", "ssm_state", "conv_kernel", "chunk_size"):
                object.__setattr__(self, name, _pos(name, getattr(self, name)))
            if self.ssm_heads % self.ssm_groups:
                raise ShapeError(f"inconsistent head counts: Mamba heads {self.ssm_heads} is not a multiple of "
                                 f"n_groups {self.ssm_groups}")
            if self.conv_kernel > 64:
                raise UnsupportedError(f"conv_kernel {self.conv_kernel} is larger than 64")
            if not self.dt_min <= self.dt_max:
                raise FormatError(f"time_step_limit ({self.dt_min}, {self.dt_max}) is not an interval")
        if LAYER_ATTENTION in self.layer_types:
            for name in ("num_heads", "num_kv_heads", "head_dim"):
                object.__setattr__(self, name, _pos(name, getattr(self, name)))
            if self.num_heads % self.num_kv_heads:
                raise ShapeError(f"inconsistent head counts: num_attention_heads {self.num_heads} is not a multiple "
                                 f"of num_key_value_heads {self.num_kv_heads}")
            if self.rope_dim < 0 or self.rope_dim > self.head_dim or self.rope_dim % 2:
                raise FormatError(f"rotary dims {self.rope_dim} must be even and in [0, head_dim {self.head_dim}]")
            if self.rope_dim and not self.rope_theta > 0:
                raise FormatError(f"rope_theta must be > 0, got {self.rope_theta}")
        if LAYER_MLP in self.layer_types or self.ffn_after_mixer:
            object.__setattr__(self, "intermediate_size", _pos("intermediate_size", self.intermediate_size))
            if self.mlp_act not in _ACT:
                raise UnsupportedError(f"unsupported MLP activation {self.mlp_act!r} (supported: silu_gated, relu2)")

    @property
    def num_hidden_layers(self) -> int:
        return len(self.layer_types)

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "HybridConfig":
        """From a Hugging Face ``config.json`` dict; dispatches on ``model_type``."""
        mt = d.get("model_type")
        sub = {"mamba2": Mamba2Config, "nemotron_h": NemotronHConfig, "bamba": BambaConfig}.get(mt)
        if sub is None:
            raise UnsupportedError(f"unsupported model_type {mt!r} (supported: {', '.join(SUPPORTED_SSM_TYPES)})")
        return sub.from_hf(d)

    def _c_dict(self) -> dict[str, Any]:
        return dict(vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=self.num_hidden_layers,
                    norm_eps=float(self.norm_eps), ssm_heads=self.ssm_heads, ssm_head_dim=self.ssm_head_dim,
                    ssm_groups=self.ssm_groups, ssm_state=self.ssm_state, conv_kernel=self.conv_kernel,
                    chunk_size=self.chunk_size, dt_min=float(self.dt_min), dt_max=float(self.dt_max),
                    num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                    rope_dim=self.rope_dim, rope_theta=float(self.rope_theta),
                    intermediate_size=self.intermediate_size, mlp_act=_ACT[self.mlp_act])

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_mamba_heads(d: Mapping[str, Any], hidden: int, expand: Any, heads: int, head_dim: int, what: str) -> None:
    if expand is not None and int(expand) * hidden != heads * head_dim:
        raise ShapeError(f"inconsistent head counts: {what} hidden_size x expand = {int(expand) * hidden} but "
                         f"num_heads x head_dim = {heads} x {head_dim} = {heads * head_dim}")


def _need(d: Mapping[str, Any], *keys: str) -> None:
    for k in keys:
        if k not in d or d[k] is None:
            raise FormatError(f"config is missing {k!r}")


@dataclass(frozen=True)
class Mamba2Config(HybridConfig):
    """Mamba2ForCausalLM."""

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "Mamba2Config":
        if d.get("model_type") != "mamba2":
            raise UnsupportedError(f"Mamba2Config.from_hf needs model_type 'mamba2', got {d.get('model_type')!r}")
        _need(d, "vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "head_dim", "state_size")
        if d.get("hidden_act", "silu") != "silu":
            raise UnsupportedError(f"unsupported Mamba hidden_act {d.get('hidden_act')!r} (only silu)")
        H, P = d["num_heads"], d["head_dim"]
        _check_mamba_heads(d, d["hidden_size"], d.get("expand", 2), H, P, "mamba2")
        lo, hi = _dt_limit(d.get("time_step_limit"))
        return cls(model_type="mamba2", vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                   layer_types=(LAYER_MAMBA,) * int(d["num_hidden_layers"]),
                   norm_eps=float(d.get("layer_norm_epsilon", 1e-5)), ssm_heads=H, ssm_head_dim=P,
                   ssm_groups=d.get("n_groups", 8), ssm_state=d["state_size"], conv_kernel=d.get("conv_kernel", 4),
                   chunk_size=d.get("chunk_size", 256), dt_min=lo, dt_max=hi, mamba_bias=bool(d.get("use_bias", False)),
                   conv_bias=bool(d.get("use_conv_bias", True)),
                   tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                   max_position_embeddings=int(d.get("max_position_embeddings", 2048) or 2048),
                   bos_token_id=d.get("bos_token_id"), eos_token_ids=_eos(d))


@dataclass(frozen=True)
class NemotronHConfig(HybridConfig):
    """NemotronHForCausalLM (pattern of M / * / -).

    The Mamba dt clamp follows transformers 5.25 (``modeling_nemotron_h.py``), which matches the fused
    ``mamba_chunk_scan_combined`` kernel path that deployments run: dt is clamped to ``time_step_limit``
    (``mamba_dt_limit`` in older configs; default ``(0, inf)``) and ``time_step_min`` only initialises
    ``dt_bias``. transformers <= 5.24's eager path also clamped dt below at ``time_step_min``; we do not.
    """

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "NemotronHConfig":
        if d.get("model_type") != "nemotron_h":
            raise UnsupportedError(f"NemotronHConfig.from_hf needs model_type 'nemotron_h', got {d.get('model_type')!r}")
        _need(d, "vocab_size", "hidden_size")
        pattern = d.get("hybrid_override_pattern")
        types: list[str] = []
        if isinstance(pattern, str) and pattern:
            for i, ch in enumerate(pattern):
                if ch == "E":
                    raise UnsupportedError(f"hybrid_override_pattern layer {i}: 'E' (mixture-of-experts) layers are "
                                           "not supported")
                if ch not in _NEMOTRON_PATTERN:
                    raise UnsupportedError(f"hybrid_override_pattern layer {i}: unknown layer type {ch!r} "
                                           "(supported: M = Mamba2, * = attention, - = MLP)")
                types.append(_NEMOTRON_PATTERN[ch])
        else:
            lst = d.get("layers_block_type") or d.get("layer_types")
            if not lst:
                raise FormatError("config has neither hybrid_override_pattern nor layers_block_type")
            for i, t in enumerate(lst):
                if t == "moe":
                    raise UnsupportedError(f"layers_block_type layer {i}: 'moe' (mixture-of-experts) layers are not "
                                           "supported")
                if t not in _NEMOTRON_TYPES:
                    raise UnsupportedError(f"layers_block_type layer {i}: unknown layer type {t!r} "
                                           "(supported: linear_attention/mamba, full_attention/attention, mlp)")
                types.append(_NEMOTRON_TYPES[t])
        nl = d.get("num_hidden_layers")
        if pattern and nl is not None and int(nl) != len(types):
            raise FormatError(f"num_hidden_layers {nl} does not match the {len(types)} layers of "
                             f"hybrid_override_pattern {pattern!r}")
        kw: dict[str, Any] = {}
        if LAYER_MAMBA in types:
            _need(d, "mamba_num_heads", "mamba_head_dim", "ssm_state_size")
            lo, hi = _dt_limit(d.get("time_step_limit", d.get("mamba_dt_limit")))
            if d.get("mamba_hidden_act", "silu") != "silu":
                raise UnsupportedError(f"unsupported mamba_hidden_act {d.get('mamba_hidden_act')!r} (only silu)")
            kw.update(ssm_heads=d["mamba_num_heads"], ssm_head_dim=d["mamba_head_dim"],
                      ssm_groups=d.get("n_groups", d.get("mamba_n_groups", 8)), ssm_state=d["ssm_state_size"],
                      conv_kernel=d.get("conv_kernel", d.get("mamba_d_conv", 4)),
                      chunk_size=d.get("chunk_size", d.get("mamba_chunk_size", 128)),
                      dt_min=lo, dt_max=hi,
                      mamba_bias=bool(d.get("use_bias", False)),
                      conv_bias=bool(d.get("use_conv_bias", d.get("mamba_conv_bias", True))))
        if LAYER_ATTENTION in types:
            _need(d, "num_attention_heads")
            nh = d["num_attention_heads"]
            hd = d.get("head_dim") or (d["hidden_size"] // nh if d["hidden_size"] % nh == 0 else None)
            if not hd:
                raise ShapeError(f"inconsistent head counts: hidden_size {d['hidden_size']} is not a multiple of "
                                 f"num_attention_heads {nh} and no head_dim is given")
            kw.update(num_heads=nh, num_kv_heads=d.get("num_key_value_heads") or nh, head_dim=hd, rope_dim=0)
        if LAYER_MLP in types:
            _need(d, "intermediate_size")
            act = d.get("mlp_hidden_act", "relu2")
            if act != "relu2":
                raise UnsupportedError(f"unsupported mlp_hidden_act {act!r} (only relu2)")
            kw.update(intermediate_size=d["intermediate_size"], mlp_act="relu2", mlp_bias=bool(d.get("mlp_bias", False)))
        return cls(model_type="nemotron_h", vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
                   layer_types=tuple(types), norm_eps=float(d.get("layer_norm_epsilon", 1e-5)),
                   tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                   max_position_embeddings=int(d.get("max_position_embeddings", 2048) or 2048),
                   bos_token_id=d.get("bos_token_id"), eos_token_ids=_eos(d), **kw)


@dataclass(frozen=True)
class BambaConfig(HybridConfig):
    """BambaForCausalLM (Mamba2 + partial-RoPE attention layers, each followed by a gated SiLU MLP)."""

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> "BambaConfig":
        if d.get("model_type") != "bamba":
            raise UnsupportedError(f"BambaConfig.from_hf needs model_type 'bamba', got {d.get('model_type')!r}")
        _need(d, "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "mamba_n_heads",
              "mamba_d_state")
        if d.get("hidden_act", "silu") != "silu":
            raise UnsupportedError(f"unsupported hidden_act {d.get('hidden_act')!r} (only silu)")
        L, hid = int(d["num_hidden_layers"]), d["hidden_size"]
        attn_idx = set(d.get("attn_layer_indices") or [])
        bad = sorted(i for i in attn_idx if not 0 <= i < L)
        if bad:
            raise FormatError(f"attn_layer_indices {bad} outside [0, num_hidden_layers = {L})")
        types = tuple(LAYER_ATTENTION if i in attn_idx else LAYER_MAMBA for i in range(L))
        H, expand = d["mamba_n_heads"], d.get("mamba_expand", 2)
        P = d.get("mamba_d_head", "auto")
        if P in (None, "auto"):
            if (expand * hid) % H:
                raise ShapeError(f"inconsistent head counts: mamba_n_heads {H} does not divide mamba_expand x "
                                 f"hidden_size = {expand * hid}")
            P = expand * hid // H
        _check_mamba_heads(d, hid, expand, H, P, "bamba")
        lo, hi = _dt_limit(d.get("time_step_limit"))
        kw: dict[str, Any] = {}
        if attn_idx:
            _need(d, "num_attention_heads")
            nh = d["num_attention_heads"]
            hd = d.get("head_dim") or (hid // nh if hid % nh == 0 else None)
            if not hd:
                raise ShapeError(f"inconsistent head counts: hidden_size {hid} is not a multiple of "
                                 f"num_attention_heads {nh} and no head_dim is given")
            rp = dict(d.get("rope_scaling") or {})
            rp.update(d.get("rope_parameters") or {})
            rtype = rp.get("rope_type", rp.get("type", "default")) or "default"
            if rtype != "default":
                raise UnsupportedError(f"unsupported rope type {rtype!r} for bamba (only default)")
            prf = float(rp.get("partial_rotary_factor", d.get("partial_rotary_factor", 0.5)))
            rope_dim = int(hd * prf)
            if rope_dim % 2:
                raise ShapeError(f"partial_rotary_factor {prf} x head_dim {hd} = {rope_dim} rotary dims is odd")
            kw.update(num_heads=nh, num_kv_heads=d.get("num_key_value_heads") or nh, head_dim=hd, rope_dim=rope_dim,
                      rope_theta=float(rp.get("rope_theta", d.get("rope_theta", 10000.0))),
                      attention_bias=bool(d.get("attention_bias", False)))
        return cls(model_type="bamba", vocab_size=d["vocab_size"], hidden_size=hid, layer_types=types,
                   ffn_after_mixer=True, norm_eps=float(d.get("rms_norm_eps", 1e-5)), ssm_heads=H, ssm_head_dim=P,
                   ssm_groups=d.get("mamba_n_groups", 1), ssm_state=d["mamba_d_state"],
                   conv_kernel=d.get("mamba_d_conv", 4), chunk_size=d.get("mamba_chunk_size", 256), dt_min=lo,
                   dt_max=hi, mamba_bias=bool(d.get("mamba_proj_bias", False)),
                   conv_bias=bool(d.get("mamba_conv_bias", True)), intermediate_size=d["intermediate_size"],
                   mlp_act="silu_gated", mlp_bias=bool(d.get("mlp_bias", False)),
                   tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                   max_position_embeddings=int(min(d.get("max_position_embeddings", 2048) or 2048, 1 << 20)),
                   bos_token_id=d.get("bos_token_id"), eos_token_ids=_eos(d), **kw)


SUPPORTED_SSM_TYPES = ("mamba2", "nemotron_h", "bamba")


def rope_mode(hc: HybridConfig) -> str:
    """The Q/K sort layout of a hybrid's attention: "none" (Nemotron-H), "partial" (Bamba, rotary on the first
    half of a head) or "full"."""
    if hc.rope_dim == 0:
        return "none"
    if hc.rope_dim == hc.head_dim:
        return "full"
    if 2 * hc.rope_dim == hc.head_dim:
        return "partial"
    raise UnsupportedError(f"rotary dims {hc.rope_dim} of head dim {hc.head_dim}: only none, half or full RoPE "
                           "can be sorted")


def rope_rows(n_heads: int, d: int, rd: int) -> np.ndarray:
    """Row index map HF [rot (rotate-half, rd dims) | pass] -> runtime [rot pair-interleaved | pass], per head."""
    per = np.concatenate([np.stack([np.arange(rd // 2), np.arange(rd // 2) + rd // 2], axis=1).reshape(-1),
                          np.arange(rd, d)])
    return (np.arange(n_heads)[:, None] * d + per[None, :]).reshape(-1)


# HF tensor names per model_type: embedding, final norm, layer prefix, norms and the prefix of each component. The
# artifact loader reads every architecture through this table; Llama / Qwen2 checkpoints are read by
# uniql.models.runtime.transformer_layers under the same names.
_TRANSFORMER_NAMES = dict(embed=("model.embed_tokens.weight",), final="model.norm.weight", layer="model.layers.{i}.",
                          norm="input_layernorm.weight", attn="self_attn.", mlp="mlp.",
                          ffn_norm="post_attention_layernorm.weight")
HF_NAMES = {
    "llama": _TRANSFORMER_NAMES,
    "qwen2": _TRANSFORMER_NAMES,
    "mamba2": dict(embed=("backbone.embeddings.weight", "backbone.embedding.weight"), final="backbone.norm_f.weight",
                   layer="backbone.layers.{i}.", norm="norm.weight", mamba="mixer."),
    "nemotron_h": dict(embed=("model.embeddings.weight", "backbone.embeddings.weight"),
                       final=("model.norm_f.weight", "backbone.norm_f.weight"), layer="model.layers.{i}.",
                       alt_layer="backbone.layers.{i}.", norm="norm.weight", mamba="mixer.", attn="mixer.",
                       mlp="mixer."),
    "bamba": dict(embed=("model.embed_tokens.weight",), final="model.final_layernorm.weight", layer="model.layers.{i}.",
                  norm="input_layernorm.weight", mamba="mamba.", attn="self_attn.", mlp="feed_forward.",
                  ffn_norm="pre_ff_layernorm.weight"),
}




def hybrid_layers(cfg: HybridConfig, r: TensorReader, *, freq_maps: Sequence[np.ndarray | None] | None,
                  rot_rows: Sequence[int | None] | None, qk_layout: str) -> tuple[Any, Any, tuple, list]:
    """Mamba2 / Nemotron-H / Bamba tensors (HF names, see :data:`HF_NAMES`) -> (embedding, lm_head, (final norm,
    final mix or None), runtime layer dicts) for :meth:`uniql.models.runtime.Model.from_hf_tensors`. Truncated
    tensors (stored sizes below the config's) are accepted: the stored sizes are read from the shapes."""
    names = HF_NAMES[cfg.model_type]
    embed_name = r.first_present(names["embed"])
    prefix_fmt = names["layer"]
    if "alt_layer" in names and embed_name.startswith("backbone."):
        prefix_fmt = names["alt_layer"]
    layers = []
    for i, t in enumerate(cfg.layer_types):
        p = prefix_fmt.format(i=i)
        lay: dict[str, Any] = {"norm": r.vec(p + names["norm"])}
        if t == LAYER_MAMBA:
            m = p + names["mamba"]
            lay["in_proj"] = r.linear(m + "in_proj", cfg.mamba_bias)
            lay["out_proj"] = r.linear(m + "out_proj", cfg.mamba_bias)
            cw = r.vec(m + "conv1d.weight")
            if cw.ndim == 3:
                if cw.shape[1] != 1:
                    raise ShapeError(f"{m}conv1d.weight has shape {cw.shape}, expected (channels, 1, kernel)")
                cw = np.ascontiguousarray(cw.reshape(cw.shape[0], cw.shape[2]))
            lay["conv_w"] = cw
            lay["conv_b"] = r.vec(m + "conv1d.bias", required=cfg.conv_bias)
            for key in ("dt_bias", "A_log", "D"):
                lay[key] = r.vec(m + key)
            lay["gnorm"] = r.vec(m + "norm.weight")
        elif t == LAYER_ATTENTION:
            a = p + names["attn"]
            for short in ("q", "k", "v", "o"):
                lay[short] = r.linear(f"{a}{short}_proj", cfg.attention_bias)
            d, rd = cfg.head_dim, cfg.rope_dim
            if qk_layout == "rotate_half" and rd > 0:
                for short, heads in (("q", cfg.num_heads), ("k", cfg.num_kv_heads)):
                    w, b = lay[short]
                    if w.shape[0] != heads * d:
                        raise ShapeError(f"layer {i} {short}_proj has {w.shape[0]} rows, expected {heads} x "
                                         f"{d} (truncated heads need qk_layout='interleaved')")
                    idx = rope_rows(heads, d, rd)
                    lay[short] = [permute_rows(w, idx), None if b is None else np.ascontiguousarray(b[idx])]
            lay["freq_map"] = freq_map_of(freq_maps, i)
            lay["rot_rows"] = None if rot_rows is None else rot_rows[i]
        if t == LAYER_MLP or cfg.ffn_after_mixer:
            f = p + names["mlp"]
            if cfg.mlp_act == "silu_gated":
                lay["gate"] = r.linear(f + "gate_proj", cfg.mlp_bias)
            lay["up"] = r.linear(f + "up_proj", cfg.mlp_bias)
            lay["down"] = r.linear(f + "down_proj", cfg.mlp_bias)
            if t != LAYER_MLP:
                lay["ffn_norm"] = r.vec(p + names["ffn_norm"])
        layers.append(lay)
    embed = r.get(embed_name)
    final = r.final(r.first_present(names["final"]), cfg.hidden_size)
    head = r.head(embed, cfg.tie_word_embeddings)
    r.check_all_read()
    return embed, head, final, layers

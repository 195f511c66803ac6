"""Mamba2, Nemotron-H and Bamba in the C runtime: run at any per-layer keep sizes, switchable between tokens.

All numerics are in the C core (``uniql._C``, ``csrc/runtime/ssm.c``); this module reads Hugging Face
configs, arranges weights by reference (arrays are kept alive here, the C model points into them) and
orchestrates generation and perplexity, with the same surface as :class:`uniql.runtime.Model`.

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
:meth:`HybridModel.set_options`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np

from uniql import _C
from uniql.errors import DTypeError, FormatError, InvalidArgumentError, RangeError, ShapeError, UnsupportedError
from uniql.runtime import (Q4, Q8, SequenceModel, as_f32, as_q4, as_q8, final_mix_tensor, is_q4, is_q8, linear_spec,
                           permute_rows)

log = logging.getLogger(__name__)

__all__ = ["HybridConfig", "Mamba2Config", "NemotronHConfig", "BambaConfig", "HybridModel", "SUPPORTED_SSM_TYPES",
           "LAYER_MAMBA", "LAYER_ATTENTION", "LAYER_MLP"]

LAYER_MAMBA, LAYER_ATTENTION, LAYER_MLP = "mamba", "attention", "mlp"
_KIND = {LAYER_MAMBA: _C.HY_MAMBA, LAYER_ATTENTION: _C.HY_ATTN, LAYER_MLP: _C.HY_MLP}
_ACT = {"silu_gated": _C.HY_ACT_SILU_GATED, "relu2": _C.HY_ACT_RELU2}
_NEMOTRON_PATTERN = {"M": LAYER_MAMBA, "*": LAYER_ATTENTION, "-": LAYER_MLP}
_NEMOTRON_TYPES = {"linear_attention": LAYER_MAMBA, "mamba": LAYER_MAMBA, "full_attention": LAYER_ATTENTION,
                   "attention": LAYER_ATTENTION, "mlp": LAYER_MLP}
_KEEP_NAMES = ("mlp", "attn", "ssm_head", "ssm_state")


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
            if t not in _KIND:
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


# HF tensor names: (embedding, final norm, layer prefix, mixer prefix per layer type, ...)
HF_NAMES = {
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


def mamba_in_parts(config: "HybridConfig", w: Any, bias: np.ndarray | None,
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


class HybridModel(SequenceModel):
    """A Mamba2 / Nemotron-H / Bamba model in the C runtime with its SSM, conv and KV-cache state.

    Not thread-safe: one sequence at a time (the GIL is released inside C calls).
    """

    def __init__(self, config: HybridConfig, embed: Any, lm_head: Any, final_norm: np.ndarray,
                 layers: list[dict[str, Any]], tokenizer: Any = None, max_seq: int | None = None,
                 max_chunk: int = 256, final_mix: np.ndarray | None = None) -> None:
        """Low-level constructor: prefer :meth:`from_hf_tensors`. Layer dicts (runtime layout): ``norm``; Mamba:
        ``in_proj``, ``out_proj`` ((weight, bias-or-None) pairs), ``conv_w`` (C, K), ``conv_b``, ``dt_bias``,
        ``A_log``, ``D``, ``gnorm``; attention: ``q``, ``k``, ``v``, ``o`` pairs, ``rot_rows`` (int or None),
        ``freq_map``; MLP: ``gate`` (silu_gated), ``up``, ``down`` pairs and, after a mixer, ``ffn_norm``."""
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
                elif isinstance(v, (list, tuple)) and len(v) == 2 and key in (
                        "in_proj", "out_proj", "q", "k", "v", "o", "gate", "up", "down"):
                    d[key] = spec(*v, key)
                elif isinstance(v, np.ndarray):
                    keep.append(v)
                    d[key] = v
                else:
                    d[key] = v
            c_layers.append(d)
        emb_spec = spec(embed, None)  # the embedding gather reads rows: row-major
        head_spec = emb_spec if lm_head is embed else spec(lm_head, None, "up")
        # a tied int4 embedding is also the lm_head, row-major: batched decoding may want an R16 copy (uniql.batch)
        self._tied_q4 = embed if lm_head is embed and isinstance(embed, Q4) else None
        self._init_c(config._c_dict(), emb_spec, head_spec, final_norm, c_layers, keep, max_seq, max_chunk,
                     final_mix)
        self._options = 0

    # ------------------------------------------------------------------------------ loading ----
    @classmethod
    def from_hf_tensors(cls, config: Mapping[str, Any] | HybridConfig, tensors: Mapping[str, Any],
                        tokenizer: Any = None, *, freq_maps: Sequence[np.ndarray | None] | None = None,
                        rot_rows: Sequence[int | None] | None = None, qk_layout: str = "rotate_half",
                        max_seq: int | None = None, max_chunk: int = 256) -> "HybridModel":
        """Builds a model from Hugging Face tensor names (Mamba2: ``backbone.*``; Nemotron-H: ``model.*`` or
        ``backbone.*``; Bamba: ``model.*``; ``lm_head.weight`` optional with tied embeddings). Values:
        float32/float16/bfloat16 arrays or int4 objects (``packed``, ``scales``, ``group``, ``shape``; see
        :mod:`uniql.runtime`). Truncated tensors (stored sizes below the config's) are accepted: the stored
        sizes are read from the shapes. ``qk_layout``: "rotate_half" (HF heads, permuted at load) or
        "interleaved" (runtime layout). ``freq_maps``/``rot_rows``: per layer (None for non-attention layers):
        int32 (n_kv, R_rot/2) original frequency index of each stored rotary pair, and the stored rotary rows
        per head. ``max_seq``: KV cache / sequence capacity."""
        cfg = config if isinstance(config, HybridConfig) else HybridConfig.from_hf(config)
        if qk_layout not in ("rotate_half", "interleaved"):
            raise InvalidArgumentError(f"qk_layout must be 'rotate_half' or 'interleaved', got {qk_layout!r}")
        L = cfg.num_hidden_layers
        for what, seq in (("freq_maps", freq_maps), ("rot_rows", rot_rows)):
            if seq is not None and len(seq) != L:
                raise InvalidArgumentError(f"{what} has {len(seq)} entries, the model has {L} layers")
        names = HF_NAMES[cfg.model_type]
        used: set[str] = set()

        def first_present(cands: tuple[str, ...] | str) -> str:
            cands = (cands,) if isinstance(cands, str) else cands
            for n in cands:
                if n in tensors:
                    return n
            raise FormatError(f"missing tensor {cands[0]!r}")

        def get(name: str, required: bool = True) -> Any:
            if name not in tensors:
                if required:
                    raise FormatError(f"missing tensor {name!r}")
                return None
            used.add(name)
            v = tensors[name]
            return as_q4(name, v) if is_q4(v) else as_q8(name, v) if is_q8(v) else as_f32(name, v)

        def vec(name: str, required: bool = True) -> np.ndarray | None:
            v = get(name, required)
            if isinstance(v, (Q4, Q8)):
                raise DTypeError(f"{name} must be a float array, not int4 / int8")
            return v

        def lin(prefix: str, bias: bool) -> list:
            b = vec(prefix + ".bias", required=bias)
            return [get(prefix + ".weight"), b]

        embed_name = first_present(names["embed"])
        prefix_fmt = names["layer"]
        if "alt_layer" in names and embed_name.startswith("backbone."):
            prefix_fmt = names["alt_layer"]
        layers = []
        for i, t in enumerate(cfg.layer_types):
            p = prefix_fmt.format(i=i)
            lay: dict[str, Any] = {"norm": vec(p + names["norm"])}
            if t == LAYER_MAMBA:
                m = p + names["mamba"]
                lay["in_proj"] = lin(m + "in_proj", cfg.mamba_bias)
                lay["out_proj"] = lin(m + "out_proj", cfg.mamba_bias)
                cw = vec(m + "conv1d.weight")
                if cw.ndim == 3:
                    if cw.shape[1] != 1:
                        raise ShapeError(f"{m}conv1d.weight has shape {cw.shape}, expected (channels, 1, kernel)")
                    cw = np.ascontiguousarray(cw.reshape(cw.shape[0], cw.shape[2]))
                lay["conv_w"] = cw
                lay["conv_b"] = vec(m + "conv1d.bias", required=cfg.conv_bias)
                for key in ("dt_bias", "A_log", "D"):
                    lay[key] = vec(m + key)
                lay["gnorm"] = vec(m + "norm.weight")
            elif t == LAYER_ATTENTION:
                a = p + names["attn"]
                for short in ("q", "k", "v", "o"):
                    lay[short] = lin(f"{a}{short}_proj", cfg.attention_bias)
                d, rd = cfg.head_dim, cfg.rope_dim
                if qk_layout == "rotate_half" and rd > 0:
                    for short, heads in (("q", cfg.num_heads), ("k", cfg.num_kv_heads)):
                        w, b = lay[short]
                        if w.shape[0] != heads * d:
                            raise ShapeError(f"layer {i} {short}_proj has {w.shape[0]} rows, expected {heads} x "
                                             f"{d} (truncated heads need qk_layout='interleaved')")
                        idx = rope_rows(heads, d, rd)
                        lay[short] = [permute_rows(w, idx), None if b is None else np.ascontiguousarray(b[idx])]
                fm = None if freq_maps is None else freq_maps[i]
                if fm is not None:
                    fm = np.ascontiguousarray(fm)
                    if not np.issubdtype(fm.dtype, np.integer):
                        raise DTypeError(f"freq_maps[{i}] must be integer, got {fm.dtype}")
                    fm = fm.astype(np.int32, copy=False)
                lay["freq_map"] = fm
                lay["rot_rows"] = None if rot_rows is None else rot_rows[i]
            if t == LAYER_MLP or cfg.ffn_after_mixer:
                f = p + names["mlp"]
                if cfg.mlp_act == "silu_gated":
                    lay["gate"] = lin(f + "gate_proj", cfg.mlp_bias)
                lay["up"] = lin(f + "up_proj", cfg.mlp_bias)
                lay["down"] = lin(f + "down_proj", cfg.mlp_bias)
                if t != LAYER_MLP:
                    lay["ffn_norm"] = vec(p + names["ffn_norm"])
            layers.append(lay)
        embed = get(embed_name)
        final_name = first_present(names["final"])
        final_norm = vec(final_name)
        mix = final_mix_tensor(tensors, final_name, cfg.hidden_size, used)
        if cfg.tie_word_embeddings:  # lm_head.weight, when present, is the same tensor
            head = embed
            used.add("lm_head.weight")
        else:
            head = get("lm_head.weight")
        extra = sorted(k for k in tensors if k not in used and not k.endswith("rotary_emb.inv_freq"))
        if extra:
            raise FormatError(f"unexpected tensors: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}")
        return cls(cfg, embed, head, final_norm, layers, tokenizer=tokenizer, max_seq=max_seq, max_chunk=max_chunk,
                   final_mix=mix)

    # --------------------------------------------------------------------------- keep sizes ----
    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def layer_types(self) -> tuple[str, ...]:
        return self.config.layer_types

    def keep(self, layer: int) -> dict[str, int]:
        """Current keep sizes of a layer's components ({mlp, attn, ssm_head, ssm_state}; absent ones omitted)."""
        k, s, _, _ = _C.hy_get_keep(self._cm, int(layer))
        return {n: v for n, v, sv in zip(_KEEP_NAMES, k, s) if sv}

    def stored(self, layer: int) -> dict[str, int]:
        """Stored (loaded) sizes of a layer's components: the largest keep sizes."""
        _, s, _, _ = _C.hy_get_keep(self._cm, int(layer))
        return {n: v for n, v in zip(_KEEP_NAMES, s) if v}

    def set_keep(self, layer: int, mlp: int | None = None, attn: int | None = None, ssm_head: int | None = None,
                 ssm_state: int | None = None) -> None:
        """Sets a layer's keep sizes (None = unchanged); takes effect at the next token. Naming a component the
        layer does not have is a RangeError."""
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
            for name in _KEEP_NAMES:
                v = per[name][i]
                if v is None:
                    continue
                if name not in st:
                    raise RangeError(f"set_keep_all: layer {i} ({self.layer_types[i]}) has no {name} component")
                if not 1 <= v <= st[name]:
                    raise RangeError(f"set_keep_all: layer {i} {name} keep {v} outside [1, {st[name]}]")
        saved = [self.keep(i) for i in range(self.num_layers)]
        try:
            for i in range(self.num_layers):
                self.set_keep(i, **{n: per[n][i] for n in _KEEP_NAMES})
        except Exception:
            for i, k in enumerate(saved):
                self.set_keep(i, **k)
            raise

    # ------------------------------------------------------------------ compression pipeline ----
    def capture_widths(self, layer: int) -> dict[str, int]:
        """Widths of the captures :meth:`layer_forward` offers for `layer` at its current keeps (see
        ``uq_hy_capture`` in uniql.h); only the ones that exist for the layer's kind."""
        c = self.config
        keep, stored, kind, ffn = _C.hy_get_keep(self._cm, int(layer))
        kept = bool(self._options & _C.HY_OPT_KEPT_STATE)
        Pc, Nc = (keep[2], keep[3]) if kept else (stored[2], stored[3])
        w = {"mixer_in": c.hidden_size}
        if kind == _C.HY_MAMBA:
            w.update(ssm_x=c.ssm_heads * Pc, ssm_B=c.ssm_groups * Nc, ssm_C=c.ssm_groups * Nc, ssm_dt=c.ssm_heads,
                     ssm_out=c.ssm_heads * keep[2])
        elif kind == _C.HY_ATTN:
            w.update(q=c.num_heads * keep[1], k=c.num_kv_heads * stored[1], attn_out=c.num_heads * keep[1])
        if kind == _C.HY_MLP or ffn:
            w.update(mlp_in=c.hidden_size, mlp_z=keep[0])
        return w

    def layer_forward(self, layer: int, X: np.ndarray, capture: Sequence[str] = ()) -> tuple[np.ndarray, dict]:
        """One layer over a causal sequence X (T, hidden) from a zero state (positions 0..T-1) at the layer's
        current keeps. ``capture``: names among :meth:`capture_widths` (mixer_in; Mamba: ssm_x, ssm_B, ssm_C,
        ssm_dt = Delta, ssm_out; attention: q, k (after RoPE), attn_out; MLP: mlp_in, mlp_z). Returns
        (Y, {name: (T, width) float32}). Does not touch the generation state."""
        X = as_f32("X", X)
        if X.ndim != 2:
            raise ShapeError(f"X must be 2-D (T, hidden), got shape {X.shape}")
        widths = self.capture_widths(layer)
        caps = {}
        for name in capture:
            if name not in widths:
                raise InvalidArgumentError(f"layer {layer} ({self.layer_types[layer]}) has no capture {name!r} "
                                 f"(choose from {', '.join(widths)})")
            caps[name] = np.empty((X.shape[0], widths[name]), np.float32)
        Y = np.empty_like(X)
        _C.hy_layer_forward(self._cm, self._scratch_state(X.shape[0]), int(layer), X, Y, **caps)
        return Y, caps

    def set_options(self, sequential_scan: bool = False, kept_state: bool = False) -> None:
        """Execution options. ``sequential_scan``: prefill with the recurrence instead of the chunked scan
        (reference path). ``kept_state``: compute x/B/C, their conv and the SSM state only for the kept channels
        (faster at reduced keeps; state channels outside the keep go stale, so raise keeps only after
        :meth:`reset`)."""
        opts = (_C.HY_OPT_SEQUENTIAL_SCAN if sequential_scan else 0) | (_C.HY_OPT_KEPT_STATE if kept_state else 0)
        _C.hy_set_options(self._cm, opts)
        self._options = opts


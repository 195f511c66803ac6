"""The uniql artifact: one directory that serves every pruning rate from 0 to its maximum (docs/design.md §4).

Layout::

    config.json                    the model's Hugging Face config + a "uniql" section (ArtifactMeta)
    model-rest.safetensors         embedding, final norm, lm_head (when untied), final mix (rotated and tied)
    model-layer-NNNN.safetensors   one file per decoder layer
    tokenizer.json ...             copied from the source model
    uniql_report.json              what compress() did: times per stage, peak memory, sizes

Tensors keep Hugging Face names. A float weight is ``<name>`` (F32 or F16); an int4 weight is
``<name>.qweight`` (U8, the core's packed layout: two codes per byte, low nibble = even column) plus
``<name>.scales`` (F16, one per row per group; for o_proj the groups restart at every head segment). Q/K rows are
stored pair-interleaved in sorted order, with ``...self_attn.rope_freq`` (I32 (n_kv, d/2)) the original frequency
index of each stored pair, so keeping r head dims is the first r rows of each head. Every prunable axis is a
prefix per head / per group: loading at rate rho copies prefixes, ``set_rate`` only changes the sizes the kernels
use. Nothing here computes: slicing and bookkeeping only; numerics are in the C core.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from uniql import _C
from uniql.errors import FormatError, RangeError, UnsupportedError
from uniql.models.keep import ROPE_CODES, alloc_keep_ratios, keep_size
from uniql.models.runtime import (LAYER_ATTENTION, LAYER_MAMBA, LAYER_MLP, Q4, Q8, Model, final_mix_name,
                                  model_config, scales_f16)

log = logging.getLogger(__name__)

#: newest artifact format this uniql reads. 2: the optional final mix ``<final norm>.mix`` (float32 hidden x hidden,
#: in model-rest.safetensors) of a rotated model that keeps its embedding tied (uniql.compress.rotate); compress
#: writes 2 only for artifacts that carry one (a version-1 reader refuses them by version instead of misreading them)
FORMAT_VERSION = 2
REST_FILE = "model-rest.safetensors"
ARCHITECTURES = ("llama", "qwen2", "mamba2", "nemotron_h", "bamba")
#: keep-size granularity field of each elastic component
GRANULARITY_FIELDS = {"mlp": "mlp_granularity", "attn": "attn_granularity", "ssm_head": "ssm_head_granularity",
                      "ssm_state": "ssm_state_granularity"}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja")  # transformers >= 4.5x writes the chat template to its own file


def write_config(part: Path, out_cfg: Mapping[str, Any], tokenizer_src: Path) -> None:
    """config.json of an artifact being written in `part`, and the tokenizer files copied from `tokenizer_src`."""
    (part / "config.json").write_text(json.dumps(out_cfg, indent=2, sort_keys=True) + "\n")
    for fname in TOKENIZER_FILES:
        if (tokenizer_src / fname).is_file():
            shutil.copyfile(tokenizer_src / fname, part / fname)


def publish(part: Path, out: Path) -> None:
    """Makes the finished `part` directory the artifact `out` (replacing an existing one, checked by the caller)."""
    if out.exists():
        shutil.rmtree(out)
    os.replace(part, out)


def layer_file(i: int) -> str:
    return f"model-layer-{i:04d}.safetensors"


@dataclass(frozen=True)
class ArtifactMeta:
    """The ``uniql`` section of an artifact's config.json."""

    format_version: int
    architecture: str                 # one of ARCHITECTURES
    max_rate: float                   # highest pruning rate the artifact serves
    importance: tuple[float, ...]     # block importance s_l per decoder layer (docs/design.md §3.4)
    mlp_granularity: int              # MLP keep sizes are multiples of this
    attn_granularity: int             # attention head-dim keep sizes are multiples of this (even)
    alloc_eps: float = 0.1
    alloc_max_prune: float = 0.85
    quantization: dict[str, Any] | None = None   # {"bits": 4, "group": g, "o_group": go, "embedding": ...}
    qk_layout: str = "interleaved"
    sorting: dict[str, Any] = field(default_factory=dict)  # scorer options used
    source: str = ""
    finetune: dict[str, Any] | None = None       # masked LoRA recovery record (uniql.finetune), None if not tuned
    ssm_state_granularity: int = 1    # Mamba2 state-dim keep sizes are multiples of this (per group)
    ssm_head_granularity: int = 1     # Mamba2 head-channel keep sizes are multiples of this (per head)

    def __post_init__(self) -> None:
        if not isinstance(self.format_version, int) or self.format_version < 1:
            raise FormatError(f"uniql.format_version must be a positive integer, got {self.format_version!r}")
        if self.format_version > FORMAT_VERSION:
            raise UnsupportedError(f"artifact format version {self.format_version} is newer than this uniql "
                                   f"supports ({FORMAT_VERSION}); upgrade uniql")
        if self.architecture not in ARCHITECTURES:
            raise UnsupportedError(f"artifact architecture {self.architecture!r} is not supported")
        if not (0.0 <= self.max_rate <= self.alloc_max_prune):
            raise FormatError(f"uniql.max_rate {self.max_rate} outside [0, {self.alloc_max_prune}]")
        if not self.importance or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.importance):
            raise FormatError("uniql.importance must be a non-empty list of finite numbers")
        for name in GRANULARITY_FIELDS.values():
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise FormatError(f"uniql.{name} must be a positive integer, got {v!r}")
        if self.attn_granularity % 2:
            raise FormatError(f"uniql.attn_granularity must be even (whole RoPE pairs), got {self.attn_granularity}")
        if self.qk_layout != "interleaved":
            raise FormatError(f"uniql.qk_layout must be 'interleaved', got {self.qk_layout!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "config.json") -> "ArtifactMeta":
        u = cfg.get("uniql")
        if not isinstance(u, dict):
            raise FormatError(f"{where}: no 'uniql' section; not a uniql artifact")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(u) - known)
        if unknown:
            if isinstance(u.get("format_version"), int) and u["format_version"] > FORMAT_VERSION:
                raise UnsupportedError(f"{where}: artifact format version {u['format_version']} is newer than "
                                       f"this uniql supports ({FORMAT_VERSION}); upgrade uniql")
            raise FormatError(f"{where}: unknown keys in the uniql section: {', '.join(unknown)}")
        imp = u.get("importance")
        if not isinstance(imp, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in imp):
            raise FormatError(f"{where}: invalid uniql section: importance must be a list of numbers")
        for key, kinds in (("max_rate", (int, float)), ("alloc_eps", (int, float)), ("alloc_max_prune", (int, float)),
                           ("quantization", (dict, type(None))), ("finetune", (dict, type(None))),
                           ("sorting", dict), ("architecture", str),
                           ("qk_layout", str), ("source", str)):
            if key in u and (not isinstance(u[key], kinds) or isinstance(u[key], bool)):
                raise FormatError(f"{where}: uniql.{key} has the wrong type ({type(u[key]).__name__})")
        for key in ("alloc_eps", "alloc_max_prune"):
            if key in u and not (0.0 < float(u[key]) <= 1.0):
                raise FormatError(f"{where}: uniql.{key} must be in (0, 1], got {u[key]!r}")
        try:
            d = dict(u)
            d["importance"] = tuple(float(v) for v in imp)
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise FormatError(f"{where}: invalid uniql section: {e}") from None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["importance"] = list(self.importance)
        if d["finetune"] is None:  # artifacts that were not fine-tuned keep the config they always had
            del d["finetune"]
        if self.architecture in ("llama", "qwen2"):  # no SSM components: the config they always had
            for key in ("ssm_state_granularity", "ssm_head_granularity"):
                del d[key]
        return d

    # ------------------------------------------------------------------ allocation ----
    def keep_ratios(self, rate: float) -> np.ndarray:
        """Per-layer keep ratios for a global pruning rate (C: softmax allocation, clamp)."""
        check_rate(rate, self.max_rate)
        if rate == 0.0:
            return np.ones(len(self.importance))
        return alloc_keep_ratios(np.asarray(self.importance, np.float64), 1.0 - rate, self.alloc_eps,
                                 self.alloc_max_prune)

    def layer_keeps(self, rate: float, full: Sequence[Mapping[str, int]]) -> list[dict[str, int]]:
        """Per-layer keep sizes at a global pruning rate: ``full[l]`` maps each elastic component of layer l
        (mlp, attn, ssm_head, ssm_state) to its full size; every component of a layer gets the layer's ratio."""
        ratios = self.keep_ratios(rate)
        if len(full) != len(ratios):
            raise FormatError(f"uniql.importance has {len(ratios)} entries, the model has {len(full)} layers")
        return [{c: keep_size(size, float(p), getattr(self, GRANULARITY_FIELDS[c])) for c, size in f.items()}
                for p, f in zip(ratios, full)]

    def keep_sizes(self, rate: float, intermediate: int, head_dim: int) -> list[tuple[int, int]]:
        """Per-layer (MLP keep k, attention head-dim keep r) of a transformer at a global pruning rate."""
        full = [{"mlp": intermediate, "attn": head_dim}] * len(self.importance)
        return [(k["mlp"], k["attn"]) for k in self.layer_keeps(rate, full)]


def file_stamps(d: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of the artifact's weight files: what a later partial re-read checks it still reads."""
    out = {}
    for p in sorted(Path(d).glob("model-*.safetensors")):
        st_ = p.stat()
        out[p.name] = (st_.st_size, st_.st_mtime_ns)
    return out


def check_rate(rate: float, max_rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
        raise RangeError(f"rate must be a finite number, got {rate!r}")
    if rate < 0.0 or rate > max_rate + 1e-12:
        raise RangeError(f"rate {rate} is outside [0, {max_rate}] (the artifact's max_rate)")
    return float(rate)


# ------------------------------------------------------------------------------- loading ----

def _own(a: np.ndarray) -> np.ndarray:
    """An aligned, C-contiguous copy (file views may be unaligned and are read-only)."""
    return np.array(a, order="C", copy=True)


def _float(f: Any, name: str) -> np.ndarray:
    """Tensor `name` as float32 (float16 converted by the C core); any other dtype is a FormatError naming it."""
    a = f.get(name)
    if a.dtype == np.float32:
        return _own(a)
    if a.dtype != np.float16:
        raise FormatError(f"artifact tensor {name!r} has dtype {a.dtype}; expected float32 or float16")
    out = np.empty(a.shape, np.float32)
    _C.convert(_own(a), out)
    return out


def _scales(f: Any, name: str) -> np.ndarray:
    """Group scales `name` of an int4 / int8 tensor as the runtime keeps them: float16 (the artifact's storage, read
    as is; float32 rounded by the C core). Another dtype, or a NaN / Inf / out-of-float16-range scale, is a
    FormatError naming the tensor."""
    a = f.get(name)
    if a.dtype not in (np.float16, np.float32):
        raise FormatError(f"artifact tensor {name!r} has dtype {a.dtype}; expected float16 (or float32)")
    try:
        return scales_f16(name, _own(a))
    except RangeError as e:
        raise FormatError(f"artifact tensor {e}") from None


def _shape_of(f: Any, name: str) -> tuple[int, ...]:
    if name not in f.keys():
        raise FormatError(f"artifact is missing tensor {name!r}")
    return tuple(int(v) for v in f.info(name)[1])


class _Reader:
    """Reads artifact tensors with prefix slicing (copies only what is kept), checking them against the
    uniql_tensors table of config.json."""

    FORMATS = ("q4", "q8", "f32", "f16")

    def __init__(self, d: Path, meta: ArtifactMeta, info: Mapping[str, Any]) -> None:
        self.d, self.meta, self.info = d, meta, info

    def _spec(self, name: str, col_segments: int) -> tuple[str, tuple[int, int], int]:
        spec = self.info.get(name)
        if not isinstance(spec, dict):
            raise FormatError(f"uniql_tensors has no valid entry for {name!r}")
        fmt, shape = spec.get("format"), spec.get("shape")
        if fmt not in self.FORMATS:
            raise FormatError(f"uniql_tensors[{name!r}]: unknown format {fmt!r} (expected one of {self.FORMATS})")
        if (not isinstance(shape, list) or len(shape) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            raise FormatError(f"uniql_tensors[{name!r}]: shape must be two positive integers, got {shape!r}")
        group = spec.get("group", 0)
        if fmt in ("q4", "q8"):
            if not isinstance(group, int) or isinstance(group, bool) or not 1 <= group < 2 ** 31:
                raise FormatError(f"uniql_tensors[{name!r}]: group must be a positive integer, got {group!r}")
            if spec.get("segments", 1) != col_segments or shape[1] % col_segments:
                raise FormatError(f"uniql_tensors[{name!r}]: segments {spec.get('segments')!r} do not match "
                                  f"the model ({col_segments} input segments of {shape[1]} columns)")
        return fmt, (shape[0], shape[1]), group

    def linear(self, f: Any, name: str, expect: tuple[int, int], rows: np.ndarray | slice | None = None,
               col_segments: int = 1, col_keep: int | None = None) -> Any:
        """Weight `name` (full shape `expect`, from the config) with a row selection and a per-segment column
        prefix (col_keep of each segment)."""
        fmt, (R, C), g = self._spec(name, col_segments)
        if (R, C) != tuple(expect):
            raise FormatError(f"uniql_tensors[{name!r}] has shape {(R, C)}, the config implies {tuple(expect)}")
        rows_sel = slice(None) if rows is None else rows
        seg = C // col_segments
        if fmt in ("q4", "q8"):
            return self._quantized(f, name, fmt, R, C, g, rows_sel, col_segments, col_keep)
        got = _shape_of(f, name + ".weight")
        if got != (R, C):
            raise FormatError(f"{name}.weight has shape {got}, the uniql_tensors table says {(R, C)}")
        w = _float(f, name + ".weight")[rows_sel]
        if col_keep is not None:
            w = w.reshape(w.shape[0], col_segments, seg)[:, :, :col_keep].reshape(w.shape[0], -1)
        return _own(w)


    @staticmethod
    def _quantized(f: Any, name: str, fmt: str, R: int, C: int, g: int, rows_sel: Any, col_segments: int,
                   col_keep: int | None) -> Q4 | Q8:
        """An int4 weight (format "q4": ``.qweight`` U8 (R, ceil(C / 2)), two codes a byte) or an int8 one ("q8":
        ``.qweight`` I8 (R, C)), with ``.scales`` F16 (R, segments * groups per segment), read with a row selection
        and a per-segment column prefix (the scales of the groups it touches)."""
        per_byte, dtype = (2, np.uint8) if fmt == "q4" else (1, np.int8)
        seg = C // col_segments
        gps = -(-seg // g)
        for suffix, want in ((".qweight", (R, -(-C // per_byte))), (".scales", (R, col_segments * gps))):
            got = _shape_of(f, name + suffix)
            if got != want:
                raise FormatError(f"{name}{suffix} has shape {got}, the uniql_tensors table implies {want}")
        codes = f.get(name + ".qweight")
        if codes.dtype != dtype:
            raise FormatError(f"artifact tensor {name + '.qweight'!r} has dtype {codes.dtype}; expected "
                              f"{np.dtype(dtype).name}")
        scales = _scales(f, name + ".scales")[rows_sel]
        codes = codes[rows_sel]
        cols = C
        if col_keep is not None and col_keep < seg:
            if per_byte == 2 and (col_keep % 2 or seg % 2):
                raise FormatError(f"{name}: int4 column prefix {col_keep} of segment {seg} must be even")
            kg = -(-col_keep // g)
            codes = codes.reshape(codes.shape[0], col_segments, seg // per_byte)[:, :, :col_keep // per_byte]
            codes = codes.reshape(codes.shape[0], -1)
            scales = scales.reshape(scales.shape[0], col_segments, gps)[:, :, :kg].reshape(scales.shape[0], -1)
            cols = col_segments * col_keep
        holder = Q4 if fmt == "q4" else Q8
        return holder(_own(codes), _own(scales), g, (int(codes.shape[0]), int(cols)))


def head_rows(n_heads: int, stored: int, keep: int) -> np.ndarray:
    """Rows of a (n_heads * stored)-row projection kept at head-dim keep: the first `keep` of each head."""
    return (np.arange(n_heads)[:, None] * stored + np.arange(keep)[None, :]).reshape(-1)


def mamba_keep_rows(config: Any, head_keep: int, state_keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a Mamba2 mixer keeps at head-channel keep P' and state-dim keep N' (stored sizes the config's H, P, G,
    N): (rows of in_proj [z | x | B | C | dt] -- the first P' channels of every head in z and x, the first N' state
    dims of every group in B and C, every dt row --, rows of conv1d [x | B | C], the kept head channels: the rows
    of the gated norm and the columns of out_proj). The loader, the live resize and the fine-tuning twin share it."""
    H, P, G, N = config.ssm_heads, config.ssm_head_dim, config.ssm_groups, config.ssm_state
    zi, bi = head_rows(H, P, head_keep), head_rows(G, N, state_keep)
    HP, GN = H * P, G * N
    rows = np.concatenate([zi, HP + zi, 2 * HP + bi, 2 * HP + GN + bi, 2 * HP + 2 * GN + np.arange(H)])
    return rows, np.concatenate([zi, HP + bi, HP + GN + bi]), zi


def read_meta(d: Path, cfg: Mapping[str, Any]) -> tuple[ArtifactMeta, dict[str, Any]]:
    meta = ArtifactMeta.from_config(cfg, str(d / "config.json"))
    tinfo = cfg.get("uniql_tensors")
    if not isinstance(tinfo, dict):
        raise FormatError(f"{d / 'config.json'}: missing 'uniql_tensors' table")
    return meta, tinfo


def full_sizes(config: Any) -> list[dict[str, int]]:
    """Full size of every elastic component per layer ({mlp, attn, ssm_head, ssm_state}: those the layer has) of a
    model config (:func:`uniql.models.runtime.model_config`)."""
    out = []
    for t in config.layer_types:
        f: dict[str, int] = {}
        if t == LAYER_MAMBA:
            f.update(ssm_head=config.ssm_head_dim, ssm_state=config.ssm_state)
        elif t == LAYER_ATTENTION:
            f["attn"] = config.head_dim
        if t == LAYER_MLP or config.ffn_after_mixer:
            f["mlp"] = config.intermediate_size
        out.append(f)
    return out


def qk_head_rows(rope: str, n_heads: int, d: int, r: int) -> np.ndarray:
    """Rows of a sorted (n_heads * d)-row q/k projection kept at head-dim keep r (uq_sort_qk_keep_rows per head:
    a prefix, or r/2 rotary + r/2 pass rows for partial RoPE)."""
    per = np.empty(r, np.int64)
    _C.qk_keep_rows(ROPE_CODES[rope], d, r, per)
    return (np.arange(n_heads)[:, None] * d + per[None, :]).reshape(-1)


def load_artifact(d: Path, cfg: Mapping[str, Any], rate: float = 0.0, *, max_seq: int | None = None,
                  tokenizer: Any = None, kv_dtype: str = "fp16") -> "ElasticModel":
    """Loads an artifact at a pruning rate: only the prefixes that rate needs are read into memory. One reader for
    every architecture: each layer's components (Mamba mixer, attention, MLP) are read at the layer's keep sizes
    under the family's tensor names (uniql.models.hybrid.HF_NAMES)."""
    from uniql.formats import safetensors as st
    from uniql.models.elastic_memory import keep_large_allocations_mapped
    from uniql.models.hybrid import HF_NAMES, rope_mode

    keep_large_allocations_mapped()  # freed weights (ElasticModel.resize) then leave the process at once
    meta, tinfo = read_meta(d, cfg)
    rate = check_rate(rate, meta.max_rate)
    if meta.architecture != cfg.get("model_type"):
        raise FormatError(f"uniql.architecture {meta.architecture!r} does not match model_type "
                          f"{cfg.get('model_type')!r}")
    hc = model_config(cfg)
    full = full_sizes(hc)
    if len(meta.importance) != len(full):
        raise FormatError(f"uniql.importance has {len(meta.importance)} entries, the model has {len(full)} layers")
    names = HF_NAMES[hc.model_type]
    prefix = "backbone.layers." if any(k.startswith("backbone.layers.") for k in tinfo) else "model.layers."
    keeps = meta.layer_keeps(rate, full)
    reader = _Reader(d, meta, tinfo)
    n = hc.hidden_size
    rope = rope_mode(hc) if LAYER_ATTENTION in hc.layer_types else "none"
    tensors: dict[str, Any] = {}
    freq_maps: list[np.ndarray | None] = []
    rot_rows: list[int | None] = []

    def vec(f: Any, name: str, idx: Any = None) -> None:
        if name in f.keys():
            v = _float(f, name)
            tensors[name] = v if idx is None else _own(v[idx])

    for i, (t, ks) in enumerate(zip(hc.layer_types, keeps)):
        path = d / layer_file(i)
        if not path.is_file():
            raise FormatError(f"artifact is missing {path.name}")
        p = f"{prefix}{i}."
        fm, rr = None, None
        with st.safe_open(path) as f:
            tensors[p + names["norm"]] = _float(f, p + names["norm"])
            if t == LAYER_MAMBA:
                H, P, G, N = hc.ssm_heads, hc.ssm_head_dim, hc.ssm_groups, hc.ssm_state
                m, Pk, Nk = p + names["mamba"], ks["ssm_head"], ks["ssm_state"]
                rows, conv, zi = mamba_keep_rows(hc, Pk, Nk)
                HP, GN = H * P, G * N
                tensors[m + "in_proj.weight"] = reader.linear(f, m + "in_proj", (2 * HP + 2 * GN + H, n), rows)
                tensors[m + "out_proj.weight"] = reader.linear(f, m + "out_proj", (n, HP), None, col_segments=H,
                                                               col_keep=Pk)
                vec(f, m + "in_proj.bias", rows)
                vec(f, m + "out_proj.bias")
                vec(f, m + "conv1d.weight", conv)
                vec(f, m + "conv1d.bias", conv)
                vec(f, m + "norm.weight", zi)
                for key in ("dt_bias", "A_log", "D"):
                    tensors[m + key] = _float(f, m + key)
            elif t == LAYER_ATTENTION:
                a, r, nh, nkv, hd = p + names["attn"], ks["attn"], hc.num_heads, hc.num_kv_heads, hc.head_dim
                qr, kr, vr = qk_head_rows(rope, nh, hd, r), qk_head_rows(rope, nkv, hd, r), head_rows(nkv, hd, r)
                for short, rows_, heads in (("q", qr, nh), ("k", kr, nkv), ("v", vr, nkv)):
                    tensors[f"{a}{short}_proj.weight"] = reader.linear(f, f"{a}{short}_proj", (heads * hd, n), rows_)
                    vec(f, f"{a}{short}_proj.bias", rows_)
                tensors[a + "o_proj.weight"] = reader.linear(f, a + "o_proj", (n, nh * hd), None, col_segments=nh,
                                                             col_keep=r)
                vec(f, a + "o_proj.bias")
                if rope != "none":
                    npairs = hd // 2 if rope == "full" else hd // 4
                    fmap = f.get(a + "rope_freq")
                    if fmap.dtype != np.int32 or fmap.shape != (nkv, npairs):
                        raise FormatError(f"artifact tensor {a + 'rope_freq'!r} must be int32 {(nkv, npairs)}, "
                                          f"got {fmap.dtype} {fmap.shape}")
                    rr = r if rope == "full" else r // 2
                    fm = _own(fmap[:, : rr // 2])
            if t == LAYER_MLP or hc.ffn_after_mixer:
                fp, k = p + names["mlp"], ks["mlp"]
                DI = hc.intermediate_size
                for proj in (("gate_proj", "up_proj") if hc.mlp_act == "silu_gated" else ("up_proj",)):
                    tensors[fp + proj + ".weight"] = reader.linear(f, fp + proj, (DI, n), slice(0, k))
                    vec(f, fp + proj + ".bias", slice(0, k))
                tensors[fp + "down_proj.weight"] = reader.linear(f, fp + "down_proj", (n, DI), None, col_keep=k)
                vec(f, fp + "down_proj.bias")
                if t != LAYER_MLP:
                    tensors[p + names["ffn_norm"]] = _float(f, p + names["ffn_norm"])
        freq_maps.append(fm)
        rot_rows.append(rr)
    tensors.update(_read_rest(d, reader, hc.vocab_size, n, bool(hc.tie_word_embeddings),
                              names["embed"], names["final"]))
    # a v bias is folded into o_proj by the quantization-aware SVD: the artifact config says attention_bias for q/k
    model = ElasticModel.from_hf_tensors(hc, tensors, tokenizer, freq_maps=freq_maps, rot_rows=rot_rows,
                                         qk_layout="interleaved", max_seq=max_seq, kv_dtype=kv_dtype)
    model._init_elastic(meta, rate, d, full)
    return model


class ElasticModel(Model):
    """A model loaded from an artifact (any architecture): ``set_rate`` switches to any rate between the loaded one
    and the artifact's maximum, live between tokens, without reloading (the KV cache / SSM state stays valid): every
    layer's keeps (MLP channels, attention head dims, SSM head channels and state dims) change at once."""

    meta: ArtifactMeta

    def _init_elastic(self, meta: ArtifactMeta, rate: float, path: Path, full: list[dict[str, int]]) -> None:
        self.meta = meta
        self.loaded_rate = rate
        self.path = path
        self._rate = rate
        self._full = full
        self._file_stamps = file_stamps(path)  # a grow (resize to a lower rate) refuses files changed since

    @property
    def rate(self) -> float:
        return self._rate

    def keep_sizes(self, rate: float) -> list[dict[str, int]]:
        """Per-layer keeps ({component: size}, as :meth:`keep`) at a global pruning rate."""
        return self.meta.layer_keeps(rate, self._full)

    def set_rate(self, rate: float) -> None:
        """Switches to another pruning rate >= the loaded one (live: the kernels' sizes change, and every int4
        o_proj / Mamba out_proj below its stored keep gets a compact copy of its kept columns, ~0.4 ms per 8B-shaped
        layer; the KV cache / SSM state stays valid). Lower rates need the weights the load skipped:
        ``resize(rate)`` re-reads them (and ``resize`` to a higher rate also releases memory)."""
        rate = check_rate(rate, self.meta.max_rate)
        if rate < self.loaded_rate - 1e-12:
            raise RangeError(f"rate {rate} is below the rate this model was loaded at ({self.loaded_rate}); "
                             "model.resize(rate) re-reads the missing weights")
        sizes = self.keep_sizes(rate)
        for i, ks in enumerate(sizes):
            st = self.stored(i)
            if any(v > st[c] for c, v in ks.items()):  # cannot happen: allocation is monotone in the rate
                raise RangeError(f"layer {i}: keep sizes {ks} exceed the loaded {st}")
        for i, ks in enumerate(sizes):
            self.set_keep(i, **ks)
        self._rate = rate

    def resize(self, rate: float, tokens: Any = None) -> dict[str, Any]:
        """Switches to `rate` and makes the resident weights those of `rate`: a higher rate releases the rows and
        columns beyond the new keeps (no file read), a lower one re-reads only the missing parts from the
        artifact (see :mod:`uniql.models.elastic_memory`). ``tokens``: the ids of the current sequence; an
        attention-only model keeps its KV cache and re-prefills only when head dims grew, a model with Mamba layers
        rebuilds its SSM / conv states and KV caches and so needs them in the middle of a sequence. Returns a
        report dict."""
        from uniql.models.elastic_memory import resize

        return resize(self, rate, tokens)

    def parameter_count(self, rate: float | None = None) -> int:
        """Parameters used at `rate` (default: the current one): every linear at its keep sizes, conv1d, the
        gated norm, dt_bias / A_log / D, norms, embedding (and lm_head when untied); biases excluded."""
        c = self.config
        n = c.hidden_size
        total = c.vocab_size * n * (1 if c.tie_word_embeddings else 2) + n
        total += n * n if self._final_mix is not None else 0  # the final mix of a rotated tied model
        for ks in self.keep_sizes(self._rate if rate is None else rate):
            total += n
            if "ssm_head" in ks:
                H, G, Pk, Nk = c.ssm_heads, c.ssm_groups, ks["ssm_head"], ks["ssm_state"]
                total += n * (2 * H * Pk + 2 * G * Nk + H) + (H * Pk + 2 * G * Nk) * c.conv_kernel + 3 * H \
                    + H * Pk + n * H * Pk
            if "attn" in ks:
                total += n * ks["attn"] * (2 * c.num_heads + 2 * c.num_kv_heads)
            if "mlp" in ks:
                total += (3 if c.mlp_act == "silu_gated" else 2) * n * ks["mlp"]
                if c.ffn_after_mixer:
                    total += n
        return total


def _read_rest(d: Path, reader: _Reader, vocab: int, n: int, tied: bool,
               embed: Any, final: Any) -> dict[str, Any]:
    """Embedding, final norm and (untied) lm_head from model-rest.safetensors; `embed`/`final`: candidate names."""
    from uniql.formats import safetensors as st

    rest = d / REST_FILE
    if not rest.is_file():
        raise FormatError(f"artifact is missing {REST_FILE}")
    out: dict[str, Any] = {}
    with st.safe_open(rest) as f:
        keys = set(f.keys())
        cands = (embed,) if isinstance(embed, str) else tuple(embed)
        e = next((c for c in cands if c in keys or c[: -len(".weight")] + ".qweight" in keys), cands[0])
        out[e] = reader.linear(f, e[: -len(".weight")], (vocab, n))
        cands = (final,) if isinstance(final, str) else tuple(final)
        fn = next((c for c in cands if c in keys), cands[0])
        out[fn] = _float(f, fn)
        mix = final_mix_name(fn)
        if mix in keys:
            mx = f.get(mix)  # float16 (quantized artifacts) stays float16 in memory: the runtime reads it as is
            out[mix] = _own(mx) if mx.dtype == np.float16 else _float(f, mix)
        elif isinstance(rot := reader.meta.sorting.get("rotation"), dict) and rot.get("final_mix"):
            raise FormatError(f"artifact config names a final mix but {REST_FILE} has no {mix!r}")
        if not tied:
            out["lm_head.weight"] = reader.linear(f, "lm_head", (vocab, n))
    return out


def parameter_count_full(cfg: Mapping[str, Any]) -> int:
    """Parameters of the uncompressed transformer (biases excluded)."""
    n, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    d = cfg.get("head_dim") or n // nh
    di, V = cfg["intermediate_size"], cfg["vocab_size"]
    tied = cfg.get("tie_word_embeddings", False)
    return V * n * (1 if tied else 2) + n + L * (2 * n + n * d * (2 * nh + 2 * nkv) + 3 * n * di)


def artifact_bytes(d: Path, files: Sequence[str] | None = None) -> int:
    names = files if files is not None else [p.name for p in d.glob("model-*.safetensors")]
    return sum((d / n).stat().st_size for n in names)

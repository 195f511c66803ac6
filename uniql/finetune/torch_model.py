"""PyTorch twin of the C runtime for a sorted, unquantized Llama/Qwen2 artifact, with masked LoRA (docs/design.md
§3.7). Used by :mod:`uniql.finetune`; needs the optional extra ``uniql[torch]``.

Per layer at keep sizes (k = MLP keep, r = attention head-dim keep; stored sizes K = D_I, R = d):

    h = RMSNorm(x) * w_attn
    q = h Wq[sel_r]^T + bq[sel_r]        sel_r = the first r rows of every head (r/2 whole RoPE pairs: Q/K rows are
    k = h Wk[sel_r]^T + bk[sel_r]        stored pair-interleaved in sorted order, rows 2j, 2j+1 = pair j)
    v = h Wv[sel_r]^T                    (the QA-SVD basis: the first r value dims of every KV head)
    q, k <- RoPE: pair j of KV group g rotates at the original frequency rope_freq[g][j] (Llama-3 scaling
            included); angle = fl32(inv_freq_f32 * pos) as the runtime computes it
    a = softmax(q k^T / sqrt(d) + causal) v        d = the ORIGINAL head dim at every rate; GQA
    x = x + a Wo[:, sel_r]^T + bo        sel_r = the first r columns of every head's d-wide segment
    h = RMSNorm(x) * w_mlp ;  x = x + (silu(h Wg[:k]^T) * (h Wu[:k]^T)) Wd[:, :k]^T
    logits = RMSNorm(x) * w_final  W_lm^T   (W_lm = the embedding when tied)

This is exactly what ``uniql.load(artifact, rate)`` computes (tested to float32 tolerance): the keep masks of
training are the deployment's. A mask is applied by *selecting* the kept channels, which equals multiplying the
dropped ones by zero -- they contribute nothing and receive no gradient -- without computing them.

LoRA on every linear of the blocks: ``y = x W^T + (alpha/rank) (x A^T) B^T``, A (rank, in) uniform in
+-1/sqrt(in) (PEFT's kaiming_uniform(a=sqrt(5))), B (out, rank) zero, so the model starts as the artifact. The
same selection applies to the patch: B's rows of dropped outputs (q/k/v/gate/up) and A's columns of dropped inputs
(o/down) take no part at that rate. Base weights are frozen buffers. ``lora_dropout`` (the reference's 0.05) drops
the patch's input in training mode only; ``lora_enabled = False`` computes the artifact alone (the distillation
teacher: the same weights at rate 0 without the patches, one extra forward).

Device: the module moves with ``.to(device)`` like any other (index tensors are made on the weights' device), and
computes in float32 or under ``torch.autocast`` (bf16 on a GPU; the LoRA weights stay float32 masters).
``forward(ids, cache=..., start=...)`` keeps per-layer K/V for incremental decoding (teacher-generated text).

Mamba2 / Nemotron-H / Bamba artifacts have their own twin with the same interface,
:class:`uniql.finetune.torch_hybrid.HybridTorchModel`; :func:`twin_model` / :func:`load_twin` pick the family's.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uniql.formats import safetensors as st
from uniql.formats.artifact import REST_FILE, ArtifactMeta, layer_file, read_meta
from uniql.errors import FormatError, InvalidArgumentError, UnsupportedError
from uniql.models.runtime import TransformerConfig

__all__ = ["LINEARS", "LoRA", "LoRAHost", "ElasticTorchModel", "read_float_artifact", "read_float_tensors",
           "twin_model", "load_twin"]

# short name -> tensor name inside a layer; "rows" = the prunable axis is the output, "cols" = the input
LINEARS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
           "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def read_float_tensors(path: str | Path) -> tuple[dict[str, Any], ArtifactMeta, list[dict[str, np.ndarray]],
                                                 dict[str, np.ndarray]]:
    """(config, meta, per-layer tensors under their full names, rest tensors) of an unquantized artifact of any
    family, every float tensor as float32 (float16 converted exactly). An int4 artifact raises UnsupportedError."""
    from uniql import _C
    from uniql.formats.checkpoint import read_raw_config

    d = Path(path)
    cfg = read_raw_config(d)
    meta, tinfo = read_meta(d, cfg)
    q4 = sorted(n for n, s in tinfo.items() if isinstance(s, dict) and s.get("format") == "q4")
    if meta.quantization is not None or q4:
        raise UnsupportedError(f"{d} is an int4 artifact; fine-tuning needs an unquantized one: compress with "
                               "quantize=False, fine-tune, then quantize with uniql.quantize_artifact")
    if meta.architecture in ("llama", "qwen2"):
        L = TransformerConfig.from_hf(cfg).num_hidden_layers
    else:
        from uniql.models.hybrid import HybridConfig
        L = HybridConfig.from_hf(cfg).num_hidden_layers
    if len(meta.importance) != L:
        raise FormatError(f"uniql.importance has {len(meta.importance)} entries, the model has {L} layers")

    def f32(a: np.ndarray) -> np.ndarray:
        if a.dtype == np.float16:
            out = np.empty(a.shape, np.float32)
            _C.convert(np.ascontiguousarray(a), out)
            return out
        return a

    layers = []
    for i in range(L):
        p = d / layer_file(i)
        if not p.is_file():
            raise FormatError(f"artifact is missing {p.name}")
        layers.append({k: f32(v) for k, v in st.load_file(p).items()})
    if not (d / REST_FILE).is_file():
        raise FormatError(f"artifact is missing {REST_FILE}")
    rest = {k: f32(v) for k, v in st.load_file(d / REST_FILE).items()}
    return cfg, meta, layers, rest


def read_float_artifact(path: str | Path) -> tuple[dict[str, Any], ArtifactMeta, TransformerConfig,
                                                   list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """(config, meta, transformer config, per-layer tensors under their full names, rest tensors) of an
    unquantized Llama/Qwen2 artifact (see :func:`read_float_tensors`)."""
    cfg, meta, layers, rest = read_float_tensors(path)
    if meta.architecture not in ("llama", "qwen2"):
        raise UnsupportedError(f"read_float_artifact reads llama and qwen2 artifacts, not {meta.architecture!r} "
                               "(use read_float_tensors)")
    return cfg, meta, TransformerConfig.from_hf(cfg), layers, rest


def twin_model(cfg: Mapping[str, Any], meta: ArtifactMeta, layers: Sequence[Mapping[str, np.ndarray]],
               rest: Mapping[str, np.ndarray], **kw: Any) -> Any:
    """The PyTorch twin of an artifact's family: :class:`ElasticTorchModel` (Llama, Qwen2) or
    :class:`uniql.finetune.torch_hybrid.HybridTorchModel` (Mamba2, Nemotron-H, Bamba); ``kw``: rank, alpha,
    seed, max_seq, lora_dropout."""
    if meta.architecture in ("llama", "qwen2"):
        return ElasticTorchModel(cfg, meta, TransformerConfig.from_hf(cfg), layers, rest, **kw)
    from uniql.finetune.torch_hybrid import HybridTorchModel

    return HybridTorchModel(cfg, meta, layers, rest, **kw)


def load_twin(path: str | Path, **kw: Any) -> Any:
    """:func:`twin_model` of an unquantized artifact directory."""
    cfg, meta, layers, rest = read_float_tensors(path)
    return twin_model(cfg, meta, layers, rest, **kw)


def _inv_freq(c: TransformerConfig) -> np.ndarray:
    """inv_freq (d/2,) float32 exactly as the runtime computes it (float64, Llama-3 scaling, then rounded)."""
    d = c.head_dim
    out = np.empty(d // 2, np.float32)
    for f in range(d // 2):
        x = 1.0 / math.pow(c.rope_theta, (2.0 * f) / d)
        if c.rope_type == "llama3":
            old, lo, hi = float(c.rope_original_max_position_embeddings), c.rope_low_freq_factor, \
                c.rope_high_freq_factor
            wl = 2.0 * math.pi / x
            if wl > old / lo:
                x = x / c.rope_factor
            elif not (wl < old / hi):
                sm = (old / wl - lo) / (hi - lo)
                x = (1.0 - sm) * x / c.rope_factor + sm * x
        out[f] = x
    return out


class LoRA(nn.Module):
    """A rank-r patch of one linear: delta W = scale * B A."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.A = nn.Parameter(torch.empty(rank, in_features).uniform_(-bound, bound, generator=generator))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = float(alpha) / float(rank)

    def delta(self) -> torch.Tensor:
        return self.scale * (self.B @ self.A)


def select_block(W: torch.Tensor, rows: torch.Tensor | slice | None, cols: torch.Tensor | slice | None) -> torch.Tensor:
    if rows is not None:
        W = W[rows] if isinstance(rows, slice) else W.index_select(0, rows)
    if cols is not None:
        W = W[:, cols] if isinstance(cols, slice) else W.index_select(1, cols)
    return W


class LoRAHost:
    """The LoRA bookkeeping of the twins (:class:`ElasticTorchModel`, the hybrid twin): patches in ``self.lora``
    under ``l<layer>_<linear>`` keys, each patching the buffer ``l<layer>_<linear>_w``."""

    lora: nn.ModuleDict
    lora_enabled: bool
    lora_dropout: float
    training: bool
    embed: torch.Tensor
    final_mix: torch.Tensor | None

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def _buf(self, name: str, src: Mapping[str, np.ndarray], key: str) -> None:
        """A float32 copy of ``src[key]`` as the non-persistent buffer ``name`` (FormatError if missing)."""
        if key not in src:
            raise FormatError(f"artifact is missing tensor {key!r}")
        buf = torch.from_numpy(np.array(src[key], np.float32))
        self.register_buffer(name, buf, persistent=False)  # type: ignore[attr-defined]  # an nn.Module's

    def _final_mix_buf(self, src: Mapping[str, np.ndarray], key: str) -> None:
        """The final mix (uniql.compress.rotate; (hidden, hidden)) as buffer ``final_mix``, or None when the
        artifact has none."""
        if key in src:
            self._buf("final_mix", src, key)
        else:
            self.register_buffer("final_mix", None, persistent=False)  # type: ignore[attr-defined]

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input: the final-norm output times the final mix^T when there is one (as the runtime)."""
        return x if self.final_mix is None else F.linear(x, self.final_mix.to(x.dtype))

    def _linear(self, i: int, s: str, x: torch.Tensor, rows: Any = None, cols: Any = None) -> torch.Tensor:
        """Linear ``s`` of layer i on x with the kept output rows / input columns, plus its LoRA patch (with
        dropout while training) when patches are enabled."""
        W = select_block(getattr(self, f"l{i}_{s}_w"), rows, cols)
        b = getattr(self, f"l{i}_{s}_b", None)
        if b is not None and rows is not None:
            b = b[rows] if isinstance(rows, slice) else b.index_select(0, rows)
        y = F.linear(x, W, b)
        key = f"l{i}_{s}"
        if self.lora_enabled and key in self.lora:
            lo = self.lora[key]
            A = select_block(lo.A, None, cols)
            B = select_block(lo.B, rows, None)
            xl = F.dropout(x, self.lora_dropout, training=True) if self.training and self.lora_dropout > 0 else x
            y = y + lo.scale * F.linear(F.linear(xl, A), B)
        return y

    def lora_parameters(self) -> list[nn.Parameter]:
        return list(self.lora.parameters())

    def lora_state(self) -> dict[str, np.ndarray]:
        """The patches as float32 arrays: ``<layer key>.A`` (rank, in) and ``<layer key>.B`` (out, rank)."""
        out = {}
        for key, lo in self.lora.items():
            out[key + ".A"] = lo.A.detach().float().cpu().numpy().copy()
            out[key + ".B"] = lo.B.detach().float().cpu().numpy().copy()
        return out

    @torch.no_grad()
    def load_lora_state(self, state: Mapping[str, Any]) -> None:
        """Sets the patches from :meth:`lora_state` arrays (same keys and shapes, else FormatError)."""
        want = {k + s for k in self.lora for s in (".A", ".B")}
        if set(state) != want:
            missing, extra = sorted(want - set(state))[:3], sorted(set(state) - want)[:3]
            raise FormatError(f"LoRA state does not match the model (missing {missing}, unexpected {extra})")
        for key, lo in self.lora.items():
            for name in ("A", "B"):
                p = getattr(lo, name)
                v = torch.as_tensor(np.asarray(state[f"{key}.{name}"]))
                if tuple(v.shape) != tuple(p.shape):
                    raise FormatError(f"LoRA {key}.{name}: shape {tuple(v.shape)} != {tuple(p.shape)}")
                p.copy_(v.to(p.dtype))

    @torch.no_grad()
    def merge_(self) -> None:
        """W += (alpha/rank) B A for every patch, then drops the patches (the model keeps its function)."""
        for key, lo in self.lora.items():
            W = getattr(self, key + "_w")
            W += lo.delta()
        self.lora = nn.ModuleDict()


class ElasticTorchModel(LoRAHost, nn.Module):
    """The artifact's function at per-layer keep sizes, in PyTorch (float32), optionally with LoRA patches.

    ``set_rate(rate)`` uses the artifact's allocation (``ArtifactMeta.keep_sizes``, the C call the loader uses);
    ``set_keep(sizes)`` sets (k, r) per layer directly. ``forward(ids)``: (B, T) int64 -> logits (B, T, vocab).
    """

    def __init__(self, cfg: Mapping[str, Any], meta: ArtifactMeta, tc: TransformerConfig,
                 layers: Sequence[Mapping[str, np.ndarray]], rest: Mapping[str, np.ndarray], *, rank: int = 0,
                 alpha: float = 16.0, seed: int = 0, max_seq: int = 2048, lora_dropout: float = 0.0) -> None:
        super().__init__()
        if not (0.0 <= float(lora_dropout) < 1.0):
            raise InvalidArgumentError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
        self.lora_dropout = float(lora_dropout)
        self.lora_enabled = True
        self.hf_config = dict(cfg)
        self.meta, self.tc = meta, tc
        L, nh, nkv, d = tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim
        self.rank, self.alpha = int(rank), float(alpha)
        gen = torch.Generator().manual_seed(int(seed))
        self.names: list[dict[str, str]] = []   # per layer: short -> full tensor name prefix
        for i in range(L):
            lay, p = layers[i], f"model.layers.{i}."
            names = {s: p + n for s, n in LINEARS.items()}
            self.names.append(names)
            for norm in ("input_layernorm.weight", "post_attention_layernorm.weight"):
                self._buf(f"l{i}_{norm.split('.')[0]}", lay, p + norm)
            for s, n in names.items():
                self._buf(f"l{i}_{s}_w", lay, n + ".weight")
                if n + ".bias" in lay:
                    self._buf(f"l{i}_{s}_b", lay, n + ".bias")
            fm = lay.get(p + "self_attn.rope_freq")
            if fm is None or fm.shape != (nkv, d // 2):
                raise FormatError(f"layer {i}: rope_freq must have shape {(nkv, d // 2)}, got "
                                  f"{None if fm is None else fm.shape}")
            self.register_buffer(f"l{i}_freq", torch.from_numpy(np.asarray(fm, np.int64)), persistent=False)
        self._buf("embed", rest, "model.embed_tokens.weight")
        self._buf("final_norm", rest, "model.norm.weight")
        self._final_mix_buf(rest, "model.norm.mix")
        if not tc.tie_word_embeddings:
            self._buf("lm_head", rest, "lm_head.weight")
        self.lora = nn.ModuleDict()
        if self.rank > 0:
            for i in range(L):
                for s in LINEARS:
                    out_f, in_f = getattr(self, f"l{i}_{s}_w").shape
                    self.lora[f"l{i}_{s}"] = LoRA(out_f, in_f, self.rank, self.alpha, gen)
        inv = torch.from_numpy(_inv_freq(tc))
        pos = torch.arange(max_seq, dtype=torch.float32)
        ang = pos[:, None] * inv[None, :]                        # float32 product, as the runtime
        self.register_buffer("cos", torch.cos(ang.double()).float(), persistent=False)   # (max_seq, d/2)
        self.register_buffer("sin", torch.sin(ang.double()).float(), persistent=False)
        self.max_seq = int(max_seq)
        self._idx: dict[tuple[int, int, str], torch.Tensor] = {}
        self.keeps: list[tuple[int, int]] = [(tc.intermediate_size, d)] * L
        self.rate: float | None = 0.0

    @classmethod
    def from_artifact(cls, path: str | Path, *, rank: int = 0, alpha: float = 16.0, seed: int = 0,
                      max_seq: int = 2048, lora_dropout: float = 0.0) -> "ElasticTorchModel":
        cfg, meta, tc, layers, rest = read_float_artifact(path)
        return cls(cfg, meta, tc, layers, rest, rank=rank, alpha=alpha, seed=seed, max_seq=max_seq,
                   lora_dropout=lora_dropout)

    # ------------------------------------------------------------------------------ keep sizes ----
    def set_rate(self, rate: float) -> None:
        """Per-layer keep sizes of a global pruning rate, from the artifact's allocation (as the loader)."""
        self.keeps = [tuple(map(int, kr)) for kr in self.meta.keep_sizes(rate, self.tc.intermediate_size,
                                                                          self.tc.head_dim)]
        self.rate = float(rate)

    def set_keep(self, sizes: Sequence[tuple[int, int]]) -> None:
        tc = self.tc
        if len(sizes) != tc.num_hidden_layers:
            raise InvalidArgumentError(f"{len(sizes)} keep sizes for {tc.num_hidden_layers} layers")
        for i, (k, r) in enumerate(sizes):
            if not (1 <= k <= tc.intermediate_size) or not (2 <= r <= tc.head_dim) or r % 2:
                raise InvalidArgumentError(f"layer {i}: keep sizes ({k}, {r}) out of range")
        self.keeps = [(int(k), int(r)) for k, r in sizes]
        self.rate = None

    def _head_idx(self, heads: int, r: int) -> torch.Tensor:
        """Indices of the first r of every head's d rows (columns of o_proj)."""
        dev = self.device
        key = (heads, r, str(dev))
        if key not in self._idx:
            d = self.tc.head_dim
            ar = torch.arange(heads, device=dev)[:, None] * d + torch.arange(r, device=dev)[None, :]
            self._idx[key] = ar.reshape(-1)
        return self._idx[key]

    # --------------------------------------------------------------------------------- forward ----
    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.tc.rms_norm_eps))

    def _rope(self, x: torch.Tensor, fm: torch.Tensor, T: int, start: int = 0) -> torch.Tensor:
        """x (B, T, H, r) pair-interleaved at positions start..start+T-1; fm (H, r/2) frequency index of each
        pair."""
        c = self.cos[start:start + T][:, fm]            # (T, H, r/2)
        s = self.sin[start:start + T][:, fm]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)

    def forward(self, ids: torch.Tensor, cache: list[Any] | None = None, start: int = 0) -> torch.Tensor:
        """Logits (B, T, vocab) of ids (B, T) at positions start..start+T-1. ``cache``: a list (empty at first,
        then one (K, V) per layer) that receives each layer's K/V; with ``start > 0`` it must hold the K/V of the
        first ``start`` positions and T must be 1 (incremental decoding)."""
        if ids.ndim == 1:
            ids = ids[None]
        B, T = ids.shape
        if start + T > self.max_seq:
            raise InvalidArgumentError(f"sequence of {start + T} tokens exceeds max_seq {self.max_seq}")
        if start and (cache is None or T != 1):
            raise InvalidArgumentError("start > 0 needs the cache of the earlier positions and one new token")
        tc = self.tc
        nh, nkv, d = tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim
        grp = nh // nkv
        x = F.embedding(ids, self.embed)
        for i, (k, r) in enumerate(self.keeps):
            h = self._rms(x, getattr(self, f"l{i}_input_layernorm"))
            rows_q, rows_kv = self._head_idx(nh, r), self._head_idx(nkv, r)
            full = r == d
            q = self._linear(i, "q", h, None if full else rows_q).view(B, T, nh, r)
            kk = self._linear(i, "k", h, None if full else rows_kv).view(B, T, nkv, r)
            v = self._linear(i, "v", h, None if full else rows_kv).view(B, T, nkv, r)
            fm = getattr(self, f"l{i}_freq")[:, : r // 2]          # (nkv, r/2)
            q = self._rope(q, fm.repeat_interleave(grp, 0), T, start)
            kk = self._rope(kk, fm, T, start)
            q, kk, v = q.transpose(1, 2), kk.transpose(1, 2), v.transpose(1, 2)
            if cache is not None:
                if start:
                    pk, pv = cache[i]
                    kk, v = torch.cat((pk, kk.to(pk.dtype)), 2), torch.cat((pv, v.to(pv.dtype)), 2)
                    cache[i] = (kk, v)
                elif len(cache) > i:
                    cache[i] = (kk, v)
                else:
                    cache.append((kk, v))
            if grp > 1:
                kk, v = kk.repeat_interleave(grp, 1), v.repeat_interleave(grp, 1)
            a = F.scaled_dot_product_attention(q, kk, v, is_causal=not start, scale=1.0 / math.sqrt(d))
            a = a.transpose(1, 2).reshape(B, T, nh * r)
            x = x + self._linear(i, "o", a, None, None if full else rows_q)
            h = self._rms(x, getattr(self, f"l{i}_post_attention_layernorm"))
            sk = None if k == tc.intermediate_size else slice(0, k)
            z = F.silu(self._linear(i, "gate", h, sk)) * self._linear(i, "up", h, sk)
            x = x + self._linear(i, "down", z, None, sk)
        x = self._mix(self._rms(x, self.final_norm))
        head = self.embed if tc.tie_word_embeddings else self.lm_head
        return F.linear(x, head)

    def weights(self) -> dict[str, np.ndarray]:
        """The block linears' full (unpruned) weights as float32 arrays under their artifact names (merged ones
        after :meth:`merge_`)."""
        out = {}
        for i, names in enumerate(self.names):
            for s, n in names.items():
                out[n + ".weight"] = getattr(self, f"l{i}_{s}_w").detach().cpu().numpy().copy()
        return out

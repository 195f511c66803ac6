"""The PyTorch twin of the C runtime: one model class for every family (Llama, Qwen2, Mamba2, Nemotron-H, Bamba)
of a sorted, unquantized artifact, at any per-layer keep sizes, with masked LoRA (docs/design.md §3.7). The model
:mod:`uniql.finetune` trains; needs the optional extra ``uniql[torch]``.

It is built from the layer description the runtime uses (:func:`uniql.models.runtime.model_config`: the layer
kinds, whether an MLP follows the mixer, the MLP activation, RoPE over all / half / none of a head; tensor names
from :data:`uniql.models.hybrid.HF_NAMES`): one embedding, one loop over layers, each layer one or two residual
blocks ``x = x + body(RMSNorm(x) * w)`` whose body is a component module of its kind --

    :class:`Attention` (``attn`` keep r of head dim d; Llama, Qwen2, Nemotron-H ``*``, Bamba):
        q, k = h W[rows]^T (+ b[rows]), rows = the first r of every head (no RoPE, full RoPE) or, with partial RoPE
        (Bamba), the first r/2 rotary rows (pair-interleaved: rows 2j, 2j+1 = RoPE pair j) and the first r/2 pass
        rows (stored from d/2 on); v = the first r rows of every KV head. RoPE on the kept rotary rows: pair j of
        KV group g at the original frequency rope_freq[g][j], inv_freq = theta^(-2f / rope_dim) (Llama-3
        scaling included), angle = fl32(inv_freq * pos) as the runtime computes it.
        a = causal GQA softmax(q k^T / sqrt(d)) v (d the ORIGINAL head dim at every rate);
        out = a W_o[:, the first r columns of every head's d-wide segment]^T (+ b_o)
    :class:`Mamba2Mixer` (``ssm_head`` keep P' of P channels per head, ``ssm_state`` keep N' of N per group):
        [z | x | B | C | dt] = h W_in[rows]^T (+ b_in[rows]), rows = z and x rows of the first P' channels of every
        head, B and C rows of the first N' state dims of every group, all H dt rows;
        x, B, C = silu(causal depthwise conv1d over the kept channels);
        Delta = clamp(softplus(dt + dt_bias), dt_min, dt_max); A = -exp(A_log); per head h (group g), channel p,
        state dim n: S_t[p, n] = exp(Delta_t A) S_{t-1}[p, n] + Delta_t x_t[p] B_t[n], y_t[p] = C_t . S_t[p] +
        D x_t[p] (the chunked SSD form, :func:`ssd_scan`; the kept channels and state dims do not depend on the
        dropped ones, so computing only the kept ones is exactly the runtime's read-out at those keeps);
        y = y * silu(z); y <- y / sqrt(mean over the group's kept channels of y^2 + eps) * w_gnorm[kept];
        out = y W_out[:, the first P' columns of every head's P-wide segment]^T (+ b_out)
    :class:`MLP` (``mlp`` keep k of D_I channels): silu(h Wg[:k]^T) * (h Wu[:k]^T) Wd[:, :k]^T (gated SiLU) or
        relu(h Wu[:k]^T)^2 Wd[:, :k]^T (squared ReLU, Nemotron-H ``-`` layers)

-- and the head: logits = (RMSNorm(x) * w_final) F^T W_lm^T, F the final mix of a rotated model that keeps its
embedding tied (``<final norm>.mix``, artifact format 2; absent: F = I), W_lm the embedding when tied.

This is what ``uniql.load(artifact, rate)`` computes (tested to float32 tolerance at every rate for every family):
the keep sizes are the deployment's (``ArtifactMeta.layer_keeps``, the loader's C allocation), and the kept rows
and columns come from the functions the loader uses (:func:`uniql.formats.artifact.head_rows`, ``qk_head_rows``,
``mamba_keep_rows``). That is the one masking mechanism: every component asks :class:`KeptIndex` for the index
tensors of its keeps and every :class:`ElasticLinear` *selects* those rows / columns, which equals multiplying the
dropped ones by zero -- they contribute nothing and receive no gradient -- without computing them.

LoRA on every linear of the blocks (Mamba ``in_proj`` / ``out_proj``, attention ``q/k/v/o``, MLP
``gate/up/down``): ``y = x W^T + (alpha/rank) (x A^T) B^T``, A (rank, in) uniform in +-1/sqrt(in) (PEFT's
kaiming_uniform(a=sqrt(5))), B (out, rank) zero, so the model starts as the artifact. The patch is masked like its
weight: B's rows of dropped outputs and A's columns of dropped inputs take no part at that rate. Base weights are
frozen buffers. ``lora_dropout`` (the reference's 0.05) drops the patch's input in training mode only;
``lora_enabled = False`` computes the artifact alone (the distillation teacher: the same weights at rate 0 without
the patches, one extra forward). Patches are named ``l<layer>_<linear>`` (:attr:`TwinModel.lora`).

Device and precision: the module moves with ``.to(device)`` (index tensors are made on the input's device);
float32, or under ``torch.autocast`` (bf16 on a GPU) the linears in bf16 while the scan, the conv, the norms of
Mamba and the LoRA masters stay float32; ``.double()`` gives a float64 reference. ``forward(ids, cache=...,
start=...)`` keeps K/V and the conv / SSM states per layer for incremental decoding at fixed keeps
(teacher-generated text).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uniql.errors import FormatError, InvalidArgumentError, UnsupportedError
from uniql.formats import safetensors as st
from uniql.formats.artifact import (REST_FILE, ArtifactMeta, full_sizes, head_rows, layer_file, mamba_keep_rows,
                                    qk_head_rows, read_meta)
from uniql.models.hybrid import HF_NAMES, rope_mode
from uniql.models.runtime import LAYER_ATTENTION, LAYER_MAMBA, LAYER_MLP, TransformerConfig, final_mix_name, \
    model_config

__all__ = ["TwinModel", "ElasticLinear", "LoRA", "KeptIndex", "Attention", "Mamba2Mixer", "MLP", "Residual",
           "ssd_scan", "read_float_tensors", "twin_model", "load_twin"]

# short linear name -> tensor name after the component's prefix, per component kind (the LoRA patch of linear s of
# layer i is "l<i>_<s>")
MAMBA_LINEARS = {"in": "in_proj", "out": "out_proj"}
ATTN_LINEARS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
MLP_LINEARS = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def read_float_tensors(path: str | Path) -> tuple[dict[str, Any], ArtifactMeta, list[dict[str, np.ndarray]],
                                                 dict[str, np.ndarray]]:
    """(config, meta, per-layer tensors under their full names, rest tensors) of an unquantized artifact of any
    family, every float tensor as float32 (float16 converted exactly, in C). An int4 artifact raises
    UnsupportedError."""
    from uniql import _C
    from uniql.formats.checkpoint import read_raw_config

    d = Path(path)
    cfg = read_raw_config(d)
    meta, tinfo = read_meta(d, cfg)
    q4 = sorted(n for n, s in tinfo.items() if isinstance(s, dict) and s.get("format") == "q4")
    if meta.quantization is not None or q4:
        raise UnsupportedError(f"{d} is an int4 artifact; fine-tuning needs an unquantized one: compress with "
                               "quantize=False, fine-tune, then quantize with uniql.quantize_artifact")
    L = model_config(cfg).num_hidden_layers
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


def twin_model(cfg: Mapping[str, Any], meta: ArtifactMeta, layers: Sequence[Mapping[str, np.ndarray]],
               rest: Mapping[str, np.ndarray], **kw: Any) -> "TwinModel":
    """The PyTorch twin of an artifact (any family) from :func:`read_float_tensors`' parts; ``kw``: rank, alpha,
    seed, max_seq, lora_dropout."""
    return TwinModel(cfg, meta, layers, rest, **kw)


def load_twin(path: str | Path, **kw: Any) -> "TwinModel":
    """The twin of an unquantized artifact directory (:meth:`TwinModel.from_artifact`)."""
    return TwinModel.from_artifact(path, **kw)


def _tensor(src: Mapping[str, np.ndarray], key: str, dtype: Any = np.float32) -> torch.Tensor:
    """A copy of ``src[key]`` as a tensor (FormatError naming it when missing)."""
    if key not in src:
        raise FormatError(f"artifact is missing tensor {key!r}")
    return torch.from_numpy(np.array(src[key], dtype))


def _norm_eps(c: Any) -> float:
    return float(c.rms_norm_eps if isinstance(c, TransformerConfig) else c.norm_eps)


def _inv_freq(c: Any) -> np.ndarray:
    """inv_freq (rope_dim/2,) float32 exactly as the runtime computes it (float64, Llama-3 scaling, then rounded)."""
    rd = c.rope_dim
    out = np.empty(rd // 2, np.float32)
    for f in range(rd // 2):
        x = 1.0 / math.pow(c.rope_theta, (2.0 * f) / rd)
        if getattr(c, "rope_type", "default") == "llama3":
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


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.to(w.dtype)   # float32 (float64 after .double()), also under autocast
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _select(W: torch.Tensor, rows: Any, cols: Any) -> torch.Tensor:
    """W's kept rows / columns (an index tensor, a slice, or None = all); W may be a vector (rows only)."""
    if rows is not None:
        W = W[rows] if isinstance(rows, slice) else W.index_select(0, rows)
    if cols is not None:
        W = W[:, cols] if isinstance(cols, slice) else W.index_select(1, cols)
    return W


# ----------------------------------------------------------------------------------------- LoRA ----
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


class _LoRASwitch:
    """The model-wide LoRA settings every :class:`ElasticLinear` reads: patches on / off, dropout probability."""

    def __init__(self, dropout: float) -> None:
        self.enabled = True
        self.dropout = float(dropout)


class _SwitchField:
    """A model attribute ``lora_<name>`` kept in the model's :class:`_LoRASwitch` (converted by `cast`)."""

    def __init__(self, cast: Callable[[Any], Any]) -> None:
        self.cast = cast

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name.removeprefix("lora_")

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj._switch, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj._switch, self.name, self.cast(value))


class ElasticLinear(nn.Module):
    """A frozen linear (weight (out, in), optional bias: non-persistent buffers) run at kept output rows / input
    columns, with an optional LoRA patch masked the same way."""

    def __init__(self, src: Mapping[str, np.ndarray], name: str, switch: _LoRASwitch) -> None:
        super().__init__()
        self.name = name
        self.register_buffer("weight", _tensor(src, name + ".weight"), persistent=False)
        bias = _tensor(src, name + ".bias") if name + ".bias" in src else None
        self.register_buffer("bias", bias, persistent=False)
        self.lora: LoRA | None = None
        self._switch = switch

    def add_lora(self, rank: int, alpha: float, generator: torch.Generator) -> LoRA:
        out_f, in_f = self.weight.shape
        self.lora = LoRA(out_f, in_f, rank, alpha, generator)
        return self.lora

    def forward(self, x: torch.Tensor, rows: Any = None, cols: Any = None) -> torch.Tensor:
        b = None if self.bias is None else _select(self.bias, rows, None)
        y = F.linear(x, _select(self.weight, rows, cols), b)
        lo, sw = self.lora, self._switch
        if lo is not None and sw.enabled:
            xl = F.dropout(x, sw.dropout, training=True) if self.training and sw.dropout > 0 else x
            y = y + lo.scale * F.linear(F.linear(xl, _select(lo.A, None, cols)), _select(lo.B, rows, None))
        return y

    @torch.no_grad()
    def merge_(self) -> None:
        """W += (alpha/rank) B A, then drops the patch (the linear keeps its function)."""
        if self.lora is not None:
            self.weight += self.lora.delta()
            self.lora = None


class KeptIndex:
    """The one masking mechanism: the index tensors of the rows / columns a component keeps, made once per
    (what, keep sizes, device) from the loader's row functions."""

    def __init__(self) -> None:
        self._cache: dict[tuple, torch.Tensor] = {}

    def __call__(self, key: tuple, make: Callable[[], np.ndarray], device: torch.device) -> torch.Tensor:
        k = key + (str(device),)
        if k not in self._cache:
            self._cache[k] = torch.as_tensor(np.asarray(make(), np.int64), device=device)
        return self._cache[k]


class _Pass:
    """What a forward pass hands every block: the layer's state dict (None: no cache), the first position, the
    model's RoPE tables and SSD chunk, and the attention mask of several new positions after a cached prefix
    (None otherwise: causal, or one new token that sees every key)."""

    def __init__(self, state: dict[str, Any] | None, start: int, cos: torch.Tensor | None, sin: torch.Tensor | None,
                 chunk: int, mask: torch.Tensor | None = None) -> None:
        self.state, self.start, self.cos, self.sin, self.chunk, self.mask = state, start, cos, sin, chunk, mask


# ------------------------------------------------------------------------------------ components ----
class Attention(nn.Module):
    """Causal GQA attention with full, partial (rotary rows first, then pass rows) or no RoPE; keep ``attn``."""

    def __init__(self, c: Any, rope: str, src: Mapping[str, np.ndarray], prefix: str, switch: _LoRASwitch,
                 index: KeptIndex, where: str) -> None:
        super().__init__()
        self.nh, self.nkv, self.d, self.rope = c.num_heads, c.num_kv_heads, c.head_dim, rope
        self.linears = nn.ModuleDict({s: ElasticLinear(src, prefix + n, switch) for s, n in ATTN_LINEARS.items()})
        fm = None
        if rope != "none":
            npairs = c.rope_dim // 2
            fm = src.get(prefix + "rope_freq")
            if fm is None or fm.shape != (c.num_kv_heads, npairs):
                raise FormatError(f"{where}: rope_freq must have shape {(c.num_kv_heads, npairs)}, got "
                                  f"{None if fm is None else fm.shape}")
            fm = _tensor(src, prefix + "rope_freq", np.int64)
        self.register_buffer("freq", fm, persistent=False)
        self._index = index

    def kept(self, r: int, dev: torch.device) -> tuple[Any, Any, Any, Any]:
        """Kept rows of q, k, v and columns of o at head-dim keep r (None: all)."""
        if r == self.d:
            return None, None, None, None
        nh, nkv, d, ix = self.nh, self.nkv, self.d, self._index
        return (ix(("q", r), lambda: qk_head_rows(self.rope, nh, d, r), dev),
                ix(("k", r), lambda: qk_head_rows(self.rope, nkv, d, r), dev),
                ix(("v", r), lambda: head_rows(nkv, d, r), dev),
                ix(("o", r), lambda: head_rows(nh, d, r), dev))

    @staticmethod
    def _rotate(x: torch.Tensor, fm: torch.Tensor, ps: _Pass, T: int) -> torch.Tensor:
        """x (b, T, heads, 2 * pairs) pair-interleaved; fm (heads, pairs) frequency index of each pair."""
        c = ps.cos[ps.start:ps.start + T][:, fm]
        s = ps.sin[ps.start:ps.start + T][:, fm]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)

    def _rope(self, x: torch.Tensor, fm: torch.Tensor, rr: int, ps: _Pass, T: int) -> torch.Tensor:
        if rr == x.shape[-1]:
            return self._rotate(x, fm, ps, T)
        return torch.cat((self._rotate(x[..., :rr], fm, ps, T), x[..., rr:]), -1)

    def forward(self, h: torch.Tensor, ks: Mapping[str, int], ps: _Pass) -> torch.Tensor:
        nh, nkv, d, lin = self.nh, self.nkv, self.d, self.linears
        r, grp = ks["attn"], nh // nkv
        b, T = h.shape[:2]
        rq, rk, rv, ro = self.kept(r, h.device)
        q = lin["q"](h, rq).view(b, T, nh, r)
        k = lin["k"](h, rk).view(b, T, nkv, r)
        v = lin["v"](h, rv).view(b, T, nkv, r)
        if self.freq is not None:
            rr = r if self.rope == "full" else r // 2            # kept rotary rows (whole pairs) of every head
            fm = self.freq[:, : rr // 2]
            q = self._rope(q, fm.repeat_interleave(grp, 0), rr, ps, T)
            k = self._rope(k, fm, rr, ps, T)
        q, k, v = q.transpose(1, 2).to(v.dtype), k.transpose(1, 2).to(v.dtype), v.transpose(1, 2)
        st_ = ps.state
        if st_ is not None:
            if ps.start:   # a cache of batch 1 (a shared prefix) serves a batch of continuations
                pk, pv = st_["k"], st_["v"]
                if pk.shape[0] != b:
                    pk, pv = pk.expand(b, -1, -1, -1), pv.expand(b, -1, -1, -1)
                k = torch.cat((pk, k.to(pk.dtype)), 2)
                v = torch.cat((pv, v.to(pv.dtype)), 2)
            st_["k"], st_["v"] = k, v
        if grp > 1:
            k, v = k.repeat_interleave(grp, 1), v.repeat_interleave(grp, 1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=ps.mask, is_causal=not ps.start,
                                           scale=1.0 / math.sqrt(d))
        return lin["o"](a.transpose(1, 2).reshape(b, T, nh * r), None, ro)


class Mamba2Mixer(nn.Module):
    """The Mamba2 mixer (in_proj, causal conv, selective scan, gated RMSNorm, out_proj); keeps ``ssm_head``,
    ``ssm_state``."""

    def __init__(self, c: Any, src: Mapping[str, np.ndarray], prefix: str, switch: _LoRASwitch, index: KeptIndex,
                 where: str) -> None:
        super().__init__()
        self.c = c
        self.linears = nn.ModuleDict({s: ElasticLinear(src, prefix + n, switch) for s, n in MAMBA_LINEARS.items()})
        cw = src.get(prefix + "conv1d.weight")
        if cw is None or cw.ndim not in (2, 3) or (cw.ndim == 3 and cw.shape[1] != 1):
            raise FormatError(f"{where}: conv1d.weight must be (channels, 1, kernel), got "
                              f"{None if cw is None else cw.shape}")
        self.register_buffer("conv_w", torch.from_numpy(np.array(cw.reshape(cw.shape[0], cw.shape[-1]), np.float32)),
                             persistent=False)
        cb = _tensor(src, prefix + "conv1d.bias") if prefix + "conv1d.bias" in src else None
        self.register_buffer("conv_b", cb, persistent=False)
        for key, buf in (("dt_bias", "dt_bias"), ("A_log", "A_log"), ("D", "D"), ("norm.weight", "gnorm")):
            self.register_buffer(buf, _tensor(src, prefix + key), persistent=False)
        self._index = index

    def kept(self, Pk: int, Nk: int, dev: torch.device) -> tuple[Any, Any, Any]:
        """Kept rows of in_proj, of the conv channels, and the kept head channels (gated norm, out_proj columns);
        None: all."""
        c, ix = self.c, self._index
        whole = Pk == c.ssm_head_dim and Nk == c.ssm_state
        ri = None if whole else ix(("in", Pk, Nk), lambda: mamba_keep_rows(c, Pk, Nk)[0], dev)
        ci = None if whole else ix(("conv", Pk, Nk), lambda: mamba_keep_rows(c, Pk, Nk)[1], dev)
        zi = None if Pk == c.ssm_head_dim else ix(("head", Pk), lambda: head_rows(c.ssm_heads, c.ssm_head_dim, Pk),
                                                   dev)
        return ri, ci, zi

    def forward(self, h: torch.Tensor, ks: Mapping[str, int], ps: _Pass) -> torch.Tensor:
        c = self.c
        H, G, K = c.ssm_heads, c.ssm_groups, c.conv_kernel
        Pk, Nk = ks["ssm_head"], ks["ssm_state"]
        ri, ci, zi = self.kept(Pk, Nk, h.device)
        zxbcdt = self.linears["in"](h, ri)
        b, T = h.shape[:2]
        nx, nb = H * Pk, G * Nk
        z = zxbcdt[..., :nx]
        wdt = self.A_log.dtype  # the scan, conv and norms run at the weights' precision, not autocast's
        xbc = zxbcdt[..., nx:2 * nx + 2 * nb].to(wdt)
        dt = zxbcdt[..., 2 * nx + 2 * nb:].to(wdt)
        cache = ps.state
        with torch.autocast(device_type=h.device.type, enabled=False):
            w = _select(self.conv_w, ci, None)                                # (channels, K)
            cb = None if self.conv_b is None else _select(self.conv_b, ci, None)
            u = xbc.transpose(1, 2)                                          # (b, channels, T)
            prev = cache.get("conv") if cache is not None else None
            u = torch.cat((prev, u), 2) if prev is not None else F.pad(u, (K - 1, 0))
            if cache is not None:
                cache["conv"] = u[..., u.shape[-1] - (K - 1):].detach() if K > 1 else u[..., :0]
            xbc = F.silu(F.conv1d(u, w[:, None, :], cb, groups=w.shape[0])).transpose(1, 2)
            xs = xbc[..., :nx].reshape(b, T, H, Pk)
            Bm = xbc[..., nx:nx + nb].reshape(b, T, G, Nk)
            Cm = xbc[..., nx + nb:].reshape(b, T, G, Nk)
            dt = F.softplus(dt + self.dt_bias).clamp(c.dt_min, c.dt_max)
            S0 = cache.get("ssm") if cache is not None else None
            y, S = ssd_scan(xs, dt, -torch.exp(self.A_log), Bm, Cm, self.D, ps.chunk, S0)
            if cache is not None:
                cache["ssm"] = S.detach()
            y = y.reshape(b, T, nx) * F.silu(z.to(wdt))
            yg = y.reshape(b, T, G, nx // G)
            yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + c.norm_eps)
            y = yg.reshape(b, T, nx) * _select(self.gnorm, zi, None)
        return self.linears["out"](y, None, zi)


class MLP(nn.Module):
    """Gated SiLU (gate, up, down) or squared ReLU (up, down) MLP; keep ``mlp`` (a prefix of the channels)."""

    def __init__(self, c: Any, src: Mapping[str, np.ndarray], prefix: str, switch: _LoRASwitch) -> None:
        super().__init__()
        self.gated, self.size = c.mlp_act == "silu_gated", c.intermediate_size
        self.linears = nn.ModuleDict({s: ElasticLinear(src, prefix + n, switch) for s, n in MLP_LINEARS.items()
                                      if s != "gate" or self.gated})

    def forward(self, h: torch.Tensor, ks: Mapping[str, int], ps: _Pass) -> torch.Tensor:
        k, lin = ks["mlp"], self.linears
        sk = None if k == self.size else slice(0, k)
        if self.gated:
            z = F.silu(lin["gate"](h, sk)) * lin["up"](h, sk)
        else:
            z = F.relu(lin["up"](h, sk)).square()
        return lin["down"](z, None, sk)


class Residual(nn.Module):
    """``x + body(RMSNorm(x) * w)``: a layer's mixer or MLP sub-block."""

    def __init__(self, norm: torch.Tensor, eps: float, body: nn.Module) -> None:
        super().__init__()
        self.register_buffer("norm", norm, persistent=False)
        self.eps, self.body = eps, body

    def forward(self, x: torch.Tensor, ks: Mapping[str, int], ps: _Pass) -> torch.Tensor:
        return x + self.body(_rms(x, self.norm, self.eps), ks, ps)


# ---------------------------------------------------------------------------------------- model ----
class TwinModel(nn.Module):
    """An artifact's function at per-layer keep sizes, in PyTorch, optionally with LoRA patches; every family.

    ``keeps``: per layer {component: keep} (mlp, attn, ssm_head, ssm_state: those the layer has), as
    :meth:`uniql.formats.artifact.ElasticModel.keep_sizes`; ``set_rate(rate)`` takes the artifact's allocation,
    ``set_keep(sizes)`` sets them directly. ``forward(ids)``: (B, T) int64 -> logits (B, T, vocab). ``names``: per
    layer, short linear name -> the artifact's tensor prefix."""

    def __init__(self, cfg: Mapping[str, Any], meta: ArtifactMeta, layers: Sequence[Mapping[str, np.ndarray]],
                 rest: Mapping[str, np.ndarray], *, rank: int = 0, alpha: float = 16.0, seed: int = 0,
                 max_seq: int = 2048, lora_dropout: float = 0.0) -> None:
        super().__init__()
        if not (0.0 <= float(lora_dropout) < 1.0):
            raise InvalidArgumentError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
        c = model_config(cfg)
        L = c.num_hidden_layers
        if len(layers) != L or len(meta.importance) != L:
            raise FormatError(f"{len(layers)} layers and {len(meta.importance)} importances for a model of {L} layers")
        self.hf_config, self.meta, self.config = dict(cfg), meta, c
        self._switch = _LoRASwitch(lora_dropout)
        self.rank, self.alpha = int(rank), float(alpha)
        self.rope = rope_mode(c) if LAYER_ATTENTION in c.layer_types else "none"
        eps = _norm_eps(c)
        nm = HF_NAMES[c.model_type]
        lp = "backbone.layers." if any(k.startswith("backbone.layers.") for k in layers[0]) else "model.layers."
        index = KeptIndex()
        self.layers = nn.ModuleList()
        self.names: list[dict[str, str]] = []     # per layer: short linear name -> full tensor name prefix
        self._linears: dict[str, ElasticLinear] = {}   # "l<i>_<s>" -> linear (registered under self.layers)
        for i, t in enumerate(c.layer_types):
            lay, p, where = layers[i], f"{lp}{i}.", f"layer {i}"
            blocks = []
            if t == LAYER_MAMBA:
                blocks.append(Mamba2Mixer(c, lay, p + nm["mamba"], self._switch, index, where))
            elif t == LAYER_ATTENTION:
                blocks.append(Attention(c, self.rope, lay, p + nm["attn"], self._switch, index, where))
            if t == LAYER_MLP or c.ffn_after_mixer:
                blocks.append(MLP(c, lay, p + nm["mlp"], self._switch))
            norms = [nm["norm"]] + ([nm["ffn_norm"]] if len(blocks) == 2 else [])
            self.layers.append(nn.ModuleList(Residual(_tensor(lay, p + n), eps, b) for n, b in zip(norms, blocks)))
            names = {}
            for b in blocks:
                for s, lin in b.linears.items():
                    names[s] = lin.name
                    self._linears[f"l{i}_{s}"] = lin
            self.names.append(names)
        emb = next((e for e in ((nm["embed"],) if isinstance(nm["embed"], str) else nm["embed"]) if e in rest), None)
        fin = next((e for e in ((nm["final"],) if isinstance(nm["final"], str) else nm["final"]) if e in rest), None)
        if emb is None or fin is None:
            raise FormatError(f"artifact is missing the embedding or final norm ({nm['embed']}, {nm['final']})")
        self.register_buffer("embed", _tensor(rest, emb), persistent=False)
        self.register_buffer("final_norm", _tensor(rest, fin), persistent=False)
        mix = final_mix_name(fin)
        self.register_buffer("final_mix", _tensor(rest, mix) if mix in rest else None, persistent=False)
        self.register_buffer("lm_head", None if c.tie_word_embeddings else _tensor(rest, "lm_head.weight"),
                             persistent=False)
        self.eps = eps
        if self.rank > 0:
            gen = torch.Generator().manual_seed(int(seed))
            for lin in self._linears.values():
                lin.add_lora(self.rank, self.alpha, gen)
        cos = sin = None
        if self.rope != "none":
            ang = torch.arange(max_seq, dtype=torch.float32)[:, None] * torch.from_numpy(_inv_freq(c))[None, :]
            cos, sin = torch.cos(ang.double()).float(), torch.sin(ang.double()).float()   # of the float32 angle
        self.register_buffer("cos", cos, persistent=False)      # (max_seq, rope_dim/2)
        self.register_buffer("sin", sin, persistent=False)
        self.max_seq = int(max_seq)
        # SSD chunk length: the function does not depend on it (up to float rounding); the (chunk x chunk) decay
        # and C.B tensors kept for the backward pass grow with it, so training uses at most 64
        self.scan_chunk = min(c.chunk_size, 64) if LAYER_MAMBA in c.layer_types else 1
        self.attention_only = LAYER_MAMBA not in c.layer_types   # several new tokens may follow a cached prefix
        self.full = full_sizes(c)
        self.keeps: list[dict[str, int]] = [dict(f) for f in self.full]
        self.rate: float | None = 0.0

    @classmethod
    def from_artifact(cls, path: str | Path, *, rank: int = 0, alpha: float = 16.0, seed: int = 0,
                      max_seq: int = 2048, lora_dropout: float = 0.0) -> "TwinModel":
        """The twin of an unquantized artifact directory of any family."""
        cfg, meta, layers, rest = read_float_tensors(path)
        return cls(cfg, meta, layers, rest, rank=rank, alpha=alpha, seed=seed, max_seq=max_seq,
                   lora_dropout=lora_dropout)

    @property
    def device(self) -> torch.device:
        return self.embed.device

    # ------------------------------------------------------------------------------ keep sizes ----
    def set_rate(self, rate: float) -> None:
        """Per-layer keeps of a global pruning rate, from the artifact's allocation (as the loader)."""
        self.keeps = self.meta.layer_keeps(rate, self.full)
        self.rate = float(rate)

    def set_keep(self, sizes: Sequence[Mapping[str, int]]) -> None:
        """Per-layer keeps directly: one {component: keep} per layer with exactly the layer's components; attention
        keeps whole RoPE pairs (even, a multiple of 4 under partial RoPE)."""
        if len(sizes) != len(self.full):
            raise InvalidArgumentError(f"{len(sizes)} keep sizes for {len(self.full)} layers")
        for i, (ks, full) in enumerate(zip(sizes, self.full)):
            if set(ks) != set(full) or any(not 1 <= int(ks[c]) <= full[c] for c in full):
                raise InvalidArgumentError(f"layer {i}: keep sizes {dict(ks)} do not fit {full}")
            if "attn" in ks and int(ks["attn"]) % (4 if self.rope == "partial" else 2 if self.rope == "full" else 1):
                raise InvalidArgumentError(f"layer {i}: attention keep {ks['attn']} does not keep whole RoPE pairs")
        self.keeps = [{c: int(v) for c, v in ks.items()} for ks in sizes]
        self.rate = None

    # --------------------------------------------------------------------------------- forward ----
    def forward(self, ids: torch.Tensor, cache: list[Any] | None = None, start: int = 0,
                hidden: bool = False) -> torch.Tensor:
        """Logits (B, T, vocab) of ids (B, T) at positions start..start+T-1 (``hidden=True``: the head's input
        (B, T, hidden), after the final norm and mix, so that ``head(h)`` of any slice of it gives those tokens'
        logits: the loss in chunks of tokens, no (tokens x vocab) tensor at once). ``cache``: a list (empty at first,
        then one state dict per layer: K/V, conv and SSM states) for incremental decoding at fixed keeps; with
        ``start > 0`` it must hold the states after the first ``start`` positions, and T must be 1 unless every
        mixer is attention (then T new positions attend to the cached prefix and causally to each other). A cache
        of batch 1 serves a batch of any size (a shared prefix; pass a copy, ``[dict(c) for c in cache]``, to
        keep the prefix's cache for the next batch)."""
        if ids.ndim == 1:
            ids = ids[None]
        T = ids.shape[1]
        if start + T > self.max_seq:
            raise InvalidArgumentError(f"sequence of {start + T} tokens exceeds max_seq {self.max_seq}")
        if start and (cache is None or len(cache) != len(self.keeps)):
            raise InvalidArgumentError("start > 0 needs the cache of the earlier positions")
        if start and T != 1 and not self.attention_only:
            raise InvalidArgumentError("start > 0 takes one new token at a time where a layer has a Mamba2 mixer "
                                       "(several new tokens after a cached prefix: attention-only models)")
        if cache is not None and not start:
            cache[:] = [dict() for _ in self.keeps]
        x = F.embedding(ids, self.embed)
        mask = None
        if start and T > 1:   # T new positions after a cached prefix: position start + i sees keys 0..start + i
            mask = (torch.arange(start + T, device=ids.device)[None, :]
                    <= torch.arange(start, start + T, device=ids.device)[:, None])
        for i, (blocks, ks) in enumerate(zip(self.layers, self.keeps)):
            ps = _Pass(cache[i] if cache is not None else None, start, self.cos, self.sin, self.scan_chunk, mask)
            for blk in blocks:
                x = blk(x, ks, ps)
        x = _rms(x, self.final_norm, self.eps)
        if self.final_mix is not None:   # the head reads the final-norm output times the final mix^T
            x = F.linear(x, self.final_mix.to(x.dtype))
        return x if hidden else self.head(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of hidden states ``forward(..., hidden=True)`` (any leading shape): the LM head (the tied
        embedding or lm_head)."""
        return F.linear(x, self.embed if self.lm_head is None else self.lm_head)

    # ------------------------------------------------------------------------------------ LoRA ----
    lora_enabled = _SwitchField(bool)    # False: the artifact alone (the distillation teacher)
    lora_dropout = _SwitchField(float)   # dropout probability on the patches' input, in training mode

    @property
    def lora(self) -> dict[str, LoRA]:
        """The patches by key ``l<layer>_<linear>`` (empty without patches or after :meth:`merge_`)."""
        return {k: lin.lora for k, lin in self._linears.items() if lin.lora is not None}

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for lo in self.lora.values() for p in (lo.A, lo.B)]

    def lora_state(self) -> dict[str, np.ndarray]:
        """The patches as float32 arrays: ``<key>.A`` (rank, in) and ``<key>.B`` (out, rank)."""
        out = {}
        for key, lo in self.lora.items():
            out[key + ".A"] = lo.A.detach().float().cpu().numpy().copy()
            out[key + ".B"] = lo.B.detach().float().cpu().numpy().copy()
        return out

    @torch.no_grad()
    def load_lora_state(self, state: Mapping[str, Any]) -> None:
        """Sets the patches from :meth:`lora_state` arrays (same keys and shapes, else FormatError)."""
        lora = self.lora
        want = {k + s for k in lora for s in (".A", ".B")}
        if set(state) != want:
            missing, extra = sorted(want - set(state))[:3], sorted(set(state) - want)[:3]
            raise FormatError(f"LoRA state does not match the model (missing {missing}, unexpected {extra})")
        for key, lo in lora.items():
            for name in ("A", "B"):
                p = getattr(lo, name)
                v = torch.as_tensor(np.asarray(state[f"{key}.{name}"]))
                if tuple(v.shape) != tuple(p.shape):
                    raise FormatError(f"LoRA {key}.{name}: shape {tuple(v.shape)} != {tuple(p.shape)}")
                p.copy_(v.to(p.dtype))

    def merge_(self) -> None:
        """W += (alpha/rank) B A for every patch, then drops the patches (the model keeps its function)."""
        for lin in self._linears.values():
            lin.merge_()

    def weights(self) -> dict[str, np.ndarray]:
        """The block linears' full (unpruned) weights as float32 arrays under their artifact names (merged ones
        after :meth:`merge_`)."""
        return {lin.name + ".weight": lin.weight.detach().cpu().numpy().copy() for lin in self._linears.values()}


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor, chunk: int, S0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Mamba2 selective scan in the chunked SSD form, at the inputs' precision.

    x (b, T, H, P), dt (b, T, H) = Delta, A (H) negative, B and C (b, T, G, N), D (H), S0 (b, H, P, N) or None
    (zero state). Returns (y (b, T, H, P), final state (b, H, P, N)). Within a chunk of `chunk` tokens
    y_t = sum_{s<=t} (C_t . B_s) exp(sum_{s<tau<=t} Delta_tau A) Delta_s x_s + exp(cum_t) C_t . S_in + D x_t; the
    state is carried from chunk to chunk -- the same recurrence as the runtime's chunked scan."""
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    rep = H // G
    L = max(1, min(int(chunk), T))
    nc = -(-T // L)
    pad = nc * L - T
    if pad:  # zero Delta / x / B / C beyond T: no contribution to outputs or state; the padded outputs are cut
        x, dt = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dt, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
    Bh = B.repeat_interleave(rep, 2) if rep > 1 else B      # (b, T', H, N)
    Ch = C.repeat_interleave(rep, 2) if rep > 1 else C
    xc = x.reshape(b, nc, L, H, P)
    Bc = Bh.reshape(b, nc, L, H, N)
    Cc = Ch.reshape(b, nc, L, H, N)
    a = (dt * A).reshape(b, nc, L, H).permute(0, 1, 3, 2)   # (b, nc, H, L)
    dtc = dt.reshape(b, nc, L, H)
    # seg[t, s] = sum_{s < tau <= t} a_tau for s <= t (a lower-triangular cumulative sum, no differences of
    # running sums), -inf above the diagonal
    tri = torch.tril(torch.ones(L, L, dtype=torch.bool, device=x.device), -1)
    seg = a[..., :, None].expand(*a.shape, L).masked_fill(~tri, 0.0).cumsum(-2)
    seg = seg.masked_fill(~torch.tril(torch.ones(L, L, dtype=torch.bool, device=x.device)), -math.inf)
    decay = torch.exp(seg)                                   # (b, nc, H, L, L)
    cb = torch.einsum("bclhn,bcshn->bchls", Cc, Bc)          # C_t . B_s
    w = cb * decay * dtc.permute(0, 1, 3, 2)[:, :, :, None, :]
    y = torch.einsum("bchls,bcshp->bclhp", w, xc)
    cum = a.cumsum(-1)                                       # (b, nc, H, L)
    to_end = torch.exp(cum[..., -1:] - cum) * dtc.permute(0, 1, 3, 2)   # exp(cum_last - cum_s) Delta_s
    states = torch.einsum("bcshp,bcshn->bchpn", xc * to_end.permute(0, 1, 3, 2)[..., None], Bc)
    S = x.new_zeros(b, H, P, N) if S0 is None else S0
    ys = []
    for c in range(nc):
        ys.append(torch.einsum("blhn,bhpn->blhp", Cc[:, c], S) * torch.exp(cum[:, c]).permute(0, 2, 1)[..., None])
        S = torch.exp(cum[:, c, :, -1])[:, :, None, None] * S + states[:, c]
    y = y + torch.stack(ys, 1)
    y = y.reshape(b, nc * L, H, P)[:, :T] + D[:, None] * x[:, :T]
    return y, S

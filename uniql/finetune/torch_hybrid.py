"""PyTorch twin of the hybrid runtime (``csrc/runtime/ssm.c``) for a sorted, unquantized Mamba2 / Nemotron-H /
Bamba artifact, with masked LoRA: the model :mod:`uniql.finetune` trains for the hybrid families (the transformer
twin is :class:`uniql.finetune.torch_model.ElasticTorchModel`). Needs the optional extra ``uniql[torch]``.

Per layer (``x`` the residual stream, h = RMSNorm(x) * w_norm), at the layer's keep sizes -- Mamba head channels
P', state dims N', attention head dims r, MLP channels k -- out of the stored H, P, G, N, d, D_I:

    Mamba2:  [z | x | B | C | dt] = h W_in[rows]^T (+ b_in[rows])
                 rows = z and x rows of the first P' channels of every head, B and C rows of the first N' state
                 dims of every group, all H dt rows
             x, B, C = silu(causal depthwise conv1d over the kept channels (their conv weights and bias))
             Delta = clamp(softplus(dt + dt_bias), dt_min, dt_max)        (softplus(v) = v above 20, as torch)
             A = -exp(A_log);  per head h (group g = h / (H/G)), channel p, state dim n:
                 S_t[p, n] = exp(Delta_t A) S_{t-1}[p, n] + Delta_t x_t[p] B_t[n]
                 y_t[p] = C_t . S_t[p] + D x_t[p]
             (in the chunked SSD form, chunks of at most 64 tokens; the kept channels and state dims do not depend
             on the dropped ones, so computing only the kept ones is exactly the runtime's read-out at those keeps)
             y = y * silu(z);  y <- y / sqrt(mean over the group's (H/G) P' kept channels of y^2 + eps) * w_gnorm
             x = x + y W_out[:, first P' columns of every head's P-wide segment]^T (+ b_out)
    attention: q, k = h W[rows]^T, rows = the first r of every head (no RoPE, full RoPE) or, with partial RoPE
             (Bamba), the first r/2 rotary rows (pair-interleaved, RoPE pairs 2j, 2j+1) and the first r/2 pass rows
             (stored from d/2 on); v = the first r rows of every KV head. RoPE on the rotary rows: pair j of KV group
             g at the original frequency rope_freq[g][j], inv_freq = theta^(-2f / rope_dim), angle =
             fl32(inv_freq * pos). a = causal GQA softmax(q k^T / sqrt(d)) v (d the ORIGINAL head dim);
             x = x + a W_o[:, first r columns of every head]^T (+ b_o)
    MLP:     silu(h Wg[:k]^T) * (h Wu[:k]^T) Wd[:, :k]^T  (Bamba, after every mixer, own RMSNorm)  or
             relu(h Wu[:k]^T)^2 Wd[:, :k]^T  (Nemotron-H '-' layers)
    logits = RMSNorm(x) * w_final  W_lm^T  (W_lm = the embedding when tied)

This is what ``uniql.load(artifact, rate)`` computes (tested to float32 tolerance at every rate for all three
families): the training masks are the deployment's keep sizes (``ArtifactMeta.layer_keeps``, the loader's C
allocation). A mask is a selection of the kept rows / columns, which equals multiplying the dropped ones by
zero: they contribute nothing and receive no gradient.

LoRA (``y = x W^T + (alpha/rank) (x A^T) B^T``, B zero at the start, as :class:`uniql.finetune.torch_model.LoRA`) on every
linear of the blocks: Mamba ``in_proj`` and ``out_proj``, attention ``q/k/v/o``, MLP ``gate/up/down``. The patch is
masked like its weight: B's rows of dropped outputs, A's columns of dropped inputs take no part at that rate.

Float32 throughout; under ``torch.autocast`` (bf16 on a GPU) the linears run in bf16 while the scan, the conv,
the norms and the softmax stay float32. ``forward(ids, cache=..., start=...)`` keeps the conv / SSM states and
K/V per layer for incremental decoding at fixed keeps (teacher-generated text).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uniql.formats.artifact import ArtifactMeta, head_rows, full_sizes, qk_head_rows
from uniql.errors import FormatError, InvalidArgumentError
from uniql.models.hybrid import LAYER_ATTENTION, LAYER_MAMBA, LAYER_MLP, HF_NAMES, HybridConfig
from uniql.finetune.torch_model import LoRA, LoRAHost, select_block

__all__ = ["HybridTorchModel", "ssd_scan", "MAMBA_LINEARS", "ATTN_LINEARS", "MLP_LINEARS"]

# short name -> tensor name after the layer's mixer / MLP prefix
MAMBA_LINEARS = {"in": "in_proj", "out": "out_proj"}
ATTN_LINEARS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
MLP_LINEARS = {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def ssd_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor, chunk: int, S0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Mamba2 selective scan in the chunked SSD form, at the inputs' precision.

    x (b, T, H, P), dt (b, T, H) = Delta, A (H) negative, B and C (b, T, G, N), D (H), S0 (b, H, P, N) or None
    (zero state). Returns (y (b, T, H, P), final state (b, H, P, N)). Within a chunk of `chunk` tokens
    y_t = sum_{s<=t} (C_t . B_s) exp(sum_{s<tau<=t} Delta_tau A) Delta_s x_s + exp(cum_t) C_t . S_in + D x_t; the
    state is carried from chunk to chunk -- the same recurrence as the runtime's (``uq_ks_ssm_scan_chunked``)."""
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


class HybridTorchModel(LoRAHost, nn.Module):
    """A hybrid artifact's function at per-layer keep sizes, in PyTorch, optionally with LoRA patches (the
    interface of :class:`uniql.finetune.torch_model.ElasticTorchModel`: ``set_rate``, ``set_keep``, ``forward``,
    ``lora_state``, ``merge_``, ``weights``). ``keeps``: per layer {component: keep} (mlp, attn, ssm_head,
    ssm_state), as :meth:`uniql.formats.artifact.ElasticModel.keep_sizes`."""

    def __init__(self, cfg: Mapping[str, Any], meta: ArtifactMeta, layers: Sequence[Mapping[str, np.ndarray]],
                 rest: Mapping[str, np.ndarray], *, rank: int = 0, alpha: float = 16.0, seed: int = 0,
                 max_seq: int = 2048, lora_dropout: float = 0.0) -> None:
        super().__init__()
        from uniql.models.hybrid import rope_mode

        if not (0.0 <= float(lora_dropout) < 1.0):
            raise InvalidArgumentError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
        hc = HybridConfig.from_hf(cfg)
        if len(layers) != hc.num_hidden_layers or len(meta.importance) != hc.num_hidden_layers:
            raise FormatError(f"{len(layers)} layers and {len(meta.importance)} importances for a model of "
                              f"{hc.num_hidden_layers} layers")
        self.hf_config, self.meta, self.hc = dict(cfg), meta, hc
        self.lora_dropout = float(lora_dropout)
        self.lora_enabled = True
        self.rank, self.alpha = int(rank), float(alpha)
        self.rope = rope_mode(hc) if LAYER_ATTENTION in hc.layer_types else "none"
        nm = HF_NAMES[hc.model_type]
        lp = "backbone.layers." if any(k.startswith("backbone.layers.") for k in layers[0]) else "model.layers."
        self.names: list[dict[str, str]] = []     # per layer: short linear name -> full tensor name prefix
        self.ffn = [hc.ffn_after_mixer and t != LAYER_MLP for t in hc.layer_types]
        for i, t in enumerate(hc.layer_types):
            lay, p = layers[i], f"{lp}{i}."
            names: dict[str, str] = {}
            self._buf(f"l{i}_norm", lay, p + nm["norm"])
            if t == LAYER_MAMBA:
                m = p + nm["mamba"]
                names.update({s: m + n for s, n in MAMBA_LINEARS.items()})
                cw = lay.get(m + "conv1d.weight")
                if cw is None or cw.ndim not in (2, 3) or (cw.ndim == 3 and cw.shape[1] != 1):
                    raise FormatError(f"layer {i}: conv1d.weight must be (channels, 1, kernel), got "
                                      f"{None if cw is None else cw.shape}")
                self.register_buffer(f"l{i}_conv_w", torch.from_numpy(
                    np.array(cw.reshape(cw.shape[0], cw.shape[-1]), np.float32)), persistent=False)
                for key, buf in (("conv1d.bias", "conv_b"), ("dt_bias", "dt_bias"), ("A_log", "A_log"), ("D", "D"),
                                 ("norm.weight", "gnorm")):
                    if key != "conv1d.bias" or m + key in lay:
                        self._buf(f"l{i}_{buf}", lay, m + key)
            elif t == LAYER_ATTENTION:
                a = p + nm["attn"]
                names.update({s: a + n for s, n in ATTN_LINEARS.items()})
                if self.rope != "none":
                    npairs = hc.rope_dim // 2
                    fm = lay.get(a + "rope_freq")
                    if fm is None or fm.shape != (hc.num_kv_heads, npairs):
                        raise FormatError(f"layer {i}: rope_freq must have shape {(hc.num_kv_heads, npairs)}, got "
                                          f"{None if fm is None else fm.shape}")
                    self.register_buffer(f"l{i}_freq", torch.from_numpy(np.asarray(fm, np.int64)), persistent=False)
            if t == LAYER_MLP or self.ffn[i]:
                f = p + nm["mlp"]
                names.update({s: f + n for s, n in MLP_LINEARS.items()
                              if s != "gate" or hc.mlp_act == "silu_gated"})
                if self.ffn[i]:
                    self._buf(f"l{i}_ffn_norm", lay, p + nm["ffn_norm"])
            for s, n in names.items():
                self._buf(f"l{i}_{s}_w", lay, n + ".weight")
                if n + ".bias" in lay:
                    self._buf(f"l{i}_{s}_b", lay, n + ".bias")
            self.names.append(names)
        emb = next((e for e in ((nm["embed"],) if isinstance(nm["embed"], str) else nm["embed"]) if e in rest), None)
        fin = next((e for e in ((nm["final"],) if isinstance(nm["final"], str) else nm["final"]) if e in rest), None)
        if emb is None or fin is None:
            raise FormatError(f"artifact is missing the embedding or final norm ({nm['embed']}, {nm['final']})")
        self._buf("embed", rest, emb)
        self._buf("final_norm", rest, fin)
        self._final_mix_buf(rest, fin[: -len(".weight")] + ".mix")
        if not hc.tie_word_embeddings:
            self._buf("lm_head", rest, "lm_head.weight")
        self.lora = nn.ModuleDict()
        if self.rank > 0:
            gen = torch.Generator().manual_seed(int(seed))
            for i, names in enumerate(self.names):
                for s in names:
                    out_f, in_f = getattr(self, f"l{i}_{s}_w").shape
                    self.lora[f"l{i}_{s}"] = LoRA(out_f, in_f, self.rank, self.alpha, gen)
        if self.rope != "none":
            rd = hc.rope_dim
            inv = torch.tensor([1.0 / math.pow(hc.rope_theta, (2.0 * f) / rd) for f in range(rd // 2)],
                               dtype=torch.float64).float()
            ang = torch.arange(max_seq, dtype=torch.float32)[:, None] * inv[None, :]   # float32 product
            self.register_buffer("cos", torch.cos(ang.double()).float(), persistent=False)
            self.register_buffer("sin", torch.sin(ang.double()).float(), persistent=False)
        self.max_seq = int(max_seq)
        # SSD chunk length: the function does not depend on it (up to float rounding); the (chunk x chunk) decay
        # and C.B tensors kept for the backward pass grow with it, so training uses at most 64
        self.scan_chunk = min(hc.chunk_size, 64) if LAYER_MAMBA in hc.layer_types else 1
        self.full = full_sizes(hc)
        self.keeps: list[dict[str, int]] = [dict(f) for f in self.full]
        self.rate: float | None = 0.0
        self._idx: dict[Any, torch.Tensor] = {}

    @classmethod
    def from_artifact(cls, path: str | Path, *, rank: int = 0, alpha: float = 16.0, seed: int = 0,
                      max_seq: int = 2048, lora_dropout: float = 0.0) -> "HybridTorchModel":
        from uniql.finetune.torch_model import read_float_tensors

        cfg, meta, layers, rest = read_float_tensors(path)
        return cls(cfg, meta, layers, rest, rank=rank, alpha=alpha, seed=seed, max_seq=max_seq,
                   lora_dropout=lora_dropout)

    # ------------------------------------------------------------------------------ keep sizes ----
    def set_rate(self, rate: float) -> None:
        """Per-layer keeps of a global pruning rate, from the artifact's allocation (as the loader)."""
        self.keeps = self.meta.layer_keeps(rate, self.full)
        self.rate = float(rate)

    def set_keep(self, sizes: Sequence[Mapping[str, int]]) -> None:
        """Per-layer keeps directly: one {component: keep} per layer with exactly the layer's components."""
        if len(sizes) != len(self.full):
            raise InvalidArgumentError(f"{len(sizes)} keep sizes for {len(self.full)} layers")
        for i, (ks, full) in enumerate(zip(sizes, self.full)):
            if set(ks) != set(full) or any(not 1 <= int(ks[c]) <= full[c] for c in full):
                raise InvalidArgumentError(f"layer {i}: keep sizes {dict(ks)} do not fit {full}")
            if "attn" in ks and int(ks["attn"]) % (4 if self.rope == "partial" else 2 if self.rope == "full" else 1):
                raise InvalidArgumentError(f"layer {i}: attention keep {ks['attn']} does not keep whole RoPE pairs")
        self.keeps = [{c: int(v) for c, v in ks.items()} for ks in sizes]
        self.rate = None

    def _index(self, key: tuple, make: Any) -> torch.Tensor:
        dev = self.device
        k = key + (str(dev),)
        if k not in self._idx:
            self._idx[k] = torch.as_tensor(np.asarray(make(), np.int64), device=dev)
        return self._idx[k]

    # --------------------------------------------------------------------------------- forward ----
    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = x.to(w.dtype)   # float32 (float64 after .double()), also under autocast
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.hc.norm_eps))

    def _mamba(self, i: int, h: torch.Tensor, ks: Mapping[str, int], cache: dict[str, Any] | None) -> torch.Tensor:
        hc = self.hc
        H, P, G, N, K = hc.ssm_heads, hc.ssm_head_dim, hc.ssm_groups, hc.ssm_state, hc.conv_kernel
        Pk, Nk = ks["ssm_head"], ks["ssm_state"]
        HP, GN = H * P, G * N
        full = Pk == P and Nk == N

        def rows() -> np.ndarray:
            zi, bi = head_rows(H, P, Pk), head_rows(G, N, Nk)
            return np.concatenate([zi, HP + zi, 2 * HP + bi, 2 * HP + GN + bi, 2 * HP + 2 * GN + np.arange(H)])

        def conv() -> np.ndarray:
            zi, bi = head_rows(H, P, Pk), head_rows(G, N, Nk)
            return np.concatenate([zi, HP + bi, HP + GN + bi])

        ri = None if full else self._index(("rows", Pk, Nk), rows)
        ci = None if full else self._index(("conv", Pk, Nk), conv)
        zi = None if Pk == P else self._index(("head", H, P, Pk), lambda: head_rows(H, P, Pk))
        zxbcdt = self._linear(i, "in", h, ri)
        b, T = h.shape[:2]
        nx, nb = H * Pk, G * Nk
        z = zxbcdt[..., :nx]
        wdt = self.embed.dtype  # the scan, conv and norms run at the weights' precision, not autocast's
        xbc = zxbcdt[..., nx:2 * nx + 2 * nb].to(wdt)
        dt = zxbcdt[..., 2 * nx + 2 * nb:].to(wdt)
        with torch.autocast(device_type=h.device.type, enabled=False):
            w = select_block(getattr(self, f"l{i}_conv_w"), ci, None)          # (channels, K)
            cb = getattr(self, f"l{i}_conv_b", None)
            if cb is not None and ci is not None:
                cb = cb.index_select(0, ci)
            u = xbc.transpose(1, 2)                                          # (b, channels, T)
            prev = cache.get("conv") if cache is not None else None
            u = torch.cat((prev, u), 2) if prev is not None else F.pad(u, (K - 1, 0))
            if cache is not None:
                cache["conv"] = u[..., u.shape[-1] - (K - 1):].detach() if K > 1 else u[..., :0]
            xbc = F.silu(F.conv1d(u, w[:, None, :], cb, groups=w.shape[0])).transpose(1, 2)
            xs = xbc[..., :nx].reshape(b, T, H, Pk)
            Bm = xbc[..., nx:nx + nb].reshape(b, T, G, Nk)
            Cm = xbc[..., nx + nb:].reshape(b, T, G, Nk)
            dt = F.softplus(dt + getattr(self, f"l{i}_dt_bias")).clamp(hc.dt_min, hc.dt_max)
            A = -torch.exp(getattr(self, f"l{i}_A_log"))
            S0 = cache.get("ssm") if cache is not None else None
            y, S = ssd_scan(xs, dt, A, Bm, Cm, getattr(self, f"l{i}_D"), self.scan_chunk, S0)
            if cache is not None:
                cache["ssm"] = S.detach()
            y = y.reshape(b, T, nx) * F.silu(z.to(wdt))
            yg = y.reshape(b, T, G, nx // G)
            yg = yg * torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + hc.norm_eps)
            gw = getattr(self, f"l{i}_gnorm")
            gw = gw if zi is None else gw.index_select(0, zi)
            y = yg.reshape(b, T, nx) * gw
        return self._linear(i, "out", y, None, zi)

    def _rope(self, x: torch.Tensor, fm: torch.Tensor, T: int, start: int) -> torch.Tensor:
        """x (b, T, heads, 2 * pairs) pair-interleaved; fm (heads, pairs) frequency index of each pair."""
        c = self.cos[start:start + T][:, fm]
        s = self.sin[start:start + T][:, fm]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1).flatten(-2)

    def _attn(self, i: int, h: torch.Tensor, r: int, cache: dict[str, Any] | None, start: int) -> torch.Tensor:
        hc = self.hc
        nh, nkv, d = hc.num_heads, hc.num_kv_heads, hc.head_dim
        grp = nh // nkv
        b, T = h.shape[:2]
        full = r == d
        rq = None if full else self._index(("q", r), lambda: qk_head_rows(self.rope, nh, d, r))
        rk = None if full else self._index(("k", r), lambda: qk_head_rows(self.rope, nkv, d, r))
        rv = None if full else self._index(("v", r), lambda: head_rows(nkv, d, r))
        ro = None if full else self._index(("o", r), lambda: head_rows(nh, d, r))
        q = self._linear(i, "q", h, rq).view(b, T, nh, r)
        k = self._linear(i, "k", h, rk).view(b, T, nkv, r)
        v = self._linear(i, "v", h, rv).view(b, T, nkv, r)
        if self.rope != "none":
            rr = r if self.rope == "full" else r // 2            # kept rotary rows (whole pairs) of every head
            fm = getattr(self, f"l{i}_freq")[:, : rr // 2]
            q = torch.cat((self._rope(q[..., :rr], fm.repeat_interleave(grp, 0), T, start), q[..., rr:]), -1)
            k = torch.cat((self._rope(k[..., :rr], fm, T, start), k[..., rr:]), -1)
        q, k, v = q.transpose(1, 2).to(v.dtype), k.transpose(1, 2).to(v.dtype), v.transpose(1, 2)
        if cache is not None:
            if start:
                k = torch.cat((cache["k"], k.to(cache["k"].dtype)), 2)
                v = torch.cat((cache["v"], v.to(cache["v"].dtype)), 2)
            cache["k"], cache["v"] = k, v
        if grp > 1:
            k, v = k.repeat_interleave(grp, 1), v.repeat_interleave(grp, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=not start, scale=1.0 / math.sqrt(d))
        return self._linear(i, "o", a.transpose(1, 2).reshape(b, T, nh * r), None, ro)

    def _mlp(self, i: int, h: torch.Tensor, k: int) -> torch.Tensor:
        sk = None if k == self.hc.intermediate_size else slice(0, k)
        if self.hc.mlp_act == "silu_gated":
            z = F.silu(self._linear(i, "gate", h, sk)) * self._linear(i, "up", h, sk)
        else:
            z = F.relu(self._linear(i, "up", h, sk)).square()
        return self._linear(i, "down", z, None, sk)

    def forward(self, ids: torch.Tensor, cache: list[Any] | None = None, start: int = 0) -> torch.Tensor:
        """Logits (b, T, vocab) of ids (b, T) at positions start..start+T-1. ``cache``: a list (empty at first,
        then one state dict per layer: conv and SSM states, K/V) for incremental decoding at fixed keeps; with
        ``start > 0`` it must hold the states after the first ``start`` positions and T must be 1."""
        if ids.ndim == 1:
            ids = ids[None]
        T = ids.shape[1]
        if start + T > self.max_seq:
            raise InvalidArgumentError(f"sequence of {start + T} tokens exceeds max_seq {self.max_seq}")
        if start and (cache is None or T != 1 or len(cache) != len(self.keeps)):
            raise InvalidArgumentError("start > 0 needs the cache of the earlier positions and one new token")
        if cache is not None and not start:
            cache[:] = [dict() for _ in self.keeps]
        x = F.embedding(ids, self.embed)
        for i, (t, ks) in enumerate(zip(self.hc.layer_types, self.keeps)):
            c = cache[i] if cache is not None else None
            h = self._rms(x, getattr(self, f"l{i}_norm"))
            if t == LAYER_MAMBA:
                x = x + self._mamba(i, h, ks, c)
            elif t == LAYER_ATTENTION:
                x = x + self._attn(i, h, ks["attn"], c, start)
            else:
                x = x + self._mlp(i, h, ks["mlp"])
            if self.ffn[i]:
                x = x + self._mlp(i, self._rms(x, getattr(self, f"l{i}_ffn_norm")), ks["mlp"])
        x = self._mix(self._rms(x, self.final_norm))
        return F.linear(x, self.embed if self.hc.tie_word_embeddings else self.lm_head)

    def weights(self) -> dict[str, np.ndarray]:
        """The block linears' full (unpruned) weights as float32 arrays under their artifact names (merged ones
        after :meth:`merge_`)."""
        return {n + ".weight": getattr(self, f"l{i}_{s}_w").detach().cpu().numpy().copy()
                for i, names in enumerate(self.names) for s, n in names.items()}

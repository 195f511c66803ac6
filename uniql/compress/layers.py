"""A model as the compressor sees it: a stack of layers, each a list of components, with one sorter per component
kind (docs/design.md §3, §4).

Llama / Qwen2 are the stacks whose every layer is attention + gated-SiLU MLP; Mamba2, Nemotron-H and Bamba mix
Mamba2 mixers, attention (no RoPE or partial RoPE) and MLPs (squared ReLU; gated SiLU after each Bamba mixer).
:class:`Stack` reads the layer kinds from the config and gives each layer its components:

* :class:`AttentionSorter` -- the mixer input's second moment and the post-RoPE q / k moments (captured in the
  runtime layout, read back in the checkpoint's order); Q/K dims by :func:`~uniql.compress.sorting.sort_qk` (RoPE
  pairs, partial RoPE's rotary pairs + pass dims, or a plain per-dim order), V/O by the quantization-aware SVD
  (singular values absorbed into V, a V bias folded into an o_proj bias);
* :class:`MambaSorter` -- B, C (after conv1d + SiLU) and Delta = softplus(dt + dt_bias) give the state-dim score
  per group (``uq_ssm_bc_moments``); the chunk-local SSM states (``uq_ssm_chunk_states``) give the head-channel
  ridge leverage (lambda :data:`SSM_LAMBDA_MAMBA2` for pure Mamba2, :data:`SSM_LAMBDA_HYBRID` for hybrids). The state
  permutation of group g moves the group's B and C rows of in_proj and their conv1d channels; the channel
  permutation of head h moves its z and x rows, x conv channels, gated-norm weights and out_proj columns. Heads,
  dt, A_log, D and dt_bias stay where they are;
* :class:`MlpSorter` -- ridge leverage of down_proj's input (the magnitude ablation: weight norms).

A sorter accumulates its statistics from the captures of one calibration pass over the original layer
(:meth:`begin`, :meth:`update`), returns the layer's sorted tensors (:meth:`sort`) and names the GPTQ plan of its
linears (:meth:`plan`: each linear with the capture of its own input in the sorted layer and its int4 group; the
input groups of o_proj / out_proj live inside one head's segment). Every prunable axis is a prefix per head / per
group, so loading at a rate copies prefixes (:mod:`uniql.formats.artifact`).
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np

from uniql.compress.linalg import Covariance
from uniql.compress.sorting import (GRAN_SSM_HEAD, GRAN_SSM_STATE, argsort_desc, keep_granularity, qasvd_vo,
                                    sort_mlp, sort_qk, sort_ssm_head_channels, sort_ssm_state, ssm_bc_moments,
                                    ssm_chunk_states)
from uniql.compress.steps import PlanEntry, o_proj_group
from uniql.errors import FormatError, UniqlError
from uniql.formats.checkpoint import HYBRID_MODEL_TYPES
from uniql.models.hybrid import HF_NAMES, rope_mode, rope_rows
from uniql.models.runtime import LAYER_ATTENTION, LAYER_MAMBA, LAYER_MLP, Model, model_config

#: Ridge constant of the state-aware head-channel score: ridge scores are scale-sensitive (lambda is absolute
#: against a second moment averaged over sequences); these are the values the method was tuned with.
SSM_LAMBDA_MAMBA2 = 1e-4
SSM_LAMBDA_HYBRID = 1.0

_COMPONENT_NAME = {LAYER_MAMBA: "mamba", LAYER_ATTENTION: "attn", LAYER_MLP: "mlp"}


def layer_prefix(model_type: str, names: Iterable[str]) -> str:
    """Prefix of the decoder layers' tensor names in a checkpoint (``backbone.layers.`` or ``model.layers.``)."""
    if model_type == "mamba2" or any(n.startswith("backbone.layers.") for n in names):
        return "backbone.layers."
    return "model.layers."


def cov_diagonal(cov: Covariance) -> np.ndarray:
    return np.ascontiguousarray(np.diagonal(cov.mean()))


def row_norms_sq(W: np.ndarray) -> np.ndarray:
    """Squared row norms of W (rows, cols), computed by the C core as the diagonal of W W^T."""
    cov = Covariance(W.shape[0])
    cov.update(np.ascontiguousarray(W.T))
    return np.ascontiguousarray(np.diagonal(cov.matrix))


def sorted_mlp(lay: dict[str, Any], m: str, perm: np.ndarray) -> dict[str, Any]:
    """MLP channels permuted: rows of gate (when present) and up, columns of down, bias entries likewise."""
    out: dict[str, Any] = {}
    for proj in ("gate_proj", "up_proj"):
        for kind in ("weight", "bias"):
            if f"{m}{proj}.{kind}" in lay:
                out[f"{m}{proj}.{kind}"] = np.ascontiguousarray(lay[f"{m}{proj}.{kind}"][perm])
    out[m + "down_proj.weight"] = np.ascontiguousarray(lay[m + "down_proj.weight"][:, perm])
    if m + "down_proj.bias" in lay:
        out[m + "down_proj.bias"] = lay[m + "down_proj.bias"]
    return out


def sorted_attention(lay: dict[str, Any], a: str, G_attn: np.ndarray, qk: Any, rq: np.ndarray, rk: np.ndarray,
                     nh: int, nkv: int, d: int, split_sigma: bool) -> dict[str, Any]:
    """Q/K rows in sorted (runtime) order and V/O by the quantization-aware SVD (V bias folded into o_proj)."""
    vo = qasvd_vo(G_attn, lay[a + "v_proj.weight"], lay[a + "o_proj.weight"], n_heads=nh, n_kv=nkv, head_dim=d,
                  bv=lay.get(a + "v_proj.bias"), bo=lay.get(a + "o_proj.bias"), split_sigma=split_sigma)
    out: dict[str, Any] = {
        a + "q_proj.weight": np.ascontiguousarray(lay[a + "q_proj.weight"][rq]),
        a + "k_proj.weight": np.ascontiguousarray(lay[a + "k_proj.weight"][rk]),
        a + "v_proj.weight": vo.wv,
        a + "o_proj.weight": vo.wo,
    }
    for bname, rows in (("q_proj.bias", rq), ("k_proj.bias", rk)):
        if a + bname in lay:
            out[a + bname] = np.ascontiguousarray(lay[a + bname][rows])
    if a + "v_proj.bias" in lay:
        out[a + "v_proj.bias"] = np.zeros_like(lay[a + "v_proj.bias"])  # folded into o_proj's bias
    if vo.bo is not None:
        out[a + "o_proj.bias"] = vo.bo
    return out


# ------------------------------------------------------------------------------------- sorters ----

class Sorter(abc.ABC):
    """One component of one layer (tensors under layer-0 names starting with ``prefix``): its statistics, its sort
    and its GPTQ plan. Subclasses: one per component kind."""

    kind = ""
    captures: tuple[str, ...] = ()          # runtime captures its statistics read (Model.layer_forward)
    linears: tuple[str, ...] = ()           # its linears (names under prefix, without ".weight")

    def __init__(self, stack: "Stack", prefix: str) -> None:
        self.stack, self.prefix = stack, prefix

    @abc.abstractmethod
    def begin(self, lay: dict[str, Any], num_seqs: int) -> None:
        """Allocates the accumulators of a calibration pass over `num_seqs` sequences of the original layer."""

    @abc.abstractmethod
    def update(self, cap: dict[str, np.ndarray]) -> None:
        """Adds one sequence's captures."""

    @abc.abstractmethod
    def sort(self, lay: dict[str, Any], opts: Any) -> dict[str, Any]:
        """The component's sorted tensors (layer-0 names), from its statistics and the original tensors `lay`."""

    @abc.abstractmethod
    def plan(self, group: int) -> list[PlanEntry]:
        """(linear base, capture of its input in the sorted layer, int4 group) of each of its linears."""


class AttentionSorter(Sorter):
    kind = LAYER_ATTENTION
    captures = ("mixer_in", "q", "k")  # the mixer input's moment: the QA-SVD's
    linears = ("q_proj", "k_proj", "v_proj", "o_proj")
    freq: np.ndarray | None = None      # after sort: original frequency index of each stored RoPE pair

    def begin(self, lay: dict[str, Any], num_seqs: int) -> None:
        c = self.stack.config
        self.c_in = Covariance(c.hidden_size)
        self.c_q, self.c_k = Covariance(c.num_heads * c.head_dim), Covariance(c.num_kv_heads * c.head_dim)

    def update(self, cap: dict[str, np.ndarray]) -> None:
        self.c_in.update(cap["mixer_in"])
        self.c_q.update(cap["q"])
        self.c_k.update(cap["k"])

    def sort(self, lay: dict[str, Any], opts: Any) -> dict[str, Any]:
        c, a = self.stack.config, self.prefix
        nh, nkv, d = c.num_heads, c.num_kv_heads, c.head_dim
        G_in = self.c_in.mean()
        del self.c_in
        if opts.scorer == "uniql":
            cq = self.stack.checkpoint_order(cov_diagonal(self.c_q), nh)
            ck = self.stack.checkpoint_order(cov_diagonal(self.c_k), nkv)
        else:  # ablation: plain weight magnitudes
            cq = row_norms_sq(lay[a + "q_proj.weight"]).reshape(nh, d)
            ck = row_norms_sq(lay[a + "k_proj.weight"]).reshape(nkv, d)
        del self.c_q, self.c_k
        qk = sort_qk(cq, ck, self.stack.rope)
        self.freq = np.ascontiguousarray(qk.freq, dtype=np.int32)
        return sorted_attention(lay, a, G_in, qk, qk.proj_rows(nh), qk.proj_rows(nkv), nh, nkv, d, opts.split_sigma)

    def plan(self, group: int) -> list[PlanEntry]:
        a = self.prefix
        return [(a + w, "mixer_in", group) for w in ("q_proj", "k_proj", "v_proj")] + \
            [(a + "o_proj", "attn_out", self.stack.o_groups(group)[0])]


class MambaSorter(Sorter):
    kind = LAYER_MAMBA
    captures = ("ssm_x", "ssm_B", "ssm_C", "ssm_dt")
    linears = ("in_proj", "out_proj")

    def begin(self, lay: dict[str, Any], num_seqs: int) -> None:
        c = self.stack.config
        self.scale = 1.0 / num_seqs
        self.dB, self.cc = np.zeros((c.ssm_heads, c.ssm_state)), np.zeros((c.ssm_groups, c.ssm_state))
        self.c_state = Covariance(c.ssm_heads * c.ssm_head_dim)
        self.A_log = np.ascontiguousarray(lay[self.prefix + "A_log"], dtype=np.float32)

    def update(self, cap: dict[str, np.ndarray]) -> None:
        c = self.stack.config
        ssm_bc_moments(cap["ssm_B"], cap["ssm_C"], cap["ssm_dt"], c.ssm_groups, self.scale, self.dB, self.cc)
        self.c_state.update(ssm_chunk_states(cap["ssm_x"], cap["ssm_B"], cap["ssm_dt"], self.A_log, c.ssm_groups,
                                             c.chunk_size))

    def sort(self, lay: dict[str, Any], opts: Any) -> dict[str, Any]:
        c, mix = self.stack.config, self.prefix
        H, P, G, N = c.ssm_heads, c.ssm_head_dim, c.ssm_groups, c.ssm_state
        sp = sort_ssm_state(self.dB, self.cc).perm
        hp = sort_ssm_head_channels(self.c_state.mean(), H, P, self.stack.ssm_lambda).perm
        del self.c_state
        zi = (np.arange(H)[:, None] * P + hp).reshape(-1)
        bi = (np.arange(G)[:, None] * N + sp).reshape(-1)
        HP, GN = H * P, G * N
        rows = np.concatenate([zi, HP + zi, 2 * HP + bi, 2 * HP + GN + bi, 2 * HP + 2 * GN + np.arange(H)])
        conv = np.concatenate([zi, HP + bi, HP + GN + bi])
        out: dict[str, Any] = {}
        for name, idx in (("in_proj.weight", rows), ("in_proj.bias", rows), ("conv1d.weight", conv),
                          ("conv1d.bias", conv), ("norm.weight", zi)):
            if mix + name in lay:
                out[mix + name] = np.ascontiguousarray(lay[mix + name][idx])
        out[mix + "out_proj.weight"] = np.ascontiguousarray(lay[mix + "out_proj.weight"][:, zi])
        return out

    def plan(self, group: int) -> list[PlanEntry]:
        return [(self.prefix + "in_proj", "mixer_in", group),
                (self.prefix + "out_proj", "ssm_out", self.stack.o_groups(group)[1])]


class MlpSorter(Sorter):
    kind = LAYER_MLP
    captures = ("mlp_z",)

    @property
    def linears(self) -> tuple[str, ...]:  # type: ignore[override]
        gated = self.stack.config.mlp_act == "silu_gated"
        return ("gate_proj", "up_proj", "down_proj") if gated else ("up_proj", "down_proj")

    def begin(self, lay: dict[str, Any], num_seqs: int) -> None:
        self.c_z = Covariance(self.stack.config.intermediate_size)

    def update(self, cap: dict[str, np.ndarray]) -> None:
        self.c_z.update(cap["mlp_z"])

    def sort(self, lay: dict[str, Any], opts: Any) -> dict[str, Any]:
        m = self.prefix
        if opts.scorer == "uniql":
            perm = sort_mlp(self.c_z.mean(), opts.mlp_lambda).perm
        else:  # ablation: channel i ranked by ||[up_i, gate_i]||^2 * ||down_:,i||^2 (the product of the norms' order)
            s = row_norms_sq(lay[m + "up_proj.weight"])
            if m + "gate_proj.weight" in lay:
                s = s + row_norms_sq(lay[m + "gate_proj.weight"])
            perm = argsort_desc(s * row_norms_sq(np.ascontiguousarray(lay[m + "down_proj.weight"].T)))
        del self.c_z
        return sorted_mlp(lay, m, perm)

    def plan(self, group: int) -> list[PlanEntry]:
        m = self.prefix
        return [(m + w, "mlp_in", group) for w in self.linears[:-1]] + [(m + "down_proj", "mlp_z", group)]


_SORTERS: dict[str, type[Sorter]] = {LAYER_ATTENTION: AttentionSorter, LAYER_MAMBA: MambaSorter, LAYER_MLP: MlpSorter}


# --------------------------------------------------------------------------------------- stack ----

class Stack:
    """The layer stack of a checkpoint or artifact config (a ``config.json`` dict): the runtime config, the tensor
    names (layer prefix ``prefix``, layer-0 prefix ``p0``), each layer's components (:meth:`components`) and
    one-layer runtime models (:meth:`model`). ``tensor_names``: the checkpoint's tensor names or those of one
    layer file (they say ``backbone.layers.`` or ``model.layers.``)."""

    def __init__(self, cfg: Mapping[str, Any], tensor_names: Iterable[str]) -> None:
        c = model_config(cfg)
        self.config = c
        self.model_type = c.model_type
        self.hybrid = c.model_type in HYBRID_MODEL_TYPES
        self.names = HF_NAMES[c.model_type]
        self.prefix = layer_prefix(c.model_type, tensor_names)
        self.p0 = self.prefix + "0."
        self.L = c.num_hidden_layers
        types = set(c.layer_types)
        self.rope = rope_mode(c) if LAYER_ATTENTION in types else "none"
        self.ssm_lambda = SSM_LAMBDA_MAMBA2 if c.model_type == "mamba2" else SSM_LAMBDA_HYBRID

    # ------------------------------------------------------------------------------ layers ----
    def kind(self, i: int) -> str:
        return self.config.layer_types[i]

    def components(self, i: int) -> list[Sorter]:
        """Layer i's components in runtime order: its mixer (or MLP), then the MLP sub-block where the architecture
        has one after each mixer."""
        kind = self.kind(i)
        parts = [_SORTERS[kind](self, self.p0 + self.names[_COMPONENT_NAME[kind]])]
        if kind != LAYER_MLP and self.config.ffn_after_mixer:
            parts.append(MlpSorter(self, self.p0 + self.names["mlp"]))
        return parts

    def plan(self, parts: list[Sorter], group: int) -> list[PlanEntry]:
        """The GPTQ plan of a layer: every component's linears."""
        return [e for p in parts for e in p.plan(group)]

    def norms(self, i: int) -> tuple[str, ...]:
        """Layer i's norm weights (layer-0 names): the input norm and, after a mixer, the MLP's."""
        ffn = "ffn_norm" in self.names and self.kind(i) != LAYER_MLP and self.config.ffn_after_mixer
        return (self.p0 + self.names["norm"],) + ((self.p0 + self.names["ffn_norm"],) if ffn else ())

    def sorted_layer(self, i: int, lay: dict[str, Any], sorted_parts: list[dict[str, Any]]) -> dict[str, Any]:
        """A sorted layer (layer-0 names) from the original one and its components' sorted tensors. Llama / Qwen2
        layers are the norms then each component's tensors (the order their artifacts have always had; anything
        else a checkpoint layer holds, e.g. a rotary inv_freq buffer, is left out); hybrid layers keep every
        tensor of the checkpoint's layer (A_log, D, dt_bias ride along) in its order, sorted ones in place."""
        sl = dict(lay) if self.hybrid else {n: lay[n] for n in self.norms(i)}
        for part in sorted_parts:
            sl.update(part)
        return sl

    def with_rope_freq(self, stored: dict[str, Any], parts: list[Sorter], freq: np.ndarray | None) -> dict[str, Any]:
        """`stored` with the attention's frequency map ``<attn>rope_freq`` (int32 (n_kv, pairs)), where it has
        RoPE."""
        for p in parts:
            if p.kind == LAYER_ATTENTION and self.rope != "none":
                stored[p.prefix + "rope_freq"] = freq
        return stored

    def segments(self, base: str) -> int:
        """Input segments of an int4 linear (its groups stay inside one): o_proj one per head, out_proj one per
        SSM head."""
        c = self.config
        return {"o_proj": c.num_heads, "out_proj": c.ssm_heads}.get(base.rsplit(".", 1)[-1], 1)

    def checkpoint_order(self, diag: np.ndarray, heads: int) -> np.ndarray:
        """Per-dim q/k statistics captured in the runtime layout (rotary rows pair-interleaved), in the checkpoint's
        [rotate-half rotary | pass] order."""
        d = self.config.head_dim
        x = diag.reshape(heads, d)
        if self.rope == "none":
            return np.ascontiguousarray(x)
        per = rope_rows(1, d, self.config.rope_dim)  # runtime row k <- checkpoint dim per[k]
        out = np.empty_like(x)
        out[:, per] = x
        return out

    # ---------------------------------------------------------------------- granularities ----
    def o_groups(self, group: int) -> tuple[int, int]:
        """int4 groups of o_proj's and out_proj's inputs: divisors of `group` inside one head's segment."""
        c, types = self.config, set(self.config.layer_types)
        return (o_proj_group(c.head_dim, group) if LAYER_ATTENTION in types else group,
                o_proj_group(c.ssm_head_dim, group) if LAYER_MAMBA in types else group)

    def meta(self, opts: Any) -> dict[str, Any]:
        """The stack's entries of the artifact metadata: keep-size granularities, o_proj group; hybrids also their
        SSM granularities, out_proj group and sorting constants."""
        c, types = self.config, set(self.config.layer_types)
        has_mlp = LAYER_MLP in types or c.ffn_after_mixer
        go, go_ssm = self.o_groups(opts.group)
        m: dict[str, Any] = dict(
            mlp_granularity=keep_granularity(c.intermediate_size, opts.mlp_granularity) if has_mlp else 1,
            attn_granularity=keep_granularity(c.head_dim, opts.attn_granularity, 4 if self.rope == "partial" else 2)
            if LAYER_ATTENTION in types else 2, o_group=go)
        if self.hybrid:
            m.update(ssm_state_granularity=keep_granularity(c.ssm_state, GRAN_SSM_STATE) if LAYER_MAMBA in types else 1,
                     ssm_head_granularity=keep_granularity(c.ssm_head_dim, GRAN_SSM_HEAD, min(2, c.ssm_head_dim))
                     if LAYER_MAMBA in types else 1,
                     quantization=self.quant_extra(opts.group),
                     sorting={"ssm_lambda": self.ssm_lambda, "rope": self.rope, "importance": "per layer"})
        return m

    def quant_extra(self, group: int) -> dict[str, Any]:
        """The stack's own entries of the quantization record (hybrids: out_proj's group)."""
        return {"ssm_out_group": self.o_groups(group)[1]} if self.hybrid else {}

    # ------------------------------------------------------------------------------ models ----
    def present(self, tensors: Mapping[str, Any], what: str, where: Any = "") -> str:
        """The name under which `tensors` hold the embedding (``what="embed"``) or final norm (``"final"``)."""
        cands = self.names[what]
        cands = (cands,) if isinstance(cands, str) else cands
        for c in cands:
            if c in tensors:
                return c
        raise FormatError(f"checkpoint {str(where)!r} has no tensor {cands[0]!r}")

    def model(self, i: int, shared: dict[str, Any], lay: dict[str, Any], freq: np.ndarray | None,
              max_seq: int) -> Model:
        """A one-layer runtime model of layer i's kind over `lay` (layer-0 names) and the `shared` embedding, final
        norm and (untied) lm_head, not copied; `freq`: the sorted attention's frequency map (runtime Q/K layout)
        or None (the checkpoint's own layout)."""
        c = self.config  # a HybridConfig lists its layer kinds; a TransformerConfig's follow from its layer count
        listed = any(f.name == "layer_types" for f in dataclasses.fields(c))
        one = dataclasses.replace(c, **({"layer_types": (self.kind(i),)} if listed else {"num_hidden_layers": 1}))
        t = dict(shared)
        t.update(lay)
        return Model.from_hf_tensors(one, t, freq_maps=[freq], qk_layout="rotate_half" if freq is None else
                                     "interleaved", max_seq=max_seq, max_chunk=min(max_seq, 256))

    def check_layer(self, i: int, shared: dict[str, Any], lay: dict[str, Any], where: Any) -> None:
        """Layer i's tensors (layer-0 names) have every weight of its components, with shapes the runtime
        accepts (a one-layer model is built)."""
        need = list(self.norms(i)) + [p.prefix + w + ".weight" for p in self.components(i) for w in p.linears]
        for n in need:
            if n not in lay:
                raise FormatError(f"missing tensor '{self.prefix}{i}.{n[len(self.p0):]}' in {str(where)!r}")
        try:
            self.model(i, shared, lay, None, 2)
        except UniqlError:
            raise
        except (ValueError, KeyError) as e:
            raise FormatError(str(e)) from None

    def final_norm_layer(self, lay: dict[str, Any], norm: np.ndarray) -> dict[str, Any]:
        """Layer 0 with the final norm as its input norm: its mixer input is lm_head's input."""
        lay[self.p0 + self.names["norm"]] = norm
        return lay

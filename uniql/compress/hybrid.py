"""compress() for Mamba2, Nemotron-H and Bamba: the per-layer job (docs/design.md §3, §4).

The driver (:func:`uniql.compress.pipeline.compress`: calibration tokens, resume, partial directory, embedding / lm_head,
config, report) is shared with the transformers; this module calibrates, sorts and quantizes one layer of a
hybrid stack in the C hybrid runtime (one-layer models, :meth:`uniql.models.runtime.Model.layer_forward`):

* Mamba2 mixer: B, C (after conv1d + SiLU) and Delta = softplus(dt + dt_bias) give the state-dim score per group
  (``uq_ssm_bc_moments`` -> :func:`uniql.compress.sorting.sort_ssm_state`); the chunk-local SSM states
  (``uq_ssm_chunk_states``) give the head-channel ridge leverage (:func:`uniql.compress.sorting.sort_ssm_head_channels`,
  lambda 1e-4 for pure Mamba2, 1 for hybrids). The state permutation of group g moves the group's B and C rows of
  in_proj and their conv1d channels; the channel permutation of head h moves its z and x rows, x conv channels,
  gated-norm weights and out_proj columns. Heads, dt, A_log, D and dt_bias stay where they are.
* attention: Q/K dims by post-RoPE scores (partial RoPE for Bamba: rotary pairs + pass dims; none for Nemotron-H:
  a plain per-dim order), V/O by the quantization-aware SVD.
* MLP (Nemotron-H '-' layers: relu(x Wu^T)^2; Bamba's gated SiLU MLP after each mixer): ridge leverage on
  down_proj's input.

Like the transformers, a layer is calibrated and sorted on the float stream (outputs of the original layers) and
GPTQ-quantized on the quantized stream by :func:`uniql.compress.pipeline.quantize_layer` (Hessians of the sorted layer's own
inputs: mixer input, SSM output, attention output, MLP input, down_proj input).

int4: GPTQ per linear; the input groups of out_proj / o_proj live inside one head's segment. Every prunable
axis is a prefix per head / per group, so loading at a rate copies prefixes (:mod:`uniql.formats.artifact`).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from uniql.compress.pipeline import (CompressOptions, LayerStream, capture_moment, cov_diagonal, layer_importance, o_proj_group,
                            sorted_attention, sorted_mlp, source_tied, artifact_layer, StageTimer, quantize_layer,
                            rotation_of)
from uniql.errors import FormatError, UniqlError
from uniql.compress.linalg import Covariance
from uniql.compress.rotate import final_mix_name
from uniql.compress.sorting import (GRAN_SSM_HEAD, GRAN_SSM_STATE, keep_granularity, sort_mlp, sort_qk,
                           sort_ssm_head_channels, sort_ssm_state, ssm_bc_moments, ssm_chunk_states)
from uniql.models.hybrid import (LAYER_ATTENTION, LAYER_MAMBA, LAYER_MLP, HF_NAMES, HybridConfig, rope_mode,
                                 rope_rows)
from uniql.models.runtime import Model

#: Ridge constant of the state-aware head-channel score: ridge scores are scale-sensitive (lambda is absolute
#: against a second moment averaged over sequences); these are the values the method was tuned with.
SSM_LAMBDA_MAMBA2 = 1e-4
SSM_LAMBDA_HYBRID = 1.0


def layer_prefix(model_type: str, names: Any) -> str:
    """Prefix of the decoder layers' tensor names in a checkpoint (``backbone.layers.`` or ``model.layers.``)."""
    if model_type == "mamba2" or any(n.startswith("backbone.layers.") for n in names):
        return "backbone.layers."
    return "model.layers."


def o_groups(hc: HybridConfig, group: int) -> tuple[int, int]:
    """int4 groups of o_proj's and out_proj's inputs: divisors of `group` inside one head's segment."""
    types = set(hc.layer_types)
    return (o_proj_group(hc.head_dim, group) if LAYER_ATTENTION in types else group,
            o_proj_group(hc.ssm_head_dim, group) if LAYER_MAMBA in types else group)


def layer_plan(hc: HybridConfig, kind: str, mix: str, mlp: str, group: int, go: int, go_ssm: int
               ) -> list[tuple[str, str, int]]:
    """GPTQ plan of one sorted hybrid layer (layer-0 names; `mix` / `mlp`: the mixer's and the MLP's prefixes):
    (linear base, capture of its input in the sorted layer, group), shared by compress and quantize_artifact."""
    plan: list[tuple[str, str, int]] = []
    if kind == LAYER_MAMBA:
        plan += [(mix + "in_proj", "mixer_in", group), (mix + "out_proj", "ssm_out", go_ssm)]
    elif kind == LAYER_ATTENTION:
        plan += [(mix + w, "mixer_in", group) for w in ("q_proj", "k_proj", "v_proj")]
        plan.append((mix + "o_proj", "attn_out", go))
    if kind == LAYER_MLP or (hc.ffn_after_mixer and kind != LAYER_MLP):
        plan += [(mlp + w, "mlp_in", group) for w in (("gate_proj", "up_proj") if hc.mlp_act == "silu_gated"
                                                      else ("up_proj",))]
        plan.append((mlp + "down_proj", "mlp_z", group))
    return plan


def one_layer_model(hc: HybridConfig, kind: str, shared: dict[str, Any], lay: dict[str, Any],
                    freq: np.ndarray | None, max_seq: int) -> Model:
    """A one-layer runtime model of a layer of `kind` over `lay` (layer-0 names) and the `shared` embedding, final
    norm and (untied) lm_head, not copied; `freq`: the sorted attention's frequency map (runtime Q/K layout) or
    None (the checkpoint's own layout)."""
    hc1 = dataclasses.replace(hc, layer_types=(kind,))
    t = dict(shared)
    t.update(lay)
    return Model.from_hf_tensors(hc1, t, freq_maps=[freq], qk_layout="rotate_half" if freq is None else
                                       "interleaved", max_seq=max_seq, max_chunk=min(max_seq, 256))


class HybridJob:
    """Compression of one layer of a Mamba2 / Nemotron-H / Bamba stack (see the module docstring)."""

    def __init__(self, src: Path, cfg: dict[str, Any], opts: CompressOptions, T: int) -> None:
        from uniql.formats import checkpoint

        hc = HybridConfig.from_hf(cfg)
        self.hc, self.cfg, self.opts, self.T = hc, cfg, opts, T
        self.L, self.n = hc.num_hidden_layers, hc.hidden_size
        self.names = HF_NAMES[hc.model_type]
        self.ckpt = LayerStream(src, self.L, layer_prefix(hc.model_type, checkpoint.tensor_names(src)),
                                rotation=rotation_of(cfg, opts), tied=source_tied(cfg, opts),
                                keep_tied=bool(cfg.get("tie_word_embeddings", False)))
        self.tensors = self.ckpt.shared
        self.embed_name = self._present(self.names["embed"])
        self.norm_name = self._present(self.names["final"])
        self.p0 = self.ckpt.prefix + "0."
        types = set(hc.layer_types)
        self.rope = rope_mode(hc) if LAYER_ATTENTION in types else "none"
        has_mlp = LAYER_MLP in types or hc.ffn_after_mixer
        self.mlp_gran = keep_granularity(hc.intermediate_size, opts.mlp_granularity) if has_mlp else 1
        self.attn_gran = keep_granularity(hc.head_dim, opts.attn_granularity, 4 if self.rope == "partial" else 2) \
            if LAYER_ATTENTION in types else 2
        self.state_gran = keep_granularity(hc.ssm_state, GRAN_SSM_STATE) if LAYER_MAMBA in types else 1
        self.head_gran = keep_granularity(hc.ssm_head_dim, GRAN_SSM_HEAD, min(2, hc.ssm_head_dim)) \
            if LAYER_MAMBA in types else 1
        self.go, self.go_ssm = o_groups(hc, opts.group)
        self.ssm_lambda = SSM_LAMBDA_MAMBA2 if hc.model_type == "mamba2" else SSM_LAMBDA_HYBRID
        self.ckpt.validate(self._check_layer)

    def _present(self, cands: Any) -> str:
        cands = (cands,) if isinstance(cands, str) else cands
        for c in cands:
            if c in self.tensors:
                return c
        raise FormatError(f"checkpoint {str(self.ckpt.src)!r} has no tensor {cands[0]!r}")

    # ------------------------------------------------------------------------------ models ----
    def _model(self, i: int, lay: dict[str, Any], freq: np.ndarray | None = None, max_seq: int | None = None
               ) -> Model:
        """A one-layer runtime model of layer i's kind over `lay` (layer-0 names), sharing the embedding (no copy);
        `freq` (sorted attention, runtime Q/K layout) or None (the checkpoint's own layout)."""
        shared = {self.embed_name: self.tensors[self.embed_name], self.norm_name: self.tensors[self.norm_name]}
        if not self.hc.tie_word_embeddings:
            shared["lm_head.weight"] = self.tensors["lm_head.weight"]
        return one_layer_model(self.hc, self.hc.layer_types[i], shared, lay, freq, max_seq or self.T)

    def _check_layer(self, i: int, lay: dict[str, np.ndarray]) -> None:
        try:
            self._model(i, lay, max_seq=2)
        except UniqlError:
            raise
        except (ValueError, KeyError) as e:
            raise FormatError(str(e)) from None

    def embed(self, ids: np.ndarray) -> np.ndarray:
        emb = self._model(0, self.ckpt.layer(0))
        return np.stack([emb.embed(ids[b]) for b in range(ids.shape[0])])

    def final_hessian(self, X: np.ndarray) -> np.ndarray:
        """Second moment of the final-norm output: the mixer input of a one-layer model whose norm is the final
        norm."""
        fin = self.ckpt.layer(0)
        fin[self.p0 + self.names["norm"]] = self.tensors[self.norm_name]
        return capture_moment(self._model(0, fin), X, "mixer_in", self.tensors.get(final_mix_name(self.norm_name)))

    def meta(self) -> dict[str, Any]:
        return dict(mlp_granularity=self.mlp_gran, attn_granularity=self.attn_gran,
                    ssm_state_granularity=self.state_gran, ssm_head_granularity=self.head_gran, o_group=self.go,
                    quantization={"ssm_out_group": self.go_ssm},
                    sorting={"ssm_lambda": self.ssm_lambda, "rope": self.rope, "importance": "per layer"})

    # ------------------------------------------------------------------------------- layer ----
    def layer(self, i: int, lay: dict[str, Any], X: np.ndarray, Xq: np.ndarray | None, timer: StageTimer,
              info: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """Calibrates and sorts layer i on the float stream X and (when Xq is given) quantizes it on the quantized
        stream Xq; both advance in place to the next layer's inputs. Returns (artifact tensors, importance)."""
        hc, opts, p0, n = self.hc, self.opts, self.p0, self.n
        kind = hc.layer_types[i]
        ffn = hc.ffn_after_mixer and kind != LAYER_MLP
        B = X.shape[0]
        mix = p0 + self.names[{LAYER_MAMBA: "mamba", LAYER_ATTENTION: "attn", LAYER_MLP: "mlp"}[kind]]
        f = p0 + self.names.get("mlp", "")

        # 1. calibrate the original layer
        t = time.perf_counter()
        model = self._model(i, lay)
        caps: list[str] = []
        H, P, G, N = hc.ssm_heads, hc.ssm_head_dim, hc.ssm_groups, hc.ssm_state
        if kind == LAYER_MAMBA:
            caps += ["ssm_x", "ssm_B", "ssm_C", "ssm_dt"]
            dB, cc = np.zeros((H, N)), np.zeros((G, N))
            c_state = Covariance(H * P)
            A_log = np.ascontiguousarray(lay[mix + "A_log"], dtype=np.float32)
        elif kind == LAYER_ATTENTION:
            caps += ["mixer_in", "q", "k"]  # the mixer input's moment: the QA-SVD's
            c_in = Covariance(n)
            c_q, c_k = Covariance(hc.num_heads * hc.head_dim), Covariance(hc.num_kv_heads * hc.head_dim)
        if kind == LAYER_MLP or ffn:
            caps += ["mlp_z"]
            c_z = Covariance(hc.intermediate_size)
        x_last = np.ascontiguousarray(X[:, -1])
        for b in range(B):  # X <- the original layer's outputs, sequence by sequence
            X[b], cap = model.layer_forward(0, X[b], capture=caps)
            if kind == LAYER_MAMBA:
                ssm_bc_moments(cap["ssm_B"], cap["ssm_C"], cap["ssm_dt"], G, 1.0 / B, dB, cc)
                c_state.update(ssm_chunk_states(cap["ssm_x"], cap["ssm_B"], cap["ssm_dt"], A_log, G, hc.chunk_size))
            elif kind == LAYER_ATTENTION:
                c_in.update(cap["mixer_in"])
                c_q.update(cap["q"])
                c_k.update(cap["k"])
            if kind == LAYER_MLP or ffn:
                c_z.update(cap["mlp_z"])
        del model, cap
        G_in = c_in.mean() if kind == LAYER_ATTENTION else None
        importance = layer_importance(x_last, X[:, -1])
        timer.add("calibrate", time.perf_counter() - t)

        # 2. sort
        t = time.perf_counter()
        sl = dict(lay)
        freq = None
        if kind == LAYER_MAMBA:
            sp = sort_ssm_state(dB, cc).perm
            hp = sort_ssm_head_channels(c_state.mean(), H, P, self.ssm_lambda).perm
            del c_state
            zi = (np.arange(H)[:, None] * P + hp).reshape(-1)
            bi = (np.arange(G)[:, None] * N + sp).reshape(-1)
            HP, GN = H * P, G * N
            rows = np.concatenate([zi, HP + zi, 2 * HP + bi, 2 * HP + GN + bi, 2 * HP + 2 * GN + np.arange(H)])
            conv = np.concatenate([zi, HP + bi, HP + GN + bi])
            for name, idx in (("in_proj.weight", rows), ("in_proj.bias", rows), ("conv1d.weight", conv),
                              ("conv1d.bias", conv), ("norm.weight", zi)):
                if mix + name in lay:
                    sl[mix + name] = np.ascontiguousarray(lay[mix + name][idx])
            sl[mix + "out_proj.weight"] = np.ascontiguousarray(lay[mix + "out_proj.weight"][:, zi])
        elif kind == LAYER_ATTENTION:
            nh, nkv, d = hc.num_heads, hc.num_kv_heads, hc.head_dim
            cq, ck = self._hf_diag(cov_diagonal(c_q), nh), self._hf_diag(cov_diagonal(c_k), nkv)
            qk = sort_qk(cq, ck, self.rope)
            sl.update(sorted_attention(lay, mix, G_in, qk, qk.proj_rows(nh), qk.proj_rows(nkv), nh, nkv, d, False))
            freq = np.ascontiguousarray(qk.freq, dtype=np.int32)
        if kind == LAYER_MLP or ffn:
            perm = sort_mlp(c_z.mean(), opts.mlp_lambda).perm
            del c_z
            sl.update(sorted_mlp(lay, f, perm))
        timer.add("sort", time.perf_counter() - t)
        plan = layer_plan(hc, kind, mix, f, opts.group, self.go, self.go_ssm)

        # 3. quantize on the quantized stream (Hessians of the sorted layer's inputs) and 4. propagate it
        stored = sl
        if Xq is not None:
            stored = quantize_layer(lambda tl: self._model(i, tl, freq), sl, Xq, plan, opts.gptq_kw(), timer,
                                    lambda nm: opts.storage(nm, i, len(hc.layer_types)))
        if kind == LAYER_ATTENTION and self.rope != "none":
            stored[mix + "rope_freq"] = freq
        wdt = np.float16 if opts.dtype == "float16" else np.float32
        segs = {"o_proj": hc.num_heads, "out_proj": hc.ssm_heads}
        out_t = artifact_layer(stored, p0, f"{self.ckpt.prefix}{i}.", info, wdt,
                       lambda base: segs.get(base.rsplit(".", 1)[-1], 1))
        return out_t, importance

    def _hf_diag(self, diag: np.ndarray, heads: int) -> np.ndarray:
        """Per-dim q/k statistics captured in the runtime layout (rotary rows pair-interleaved), in the checkpoint's
        [rotate-half rotary | pass] order."""
        d = self.hc.head_dim
        x = diag.reshape(heads, d)
        if self.rope == "none":
            return np.ascontiguousarray(x)
        per = rope_rows(1, d, self.hc.rope_dim)  # runtime row k <- checkpoint dim per[k]
        out = np.empty_like(x)
        out[:, per] = x
        return out

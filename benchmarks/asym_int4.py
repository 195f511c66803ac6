"""Asymmetric int4 (a zero point per group, ``quantize_gptq(asym=True)``) against the symmetric default, measured as
perplexity on SmolLM2-135M: does a per-group zero point pay after the residual rotation?

    python benchmarks/asym_int4.py FP32_ART [--rates 0,0.15] [--samples 32,24] [--texts wiki,code] [--tokens N]

FP32_ART: a rotated, tied fp32 artifact of the default options (e.g. ``~/.cache/uniql/models/q19/
mix512-rot-tied-fp32``, ``compress(quantize=False)``); it is quantized twice by ``uniql.quantize_artifact`` with the
default precision policy (int8 table / down / v / last-8 up, GPTQ int4 g64 with MSE scales and activation order
elsewhere), once symmetric and once asymmetric. The runtime kernels read symmetric int4 only, so both variants store
their int4 linears dequantized in float32 (``(q - z) * fp16(s)``, exact in float32): the same function an int4
kernel computes, up to the order of float additions, and the GPTQ stream of each later layer runs on exactly those
weights. The symmetric variant is also scored from the real int4 artifact of the same options when ``--int4 ART`` is
given. ``--samples``: calibration windows per run (one sym / asym pair per value: how much a different
calibration sample alone moves the result, i.e. the noise a sym / asym difference must exceed). Perplexity:
uniql.bench.quality's windows (--tokens per text, default 2048, windows of 512, W4A32). Bytes: what the int4 linears would
take (codes 0.5 B / weight, float16 scales, zero points packed two per byte).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _quantize(fp32: Path, out: Path, asym: bool, samples: int) -> dict:
    """quantize_artifact with int4 linears kept as float32 dequantized weights; bytes of the int4 linears."""
    import uniql.compress.steps as pl   # the GPTQ step and the float16 rounding quantize_artifact calls
    from uniql.compress.quant import dequantize
    from uniql.compress.requantize import quantize_artifact

    acc = {"weights": 0, "codes": 0, "scales": 0, "zeros": 0}
    orig_blocks, orig_f16 = pl.gptq_blocks, pl.f16_scales

    def blocks(W, H, group, **kw):
        return orig_blocks(W, H, group, **dict(kw, asym=asym))

    def f16(q):
        q = orig_f16(q)  # scales rounded to float16 (zeros kept), as the artifact stores them
        acc["weights"] += q.shape[0] * q.shape[1]
        acc["codes"] += q.packed.nbytes
        acc["scales"] += q.scales.size * 2
        acc["zeros"] += (q.zeros.size + 1) // 2 if q.zeros is not None else 0
        return dequantize(q)

    pl.gptq_blocks, pl.f16_scales = blocks, f16
    try:
        if not (out / "uniql_report.json").is_file():
            quantize_artifact(fp32, out, overwrite=True, progress=True, seq_len=512, num_samples=samples)
    finally:
        pl.gptq_blocks, pl.f16_scales = orig_blocks, orig_f16
    return acc


def _ppl(art: Path, rates: list[float], texts: dict[str, np.ndarray]) -> dict[str, float]:
    import uniql
    from uniql.models.runtime import int4_activations

    m = uniql.load(art, max_seq=512)
    out = {}
    with int4_activations("fp32"):
        for r in rates:
            m.set_rate(r)
            for t, ids in texts.items():
                out[f"{t}@{r:g}"] = float(m.perplexity(ids, window=512))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("--rates", default="0,0.15")
    ap.add_argument("--samples", default="32")
    ap.add_argument("--texts", default="wiki")
    ap.add_argument("--tokens", type=int, default=2048, help="evaluation tokens per text")
    ap.add_argument("--int4", type=Path, help="the real symmetric int4 artifact of the same options (a check)")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache/uniql/models/q19")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from uniql.bench.quality import eval_ids
    from uniql.formats import checkpoint

    rates = [float(r) for r in a.rates.split(",")]
    tok = checkpoint.load_tokenizer(a.fp32)
    texts = {t: eval_ids(tok, t, a.tokens) for t in a.texts.split(",")}
    keys = [f"{t}@{r:g}" for r in rates for t in texts]
    res: dict = {"fp32": _ppl(a.fp32, rates, texts)}
    if a.int4:
        res["sym, real int4 artifact"] = {"ppl": _ppl(a.int4, rates, texts)}
    for n in (int(v) for v in a.samples.split(",")):
        for name, asym in (("sym", False), ("asym", True)):
            d = a.out / f"asym-sim-{name}" if n == 32 else a.out / f"asym-sim-{name}-n{n}"
            b = _quantize(a.fp32, d, asym, n)
            res[f"{name}, {n} windows"] = {"ppl": _ppl(d, rates, texts), "int4_bytes": b}
    lines = ["| variant | int4 linears MB (codes + scales + zeros) | " + " | ".join(f"ppl {k}" for k in keys)
             + " | " + " | ".join(f"x fp32 {k}" for k in keys) + " |", "|---|---|" + "---|" * (2 * len(keys))]
    for name, v in res.items():
        if name == "fp32":
            continue
        b, p = v.get("int4_bytes"), v["ppl"]
        mb = f"{(b['codes'] + b['scales'] + b['zeros']) / 1e6:.2f}" if b else "-"
        lines.append(f"| {name} | {mb} | " + " | ".join(f"{p[k]:.3f}" for k in keys) + " | "
                     + " | ".join(f"{p[k] / res['fp32'][k]:.4f}" for k in keys) + " |")
    lines.append("| fp32 | - | " + " | ".join(f"{res['fp32'][k]:.3f}" for k in keys) + " |" + " - |" * len(keys))
    print("\n".join(lines))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

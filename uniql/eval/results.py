"""Per-document results, their metrics with standard errors, paired differences, tables and JSON.

Every result keeps one value per document, so two models evaluated on the same documents can be compared
document by document: the paired difference d_i = other_i - base_i has standard error sd(d) / sqrt(n), usually far
smaller than the two independent standard errors (the documents' difficulty cancels).

Metrics (mean over n documents, standard error of the mean = sample sd / sqrt(n), lm-eval-harness's convention,
which for a 0/1 score is sqrt(p (1 - p) / (n - 1))):

- choice: ``acc`` (argmax of the choices' log-likelihoods is gold; ties to the lowest index), ``acc_norm`` (the
  same on log-likelihood / characters of the choice, lm-eval's acc_norm); with subjects (MMLU) also ``acc_macro``,
  the mean of the per-subject accuracies (standard error from the per-subject ones).
- lastword: ``acc`` (the continuation is the greedy one), ``ppl`` = exp(mean over documents of -log-likelihood of
  the continuation) (lm-eval's LAMBADA perplexity; standard error by the delta method).
- perplexity: ``ppl`` = exp(sum of token NLLs / number of scored tokens), standard error by the delta method on the
  ratio estimator (windows are the units); ``nll`` the mean token NLL (log ppl).
Paired differences: ``acc``/``acc_norm`` as above; ``log_ppl`` (other minus base, ratio estimator on the
per-document differences; exp of it is the perplexity ratio).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from uniql.errors import InvalidArgumentError

__all__ = ["TaskResult", "Metric", "paired", "average", "paired_average", "format_table", "format_paired", "to_json",
           "from_json", "from_twin_json"]


@dataclass(frozen=True)
class Metric:
    value: float
    stderr: float

    def __str__(self) -> str:
        return f"{self.value:.4f} ± {self.stderr:.4f}"


@dataclass
class TaskResult:
    """One task at one rate. ``values``: per-document arrays, keyed by kind: choice {acc, acc_norm},
    lastword {acc, ll}, perplexity {nll, tokens}."""

    task: str
    kind: str
    rate: float | None
    doc_ids: list[int]
    values: dict[str, list[float]]
    seconds: float
    tokens: int
    groups: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def docs(self) -> int:
        return len(self.doc_ids)

    def metrics(self) -> dict[str, Metric]:
        v = {k: np.asarray(x, np.float64) for k, x in self.values.items()}
        out: dict[str, Metric] = {}
        if self.kind in ("choice", "lastword"):
            out["acc"] = _mean(v["acc"])
        if self.kind == "choice":
            out["acc_norm"] = _mean(v["acc_norm"])
            if self.groups:
                subj = sorted(set(self.groups))
                g = np.asarray(self.groups)
                per = [_mean(v["acc"][g == s]) for s in subj]
                se = math.sqrt(sum(m.stderr ** 2 for m in per)) / len(per)  # nan when a subject has one doc
                out["acc_macro"] = Metric(float(np.mean([m.value for m in per])), se)
        if self.kind == "lastword":
            m = _mean(-v["ll"])
            out["ppl"] = Metric(math.exp(m.value), math.exp(m.value) * m.stderr)
        if self.kind == "perplexity":
            m = _ratio(v["nll"], v["tokens"])
            out["nll"] = m
            out["ppl"] = Metric(math.exp(m.value), math.exp(m.value) * m.stderr)
        return out

    def __getattr__(self, name: str) -> Any:  # res.acc, res.acc_stderr, res.ppl, ... (as zeroshot.TaskResult)
        if name.startswith("__") or name in ("values", "kind"):
            raise AttributeError(name)
        base, se = (name[:-7], True) if name.endswith("_stderr") else (name, False)
        ms = self.metrics()
        if base in ms:
            return ms[base].stderr if se else ms[base].value
        raise AttributeError(f"{type(self).__name__} of kind {self.kind!r} has no metric {name!r}")

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"task": self.task, "kind": self.kind, "rate": self.rate, "docs": self.docs,
                             "seconds": self.seconds, "tokens": self.tokens}
        for k, m in self.metrics().items():
            d[k], d[k + "_stderr"] = m.value, m.stderr
        d["per_doc"] = {"doc_ids": self.doc_ids, **self.values, **({"groups": self.groups} if self.groups else {})}
        if self.extra:
            d["extra"] = self.extra
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TaskResult":
        pd = dict(d["per_doc"])
        ids, groups = pd.pop("doc_ids"), pd.pop("groups", None)
        return cls(d["task"], d["kind"], d["rate"], list(ids), {k: list(v) for k, v in pd.items()},
                   float(d["seconds"]), int(d["tokens"]), groups, dict(d.get("extra", {})))


def _mean(x: np.ndarray) -> Metric:
    n = x.size
    if n == 0:
        return Metric(float("nan"), float("nan"))
    return Metric(float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"))


def _ratio(num: np.ndarray, den: np.ndarray) -> Metric:
    """sum(num) / sum(den) and its delta-method standard error over the units."""
    n = num.size
    r = float(num.sum() / den.sum())
    if n < 2:
        return Metric(r, float("nan"))
    z = (num - r * den) / den.mean()
    return Metric(r, float(z.std(ddof=1) / math.sqrt(n)))


def paired(base: TaskResult, other: TaskResult) -> dict[str, Metric]:
    """other - base on the same documents: per-document differences, their mean and standard error."""
    if base.kind != other.kind or base.doc_ids != other.doc_ids:
        raise InvalidArgumentError(f"paired differences need the same documents: {base.task} ({base.docs} docs, "
                                   f"{base.kind}) vs {other.task} ({other.docs} docs, {other.kind})")
    b = {k: np.asarray(x, np.float64) for k, x in base.values.items()}
    o = {k: np.asarray(x, np.float64) for k, x in other.values.items()}
    out: dict[str, Metric] = {}
    for k in ("acc", "acc_norm"):
        if k in b:
            out[k] = _mean(o[k] - b[k])
    if base.kind == "lastword":
        out["log_ppl"] = _mean(b["ll"] - o["ll"])
    if base.kind == "perplexity":
        if b["tokens"].tolist() != o["tokens"].tolist():
            raise InvalidArgumentError("paired perplexity needs the same windows (same tokenizer and window)")
        out["log_ppl"] = _ratio(o["nll"] - b["nll"], b["tokens"])
    return out


def average(per: Mapping[str, TaskResult], tasks: Sequence[str], metric: str = "acc") -> Metric:
    """Unweighted mean of ``metric`` over ``tasks`` (the paper's average), standard error sqrt(sum se^2) / k
    (tasks are independent samples)."""
    ms = [per[t].metrics()[metric] for t in tasks]
    return Metric(sum(m.value for m in ms) / len(ms), math.sqrt(sum(m.stderr ** 2 for m in ms)) / len(ms))


def paired_average(base: Mapping[str, TaskResult], other: Mapping[str, TaskResult], tasks: Sequence[str],
                   metric: str = "acc") -> Metric:
    """other - base of :func:`average`, from the per-task paired differences."""
    ds = [paired(base[t], other[t])[metric] for t in tasks]
    return Metric(sum(d.value for d in ds) / len(ds), math.sqrt(sum(d.stderr ** 2 for d in ds)) / len(ds))


Results = Mapping[Any, Mapping[str, TaskResult]]  # column (rate or label) -> task -> result


def _head(c: Any) -> str:
    return f"{c:.0%}" if isinstance(c, float) else str(c)


def format_table(results: Results, metric: str = "acc") -> str:
    """Markdown: one row per task that has ``metric`` ("value ± stderr" per column), then (for accuracies) the
    average over those tasks and its ratio to the first column."""
    cols = list(results)
    tasks = [t for t in dict.fromkeys(t for c in cols for t in results[c])
             if any(t in results[c] and metric in results[c][t].metrics() for c in cols)]
    lines = ["| task | docs | " + " | ".join(_head(c) for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for t in tasks:
        cells = [str(results[c][t].metrics()[metric]) if t in results[c] else "-" for c in cols]
        docs = next(results[c][t].docs for c in cols if t in results[c])
        lines.append(f"| {t} | {docs} | " + " | ".join(cells) + " |")
    if metric.startswith("acc") and tasks:
        avgs = []
        for c in cols:
            vals = [results[c][t].metrics()[metric].value for t in tasks if t in results[c]]
            avgs.append(sum(vals) / len(vals) if len(vals) == len(tasks) else float("nan"))
        lines.append("| average | | " + " | ".join(f"{a:.4f}" for a in avgs) + " |")
        lines.append(f"| ratio to {_head(cols[0])} | | "
                     + " | ".join(f"{a / avgs[0]:.3f}" if avgs[0] else "-" for a in avgs) + " |")
    return "\n".join(lines)


def format_paired(base: Mapping[str, TaskResult], results: Results) -> str:
    """Markdown: per task and column, the paired difference to ``base`` of acc (choice, lastword) or log ppl
    (perplexity), "diff ± stderr"."""
    cols = list(results)
    lines = ["| task | metric | " + " | ".join(_head(c) for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for t, b in base.items():
        for metric in (("acc", "log_ppl") if b.kind == "lastword" else ("log_ppl",) if b.kind == "perplexity"
                       else ("acc",)):
            cells = [str(paired(b, results[c][t])[metric]) if t in results[c] else "-" for c in cols]
            lines.append(f"| {t} | Δ{metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(results: Results, **meta: Any) -> dict[str, Any]:
    return {**meta, "results": {str(c): {t: r.as_dict() for t, r in per.items()} for c, per in results.items()}}


def from_json(d: Mapping[str, Any]) -> dict[str, dict[str, TaskResult]]:
    return {c: {t: TaskResult.from_dict(r) for t, r in per.items()} for c, per in d["results"].items()}


def from_twin_json(d: Mapping[str, Any]) -> dict[str, dict[str, TaskResult]]:
    """The per-document JSON of the GPU twin's zero-shot run (``benchmarks/finetune_gpu.py zeroshot``:
    {artifact: {"0.15": {task: {acc, acc_norm, doc_ids}}}}) as results keyed ``"artifact@0.15"``; every task is a
    multiple-choice one there (MMLU without its subject labels: ``acc`` only, no ``acc_macro``)."""
    out: dict[str, dict[str, TaskResult]] = {}
    for name, per_rate in d.items():
        for r, per_task in per_rate.items():
            out[f"{name}@{r}"] = {t: TaskResult(t, "choice", float(r), list(v["doc_ids"]),
                                                {"acc": list(v["acc"]), "acc_norm": list(v["acc_norm"])}, 0.0, 0)
                                  for t, v in per_task.items()}
    return out

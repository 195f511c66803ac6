"""Request-level scoring on a C-runtime model: log-likelihood (and greedy match) of continuations, rolling
log-likelihood of a whole text, and generation until stop strings. Orchestration only: the forward pass, the
log-softmax (``_C.nll``, float64) and the argmax (``_C.sample`` at temperature 0) run in C.

KV-cache reuse: a :class:`Scorer` remembers the tokens now in the model's cache. A new request keeps the longest
prefix it shares with them (``Model.truncate``, the cache rewound in C) and computes only the rest, but always
re-feeds at least the last context token, whose logits predict the first continuation token. Requests in
document order therefore share the context of a document's choices, and MMLU questions of one subject share the
five-shot header. Models without ``truncate`` (SSM/hybrid runtimes, whose state cannot be rewound) start every
request afresh. Results equal a fresh computation of each request up to float32 blocking (relative 1e-6).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from uniql import _C
from uniql.errors import InvalidArgumentError, RangeError

__all__ = ["Scorer", "encode", "common_prefix"]


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (a ``tokenizers.Tokenizer`` or a transformers tokenizer)."""
    try:
        enc = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        enc = tokenizer.encode(text)
    return [int(t) for t in getattr(enc, "ids", enc)]


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix every sequence of ``seqs`` shares (0 for none or an empty one)."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


class Scorer:
    """Scores requests on one model at its current rate (make a new one after ``set_rate``: the cached keys and
    values belong to the old rate)."""

    def __init__(self, model: Any, reuse: bool | None = None) -> None:
        self.model = model
        self.reuse = getattr(model, "can_truncate", hasattr(model, "truncate")) if reuse is None else bool(reuse)
        self.max_seq = int(model.max_seq)
        self._cached: list[int] = []
        self._rng = np.zeros(1, np.uint64)
        model.reset()

    def forget(self) -> None:
        """The model's state no longer holds ``_cached`` (someone else used the model)."""
        self._cached = []

    def loglikelihood(self, ctx: Sequence[int], cont: Sequence[int], greedy: bool = False) -> tuple[float, bool]:
        """(sum_t log p(cont_t | ctx, cont_<t), whether every continuation token is the argmax). Contexts longer
        than the cache allows lose tokens on the left (as lm-eval-harness does)."""
        if not len(ctx) or not len(cont):
            raise InvalidArgumentError("context and continuation need at least one token each")
        room = self.max_seq - len(cont) + 1  # the last continuation token is never fed
        if room < 1:
            raise RangeError(f"continuation of {len(cont)} tokens does not fit max_seq {self.max_seq}")
        ctx = list(ctx)[-room:]
        cont = [int(t) for t in cont]
        seq = ctx + cont[:-1]
        m = self.model
        if self.reuse:
            keep = min(common_prefix((self._cached, seq)), len(ctx) - 1)
            m.truncate(keep)
        else:
            keep = 0
            m.reset()
        self._cached = []  # in case forward fails half-way
        logits = m.forward(np.asarray(seq[keep:], np.int32), n_logits=len(cont))
        self._cached = seq
        nll = np.empty(len(cont), np.float64)
        _C.nll(logits, np.asarray(cont, np.int32), nll)  # log-softmax + gather in float64, in C
        is_greedy = False
        if greedy:
            is_greedy = all(int(_C.sample(logits[i], 0.0, 1.0, self._rng)) == t for i, t in enumerate(cont))
        return -float(nll.sum()), is_greedy

    def nll_tokens(self, ids: Sequence[int]) -> tuple[float, int]:
        """(sum of -log p(ids[t] | ids[:t]) for t >= 1, number of scored tokens) of one fresh sequence that fits
        the cache (a perplexity window)."""
        if len(ids) < 2:
            raise InvalidArgumentError("a perplexity window needs at least 2 tokens")
        if len(ids) > self.max_seq:
            raise RangeError(f"window of {len(ids)} tokens exceeds max_seq {self.max_seq}")
        ll, _ = self.loglikelihood(ids[:1], ids[1:])
        return -ll, len(ids) - 1

    def generate(self, ctx: Sequence[int], until: Sequence[str], max_new_tokens: int, tokenizer: Any,
                 eos: Sequence[int] = (), temperature: float = 0.0, seed: int = 0) -> str:
        """Text generated after ``ctx`` (greedy at temperature <= 0), cut before the first stop string of
        ``until``; stops at an eos id, after ``max_new_tokens`` or when the cache is full. The context loses
        tokens on the left to leave room for ``max_new_tokens``."""
        if max_new_tokens < 1:
            raise InvalidArgumentError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not len(ctx):
            raise InvalidArgumentError("generation needs at least one context token")
        ctx = list(ctx)[-max(1, self.max_seq - max_new_tokens):]
        m = self.model
        m.reset()
        self._cached = []
        rng = np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64)
        logits = m.forward(np.asarray(ctx, np.int32), last_only=True)
        out: list[int] = []
        text = ""
        stops = [s for s in until if s]
        eos_set = {int(e) for e in eos}
        for _ in range(max_new_tokens):
            tok = int(_C.sample(logits[0], float(temperature), 1.0, rng))
            if tok in eos_set:
                break
            out.append(tok)
            text = tokenizer.decode(out)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                return text[:cut]
            if m.position >= self.max_seq:
                break
            logits = m.forward(np.array([tok], np.int32), last_only=True)
        return text


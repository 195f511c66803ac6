"""Batched decoding (continuous batching) over the C runtime.

A :class:`BatchDecoder` wraps one loaded model (``uniql.load`` of a checkpoint or an elastic artifact) and hands
out :class:`Sequence` objects, each with its own C state (KV cache, SSM/conv states, position). A sequence joins
with :meth:`BatchDecoder.prefill` (its prompt, on its own state) and then advances one token per
:meth:`BatchDecoder.step`, which runs every sequence given to it in one batched decode step: the linears run once
over all rows (``uq_hy_decode_batch`` in C), attention, RoPE and the SSM recurrence per
sequence. Sequences join and leave between steps; the result of each is bit-identical to decoding it alone.

The rate (keep sizes) is the model's, shared by every sequence of a step; switching it between steps keeps every
KV cache and SSM state valid (they are held at the stored sizes).

Not thread-safe: one thread drives a decoder (the server's engine thread); the GIL is released inside C calls.
"""
from __future__ import annotations

from typing import Any, Sequence as Seq

import numpy as np

from uniql import _C
from uniql.errors import InvalidArgumentError, RangeError, UnsupportedError
from uniql.models.runtime import ids_array

__all__ = ["BatchDecoder", "Sequence"]


class Sequence:
    """One sequence of a :class:`BatchDecoder`: its C state and position. Reuse with :meth:`reset`."""

    def __init__(self, decoder: "BatchDecoder", state: Any) -> None:
        self.decoder = decoder
        self.state = state

    @property
    def position(self) -> int:
        """Tokens held by the sequence's state."""
        return int(self.decoder._state_info(self.state)[0])

    @property
    def state_bytes(self) -> int:
        return int(self.decoder._state_info(self.state)[1])

    def reset(self) -> None:
        """Forgets the sequence (position 0, SSM/conv states zeroed) so that the object can serve another one."""
        self.decoder._state_reset(self.state)


class BatchDecoder:
    """Continuous batching over ``model`` (a :class:`uniql.models.runtime.Model` or :class:`uniql.models.runtime.Model`, or
    their elastic subclasses): up to ``max_batch`` sequences per step, each of up to ``max_seq`` tokens."""

    def __init__(self, model: Any, max_batch: int = 16, max_seq: int | None = None, max_chunk: int = 128) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise InvalidArgumentError(f"max_batch must be an int >= 1, got {max_batch!r}")
        self.model = model
        self.max_batch = max_batch
        self.max_seq = int(model.max_seq if max_seq is None else max_seq)
        if self.max_seq < 1:
            raise InvalidArgumentError(f"max_seq must be >= 1, got {self.max_seq}")
        self.max_chunk = int(max_chunk)
        self.vocab_size = int(model.config.vocab_size)
        self.head_bytes = 0  # an R16 copy of a tied int4 lm_head, when one is made
        cm = model._cm
        if model._c_forward is not _C.hy_forward:
            raise UnsupportedError(f"batched decoding needs a C-runtime model, got {type(model).__name__}")
        self._state_new = _C.hy_state_new
        self._state_info, self._state_reset, self._forward = _C.hy_state_info, _C.hy_state_reset, _C.hy_forward
        self._batch = _C.hy_batch_new(cm, max_batch)
        self._decode = _C.hy_decode_batch
        q = getattr(model, "_tied_q4", None)
        if q is not None and q.group % 8 == 0:  # batched lm_head of a tied int4 embedding (C docs)
            packed, scales = _C.q4_repack((q.packed, q.scales, q.group, q.shape[1], None), 1, 1)
            _C.hy_batch_set_head(self._batch, (packed, scales, q.group, q.shape[1], None, (q.shape[0], 1, 1)))
            self.head_bytes = packed.nbytes + scales.nbytes

    @property
    def batched(self) -> bool:
        """True when a step runs all its sequences in one C call (else one sequence at a time)."""
        return self._batch is not None

    def new_sequence(self) -> Sequence:
        """A fresh sequence (allocates its KV cache, of the model's ``kv_dtype``, / SSM states: ``max_seq``
        positions)."""
        return Sequence(self, self._state_new(self.model._cm, self.max_seq, self.max_chunk, self.model._kv_code))

    def prefill(self, seq: Sequence, ids: Any) -> np.ndarray:
        """Runs ``ids`` on ``seq`` (continuing its state); float32 logits (vocab,) of the last token."""
        a = ids_array(ids, "prompt")
        if seq.position + a.size > self.max_seq:
            raise RangeError(f"{seq.position + a.size} tokens do not fit the context of {self.max_seq}")
        out = np.empty((1, self.vocab_size), np.float32)
        self._forward(self.model._cm, seq.state, a, out)
        return out[0]

    def step(self, seqs: Seq[Sequence], ids: Any) -> np.ndarray:
        """One new token per sequence (``ids[i]`` continues ``seqs[i]``); float32 logits (n, vocab)."""
        n = len(seqs)
        a = ids_array(ids, "ids")
        if a.size != n:
            raise InvalidArgumentError(f"{a.size} ids for {n} sequences")
        if n > self.max_batch:
            raise InvalidArgumentError(f"{n} sequences exceed max_batch {self.max_batch}")
        out = np.empty((n, self.vocab_size), np.float32)
        if self._batch is not None:
            self._decode(self.model._cm, self._batch, [s.state for s in seqs], a, out)
        else:
            if len({id(s) for s in seqs}) != n:
                raise InvalidArgumentError("a sequence is given twice in one step")
            for i, s in enumerate(seqs):
                self._forward(self.model._cm, s.state, a[i:i + 1], out[i:i + 1])
        return out

    def memory_bytes(self, seqs: Seq[Sequence] = ()) -> int:
        """Step scratch plus the states of ``seqs``."""
        b = int(_C.hy_batch_info(self._batch)[1])
        return b + self.head_bytes + sum(s.state_bytes for s in seqs)

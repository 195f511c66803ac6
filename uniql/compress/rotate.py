"""uniql.compress.rotate: an orthogonal rotation of the residual stream, fused offline into the weights.

int4 groups of a linear that reads the residual stream share one scale per 128 input columns; a few outlier
channels of the stream (large embedding / norm-scale entries) set that scale and every other column of the group
is rounded coarsely. Rotating the stream by an orthogonal Q spreads each outlier over every channel while leaving
the network's function unchanged:

* every RMSNorm that feeds the stream into a linear has its scale folded into the linears that read it
  (W <- W diag(g)) and becomes all ones; rms(x Q) = rms(x), so the norm commutes with the rotation;
* readers (q/k/v, gate/up, Mamba in_proj) take W <- W Q, writers (o_proj, down_proj, Mamba out_proj) W <- Q^T W
  and b <- b Q, the embedding E <- E Q, the output head W <- W diag(g_final) Q;
* a tied embedding stays tied: the one table is E Q and the final norm's scale moves into a final mix
  F = Q^T diag(g_final) Q (hidden x hidden, symmetric) that the runtime applies between the final RMSNorm and the
  head: (RMSNorm(x Q) F^T) (E Q)^T = (RMSNorm(x) diag(g_final)) E^T. F costs hidden^2 floats (SmolLM2: 1.3 MB)
  against a second vocab x hidden table (28.3 M weights) when untied; ``keep_tied=False`` unties instead (the
  head E diag(g_final) Q, the embedding E Q).

The residual width is never pruned, so the rotated model stays the same function at every pruning rate; sorting
and block importances (cosines) are unchanged. Q = diag(s) (H_p (x) R_m) / sqrt(p) with n = p m (p the largest
power of two dividing n): a randomized Hadamard transform, times a small random orthogonal block when n is not a
power of two (SmolLM2: 576 = 64 x 9). The arithmetic is in C (``csrc/compress/rotate.c``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from uniql.errors import FormatError, ShapeError
from uniql.models.runtime import final_mix_name  # the loaders' name, re-exported for the pipeline

#: embedding and final-norm names of every supported architecture
EMBED_NAMES = ("model.embed_tokens.weight", "backbone.embeddings.weight", "backbone.embedding.weight",
               "model.embeddings.weight")
FINAL_NORM_NAMES = ("model.norm.weight", "backbone.norm_f.weight", "model.norm_f.weight",
                    "model.final_layernorm.weight")
#: norms in front of a layer's mixer (attention / Mamba / Nemotron-H MLP) and in front of its MLP
MIXER_NORMS = ("input_layernorm.weight", "norm.weight")
MLP_NORMS = ("post_attention_layernorm.weight", "pre_ff_layernorm.weight")
MIXER_READERS = ("q_proj", "k_proj", "v_proj", "in_proj")
MLP_READERS = ("gate_proj", "up_proj")
WRITERS = ("o_proj", "down_proj", "out_proj")


class Rotation:
    """The orthogonal n x n rotation of a residual stream of width n, from a seed (deterministic)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        from uniql import _C

        self.n, self.seed = int(n), int(seed)
        m = _C.rotation_size(self.n)
        self.signs = np.empty(self.n, np.float64)
        self.R = np.empty((m, m), np.float64)
        _C.rotation_init(self.n, self.seed & 0xFFFFFFFFFFFFFFFF, self.signs, self.R)

    def rows(self, W: Any, scale: Any = None) -> np.ndarray:
        """W diag(scale) Q as a new float32 array (W: (rows, n); scale: (n,) or None)."""
        from uniql import _C

        out = np.array(W, dtype=np.float32, order="C", copy=True)
        if out.ndim == 1:
            return self.rows(out[None])[0] if scale is None else self.rows(out[None], scale)[0]
        sc = None if scale is None else np.ascontiguousarray(scale, dtype=np.float32)
        _C.rotate(out, 0, sc, self.signs, self.R)
        return out

    def cols(self, W: Any) -> np.ndarray:
        """Q^T W as a new float32 array (W: (n, cols))."""
        from uniql import _C

        out = np.array(W, dtype=np.float32, order="C", copy=True)
        _C.rotate(out, 1, None, self.signs, self.R)
        return out

    def matrix(self) -> np.ndarray:
        """Q as a dense float32 matrix (tests, inspection)."""
        return self.rows(np.eye(self.n, dtype=np.float32))


def _first(d: dict[str, Any], names: tuple[str, ...], prefix: str = "") -> str | None:
    for n in names:
        if prefix + n in d:
            return prefix + n
    return None


def rotate_layer(lay: dict[str, Any], p0: str, rot: Rotation) -> dict[str, Any]:
    """One decoder layer's tensors (names ``p0 + ...``) with the residual stream rotated and its RMSNorm scales
    folded into the readers (the norms become ones). Tensors that neither read nor write the stream (the Mamba
    gated norm, conv1d, A_log ...) are returned as they are."""
    out = dict(lay)
    n = rot.n
    mixer_norm = _first(lay, MIXER_NORMS, p0)
    mlp_norm = _first(lay, MLP_NORMS, p0) or mixer_norm
    folded: set[str] = set()
    for name, v in lay.items():
        if not name.startswith(p0) or not name.endswith(".weight"):
            continue
        base = name[len(p0):-len(".weight")]
        proj = base.rsplit(".", 1)[-1]
        if proj in MIXER_READERS or proj in MLP_READERS:
            norm = mixer_norm if proj in MIXER_READERS else mlp_norm
            if norm is None:
                raise FormatError(f"{name}: no RMSNorm in front of it to fold (looked for {MIXER_NORMS})")
            if v.ndim != 2 or v.shape[1] != n:
                raise ShapeError(f"{name} has shape {v.shape}; a reader of the residual stream needs {n} columns")
            out[name] = rot.rows(v, lay[norm])
            folded.add(norm)
        elif proj in WRITERS:
            if v.ndim != 2 or v.shape[0] != n:
                raise ShapeError(f"{name} has shape {v.shape}; a writer of the residual stream needs {n} rows")
            out[name] = rot.cols(v)
            b = p0 + base + ".bias"
            if b in lay:
                out[b] = rot.rows(lay[b])
    for norm in folded:
        out[norm] = np.ones(n, np.float32)
    return out


def rotate_shared(shared: dict[str, Any], rot: Rotation, tied: bool, keep_tied: bool = False) -> dict[str, Any]:
    """Embedding, final norm and output head rotated: E Q, ones, and either W_head diag(g_final) Q under
    ``lm_head.weight`` (untied: the caller sets ``tie_word_embeddings`` to False) or, for a tied embedding with
    ``keep_tied``, no head and the final mix Q^T diag(g_final) Q under :func:`final_mix_name`."""
    out = dict(shared)
    emb, fin = _first(shared, EMBED_NAMES), _first(shared, FINAL_NORM_NAMES)
    if emb is None or fin is None:
        raise FormatError(f"rotation needs the embedding ({EMBED_NAMES[0]}, ...) and the final norm "
                          f"({FINAL_NORM_NAMES[0]}, ...)")
    if tied and keep_tied:
        out.pop("lm_head.weight", None)
        out[final_mix_name(fin)] = rot.rows(np.ascontiguousarray(rot.matrix().T), shared[fin])
    else:
        head = shared[emb] if tied or "lm_head.weight" not in shared else shared["lm_head.weight"]
        out["lm_head.weight"] = rot.rows(head, shared[fin])
    out[emb] = rot.rows(shared[emb])
    out[fin] = np.ones(rot.n, np.float32)
    return out


def mix_f16(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float16 copy, its exact float32 widening) of a final mix: a quantized artifact stores the mix in float16
    (half the bytes; its rounding, ~5e-4 relative, is far below the int4 / int8 head's) and calibrates the head on
    the widened copy, which is what the runtime computes with (conversions in C)."""
    from uniql import _C

    F = np.ascontiguousarray(F, dtype=np.float32)
    h = np.empty(F.shape, np.float16)
    _C.convert(F, h)
    w = np.empty(F.shape, np.float32)
    _C.convert(h, w)
    return h, w


def mix_rows(X: np.ndarray, F: np.ndarray | None) -> np.ndarray:
    """X (T, n) float32 times F^T (the runtime's final mix, in C); X itself when F is None."""
    from uniql import _C

    if F is None:
        return X
    X = np.ascontiguousarray(X, dtype=np.float32)
    n = F.shape[0]
    Y = np.empty((X.shape[0], n), np.float32)
    _C.linear_forward((np.ascontiguousarray(F, dtype=np.float32), None, 0, n, None), X, Y, 1, n, 1, n)
    return Y

"""The steps ``compress`` and ``quantize_artifact`` share, whatever the layer kinds: the one GPTQ / quantization
step of a sorted layer (:func:`quantize_layer`), the one writer of a layer's artifact tensors
(:func:`artifact_layer`) and of the embedding / final norm / lm_head (:func:`head_tensors`), and the quantization
record of the config (:func:`quant_record`).

A sorted layer is a dict of float tensors under layer-0 names (``<prefix>0.``); quantizing it runs the sorted float
layer (a one-layer runtime model) on the quantized stream for the Hessians of its linears' own inputs, GPTQs every
linear of the layer's plan and propagates the stream through the quantized layer. ``compress(quantize=True)`` and
``quantize_artifact(compress(quantize=False))`` call the same functions on the same sorted layers, so they write
the same bytes.
"""
from __future__ import annotations

import resource
import time
from typing import Any, Callable, Sequence

import numpy as np

from uniql.compress.linalg import Covariance
from uniql.compress.quant import quantize_gptq, quantize_int8, quantize_rtn
from uniql.compress.rotate import final_mix_name, mix_f16, mix_rows

#: one GPTQ call quantizes at most this many rows (:func:`gptq_blocks`)
GPTQ_ROW_CHUNK = 8192

#: a layer linear's plan entry: (linear base under layer-0 names, runtime capture of its input, int4 group)
PlanEntry = tuple[str, str, int]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class StageTimer:
    """Seconds spent per stage (calibrate, sort, quantize, propagate, write), for the report."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def add(self, stage: str, dt: float) -> None:
        self.t[stage] = self.t.get(stage, 0.0) + dt


def o_proj_group(head_dim: int, group: int) -> int:
    """o_proj group size: the largest even divisor of the head dim that is <= group (groups inside a head)."""
    for g in range(min(group, head_dim), 0, -1):
        if head_dim % g == 0 and (g % 2 == 0 or g == head_dim):
            return g
    return 1


def gptq_blocks(W: np.ndarray, H: np.ndarray, group: int, damp: float, mse_scale: bool = False,
                act_order: bool = False, asym: bool = False, refit: int = 0) -> Any:
    """GPTQ in blocks of GPTQ_ROW_CHUNK rows: rows are independent given H (the error feedback runs along a row),
    so the result is identical to one call, while the float64 workspace (rows x cols) stays bounded -- an lm_head
    of 128k x 4096 would otherwise need 4 GB of it."""
    from uniql.compress.quant import QuantizedTensor

    kw = dict(group=group, damp=damp, mse_scale=mse_scale, act_order=act_order, asym=asym, refit=refit)
    if W.shape[0] <= GPTQ_ROW_CHUNK:
        return quantize_gptq(W, H, **kw)
    parts = [quantize_gptq(np.ascontiguousarray(W[r:r + GPTQ_ROW_CHUNK]), H, **kw)
             for r in range(0, W.shape[0], GPTQ_ROW_CHUNK)]
    return QuantizedTensor(np.concatenate([q.packed for q in parts]), np.concatenate([q.scales for q in parts]),
                           (int(W.shape[0]), int(W.shape[1])), group,
                           np.concatenate([q.zeros for q in parts]) if asym else None)


def _scales_via_f16(scales: np.ndarray) -> np.ndarray:
    from uniql import _C

    h = np.empty(scales.shape, np.float16)
    _C.convert(scales, h)
    s = np.empty(scales.shape, np.float32)
    _C.convert(h, s)
    return s


def f16_scales(q: Any) -> Any:
    """The quantized tensor with its scales rounded to float16, as the artifact stores and the runtime uses them
    (so the next layer is calibrated on exactly what deployment computes)."""
    from uniql.compress.quant import QuantizedTensor

    return QuantizedTensor(q.packed, _scales_via_f16(q.scales), q.shape, q.group, q.zeros)


def f16_scales8(q: Any) -> Any:
    """An int8 tensor with its scales rounded to float16 (as stored and used), like :func:`f16_scales`."""
    from uniql.compress.quant import Int8Tensor

    return Int8Tensor(q.codes, _scales_via_f16(q.scales), q.shape, q.group)


def capture_moment(model: Any, X: np.ndarray, name: str, mix: np.ndarray | None = None) -> np.ndarray:
    """Second moment (mean over sequences) of capture `name` of a one-layer model's layer 0 over X (B, T, n), its
    rows times ``mix``^T first when given (the head's input after a final mix, :mod:`uniql.compress.rotate`)."""
    cov = None
    for b in range(X.shape[0]):
        _, cap = model.layer_forward(0, X[b], capture=(name,))
        if cov is None:
            cov = Covariance(cap[name].shape[1])
        cov.update(mix_rows(cap[name], mix))
    return cov.mean()


def _propagate(model: Any, X: np.ndarray) -> None:
    """X (B, T, n) <- the outputs of a one-layer model's layer 0, sequence by sequence, in place."""
    for b in range(X.shape[0]):
        X[b], _ = model.layer_forward(0, X[b])


def quantize_layer(model_of: Callable[[dict[str, Any]], Any], sl: dict[str, Any], Xq: np.ndarray,
                   plan: Sequence[PlanEntry], gptq: dict[str, Any], timer: StageTimer,
                   precision: Callable[[str], tuple[str, int]] | None = None) -> dict[str, Any]:
    """GPTQ int4 of one sorted float layer `sl` (layer-0 names) on the quantized stream Xq (B, T, n), for every
    layer kind, in compress and quantize_artifact alike:

    1. the float layer (``model_of(sl)``: a one-layer runtime model) runs on Xq; the second moment of every
       capture named in `plan` ((linear base, capture of its input, group) triples) is accumulated in float64 (C),
       so each Hessian is that of the sorted linear's own input ("calibrate" stage);
    2. every planned linear is GPTQ-quantized with its Hessian (``gptq``: keyword arguments of :func:`gptq_blocks`),
       scales rounded to float16 ("quantize"); ``precision(name)`` (a linear's layer-0 name) -> ("int4", group),
       ("int8", group) or ("f16", 0) overrides the planned group or keeps the linear in float16
       (CompressOptions.storage);
    3. Xq <- the quantized layer's outputs, in place ("propagate").

    Returns `sl` with the planned weights replaced by their quantized form."""
    t = time.perf_counter()
    model = model_of(sl)
    caps = tuple(dict.fromkeys(c for _, c, _ in plan))
    covs: dict[str, Covariance] = {}
    for b in range(Xq.shape[0]):
        _, cap = model.layer_forward(0, Xq[b], capture=caps)
        for k in caps:
            if k not in covs:
                covs[k] = Covariance(cap[k].shape[1])
            covs[k].update(cap[k])
    del model, cap
    H = {k: covs.pop(k).mean() for k in caps}  # each float64 sum freed once its mean is formed
    timer.add("calibrate", time.perf_counter() - t)
    t = time.perf_counter()
    stored = _quantize(sl, [(name, H[c], g) for name, c, g in plan], gptq, precision)
    del H
    timer.add("quantize", time.perf_counter() - t)
    t = time.perf_counter()
    _propagate(model_of(stored), Xq)
    timer.add("propagate", time.perf_counter() - t)
    return stored


def _quantize(sl: dict[str, Any], plan: Any, gptq: dict[str, Any],
              precision: Callable[[str], tuple[str, int]] | None = None) -> dict[str, Any]:
    """`sl` with every (base, Hessian, group) of `plan` replaced by its GPTQ int4 form (fp16 scales), or by a
    float16 copy where the precision policy says so."""
    stored = dict(sl)
    for name, H, g in plan:
        W = np.ascontiguousarray(sl[name + ".weight"], dtype=np.float32)
        kind, pg = precision(name) if precision is not None else ("int4", 0)
        if kind == "f16":
            stored[name + ".weight"] = W.astype(np.float16)
            continue
        if pg:  # o_proj / out_proj groups stay inside a head's segment: a divisor of the planned group
            g = o_proj_group(g, pg) if name.endswith(("o_proj", "out_proj")) else pg
        if kind == "int8":  # round-to-nearest: int8's rounding error is 1/16 of int4's step
            stored[name + ".weight"] = f16_scales8(quantize_int8(W, g))
            continue
        stored[name + ".weight"] = f16_scales(gptq_blocks(W, H, g, **gptq))
    return stored


# ----------------------------------------------------------------------------------------- writer ----

def artifact_layer(stored: dict[str, Any], p0: str, pfx: str, info: dict[str, Any], wdt: Any,
                   segments: Callable[[str], int]) -> dict[str, Any]:
    """A compressed layer's tensors (layer-0 names `p0...`) as the artifact stores them under `pfx...`: int4 weights
    as ``.qweight`` + ``.scales`` (F16), float projections in `wdt`, everything else float32; the uniql_tensors
    table `info` gets an entry per linear (`segments(base)`: input segments of an int4 weight)."""
    out_t: dict[str, Any] = {}
    for k0, v in stored.items():
        name = pfx + k0[len(p0):]
        if hasattr(v, "packed") or hasattr(v, "codes"):
            base = name[: -len(".weight")]
            out_t[base + ".qweight"] = v.packed if hasattr(v, "packed") else v.codes
            out_t[base + ".scales"] = v.scales.astype(np.float16)
            info[base] = {"format": "q4" if hasattr(v, "packed") else "q8", "shape": list(v.shape),
                          "group": v.group, "segments": segments(base)}
        elif name.endswith("_proj.weight"):
            base = name[: -len(".weight")]
            dt = np.float16 if v.dtype == np.float16 else wdt  # f16 by the precision policy, else the dtype option
            out_t[name] = np.asarray(v, dt)
            info[base] = {"format": "f16" if dt == np.float16 else "f32", "shape": list(v.shape)}
        elif v.dtype.kind == "i":
            out_t[name] = v
        else:
            out_t[name] = np.asarray(v, np.float32)
    return out_t


def head_tensors(tensors: dict[str, Any], embed_name: str, norm_name: str, tied: bool, opts: Any,
                 head_hessian: Callable[[np.ndarray | None], np.ndarray], info: dict[str, Any]) -> dict[str, Any]:
    """The rest file's tensors: final norm (float32), its final mix when the model has one (a rotated tied model,
    :mod:`uniql.compress.rotate`: float16 when quantized), the embedding and (untied) lm_head, as the precision
    policy of ``opts`` (a CompressOptions) says; unquantized runs keep them in ``opts.dtype``.

    ``head_hessian(F)``: the second moment of lm_head's input on the quantized stream, F the final mix as used
    (float16-rounded) or None; called only for a GPTQ int4 head. A tied embedding stays tied: the quantized table
    also serves the embedding lookups; an untied one gets round-to-nearest int4 / int8."""
    wdt = np.float16 if opts.dtype == "float16" else np.float32
    rest: dict[str, Any] = {norm_name: np.asarray(tensors[norm_name], np.float32)}
    mix_name = final_mix_name(norm_name)
    F = None
    if mix_name in tensors:
        if opts.quantize:  # the head is calibrated on exactly the float16 mix the artifact stores
            rest[mix_name], F = mix_f16(tensors[mix_name])
        else:
            rest[mix_name] = np.ascontiguousarray(tensors[mix_name], np.float32)
    E = np.ascontiguousarray(tensors[embed_name], dtype=np.float32)
    W = E if tied else np.ascontiguousarray(tensors["lm_head.weight"], dtype=np.float32)

    def put(name: str, W: np.ndarray, q: Any, dt: Any) -> None:
        if q is not None:
            int8 = hasattr(q, "codes")
            rest[name + ".qweight"] = q.codes if int8 else q.packed
            rest[name + ".scales"] = q.scales.astype(np.float16)
            info[name] = {"format": "q8" if int8 else "q4", "shape": list(W.shape), "group": q.group, "segments": 1}
        else:
            rest[name + ".weight"] = W.astype(dt)
            info[name] = {"format": "f16" if dt == np.float16 else "f32", "shape": list(W.shape)}

    head_kind, head_g = opts.storage("lm_head")
    emb_kind, emb_g = opts.storage("embedding")
    head_q = None
    if opts.quantize and head_kind == "int8":
        head_q = f16_scales8(quantize_int8(W, head_g))
    elif opts.quantize and head_kind == "int4":
        head_q = f16_scales(gptq_blocks(W, head_hessian(F), head_g, **opts.gptq_kw()))
    head_dt = np.float16 if opts.quantize and head_kind == "f16" else wdt
    embed_base = embed_name[: -len(".weight")]
    if tied:
        put(embed_base, E, head_q, head_dt)
    else:
        emb_q = None
        if opts.quantize and emb_kind == "int4":
            emb_q = f16_scales(quantize_rtn(E, group=emb_g))
        elif opts.quantize and emb_kind == "int8":
            emb_q = f16_scales8(quantize_int8(E, emb_g))
        put(embed_base, E, emb_q, np.float16 if opts.quantize and emb_kind == "f16" else wdt)
        put("lm_head", W, head_q, head_dt)
    return rest


def quant_record(opts: Any, o_group: int, tied: bool, extra: dict[str, Any]) -> dict[str, Any]:
    """The config's quantization record (``extra``: the stack's own entries, after the precision policy)."""
    return {"bits": 4, "group": opts.group, "o_group": o_group, "scheme": "gptq",
            "embedding": "gptq-lm-head (tied)" if tied else "rtn", "mse_scale": opts.mse_scale,
            "act_order": opts.act_order, **({"refit": opts.refit} if opts.refit else {}),
            "precision": dict(opts.precision), **extra}

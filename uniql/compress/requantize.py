"""uniql.compress.requantize: GPTQ int4 of an unquantized (e.g. fine-tuned) artifact -- the last step of
``compress(quantize=False) -> finetune -> quantize_artifact`` (docs/design.md §2.1, §3.5).

The artifact is already sorted (and possibly fine-tuned), so nothing is re-sorted or re-allocated: the keep-size
granularities, RoPE frequency maps and block importances are kept. Layer by layer, for every architecture, exactly
as compress does it (:func:`uniql.compress.steps.quantize_layer` with the layer's GPTQ plan from its components,
:class:`uniql.compress.layers.Stack`, the very step compress(quantize=True) takes): calibrate the float layer on
inputs that come from the *quantized* previous layers (second moments of each linear's own input: mixer input,
attention output, gated SSM output, MLP input, down_proj input; float64 in C), GPTQ every linear (o_proj /
out_proj groups inside a head's segment), then propagate through the quantized layer; finally lm_head by GPTQ on
the final-norm output (a tied embedding shares the table, an untied one gets group-wise RTN) through compress's
writer (:func:`uniql.compress.steps.head_tensors`). All numerics are in the C core.

compress sorts a layer on the *float* stream and GPTQ-quantizes it on the quantized stream, so on an untuned
float32 artifact quantize_artifact reproduces ``compress(quantize=True)`` byte for byte (every layer file and the
rest file), and after fine-tuning it is what compress would have done with the tuned weights.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from uniql.compress.layers import AttentionSorter, Sorter, Stack
from uniql.compress.pipeline import CompressOptions, calibration_tokens, default_precision
from uniql.compress.steps import (StageTimer, artifact_layer, capture_moment, head_tensors, peak_rss_mb,
                                  quant_record, quantize_layer)
from uniql.errors import InvalidArgumentError, OutputExistsError
from uniql.formats import safetensors as st
from uniql.formats.artifact import REST_FILE, layer_file, publish, read_meta, write_config
from uniql.models.runtime import exact_int4

log = logging.getLogger(__name__)


@exact_int4
def quantize_artifact(artifact_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                      calibration: Any = None, num_samples: int = 32, seq_len: int = 512, group: int = 128,
                      mse_scale: bool = CompressOptions.mse_scale, act_order: bool = CompressOptions.act_order,
                      damp: float = CompressOptions.damp, refit: int = CompressOptions.refit,
                      precision: dict[str, str] | None = None,
                      overwrite: bool = False,
                      progress: bool = True) -> Path:
    """Quantization of an unquantized (e.g. fine-tuned) artifact, layer by layer with compress's quantize step:
    returns the new artifact directory (default: ``<artifact_dir>-int4``). ``precision``: the storage policy as
    for :func:`uniql.compress` -- None is :func:`uniql.compress.default_precision` for llama / qwen2 (int8 for
    the tied table / down_proj / v_proj / the last eight up_proj, GPTQ int4 g64 elsewhere) and int4 everywhere
    (group ``group``) for the hybrids; ``{}`` is int4 everywhere. Calibration as for :func:`uniql.compress`
    (default: the calibration mix, 32 x 512 tokens, as compress); ``damp`` / ``refit``: GPTQ options as for
    compress. The
    ``finetune`` record is kept."""
    from uniql.formats.checkpoint import is_artifact, load_tokenizer, read_raw_config

    src = Path(artifact_dir)
    cfg = read_raw_config(src)
    if not is_artifact(cfg):
        raise InvalidArgumentError(f"{src} is not a uniql artifact")
    meta, tinfo = read_meta(src, cfg)
    if meta.quantization is not None or any(isinstance(s, dict) and s.get("format") in ("q4", "q8")
                                         for s in tinfo.values()):
        raise InvalidArgumentError(f"{src} is already quantized")
    if precision is None:  # the default policy (hybrids: int4 everywhere)
        llama = meta.architecture in ("llama", "qwen2")
        precision = default_precision(bool(cfg.get("tie_word_embeddings", False))) if llama else {}
    opts = CompressOptions(num_samples=num_samples, seq_len=seq_len, quantize=True, group=group,
                           max_rate=meta.max_rate, mse_scale=mse_scale, act_order=act_order, damp=damp, refit=refit,
                           precision=dict(precision))
    out = Path(out_dir) if out_dir is not None else src.with_name(src.name + "-int4")
    if out.resolve() == src.resolve():
        raise InvalidArgumentError("out_dir must differ from artifact_dir")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(f"output directory {out} exists and is not empty (pass overwrite=True)")
    ids = calibration_tokens(load_tokenizer(src), calibration, opts.num_samples, opts.seq_len)
    B, T = ids.shape
    timer = StageTimer()
    t0 = time.perf_counter()
    shared_all = st.load_file(src / REST_FILE)
    with st.safe_open(src / layer_file(0)) as f:  # the rest file's names do not say backbone.* vs model.* layers
        stack = Stack(cfg, f.keys())
    L, p0 = stack.L, stack.p0
    embed_name, norm_name = stack.present(shared_all, "embed", src), stack.present(shared_all, "final", src)
    shared = {embed_name: shared_all[embed_name], norm_name: shared_all[norm_name]}
    tied = bool(stack.config.tie_word_embeddings)
    if not tied:
        shared["lm_head.weight"] = shared_all["lm_head.weight"]

    def layer(i: int) -> tuple[dict[str, Any], np.ndarray | None, list[Sorter]]:
        """(layer-0 named tensors, the attention's rope_freq or None, the layer's components)."""
        pfx = f"{stack.prefix}{i}."
        lay = {p0 + k[len(pfx):]: v for k, v in st.load_file(src / layer_file(i)).items()}
        parts = stack.components(i)
        fm = None  # None: no attention, or no RoPE (the stored Q/K order is the runtime's)
        for p in parts:
            if isinstance(p, AttentionSorter):
                fm = lay.pop(p.prefix + "rope_freq", None)
        return lay, fm, parts

    def model(i: int, lay: dict[str, Any], fm: np.ndarray | None) -> Any:
        return stack.model(i, shared, lay, fm, T)

    part = out.with_name(out.name + ".partial")
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    try:
        t = time.perf_counter()
        lay, fm, _ = layer(0)
        emb = model(0, lay, fm)
        X = np.stack([emb.embed(ids[b]) for b in range(B)])
        del emb
        timer.add("calibrate", time.perf_counter() - t)
        info: dict[str, Any] = {}
        bar: Any = range(L)
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(bar, desc="quantize", unit="layer")
        for i in bar:
            t = time.perf_counter()
            lay, fm, parts = layer(i)
            timer.add("calibrate", time.perf_counter() - t)
            stored = quantize_layer(lambda tl: model(i, tl, fm), lay, X, stack.plan(parts, opts.group),
                                    opts.gptq_kw(), timer, lambda nm: opts.storage(nm, i, L))  # X advances in place
            t = time.perf_counter()
            stack.with_rope_freq(stored, parts, fm)
            out_t = artifact_layer(stored, p0, f"{stack.prefix}{i}.", info, np.float32, stack.segments)
            st.save_file(part / layer_file(i), out_t)
            timer.add("write", time.perf_counter() - t)

        # lm_head: GPTQ on the final-norm output (the mixer input of a layer whose input norm is the final norm)
        t = time.perf_counter()

        def head_hessian(F: np.ndarray | None) -> np.ndarray:
            lay, fm, _ = layer(0)
            return capture_moment(model(0, stack.final_norm_layer(lay, shared[norm_name]), fm), X, "mixer_in", F)

        rest = head_tensors(shared_all, embed_name, norm_name, tied, opts, head_hessian, info)
        st.save_file(part / REST_FILE, rest)
        quant = quant_record(opts, stack.o_groups(opts.group)[0], tied, stack.quant_extra(opts.group))
        quant.update(calibration={"num_samples": int(B), "seq_len": int(T)}, after="quantize_artifact")
        _finish(src, part, cfg, meta, opts, info, quant, timer, t, t0, L, B * T)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    publish(part, out)
    return out


def _finish(src: Path, part: Path, cfg: dict[str, Any], meta: Any, opts: CompressOptions, info: dict[str, Any],
            quant: dict[str, Any], timer: StageTimer, t: float, t0: float, L: int, tokens: int) -> None:
    """The config (quantization record, tensor table) and uniql_report.json of a quantized artifact in ``part``."""
    out_cfg = dict(cfg)
    out_cfg["uniql"] = dataclasses.replace(meta, quantization=quant).to_json()
    out_cfg["uniql_tensors"] = info
    write_config(part, out_cfg, src)
    timer.add("write", time.perf_counter() - t)
    total = time.perf_counter() - t0
    report = {"source": str(src), "options": dataclasses.asdict(opts), "layers": L,
              "calibration_tokens": int(tokens), "seconds": {k: round(v, 3) for k, v in timer.t.items()},
              "total_seconds": round(total, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
              "finetune": meta.finetune,
              "bytes": {p.name: p.stat().st_size for p in sorted(part.glob("model-*.safetensors"))}}
    (part / "uniql_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("quantized %s in %.1f s", src, total)

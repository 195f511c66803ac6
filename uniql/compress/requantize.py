"""uniql.compress.requantize: GPTQ int4 of an unquantized (e.g. fine-tuned) artifact -- the last step of
``compress(quantize=False) -> finetune -> quantize_artifact`` (docs/design.md §2.1, §3.5).

The artifact is already sorted (and possibly fine-tuned), so nothing is re-sorted or re-allocated: the keep-size
granularities, RoPE frequency maps and block importances are kept. Layer by layer, exactly as compress does it
(:func:`uniql.compress.pipeline.quantize_layer`, the very step compress(quantize=True) takes): calibrate the float layer on
inputs that come from the *quantized* previous layers (second moments of the attention input, of the attention
output (o_proj's input), of the MLP input and of down_proj's input, float64 in C), GPTQ every linear (o_proj
groups inside a head's segment), then propagate through the quantized layer; finally lm_head by GPTQ on the final-norm output (a tied embedding shares the table,
an untied one gets group-wise RTN). All numerics are in the C core.

Mamba2 / Nemotron-H / Bamba artifacts take the same path with the hybrid layer plan
(:func:`uniql.compress.hybrid.layer_plan`: in_proj / out_proj Hessians from the mixer input and the gated SSM
output, q/k/v/o, MLP): compress sorts a hybrid layer on the *float* stream and GPTQ-quantizes it on the quantized
stream, so on an untuned float32 artifact quantize_artifact reproduces ``compress(quantize=True)`` byte for byte
(every layer file and the rest file), and after fine-tuning it is what compress would have done with the tuned
weights.
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

from uniql.formats import safetensors as st
from uniql.formats.artifact import REST_FILE, layer_file, publish, read_meta, write_config
from uniql.compress.pipeline import (CompressOptions, OutputExistsError, StageTimer, artifact_layer,
                            calibration_tokens, default_precision, f16_scales, f16_scales8, gptq_blocks, o_proj_group,
                            peak_rss_mb, quantize_layer, transformer_layer_model, transformer_plan)
from uniql.errors import InvalidArgumentError
from uniql.compress.linalg import Covariance
from uniql.compress.quant import quantize_int8, quantize_rtn
from uniql.compress.rotate import final_mix_name, mix_f16, mix_rows
from uniql.models.runtime import exact_int4

log = logging.getLogger(__name__)


@exact_int4
def quantize_artifact(artifact_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                      calibration: Any = None, num_samples: int = 32, seq_len: int = 512, group: int = 128,
                      mse_scale: bool = CompressOptions.mse_scale, act_order: bool = CompressOptions.act_order,
                      precision: dict[str, str] | None = None, overwrite: bool = False,
                      progress: bool = True) -> Path:
    """Quantization of an unquantized (e.g. fine-tuned) artifact, layer by layer with compress's quantize step:
    returns the new artifact directory (default: ``<artifact_dir>-int4``). ``precision``: the storage policy as
    for :func:`uniql.compress` -- None is :func:`uniql.compress.default_precision` for llama / qwen2 (int8 for
    the tied table / down_proj / v_proj / the last eight up_proj, GPTQ int4 g64 elsewhere) and int4 everywhere
    (group ``group``) for the hybrids; ``{}`` is int4 everywhere. Calibration as for :func:`uniql.compress`
    (default: the calibration mix, 32 x 512 tokens, as compress). The ``finetune`` record is kept."""
    from uniql.formats.checkpoint import is_artifact, load_tokenizer, read_raw_config
    from uniql.models.runtime import TransformerConfig

    src = Path(artifact_dir)
    cfg = read_raw_config(src)
    if not is_artifact(cfg):
        raise InvalidArgumentError(f"{src} is not a uniql artifact")
    meta, tinfo = read_meta(src, cfg)
    if meta.quantization is not None or any(isinstance(s, dict) and s.get("format") in ("q4", "q8")
                                         for s in tinfo.values()):
        raise InvalidArgumentError(f"{src} is already quantized")
    llama = meta.architecture in ("llama", "qwen2")
    if precision is None:
        precision = default_precision(bool(cfg.get("tie_word_embeddings", False))) if llama else {}
    opts = CompressOptions(num_samples=num_samples, seq_len=seq_len, quantize=True, group=group,
                           max_rate=meta.max_rate, mse_scale=mse_scale, act_order=act_order,
                           precision=dict(precision))
    out = Path(out_dir) if out_dir is not None else src.with_name(src.name + "-int4")
    if out.resolve() == src.resolve():
        raise InvalidArgumentError("out_dir must differ from artifact_dir")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(f"output directory {out} exists and is not empty (pass overwrite=True)")
    ids = calibration_tokens(load_tokenizer(src), calibration, opts.num_samples, opts.seq_len)
    if meta.architecture not in ("llama", "qwen2"):
        return _quantize_hybrid(src, out, cfg, meta, opts, ids, progress)
    tc = TransformerConfig.from_hf(cfg)
    L, nh, d, n = tc.num_hidden_layers, tc.num_attention_heads, tc.head_dim, tc.hidden_size
    go = o_proj_group(d, opts.group)
    B, T = ids.shape
    timer = StageTimer()
    t0 = time.perf_counter()
    shared = st.load_file(src / REST_FILE)
    p0 = "model.layers.0."
    a = p0 + "self_attn."
    plan = transformer_plan(p0, opts.group, go)

    def layer(i: int) -> tuple[dict[str, Any], np.ndarray]:
        pfx = f"model.layers.{i}."
        lay = {p0 + k[len(pfx):]: v for k, v in st.load_file(src / layer_file(i)).items()}
        return lay, lay.pop(a + "rope_freq")

    def model(lay: dict[str, Any], fm: np.ndarray) -> Any:
        return transformer_layer_model(cfg, shared, lay, freq_map=fm, interleaved=True, max_seq=T)

    part = out.with_name(out.name + ".partial")
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    try:
        t = time.perf_counter()
        lay, fm = layer(0)
        emb = model(lay, fm)
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
            lay, fm = layer(i)
            timer.add("calibrate", time.perf_counter() - t)
            stored = quantize_layer(lambda tl: model(tl, fm), lay, X, plan, opts.gptq_kw(), timer,
                                    lambda nm: opts.storage(nm, i, L))  # X advances in place
            t = time.perf_counter()
            stored[a + "rope_freq"] = fm
            out_t = artifact_layer(stored, p0, f"model.layers.{i}.", info, np.float32,
                           lambda base: nh if base.endswith("o_proj") else 1)
            st.save_file(part / layer_file(i), out_t)
            timer.add("write", time.perf_counter() - t)

        # lm_head: GPTQ on the final-norm output (the attention input of a layer whose input norm is the final norm)
        t = time.perf_counter()
        lay, fm = layer(0)
        lay[p0 + "input_layernorm.weight"] = shared["model.norm.weight"]
        fin = model(lay, fm)
        c_h = Covariance(n)
        F16 = None  # a rotated tied model's final mix (the head reads its output): float16 as compress stores it
        if "model.norm.mix" in shared:
            F16, F = mix_f16(shared["model.norm.mix"])
        else:
            F = None
        for b in range(B):
            _, cap = fin.layer_forward(0, X[b], capture=("attn_in",))
            c_h.update(mix_rows(cap["attn_in"], F))
        del fin
        tied = tc.tie_word_embeddings
        E = np.ascontiguousarray(shared["model.embed_tokens.weight"], dtype=np.float32)
        W = E if tied else np.ascontiguousarray(shared["lm_head.weight"], dtype=np.float32)
        head_kind, head_g = opts.storage("lm_head")
        emb_kind, emb_g = opts.storage("embedding")
        head_q = None
        if head_kind == "int8":
            head_q = f16_scales8(quantize_int8(W, head_g))
        elif head_kind == "int4":
            head_q = f16_scales(gptq_blocks(W, c_h.mean(), head_g, **opts.gptq_kw()))
        rest: dict[str, Any] = {"model.norm.weight": np.asarray(shared["model.norm.weight"], np.float32)}
        if F16 is not None:
            rest["model.norm.mix"] = F16

        def put(name: str, W: np.ndarray, q: Any) -> None:  # as compress stores the embedding and the head
            if q is not None:
                int8 = hasattr(q, "codes")
                rest[name + ".qweight"] = q.codes if int8 else q.packed
                rest[name + ".scales"] = q.scales.astype(np.float16)
                info[name] = {"format": "q8" if int8 else "q4", "shape": list(W.shape), "group": q.group,
                              "segments": 1}
            else:  # f16 by the policy
                rest[name + ".weight"] = W.astype(np.float16)
                info[name] = {"format": "f16", "shape": list(W.shape)}

        if tied:
            put("model.embed_tokens", E, head_q)
        else:
            emb_q = None
            if emb_kind == "int4":
                emb_q = f16_scales(quantize_rtn(E, group=emb_g))
            elif emb_kind == "int8":
                emb_q = f16_scales8(quantize_int8(E, emb_g))
            put("model.embed_tokens", E, emb_q)
            put("lm_head", W, head_q)
        st.save_file(part / REST_FILE, rest)
        quant = _quant_record(opts, go, tied, B, T)
        _finish(src, part, cfg, meta, opts, info, quant, timer, t, t0, L, B * T)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    publish(part, out)
    return out


def _quantize_hybrid(src: Path, out: Path, cfg: dict[str, Any], meta: Any, opts: CompressOptions, ids: np.ndarray,
                     progress: bool) -> Path:
    """quantize_artifact of a Mamba2 / Nemotron-H / Bamba artifact: compress's hybrid quantization step
    (:meth:`uniql.compress.hybrid.HybridJob.layer` step 3, its lm_head / embedding step) on the stored sorted
    layers."""
    from uniql.compress.hybrid import layer_plan, layer_prefix, o_groups, one_layer_model
    from uniql.models.hybrid import LAYER_ATTENTION, HF_NAMES, HybridConfig, rope_mode

    hc = HybridConfig.from_hf(cfg)
    names = HF_NAMES[hc.model_type]
    L, n = hc.num_hidden_layers, hc.hidden_size
    go, go_ssm = o_groups(hc, opts.group)
    rope = rope_mode(hc) if LAYER_ATTENTION in hc.layer_types else "none"
    B, T = ids.shape
    timer = StageTimer()
    t0 = time.perf_counter()
    shared_all = st.load_file(src / REST_FILE)
    with st.safe_open(src / layer_file(0)) as f:  # the rest file's names do not say backbone.* vs model.* layers
        lp = layer_prefix(hc.model_type, f.keys())
    p0 = lp + "0."

    def present(cands: Any) -> str:
        cands = (cands,) if isinstance(cands, str) else cands
        return next((c for c in cands if c in shared_all), cands[0])

    embed_name, norm_name = present(names["embed"]), present(names["final"])
    shared = {embed_name: shared_all[embed_name], norm_name: shared_all[norm_name]}
    F16 = F = None  # a rotated tied model's final mix (the head reads its output): float16 as compress stores it
    if final_mix_name(norm_name) in shared_all:
        F16, F = mix_f16(shared_all[final_mix_name(norm_name)])
    tied = bool(hc.tie_word_embeddings)
    if not tied:
        shared["lm_head.weight"] = shared_all["lm_head.weight"]

    def layer(i: int) -> tuple[dict[str, Any], np.ndarray | None, str, str]:
        """(layer-0 named tensors, rope_freq or None, mixer prefix, MLP prefix)."""
        pfx = f"{lp}{i}."
        lay = {p0 + k[len(pfx):]: v for k, v in st.load_file(src / layer_file(i)).items()}
        kind = hc.layer_types[i]
        mix = p0 + names[{"mamba": "mamba", "attention": "attn", "mlp": "mlp"}[kind]]
        fm = lay.pop(mix + "rope_freq", None)  # None: no RoPE (the stored Q/K order is the runtime's)
        return lay, fm, mix, p0 + names.get("mlp", "")

    def model(i: int, lay: dict[str, Any], fm: np.ndarray | None) -> Any:
        return one_layer_model(hc, hc.layer_types[i], shared, lay, fm, T)

    part = out.with_name(out.name + ".partial")
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    try:
        t = time.perf_counter()
        lay, fm, _, _ = layer(0)
        emb = model(0, lay, fm)
        X = np.stack([emb.embed(ids[b]) for b in range(B)])
        del emb
        timer.add("calibrate", time.perf_counter() - t)
        info: dict[str, Any] = {}
        segs = {"o_proj": hc.num_heads, "out_proj": hc.ssm_heads}
        bar: Any = range(L)
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(bar, desc="quantize", unit="layer")
        for i in bar:
            t = time.perf_counter()
            lay, fm, mix, mlp = layer(i)
            timer.add("calibrate", time.perf_counter() - t)
            plan = layer_plan(hc, hc.layer_types[i], mix, mlp, opts.group, go, go_ssm)
            stored = quantize_layer(lambda tl: model(i, tl, fm), lay, X, plan, opts.gptq_kw(), timer,
                                    lambda nm: opts.storage(nm, i, L))     # X advances in place
            t = time.perf_counter()
            if hc.layer_types[i] == LAYER_ATTENTION and rope != "none":
                stored[mix + "rope_freq"] = fm
            out_t = artifact_layer(stored, p0, f"{lp}{i}.", info, np.float32,
                           lambda base: segs.get(base.rsplit(".", 1)[-1], 1))
            st.save_file(part / layer_file(i), out_t)
            timer.add("write", time.perf_counter() - t)

        # lm_head: GPTQ on the final-norm output (the mixer input of a layer whose norm is the final norm)
        t = time.perf_counter()
        lay, fm, _, _ = layer(0)
        lay[p0 + names["norm"]] = shared[norm_name]
        fin = model(0, lay, fm)
        c_h = Covariance(n)
        for b in range(B):
            _, cap = fin.layer_forward(0, X[b], capture=("mixer_in",))
            c_h.update(mix_rows(cap["mixer_in"], F))
        del fin
        rest: dict[str, Any] = {norm_name: np.asarray(shared[norm_name], np.float32)}
        if F16 is not None:
            rest[final_mix_name(norm_name)] = F16
        E = np.ascontiguousarray(shared[embed_name], dtype=np.float32)
        embed_base = embed_name[: -len(".weight")]

        def put(name: str, W: np.ndarray, q: Any, dt: Any = np.float32) -> None:
            if q is not None:
                int8 = hasattr(q, "codes")
                rest[name + ".qweight"] = q.codes if int8 else q.packed
                rest[name + ".scales"] = q.scales.astype(np.float16)
                info[name] = {"format": "q8" if int8 else "q4", "shape": list(W.shape), "group": q.group,
                              "segments": 1}
            else:
                rest[name + ".weight"] = W.astype(dt)
                info[name] = {"format": "f16" if dt == np.float16 else "f32", "shape": list(W.shape)}

        head_kind, head_g = opts.storage("lm_head")
        emb_kind, emb_g = opts.storage("embedding")
        head_q = None
        W = E if tied else np.ascontiguousarray(shared["lm_head.weight"], dtype=np.float32)
        if head_kind == "int4":
            head_q = f16_scales(gptq_blocks(W, c_h.mean(), head_g, **opts.gptq_kw()))
        elif head_kind == "int8":
            head_q = f16_scales8(quantize_int8(W, head_g))
        head_dt = np.float16 if head_kind == "f16" else np.float32
        if tied:
            put(embed_base, E, head_q, head_dt)
        else:
            emb_q = (f16_scales(quantize_rtn(E, group=emb_g)) if emb_kind == "int4" else
                     f16_scales8(quantize_int8(E, emb_g)) if emb_kind == "int8" else None)
            put(embed_base, E, emb_q, np.float16 if emb_kind == "f16" else np.float32)
            put("lm_head", W, head_q, head_dt)
        st.save_file(part / REST_FILE, rest)
        quant = _quant_record(opts, go, tied, B, T, ssm_out_group=go_ssm)
        _finish(src, part, cfg, meta, opts, info, quant, timer, t, t0, L, B * T)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    publish(part, out)
    return out


def _quant_record(opts: CompressOptions, o_group: int, tied: bool, B: int, T: int, **extra: Any) -> dict[str, Any]:
    """The config's quantization record of a quantize_artifact run (``extra``: family-specific entries, after
    the precision policy)."""
    return {"bits": 4, "group": opts.group, "o_group": o_group, "scheme": "gptq",
            "embedding": "gptq-lm-head (tied)" if tied else "rtn", "mse_scale": opts.mse_scale,
            "act_order": opts.act_order, "precision": dict(opts.precision), **extra,
            "calibration": {"num_samples": int(B), "seq_len": int(T)}, "after": "quantize_artifact"}


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

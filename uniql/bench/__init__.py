"""Speed and memory of the C runtime (``python -m uniql.bench``), as ratios measured in one run.

What is measured (every number is the best of ``repeats`` runs on a machine that may be shared: the load
average is recorded next to it):

* the machine: read bandwidth (a streaming vector sum over 1 GiB, C), fp32 FMA and int8 (VNNI or AVX2) arithmetic
  peaks (register-only loops, C), the kernel path and thread count;
* model runs: a Llama-3.1-8B-shaped decoder-layer stack (``--layers`` layers of hidden 4096 / intermediate
  14336 / 32 heads / 8 KV heads / head dim 128, random weights, small vocabulary) with per-token times scaled
  to 32 layers, and SmolLM2-135M (the converted checkpoint when present, else random weights of its shape,
  stated in the output), in fp32 (when it fits in memory), fp16 and int4 (group 128; fp32 and int8
  activations), at pruning rates (keep sizes of ``uniql.models.keep.keep_size`` with rho = 1 - rate set on every
  layer): prefill of ``--prompt`` tokens (time to first token) and greedy-free decode of ``--gen`` tokens;
* ratios: int4 / fp32 and int4 / fp16, each rate / rate 0, decode weight bandwidth / measured read
  bandwidth, prefill multiply-adds / int8 (or fp32) peak, against PyTorch (transformers on CPU, same shapes)
  when torch is importable and against llama.cpp when ``llama-cpp-python`` is importable (skipped with a note
  otherwise; ``--llama-lib DIR`` loads llama.cpp from another folder of its shared libraries, e.g. an AVX2-only
  build, and the report names the libraries and their ``llama_print_system_info`` line);
* kernel microbenchmarks: GB/s (T = 1) and G MAC/s (T > 1) of each weight kind on every kernel path the CPU
  has, against the ``ref`` twin and OpenBLAS sgemv/sgemm on the dequantized weight.

The numerics all run in the C core; this package only builds weights, times calls and formats results.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from uniql import _C
from uniql.data import data_dir
from uniql.errors import InvalidArgumentError

log = logging.getLogger(__name__)

__all__ = ["BenchConfig", "SHAPES", "run", "format_report", "machine_info", "cpu_name"]

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

#: named model shapes (Hugging Face config dicts); the 8B stack uses a small vocabulary for the layer runs
SHAPES: dict[str, dict[str, Any]] = {
    "llama3.1-8b": dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096,
                        intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=500000.0,
                        rope_scaling=_LLAMA3_ROPE, max_position_embeddings=131072, tie_word_embeddings=False,
                        hidden_act="silu"),
    "smollm2-135m": dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=49152, hidden_size=576,
                         intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         head_dim=64, rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
                         tie_word_embeddings=True, hidden_act="silu"),
}
#: other spellings accepted for the named shapes (``--model smollm2`` is what the README shows)
ALIASES: dict[str, str] = {"smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m",
                           "llama-3.1-8b": "llama3.1-8b", "llama3-8b": "llama3.1-8b", "8b": "llama3.1-8b"}


def canonical_model(name: str) -> str:
    """A named shape's canonical name (aliases resolved, case-insensitive); checkpoint directories unchanged."""
    key = name.strip().lower()
    if key in SHAPES:
        return key
    return ALIASES.get(key, name)


SMOLLM2_DIR = data_dir() / "models" / "smollm2-135m-instruct"  # where `make setup` / the demo convert it
KINDS = ("fp32", "fp16", "int4", "int4-a8")
GROUP = 128
GIB = 1 << 30


@dataclass(frozen=True)
class BenchConfig:
    """Options of one benchmark run (see ``python -m uniql.bench --help``)."""

    models: tuple[str, ...] = ("llama3.1-8b", "smollm2-135m")
    rates: tuple[float, ...] = (0.0, 0.15, 0.25, 0.35)
    kinds: tuple[str, ...] = KINDS
    prompt: int = 512
    gen: int = 32
    layers: int = 2
    threads: int = 0  # 0 = the runtime's default (UNIQL_NUM_THREADS or all cores)
    repeats: int = 3
    torch: bool = True
    llama_cpp: bool = True
    micro: bool = True
    micro_paths: tuple[str, ...] = ("ref", "avx2", "avx512")
    bw_bytes: int = GIB  # buffer streamed by the read-bandwidth measurement
    kv_dtype: str = "fp16"  # KV cache of the uniql models ("fp16" default, "fp32")
    llama_lib: str | None = None  # a folder of llama.cpp shared libraries to compare with (None: the package's own)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(canonical_model(m) for m in self.models))
        for r in self.rates:
            if not 0.0 <= r < 1.0:
                raise InvalidArgumentError(f"rates must be in [0, 1), got {r}")
        for k in self.kinds:
            if k not in KINDS:
                raise InvalidArgumentError(f"kind {k!r} is not one of {', '.join(KINDS)}")
        for name, v, lo in (("prompt", self.prompt, 1), ("gen", self.gen, 1), ("layers", self.layers, 1),
                            ("repeats", self.repeats, 1), ("threads", self.threads, 0)):
            if not isinstance(v, int) or v < lo:
                raise InvalidArgumentError(f"{name} must be an int >= {lo}, got {v!r}")
        from uniql.models.runtime import kv_dtype_code

        kv_dtype_code(self.kv_dtype)
        if self.llama_lib is not None and self.llama_cpp:
            from uniql.bench.llamacpp import lib_dir

            object.__setattr__(self, "llama_lib", str(lib_dir(self.llama_lib)))
        for m in self.models:
            if m not in SHAPES and not Path(m).is_dir():
                raise InvalidArgumentError(f"model {m!r} is neither a named shape ({', '.join(SHAPES)}) "
                                           "nor a checkpoint directory")


# ------------------------------------------------------------------------------------ machine ----

def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * GIB


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def machine_info(threads: int, repeats: int, bw_bytes: int = GIB) -> dict[str, Any]:
    """CPU, kernel path, read bandwidth (1 thread and ``threads``) and arithmetic peaks, measured now."""
    info = _C.kernels_info()
    out: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "kernels": info["path"],
                           "threads": threads, "avx2": info["avx2"], "avx512": info["avx512"],
                           "load_before": _load()}
    out["read_gbps_1t"] = _C.bench_read_bw(bw_bytes, repeats + 2, 1)
    out["read_gbps"] = _C.bench_read_bw(bw_bytes, repeats + 2, threads)
    try:
        out["fp32_peak_gmacs"] = _C.bench_peak(0, threads)
    except Exception as e:  # noqa: BLE001 - recorded, not fatal
        out["fp32_peak_gmacs"] = None
        out["fp32_peak_note"] = str(e)
    try:
        out["int8_peak_gmacs"] = _C.bench_peak(1, threads)
    except Exception as e:  # noqa: BLE001
        out["int8_peak_gmacs"] = None
        out["int8_peak_note"] = str(e)
    out["load_after"] = _load()
    return out


# ------------------------------------------------------------------------------------ weights ----

def _rand(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    a = rng.standard_normal(shape, dtype=np.float32)
    a *= np.float32(scale)
    return a


def _q4(w: np.ndarray, group: int) -> Any:
    from uniql.compress.quant import quantize_rtn

    return quantize_rtn(np.ascontiguousarray(w, np.float32), group)


def _linear_names(cfg: dict[str, Any], i: int) -> list[tuple[str, tuple[int, int]]]:
    H, K, nh, nkv, d = (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
                        cfg["num_key_value_heads"], cfg["head_dim"])
    p = f"model.layers.{i}."
    return [(p + "self_attn.q_proj.weight", (nh * d, H)), (p + "self_attn.k_proj.weight", (nkv * d, H)),
            (p + "self_attn.v_proj.weight", (nkv * d, H)), (p + "self_attn.o_proj.weight", (H, nh * d)),
            (p + "mlp.gate_proj.weight", (K, H)), (p + "mlp.up_proj.weight", (K, H)),
            (p + "mlp.down_proj.weight", (H, K))]


def _convert_kind(name: str, w: np.ndarray, kind: str, cfg: dict[str, Any]) -> Any:
    """fp32 weight -> the kind's storage (int4 via the C quantizer; o_proj groups never straddle heads)."""
    if kind in ("int4", "int4-a8") and w.ndim == 2:
        g = min(GROUP, cfg["head_dim"]) if name.endswith("o_proj.weight") else GROUP
        return _q4(w, g)
    return w


def random_tensors(cfg: dict[str, Any], kind: str, seed: int = 0) -> dict[str, Any]:
    """HF-named random tensors of ``cfg`` (weights N(0, 0.02^2), norms 1) stored as ``kind``."""
    rng = np.random.default_rng(seed)
    H, V = cfg["hidden_size"], cfg["vocab_size"]
    t: dict[str, Any] = {}
    t["model.embed_tokens.weight"] = _convert_kind("embed", _rand(rng, (V, H), 0.02), kind, cfg)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = np.ones(H, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(H, np.float32)
        for name, shape in _linear_names(cfg, i):
            t[name] = _convert_kind(name, _rand(rng, shape, 0.02), kind, cfg)
    t["model.norm.weight"] = np.ones(H, np.float32)
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = _convert_kind("lm_head", _rand(rng, (V, H), 0.02), kind, cfg)
    return t


def checkpoint_tensors(path: Path, cfg: dict[str, Any], kind: str) -> dict[str, Any]:
    """Tensors of a Hugging Face checkpoint directory stored as ``kind``."""
    from uniql.formats.checkpoint import read_tensors

    t = read_tensors(path)
    if kind in ("int4", "int4-a8"):
        for k in list(t):
            if k.endswith(".weight") and t[k].ndim == 2:
                t[k] = _convert_kind(k, t[k], kind, cfg)
    return t


def weight_bytes_per_token(cfg: dict[str, Any], kind: str, keeps: Sequence[tuple[int, int]],
                           stored_r: Sequence[int]) -> int:
    """Weight bytes one decode token streams through the layer linears at the given keeps (k, r) per layer
    (K and V are computed at the stored head dim; int4 = 4 bits + a float32 scale per group)."""
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    per = {"fp32": 4.0, "fp16": 2.0}.get(kind, 0.5 + 4.0 / GROUP)
    total = 0.0
    for (k, r), R in zip(keeps, stored_r):
        n = nh * r * H + 2 * nkv * R * H + H * nh * r + 3 * k * H
        total += n * per
    return int(total)


# ------------------------------------------------------------------------------------- timing ----

@dataclass
class RunResult:
    model: str
    kind: str
    rate: float
    weights: str
    layers: int
    prefill_s: float
    decode_s_per_token: float
    memory_bytes: int
    streamed_bytes: int
    scale: float  # per-token/prefill times are multiplied by this to represent the full model
    load: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


def _best(fn: Callable[[], float], repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def time_model(model: Any, prompt: int, gen: int, repeats: int, seed: int = 1,
               cpu: dict[str, float] | None = None) -> tuple[float, float]:
    """(best prefill seconds of ``prompt`` tokens, best decode seconds per token over ``gen`` tokens); when ``cpu``
    is given, it receives the best process CPU seconds of each (``prefill_cpu_s``, ``decode_cpu_s_per_token``):
    at one thread they do not count the time the process waits for a core on a loaded machine."""
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    ids = rng.integers(0, vocab, prompt + gen).astype(np.int32)
    best_p, best_d = float("inf"), float("inf")
    cpu_p, cpu_d = float("inf"), float("inf")
    for _ in range(repeats):
        model.reset()
        c0, t0 = time.process_time(), time.perf_counter()
        model.forward(ids[:prompt], last_only=True)
        tp, cp = time.perf_counter() - t0, time.process_time() - c0
        c0, t0 = time.process_time(), time.perf_counter()
        for j in range(gen):
            model.forward(ids[prompt + j:prompt + j + 1], last_only=True)
        td, cd = (time.perf_counter() - t0) / gen, (time.process_time() - c0) / gen
        best_p, best_d = min(best_p, tp), min(best_d, td)
        cpu_p, cpu_d = min(cpu_p, cp), min(cpu_d, cd)
    model.reset()
    if cpu is not None:
        cpu.update(prefill_cpu_s=cpu_p, decode_cpu_s_per_token=cpu_d)
    return best_p, best_d


def apply_rate(model: Any, rate: float) -> list[tuple[int, int]]:
    """Keep sizes of ``uniql.models.keep.keep_size`` at rho = 1 - rate on every layer (MLP granularity 128,
    head-dim granularity 16, both reduced for small models as docs/design.md §3.1 says). Returns the keeps."""
    from uniql.models.keep import keep_granularity, keep_size

    keeps = []
    for layer in range(model.num_layers):
        K, R = model.stored(layer)["mlp"], model.stored(layer)["attn"]
        k = keep_size(K, 1.0 - rate, keep_granularity(K, 128, 1))
        r = keep_size(R, 1.0 - rate, keep_granularity(R, 16, 2))
        model.set_keep(layer, mlp=k, attn=r)
        keeps.append((k, r))
    return keeps


def _set_q4_act(kind: str) -> None:
    _C.kernels_set_q4_act("int8" if kind == "int4-a8" else "fp32")


def _bytes_of(kind: str, n_params: int) -> float:
    return n_params * {"fp32": 4.0, "fp16": 2.0}.get(kind, 0.5 + 4.0 / GROUP)


@dataclass(frozen=True)
class ModelSource:
    """What the bench runs for a model name: the full-size HF config, the config as run (the 8B stack: ``layers``
    layers and a 1024-token vocabulary), the checkpoint directory (None: random weights) and the time scale."""

    name: str
    full: dict[str, Any]
    run_cfg: dict[str, Any]
    src_dir: Path | None
    scale: float
    is_stack: bool


def resolve_model(name: str, layers: int, notes: list[str]) -> ModelSource:
    """The model behind a bench name; converts SmolLM2 once when it is not converted yet (random weights of its
    shape, with a note, when that fails)."""
    if name in SHAPES:
        full = dict(SHAPES[name])
    else:
        from uniql.formats.checkpoint import read_raw_config

        full = read_raw_config(name)
        full.setdefault("head_dim", full["hidden_size"] // full["num_attention_heads"])
    is_stack = name == "llama3.1-8b"
    src_dir = SMOLLM2_DIR if name == "smollm2-135m" else (Path(name) if name not in SHAPES else None)
    if name == "smollm2-135m" and not (SMOLLM2_DIR / "config.json").exists():
        try:
            from uniql.formats.gguf import convert_gguf

            convert_gguf(None, SMOLLM2_DIR)
        except Exception as e:  # noqa: BLE001 - fall back to random weights, stated
            notes.append(f"smollm2-135m: conversion unavailable ({e}); random weights of its shape")
            src_dir = None
    if src_dir is not None and not (src_dir / "config.json").exists():
        src_dir = None
    run_cfg = dict(full)
    scale = 1.0
    if is_stack:  # a few layers and a small vocabulary; times scaled to 32 layers
        run_cfg.update(num_hidden_layers=layers, vocab_size=1024)
        scale = full["num_hidden_layers"] / layers
    return ModelSource(name, full, run_cfg, src_dir, scale, is_stack)


def bench_model(name: str, cfg: BenchConfig, mach: dict[str, Any], notes: list[str]) -> list[RunResult]:
    """All kinds x rates of one model (a named shape or a checkpoint directory)."""
    from uniql.models.runtime import Model

    results: list[RunResult] = []
    src = resolve_model(name, cfg.layers, notes)
    full, run_cfg, src_dir, scale, is_stack = src.full, src.run_cfg, src.src_dir, src.scale, src.is_stack
    weights = "checkpoint" if src_dir is not None else "random"
    n_layer_params = sum(a * b for _, (a, b) in _linear_names(run_cfg, 0))
    for kind in cfg.kinds:
        need = _bytes_of(kind, n_layer_params * run_cfg["num_hidden_layers"] + run_cfg["vocab_size"] *
                         run_cfg["hidden_size"] * 2) * (2.2 if kind == "fp32" else 1.5)
        if need > 0.6 * _mem_available():
            notes.append(f"{name} {kind}: skipped, needs ~{need / GIB:.1f} GiB of {_mem_available() / GIB:.1f} "
                         "GiB available")
            continue
        _set_q4_act(kind)
        t0 = time.perf_counter()
        tensors = (checkpoint_tensors(src_dir, run_cfg, kind) if src_dir is not None
                   else random_tensors(run_cfg, kind))
        model = Model.from_hf_tensors(run_cfg, tensors, qk_layout="rotate_half", max_seq=cfg.prompt + cfg.gen + 8,
                                      max_chunk=cfg.prompt, weight_dtype="float16" if kind == "fp16" else "float32",
                                      kv_dtype=cfg.kv_dtype)
        del tensors
        log.info("%s %s: built in %.1f s", name, kind, time.perf_counter() - t0)
        stored_r = [model.stored(layer)["attn"] for layer in range(model.num_layers)]
        for rate in cfg.rates:
            keeps = apply_rate(model, rate)
            load = _load()
            cpu: dict[str, float] = {}
            tp, td = time_model(model, cfg.prompt, cfg.gen, cfg.repeats, cpu=cpu)
            streamed = weight_bytes_per_token(run_cfg, kind, keeps, stored_r)
            res = RunResult(name, kind, rate, weights, model.num_layers, tp, td, model.memory_bytes(), streamed,
                            scale, load, extra={"weight_bytes": model.weight_bytes(), **cpu})
            results.append(res)
            log.info("%s %s rate %.2f: prefill %.3f s, decode %.2f ms/token", name, kind, rate, tp, td * 1e3)
        del model
        gc.collect()
    if is_stack:  # the 8B lm_head (128256 x 4096) as one linear per kind, added to the scaled per-token time
        results_head = _bench_lm_head(full, cfg, notes)
        for r in results:
            h = results_head.get(r.kind)
            if h is not None:
                r.extra["lm_head_decode_s"] = h[0]
                r.extra["lm_head_bytes"] = h[1]
    return results


def _bench_lm_head(full: dict[str, Any], cfg: BenchConfig, notes: list[str]) -> dict[str, tuple[float, int]]:
    V, H = full["vocab_size"], full["hidden_size"]
    out: dict[str, tuple[float, int]] = {}
    if V * H * 4 * 2.5 > 0.6 * _mem_available():
        notes.append("llama3.1-8b lm_head: skipped (memory)")
        return out
    rng = np.random.default_rng(5)
    W = _rand(rng, (V, H), 0.02)
    x = _rand(rng, (1, H), 1.0)
    y = np.empty((1, V), np.float32)
    for kind in cfg.kinds:
        _set_q4_act(kind)
        if kind == "fp32":
            spec, nb = (W, None, 0, H, None), W.nbytes
        elif kind == "fp16":
            w16 = np.empty(W.shape, np.float16)
            _C.convert(W, w16)
            spec, nb = (w16, None, 0, H, None), w16.nbytes
        else:  # the runtime's R16 kernel layout (Model repacks an untied lm_head at load)
            spec, nb = _q4_r16_spec(_q4(W, GROUP), V, H)
        out[kind] = (_C.bench_linear(spec, x, y, 1, V, 1, H, cfg.repeats + 2), nb)
        del spec
    return out


# -------------------------------------------------------------------------------------- torch ----

def bench_torch(name: str, cfg: BenchConfig, threads: int, notes: list[str]) -> dict[str, Any] | None:
    """transformers LlamaForCausalLM on CPU (fp32, same shapes as our run; random weights): prefill and
    decode with the KV cache."""
    if not cfg.torch or importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        notes.append("PyTorch comparison skipped (torch/transformers not importable or --no-torch)")
        return None
    import torch
    import transformers

    full = dict(SHAPES[name]) if name in SHAPES else None
    if full is None:
        from uniql.formats.checkpoint import read_raw_config

        full = read_raw_config(name)
    scale = 1.0
    if name == "llama3.1-8b":
        full.update(num_hidden_layers=cfg.layers, vocab_size=1024)
        scale = SHAPES[name]["num_hidden_layers"] / cfg.layers
    n_params = sum(a * b for _, (a, b) in _linear_names({**full, "head_dim": full.get(
        "head_dim", full["hidden_size"] // full["num_attention_heads"])}, 0)) * full["num_hidden_layers"]
    if n_params * 4 * 2.2 > 0.6 * _mem_available():
        notes.append(f"PyTorch {name}: skipped (memory)")
        return None
    torch.set_num_threads(threads)
    keys = {k: v for k, v in full.items() if k not in ("architectures", "model_type", "rope_scaling")}
    if full.get("rope_scaling"):
        keys["rope_scaling"] = full["rope_scaling"]
    hf_cfg = transformers.LlamaConfig(**keys)
    with torch.device("cpu"):
        hf = transformers.LlamaForCausalLM(hf_cfg).float().eval()
    rng = np.random.default_rng(1)
    ids = torch.tensor(rng.integers(0, full["vocab_size"], cfg.prompt + cfg.gen)[None], dtype=torch.long)
    best_p = best_d = float("inf")
    with torch.inference_mode():
        for _ in range(cfg.repeats):
            t0 = time.perf_counter()
            out = hf(ids[:, :cfg.prompt], use_cache=True, logits_to_keep=1)
            tp = time.perf_counter() - t0
            past = out.past_key_values
            t0 = time.perf_counter()
            for j in range(cfg.gen):
                out = hf(ids[:, cfg.prompt + j:cfg.prompt + j + 1], past_key_values=past, use_cache=True)
                past = out.past_key_values
            td = (time.perf_counter() - t0) / cfg.gen
            best_p, best_d = min(best_p, tp), min(best_d, td)
    del hf
    gc.collect()
    return {"model": name, "prefill_s": best_p * scale, "decode_s_per_token": best_d * scale,
            "threads": threads, "torch": torch.__version__, "dtype": "float32"}


def bench_llama_cpp(cfg: BenchConfig, threads: int, notes: list[str],
                    cache: Path | None = None) -> dict[str, Any] | None:
    """llama.cpp (``llama-cpp-python``) at Q4_0 on each model of ``cfg``, built and timed as
    ``uniql.bench.llamacpp`` describes; None, with a note, when ``llama_cpp`` does not import (or
    ``cfg.llama_cpp`` is off). A model that fails is left out with a note; the rest of the report stands."""
    from uniql.bench import llamacpp

    if not cfg.llama_cpp:
        notes.append("llama.cpp comparison skipped (--no-llama-cpp)")
        return None
    llamacpp.use_lib(cfg.llama_lib)  # before the import: llama_cpp binds its libraries then
    L, why = llamacpp.import_llama_cpp()
    if L is None:
        notes.append(f"llama.cpp comparison skipped: {why}")
        return None
    out: dict[str, Any] = {"version": getattr(L, "__version__", "?"), "threads": threads, **llamacpp.lib_info(L),
                           "quant": "Q4_0, pure (every 2-D weight incl. embedding/output), llama.cpp's quantizer",
                           "cache": str(cache or llamacpp.cache_dir()), "models": {}}
    for name in cfg.models:
        try:
            out["models"][name] = _llama_cpp_model(L, name, cfg, threads, cache)
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            log.exception("llama.cpp %s failed", name)
            notes.append(f"llama.cpp {name}: failed ({type(e).__name__}: {e})")
    return out


def _llama_cpp_model(L: Any, name: str, cfg: BenchConfig, threads: int, cache: Path | None) -> dict[str, Any]:
    from uniql.bench import llamacpp

    src = resolve_model(name, cfg.layers, [])
    tok = None
    if name == "smollm2-135m":
        try:
            from uniql.data import smollm2_gguf

            tok = smollm2_gguf()
        except FileNotFoundError:
            tok = None
    t0 = time.perf_counter()
    gg = llamacpp.build_q4_0(L, llamacpp.GGUFSource(name, src.run_cfg, src.src_dir, 0, tok), threads, cache)
    log.info("llama.cpp %s: %s (%.1f s)", name, gg.name, time.perf_counter() - t0)
    load = _load()
    r = llamacpp.time_gguf(L, gg, cfg.prompt, cfg.gen, cfg.repeats, threads)
    b = llamacpp.gguf_bytes(gg)
    r.update(model=name, gguf=str(gg), weights="checkpoint" if src.src_dir is not None else "random",
             layers_run=src.run_cfg["num_hidden_layers"], scale=src.scale, load=load, layer_weight_bytes=b["layers"],
             lm_head_decode_s=0.0, lm_head_decode_cpu_s=0.0, lm_head_in_decode=False)
    log.info("llama.cpp %s: prefill %.3f s, decode %.2f ms/token", name, r["prefill_s"], r["decode_s_per_token"] * 1e3)
    if src.is_stack:  # the full-vocabulary lm_head: same stack with the full vocabulary, minus the small one
        V, H = src.full["vocab_size"], src.full["hidden_size"]
        if V * H * 2 * 2.5 > 0.6 * _mem_available():
            r["lm_head_note"] = "skipped (memory)"
        else:
            head_cfg = dict(src.run_cfg, vocab_size=V)
            gh = llamacpp.build_q4_0(L, llamacpp.GGUFSource(name, head_cfg, None, 0, None), threads, cache)
            rh = llamacpp.time_gguf(L, gh, cfg.prompt, cfg.gen, cfg.repeats, threads)
            bh = llamacpp.gguf_bytes(gh)
            r.update(lm_head_decode_s=max(rh["decode_s_per_token"] - r["decode_s_per_token"], 0.0),
                     lm_head_decode_cpu_s=max(rh["decode_cpu_s_per_token"] - r["decode_cpu_s_per_token"], 0.0),
                     lm_head_in_decode=True, lm_head_bytes=bh["output"], full_vocab_decode_s_per_token=
                     rh["decode_s_per_token"], full_vocab_gguf=str(gh),
                     full_weight_bytes=int(b["layers"] * src.scale + bh["token_embd"] + bh["output"]))
    dec = r["decode_s_per_token"] * src.scale + r["lm_head_decode_s"]
    pre = r["prefill_s"] * src.scale
    dc, pc = r["decode_cpu_s_per_token"] * src.scale + r["lm_head_decode_cpu_s"], r["prefill_cpu_s"] * src.scale
    r.update(decode_tok_s=1.0 / dec if dec > 0 else None, prefill_tok_s=cfg.prompt / pre if pre > 0 else None,
             decode_ms=dec * 1e3, ttft_s=pre, decode_tok_s_cpu=1.0 / dc if dc > 0 else None,
             prefill_tok_s_cpu=cfg.prompt / pc if pc > 0 else None)
    return r


# -------------------------------------------------------------------------------------- micro ----

MICRO_SHAPES = ((4096, 4096), (14336, 4096), (4096, 14336))


def _q4_r16_spec(q: Any, rows: int, cols: int) -> tuple[tuple, int]:
    """int4 spec in the kernels' R16 layout (as the runtime's Model holds its linears), bytes of the int4 weight."""
    from uniql.models.runtime import scales_f16

    s16 = scales_f16("int4 scales", q.scales)  # the runtime keeps scales in float16
    packed, scales = _C.q4_repack((q.packed, s16, q.group, cols, None), 1, 1)
    return (packed, scales, q.group, cols, None, (rows, 1, 1)), q.packed.nbytes + s16.nbytes


def _micro_specs(rows: int, cols: int, rng: np.random.Generator) -> dict[str, tuple[tuple, int]]:
    W = _rand(rng, (rows, cols), 0.02)
    w16 = np.empty(W.shape, np.float16)
    _C.convert(W, w16)
    q4 = _q4_r16_spec(_q4(W, GROUP), rows, cols)
    return {"fp32": ((W, None, 0, cols, None), W.nbytes), "fp16": ((w16, None, 0, cols, None), w16.nbytes),
            "int4": q4, "int4-a8": q4}


def bench_micro(cfg: BenchConfig, threads: int, notes: list[str]) -> list[dict[str, Any]]:
    """Per kernel: best time of uq_linear_forward on each path, T = 1 (GB/s) and T = prompt (G MAC/s),
    vs the ref path (T = 1 and a 4096 x 4096 T = 64 GEMM only: the scalar twins are slow) and vs OpenBLAS
    on the dequantized fp32 weight (dequantization timed once, separately)."""
    info = _C.kernels_info()
    paths = [p for p in cfg.micro_paths if p == "ref" or info.get(p)]
    start = info["path"]
    rng = np.random.default_rng(3)
    rows_out: list[dict[str, Any]] = []
    T_big = min(cfg.prompt, 512)
    try:
        for rows, cols in MICRO_SHAPES:
            specs = _micro_specs(rows, cols, rng)
            for T in (1, T_big):
                x = _rand(rng, (T, cols), 1.0)
                y = np.empty((T, rows), np.float32)
                blas = _C.bench_blas(specs["fp32"][0], x, y, cfg.repeats, threads)
                for kind in cfg.kinds:
                    spec, nb = specs[kind]
                    _set_q4_act(kind)
                    for path in paths:
                        if path == "ref" and T > 1 and (rows, cols) != (4096, 4096):
                            continue
                        _C.kernels_set(path)
                        TT = 64 if path == "ref" and T > 1 else T
                        xx, yy = (x[:TT].copy(), np.empty((TT, rows), np.float32)) if TT != T else (x, y)
                        t = _C.bench_linear(spec, xx, yy, 1, rows, 1, cols, 1 if path == "ref" else cfg.repeats)
                        rows_out.append({"rows": rows, "cols": cols, "T": TT, "kind": kind, "path": path, "s": t,
                                         "gbps": nb / t / 1e9, "gmacs": rows * cols * TT / t / 1e9,
                                         "blas_s": blas[1] if TT == T else None,
                                         "dequant_s": blas[0] if kind != "fp32" else 0.0,
                                         "load": _load()})
                    _C.kernels_set(start)
            del specs
            gc.collect()
    finally:
        _C.kernels_set(start)
    return rows_out


# ------------------------------------------------------------------------------------ driver ----

def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def summarize(results: list[RunResult], mach: dict[str, Any], torch_res: dict[str, dict[str, Any]],
              llama: dict[str, Any] | None = None) -> list[dict]:
    """One row per run with the derived figures and ratios measured in the same run."""
    by = {(r.model, r.kind, r.rate): r for r in results}
    rows = []
    for r in results:
        head = r.extra.get("lm_head_decode_s", 0.0)
        dec = r.decode_s_per_token * r.scale + head
        pre = r.prefill_s * r.scale
        tok_s = 1.0 / dec if dec > 0 else None
        gbps = r.streamed_bytes / r.decode_s_per_token / 1e9 if r.decode_s_per_token > 0 else None
        row = {"model": r.model, "kind": r.kind, "rate": r.rate, "weights": r.weights, "layers_run": r.layers,
               "decode_tok_s": tok_s, "decode_ms": dec * 1e3, "prefill_tok_s": None, "ttft_s": pre,
               "memory_mb": r.memory_bytes / 1e6, "weight_gbps": gbps,
               "bw_frac": _ratio(gbps, mach.get("read_gbps")), "load": r.load,
               "lm_head_in_decode": bool(head), "weight_bytes": r.extra.get("weight_bytes"),
               "layer_weight_bytes": r.streamed_bytes}
        prompt_tokens = r.extra.get("prompt_tokens")
        row["prefill_tok_s"] = prompt_tokens / pre if prompt_tokens and pre else None
        if "decode_cpu_s_per_token" in r.extra:  # process CPU time (the lm_head GEMV, measured apart, in wall time)
            dc, pc = r.extra["decode_cpu_s_per_token"] * r.scale + head, r.extra["prefill_cpu_s"] * r.scale
            row["decode_tok_s_cpu"] = 1.0 / dc if dc > 0 else None
            row["prefill_tok_s_cpu"] = prompt_tokens / pc if prompt_tokens and pc > 0 else None
        rows.append(row)
    # ratios within the run
    tok = {(r["model"], r["kind"], r["rate"]): r for r in rows}
    for r in rows:
        key = (r["model"], r["kind"], r["rate"])
        base = tok.get((r["model"], r["kind"], 0.0))
        r["decode_vs_rate0"] = _ratio(r["decode_tok_s"], base and base["decode_tok_s"])
        r["prefill_vs_rate0"] = _ratio(r["prefill_tok_s"], base and base["prefill_tok_s"])
        for other in ("fp32", "fp16"):
            o = tok.get((r["model"], other, r["rate"]))
            r[f"decode_vs_{other}"] = _ratio(r["decode_tok_s"], o and o["decode_tok_s"])
            r[f"prefill_vs_{other}"] = _ratio(r["prefill_tok_s"], o and o["prefill_tok_s"])
        t = torch_res.get(r["model"])
        if t:
            r["decode_vs_torch"] = _ratio(r["decode_tok_s"], 1.0 / t["decode_s_per_token"])
            r["prefill_vs_torch"] = _ratio(r["prefill_tok_s"], (by[key].extra.get("prompt_tokens") or 0) /
                                           t["prefill_s"])
        lc = (llama or {}).get("models", {}).get(r["model"])
        if lc:
            r["decode_vs_llama_cpp"] = _ratio(r["decode_tok_s"], lc.get("decode_tok_s"))
            r["prefill_vs_llama_cpp"] = _ratio(r["prefill_tok_s"], lc.get("prefill_tok_s"))
            r["weight_bytes_vs_llama_cpp"] = _ratio(r["weight_bytes"], lc.get("weight_bytes"))
            r["layer_bytes_vs_llama_cpp"] = _ratio(r["layer_weight_bytes"], lc.get("layer_weight_bytes"))
            r["decode_vs_llama_cpp_cpu"] = _ratio(r.get("decode_tok_s_cpu"), lc.get("decode_tok_s_cpu"))
            r["prefill_vs_llama_cpp_cpu"] = _ratio(r.get("prefill_tok_s_cpu"), lc.get("prefill_tok_s_cpu"))
        # prefill multiply-adds of the layer linears at these keeps vs the arithmetic peak
        res = by[key]
        macs = res.extra.get("prefill_macs")
        if macs and res.prefill_s > 0:
            gm = macs / res.prefill_s / 1e9
            r["prefill_gmacs"] = gm
            peak = mach.get("int8_peak_gmacs") if r["kind"] == "int4-a8" else mach.get("fp32_peak_gmacs")
            r["prefill_vs_peak"] = _ratio(gm, peak)
    return rows


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Runs the benchmark; returns a JSON-serialisable report. The process's int4 activation mode (each kind sets
    its own while it runs) is restored afterwards."""
    prev_act = _C.kernels_info()["q4_act"]
    try:
        return _run(cfg)
    finally:
        _C.kernels_set_q4_act(prev_act)


def _run(cfg: BenchConfig) -> dict[str, Any]:
    if cfg.threads:
        _C.kernels_set_threads(cfg.threads)
    threads = _C.kernels_info()["threads"]
    notes: list[str] = []
    t_start = time.perf_counter()
    mach = machine_info(threads, cfg.repeats, cfg.bw_bytes)
    results: list[RunResult] = []
    torch_res: dict[str, dict[str, Any]] = {}
    for name in cfg.models:
        res = bench_model(name, cfg, mach, notes)
        for r in res:
            r.extra["prompt_tokens"] = cfg.prompt
            # multiply-adds of the layer linears for the prompt (weights used per token x prompt length)
            per = {"fp32": 4.0, "fp16": 2.0}.get(r.kind, 0.5 + 4.0 / GROUP)
            r.extra["prefill_macs"] = r.streamed_bytes / per * cfg.prompt
        results.extend(res)
        t = bench_torch(name, cfg, threads, notes) if res else None
        if t:
            torch_res[name] = t
    llama = bench_llama_cpp(cfg, threads, notes) if results else None
    micro = bench_micro(cfg, threads, notes) if cfg.micro else []
    report = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
              "machine": mach, "runs": summarize(results, mach, torch_res, llama), "torch": torch_res,
              "llama_cpp": llama, "micro": micro, "notes": notes,
              "raw": [r.__dict__ for r in results], "wall_s": time.perf_counter() - t_start,
              "load_end": _load()}
    return report


# ------------------------------------------------------------------------------------ output ----

def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_report(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    lines = [f"uniql.bench  cpu: {m['cpu']} ({m['cores']} cores)  kernels: {m['kernels']}  threads: {m['threads']}  "
             f"load avg: {m['load_before']} -> {rep.get('load_end')}",
             f"read bandwidth {m['read_gbps']:.1f} GB/s ({m['read_gbps_1t']:.1f} on 1 thread)   "
             f"peaks: fp32 FMA {_f(m.get('fp32_peak_gmacs'), '{:.0f}')} G MAC/s, "
             f"int8 {'VNNI' if m.get('avx512') else 'vpmaddubsw'} {_f(m.get('int8_peak_gmacs'), '{:.0f}')} G MAC/s", ""]
    hdr = (f"{'model':<14}{'kind':<8}{'rate':>5}{'dec tok/s':>10}{'pre tok/s':>10}{'TTFT s':>8}{'MB':>8}"
           f"{'GB/s':>7}{'%bw':>6}{'x r0':>6}{'x fp32':>7}{'x fp16':>7}{'x torch':>8}{'x llama':>8}{'%peak':>7}")
    lines.append(hdr)
    for r in rep["runs"]:
        lines.append(f"{r['model']:<14}{r['kind']:<8}{r['rate']:>5.2f}{_f(r['decode_tok_s']):>10}"
                     f"{_f(r['prefill_tok_s'], '{:.1f}'):>10}{_f(r['ttft_s']):>8}{r['memory_mb']:>8.0f}"
                     f"{_f(r['weight_gbps'], '{:.1f}'):>7}{_f(r['bw_frac'] and 100 * r['bw_frac'], '{:.0f}'):>6}"
                     f"{_f(r['decode_vs_rate0']):>6}{_f(r['decode_vs_fp32']):>7}{_f(r['decode_vs_fp16']):>7}"
                     f"{_f(r.get('decode_vs_torch')):>8}{_f(r.get('decode_vs_llama_cpp')):>8}"
                     f"{_f(r.get('prefill_vs_peak') and 100 * r['prefill_vs_peak'], '{:.0f}'):>7}")
    lines.append("  (8B stack: times scaled to 32 layers; decode includes the 128256-row lm_head GEMV when measured; "
                 "GB/s and %bw: layer weights streamed per decode token / time per token vs measured read "
                 "bandwidth; x r0 / x fp32 / x fp16 / x torch / x llama: decode tok/s ratios (x llama: vs llama.cpp "
                 "Q4_0); %peak: prefill layer multiply-adds per second vs the int8 (int4-a8) or fp32 peak)")
    for name, t in rep["torch"].items():
        lines.append(f"PyTorch {t['torch']} fp32 {name}: decode {1 / t['decode_s_per_token']:.2f} tok/s, "
                     f"prefill {rep['config']['prompt'] / t['prefill_s']:.1f} tok/s ({t['threads']} threads)")
    lines += _format_llama_cpp(rep)
    if rep["micro"]:
        lines += ["", f"{'kernel':<9}{'shape':>13}{'T':>5}{'path':>8}{'ms':>9}{'GB/s':>8}{'GMAC/s':>8}{'x ref':>7}"
                  f"{'x blas':>8}"]
        refs = {(u["rows"], u["cols"], u["T"], u["kind"]): u["s"] for u in rep["micro"] if u["path"] == "ref"}
        for u in rep["micro"]:
            ref = refs.get((u["rows"], u["cols"], u["T"], u["kind"]))
            lines.append(f"{u['kind']:<9}{u['rows']:>6}x{u['cols']:<6}{u['T']:>5}{u['path']:>8}{u['s'] * 1e3:>9.2f}"
                         f"{u['gbps']:>8.1f}{u['gmacs']:>8.1f}{_f(_ratio(ref, u['s'])):>7}"
                         f"{_f(_ratio(u['blas_s'], u['s'])):>8}")
        lines.append("  (x ref: speed-up over the plain C twin; x blas: OpenBLAS sgemv/sgemm time on the fp32 "
                     "weight / ours; dequantizing for BLAS costs extra, reported in the JSON as dequant_s)")
    if rep["notes"]:
        lines += [""] + [f"note: {n}" for n in rep["notes"]]
    lines.append(f"wall time {rep['wall_s']:.0f} s")
    return "\n".join(lines)


def _format_llama_cpp(rep: dict[str, Any]) -> list[str]:
    """llama.cpp lines: its speed and weight bytes per model, then ours / llama.cpp at rate 0 per kind."""
    lc = rep.get("llama_cpp")
    if not lc:
        return []
    lines = []
    for name, m in lc["models"].items():
        lm = " + lm_head" if m.get("lm_head_in_decode") else ""
        scaled = f", scaled x{m['scale']:g}{lm}" if m["scale"] != 1 else ""
        lines.append(f"llama.cpp {lc['version']} Q4_0 {name} ({m['weights']} weights, {m['layers_run']} layers run"
                     f"{scaled}; {m['threads']} threads, load {m['load']}): decode {_f(m['decode_tok_s'])} tok/s, "
                     f"prefill {_f(m['prefill_tok_s'], '{:.1f}')} tok/s, weights {m['weight_bytes'] / 1e6:.1f} MB "
                     f"(layers {m['layer_weight_bytes'] / 1e6:.1f} MB); by process CPU time: decode "
                     f"{_f(m.get('decode_tok_s_cpu'))} tok/s, prefill {_f(m.get('prefill_tok_s_cpu'), '{:.1f}')} tok/s")
        if lc.get("system_info"):
            lines.append(f"  llama.cpp libraries: {lc.get('lib_dir')} ({lc['system_info']})")
        parts = []
        for r in rep["runs"]:
            if r["model"] == name and r["rate"] == 0.0 and r.get("decode_vs_llama_cpp") is not None:
                ge = "yes" if r["decode_vs_llama_cpp"] >= 1.0 else "no"
                parts.append(f"{r['kind']} decode {_f(r['decode_vs_llama_cpp'])}x (>= llama.cpp: {ge}), prefill "
                             f"{_f(r.get('prefill_vs_llama_cpp'))}x, weights {_f(r.get('weight_bytes_vs_llama_cpp'))}x,"
                             f" layer weights {_f(r.get('layer_bytes_vs_llama_cpp'))}x; by CPU time: decode "
                             f"{_f(r.get('decode_vs_llama_cpp_cpu'))}x, "
                             f"prefill {_f(r.get('prefill_vs_llama_cpp_cpu'))}x")
        if parts:
            lines += [f"  ours / llama.cpp Q4_0, rate 0: {p}" for p in parts]
    lines.append("  (wall-clock tok/s as in the table; \"by CPU time\": process CPU seconds instead, which at one "
                 "thread leave out the time spent waiting for a core on a loaded machine)")
    return ["", *lines] if lines else []


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m uniql.bench [options]`` (speed and memory) or ``python -m uniql.bench quality [options]``
    (perplexity side by side with llama.cpp, uniql.bench.quality); ``uniql bench ...`` is the same."""
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["quality"]:
        from uniql.bench.quality import main as quality_main

        return int(quality_main(argv[1:]) or 0)

    ap = argparse.ArgumentParser(prog="python -m uniql.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help=f"a named shape ({', '.join(SHAPES)}; also smollm2) or a checkpoint "
                    "directory; repeatable (default: both named shapes)")
    ap.add_argument("--rates", default="0,0.15,0.25,0.35", help="pruning rates (default 0,0.15,0.25,0.35)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"weight kinds (default {','.join(KINDS)})")
    ap.add_argument("--prompt", type=int, default=512, help="prefill length (default 512)")
    ap.add_argument("--gen", type=int, default=32, help="decoded tokens (default 32)")
    ap.add_argument("--layers", type=int, default=2, help="layers of the 8B-shaped stack (default 2)")
    ap.add_argument("--threads", type=int, default=0, help="threads (default: UNIQL_NUM_THREADS or all cores)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats; the best is kept (default 3)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp comparison (it runs when "
                    "llama-cpp-python is installed; Q4_0 GGUFs are cached in $UNIQL_BENCH_CACHE or "
                    "~/.cache/uniql/bench)")
    ap.add_argument("--no-micro", action="store_true", help="skip the kernel microbenchmarks")
    ap.add_argument("--json", help="write the full report as JSON to this path")
    ap.add_argument("--kv-dtype", choices=("fp16", "fp32"), default="fp16", help="KV cache of uniql (default fp16)")
    ap.add_argument("--llama-lib", metavar="DIR", help="load llama.cpp from this folder of shared libraries (libllama, "
                    "libggml*), e.g. an AVX2-only build of the same version, instead of llama-cpp-python's own "
                    "(sets LLAMA_CPP_LIB_PATH; the report records the build's system info)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = BenchConfig(models=tuple(a.model or ("llama3.1-8b", "smollm2-135m")),
                      rates=tuple(float(r) for r in a.rates.split(",") if r.strip()),
                      kinds=tuple(k.strip() for k in a.kinds.split(",") if k.strip()), prompt=a.prompt, gen=a.gen,
                      layers=a.layers, threads=a.threads, repeats=a.repeats, torch=not a.no_torch,
                      llama_cpp=not a.no_llama_cpp, micro=not a.no_micro, kv_dtype=a.kv_dtype,
                      llama_lib=a.llama_lib)
    rep = run(cfg)
    print(format_report(rep))
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=1, default=float))
    return 0

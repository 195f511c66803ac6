"""llama.cpp (the PyPI package ``llama-cpp-python``) on the same models as ``uniql.bench``, at Q4_0.

What is built: for each benchmarked model, a GGUF file of the model *as the bench runs it* (the converted
checkpoint's float32 weights, or random N(0, 0.02^2) weights of the named shape, with the same layer count and
vocabulary as our run) is written with the ``gguf`` package, in F32 (checkpoints) or F16 (random weights), and
quantized to Q4_0 by llama.cpp's own quantizer (``llama_cpp.llama_model_quantize``, ``pure``: every 2-D weight
including the embedding and the output matrix is Q4_0, as our int4 run quantizes every linear including the
lm_head; llama.cpp's default Q4_0 recipe would keep ``output`` at Q6_K). No quantization arithmetic lives here.
Only the Q4_0 file is kept, in ``cache_dir()``, named by a hash of what it contains, and reused.

Data layout, the inverse of ``uniql.formats.gguf``: HF names become llama.cpp names; Q and K rows get llama.cpp's
per-head permutation (rotate-half pairs (i, i + d/2) interleaved as (2i, 2i + 1)) for the ``llama``
architecture; GGUF dims are innermost-first, which ``gguf.GGUFWriter`` handles. Tokenizer metadata: the
``tokenizer.*`` keys of SmolLM2's own GGUF when the model is SmolLM2, else llama.cpp's ``none`` tokenizer with
``<arch>.vocab_size`` (token ids are fed directly; nothing is tokenized). The Llama-3 rope frequency scaling
(a ``rope_freqs`` tensor in llama.cpp) is not written: it changes the rotation angles, not the work.

How it is timed (``time_gguf``): same thread count for prompt and decode (``n_threads`` = ``n_threads_batch``),
one micro-batch for the whole prompt (``n_batch`` = ``n_ubatch`` = prompt) like our single prefill chunk, the
same random token ids as our run; prefill = one ``llama_decode`` of the prompt (logits of the last token only),
decode = ``gen`` single-token ``llama_decode`` calls after it; no sampling; best of ``repeats``, the KV cache
cleared before each repeat, one warm-up token after loading; process CPU seconds are kept too (at one thread
they leave out the time spent waiting for a core on a loaded machine), as ``uniql.bench.time_model`` does.
Other context settings are llama.cpp's defaults (F16 KV cache, flash attention "auto").

Which llama.cpp build runs: the shared libraries that come with ``llama-cpp-python`` (built for the machine that
built the wheel; on an AVX-512 CPU that is llama.cpp's AVX-512 / VNNI code), unless ``LLAMA_CPP_LIB_PATH`` names
another folder of them (read by ``llama_cpp`` once, when it is first imported). ``use_lib`` / ``child_env`` point a
process or a child process at such a folder (e.g. an AVX2-only build of the same llama.cpp version, to compare our
AVX2 kernels with llama.cpp's), ``lib_info`` says which libraries were loaded and what they were compiled for
(``llama_print_system_info``), and the report records it.

The 8B-shaped stack is scaled as ours: the per-token time of the ``layers``-layer model with a 1024-token
vocabulary, times 32 / layers, plus the time of the 128256 x 4096 lm_head, which for llama.cpp is measured as
the decode time of the same stack with the full vocabulary minus that of the small-vocabulary stack.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np

from uniql.errors import (FormatError, InternalError, ModelNotFoundError, ShapeError, StateError, UniqlError,
                          UnsupportedError)

log = logging.getLogger(__name__)

__all__ = ["import_llama_cpp", "cache_dir", "LIB_ENV", "lib_dir", "use_lib", "child_env", "lib_info", "permute_qk", "write_gguf", "quantize_q4_0", "build_q4_0", "time_gguf",
           "LlamaCppError", "GGUF_FORMAT"]

#: bump when the GGUF written here changes (it is part of every cache file's name)
GGUF_FORMAT = 1
CACHE_ENV = "UNIQL_BENCH_CACHE"
#: the variable llama-cpp-python reads (at import) for a folder of llama.cpp shared libraries to load instead of its own
LIB_ENV = "LLAMA_CPP_LIB_PATH"
GGUF_ARCHES = {"llama": "llama", "qwen2": "qwen2"}  # HF model_type -> GGUF general.architecture
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


class LlamaCppError(UniqlError, RuntimeError):
    """llama.cpp refused a file or a call (the message names which)."""


def import_llama_cpp() -> tuple[ModuleType | None, str | None]:
    """(the ``llama_cpp`` module, None) when it imports, else (None, why not)."""
    try:
        import llama_cpp
    except ImportError as e:
        return None, f"the PyPI package llama-cpp-python is not installed ({e})"
    except Exception as e:  # noqa: BLE001 - a broken install (missing shared library) is a skip, stated
        return None, f"llama_cpp does not import: {type(e).__name__}: {e}"
    return llama_cpp, None


def _libllama_name() -> str:
    """The file ``llama_cpp`` loads from ``LIB_ENV``'s folder on this platform (its ``load_shared_library``)."""
    if sys.platform == "win32":
        return "llama.dll"
    return "libllama.dylib" if sys.platform == "darwin" else "libllama.so"


def lib_dir(path: str | os.PathLike) -> Path:
    """``path`` (absolute) when it is a folder llama-cpp-python can load llama.cpp from: one holding ``libllama.so``
    (``libllama.dylib`` on macOS, ``llama.dll`` on Windows) next to the ``libggml*`` libraries it links. Raises
    ModelNotFoundError naming the folder and the missing file otherwise."""
    p = Path(path).expanduser().absolute()
    if not p.is_dir():
        raise ModelNotFoundError(f"llama.cpp library folder {str(p)!r} does not exist")
    lib = p / _libllama_name()
    if not lib.is_file():
        raise ModelNotFoundError(f"llama.cpp library folder {str(p)!r} holds no {lib.name} (build llama.cpp with "
                                 "BUILD_SHARED_LIBS=ON and copy its libllama / libggml* libraries there)")
    return p


def use_lib(path: str | os.PathLike | None) -> Path | None:
    """Makes this process's ``import llama_cpp`` load llama.cpp from the folder ``path`` (checked by ``lib_dir``);
    None leaves the package's own libraries. It must run before ``llama_cpp`` is first imported: once imported with
    other libraries, StateError."""
    if path is None:
        return None
    p = lib_dir(path)
    mod = sys.modules.get("llama_cpp")
    if mod is not None:
        loaded = lib_info(mod)["lib_dir"]
        if loaded is None or Path(loaded) != p.resolve():
            raise StateError(f"llama_cpp is already imported with the libraries in {loaded!r}; "
                             f"{str(p)!r} can only be used in a fresh process (set {LIB_ENV} before importing it)")
    os.environ[LIB_ENV] = str(p)
    return p


def child_env(env: dict[str, str], path: str | os.PathLike | None) -> dict[str, str]:
    """A copy of ``env`` for a child process whose llama.cpp comes from the folder ``path`` (checked by
    ``lib_dir``), or, for None, from the package itself (``LIB_ENV`` removed)."""
    out = dict(env)
    out.pop(LIB_ENV, None)
    if path is not None:
        out[LIB_ENV] = str(lib_dir(path))
    return out


def lib_info(llama_cpp: ModuleType) -> dict[str, str | None]:
    """The folder the imported ``llama_cpp`` loaded its ``libllama`` from (resolved; None if unknown) and
    llama.cpp's ``llama_print_system_info()`` line (the instruction sets its CPU backend was compiled for, e.g.
    ``AVX2 = 1`` without any ``AVX512``)."""
    lib = getattr(getattr(llama_cpp, "llama_cpp", None), "_lib", None)
    name = getattr(lib, "_name", None)
    folder = os.path.dirname(os.path.abspath(name)) if name else None  # the folder named, not a link's target
    try:
        info = llama_cpp.llama_print_system_info()
        info = (info.decode(errors="replace") if isinstance(info, bytes) else str(info)).strip()
    except Exception as e:  # noqa: BLE001 - a build without the call still runs; say so
        info = f"unknown ({type(e).__name__}: {e})"
    return {"lib_dir": folder, "system_info": info}


def cache_dir() -> Path:
    """Where the Q4_0 GGUF files are kept: ``$UNIQL_BENCH_CACHE`` or ``~/.cache/uniql/bench``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "uniql" / "bench"


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation (convert_hf_to_gguf.py ``LlamaModel.permute``); the inverse of
    ``uniql.formats.gguf.unpermute_qk``: per head, rows (2, d/2) -> (d/2, 2)."""
    rows = w.shape[0]
    if n_head <= 0 or rows % (2 * n_head):
        raise ShapeError(f"cannot permute {rows} rows into {n_head} heads of even size")
    half = rows // n_head // 2
    return np.ascontiguousarray(w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def _gguf_name(hf: str) -> str:
    base, _, suffix = hf.rpartition(".")
    if base in _GLOBAL:
        return f"{_GLOBAL[base]}.{suffix}"
    parts = base.split(".")
    if len(parts) >= 4 and parts[:2] == ["model", "layers"] and ".".join(parts[3:]) in _LAYER:
        return f"blk.{int(parts[2])}.{_LAYER['.'.join(parts[3:])]}.{suffix}"
    raise UnsupportedError(f"tensor {hf!r} has no llama.cpp name here")


# ------------------------------------------------------------------------------------- writing ----

#: one tensor to write: (GGUF name, row-major shape, dtype, producer of the array)
TensorSpec = tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]


def tensor_plan(cfg: dict[str, Any], arch: str, get: Callable[[str], np.ndarray | None],
                 shape_of: Callable[[str], tuple[int, ...] | None], dtype2d: np.dtype) -> list[TensorSpec]:
    """Tensors in llama.cpp order; ``get(hf_name)`` returns float32 data, ``shape_of`` its shape (None: absent)."""
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    names = ["model.embed_tokens.weight"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight"]
        for m in ("q", "k", "v"):
            names += [p + f"self_attn.{m}_proj.weight", p + f"self_attn.{m}_proj.bias"]
        names += [p + "self_attn.o_proj.weight", p + "post_attention_layernorm.weight", p + "mlp.gate_proj.weight",
                  p + "mlp.up_proj.weight", p + "mlp.down_proj.weight"]
    names += ["model.norm.weight"]
    if not cfg.get("tie_word_embeddings"):
        names += ["lm_head.weight"]
    plan: list[TensorSpec] = []
    for hf in names:
        shape = shape_of(hf)
        if shape is None:
            if hf.endswith(".bias"):
                continue
            raise FormatError(f"tensor {hf!r} is missing")
        heads = nh if ".q_proj." in hf else nkv if ".k_proj." in hf else 0
        dt = np.dtype(dtype2d) if len(shape) == 2 else np.dtype(np.float32)

        def produce(hf: str = hf, heads: int = heads, dt: np.dtype = dt) -> np.ndarray:
            a = get(hf)
            assert a is not None
            if heads and arch == "llama":
                a = permute_qk(a, heads)
            return np.ascontiguousarray(a, dtype=dt)

        plan.append((_gguf_name(hf), tuple(shape), dt, produce))
    if H % 32:
        raise UnsupportedError(f"hidden size {H} is not a multiple of Q4_0's block of 32")
    return plan


def _random_2d(shape: tuple[int, ...], seed: int, dtype: np.dtype, chunk_rows: int = 4096) -> np.ndarray:
    """N(0, 0.02^2) in ``dtype``, generated in row chunks (a 128256 x 4096 float32 temporary is 2 GB)."""
    rng = np.random.default_rng(seed)
    out = np.empty(shape, dtype)
    for r in range(0, shape[0], chunk_rows):
        part = rng.standard_normal((min(chunk_rows, shape[0] - r), *shape[1:]), dtype=np.float32)
        part *= np.float32(0.02)
        out[r:r + part.shape[0]] = part
    return out


def write_gguf(path: Path, cfg: dict[str, Any], plan: list[TensorSpec], *, arch: str, name: str,
               tokenizer_from: Path | None, file_type: int) -> None:
    """Writes an (F32/F16) GGUF of a Llama/Qwen2 ``cfg`` tensor by tensor (only one tensor in memory)."""
    import gguf

    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or H // nh
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_context_length(int(cfg.get("max_position_embeddings", 4096)))
    w.add_embedding_length(H)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_key_length(d)
    w.add_value_length(d)
    w.add_rope_dimension_count(d)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_file_type(file_type)
    if tokenizer_from is not None:
        src = gguf.GGUFReader(str(tokenizer_from))
        for key, field in src.fields.items():
            if key.startswith("tokenizer."):
                sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
                w.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    else:
        w.add_tokenizer_model("none")
        w.add_vocab_size(cfg["vocab_size"])
    for name, shape, dt, _ in plan:
        w.add_tensor_info(name, shape, dt, int(np.prod(shape)) * dt.itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, dt, produce in plan:
        a = produce()
        if a.shape != shape or a.dtype != dt:
            raise InternalError(f"{name}: produced {a.shape} {a.dtype}, planned {shape} {dt}")
        w.write_tensor_data(a)
        del a
    w.close()


def quantize_q4_0(llama_cpp: ModuleType, src: Path, dst: Path, threads: int) -> None:
    """llama.cpp's quantizer: ``src`` (F32/F16 GGUF) -> ``dst`` with every 2-D weight Q4_0 (``pure``)."""
    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = max(1, threads)
    p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    p.pure = True
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    if rc != 0:
        raise LlamaCppError(f"llama_model_quantize({str(src)!r} -> Q4_0) returned {rc}")


@dataclass(frozen=True)
class GGUFSource:
    """What a GGUF holds: the HF config as run, and the weights (a checkpoint directory or random of a seed)."""

    label: str
    cfg: dict[str, Any]
    src_dir: Path | None = None
    seed: int = 0
    tokenizer_from: Path | None = None

    def key(self) -> str:
        ident: dict[str, Any] = {"format": GGUF_FORMAT, "cfg": self.cfg, "seed": self.seed,
                                 "tokenizer": str(self.tokenizer_from) if self.tokenizer_from else None}
        if self.src_dir is not None:
            files = sorted(p for p in self.src_dir.glob("*.safetensors*"))
            ident["src"] = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in self.label)
        return f"{safe}-L{self.cfg['num_hidden_layers']}-V{self.cfg['vocab_size']}-{h}"


def build_q4_0(llama_cpp: ModuleType, source: GGUFSource, threads: int, cache: Path | None = None) -> Path:
    """The Q4_0 GGUF of ``source`` in the cache (built once: F32/F16 GGUF, llama.cpp quantizer, rename)."""
    cache = cache or cache_dir()
    dst = cache / f"{source.key()}.Q4_0.gguf"
    if dst.is_file():
        return dst
    cache.mkdir(parents=True, exist_ok=True)
    cfg = source.cfg
    arch = GGUF_ARCHES.get(cfg.get("model_type", "llama"))
    if arch is None:
        raise UnsupportedError(f"model_type {cfg.get('model_type')!r} has no llama.cpp architecture here")
    t0 = time.perf_counter()
    if source.src_dir is not None:
        from uniql.formats.checkpoint import read_tensors

        tensors = read_tensors(source.src_dir)
        plan = tensor_plan(cfg, arch, tensors.get, lambda n: tensors[n].shape if n in tensors else None,
                            np.dtype(np.float32))
        file_type = 0  # LLAMA_FTYPE_ALL_F32
    else:
        shapes = _random_shapes(cfg)
        seeds = {n: source.seed * 1000 + i for i, n in enumerate(shapes)}

        def get(n: str) -> np.ndarray:
            s = shapes[n]
            return np.ones(s, np.float32) if len(s) == 1 else _random_2d(s, seeds[n], np.dtype(np.float16))

        plan = tensor_plan(cfg, arch, get, shapes.get, np.dtype(np.float16))
        file_type = 1  # LLAMA_FTYPE_MOSTLY_F16
    tmp_src = dst.with_name(dst.name + f".{os.getpid()}.f.gguf")
    tmp_dst = dst.with_name(dst.name + f".{os.getpid()}.tmp")
    try:
        write_gguf(tmp_src, cfg, plan, arch=arch, name=f"uniql-bench {source.label}",
                   tokenizer_from=source.tokenizer_from, file_type=file_type)
        t1 = time.perf_counter()
        with quiet():
            quantize_q4_0(llama_cpp, tmp_src, tmp_dst, threads)
        os.replace(tmp_dst, dst)
        log.info("llama.cpp %s: wrote the %s GGUF in %.1f s, Q4_0 in %.1f s -> %s", source.label,
                 "F32" if file_type == 0 else "F16", t1 - t0, time.perf_counter() - t1, dst)
    finally:
        for p in (tmp_src, tmp_dst):
            p.unlink(missing_ok=True)
    return dst


def _random_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    H, K, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or H // nh
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, H)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                  p + "self_attn.q_proj.weight": (nh * d, H), p + "self_attn.k_proj.weight": (nkv * d, H),
                  p + "self_attn.v_proj.weight": (nkv * d, H), p + "self_attn.o_proj.weight": (H, nh * d),
                  p + "mlp.gate_proj.weight": (K, H), p + "mlp.up_proj.weight": (K, H),
                  p + "mlp.down_proj.weight": (H, K)})
    s["model.norm.weight"] = (H,)
    if not cfg.get("tie_word_embeddings"):
        s["lm_head.weight"] = (V, H)
    return s


def gguf_bytes(path: Path) -> dict[str, int]:
    """Bytes of the tensors of a GGUF: all, the decoder layers (``blk.*``), the embedding and the output."""
    import gguf

    r = gguf.GGUFReader(str(path))
    out = {"all": 0, "layers": 0, "token_embd": 0, "output": 0}
    for t in r.tensors:
        n = int(t.n_bytes)
        out["all"] += n
        if t.name.startswith("blk."):
            out["layers"] += n
        elif t.name in ("token_embd.weight", "output.weight"):
            out[t.name.split(".")[0]] += n
    return out


# -------------------------------------------------------------------------------------- timing ----

@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """llama.cpp logs through the ``llama-cpp-python`` logger's level (set to ERROR while we run)."""
    lg = logging.getLogger("llama-cpp-python")
    old = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(old)


def time_gguf(llama_cpp: ModuleType, path: Path, prompt: int, gen: int, repeats: int, threads: int,
              seed: int = 1) -> dict[str, Any]:
    """Best prefill seconds of ``prompt`` tokens and best decode seconds per token over ``gen`` tokens of a GGUF
    in llama.cpp (token ids as ``uniql.bench.time_model`` draws them); also its weight bytes and settings."""
    L = llama_cpp
    with quiet():
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not model:
            raise LlamaCppError(f"llama.cpp could not load {str(path)!r}")
        ctx = None
        try:
            cp = L.llama_context_default_params()
            cp.n_ctx = prompt + gen + 8
            cp.n_batch = cp.n_ubatch = max(prompt, 1)
            cp.n_threads = cp.n_threads_batch = threads
            cp.no_perf = True
            ctx = L.llama_init_from_model(model, cp)
            if not ctx:
                raise LlamaCppError(f"llama.cpp could not create a context for {str(path)!r}")
            vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
            rng = np.random.default_rng(seed)
            ids = rng.integers(0, vocab, prompt + gen).astype(np.int32)
            p_arr = (L.llama_token * prompt)(*ids[:prompt].tolist())
            d_arr = [(L.llama_token * 1)(int(t)) for t in ids[prompt:]]
            mem = L.llama_get_memory(ctx)

            def decode(arr: Any, n: int) -> None:
                rc = L.llama_decode(ctx, L.llama_batch_get_one(arr, n))
                if rc != 0:
                    raise LlamaCppError(f"llama_decode of {n} tokens returned {rc} ({str(path)!r})")
                L.llama_synchronize(ctx)

            decode(d_arr[0], 1)  # warm-up: first-touch of the weights and buffers
            best_p = best_d = cpu_p = cpu_d = float("inf")
            for _ in range(repeats):
                L.llama_memory_clear(mem, True)
                c0, t0 = time.process_time(), time.perf_counter()
                decode(p_arr, prompt)
                best_p, cpu_p = min(best_p, time.perf_counter() - t0), min(cpu_p, time.process_time() - c0)
                c0, t0 = time.process_time(), time.perf_counter()
                for a in d_arr:
                    decode(a, 1)
                best_d = min(best_d, (time.perf_counter() - t0) / gen)
                cpu_d = min(cpu_d, (time.process_time() - c0) / gen)
            return {"prefill_s": best_p, "decode_s_per_token": best_d, "prefill_cpu_s": cpu_p,
                    "decode_cpu_s_per_token": cpu_d, "weight_bytes": int(L.llama_model_size(model)),
                    "n_params": int(L.llama_model_n_params(model)), "n_vocab": int(vocab),
                    "n_layer": int(L.llama_model_n_layer(model)), "threads": threads,
                    "flash_attn_type": int(cp.flash_attn_type), "n_ubatch": int(cp.n_ubatch)}
        finally:
            if ctx:
                L.llama_free(ctx)
            L.llama_model_free(model)

"""GGUF (llama.cpp) -> Hugging Face checkpoint directory: config.json, model.safetensors, tokenizer.json.

What happens to the numbers: quantized GGUF blocks are expanded by the ``gguf`` package's own dequantizers
(``gguf.quants.dequantize``, e.g. Q4_1: w = d·q + m per block of 32); float16/bfloat16 tensors are widened in C
(``uniql._C.convert``). Everything else is data layout:

- names: ``token_embd`` -> ``model.embed_tokens``, ``blk.N.attn_q`` -> ``model.layers.N.self_attn.q_proj``, ...
  (see ``_LAYER_NAMES``); an absent ``output.weight`` means tied embeddings;
- axes: GGUF stores dims innermost-first, so a tensor of GGUF shape (in, out) is the row-major (out, in) HF weight;
- llama.cpp's Q/K row permutation (convert_hf_to_gguf.py ``LlamaModel.permute``: per head, rows reshaped
  (n_head, 2, d/2, in) and swapped to (n_head, d/2, 2, in), i.e. rotate-half pairs (i, i+d/2) interleaved as
  (2i, 2i+1)) is undone by the inverse index permutation: reshape (n_head, d/2, 2, in) -> swap axes 1,2 ->
  reshape. Q uses n_head, K uses n_head_kv. Only the ``llama`` architecture is permuted; ``qwen2`` is stored as is.

The output is written into a temporary sibling directory and renamed into place at the end, so an interrupted
conversion never leaves a half-written model.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from uniql import _C
from uniql.formats.checkpoint import CONFIG_FILE, WEIGHTS_FILE, ModelNotFoundError
from uniql.errors import FormatError, InvalidArgumentError, OutputExistsError, UnsupportedError

__all__ = ["convert_gguf", "gguf_to_hf_name", "unpermute_qk", "OutputExistsError", "GGUF_ARCHITECTURES"]

log = logging.getLogger(__name__)

# GGUF general.architecture -> (HF architectures class, HF model_type)
GGUF_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
}
OUT_DTYPES = ("float32", "float16", "bfloat16")

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def gguf_to_hf_name(name: str) -> str:
    """Hugging Face tensor name of a llama.cpp tensor name; UnsupportedError for names we do not map."""
    m = _LAYER_RE.fullmatch(name)
    if m:
        block, kind, suffix = m.groups()
        if kind in _LAYER_NAMES:
            return f"model.layers.{int(block)}.{_LAYER_NAMES[kind]}.{suffix}"
    else:
        base, _, suffix = name.rpartition(".")
        if suffix in ("weight", "bias") and base in _GLOBAL_NAMES:
            return f"{_GLOBAL_NAMES[base]}.{suffix}"
    raise UnsupportedError(f"GGUF tensor {name!r} has no Hugging Face counterpart in uniql's converter")


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation for ``n_head`` heads (rows = n_head·d, d even)."""
    rows = w.shape[0]
    if n_head <= 0 or rows % (2 * n_head):
        raise FormatError(f"cannot un-permute {rows} rows into {n_head} heads of even size")
    half = rows // n_head // 2
    return np.ascontiguousarray(w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


# ----------------------------------------------------------------------------------------- reading ----

class _Meta:
    """Typed access to GGUF key/values, with errors naming the file and key."""

    def __init__(self, reader: Any, path: Path):
        self.reader, self.path = reader, path

    def get(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception as e:  # malformed field
            raise FormatError(f"GGUF {str(self.path)!r}: cannot read metadata {key!r}: {e}") from None

    def need(self, key: str, kind: type) -> Any:
        v = self.get(key)
        if v is None:
            raise FormatError(f"GGUF {str(self.path)!r} lacks the metadata key {key!r}")
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)) or \
                kind is float and not isinstance(v, (int, float)):
            raise FormatError(f"GGUF {str(self.path)!r}: {key!r} = {v!r} is not {kind.__name__}")
        return kind(v)


def _open_gguf(path: Path) -> Any:
    import gguf

    if not path.exists():
        raise ModelNotFoundError(f"GGUF file {str(path)!r} does not exist")
    if not path.is_file():
        raise InvalidArgumentError(f"{str(path)!r} is not a file (expected a .gguf file)")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:
        raise FormatError(f"{str(path)!r} is not a readable GGUF file: {e}") from None


def _build_config(meta: _Meta, tensors: dict[str, "_Shape"], arch: str) -> dict[str, Any]:
    a = arch
    hidden = meta.need(f"{a}.embedding_length", int)
    n_layer = meta.need(f"{a}.block_count", int)
    n_head = meta.need(f"{a}.attention.head_count", int)
    n_kv = meta.get(f"{a}.attention.head_count_kv", n_head)
    if isinstance(n_kv, list) or isinstance(meta.get(f"{a}.feed_forward_length"), list):
        raise UnsupportedError(f"GGUF {str(meta.path)!r}: per-layer head counts / FFN sizes are not supported")
    n_kv = int(n_kv)
    head_dim = int(meta.get(f"{a}.attention.key_length", hidden // n_head))
    if int(meta.get(f"{a}.attention.value_length", head_dim)) != head_dim:
        raise UnsupportedError(f"GGUF {str(meta.path)!r}: key_length != value_length is not supported")
    rope_dim = int(meta.get(f"{a}.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise UnsupportedError(
            f"GGUF {str(meta.path)!r}: partial rotary embedding ({rope_dim} of {head_dim} dims) is not supported")
    if n_head % n_kv:
        raise FormatError(f"GGUF {str(meta.path)!r}: head_count {n_head} is not a multiple of head_count_kv {n_kv}")
    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise FormatError(f"GGUF {str(meta.path)!r} has no tensor 'token_embd.weight'")
    vocab = int(meta.get(f"{a}.vocab_size", 0) or len(meta.get("tokenizer.ggml.tokens", []) or [])
                or int(emb.shape[0]))
    theta = float(meta.get(f"{a}.rope.freq_base", 10000.0))
    scaling_type = meta.get(f"{a}.rope.scaling.type")
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    rope_scaling = None
    if scaling_type not in (None, "none"):
        if scaling_type != "linear":
            raise UnsupportedError(f"GGUF {str(meta.path)!r}: rope scaling {scaling_type!r} is not supported")
        factor = meta.need(f"{a}.rope.scaling.factor", float)
        rope_scaling = {"rope_type": "linear", "factor": factor}
        rope_parameters = {"rope_type": "linear", "factor": factor, "rope_theta": theta}
    if "rope_freqs.weight" in tensors:
        raise UnsupportedError(
            f"GGUF {str(meta.path)!r} holds 'rope_freqs.weight' (Llama-3 rope frequency scaling), "
            "which the converter does not support yet")
    tied = "output.weight" not in tensors
    hf_arch, model_type = GGUF_ARCHITECTURES[arch]
    ffn = meta.get(f"{a}.feed_forward_length")
    if ffn is None:
        up = tensors.get("blk.0.ffn_up.weight")
        if up is None:
            raise FormatError(f"GGUF {str(meta.path)!r} lacks '{a}.feed_forward_length' and 'blk.0.ffn_up.weight'")
        ffn = int(up.shape[0])
    cfg: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(ffn),
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(meta.get(f"{a}.context_length", 2048)),
        "rms_norm_eps": float(meta.get(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": theta,
        "rope_parameters": rope_parameters,
        "rope_scaling": rope_scaling,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    if model_type == "llama":
        cfg.update({"attention_bias": "blk.0.attn_q.bias" in tensors, "mlp_bias": False, "pretraining_tp": 1})
    elif model_type == "qwen2":
        if head_dim * n_head != hidden:
            raise UnsupportedError(f"GGUF {str(meta.path)!r}: qwen2 with head_dim*heads != hidden is not supported")
        del cfg["head_dim"]
        cfg.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": n_layer})
    for key, hf in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                    ("padding_token_id", "pad_token_id")):
        v = meta.get(f"tokenizer.ggml.{key}")
        cfg[hf] = int(v) if v is not None else None
    return cfg


def _expected_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    per_layer = {"self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h),
                 "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, q),
                 "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h), "mlp.down_proj.weight": (h, f),
                 "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,)}
    if cfg["model_type"] == "qwen2" or cfg.get("attention_bias"):
        per_layer.update({"self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,),
                          "self_attn.v_proj.bias": (kv,)})
    for i in range(cfg["num_hidden_layers"]):
        for k, s in per_layer.items():
            shapes[f"model.layers.{i}.{k}"] = s
    return shapes


def _dequantize(t: Any, path: Path) -> np.ndarray:
    """float32 row-major array of a GGUF tensor (numpy shape = GGUF shape reversed)."""
    import gguf

    shape = tuple(int(x) for x in reversed(t.shape))
    T = gguf.GGMLQuantizationType
    data = np.ascontiguousarray(t.data)
    if t.tensor_type == T.F32:
        return data.view(np.float32).reshape(shape)
    if t.tensor_type in (T.F16, T.BF16):
        src = data.view(np.float16 if t.tensor_type == T.F16 else np.uint16).reshape(shape)
        out = np.empty(shape, dtype=np.float32)
        _C.convert(src, out, bf16=t.tensor_type == T.BF16)
        return out
    try:
        w = gguf.quants.dequantize(data, t.tensor_type)
    except NotImplementedError:
        raise UnsupportedError(
            f"GGUF {str(path)!r}: tensor {t.name!r} uses {t.tensor_type.name}, which the gguf package cannot "
            "dequantize") from None
    return np.ascontiguousarray(w, dtype=np.float32).reshape(shape)


def _read_weights(reader: Any, cfg: dict[str, Any], arch: str, path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        hf = gguf_to_hf_name(t.name)
        if hf in out:
            raise FormatError(f"GGUF {str(path)!r}: tensor {t.name!r} appears twice")
        w = _dequantize(t, path)
        if arch == "llama" and (".attn_q." in t.name or ".attn_k." in t.name):
            heads = cfg["num_attention_heads"] if ".attn_q." in t.name else cfg["num_key_value_heads"]
            w = unpermute_qk(w, heads)
        out[hf] = w
    expected = _expected_shapes(cfg)
    for name, shape in expected.items():
        if name not in out:
            raise FormatError(f"GGUF {str(path)!r} lacks the tensor for {name!r}")
        if out[name].shape != shape:
            raise FormatError(f"GGUF {str(path)!r}: {name!r} has shape {out[name].shape}, expected {shape} "
                              "from the metadata")
    extra = sorted(set(out) - set(expected))
    if extra:
        raise UnsupportedError(f"GGUF {str(path)!r}: unexpected tensor {extra[0]!r} for {arch}")
    return out


# ----------------------------------------------------------------------------------------- writing ----

def _cast(tensors: dict[str, np.ndarray], dtype: str) -> dict[str, Any]:
    """float32 -> the output dtype, rounding to nearest even in C (bfloat16 as safetensors.BF16Array)."""
    if dtype == "float32":
        return tensors
    from uniql.formats.safetensors import BF16Array

    out: dict[str, Any] = {}
    for k in list(tensors):
        w = tensors.pop(k)
        if dtype == "bfloat16":
            out[k] = BF16Array.from_float32(w)
        else:
            h = np.empty(w.shape, dtype=np.float16)
            _C.convert(w, h)
            out[k] = h
    return out


def _write_tokenizer(gguf_path: Path, tmp: Path) -> None:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UnsupportedError(
            "rebuilding tokenizer.json from a GGUF file needs the optional dependency transformers "
            "(pip install 'uniql[torch]'); or convert without the tokenizer (tokenizer=False / --no-tokenizer)") \
            from None
    log.info("rebuilding the tokenizer from %s with transformers", gguf_path.name)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as e:
        raise FormatError(f"transformers could not rebuild the tokenizer of {str(gguf_path)!r}: {e}") from None
    tok.save_pretrained(str(tmp))
    if not (tmp / "tokenizer.json").is_file():
        raise FormatError(f"transformers rebuilt a tokenizer for {str(gguf_path)!r} without a tokenizer.json")


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise OutputExistsError(f"output {str(out)!r} exists and is not a directory")
        if any(out.iterdir()) and not overwrite:
            raise OutputExistsError(f"output directory {str(out)!r} exists and is not empty "
                                    "(pass overwrite=True / --overwrite to replace it)")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished tmp directory to ``out``, replacing an existing ``out`` only after tmp is complete."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_gguf(gguf_path: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None, *,
                 dtype: str = "float32", overwrite: bool = False, tokenizer: bool | None = None) -> Path:
    """Convert a llama.cpp GGUF file (``llama`` or ``qwen2``) into a Hugging Face checkpoint directory.

    gguf_path: the .gguf file; None = SmolLM2-135M-Instruct (``uniql.data.smollm2_gguf()``).
    out_dir: output directory (required); an existing non-empty one is replaced only with ``overwrite=True``.
    dtype: weight dtype in model.safetensors: "float32" (default; the exact dequantized values), "float16" or
        "bfloat16" (rounded to nearest even).
    tokenizer: rebuild tokenizer.json (+ tokenizer_config.json) with transformers; None = when the GGUF has
        tokenizer metadata, True = required, False = skip.
    Returns the output directory. Writes config.json, model.safetensors, generation_config.json and the
    tokenizer files into a temporary sibling directory, renamed into place at the end.
    """
    if out_dir is None:
        raise InvalidArgumentError("convert_gguf: out_dir is required")
    if dtype not in OUT_DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {', '.join(OUT_DTYPES)}, not {dtype!r}")
    if gguf_path is None:
        from uniql import data

        gguf_path = data.smollm2_gguf()
    src = Path(gguf_path)
    out = Path(out_dir)
    _check_out_dir(out, overwrite)

    reader = _open_gguf(src)
    meta = _Meta(reader, src)
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedError(f"GGUF {str(src)!r}: architecture {arch!r} is not supported "
                               f"(supported: {', '.join(GGUF_ARCHITECTURES)})")
    has_tok = meta.get("tokenizer.ggml.model") is not None
    if tokenizer and not has_tok:
        raise FormatError(f"GGUF {str(src)!r} carries no tokenizer (no 'tokenizer.ggml.model' metadata)")
    want_tok = has_tok if tokenizer is None else bool(tokenizer)
    by_name = {t.name: t for t in reader.tensors}
    cfg = _build_config(meta, _gguf_shapes(by_name), arch)
    cfg["dtype"] = dtype
    log.info("converting %s (%s, %d layers, hidden %d) -> %s", src.name, arch, cfg["num_hidden_layers"],
             cfg["hidden_size"], out)
    tensors = _cast(_read_weights(reader, cfg, arch, src), dtype)

    from uniql.formats import safetensors as st

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        st.save_file(tmp / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
        del tensors
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}
        gen["_from_model_config"] = True
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
        if want_tok:
            _write_tokenizer(src, tmp)
        else:
            log.info("no tokenizer written for %s", src.name)
        _check_out_dir(out, overwrite)  # still true after the (long) conversion?
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s", out)
    return out


class _Shape:
    """Stand-in exposing a numpy-order ``shape`` for metadata inference before dequantizing anything."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


def _gguf_shapes(by_name: dict[str, Any]) -> dict[str, _Shape]:
    return {n: _Shape(tuple(int(x) for x in reversed(t.shape))) for n, t in by_name.items()}

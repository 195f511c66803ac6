"""Reading Hugging Face checkpoint directories: config.json, safetensors weights (one file or sharded through
``model.safetensors.index.json``), tokenizer.json; and ``load()``, the one entry point that turns a directory into a
runnable model.

Every weight comes back as a C-contiguous float32 array under its Hugging Face name. bfloat16 is widened by
``uniql.formats.safetensors`` (C), float16 by ``uniql._C.convert`` (C); no half-precision arithmetic happens in Python.
Errors name the file (and tensor/shard) at fault: a missing path raises :class:`ModelNotFoundError` (a
``FileNotFoundError``), unreadable or inconsistent files :class:`uniql.FormatError`, an architecture we do not run
:class:`uniql.UnsupportedError`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from uniql import _C
from uniql.errors import FormatError, InvalidArgumentError, ModelNotFoundError, UniqlIOError, UnsupportedError

if TYPE_CHECKING:  # pragma: no cover
    import tokenizers

    from uniql.models.runtime import Model

__all__ = [
    "SUPPORTED_MODEL_TYPES", "SUPPORTED_ARCHITECTURES", "ModelNotFoundError",
    "read_config", "read_tensors", "load_tokenizer", "is_artifact", "load",
]

log = logging.getLogger(__name__)

# model_type -> the architectures class names accepted for it (every one loads as uniql.models.runtime.Model)
SUPPORTED_ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "llama": ("LlamaForCausalLM",),
    "qwen2": ("Qwen2ForCausalLM",),
    "mamba2": ("Mamba2ForCausalLM",),
    "nemotron_h": ("NemotronHForCausalLM",),
    "bamba": ("BambaForCausalLM",),
}
HYBRID_MODEL_TYPES: tuple[str, ...] = ("mamba2", "nemotron_h", "bamba")
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(SUPPORTED_ARCHITECTURES)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
ARTIFACT_KEY = "uniql"  # config.json[ARTIFACT_KEY] marks a uniql compressed artifact

PathLike = str | os.PathLike


def _model_dir(model_dir: PathLike) -> Path:
    p = Path(model_dir)
    if not p.exists():
        raise ModelNotFoundError(f"model directory {str(p)!r} does not exist")
    if not p.is_dir():
        raise ModelNotFoundError(
            f"{str(p)!r} is not a directory (expected a Hugging Face model directory with config.json and "
            f"*.safetensors{'; convert a GGUF file with `uniql convert`' if p.suffix == '.gguf' else ''})")
    return p


def _supported_list() -> str:
    return ", ".join(SUPPORTED_MODEL_TYPES)


def _read_json(path: Path, what: str) -> Any:
    """Parse a JSON file, rejecting duplicate object keys; FormatError names the file and the position."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise FormatError(f"{what} {str(path)!r}: duplicate key {k!r}")
            out[k] = v
        return out

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelNotFoundError(f"{what} {str(path)!r} not found") from None
    except OSError as e:
        raise UniqlIOError(f"cannot read {what} {str(path)!r}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{what} {str(path)!r} is not valid UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise FormatError(f"{what} {str(path)!r} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None


def read_raw_config(model_dir: PathLike) -> dict[str, Any]:
    """config.json as a dict, with no architecture check (artifacts and HF checkpoints alike)."""
    d = _model_dir(model_dir)
    path = d / CONFIG_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{str(path)!r} not found: {str(d)!r} is not a Hugging Face model directory")
    cfg = _read_json(path, "config")
    if not isinstance(cfg, dict):
        raise FormatError(f"config {str(path)!r} must hold a JSON object, not {type(cfg).__name__}")
    return cfg


def _check_architecture(cfg: dict[str, Any], path: Path) -> None:
    archs = cfg.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise FormatError(f"config {str(path)!r}: 'architectures' must be a list of class names")
    model_type = cfg.get("model_type")
    if model_type is None:
        known = {a: t for t, names in SUPPORTED_ARCHITECTURES.items() for a in names}
        types = {known[a] for a in archs or () if a in known}
        if len(types) != 1:
            raise UnsupportedError(
                f"config {str(path)!r} has no 'model_type' and architectures {archs!r} do not name a supported "
                f"model (supported model types: {_supported_list()})")
        model_type = types.pop()
        cfg["model_type"] = model_type
    if not isinstance(model_type, str) or model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedError(
            f"config {str(path)!r}: model_type {model_type!r} is not supported (supported: {_supported_list()})")
    for a in archs or ():
        if a not in SUPPORTED_ARCHITECTURES[model_type]:
            raise UnsupportedError(
                f"config {str(path)!r}: architecture {a!r} is not supported for model_type {model_type!r} "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES[model_type])})")


def read_config(model_dir: PathLike) -> dict[str, Any]:
    """Read and check ``model_dir/config.json`` of a Hugging Face causal LM.

    Raises ModelNotFoundError (missing directory or config.json), FormatError (not UTF-8 / not JSON / not an
    object), UnsupportedError (model_type or architectures that uniql does not run; the message lists the
    supported ones). A missing model_type is inferred from ``architectures``.
    """
    cfg = read_raw_config(model_dir)
    _check_architecture(cfg, Path(model_dir) / CONFIG_FILE)
    return cfg


def is_artifact(cfg: dict[str, Any]) -> bool:
    """True when a config.json dict describes a uniql compressed artifact (it carries ``"uniql"`` metadata)."""
    return ARTIFACT_KEY in cfg


# ------------------------------------------------------------------------------------------ tensors ----

def _safetensors():
    from uniql.formats import safetensors as st  # engineer "io": C-backed reader/writer
    return st


def _to_float32(name: str, arr: np.ndarray, where: Path) -> np.ndarray:
    """float32 arrays pass through; float16 is widened in C; anything else is refused."""
    if arr.dtype == np.float32:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.float16:
        src = np.ascontiguousarray(arr)
        out = np.empty(src.shape, dtype=np.float32)
        _C.convert(src, out)
        return out
    raise UnsupportedError(
        f"tensor {name!r} in {str(where)!r} has dtype {arr.dtype} (supported: float32, float16, bfloat16)")


def _shard_plan(d: Path) -> dict[Path, list[str]]:
    """{shard path: tensor names} from the index, validated against the shards' own headers."""
    index_path = d / INDEX_FILE
    index = _read_json(index_path, "shard index")
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        raise FormatError(f"shard index {str(index_path)!r} has no 'weight_map' object")
    plan: dict[Path, list[str]] = {}
    for name, shard in wmap.items():
        if not isinstance(shard, str) or not shard or Path(shard).name != shard:
            raise FormatError(
                f"shard index {str(index_path)!r}: tensor {name!r} maps to {shard!r}, not a file name in {str(d)!r}")
        plan.setdefault(d / shard, []).append(name)
    st = _safetensors()
    owner: dict[str, Path] = {}
    for shard, names in plan.items():
        if not shard.is_file():
            raise FormatError(
                f"shard index {str(index_path)!r} names shard {shard.name!r} (for tensor {names[0]!r}), "
                f"which does not exist")
        with st.safe_open(shard) as f:
            keys = set(f.keys())
        for name in names:
            if name not in keys:
                raise FormatError(
                    f"shard index {str(index_path)!r} puts tensor {name!r} in shard {shard.name!r}, "
                    f"but that shard does not contain it")
        for k in keys:
            if k in owner:
                raise FormatError(f"tensor {k!r} is stored in two shards: {owner[k].name!r} and {shard.name!r}")
            owner[k] = shard
        extra = sorted(keys.difference(names))
        if extra:
            log.warning("shard %s holds %d tensor(s) missing from the index (ignored), e.g. %s",
                        shard.name, len(extra), extra[0])
    return plan


def weight_files(model_dir: PathLike) -> list[Path]:
    """The safetensors files of a checkpoint directory (index-validated when sharded)."""
    d = _model_dir(model_dir)
    if (d / INDEX_FILE).is_file():
        return list(_shard_plan(d))
    if (d / WEIGHTS_FILE).is_file():
        return [d / WEIGHTS_FILE]
    raise ModelNotFoundError(f"no {WEIGHTS_FILE} or {INDEX_FILE} in {str(d)!r}")


def tensor_names(model_dir: PathLike) -> list[str]:
    """Names of every tensor of a checkpoint directory (from the safetensors headers; no data is read)."""
    d = _model_dir(model_dir)
    if (d / INDEX_FILE).is_file():
        return [n for names in _shard_plan(d).values() for n in names]
    if (d / WEIGHTS_FILE).is_file():
        with _safetensors().safe_open(d / WEIGHTS_FILE) as f:
            return list(f.keys())
    raise ModelNotFoundError(f"no {WEIGHTS_FILE} or {INDEX_FILE} in {str(d)!r}")


def read_tensors(model_dir: PathLike, *, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """All weights of a checkpoint directory (or only ``names``) as float32 arrays keyed by their HF names.

    Reads ``model.safetensors`` or, when ``model.safetensors.index.json`` exists, the shards it lists, after checking
    that every shard exists, every indexed tensor is in its shard and no tensor sits in two shards (FormatError
    naming the tensor and shard otherwise). bf16/fp16/fp32 become float32; other dtypes raise UnsupportedError.
    A requested name that the checkpoint lacks raises FormatError.
    """
    d = _model_dir(model_dir)
    st = _safetensors()
    wanted = None if names is None else list(dict.fromkeys(names))
    if (d / INDEX_FILE).is_file():
        plan = _shard_plan(d)
    elif (d / WEIGHTS_FILE).is_file():
        with st.safe_open(d / WEIGHTS_FILE) as f:
            plan = {d / WEIGHTS_FILE: list(f.keys())}
    else:
        raise ModelNotFoundError(f"no {WEIGHTS_FILE} or {INDEX_FILE} in {str(d)!r}")
    if wanted is not None:
        where = {n: s for s, ns in plan.items() for n in ns}
        missing = [n for n in wanted if n not in where]
        if missing:
            raise FormatError(f"tensor {missing[0]!r} not found in the checkpoint {str(d)!r}"
                              + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""))
        plan = {s: [n for n in wanted if where[n] == s] for s in plan}
        plan = {s: ns for s, ns in plan.items() if ns}
    out: dict[str, np.ndarray] = {}
    for shard, shard_names in plan.items():
        log.debug("reading %d tensors from %s", len(shard_names), shard)
        arrays = st.load_file(shard, names=shard_names, bf16="float32")
        for n in shard_names:
            if n not in arrays:
                raise FormatError(f"tensor {n!r} missing from {str(shard)!r}")
            out[n] = _to_float32(n, arrays.pop(n), shard)
    return out


# ---------------------------------------------------------------------------------------- tokenizer ----

def load_tokenizer(model_dir: PathLike) -> "tokenizers.Tokenizer | None":
    """``tokenizers.Tokenizer`` from ``model_dir/tokenizer.json``; None when the file is absent.

    A tokenizer.json that is not UTF-8 or that the tokenizers library rejects raises FormatError naming it.
    """
    d = _model_dir(model_dir)
    path = d / TOKENIZER_FILE
    if not path.is_file():
        return None
    import tokenizers

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"tokenizer {str(path)!r} is not valid UTF-8 (byte {e.start})") from None
    try:
        return tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception with serde's message
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FormatError(f"tokenizer {str(path)!r} is malformed: {msg}") from None


# --------------------------------------------------------------------------------------------- load ----

def load(path: PathLike, rate: float = 0.0, *, max_seq: int | None = None, kv_dtype: str = "fp16") -> "Model":
    """Load a model directory for inference with the C runtime.

    ``path`` is a Hugging Face checkpoint directory (config.json + safetensors [+ tokenizer.json]) or, later, a
    uniql compressed artifact (config.json carrying ``"uniql"`` metadata). ``rate`` is the pruning rate to load an
    artifact at; a plain Hugging Face checkpoint can only be loaded at rate 0. ``max_seq``: KV-cache length
    (default: the runtime's, min(max_position_embeddings, 2048)). ``kv_dtype``: the KV cache's element type, "fp16"
    (default: half the cache bytes; K / V rounded to float16) or "fp32" (exact); see ``Model.kv_dtype``.
    """
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"rate must be a number, not {rate!r}") from None
    if not 0.0 <= rate < 1.0:
        raise InvalidArgumentError(f"rate must be in [0, 1), got {rate}")
    from uniql.models.runtime import kv_dtype_code

    kv_dtype_code(kv_dtype)
    d = _model_dir(path)
    cfg = read_raw_config(d)
    if is_artifact(cfg):
        return _load_artifact(d, cfg, rate, max_seq, kv_dtype)
    return _load_hf(d, cfg, rate, max_seq, kv_dtype)


def _load_artifact(d: Path, cfg: dict[str, Any], rate: float, max_seq: int | None, kv_dtype: str) -> "Model":
    from uniql.formats.artifact import load_artifact

    return load_artifact(d, cfg, rate, max_seq=max_seq, tokenizer=load_tokenizer(d), kv_dtype=kv_dtype)


def _load_hf(d: Path, cfg: dict[str, Any], rate: float, max_seq: int | None, kv_dtype: str) -> "Model":
    if rate != 0.0:
        raise InvalidArgumentError(
            f"{str(d)!r} is an uncompressed Hugging Face checkpoint: it can only be loaded at rate 0 (got {rate}); "
            f"compress it first (`uniql compress`)")
    _check_architecture(cfg, d / CONFIG_FILE)
    from uniql.models.runtime import Model

    tensors = read_tensors(d)
    tokenizer = load_tokenizer(d)
    log.info("loaded %d tensors from %s (tokenizer: %s)", len(tensors), d, "yes" if tokenizer else "none")
    return Model.from_hf_tensors(cfg, tensors, tokenizer=tokenizer, max_seq=max_seq, kv_dtype=kv_dtype)

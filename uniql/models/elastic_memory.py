"""Memory that follows the pruning rate: an elastic model whose rate rises gives back the weights it no longer uses,
and one whose rate falls re-reads only the missing parts from its artifact, without reloading.

``ElasticModel.set_rate`` changes the keep sizes the kernels use: a model loaded at rate 0 keeps every byte at
rate 0.35 (plus compact copies of its int4 output projections' kept columns, ``Model.compact_bytes``). :func:`resize` (``ElasticModel.resize(rate)``) instead rebuilds the weights at the keeps of
the new rate, so the resident weights are exactly those a model loaded at that rate holds:

- Every prunable axis is a prefix per head or per group (see uniql.formats.artifact), so for each linear the weights of
  rate rho are a sub-block of those of any lower rate: q/k/v rows (a prefix of every head; under partial RoPE the
  kept rotary and pass rows), o_proj columns (a prefix of every head's segment), gate/up rows and down columns (a
  prefix), a Mamba in_proj's row groups z / x / B / C, conv channels, gated-norm weights and out_proj columns.
- Shrinking (rate up) copies the kept sub-block into a new, smaller array and drops the old one; nothing is read.
  int4 weights live in the kernels' R16 layout (16-row blocks, 8-column chunks): they are turned back into the
  row-major int4 format by ``_C.q4_unpack_r16`` (the exact inverse of the load-time repack, same codes and
  scales), cut, and repacked by ``_C.q4_repack`` -- the layout work is in C.
- Growing (rate down) keeps the resident sub-block and reads from the memory-mapped artifact only the rows and
  columns it lacks (the missing row range of every head / segment, and the missing columns of the rows it has),
  converting float16 parts exactly as loading does; the new arrays are identical to those of a load at that rate,
  so logits are bit for bit those of ``uniql.load(path, rate)``. Before anything is read the artifact files are
  checked against the sizes and modification times recorded at load; a missing, changed or malformed file raises
  a :class:`uniql.UniqlError` and leaves the model untouched at its current rate (everything is built aside and
  swapped in only when complete).
- The C model is rebuilt over the new arrays (embedding, lm_head and norms are shared, not copied). An
  attention-only model's KV cache moves to a state of the new widths (``_C.hy_state_transfer``: K/V rows are cut to, or zero-extended to,
  the new stored head dims). After a shrink the cache is what ``set_rate`` would have used; after a grow the
  extra dims of past tokens were never computed, so pass ``tokens`` (the current sequence's ids) to re-prefill
  them exactly, or accept the approximation until the next sequence.
- Loading an artifact fixes glibc's mmap threshold (:func:`keep_large_allocations_mapped`), so each weight array
  is its own mapping and goes back to the system when freed; ``malloc_trim(0)`` returns free heap pages after a
  resize. The process RSS then follows the weights (tests/test_elastic_memory.py checks 5%).

One function for every architecture (Llama, Qwen2, Mamba2, Nemotron-H, Bamba), with fp32, fp16 (held as float32,
as loading does), int8 and int4 weights. A model with Mamba layers holds an SSM / conv state that depends on its
stored sizes and cannot be cut or extended, so its state is rebuilt and the sequence re-prefilled from ``tokens``
(required when the state is not empty).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from uniql import _C
from uniql.errors import FormatError, UniqlError, UniqlIOError

__all__ = ["resize", "release_free_memory", "keep_large_allocations_mapped", "rss_bytes"]

_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
            _LIBC.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


_M_MMAP_THRESHOLD = -3
_MAPPED = False


def keep_large_allocations_mapped(threshold: int = 128 * 1024) -> bool:
    """Fixes glibc's mmap threshold (its default value, 128 KiB, but no longer raised each time a large block is
    freed), so every weight array is its own mapping and freeing it returns its pages at once; without this,
    arrays freed during loading raise the threshold and later weights land in the heap, where freed holes stay
    resident. Called when an artifact is loaded; False where there is no glibc."""
    global _MAPPED
    lib = _libc()
    if not lib:
        return False
    if not _MAPPED:
        _MAPPED = bool(lib.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    return _MAPPED


def _install(model: Any, cm: Any, state: Any, arrays: Any, specs: tuple, rate: float) -> float:
    """Swaps a rebuilt C model, its state and weight arrays into ``model`` at ``rate`` (nothing here can fail);
    returns the rate it ran at before. The caller then drops its own references and releases memory."""
    model._cm, model._state, model._arrays = cm, state, arrays
    model._specs = specs
    model._scratch, model._scratch_seq = None, 0
    from_rate = model.rate
    model._rate = rate
    model.loaded_rate = rate
    return from_rate


def release_free_memory() -> bool:
    """Returns free heap pages to the system (glibc ``malloc_trim(0)``); False where there is no glibc."""
    lib = _libc()
    if not lib:
        return False
    lib.malloc_trim(0)
    return True


def rss_bytes() -> int:
    """Resident set size of this process (VmRSS of /proc/self/status), 0 where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --------------------------------------------------------------------------------- planes ----
# A linear's arrays are "planes" of shape (nseg_r * rows_per_seg, nseg_c * units_per_seg): the float weight
# (unit = a column), int4 codes (unit = a byte = 2 columns), int4 scales (unit = a group), a bias (one column).

def _units(kind: str, keep: int, group: int) -> int:
    """Column units of plane `kind` for `keep` columns (int8 "codes" and float "weight": one per column)."""
    if kind == "packed":
        return (keep + 1) // 2
    if kind == "scales":
        return -(-keep // group)
    if kind == "bias":
        return 1
    return keep


def _as_f32(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == np.float32:
        return np.array(a, np.float32, order="C")
    if a.dtype == np.float16:
        src = np.ascontiguousarray(a)
        out = np.empty(src.shape, np.float32)
        _C.convert(src, out)  # exact, elementwise: a part converts to the same values as the whole
        return out
    raise FormatError(f"artifact tensor {name!r} has dtype {a.dtype}; expected float32 or float16")


# ------------------------------------------------------------------------------- resizing ----

def _check_files(model: Any) -> None:
    from uniql.formats.artifact import file_stamps

    d = Path(model.path)
    try:
        now = file_stamps(d)
    except OSError as e:
        raise UniqlIOError(f"artifact {d} cannot be read ({e}); the model stays at rate {model.rate}") from None
    for name, stamp in model._file_stamps.items():
        if name not in now:
            raise UniqlIOError(f"artifact file {d / name} is missing; the model stays at rate {model.rate}")
        if now[name] != stamp:
            raise FormatError(f"artifact file {d / name} changed since the model was loaded (size or modification "
                              f"time differs); the model stays at rate {model.rate}: reload it with uniql.load")


def _linear_rm(spec: tuple) -> dict[str, np.ndarray]:
    """Row-major planes of a layer linear spec: {"weight"}, {"packed", "scales"} (int4) or {"codes", "scales"}
    (int8) (+ "bias")."""
    w, scales, group, cols, bias = spec[:5]
    out: dict[str, np.ndarray] = {}
    if scales is None:
        if w.dtype != np.float32:
            raise FormatError("resize: only float32 and int4 resident weights can be resized (this model holds "
                              f"{w.dtype})")
        out["weight"] = w
    elif w.dtype == np.int8:  # int8 weight of the precision policy: codes (one byte per column) + scales
        out["codes"], out["scales"] = w, scales
    elif len(spec) > 5 and spec[5] is not None:
        packed, sc = _C.q4_unpack_r16(spec)
        out["packed"], out["scales"] = packed, sc
    else:
        out["packed"], out["scales"] = w, scales
    if bias is not None:
        out["bias"] = bias.reshape(-1, 1)
    return out


def _linear_spec(planes: dict[str, np.ndarray], group: int, cols: int, segs: tuple[int, int], keep: list,
                 r16: bool = True) -> tuple:
    """A C linear spec over new planes, int4 repacked to R16 (as ``uniql.models.runtime.linear_spec`` does at load) when
    ``r16`` and the group allow, else row-major int4 (the linears the runtime reads as row views)."""
    bias = planes["bias"].reshape(-1) if "bias" in planes else None
    if bias is not None:
        keep.append(bias)
    if "weight" in planes:
        w = planes["weight"]
        keep.append(w)
        return (w, None, 0, int(w.shape[1]), bias)
    if "codes" in planes:  # int8: row-major, no kernel layout
        keep.extend([planes["codes"], planes["scales"]])
        return (planes["codes"], planes["scales"], group, cols, bias)
    packed, scales = planes["packed"], planes["scales"]
    rows = int(packed.shape[0])
    if r16 and group % 8 == 0:
        p16, s16 = _C.q4_repack((packed, scales, group, cols, None), *segs)
        keep.extend([p16, s16])
        return (p16, s16, group, cols, bias, (rows, *segs))
    keep.extend([packed, scales])
    return (packed, scales, group, cols, bias)


def _in_proj_rm(parts: list[tuple]) -> dict[str, np.ndarray]:
    """Row-major planes of a Mamba in_proj given as its five part specs (z, x, B, C, dt), rows concatenated."""
    planes = [_linear_rm(p) for p in parts]
    return {k: np.concatenate([pl[k] for pl in planes]) for k in planes[0]}


def _in_proj_parts(planes: dict[str, np.ndarray], group: int, cols: int, old: list[tuple], H: int, G: int, Ps: int,
                   Ns: int) -> list[tuple]:
    """The five part specs of in_proj planes with Ps head channels and Ns state dims, each part R16 (for its
    segments H, H, G, G, 1) where the old part was."""
    bounds = np.cumsum([0, H * Ps, H * Ps, G * Ns, G * Ns, H])
    segs = ((H, 1), (H, 1), (G, 1), (G, 1), (1, 1))
    out = []
    for i in range(5):
        a, b = int(bounds[i]), int(bounds[i + 1])
        r16 = len(old[i]) > 5 and old[i][5] is not None
        out.append(_linear_spec({k: np.ascontiguousarray(v[a:b]) for k, v in planes.items()}, group, cols, segs[i], [],
                                r16=r16))
    return out


def _kept_rest(model: Any) -> tuple[Any, Any, np.ndarray, list, list]:
    """The model's specs (embedding, lm_head, final norm, layers) and a keep list holding the first three's arrays,
    which a resize carries over unchanged."""
    emb_spec, head_spec, final_norm, c_layers = model._specs
    keep: list[np.ndarray] = []
    for s_ in (emb_spec,) + (() if head_spec is emb_spec else (head_spec,)):
        keep.extend(a for a in (s_[0], s_[1]) if a is not None)
    keep.append(final_norm)
    if model._final_mix is not None:
        keep.append(model._final_mix)
    return emb_spec, head_spec, final_norm, c_layers, keep


def _swap_in(model: Any, cm: Any, state: Any, keep: list, specs: tuple, rate: float, tokens: Any, t0: float,
             stats: dict, before: int) -> dict[str, Any]:
    """The end of a resize: installs the rebuilt C model and state, releases the old weights' memory, re-prefills
    ``tokens`` (None: not needed) and reports."""
    from_rate = _install(model, cm, state, keep, specs, rate)
    del cm, state, specs
    gc.collect()
    release_free_memory()
    reprefilled = False
    if tokens is not None and tokens.size:
        model.reset()
        model.forward(tokens, last_only=True)
        reprefilled = True
    return {"rate": rate, "from_rate": from_rate, "seconds": time.perf_counter() - t0,
            "read_bytes": stats["read_bytes"], "weight_bytes_before": before,
            "weight_bytes_after": model.weight_bytes(), "reprefilled": reprefilled}


def _regrid_idx(cur: np.ndarray, file_view: Callable[[], np.ndarray], name: str, rows_cur: np.ndarray,
                rows_new: np.ndarray, cols_cur: np.ndarray, cols_new: np.ndarray, stats: dict) -> np.ndarray:
    """As :func:`_regrid` with explicit (ascending) row and column index sets into the artifact's full plane: the
    entries both sets share come from `cur`, the others are read from the file."""
    from uniql.models.runtime import scales_f16

    # int4 bytes / int8 codes / float16 group scales (as the runtime keeps them) stay in their dtype; the rest float32
    out_dtype = cur.dtype if cur.dtype in (np.uint8, np.int8, np.float16) else np.dtype(np.float32)
    new = np.empty((rows_new.size, cols_new.size), out_dtype)
    rin, cin = np.isin(rows_new, rows_cur), np.isin(cols_new, cols_cur)
    rpos, cpos = np.searchsorted(rows_cur, rows_new[rin]), np.searchsorted(cols_cur, cols_new[cin])
    new[np.ix_(rin, cin)] = cur[np.ix_(rpos, cpos)]
    if not (rin.all() and cin.all()):
        fv = file_view()
        if fv.ndim != 2 or (rows_new.size and rows_new.max() >= fv.shape[0]) or cols_new.max() >= fv.shape[1]:
            raise FormatError(f"artifact tensor {name!r} has shape {fv.shape}, too small for the kept rows/columns")
        for rsel, csel in ((~rin, np.ones_like(cin)), (rin, ~cin)):
            if rsel.any() and csel.any():
                blk = fv[np.ix_(rows_new[rsel], cols_new[csel])]
                if out_dtype == np.float16:  # scales: float16 in the artifact, copied as they are
                    new[np.ix_(rsel, csel)] = scales_f16(name, blk)
                elif out_dtype != np.float32:  # int4 bytes / int8 codes: copied as they are
                    if fv.dtype != out_dtype:
                        raise FormatError(f"artifact tensor {name!r} has dtype {fv.dtype}; expected {out_dtype}")
                    new[np.ix_(rsel, csel)] = blk
                else:
                    new[np.ix_(rsel, csel)] = _as_f32(blk, name)
                stats["read_bytes"] += int(blk.nbytes)
    return new


def _seg_cols(kind: str, nseg: int, full: int, keep: int, group: int) -> np.ndarray:
    """Column (unit) indices kept of a plane whose columns are nseg segments of `full` columns, `keep` per segment."""
    from uniql.formats.artifact import head_rows

    if kind == "bias":
        return np.arange(1)
    return head_rows(nseg, _units(kind, full, group), _units(kind, keep, group))


def _collect(layer: dict[str, Any], keep: list) -> None:
    for v in layer.values():
        if isinstance(v, list):  # in_parts: the five specs of a Mamba in_proj
            for sp in v:
                keep.extend(a for a in (sp[0], sp[1], sp[4]) if a is not None)
        elif isinstance(v, tuple):
            keep.extend(a for a in (v[0], v[1], v[4]) if a is not None)
        elif isinstance(v, np.ndarray):
            keep.append(v)


def resize(model: Any, rate: float, tokens: Any = None) -> dict[str, Any]:
    """Makes an ``ElasticModel``'s resident weights those of `rate` (see the module docstring) and sets the rate;
    every architecture (``ElasticModel.resize``). ``tokens``: ids of the current sequence (length =
    ``model.position``). An attention-only model (Llama, Qwen2) keeps its KV cache (cut to, or zero-extended to, the
    new head dims) and re-prefills ``tokens``, when given, only if a head dim grew; a model with Mamba layers rebuilds
    its SSM / conv states and KV caches at the new sizes, so with tokens in its state it needs ``tokens``
    (re-prefilled, exact) and raises before changing anything without them. Returns {"rate", "from_rate",
    "seconds", "read_bytes", "weight_bytes_before", "weight_bytes_after", "reprefilled"}. On any error the model is
    left as it was."""
    from uniql.formats import safetensors as st
    from uniql.formats.artifact import check_rate, head_rows, layer_file, mamba_keep_rows, qk_head_rows
    from uniql.errors import InvalidArgumentError
    from uniql.models.hybrid import LAYER_ATTENTION, LAYER_MAMBA, LAYER_MLP, HF_NAMES, rope_mode

    t0 = time.perf_counter()
    rate = check_rate(rate, model.meta.max_rate)
    if tokens is not None:
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or tokens.size != model.position:
            raise InvalidArgumentError(f"resize: tokens must be the {model.position} ids of the current sequence, "
                                       f"got shape {tokens.shape}")
    elif model.position > 0 and not model.can_truncate:
        raise InvalidArgumentError(f"resize: a hybrid model with {model.position} tokens in its state needs them "
                                   "(tokens=...) to rebuild its SSM state at the new sizes")
    hc = model.config
    names = HF_NAMES[hc.model_type]
    n, H, P, G, N = hc.hidden_size, hc.ssm_heads, hc.ssm_head_dim, hc.ssm_groups, hc.ssm_state
    rope = rope_mode(hc) if LAYER_ATTENTION in hc.layer_types else "none"
    new_keeps = model.keep_sizes(rate)
    cur = [model.stored(i) for i in range(model.num_layers)]
    grows = any(v > cur[i][c] for i, ks in enumerate(new_keeps) for c, v in ks.items())
    if grows:
        _check_files(model)
    stats = {"read_bytes": 0}
    before = model.weight_bytes()
    emb_spec, head_spec, final_norm, c_layers, keep = _kept_rest(model)

    def mamba_sets(Pk: int, Nk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return mamba_keep_rows(hc, Pk, Nk)

    new_layers = []
    try:
        for i, (t, ks, cs) in enumerate(zip(hc.layer_types, new_keeps, cur)):
            lay = c_layers[i]
            if all(ks[c] == cs[c] for c in ks):
                new_layers.append(lay)
                _collect(lay, keep)
                continue
            f = None
            if any(ks[c] > cs[c] for c in ks):
                try:
                    f = st.safe_open(Path(model.path) / layer_file(i))
                except UniqlError as e:
                    raise type(e)(f"{e}; the model stays at rate {model.rate}") from None
            try:
                p = None
                if f is not None:
                    p = ("backbone.layers." if any(k.startswith("backbone.layers.") for k in f.keys())
                         else "model.layers.") + f"{i}."

                def view_of(fname_suffix: str) -> Callable[[], np.ndarray]:
                    def view() -> np.ndarray:
                        if f is None:
                            raise FormatError(f"resize: {fname_suffix} needed but the layer file is not open")
                        fname = p + fname_suffix
                        if fname not in f.keys():
                            raise FormatError(f"artifact is missing tensor {fname!r}")
                        v = f.get(fname)
                        return v.reshape(v.shape[0], -1)
                    return view

                nd = dict(lay)
                # (c key, file base, rows cur, rows new, (col segments, full, keep cur, keep new)) per elastic linear
                lins: list[tuple] = []
                vecs: list[tuple] = []  # (c key, file name, rows cur, rows new): arrays cut by rows
                if t == LAYER_MAMBA:
                    m = names["mamba"]
                    rc, cc, zc = mamba_sets(cs["ssm_head"], cs["ssm_state"])
                    rn, cn, zn = mamba_sets(ks["ssm_head"], ks["ssm_state"])
                    lins += [("in_proj", m + "in_proj", rc, rn, (1, n, n, n)),
                             ("out_proj", m + "out_proj", np.arange(n), np.arange(n),
                              (H, P, cs["ssm_head"], ks["ssm_head"]))]
                    vecs += [("conv_w", m + "conv1d.weight", cc, cn), ("conv_b", m + "conv1d.bias", cc, cn),
                             ("gnorm", m + "norm.weight", zc, zn)]
                elif t == LAYER_ATTENTION:
                    a, nh, nkv, hd = names["attn"], hc.num_heads, hc.num_kv_heads, hc.head_dim
                    r_c, r_n = cs["attn"], ks["attn"]
                    for short, heads, fn in (("q", nh, qk_head_rows), ("k", nkv, qk_head_rows),
                                             ("v", nkv, None)):
                        rows_c = head_rows(heads, hd, r_c) if fn is None else fn(rope, heads, hd, r_c)
                        rows_n = head_rows(heads, hd, r_n) if fn is None else fn(rope, heads, hd, r_n)
                        lins.append((short, f"{a}{short}_proj", rows_c, rows_n, (1, n, n, n)))
                    lins.append(("o", a + "o_proj", np.arange(n), np.arange(n), (nh, hd, r_c, r_n)))
                    if rope != "none":
                        rr = r_n if rope == "full" else r_n // 2
                        fm = lay.get("freq_map")
                        if fm is not None and fm.shape[1] >= rr // 2:
                            nfm = np.ascontiguousarray(fm[:, : rr // 2])
                        else:
                            npairs = hd // 2 if rope == "full" else hd // 4
                            full = f.get(p + a + "rope_freq") if f is not None else None
                            if full is None or full.dtype != np.int32 or full.shape != (nkv, npairs):
                                raise FormatError(f"artifact tensor {a}rope_freq of layer {i} must be int32 "
                                                  f"{(nkv, npairs)}")
                            nfm = np.array(full[:, : rr // 2], np.int32, order="C")
                        nd["freq_map"], nd["rot_rows"] = nfm, rr
                if "mlp" in ks and ks["mlp"] != cs["mlp"]:
                    fp, DI, k_c, k_n = names["mlp"], hc.intermediate_size, cs["mlp"], ks["mlp"]
                    for proj in (("gate", "up") if hc.mlp_act == "silu_gated" else ("up",)):
                        lins.append((proj, f"{fp}{proj}_proj", np.arange(k_c), np.arange(k_n), (1, n, n, n)))
                    lins.append(("down", fp + "down_proj", np.arange(n), np.arange(n), (1, DI, k_c, k_n)))
                for key, base, rows_c, rows_n, (nsc, S, kc_, kn_) in lins:
                    parts = lay.get("in_parts") if key == "in_proj" else None
                    sp = parts[0] if parts else lay[key]
                    group = int(sp[2])
                    planes = _in_proj_rm(parts) if parts else _linear_rm(sp)
                    out = {}
                    for kind, arr in planes.items():
                        if kind == "bias" and nsc > 1:  # o_proj / out_proj bias: full hidden rows
                            out[kind] = arr
                            continue
                        fname = {"weight": ".weight", "packed": ".qweight", "codes": ".qweight", "scales": ".scales",
                                 "bias": ".bias"}[kind]
                        out[kind] = _regrid_idx(arr, view_of(base + fname), base + fname, rows_c, rows_n,
                                                _seg_cols(kind, nsc, S, kc_, group),
                                                _seg_cols(kind, nsc, S, kn_, group), stats)
                    if parts:  # split again at the new sizes, each part in the layout it was loaded with
                        nd.pop("in_proj", None)
                        nd["in_parts"] = _in_proj_parts(out, group, n, parts, H, G, ks["ssm_head"], ks["ssm_state"])
                        continue
                    r16 = len(sp) > 5 and sp[5] is not None  # keep the layout the model was loaded with
                    segs = (int(sp[5][1]), int(sp[5][2])) if r16 else (1, 1)
                    nd[key] = _linear_spec(out, group, nsc * kn_, segs, [], r16=r16)
                for key, fname, rows_c, rows_n in vecs:
                    arr = lay.get(key)
                    if arr is None:
                        continue
                    a2 = arr.reshape(arr.shape[0], -1)
                    cols = np.arange(a2.shape[1])
                    res = _regrid_idx(a2, view_of(fname), fname, rows_c, rows_n, cols, cols, stats)
                    nd[key] = np.ascontiguousarray(res.reshape((res.shape[0],) + arr.shape[1:]))
                _collect(nd, keep)
                new_layers.append(nd)
            finally:
                if f is not None:
                    f.close()
        cm = _C.hy_model_new(hc._c_dict(), emb_spec, head_spec, final_norm, new_layers, keep, model._final_mix)
        if model._options:
            _C.hy_set_options(cm, model._options)
        state = _C.hy_state_new(cm, model.max_seq, model._max_chunk, model._kv_code)
        if model.can_truncate:  # attention only: the KV cache moves to the new widths
            _C.hy_state_transfer(model._state, state)
    except UniqlError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise FormatError(f"resize to rate {rate} failed ({type(e).__name__}: {e}); the model stays at rate "
                          f"{model.rate}") from None
    if model.can_truncate and not any(ks.get("attn", 0) > cs.get("attn", 0) for ks, cs in zip(new_keeps, cur)):
        tokens = None  # no head dim grew: the moved KV cache is exact, nothing to re-prefill
    specs = (emb_spec, head_spec, final_norm, new_layers)
    del c_layers, new_layers
    return _swap_in(model, cm, state, keep, specs, rate, tokens, t0, stats, before)

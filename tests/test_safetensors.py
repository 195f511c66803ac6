"""uniql.formats.safetensors: interoperability with the `safetensors` package, validation of malformed files, atomic
writes. Data comparisons are exact (no arithmetic happens on the way)."""
import gc
import json
import os
import struct

import numpy as np
import pytest

import uniql
from uniql import _C
from uniql.formats import safetensors as st

sn = pytest.importorskip("safetensors.numpy")

NUMPY_DTYPES = {
    "F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8, "U8": np.uint8, "I32": np.int32,
    "I64": np.int64,
}


def sample_tensors(rng):
    """Every numpy-representable dtype, plus 0-d, empty and odd-sized tensors."""
    out = {}
    for i, (name, dt) in enumerate(NUMPY_DTYPES.items()):
        shape = (3, 5) if i % 2 else (7,)
        if np.issubdtype(dt, np.floating):
            out[f"t.{name}"] = (rng.standard_normal(shape) * 10).astype(dt)
        else:
            info = np.iinfo(dt)
            out[f"t.{name}"] = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    out["scalar"] = np.array(2.5, np.float64)
    out["empty"] = np.zeros((0, 4), np.float32)
    out["empty_i8"] = np.zeros((3, 0, 2), np.int8)
    out["odd"] = np.arange(3, dtype=np.uint8)  # leaves the next tensor at an unaligned offset in our writer
    out["after_odd"] = np.arange(5, dtype=np.int8)
    return out


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def read_header(path):
    with open(path, "rb") as fp:
        raw = fp.read()
    n = struct.unpack("<Q", raw[:8])[0]
    return n, raw[8:8 + n]


# ------------------------------------------------------------------------------ interoperability ----


def test_package_file_reads_identically(tmp_path, rng):
    tensors = sample_tensors(rng)
    p = tmp_path / "pkg.safetensors"
    sn.save_file(tensors, str(p), metadata={"format": "np", "note": 'quote " and \\ and é'})
    assert_same(st.load_file(p), tensors)
    with st.safe_open(p) as f:
        assert f.metadata() == {"format": "np", "note": 'quote " and \\ and é'}
        assert sorted(f.keys()) == sorted(tensors)
        assert f.info("t.I32") == ("I32", (3, 5))
        assert f.info("scalar") == ("F64", ())


def test_our_file_reads_identically_in_package(tmp_path, rng):
    tensors = sample_tensors(rng)
    p = tmp_path / "ours.safetensors"
    st.save_file(p, tensors, metadata={"a": "1", "b": "x\ny"})
    assert_same(sn.load_file(str(p)), tensors)
    from safetensors import safe_open as pkg_open

    with pkg_open(str(p), framework="np") as f:
        assert f.metadata() == {"a": "1", "b": "x\ny"}
    assert_same(st.load_file(p), tensors)


def test_header_layout(tmp_path, rng):
    """Keys in the given order, __metadata__ first, spaces to a multiple of 8, data contiguous."""
    tensors = {"z": np.ones(3, np.float32), "a": np.zeros((2, 2), np.int64), "m": np.arange(1, dtype=np.uint8)}
    p = tmp_path / "h.safetensors"
    st.save_file(p, tensors, metadata={"k": "v"})
    n, hdr = read_header(p)
    assert n % 8 == 0
    stripped = hdr.rstrip(b" ")
    assert stripped.endswith(b"}") and len(hdr) - len(stripped) < 8  # padded with spaces only
    obj = json.loads(hdr)
    assert list(obj) == ["__metadata__", "z", "a", "m"]
    assert obj["z"]["data_offsets"] == [0, 12] and obj["a"]["data_offsets"] == [12, 44]
    assert obj["m"]["data_offsets"] == [44, 45]
    assert os.path.getsize(p) == 8 + n + 45
    with st.safe_open(p) as f:
        assert f.keys() == ["z", "a", "m"]


def test_bf16_from_torch(tmp_path, rng):
    torch = pytest.importorskip("torch")
    import safetensors.torch as stt

    x = torch.from_numpy((rng.standard_normal((4, 6)) * 3).astype(np.float32)).to(torch.bfloat16)
    p = tmp_path / "bf16.safetensors"
    stt.save_file({"w": x, "b": torch.arange(5, dtype=torch.int32)}, str(p))
    out = st.load_file(p)
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], x.float().numpy())
    raw = st.load_file(p, bf16="raw")["w"]
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, x.view(torch.int16).numpy().view(np.uint16))
    with st.safe_open(p) as f:
        assert f.info("w") == ("BF16", (4, 6))
        np.testing.assert_array_equal(f.get("w"), x.float().numpy())
    with st.safe_open(p, bf16="raw") as f:
        np.testing.assert_array_equal(f.get("w"), raw)


def test_bf16_to_torch(tmp_path, rng):
    torch = pytest.importorskip("torch")
    import safetensors.torch as stt

    x = (rng.standard_normal((3, 7)) * 3).astype(np.float32)
    bits = st.BF16Array.from_float32(x)
    p = tmp_path / "bf16w.safetensors"
    st.save_file(p, {"w": bits, "v": bits.bits.copy()}, bf16_names={"v"})
    back = stt.load_file(str(p))
    assert back["w"].dtype == torch.bfloat16 and back["v"].dtype == torch.bfloat16
    ref = torch.from_numpy(x).to(torch.bfloat16)
    assert torch.equal(back["w"], ref) and torch.equal(back["v"], ref)


def test_zero_tensor_files(tmp_path):
    p = tmp_path / "empty.safetensors"
    st.save_file(p, {})
    assert st.load_file(p) == {}
    assert sn.load_file(str(p)) == {}
    q = tmp_path / "empty_pkg.safetensors"
    sn.save_file({}, str(q), metadata={"only": "meta"})
    with st.safe_open(q) as f:
        assert f.keys() == [] and len(f) == 0 and f.metadata() == {"only": "meta"}


def test_noncontiguous_and_byteswapped_inputs(tmp_path, rng):
    a = rng.standard_normal((6, 8)).astype(np.float32)
    tensors = {"t": a.T, "s": a[::2, 1::3], "be": a.astype(">f4"), "ll": np.arange(4, dtype=np.longlong)}
    p = tmp_path / "nc.safetensors"
    st.save_file(p, tensors)
    out = st.load_file(p)
    np.testing.assert_array_equal(out["t"], a.T)
    np.testing.assert_array_equal(out["s"], a[::2, 1::3])
    np.testing.assert_array_equal(out["be"], a)
    assert out["be"].dtype == np.float32 and out["ll"].dtype == np.int64


def test_unaligned_tensors(tmp_path, rng):
    """Our writer packs tensors without alignment padding: views may be unaligned, copies never are."""
    torch = pytest.importorskip("torch")
    import safetensors.torch as stt

    f32 = rng.standard_normal(5).astype(np.float32)
    bf = st.BF16Array.from_float32(rng.standard_normal(3).astype(np.float32))
    p = tmp_path / "u.safetensors"
    st.save_file(p, {"u": np.arange(1, dtype=np.uint8), "f": f32, "h": bf})
    with st.safe_open(p) as f:
        v = f.get("f")
        assert not v.flags.aligned
        np.testing.assert_array_equal(v, f32)
        h = f.get("h")
        assert h.dtype == np.float32
        np.testing.assert_array_equal(h, torch.from_numpy(bf.bits.view(np.int16)).view(torch.bfloat16).float().numpy())
    out = st.load_file(p)
    assert out["f"].flags.aligned and out["h"].flags.aligned
    back = stt.load_file(str(p))
    np.testing.assert_array_equal(back["f"].numpy(), f32)


def test_unicode_and_escaped_names_round_trip(tmp_path):
    names = ['model.layers.0.q "proj"', "back\\slash", "tab\tnew\nline", "ünïcödé.权重"]
    tensors = {n: np.full(2, i, np.int32) for i, n in enumerate(names)}
    p = tmp_path / "names.safetensors"
    st.save_file(p, tensors)
    assert_same(sn.load_file(str(p)), tensors)
    assert_same(st.load_file(p), tensors)


# -------------------------------------------------------------------------------- API behaviour ----


def test_views_are_zero_copy_read_only_and_outlive_close(tmp_path, rng):
    a = rng.standard_normal((16, 16)).astype(np.float32)
    p = tmp_path / "v.safetensors"
    st.save_file(p, {"a": a, "b": np.arange(4, dtype=np.int64)})
    f = st.safe_open(p)
    v1, v2 = f.get("a"), f.get("a")
    assert np.shares_memory(v1, v2)  # both point into the one mapping
    assert not v1.flags.writeable and v1.flags.c_contiguous
    with pytest.raises(ValueError):
        v1[0, 0] = 1.0
    with pytest.raises(ValueError):
        v1.flags.writeable = True
    c = f.get("a", copy=True)
    assert c.flags.writeable and not np.shares_memory(c, v1)
    f.close()
    assert f.closed
    with pytest.raises(uniql.StateError, match="closed"):
        f.get("a")
    with pytest.raises(uniql.StateError, match="closed"):
        f.keys()
    del f
    gc.collect()
    np.testing.assert_array_equal(v1, a)  # mapping kept alive by the view
    del v1, v2
    gc.collect()


def test_context_manager_and_low_level_type(tmp_path):
    p = tmp_path / "c.safetensors"
    st.save_file(p, {"x": np.arange(3, dtype=np.int32)}, metadata={"m": "n"})
    with _C.SafetensorsFile(str(p)) as f:
        assert f.keys() == ["x"] and "x" in f and "y" not in f and len(f) == 1
        assert f.info("x") == ("I32", (3,))
        assert f.metadata() == {"m": "n"}
        np.testing.assert_array_equal(f.get("x"), [0, 1, 2])
        with pytest.raises(uniql.RangeError, match="no tensor named 'y'"):
            f.get("y")
    assert f.closed
    with st.safe_open(p) as g:
        assert "x" in g and list(g) == ["x"]
    assert g.closed


def test_load_file_names(tmp_path):
    p = tmp_path / "n.safetensors"
    st.save_file(p, {"a": np.ones(2, np.float32), "b": np.zeros(3, np.int8), "c": np.ones(1, np.uint8)})
    out = st.load_file(p, names=["c", "a"])
    assert list(out) == ["c", "a"]
    assert out["a"].flags.writeable
    with pytest.raises(st.TensorNotFoundError, match="no tensor named 'missing'") as ei:
        st.load_file(p, names=["a", "missing"])
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, uniql.UniqlError)
    with pytest.raises(uniql.InvalidArgumentError, match="bf16 must be"):
        st.load_file(p, bf16="float16")


def test_missing_file_is_io_error(tmp_path):
    p = tmp_path / "nope.safetensors"
    with pytest.raises(uniql.UniqlIOError, match="nope.safetensors.*No such file") as ei:
        st.load_file(p)
    assert isinstance(ei.value, OSError)
    with pytest.raises(uniql.UniqlIOError, match="not a regular file"):
        st.safe_open(tmp_path)


# ------------------------------------------------------------------------------ malformed files ----


def raw_file(path, header, data=b"", hlen=None):
    hdr = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    with open(path, "wb") as fp:
        fp.write(struct.pack("<Q", len(hdr) if hlen is None else hlen))
        fp.write(hdr)
        fp.write(data)
    return path


def entry(dtype="F32", shape=(4,), offsets=(0, 16)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


BAD_HEADERS = [
    ("header length past end", "{}", b"", 64, uniql.FormatError, r"header length 64 exceeds the 2 bytes"),
    ("absurd header length", "{}", b"", 2**60, uniql.FormatError, r"header length 1152921504606846976 is out of range"),
    ("tiny header length", "{}", b"", 1, uniql.FormatError, r"header length 1 is out of range"),
    ("non-JSON header", '{"w": {"dtype": "F32",', b"", None, uniql.FormatError, r"header: invalid JSON at byte"),
    ("non-UTF-8 header", b'{"\xff": 1}', b"", None, uniql.FormatError, r"invalid UTF-8"),
    ("non-object header", "[1, 2, 3]", b"", None, uniql.FormatError, r"header is a JSON array, not an object"),
    ("bad dtype", {"w": entry(dtype="F33")}, bytes(16), None, uniql.FormatError, r"tensor 'w': unknown dtype 'F33'"),
    ("unsupported dtype", {"w": entry(dtype="BOOL", offsets=(0, 4))}, bytes(4), None, uniql.UnsupportedError,
     r"tensor 'w': dtype 'BOOL' is not supported"),
    ("negative shape", {"w": entry(shape=(2, -2))}, bytes(16), None, uniql.FormatError,
     r"tensor 'w': shape entry 1 \(-2\) is not a non-negative"),
    ("fractional shape", {"w": entry(shape=(4.0,))}, bytes(16), None, uniql.FormatError,
     r"tensor 'w': shape entry 0 \(4.0\)"),
    ("string shape entry", {"w": entry(shape=("4",))}, bytes(16), None, uniql.FormatError,
     r"tensor 'w': shape entry 0 is a JSON string"),
    ("shape product overflows int64", {"w": entry(shape=(2**31, 2**31, 2**3))}, bytes(16), None, uniql.FormatError,
     r"tensor 'w': shape \[2147483648, 2147483648, 8\] overflows int64"),
    ("shape entry beyond int64", {"w": entry(shape=(2**64,))}, bytes(16), None, uniql.FormatError,
     r"shape entry 0 \(18446744073709551616\)"),
    ("offsets out of range", {"w": entry(shape=(16,), offsets=(0, 64))}, bytes(32), None, uniql.FormatError,
     r"tensor 'w': data_offsets \[0, 64\] exceed data size 32"),
    ("offsets reversed", {"w": entry(shape=(0,), offsets=(16, 0))}, bytes(16), None, uniql.FormatError,
     r"tensor 'w': data_offsets \[16, 0\] are reversed"),
    ("negative offset", {"w": entry(offsets=(-16, 0))}, bytes(16), None, uniql.FormatError,
     r"tensor 'w': data_offsets entry 0 is not a non-negative"),
    ("three offsets", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8, 16]}}, bytes(16), None,
     uniql.FormatError, r"tensor 'w': data_offsets must be an array of 2"),
    ("overlapping tensors", {"a": entry(offsets=(0, 16)), "b": entry(offsets=(8, 24))}, bytes(24), None,
     uniql.FormatError, r"tensors 'a' \[0, 16\] and 'b' \[8, 24\] overlap"),
    ("empty tensor inside another", {"a": entry(offsets=(0, 16)), "e": entry(shape=(0,), offsets=(8, 8))},
     bytes(16), None, uniql.FormatError, r"overlap"),
    ("size does not match shape", {"w": entry(shape=(3,), offsets=(0, 16))}, bytes(16), None, uniql.FormatError,
     r"tensor 'w': data_offsets \[0, 16\] span 16 bytes but F32 shape \[3\] needs 12"),
    ("duplicate names", '{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
     '"w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}', bytes(2), None, uniql.FormatError,
     r"duplicate key 'w'"),
    ("non-string metadata", {"__metadata__": {"epoch": 3}}, b"", None, uniql.FormatError,
     r"__metadata__ value of key 'epoch' is a JSON number, not a string"),
    ("metadata not an object", {"__metadata__": ["a"]}, b"", None, uniql.FormatError,
     r"__metadata__ is a JSON array"),
    ("entry not an object", {"w": [1, 2]}, b"", None, uniql.FormatError, r"tensor 'w': entry is a JSON array"),
    ("unknown key", {"w": {**entry(), "offset": 0}}, bytes(16), None, uniql.FormatError,
     r"tensor 'w': unknown key 'offset'"),
    ("missing key", {"w": {"dtype": "F32", "shape": [4]}}, bytes(16), None, uniql.FormatError,
     r"tensor 'w': missing 'data_offsets'"),
    ("too many dims", {"w": entry(shape=(1,) * 9, offsets=(0, 4))}, bytes(4), None, uniql.UnsupportedError,
     r"tensor 'w': shape has 9 dimensions"),
    ("deep nesting", "[" * 200 + "]" * 200, b"", None, uniql.FormatError, r"nesting deeper than 64"),
    ("trailing garbage", "{} x", b"", None, uniql.FormatError, r"unexpected data after the value"),
]


@pytest.mark.parametrize("label,header,data,hlen,exc,pattern", BAD_HEADERS, ids=[b[0] for b in BAD_HEADERS])
def test_malformed_files(tmp_path, label, header, data, hlen, exc, pattern):
    p = raw_file(tmp_path / "bad.safetensors", header, data, hlen)
    with pytest.raises(exc, match=pattern) as ei:
        st.load_file(p)
    assert "bad.safetensors" in str(ei.value), label  # the message names the file too


def test_truncated_files(tmp_path, rng):
    good = tmp_path / "good.safetensors"
    st.save_file(good, {"a": rng.standard_normal(10).astype(np.float32), "b": np.arange(6, dtype=np.int64)})
    blob = good.read_bytes()
    n, _ = read_header(good)
    cases = [
        (0, r"file is 0 bytes, too short"),
        (5, r"file is 5 bytes, too short"),  # inside the length field
        (8, r"header length \d+ exceeds the 0 bytes"),
        (8 + n // 2, r"header length \d+ exceeds"),  # inside the header
        (8 + n, r"tensor 'a': data_offsets \[0, 40\] exceed data size 0"),
        (len(blob) - 3, r"tensor 'b': data_offsets \[40, 88\] exceed data size 85"),  # inside the data
    ]
    for i, (cut, pattern) in enumerate(cases):
        p = tmp_path / f"trunc{i}.safetensors"
        p.write_bytes(blob[:cut])
        with pytest.raises(uniql.FormatError, match=pattern):
            st.load_file(p)
    assert_same(st.load_file(good), sn.load_file(str(good)))


def test_gaps_and_unpadded_headers_are_accepted(tmp_path):
    """Tolerated (documented): unpadded header length, gaps between tensors, trailing bytes."""
    hdr = {"b": entry("U8", (2,), (8, 10)), "a": entry("U8", (4,), (0, 4)), "e": entry("F32", (0, 3), (4, 4))}
    p = raw_file(tmp_path / "gap.safetensors", hdr, bytes(range(12)))
    with st.safe_open(p) as f:
        assert f.keys() == ["a", "e", "b"]  # data-offset order
        np.testing.assert_array_equal(f.get("b"), [8, 9])
        assert f.get("e").shape == (0, 3)


# -------------------------------------------------------------------------------------- writing ----


def no_temp_files(d):
    return not [x for x in os.listdir(d) if ".tmp." in x]


def test_write_into_missing_directory(tmp_path):
    p = tmp_path / "missing" / "x.safetensors"
    with pytest.raises(uniql.UniqlIOError, match=r"cannot create '.*x\.safetensors\.tmp\.\d+': No such file"):
        st.save_file(p, {"a": np.ones(2, np.float32)})
    assert not (tmp_path / "missing").exists() and os.listdir(tmp_path) == []


def test_rename_failure_removes_temp_file(tmp_path):
    target = tmp_path / "is_a_dir"
    (target / "child").mkdir(parents=True)
    with pytest.raises(uniql.UniqlIOError, match=r"cannot rename .*: Is a directory"):
        st.save_file(target, {"a": np.ones(2, np.float32)})
    assert no_temp_files(tmp_path) and sorted(os.listdir(tmp_path)) == ["is_a_dir"]


@pytest.mark.parametrize("bad", [np.array([True, False]), np.zeros(2, np.complex64), np.zeros(2, np.uint16),
                                 np.zeros(2, np.uint32), np.array(["x"]), [1.0, 2.0]],
                         ids=["bool", "complex64", "uint16", "uint32", "str", "list"])
def test_unsupported_array_dtype_leaves_no_file(tmp_path, bad):
    p = tmp_path / "x.safetensors"
    st.save_file(p, {"keep": np.arange(3, dtype=np.int32)})
    before = p.read_bytes()
    with pytest.raises(uniql.DTypeError, match="tensor 'bad'"):
        st.save_file(p, {"ok": np.ones(2, np.float32), "bad": bad})
    assert p.read_bytes() == before  # the existing file is untouched
    assert no_temp_files(tmp_path) and os.listdir(tmp_path) == ["x.safetensors"]


def test_writer_argument_validation(tmp_path):
    p = str(tmp_path / "w.safetensors")
    a = np.ones(2, np.float32)
    with pytest.raises(uniql.InvalidArgumentError, match="duplicate tensor name 'a'"):
        _C.st_write(p, ["a", "a"], [a, a], ["F32", "F32"], None)
    with pytest.raises(uniql.InvalidArgumentError, match="'__metadata__' is reserved"):
        _C.st_write(p, ["__metadata__"], [a], ["F32"], None)
    with pytest.raises(uniql.InvalidArgumentError, match="name is NULL or empty"):
        _C.st_write(p, [""], [a], ["F32"], None)
    with pytest.raises(uniql.DTypeError, match="unknown dtype 'BOOL'"):
        _C.st_write(p, ["a"], [a], ["BOOL"], None)
    with pytest.raises(TypeError, match="tensor 'a' must have dtype uint16"):
        _C.st_write(p, ["a"], [a], ["BF16"], None)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.st_write(p, ["a"], [np.ones((4, 4), np.float32).T], ["F32"], None)
    with pytest.raises(uniql.InvalidArgumentError, match="same length"):
        _C.st_write(p, ["a", "b"], [a], ["F32"], None)
    with pytest.raises(uniql.InvalidArgumentError, match="metadata value of key 'epoch' must be str"):
        st.save_file(p, {"a": a}, metadata={"epoch": 3})
    with pytest.raises(uniql.InvalidArgumentError, match="metadata keys must be str"):
        st.save_file(p, {"a": a}, metadata={1: "x"})
    with pytest.raises(uniql.InvalidArgumentError, match="bf16_names not in tensors"):
        st.save_file(p, {"a": a}, bf16_names={"b"})
    with pytest.raises(uniql.DTypeError, match="BF16Array needs a numpy uint16"):
        st.BF16Array(a)
    assert os.listdir(tmp_path) == []


def test_overwrite_is_atomic_replacement(tmp_path):
    p = tmp_path / "o.safetensors"
    st.save_file(p, {"a": np.ones(4, np.float32)})
    with st.safe_open(p) as f:
        old = f.get("a")
        st.save_file(p, {"a": np.zeros(2, np.int8)})  # rename replaces the path; our mapping keeps the old inode
        np.testing.assert_array_equal(old, np.ones(4, np.float32))
    assert_same(st.load_file(p), {"a": np.zeros(2, np.int8)})

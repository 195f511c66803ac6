"""Core plumbing: exception classes, half conversions, finiteness checks through the binding."""
import numpy as np
import pytest

import uniql
from uniql import _C


def test_version():
    assert uniql.__version__ == _C.version() == "0.1.0"


def test_exception_hierarchy():
    assert issubclass(uniql.ShapeError, uniql.UniqlError)
    assert issubclass(uniql.ShapeError, ValueError)
    assert issubclass(uniql.DTypeError, TypeError)
    assert issubclass(uniql.UniqlIOError, OSError)
    assert issubclass(uniql.NumericError, ArithmeticError)
    assert issubclass(uniql.UnsupportedError, NotImplementedError)


def test_output_exists_error_is_one_class():
    """compress, finetune, convert and quantize_artifact raise the same class, importable from each of them; the
    same for the missing-model error of checkpoint reading."""
    import importlib

    mods = [importlib.import_module(f"uniql.{n}") for n in (
        "errors", "compress.pipeline", "finetune", "formats.gguf", "compress.requantize")]
    assert {m.OutputExistsError for m in mods} == {uniql.OutputExistsError}
    assert issubclass(uniql.OutputExistsError, uniql.UniqlIOError)
    assert issubclass(uniql.OutputExistsError, FileExistsError)
    assert importlib.import_module("uniql.formats.checkpoint").ModelNotFoundError is uniql.ModelNotFoundError
    assert issubclass(uniql.ModelNotFoundError, uniql.UniqlIOError)
    assert issubclass(uniql.ModelNotFoundError, FileNotFoundError)
    assert importlib.import_module("uniql.formats.safetensors").TensorNotFoundError is uniql.TensorNotFoundError
    assert issubclass(uniql.TensorNotFoundError, uniql.RangeError) and issubclass(uniql.TensorNotFoundError, KeyError)
    assert str(uniql.TensorNotFoundError("no tensor named 'x'")) == "no tensor named 'x'"  # not KeyError's repr


def test_f16_roundtrip_matches_numpy(rng):
    x = (rng.standard_normal(10001) * 100).astype(np.float32)
    h = np.empty(x.shape, np.float16)
    _C.convert(x, h)
    np.testing.assert_array_equal(h, x.astype(np.float16))
    back = np.empty_like(x)
    _C.convert(h, back)
    np.testing.assert_array_equal(back, h.astype(np.float32))


def test_bf16_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = (rng.standard_normal(4097) * 10).astype(np.float32)
    b = np.empty(x.shape, np.uint16)
    _C.convert(x, b, bf16=True)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(b, ref)
    back = np.empty_like(x)
    _C.convert(b, back, bf16=True)
    np.testing.assert_array_equal(back, torch.from_numpy(x).to(torch.bfloat16).float().numpy())


def test_convert_rejects_bad_arrays():
    x = np.zeros(4, np.float64)
    with pytest.raises(TypeError, match="src must have dtype"):
        _C.convert(x, np.zeros(4, np.float16))
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.convert(np.zeros(8, np.float32)[::2], np.zeros(4, np.float16))
    with pytest.raises(ValueError, match="same number of elements"):
        _C.convert(np.zeros(4, np.float32), np.zeros(5, np.float16))


def test_check_finite_names_the_array():
    a = np.ones(5, np.float32)
    _C.check_finite(a, "weights")
    a[3] = np.nan
    with pytest.raises(uniql.NumericError, match="weights contains NaN at flat index 3"):
        _C.check_finite(a, "weights")

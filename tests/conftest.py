"""Shared pytest fixtures and tolerance constants."""
import numpy as np
import pytest

from uniql import _C


_START = _C.kernels_info()  # the process settings (UNIQL_KERNELS / UNIQL_Q4_ACT or the CPU's defaults)


def _restore() -> None:
    _C.kernels_set(_START["path"])
    _C.kernels_set_q4_act(_START["q4_act"])


@pytest.fixture(autouse=True)
def _process_wide_kernel_settings():
    """Each test starts from the process's kernel settings (path, int4 activation mode: the environment's or the
    CPU's defaults) and cannot leak its own to the next: a test that needs W4A32 says so
    (``uniql.int4_activations("fp32")``)."""
    _restore()
    yield
    _restore()


@pytest.fixture
def w4a32():
    """int4 linears with fp32 activations (exact W4A32; the default on AVX2 / AVX-512 CPUs is W4A8)."""
    import uniql

    with uniql.int4_activations("fp32"):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

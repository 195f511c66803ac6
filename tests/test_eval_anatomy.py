"""uniql.eval.anatomy (notebooks/compression_walkthrough.ipynb): the errors it computes through the C linear kernel
equal a float64 NumPy recomputation from the same captured activations, and bad layers are rejected."""
from __future__ import annotations

import numpy as np
import pytest

import uniql
from uniql.compress import quant
from uniql.errors import InvalidArgumentError
from uniql.eval import anatomy
from uniql.eval.grid import tiny_llama
from uniql.formats.safetensors import load_file

RTOL = 1e-4  # float32 kernel products against float64, relative error of a relative error


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    root = tmp_path_factory.mktemp("anatomy")
    d = tiny_llama(root / "m")
    text = root / "t.txt"
    text.write_text(" ".join(f"w{x}" for x in np.random.default_rng(3).integers(3, 128, 400)))
    a = anatomy.walk_layer(d, 1, calib_text=str(text), heldout_text=str(text), n_seq=2, seq_len=64, group=16)
    model = uniql.load(d, max_seq=64)
    held = anatomy._captures(model, anatomy._tokens(model, text.read_text(), 2, 64, offset=128), 1)
    W = {k: v.astype(np.float64) for k, v in load_file(d / "model.safetensors").items() if ".layers.1." in k}
    return a, held, W


def _rel(e, r):
    return np.linalg.norm(e) / np.linalg.norm(r)


def test_mlp_error_matches_float64(walked):
    a, held, W = walked
    Z, D = held["mlp_z"].astype(np.float64), W["model.layers.1.mlp.down_proj.weight"]
    n = D.shape[1]
    for name, order in a.mlp_orders.items():
        for kr, got in zip(a.keep_ratios, a.mlp_error[name]):
            drop = order[max(1, int(round(kr * n))):]
            assert got == pytest.approx(_rel(Z[:, drop] @ D[:, drop].T, Z @ D.T), rel=RTOL, abs=1e-7), (name, kr)
    assert all(e == 0.0 for e in (a.mlp_error[k][0] for k in a.mlp_error))  # keep 100%: nothing dropped


def test_vo_and_int4_errors_match_float64(walked):
    a, held, W = walked
    X = held["attn_in"].astype(np.float64)
    wv, wo = W["model.layers.1.self_attn.v_proj.weight"], W["model.layers.1.self_attn.o_proj.weight"]
    nh, nkv, d = 4, 2, 16

    def vo(r):
        out = np.zeros((X.shape[0], wo.shape[0]))
        for h in range(nh):
            g = h // (nh // nkv)
            out += (X @ wv[g * d:g * d + r].T) @ wo[:, h * d:h * d + r].T
        return out

    full = vo(d)
    for kr, got in zip(a.keep_ratios, a.vo_error["original"]):
        r = max(1, int(round(kr * d)))
        assert got == pytest.approx(_rel(full - vo(r), full), rel=RTOL, abs=1e-6), kr
    Wq = W["model.layers.1.self_attn.q_proj.weight"]
    q = quant.quantize_rtn(Wq.astype(np.float32), 16)
    ref = _rel(X @ (Wq - quant.dequantize(q)).T, X @ Wq.T)
    assert a.int4_error["self_attn.q_proj"]["rtn"] == pytest.approx(ref, rel=RTOL)


def test_layer_out_of_range(tmp_path):
    d = tiny_llama(tmp_path / "m")
    with pytest.raises(InvalidArgumentError, match="layer 2 outside"):
        anatomy.walk_layer(d, 2, calib_text="tiny", heldout_text="tiny", n_seq=1, seq_len=8)

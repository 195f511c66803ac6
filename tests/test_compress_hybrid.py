"""uniql.compress / uniql.load for Mamba2, Nemotron-H and Bamba on small random-weight models (transformers as the
oracle of the unsorted model): sorting preserves the function, loading at a rate equals set_rate, accounting, the
new calibration statistics against float64 NumPy references, int4 group boundaries and bad inputs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import uniql
from uniql.compress.sorting import ssm_bc_moments, ssm_chunk_states

from _helpers import assert_rate_round_trip_keeps_state

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_ssm import ARCHS, hf_logits, make_hf  # noqa: E402  (small random HF models of each architecture)

SORTED_REL_TOL = 1e-4   # sorting alone (no pruning, no quantization) preserves the function
STAT_REL_TOL = 1e-12    # float64 statistics in C vs the float64 NumPy formula (same inputs)
CAPTURE_REL_TOL = 1e-5  # float32 runtime captures vs a float64 NumPy evaluation of the same layer
NSAMP, SEQ, VOCAB = 4, 24, 128


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _ids(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.int32)


def _compress(src: Path, out: Path, **kw) -> Path:
    kw.setdefault("quantize", False)
    kw.setdefault("rotate", False)  # the layer checks below compare against the source weights (test_rotate: rotated)
    calib = np.random.default_rng(0).integers(0, VOCAB, size=(NSAMP, SEQ))
    return uniql.compress(src, out, calibration=calib, num_samples=NSAMP, seq_len=SEQ, progress=False, **kw)


@pytest.fixture(scope="module", params=ARCHS)
def hybrid(request, tmp_path_factory):
    """(arch, hf model, source dir, fp32 artifact, int4 artifact)."""
    arch = request.param
    tmp = tmp_path_factory.mktemp(arch)
    hf, _, _ = make_hf(arch)
    src = tmp / "src"
    hf.save_pretrained(src)
    return arch, hf, src, _compress(src, tmp / "fp32"), _compress(src, tmp / "int4", quantize=True)


# ---------------------------------------------------------------------------------- end to end ----
def test_sorting_preserves_function(hybrid):
    _, hf, _, art, _ = hybrid
    ids = _ids(21, 1)
    m = uniql.load(art)
    assert type(m).__name__ == "ElasticModel" and m.rate == 0.0
    assert _rel(m.logits(ids), hf_logits(hf, ids)) <= SORTED_REL_TOL


@pytest.mark.parametrize("which", ["fp32", "int4"])
@pytest.mark.parametrize("rate", [0.15, 0.35])
def test_load_at_rate_equals_set_rate(hybrid, which, rate):
    art = hybrid[3] if which == "fp32" else hybrid[4]
    ids = _ids(19, 2)
    full = uniql.load(art, rate=0.0)
    full.set_rate(rate)
    assert full.rate == rate
    part = uniql.load(art, rate=rate)
    assert [part.keep(i) for i in range(part.num_layers)] == part.keep_sizes(rate)
    assert [full.keep(i) for i in range(full.num_layers)] == part.keep_sizes(rate)
    np.testing.assert_array_equal(part.logits(ids), full.logits(ids))


def test_live_rate_switch_between_tokens(hybrid):
    """Keeps change between tokens without invalidating the SSM / conv state or the KV cache."""
    m = uniql.load(hybrid[4])
    assert_rate_round_trip_keeps_state(m, _ids(14, 3), 9)


def test_higher_rate_never_more_parameters(hybrid):
    for art in hybrid[3:]:
        counts, mems = [], []
        for rate in (0.0, 0.1, 0.2, 0.35):
            m = uniql.load(art, rate=rate, max_seq=32)
            counts.append(m.parameter_count())
            mems.append(m.weight_bytes())
            m.set_rate(0.35)
            assert m.parameter_count() == m.parameter_count(0.35)
        assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
        assert mems == sorted(mems, reverse=True) and mems[0] > mems[-1]


def test_weight_bytes_match_artifact(hybrid):
    """At rate 0 the loaded model references exactly the artifact's tensors, byte for byte (int4 scales stay float16
    in memory, as stored)."""
    from uniql.formats import safetensors as st

    for art in hybrid[3:]:
        report = json.loads((art / "uniql_report.json").read_text())
        expect = 0
        for p in sorted(art.glob("model-*.safetensors")):
            assert report["bytes"][p.name] == p.stat().st_size
            with st.safe_open(p) as f:
                for k in f.keys():
                    a = f.get(k)
                    expect += a.nbytes
        assert uniql.load(art).weight_bytes() == expect


def test_int4_layout_and_quality(hybrid):
    arch, _, _, fp, q4 = hybrid
    cfg = json.loads((q4 / "config.json").read_text())
    hc = uniql.models.hybrid.HybridConfig.from_hf(cfg)
    for name, spec in cfg["uniql_tensors"].items():
        assert spec["format"] == "q4", name
        if name.endswith("out_proj"):   # groups inside a head's P segment: no rate cuts across a group
            assert spec["segments"] == hc.ssm_heads and hc.ssm_head_dim % spec["group"] == 0
        elif name.endswith("o_proj"):
            assert spec["segments"] == hc.num_heads and hc.head_dim % spec["group"] == 0
    ids = _ids(16, 4)
    a, b = uniql.load(fp).logits(ids), uniql.load(q4).logits(ids)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9
    sizes = [sum(p.stat().st_size for p in d.glob("model-*.safetensors")) for d in (fp, q4)]
    assert sizes[1] < sizes[0] / 3


INT4_REL_TOL = 0.25  # ||dequant(W_q) - W||_F / ||W||_F of a GPTQ int4 weight (a wrong channel order gives ~1.4)


def test_int4_is_sorted_on_the_float_model(hybrid):
    """compress(quantize=True) sorts on the float stream: every unquantized tensor (norms, conv1d, A_log, D, dt_bias,
    rope maps) equals the float artifact's byte for byte, the block importances are the float artifact's, and each
    int4 weight dequantizes close to the float artifact's weight in the same channel order."""
    from uniql.formats import safetensors as st
    from uniql.formats.artifact import layer_file
    from uniql.compress.quant import QuantizedTensor, dequantize

    _, _, _, fp, q4 = hybrid
    cf, cq = (json.loads((d / "config.json").read_text()) for d in (fp, q4))
    assert cq["uniql"]["importance"] == cf["uniql"]["importance"]
    for i in range(len(cf["uniql"]["importance"])):
        tf, tq = st.load_file(fp / layer_file(i)), st.load_file(q4 / layer_file(i))
        for name, v in tq.items():
            if name.endswith(".scales"):
                continue
            if name.endswith(".qweight"):
                base = name[: -len(".qweight")]
                spec = cq["uniql_tensors"][base]
                W = dequantize(QuantizedTensor(v, tq[base + ".scales"].astype(np.float32), tuple(spec["shape"]),
                                               spec["group"]))
                ref = tf[base + ".weight"].astype(np.float64)
                assert np.linalg.norm(W - ref) / np.linalg.norm(ref) < INT4_REL_TOL, name
            else:
                assert v.dtype == tf[name].dtype and v.tobytes() == tf[name].tobytes(), name


def test_metadata(hybrid):
    arch, _, _, art, _ = hybrid
    u = json.loads((art / "config.json").read_text())["uniql"]
    assert u["architecture"] == arch and len(u["importance"]) == uniql.load(art).num_layers
    assert all(math.isfinite(v) for v in u["importance"])
    assert u["ssm_state_granularity"] >= 1 and u["ssm_head_granularity"] % 2 == 0


def test_parameter_count_at_rate_zero_is_the_models(hybrid):
    """parameter_count at rate 0 = the parameters of the transformers model (biases excluded)."""
    hf, art = hybrid[1], hybrid[3]
    want = sum(p.numel() for name, p in hf.named_parameters() if not name.endswith(".bias"))
    assert uniql.load(art).parameter_count() == want


# ------------------------------------------------------------------------------- bad inputs ----
def test_bad_rates_and_options(hybrid, tmp_path):
    _, _, src, art, _ = hybrid
    with pytest.raises(uniql.RangeError, match="outside \\[0, 0.35\\]"):
        uniql.load(art, rate=0.5)
    m = uniql.load(art, rate=0.25)
    with pytest.raises(uniql.RangeError, match="below the rate this model was loaded at"):
        m.set_rate(0.1)
    with pytest.raises(uniql.RangeError, match="outside"):
        m.set_rate(0.9)
    with pytest.raises(uniql.UnsupportedError, match="llama and qwen2 only"):
        _compress(src, tmp_path / "mag", scorer="magnitude")
    assert not (tmp_path / "mag").exists()


def test_one_stack_gives_every_layer_its_components():
    """compress and quantize_artifact see every family through one layer stack: a Llama layer is an attention mixer
    + gated MLP (as a Bamba attention layer is), a Mamba2 layer one Mamba mixer, a Nemotron-H layer the one component
    its pattern letter names; each component's GPTQ plan pairs a linear with the capture of its own input, and
    o_proj / out_proj groups stay inside a head."""
    from uniql.compress.layers import AttentionSorter, MambaSorter, MlpSorter, Stack
    from test_ssm import hf_config
    from _helpers import tiny_llama_config

    def layers(stack):
        return [[(type(p).__name__, p.prefix) for p in stack.components(i)] for i in range(stack.L)]

    llama = Stack(tiny_llama_config(128, 64, 96, 2, 4, 2, 12), ["model.embed_tokens.weight"])
    att, mlp = ("AttentionSorter", "model.layers.0.self_attn."), ("MlpSorter", "model.layers.0.mlp.")
    assert layers(llama) == [[att, mlp]] * 2 and not llama.hybrid
    parts = llama.components(0)
    assert llama.plan(parts, 8) == [("model.layers.0.self_attn.q_proj", "mixer_in", 8),
                                    ("model.layers.0.self_attn.k_proj", "mixer_in", 8),
                                    ("model.layers.0.self_attn.v_proj", "mixer_in", 8),
                                    ("model.layers.0.self_attn.o_proj", "attn_out", 6),  # 6 | head dim 12
                                    ("model.layers.0.mlp.gate_proj", "mlp_in", 8),
                                    ("model.layers.0.mlp.up_proj", "mlp_in", 8),
                                    ("model.layers.0.mlp.down_proj", "mlp_z", 8)]
    # a transformer layer is its norms then its components' tensors (a checkpoint's extra buffers are left out)
    lay = {"model.layers.0.self_attn.rotary_emb.inv_freq": 0, "model.layers.0.post_attention_layernorm.weight": 1,
           "model.layers.0.input_layernorm.weight": 2}
    assert list(llama.sorted_layer(0, lay, [{"q": 3}, {"up": 4}])) == [
        "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight", "q", "up"]

    mamba = Stack(hf_config("mamba2").to_dict(), [])
    assert layers(mamba) == [[("MambaSorter", "backbone.layers.0.mixer.")]] * 2 and mamba.hybrid
    assert mamba.plan(mamba.components(1), 32) == [("backbone.layers.0.mixer.in_proj", "mixer_in", 32),
                                                  ("backbone.layers.0.mixer.out_proj", "ssm_out", 16)]
    # a hybrid layer keeps the checkpoint's tensors in its order, sorted ones in place
    assert list(mamba.sorted_layer(0, {"a": 0, "b": 1}, [{"b": 2, "c": 3}])) == ["a", "b", "c"]

    nem = Stack(hf_config("nemotron_h").to_dict(), ["model.layers.0.mixer.D"])
    kinds = {"M": MambaSorter, "-": MlpSorter, "*": AttentionSorter}
    assert [[type(p) for p in nem.components(i)] for i in range(nem.L)] == [[kinds[c]] for c in "M-M*-"]
    assert all(p.prefix == "model.layers.0.mixer." for i in range(nem.L) for p in nem.components(i))
    assert nem.rope == "none" and nem.plan(nem.components(1), 8)[0] == ("model.layers.0.mixer.up_proj", "mlp_in", 8)

    bamba = Stack(hf_config("bamba").to_dict(), [])
    ff = ("MlpSorter", "model.layers.0.feed_forward.")
    assert layers(bamba) == [[("MambaSorter", "model.layers.0.mamba."), ff],
                             [("AttentionSorter", "model.layers.0.self_attn."), ff],
                             [("MambaSorter", "model.layers.0.mamba."), ff]]
    assert bamba.rope == "partial" and bamba.norms(1) == ("model.layers.0.input_layernorm.weight",
                                                          "model.layers.0.pre_ff_layernorm.weight")


def test_bad_checkpoints_write_nothing(hybrid, tmp_path):
    import shutil

    from uniql.formats import safetensors as st

    for what, edit, exc, pattern in (
            ("nan", lambda t, k: t[k].__setitem__((0, 0), np.nan), uniql.NumericError, "NaN"),
            ("missing", lambda t, k: t.pop(k), uniql.FormatError, "out_proj.weight")):
        src = tmp_path / what
        shutil.copytree(hybrid[2], src)
        f = next(src.glob("*.safetensors"))
        t = st.load_file(f)
        key = next(k for k in sorted(t) if k.endswith("out_proj.weight"))
        edit(t, key)
        st.save_file(f, t)
        with pytest.raises(exc, match=pattern):
            _compress(src, tmp_path / f"{what}-out")
        assert not (tmp_path / f"{what}-out").exists() and not (tmp_path / f"{what}-out.partial").exists()


def test_corrupt_artifact_is_format_error(hybrid, tmp_path):
    import shutil

    art = tmp_path / "bad"
    shutil.copytree(hybrid[3], art)
    cfg = json.loads((art / "config.json").read_text())
    cfg["uniql"]["importance"] = cfg["uniql"]["importance"][:-1]
    (art / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(uniql.FormatError, match="importance has"):
        uniql.load(art)


# ------------------------------------------------------------------------ statistics vs NumPy ----
def _np_bc(B, C, dt, G):
    T, H = dt.shape
    N = B.shape[1] // G
    Bg = B.astype(np.float64).reshape(T, G, N)[:, np.arange(H) // (H // G)]  # (T, H, N)
    dB = ((dt.astype(np.float64)[:, :, None] * Bg) ** 2).sum(0)
    c = (C.astype(np.float64) ** 2).sum(0).reshape(G, N)
    return dB, c


def _np_chunk_states(x, B, dt, A_log, G, chunk):
    T, H = dt.shape
    P, N = x.shape[1] // H, B.shape[1] // G
    x64, B64, d64 = x.astype(np.float64).reshape(T, H, P), B.astype(np.float64).reshape(T, G, N), dt.astype(np.float64)
    A = -np.exp(A_log.astype(np.float64))
    out = []
    for c0 in range(0, T, chunk):
        t1 = min(c0 + chunk, T)
        S = np.zeros((H, P, N))
        for t in range(c0, t1):
            decay = np.exp(A * d64[t + 1:t1].sum(0))  # (H,)
            for h in range(H):
                S[h] += decay[h] * d64[t, h] * np.outer(x64[t, h], B64[t, h // (H // G)])
        out.append(S.reshape(H * P, N).T)
    return np.concatenate(out)


def test_ssm_statistics_match_numpy():
    rng = np.random.default_rng(5)
    T, H, P, G, N, chunk = 13, 6, 4, 3, 5, 4
    x = rng.standard_normal((T, H * P)).astype(np.float32)
    B = rng.standard_normal((T, G * N)).astype(np.float32)
    C = rng.standard_normal((T, G * N)).astype(np.float32)
    dt = rng.uniform(0.01, 0.5, (T, H)).astype(np.float32)
    A_log = rng.standard_normal(H).astype(np.float32)
    dB, c = ssm_bc_moments(B, C, dt, G, scale=0.5)
    rdB, rc = _np_bc(B, C, dt, G)
    assert _rel(dB, 0.5 * rdB) <= STAT_REL_TOL and _rel(c, 0.5 * rc) <= STAT_REL_TOL
    ssm_bc_moments(B, C, dt, G, 0.5, dB, c)  # accumulates
    assert _rel(dB, rdB) <= STAT_REL_TOL and _rel(c, rc) <= STAT_REL_TOL
    S = ssm_chunk_states(x, B, dt, A_log, G, chunk)
    assert S.shape == (math.ceil(T / chunk) * N, H * P)
    assert _rel(S, _np_chunk_states(x, B, dt, A_log, G, chunk)) <= STAT_REL_TOL
    with pytest.raises(uniql.ShapeError):
        ssm_bc_moments(B, C, dt, 4)
    with pytest.raises(uniql.InvalidArgumentError):
        ssm_chunk_states(x, B, dt, A_log, G, 0)
    bad = dt.copy()
    bad[3, 2] = np.nan
    with pytest.raises(uniql.NumericError, match="NaN"):
        ssm_bc_moments(B, C, bad, G)


def test_mamba_captures_match_numpy():
    """layer_forward's captures (the inputs of the statistics) against a float64 NumPy Mamba2 front end:
    RMSNorm, in_proj, causal conv1d + SiLU of x/B/C, Delta = softplus(dt + dt_bias); and chaining layer_forward
    over every layer reproduces the full forward (final norm and lm_head applied in NumPy)."""
    from uniql.models.runtime import Model

    _, cd, sd = make_hf("mamba2")
    m = Model.from_hf_tensors(cd, sd, max_seq=32)
    ids = _ids(17, 6)
    X = m.embed(ids)
    np.testing.assert_array_equal(X, sd["backbone.embeddings.weight"][ids])
    _, cap = m.layer_forward(0, X, capture=("mixer_in", "ssm_x", "ssm_B", "ssm_C", "ssm_dt"))
    p = "backbone.layers.0."
    x64 = X.astype(np.float64)
    h = x64 / np.sqrt((x64 ** 2).mean(1, keepdims=True) + cd["layer_norm_epsilon"]) * sd[p + "norm.weight"]
    assert _rel(cap["mixer_in"], h) <= CAPTURE_REL_TOL
    H, P, G, N, K = cd["num_heads"], cd["head_dim"], cd["n_groups"], cd["state_size"], cd["conv_kernel"]
    zxbcdt = h @ sd[p + "mixer.in_proj.weight"].astype(np.float64).T
    xbc = zxbcdt[:, H * P:2 * H * P + 2 * G * N]
    w = sd[p + "mixer.conv1d.weight"].astype(np.float64)[:, 0]  # (C, K)
    pad = np.concatenate([np.zeros((K - 1, xbc.shape[1])), xbc])
    conv = np.stack([(pad[t:t + K] * w.T).sum(0) for t in range(len(ids))]) + sd[p + "mixer.conv1d.bias"]
    act = conv / (1 + np.exp(-conv))
    assert _rel(cap["ssm_x"], act[:, :H * P]) <= CAPTURE_REL_TOL
    assert _rel(cap["ssm_B"], act[:, H * P:H * P + G * N]) <= CAPTURE_REL_TOL
    assert _rel(cap["ssm_C"], act[:, H * P + G * N:]) <= CAPTURE_REL_TOL
    dt = zxbcdt[:, -H:] + sd[p + "mixer.dt_bias"]
    assert _rel(cap["ssm_dt"], np.log1p(np.exp(dt))) <= CAPTURE_REL_TOL
    Y = X
    for i in range(m.num_layers):
        Y, _ = m.layer_forward(i, Y)
    y64 = Y.astype(np.float64)
    hn = y64 / np.sqrt((y64 ** 2).mean(1, keepdims=True) + cd["layer_norm_epsilon"]) * sd["backbone.norm_f.weight"]
    assert _rel(m.logits(ids), hn @ sd["lm_head.weight"].astype(np.float64).T) <= CAPTURE_REL_TOL
    with pytest.raises(uniql.InvalidArgumentError, match="no capture 'q'"):
        m.layer_forward(0, X, capture=("q",))


def test_interrupted_then_resume_is_identical(hybrid, tmp_path, monkeypatch):
    """A run that dies after some layers leaves no artifact; resume=True continues from the last finished layer and
    writes the same bytes as an uninterrupted run (int4: the next layer's inputs come from the quantized layer)."""
    from uniql.formats.artifact import REST_FILE, layer_file
    from uniql.compress.pipeline import LayerJob

    src, ref = hybrid[2], hybrid[4]
    out = tmp_path / "resumed"
    real, calls = LayerJob.layer, []

    def dying(self, i, *a, **kw):
        calls.append(i)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(self, i, *a, **kw)

    monkeypatch.setattr(LayerJob, "layer", dying)
    with pytest.raises(KeyboardInterrupt):
        _compress(src, out, quantize=True)
    assert not out.exists() and (tmp_path / "resumed.partial" / "progress.json").is_file()
    monkeypatch.setattr(LayerJob, "layer", real)
    _compress(src, out, quantize=True, resume=True)
    n = uniql.load(ref).num_layers
    for name in [layer_file(i) for i in range(n)] + [REST_FILE, "config.json"]:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


@pytest.mark.parametrize("hybrid", ["mamba2"], indirect=True)
def test_mamba2_layer0_sorted_by_the_design_formulas(hybrid):
    """End to end on layer 0 of Mamba2 (its input, the embedding, is the same in the compressor and here): the
    artifact's in_proj / conv1d / gated norm / out_proj are the original ones permuted by the state-dim scores
    s_n = sum_h sqrt(E[(Delta_h B_n)^2]) sqrt(E[C_n^2]) per group and by the ridge leverage (lambda 1e-4) of the
    chunk-local states per head, all recomputed here in float64 NumPy from the runtime's captures."""
    from uniql.formats import safetensors as st
    from uniql.models.runtime import Model

    from uniql.formats import checkpoint

    _, _, src, art, _ = hybrid
    cd, sd = checkpoint.read_config(src), checkpoint.read_tensors(src)
    m = Model.from_hf_tensors(cd, sd, max_seq=SEQ)
    H, P, G, N, chunk = cd["num_heads"], cd["head_dim"], cd["n_groups"], cd["state_size"], cd["chunk_size"]
    p = "backbone.layers.0.mixer."
    calib = np.random.default_rng(0).integers(0, VOCAB, size=(NSAMP, SEQ))
    dB, cc, Gm = np.zeros((H, N)), np.zeros((G, N)), np.zeros((H * P, H * P))
    for b in range(NSAMP):
        _, cap = m.layer_forward(0, m.embed(calib[b]), capture=("ssm_x", "ssm_B", "ssm_C", "ssm_dt"))
        a, c = _np_bc(cap["ssm_B"], cap["ssm_C"], cap["ssm_dt"], G)
        dB, cc = dB + a / NSAMP, cc + c / NSAMP
        S = _np_chunk_states(cap["ssm_x"], cap["ssm_B"], cap["ssm_dt"], sd[p + "A_log"], G, chunk)
        Gm += S.T @ S / NSAMP
    s_state = np.sqrt(dB).reshape(G, H // G, N).sum(1) * np.sqrt(cc)
    sp = np.argsort(-s_state, axis=1, kind="stable")
    lam = 1e-4
    s_head = 1.0 - lam * np.diag(np.linalg.inv(Gm + lam * np.eye(H * P)))
    hp = np.argsort(-s_head.reshape(H, P), axis=1, kind="stable")
    zi = (np.arange(H)[:, None] * P + hp).reshape(-1)
    bi = (np.arange(G)[:, None] * N + sp).reshape(-1)
    HP, GN = H * P, G * N
    rows = np.concatenate([zi, HP + zi, 2 * HP + bi, 2 * HP + GN + bi, 2 * HP + 2 * GN + np.arange(H)])
    conv = np.concatenate([zi, HP + bi, HP + GN + bi])
    got = st.load_file(art / "model-layer-0000.safetensors")
    np.testing.assert_array_equal(got[p + "in_proj.weight"], sd[p + "in_proj.weight"][rows])
    np.testing.assert_array_equal(got[p + "conv1d.weight"], sd[p + "conv1d.weight"][conv])
    np.testing.assert_array_equal(got[p + "norm.weight"], sd[p + "norm.weight"][zi])
    np.testing.assert_array_equal(got[p + "out_proj.weight"], sd[p + "out_proj.weight"][:, zi])
    for key in ("A_log", "D", "dt_bias"):  # never pruned, never moved
        np.testing.assert_array_equal(got[p + key], sd[p + key])


def test_cli_compress_then_generate(hybrid, tmp_path, capsys):
    """The CLI path: text calibration through the model's tokenizer, then generation from the artifact at a rate."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers

    from uniql.cli import main

    src = tmp_path / "src"
    shutil.copytree(hybrid[2], src)
    words = [f"w{i}" for i in range(VOCAB)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(src / "tokenizer.json"))
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(np.random.default_rng(7).choice(words, size=NSAMP * SEQ + 3)))
    out = tmp_path / "cli-art"
    assert main(["compress", str(src), "-o", str(out), "--file", str(text), "--samples", str(NSAMP), "--seq-len",
                 str(SEQ), "--no-quantize"]) == 0
    assert (out / "tokenizer.json").is_file()
    assert main(["generate", str(out), "w1 w2 w3", "--max-new-tokens", "4", "--rate", "0.25"]) == 0
    assert capsys.readouterr().out.strip().split()[-1].startswith("w")

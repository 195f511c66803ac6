"""Memory that follows the rate (uniql.models.elastic_memory, ElasticModel.resize): shrink and grow without reloading give
the weights and logits of a model loaded at that rate, bit for bit; RSS follows; a bad artifact leaves the model
running at its current rate."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import uniql
from uniql import _C
from uniql.formats.artifact import layer_file
from uniql.compress.pipeline import compress

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, SEQ, NSAMP = 256, 32, 8
RATES = (0.35, 0.15, 0.25, 0.0, 0.35, 0.05)
INT8_POLICY = {"down_proj": "int8", "v_proj": "int8", "o_proj@1-2": "int8-g8", "up_proj@1-2": "int8-g32",
               "lm_head": "int8", "embedding": "int8"}


def _make(tmp: Path, kind: str) -> Path:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(head_dim=16, **common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
        with torch.no_grad():
            for layer in model.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0, 0.5)
    d = tmp / kind
    model.save_pretrained(d)
    return d


class _Artifacts:
    """Tiny artifacts compressed on first use (so a -k selection compresses only what it needs)."""

    def __init__(self, tmp: Path):
        self.tmp, self.cache = tmp, {}
        self.calib = np.random.default_rng(0).integers(0, VOCAB, size=(NSAMP, SEQ))

    def __getitem__(self, key):
        if key not in self.cache:
            kind, q = key
            if q == "f16":
                self.cache[key] = self._f16(self[(kind, False)])
            elif q == "int8":  # a mixed int4 / int8 precision policy
                src = self.tmp / kind
                if not src.exists():
                    _make(self.tmp, kind)
                self.cache[key] = compress(src, self.tmp / f"{kind}-int8", calibration=self.calib,
                                           num_samples=NSAMP, seq_len=SEQ, progress=False, quantize=True,
                                           precision=INT8_POLICY)
            else:
                src = self.tmp / kind
                if not src.exists():
                    _make(self.tmp, kind)
                self.cache[key] = compress(src, self.tmp / f"{kind}-{'int4' if q else 'fp32'}",
                                           calibration=self.calib, num_samples=NSAMP, seq_len=SEQ, progress=False,
                                           quantize=q)
        return self.cache[key]

    def _f16(self, fp32: Path) -> Path:
        """The fp32 artifact with every float tensor of the layer files stored as F16."""
        from uniql.formats import safetensors as st
        f16 = fp32.parent / (fp32.name + "-f16")
        shutil.copytree(fp32, f16)
        cfg = json.loads((f16 / "config.json").read_text())
        for p in sorted(f16.glob("model-*.safetensors")):
            t = st.load_file(p)
            st.save_file(p, {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in t.items()})
        for spec in cfg["uniql_tensors"].values():
            if spec.get("format") == "f32":
                spec["format"] = "f16"
        (f16 / "config.json").write_text(json.dumps(cfg))
        return f16


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return _Artifacts(tmp_path_factory.mktemp("elastic_mem"))


def _weights(m) -> list[bytes]:
    """Every layer weight the C model points at, in row-major int4 / float32 form, as bytes."""
    out = []
    for lay in m._specs[3]:
        for short in ("q", "k", "v", "o", "gate", "up", "down"):
            sp = lay[short]
            if len(sp) > 5 and sp[5] is not None:
                out.extend(a.tobytes() for a in _C.q4_unpack_r16(sp))
            else:
                out.extend(a.tobytes() for a in (sp[0], sp[1]) if a is not None)
            if sp[4] is not None:
                out.append(sp[4].tobytes())
        if lay["freq_map"] is not None:
            out.append(lay["freq_map"].tobytes())
    return out


@pytest.mark.parametrize("key", [("llama", True), ("qwen2", False), ("llama", "int8"),
                                 pytest.param(("llama", False), marks=pytest.mark.slow),
                                 pytest.param(("qwen2", True), marks=pytest.mark.slow),
                                 pytest.param(("llama", "f16"), marks=pytest.mark.slow)])
def test_shrink_grow_equals_load(artifacts, key):
    art = artifacts[key]
    ids = np.random.default_rng(1).integers(0, VOCAB, 20)
    m = uniql.load(art, rate=0.0)
    for rate in RATES:
        rep = m.resize(rate)
        ref = uniql.load(art, rate=rate)
        assert m.rate == rate and rep["rate"] == rate
        assert [m.stored(i) for i in range(m.num_layers)] == [ref.stored(i) for i in range(ref.num_layers)]
        assert _weights(m) == _weights(ref)
        assert m.weight_bytes() == ref.weight_bytes()
        np.testing.assert_array_equal(m.logits(ids), ref.logits(ids))
        if rep["from_rate"] < rate:
            assert rep["read_bytes"] == 0  # a shrink reads nothing
        elif rep["from_rate"] > rate:
            assert 0 < rep["read_bytes"] < ref.weight_bytes()  # a grow reads only the missing parts


def test_q4_unpack_is_inverse_of_repack(rng):
    rows, cols, g = 48, 96, 16
    packed = rng.integers(0, 256, (rows, cols // 2), dtype=np.uint8)
    scales = rng.standard_normal((rows, 3 * (32 // g))).astype(np.float16)  # runtime specs carry float16 scales
    for segs in ((3, 1), (1, 3), (1, 1)):
        sc = scales if segs[1] == 3 else rng.standard_normal((rows, cols // g)).astype(np.float16)
        p16, s16 = _C.q4_repack((packed, sc, g, cols, None), *segs)
        p, s = _C.q4_unpack_r16((p16, s16, g, cols, None, (rows, *segs)))
        np.testing.assert_array_equal(p, packed)
        np.testing.assert_array_equal(s, sc)
    with pytest.raises(uniql.UniqlError, match="R16"):
        _C.q4_unpack_r16((packed, scales[:, :6], g, cols, None))


def test_mid_sequence_resize_keeps_the_cache(artifacts):
    art = artifacts[("llama", True)]
    ids = np.random.default_rng(2).integers(0, VOCAB, 24)
    # shrink mid-sequence == set_rate mid-sequence (the cache is cut to the kept dims)
    a, b = uniql.load(art, rate=0.0), uniql.load(art, rate=0.0)
    a.forward(ids[:12])
    b.forward(ids[:12])
    a.resize(0.35)
    b.set_rate(0.35)
    assert a.position == 12
    np.testing.assert_array_equal(a.forward(ids[12:]), b.forward(ids[12:]))
    # grow mid-sequence with the tokens: re-prefilled, so exactly a model loaded at that rate
    ref = uniql.load(art, rate=0.15)
    a.reset()
    a.forward(ids[:12])
    rep = a.resize(0.15, tokens=ids[:12])
    assert rep["reprefilled"] and a.position == 12
    np.testing.assert_array_equal(a.forward(ids[12:]), ref.logits(ids)[12:])


@pytest.mark.parametrize("damage", ["missing", "altered", "truncated"])
def test_bad_artifact_while_growing_keeps_the_model(artifacts, tmp_path, damage):
    art = tmp_path / "art"
    shutil.copytree(artifacts[("llama", True)], art)
    ids = np.random.default_rng(3).integers(0, VOCAB, 16)
    m = uniql.load(art, rate=0.0)
    m.resize(0.35)
    before = m.logits(ids)
    victim = art / layer_file(1)
    if damage == "missing":
        victim.unlink()
    elif damage == "altered":
        data = bytearray(victim.read_bytes())
        data[-1] ^= 0xFF
        victim.write_bytes(bytes(data))
    else:
        victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(uniql.UniqlError, match="stays at rate 0.35"):
        m.resize(0.0)
    assert m.rate == 0.35
    np.testing.assert_array_equal(m.logits(ids), before)
    m.resize(0.35)  # same rate: nothing to read, works
    with pytest.raises(uniql.RangeError, match="resize"):
        m.set_rate(0.0)


_RSS_SCRIPT = r"""
import json, sys, gc
import uniql
from uniql.models.elastic_memory import rss_bytes, release_free_memory
art, mode = sys.argv[1], sys.argv[2]
w = uniql.load(art, rate=0.35, max_seq=16)  # warm-up: one-time allocations (kernels, thread pools) out of the way
w.logits([1, 2, 3])
del w
out = {}
if mode == "load":
    for r in (0.0, 0.35):
        gc.collect(); release_free_memory(); b = rss_bytes()
        m = uniql.load(art, rate=r, max_seq=16)
        m.logits([1, 2, 3])
        out[str(r)] = rss_bytes() - b
        del m
else:
    gc.collect(); release_free_memory(); b = rss_bytes()
    m = uniql.load(art, rate=0.0, max_seq=16)
    seq = []
    for r in (0.0, 0.35, 0.0, 0.35):
        m.resize(r)
        m.logits([1, 2, 3])
        seq.append([r, rss_bytes() - b])
    out["seq"] = seq
print(json.dumps(out))
"""


def _big_llama_artifact(tmp: Path) -> Path:
    """An fp32 artifact of ~60 MB of random layer weights, written directly (no calibration)."""
    from uniql.formats import safetensors as st
    from _helpers import tiny_llama_config
    cfg = tiny_llama_config(vocab=512, hidden=512, inter=2048, layers=4, heads=8, kv=4, head_dim=64)
    rng = np.random.default_rng(0)
    d = tmp / "big"
    d.mkdir()
    L, n, DI, nh, nkv, hd = 4, 512, 2048, 8, 4, 64
    tinfo = {}
    for i in range(L):
        p = f"model.layers.{i}."
        t = {p + "input_layernorm.weight": np.ones(n, np.float32),
             p + "post_attention_layernorm.weight": np.ones(n, np.float32),
             p + "self_attn.rope_freq": np.tile(np.arange(hd // 2, dtype=np.int32), (nkv, 1))}
        for name, shape in (("self_attn.q_proj", (nh * hd, n)), ("self_attn.k_proj", (nkv * hd, n)),
                            ("self_attn.v_proj", (nkv * hd, n)), ("self_attn.o_proj", (n, nh * hd)),
                            ("mlp.gate_proj", (DI, n)), ("mlp.up_proj", (DI, n)), ("mlp.down_proj", (n, DI))):
            t[p + name + ".weight"] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
            tinfo[p + name] = {"format": "f32", "shape": list(shape)}
        st.save_file(d / layer_file(i), t)
    st.save_file(d / "model-rest.safetensors", {
        "model.embed_tokens.weight": (0.02 * rng.standard_normal((512, n))).astype(np.float32),
        "lm_head.weight": (0.02 * rng.standard_normal((512, n))).astype(np.float32),
        "model.norm.weight": np.ones(n, np.float32)})
    tinfo["model.embed_tokens"] = {"format": "f32", "shape": [512, n]}
    tinfo["lm_head"] = {"format": "f32", "shape": [512, n]}
    cfg["uniql"] = {"format_version": 1, "architecture": "llama", "max_rate": 0.35, "importance": [1.0] * L,
                    "mlp_granularity": 32, "attn_granularity": 8}
    cfg["uniql_tensors"] = tinfo
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_rss_follows_the_rate(tmp_path):
    art = _big_llama_artifact(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(Path(uniql.__file__).parent.parent))

    def run(mode):
        r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(art), mode], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    loaded, seq = run("load"), run("resize")["seq"]
    full, small = loaded["0.0"], loaded["0.35"]
    assert small < 0.8 * full  # the artifact is large enough to see the rate in RSS
    for r, rss in seq:
        want = full if r == 0.0 else small
        assert abs(rss - want) <= 0.05 * want + 2 * 2**20, (r, rss, want, loaded, seq)


class _Budget:
    """A memory signal for adaptive generation: a budget that changes at given generated-token counts."""

    name = "memory"

    def __init__(self, model, plan):
        self.model, self.plan, self.n = model, plan, 0

    def read(self, now):
        self.n += 1
        budget = next(b for upto, b in self.plan if self.n <= upto)
        return {"available_bytes": budget - self.model.weight_bytes(), "source": "test"}


def test_adaptive_generate_memory_follows(artifacts):
    from uniql.serve.adaptive import AdaptiveController, MemoryPolicy, generate

    art = artifacts[("llama", True)]
    m = uniql.load(art, rate=0.0)
    prompt = [1, 5, 9, 2]
    # no pressure: the same tokens as plain generation, at rate 0 throughout
    ref = m.generate(prompt, max_new_tokens=12)
    out, trace = generate(m, prompt, max_new_tokens=12, signals=[], policies=[])
    assert out == ref and {r["rate"] for r in trace} == {0.0}
    # memory pressure from token 4 to 12: the weights shrink to the max rate, then grow back to rate 0
    full, small = m.weight_bytes(), uniql.load(art, rate=0.35).weight_bytes()
    sig = _Budget(m, [(4, 10 * full), (12, small + 1000), (10**9, 10 * full)])
    ctl = AdaptiveController(m, signals=[sig], policies=[MemoryPolicy(reserve_bytes=1000, margin_bytes=0)],
                             dwell_up_s=0, dwell_down_s=0, max_down_steps=100, sample_interval_s=0)
    out, trace = generate(m, prompt, max_new_tokens=24, controller=ctl)
    rates = [r["rate"] for r in trace]
    assert rates[0] == 0.0 and 0.35 in rates and rates[-1] == 0.0
    assert m.rate == 0.0 and m.weight_bytes() == full
    moves = [d for d in ctl.decisions if d["event"] == "rate"]
    dirs = [d["direction"] for d in moves]
    assert dirs == sorted(dirs, reverse=True) and dirs[0] == "up" and dirs[-1] == "down"  # ups, then downs
    assert all("memory" in d["reason"] for d in moves)
    # after the grow the cache was re-prefilled: the continuation is the rate-0 model's on that sequence
    seq = prompt + out
    m2 = uniql.load(art, rate=0.0)
    np.testing.assert_array_equal(m2.logits(seq[:-1])[-1], m.logits(seq[:-1])[-1])


def test_cli_generate_adaptive(artifacts, tmp_path, capsys):
    from uniql import cli

    import tokenizers

    log = tmp_path / "d.jsonl"
    art = tmp_path / "art"
    shutil.copytree(artifacts[("qwen2", False)], art)
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(art / "tokenizer.json"))
    assert cli.main(["generate", str(art), "w1 w2 w3", "--adaptive", "--tpot-ms", "1000", "--max-new-tokens", "6",
                     "--max-rate", "0.25", "--adaptive-log", str(log)]) == 0
    err = capsys.readouterr().err
    assert "adaptive: " in err and "within 1000 ms" in err
    assert all(json.loads(x)["event"] in ("rate", "apply_failed") for x in log.read_text().splitlines())
    assert cli.main(["generate", str(art), "hello", "--adaptive", "--min-rate", "0.3", "--max-rate",
                     "0.2"]) == cli.EXIT_ERROR


@pytest.fixture(scope="module", params=["bamba", pytest.param("mamba2", marks=pytest.mark.slow),
                                        pytest.param("nemotron_h", marks=pytest.mark.slow)])
def hybrid_art(request, tmp_path_factory):
    from test_ssm import make_hf

    arch = request.param
    tmp = tmp_path_factory.mktemp(f"em-{arch}")
    hf, _, _ = make_hf(arch)
    hf.save_pretrained(tmp / "src")
    calib = np.random.default_rng(0).integers(0, 128, size=(4, 24))
    class Lazy(dict):
        def __missing__(self, q):
            self[q] = compress(tmp / "src", tmp / ("int4" if q else "fp32"), calibration=calib, num_samples=4,
                               seq_len=24, progress=False, quantize=q)
            return self[q]
    return Lazy()


def _hy_weights(m) -> list[bytes]:
    out = []
    for lay in m._specs[3]:
        for key in sorted(lay):
            v = lay[key]
            if isinstance(v, tuple):
                out.extend(a.tobytes() for a in (v[0], v[1], v[4]) if a is not None)
            elif isinstance(v, np.ndarray):
                out.append(key.encode() + v.tobytes())
            elif v is not None:
                out.append(f"{key}={v}".encode())
    return out


@pytest.mark.parametrize("q", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_hybrid_shrink_grow_equals_load(hybrid_art, q):
    art = hybrid_art[q]
    ids = np.random.default_rng(4).integers(0, 128, 17)
    m = uniql.load(art, rate=0.0)
    for rate in (0.35, 0.15, 0.0, 0.25):
        m.reset()  # an empty state: nothing to re-prefill
        rep = m.resize(rate)
        ref = uniql.load(art, rate=rate)
        assert [m.stored(i) for i in range(m.num_layers)] == [ref.stored(i) for i in range(ref.num_layers)]
        assert _hy_weights(m) == _hy_weights(ref) and m.weight_bytes() == ref.weight_bytes()
        np.testing.assert_array_equal(m.logits(ids), ref.logits(ids))
        if rep["from_rate"] < rate:
            assert rep["read_bytes"] == 0
    # mid-sequence: the state is rebuilt from the tokens (exact), and refused without them
    m.reset()
    m.forward(ids[:9])
    with pytest.raises(uniql.InvalidArgumentError, match="tokens"):
        m.resize(0.0)
    assert m.rate == 0.25 and m.position == 9
    m.resize(0.0, tokens=ids[:9])
    ref = uniql.load(art, rate=0.0)
    ref.forward(ids[:9])  # prefill in the same two calls (SSD chunks are aligned to a call's first token)
    np.testing.assert_array_equal(m.forward(ids[9:]), ref.forward(ids[9:]))

"""Transformer runtime (uniql.models.runtime + csrc/runtime, csrc/kernels) against transformers and a float64 NumPy
reference: logits, KV-cache decoding, elastic keep sizes (live switching, truncated loading), int4 weights,
sampling, perplexity, pipeline pieces and bad inputs."""
import math

import numpy as np
import pytest

import uniql
from uniql import _C
from uniql.models.runtime import Model, TransformerConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# max-abs error / max-abs reference logit, runtime (float32, kv_dtype="fp32": the float16 KV cache is compared with
# the float32 one in test_kv_cache.py) vs transformers (float32, eager attention)
HF_REL_TOL = 1e-4
# runtime float32 vs float64 NumPy reference of the same semantics
REF_REL_TOL = 1e-4
# int4 kernels (scale applied once per group) vs fp32 kernels on the dequantized weights
Q4_REL_TOL = 1e-5

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def make_hf(kind="llama", seed=0, **over):
    """Small random-weight HF model -> (hf model, config dict, numpy state dict)."""
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)
    base.update(over)
    torch.manual_seed(seed)
    if kind == "llama":
        base.setdefault("head_dim", 16)
        cfg = transformers.LlamaConfig(**base, attn_implementation="eager")
        hf = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**base, attn_implementation="eager")
        hf = transformers.Qwen2ForCausalLM(cfg)
    hf = hf.float().eval()
    with torch.no_grad():  # HF initialises biases and norms to constants: randomise them to test them
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    sd = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
    return hf, cfg.to_dict(), sd


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor(np.asarray(ids)[None], dtype=torch.long)).logits[0].numpy()


def ids_for(n, vocab=128, seed=1):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int32)


# ------------------------------------------------------------------------- NumPy reference ----

def interleave(w, heads, d):
    """rotate-half rows -> pair-interleaved rows per head (independent formulation of the runtime's map)."""
    shp = w.shape[1:]
    return w.reshape(heads, 2, d // 2, *shp).swapaxes(1, 2).reshape(heads * d, *shp)


def runtime_tensors(sd, cfg):
    """HF state dict -> interleaved-layout tensors (what qk_layout='interleaved' expects)."""
    out = dict(sd)
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // nh
    for i in range(cfg["num_hidden_layers"]):
        for proj, heads in (("q_proj", nh), ("k_proj", nkv)):
            for suf in ("weight", "bias"):
                name = f"model.layers.{i}.self_attn.{proj}.{suf}"
                if name in out:
                    out[name] = np.ascontiguousarray(interleave(out[name], heads, d))
    return out


def truncate(tensors, cfg, keeps):
    """Physically truncate interleaved tensors to per-layer (k, r): what loading at a rate does."""
    out = dict(tensors)
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for i, (k, r) in enumerate(keeps):
        p = f"model.layers.{i}."
        R = out[p + "self_attn.q_proj.weight"].shape[0] // nh
        for proj, heads in (("q_proj", nh), ("k_proj", nkv), ("v_proj", nkv)):
            for suf in ("weight", "bias"):
                name = p + f"self_attn.{proj}.{suf}"
                if name in out:
                    a = out[name]
                    out[name] = np.ascontiguousarray(a.reshape(heads, R, *a.shape[1:])[:, :r].reshape(heads * r, *a.shape[1:]))
        o = out[p + "self_attn.o_proj.weight"]
        out[p + "self_attn.o_proj.weight"] = np.ascontiguousarray(o.reshape(o.shape[0], nh, R)[:, :, :r].reshape(o.shape[0], -1))
        for proj in ("gate_proj", "up_proj"):
            out[p + f"mlp.{proj}.weight"] = np.ascontiguousarray(out[p + f"mlp.{proj}.weight"][:k])
        out[p + "mlp.down_proj.weight"] = np.ascontiguousarray(out[p + "mlp.down_proj.weight"][:, :k])
    return out


def ref_forward(tensors, cfg, ids, keep_sched, freq_maps=None):
    """float64 forward in the runtime's layout. keep_sched[t][l] = (k, r) used for token t at layer l;
    K/V are computed at the stored width and attention for token t reads their first r dims."""
    f = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    L, nh, nkv = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // nh
    eps, theta = cfg["rms_norm_eps"], cfg["rope_parameters"]["rope_theta"]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    T, grp = len(ids), nh // nkv

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def lin(x, name):
        y = x @ f[name + ".weight"].T
        return y + f[name + ".bias"] if name + ".bias" in f else y

    x = f["model.embed_tokens.weight"][ids]
    pos = np.arange(T)[:, None, None]
    for l in range(L):
        p = f"model.layers.{l}."
        R = f[p + "self_attn.q_proj.weight"].shape[0] // nh
        fm = np.tile(np.arange(R // 2), (nkv, 1)) if freq_maps is None or freq_maps[l] is None else freq_maps[l]
        h = rms(x, f[p + "input_layernorm.weight"])
        q = lin(h, p + "self_attn.q_proj").reshape(T, nh, R)
        k = lin(h, p + "self_attn.k_proj").reshape(T, nkv, R)
        v = lin(h, p + "self_attn.v_proj").reshape(T, nkv, R)

        def rope(z, heads):
            ang = pos * inv[fm[np.arange(heads) // (heads // nkv)]][None]  # (T, heads, R/2)
            c, s = np.cos(ang), np.sin(ang)
            z0, z1 = z[..., 0::2].copy(), z[..., 1::2].copy()
            z[..., 0::2], z[..., 1::2] = z0 * c - z1 * s, z1 * c + z0 * s
        rope(q, nh)
        rope(k, nkv)
        att = np.zeros((T, nh, R))
        for t in range(T):
            r = keep_sched[t][l][1]
            for hh in range(nh):
                g = hh // grp
                sc = k[: t + 1, g, :r] @ q[t, hh, :r] / math.sqrt(d)
                w = np.exp(sc - sc.max())
                att[t, hh, :r] = (w / w.sum()) @ v[: t + 1, g, :r]
        x = x + lin(att.reshape(T, nh * R), p + "self_attn.o_proj")
        h = rms(x, f[p + "post_attention_layernorm.weight"])
        gt, ut = lin(h, p + "mlp.gate_proj"), lin(h, p + "mlp.up_proj")
        z = gt / (1 + np.exp(-gt)) * ut
        for t in range(T):
            z[t, keep_sched[t][l][0]:] = 0.0
        x = x + lin(z, p + "mlp.down_proj")
    head = f.get("lm_head.weight", f["model.embed_tokens.weight"])
    if cfg.get("tie_word_embeddings"):
        head = f["model.embed_tokens.weight"]
    return rms(x, f["model.norm.weight"]) @ head.T


# ------------------------------------------------------------------------------- int4 helper ----

class Q4:
    """QuantizedTensor-like int4 weight quantized with the documented formula (NumPy, test-only); scales rounded to
    float16 as the compressor stores them (the runtime keeps them in float16)."""

    def __init__(self, w, group, segments=1):
        rows, cols = w.shape
        seg = cols // segments
        gps = -(-seg // group)
        codes = np.empty((rows, cols), np.uint8)
        self.scales = np.empty((rows, segments * gps), np.float32)
        deq = np.empty((rows, cols), np.float32)
        for s in range(segments):
            for gi in range(gps):
                c0, c1 = s * seg + gi * group, min(s * seg + (gi + 1) * group, (s + 1) * seg)
                blk = w[:, c0:c1].astype(np.float32)
                sc = (np.abs(blk).max(1) / np.float32(7.5)).astype(np.float16).astype(np.float32)
                safe = np.where(sc == 0, 1, sc)
                q = np.where(sc[:, None] == 0, 8, np.clip(np.rint(blk / safe[:, None]) + 8, 0, 15))
                codes[:, c0:c1] = q
                self.scales[:, s * gps + gi] = sc
                deq[:, c0:c1] = (q.astype(np.float32) - 8) * sc[:, None]
        padded = np.full((rows, cols + cols % 2), 8, np.uint8)
        padded[:, :cols] = codes
        self.packed = np.ascontiguousarray(padded[:, 0::2] | (padded[:, 1::2] << 4))
        self.group, self.shape, self.dequantized = group, (rows, cols), deq


def quantize_all(tensors, cfg, group=32, o_group=8):
    """int4 for every linear and the embedding; o_proj per-head groups of o_group."""
    q, deq = dict(tensors), dict(tensors)
    nh = cfg["num_attention_heads"]
    for name, w in tensors.items():
        if name.endswith(".weight") and w.ndim == 2 and "norm" not in name:
            segs, g = (nh, o_group) if "o_proj" in name else (1, group)
            qt = Q4(w, g, segs)
            q[name], deq[name] = qt, qt.dequantized
    return q, deq


# ------------------------------------------------------------------------------------ config ----

def test_config_from_hf_fields():
    _, d, _ = make_hf(rope_scaling=LLAMA3_ROPE, tie_word_embeddings=True)
    c = TransformerConfig.from_hf(d)
    assert (c.model_type, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == ("llama", 4, 2, 16)
    assert c.rope_type == "llama3" and c.rope_factor == 8.0 and c.rope_original_max_position_embeddings == 32
    assert c.tie_word_embeddings and c.eos_token_ids == (2,)
    legacy = {"model_type": "qwen2", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "rope_theta": 5e5,
              "eos_token_id": [3, 4]}
    c = TransformerConfig.from_hf(legacy)
    assert c.head_dim == 4 and c.rope_theta == 5e5 and c.attention_bias and c.eos_token_ids == (3, 4)


def test_config_rejects_unsupported_and_inconsistent():
    _, d, _ = make_hf()
    with pytest.raises(uniql.UnsupportedError, match="mamba2"):
        TransformerConfig.from_hf({**d, "model_type": "mamba2"})
    with pytest.raises(ValueError, match="num_attention_heads 4 is not a multiple of num_key_value_heads 3"):
        TransformerConfig.from_hf({**d, "num_key_value_heads": 3})
    with pytest.raises(uniql.UnsupportedError, match="yarn"):
        TransformerConfig.from_hf({**d, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}})
    with pytest.raises(uniql.UnsupportedError, match="sliding"):
        TransformerConfig.from_hf({**d, "model_type": "qwen2", "use_sliding_window": True})
    with pytest.raises(ValueError, match="head_dim 15 must be even"):
        TransformerConfig.from_hf({**d, "head_dim": 15})


# ------------------------------------------------------------------------ vs transformers ----

@pytest.mark.parametrize("kind,over", [
    ("llama", {}),                                            # GQA 4/2, head_dim 16
    ("llama", {"rope_scaling": LLAMA3_ROPE}),                 # llama3 scaling, prompt > 32 positions
    ("llama", {"tie_word_embeddings": True, "num_key_value_heads": 4}),
    ("llama", {"attention_bias": True, "mlp_bias": True}),
    ("qwen2", {}),                                            # q/k/v biases, head_dim 16
    ("qwen2", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
])
def test_logits_match_transformers(kind, over):
    hf, d, sd = make_hf(kind, **over)
    ids = ids_for(80)
    m = Model.from_hf_tensors(d, sd, kv_dtype="fp32")
    ref = hf_logits(hf, ids)
    assert rel_err(m.logits(ids), ref) <= HF_REL_TOL


def test_float16_tensors_are_converted():
    hf, d, sd = make_hf()
    half = {k: v.astype(np.float16) for k, v in sd.items()}
    m16 = Model.from_hf_tensors(d, half)
    m32 = Model.from_hf_tensors(d, {k: v.astype(np.float16).astype(np.float32) for k, v in sd.items()})
    ids = ids_for(20)
    np.testing.assert_array_equal(m16.logits(ids), m32.logits(ids))


# ----------------------------------------------------------------------------- KV cache ----

def test_decode_and_pieces_equal_full_forward():
    hf, d, sd = make_hf(rope_scaling=LLAMA3_ROPE)
    ids = ids_for(50)
    m = Model.from_hf_tensors(d, sd)
    full = m.logits(ids)
    m.reset()
    step = np.concatenate([m.forward(ids[t:t + 1]) for t in range(len(ids))])
    np.testing.assert_array_equal(step, full)  # bit-identical: per-row operation order is fixed
    m.reset()
    parts = np.concatenate([m.forward(ids[:7]), m.forward(ids[7:31]), m.forward(ids[31:])])
    np.testing.assert_array_equal(parts, full)
    assert m.position == 50
    small = Model.from_hf_tensors(d, sd, max_chunk=5)  # chunked prefill
    np.testing.assert_array_equal(small.logits(ids), full)
    small.reset()
    np.testing.assert_array_equal(small.forward(ids[:12], last_only=True), full[11:12])


# ------------------------------------------------------------------------- elastic keep ----

def test_reduced_keep_equals_truncated_model_and_reference():
    hf, d, sd = make_hf("qwen2", num_key_value_heads=2)
    t = runtime_tensors(sd, d)
    rng = np.random.default_rng(5)
    fmaps = [np.stack([rng.permutation(8) for _ in range(2)]).astype(np.int32) for _ in range(2)]
    keeps = [(40, 6), (96, 10)]
    full = Model.from_hf_tensors(d, t, qk_layout="interleaved", freq_maps=fmaps, kv_dtype="fp32")
    for l, (k, r) in enumerate(keeps):
        full.set_keep(l, mlp=k, attn=r)
    assert [full.keep(l) for l in range(2)] == [{"mlp": k, "attn": r} for k, r in keeps]
    tr = truncate(t, d, keeps)
    small = Model.from_hf_tensors(d, tr, qk_layout="interleaved",
                                  freq_maps=[f[:, :r // 2] for f, (_, r) in zip(fmaps, keeps)], kv_dtype="fp32")
    assert [small.stored(l) for l in range(2)] == [{"mlp": k, "attn": r} for k, r in keeps]
    ids = ids_for(40)
    a, b = full.logits(ids), small.logits(ids)
    np.testing.assert_array_equal(a, b)  # loaded at rho == loaded full and switched to rho, bit for bit
    ref = ref_forward(t, d, ids, [keeps] * len(ids), fmaps)
    assert rel_err(a, ref) <= REF_REL_TOL
    assert small.memory_bytes() < full.memory_bytes()


def test_hf_layout_with_identity_map_equals_reference():
    hf, d, sd = make_hf()
    ids = ids_for(30)
    m = Model.from_hf_tensors(d, sd, kv_dtype="fp32")
    ref = ref_forward(runtime_tensors(sd, d), d, ids, [[(96, 16)] * 2] * 30)
    assert rel_err(m.logits(ids), ref) <= REF_REL_TOL
    assert rel_err(ref, hf_logits(hf, ids)) <= 1e-5  # the reference itself agrees with transformers


def test_live_switching_matches_reference():
    hf, d, sd = make_hf(num_key_value_heads=1)
    m = Model.from_hf_tensors(d, sd, kv_dtype="fp32")
    ids = ids_for(36)
    A, B, C = [(96, 16), (96, 16)], [(32, 8), (64, 12)], [(50, 4), (96, 16)]
    sched = [A] * 20 + [B] * 10 + [C] * 6
    m.reset()
    out = [m.forward(ids[:20])]
    m.set_keep_all(mlp=[k for k, _ in B], attn=[r for _, r in B])
    out += [m.forward(ids[20:25]), m.forward(ids[25:30])]
    for l, (k, r) in enumerate(C):
        m.set_keep(l, mlp=k, attn=r)
    out += [m.forward(ids[t:t + 1]) for t in range(30, 36)]
    got = np.concatenate(out)
    ref = ref_forward(runtime_tensors(sd, d), d, ids, sched)
    assert rel_err(got, ref) <= REF_REL_TOL
    # the prefix at full keep equals the plain forward bit for bit; switching back restores it
    m.set_keep_all(mlp=96, attn=16)
    np.testing.assert_array_equal(got[:20], m.logits(ids[:20]))


# ---------------------------------------------------------------------------------- int4 ----

def test_int4_scales_kept_in_float16(w4a32):
    """The runtime keeps int4 scales in float16: float32 scales are rounded once when the model is built (logits
    bit-identical to a model given the rounded float16 scales), every int4 spec the C model points at carries
    float16 scales (2 bytes each in weight_bytes), and a scale beyond float16's range is a RangeError naming it."""
    hf, d, sd = make_hf("llama")
    t = runtime_tensors(sd, d)
    q, _ = quantize_all(t, d, group=32, o_group=8)
    # float32 scales that float16 cannot hold exactly (one part in 1e5 off the stored float16 values)
    q32 = {k: (Q4Slice(v.packed, v.scales * np.float32(1 + 1e-5), v.group, v.shape) if isinstance(v, Q4) else v)
           for k, v in q.items()}
    q16 = {k: (Q4Slice(v.packed, v.scales.astype(np.float16), v.group, v.shape) if isinstance(v, Q4Slice) else v)
           for k, v in q32.items()}
    assert any(not np.array_equal(v.scales, v.scales.astype(np.float16)) for v in q32.values() if isinstance(v, Q4Slice))
    m32 = Model.from_hf_tensors(d, q32, qk_layout="interleaved")
    m16 = Model.from_hf_tensors(d, q16, qk_layout="interleaved")
    ids = ids_for(12)
    np.testing.assert_array_equal(m32.logits(ids), m16.logits(ids))
    assert m32.weight_bytes() == m16.weight_bytes()
    specs = [m32._specs[0], m32._specs[1]] + [v for lay in m32._specs[3] for v in lay.values()
                                              if isinstance(v, tuple) and len(v) >= 5]
    q4_specs = [sp for sp in specs if isinstance(sp[0], np.ndarray) and sp[0].dtype == np.uint8]
    assert q4_specs and all(sp[1].dtype == np.float16 for sp in q4_specs)
    name = next(k for k, v in q32.items() if isinstance(v, Q4Slice) and "up_proj" in k)
    bad = dict(q32)
    v = bad[name]
    big = v.scales.copy()
    big[0, 0] = 1e6
    bad[name] = Q4Slice(v.packed, big, v.group, v.shape)
    with pytest.raises(uniql.RangeError, match=name.replace(".", r"\.") + r".*not a finite float16"):
        Model.from_hf_tensors(d, bad, qk_layout="interleaved")


def test_int4_matches_fp32_on_dequantized_weights(w4a32):
    hf, d, sd = make_hf("qwen2", intermediate_size=100)  # down_proj: 100 columns, group 32 -> partial group
    t = runtime_tensors(sd, d)
    q, deq = quantize_all(t, d, group=32, o_group=8)
    mq = Model.from_hf_tensors(d, q, qk_layout="interleaved")
    mf = Model.from_hf_tensors(d, deq, qk_layout="interleaved")
    ids = ids_for(24)
    assert rel_err(mq.logits(ids), mf.logits(ids).astype(np.float64)) <= Q4_REL_TOL
    for m in (mq, mf):
        m.set_keep_all(mlp=[45, 70], attn=[6, 12])  # keeps cutting int4 groups
    assert rel_err(mq.logits(ids), mf.logits(ids).astype(np.float64)) <= Q4_REL_TOL
    assert mq.memory_bytes() < mf.memory_bytes()


def test_int4_truncated_load_is_bit_identical():
    hf, d, sd = make_hf()
    t = runtime_tensors(sd, d)
    q, _ = quantize_all(t, d, group=16, o_group=8)
    keeps = [(40, 12), (70, 6)]
    full = Model.from_hf_tensors(d, q, qk_layout="interleaved")
    full.set_keep_all(mlp=[k for k, _ in keeps], attn=[r for _, r in keeps])
    # truncated int4: slice codes (rows / whole bytes) and scales; o_proj keeps each head's partial group
    nh, nkv = 4, 2
    tq = dict(q)
    for l, (k, r) in enumerate(keeps):
        p = f"model.layers.{l}."
        for proj, heads in (("q_proj", nh), ("k_proj", nkv), ("v_proj", nkv)):
            w = q[p + f"self_attn.{proj}.weight"]
            sel = (np.arange(heads)[:, None] * 16 + np.arange(r)).ravel()
            tq[p + f"self_attn.{proj}.weight"] = Q4Slice(w.packed[sel], w.scales[sel], w.group, (len(sel), 64))
        o = q[p + "self_attn.o_proj.weight"]
        cols = (np.arange(nh)[:, None] * 16 + np.arange(r)).ravel()
        gsel = (np.arange(nh)[:, None] * 2 + np.arange(-(-r // 8))).ravel()
        tq[p + "self_attn.o_proj.weight"] = Q4Slice(o.packed[:, cols[0::2] // 2], o.scales[:, gsel], 8, (64, nh * r))
        for proj in ("gate_proj", "up_proj"):
            w = q[p + f"mlp.{proj}.weight"]
            tq[p + f"mlp.{proj}.weight"] = Q4Slice(w.packed[:k], w.scales[:k], w.group, (k, 64))
        w = q[p + "mlp.down_proj.weight"]
        tq[p + "mlp.down_proj.weight"] = Q4Slice(w.packed[:, : (k + 1) // 2], w.scales[:, : -(-k // 16)], 16, (64, k))
    small = Model.from_hf_tensors(d, tq, qk_layout="interleaved")
    ids = ids_for(20)
    np.testing.assert_array_equal(full.logits(ids), small.logits(ids))


class Q4Slice:
    def __init__(self, packed, scales, group, shape):
        self.packed, self.scales = np.ascontiguousarray(packed), np.ascontiguousarray(scales)
        self.group, self.shape = group, shape


def test_int4_o_proj_groups_straddling_heads_rejected():
    hf, d, sd = make_hf()
    q, _ = quantize_all(runtime_tensors(sd, d), d, group=32, o_group=8)
    o = "model.layers.0.self_attn.o_proj.weight"
    q[o] = Q4(runtime_tensors(sd, d)[o], 32, 1)  # standard layout with group 32 > head_dim 16
    with pytest.raises(uniql.ShapeError, match="layer 0 o_proj.*straddle heads"):
        Model.from_hf_tensors(d, q, qk_layout="interleaved")


# ------------------------------------------------------------------ generation and scoring ----

def test_generate_greedy_sampling_and_eos():
    hf, d, sd = make_hf()
    m = Model.from_hf_tensors(d, sd)
    prompt = [5, 17, 99, 3]
    out = m.generate(prompt, max_new_tokens=6)
    seq = list(prompt)
    for _ in range(6):
        seq.append(int(np.argmax(hf_logits(hf, seq)[-1])))
    assert out == seq[4:]
    s1 = m.generate(prompt, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    s2 = m.generate(prompt, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    s3 = m.generate(prompt, max_new_tokens=8, temperature=5.0, top_p=1.0, seed=8)
    assert s1 == s2 and len(s1) == 8 and s3 != s1
    m_eos = Model.from_hf_tensors({**d, "eos_token_id": out[2]}, sd)
    assert m_eos.generate(prompt, max_new_tokens=6) == out[:out.index(out[2]) + 1]


def test_generate_text_with_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {f"w{i}": i for i in range(128)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    hf, d, sd = make_hf()
    m = Model.from_hf_tensors(d, sd, tokenizer=tok)
    text = m.generate("w5 w17 w99 w3", max_new_tokens=4)
    assert isinstance(text, str)
    assert text == tok.decode(m.generate([5, 17, 99, 3], max_new_tokens=4))


def test_sample_top_p_restricts_to_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    rng = np.array([3], np.uint64)
    draws = [_C.sample(logits, 1.0, 0.75, rng) for _ in range(400)]
    assert set(draws) == {0, 1}  # 0.5 + 0.3 reaches 0.75
    counts = np.bincount([_C.sample(logits, 1.0, 1.0, rng) for _ in range(4000)], minlength=4) / 4000
    assert np.abs(counts - [0.5, 0.3, 0.15, 0.05]).max() < 0.04
    assert _C.sample(logits, 0.0, 1.0, rng) == 0
    with pytest.raises(uniql.InvalidArgumentError, match="top_p"):
        _C.sample(logits, 1.0, 0.0, rng)


def test_nll_and_perplexity_match_torch():
    hf, d, sd = make_hf()
    m = Model.from_hf_tensors(d, sd)
    ids = ids_for(70)
    logits = torch.tensor(hf_logits(hf, ids), dtype=torch.float64)
    tgt = torch.tensor(ids, dtype=torch.long)
    tok_nll = torch.nn.functional.cross_entropy(logits[:-1], tgt[1:], reduction="none").numpy()
    assert np.abs(m.nll(ids) - tok_nll).max() <= 1e-4
    assert m.perplexity(ids, window=70) == pytest.approx(math.exp(tok_nll.mean()), rel=1e-5)
    # sliding windows (HF guide): window 32, stride 16; every window scores only new tokens
    total, count, prev = 0.0, 0, 0
    for begin in range(0, 70, 16):
        end = min(begin + 32, 70)
        lg = torch.tensor(hf_logits(hf, ids[begin:end]), dtype=torch.float64)
        first = max(prev, begin + 1)
        nll = torch.nn.functional.cross_entropy(lg[first - begin - 1:end - begin - 1], tgt[first:end], reduction="sum")
        total, count, prev = total + float(nll), count + end - first, end
        if end == 70:
            break
    assert count == 69
    assert m.perplexity(ids, window=32, stride=16) == pytest.approx(math.exp(total / count), rel=1e-5)


# ---------------------------------------------------------------------- pipeline pieces ----

def test_layer_pieces_compose_and_capture():
    hf, d, sd = make_hf("qwen2")
    m = Model.from_hf_tensors(d, sd, max_chunk=7, kv_dtype="fp32")  # layer_forward runs a float32 cache
    ids = ids_for(25)
    hooks, seen = [], {}
    lay = hf.model.layers[1]
    for name, mod in (("attn_in", lay.self_attn.q_proj), ("attn_out", lay.self_attn.o_proj),
                      ("mlp_in", lay.mlp.gate_proj), ("mlp_z", lay.mlp.down_proj)):
        hooks.append(mod.register_forward_hook(lambda mod, inp, out, n=name: seen.__setitem__(n, inp[0][0].numpy())))
    ref = hf_logits(hf, ids)
    for h in hooks:
        h.remove()
    X = m.embed(ids)
    X, _ = m.layer_forward(0, X)
    Y, cap = m.layer_forward(1, X, capture=("attn_in", "q", "k", "attn_out", "mlp_in", "mlp_z"))
    np.testing.assert_array_equal(m.head(Y), m.logits(ids))
    assert rel_err(m.head(Y), ref) <= HF_REL_TOL
    for name in ("attn_in", "attn_out", "mlp_in", "mlp_z"):
        assert rel_err(cap[name], seen[name]) <= HF_REL_TOL, name
    # q/k after RoPE: interleaved rows of the HF projections, rotated per pair at position t
    t = runtime_tensors(sd, d)
    p = "model.layers.1.self_attn."
    inv = 1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16)
    ang = np.arange(25)[:, None, None] * inv
    for name, heads in (("q", 4), ("k", 2)):
        z = (cap["attn_in"].astype(np.float64) @ t[p + name + "_proj.weight"].T + t[p + name + "_proj.bias"]).reshape(25, heads, 16)
        z0, z1 = z[..., 0::2], z[..., 1::2]
        want = np.stack([z0 * np.cos(ang) - z1 * np.sin(ang), z1 * np.cos(ang) + z0 * np.sin(ang)], -1).reshape(25, -1)
        assert rel_err(cap[name], want) <= REF_REL_TOL, name
    m.set_keep(1, mlp=40, attn=6)
    _, cap = m.layer_forward(1, X, capture=("q", "k", "mlp_z"))
    assert cap["q"].shape == (25, 24) and cap["k"].shape == (25, 12) and cap["mlp_z"].shape == (25, 40)


# ----------------------------------------------------------------------------- bad input ----

def test_bad_inputs_raise_clear_errors():
    hf, d, sd = make_hf()
    m = Model.from_hf_tensors(d, sd, max_seq=16)
    with pytest.raises(ValueError, match="empty"):
        m.logits([])
    with pytest.raises(uniql.RangeError, match="token id 128 at index 1"):
        m.logits([1, 128, 2])
    with pytest.raises(uniql.RangeError, match="token id -1"):
        m.forward([-1])
    with pytest.raises(uniql.DTypeError, match="integer"):
        m.logits(np.array([1.0, 2.0]))
    m.logits(ids_for(10))
    with pytest.raises(uniql.RangeError, match="beyond max_seq 16"):
        m.forward(ids_for(7))
    assert m.position == 10  # a failed call leaves the state unchanged
    with pytest.raises(uniql.RangeError, match="layer 1 MLP keep 97 outside"):
        m.set_keep(1, mlp=97)
    with pytest.raises(uniql.RangeError, match="layer 0 attention keep 7 must be even"):
        m.set_keep(0, attn=7)
    with pytest.raises(uniql.RangeError, match="layer 5 outside"):
        m.set_keep(5, mlp=8)
    with pytest.raises(uniql.RangeError, match="layer 1 attention keep 18"):
        m.set_keep_all(attn=[16, 18])
    assert m.keep(0) == {"mlp": 96, "attn": 16}  # set_keep_all validated before changing anything
    with pytest.raises(ValueError, match="no tokenizer"):
        m.generate("hello")
    with pytest.raises(ValueError, match="window 32 must be in"):
        m.perplexity(ids_for(40), window=32)
    with pytest.raises(uniql.DTypeError, match="float64 is not accepted"):
        Model.from_hf_tensors(d, {**sd, "model.norm.weight": sd["model.norm.weight"].astype(np.float64)})
    missing = dict(sd)
    del missing["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        Model.from_hf_tensors(d, missing)
    with pytest.raises(ValueError, match="unexpected tensors: model.layers.9.foo"):
        Model.from_hf_tensors(d, {**sd, "model.layers.9.foo": sd["model.norm.weight"]})
    bad = dict(sd)
    bad["model.layers.0.mlp.down_proj.weight"] = np.zeros((64, 95), np.float32)
    with pytest.raises(uniql.ShapeError, match=r"layer 0 down_proj: weight shape \(64, 95\), expected \(64, 96\)"):
        Model.from_hf_tensors(d, bad)
    with pytest.raises(uniql.RangeError, match=r"freq_map\[1\]\[2\] = 8 outside \[0, 8\)"):
        fm = np.zeros((2, 8), np.int32)
        fm[1, 2] = 8
        Model.from_hf_tensors(d, sd, freq_maps=[None, fm])

"""Mamba2 / Nemotron-H / Bamba runtime (uniql.models.hybrid + csrc/runtime/ssm.c, csrc/kernels/ssm_kernels.c) against
transformers' torch reference paths: logits (prompt lengths that are and are not multiples of the chunk
size), decode = full forward, chunked = sequential scan, elastic keeps = physically truncated weights, live
switching, the RoPE frequency map, int4 weights, generation/perplexity and bad configs."""
import math

import numpy as np
import pytest

from uniql import FormatError, InvalidArgumentError, RangeError, ShapeError, UnsupportedError
from uniql.compress.quant import dequantize, quantize_rtn
from uniql.compress.steps import f16_scales
from uniql.models.hybrid import BambaConfig, HybridConfig, Mamba2Config, NemotronHConfig, rope_rows
from uniql.models.runtime import Model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# max-abs error / max-abs reference logit, runtime (float32) vs transformers (float32, torch paths)
HF_REL_TOL = 1e-4
# two float32 evaluation orders of the same function in the runtime (chunked vs sequential scan, decode vs prefill)
ORDER_REL_TOL = 1e-5
# int4 kernels (scale once per group) vs fp32 kernels on the dequantized weights
Q4_REL_TOL = 1e-5

CHUNK = 8
ARCHS = ("mamba2", "nemotron_h", "bamba")


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def hf_config(arch, **over):
    if arch == "mamba2":
        base = dict(vocab_size=128, hidden_size=64, num_heads=8, head_dim=16, state_size=16, n_groups=2,
                    num_hidden_layers=2, chunk_size=CHUNK)
        base.update(over)
        return transformers.Mamba2Config(**base)
    if arch == "nemotron_h":
        base = dict(vocab_size=128, hidden_size=64, hybrid_override_pattern="M-M*-", num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, intermediate_size=96, ssm_state_size=16, mamba_num_heads=8,
                    mamba_head_dim=16, n_groups=2, chunk_size=CHUNK)
        base.update(over)
        return transformers.NemotronHConfig(**base, attn_implementation="eager")
    base = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=1,
                mamba_d_state=16, mamba_chunk_size=CHUNK)
    base.update(over)
    return transformers.BambaConfig(**base, attn_implementation="eager")


def make_hf(arch, seed=0, **over):
    """Small random-weight HF model -> (hf model, config dict, numpy state dict). Norms, biases, D, dt_bias and
    A_log are randomised (HF initialises them to constants)."""
    cfg = hf_config(arch, **over)
    torch.manual_seed(seed)
    cls = {"mamba2": transformers.Mamba2ForCausalLM, "nemotron_h": transformers.NemotronHForCausalLM,
           "bamba": transformers.BambaForCausalLM}[arch]
    hf = cls(cfg).float().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "norm" in name or name.endswith(".D") or name.endswith("A_log"):
                shift = 1.0 if ("norm" in name or name.endswith(".D")) else 0.5 if name.endswith("A_log") else 0.0
                p.copy_(torch.randn_like(p) * 0.1 + shift)
    sd = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
    return hf, cfg.to_dict(), sd


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor(np.asarray(ids, np.int64)[None])).logits[0].numpy()


def ids_for(n, seed=1):
    return np.random.default_rng(seed).integers(0, 128, n).astype(np.int32)


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    hf, cd, sd = make_hf(request.param)
    return request.param, hf, cd, sd, Model.from_hf_tensors(cd, sd, max_seq=64)


# ------------------------------------------------------------------------------------ vs transformers ----
@pytest.mark.parametrize("T", [1, 13, 16, 21])
def test_logits_match_transformers(arch_model, T):
    arch, hf, _, _, m = arch_model
    ids = ids_for(T, seed=T)
    assert rel_err(m.logits(ids), hf_logits(hf, ids)) <= HF_REL_TOL


@pytest.mark.parametrize("arch,over", [("mamba2", dict(time_step_limit=(0.05, 0.4))),
                                       ("nemotron_h", dict(time_step_limit=(0.05, 0.4))),
                                       ("nemotron_h", dict(time_step_min=0.9)),
                                       ("mamba2", dict(use_bias=True, n_groups=4, conv_kernel=3)),
                                       ("bamba", dict(attention_bias=True, mlp_bias=True, mamba_proj_bias=True,
                                                      attn_layer_indices=[0, 2], num_key_value_heads=4))])
def test_logits_match_transformers_variants(arch, over):
    """dt clamps that bind (time_step_limit; Nemotron-H's time_step_min only initialises dt_bias), biases,
    groups, conv width, MHA."""
    hf, cd, sd = make_hf(arch, seed=3, **over)
    m = Model.from_hf_tensors(cd, sd, max_seq=32)
    ids = ids_for(19, seed=4)
    assert rel_err(m.logits(ids), hf_logits(hf, ids)) <= HF_REL_TOL


def test_tied_embeddings_mamba2():
    hf, cd, sd = make_hf("mamba2", tie_word_embeddings=True)
    sd.pop("lm_head.weight", None)
    m = Model.from_hf_tensors(cd, sd, max_seq=32)
    ids = ids_for(11)
    assert rel_err(m.logits(ids), hf_logits(hf, ids)) <= HF_REL_TOL


# ----------------------------------------------------------------------------- decode and the scan ----
def test_decode_step_by_step_equals_full_forward(arch_model):
    _, _, _, _, m = arch_model
    ids = ids_for(30, seed=7)
    full = m.logits(ids)
    m.reset()
    rows = [m.forward(ids[:5]), m.forward(ids[5:14])]  # prefill, then a chunked continuation from a state
    rows += [m.forward(ids[t:t + 1]) for t in range(14, 30)]
    assert m.position == 30
    assert rel_err(np.concatenate(rows), full) <= ORDER_REL_TOL


def test_sequential_scan_equals_chunked(arch_model):
    _, _, _, _, m = arch_model
    ids = ids_for(27, seed=8)
    chunked = m.logits(ids)
    m.set_options(sequential_scan=True)
    try:
        seq = m.logits(ids)
    finally:
        m.set_options()
    assert rel_err(seq, chunked) <= ORDER_REL_TOL


def test_small_max_chunk_equals_default():
    """Token chunks of the runtime (max_chunk) smaller than the prompt: same logits."""
    _, cd, sd = make_hf("bamba")
    a = Model.from_hf_tensors(cd, sd, max_seq=40)
    b = Model.from_hf_tensors(cd, sd, max_seq=40, max_chunk=CHUNK)
    ids = ids_for(37, seed=9)
    assert rel_err(b.logits(ids), a.logits(ids)) <= ORDER_REL_TOL


# ----------------------------------------------------------------------------------- elastic keeps ----
def runtime_layout(cfg, sd):
    """HF tensors with Bamba Q/K heads converted to the runtime layout (rotary pairs interleaved first)."""
    sd = dict(sd)
    if cfg.rope_dim:
        for i, t in enumerate(cfg.layer_types):
            if t == "attention":
                for name, heads in (("q_proj", cfg.num_heads), ("k_proj", cfg.num_kv_heads)):
                    idx = rope_rows(heads, cfg.head_dim, cfg.rope_dim)
                    for suf in ("weight", "bias"):
                        key = f"model.layers.{i}.self_attn.{name}.{suf}"
                        if key in sd:
                            sd[key] = np.ascontiguousarray(sd[key][idx])
    return sd


def truncate(cfg, sd, mlp_k, attn_r, ssm_p, ssm_n):
    """Physically truncated copy of runtime-layout tensors at the given keeps (rows/columns per head/group)."""
    out = dict(sd)
    H, P, G, N = cfg.ssm_heads, cfg.ssm_head_dim, cfg.ssm_groups, cfg.ssm_state
    nh, nkv, d, rd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rope_dim
    for key in list(sd):
        if key.endswith("mixer.in_proj.weight") or key.endswith("mamba.in_proj.weight") or key.endswith(
                "in_proj.bias"):
            hp = [h * P + p for h in range(H) for p in range(ssm_p)]
            gn = [g * N + n for g in range(G) for n in range(ssm_n)]
            rows = hp + [H * P + r for r in hp] + [2 * H * P + r for r in gn] + [2 * H * P + G * N + r for r in gn]
            rows += [2 * H * P + 2 * G * N + h for h in range(H)]
            out[key] = np.ascontiguousarray(sd[key][rows])
        elif "conv1d" in key:
            hp = [h * P + p for h in range(H) for p in range(ssm_p)]
            gn = [g * N + n for g in range(G) for n in range(ssm_n)]
            out[key] = np.ascontiguousarray(sd[key][hp + [H * P + r for r in gn] + [H * P + G * N + r for r in gn]])
        elif key.endswith(".norm.weight") and ("mixer" in key or "mamba" in key) and sd[key].shape[0] == H * P:
            out[key] = np.ascontiguousarray(sd[key][[h * P + p for h in range(H) for p in range(ssm_p)]])
        elif key.endswith("out_proj.weight"):
            out[key] = np.ascontiguousarray(sd[key][:, [h * P + p for h in range(H) for p in range(ssm_p)]])
        elif key.endswith("up_proj.weight") or key.endswith("gate_proj.weight") or (
                key.endswith("up_proj.bias") or key.endswith("gate_proj.bias")):
            out[key] = np.ascontiguousarray(sd[key][:mlp_k])
        elif key.endswith("down_proj.weight"):
            out[key] = np.ascontiguousarray(sd[key][:, :mlp_k])
        elif any(key.endswith(f"{p}_proj.{s}") for p in "qkv" for s in ("weight", "bias")):
            heads = nh if ".q_proj." in key else nkv
            rr = attn_r * rd // d
            per = (list(range(rr)) + list(range(rd, rd + attn_r - rr))) if ".v_proj." not in key else list(range(attn_r))
            out[key] = np.ascontiguousarray(sd[key][[h * d + j for h in range(heads) for j in per]])
        elif key.endswith("o_proj.weight"):
            out[key] = np.ascontiguousarray(sd[key][:, [h * d + j for h in range(nh) for j in range(attn_r)]])
    return out


KEEPS = {"mamba2": dict(ssm_head=10, ssm_state=8), "nemotron_h": dict(mlp=40, attn=10, ssm_head=6, ssm_state=12),
         "bamba": dict(mlp=40, attn=8, ssm_head=12, ssm_state=4)}


@pytest.mark.parametrize("kept_state", [False, True])
def test_reduced_keeps_equal_truncated_weights(arch_model, kept_state):
    arch, _, cd, sd, _ = arch_model
    cfg = HybridConfig.from_hf(cd)
    k = KEEPS[arch]
    rt = runtime_layout(cfg, sd)
    full = Model.from_hf_tensors(cfg, rt, qk_layout="interleaved", max_seq=40)
    full.set_keep_all(**k)
    full.set_options(kept_state=kept_state)
    tr = truncate(cfg, rt, k.get("mlp", 0), k.get("attn", 0), k["ssm_head"], k["ssm_state"])
    small = Model.from_hf_tensors(cfg, tr, qk_layout="interleaved", max_seq=40)
    for i in range(cfg.num_hidden_layers):
        assert small.stored(i) == full.keep(i)
    ids = ids_for(29, seed=11)
    a, b = full.logits(ids), small.logits(ids)
    np.testing.assert_array_equal(a, b)  # same float operations: bit-identical
    full.reset(), small.reset()
    full.forward(ids[:9]), small.forward(ids[:9])
    np.testing.assert_array_equal(full.forward(ids[9:10]), small.forward(ids[9:10]))  # decode step too
    assert small.memory_bytes() < full.memory_bytes()


def test_keep_switch_between_tokens_is_exact_for_the_state():
    """With the default policy the SSM state is computed for every stored channel, so a keep change between
    tokens does not disturb it: in a one-layer Mamba2 model the logits after prefilling at reduced keeps and
    decoding at full keep equal those of a full-keep run (the KEPT_STATE option does not have this property)."""
    hf, cd, sd = make_hf("mamba2", num_hidden_layers=1)
    m = Model.from_hf_tensors(cd, sd, max_seq=32)
    ids = ids_for(20, seed=12)
    ref = m.logits(ids)[12:]
    m.reset()
    m.set_keep_all(ssm_head=6, ssm_state=4)
    m.forward(ids[:12])
    m.set_keep_all(ssm_head=16, ssm_state=16)
    live = np.concatenate([m.forward(ids[t:t + 1]) for t in range(12, 20)])
    assert rel_err(live, ref) <= ORDER_REL_TOL
    m.set_options(kept_state=True)
    m.reset()
    m.set_keep_all(ssm_head=6, ssm_state=4)
    m.forward(ids[:12])
    m.set_keep_all(ssm_head=16, ssm_state=16)
    stale = np.concatenate([m.forward(ids[t:t + 1]) for t in range(12, 20)])
    assert rel_err(stale, ref) > 1e-3


def test_rope_frequency_map():
    """Bamba: permuting the rotary pairs of every Q/K head (same permutation per KV group) and passing the
    original frequency index of each pair gives the same logits."""
    hf, cd, sd = make_hf("bamba", seed=5)
    cfg = HybridConfig.from_hf(cd)
    rt = runtime_layout(cfg, sd)
    d, rd, nkv, hpg = cfg.head_dim, cfg.rope_dim, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
    rng = np.random.default_rng(0)
    perms = [rng.permutation(rd // 2) for _ in range(nkv)]
    for name, heads in (("q_proj", cfg.num_heads), ("k_proj", nkv)):
        key = f"model.layers.1.self_attn.{name}.weight"
        rows = []
        for h in range(heads):
            pm = perms[h // hpg if name == "q_proj" else h]
            rows += [h * d + 2 * j + e for j in pm for e in (0, 1)] + [h * d + j for j in range(rd, d)]
        rt[key] = np.ascontiguousarray(rt[key][rows])
    fmaps = [None, np.stack(perms).astype(np.int32), None]
    m = Model.from_hf_tensors(cfg, rt, qk_layout="interleaved", freq_maps=fmaps, max_seq=32)
    ids = ids_for(17, seed=6)
    assert rel_err(m.logits(ids), hf_logits(hf, ids)) <= HF_REL_TOL


def test_int4_in_proj_out_proj_equal_dequantized(w4a32):
    _, cd, sd = make_hf("nemotron_h", seed=2)
    q4 = dict(sd)
    deq = dict(sd)
    for key in ("model.layers.0.mixer.in_proj.weight", "model.layers.0.mixer.out_proj.weight"):
        # out_proj: one group per 16-channel head; scales rounded to float16 as the compressor stores them (the runtime
        # keeps them in float16)
        q = f16_scales(quantize_rtn(np.ascontiguousarray(sd[key]), group=16))
        q4[key] = q
        deq[key] = dequantize(q)
    a = Model.from_hf_tensors(cd, q4, max_seq=32)
    b = Model.from_hf_tensors(cd, deq, max_seq=32)
    ids = ids_for(15, seed=3)
    assert rel_err(a.logits(ids), b.logits(ids)) <= Q4_REL_TOL
    for m in (a, b):
        m.set_keep_all(ssm_head=8, ssm_state=8)
    assert rel_err(a.logits(ids), b.logits(ids)) <= Q4_REL_TOL


def test_int4_mamba_in_proj_runs_as_r16_parts_same_w4a8_logits(monkeypatch):
    """An int4 Mamba in_proj is loaded as five row parts (z, x, B, C in the kernels' R16 layout, dt row-major) so that
    it runs on the R16 W4A8 kernels, like every other linear; the fused row-major weight (read as row views) was the
    only path before. With int8 activations both layouts compute the same exact integer group sums, scaled and added
    in group order, so the logits are bit-identical to the fused path at full and reduced keeps; with fp32
    activations the R16 kernels add in another order (within Q4_REL_TOL of the dequantized fp32 model, above)."""
    import uniql
    import uniql.models.runtime as runtime

    _, cd, sd = make_hf("mamba2", seed=4)
    q4 = dict(sd)
    for i in range(cd["num_hidden_layers"]):
        for key in (f"backbone.layers.{i}.mixer.in_proj.weight", f"backbone.layers.{i}.mixer.out_proj.weight"):
            q4[key] = quantize_rtn(np.ascontiguousarray(sd[key]), group=16)
    parts = Model.from_hf_tensors(cd, q4, max_seq=32)
    lay = parts._specs[3][0]
    assert "in_proj" not in lay and [len(sp) > 5 and sp[5] is not None for sp in lay["in_parts"]] == [True] * 4 + [False]
    monkeypatch.setattr(runtime, "mamba_in_parts", lambda *a: None)  # the fused row-major in_proj
    fused = Model.from_hf_tensors(cd, q4, max_seq=32)
    assert "in_parts" not in fused._specs[3][0]
    ids = ids_for(19, seed=8)
    with uniql.int4_activations("int8"):
        np.testing.assert_array_equal(parts.logits(ids), fused.logits(ids))
        for m in (parts, fused):
            m.set_keep_all(ssm_head=8, ssm_state=8)
        np.testing.assert_array_equal(parts.logits(ids), fused.logits(ids))
    with uniql.int4_activations("fp32"):
        assert rel_err(parts.logits(ids), fused.logits(ids)) <= Q4_REL_TOL


def test_truncate_needs_attention_only(arch_model):
    """Rewinding to a shared prefix (the runtime's hy_state_truncate, ``Model.truncate``) is refused for a model with
    Mamba layers, whose state folds every token: ``can_truncate`` says so and ``truncate`` raises."""
    from uniql import _C

    arch, _, _, _, m = arch_model
    assert m.can_truncate == ("mamba" not in m.layer_types)
    if not m.can_truncate:
        with pytest.raises(UnsupportedError, match="Mamba layers cannot go back"):
            m.truncate(0)
    m.logits(ids_for(6, seed=2))
    _C.hy_state_truncate(m._state, 6)  # the current position: nothing to undo
    with pytest.raises(UnsupportedError, match="cannot go back"):
        _C.hy_state_truncate(m._state, 3)
    assert m.position == 6


# ---------------------------------------------------------------------------- generation, accounting ----
def test_generate_and_perplexity(arch_model):
    _, _, _, _, m = arch_model
    prompt = ids_for(6, seed=13)
    out = m.generate(prompt, max_new_tokens=5)
    seq = list(prompt)
    for tok in out:  # greedy: each token is the argmax of the full-sequence logits so far
        assert tok == int(np.argmax(m.logits(np.array(seq))[-1]))
        seq.append(tok)
    ids = ids_for(24, seed=14)
    assert m.perplexity(ids, window=24) == pytest.approx(math.exp(m.nll(ids).mean()), rel=1e-12)
    assert m.memory_bytes() > sum(a.nbytes for a in m._arrays) > 0


# -------------------------------------------------------------------------------------- bad inputs ----
def test_bad_configs():
    _, cd, _ = make_hf("nemotron_h")
    with pytest.raises(UnsupportedError, match="layer 2.*mixture-of-experts"):
        NemotronHConfig.from_hf({**cd, "layers_block_type": None, "hybrid_override_pattern": "M-E*"})
    with pytest.raises(UnsupportedError, match="layer 1: unknown layer type 'X'"):
        HybridConfig.from_hf({**cd, "layers_block_type": None, "hybrid_override_pattern": "MX"})
    with pytest.raises(UnsupportedError, match="mlp_hidden_act 'gelu'"):
        HybridConfig.from_hf({**cd, "mlp_hidden_act": "gelu"})
    with pytest.raises(ShapeError, match="inconsistent head counts.*Mamba heads 8.*n_groups 3"):
        HybridConfig.from_hf({**cd, "n_groups": 3})
    _, md, _ = make_hf("mamba2")
    with pytest.raises(ShapeError, match="inconsistent head counts.*hidden_size x expand = 128.*8 x 12"):
        Mamba2Config.from_hf({**md, "head_dim": 12})
    _, bd, _ = make_hf("bamba")
    with pytest.raises(ShapeError, match="inconsistent head counts.*num_attention_heads 4.*num_key_value_heads 3"):
        BambaConfig.from_hf({**bd, "num_key_value_heads": 3})
    with pytest.raises(FormatError, match=r"attn_layer_indices \[5\]"):
        BambaConfig.from_hf({**bd, "attn_layer_indices": [5]})
    with pytest.raises(FormatError, match="config vocab_size must be a positive int"):
        BambaConfig.from_hf({**bd, "vocab_size": 0})
    with pytest.raises(FormatError, match="norm_eps must be > 0"):
        BambaConfig.from_hf({**bd, "rms_norm_eps": 0.0})
    with pytest.raises(FormatError, match="rope_theta must be > 0"):
        BambaConfig.from_hf({**bd, "rope_theta": 0.0, "rope_parameters": {**(bd.get("rope_parameters") or {}),
                                                                            "rope_theta": 0.0}})
    with pytest.raises(UnsupportedError, match="conv_kernel 65 is larger than 64"):
        Mamba2Config.from_hf({**md, "conv_kernel": 65})
    with pytest.raises(UnsupportedError, match="unsupported model_type 'llama'"):
        HybridConfig.from_hf({**bd, "model_type": "llama"})


def test_bad_tensors_and_keeps(arch_model):
    arch, _, cd, sd, m = arch_model
    bad = dict(sd)
    key = next(k for k in sd if k.endswith("out_proj.weight"))
    bad[key] = np.ascontiguousarray(sd[key][:, :-3])
    with pytest.raises(ShapeError, match="layer 0 out_proj"):
        Model.from_hf_tensors(cd, bad)
    with pytest.raises(FormatError, match="unexpected tensors: extra.weight"):
        Model.from_hf_tensors(cd, {**sd, "extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(FormatError, match="missing tensor"):
        Model.from_hf_tensors(cd, {k: v for k, v in sd.items() if k != key})
    with pytest.raises(InvalidArgumentError, match="qk_layout must be"):
        Model.from_hf_tensors(cd, sd, qk_layout="sideways")
    with pytest.raises(RangeError, match="layer 0 SSM state keep 17 outside \\[1, 16\\]"):
        m.set_keep(0, ssm_state=17)
    with pytest.raises(RangeError, match="layer 0 has no attention component"):
        m.set_keep(0, attn=8)
    with pytest.raises(RangeError, match="layer 9 outside"):
        m.set_keep(9, ssm_head=2)
    with pytest.raises(RangeError, match="token id 128 at index 1"):
        m.logits([1, 128])
    with pytest.raises(RangeError, match="beyond max_seq 64"):
        m.logits(ids_for(65))
    if arch == "bamba":
        with pytest.raises(RangeError, match="layer 1 attention keep 6 .*whole RoPE pairs"):
            m.set_keep(1, attn=6)
    assert all(m.keep(i) == m.stored(i) for i in range(m.num_layers))  # failed calls changed nothing

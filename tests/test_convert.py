"""GGUF -> Hugging Face conversion (uniql.formats.gguf): tiny GGUF files written here with gguf.GGUFWriter from random
transformers models (Q/K rows permuted exactly like llama.cpp's converter) must convert back to the original
tensors bit for bit; the real SmolLM2 GGUF must match transformers' own GGUF loader bit for bit."""
from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest

import uniql
import uniql.formats.safetensors
from uniql.formats import checkpoint
from uniql.formats import gguf as convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LOGIT_ATOL = 1e-5  # float32 forward of identical weights through transformers twice (same kernels): ~0


def llamacpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute, verbatim in behaviour (the forward transform we invert)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_TO_GGUF = {v: k for k, v in convert._LAYER_NAMES.items()}


def hf_to_gguf_name(name: str) -> str:
    if name.startswith("model.layers."):
        _, _, i, rest = name.split(".", 3)
        mod, suffix = rest.rsplit(".", 1)
        return f"blk.{i}.{_TO_GGUF[mod]}.{suffix}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}[name]


def tiny_model(arch: str = "llama", *, tied: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=5000.0,
                  tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    model.eval()
    # norms are initialised to 1: randomise them so a wrong mapping cannot hide
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith(".bias"):
                p.copy_(torch.rand_like(p) + 0.5)
    return model


def reference_tensors(model) -> dict[str, np.ndarray]:
    sd = {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def write_tiny_gguf(path: Path, model, *, arch: str = "llama", qtypes: dict[str, object] | None = None,
                    drop: tuple[str, ...] = (), gguf_arch: str | None = None) -> Path:
    """A GGUF of `model` as llama.cpp would write it (F32 unless `qtypes` names a GGML type per HF name)."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), gguf_arch or arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, t in reference_tensors(model).items():
        if name in drop:
            continue
        gname = hf_to_gguf_name(name)
        if arch == "llama" and ".attn_q." in gname:
            t = llamacpp_permute(t, cfg.num_attention_heads, cfg.num_attention_heads)
        elif arch == "llama" and ".attn_k." in gname:
            t = llamacpp_permute(t, cfg.num_attention_heads, cfg.num_key_value_heads)
        q = (qtypes or {}).get(name)
        if q is None:
            w.add_tensor(gname, np.ascontiguousarray(t, dtype=np.float32))
        elif q == gguf.GGMLQuantizationType.F16:
            w.add_tensor(gname, t.astype(np.float16))
        else:
            w.add_tensor(gname, gguf.quants.quantize(t, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    model = tiny_model("llama", tied=True)
    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", model)
    return model, path


def test_unpermute_inverts_llamacpp_permute(rng):
    for n_head, n_kv, d, cols in [(4, 4, 16, 8), (9, 3, 64, 5), (2, 1, 2, 3), (6, 2, 8, 1)]:
        q = rng.standard_normal((n_head * d, cols)).astype(np.float32)
        k = rng.standard_normal((n_kv * d, cols)).astype(np.float32)
        assert np.array_equal(convert.unpermute_qk(llamacpp_permute(q, n_head, n_head), n_head), q)
        assert np.array_equal(convert.unpermute_qk(llamacpp_permute(k, n_head, n_kv), n_kv), k)
        b = rng.standard_normal(n_kv * d).astype(np.float32)  # 1-D (bias) rows permute the same way
        assert np.array_equal(convert.unpermute_qk(llamacpp_permute(b, n_head, n_kv), n_kv), b)


def test_unpermute_rejects_odd_head_rows():
    with pytest.raises(uniql.FormatError, match="un-permute 12 rows into 4 heads"):
        convert.unpermute_qk(np.zeros((12, 3), np.float32), 4)


def test_gguf_name_mapping():
    assert convert.gguf_to_hf_name("blk.11.attn_output.weight") == "model.layers.11.self_attn.o_proj.weight"
    assert convert.gguf_to_hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert convert.gguf_to_hf_name("blk.3.attn_k.bias") == "model.layers.3.self_attn.k_proj.bias"
    assert convert.gguf_to_hf_name("output.weight") == "lm_head.weight"
    assert convert.gguf_to_hf_name("token_embd.weight") == "model.embed_tokens.weight"
    with pytest.raises(uniql.UnsupportedError, match="rope_freqs.weight"):
        convert.gguf_to_hf_name("rope_freqs.weight")
    with pytest.raises(uniql.UnsupportedError, match="blk.0.ffn_gate_exps.weight"):
        convert.gguf_to_hf_name("blk.0.ffn_gate_exps.weight")


def test_convert_tiny_llama_exact(llama_gguf, tmp_path):
    model, path = llama_gguf
    out = convert.convert_gguf(path, tmp_path / "hf")
    assert out == tmp_path / "hf"
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors"]
    got = checkpoint.read_tensors(out)
    ref = reference_tensors(model)
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].dtype == np.float32 and np.array_equal(got[k], ref[k]), k
    cfg = json.loads((out / "config.json").read_text())
    src = model.config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "vocab_size", "tie_word_embeddings",
                "bos_token_id", "eos_token_id"):
        assert cfg[key] == getattr(src, key), key
    assert cfg["rms_norm_eps"] == pytest.approx(src.rms_norm_eps, rel=1e-6)  # GGUF stores it as float32
    assert cfg["rope_theta"] == src.rope_parameters["rope_theta"] == cfg["rope_parameters"]["rope_theta"]
    assert cfg["architectures"] == ["LlamaForCausalLM"] and checkpoint.read_config(out)["model_type"] == "llama"


def test_converted_dir_loads_in_transformers(llama_gguf, tmp_path):
    model, path = llama_gguf
    out = convert.convert_gguf(path, tmp_path / "hf")
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert back.config.rope_parameters["rope_theta"] == model.config.rope_parameters["rope_theta"]
    ids = torch.tensor([[1, 5, 17, 42, 90, 3, 7]])
    with torch.no_grad():
        ref, got = model(ids).logits, back(ids).logits
    assert torch.allclose(ref, got, atol=LOGIT_ATOL, rtol=0)


def test_convert_untied_qwen2_with_biases(tmp_path):
    model = tiny_model("qwen2", tied=False, seed=1)
    path = write_tiny_gguf(tmp_path / "tiny-qwen2.gguf", model, arch="qwen2")
    out = convert.convert_gguf(path, tmp_path / "hf")
    got, ref = checkpoint.read_tensors(out), reference_tensors(model)
    assert "lm_head.weight" in got and "model.layers.1.self_attn.q_proj.bias" in got
    assert set(got) == set(ref)
    for k in ref:
        assert np.array_equal(got[k], ref[k]), k
    cfg = checkpoint.read_config(out)
    assert cfg["model_type"] == "qwen2" and cfg["tie_word_embeddings"] is False


def test_convert_f16_and_quantized_tensors(tmp_path):
    model = tiny_model("llama", tied=False, seed=2)
    T = gguf.GGMLQuantizationType
    qtypes = {"model.layers.0.self_attn.q_proj.weight": T.Q8_0, "model.layers.0.mlp.down_proj.weight": T.Q4_1,
              "model.layers.1.self_attn.k_proj.weight": T.F16, "lm_head.weight": T.Q4_0}
    path = write_tiny_gguf(tmp_path / "q.gguf", model, qtypes=qtypes)
    got = checkpoint.read_tensors(convert.convert_gguf(path, tmp_path / "hf"))
    ref = reference_tensors(model)
    heads = {"q_proj": model.config.num_attention_heads, "k_proj": model.config.num_key_value_heads}
    for name, q in qtypes.items():
        t = ref[name]
        head = next((h for key, h in heads.items() if key in name), None)
        if head is not None:  # expected = un-permute(dequantize(quantize(permute(t))))
            t = llamacpp_permute(t, model.config.num_attention_heads, head)
        if q == T.F16:
            expected = t.astype(np.float16).astype(np.float32)
        else:
            expected = gguf.quants.dequantize(gguf.quants.quantize(t, q), q)
        if head is not None:
            expected = convert.unpermute_qk(expected, head)
        assert np.array_equal(got[name], expected), name
        assert not np.array_equal(got[name], ref[name]), name  # the quantization really happened
    for k in set(ref) - set(qtypes):
        assert np.array_equal(got[k], ref[k]), k


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_convert_half_output(llama_gguf, tmp_path, dtype):
    model, path = llama_gguf
    out = convert.convert_gguf(path, tmp_path / "hf16", dtype=dtype)
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype
    with uniql.formats.safetensors.safe_open(out / "model.safetensors") as f:
        assert {f.info(k)[0] for k in f.keys()} == {"F16" if dtype == "float16" else "BF16"}
    got = checkpoint.read_tensors(out)
    tdtype = torch.float16 if dtype == "float16" else torch.bfloat16
    for k, t in reference_tensors(model).items():
        assert np.array_equal(got[k], torch.from_numpy(t).to(tdtype).float().numpy()), k


def test_existing_output_needs_overwrite(llama_gguf, tmp_path):
    _, path = llama_gguf
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(convert.OutputExistsError, match="not empty") as e:
        convert.convert_gguf(path, out)
    assert isinstance(e.value, FileExistsError) and str(out) in str(e.value)
    assert os.listdir(out) == ["keep.txt"]
    assert os.listdir(tmp_path) == ["hf"]  # no temporary directory left behind
    convert.convert_gguf(path, out, overwrite=True)
    assert "keep.txt" not in os.listdir(out) and (out / "model.safetensors").is_file()
    assert sorted(os.listdir(tmp_path)) == ["hf"]
    empty = tmp_path / "empty"
    empty.mkdir()
    convert.convert_gguf(path, empty)  # an existing empty directory is fine
    assert (empty / "config.json").is_file()


def test_failed_conversion_leaves_nothing(llama_gguf, tmp_path, monkeypatch):
    _, path = llama_gguf

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(uniql.formats.safetensors, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        convert.convert_gguf(path, tmp_path / "hf")
    assert os.listdir(tmp_path) == []


def test_bad_inputs(llama_gguf, tmp_path):
    model, path = llama_gguf
    with pytest.raises(checkpoint.ModelNotFoundError, match="missing.gguf"):
        convert.convert_gguf(tmp_path / "missing.gguf", tmp_path / "o1")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(uniql.FormatError, match="junk.gguf.*not a readable GGUF"):
        convert.convert_gguf(junk, tmp_path / "o2")
    with pytest.raises(uniql.InvalidArgumentError, match="dtype"):
        convert.convert_gguf(path, tmp_path / "o3", dtype="int8")
    with pytest.raises(uniql.InvalidArgumentError, match="out_dir is required"):
        convert.convert_gguf(path)
    with pytest.raises(uniql.FormatError, match="no tokenizer"):
        convert.convert_gguf(path, tmp_path / "o4", tokenizer=True)
    gpt = write_tiny_gguf(tmp_path / "gpt2.gguf", model, gguf_arch="gpt2")
    with pytest.raises(uniql.UnsupportedError, match="architecture 'gpt2' is not supported.*llama, qwen2"):
        convert.convert_gguf(gpt, tmp_path / "o5")
    holed = write_tiny_gguf(tmp_path / "holed.gguf", model, drop=("model.layers.1.mlp.up_proj.weight",))
    with pytest.raises(uniql.FormatError, match="lacks the tensor for 'model.layers.1.mlp.up_proj.weight'"):
        convert.convert_gguf(holed, tmp_path / "o6")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2.gguf", "holed.gguf", "junk.gguf"]


# ------------------------------------------------------------------------------------- real model ----

def _smollm2():
    from uniql import data

    try:
        return data.smollm2_gguf()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.mark.realmodel
def test_smollm2_matches_transformers_gguf_loader(tmp_path):
    """Our conversion of the real Q4_1 SmolLM2 file equals transformers' GGUF loader (dequantize + un-permute)
    tensor for tensor, its config matches, and the rebuilt tokenizer.json encodes like transformers' tokenizer."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    src = _smollm2()
    out = convert.convert_gguf(src, tmp_path / "smollm2")
    ours = checkpoint.read_tensors(out)
    hf_cfg = transformers.AutoConfig.from_pretrained(str(src.parent), gguf_file=src.name)
    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(hf_cfg)
    theirs = load_gguf_checkpoint(str(src), return_tensors=True, model_to_load=skeleton)["tensors"]
    assert set(ours) == set(theirs) and len(ours) == 272
    for k, t in theirs.items():
        assert np.array_equal(ours[k], t.numpy()), k
    cfg = checkpoint.read_config(out)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "vocab_size",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "rope_parameters"):
        assert cfg[key] == getattr(hf_cfg, key), key
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (30, 576, 49152)
    tok = checkpoint.load_tokenizer(out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    text = "The quick brown fox jumps over the lazy dog. Ünïcödé, 12345 and   spaces\n<|im_start|>user"
    assert tok.encode(text).ids == hf_tok(text)["input_ids"]
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text

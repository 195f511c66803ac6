"""Checkpoint reading (uniql.formats.checkpoint): tiny random transformers models saved with save_pretrained (single file
and sharded; fp32, fp16, bf16) read back bit-exactly as float32; every bad input raises the documented class with a
message naming the file / tensor / shard at fault."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import uniql
import uniql.formats.safetensors as ust
from uniql.formats import checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHARD_SIZE = "40KB"  # tiny model below: ~11 shards


def _tiny_llama(tied: bool = True):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(torch.rand_like(p) + 0.5)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{(dtype, sharded): (directory, reference float32 tensors)} for one tiny Llama."""
    model = _tiny_llama()
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for dtype in ("float32", "float16", "bfloat16"):
        m = model.to(getattr(torch, dtype))
        ref = {k: v.float().numpy().copy() for k, v in m.state_dict().items() if k != "lm_head.weight"}
        for sharded in (False, True):
            d = root / f"{dtype}-{'sharded' if sharded else 'single'}"
            m.save_pretrained(d, max_shard_size=SHARD_SIZE if sharded else "1GB")
            out[(dtype, sharded)] = (d, ref)
    return out


@pytest.fixture
def sharded_copy(saved, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(saved[("float32", True)][0], d)
    return d


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_read_tensors_exact(saved, dtype, sharded):
    d, ref = saved[(dtype, sharded)]
    assert (d / checkpoint.INDEX_FILE).is_file() == sharded
    if sharded:
        assert len(list(d.glob("model-*.safetensors"))) > 2
    got = checkpoint.read_tensors(d)
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k].dtype == np.float32 and got[k].flags.c_contiguous and got[k].flags.writeable, k
        assert np.array_equal(got[k], v), k


def test_read_subset_and_missing_name(saved):
    d, ref = saved[("bfloat16", True)]
    names = ["model.norm.weight", "model.layers.1.mlp.down_proj.weight"]
    got = checkpoint.read_tensors(d, names=names)
    assert sorted(got) == sorted(names)  # exactly the requested tensors (in shard order, not request order)
    for k in names:
        assert np.array_equal(got[k], ref[k])
    with pytest.raises(uniql.FormatError, match="'model.layers.7.mlp.up_proj.weight' not found"):
        checkpoint.read_tensors(d, names=["model.norm.weight", "model.layers.7.mlp.up_proj.weight"])


def test_read_config(saved, tmp_path):
    d, _ = saved[("float32", False)]
    cfg = checkpoint.read_config(d)
    assert cfg["model_type"] == "llama" and cfg["hidden_size"] == 64 and cfg["num_key_value_heads"] == 2
    # model_type missing: inferred from architectures
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "hidden_size": 8}))
    assert checkpoint.read_config(tmp_path)["model_type"] == "qwen2"


def _write_config(d: Path, obj) -> Path:
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return d


def test_config_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(checkpoint.ModelNotFoundError, match="nope.*does not exist") as e:
        checkpoint.read_config(missing)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, uniql.UniqlError)
    f = tmp_path / "file.gguf"
    f.write_bytes(b"x")
    with pytest.raises(checkpoint.ModelNotFoundError, match="not a directory.*uniql convert"):
        checkpoint.read_config(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(checkpoint.ModelNotFoundError, match="config.json.*not found"):
        checkpoint.read_config(empty)
    with pytest.raises(uniql.FormatError, match=r"not valid JSON: Expecting .* line 1 column"):
        checkpoint.read_config(_write_config(tmp_path / "badjson", '{"model_type": "llama",'))
    with pytest.raises(uniql.FormatError, match="duplicate key 'model_type'"):
        checkpoint.read_config(_write_config(tmp_path / "dup", '{"model_type": "llama", "model_type": "gpt2"}'))
    with pytest.raises(uniql.FormatError, match="JSON object, not list"):
        checkpoint.read_config(_write_config(tmp_path / "list", [1, 2]))
    notutf8 = _write_config(tmp_path / "latin1", "{}")
    (notutf8 / "config.json").write_bytes(b'{"model_type": "caf\xe9"}')
    with pytest.raises(uniql.FormatError, match="not valid UTF-8"):
        checkpoint.read_config(notutf8)
    with pytest.raises(uniql.UnsupportedError, match=r"model_type 'gpt2' is not supported \(supported: llama, qwen2"):
        checkpoint.read_config(_write_config(tmp_path / "gpt2", {"model_type": "gpt2"}))
    with pytest.raises(uniql.UnsupportedError, match="'LlamaForSequenceClassification' is not supported"):
        checkpoint.read_config(_write_config(tmp_path / "cls", {"model_type": "llama",
                                                               "architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(uniql.UnsupportedError, match="no 'model_type'.*supported model types: llama, qwen2"):
        checkpoint.read_config(_write_config(tmp_path / "bert", {"architectures": ["BertModel"]}))


def test_missing_weights(tmp_path):
    d = _write_config(tmp_path / "m", {"model_type": "llama"})
    with pytest.raises(checkpoint.ModelNotFoundError, match="no model.safetensors or model.safetensors.index.json"):
        checkpoint.read_tensors(d)


def _index(d: Path) -> dict:
    return json.loads((d / checkpoint.INDEX_FILE).read_text())


def _write_index(d: Path, index: dict) -> None:
    (d / checkpoint.INDEX_FILE).write_text(json.dumps(index))


def test_index_names_missing_shard(sharded_copy):
    d = sharded_copy
    index = _index(d)
    name, shard = next(iter(index["weight_map"].items()))
    (d / shard).unlink()
    with pytest.raises(uniql.FormatError, match=f"shard '{shard}' \\(for tensor '{name}'\\), which does not exist"):
        checkpoint.read_tensors(d)


def test_index_tensor_not_in_its_shard(sharded_copy):
    d = sharded_copy
    index = _index(d)
    wmap = index["weight_map"]
    shards = sorted(set(wmap.values()))
    name = "model.norm.weight"
    other = next(s for s in shards if s != wmap[name])
    wmap[name] = other
    _write_index(d, index)
    with pytest.raises(uniql.FormatError,
                       match=f"puts tensor '{name}' in shard '{other}', but that shard does not contain it"):
        checkpoint.read_tensors(d)


def test_tensor_in_two_shards(sharded_copy):
    d = sharded_copy
    index = _index(d)
    name = "model.norm.weight"
    first = index["weight_map"][name]
    with ust.safe_open(d / first) as f:
        dup = {name: f.get(name, copy=True)}
    index["weight_map"]["extra-marker"] = "extra.safetensors"  # index the extra shard through another name
    ust.save_file(d / "extra.safetensors", {**dup, "extra-marker": np.zeros(1, np.float32)})
    _write_index(d, index)
    with pytest.raises(uniql.FormatError, match=f"'{name}' is stored in two shards: '.*' and '.*'"):
        checkpoint.read_tensors(d)


def test_index_errors(sharded_copy):
    d = sharded_copy
    (d / checkpoint.INDEX_FILE).write_text("{not json")
    with pytest.raises(uniql.FormatError, match="shard index .*model.safetensors.index.json.* not valid JSON"):
        checkpoint.read_tensors(d)
    _write_index(d, {"metadata": {}})
    with pytest.raises(uniql.FormatError, match="no 'weight_map'"):
        checkpoint.read_tensors(d)
    _write_index(d, {"weight_map": {"model.norm.weight": "../elsewhere.safetensors"}})
    with pytest.raises(uniql.FormatError, match="'model.norm.weight' maps to '../elsewhere.safetensors'"):
        checkpoint.read_tensors(d)


def test_corrupt_and_unsupported_tensors(saved, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(saved[("float32", False)][0], d)
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(uniql.FormatError, match="model.safetensors"):
        checkpoint.read_tensors(d)
    ust.save_file(d / "model.safetensors", {"model.norm.weight": np.ones(4, np.float32),
                                             "position_ids": np.arange(4, dtype=np.int64)})
    with pytest.raises(uniql.UnsupportedError, match="'position_ids' .* dtype int64"):
        checkpoint.read_tensors(d)


def test_load_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    d = _write_config(tmp_path / "m", {"model_type": "llama"})
    assert checkpoint.load_tokenizer(d) is None
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(d / "tokenizer.json"))
    assert checkpoint.load_tokenizer(d).encode("hello world zzz").ids == [1, 2, 0]
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    with pytest.raises(uniql.FormatError, match="tokenizer .*tokenizer.json.* is malformed"):
        checkpoint.load_tokenizer(d)
    (d / "tokenizer.json").write_bytes(b'{"version": "1.0", "added_tokens": ["\xff\xfe"]}')
    with pytest.raises(uniql.FormatError, match="tokenizer .*tokenizer.json.* is not valid UTF-8 \\(byte"):
        checkpoint.load_tokenizer(d)


def test_load_rejects_rate_and_artifacts(saved, tmp_path):
    d, _ = saved[("float32", False)]
    with pytest.raises(uniql.InvalidArgumentError, match="only be loaded at rate 0 .*uniql compress"):
        checkpoint.load(d, rate=0.25)
    with pytest.raises(uniql.InvalidArgumentError, match=r"rate must be in \[0, 1\)"):
        checkpoint.load(d, rate=1.5)
    # config.json["uniql"] routes to the artifact reader (rate allowed), which rejects an incomplete section
    art = _write_config(tmp_path / "art", {"model_type": "llama", "uniql": {"format_version": 1}})
    assert checkpoint.is_artifact(checkpoint.read_raw_config(art))
    with pytest.raises(uniql.FormatError, match="uniql section"):
        checkpoint.load(art, rate=0.25)
    with pytest.raises(checkpoint.ModelNotFoundError, match="does not exist"):
        checkpoint.load(tmp_path / "nothing")


LOGIT_ATOL = 2e-4  # C runtime fp32 vs PyTorch fp32 on a 2-layer model, logits of size ~1


def test_load_runs_like_transformers(saved):
    from uniql.models.runtime import Model  # our own module: an import failure is a failure, not a skip

    d, _ = saved[("float32", True)]
    model = checkpoint.load(d)
    assert isinstance(model, Model)
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = [1, 5, 17, 42, 90, 3, 7]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    got = np.asarray(model.logits(ids)).reshape(ref.shape)
    np.testing.assert_allclose(got, ref, atol=LOGIT_ATOL, rtol=0)
    assert uniql.load is checkpoint.load


def test_load_routes_state_space_models_to_the_hybrid_runtime(tmp_path):
    """uniql.load on a saved Mamba2 checkpoint runs it in the C hybrid runtime (logits as transformers)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from uniql.models.runtime import Model

    torch.manual_seed(0)
    cfg = transformers.Mamba2Config(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_heads=8, head_dim=16,
                                    state_size=16, n_groups=2, expand=2, chunk_size=8, conv_kernel=4,
                                    tie_word_embeddings=False)
    model = transformers.Mamba2ForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "m")
    m = uniql.load(tmp_path / "m")
    assert isinstance(m, Model)
    ids = np.arange(1, 14)
    with torch.no_grad():
        ref = model(torch.tensor(ids[None])).logits[0].numpy()
    assert np.abs(m.logits(ids) - ref).max() <= 1e-4 * np.abs(ref).max()

"""Helpers shared by several test files (imported as ``from _helpers import ...``; pytest puts tests/ on the path).

Fixtures live in conftest.py; these are plain functions that tests call with their own sizes and paths.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from uniql.formats import gguf as convert
from uniql.formats import safetensors as st


def tiny_llama_config(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int,
                      head_dim: int) -> dict:
    """config.json of a tiny random Llama (untied embeddings, 64 positions)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
            "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
            "tie_word_embeddings": False}


def tiny_llama_tensors(cfg: dict, seed: int = 0,
                       shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Random float32 weights of a tiny Llama under Hugging Face names (std 0.05, norms around 1), drawn in the
    order of `shapes` (default: the converter's ``_expected_shapes(cfg)``)."""
    rng = np.random.default_rng(seed)
    if shapes is None:
        shapes = convert._expected_shapes(dict(cfg))

    def w(name, shape):
        if name.endswith("norm.weight"):
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (0.05 * rng.standard_normal(shape)).astype(np.float32)

    return {n: w(n, s) for n, s in shapes.items()}


def write_tiny_llama(d: Path, cfg: dict, tensors: dict[str, np.ndarray]) -> Path:
    """A checkpoint folder `d` (created if needed): config.json and model.safetensors."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    st.save_file(d / "model.safetensors", tensors)
    return d


def assert_rate_round_trip_keeps_state(m, ids: np.ndarray, split: int, rate: float = 0.35) -> np.ndarray:
    """Switching the rate to `rate` and back to 0.0 between ``ids[:split]`` and ``ids[split:]`` must give exactly
    the never-switched logits (the KV cache and any SSM / conv state survive the switch). Returns those logits;
    the model is left after its switched run."""
    m.reset()
    m.forward(ids[:split])
    unswitched = m.forward(ids[split:])
    m.reset()
    m.forward(ids[:split])
    m.set_rate(rate)
    m.set_rate(0.0)
    np.testing.assert_array_equal(m.forward(ids[split:]), unswitched)
    return unswitched

"""int4 prefill / decode speed of the hybrid runtime on mid-size RANDOM-weight Mamba2 and Nemotron-H models, for
before/after comparisons of runtime changes (speed only: random weights say nothing about quality).

    python benchmarks/hybrid_int4_speed.py [--root DIR] [--threads N] [--prefill 128] [--decode 32] [--repeat 3]

``--root`` puts another checkout's ``uniql`` first on the path (e.g. a worktree of an older commit, built in
place), so two versions can be timed alternately on the same machine in one session; report ratios only. Every
linear (Mamba in_proj / out_proj, attention, MLP, untied lm_head) and the embedding (tied: also the lm_head) is
int4 RTN, group 64 (an out_proj group must not straddle a 64-channel head). Activations: the CPU default (W4A8
where the CPU has int8 dot products). Prints one JSON line per model: tokens / second by wall time and by process
CPU time (at --threads 1 the latter does not count waiting for a core on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# this folder's kernels.py would shadow the `kernels` package transformers imports
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

MODELS = {
    # Mamba2-130m-like width, 8 layers: d 768, 24 heads x 64, state 128, 1 group, tied embeddings
    "mamba2": dict(model_type="mamba2", vocab_size=32000, hidden_size=768, num_hidden_layers=8, num_heads=24,
                   head_dim=64, state_size=128, n_groups=1, expand=2, conv_kernel=4, chunk_size=128,
                   tie_word_embeddings=True, layer_norm_epsilon=1e-5),
    # Nemotron-H-style: 4 Mamba2 + 2 attention (no RoPE) + 4 squared-ReLU MLP layers
    "nemotron_h": dict(model_type="nemotron_h", vocab_size=32000, hidden_size=768,
                       hybrid_override_pattern="M-M*-M-M*-", num_attention_heads=12, num_key_value_heads=4,
                       head_dim=64, intermediate_size=2048, ssm_state_size=128, mamba_num_heads=24,
                       mamba_head_dim=64, n_groups=1, chunk_size=128, tie_word_embeddings=False),
}
LINEARS = ("in_proj.weight", "out_proj.weight", "q_proj.weight", "k_proj.weight", "v_proj.weight",
           "o_proj.weight", "up_proj.weight", "down_proj.weight", "gate_proj.weight", "lm_head.weight",
           "embeddings.weight", "embed_tokens.weight")


def tensors(name: str) -> dict:
    """ssm_speed.py's random weights of MODELS[name] with every linear and the embedding int4 RTN, group 64."""
    import importlib.util

    from uniql.compress.quant import quantize_rtn

    spec = importlib.util.spec_from_file_location("ssm_speed", os.path.join(os.path.dirname(__file__), "ssm_speed.py"))
    ssm_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ssm_speed)
    return {k: quantize_rtn(a, 64) if k.endswith(LINEARS) and a.ndim == 2 else a
            for k, a in ssm_speed.random_tensors(MODELS[name]).items()}


def run(name: str, n_prefill: int, n_decode: int, repeat: int) -> dict:
    import numpy as np

    from uniql.models.runtime import Model

    m = Model.from_hf_tensors(dict(MODELS[name]), tensors(name), max_seq=n_prefill + n_decode + 1)
    ids = np.random.default_rng(1).integers(0, MODELS[name]["vocab_size"], n_prefill).astype(np.int32)
    best = {"p": float("inf"), "d": float("inf"), "pc": float("inf"), "dc": float("inf")}
    for _ in range(repeat):
        m.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        lg = m.forward(ids, last_only=True)
        best["p"], best["pc"] = min(best["p"], time.perf_counter() - t0), min(best["pc"], time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n_decode):
            lg = m.forward(np.array([int(np.argmax(lg[0]))], np.int32), last_only=True)
        best["d"], best["dc"] = min(best["d"], time.perf_counter() - t0), min(best["dc"], time.process_time() - c0)
    # process CPU time: at one thread it does not count the time spent waiting for a core on a shared machine
    return {"model": name, "prefill_tok_s": n_prefill / best["p"], "decode_tok_s": n_decode / best["d"],
            "prefill_cpu_tok_s": n_prefill / best["pc"], "decode_cpu_tok_s": n_decode / best["dc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=None, help="checkout whose uniql to import (default: this one)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", default="mamba2,nemotron_h")
    a = ap.parse_args()
    if a.root:
        sys.path.insert(0, a.root)
    import uniql
    from uniql import _C

    if a.threads:
        _C.kernels_set_threads(a.threads)
    for name in a.models.split(","):
        r = run(name, a.prefill, a.decode, a.repeat)
        r["uniql"] = uniql.__file__
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()

"""fp32 prefill / decode speed and peak memory: uniql's C runtime vs transformers (torch CPU) on a Mamba2 and a
Nemotron-H-style hybrid of about 100M parameters with RANDOM weights (speed and memory only; random weights say
nothing about quality).

Each (framework, model) runs in its own subprocess that maps the same safetensors file (uniql: its own
mmapped reader, zero-copy views; transformers: safetensors.torch.load_file), so that the peak resident set
(VmHWM) of the process is its own; the table also shows the growth over the process's RSS after its imports
(the uniql child never imports torch). "keep 50%" halves every keep size (SSM head channels and state, MLP,
attention head dims) with kept_state=True. Run:

    python benchmarks/ssm_speed.py [--threads 1] [--prefill 512] [--decode 64] [--quick]

Prefill: one forward over ``--prefill`` tokens (tokens / second). Decode: ``--decode`` single-token steps
after a 64-token prompt, with the recurrent state / KV cache (tokens / second). Best of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MODELS = {
    # Mamba2-130m-like: 24 layers, d 768, 24 heads x 64, state 128, 1 group, tied embeddings
    "mamba2": dict(model_type="mamba2", vocab_size=32000, hidden_size=768, num_hidden_layers=24, num_heads=24,
                   head_dim=64, state_size=128, n_groups=1, expand=2, conv_kernel=4, chunk_size=128,
                   tie_word_embeddings=True),
    # Nemotron-H-style hybrid: 10 Mamba2 + 3 attention (no RoPE) + 10 squared-ReLU MLP layers
    "nemotron_h": dict(model_type="nemotron_h", vocab_size=32000, hidden_size=768,
                       hybrid_override_pattern="M-M-M*-M-M-M*-M-M-M*-M-", num_attention_heads=12,
                       num_key_value_heads=4, head_dim=64, intermediate_size=2048, ssm_state_size=128,
                       mamba_num_heads=24, mamba_head_dim=64, n_groups=1, chunk_size=128, tie_word_embeddings=True),
}


def random_tensors(model: dict) -> dict:
    """Random fp32 weights (HF tensor names) of a Mamba2 / Nemotron-H config dict with its ``model_type``: A_log
    = log(1..H), D and norms ones, dt_bias the inverse softplus of log-uniform dt in [1e-3, 1e-1], the rest
    N(0, 0.02^2); a tied lm_head is left out."""
    import numpy as np
    import torch
    import transformers

    cfg = dict(model)
    mt = cfg.pop("model_type")
    if mt == "mamba2":
        hc, cls = transformers.Mamba2Config(**cfg), transformers.Mamba2ForCausalLM
    else:
        hc, cls = transformers.NemotronHConfig(**cfg), transformers.NemotronHForCausalLM
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in cls(hc).state_dict().items()}
    rng = np.random.default_rng(0)
    out = {}
    for k, shp in shapes.items():
        if k == "lm_head.weight" and hc.tie_word_embeddings:
            continue
        if k.endswith("A_log"):
            a = np.log(np.arange(1, shp[0] + 1, dtype=np.float32))
        elif k.endswith(".D") or "norm" in k:
            a = np.ones(shp, np.float32)
        elif k.endswith("dt_bias"):
            dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), shp)).astype(np.float32)
            a = (dt + np.log(-np.expm1(-dt))).astype(np.float32)
        else:
            a = (rng.standard_normal(shp, dtype=np.float32) * 0.02).astype(np.float32)
        out[k] = np.ascontiguousarray(a)
    return out


def make_weights(name: str, path: str) -> int:
    """Writes random fp32 weights of MODELS[name] (HF tensor names) to path; returns the parameter count."""
    from safetensors.numpy import save_file

    out = random_tensors(MODELS[name])
    save_file(out, path)
    return sum(int(a.size) for a in out.values())


def _status_kib(field: str) -> int:
    """VmRSS / VmHWM of this process in KiB (VmHWM is this address space's peak: unlike ru_maxrss it is not
    inherited from the parent across fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _rss_kib() -> int:
    return _status_kib("VmRSS")


def child(framework: str, name: str, path: str, n_prefill: int, n_decode: int, repeat: int, threads: int,
          keep_half: bool) -> dict:
    import numpy as np

    ids = np.random.default_rng(1).integers(0, MODELS[name]["vocab_size"], max(n_prefill, 64)).astype(np.int32)
    prompt = ids[:64]
    if framework == "uniql":
        from uniql.formats.safetensors import safe_open
        from uniql.models.runtime import Model
        base = _rss_kib()
        f = safe_open(path)  # memory-mapped read-only views (as transformers' safetensors.torch.load_file); kept open
        m = Model.from_hf_tensors(dict(MODELS[name]), {k: f.get(k) for k in f.keys()},
                                        max_seq=max(n_prefill, 64 + n_decode) + 1)
        if keep_half:
            st = [m.stored(i) for i in range(m.num_layers)]
            for i, s in enumerate(st):
                m.set_keep(i, **{k: v // 2 for k, v in s.items()})
            m.set_options(kept_state=True)

        def prefill():
            m.reset()
            m.forward(ids[:n_prefill], last_only=True)

        def decode():
            m.reset()
            lg = m.forward(prompt, last_only=True)
            t0 = time.perf_counter()
            for _ in range(n_decode):
                lg = m.forward(np.array([int(np.argmax(lg[0]))], np.int32), last_only=True)
            return time.perf_counter() - t0
    else:
        import torch
        import transformers
        from safetensors.torch import load_file as tload
        torch.set_num_threads(threads)
        base = _rss_kib()
        cfg = dict(MODELS[name])
        mt = cfg.pop("model_type")
        if mt == "mamba2":
            hc, cls = transformers.Mamba2Config(**cfg), transformers.Mamba2ForCausalLM
        else:
            hc, cls = transformers.NemotronHConfig(**cfg, attn_implementation="sdpa"), transformers.NemotronHForCausalLM
        with torch.device("meta"):
            hf = cls(hc)
        hf.load_state_dict(tload(path), strict=False, assign=True)
        hf.tie_weights()
        hf = hf.float().eval()
        tids = torch.tensor(ids[None], dtype=torch.long)

        def prefill():
            with torch.inference_mode():
                hf(tids[:, :n_prefill], use_cache=False, logits_to_keep=1)

        def decode():
            with torch.inference_mode():
                out = hf(tids[:, :64], use_cache=True, logits_to_keep=1)
                cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
                t0 = time.perf_counter()
                for i in range(n_decode):
                    out = hf(tok, cache=cache, use_cache=True,
                             cache_position=torch.tensor([64 + i]), position_ids=torch.tensor([[64 + i]]))
                    cache, tok = out.cache, out.logits[:, -1:].argmax(-1)
                return time.perf_counter() - t0
    tp = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        prefill()
        tp.append(time.perf_counter() - t0)
    td = [decode() for _ in range(repeat)]
    peak = _status_kib("VmHWM")
    return dict(prefill_tok_s=n_prefill / min(tp), decode_tok_s=n_decode / min(td), peak_mib=peak / 1024,
                growth_mib=(peak - base) / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1,
                    help="threads of both runtimes (OpenMP / torch); OMP_WAIT_POLICY=PASSIVE is set because spinning "
                         "OpenMP barriers collapse on a shared, oversubscribed machine")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="prefill 128, decode 16, one repeat")
    ap.add_argument("--child", nargs=4, metavar=("FRAMEWORK", "MODEL", "PATH", "KEEP_HALF"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.prefill, a.decode, a.repeat = 128, 16, 1
    if a.child:
        fw, name, path, kh = a.child
        print(json.dumps(child(fw, name, path, a.prefill, a.decode, a.repeat, a.threads, kh == "1")))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            path = os.path.join(tmp, f"{name}.safetensors")
            nparam = make_weights(name, path)
            for fw, kh in (("uniql", "0"), ("uniql", "1"), ("transformers", "0")):
                cmd = [sys.executable, __file__, "--child", fw, name, path, kh, "--threads", str(a.threads),
                       "--prefill", str(a.prefill), "--decode", str(a.decode), "--repeat", str(a.repeat)]
                r = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if r.returncode:
                    raise RuntimeError(f"{fw} {name} failed:\n{r.stderr[-3000:]}")
                res = json.loads(r.stdout.strip().splitlines()[-1])
                label = fw + (" keep 50% (kept_state)" if kh == "1" else "")
                rows.append((name, f"{nparam / 1e6:.0f}M", label, res))
                print(f"{name} {label}: {res}", file=sys.stderr)
    print(f"\nfp32, random weights, {a.threads} threads, prefill {a.prefill} tokens, decode {a.decode} tokens after a "
          f"64-token prompt, best of {a.repeat}\n")
    print("| model | params | runtime | prefill tok/s | decode tok/s | peak RSS MiB | RSS growth MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, np_, label, r in rows:
        print(f"| {name} | {np_} | {label} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
              f"{r['peak_mib']:.0f} | {r['growth_mib']:.0f} |")


if __name__ == "__main__":
    main()

"""Memory and time of one fine-tuning step with the LM head and the loss in pieces (--loss-chunk) or at once.

Each measurement runs in a fresh process on the real SmolLM2 twin (LoRA rank 8, random windows, rate 0.35) after
one warm-up step. Memory: the peak resident memory of one step above the memory before it (the kernel's high-water
mark, reset through /proc/self/clear_refs right before the step), in a process with MALLOC_MMAP_THRESHOLD_=65536:
glibc then maps every block of 64 KiB or more on its own and unmaps it when freed, so the resident memory follows
the live tensors (its default threshold grows up to 32 MiB and keeps freed blocks in the heap, which the next step
reuses unseen). Time: `--steps` steps in a process with the default allocator; the configurations alternate
`--repeats` times (the machine is shared: compare the medians).

    nice -n 10 python benchmarks/finetune_loss_chunk.py --chunks 0 256 --batch 4 --loss kd --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ART = Path.home() / ".cache/uniql/models/smollm2-135m-instruct-uniql-fp32"


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def one(args: argparse.Namespace) -> None:
    """One configuration in this process: prints a JSON line."""
    import numpy as np
    import torch

    from uniql.finetune import FinetuneOptions, step_loss
    from uniql.finetune.twin import TwinModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = TwinModel.from_artifact(args.art, rank=8, max_seq=args.seq_len, lora_dropout=0.05)
    m.train()
    opts = FinetuneOptions(seq_len=args.seq_len, batch=args.batch, loss=args.loss, loss_chunk=args.chunk)
    g = np.random.default_rng(0)
    vocab = m.embed.shape[0]

    def step() -> None:
        ids = torch.from_numpy(g.integers(0, vocab, (args.batch, args.seq_len)))
        for p in m.lora_parameters():
            p.grad = None
        loss, _, _ = step_loss(m, ids, opts, 0.35)
        loss.backward()

    step()                                           # warm-up: the gradients' buffers exist from here on
    if args.mode == "mem":
        base = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")    # resets VmHWM to the current RSS
        step()
        peak = _status_kb("VmHWM")
        rec = {"step_peak_mib": round((peak - base) / 1024, 1), "rss_before_mib": round(base / 1024, 1)}
    else:
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        rec = {"seconds_per_step": round((time.perf_counter() - t) / args.steps, 3)}
    print(json.dumps({"chunk": args.chunk, **rec}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--art", type=Path, default=ART)
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 256])
    ap.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)   # the child's configuration
    ap.add_argument("--mode", default="time", help=argparse.SUPPRESS)            # the child's measurement
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--loss", default="kd")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per process")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.chunk is not None:
        one(args)
        return
    def child(c: int, mode: str) -> dict:
        cmd = [sys.executable, __file__, "--chunk", str(c), "--mode", mode] + \
              [a for k in ("art", "batch", "seq_len", "loss", "steps", "threads")
               for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        if mode == "mem":
            env["MALLOC_MMAP_THRESHOLD_"] = "65536"
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        print(mode, rec, flush=True)
        return rec

    mem = {c: child(c, "mem") for c in args.chunks}
    sec: dict[int, list[float]] = {c: [] for c in args.chunks}
    for _ in range(args.repeats):
        for c in args.chunks:
            sec[c].append(child(c, "time")["seconds_per_step"])
    ref = statistics.median(sec[args.chunks[0]])
    for c in args.chunks:
        t = statistics.median(sec[c])
        print(f"loss_chunk {c}: step peak {mem[c]['step_peak_mib']:.0f} MiB above the {mem[c]['rss_before_mib']:.0f} "
              f"MiB before the step; {t:.2f} s/step (median of {args.repeats}), {t / ref:.3f} x loss_chunk "
              f"{args.chunks[0]}")


if __name__ == "__main__":
    main()

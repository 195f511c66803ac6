"""Batched decoding and ``uniql serve`` under load, as ratios measured in one run (the CPU may be shared: compare
numbers of one run only).

Part 1, decode throughput (``uniql.models.batch.BatchDecoder``, the server engine's step): for each model and batch size B
in ``--batches``, B sequences are prefilled with ``--prompt`` random tokens each and then decode ``--steps`` steps
of one token per sequence; the best of ``--repeats`` runs gives tokens/s in total (B * steps / time) and per
sequence (steps / time), and the ratios to B = 1. Models: SmolLM2-135M as an int4 elastic artifact (``--smollm2``,
made with ``uniql compress --quantize``) at ``--rate``, and the Llama-3.1-8B-shaped stack of ``uniql.bench``
(``--stack-layers`` layers of hidden 4096 / intermediate 14336 / 32 heads / 8 KV heads, random int4 weights group
128, vocabulary 1024; times are those of the layers run, not scaled). int4 activations: the process default
(int8 where the CPU has int8 dot products) unless ``--int4-activations``.

Part 2, load run (``--load-seconds`` > 0): ``uniql serve`` on the SmolLM2 artifact in this process (uvicorn thread on
127.0.0.1), ``--clients`` client threads each sending streamed chat completions back to back (greedy,
``--max-tokens`` tokens, prompts from a fixed list) for ``--load-seconds`` seconds; reports time to first token and
time to last token (p50 / p95), requests and tokens per second, and the server's /metrics at the end.

On a shared machine wall times swing with the other jobs: each row also gives the process CPU time per step and
tokens per CPU second (with ``UNIQL_NUM_THREADS=1`` that is the work itself, no thread waits), whose ratio to B = 1
shows what batching saves even when the wall clock is noisy.

    python benchmarks/batch_serve.py --smollm2 ART [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uniql  # noqa: E402
from uniql import _C  # noqa: E402
from uniql.models.batch import BatchDecoder  # noqa: E402


def decode_throughput(model, batches, prompt, steps, repeats, seed=0):
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    bmax = max(batches)
    dec = BatchDecoder(model, max_batch=bmax, max_seq=prompt + steps + 1, max_chunk=prompt)
    seqs = [dec.new_sequence() for _ in range(bmax)]
    prompts = rng.integers(0, vocab, (bmax, prompt)).astype(np.int32)
    feed = rng.integers(0, vocab, (bmax, steps)).astype(np.int32)
    rows = []
    for b in batches:
        best, best_cpu = float("inf"), float("inf")
        for _ in range(repeats):
            for i in range(b):
                seqs[i].reset()
                dec.prefill(seqs[i], prompts[i])
            c0, t0 = time.process_time(), time.perf_counter()
            for j in range(steps):
                dec.step(seqs[:b], feed[:b, j])
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        rows.append({"batch": b, "step_ms": best / steps * 1e3, "tok_s_total": b * steps / best,
                     "tok_s_per_seq": steps / best, "cpu_ms_step": best_cpu / steps * 1e3,
                     "tok_per_cpu_s": b * steps / best_cpu, "load": os.getloadavg()[0]})
    for r in rows:
        r["total_vs_b1"] = r["tok_s_total"] / rows[0]["tok_s_total"]
        r["per_seq_vs_b1"] = r["tok_s_per_seq"] / rows[0]["tok_s_per_seq"]
        r["cpu_eff_vs_b1"] = r["tok_per_cpu_s"] / rows[0]["tok_per_cpu_s"]
    return rows


def stack_model(layers):
    from uniql.bench import SHAPES, random_tensors
    from uniql.models.runtime import Model

    cfg = dict(SHAPES["llama3.1-8b"], num_hidden_layers=layers, vocab_size=1024)
    t = random_tensors(cfg, "int4")
    return Model.from_hf_tensors(cfg, t, qk_layout="rotate_half", max_seq=256, max_chunk=64)


def pct(a, q):
    return float(np.percentile(np.asarray(a), q)) if a else float("nan")


def load_run(art, rate, clients, seconds, max_tokens, max_batch):
    import httpx
    import uvicorn

    from uniql.serve.server import build_server

    server = build_server(art, rate=rate, max_batch=max_batch, max_queue=4 * clients, ctx=1024)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv = uvicorn.Server(uvicorn.Config(server.app, log_level="warning", timeout_graceful_shutdown=5))
    th = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not uv.started:
        time.sleep(0.05)
    questions = ["What is the capital of France?", "Write a haiku about the sea.", "Explain gravity to a child.",
                 "List three uses of copper.", "Why is the sky blue?", "Give me a tip for learning Python.",
                 "What does a CPU cache do?", "Name a famous painting and its painter."]
    recs, errors = [], []
    stop_at = time.monotonic() + seconds

    def client(k):
        i = k
        with httpx.Client(timeout=120) as h:
            while time.monotonic() < stop_at:
                body = {"model": server.model_name, "stream": True, "temperature": 0, "max_tokens": max_tokens,
                        "messages": [{"role": "user", "content": questions[i % len(questions)]}]}
                i += clients
                t0 = time.perf_counter()
                first, n = None, 0
                try:
                    with h.stream("POST", url + "/v1/chat/completions", json=body) as r:
                        if r.status_code != 200:
                            errors.append(r.status_code)
                            continue
                        for line in r.iter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            d = json.loads(line[6:])
                            if d.get("choices") and d["choices"][0]["delta"].get("content"):
                                n += 1
                                if first is None:
                                    first = time.perf_counter() - t0
                    recs.append((first if first is not None else float("nan"), time.perf_counter() - t0, n))
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    metrics = httpx.get(url + "/metrics").text
    uv.should_exit = True
    th.join(timeout=30)
    ttft = [r[0] for r in recs if r[0] == r[0]]
    ttlt = [r[1] for r in recs]
    toks = sum(r[2] for r in recs)
    keep = ("uniql_rate ", "uniql_resident_memory_bytes ", "uniql_generated_tokens_total ",
            "uniql_decode_steps_total ", 'uniql_requests_total{outcome="ok"}')
    return {"clients": clients, "seconds": wall, "requests": len(recs), "errors": errors,
            "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95), "ttlt_p50_s": pct(ttlt, 50),
            "ttlt_p95_s": pct(ttlt, 95), "req_per_s": len(recs) / wall, "stream_chunks_per_s": toks / wall,
            "max_tokens": max_tokens, "max_batch": max_batch, "load": os.getloadavg()[0],
            "metrics": [ln for ln in metrics.splitlines() if ln.startswith(keep)]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smollm2", type=Path, help="SmolLM2 int4 elastic artifact (skipped when absent)")
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--stack-layers", type=int, default=2, help="8B-stack layers (0: skip)")
    ap.add_argument("--load-seconds", type=float, default=60.0, help="load run length (0: skip it)")
    ap.add_argument("--skip-throughput", action="store_true", help="only the load run")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--int4-activations", choices=("auto", "fp32", "int8"), default=None)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.int4_activations:
        uniql.set_int4_activations(a.int4_activations)
    batches = [int(x) for x in a.batches.split(",")]
    info = _C.kernels_info()
    rep = {"kernels": info, "cpus": os.cpu_count(), "load_start": os.getloadavg()[0], "throughput": {}}
    print(f"kernels {info['path']}, int4 activations {info['q4_act']}, {info['threads']} threads, "
          f"load {rep['load_start']:.1f} (shared machine: compare ratios within this run)")
    runs = []
    if a.smollm2 is not None:
        runs.append((f"smollm2-135m int4 rate {a.rate}", lambda: _smol(a.smollm2, a.rate)))
    if a.stack_layers > 0:
        runs.append((f"llama3.1-8b stack int4 ({a.stack_layers} layers)", lambda: stack_model(a.stack_layers)))
    for name, build in ([] if a.skip_throughput else runs):
        model = build()
        rows = decode_throughput(model, batches, a.prompt, a.steps, a.repeats)
        rep["throughput"][name] = rows
        print(f"\n{name}: decode after a {a.prompt}-token prompt, best of {a.repeats} x {a.steps} steps")
        print(f"{'B':>3} {'ms/step':>8} {'tok/s total':>12} {'tok/s/seq':>10} {'total/B1':>9} {'per-seq/B1':>11} "
              f"{'CPU ms/step':>12} {'tok/CPU-s':>10} {'vs B1':>6} load")
        for r in rows:
            print(f"{r['batch']:>3} {r['step_ms']:>8.1f} {r['tok_s_total']:>12.1f} {r['tok_s_per_seq']:>10.2f} "
                  f"{r['total_vs_b1']:>9.2f} {r['per_seq_vs_b1']:>11.2f} {r['cpu_ms_step']:>12.1f} "
                  f"{r['tok_per_cpu_s']:>10.1f} {r['cpu_eff_vs_b1']:>6.2f} {r['load']:.1f}")
        del model
    if a.smollm2 is not None and a.load_seconds > 0:
        lr = load_run(a.smollm2, a.rate, a.clients, a.load_seconds, a.max_tokens, a.max_batch)
        rep["load_run"] = lr
        print(f"\nload run: {lr['clients']} streaming chat clients for {lr['seconds']:.0f} s, max_tokens "
              f"{lr['max_tokens']}, max_batch {lr['max_batch']}: {lr['requests']} requests "
              f"({lr['req_per_s']:.2f}/s), {len(lr['errors'])} errors, {lr['stream_chunks_per_s']:.1f} streamed "
              f"chunks/s")
        print(f"  time to first token p50 {lr['ttft_p50_s']:.3f} s, p95 {lr['ttft_p95_s']:.3f} s; "
              f"time to last token p50 {lr['ttlt_p50_s']:.3f} s, p95 {lr['ttlt_p95_s']:.3f} s; load {lr['load']:.1f}")
        for m in lr["metrics"]:
            print("  " + m)
    if a.json:
        a.json.write_text(json.dumps(rep, indent=2))
    return 0


def _smol(art, rate):
    m = uniql.load(art)
    if rate:
        m.set_rate(rate)
    return m


if __name__ == "__main__":
    sys.exit(main())

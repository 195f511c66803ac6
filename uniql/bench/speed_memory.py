"""Speed and memory of one model served three ways, in one run: uniql artifacts at each pruning rate and kind against
llama.cpp and PyTorch (``python -m uniql.bench.speed_memory``; ``notebooks/speed_memory.ipynb`` plots it).

Every configuration ("cell") runs in its own child process, so that its resident memory is its own:

* ``uniql``: an artifact loaded with ``uniql.load(ART, rate=r)`` (only the weights of rate r are read), for the
  kinds ``fp32`` (an fp32 artifact), ``int4-a8`` (an int4 artifact, W4A8: int8 activations) and ``int4-a32`` (the
  same artifact, W4A32: fp32 activations), at every rate;
* ``llama.cpp`` (``llama-cpp-python``): the uncompressed checkpoint as an F32 GGUF and quantized by llama.cpp's own
  quantizer to Q4_0 (pure: every 2-D weight, as uniql's int4 quantizes every linear), written by
  :mod:`uniql.bench.quality` (cached);
* ``pytorch``: transformers ``AutoModelForCausalLM`` of the uncompressed checkpoint in float32 on the CPU.

llama.cpp and PyTorch have no pruning rate: they run the uncompressed model (rate 0).

What a cell measures, with the same token ids (random, drawn once) and the same definitions for every engine:

* single sequence, best of ``repeats``: a prompt of ``prompt`` tokens, then ``gen`` output tokens, the first from
  the prompt's logits, each next one from a one-token decode step. TTFT = the prompt's forward pass (prefill),
  prefill tok/s = prompt / TTFT, time to last token (TTLT) = wall time to the last output token, time per output
  token (TPOT) = (TTLT - TTFT) / (gen - 1); also the process CPU seconds per output token (at one thread it leaves
  out the time spent waiting for a core on a loaded machine);
* batched decoding, for each batch size B of ``batches``: B sequences each prefilled with ``batch_prompt`` tokens,
  then ``batch_steps`` steps of one token for each sequence in one call (uniql ``BatchDecoder``; PyTorch one
  forward pass over a (B, 1) batch with its KV cache; llama.cpp one ``llama_decode`` of a B-token batch, one
  sequence id each); throughput = B x steps / decode seconds (best of ``repeats``);
* memory: the process resident set (VmRSS) after the runs minus VmRSS before the model was loaded (the engine's
  libraries imported), the peak (VmHWM) over the same baseline, and the weight bytes each engine reports.

Nothing is sampled (the next ids are fixed): that is the same work as greedy decoding and keeps every engine on the
same tokens. The numerics run in each engine (uniql: the C runtime); this module only builds the engines, times
calls and tabulates. On a shared machine compare only ratios measured in one run; the load average is recorded per
cell.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from uniql.bench import cpu_name
from uniql.errors import InvalidArgumentError, UniqlError

log = logging.getLogger(__name__)

__all__ = ["SpeedConfig", "Cell", "cells_for", "measure_cell", "run", "format_table", "main"]

UNIQL_KINDS = {"fp32": ("fp32", "fp32"), "int4-a8": ("int4", "int8"), "int4-a32": ("int4", "fp32")}
LLAMA_KINDS = {"F32": None, "Q4_0": ("Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0", True)}


@dataclass(frozen=True)
class SpeedConfig:
    """One run: the checkpoint, the artifacts ({"fp32": dir, "int4": dir}), rates, token counts, threads."""

    checkpoint: str
    artifacts: dict[str, str]
    rates: tuple[float, ...] = (0.0, 0.15, 0.25, 0.35)
    kinds: tuple[str, ...] = tuple(UNIQL_KINDS)
    prompt: int = 256
    gen: int = 64
    batches: tuple[int, ...] = (1, 4, 8)
    batch_prompt: int = 32
    batch_steps: int = 32
    repeats: int = 3
    threads: int = 1
    llama_cpp: bool = True
    torch: bool = True
    cache: str | None = None  # where llama.cpp's GGUF files are kept (default: uniql.bench.llamacpp.cache_dir())
    seed: int = 1
    cell_timeout_s: float = 1800.0  # a cell's child process is killed after this long (reported as failed)

    def __post_init__(self) -> None:
        for name in ("prompt", "gen", "batch_prompt", "batch_steps", "repeats", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"{name} must be an int >= 1, got {v!r}")
        if self.gen < 2:
            raise InvalidArgumentError(f"gen must be >= 2 (TPOT needs a decode step), got {self.gen}")
        if not self.batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batches):
            raise InvalidArgumentError(f"batches must be ints >= 1, got {self.batches!r}")
        for r in self.rates:
            if not 0.0 <= r < 1.0:
                raise InvalidArgumentError(f"rates must be in [0, 1), got {r}")
        for k in self.kinds:
            if k not in UNIQL_KINDS:
                raise InvalidArgumentError(f"kind {k!r} is not one of {', '.join(UNIQL_KINDS)}")
            art = UNIQL_KINDS[k][0]
            if art not in self.artifacts:
                raise InvalidArgumentError(f"kind {k!r} needs an {art!r} artifact; artifacts: {sorted(self.artifacts)}")
        for label, p in [("checkpoint", self.checkpoint), *self.artifacts.items()]:
            if not (Path(p) / "config.json").is_file():
                raise InvalidArgumentError(f"{label} {str(p)!r} is not a model directory (no config.json)")


@dataclass(frozen=True)
class Cell:
    engine: str   # "uniql", "llama.cpp", "pytorch"
    kind: str     # uniql: fp32 / int4-a8 / int4-a32; llama.cpp: F32 / Q4_0; pytorch: fp32
    rate: float
    path: str     # artifact, GGUF or checkpoint

    @property
    def label(self) -> str:
        return f"{self.engine} {self.kind}" + (f" @{self.rate:g}" if self.engine == "uniql" else "")


def cells_for(cfg: SpeedConfig, notes: list[str]) -> list[Cell]:
    """The cells of a run: uniql kinds x rates, then llama.cpp (GGUFs built here when missing) and PyTorch."""
    cells = [Cell("uniql", k, r, cfg.artifacts[UNIQL_KINDS[k][0]]) for k in cfg.kinds for r in cfg.rates]
    if cfg.llama_cpp:
        from uniql.bench import llamacpp, quality

        L, why = llamacpp.import_llama_cpp()
        if L is None:
            notes.append(f"llama.cpp skipped: {why}")
        else:
            cache = Path(cfg.cache) if cfg.cache else None
            for kind, recipe in LLAMA_KINDS.items():
                try:
                    src = Path(cfg.checkpoint)
                    g = (quality.llama_cpp_f32_gguf(src, cache) if recipe is None
                         else quality.llama_cpp_gguf(L, src, recipe, cfg.threads, cache))
                    cells.append(Cell("llama.cpp", kind, 0.0, str(g)))
                except UniqlError as e:
                    notes.append(f"llama.cpp {kind}: no GGUF ({e})")
    if cfg.torch:
        import importlib.util

        if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
            notes.append("PyTorch skipped: torch/transformers not importable")
        else:
            cells.append(Cell("pytorch", "fp32", 0.0, cfg.checkpoint))
    return cells


# ------------------------------------------------------------------------------------ engines ----

class _Uniql:
    def __init__(self, cell: Cell, cfg: SpeedConfig) -> None:
        import uniql

        uniql.set_int4_activations(UNIQL_KINDS[cell.kind][1])
        self.m = uniql.load(cell.path, rate=cell.rate, max_seq=cfg.prompt + cfg.gen + 8)
        self.vocab = self.m.config.vocab_size
        self.cfg = cfg
        self.dec = None

    def weight_bytes(self) -> int:
        return int(self.m.weight_bytes())

    def prefill(self, ids: np.ndarray) -> None:
        self.m.reset()
        self.m.forward(ids, last_only=True)

    def decode(self, tok: int) -> None:
        self.m.forward(np.array([tok], np.int32), last_only=True)

    def batch_start(self, prompts: np.ndarray) -> None:
        from uniql.models.batch import BatchDecoder

        cfg = self.cfg
        if self.dec is None:
            self.dec = BatchDecoder(self.m, max_batch=max(cfg.batches), max_seq=cfg.batch_prompt + cfg.batch_steps + 2,
                                    max_chunk=cfg.batch_prompt)
            self.seqs = [self.dec.new_sequence() for _ in range(max(cfg.batches))]
        self.b = len(prompts)
        for s, p in zip(self.seqs, prompts):
            s.reset()
            self.dec.prefill(s, p)

    def batch_step(self, toks: np.ndarray) -> None:
        self.dec.step(self.seqs[:self.b], toks)


class _Torch:
    def __init__(self, cell: Cell, cfg: SpeedConfig) -> None:
        import torch
        import transformers

        torch.set_num_threads(cfg.threads)
        self.torch = torch
        self.m = transformers.AutoModelForCausalLM.from_pretrained(cell.path, dtype=torch.float32).eval()
        self.vocab = self.m.config.vocab_size
        self.past = None

    def weight_bytes(self) -> int:
        return int(sum(p.numel() * p.element_size() for p in self.m.parameters()))

    def _run(self, ids: Any, past: Any) -> Any:
        with self.torch.inference_mode():
            return self.m(ids, past_key_values=past, use_cache=True, logits_to_keep=1).past_key_values

    def prefill(self, ids: np.ndarray) -> None:
        self.past = self._run(self.torch.from_numpy(ids.astype(np.int64))[None], None)

    def decode(self, tok: int) -> None:
        self.past = self._run(self.torch.tensor([[tok]]), self.past)

    def batch_start(self, prompts: np.ndarray) -> None:
        self.past = self._run(self.torch.from_numpy(prompts.astype(np.int64)), None)

    def batch_step(self, toks: np.ndarray) -> None:
        self.past = self._run(self.torch.from_numpy(toks.astype(np.int64))[:, None], self.past)


class _LlamaCpp:
    def __init__(self, cell: Cell, cfg: SpeedConfig) -> None:
        from uniql.bench import llamacpp

        L, why = llamacpp.import_llama_cpp()
        if L is None:
            raise llamacpp.LlamaCppError(f"llama.cpp does not import: {why}")
        self.L, self.cfg = L, cfg
        self.err = llamacpp.LlamaCppError
        nb = max(cfg.batches)
        with llamacpp.quiet():
            L.llama_backend_init()
            self.model = L.llama_model_load_from_file(cell.path.encode(), L.llama_model_default_params())
            if not self.model:
                raise self.err(f"llama.cpp could not load {cell.path!r}")
            cp = L.llama_context_default_params()
            cp.n_ctx = max(cfg.prompt + cfg.gen, nb * (cfg.batch_prompt + cfg.batch_steps)) + 16
            cp.n_batch = cp.n_ubatch = max(cfg.prompt, cfg.batch_prompt, nb)
            cp.n_seq_max = nb
            cp.kv_unified = True  # one KV buffer shared by the sequences (n_ctx is not split among them)
            cp.n_threads = cp.n_threads_batch = cfg.threads
            cp.no_perf = True
            self.ctx = L.llama_init_from_model(self.model, cp)
            if not self.ctx:
                raise self.err(f"llama.cpp could not create a context for {cell.path!r}")
        self.vocab = int(L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model)))
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(cp.n_batch, 0, nb)
        self.pos: list[int] = []

    def weight_bytes(self) -> int:
        return int(self.L.llama_model_size(self.model))

    def _decode(self, toks: Sequence[int], pos: Sequence[int], seqs: Sequence[int], logits: Sequence[bool]) -> None:
        b = self.batch
        b.n_tokens = len(toks)
        for i, (t, p, s, lg) in enumerate(zip(toks, pos, seqs, logits)):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = int(t), int(p), 1, int(lg)
            b.seq_id[i][0] = int(s)
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise self.err(f"llama_decode of {len(toks)} tokens returned {rc}")
        self.L.llama_synchronize(self.ctx)

    def prefill(self, ids: np.ndarray) -> None:
        self.L.llama_memory_clear(self.mem, True)
        n = len(ids)
        self._decode(ids.tolist(), range(n), [0] * n, [False] * (n - 1) + [True])
        self.pos = [n]

    def decode(self, tok: int) -> None:
        self._decode([tok], [self.pos[0]], [0], [True])
        self.pos[0] += 1

    def batch_start(self, prompts: np.ndarray) -> None:
        self.L.llama_memory_clear(self.mem, True)
        for s, p in enumerate(prompts):
            n = len(p)
            self._decode(p.tolist(), range(n), [s] * n, [False] * (n - 1) + [True])
        self.pos = [len(p) for p in prompts]

    def batch_step(self, toks: np.ndarray) -> None:
        n = len(toks)
        self._decode(toks.tolist(), self.pos, range(n), [True] * n)
        self.pos = [p + 1 for p in self.pos]

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


_ENGINES = {"uniql": _Uniql, "pytorch": _Torch, "llama.cpp": _LlamaCpp}


# ------------------------------------------------------------------------------------- timing ----

def _status_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def measure_cell(cell: Cell, cfg: SpeedConfig) -> dict[str, Any]:
    """Runs one cell in this process (see the module docstring); returns its row."""
    import gc

    if cell.engine == "pytorch":  # the baseline includes the engine's libraries, not the model
        import torch  # noqa: F401  (imported for the baseline only)
        import transformers  # noqa: F401
    elif cell.engine == "llama.cpp":
        from uniql.bench import llamacpp

        llamacpp.import_llama_cpp()
    else:
        import uniql  # noqa: F401
    gc.collect()
    rss0 = _status_kb("VmRSS")
    load0 = _load()
    t0 = time.perf_counter()
    eng = _ENGINES[cell.engine](cell, cfg)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(cfg.seed)
    vocab = eng.vocab
    ids = rng.integers(0, vocab, cfg.prompt + cfg.gen).astype(np.int32)
    eng.prefill(ids[:8])  # warm-up: first touch of the weights and buffers
    eng.decode(int(ids[8]))
    best: dict[str, float] = {}
    for _ in range(cfg.repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        eng.prefill(ids[:cfg.prompt])
        ttft, c1 = time.perf_counter() - t0, time.process_time()
        for j in range(cfg.gen - 1):
            eng.decode(int(ids[cfg.prompt + j]))
        ttlt, c2 = time.perf_counter() - t0, time.process_time()
        if not best or ttlt < best["ttlt"]:
            best = {"ttft": ttft, "ttlt": ttlt, "prefill_cpu": c1 - c0, "decode_cpu": c2 - c1}
        best["ttft_min"] = min(best.get("ttft_min", ttft), ttft)
    tpot = (best["ttlt"] - best["ttft"]) / (cfg.gen - 1)
    row: dict[str, Any] = {
        **asdict(cell), "label": cell.label, "load_s": load_s, "weight_bytes": eng.weight_bytes(),
        "ttft_ms": best["ttft_min"] * 1e3, "prefill_tok_s": cfg.prompt / best["ttft_min"],
        "tpot_ms": tpot * 1e3, "decode_tok_s": 1.0 / tpot, "ttlt_ms": best["ttlt"] * 1e3,
        "tpot_cpu_ms": best["decode_cpu"] / (cfg.gen - 1) * 1e3,
        "prefill_cpu_tok_s": cfg.prompt / max(best["prefill_cpu"], 1e-9)}
    brng = np.random.default_rng(cfg.seed + 1)
    bp = brng.integers(0, vocab, (max(cfg.batches), cfg.batch_prompt)).astype(np.int32)
    feed = brng.integers(0, vocab, (max(cfg.batches), cfg.batch_steps)).astype(np.int32)
    batched = {}
    for b in cfg.batches:
        t_best = c_best = float("inf")
        for _ in range(cfg.repeats):
            eng.batch_start(bp[:b])
            c0, t0 = time.process_time(), time.perf_counter()
            for j in range(cfg.batch_steps):
                eng.batch_step(feed[:b, j])
            t_best, c_best = min(t_best, time.perf_counter() - t0), min(c_best, time.process_time() - c0)
        batched[str(b)] = {"tok_s": b * cfg.batch_steps / t_best, "step_ms": t_best / cfg.batch_steps * 1e3,
                           "tok_per_cpu_s": b * cfg.batch_steps / max(c_best, 1e-9)}
    row["batched"] = batched
    gc.collect()
    try:
        from uniql.models.elastic_memory import release_free_memory

        release_free_memory()
    except ImportError:
        pass
    row.update(rss_bytes=_status_kb("VmRSS") - rss0, peak_rss_bytes=_status_kb("VmHWM") - rss0,
               rss_baseline_bytes=rss0, load=load0, load_end=_load())
    if hasattr(eng, "close"):
        eng.close()
    return row


def _child(cell: Cell, cfg: SpeedConfig) -> dict[str, Any]:
    """measure_cell in a fresh interpreter (its own RSS); a failure is returned as {"error": ...}."""
    env = dict(os.environ)
    t = str(cfg.threads)
    env.update(UNIQL_NUM_THREADS=t, OMP_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, MKL_NUM_THREADS=t)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    arg = json.dumps({"cell": asdict(cell), "cfg": {k: (list(v) if isinstance(v, tuple) else v)
                                                    for k, v in asdict(cfg).items()}})
    try:
        r = subprocess.run([sys.executable, "-m", "uniql.bench.speed_memory", "--cell", arg], capture_output=True,
                           text=True, env=env, timeout=cfg.cell_timeout_s)
    except subprocess.TimeoutExpired:
        return {**asdict(cell), "label": cell.label, "error": f"no result within {cfg.cell_timeout_s:g} s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        return {**asdict(cell), "label": cell.label, "error": f"exit {r.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def run(cfg: SpeedConfig, progress: bool = True) -> dict[str, Any]:
    """Every cell of ``cfg``, each in a child process. Returns {"config", "machine", "rows", "notes", "wall_s"}."""
    from uniql import _C

    notes: list[str] = []
    t0 = time.perf_counter()
    cells = cells_for(cfg, notes)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": cfg.threads,
               "kernels": _C.kernels_info()["path"], "load_before": _load(),
               "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    rows = []
    it: Iterable[Cell] = cells
    if progress:
        from tqdm import tqdm

        it = tqdm(cells, desc="speed/memory cells", unit="cell")
    for c in it:
        row = _child(c, cfg)
        if "error" in row:
            notes.append(f"{c.label}: failed ({row['error']})")
            log.warning("%s failed: %s", c.label, row["error"])
        rows.append(row)
    machine["load_after"] = _load()
    return {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "machine": machine, "rows": rows, "notes": notes, "wall_s": time.perf_counter() - t0}


def format_table(rep: dict[str, Any]) -> str:
    """Markdown: one line per cell (wall times, and CPU ms per output token), ratios to llama.cpp Q4_0 where it ran."""
    rows = [r for r in rep["rows"] if "error" not in r]
    ref = next((r for r in rows if r["engine"] == "llama.cpp" and r["kind"] == "Q4_0"), None)
    bmax = str(max(rep["config"]["batches"]))
    out = [f"| engine | kind | rate | prefill tok/s | TTFT ms | TPOT ms | TPOT CPU ms | TTLT ms | batch {bmax} tok/s | "
           "RSS MB | weights MB | TPOT / llama.cpp Q4_0 (wall, CPU) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['tpot_ms'] / ref['tpot_ms']:.2f}, {r['tpot_cpu_ms'] / ref['tpot_cpu_ms']:.2f}" if ref else "-"
        out.append(f"| {r['engine']} | {r['kind']} | {r['rate']:.2f} | {r['prefill_tok_s']:.4g} | {r['ttft_ms']:.3g} | "
                   f"{r['tpot_ms']:.3g} | {r['tpot_cpu_ms']:.3g} | {r['ttlt_ms']:.4g} | "
                   f"{r['batched'][bmax]['tok_s']:.4g} | {r['rss_bytes'] / 2**20:.3g} | "
                   f"{r['weight_bytes'] / 2**20:.3g} | {ratio} |")
    return "\n".join(out)


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uniql.bench.speed_memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cell", help=argparse.SUPPRESS)  # internal: one cell, JSON in, JSON row out
    ap.add_argument("--checkpoint", help="the uncompressed checkpoint (llama.cpp and PyTorch run it)")
    ap.add_argument("--fp32", help="fp32 artifact")
    ap.add_argument("--int4", help="int4 artifact")
    ap.add_argument("--rates", default="0,0.15,0.25,0.35")
    ap.add_argument("--kinds", default=",".join(UNIQL_KINDS))
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--batch-prompt", type=int, default=32)
    ap.add_argument("--batch-steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", help="write the report here")
    a = ap.parse_args(None if argv is None else list(argv))
    if a.cell:
        d = json.loads(a.cell)
        c = d["cfg"]
        cfg = SpeedConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in c.items()})
        print(json.dumps(measure_cell(Cell(**d["cell"]), cfg)))
        return 0
    if not a.checkpoint:
        ap.error("--checkpoint is required")
    arts = {k: v for k, v in (("fp32", a.fp32), ("int4", a.int4)) if v}
    try:
        kinds = tuple(k for k in a.kinds.split(",") if k and UNIQL_KINDS.get(k, ("?",))[0] in arts or k not in
                      UNIQL_KINDS)
        cfg = SpeedConfig(a.checkpoint, arts, tuple(float(r) for r in a.rates.split(",")), kinds, a.prompt, a.gen,
                          tuple(int(b) for b in a.batches.split(",")), a.batch_prompt, a.batch_steps, a.repeats,
                          a.threads, not a.no_llama_cpp, not a.no_torch)
    except (InvalidArgumentError, ValueError) as e:
        ap.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rep = run(cfg)
    print(format_table(rep))
    for n in rep["notes"]:
        print("note:", n)
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

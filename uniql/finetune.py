"""uniql.finetune: masked LoRA recovery fine-tuning of an unquantized artifact (docs/design.md §3.7).

The one stage that computes in Python, on PyTorch (optional extra ``uniql[torch]``). Pipeline::

    compress(src, quantize=False)  ->  finetune(art)  ->  quantize_artifact(tuned)   (GPTQ int4, in C)

- The model is :class:`uniql.torch_model.ElasticTorchModel`: the C runtime's function for the artifact, at the
  keep sizes deployment uses (tested equal to ``uniql.load(art, rate)``).
- LoRA rank 8, alpha 16 on q, k, v, o, gate, up, down of every block; everything else frozen.
- Every optimizer step samples one global pruning rate from a grid on [0, max_rate] (default step 0.05: 0, 0.05,
  ..., 0.35), p proportional to exp(-0.1 j) with j = 0 at the *highest* rate (the reference's keep ratios
  {0.60..0.95} with p ~ exp(-0.1 k) from 0.60 up, shifted to the rates this artifact serves; rate 0 is included
  because the artifact serves it). Per-layer keep sizes come from the artifact's allocation (the loader's C call).
- Loss: next-token cross-entropy over ``batch`` windows of ``seq_len`` consecutive tokens of the calibration text
  (default: the C4 sample, never the Wikipedia text perplexity is measured on), windows shuffled each epoch.
- AdamW (betas 0.9/0.999, no weight decay, as HF Trainer), linear warm-up over ``warmup`` steps then linear decay
  to 0, gradient norm clipped at 1 (HF default). Deterministic for a seed (same machine, same thread count).
- Afterwards ``W += (alpha/rank) B A`` is merged into the full weights and a new artifact is written: same
  format, merged weights in the source's dtype, a ``finetune`` record in the uniql metadata and the report.
  Written to ``<out>.partial`` and renamed at the end; nothing is written when an argument is invalid.
"""
from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uniql import safetensors as st
from uniql.errors import InvalidArgumentError, OutputExistsError, RangeError, UnsupportedError

log = logging.getLogger(__name__)

RATE_DECAY = 0.1          # p(rate_j) ~ exp(-RATE_DECAY * j), j = 0 at the highest rate (the reference's 0.1)
MAX_GRAD_NORM = 1.0


def require_torch() -> Any:
    """The torch module, or UnsupportedError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise UnsupportedError("fine-tuning needs PyTorch (the optional extra): pip install 'uniql[torch]'") from None
    return torch


def _pos_int(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise InvalidArgumentError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _pos_float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise InvalidArgumentError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class FinetuneOptions:
    """Options of :func:`finetune` (saved in the artifact's ``finetune`` record)."""

    steps: int = 200
    lr: float = 2e-4
    warmup: int = 20
    rank: int = 8
    alpha: float = 16.0
    seq_len: int = 256
    batch: int = 4
    seed: int = 0
    rate_step: float = 0.05      # rate grid: 0, rate_step, ..., max_rate (max_rate always included)

    def __post_init__(self) -> None:
        _pos_int("steps", self.steps)
        _pos_int("warmup", self.warmup, 0)
        _pos_int("rank", self.rank)
        _pos_int("batch", self.batch)
        _pos_int("seq_len", self.seq_len, 2)
        _pos_float("lr", self.lr)
        _pos_float("alpha", self.alpha)
        _pos_float("rate_step", self.rate_step)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise InvalidArgumentError(f"seed must be a non-negative integer, got {self.seed!r}")


def rate_grid(max_rate: float, step: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(rates ascending, probabilities) of the per-step rate sampling: 0, step, ..., max_rate, p ~ exp(-0.1 j)
    with j = 0 at max_rate (the most pruned rate is the most likely, as in the reference)."""
    n = int(math.floor(max_rate / step + 1e-9))
    rates = [round(j * step, 10) for j in range(n + 1)]
    if max_rate - rates[-1] > 1e-9:
        rates.append(float(max_rate))
    rates_a = np.asarray(rates, np.float64)
    j = np.arange(len(rates))[::-1]
    p = np.exp(-RATE_DECAY * j)
    return rates_a, p / p.sum()


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to 0 at `steps` (HF's linear schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def training_windows(tokenizer: Any, calibration: Any, seq_len: int) -> np.ndarray:
    """(N, seq_len) int64: every window of seq_len consecutive tokens of the calibration text (default: C4)."""
    from uniql.compress import calibration_tokens

    # calibration_tokens warns when fewer windows than asked exist: ask for exactly as many as the text has
    clog = logging.getLogger("uniql.compress")
    level = clog.level
    clog.setLevel(logging.ERROR)
    try:
        ids = calibration_tokens(tokenizer, calibration, 1 << 40, seq_len)
    finally:
        clog.setLevel(level)
    return ids.astype(np.int64)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train(model: Any, windows: np.ndarray, opts: FinetuneOptions, *, progress: bool = False) -> dict[str, Any]:
    """Masked LoRA training of an ElasticTorchModel with patches (in place); returns a record of the run
    (rates sampled, mean loss of the first and last tenth of the steps, seconds)."""
    torch = require_torch()
    import torch.nn.functional as F

    params = model.lora_parameters()
    if not params:
        raise InvalidArgumentError("the model has no LoRA parameters (rank 0)")
    opt = torch.optim.AdamW(params, lr=opts.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    rates, probs = rate_grid(model.meta.max_rate, opts.rate_step)
    rng = np.random.default_rng(opts.seed)
    n = windows.shape[0]
    order, pos = rng.permutation(n), 0
    losses, picked = [], []
    bar: Any = range(opts.steps)
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(bar, desc="finetune", unit="step")
    t0 = time.perf_counter()
    model.train()
    for step in bar:
        rate = float(rates[rng.choice(len(rates), p=probs)])
        model.set_rate(rate)
        idx = []
        for _ in range(opts.batch):
            if pos == n:
                order, pos = rng.permutation(n), 0
            idx.append(order[pos])
            pos += 1
        ids = torch.from_numpy(windows[idx])
        for g in opt.param_groups:
            g["lr"] = opts.lr * lr_factor(step, opts.steps, opts.warmup)
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        losses.append(float(loss.detach()))
        picked.append(rate)
        if progress:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", rate=f"{rate:.2f}")
    model.eval()
    tenth = max(1, opts.steps // 10)
    return {"rate_grid": [float(r) for r in rates], "rate_probs": [round(float(p), 6) for p in probs],
            "rates_sampled": {f"{r:.2f}": picked.count(float(r)) for r in rates},
            "loss_first": float(np.mean(losses[:tenth])), "loss_last": float(np.mean(losses[-tenth:])),
            "losses": [round(v, 5) for v in losses], "train_seconds": round(time.perf_counter() - t0, 3),
            "tokens": int(opts.steps * opts.batch * (opts.seq_len - 1)), "windows": int(n)}


def _write_artifact(src: Path, part: Path, cfg: dict[str, Any], weights: dict[str, np.ndarray],
                    record: dict[str, Any], report: dict[str, Any]) -> None:
    """A copy of artifact `src` in `part` with the block linears replaced by `weights` (float32, cast to the
    stored dtype) and the finetune record in config.json."""
    from uniql.artifact import REST_FILE, layer_file, write_config

    L = int(cfg["num_hidden_layers"])
    for i in range(L):
        t = st.load_file(src / layer_file(i))
        for name, a in t.items():
            if name in weights:
                if a.shape != weights[name].shape:  # cannot happen: the model was built from these tensors
                    raise RangeError(f"{name}: merged shape {weights[name].shape} != stored {a.shape}")
                t[name] = weights[name].astype(a.dtype)
        st.save_file(part / layer_file(i), t)
    shutil.copyfile(src / REST_FILE, part / REST_FILE)
    out_cfg = json.loads(json.dumps(cfg))
    out_cfg["uniql"]["finetune"] = record
    write_config(part, out_cfg, src)
    report["bytes"] = {p.name: p.stat().st_size for p in sorted(part.glob("model-*.safetensors"))}
    (part / "uniql_report.json").write_text(json.dumps(report, indent=2) + "\n")


def finetune(artifact_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, steps: int = 200,
             lr: float = 2e-4, warmup: int | None = None, rank: int = 8, alpha: float = 16.0, seq_len: int = 256,
             batch: int = 4, calibration: Any = None, seed: int = 0, rate_step: float = 0.05,
             overwrite: bool = False, progress: bool = True) -> Path:
    """Masked LoRA recovery fine-tuning of an unquantized (fp32/fp16) artifact; returns the new artifact
    directory (default: ``<artifact_dir>-ft``), which serves the same rates with merged weights.

    ``calibration``: the training text (as for :func:`uniql.compress`: a text, a file, texts or token ids; default
    the C4 sample). ``warmup`` defaults to 10% of the steps. An int4 artifact, missing torch or a bad argument
    raise a :class:`uniql.UniqlError` subclass before anything is written. GPTQ int4 afterwards:
    :func:`uniql.quantize_artifact`.
    """
    opts = FinetuneOptions(steps=steps, lr=lr, warmup=max(1, steps // 10) if warmup is None else warmup,
                           rank=rank, alpha=alpha, seq_len=seq_len, batch=batch, seed=seed, rate_step=rate_step)
    torch = require_torch()
    from uniql.checkpoint import is_artifact, load_tokenizer, read_raw_config
    from uniql.torch_model import ElasticTorchModel, read_float_artifact

    src = Path(artifact_dir)
    cfg0 = read_raw_config(src)
    if not is_artifact(cfg0):
        raise InvalidArgumentError(f"{src} is not a uniql artifact (compress it first with quantize=False)")
    out = Path(out_dir) if out_dir is not None else src.with_name(src.name + "-ft")
    if out.resolve() == src.resolve():
        raise InvalidArgumentError("out_dir must differ from artifact_dir")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(f"output directory {out} exists and is not empty (pass overwrite=True)")
    t0 = time.perf_counter()
    cfg, meta, tc, layers, rest = read_float_artifact(src)       # int4 artifacts are refused here
    windows = training_windows(load_tokenizer(src), calibration, opts.seq_len)
    torch.manual_seed(opts.seed)
    model = ElasticTorchModel(cfg, meta, tc, layers, rest, rank=opts.rank, alpha=opts.alpha, seed=opts.seed,
                              max_seq=opts.seq_len)
    del layers, rest
    t_read = time.perf_counter() - t0
    run = train(model, windows, opts, progress=progress)
    t = time.perf_counter()
    model.merge_()
    weights = model.weights()
    del model
    record = {"method": "masked-lora", **asdict(opts), "calibration": "c4" if calibration is None else "user",
              "source": src.name, "torch": torch.__version__,
              **{k: run[k] for k in ("rate_grid", "rate_probs", "rates_sampled", "loss_first", "loss_last",
                                     "tokens", "windows")}}
    report = {"source": str(src), "finetune": record, "losses": run["losses"],
              "seconds": {"read": round(t_read, 3), "train": run["train_seconds"]},
              "peak_rss_mb": round(_peak_rss_mb(), 1)}
    src_report = src / "uniql_report.json"
    if src_report.is_file():
        report["source_report"] = json.loads(src_report.read_text())
    part = out.with_name(out.name + ".partial")
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    try:
        report["seconds"]["write"] = round(time.perf_counter() - t, 3)
        report["total_seconds"] = round(time.perf_counter() - t0, 3)
        _write_artifact(src, part, cfg, weights, record, report)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    from uniql.artifact import publish

    publish(part, out)
    log.info("wrote %s: %d steps, loss %.3f -> %.3f, %.1f s", out, opts.steps, run["loss_first"], run["loss_last"],
             time.perf_counter() - t0)
    return out

"""uniql.finetune: masked LoRA recovery fine-tuning of an unquantized artifact, on the CPU or GPUs.

The one stage that computes in Python, on PyTorch (optional extra ``uniql[torch]``). Pipeline::

    compress(src, quantize=False)  ->  finetune(art)  ->  quantize_artifact(tuned)   (GPTQ int4, in C)

- The model is the PyTorch twin of the C runtime, one class for every family (:class:`uniql.finetune.twin.TwinModel`:
  a list of layers, each a mixer -- attention with full, partial or no RoPE, or Mamba2 -- and / or an MLP), at the
  keep sizes deployment uses (tested equal to ``uniql.load(art, rate)``).
- LoRA rank 8, alpha 16, dropout 0.05 on q, k, v, o, gate, up, down of every block (and a Mamba mixer's in_proj
  and out_proj); everything else frozen (the reference's recipe).
- Every optimizer step samples one global pruning rate from a grid on [0, max_rate] (default step 0.05: 0, 0.05,
  ..., 0.35), p proportional to exp(-0.1 j) with j = 0 at the *highest* rate (the reference's keep ratios
  {0.60..0.95} with p ~ exp(-0.1 k) from 0.60 up, shifted to the rates this artifact serves; rate 0 is included
  because the artifact serves it). Per-layer keep sizes come from the artifact's allocation (the loader's C call).
- Loss ``ce``: next-token cross-entropy over ``batch`` windows of ``seq_len`` consecutive tokens of the training
  text (default: the C4 sample, never the Wikipedia text perplexity is measured on), windows shuffled each epoch.
  ``kd``: distillation, KL(teacher || student) per token, the teacher being the same artifact at rate 0 without
  the patches (one extra forward, no second model in memory); ``mix``: (1 - w) ce + w kd. ``generate=N`` adds N
  windows of text the teacher samples itself from prompts cut from the training text (self-distillation data).
- An evaluation split (``eval_windows``, held out of training) scored every ``eval_every`` steps at the grid's
  lowest, middle and highest rate (mean cross-entropy); the patches of the best evaluation are the ones merged.
- AdamW (betas 0.9/0.999, no weight decay, as HF Trainer), lr 1e-4, linear warm-up over ``warmup`` steps (100, at
  most a tenth of the steps) then linear decay to 0, gradient norm clipped at 1 (HF default).
- Device: ``device="auto"`` takes a GPU when torch sees one; on a GPU the forward runs under bf16 autocast with the
  LoRA weights, gradients and AdamW state in float32 (master weights). Deterministic for a seed on the CPU (same
  machine, same thread count).
- Several GPUs: ``torchrun --nproc-per-node N -m uniql.finetune ART -o OUT ...`` (DistributedDataParallel, NCCL on
  GPUs, gloo on CPUs). ``batch`` is the *global* batch: every rank draws the same rate and the same window indices
  from the same seeded generator and trains on its slice of ``batch / N`` windows; DDP averages the gradients, so
  the step, the schedule and the result do not depend on N (up to float summation order). Only rank 0 writes.
- ``checkpoint_dir``: the patches, optimizer and generator states every ``eval_every`` steps (``last.pt``) and the
  best evaluation's patches (``best.pt``); ``resume=True`` continues from ``last.pt`` exactly where it stopped
  (``time_limit`` seconds stops a run early with a checkpoint; nothing else is written then).
- ``loss_chunk`` (4096): with more tokens per step, the LM head and the loss run on pieces of that many tokens,
  each recomputed in the backward pass, so no (tokens x vocabulary) tensor exists at once (same loss and
  gradients up to float rounding; 0: all at once).
- ``log_jsonl``: one JSON object per line per step (loss, rate, lr, tokens/s) and per evaluation.
- Afterwards ``W += (alpha/rank) B A`` is merged into the full weights and a new artifact is written: same
  format, merged weights in the source's dtype, a ``finetune`` record in the uniql metadata and the report.
  Written to ``<out>.partial`` and renamed at the end; nothing is written when an argument is invalid.
  ``save_lora`` also writes the patches alone (safetensors); :func:`merge_lora` merges such a file into the
  artifact elsewhere (train on a GPU machine, bring back 10 MB, merge on the CPU).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uniql.entry import EntryPointPackage
from uniql.errors import (FormatError, InvalidArgumentError, OutputExistsError, RangeError, UniqlIOError,
                          UnsupportedError)
from uniql.formats import safetensors as st

log = logging.getLogger(__name__)

RATE_DECAY = 0.1          # p(rate_j) ~ exp(-RATE_DECAY * j), j = 0 at the highest rate (the reference's 0.1)
MAX_GRAD_NORM = 1.0
LOG_EVERY = 16   # training steps whose losses are read from the device (and logged) together
LOSSES = ("ce", "kd", "mix")
PRECISIONS = ("auto", "bf16", "fp32")
# The LM head and the loss run on pieces of this many tokens when a step has more (FinetuneOptions.loss_chunk):
# the (tokens x vocab) logits -- student and teacher, float32 copies, log-softmaxes, their gradients: ~10 such
# tensors, 45 GB of an H100 at 64 windows x 256 tokens of SmolLM2's 49152-word vocabulary -- then exist for one
# piece at a time, recomputed in the backward pass (torch.utils.checkpoint) instead of kept. 4096 tokens: a few
# pieces per GPU step (few extra kernel launches), nothing changes for the CPU's default 4 x 255 tokens.
LOSS_CHUNK = 4096




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
    """Options of :func:`finetune` (saved in the artifact's ``finetune`` record). ``batch`` is the global batch
    (all ranks together); ``eval_every`` 0 means a tenth of the steps."""

    steps: int = 200
    lr: float = 1e-4
    warmup: int = 20
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    seq_len: int = 256
    batch: int = 4
    seed: int = 0
    rate_step: float = 0.05      # rate grid: 0, rate_step, ..., max_rate (max_rate always included)
    loss: str = "ce"             # ce | kd | mix
    kd_weight: float = 0.5       # weight of the distillation term in "mix"
    eval_every: int = 0
    loss_chunk: int = LOSS_CHUNK  # tokens per piece of the head + loss (0: all at once); any value, same loss

    def __post_init__(self) -> None:
        _pos_int("steps", self.steps)
        _pos_int("warmup", self.warmup, 0)
        _pos_int("rank", self.rank)
        _pos_int("batch", self.batch)
        _pos_int("seq_len", self.seq_len, 2)
        _pos_int("eval_every", self.eval_every, 0)
        _pos_int("loss_chunk", self.loss_chunk, 0)
        _pos_float("lr", self.lr)
        _pos_float("alpha", self.alpha)
        _pos_float("rate_step", self.rate_step)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise InvalidArgumentError(f"seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or \
                not 0.0 <= self.dropout < 1.0:
            raise InvalidArgumentError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.loss not in LOSSES:
            raise InvalidArgumentError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if isinstance(self.kd_weight, bool) or not isinstance(self.kd_weight, (int, float)) or \
                not 0.0 <= self.kd_weight <= 1.0:
            raise InvalidArgumentError(f"kd_weight must be in [0, 1], got {self.kd_weight!r}")

    @property
    def every(self) -> int:
        return self.eval_every or max(1, self.steps // 10)


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
    from uniql.compress.pipeline import calibration_tokens

    # calibration_tokens warns when fewer windows than asked exist: ask for exactly as many as the text has
    clog = logging.getLogger("uniql.compress")
    level = clog.level
    clog.setLevel(logging.ERROR)
    try:
        ids = calibration_tokens(tokenizer, calibration, 1 << 40, seq_len)
    finally:
        clog.setLevel(level)
    return ids.astype(np.int64)


def split_windows(windows: np.ndarray, n_eval: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, evaluation) windows: `n_eval` windows drawn with the seed are held out of training."""
    n = windows.shape[0]
    if n_eval < 0 or n_eval >= n:
        raise InvalidArgumentError(f"eval_windows must be in [0, {n - 1}] for {n} windows, got {n_eval}")
    perm = np.random.default_rng([seed, 1]).permutation(n)
    held = np.sort(perm[:n_eval])
    keep = np.ones(n, bool)
    keep[held] = False
    return windows[keep], windows[held]


def default_eval_windows(n: int) -> int:
    """Held-out windows by default: 5% of them, at least 1 and at most 64 (none below 20 windows)."""
    return 0 if n < 20 else int(min(64, max(1, n // 20)))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def resolve_device(device: Any = "auto") -> Any:
    """torch.device for "auto" (a GPU when torch sees one, this rank's under torchrun), "cpu", "cuda" or
    "cuda:N"; a GPU asked for where there is none raises UnsupportedError."""
    torch = require_torch()
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnsupportedError("device cuda asked for, but torch sees no GPU (use --device cpu or auto)")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    elif dev.type != "cpu":
        raise InvalidArgumentError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return dev


def _autocast(torch: Any, dev: Any, precision: str) -> Any:
    import contextlib

    if precision == "bf16":
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _precision(precision: str, dev: Any) -> str:
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if dev.type == "cuda" else "fp32"
    return precision


def _dist() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _same_run(o: Any) -> Any:
    """The options a resume must share (loss_chunk only changes how the loss is computed, not its value)."""
    return {k: v for k, v in o.items() if k != "loss_chunk"} if isinstance(o, dict) else o


@dataclass
class _Sampler:
    """The global batch stream: the same on every rank and across a resume (state = generator + epoch order)."""

    rng: np.random.Generator
    n: int
    order: np.ndarray
    pos: int = 0

    @classmethod
    def new(cls, seed: int, n: int) -> "_Sampler":
        rng = np.random.default_rng(seed)
        return cls(rng, n, rng.permutation(n))

    def batch(self, size: int) -> list[int]:
        out = []
        for _ in range(size):
            if self.pos == self.n:
                self.order, self.pos = self.rng.permutation(self.n), 0
            out.append(int(self.order[self.pos]))
            self.pos += 1
        return out

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": [int(v) for v in self.order], "pos": self.pos}

    def load(self, st_: dict[str, Any]) -> None:
        self.rng.bit_generator.state = st_["rng"]
        self.order, self.pos = np.asarray(st_["order"], np.int64), int(st_["pos"])


def evaluate(model: Any, windows: np.ndarray, rates: Any, *, batch: int = 8, device: Any = None,
             precision: str = "fp32", loss_chunk: int = LOSS_CHUNK) -> dict[str, float]:
    """Mean next-token cross-entropy of `windows` at each rate (the model is left in eval mode, LoRA on), the head
    and the loss on `loss_chunk` tokens at a time (0: a batch at once). Under torch.distributed every rank scores
    its share and the sums are all-reduced."""
    torch = require_torch()
    import torch.nn.functional as F

    dev = device if device is not None else model.device
    rank, world = _dist()
    mine = windows[rank::world]
    model.eval()
    out = {}
    with torch.no_grad():
        for r in rates:
            model.set_rate(float(r))
            tot = torch.zeros(2, dtype=torch.float64, device=dev)
            for b in range(0, mine.shape[0], batch):
                ids = torch.from_numpy(mine[b:b + batch]).to(dev)
                tgt = ids[:, 1:].reshape(-1)
                pieces = 0 < loss_chunk < tgt.numel()
                with _autocast(torch, dev, precision):
                    y = model(ids[:, :-1], hidden=pieces)   # hidden states (pieces) or logits
                if pieces:
                    ce = sum(F.cross_entropy(_head(torch, model, h, dev, precision), t, reduction="sum")
                             for h, t in zip(y.reshape(tgt.numel(), -1).split(loss_chunk), tgt.split(loss_chunk)))
                else:
                    ce = F.cross_entropy(_wide(y).reshape(-1, y.shape[-1]), tgt, reduction="sum")
                tot += torch.stack((ce.double(), torch.tensor(float(ids[:, 1:].numel()), dtype=torch.float64,
                                                              device=dev)))
            if world > 1:
                import torch.distributed as dist
                dist.all_reduce(tot)
            out[f"{float(r):.2f}"] = float(tot[0] / tot[1])
    return out


def generate_windows(model: Any, prompts: np.ndarray, seq_len: int, *, temperature: float = 1.0, seed: int = 0,
                     batch: int = 64, precision: str = "fp32", progress: bool = False) -> np.ndarray:
    """(N, seq_len) int64: each prompt (N, P) continued by the teacher (rate 0, patches off) with plain sampling
    at `temperature` (KV cache, one token per step) -- self-distillation text that is not the evaluation text."""
    torch = require_torch()
    _pos_float("temperature", temperature)
    prompts = np.asarray(prompts, np.int64)
    if prompts.ndim != 2 or not 1 <= prompts.shape[1] < seq_len:
        raise InvalidArgumentError(f"prompts must be (N, P) with 1 <= P < seq_len={seq_len}, got {prompts.shape}")
    dev = model.device
    was_training, was_on, was_rate, was_keeps = model.training, model.lora_enabled, model.rate, model.keeps
    model.eval()
    model.lora_enabled = False
    model.set_rate(0.0)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    P = prompts.shape[1]
    out = np.empty((prompts.shape[0], seq_len), np.int64)
    bar: Any = range(0, prompts.shape[0], batch)
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(bar, desc="generate", unit="batch")
    try:
        with torch.no_grad(), _autocast(torch, dev, precision):
            for b in bar:
                ids = torch.from_numpy(prompts[b:b + batch]).to(dev)
                cache: list[Any] = []
                logits = model(ids, cache=cache)[:, -1]
                toks = [ids]
                for t in range(P, seq_len):
                    p = torch.softmax(logits.float() / temperature, -1)
                    nxt = torch.multinomial(p, 1, generator=gen)
                    toks.append(nxt)
                    if t + 1 < seq_len:
                        logits = model(nxt, cache=cache, start=t)[:, -1]
                out[b:b + batch] = torch.cat(toks, 1).cpu().numpy()
    finally:
        model.lora_enabled = was_on
        model.train(was_training)
        if was_rate is None:
            model.set_keep(was_keeps)
        else:
            model.set_rate(was_rate)
    return out


def _save_ckpt(path: Path, payload: dict[str, Any]) -> None:
    torch = require_torch()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _wide(x: Any) -> Any:
    """Logits for the loss: float32 (from bf16 under autocast, or float32), float64 kept (a float64 model)."""
    return x if x.dtype == require_torch().float64 else x.float()


def _head(torch: Any, model: Any, h: Any, dev: Any, precision: str) -> Any:
    """The loss's logits of hidden states h (the head under the step's autocast, as a full forward computes it)."""
    with _autocast(torch, dev, precision):
        return _wide(model.head(h))


def step_loss(model: Any, ids: Any, opts: FinetuneOptions, rate: float, *, net: Any = None,
              precision: str = "fp32") -> tuple[Any, Any, Any]:
    """(loss, cross-entropy, KL or None) of one training step on windows `ids` (B, T) at `rate`: the student (the
    model with its patches, through `net`, e.g. its DDP wrapper) predicts tokens 1..T-1; ce is their mean
    cross-entropy, kd the mean over tokens of KL(teacher || student), the teacher being the model at rate 0
    without patches (``opts.loss`` kd or mix). With more than ``opts.loss_chunk`` tokens the head and the loss
    run on pieces of that many tokens, each under torch.utils.checkpoint: the sums over the pieces divided by the
    token count are the same loss with the same gradients, but only one piece's logits exist at a time."""
    torch = require_torch()
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    net = model if net is None else net
    dev = ids.device
    inp, tgt = ids[:, :-1], ids[:, 1:].reshape(-1)
    n = tgt.numel()
    chunk = opts.loss_chunk if 0 < opts.loss_chunk < n else 0
    with _autocast(torch, dev, precision):
        teacher = None
        if opts.loss != "ce":
            with torch.no_grad():
                model.lora_enabled = False
                model.set_rate(0.0)
                teacher = model(inp, hidden=bool(chunk))
                model.lora_enabled = True
        model.set_rate(rate)
        out = net(inp, hidden=bool(chunk))
    if not chunk:
        lf = _wide(out).reshape(n, -1)
        ce = F.cross_entropy(lf, tgt)
        if teacher is None:
            return ce, ce, None
        # 'batchmean' of the (tokens, vocab) input: the KL summed over the vocabulary, averaged over the tokens
        kd = F.kl_div(F.log_softmax(lf, -1), F.log_softmax(_wide(teacher).reshape(n, -1), -1),
                      log_target=True, reduction="batchmean")
    else:
        ce_grad = opts.loss != "kd"   # under kd alone the cross-entropy is only logged

        def piece(h: Any, t: Any, th: Any = None) -> Any:
            """(ce sum[, KL sum]) of one piece: its logits are made here, and again in the backward pass."""
            lf = _head(torch, model, h, dev, precision)
            ce_s = F.cross_entropy(lf if ce_grad else lf.detach(), t, reduction="sum")
            if th is None:
                return ce_s[None]
            kd_s = F.kl_div(F.log_softmax(lf, -1), F.log_softmax(_head(torch, model, th, dev, precision), -1),
                            log_target=True, reduction="sum")
            return torch.stack((ce_s, kd_s))

        # split (not slicing): its backward writes the pieces' gradients into one (tokens, hidden) tensor at once
        parts = [out.reshape(n, -1).split(chunk), tgt.split(chunk)]
        if teacher is not None:
            parts.append(teacher.reshape(n, -1).split(chunk))
        sums = torch.stack([checkpoint(piece, *a, use_reentrant=False, preserve_rng_state=False)
                            for a in zip(*parts)]).sum(0) / n
        ce = sums[0]
        if teacher is None:
            return ce, ce, None
        kd = sums[1]
    loss = kd if opts.loss == "kd" else (1.0 - opts.kd_weight) * ce + opts.kd_weight * kd
    return loss, ce, kd


def train(model: Any, windows: np.ndarray, opts: FinetuneOptions, *, eval_windows: np.ndarray | None = None,
          device: Any = None, precision: str = "auto", progress: bool = False, log_jsonl: Any = None,
          checkpoint_dir: Any = None, resume: bool = False, time_limit: float | None = None,
          stop_at: int | None = None) -> dict[str, Any]:
    """Masked LoRA training of a twin model (:class:`uniql.finetune.twin.TwinModel`) with patches (in place; moved
    to `device`, default the model's); at the end the model holds the best evaluation's patches (the last ones without an evaluation
    split). Returns a record of the run (rates sampled, losses, evaluations, tokens, seconds, tokens/s, GPU
    memory; ``finished`` False when `time_limit` seconds or the step `stop_at` stopped it early, with a
    checkpoint in `checkpoint_dir` to resume from). Under torch.distributed (torchrun) the
    model is wrapped in DistributedDataParallel and ``opts.batch`` is split over the ranks."""
    torch = require_torch()

    params = model.lora_parameters()
    if not params:
        raise InvalidArgumentError("the model has no LoRA parameters (rank 0)")
    rank, world = _dist()
    if opts.batch % world:
        raise InvalidArgumentError(f"the global batch ({opts.batch}) must be a multiple of the number of "
                                   f"processes ({world})")
    dev = model.device if device is None else resolve_device(device)
    prec = _precision(precision, dev)
    model.to(dev)
    model.lora_dropout = float(opts.dropout)
    net: Any = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None, broadcast_buffers=False)
    opt = torch.optim.AdamW(params, lr=opts.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    rates, probs = rate_grid(model.meta.max_rate, opts.rate_step)
    eval_rates = sorted({float(rates[0]), float(rates[len(rates) // 2]), float(rates[-1])})
    sampler = _Sampler.new(opts.seed, windows.shape[0])
    local = opts.batch // world
    losses: list[float] = []
    picked: list[float] = []
    evals: list[dict[str, Any]] = []
    best: dict[str, Any] = {"loss": math.inf, "step": None, "state": None}
    start, tokens_before, seconds_before = 0, 0, 0.0
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    writer = rank == 0
    if ckdir is not None and writer:
        ckdir.mkdir(parents=True, exist_ok=True)
    if resume:
        if ckdir is None or not (ckdir / "last.pt").is_file():
            raise InvalidArgumentError(f"resume needs a checkpoint: {ckdir}/last.pt does not exist")
        ck = torch.load(ckdir / "last.pt", map_location="cpu", weights_only=True)
        if _same_run(ck.get("opts")) != _same_run(asdict(opts)):
            raise InvalidArgumentError(f"{ckdir}/last.pt was written with other options: {ck.get('opts')}")
        model.load_lora_state({k: v.numpy() for k, v in ck["lora"].items()})
        opt.load_state_dict(ck["optimizer"])
        sampler.load(ck["sampler"])
        torch.set_rng_state(ck["torch_rng"])
        if dev.type == "cuda" and ck.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ck["cuda_rng"], dev)
        start, losses, picked, evals = int(ck["step"]), list(ck["losses"]), list(ck["picked"]), list(ck["evals"])
        tokens_before, seconds_before = int(ck["tokens"]), float(ck["seconds"])
        if ck["best"]["step"] is not None:
            best = {"loss": float(ck["best"]["loss"]), "step": int(ck["best"]["step"]),
                    "state": {k: v.numpy() for k, v in ck["best"]["lora"].items()}}
    logf = open(log_jsonl, "a") if (log_jsonl is not None and writer) else None

    def emit(rec: dict[str, Any]) -> None:
        if logf is not None:
            logf.write(json.dumps(rec) + "\n")
            logf.flush()

    def checkpoint(step: int, tokens: int, seconds: float) -> None:
        if ckdir is None or not writer:
            return
        tens = {k: torch.from_numpy(v) for k, v in model.lora_state().items()}
        _save_ckpt(ckdir / "last.pt", {
            "step": step, "opts": asdict(opts), "lora": tens, "optimizer": opt.state_dict(),
            "sampler": sampler.state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
            "losses": losses, "picked": picked, "evals": evals, "tokens": tokens, "seconds": seconds,
            "best": {"loss": best["loss"], "step": best["step"],
                     "lora": {k: torch.from_numpy(v) for k, v in (best["state"] or {}).items()}}})

    def run_eval(step: int) -> None:
        if eval_windows is None or len(eval_windows) == 0:
            return
        per = evaluate(model, eval_windows, eval_rates, batch=max(1, local), device=dev, precision=prec,
                       loss_chunk=opts.loss_chunk)
        mean = float(np.mean(list(per.values())))
        improved = mean < best["loss"]
        if improved:
            best.update(loss=mean, step=step, state=model.lora_state())
            if ckdir is not None and writer:
                _save_ckpt(ckdir / "best.pt", {"step": step, "loss": mean, "opts": asdict(opts),
                                               "lora": {k: torch.from_numpy(v) for k, v in best["state"].items()}})
        rec = {"event": "eval", "step": step, "loss": round(mean, 5), "per_rate": per, "best": improved}
        evals.append(rec)
        emit(rec)
        model.train()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tok_step = opts.batch * (opts.seq_len - 1)
    bar: Any = None
    if progress and writer:
        from tqdm.auto import tqdm
        bar = tqdm(total=opts.steps, initial=start, desc="finetune", unit="step")
    pending: list[tuple[dict[str, Any], Any]] = []   # (a step's record without its losses, loss / ce / kd on the device)

    def flush() -> None:
        """Reads the queued steps' losses from the device at once (one wait) and logs their records."""
        if not pending:
            return
        vals = torch.stack([v for _, v in pending]).double()
        if world > 1:   # the logged loss is the global batch's (the gradient already is)
            import torch.distributed as dist
            col = vals[:, 0].contiguous()
            dist.all_reduce(col)
            vals[:, 0] = col / world
        for (meta, _), (lv, ce_v, kd_v) in zip(pending, vals.tolist()):
            losses.append(lv)
            picked.append(meta["rate"])
            rec = {"event": "step", "step": meta["step"], "loss": round(lv, 5),
                   **{k: v for k, v in meta.items() if k != "step"}}
            if opts.loss != "ce":   # a teacher ran: both parts of the loss
                rec["ce"], rec["kd"] = round(ce_v, 5), round(kd_v, 5)
            emit(rec)
        if bar is not None:
            bar.update(len(pending))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", rate=f"{picked[-1]:.2f}",
                            tok_s=f"{pending[-1][0]['tokens_per_s']:,.0f}")
        pending.clear()

    emit({"event": "start", "step": start, "device": str(dev), "precision": prec, "world": world,
          "windows": int(windows.shape[0]), "eval_windows": 0 if eval_windows is None else int(len(eval_windows)),
          "options": asdict(opts)})
    t0 = time.perf_counter()
    model.train()
    finished, step = True, start
    for step in range(start, opts.steps):
        if (time_limit is not None and time.perf_counter() - t0 > time_limit) or \
                (stop_at is not None and step >= stop_at):
            finished = False
            break
        rate = float(rates[sampler.rng.choice(len(rates), p=probs)])
        idx = sampler.batch(opts.batch)[rank * local:(rank + 1) * local]
        ids = torch.from_numpy(windows[idx]).to(dev, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = opts.lr * lr_factor(step, opts.steps, opts.warmup)
        loss, ce, kd = step_loss(model, ids, opts, rate, net=net, precision=prec)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        opt.step()
        # the losses stay on the device until a flush: reading them every step would make the host wait for the
        # device each step, so it could not queue the next step's work meanwhile
        secs = seconds_before + time.perf_counter() - t0
        parts = (loss, ce, loss if kd is None else kd)   # the last two only logged when a teacher ran
        pending.append(({"step": step + 1, "rate": rate, "lr": opts.lr * lr_factor(step, opts.steps, opts.warmup),
                         "tokens": tokens_before + (step + 1 - start) * tok_step,
                         "tokens_per_s": round((step + 1 - start) * tok_step / max(1e-9, time.perf_counter() - t0), 1),
                         "seconds": round(secs, 3)},
                        torch.stack([p.detach().float() for p in parts])))
        if len(pending) >= LOG_EVERY or (step + 1) % opts.every == 0 or step + 1 == opts.steps:
            flush()
        if (step + 1) % opts.every == 0 or step + 1 == opts.steps:
            run_eval(step + 1)
            checkpoint(step + 1, tokens_before + (step + 1 - start) * tok_step, secs)
    else:
        step = opts.steps
    flush()
    if bar is not None:
        bar.close()
    done = step if not finished else opts.steps
    secs = seconds_before + time.perf_counter() - t0
    if not finished:
        checkpoint(done, tokens_before + (done - start) * tok_step, secs)
    if finished and best["state"] is not None:
        model.load_lora_state(best["state"])
    model.eval()
    n = max(1, len(losses))
    tenth = max(1, n // 10)
    rec = {"rate_grid": [float(r) for r in rates], "rate_probs": [round(float(p), 6) for p in probs],
           "rates_sampled": {f"{r:.2f}": picked.count(float(r)) for r in rates},
           "loss_first": float(np.mean(losses[:tenth])) if losses else math.nan,
           "loss_last": float(np.mean(losses[-tenth:])) if losses else math.nan,
           "losses": [round(v, 5) for v in losses], "evals": evals, "eval_rates": eval_rates,
           "best_step": best["step"], "best_eval_loss": None if best["step"] is None else round(best["loss"], 5),
           "train_seconds": round(secs, 3), "steps_done": done, "finished": finished,
           "tokens": int(done * tok_step), "tokens_per_s": round(done * tok_step / max(1e-9, secs), 1),
           "windows": int(windows.shape[0]), "device": str(dev), "precision": prec, "world_size": world}
    if dev.type == "cuda":
        rec["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 20, 1)
        rec["gpu_name"] = torch.cuda.get_device_name(dev)
    emit({"event": "end", **{k: v for k, v in rec.items() if k not in ("losses", "evals")}})
    if logf is not None:
        logf.close()
    return rec


def save_lora(path: str | os.PathLike, model: Any, record: dict[str, Any]) -> Path:
    """The model's patches (float32) and the run record (metadata ``finetune``) as one safetensors file."""
    p = Path(path)
    meta = {"finetune": json.dumps(record), "rank": str(model.rank), "alpha": repr(model.alpha)}
    st.save_file(p, model.lora_state(), meta)
    return p


def load_lora(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any], int, float]:
    """(patches, run record, rank, alpha) of a :func:`save_lora` file."""
    p = Path(path)
    if not p.is_file():
        raise UniqlIOError(f"LoRA file {p} does not exist")
    with st.safe_open(p) as f:
        meta = f.metadata()
    try:
        rec, rank, alpha = json.loads(meta["finetune"]), int(meta["rank"]), float(meta["alpha"])
    except (KeyError, ValueError) as e:
        raise FormatError(f"{p} is not a uniql LoRA file (metadata: {e})") from None
    return st.load_file(p), rec, rank, alpha


def _write_artifact(src: Path, part: Path, cfg: dict[str, Any], weights: dict[str, np.ndarray],
                    record: dict[str, Any], report: dict[str, Any]) -> None:
    """A copy of artifact `src` in `part` with the block linears replaced by `weights` (float32, cast to the
    stored dtype) and the finetune record in config.json."""
    from uniql.formats.artifact import REST_FILE, layer_file, write_config

    for i in range(len(cfg["uniql"]["importance"])):  # one file per decoder layer (hybrid configs may not say)
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


def _out_dir(src: Path, out_dir: Any, overwrite: bool) -> Path:
    out = Path(out_dir) if out_dir is not None else src.with_name(src.name + "-ft")
    if out.resolve() == src.resolve():
        raise InvalidArgumentError("out_dir must differ from artifact_dir")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(f"output directory {out} exists and is not empty (pass overwrite=True)")
    return out


def _publish_merged(src: Path, out: Path, cfg: dict[str, Any], model: Any, record: dict[str, Any],
                    report: dict[str, Any]) -> None:
    from uniql.formats.artifact import publish

    model.merge_()
    weights = model.weights()
    part = out.with_name(out.name + ".partial")
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    try:
        _write_artifact(src, part, cfg, weights, record, report)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    publish(part, out)


def _source_report(src: Path, report: dict[str, Any]) -> None:
    src_report = src / "uniql_report.json"
    if src_report.is_file():
        report["source_report"] = json.loads(src_report.read_text())


def merge_lora(artifact_dir: str | os.PathLike, lora_path: str | os.PathLike,
               out_dir: str | os.PathLike | None = None, *, overwrite: bool = False, scale: float = 1.0) -> Path:
    """Merges a :func:`save_lora` file (e.g. trained on a GPU machine) into the unquantized artifact it was
    trained on and writes the fine-tuned artifact (as :func:`finetune` would have); returns its directory.

    ``scale`` multiplies the patches (``W += scale * (alpha/rank) B A``; 1 = as trained, 0 = the source's weights).
    One set of merged patches serves every rate, and at rate 0 the distillation target is the unpatched model, so
    the patches that recover the reduced rates cost a little at rate 0: a scale below 1 trades recovery at the
    reduced rates for fidelity at rate 0 (measured on SmolLM2 in the README)."""
    require_torch()
    from uniql.formats.checkpoint import is_artifact, read_raw_config
    from uniql.finetune.twin import read_float_tensors, twin_model

    scale = float(scale)
    if not (math.isfinite(scale) and 0.0 <= scale <= 4.0):
        raise RangeError(f"merge scale must be in [0, 4], got {scale}")
    src = Path(artifact_dir)
    if not is_artifact(read_raw_config(src)):
        raise InvalidArgumentError(f"{src} is not a uniql artifact")
    state, record, rank, alpha = load_lora(lora_path)
    out = _out_dir(src, out_dir, overwrite)
    cfg, meta, layers, rest = read_float_tensors(src)
    model = twin_model(cfg, meta, layers, rest, rank=rank, alpha=alpha * scale, max_seq=2)
    del layers, rest
    model.load_lora_state(state)
    record = {**record, "merged_from": Path(lora_path).name}
    if scale != 1.0:
        record["merge_scale"] = scale
    report = {"source": str(src), "finetune": record}
    _source_report(src, report)
    _publish_merged(src, out, cfg, model, record, report)
    return out


def finetune(artifact_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, steps: int = 200,
             lr: float = 1e-4, warmup: int | None = None, rank: int = 8, alpha: float = 16.0,
             dropout: float = 0.05, seq_len: int = 256, batch: int = 4, calibration: Any = None, seed: int = 0,
             rate_step: float = 0.05, loss: str = "ce", kd_weight: float = 0.5, eval_windows: int | None = None,
             eval_every: int = 0, generate: int = 0, loss_chunk: int = LOSS_CHUNK, device: Any = "auto",
             precision: str = "auto",
             checkpoint_dir: Any = None, resume: bool = False, time_limit: float | None = None,
             log_jsonl: Any = None, save_lora_to: Any = None, overwrite: bool = False,
             progress: bool = True) -> Path | None:
    """Masked LoRA recovery fine-tuning of an unquantized (fp32/fp16) artifact; returns the new artifact
    directory (default: ``<artifact_dir>-ft``), which serves the same rates with merged weights (None when
    `time_limit` stopped the run early: resume it from `checkpoint_dir`).

    ``calibration``: the training text (as for :func:`uniql.compress`: a text, a file, texts or token ids; default
    the C4 sample). ``warmup`` defaults to 100 steps, at most a tenth of the steps. ``eval_windows`` held-out
    windows (default 5%, at most 64); ``generate`` teacher-sampled windows added to the training text;
    ``loss_chunk`` tokens per piece of the head and the loss (memory only: see :func:`step_loss`). An int4
    artifact, missing torch or a bad argument raise a :class:`uniql.UniqlError` subclass before anything is
    written. GPTQ int4 afterwards: :func:`uniql.quantize_artifact`. Under torchrun only rank 0 writes.
    """
    opts = FinetuneOptions(steps=steps, lr=lr, warmup=min(100, max(1, steps // 10)) if warmup is None else warmup,
                           rank=rank, alpha=alpha, dropout=dropout, seq_len=seq_len, batch=batch, seed=seed,
                           rate_step=rate_step, loss=loss, kd_weight=kd_weight, eval_every=eval_every,
                           loss_chunk=loss_chunk)
    _pos_int("generate", generate, 0)
    if time_limit is not None:
        _pos_float("time_limit", time_limit)
    torch = require_torch()
    dev = resolve_device(device)
    prec = _precision(precision, dev)
    from uniql.formats.checkpoint import is_artifact, load_tokenizer, read_raw_config
    from uniql.finetune.twin import read_float_tensors, twin_model

    src = Path(artifact_dir)
    cfg0 = read_raw_config(src)
    if not is_artifact(cfg0):
        raise InvalidArgumentError(f"{src} is not a uniql artifact (compress it first with quantize=False)")
    out = _out_dir(src, out_dir, overwrite)
    rank_, world = _dist()
    t0 = time.perf_counter()
    cfg, meta, layers, rest = read_float_tensors(src)            # int4 artifacts are refused here
    windows = training_windows(load_tokenizer(src), calibration, opts.seq_len)
    n_eval = default_eval_windows(windows.shape[0]) if eval_windows is None else eval_windows
    _pos_int("eval_windows", n_eval, 0)
    train_w, eval_w = split_windows(windows, n_eval, opts.seed)
    torch.manual_seed(opts.seed)
    model = twin_model(cfg, meta, layers, rest, rank=opts.rank, alpha=opts.alpha, seed=opts.seed,
                       max_seq=opts.seq_len, lora_dropout=opts.dropout)
    del layers, rest
    model.to(dev)
    t_read = time.perf_counter() - t0
    t_gen = 0.0
    if generate:
        t = time.perf_counter()
        prng = np.random.default_rng([opts.seed, 2])
        pl = max(1, min(16, opts.seq_len // 4))
        prompts = train_w[prng.integers(0, train_w.shape[0], generate), :pl]
        gen = generate_windows(model, prompts, opts.seq_len, seed=opts.seed, precision=prec,
                               progress=progress and rank_ == 0)
        train_w = np.concatenate([train_w, gen])
        t_gen = time.perf_counter() - t
    run = train(model, train_w, opts, eval_windows=eval_w, precision=prec, progress=progress,
                log_jsonl=log_jsonl, checkpoint_dir=checkpoint_dir, resume=resume, time_limit=time_limit)
    if not run["finished"]:
        log.info("stopped after %d of %d steps (time limit); resume from %s", run["steps_done"], opts.steps,
                 checkpoint_dir)
        return None
    record = {"method": "masked-lora", **asdict(opts), "calibration": "c4" if calibration is None else "user",
              "generated_windows": int(generate), "source": src.name, "torch": torch.__version__,
              **{k: run[k] for k in ("rate_grid", "rate_probs", "rates_sampled", "loss_first", "loss_last",
                                     "tokens", "windows", "best_step", "best_eval_loss", "eval_rates", "device",
                                     "precision", "world_size", "tokens_per_s")}}
    if "gpu_peak_mib" in run:
        record["gpu_peak_mib"] = run["gpu_peak_mib"]
    if rank_ != 0:
        return out
    if save_lora_to is not None:
        save_lora(save_lora_to, model, record)
    t = time.perf_counter()
    report = {"source": str(src), "finetune": record, "losses": run["losses"], "evals": run["evals"],
              "seconds": {"read": round(t_read, 3), "generate": round(t_gen, 3), "train": run["train_seconds"]},
              "peak_rss_mb": round(_peak_rss_mb(), 1)}
    _source_report(src, report)
    model.to("cpu")
    report["seconds"]["write"] = round(time.perf_counter() - t, 3)
    report["total_seconds"] = round(time.perf_counter() - t0, 3)
    _publish_merged(src, out, cfg, model, record, report)
    log.info("wrote %s: %d steps, loss %.3f -> %.3f, %.1f s", out, opts.steps, run["loss_first"], run["loss_last"],
             time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------------------------ CLI ----

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``uniql finetune`` and ``python -m uniql.finetune`` (one definition)."""
    from uniql.cli import positive_int as _positive_int  # the CLI's validator (cli imports only the stdlib)
    p.add_argument("artifact", metavar="ART")
    p.add_argument("out_pos", nargs="?", type=Path, default=None, metavar="OUT", help="output artifact (ART-ft)")
    p.add_argument("-o", "--output", "--out", dest="out", type=Path, default=None, metavar="OUT",
                   help="output artifact (ART-ft); same as the positional OUT")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", default=None, help="packaged training text (c4)")
    src.add_argument("--file", type=Path, default=None, metavar="F", help="UTF-8 training text file")
    src.add_argument("--tokens", type=Path, default=None, metavar="F.npy", help="token ids (.npy, 1-D or 2-D)")
    p.add_argument("--steps", type=_positive_int, default=200, metavar="N", help="optimizer steps (200)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (1e-4)")
    p.add_argument("--warmup", type=int, default=None, metavar="N", help="warm-up steps (100, <= 10%% of --steps)")
    p.add_argument("--rank", type=_positive_int, default=8, help="LoRA rank (8)")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (16)")
    p.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (0.05)")
    p.add_argument("--seq-len", type=_positive_int, default=256, metavar="N", help="tokens per sequence (256)")
    p.add_argument("--batch", type=_positive_int, default=4, metavar="N",
                   help="sequences per step, all processes together (4)")
    p.add_argument("--seed", type=int, default=0, help="seed (0)")
    p.add_argument("--loss", choices=LOSSES, default="ce",
                   help="ce: next-token cross-entropy; kd: KL to the rate-0 teacher; mix: both (ce)")
    p.add_argument("--kd-weight", type=float, default=0.5, help="weight of kd in --loss mix (0.5)")
    p.add_argument("--eval-windows", type=int, default=None, metavar="N", help="held-out windows (5%%, <= 64)")
    p.add_argument("--eval-every", type=int, default=0, metavar="K", help="evaluate every K steps (10%% of steps)")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="add N teacher-generated windows (0)")
    p.add_argument("--loss-chunk", type=int, default=LOSS_CHUNK, metavar="N",
                   help=f"head and loss on N tokens at a time, recomputed in backward (less memory, same loss; "
                        f"0: all at once) ({LOSS_CHUNK})")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 on a GPU, fp32 on a CPU")
    p.add_argument("--checkpoint-dir", type=Path, default=None, metavar="D", help="checkpoints (last.pt, best.pt)")
    p.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt")
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="stop after S seconds of training with a checkpoint (resume later)")
    p.add_argument("--log-jsonl", type=Path, default=None, metavar="F", help="JSON lines log of steps and evals")
    p.add_argument("--save-lora", type=Path, default=None, metavar="F",
                   help="also write the patches alone (merge elsewhere with `uniql finetune --merge`)")
    p.add_argument("--merge", type=Path, default=None, metavar="LORA",
                   help="no training: merge a --save-lora file into ART")
    p.add_argument("--merge-scale", type=float, default=1.0, metavar="S",
                   help="with --merge: the patches times S (1: as trained; below 1 trades the reduced rates' "
                        "recovery for fidelity at rate 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def run_from_args(args: argparse.Namespace) -> Path | None:
    """``uniql finetune`` / ``python -m uniql.finetune`` on parsed arguments."""
    pos = getattr(args, "out_pos", None)
    if args.out is not None and pos is not None and args.out != pos:
        raise InvalidArgumentError(f"two output directories given: {str(pos)!r} and -o {str(args.out)!r}")
    args.out = args.out if args.out is not None else pos
    if args.merge is not None:
        return merge_lora(args.artifact, args.merge, args.out, overwrite=args.overwrite, scale=args.merge_scale)
    if args.merge_scale != 1.0:
        raise InvalidArgumentError("--merge-scale applies to --merge only")
    calib: Any = None
    if args.tokens is not None:
        try:
            calib = np.load(args.tokens)
        except (OSError, ValueError) as e:
            raise UniqlIOError(f"cannot read token ids from {args.tokens}: {e}") from None
    elif args.file is not None:
        calib = args.file
    elif args.text is not None:
        from uniql import data
        if args.text not in data.TEXTS:
            raise InvalidArgumentError(f"--text must be one of {', '.join(data.TEXTS)}, got {args.text!r}")
        calib = data.read_text(args.text)
    return finetune(args.artifact, args.out, steps=args.steps, lr=args.lr, warmup=args.warmup, rank=args.rank,
                    alpha=args.alpha, dropout=args.dropout, seq_len=args.seq_len, batch=args.batch,
                    calibration=calib, seed=args.seed, loss=args.loss, kd_weight=args.kd_weight,
                    eval_windows=args.eval_windows, eval_every=args.eval_every, generate=args.generate,
                    loss_chunk=args.loss_chunk,
                    device=args.device, precision=args.precision, checkpoint_dir=args.checkpoint_dir,
                    resume=args.resume, time_limit=args.time_limit, log_jsonl=args.log_jsonl,
                    save_lora_to=args.save_lora, overwrite=args.overwrite, progress=sys.stderr.isatty())


def main(argv: list[str] | None = None) -> int:
    """``torchrun --nproc-per-node N -m uniql.finetune ART -o OUT ...`` (or plain ``python -m``)."""
    from uniql.errors import UniqlError

    ap = argparse.ArgumentParser(prog="python -m uniql.finetune", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = None
    try:
        if world > 1:
            torch = require_torch()
            import torch.distributed as dist
            dev = resolve_device(args.device)
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        out = run_from_args(args)
    except UniqlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
    if out is not None and int(os.environ.get("RANK", "0")) == 0:
        print(out)
    return 0


# the package is also its entry point: uniql.finetune(art, out, ...) calls finetune() above (uniql.entry)
ENTRY_POINT = "uniql.finetune:finetune"
sys.modules[__name__].__class__ = EntryPointPackage

"""The quality grid behind ``notebooks/quality_grid.ipynb``: every (model, rate) configuration on every task, with
per-document results cached on disk so that a long run can be extended (a larger ``limit`` computes only the
documents not yet cached) or resumed after an interruption, and a notebook re-executed from the cache in seconds.

A configuration is (label, path, rate): ``base`` is the uncompressed checkpoint, the others uniql artifacts (fp32,
int4, fine-tuned, ablations) at a pruning rate. Cache: ``<cache>/<label>@<rate>/<task>.json`` holding the per-
document values of :class:`uniql.eval.TaskResult` keyed by document id, plus the seconds and tokens spent on them.

:func:`tiny_inputs` builds the QUICK setting: a random 2-layer Llama with a word-level tokenizer (:func:`tiny_llama`,
also the evaluation tests' model), its fp32 and int4 artifacts, a small multiple-choice requests file and a text -- offline, seconds.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from uniql.errors import FormatError
from uniql.eval import runner
from uniql.eval import tasks as _tasks
from uniql.eval.results import TaskResult

log = logging.getLogger(__name__)

__all__ = ["Config", "run_grid", "tiny_inputs", "tiny_llama"]


@dataclass(frozen=True)
class Config:
    label: str  # e.g. "base", "fp32", "int4"
    path: str
    rate: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.label}@{self.rate:g}"


def _cache_file(cache: Path, cfg: Config, task: str) -> Path:
    safe = task.replace("/", "_").replace(":", "-").replace("+", "_")
    return cache / cfg.key / f"{safe}.json"


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"docs": {}, "seconds": 0.0, "tokens": 0}
    try:
        d = json.loads(path.read_text())
        d["docs"] = {int(k): v for k, v in d["docs"].items()}
        return d
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"grid cache {str(path)!r} is malformed ({e}); delete it to recompute") from None


def _doc_ids(task: _tasks.EvalTask, toks: list[Any]) -> list[int]:
    return list(range(len(toks))) if task.kind == "perplexity" else [d.doc_id for d in task.docs]


def _subset(task: _tasks.EvalTask, toks: list[Any], idx: list[int]) -> tuple[_tasks.EvalTask, list[Any]]:
    if task.kind == "perplexity":
        return task, [toks[i] for i in idx]
    groups = tuple(task.groups[i] for i in idx) if task.groups else None
    sub = _tasks.EvalTask(task.name, task.kind, tuple(task.docs[i] for i in idx), task.source, groups, task.limit)
    return sub, [toks[i] for i in idx]


def run_grid(configs: Sequence[Config], tasks: Sequence[str | _tasks.EvalTask], cache: str | Path, *,
             limit: int | None = None, window: int = 512, max_seq: int = 1024, shots: int = _tasks.MMLU_SHOTS,
             progress: bool = True) -> dict[str, dict[str, TaskResult]]:
    """{config key ("int4@0.15"): {task: TaskResult}} on the first ``limit`` documents of each task (MMLU: per
    subject), computing only the documents missing from ``cache``. ``seconds``/``tokens`` of each result are
    those spent on all its cached documents."""
    import uniql

    cache = Path(cache)
    loaded = [_tasks.load(t, limit=limit, shots=shots) for t in tasks]
    out: dict[str, dict[str, TaskResult]] = {}
    tok_cache: dict[str, list[list[Any]]] = {}  # tokenizer file -> tokenized tasks (same tokenizer: same tokens)
    for cfg in configs:
        model = None
        per: dict[str, TaskResult] = {}
        for ti, task in enumerate(loaded):
            path = _cache_file(cache, cfg, task.name)
            c = _read_cache(path)
            if model is None:
                model = uniql.load(cfg.path, rate=cfg.rate, max_seq=max_seq)
                tk_key = str(Path(cfg.path) / "tokenizer.json")
                if tk_key not in tok_cache:
                    bos = runner.bos_token(model)
                    tok_cache[tk_key] = [runner.tokenize_task(t, model.tokenizer, bos, window) for t in loaded]
                toks_all = tok_cache[tk_key]
            toks = toks_all[ti]
            ids = _doc_ids(task, toks)
            missing = [i for i, d in enumerate(ids) if d not in c["docs"]]
            if missing:
                sub, sub_toks = _subset(task, toks, missing)
                r = runner.evaluate_task(model, sub, sub_toks, cfg.rate, progress=progress)
                for j, i in enumerate(missing):
                    c["docs"][ids[i]] = {k: v[j] for k, v in r.values.items()}
                    if sub.groups:
                        c["docs"][ids[i]]["group"] = sub.groups[j]
                c["seconds"] += r.seconds
                c["tokens"] += r.tokens
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"task": task.name, "kind": task.kind, "config": cfg.__dict__,
                                           "seconds": c["seconds"], "tokens": c["tokens"],
                                           "docs": {str(k): v for k, v in sorted(c["docs"].items())}}))
                tmp.replace(path)
            rows = [c["docs"][d] for d in ids]
            keys = [k for k in rows[0] if k != "group"]
            groups = [r["group"] for r in rows] if "group" in rows[0] else None
            per[task.name] = TaskResult(task.name, task.kind, cfg.rate, ids, {k: [r[k] for r in rows] for k in keys},
                                        float(c["seconds"]), int(c["tokens"]), groups, {"config": cfg.key})
        out[cfg.key] = per
        log.info("grid %s done", cfg.key)
    return out


# ------------------------------------------------------------------------------------- QUICK inputs ----

def tiny_llama(d: str | Path, *, vocab: int = 128, hidden: int = 64, inter: int = 128, layers: int = 2,
               heads: int = 4, kv: int = 2, head_dim: int = 16, scale: float = 0.15, max_positions: int = 256,
               seed: int = 0, rng: np.random.Generator | None = None) -> Path:
    """A random Llama checkpoint in ``d`` (config.json, model.safetensors, tokenizer.json; NumPy only, no torch):
    untied embeddings (std 1) and lm_head (std 0.3), projections of std ``scale``, norms around 1, and a
    word-level tokenizer over ``<unk> <s> </s> w3 .. w{vocab-1}`` (ids = the numbers; BOS 1, EOS 2). Draws from
    ``rng`` when given (else ``default_rng(seed)``). The notebooks' QUICK model and the evaluation tests' model."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from uniql.formats.safetensors import save_file

    d = Path(d)
    rng = np.random.default_rng(seed) if rng is None else rng
    V, H, I = vocab, hidden, inter
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(3, V)]
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=V, hidden_size=H,
               intermediate_size=I, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
               head_dim=head_dim, max_position_embeddings=max_positions, rms_norm_eps=1e-6, rope_theta=10000.0,
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, hidden_act="silu")

    def w(*shape: int, s: float = scale) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(np.float32)

    t = {"model.embed_tokens.weight": w(V, H, s=1.0), "lm_head.weight": w(V, H, s=0.3),
         "model.norm.weight": 1 + w(H, s=0.1)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t |= {p + "input_layernorm.weight": 1 + w(H, s=0.1), p + "post_attention_layernorm.weight": 1 + w(H, s=0.1),
              p + "self_attn.q_proj.weight": w(heads * head_dim, H), p + "self_attn.k_proj.weight": w(kv * head_dim, H),
              p + "self_attn.v_proj.weight": w(kv * head_dim, H), p + "self_attn.o_proj.weight": w(H, heads * head_dim),
              p + "mlp.gate_proj.weight": w(I, H), p + "mlp.up_proj.weight": w(I, H),
              p + "mlp.down_proj.weight": w(H, I)}
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    save_file(d / "model.safetensors", t)
    tok = Tokenizer(models.WordLevel({x: i for i, x in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(d / "tokenizer.json"))
    return d


def tiny_inputs(work: str | Path, seed: int = 0, ablations: bool = True, artifacts: bool = True) -> dict[str, Path]:
    """A random 2-layer Llama (word-level tokenizer over w3..w127), its fp32 and int4 artifacts (random calibration
    ids), with ``ablations`` also an fp32 artifact ranked by weight magnitude ("fp32-magnitude"), a 40-document
    multiple-choice requests file (olmo-eval format) and a text file: the notebooks' QUICK setting. Returns
    {"base", "fp32", "int4", ["fp32-magnitude",] "task", "text"} (without ``artifacts``: no artifacts at all)."""
    import gzip

    import uniql

    work = Path(work)
    rng = np.random.default_rng(seed)
    V = 128
    base = tiny_llama(work / "base", vocab=V, rng=rng)
    calib = rng.integers(3, V, size=(8, 32))
    kinds = ([("fp32", False, "uniql"), ("int4", True, "uniql")] if artifacts else []) + (
        [("fp32-magnitude", False, "magnitude")] if ablations and artifacts else [])
    arts = {label: uniql.compress(base, work / label, calibration=calib, num_samples=8, seq_len=32, quantize=q,
                                  scorer=sc, overwrite=True, progress=False) for label, q, sc in kinds}
    lines = []
    for doc in range(40):
        n = 2 + doc % 3
        ctx = " ".join(f"w{x}" for x in rng.integers(3, V, size=6))
        for idx in range(n):
            cont = " " + " ".join(f"w{x}" for x in rng.integers(3, V, size=1 + idx % 2))
            lines.append({"request_type": "loglikelihood", "doc": {}, "request": {"context": ctx, "continuation": cont},
                          "idx": idx, "task_name": "toy", "doc_id": doc, "native_id": doc, "label": doc % n})
    task = work / "toy.jsonl.gz"
    with gzip.open(task, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    text = work / "toy.txt"
    text.write_text(" ".join(f"w{x}" for x in rng.integers(3, V, size=1024)))
    return {"base": base, **{k: Path(v) for k, v in arts.items()}, "task": task, "text": text}

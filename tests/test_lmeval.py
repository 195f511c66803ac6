"""uniql as an lm-eval-harness model, offline: local task definitions (YAML over small JSON files) of the three
request types, answers equal to uniql.eval / a NumPy reference / greedy generation on the same requests, the plain
``lm_eval --model uniql`` command line through the startup hook, and clear errors for malformed task files,
unknown task names and bad model arguments."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_zeroshot import LL_ATOL, _make_model_dir, _ref_ll

pytest.importorskip("lm_eval")
lmeval = pytest.importorskip("uniql.eval.lmeval")

import uniql  # noqa: E402
from uniql import eval as ue  # noqa: E402
from uniql.eval import zeroshot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MC = [{"context": "w3 w4 w5", "choices": ["w6 w7", "w8"], "gold": 0},
      {"context": "w10 w11 w12 w13", "choices": ["w14 w15 w16", "w17", "w18 w19"], "gold": 2},
      {"context": "w30 w31 w32", "choices": ["w34 w35", "w36"], "gold": 1},
      {"context": "w40 w41", "choices": ["w42", "w43 w44", "w45", "w46"], "gold": 3}]
ROLL = [{"text": "w3 w4 w5 w6 w7 w8 w9"}, {"text": " ".join(f"w{3 + i % 50}" for i in range(150))}]
GEN = [{"prompt": "w3 w4 w5", "stop": "w9"}, {"prompt": "w20 w21", "stop": "w63"}]
MAX_LEN = 64  # the rolling document of 150 tokens needs 3 windows


def _yaml(task: str, data: Path, body: str) -> str:
    return (f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    src = _make_model_dir(root / "hf")
    tasks = root / "tasks"
    tasks.mkdir()
    for name, rows in (("mc", MC), ("roll", ROLL), ("gen", GEN)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "mc.yaml").write_text(_yaml("toy_mc", root / "mc.jsonl", (
        'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{gold}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n')))
    (tasks / "roll.yaml").write_text(_yaml("toy_roll", root / "roll.jsonl", (
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        'metric_list:\n  - metric: word_perplexity\n')))
    (tasks / "gen.yaml").write_text(_yaml("toy_gen", root / "gen.jsonl", (
        'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{stop}}"\n'
        'generation_kwargs:\n  until: ["w9"]\n  max_gen_toks: 6\n  do_sample: false\n'
        'metric_list:\n  - metric: exact_match\n')))
    return root, src, tasks


@pytest.fixture(scope="module")
def result(setup):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    _, src, tasks = setup
    return lmeval.run(src, ["toy_mc", "toy_roll", "toy_gen"], include_path=tasks, log_samples=True,
                      max_length=MAX_LEN)


def test_multiple_choice_matches_uniql_eval(setup, result):
    _, src, _ = setup
    model = uniql.load(src, max_seq=MAX_LEN)
    docs = tuple(zeroshot.Doc(i, (r["context"],) * len(r["choices"]), tuple(" " + c for c in r["choices"]),
                              r["gold"]) for i, r in enumerate(MC))
    ours = ue.evaluate(model, [ue.EvalTask("toy", "choice", docs, "test")], progress=False)[None]["toy"]
    got = result["results"]["toy_mc"]
    assert got["acc,none"] == pytest.approx(ours.acc) and got["acc_norm,none"] == pytest.approx(ours.acc_norm)
    assert got["acc_stderr,none"] == pytest.approx(ours.acc_stderr)
    s = ue.Scorer(model)
    for sample in result["samples"]["toy_mc"]:
        d = docs[sample["doc_id"]]
        lls = [float(r[0][0]) for r in sample["resps"]]
        ref = [s.loglikelihood(*zeroshot.encode_pair(model.tokenizer, c, k, 1))[0]
               for c, k in zip(d.contexts, d.continuations)]
        np.testing.assert_allclose(lls, ref, rtol=1e-6, atol=1e-6)


def test_rolling_loglikelihood_against_numpy(setup, result):
    _, src, _ = setup
    model = uniql.load(src)  # 128 positions: the reference feeds a window plus its last token
    for sample in result["samples"]["toy_roll"]:
        ids = ue.encode(model.tokenizer, ROLL[sample["doc_id"]]["text"])
        # lm-eval's windows: MAX_LEN tokens predicted per window, the first conditioned on bos, each later one on the
        # tokens before it that fill its MAX_LEN inputs
        ref, start = 0.0, 0
        while start < len(ids):
            end = min(start + MAX_LEN, len(ids))
            ctx = [1] if start == 0 else ids[end - MAX_LEN - 1:start]
            ref += _ref_ll(model, ctx, ids[start:end])
            start = end
        assert float(sample["resps"][0][0]) == pytest.approx(ref, abs=LL_ATOL * 10)
    wp = result["results"]["toy_roll"]["word_perplexity,none"]
    assert math.isfinite(wp) and wp > 1


def test_generate_until_is_greedy_and_stops(setup, result):
    _, src, _ = setup
    model = uniql.load(src, max_seq=MAX_LEN)
    for sample in result["samples"]["toy_gen"]:
        g = GEN[sample["doc_id"]]
        greedy = model.tokenizer.decode(model.generate(ue.encode(model.tokenizer, g["prompt"]), max_new_tokens=6))
        out = sample["resps"][0][0]
        cut = greedy.find("w9")
        assert out == (greedy if cut < 0 else greedy[:cut])


def test_lm_eval_command_line_through_the_startup_hook(setup, tmp_path):
    """``lm_eval --model uniql``: the interpreter processes uniql_lmeval.pth as it would in site-packages."""
    root, src, tasks = setup
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "uniql_lmeval.pth").write_text((ROOT / "uniql_lmeval.pth").read_text())
    code = (f"import site, sys; site.addsitedir({str(site_dir)!r}); from lm_eval.__main__ import cli_evaluate; "
            f"sys.argv = ['lm_eval'] + sys.argv[1:]; cli_evaluate()")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code, "--model", "uniql", "--model_args", f"artifact={src},rate=0",
                        "--tasks", "toy_mc", "--include_path", str(tasks)], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "|toy_mc" in r.stdout and "acc_norm" in r.stdout


def test_errors(setup, tmp_path, capsys):
    root, src, tasks = setup
    with pytest.raises(uniql.InvalidArgumentError, match="unknown task 'toy_mcc'.*did you mean toy_mc"):
        lmeval.check_tasks(["toy_mcc"], tasks)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "b.yaml").write_text('task: b\noutput_type: multiple_choice\ndoc_to_text: "{{context}\n')
    with pytest.raises(uniql.FormatError, match=r"b\.yaml' is not valid YAML.*line"):
        lmeval.check_tasks(["b"], bad)
    (bad / "b.yaml").write_text("task: b\noutput_type: multiple_choise\n")
    with pytest.raises(uniql.FormatError, match="output_type 'multiple_choise' is not one of"):
        lmeval.check_tasks(["b"], bad)
    (bad / "b.yaml").write_text("- just\n- a list\n")
    with pytest.raises(uniql.FormatError, match="b.yaml"):
        lmeval.check_tasks(["b"], bad)
    with pytest.raises(uniql.InvalidArgumentError, match="does not exist"):
        lmeval.check_tasks(["toy_mc"], tmp_path / "nowhere")
    assert lmeval.main(["--model", "uniql", "--model_args", f"artifact={src}", "--tasks", "nope",
                        "--include_path", str(tasks)]) == 2
    assert "uniql lm-eval: error: unknown task 'nope'" in capsys.readouterr().err
    with pytest.raises(uniql.InvalidArgumentError, match="needs model_args artifact=PATH"):
        lmeval.UniqlLM()
    with pytest.raises(uniql.InvalidArgumentError, match="unknown model_args for uniql: colour"):
        lmeval.UniqlLM(artifact=str(src), colour="red")
    with pytest.raises(uniql.UniqlError):
        lmeval.UniqlLM(artifact=str(src), rate=0.15)  # a plain checkpoint serves rate 0 only

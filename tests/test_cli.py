"""The command line (uniql.cli / python -m uniql): argument errors exit 2 with one line ``uniql: error: ...`` and
no traceback; convert -> generate -> ppl end to end on a tiny GGUF matches transformers."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

import uniql
from uniql import cli
from uniql.formats import checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PPL_RTOL = 1e-4  # C runtime fp32 vs PyTorch fp32 perplexity on a 2-layer model


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("uniql: error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: COMMAND"),
    (["convert"], "convert takes [MODEL.gguf] OUT_DIR (or -o OUT_DIR), got 0 paths"),
    (["convert", "a.gguf", "out", "extra"], "convert takes [MODEL.gguf] OUT_DIR (or -o OUT_DIR), got 3 paths"),
    (["convert", "a.gguf", "out", "-o", "o2"], "convert takes [MODEL.gguf] with -o OUT_DIR, got 2 paths"),
    (["convert", "out", "--dtype", "int3"], "argument --dtype: invalid choice: 'int3'"),
    (["generate", "dir"], "required: PROMPT"),
    (["generate", "dir", "hi", "--max-new-tokens", "0"], "argument --max-new-tokens: '0' must be > 0"),
    (["generate", "dir", "hi", "--temperature", "-1"], "argument --temperature: '-1' must be >= 0"),
    (["generate", "dir", "hi", "--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    (["ppl", "dir", "--text", "wiki", "--file", "f.txt"], "argument --file: not allowed with argument --text"),
    (["ppl", "dir", "--window", "8", "--stride", "16"], "--stride (16) must not exceed --window (8)"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
])
def test_argument_errors(argv, message, capsys):
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse-level errors exit from parse_args
        rc = e.code
    assert rc == cli.EXIT_ERROR
    assert message in _error_line(capsys)


def test_runtime_errors_are_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert cli.main(["generate", str(missing), "hello"]) == cli.EXIT_ERROR
    assert f"model directory '{missing}' does not exist" in _error_line(capsys)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "mamba"}')
    assert cli.main(["generate", str(tmp_path / "m"), "hello"]) == cli.EXIT_ERROR
    assert "model_type 'mamba' is not supported" in _error_line(capsys)
    assert cli.main(["convert", str(tmp_path / "x.gguf"), str(tmp_path / "out")]) == cli.EXIT_ERROR
    assert "x.gguf' does not exist" in _error_line(capsys)
    with pytest.raises(checkpoint.ModelNotFoundError):  # --debug: the real exception, with its traceback
        cli.main(["--debug", "generate", str(missing), "hello"])
    assert cli.main(["compress", str(missing), "--refit", "-1"]) == cli.EXIT_ERROR  # checked before any read
    assert "refit must be an integer in 0..64, got -1" in _error_line(capsys)


def test_python_dash_m(tmp_path):
    r = subprocess.run([sys.executable, "-m", "uniql", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"uniql {uniql.__version__}"
    r = subprocess.run([sys.executable, "-m", "uniql", "ppl", str(tmp_path / "none")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"uniql: error: model directory '{tmp_path / 'none'}' does not exist"


# ------------------------------------------------------------------------------------- end to end ----

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A converted tiny Llama GGUF plus a word-level tokenizer.json over its 96 ids; and the source model."""
    from test_convert import tiny_model, write_tiny_gguf
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = tmp_path_factory.mktemp("cli")
    model = tiny_model("llama", tied=False, seed=3)
    gguf_path = write_tiny_gguf(root / "tiny.gguf", model)
    out = root / "hf"
    assert cli.main(["convert", str(gguf_path), str(out), "--no-tokenizer"]) == 0
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, model.config.vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(out / "tokenizer.json"))
    return out, model, tok


def test_convert_prints_output_dir(tiny_dir, capsys, tmp_path):
    out, model, _ = tiny_dir
    from test_convert import write_tiny_gguf

    g = write_tiny_gguf(tmp_path / "t.gguf", model)
    assert cli.main(["convert", str(g), str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "o")
    assert cli.main(["convert", str(g), str(tmp_path / "o")]) == cli.EXIT_ERROR
    assert "not empty (pass overwrite=True / --overwrite" in _error_line(capsys)
    assert cli.main(["convert", str(g), str(tmp_path / "o"), "--overwrite"]) == 0
    got = checkpoint.read_tensors(tmp_path / "o", names=["lm_head.weight"])["lm_head.weight"]
    assert np.array_equal(got, model.lm_head.weight.detach().numpy())


def test_generate_greedy_matches_transformers(tiny_dir, capsys):
    out, model, tok = tiny_dir
    prompt = "w10 w20 w30 w40 w50"
    assert cli.main(["generate", str(out), prompt, "--max-new-tokens", "6"]) == 0
    printed = capsys.readouterr().out.strip()
    ids = torch.tensor([tok.encode(prompt).ids])
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=2, pad_token_id=0)
    expected = tok.decode(ref[0, ids.shape[1]:].tolist())
    assert printed == expected and printed


def _hf_sliding_ppl(model, ids: list[int], window: int, stride: int) -> float:
    """Reference: windows start every `stride`, each scores the tokens not scored before, never the first."""
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        first = max(prev_end, begin + 1)
        if end > first:
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids[begin:end]])).logits[0].double(), -1)
            for t in range(first, end):
                total -= float(logp[t - begin - 1, ids[t]])
                count += 1
        prev_end = end
        if end == len(ids):
            break
    return math.exp(total / count)


def test_ppl_matches_transformers(tiny_dir, tmp_path, capsys):
    out, model, tok = tiny_dir
    rng = np.random.default_rng(7)
    text = " ".join(f"w{i}" for i in rng.integers(3, model.config.vocab_size, size=60))
    f = tmp_path / "text.txt"
    f.write_text(text, encoding="utf-8")
    assert cli.main(["ppl", str(out), "--file", str(f), "--window", "16", "--stride", "8",
                     "--max-tokens", "40"]) == 0
    line = capsys.readouterr().out.strip()
    assert "40 tokens, window 16, stride 8" in line
    value = float(line.split()[1])
    expected = _hf_sliding_ppl(model, tok.encode(text).ids[:40], 16, 8)
    assert value == pytest.approx(expected, rel=PPL_RTOL)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"w3 w4 \xff")
    assert cli.main(["ppl", str(out), "--file", str(bad)]) == cli.EXIT_ERROR
    assert "is not UTF-8 text" in _error_line(capsys)

"""The README's CLI block, run command by command on a tiny model, so the README cannot drift from the code.

Every line of the first ``sh`` block under ``## CLI`` is either a ``uniql ...`` command, which is expanded and run
here (every optional ``[...]`` group included, the first alternative of ``a | b`` groups, placeholders such as
MODEL_DIR, ART, OUT, N filled in with a tiny model, small numbers and fresh paths), or one of the lines in
``NOT_RUN_HERE`` with the test that covers it. A placeholder this file does not know fails the test: teach it here
when the README gains one. Named alternatives (``--model llama3.1-8b|smollm2|DIR``) are checked to resolve.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from uniql import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# Lines of the CLI block that are not `uniql` commands, and where they are exercised instead.
NOT_RUN_HERE = {
    "python -m uniql.bench quality": "perplexity against llama.cpp on SmolLM2 (minutes): tests/test_quality.py",
    "torchrun ": "several processes: tests/test_finetune.py runs torchrun with two gloo processes",
    "uniql serve": "a server that runs until stopped: tests/test_serve.py drives it with the openai client",
    "python -m uniql.demo": "the main job (`make demo`, minutes on SmolLM2); tests/test_demo-like runs are manual",
    "UNIQL_DEMO_JSON=": "the notebook: tests/test_notebooks.py executes it both ways",
}

# Values for placeholders that follow an option (the option decides; e.g. R is a rate after --rate).
OPTION_VALUES = {"--max-new-tokens": "4", "--temperature": "0.7", "--top-p": "0.9", "--seed": "0", "--rate": "0.15",
                 "--limit": "2", "--threads": "1", "--repeats": "1", "--steps": "3", "--batch": "2",
                 "--samples": "4", "--seq-len": "32", "--gen": "4", "--prompt": "16", "--window": "64",
                 "--tpot-ms": "50", "--time-limit": "600", "--text": "c4", "--eval-every": "2", "--min-rate": "0", "--max-rate": "0.35", "--shots": "1"}
SCALARS = {"N": "2", "T": "0.7", "P": "0.9", "S": "0", "R": "0.15"}


def cli_block() -> list[str]:
    """The commands of the README's CLI block: comments dropped, continuation lines joined."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## CLI\s*$.*?^```sh\n(.*?)^```", text, flags=re.S | re.M)
    assert m, "README.md has no ```sh block under '## CLI'"
    cmds: list[str] = []
    joining = False
    for raw in m.group(1).splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            joining = False
            continue
        cont = joining or raw[:1].isspace()
        body = line.rstrip("\\").strip()
        if cont and cmds:
            cmds[-1] += " " + body
        else:
            cmds.append(body)
        joining = line.endswith("\\")
    return cmds


def _first_alternatives(cmd: str) -> str:
    """[...] groups lose their brackets; inside one, `a | b` (spaced pipes) keeps its first alternative."""
    def one(m: re.Match) -> str:
        return m.group(1).split(" | ")[0]
    prev = None
    while prev != cmd:
        prev, cmd = cmd, re.sub(r"\[([^\[\]]*)\]", one, cmd)
    return cmd


class Filler:
    """Turns README placeholders into concrete paths and values on the tiny model."""

    def __init__(self, tmp: Path, model_dir: Path, gguf: Path, text_file: Path):
        self.tmp, self.model_dir, self.gguf, self.text_file = tmp, model_dir, gguf, text_file
        self.art: Path | None = None  # the artifact the compress line writes
        self.lora: Path | None = None  # the LoRA file a finetune line saves
        self.n = 0
        self.names: list[str] = []  # literal alternatives of --model, checked separately

    def fresh(self, stem: str) -> Path:
        self.n += 1
        return self.tmp / f"{stem}{self.n}"

    def value(self, tok: str, prev: str | None, sub: str) -> str:
        alts = tok.split("|") if "|" in tok and not tok.startswith("-") else [tok]
        if len(alts) > 1:
            known = [a for a in alts if a in ("MODEL_DIR", "ART", "DIR")]
            if prev == "--model":
                self.names += [a for a in alts if a not in known]
            pick = "ART" if "ART" in known and self.art is not None else (known[0] if known else alts[0])
            return self.value(pick, prev, sub)  # the artifact where one exists: --rate needs it
        if prev in OPTION_VALUES:  # README values are examples; the tiny model runs small ones
            return OPTION_VALUES[prev]
        if tok in SCALARS:
            return SCALARS[tok]
        if tok == "MODEL.gguf":
            return str(self.gguf)
        if tok in ("MODEL_DIR", "DIR"):
            return str(self.model_dir)
        if tok == "ART" and prev in ("-o", "--output", "--out"):
            self.art = self.fresh("art")
            return str(self.art)
        if tok == "ART":
            assert self.art is not None, f"`uniql {sub}` reads ART before a README line writes one"
            return str(self.art)
        if tok == "F" and prev == "--save-lora":
            self.lora = self.fresh("lora").with_suffix(".safetensors")
            return str(self.lora)
        if tok == "LORA":
            assert self.lora is not None, "README merges a LORA before a line saves one (--save-lora F)"
            return str(self.lora)
        if tok in ("D",):
            return str(self.fresh("dir"))
        if tok in ("OUT", "OUT_DIR"):
            return str(self.fresh("out"))
        if tok == "F":
            if prev == "--file":
                return str(self.text_file)
            return str(self.fresh("file") .with_suffix(".json"))
        if "," in tok and "..." in tok:  # piqa,arc_easy,...
            return ",".join(t for t in tok.split(",") if t != "...")
        if re.fullmatch(r"[A-Z][A-Z_.]*", tok) and tok not in ("PROMPT",):
            pytest.fail(f"README CLI placeholder {tok!r} (after {prev!r} in `uniql {sub}`) is unknown to "
                        "tests/test_readme.py: teach it there")
        return tok

    def expand(self, cmd: str) -> list[str]:
        toks = shlex.split(_first_alternatives(cmd))
        assert toks[0] == "uniql", cmd
        out: list[str] = []
        for i, t in enumerate(toks[1:]):
            prev = toks[i] if i > 0 else None
            if t == "...":  # "--opt a=b ...": more of the same, shown once
                continue
            out.append(self.value(t, prev, toks[1]))
        return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama as a GGUF and as a converted checkpoint with a word-level tokenizer; a text file."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from test_convert import write_tiny_gguf
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=5000.0,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)).eval()
    gguf_path = write_tiny_gguf(root / "tiny.gguf", model)
    hf = root / "hf"
    assert cli.main(["convert", str(gguf_path), str(hf), "--no-tokenizer"]) == 0
    words = [f"w{i}" for i in range(3, 96)]
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(hf / "tokenizer.json"))
    rng = np.random.default_rng(0)
    text = root / "text.txt"
    text.write_text(" ".join(rng.choice(words, 2000)), encoding="utf-8")
    return root, gguf_path, hf, text


def test_cli_block_is_parsed():
    cmds = cli_block()
    subs = {c.split()[1] for c in cmds if c.startswith("uniql ")}
    assert {"convert", "compress", "generate", "finetune", "quantize", "eval", "ppl", "bench"} <= subs
    for c in cmds:
        assert any(c.startswith(k) for k in ("uniql ", *NOT_RUN_HERE)), \
            f"README CLI line not run by any test: {c!r}"


def test_every_readme_cli_command_runs(tiny, capsys, monkeypatch):
    """Each README CLI line, in README order (compress writes the ART the later lines read), exits 0."""
    pytest.importorskip("torch")
    root, gguf_path, hf, text = tiny
    monkeypatch.setenv("UNIQL_NO_FETCH", "1")  # packaged texts come from `make setup`; never fetch in a test
    fill = Filler(root / "runs", hf, gguf_path, text)
    fill.tmp.mkdir()
    ran = []
    for cmd in cli_block():
        if not cmd.startswith("uniql ") or any(cmd.startswith(k) for k in NOT_RUN_HERE):
            continue
        argv = fill.expand(cmd)
        if argv[0] == "bench":
            argv += ["--no-micro", "--no-torch", "--no-llama-cpp"] if "--no-micro" not in argv else []
        rc = cli.main(argv)
        out, err = capsys.readouterr()
        assert rc == 0, f"`uniql {shlex.join(argv)}` (README: {cmd!r}) exited {rc}: {err.strip()[-600:]}"
        ran.append(argv[0])
        if argv[0] in ("compress", "finetune", "quantize", "convert"):
            assert Path(out.strip().splitlines()[-1]).is_dir(), out
        if "--json" in argv:
            json.loads(Path(argv[argv.index("--json") + 1]).read_text())
    assert {"convert", "compress", "finetune", "quantize", "generate", "eval", "ppl", "bench"} <= set(ran)


def test_readme_model_names_resolve():
    """`uniql bench --model NAME` accepts every name the README shows (smollm2 was once refused)."""
    from uniql.bench import SHAPES, BenchConfig

    names: list[str] = []
    for cmd in cli_block():
        m = re.search(r"--model ([^\s\]]+)", cmd)
        if m:
            names += [a for a in m.group(1).split("|") if a not in ("DIR", "MODEL_DIR")]
    assert names, "the README's bench line lost its --model names"
    for n in names:
        (canon,) = BenchConfig(models=(n,)).models
        assert canon in SHAPES, f"README model name {n!r} does not resolve to a named shape"


@pytest.mark.parametrize("argv_tail", [["-o", "{out}"], ["--output", "{out}"], ["{out}"]])
def test_output_dir_spellings(tiny, argv_tail, tmp_path, capsys):
    """convert and compress take the output as -o, --output or a positional (issue: two spellings before)."""
    root, gguf_path, hf, text = tiny
    out = tmp_path / "o"
    tail = [a.format(out=out) for a in argv_tail]
    assert cli.main(["convert", str(gguf_path), *tail, "--no-tokenizer"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    art = tmp_path / "a"
    tail = [a.format(out=art) for a in argv_tail]
    assert cli.main(["compress", str(hf), *tail, "--no-quantize", "--file", str(text), "--samples", "2",
                     "--seq-len", "16"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(art)
    assert (art / "config.json").is_file()


def test_two_different_outputs_are_refused(tiny, tmp_path, capsys):
    _, _, hf, _ = tiny
    assert cli.main(["compress", str(hf), str(tmp_path / "a"), "-o", str(tmp_path / "b")]) == cli.EXIT_ERROR
    assert "two output directories given" in capsys.readouterr().err

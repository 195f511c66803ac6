"""The package's shape: modules share only public names, serving never imports the compression pipeline, no
submodule is shadowed by another object of the same name (`uniql.compress` / `uniql.finetune` are the callable
subpackages themselves)."""
from __future__ import annotations

import ast
import builtins
import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import uniql
from _helpers import tiny_llama_config, tiny_llama_tensors, write_tiny_llama

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "uniql"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), p))
    return out


def _imports_from(mod: str, path: Path) -> list[tuple[int, str, str]]:
    """(line, source module, name) of every `from X import name` in `path`, relative imports resolved."""
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
            src = ".".join(base + ([node.module] if node.module else []))
        else:
            src = node.module or ""
        out += [(node.lineno, src, a.name) for a in node.names]
    return out


def test_the_scan_sees_every_module_and_resolves_relative_imports(tmp_path):
    assert {"uniql", "uniql.compress", "uniql.compress.pipeline", "uniql.models.runtime", "uniql.finetune",
            "uniql.eval.runner"} <= set(dict(_modules()))
    f = tmp_path / "x.py"
    f.write_text("from .tasks import _hidden\nfrom .. import linalg\nfrom uniql.compress.quant import pack\n")
    assert _imports_from("uniql.eval.x", f) == [(1, "uniql.eval.tasks", "_hidden"), (2, "uniql", "linalg"),
                                                (3, "uniql.compress.quant", "pack")]


def test_no_module_imports_another_modules_underscore_names():
    bad = []
    for mod, path in _modules():
        for line, src, name in _imports_from(mod, path):
            if src != "uniql" and not src.startswith("uniql."):
                continue
            if src == "uniql._C" or (src == "uniql" and name == "_C"):
                continue  # the extension module: private by its name only
            if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                bad.append(f"{path.relative_to(ROOT)}:{line}: from {src} import {name}")
    assert not bad, "\n".join(bad)


def test_no_module_reads_another_modules_underscore_attributes():
    """`zeroshot._score_lists(...)`-style reads of a uniql module's private name, through an imported module."""
    bad, known = [], set(dict(_modules()))
    for mod, path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        aliases = {}  # local name -> uniql module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("uniql") and not node.level:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if full in known:
                        aliases[a.asname or a.name] = full
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in known and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != mod):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


def _module_level_graph() -> dict[str, set[str]]:
    """uniql module -> the uniql modules it imports when it is imported (module-level statements, including
    those inside a top-level `if`/`try`; imports inside functions run later and cannot form a cycle)."""
    mods = dict(_modules())
    graph = {}
    for mod, path in mods.items():
        deps = set()
        for stmt in ast.parse(path.read_text(), str(path)).body:
            nodes = list(ast.walk(stmt)) if isinstance(stmt, (ast.If, ast.Try)) else [stmt]
            for node in nodes:
                if isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names if a.name in mods}
                elif isinstance(node, ast.ImportFrom):
                    for line, src, name in _imports_from(mod, path):
                        if line != node.lineno:
                            continue
                        full = f"{src}.{name}"
                        if full in mods:
                            deps.add(full)
                        elif src in mods and full != "uniql._C":
                            deps.add(src)
        graph[mod] = deps - {mod}
    return graph


def test_no_import_cycles():
    graph = _module_level_graph()
    assert "uniql.models.runtime" in graph["uniql.models.hybrid"] and "uniql.compress.pipeline" in graph["uniql.compress.requantize"]
    cycles, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                cycles.append(" -> ".join(stack[stack.index(v):] + [v]))
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


@pytest.fixture(scope="module", params=["llama", "bamba"])
def tiny_artifact(request, tmp_path_factory):
    """An int4 artifact of a tiny random Llama, or of a Bamba (Mamba2 + partial-RoPE attention: the hybrid loader)."""
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "llama":
        cfg = tiny_llama_config(vocab=64, hidden=32, inter=64, layers=2, heads=4, kv=2, head_dim=8)
        src = write_tiny_llama(tmp / "m", cfg, tiny_llama_tensors(cfg))
    else:
        pytest.importorskip("transformers")
        from test_ssm import make_hf  # small random HF models of each hybrid architecture

        src = tmp / "m"
        make_hf("bamba")[0].save_pretrained(src)
    ids = np.random.default_rng(0).integers(0, 64, size=(4, 16)).astype(np.int32)
    return uniql.compress(src, tmp / "a", calibration=ids, num_samples=4, seq_len=16, group=16, progress=False)


PIPELINE = ("uniql.compress", "uniql.compress.pipeline", "uniql.compress.layers", "uniql.compress.steps",
            "uniql.compress.sorting",
            "uniql.compress.requantize", "uniql.finetune", "torch")


def test_loading_an_artifact_imports_no_compression_pipeline(tiny_artifact):
    code = ("import json, sys, uniql\n"
            f"m = uniql.load({str(tiny_artifact)!r}, rate=0.25)\n"
            "logits = m.logits([1, 2, 3])\n"
            "print(json.dumps({'shape': list(logits.shape), 'mods': sorted(sys.modules)}))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["shape"][-1] == json.loads((tiny_artifact / "config.json").read_text())["vocab_size"]
    assert "uniql.models.runtime" in out["mods"] and "uniql.formats.artifact" in out["mods"]  # the check sees the loader
    assert [m for m in PIPELINE if m in out["mods"]] == []


def test_one_model_class_and_one_loader_for_every_family(tiny_artifact):
    """A Llama and a Bamba artifact load through the one loader as the one elastic class of the one model class,
    with keep sizes as {component: size} dicts."""
    from uniql.formats.artifact import ElasticModel
    from uniql.models.runtime import KEEP_NAMES, Model

    m = uniql.load(tiny_artifact, rate=0.25)
    assert type(m) is ElasticModel and isinstance(m, Model)
    keeps = [m.keep(i) for i in range(m.num_layers)]
    assert keeps == m.keep_sizes(0.25) and all(set(k) <= set(KEEP_NAMES) and k for k in keeps)
    assert m.can_truncate == ("mamba" not in m.layer_types)
    m.set_rate(m.meta.max_rate)
    assert [m.keep(i) for i in range(m.num_layers)] == m.keep_sizes(m.meta.max_rate)


def test_import_uniql_imports_no_compression_pipeline():
    r = subprocess.run([sys.executable, "-c", "import json, sys, uniql; print(json.dumps(sorted(sys.modules)))"],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    mods = json.loads(r.stdout)
    assert "uniql.formats.checkpoint" in mods and [m for m in PIPELINE if m in mods] == []


def test_no_submodule_is_shadowed_by_a_package_attribute():
    """Every module of uniql is reachable by attribute from the package after it is imported: `uniql.a.b` is the
    module `uniql.a.b`, never a function or another object of the same name."""
    for mod, _ in _modules():
        if mod == "uniql" or mod.endswith("__main__"):  # __main__ runs its command line
            continue
        m = importlib.import_module(mod)
        obj = uniql
        for part in mod.split(".")[1:]:
            obj = getattr(obj, part)
        assert obj is m, f"{mod} is shadowed by {obj!r}"


def test_the_entry_points_are_the_callable_subpackages(monkeypatch):
    """`uniql.compress(...)` and `uniql.finetune(...)` call the entry functions; the names are the packages."""
    import uniql.compress as comp  # noqa: PLC0415
    import uniql.finetune as ft  # noqa: PLC0415
    from uniql.compress import pipeline  # noqa: PLC0415

    assert comp is uniql.compress and isinstance(comp, types.ModuleType) and callable(comp)
    assert ft is uniql.finetune and isinstance(ft, types.ModuleType) and callable(ft)
    assert comp.entry_point() is pipeline.compress and ft.entry_point() is ft.__dict__["finetune"]
    assert comp.compress is pipeline.compress and uniql.quantize_artifact is comp.quantize_artifact
    seen = []
    monkeypatch.setattr(pipeline, "compress", lambda *a, **k: seen.append((a, k)) or "art")
    assert uniql.compress("src", "out", quantize=False) == "art" and seen == [(("src", "out"), {"quantize": False})]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        uniql.compress.nope  # noqa: B018


# ------------------------------------------------------------------------------------------ error contract ----
_BUILTIN_EXC = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type)
                and issubclass(getattr(builtins, n), BaseException)}

# (file, line's statement kind) -> why a builtin is right there. Everything else a uniql module raises is a
# uniql.errors class (each also derives from the matching builtin, so `except ValueError` keeps working).
_ALLOWED_BUILTIN = {
    ("uniql/__init__.py", "AttributeError"): "module __getattr__ protocol (PEP 562)",
    ("uniql/compress/__init__.py", "AttributeError"): "module __getattr__ protocol (PEP 562)",
    ("uniql/eval/results.py", "AttributeError"): "__getattr__ protocol (getattr/hasattr rely on AttributeError)",
    ("uniql/bench/quality.py", "SystemExit"): "`python -m` entry point's exit status",
    ("uniql/eval/lmeval.py", "SystemExit"): "`python -m` entry point's exit status",
}
# asserts that only narrow a type for the checker (the value was checked just before), never input validation
_ALLOWED_ASSERT = {"uniql/bench/llamacpp.py": "the plan holds only tensors found above (missing ones raised)"}
# exception classes outside uniql.errors that are not UniqlError subclasses: caught inside their module
_ALLOWED_CLASSES = {("uniql/cli.py", "_UsageError"): "reported as an argparse usage error (exit status 2)",
                    ("uniql/serve/server.py", "APIError"): "answered as a 4xx/5xx JSON body, never raised to a caller"}


def _raises() -> list[tuple[str, int, str]]:
    out = []
    for _, path in _modules():
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Raise) and node.exc is not None:
                e = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(e, ast.Name) and e.id in _BUILTIN_EXC:
                    out.append((rel, node.lineno, e.id))
            elif isinstance(node, ast.Assert):
                out.append((rel, node.lineno, "assert"))
    return out


def test_modules_raise_uniql_errors_not_bare_builtins():
    bad = [f"{f}:{ln}: {k}" for f, ln, k in _raises()
           if (f, k) not in _ALLOWED_BUILTIN and not (k == "assert" and f in _ALLOWED_ASSERT)]
    assert not bad, "raise a uniql.errors class instead:\n" + "\n".join(bad)
    seen = {(f, k) for f, _, k in _raises()}
    assert set(_ALLOWED_BUILTIN) <= seen, "stale allow-list entries: " + str(set(_ALLOWED_BUILTIN) - seen)
    assert {f for f, k in seen if k == "assert"} == set(_ALLOWED_ASSERT)


def test_every_exception_class_is_a_uniql_error():
    found = {}
    for _, path in _modules():
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.ClassDef) and any(isinstance(b, ast.Name) and (b.id in _BUILTIN_EXC or
                                                                               b.id.endswith("Error"))
                                                      for b in node.bases):
                found[(rel, node.name)] = node
    assert ("uniql/errors.py", "OutputExistsError") in found  # the scan sees the classes
    assert [n for f, n in found if n == "OutputExistsError"] == ["OutputExistsError"]  # one class, in errors.py
    for (rel, name) in found:
        if (rel, name) in _ALLOWED_CLASSES or rel.endswith(".pyi"):
            continue
        mod = importlib.import_module(rel[:-3].replace("/", ".").removesuffix(".__init__"))
        cls = getattr(mod, name)
        assert issubclass(cls, (uniql.UniqlError, Warning)), f"{rel}: {name} is not a UniqlError"


def test_a_bad_tensor_name_type_is_a_dtype_error(tmp_path):
    from uniql.formats import safetensors as st
    st.save_file(tmp_path / "a.safetensors", {"a": np.zeros(2, np.float32)})
    with st.safe_open(tmp_path / "a.safetensors") as f, pytest.raises(uniql.DTypeError, match="must be a str"):
        f.get(3)

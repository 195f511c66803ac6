"""The project documents itself: no file points at documents outside the repository, and every reference to a
section of docs/design.md ("docs/design.md §N", "§N.M" next to it) names a section that exists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
SOURCES = ("csrc", "uniql", "tests", "benchmarks", "notebooks", "docs")
SUFFIXES = {".c", ".h", ".inc", ".py", ".pyi", ".md", ".ipynb", ".toml", ".txt"}
#: names of the background documents that live outside the repository (split so this file does not match itself)
OUTSIDE = ("DESIGN" + ".md", "STYLE" + ".md", "method" + "-notes", "method" + " notes", "../" + "shared")


def _project_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "setup.py", ROOT / "pyproject.toml"]
    for d in SOURCES:
        files += [p for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in SUFFIXES
                  and "out" not in p.relative_to(ROOT).parts]
    return [p for p in files if p.is_file()]


def test_no_file_points_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}: {name}" for p in _project_files()
            for name in OUTSIDE if name in p.read_text(encoding="utf-8", errors="replace")]
    assert not hits, hits


#: paths of the machines the project was developed on (split so this file does not match itself); recorded notebook
#: outputs and docs name ~/.cache/uniql and repository-relative paths instead
MACHINE_PATHS = ("/" + "root/", "/" + "work/", "/" + "home/")


def test_no_file_names_a_path_of_a_development_machine():
    hits = [f"{p.relative_to(ROOT)}: {name}" for p in _project_files()
            for name in MACHINE_PATHS if name in p.read_text(encoding="utf-8", errors="replace")]
    assert not hits, hits


def test_design_section_references_resolve():
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", DESIGN.read_text(encoding="utf-8"), re.M))
    assert {"1", "2.1", "3.2", "4", "7"} <= sections  # the numbering the references use
    refs: dict[str, set[str]] = {}
    for p in _project_files():
        text = p.read_text(encoding="utf-8", errors="replace")
        if "design.md" not in text:
            continue
        for ref in re.findall(r"§(\d+(?:\.\d+)?)", text):
            refs.setdefault(ref, set()).add(str(p.relative_to(ROOT)))
    assert refs, "no file refers to a section of docs/design.md"
    missing = {r: sorted(f) for r, f in refs.items() if r not in sections}
    assert not missing, missing

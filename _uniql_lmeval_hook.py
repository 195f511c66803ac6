"""Registers uniql in lm-eval-harness's model registry for the plain ``lm_eval`` command (lm-eval 0.4.x has no
plugin discovery). Imported at interpreter startup by ``uniql_lmeval.pth``; costs one entry on ``sys.meta_path``
and imports nothing: when ``lm_eval.models`` is imported, ``uniql`` is registered as a lazy entry
("uniql.eval.lmeval:UniqlLM"), so uniql itself loads only when ``--model uniql`` asks for it."""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "lm_eval.models"
_ENTRY = ("uniql", "uniql.eval.lmeval:UniqlLM")


def _register() -> None:
    from lm_eval.api.registry import model_registry

    if _ENTRY[0] not in model_registry:
        model_registry.register(_ENTRY[0], target=_ENTRY[1])


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:  # type: ignore[no-untyped-def]
        self._inner.exec_module(module)
        try:
            _register()
        except Exception:  # never break lm-eval's own import (e.g. a registry API that changed)
            pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if _TARGET in sys.modules:  # already imported: register now
        try:
            _register()
        except Exception:
            pass


install()

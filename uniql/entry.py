"""Packages that are also their entry point: ``uniql.compress(...)`` and ``uniql.finetune(...)``.

``uniql.compress`` is one thing, the package of the compression pipeline, and calling it runs the pipeline; the
same holds for ``uniql.finetune``. A package opts in with two lines at its end::

    ENTRY_POINT = "uniql.compress.pipeline:compress"   # "module:function", imported on the first call
    sys.modules[__name__].__class__ = EntryPointPackage

so importing the package stays as light as its ``__init__`` (``import uniql`` and ``uniql.load`` import neither).
"""
from __future__ import annotations

import importlib
import types
from typing import Any, Callable

__all__ = ["EntryPointPackage"]


class EntryPointPackage(types.ModuleType):
    """A module whose calls go to the function its ``ENTRY_POINT`` ("module:function") names."""

    ENTRY_POINT: str

    def entry_point(self) -> Callable[..., Any]:
        """The function a call of the package runs (its module imported now)."""
        mod, _, fn = self.ENTRY_POINT.partition(":")
        return getattr(importlib.import_module(mod), fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.entry_point()(*args, **kwargs)

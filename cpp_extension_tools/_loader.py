"""Importing a published binary, and the in-process memo of loaded modules."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import threading
from types import ModuleType

from ._hashing import file_matches
from ._manifest import Manifest

__all__ = ["import_extension", "memo_get", "memo_put"]

_memo: dict[tuple[str, str], tuple[ModuleType, Manifest]] = {}
_memo_lock = threading.Lock()


def import_extension(name: str, path: str) -> ModuleType:
    """Import the extension module ``name`` from the binary at ``path``.

    Each artifact has a path of its own, so a rebuilt module is a new dlopen
    (the dynamic loader and CPython both cache by path: reusing one path would
    hand back the old code).
    """
    import torch  # noqa: F401  # the binary links to torch's libraries, loaded by this import

    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:  # only for paths without an extension-module suffix
        raise ImportError(f"cannot import {name!r} from {path!r}", name=name, path=path)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def memo_get(folder: str, key: str) -> ModuleType | None:
    """The module this process loaded for a configuration, if its inputs are unchanged."""
    with _memo_lock:
        entry = _memo.get((folder, key))
    if entry is None:
        return None
    module, manifest = entry
    if all(file_matches(record) for record in manifest.inputs):
        return module
    return None


def memo_put(folder: str, key: str, module: ModuleType, manifest: Manifest) -> None:
    with _memo_lock:
        _memo[(folder, key)] = (module, manifest)

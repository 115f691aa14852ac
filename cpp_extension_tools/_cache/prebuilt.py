"""Prebuilt binaries shipped in wheels: the record describing one, and whether it can run here.

A prebuilt binary is ``<dir>/<name>.so`` with ``<dir>/<name>.json`` beside it,
both written by cpp_extension_tools.setuptools_build when a wheel is built.
It is used only when everything the binary depends on matches: the exact torch
build (version, git commit, CUDA version) and C++ ABI, the Python ABI (the
extension suffix), a CPU baseline this CPU implements, and for CUDA code an
architecture list that ends in PTX (so newer GPUs can JIT it) or holds this
GPU. Anything else and the caller builds from source instead, saying why.
The CPU and GPU checks are _cpu's and _cuda's; this module composes them.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .. import _settings
from .._env import cpu as _cpu
from .._env import cuda as _cuda
from .._env import identity as _identity
from .._version import __version__

__all__ = ["DISABLE_JIT_ENV", "PREBUILT_FORMAT", "find_prebuilt", "jit_disabled", "prebuilt_record",
           "unusable_reason"]

PREBUILT_FORMAT = 1
DISABLE_JIT_ENV = _settings.DISABLE_JIT.name  # an alias of the registry's name, for modules that import it


def jit_disabled() -> bool:
    """CACHED_CPP_EXTENSION_DISABLE_JIT; SettingError (a ValueError) for a value that is not a flag."""
    return _settings.DISABLE_JIT.get()


def prebuilt_record(name: str, library_path: str, cpu_baseline: str, with_cuda: bool,
                    cuda_archs: str | None) -> dict[str, Any]:
    """What the binary at ``library_path``, built in this environment, needs to run (written beside it)."""
    torch = _identity.torch_identity()
    torch.pop("posed_as", None)
    python = _identity.python_identity()
    python.pop("posed_as", None)
    return {"format": PREBUILT_FORMAT, "name": name, "library_size": os.path.getsize(library_path),
            "built_by": __version__, "torch": torch,
            "python": python, "cpu_baseline": cpu_baseline, "with_cuda": with_cuda, "cuda_archs": cuda_archs}


def find_prebuilt(directory: str, name: str) -> tuple[str | None, str]:
    """(the binary to load, "") or (None, why not): one JSON read and a stat, no hashing."""
    record_path = os.path.join(directory, f"{name}.json")
    try:
        with open(record_path, "rb") as f:
            record = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        return None, f"no prebuilt binary for {name!r} in {directory}"
    except (OSError, ValueError) as e:
        return None, f"the prebuilt record {record_path} is unreadable ({e})"
    if not isinstance(record, dict):
        return None, f"the prebuilt record {record_path} is not an object"
    why = unusable_reason(record, name)
    if why:
        return None, f"the prebuilt binary in {directory} {why}"
    library = os.path.join(directory, f"{name}.so")
    try:
        size = os.stat(library).st_size
    except OSError:
        return None, f"the prebuilt binary {library} is missing"
    if size != record.get("library_size"):
        return None, f"the prebuilt binary {library} is damaged (its size differs from its record)"
    return library, ""


def unusable_reason(record: dict[str, Any], name: str) -> str:
    """Why a binary described by ``record`` cannot run here ("" when it can)."""
    if record.get("format") != PREBUILT_FORMAT or record.get("name") != name:
        return f"was written for another module or by an incompatible version (format {record.get('format')!r})"
    torch = _identity.torch_identity()
    built_torch = record.get("torch") or {}
    if "posed_as" in torch:
        return (f"was built for torch {built_torch.get('version')}; this process poses as torch "
                f"{torch['posed_as']!r} ({_settings.TORCH_IDENTITY.name})")
    for field in ("version", "git_version", "cuda", "cxx11_abi"):
        if built_torch.get(field) != torch.get(field):
            return (f"was built for torch {built_torch.get('version')} ({field} {built_torch.get(field)!r}); "
                    f"this is torch {torch.get('version')} ({field} {torch.get(field)!r})")
    python = _identity.python_identity()
    built_python = record.get("python") or {}
    if any(built_python.get(f) != python.get(f) for f in ("ext_suffix", "machine")) or "posed_as" in python:
        return (f"was built for Python {built_python.get('ext_suffix')} on {built_python.get('machine')}; "
                f"this is {python.get('ext_suffix')} on {python.get('machine')}")
    missing = _cpu.missing_cpu_features(str(record.get("cpu_baseline")))
    if missing:
        return f"needs a {record.get('cpu_baseline')} CPU; this CPU lacks {', '.join(missing)}"
    if record.get("with_cuda"):
        return _cuda.prebuilt_gpu_mismatch(record.get("cuda_archs"))
    return ""

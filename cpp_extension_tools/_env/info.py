"""What ``cpp-extension-tools info`` reports: the environment a build depends on, as a JSON-ready dict.

The gatherer of the ``info`` command only, never on the warm path: it asks
_identity, _cpu and _cuda (which own that knowledge), runs the compilers
(``--version``), lets torch initialize CUDA and walks the whole cache. A
section that cannot be learned reports None rather than raising.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig
from typing import Any

from .. import _settings
from .._cache.fs import tree_size
from .._cache.inventory import visible_modules
from .._cache.root import resolve_root
from .._version import __version__
from . import cpu as _cpu
from . import cuda as _cuda
from . import identity as _identity

__all__ = ["gather_info"]

_TIMEOUT_S = 10.0


def gather_info() -> dict[str, Any]:
    """Every section of ``info``: library, torch, python, compilers, cpu, cuda, cache, settings."""
    return {
        "library": {"version": __version__},
        "torch": torch_info(),
        "python": python_info(),
        "compilers": {"cc": compiler_info("CC", "cc"), "cxx": compiler_info("CXX", "c++"),
                      "nvcc": nvcc_info()},
        "cpu": cpu_info(),
        "cuda": cuda_info(),
        "cache": cache_info(resolve_root(None)),
        "settings": settings_info(),
    }


def settings_info() -> dict[str, Any]:
    """The settings that are set (the root is in "cache"), and any other CACHED_CPP_EXTENSION_* variable
    (a misspelt name the library ignores)."""
    known = {s.name for s in _settings.SETTINGS if s.is_set() and s is not _settings.BUILD_DIR}
    shown = {name: value for name, value in sorted(os.environ.items())
             if name in known or (name.startswith("CACHED_CPP_EXTENSION_") and name != _settings.BUILD_DIR.name)}
    if _settings.REMOTE_CACHE.name in shown:  # never print its password
        from .._remote.url import redacted

        shown[_settings.REMOTE_CACHE.name] = redacted(shown[_settings.REMOTE_CACHE.name])
    return shown


def torch_info() -> dict[str, Any]:
    identity = _identity.torch_identity()
    return {"version": identity["version"], "git_version": identity["git_version"],
            "cuda": identity["cuda"], "cxx11_abi": int(identity["cxx11_abi"])}


def python_info() -> dict[str, Any]:
    return {"version": platform.python_version(), "implementation": sys.implementation.name,
            "executable": sys.executable, "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
            "cache_tag": sys.implementation.cache_tag}


def compiler_info(env_var: str, default: str) -> dict[str, Any]:
    """The compiler ``env_var`` names (or ``default``): its command, resolved path and version line."""
    command = os.environ.get(env_var) or default
    try:
        compiler = _identity.resolve_compiler(env_var, default)
    except FileNotFoundError:
        return {"command": command, "path": None, "version": None}
    output = run_output([compiler.path, *compiler.words[1:], "--version"])
    return {"command": command, "path": compiler.path, "version": _first_line(output)}


def nvcc_info() -> dict[str, Any]:
    path = _cuda.find_nvcc()
    if path is None:
        return {"path": None, "version": None}
    output = run_output([path, "--version"])
    release = [line.strip() for line in (output or "").splitlines() if "release" in line]
    return {"path": path, "version": release[0] if release else None}


def cpu_info() -> dict[str, Any]:
    return {"machine": platform.machine(), "model_name": _cpu.cpu_model_name(),
            "march_native": _cpu.march_native(_TIMEOUT_S), "fingerprint": _cpu.cpu_fingerprint()}


def cuda_info() -> dict[str, Any]:
    import torch

    reason = _cuda.cuda_unavailable_reason()
    arch_list, source = _cuda.cuda_arch_list(torch)
    return {"available": reason is None, "unavailable_reason": reason, "target": _cuda.cuda_target(),
            "arch_list": arch_list, "arch_list_source": source}


def cache_info(root: str) -> dict[str, Any]:
    """The cache root, whether it exists, its size (bytes of everything but folders) and module count."""
    exists = os.path.isdir(root)
    return {"root": root, "exists": exists, "size_bytes": tree_size(root) if exists else 0,
            "modules": len(visible_modules(root)) if exists else 0}  # the modules `list` shows


def run_output(command: list[str]) -> str | None:
    """stdout of ``command``, or None when it cannot run, fails or outlives the timeout."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, errors="replace",
                                timeout=_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def _first_line(output: str | None) -> str | None:
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    return lines[0] if lines else None

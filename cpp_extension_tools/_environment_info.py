"""What ``cpp-extension-tools info`` reports: the environment a build depends on, as a JSON-ready dict.

Unlike _probe, this module is for people debugging a setup, never for the
warm path: it runs the compilers (``--version``), asks torch about CUDA
devices and walks the whole cache. Each probe is a small function so tests
can monkeypatch it; a probe that fails reports None rather than raising.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig
from typing import Any

from . import _probe, _settings
from ._fsutil import tree_size
from ._inventory import visible_modules
from ._root import resolve_root
from ._version import __version__

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
    return {name: value for name, value in sorted(os.environ.items())
            if name in known or (name.startswith("CACHED_CPP_EXTENSION_") and name != _settings.BUILD_DIR.name)}


def torch_info() -> dict[str, Any]:
    identity = _probe.torch_identity()
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
        compiler = _probe.resolve_compiler(env_var, default)
    except FileNotFoundError:
        return {"command": command, "path": None, "version": None}
    output = run_output([compiler.path, *compiler.words[1:], "--version"])
    return {"command": command, "path": compiler.path, "version": _first_line(output)}


def nvcc_info() -> dict[str, Any]:
    path = _probe.find_nvcc()
    if path is None:
        return {"path": None, "version": None}
    output = run_output([path, "--version"])
    release = [line.strip() for line in (output or "").splitlines() if "release" in line]
    return {"path": path, "version": release[0] if release else None}


def cpu_info() -> dict[str, Any]:
    return {"machine": platform.machine(), "model_name": cpu_model_name(),
            "march_native": march_native(), "fingerprint": _probe.cpu_fingerprint()}


def cpu_model_name() -> str | None:
    """The "model name" of the first processor in /proc/cpuinfo (absent on some ARM machines)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                field, _, value = line.partition(":")
                if field.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return None


def march_native() -> str | None:
    """What ``-march=native`` means to the C++ compiler (gcc's ``-Q --help=target``); None if unknown."""
    try:
        compiler = _probe.resolve_compiler("CXX", "c++")
    except FileNotFoundError:
        return None
    output = run_output([compiler.path, *compiler.words[1:], "-march=native", "-Q", "--help=target"])
    for line in (output or "").splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "-march=":
            return words[1]
    return None


def cuda_info() -> dict[str, Any]:
    reason = _probe.cuda_unavailable_reason()
    arch_list, source = cuda_arch_list()
    return {"available": reason is None, "unavailable_reason": reason, "target": _probe.cuda_target(),
            "arch_list": arch_list, "arch_list_source": source}


def cuda_arch_list() -> tuple[str | None, str | None]:
    """The CUDA architectures a build would target, and where that list comes from.

    The same order as the build worker: TORCH_CUDA_ARCH_LIST, else the visible
    GPUs, else the architectures torch was built for (the newest with PTX).
    """
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"], "TORCH_CUDA_ARCH_LIST"
    import torch

    if torch.version.cuda is None:
        return None, None
    if torch.cuda.is_available():
        capabilities = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in capabilities), "visible GPUs"
    from ._build_worker import torch_arch_list

    archs = torch_arch_list(torch)
    if not archs:
        return None, None
    return ";".join(archs), "torch build (no GPU visible)"


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

"""Prebuilt binaries shipped in wheels: the record describing one, and whether it can run here.

A prebuilt binary is ``<dir>/<name>.so`` with ``<dir>/<name>.json`` beside it,
both written by cpp_extension_tools.setuptools_build when a wheel is built.
It is used only when everything the binary depends on matches: the exact torch
build (version, git commit, CUDA version) and C++ ABI, the Python ABI (the
extension suffix), a CPU baseline this CPU implements, and for CUDA code an
architecture list that ends in PTX (so newer GPUs can JIT it) or holds this
GPU. Anything else and the caller builds from source instead, saying why.
"""

from __future__ import annotations

import json
import os
from typing import Any

from . import _probe, _settings
from ._version import __version__

__all__ = ["DISABLE_JIT_ENV", "PREBUILT_FORMAT", "find_prebuilt", "jit_disabled", "prebuilt_record",
           "unusable_reason"]

PREBUILT_FORMAT = 1
DISABLE_JIT_ENV = _settings.DISABLE_JIT.name  # an alias of the registry's name, for modules that import it

# The CPU features each -march baseline lets the compiler use (x86-64 psABI levels), as /proc/cpuinfo
# spells them; a baseline missing here is accepted only on a CPU whose -march it is not (never guessed).
_X86_V2 = frozenset({"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"})
_X86_V3 = _X86_V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_X86_V4 = _X86_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
BASELINE_FEATURES = {"x86-64": frozenset(), "x86-64-v2": _X86_V2, "x86-64-v3": _X86_V3, "x86-64-v4": _X86_V4,
                     "armv8-a": frozenset()}


def jit_disabled() -> bool:
    """CACHED_CPP_EXTENSION_DISABLE_JIT; SettingError (a ValueError) for a value that is not a flag."""
    return _settings.DISABLE_JIT.get()


def prebuilt_record(name: str, library_path: str, cpu_baseline: str, with_cuda: bool,
                    cuda_archs: str | None) -> dict[str, Any]:
    """What the binary at ``library_path``, built in this environment, needs to run (written beside it)."""
    torch = _probe.torch_identity()
    torch.pop("posed_as", None)
    python = _probe.python_identity()
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
    torch = _probe.torch_identity()
    built_torch = record.get("torch") or {}
    if "posed_as" in torch:
        return (f"was built for torch {built_torch.get('version')}; this process poses as torch "
                f"{torch['posed_as']!r} ({_settings.TORCH_IDENTITY.name})")
    for field in ("version", "git_version", "cuda", "cxx11_abi"):
        if built_torch.get(field) != torch.get(field):
            return (f"was built for torch {built_torch.get('version')} ({field} {built_torch.get(field)!r}); "
                    f"this is torch {torch.get('version')} ({field} {torch.get(field)!r})")
    python = _probe.python_identity()
    built_python = record.get("python") or {}
    if any(built_python.get(f) != python.get(f) for f in ("ext_suffix", "machine")) or "posed_as" in python:
        return (f"was built for Python {built_python.get('ext_suffix')} on {built_python.get('machine')}; "
                f"this is {python.get('ext_suffix')} on {python.get('machine')}")
    missing = _missing_cpu_features(str(record.get("cpu_baseline")))
    if missing:
        return f"needs a {record.get('cpu_baseline')} CPU; this CPU lacks {', '.join(missing)}"
    if record.get("with_cuda"):
        return _cuda_mismatch(record.get("cuda_archs"))
    return ""


def _missing_cpu_features(baseline: str) -> list[str]:
    if baseline not in BASELINE_FEATURES:
        return [f"(unknown baseline {baseline!r})"]
    if _settings.CPU_FINGERPRINT.is_set():  # posing as another CPU: its features are unknown
        return [f"(the features of the CPU posed by {_settings.CPU_FINGERPRINT.name})"]
    features = _probe.cpu_features()
    if not features:  # no /proc/cpuinfo flags (an unusual kernel): nothing to check against
        return []
    return sorted(BASELINE_FEATURES[baseline] - features)


def _cuda_mismatch(cuda_archs: object) -> str:
    """Device code runs on a GPU of a listed arch, or on any newer one when the list ends in +PTX."""
    if not isinstance(cuda_archs, str) or not cuda_archs:
        return "holds CUDA code for unrecorded GPU architectures"
    if cuda_archs.rstrip().endswith("+PTX"):
        return ""
    capability = _initialized_device_capability()
    if capability is None:
        return (f"holds CUDA code for {cuda_archs} only (no PTX), and this GPU's architecture is not known "
                "without initializing CUDA")
    archs = {arch.strip() for arch in cuda_archs.replace(";", " ").split()}
    return "" if capability in archs else f"holds CUDA code for {cuda_archs}, not for this GPU ({capability})"


def _initialized_device_capability() -> str | None:
    """The current GPU's compute capability, only if CUDA is initialized already (never initializes it)."""
    import torch

    if not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"

"""CUDA: the toolkit and its nvcc, the GPUs code is built for (the arch list and its source), and device flags.

Standard library only, and nothing of this package: the build worker imports
this module from its file (see _build/worker.py). torch is passed in or
imported inside the functions that need it. Only :func:`cuda_arch_list` may
initialize CUDA, and only when asked to look at the visible GPUs (the build
worker, ``info``); everything else is cheap enough for import time.
"""

from __future__ import annotations

import functools
import os
from typing import Any

__all__ = ["cuda_arch_list", "cuda_target", "cuda_unavailable_reason", "device_arch_flags", "find_cuda_home",
           "find_nvcc", "prebuilt_gpu_mismatch", "toolkit_version", "torch_arch_list", "wheel_include_folders"]


def cuda_unavailable_reason() -> str | None:
    """Why CUDA sources cannot be built here, or None when they can.

    They can when torch is a CUDA build and an nvcc is found (PYTORCH_NVCC,
    CUDA_HOME/CUDA_PATH, or a toolkit reached from PATH). Cheap: no subprocess,
    and CUDA is not initialized, so packages may call it at import.
    """
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if find_nvcc() is None:
        return (f"no CUDA toolkit (nvcc) was found for torch's CUDA {torch.version.cuda}; "
                "install one or set CUDA_HOME")
    return None


def find_nvcc() -> str | None:
    """The nvcc to build with: PYTORCH_NVCC, else the one of :func:`find_cuda_home`."""
    nvcc = os.environ.get("PYTORCH_NVCC")
    if nvcc:
        return nvcc
    home = find_cuda_home()
    return os.path.join(home, "bin", "nvcc") if home else None


def find_cuda_home() -> str | None:
    """The CUDA toolkit to build with: CUDA_HOME or CUDA_PATH when set, else the best installed one.

    torch derives CUDA_HOME from the nvcc on PATH; when that nvcc is a wrapper
    script (/usr/local/bin/nvcc) it guesses /usr/local and the link fails with
    "cannot find -lcudart". Here only folders holding both bin/nvcc and the
    CUDA runtime library count, and among several toolkits the one matching
    torch.version.cuda wins (torch refuses a different major version).
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    import torch

    return _best_cuda_home(os.environ.get("PATH", ""), torch.version.cuda)


@functools.lru_cache(maxsize=8)
def _best_cuda_home(search_path: str, torch_cuda: str | None) -> str | None:
    import shutil

    candidates = []
    on_path = shutil.which("nvcc", path=search_path)
    if on_path:
        candidates.append(os.path.dirname(os.path.dirname(on_path)))
    candidates.append("/usr/local/cuda")
    try:
        candidates += sorted(e.path for e in os.scandir("/usr/local") if e.name.startswith("cuda-"))
    except OSError:
        pass
    usable = [os.path.realpath(c) for c in candidates if _is_toolkit(c)]
    usable = list(dict.fromkeys(usable))
    if not usable:
        return None
    if torch_cuda:
        wanted = tuple(torch_cuda.split(".")[:2])
        for home in usable:
            if toolkit_version(home)[:2] == wanted:
                return home
        for home in usable:
            if toolkit_version(home)[:1] == wanted[:1]:
                return home
    return usable[0]


def _is_toolkit(home: str) -> bool:
    has_runtime = any(os.path.exists(os.path.join(home, lib, "libcudart.so")) for lib in ("lib64", "lib"))
    return has_runtime and os.path.exists(os.path.join(home, "bin", "nvcc"))


def wheel_include_folders(torch: Any) -> list[str]:
    """The header folders of the CUDA libraries a CUDA torch wheel installed beside it, sorted.

    pip's CUDA torch wheels depend on NVIDIA's library wheels, which put ``cublas_v2.h``,
    ``cusparse.h`` and the like in ``site-packages/nvidia/<library>/include`` (CUDA 13:
    ``nvidia/cu13/include``), not in the system toolkit: a source including
    ``ATen/cuda/CUDAContext.h`` needs them. Empty for a CPU torch, or one not installed from those wheels.
    """
    if getattr(torch.version, "cuda", None) is None:
        return []
    nvidia = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__))), "nvidia")
    try:
        libraries = sorted(entry.path for entry in os.scandir(nvidia) if entry.is_dir())
    except OSError:
        return []
    return [include for include in (os.path.join(library, "include") for library in libraries)
            if os.path.isdir(include)]


def toolkit_version(home: str) -> tuple[str, ...]:
    """(major, minor) of the toolkit in ``home``, from include/cuda.h's CUDA_VERSION (13000 -> ("13", "0"))."""
    try:
        with open(os.path.join(home, "include", "cuda.h"), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("#define CUDA_VERSION"):
                    number = int(line.split()[2])
                    return (str(number // 1000), str(number % 1000 // 10))
    except (OSError, ValueError, IndexError):
        pass
    return ()


def cuda_target() -> str:
    """What CUDA code is compiled for, without initializing CUDA (a part of the cache key).

    TORCH_CUDA_ARCH_LIST when set; otherwise the names of the visible NVIDIA
    GPUs, read from the driver's /proc files (the build worker turns those into
    an arch list with :func:`cuda_arch_list`, in its own process).
    """
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if arch_list:
        return "arch_list:" + " ".join(arch_list.replace(";", " ").split())
    names = []
    try:
        with os.scandir("/proc/driver/nvidia/gpus") as entries:
            for entry in entries:
                names.append(_gpu_model(os.path.join(entry.path, "information")))
    except OSError:
        pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "gpus:" + ",".join(sorted(names)) + (f";visible={visible}" if visible is not None else "")


def _gpu_model(information_path: str) -> str:
    try:
        with open(information_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cuda_arch_list(torch: Any, visible_gpus: bool = True) -> tuple[str | None, str | None]:
    """The CUDA architectures to build for, and where that list comes from; (None, None) if none is known.

    TORCH_CUDA_ARCH_LIST when set; else, with ``visible_gpus``, the capabilities
    of the visible GPUs (this initializes CUDA in the calling process: the build
    worker's, or ``info``'s); else the architectures ``torch`` was built for, the
    newest with PTX. Prebuilt binaries pass ``visible_gpus=False``: they must run
    on other GPUs than the building machine's.
    """
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"], "TORCH_CUDA_ARCH_LIST"
    if torch.version.cuda is None:
        return None, None
    if visible_gpus and torch.cuda.is_available():
        capabilities = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in capabilities), "visible GPUs"
    archs = torch_arch_list(torch)
    if not archs:
        return None, None
    return ";".join(archs), "torch build (no GPU visible)" if visible_gpus else "torch build"


def torch_arch_list(torch: Any) -> list[str]:
    """The GPU architectures ``torch`` was built for ("7.5", "8.0", ...), the newest as "+PTX"; [] if none.

    Read from torch's build flags, so it needs no GPU (torch.cuda.get_arch_list() is empty without one
    in some versions).
    """
    import re

    flags = torch._C._cuda_getArchFlags() if hasattr(torch._C, "_cuda_getArchFlags") else ""
    archs: list[str] = []
    for flag in (flags or "").split():
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)a?", flag)
        arch = f"{match.group(2)}.{match.group(3)}" if match and match.group(1) == "sm" else None
        if arch is not None and arch not in archs:
            archs.append(arch)
    if archs:
        archs[-1] += "+PTX"  # PTX for the newest, so GPUs newer than torch's list still run it
    return archs


_DEVICE_ARCH_FLAGS = ("-gencode", "--generate-code", "-arch", "--gpu-architecture", "-code", "--gpu-code")


def device_arch_flags(cuda_cflags: list[str], arch_list: str) -> list[str]:
    """-gencode flags for the arch list, unless the user's flags choose architectures themselves.

    torch adds these only when no CUDA flag contains "arch", so a host flag
    such as ``-Xcompiler -march=native`` makes it drop them all and nvcc falls
    back to its oldest default architecture. Adding them here avoids that.
    """
    if any(flag.startswith(_DEVICE_ARCH_FLAGS) for flag in cuda_cflags):
        return []
    flags = []
    for arch in arch_list.replace(" ", ";").split(";"):
        number = arch.removesuffix("+PTX").replace(".", "")
        if not number.isdigit():
            continue  # named architectures ("Hopper") are left to torch
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{number},code=compute_{number}")
    return flags


def prebuilt_gpu_mismatch(cuda_archs: object) -> str:
    """Why a prebuilt binary's device code cannot run on this GPU ("" when it can).

    It runs on a GPU of a listed arch, or on any newer one when the list ends in +PTX.
    """
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

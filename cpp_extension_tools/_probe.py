"""Cheap probes of the environment a binary is built for.

Each probe is a small function so tests can monkeypatch it. None of them runs
a subprocess or initializes CUDA: they are called on the warm path. What can
only be learned by running a program (compiler versions, GPU capabilities) is
learned by the build worker at build time and recorded in the manifest.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import sys
from typing import Any

from . import _settings

__all__ = [
    "CPU_FINGERPRINT_ENV", "CompilerIdentity", "cpu_features", "cpu_fingerprint", "cuda_target",
    "find_cuda_home", "find_nvcc", "python_identity", "resolve_compiler", "torch_identity",
]

CPU_FINGERPRINT_ENV = _settings.CPU_FINGERPRINT.name
TORCH_IDENTITY_ENV = _settings.TORCH_IDENTITY.name
PYTHON_IDENTITY_ENV = _settings.PYTHON_IDENTITY.name


def torch_identity() -> dict[str, Any]:
    """Version, git commit, CUDA version and C++ ABI of the imported torch.

    ``CACHED_CPP_EXTENSION_TORCH_IDENTITY`` is appended when set: it lets tests
    (and people debugging a shared cache) pose as another torch build.
    """
    import torch  # already imported by any process that uses torch extensions

    identity: dict[str, Any] = {
        "version": str(torch.__version__),
        "git_version": str(getattr(torch.version, "git_version", "")),
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
    }
    override = _settings.TORCH_IDENTITY.raw()
    if override:
        identity["posed_as"] = override
    return identity


@functools.cache
def _python_identity() -> tuple[str, str, str]:
    # EXTENSION_SUFFIXES[0] is EXT_SUFFIX, without importing sysconfig on the warm path.
    import importlib.machinery

    return (importlib.machinery.EXTENSION_SUFFIXES[0], sys.implementation.cache_tag or "",
            platform.machine())


def python_identity() -> dict[str, str]:
    ext_suffix, cache_tag, machine = _python_identity()
    identity = {"ext_suffix": ext_suffix, "cache_tag": cache_tag, "machine": machine}
    override = _settings.PYTHON_IDENTITY.raw()
    if override:
        identity["posed_as"] = override
    return identity


def cpu_fingerprint() -> str:
    """A digest of what ``-march=native`` depends on: vendor, family, model and feature flags.

    ``CACHED_CPP_EXTENSION_CPU_FINGERPRINT`` overrides it: a cluster with
    identical nodes can share one cache by setting the same value everywhere,
    and tests pose as another CPU with it.
    """
    override = _settings.CPU_FINGERPRINT.raw()
    if override:
        return "override:" + override
    return _detected_cpu_fingerprint()


@functools.cache
def _detected_cpu_fingerprint() -> str:
    """The fingerprint of /proc/cpuinfo, remembered for the rest of the boot in a file of this user's.

    Reading /proc/cpuinfo costs about 0.2 ms (the kernel samples every core's clock for it), more than
    the rest of a warm load; the CPU cannot change without a reboot, so the digest is kept in
    ``cpu-fingerprint-<uid>`` (beside the boot id it belongs to) in $XDG_RUNTIME_DIR, else in
    ~/.cache/cpp_extension_tools. A file there that another user could have written is ignored.
    """
    boot_id = _boot_id()
    path = _fingerprint_file()
    remembered = _read_remembered(path, boot_id) if boot_id and path else None
    if remembered is not None:
        return remembered
    fingerprint = hashlib.sha256(_read_first_cpu_block().encode()).hexdigest()[:32]
    if boot_id and path:
        _remember(path, boot_id, fingerprint)
    return fingerprint


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read(64).decode("ascii", "replace").strip()
    except OSError:
        return ""


def _fingerprint_file() -> str:
    folder = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                 "cpp_extension_tools")
    return os.path.join(folder, f"cpu-fingerprint-{os.geteuid()}") if os.path.isabs(folder) else ""


def _read_remembered(path: str, boot_id: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        words = os.read(fd, 256).decode("ascii", "replace").split()
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(words) == 2 and words[0] == boot_id and len(words[1]) == 32 and not words[1].strip("0123456789abcdef"):
        return words[1]
    return None


def _remember(path: str, boot_id: str, fingerprint: str) -> None:
    from ._fsutil import atomic_write_bytes  # once per boot

    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        atomic_write_bytes(path, f"{boot_id} {fingerprint}\n".encode(), mode=0o600)
    except OSError as error:  # only a shortcut: the next process reads /proc/cpuinfo again
        logging.getLogger("cpp_extension_tools").debug("could not remember the CPU fingerprint in %s: %s",
                                                       path, error)


_CPU_FIELDS = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags",
               "features", "cpu implementer", "cpu architecture", "cpu variant", "cpu part",
               "isa", "uarch")


@functools.cache
def cpu_features() -> frozenset[str]:
    """The feature flags of this CPU (x86 "flags", Arm "Features" in /proc/cpuinfo); empty if unknown."""
    for line in _read_first_cpu_block().splitlines():
        field, _, value = line.partition("=")
        if field in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def _read_first_cpu_block() -> str:
    """Identity-relevant lines of the first processor in /proc/cpuinfo.

    Only the first block is read: /proc/cpuinfo is several hundred KB on large
    machines, and every core of one machine reports the same features.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return f"{platform.machine()}|{platform.processor()}"
    lines = []
    for line in text.split("\n\n", 1)[0].splitlines():
        field, _, value = line.partition(":")
        if field.strip().lower() in _CPU_FIELDS:
            lines.append(f"{field.strip().lower()}={' '.join(sorted(value.split()))}")
    return f"{platform.machine()}\n" + "\n".join(lines)


class CompilerIdentity:
    """A compiler command and the stat of the binary it resolves to.

    The stat (size, mtime, inode) stands in for the version on the warm path:
    upgrading the compiler replaces the binary, which changes the stat. The
    version string itself is read once, at build time.
    """

    __slots__ = ("inode", "mtime_ns", "path", "size", "words")

    def __init__(self, words: tuple[str, ...], path: str, size: int, mtime_ns: int, inode: int) -> None:
        self.words = words
        self.path = path
        self.size = size
        self.mtime_ns = mtime_ns
        self.inode = inode

    def as_key(self) -> dict[str, Any]:
        return {"words": list(self.words), "path": self.path, "size": self.size,
                "mtime_ns": self.mtime_ns, "inode": self.inode}


def resolve_compiler(env_var: str, default: str) -> CompilerIdentity:
    """Resolve the compiler named by ``env_var`` (e.g. CC) or ``default`` to a binary."""
    command = os.environ.get(env_var) or default
    words = _split_command(command) or (default,)
    path = _which(words[0], os.environ.get("PATH", ""))
    if path is None:
        raise FileNotFoundError(
            f"compiler {words[0]!r} (from {env_var if os.environ.get(env_var) else 'the default'}) "
            f"was not found on PATH; install a C/C++ compiler (e.g. 'apt install build-essential') "
            f"or set {env_var} to one")
    st = os.stat(path)
    return CompilerIdentity(words, path, st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=64)
def _split_command(command: str) -> tuple[str, ...]:
    if not any(c in command for c in " \t'\"\\"):
        return (command,)  # the common case needs no shlex import on the warm path
    import shlex

    return tuple(shlex.split(command))


@functools.lru_cache(maxsize=64)
def _which(program: str, search_path: str) -> str | None:
    # No realpath: os.stat follows symlinks, so re-pointing /usr/bin/c++ (update-alternatives)
    # still changes the identity, and the warm path saves an lstat per path component.
    return shutil.which(program, path=search_path)


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
    candidates = []
    on_path = _which("nvcc", search_path)
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
            if _toolkit_version(home)[:2] == wanted:
                return home
        for home in usable:
            if _toolkit_version(home)[:1] == wanted[:1]:
                return home
    return usable[0]


def _is_toolkit(home: str) -> bool:
    has_runtime = any(os.path.exists(os.path.join(home, lib, "libcudart.so")) for lib in ("lib64", "lib"))
    return has_runtime and os.path.exists(os.path.join(home, "bin", "nvcc"))


def _toolkit_version(home: str) -> tuple[str, ...]:
    """(major, minor) from include/cuda.h's CUDA_VERSION (e.g. 13000 -> ("13", "0"))."""
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
    """What CUDA code is compiled for, without initializing CUDA.

    TORCH_CUDA_ARCH_LIST when set; otherwise the names of the visible NVIDIA
    GPUs, read from the driver's /proc files (the build worker turns those into
    an arch list by asking CUDA, in its own process).
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

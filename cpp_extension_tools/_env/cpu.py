"""The CPU a binary is built for: its fingerprint and features, the portable baselines, and ``-march`` in flags.

The fingerprint and the features are read from /proc/cpuinfo without running
anything: they are asked on the warm path (the fingerprint when the flags tune
for this CPU). Only :func:`march_native`, for ``info``, runs the compiler.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import stat
from collections.abc import Iterable

from .. import _settings

__all__ = ["BASELINE_FEATURES", "PORTABLE_CPU_BASELINES", "cpu_features", "cpu_fingerprint", "cpu_model_name",
           "get_portable_cpp_cflags", "get_portable_cuda_cflags", "march_native", "missing_cpu_features",
           "portable_cpu_baseline", "target_cpu", "uses_native_cpu"]

# What prebuilt binaries (wheels) are compiled for, by platform.machine(): x86-64-v2 (SSE4.2,
# POPCNT; every x86-64 CPU since about 2009) is what RHEL 9 and most distributions now require.
PORTABLE_CPU_BASELINES = {"x86_64": "x86-64-v2", "aarch64": "armv8-a"}

# The CPU features each -march baseline lets the compiler use (x86-64 psABI levels), as /proc/cpuinfo
# spells them; a baseline missing here is accepted only on a CPU whose -march it is not (never guessed).
_X86_V2 = frozenset({"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"})
_X86_V3 = _X86_V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_X86_V4 = _X86_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
BASELINE_FEATURES = {"x86-64": frozenset(), "x86-64-v2": _X86_V2, "x86-64-v3": _X86_V3, "x86-64-v4": _X86_V4,
                     "armv8-a": frozenset()}


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
    try:  # os.open, not open(): 3 system calls instead of 7, on every call that tunes for the CPU
        fd = os.open("/proc/sys/kernel/random/boot_id", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)


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
    import logging

    from .._cache.fs import atomic_write_bytes  # once per boot

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


def march_native(timeout_s: float = 10.0) -> str | None:
    """What ``-march=native`` means to the C++ compiler (gcc's ``-Q --help=target``); None if unknown.

    Runs the compiler: for ``info`` only, never for a build's key.
    """
    import subprocess

    from .identity import resolve_compiler

    try:
        compiler = resolve_compiler("CXX", "c++")
        result = subprocess.run([compiler.path, *compiler.words[1:], "-march=native", "-Q", "--help=target"],
                                capture_output=True, text=True, errors="replace", timeout=timeout_s,
                                check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):  # FileNotFoundError: no compiler
        return None
    for line in result.stdout.splitlines() if result.returncode == 0 else []:
        words = line.split()
        if len(words) == 2 and words[0] == "-march=":
            return words[1]
    return None


def portable_cpu_baseline() -> str:
    """The -march of prebuilt binaries on this platform (see PORTABLE_CPU_BASELINES)."""
    machine = platform.machine()
    if machine not in PORTABLE_CPU_BASELINES:
        raise ValueError(f"no portable CPU baseline is defined for {machine!r}; pass explicit flags "
                         f"(known: {', '.join(sorted(PORTABLE_CPU_BASELINES))})")
    return PORTABLE_CPU_BASELINES[machine]


def get_portable_cpp_cflags() -> list[str]:
    """Flags for prebuilt binaries: like the defaults, but for a CPU baseline instead of this CPU."""
    return ["-O3", f"-march={portable_cpu_baseline()}", "-Wall", "-Wextra", "-fno-strict-aliasing"]


def get_portable_cuda_cflags() -> list[str]:
    """nvcc flags for prebuilt binaries (host code for the CPU baseline)."""
    return ["-O3", "-Xcompiler", f"-march={portable_cpu_baseline()}", "-Xcompiler", "-Wall", "-lineinfo"]


def missing_cpu_features(baseline: str) -> list[str]:
    """What this CPU lacks of the ``-march`` ``baseline`` (a prebuilt binary's); [] when it runs here."""
    if baseline not in BASELINE_FEATURES:
        return [f"(unknown baseline {baseline!r})"]
    if _settings.CPU_FINGERPRINT.is_set():  # posing as another CPU: its features are unknown
        return [f"(the features of the CPU posed by {_settings.CPU_FINGERPRINT.name})"]
    features = cpu_features()
    if not features:  # no /proc/cpuinfo flags (an unusual kernel): nothing to check against
        return []
    return sorted(BASELINE_FEATURES[baseline] - features)


def target_cpu(flags: Iterable[str]) -> str | None:
    """The CPU the flags compile for: the value of the last ``-march=`` (the one the compiler uses), or None."""
    marches = [flag.split("=", 1)[1] for flag in flags if flag.startswith("-march=")]
    return marches[-1] if marches else None


def uses_native_cpu(flags: Iterable[str]) -> bool:
    """True when the flags tune code for the building machine (``-march=native`` and friends)."""
    return any(flag in _NATIVE_FLAGS for flag in _expand_nvcc_host_flags(flags))


_NATIVE_FLAGS = frozenset({"-march=native", "-mcpu=native", "-mtune=native"})


def _expand_nvcc_host_flags(flags: Iterable[str]) -> list[str]:
    # nvcc passes host flags as "-Xcompiler -march=native" or
    # "-Xcompiler=-march=native,-O3": look inside both forms.
    expanded: list[str] = []
    for flag in flags:
        for prefix in ("-Xcompiler=", "--compiler-options="):
            if flag.startswith(prefix):
                expanded.extend(flag[len(prefix):].split(","))
                break
        else:
            expanded.extend(flag.split(","))
    return expanded

"""Default compiler flags, and questions asked about flag lists."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["PORTABLE_CPU_BASELINES", "absolute_path_flags",
           "get_default_cpp_cflags", "get_default_cuda_cflags", "get_portable_cpp_cflags",
           "get_portable_cuda_cflags", "portable_cpu_baseline", "target_cpu", "uses_native_cpu"]

# What prebuilt binaries (wheels) are compiled for, by platform.machine(): x86-64-v2 (SSE4.2,
# POPCNT; every x86-64 CPU since about 2009) is what RHEL 9 and most distributions now require.
PORTABLE_CPU_BASELINES = {"x86_64": "x86-64-v2", "aarch64": "armv8-a"}


def get_default_cpp_cflags() -> list[str]:
    """Flags for C and C++ sources: optimized for this machine's CPU, with warnings on.

    ``-march=native`` ties the binary to this CPU's features; the cache key then
    includes the CPU's feature set so a shared cache never hands the binary to
    another CPU.
    """
    return ["-O3", "-march=native", "-Wall", "-Wextra", "-fno-strict-aliasing"]


def get_default_cuda_cflags() -> list[str]:
    """Flags for nvcc: optimized device code, host code tuned for this CPU."""
    # No --use_fast_math: it changes numerical results, which a default must not do.
    return ["-O3", "-Xcompiler", "-march=native", "-Xcompiler", "-Wall", "-lineinfo"]


def portable_cpu_baseline() -> str:
    """The -march of prebuilt binaries on this platform (see PORTABLE_CPU_BASELINES)."""
    import platform

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


# Flags whose value is a path, attached ("-Iinc") or as the next word ("-isystem inc").
_PATH_FLAGS = ("-I", "-isystem", "-idirafter", "-iquote", "-include", "-imacros", "-isysroot", "--sysroot", "-L",
               "-B")
_ATTACHED_ONLY = ("-I", "-L", "-B")  # "-isystem" as a prefix would also match "-isystemfoo": spelled apart


def absolute_path_flags(flags: list[str], linker: bool = False) -> list[str]:
    """``flags`` with relative paths made absolute against the current working directory.

    The compilers run in the build folder, where "-Iinc" would mean something else than the caller
    meant. With ``linker``, bare words that name existing files (objects, static libraries) count too.
    """
    import os

    result: list[str] = []
    expects_path = False
    for flag in flags:
        if expects_path:
            result.append(os.path.abspath(flag) if flag else flag)
            expects_path = False
            continue
        if flag in _PATH_FLAGS:
            expects_path = True
            result.append(flag)
            continue
        result.append(_absolute_attached(flag, linker))
    return result


def _absolute_attached(flag: str, linker: bool) -> str:
    import os

    for prefix in _PATH_FLAGS:
        if flag.startswith(prefix) and len(flag) > len(prefix) and (prefix in _ATTACHED_ONLY or
                                                                     flag[len(prefix)] == "="):
            value = flag[len(prefix):]
            separator = "=" if value.startswith("=") and prefix not in _ATTACHED_ONLY else ""
            path = value[len(separator):]
            if path.startswith("=") or os.path.isabs(path):  # "-I=dir" is relative to the sysroot: left as is
                return flag
            return prefix + separator + os.path.abspath(path)
    if linker and not flag.startswith("-") and not os.path.isabs(flag) and os.path.isfile(flag):
        return os.path.abspath(flag)
    return flag

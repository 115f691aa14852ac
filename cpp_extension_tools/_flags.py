"""Default compiler flags, and questions asked about flag lists."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["get_default_cpp_cflags", "get_default_cuda_cflags", "uses_native_cpu"]


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

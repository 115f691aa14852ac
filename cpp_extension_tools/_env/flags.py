"""Default compiler flags, and the paths in flag lists made absolute.

The portable flags of prebuilt binaries, and what a flag list says about the
CPU (``-march``), are CPU knowledge: they live in _cpu.
"""

from __future__ import annotations

__all__ = ["absolute_path_flags", "get_default_cpp_cflags", "get_default_cuda_cflags"]


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

"""The configuration of one build and the cache key derived from it.

The key covers everything that changes the binary except the content of the
files the compiler and linker read and the compilers' binaries (which the
artifact's manifest records and checks): flags, include paths, the compilers
as configured, the environment variables compilers read, torch, Python, the
CPU (when the flags tune for it), the CUDA target and this library's version.
"""

from __future__ import annotations

import os
from typing import Any

from . import _cpu, _cuda, _identity
from ._cpu import uses_native_cpu
from ._hashing import digest_value
from ._sources import language_of
from ._version import __version__

__all__ = ["COMPILER_VARIABLES", "CUDA_COMPILER_VARIABLES", "NVCC_VARIABLES", "BuildConfig", "compiler_environment",
           "configured_compiler", "make_config"]

# Bump when the cache layout or build recipe changes incompatibly.
CACHE_FORMAT = 2


class BuildConfig:
    """Normalized arguments plus the environment they are built in; ``key`` digests both."""

    __slots__ = (
        "cflags",
        "cuda_cflags",
        "environment",
        "include_paths",
        "key",
        "ldflags",
        "name",
        "sources",
        "with_cuda",
    )

    def __init__(self, name: str, sources: tuple[str, ...], include_paths: tuple[str, ...],
                 cflags: tuple[str, ...], cuda_cflags: tuple[str, ...], ldflags: tuple[str, ...],
                 with_cuda: bool, environment: dict[str, Any]) -> None:
        self.name = name
        self.sources = sources
        self.include_paths = include_paths
        self.cflags = cflags
        self.cuda_cflags = cuda_cflags
        self.ldflags = ldflags
        self.with_cuda = with_cuda
        self.environment = environment
        self.key = digest_value(self.describe())

    @property
    def short_key(self) -> str:
        return self.key[:16]

    @property
    def languages(self) -> frozenset[str]:
        return frozenset(language_of(s) for s in self.sources)

    def describe(self) -> dict[str, Any]:
        """Everything the key was computed from, as JSON-ready data."""
        return {
            "format": CACHE_FORMAT, "library_version": __version__, "name": self.name,
            "sources": list(self.sources), "include_paths": list(self.include_paths),
            "cflags": list(self.cflags), "cuda_cflags": list(self.cuda_cflags),
            "ldflags": list(self.ldflags), "with_cuda": self.with_cuda,
            "environment": self.environment,
        }


def make_config(name: str, sources: list[str], include_paths: list[str], cflags: list[str],
                cuda_cflags: list[str], ldflags: list[str], with_cuda: bool) -> BuildConfig:
    """The configuration and its key: nothing here runs or looks up a compiler (a warm cache needs none)."""
    languages = {language_of(s) for s in sources}
    environment: dict[str, Any] = {
        "torch": _identity.torch_identity(),
        "python": _identity.python_identity(),
        "cxx": configured_compiler("CXX", "c++"),
        "compiler_environment": compiler_environment(with_cuda),
    }
    if "c" in languages:
        environment["cc"] = configured_compiler("CC", "cc")
    if uses_native_cpu(cflags) or (with_cuda and uses_native_cpu(cuda_cflags)):
        environment["cpu"] = _cpu.cpu_fingerprint()
    if with_cuda:
        environment["nvcc"] = {var: os.environ.get(var) for var in NVCC_VARIABLES}
        environment["cuda_target"] = _cuda.cuda_target()
        if os.environ.get("CC"):
            # nvcc gets "-ccbin $CC" from torch: the host compiler is then part of the build.
            environment["cuda_host_cc"] = configured_compiler("CC", "cc")
    return BuildConfig(name, tuple(sources), tuple(include_paths), tuple(cflags), tuple(cuda_cflags),
                       tuple(ldflags), with_cuda, environment)


# Environment variables that change what the compilers or the linker do (search paths, extra flags,
# embedded paths), in the key whatever their value. The compilers' own variables (CC, CXX and those
# that choose nvcc) are in it separately; see docs/cache.md, "What the cache cannot see".
COMPILER_VARIABLES = (
    "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "OBJC_INCLUDE_PATH", "LIBRARY_PATH", "COMPILER_PATH",
    "GCC_EXEC_PREFIX", "LD_RUN_PATH", "SOURCE_DATE_EPOCH", "GCC_COMPARE_DEBUG", "SDKROOT",
)
CUDA_COMPILER_VARIABLES = ("NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "NVCC_CCBIN", "CUDAHOSTCXX")
NVCC_VARIABLES = ("PYTORCH_NVCC", "CUDA_HOME", "CUDA_PATH")


def compiler_environment(with_cuda: bool) -> dict[str, str]:
    """The set variables of COMPILER_VARIABLES (and, for CUDA builds, CUDA_COMPILER_VARIABLES)."""
    names = COMPILER_VARIABLES + CUDA_COMPILER_VARIABLES if with_cuda else COMPILER_VARIABLES
    environ = os.environ
    return {name: environ[name] for name in names if name in environ}


def configured_compiler(env_var: str, default: str) -> str:
    """The compiler command as configured (``$CC``, else the default): the key's part; the binary it
    resolves to is recorded in the manifest at build time and checked by stat on a hit."""
    return os.environ.get(env_var) or default

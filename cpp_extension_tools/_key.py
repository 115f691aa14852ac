"""The configuration of one build (a request and its environment) and the cache key derived from it.

The key covers everything that changes the binary except the content of the
files the compiler and linker read and the compilers' binaries (which the
artifact's manifest records and checks): flags, include paths, the compilers
as configured, the environment variables compilers read, torch, Python, the
CPU (when the flags tune for it), the CUDA target and this library's version.
"""

from __future__ import annotations

import os
from typing import Any

from ._arguments import BuildRequest
from ._cache.hashing import digest_value
from ._env import cpu as _cpu
from ._env import identity as _identity
from ._env.cpu import uses_native_cpu
from ._version import __version__

__all__ = ["COMPILER_VARIABLES", "CUDA_COMPILER_VARIABLES", "NVCC_VARIABLES", "BuildConfig", "compiler_environment",
           "configured_compiler", "make_config"]

# Bump when the cache layout, the build recipe or the key's digest changes incompatibly (3: the key is a
# BLAKE2b digest, no longer SHA-256).
CACHE_FORMAT = 3


class BuildConfig:
    """A request plus the environment it is built in; ``key`` digests both."""

    __slots__ = ("environment", "key", "request")

    def __init__(self, request: BuildRequest, environment: dict[str, Any]) -> None:
        self.request = request
        self.environment = environment
        self.key = digest_value(self.describe())

    # The store names folders and checks manifests by these two; the rest is read from the request.
    @property
    def name(self) -> str:
        return self.request.name

    @property
    def sources(self) -> tuple[str, ...]:
        return self.request.sources

    @property
    def short_key(self) -> str:
        return self.key[:16]

    def describe(self) -> dict[str, Any]:
        """Everything the key was computed from, as JSON-ready data."""
        request = self.request
        described = {
            "format": CACHE_FORMAT, "library_version": __version__, "name": request.name,
            "sources": list(request.sources), "include_paths": list(request.include_paths),
            "cflags": list(request.cflags), "cuda_cflags": list(request.cuda_cflags),
            "ldflags": list(request.ldflags), "with_cuda": request.with_cuda,
            "environment": self.environment,
        }
        # Only when not the default, so that the keys of existing caches (Python modules) do not change.
        # keep_intermediates and use_pch do not change the binary: they stay out of the key.
        if not request.is_python_module:
            described["is_python_module"] = False
        if request.is_standalone:
            described["is_standalone"] = True
        return described


def make_config(request: BuildRequest) -> BuildConfig:
    """The configuration and its key: nothing here runs or looks up a compiler (a warm cache needs none)."""
    with_cuda = request.with_cuda
    environment: dict[str, Any] = {
        "torch": _identity.torch_identity(),
        "python": _identity.python_identity(),
        "cxx": configured_compiler("CXX", "c++"),
        "compiler_environment": compiler_environment(with_cuda),
    }
    if "c" in request.languages:
        environment["cc"] = configured_compiler("CC", "cc")
    if uses_native_cpu(request.cflags) or (with_cuda and uses_native_cpu(request.cuda_cflags)):
        environment["cpu"] = _cpu.cpu_fingerprint()
    if with_cuda:
        environment["nvcc"] = {var: os.environ.get(var) for var in NVCC_VARIABLES}
        from ._env import cuda as _cuda  # not needed by C and C++ builds, whose warm calls do not import it

        environment["cuda_target"] = _cuda.cuda_target()
        if os.environ.get("CC"):
            # nvcc gets "-ccbin $CC" from torch: the host compiler is then part of the build.
            environment["cuda_host_cc"] = configured_compiler("CC", "cc")
    return BuildConfig(request, environment)


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

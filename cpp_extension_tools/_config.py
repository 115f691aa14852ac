"""The configuration of one build and the cache key derived from it.

The key covers everything that changes the binary except the content of the
sources and headers (which the artifact's manifest records and checks):
flags, include paths, the compilers' identity, torch, Python, the CPU (when
the flags tune for it), the CUDA target and this library's version.
"""

from __future__ import annotations

import os
from typing import Any

from . import _probe
from ._flags import uses_native_cpu
from ._hashing import digest_value
from ._sources import language_of
from ._version import __version__

__all__ = ["BuildConfig", "make_config"]

# Bump when the cache layout or build recipe changes incompatibly.
CACHE_FORMAT = 1


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
    languages = {language_of(s) for s in sources}
    environment: dict[str, Any] = {
        "torch": _probe.torch_identity(),
        "python": _probe.python_identity(),
        "cxx": _probe.resolve_compiler("CXX", "c++").as_key(),
    }
    cc = _probe.resolve_compiler("CC", "cc").as_key() if "c" in languages or (
        with_cuda and os.environ.get("CC")) else None
    if "c" in languages:
        environment["cc"] = cc
    if uses_native_cpu(cflags) or (with_cuda and uses_native_cpu(cuda_cflags)):
        environment["cpu"] = _probe.cpu_fingerprint()
    if with_cuda:
        environment["nvcc"] = _nvcc_identity()
        environment["cuda_target"] = _probe.cuda_target()
        if os.environ.get("CC"):
            # nvcc gets "-ccbin $CC" from torch: the host compiler is then part of the build.
            environment["cuda_host_cc"] = cc
    return BuildConfig(name, tuple(sources), tuple(include_paths), tuple(cflags), tuple(cuda_cflags),
                       tuple(ldflags), with_cuda, environment)


def _nvcc_identity() -> dict[str, Any] | None:
    nvcc = _probe.find_nvcc()
    if nvcc is None:
        return None
    try:
        st = os.stat(nvcc.split()[0])
    except OSError:
        return {"path": nvcc}
    return {"path": nvcc, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}

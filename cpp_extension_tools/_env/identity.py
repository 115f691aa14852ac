"""Who a binary is built by and for: the torch, the Python and the compilers, as the cache key records them.

Each is a small function so tests can monkeypatch it. None of them runs a
subprocess: they are called on the warm path. What can only be learned by
running a program (compiler versions) is learned by the build worker at build
time and recorded in the manifest. The CPU and the CUDA setup have modules of
their own (_cpu, _cuda).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import sys
from typing import Any

from .. import _settings

__all__ = ["CompilerIdentity", "python_identity", "resolve_compiler", "torch_identity"]


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

"""The tools of one build (compilers, nvcc, the compiler launcher), resolved once on the cold path.

The cache key holds the compilers as configured (``$CC``, ``$CXX``, the
variables that choose nvcc), so a cache hit never looks anything up. This
value is what they resolved to when the build ran: the build's commands, the
manifest's tool records (checked by stat on a hit when the files exist), and
the identity under which their version strings are cached in the build folder.
Nothing else looks a tool up during a build.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from dataclasses import dataclass
from typing import Any

from .. import _settings
from .._arguments import BuildRequest
from .._cache.manifest import ToolRecord
from .._errors import BuildError
from . import cuda as _cuda
from . import identity as _identity

__all__ = ["Toolchain", "resolve_toolchain"]

logger = logging.getLogger("cpp_extension_tools")


@dataclass(frozen=True)
class Toolchain:
    """The tools one build runs, as resolved when it started."""

    cxx: _identity.CompilerIdentity
    cc: _identity.CompilerIdentity | None  # None without C sources
    nvcc: str | None  # as found: PYTORCH_NVCC (a command line, maybe with a launcher) or a path; None without CUDA
    nvcc_line: str | None  # nvcc as a command line for build.ninja: PYTORCH_NVCC as it is, else the quoted path
    cuda_home: str | None  # the CUDA toolkit; None without CUDA
    # CACHED_CPP_EXTENSION_COMPILER_LAUNCHER, its program resolved; () when unset. Not in the key: a
    # launcher (ccache, sccache) changes how objects are compiled, not what they are.
    launcher: tuple[str, ...]
    records: tuple[ToolRecord, ...]  # the binaries' stats, for the manifest

    @property
    def cxx_command(self) -> list[str]:
        return [self.cxx.path, *self.cxx.words[1:]]

    @property
    def cc_command(self) -> list[str]:
        # The driver needs a C compiler even for a build without C sources (it never runs it then).
        return [self.cc.path, *self.cc.words[1:]] if self.cc else ["cc"]

    def version_commands(self) -> dict[str, list[str]]:
        """Role -> command, for the build worker's ``--version`` probes (the roles name its answers)."""
        commands = {"cxx": self.cxx_command, "cc": self.cc_command}
        if self.nvcc:
            commands["nvcc"] = [self.nvcc]
        return commands

    def identity(self) -> dict[str, Any]:
        """The compilers' paths and stats: their versions cannot change unless this does."""
        return {"cxx": self.cxx.as_key(), "cc": self.cc.as_key() if self.cc else None,
                "nvcc": [r.to_json() for r in self.records if r.role == "nvcc"]}


def resolve_toolchain(request: BuildRequest) -> Toolchain:
    """Look every tool of the build up, once.

    BuildError when CUDA sources cannot be built here or the launcher is not found; FileNotFoundError
    naming the variable when a compiler is missing.
    """
    nvcc, cuda_home = _cuda_tools(request.name) if request.with_cuda else (None, None)
    cxx = _identity.resolve_compiler("CXX", "c++")
    cc = _identity.resolve_compiler("CC", "cc") if "c" in request.languages else None
    launcher = _compiler_launcher(request.name, request.verbose)
    nvcc_line = None if nvcc is None else nvcc if os.environ.get("PYTORCH_NVCC") else shlex.quote(nvcc)
    records = [_record("cxx", cxx.path), _record("cc", cc.path) if cc else None,
               _record("nvcc", _nvcc_program(nvcc_line)) if nvcc_line else None]
    return Toolchain(cxx, cc, nvcc, nvcc_line, cuda_home, launcher, tuple(r for r in records if r is not None))


def _cuda_tools(name: str) -> tuple[str, str | None]:
    """(nvcc, the CUDA toolkit folder); BuildError when this torch or machine cannot build CUDA code."""
    import torch

    if torch.version.cuda is None:
        raise BuildError(
            f"cannot build {name!r} with CUDA: torch {torch.__version__} is a CPU-only build (torch.version.cuda "
            "is None), and torch.utils.cpp_extension compiles .cu files only with a CUDA build of torch. "
            "Install a CUDA build of torch, or leave the .cu sources out on this machine.", name=name)
    cuda_home = _cuda.find_cuda_home()
    # find_nvcc's rule, applied to the toolkit just found rather than finding it a second time.
    nvcc = os.environ.get("PYTORCH_NVCC") or (os.path.join(cuda_home, "bin", "nvcc") if cuda_home else None)
    if nvcc is None:
        raise BuildError(
            f"cannot build {name!r} with CUDA: nvcc was not found (looked at PYTORCH_NVCC, CUDA_HOME, "
            "CUDA_PATH, PATH and /usr/local/cuda). Install the CUDA toolkit or set CUDA_HOME.", name=name)
    return nvcc, cuda_home


def _nvcc_program(nvcc_line: str) -> str | None:
    # The command line, not the path as found: a toolkit in a folder with a space is one word.
    words = shlex.split(nvcc_line) or ["nvcc"]
    # PYTORCH_NVCC may put a launcher (ccache) before nvcc: the record is nvcc's.
    return shutil.which(next((w for w in words if os.path.basename(w).startswith("nvcc")), words[0]))


def _record(role: str, path: str | None) -> ToolRecord | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return ToolRecord(role, path, st.st_size, st.st_mtime_ns, st.st_ino)


def _compiler_launcher(name: str, verbose: bool) -> tuple[str, ...]:
    """CACHED_CPP_EXTENSION_COMPILER_LAUNCHER as words, its program resolved to an absolute path; () if unset."""
    setting = _settings.COMPILER_LAUNCHER
    value = setting.get()
    try:
        words = shlex.split(value)
    except ValueError as error:
        raise BuildError(f"Error building extension {name!r}: {setting.name}={value!r} is not a valid "
                         f"command ({error}); quote it as in a shell, or unset {setting.name}",
                         name=name) from error
    if not words:
        return ()
    program = shutil.which(words[0])
    if program is None:
        raise BuildError(f"Error building extension {name!r}: the compiler launcher {words[0]!r} (from "
                         f"{setting.name}={value!r}) was not found on PATH; install it (e.g. 'apt install "
                         f"ccache') or unset {setting.name}", name=name)
    launcher = (os.path.abspath(program), *words[1:])
    # ninja's command lines show the driver, not what it runs: this line is where verbose builds show it.
    logger.log(logging.INFO if verbose else logging.DEBUG, "%s: compiles go through the launcher %s (%s)",
               name, shlex.join(launcher), setting.name)
    return launcher

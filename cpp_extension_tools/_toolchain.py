"""The compilers of one build, resolved once on the cold path.

The cache key holds the compilers as configured (``$CC``, ``$CXX``, the
variables that choose nvcc), so a cache hit never looks anything up. This
value is what they resolved to when the build ran: the build's commands, the
manifest's tool records (checked by stat on a hit when the files exist), and
the identity under which their version strings are cached in the build folder.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from dataclasses import dataclass
from typing import Any

from . import _cuda, _identity, _settings
from ._config import BuildConfig
from ._errors import BuildError
from ._manifest import ToolRecord

__all__ = ["Toolchain", "compiler_launcher", "resolve_toolchain"]

logger = logging.getLogger("cpp_extension_tools")


@dataclass(frozen=True)
class Toolchain:
    cxx: _identity.CompilerIdentity
    cc: _identity.CompilerIdentity | None
    nvcc: str | None  # a command line (PYTORCH_NVCC may hold a launcher), or None without CUDA

    def commands(self) -> dict[str, list[str]]:
        """Role -> command words, for the driver and the version probes."""
        commands = {"cxx": [self.cxx.path, *self.cxx.words[1:]],
                    "cc": [self.cc.path, *self.cc.words[1:]] if self.cc else ["cc"]}
        if self.nvcc:
            commands["nvcc"] = [self.nvcc]
        return commands

    def records(self) -> tuple[ToolRecord, ...]:
        records = [_record("cxx", self.cxx.path)]
        if self.cc is not None:
            records.append(_record("cc", self.cc.path))
        if self.nvcc:
            words = shlex.split(self.nvcc) or ["nvcc"]
            # PYTORCH_NVCC may put a launcher (ccache) before nvcc: the record is nvcc's.
            program = shutil.which(next((w for w in words if os.path.basename(w).startswith("nvcc")), words[0]))
            if program:
                records.append(_record("nvcc", program))
        return tuple(r for r in records if r is not None)

    def identity(self) -> dict[str, Any]:
        """The compilers' paths and stats: their versions cannot change unless this does."""
        return {"cxx": self.cxx.as_key(), "cc": self.cc.as_key() if self.cc else None,
                "nvcc": [r.to_json() for r in self.records() if r.role == "nvcc"]}


def _record(role: str, path: str) -> ToolRecord | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return ToolRecord(role, path, st.st_size, st.st_mtime_ns, st.st_ino)


def resolve_toolchain(config: BuildConfig) -> Toolchain:
    """Look the compilers up (FileNotFoundError naming the variable when one is missing)."""
    cxx = _identity.resolve_compiler("CXX", "c++")
    cc = _identity.resolve_compiler("CC", "cc") if "c" in config.languages else None
    nvcc = (_cuda.find_nvcc() or "nvcc") if config.with_cuda else None
    return Toolchain(cxx, cc, nvcc)


def compiler_launcher(config: BuildConfig, verbose: bool) -> list[str]:
    """CACHED_CPP_EXTENSION_COMPILER_LAUNCHER as words, its program resolved to an absolute path; [] if unset.

    Not part of the configuration key: a launcher (ccache, sccache) changes how objects are
    compiled, not what they are, so builds with and without one share artifacts.
    """
    setting = _settings.COMPILER_LAUNCHER
    value = setting.get()
    try:
        words = shlex.split(value)
    except ValueError as error:
        raise BuildError(f"Error building extension {config.name!r}: {setting.name}={value!r} is not a valid "
                         f"command ({error}); quote it as in a shell, or unset {setting.name}",
                         name=config.name) from error
    if not words:
        return []
    program = shutil.which(words[0])
    if program is None:
        raise BuildError(f"Error building extension {config.name!r}: the compiler launcher {words[0]!r} (from "
                         f"{setting.name}={value!r}) was not found on PATH; install it (e.g. 'apt install "
                         f"ccache') or unset {setting.name}", name=config.name)
    launcher = [os.path.abspath(program), *words[1:]]
    # ninja's command lines show the driver, not what it runs: this line is where verbose builds show it.
    logger.log(logging.INFO if verbose else logging.DEBUG, "%s: compiles go through the launcher %s (%s)",
               config.name, shlex.join(launcher), setting.name)
    return launcher

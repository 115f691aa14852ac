"""The warning torch's load() gives when the C++ compiler may be ABI-incompatible with torch's build.

torch runs ``get_compiler_abi_compatibility_and_version`` (two compiler
subprocesses) before each build and logs in the build worker, where the
warning was lost. Here the same rules read the ``--version`` line the build
probed anyway, after the build: no extra subprocess, one warning per build,
none on a cache hit (which never gets here).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

__all__ = ["abi_warning", "warn_if_abi_incompatible"]

logger = logging.getLogger("cpp_extension_tools")

# torch's MINIMUM_GCC_VERSION and the switch that turns its check off.
_MINIMUM_GCC = (5, 0, 0)
_DONT_CHECK = "TORCH_DONT_CHECK_COMPILER_ABI"
# gcc's first --version line: "<argv0> (<vendor text>) 12.2.0"; clang's says "clang version 18.1.3".
_GCC_LINE = re.compile(r"^\S+ \(.*\) (\d+)\.(\d+)\.(\d+)")
# torch's BUILT_FROM_SOURCE_VERSION_PATTERN: a torch built from source was built with this very compiler.
_FROM_SOURCE = re.compile(r"\d+\.\d+\.\d+\w+\+\w+")


def abi_warning(version_line: str, torch_version: str) -> str | None:
    """Why the C++ compiler whose ``--version`` starts with ``version_line`` may not suit torch, or None."""
    if _FROM_SOURCE.match(torch_version) or os.environ.get(_DONT_CHECK, "").upper() in ("ON", "1", "YES", "TRUE", "Y"):
        return None
    if "clang version" in version_line:
        return None
    gcc = _GCC_LINE.match(version_line)
    if gcc is None:
        return (f"the C++ compiler ({version_line}) is neither gcc nor clang, the compilers torch's wheels are "
                f"built and tested with: the extension may be ABI-incompatible with torch. Set CXX to g++ or "
                f"clang++, or set {_DONT_CHECK}=1 if you know it is compatible")
    version = tuple(int(part) for part in gcc.groups())
    if version < _MINIMUM_GCC:
        return (f"the C++ compiler ({version_line}) is older than GCC 5, and may be ABI-incompatible with torch: "
                f"use GCC 5 or newer (set CXX), or set {_DONT_CHECK}=1 if you know it is compatible")
    return None


def warn_if_abi_incompatible(name: str, versions: Mapping[str, object] | None) -> None:
    """Log torch's ABI warning for this build's C++ compiler, when it applies (once: called once per build)."""
    line = (versions or {}).get("cxx")
    if not isinstance(line, str) or line == "unknown":
        return
    import torch

    problem = abi_warning(line, torch.__version__)
    if problem is not None:
        logger.warning("%s: %s", name, problem)

"""Writes build.ninja for a CPU build in this process, so the build worker need not import torch.

torch's load() writes the ninja file and then runs ninja; in the build worker
that meant importing torch first, a fixed ~2 s on a 2-core machine that every
build and every one-file rebuild paid (issue 5). Here the file is written by
torch's own generator in the calling process, which has imported torch
already, and the worker only runs ninja. The generator functions are private
to torch: if their signature or output changes, this module says so in the
debug log and the caller falls back to the worker running torch's load().

CUDA builds always take that fallback: generating their flags may query the
GPUs, which would initialize CUDA in the caller (and break fork-based
DataLoader workers started later).

The file is written once per build folder and reused by later builds there (an
edited source), as long as everything it was generated from is unchanged; a
rebuild then imports nothing of torch.utils.cpp_extension at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import sysconfig
from typing import Any

from .._arguments import BuildRequest
from .._cache.fs import atomic_write_bytes

__all__ = ["NINJA_FILE", "prepare_ninja_file"]

logger = logging.getLogger("cpp_extension_tools")

NINJA_FILE = "build.ninja"
_RECORD_FILE = "cpp_extension_tools_ninja.json"


def prepare_ninja_file(request: BuildRequest, build_folder: str, sources: list[str], driver: str) -> bool:
    """Make ``build_folder/build.ninja`` ready for ``ninja``; False when the worker must write it.

    ``sources``: the request's, renamed where object names would collide (with_unique_object_names).
    """
    if request.with_cuda:
        return False
    inputs = _generator_inputs(request, sources, driver)
    path = os.path.join(build_folder, NINJA_FILE)
    recorded = _recorded_inputs(build_folder)
    if isinstance(recorded, dict):
        written = recorded.pop("text_sha256", None)
        if recorded == inputs:
            if written == _text_digest(path):
                return True  # the same generator inputs, and the file is still the one written from them
            logger.warning("%s was changed or damaged since it was written; writing it again", path)
    text = _generate(request, sources, driver, build_folder)
    if text is None:
        return False
    # The record goes last: a build killed in between leaves a file that is regenerated next time.
    record = os.path.join(build_folder, _RECORD_FILE)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record)
    atomic_write_bytes(path, text.encode())
    recorded_inputs = {**inputs, "text_sha256": hashlib.sha256(text.encode()).hexdigest()}
    atomic_write_bytes(record, json.dumps(recorded_inputs, sort_keys=True).encode())
    return True


def _text_digest(path: str) -> str | None:
    """The SHA-256 of build.ninja as it is now (None when it cannot be read): an emptied or edited file
    is written again instead of being handed to ninja, which would find no work in it."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _generator_inputs(request: BuildRequest, sources: list[str], driver: str) -> dict[str, Any]:
    """Everything the generated text depends on (the configuration key does not cover paths)."""
    import torch

    return {
        "name": request.name, "sources": sources, "cflags": list(request.cflags),
        "is_standalone": request.is_standalone,
        "ldflags": list(request.ldflags), "include_paths": list(request.include_paths), "driver": driver,
        "torch": [torch.__version__, os.path.dirname(torch.__file__)],
        "python_include": sysconfig.get_path("include", scheme="posix_prefix"),
    }


def _recorded_inputs(build_folder: str) -> Any:
    try:
        with open(os.path.join(build_folder, _RECORD_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _generate(request: BuildRequest, sources: list[str], driver: str, build_folder: str) -> str | None:
    """The text torch's load() would write with CXX=driver, or None if torch's generator is not as expected."""
    import torch.utils.cpp_extension as cpp_extension

    scratch = os.path.join(build_folder, f"{NINJA_FILE}.generated-{os.getpid()}")
    try:
        ldflags = cpp_extension._prepare_ldflags(  # type: ignore[no-untyped-call]
            list(request.ldflags), False, False, False, request.is_standalone)
        cpp_extension._write_ninja_file_to_build_library(
            path=scratch, name=request.name, sources=sources, extra_cflags=list(request.cflags),
            extra_cuda_cflags=[], extra_sycl_cflags=[], extra_ldflags=ldflags,
            extra_include_paths=list(request.include_paths), with_cuda=False, with_sycl=False,
            is_standalone=request.is_standalone)
        with open(scratch, encoding="utf-8") as f:
            text = f.read()
    except (AttributeError, TypeError) as error:  # torch renamed or re-signed its private functions
        logger.debug("torch's ninja file generator is not as expected (%s): the build worker runs load()", error)
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(scratch)
    return _with_compiler(text, driver)


def _with_compiler(text: str, driver: str) -> str | None:
    # torch writes `cxx = <$CXX, maybe behind ccache>`; the driver replaces it, which is what
    # setting CXX=driver and TORCH_NO_COMPILER_WRAPPER=1 does for the worker's load().
    lines = text.splitlines(keepends=True)
    compiler_lines = [i for i, line in enumerate(lines) if line.startswith("cxx = ")]
    if len(compiler_lines) != 1:
        logger.debug("torch's ninja file has %d 'cxx =' lines, expected 1: the build worker runs load()",
                     len(compiler_lines))
        return None
    lines[compiler_lines[0]] = f"cxx = {shlex.quote(driver)}\n"
    # Depfiles stay beside their objects (no "deps = gcc"): ninja's own depfile parser misreads paths
    # with quote characters, so the build worker reads them itself (_worker_support.parse_depfile).
    lines = [line for line in lines if line.strip() != "deps = gcc"]
    from .worker_support import escape_ninja_text

    return escape_ninja_text("".join(lines))

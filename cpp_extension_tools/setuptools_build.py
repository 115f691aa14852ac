"""Prebuilt binaries in wheels: a setuptools ``build_py`` that compiles extensions with portable flags.

In setup.py::

    from cpp_extension_tools.setuptools_build import PrebuiltExtension, build_py_with_prebuilt

    setup(..., cmdclass={"build_py": build_py_with_prebuilt([
        PrebuiltExtension("my_ext", package="my_package", sources=["csrc/a.c", "csrc/b.c"],
                          include_paths=["csrc"]),
    ])})

and at import, ``cached_load_torch_cpp_extension("my_ext", sources, ...,
prebuilt_path=os.path.join(os.path.dirname(__file__), "prebuilt"))``.

Each extension is compiled by cached_load_torch_cpp_extension itself (in a
temporary cache), for the CPU baseline of get_portable_cpp_cflags() and, for
CUDA, torch's architecture list ending in PTX; it is imported once as a check,
then written to ``<package>/prebuilt/<name>.so`` with ``<name>.json`` (what it
needs to run) beside it. The wheel holds no copy of torch's libraries: the
binary finds them in the installed torch (imported before it is loaded).

Build wheels with ``pip wheel --no-build-isolation --no-deps``, against the
exact torch the wheel is for: the binary is used only with that torch build
(without ``--no-deps``, pip also writes wheels of torch and the other
dependencies into the output folder). Where torch
cannot be imported, or with CPP_EXTENSION_TOOLS_SKIP_PREBUILT=1, the wheel is
built without binaries, and users' machines compile the sources instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from setuptools import Distribution
from setuptools.command.build_py import build_py

from . import _settings
from ._arguments import BuildRequest, validated_request

__all__ = ["SKIP_ENV", "PrebuiltDistribution", "PrebuiltExtension", "build_prebuilt", "build_py_with_prebuilt"]

logger = logging.getLogger("cpp_extension_tools")

SKIP_ENV = _settings.SKIP_PREBUILT.name


@dataclass(frozen=True)
class PrebuiltExtension:
    """One extension to ship prebuilt. Paths are relative to the folder setup.py runs in.

    ``extra_cflags``/``extra_cuda_cflags`` default to the portable flags; they must not tune for the
    building machine (-march=native). ``with_cuda=None`` builds CUDA code when the sources include
    .cu files.
    """

    name: str
    package: str
    sources: Sequence[str]
    include_paths: Sequence[str] = ()
    extra_cflags: Sequence[str] | None = None
    extra_cuda_cflags: Sequence[str] | None = None
    extra_ldflags: Sequence[str] = ()
    with_cuda: bool | None = None
    folder: str = "prebuilt"


def build_prebuilt(extension: PrebuiltExtension, output_folder: str) -> str:
    """Compile ``extension`` with portable flags into ``output_folder``; returns the binary's path."""
    from ._cache.prebuilt import prebuilt_record
    from ._env.cpu import uses_native_cpu

    request = _portable_request(extension)
    if uses_native_cpu(request.cflags) or (request.with_cuda and uses_native_cpu(request.cuda_cflags)):
        raise ValueError(f"{request.name}: prebuilt binaries must not use -march=native (they would crash "
                         "on other CPUs); use get_portable_cpp_cflags() or an explicit -march baseline")
    baseline = _cpu_baseline(request.cflags)
    arch_list = _portable_arch_list() if request.with_cuda else None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prebuilt-") as cache, _environment(arch_list):
        from ._api import load_request  # imports torch, which setup.py may lack
        from ._cache.inventory import list_modules

        load_request(request, build_directory=cache)
        ((artifact,),) = [m.artifacts for m in list_modules(cache, request.name)]
        os.makedirs(output_folder, exist_ok=True)
        library = os.path.join(output_folder, f"{request.name}.so")
        shutil.copyfile(os.path.join(artifact.path, f"{request.name}.so"), library)
        record = prebuilt_record(request.name, library, baseline, request.with_cuda, arch_list)
    with open(os.path.join(output_folder, f"{request.name}.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    logger.info("prebuilt %s for %s%s in %.1f s: %s", request.name, baseline,
                f" and CUDA {arch_list}" if arch_list else "", time.perf_counter() - started, library)
    return library


def _portable_request(extension: PrebuiltExtension) -> BuildRequest:
    """The extension's request, checked as any call's is, with the portable flags as its defaults."""
    from ._env.cpu import get_portable_cpp_cflags, get_portable_cuda_cflags

    return validated_request(
        extension.name, list(extension.sources), list(extension.include_paths),
        get_portable_cpp_cflags() if extension.extra_cflags is None else list(extension.extra_cflags),
        get_portable_cuda_cflags() if extension.extra_cuda_cflags is None else list(extension.extra_cuda_cflags),
        list(extension.extra_ldflags), False, extension.with_cuda)


def _cpu_baseline(cflags: Sequence[str]) -> str:
    from ._env.cpu import BASELINE_FEATURES, target_cpu

    march = target_cpu(cflags)
    if march not in BASELINE_FEATURES:
        raise ValueError(f"prebuilt binaries need a -march baseline among {sorted(BASELINE_FEATURES)}; "
                         f"the flags give {march or 'none'}")
    return march


def _portable_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST if set, else every arch torch was built for, the newest also as PTX."""
    import torch

    from ._env.cuda import cuda_arch_list

    arch_list, _ = cuda_arch_list(torch, visible_gpus=False)
    if arch_list is None:
        raise ValueError("cannot tell which GPU architectures to build for: set TORCH_CUDA_ARCH_LIST")
    return arch_list


@contextlib.contextmanager
def _environment(arch_list: str | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("TORCH_CUDA_ARCH_LIST", _settings.DISABLE_JIT.name)}
    os.environ.pop(_settings.DISABLE_JIT.name, None)
    if arch_list:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_py_with_prebuilt(extensions: Sequence[PrebuiltExtension] | Callable[[], Sequence[PrebuiltExtension]],
                           base: type[build_py] = build_py) -> type:
    """A ``build_py`` command class that also writes the prebuilt binaries into the build folder.

    ``extensions`` may be a function returning them, called only when they are built (so setup.py
    can ask torch, e.g. cuda_unavailable_reason(), without importing it when it is absent).
    """

    class BuildPyWithPrebuilt(base):  # type: ignore[misc]
        def run(self) -> None:
            super().run()
            if getattr(self, "editable_mode", False):
                return  # an editable install builds at import, from the sources in place
            if _settings.SKIP_PREBUILT.get():
                logger.warning("%s is set: the wheel gets no prebuilt binaries", SKIP_ENV)
                return
            try:
                import torch  # noqa: F401
            except ImportError as error:
                logger.warning("no prebuilt binaries (torch cannot be imported: %s); build the wheel with "
                               "--no-build-isolation in an environment with torch", error)
                return
            for extension in extensions() if callable(extensions) else extensions:
                build_prebuilt(extension, os.path.join(self.build_lib, *extension.package.split("."),
                                                       extension.folder))

    return BuildPyWithPrebuilt


class PrebuiltDistribution(Distribution):  # type: ignore[misc]
    """``setup(distclass=PrebuiltDistribution)``: the wheel is tagged for this Python ABI and platform
    (cp311-cp311-linux_x86_64, not py3-none-any), as a wheel holding a binary must be."""

    def has_ext_modules(self) -> bool:
        return True

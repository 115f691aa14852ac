"""Packaging for cpp_extension_tools and the example package.

example_package's C sources live in the top-level csrc/ folder; build_py
copies them into the package so that `pip install .` ships them as package
data (an editable install finds them beside the package instead). A wheel
also gets example_package's extension prebuilt with portable flags
(cpp_extension_tools.setuptools_build), used where torch, Python and the CPU
baseline match; build it with `pip wheel --no-build-isolation --no-deps .` against the
torch it is for. Elsewhere the package compiles its sources at import.
"""

import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # this source tree's cpp_extension_tools builds the prebuilt binary

from cpp_extension_tools.setuptools_build import (  # noqa: E402
    PrebuiltDistribution,
    PrebuiltExtension,
    build_py_with_prebuilt,
)


class BuildPyWithCsrc(build_py):
    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, "example_package", "csrc")
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(os.path.join(HERE, "csrc"))):
            shutil.copy2(os.path.join(HERE, "csrc", name), target)


def example_extensions() -> list[PrebuiltExtension]:
    """The module example_package/__init__.py loads, as it loads it here, but with portable flags."""
    from cpp_extension_tools import (
        cuda_unavailable_reason,
        get_cpp_sources_list_from_folder,
        get_portable_cpp_cflags,
        get_portable_cuda_cflags,
    )

    csrc = os.path.join(HERE, "csrc")
    with_cuda = cuda_unavailable_reason() is None
    sources = [s for s in get_cpp_sources_list_from_folder(csrc) if with_cuda or not s.endswith(".cu")]
    return [PrebuiltExtension("example_package_ext", package="example_package", sources=sources,
                              include_paths=[csrc],
                              extra_cflags=get_portable_cpp_cflags() + (["-DEP_WITH_CUDA"] if with_cuda else []),
                              extra_cuda_cflags=get_portable_cuda_cflags(), with_cuda=with_cuda)]


setup(
    name="cpp_extension_tools",
    version="0.1.0",
    description="Compile C, C++ and CUDA extensions for PyTorch where they run, once, with a safe shared cache",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["cpp_extension_tools", *(f"cpp_extension_tools.{sub}" for sub in ("_build", "_cache", "_cli", "_env",
                                                                                  "_remote")),
              "example_package"],
    install_requires=[
        "torch>=2.1",  # drives the build (torch.utils.cpp_extension.load) and provides the headers
        "ninja",  # torch's load() builds with ninja
        "filelock",  # OS-level locks released by the kernel when a builder dies
    ],
    extras_require={"remote": ["redis>=5"]},  # the Redis remote tier (CACHED_CPP_EXTENSION_REMOTE_CACHE)
    cmdclass={"build_py": build_py_with_prebuilt(example_extensions, base=BuildPyWithCsrc)},
    distclass=PrebuiltDistribution,
    entry_points={"console_scripts": ["cpp-extension-tools = cpp_extension_tools._cli.main:main"]},
)

"""Packaging for cpp_extension_tools and the example package.

example_package's C sources live in the top-level csrc/ folder; build_py
copies them into the package so that `pip install .` ships them as package
data (an editable install finds them beside the package instead).
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithCsrc(build_py):
    def run(self) -> None:
        super().run()
        target = os.path.join(self.build_lib, "example_package", "csrc")
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(os.path.join(HERE, "csrc"))):
            shutil.copy2(os.path.join(HERE, "csrc", name), target)


setup(
    name="cpp_extension_tools",
    version="0.1.0",
    description="Compile C, C++ and CUDA extensions for PyTorch where they run, once, with a safe shared cache",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["cpp_extension_tools", "example_package"],
    install_requires=[
        "torch>=2.1",  # drives the build (torch.utils.cpp_extension.load) and provides the headers
        "ninja",  # torch's load() builds with ninja
        "filelock",  # OS-level locks released by the kernel when a builder dies
    ],
    cmdclass={"build_py": BuildPyWithCsrc},
    entry_points={"console_scripts": ["cpp-extension-tools = cpp_extension_tools._cli:main"]},
)

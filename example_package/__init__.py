"""An example package whose C extension is compiled where it runs, at import time.

Copy this pattern: list the sources, call cached_load_torch_cpp_extension at
import, and re-export the functions. The first import compiles (seconds);
every later import, in any process, loads the cached binary (a millisecond).
"""

import os
import time

import torch  # noqa: F401  # the extension links to torch's libraries

from cpp_extension_tools import (
    cached_load_torch_cpp_extension,
    get_cpp_sources_list_from_folder,
    get_default_cpp_cflags,
)

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
if not os.path.isdir(_CSRC):  # a source checkout (pip install -e .): csrc/ sits beside the package
    _CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")

_started = time.perf_counter()
_extension = cached_load_torch_cpp_extension(
    name="example_package_ext",
    sources=get_cpp_sources_list_from_folder(_CSRC),
    extra_include_paths=[_CSRC],
    extra_cflags=get_default_cpp_cflags(),
    verbose=os.environ.get("EXAMPLE_PACKAGE_VERBOSE", "") not in ("", "0"),
)

load_seconds = time.perf_counter() - _started  # shown by the demo (python -m example_package)

GetStaticInteger = _extension.GetStaticInteger
Add42ToInteger = _extension.Add42ToInteger

__all__ = ["Add42ToInteger", "GetStaticInteger"]

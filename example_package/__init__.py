"""An example package whose C extension is compiled where it runs, at import time.

Copy this pattern: list the sources, call cached_load_torch_cpp_extension at
import, and re-export the functions. The first import compiles (seconds);
every later import, in any process, loads the cached binary (a millisecond).

The extension is plain C against the CPython C API (csrc/), plus a CUDA kernel
(csrc/hash_ids_cuda.cu) that is built only where it can be: a CUDA build of
torch and an nvcc. Elsewhere the package builds and works on the CPU.
"""

import os
import time

import torch  # noqa: F401  # first: the extension links to torch's libraries

from cpp_extension_tools import (
    cached_load_torch_cpp_extension,
    cuda_unavailable_reason,
    get_cpp_sources_list_from_folder,
    get_default_cpp_cflags,
    get_default_cuda_cflags,
)

from ._hashing import bind, hash_ids, hash_strings

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
if not os.path.isdir(_CSRC):  # a source checkout (pip install -e .): csrc/ sits beside the package
    _CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")

load_started_at = time.time()  # wall clock, compared by the demo with the artifact's build time
_started = time.perf_counter()
NO_CUDA_REASON = cuda_unavailable_reason()  # None when the CUDA kernel is built
_sources = get_cpp_sources_list_from_folder(_CSRC)
if NO_CUDA_REASON is not None:
    _sources = [s for s in _sources if not s.endswith(".cu")]
_extension = cached_load_torch_cpp_extension(
    name="example_package_ext",
    sources=_sources,
    extra_include_paths=[_CSRC],
    extra_cflags=get_default_cpp_cflags() + ([] if NO_CUDA_REASON else ["-DEP_WITH_CUDA"]),
    extra_cuda_cflags=get_default_cuda_cflags(),
    verbose=os.environ.get("EXAMPLE_PACKAGE_VERBOSE", "") not in ("", "0"),
    with_cuda=NO_CUDA_REASON is None,
    # A wheel built with `pip wheel --no-build-isolation .` carries the module prebuilt (portable
    # flags, see setup.py); it is used where it fits this torch, Python and CPU, with no compiler.
    prebuilt_path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "prebuilt"),
)
bind(_extension, NO_CUDA_REASON)
load_seconds = time.perf_counter() - _started  # shown by the demo (python -m example_package)

GetStaticInteger = _extension.GetStaticInteger
Add42ToInteger = _extension.Add42ToInteger

__all__ = ["NO_CUDA_REASON", "Add42ToInteger", "GetStaticInteger", "hash_ids", "hash_strings"]

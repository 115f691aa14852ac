"""Compile C, C++ and CUDA extensions for PyTorch where they run, once, and load them in a millisecond.

The public surface is deliberately small; everything else lives in private
modules that may change.
"""

from ._api import cached_load_torch_cpp_extension
from ._arguments import get_cpp_sources_list_from_folder, get_default_cpp_cflags, get_default_cuda_cflags
from ._env.cpu import get_portable_cpp_cflags, get_portable_cuda_cflags
from ._errors import BuildError, CacheNotWritableError, LockTimeoutError, UnsafeCacheError
from ._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._env.cuda import cuda_unavailable_reason

__all__ = [
    "BuildError",
    "CacheNotWritableError",
    "LockTimeoutError",
    "UnsafeCacheError",
    "__version__",
    "cached_load_torch_cpp_extension",
    "cuda_unavailable_reason",
    "get_cpp_sources_list_from_folder",
    "get_default_cpp_cflags",
    "get_default_cuda_cflags",
    "get_portable_cpp_cflags",
    "get_portable_cuda_cflags",
]

# No NullHandler on the "cpp_extension_tools" logger: without one, an application that configured no
# logging gets WARNING and above on stderr through logging's last-resort handler (a damaged artifact
# rebuilt, an invalid setting, why a prebuilt binary was not used), and one that did gets them through
# its own handlers only.


def __getattr__(name: str) -> object:
    # The CUDA module is not needed by a warm call (nor by a C or C++ build): it is imported on first use.
    if name == "cuda_unavailable_reason":
        from ._env.cuda import cuda_unavailable_reason

        return cuda_unavailable_reason
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

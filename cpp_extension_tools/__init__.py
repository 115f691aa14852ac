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
    from ._inline import cached_load_inline
    from ._torch_compat import patch_torch

__all__ = [
    "BuildError",
    "CacheNotWritableError",
    "LockTimeoutError",
    "UnsafeCacheError",
    "__version__",
    "cached_load_inline",
    "cached_load_torch_cpp_extension",
    "cuda_unavailable_reason",
    "get_cpp_sources_list_from_folder",
    "get_default_cpp_cflags",
    "get_default_cuda_cflags",
    "get_portable_cpp_cflags",
    "get_portable_cuda_cflags",
    "patch_torch",
]

# No NullHandler on the "cpp_extension_tools" logger: without one, an application that configured no
# logging gets WARNING and above on stderr through logging's last-resort handler (a damaged artifact
# rebuilt, an invalid setting, why a prebuilt binary was not used), and one that did gets them through
# its own handlers only.


def cuda_unavailable_reason() -> str | None:
    """Why CUDA sources cannot be built here, or None when they can.

    They can when torch is a CUDA build and an nvcc is found (PYTORCH_NVCC,
    CUDA_HOME/CUDA_PATH, or a toolkit reached from PATH). Cheap: no subprocess,
    and CUDA is not initialized, so packages may call it at import.
    """
    import torch

    if torch.version.cuda is None:
        # Said here, without importing the CUDA module: packages call this at import, where each module
        # imported is time (a C or C++ build and its warm load never need that module).
        return f"torch {torch.__version__} is a CPU-only build"
    from ._env.cuda import cuda_unavailable_reason as reason

    return reason()


def __getattr__(name: str) -> object:
    # The drop-ins for torch's JIT API: imported only by the callers that use them.
    if name == "cached_load_inline":
        from ._inline import cached_load_inline

        return cached_load_inline
    if name == "patch_torch":
        from ._torch_compat import patch_torch

        return patch_torch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

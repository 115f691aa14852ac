"""The user's package: its ops, loaded through custom_ops.py at first use."""

import os

if os.environ.get("MY_OPS_LOADER") == "patch":
    # The whole migration by patch_torch(): two lines at the package's import. Spawned workers import this
    # package to unpickle their task, so they are patched too.
    import cpp_extension_tools

    cpp_extension_tools.patch_torch()

from .custom_ops import get_plugin


def fused_bias_act(x, bias, gain=1.0):
    """leaky_relu(x + bias) * gain, by the compiled op (CUDA kernel for CUDA tensors where built)."""
    return get_plugin("fused_bias_act").fused_bias_act(x, bias, gain)

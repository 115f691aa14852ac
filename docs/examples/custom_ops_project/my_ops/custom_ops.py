"""The project's loader, in the style of the custom-op repositories (StyleGAN's custom_ops.py, ...).

Before the migration it calls torch.utils.cpp_extension.load; MY_OPS_LOADER picks the variant the
migration page measures: "torch" (before), "patch" (my_ops/__init__.py called patch_torch(): this file
is unchanged) or "native" (this file calls cached_load_torch_cpp_extension). A real project keeps one.
"""

import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_plugins = {}


def _sources(name):
    sources = [os.path.join(_HERE, name + ".cpp")]
    if torch.cuda.is_available():  # the CUDA kernel only where it can run; the CPU op otherwise
        sources.append(os.path.join(_HERE, name + "_cuda.cu"))
    return sources


def _cflags():
    return ["-DWITH_CUDA"] if torch.cuda.is_available() else []


def get_plugin(name):
    """Compile (once) and import the op ``name``, as a custom_ops.py wrapper does."""
    if name in _plugins:
        return _plugins[name]
    if os.environ.get("MY_OPS_LOADER") == "native":
        from cpp_extension_tools import cached_load_torch_cpp_extension

        module = cached_load_torch_cpp_extension(name, _sources(name), extra_cflags=["-O3", *_cflags()])
    else:
        # Looked up at call time, as most wrappers do: after patch_torch() this is the cached drop-in.
        import torch.utils.cpp_extension

        module = torch.utils.cpp_extension.load(name, _sources(name), ["-O3", *_cflags()])
    _plugins[name] = module
    return module

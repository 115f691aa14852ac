"""Feature hashing on top of the C extension: tensors in and out, and the torch custom op.

The C functions return DLPack capsules; torch.from_dlpack and numpy.from_dlpack
wrap them without a copy. ``hash_ids`` on torch tensors goes through the custom
op ``torch.ops.example_package.hash_ids`` (CPU and CUDA kernels plus a Meta
kernel), so ``torch.compile(fullgraph=True)`` traces it without a graph break.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

__all__ = ["bind", "hash_ids", "hash_strings"]

_U64 = 2**64
_MAX_BUCKETS = 2**63 - 1

_extension: Any = None
_no_cuda_reason: str | None = "the extension is not loaded yet"
# Kept alive for the life of the process: dropping a Library deregisters its operators.
_library: torch.library.Library | None = None


def bind(extension: Any, no_cuda_reason: str | None) -> None:
    """Called once by the package after loading the extension; registers the custom op."""
    global _extension, _no_cuda_reason, _library
    _extension, _no_cuda_reason = extension, no_cuda_reason
    if _library is not None:
        return
    # The low-level Library API: torch.library.custom_op and register_fake cost about 6 ms at
    # import (measured), more than the whole warm load of the package.
    library = torch.library.Library("example_package", "DEF")
    library.define("hash_ids(Tensor ids, int num_buckets, int seed) -> Tensor")
    library.impl("hash_ids", _hash_ids_kernel, "CPU")
    library.impl("hash_ids", _hash_ids_kernel, "CUDA")
    library.impl("hash_ids", _hash_ids_meta, "Meta")  # what torch.compile's fake tensors run
    _library = library


def hash_strings(values: Any, num_buckets: int, seed: int = 0) -> torch.Tensor:
    """xxh64(UTF-8 bytes of each value, seed) % num_buckets, as a 1-D int64 CPU tensor.

    ``values``: a list or tuple of str/bytes, or a 1-D numpy array of dtype
    object, str_ or bytes_. Hashing runs on torch.get_num_threads() threads, without the GIL except for
    a list, which is read in place while this thread holds the GIL (a tuple or an array is not).
    """
    return torch.from_dlpack(_extension.hash_strings(values, num_buckets, seed, torch.get_num_threads()))


def hash_ids(ids: Any, num_buckets: int, seed: int = 0) -> Any:
    """xxh64(the 8 little-endian bytes of each id, seed) % num_buckets.

    ``ids``: an int64 torch tensor (CPU or CUDA, any shape) or an int64 numpy
    array. The result has the same shape, device and kind (tensor or array).
    """
    _check_range("num_buckets", num_buckets, 1, _MAX_BUCKETS)
    _check_range("seed", seed, 0, _U64 - 1)
    if isinstance(ids, torch.Tensor):
        if ids.dtype != torch.int64:
            raise TypeError(f"hash_ids(): ids must have dtype torch.int64, got {ids.dtype}; convert with .long()")
        # The op's schema has int64 arguments: a seed of 2**63 or more travels as its two's complement.
        signed_seed = seed - _U64 if seed > _MAX_BUCKETS else seed
        return torch.ops.example_package.hash_ids(ids, num_buckets, signed_seed)
    numpy = sys.modules.get("numpy")  # never imported here: only arrays the caller made can reach this
    if numpy is not None and isinstance(ids, numpy.ndarray):
        capsule = _extension.hash_ids(ids, num_buckets, seed, torch.get_num_threads())
        return numpy.from_dlpack(_CapsuleHolder(capsule))
    raise TypeError(f"hash_ids(): ids must be an int64 torch.Tensor or numpy.ndarray, not {type(ids).__name__}")


def _check_range(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"hash_ids(): {name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"hash_ids(): {name} must be in [{low}, {high}], got {value}")


def _hash_ids_kernel(ids: torch.Tensor, num_buckets: int, seed: int) -> torch.Tensor:
    if not ids.is_cuda:
        # The result is allocated in C (csrc/dlpack_io.c), as for numpy arrays: a large one is backed by
        # transparent huge pages, so it faults in once per 2 MiB. torch.empty's fresh pages fault in one
        # 4 KiB page at a time (19.5k faults at 10M ids), which doubled the call's time.
        return torch.from_dlpack(_extension.hash_ids(ids, num_buckets, seed % _U64, torch.get_num_threads()))
    if not _extension.has_cuda():
        raise RuntimeError(f"hash_ids(): CUDA tensors need the CUDA kernel, which was not built: "
                           f"{_no_cuda_reason}. Move the ids to the CPU, or fix that and re-import.")
    ids = ids.contiguous()
    result = torch.empty(ids.shape, dtype=torch.int64, device=ids.device)
    stream = torch.cuda.current_stream(ids.device).cuda_stream
    _extension.hash_ids_into(ids, result, num_buckets, seed % _U64, stream, torch.get_num_threads())
    return result


def _hash_ids_meta(ids: torch.Tensor, num_buckets: int, seed: int) -> torch.Tensor:
    return torch.empty(ids.shape, dtype=torch.int64, device=ids.device)


class _CapsuleHolder:
    """Hands one DLPack capsule to numpy.from_dlpack, which wants an object with ``__dlpack__``."""

    __slots__ = ("_capsule",)

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, *, stream: Any = None, max_version: Any = None, dl_device: Any = None,
                   copy: Any = None) -> Any:
        capsule, self._capsule = self._capsule, None
        if capsule is None:
            raise BufferError("this DLPack capsule was already consumed")
        return capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU: the C functions return CPU tensors

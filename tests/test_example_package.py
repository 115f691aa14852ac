"""example_package's C extension: XXH64 against the xxhash package, DLPack in and out, errors, leaks.

The extension is built once per module (its own cache root) by importing
example_package, exactly as users get it; ``m`` is the raw C module.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import random
import struct
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import xxhash

from tests.conftest import REPO

CSRC = str(REPO / "csrc")
GCC = ["gcc", "-std=gnu17", "-O3", "-march=native", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing"]

ep: Any = None
m: Any = None


@pytest.fixture(scope="module", autouse=True)
def _built_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    global ep, m
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CACHED_CPP_EXTENSION_BUILD_DIR", str(tmp_path_factory.mktemp("example-package-cache")))
        ep = importlib.import_module("example_package")
        m = ep._extension
        yield


U63 = 2**63 - 1
U64 = 2**64 - 1
SEEDS = [0, 1, 2**32, 0xDEADBEEFCAFEBABE, U64]
BUCKETS = [1, 2, 3, 7, 10, 1000, 1 << 20, (1 << 32) - 1, 1 << 32, (1 << 32) + 1, 10**12 + 39,
           (1 << 62) - 1, 1 << 62, (1 << 62) + 1, U63 - 2, U63]


def hs(values, nb, seed=0):
    return torch.from_dlpack(m.hash_strings(values, nb, seed))


def hi(x, nb, seed=0):
    return torch.from_dlpack(m.hash_ids(x, nb, seed))


def ref_str(v, nb, seed=0):
    b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
    return xxhash.xxh64_intdigest(b, seed) % nb


def ref_ids(arr, nb, seed=0):
    flat = np.asarray(arr).reshape(-1)
    out = [xxhash.xxh64_intdigest(struct.pack("<q", int(v)), seed) % nb for v in flat]
    return np.array(out, dtype=np.uint64).view(np.int64).reshape(np.asarray(arr).shape)


def rand_unicode(rng, n):
    pools = [(0x20, 0x7E), (0xA0, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFD), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        lo, hi_ = rng.choice(pools)
        out.append(chr(rng.randint(lo, hi_)))
    return "".join(out)


# --------------------------------------------------------------------------- basics

def test_static():
    assert m.GetStaticInteger() == 42
    assert m.Add42ToInteger(1) == 43
    assert m.Add42ToInteger(-42) == 0
    assert m.Add42ToInteger(2**100) == 2**100 + 42
    with pytest.raises(TypeError):
        m.Add42ToInteger("x")


def test_module_name_and_cuda_flag():
    assert m.__name__ == "example_package_ext"
    assert m.has_cuda() is (ep.NO_CUDA_REASON is None)


# --------------------------------------------------------------------------- what the module states

PY_MOD_MULTIPLE_INTERPRETERS, PY_MOD_GIL = 3, 4  # slot ids (Include/moduleobject.h)
PER_INTERPRETER_GIL_SUPPORTED, GIL_NOT_USED = 2, 1  # their values


class _ModuleDefSlot(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_int), ("value", ctypes.c_void_p)]


def _module_def_slots(path: str, name: str) -> dict[int, int]:
    """The m_slots of the module's PyModuleDef, read through its init function (which, with multi-phase
    init, returns the definition itself)."""
    init = getattr(ctypes.PyDLL(path), f"PyInit_{name}")
    init.restype = ctypes.c_void_p
    definition = init()
    # PyModuleDef: PyObject_HEAD, m_init, m_index, m_copy, then m_name, m_doc, m_size, m_methods, m_slots.
    slots_at = definition + object.__basicsize__ + 7 * ctypes.sizeof(ctypes.c_void_p)
    pointer = ctypes.c_void_p.from_address(slots_at).value
    found: dict[int, int] = {}
    if pointer:
        array = ctypes.cast(pointer, ctypes.POINTER(_ModuleDefSlot))
        i = 0
        while array[i].slot != 0:
            found[array[i].slot] = array[i].value or 0
            i += 1
    return found


def test_module_states_its_capabilities_for_this_python() -> None:
    """Each slot is compiled in from the Python that introduced it: 3.12 for multiple interpreters, 3.13
    for the GIL; older headers get neither (the slot ids would mean nothing to them)."""
    expected = {}
    if sys.version_info >= (3, 12):
        expected[PY_MOD_MULTIPLE_INTERPRETERS] = PER_INTERPRETER_GIL_SUPPORTED
    if sys.version_info >= (3, 13):
        expected[PY_MOD_GIL] = GIL_NOT_USED
    assert _module_def_slots(m.__file__, m.__name__) == expected


@pytest.mark.skipif(sys.version_info < (3, 12), reason="interpreters with their own GIL exist from Python 3.12")
def test_module_loads_in_an_interpreter_with_its_own_gil() -> None:
    # Without its Py_mod_multiple_interpreters slot the import fails there: "does not support loading in
    # subinterpreters".
    interpreters = importlib.import_module("_interpreters" if sys.version_info >= (3, 13) else "_xxsubinterpreters")
    interpreter = interpreters.create()  # isolated: its own GIL
    code = (f"import importlib.util\nspec = importlib.util.spec_from_file_location({m.__name__!r}, {m.__file__!r})\n"
            "module = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(module)\n"
            "assert module.Add42ToInteger(1) == 43\n")
    try:
        assert interpreters.run_string(interpreter, code) is None  # 3.13 returns the failure; 3.12 raises it
    finally:
        interpreters.destroy(interpreter)


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="not a free-threaded Python")
def test_import_keeps_the_gil_disabled_on_free_threaded_python() -> None:
    completed = subprocess.run([sys.executable, "-c", "import sys, example_package; print(sys._is_gil_enabled())"],
                               capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert completed.stdout.strip().splitlines()[-1] == "False", completed.stderr


def test_exported_symbols_are_the_init_function_only() -> None:
    """One prefix, all hidden: the dynamic symbol table holds PyInit_<name> and nothing of ours else."""
    nm = subprocess.run(["nm", "-D", "--defined-only", m.__file__], capture_output=True, text=True, check=True)
    names = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    assert f"PyInit_{m.__name__}" in names
    assert not {n for n in names if n.startswith(("ep_", "hash_", "xxh", "EP_"))}, names


# --------------------------------------------------------------------------- error paths


class _DeviceRaises:
    def __dlpack_device__(self) -> tuple[int, int]:
        raise RuntimeError("device query failed")

    def __dlpack__(self, **kwargs: Any) -> Any:
        raise AssertionError("never reached: the device query failed first")


class _DeviceMalformed:
    def __dlpack_device__(self) -> str:
        return "cpu"

    def __dlpack__(self, **kwargs: Any) -> Any:
        raise AssertionError("never reached: the device query is malformed")


def test_errors_of_dlpack_device_are_raised_not_swallowed() -> None:
    with pytest.raises(RuntimeError, match="device query failed"):
        m.hash_ids(_DeviceRaises(), 10)
    with pytest.raises(RuntimeError, match="device query failed"):
        m.hash_ids_into(_DeviceRaises(), torch.empty(3, dtype=torch.int64), 10)
    with pytest.raises(RuntimeError, match="device query failed"):
        m.hash_ids_into(torch.arange(3), _DeviceRaises(), 10)
    with pytest.raises(TypeError, match=r"hash_ids\(\): ids: __dlpack_device__\(\) must return"):
        m.hash_ids(_DeviceMalformed(), 10)
    with pytest.raises(TypeError, match=r"hash_ids_into\(\): dst: __dlpack_device__\(\) must return"):
        m.hash_ids_into(torch.arange(3), _DeviceMalformed(), 10)


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: m.Add42ToInteger(1.5), TypeError, "Add42ToInteger: expected an int, got float"),
    (lambda: m.GetStaticInteger(1), TypeError, "takes no arguments"),
    (lambda: m.hash_ids(torch.arange(3)), TypeError, "num_buckets"),
    (lambda: m.hash_ids(torch.arange(3), 10.0), TypeError, "float"),
    (lambda: m.hash_ids(torch.arange(3), 10, "1"), TypeError, "str"),
    (lambda: m.hash_ids(torch.arange(3), 10, 0, "2"), TypeError, "integer"),
    (lambda: m.hash_ids_into(torch.arange(3), torch.empty(3, dtype=torch.int64), 10, 0, 1.0), TypeError, "float"),
    (lambda: m.hash_strings("abc", 10), TypeError, "not a single str"),
    (lambda: m.hash_strings(42, 10), TypeError, "must be a list, tuple or 1-D numpy array"),
    (lambda: m.hash_strings(["a", 3], 10), TypeError, r"values\[1\] must be str or bytes, not int"),
])
def test_wrong_types_raise_type_error_with_a_message(call: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- strings

def test_empty_input():
    t = hs([], 10)
    assert t.dtype == torch.int64 and t.shape == (0,)
    assert hs((), 10).shape == (0,)


@pytest.mark.parametrize("seed", SEEDS)
def test_every_length_bytes_and_str(seed):
    rng = random.Random(seed & 0xFFFF)
    vals = [bytes(rng.randrange(256) for _ in range(n)) for n in range(0, 65)]
    vals += [bytes(rng.randrange(256) for _ in range(n)) for n in (100, 127, 128, 129, 1000, 4096)]
    for nb in BUCKETS:
        got = hs(vals, nb, seed).tolist()
        exp = [ref_str(v, nb, seed) for v in vals]
        assert [g & U64 for g in got] == exp
    svals = ["a" * n for n in range(65)]
    got = hs(svals, U63, seed).tolist()
    assert got == [ref_str(v, U63, seed) for v in svals]


@pytest.mark.parametrize("seed", SEEDS)
def test_random_unicode(seed):
    rng = random.Random(seed ^ 12345)
    vals = [rand_unicode(rng, rng.randint(0, 50)) for _ in range(2000)]
    vals += ["", "\U0001F600", "h\u00e9llo", "\u4e2d\u6587", "\x00", "a\x00b", "\U0010FFFF" * 9]
    for nb in (1, 2, 17, 2**31 - 1, 2**40 + 7, U63):
        got = hs(vals, nb, seed).tolist()
        assert got == [ref_str(v, nb, seed) for v in vals]
        # str and its UTF-8 bytes hash identically
        assert hs([v.encode() for v in vals], nb, seed).tolist() == got


@pytest.mark.parametrize("wide", ["\u00e9", "\u4e2d", "\U0001F600"], ids=["latin1", "ucs2", "ucs4"])
def test_one_wide_character_at_every_position(wide: str) -> None:
    """The encoders test and pack ASCII a 64-bit word at a time: a wide character in any lane, or in
    the tail after the last whole word, must come out the same as str.encode."""
    values = ["abcdefghijklmnopqrs"[:length][:pos] + wide + "abcdefghijklmnopqrs"[pos:length]
              for length in range(20) for pos in range(length + 1)]
    assert hs(values, U63, 3).tolist() == [ref_str(v, U63, 3) for v in values]
    cells = np.array(values)  # the same text as numpy UCS4 cells
    assert hs(cells, U63, 3).tolist() == [ref_str(v, U63, 3) for v in values]


@pytest.mark.parametrize("filler", ["\u4e2d", "\U0001F600"], ids=["ucs2", "ucs4"])
def test_lone_surrogate_at_every_position_raises(filler: str) -> None:
    for length in range(12):
        for pos in range(length + 1):
            text = filler * pos + "\udc80" + "x" * (length - pos)
            with pytest.raises(UnicodeEncodeError):
                hs([text], 10)


def test_unaligned_numpy_cells() -> None:
    """A str_ field of a packed structured array sits at odd addresses: cells are read with memcpy."""
    records = np.zeros(5, dtype=[("pad", "u1"), ("text", "U7")])
    texts = ["", "ascii", "h\u00e9llo", "\u4e2d\u6587\u4e2d", "\U0001F600!"]
    records["text"] = texts
    column = records["text"]
    assert column.__array_interface__["data"][0] % 4 != 0
    assert hs(column, 1000, 9).tolist() == [ref_str(t, 1000, 9) for t in texts]


def test_random_buckets_fastmod():
    rng = random.Random(7)
    vals = [os.urandom(rng.randint(0, 40)) for _ in range(500)]
    raw = [xxhash.xxh64_intdigest(v, 3) for v in vals]
    nbs = [rng.randint(1, U63) for _ in range(200)] + [rng.randint(1, 1 << 20) for _ in range(200)]
    nbs += [(1 << k) + d for k in range(1, 63) for d in (-1, 0, 1) if 1 <= (1 << k) + d <= U63]
    for nb in nbs:
        assert hs(vals, nb, 3).tolist() == [r % nb for r in raw], nb


def test_tuple_list_ndarray_subclasses():
    vals = ["a", b"b", "\u00ff", b""]
    exp = [ref_str(v, 1000) for v in vals]
    assert hs(vals, 1000).tolist() == exp
    assert hs(tuple(vals), 1000).tolist() == exp
    assert hs(np.array(vals, dtype=object), 1000).tolist() == exp

    class S(str):
        pass

    class B(bytes):
        pass

    assert hs([S("a"), B(b"b")], 1000).tolist() == exp[:2]


def test_result_is_independent_of_later_mutation():
    vals = ["x", "y"]
    t = hs(vals, 100)
    vals[0] = "z"
    assert t.tolist() == [ref_str("x", 100), ref_str("y", 100)]


def test_concurrent_mutation_does_not_crash():
    vals = [f"s{i}" for i in range(20000)]
    stop = threading.Event()

    def mutate():
        while not stop.is_set():
            vals.append("extra" * 10)
            vals.pop()
            vals.reverse()

    th = threading.Thread(target=mutate)
    th.start()
    try:
        for _ in range(50):
            t = hs(vals, 1 << 30)
            assert t.shape[0] in (20000, 20001)
    finally:
        stop.set()
        th.join()


def test_unconsumed_capsule_frees_itself():
    cap = m.hash_strings(["a"], 10)
    assert type(cap).__name__ == "PyCapsule"
    del cap  # destructor calls the deleter (leaks would show in the RSS test)


@pytest.mark.parametrize("bad,exc", [
    (None, TypeError), (123, TypeError), ("abc", TypeError), (b"abc", TypeError),
    (bytearray(b"x"), TypeError), ({"a"}, TypeError),
])
def test_strings_bad_container(bad, exc):
    with pytest.raises(exc):
        m.hash_strings(bad, 10)


def test_strings_bad_items():
    with pytest.raises(TypeError, match=r"values\[1\]"):
        m.hash_strings(["a", 1, "b"], 10)
    with pytest.raises(TypeError, match=r"values\[0\]"):
        m.hash_strings([None], 10)
    with pytest.raises(TypeError, match=r"values\[2\]"):
        m.hash_strings(["a", b"b", bytearray(b"c")], 10)
    with pytest.raises(UnicodeEncodeError):
        m.hash_strings(["ok", "\udcff"], 10)
    with pytest.raises(ValueError):  # UnicodeEncodeError is a ValueError
        m.hash_strings(["\ud800x"], 10)


@pytest.mark.parametrize("nb", [0, -1, 2**63, 2**64, -(2**70)])
def test_bad_num_buckets(nb):
    with pytest.raises(ValueError, match="num_buckets"):
        m.hash_strings(["a"], nb)
    with pytest.raises(ValueError, match="num_buckets"):
        m.hash_ids(torch.arange(3), nb)


@pytest.mark.parametrize("nb", [1.5, None, "3"])
def test_num_buckets_wrong_type(nb):
    with pytest.raises(TypeError):
        m.hash_strings(["a"], nb)


@pytest.mark.parametrize("seed", [-1, 2**64, 2**100])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        m.hash_strings(["a"], 10, seed)
    with pytest.raises(ValueError, match="seed"):
        m.hash_ids(torch.arange(3), 10, seed)
    with pytest.raises(TypeError):
        m.hash_strings(["a"], 10, 1.0)


def test_keywords_and_numpy_ints():
    assert hs(["a"], np.int64(10), np.uint64(U64)).tolist() == [ref_str("a", 10, U64)]
    t = torch.from_dlpack(m.hash_strings(values=["a"], num_buckets=10, seed=5))
    assert t.tolist() == [ref_str("a", 10, 5)]


# --------------------------------------------------------------------------- ids

@pytest.mark.parametrize("seed", [0, 1, U64])
@pytest.mark.parametrize("nb", [1, 2, 1000, 2**33 + 1, U63])
def test_ids_contiguous(seed, nb):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-(2**63), 2**63 - 1, (1000,), dtype=torch.int64, generator=g)
    x[:4] = torch.tensor([0, -1, 2**63 - 1, -(2**63)])
    got = hi(x, nb, seed)
    assert got.dtype == torch.int64 and got.shape == x.shape
    assert np.array_equal(got.numpy(), ref_ids(x.numpy(), nb, seed))


def test_ids_strided_layouts():
    x = torch.arange(-60, 60, dtype=torch.int64).reshape(8, 15) * 1000003
    cases = {
        "T": x.t(),
        "slice_offset": x[3:, 1::2],
        "3d_perm": x.reshape(2, 4, 15).permute(2, 0, 1),
        "expand": torch.tensor([5, 6], dtype=torch.int64)[:, None].expand(2, 7),
        "row": x[2],
        "col": x[:, 4],
        "0d": torch.tensor(123456789, dtype=torch.int64),
        "0d_view": x[1, 2],
        "zero": torch.empty((0, 3), dtype=torch.int64),
        "zero_nc": x[:, :0],
        "size1dims": x[:1, :, None][:, 2:9],
    }
    for name, t in cases.items():
        for nb in (97, 1 << 40, U63):
            got = hi(t, nb, 11)
            assert got.shape == t.shape, name
            assert got.is_contiguous()
            assert np.array_equal(got.numpy(), ref_ids(t.contiguous().numpy(), nb, 11)), name


def test_ids_numpy():
    a = np.arange(-500, 500, dtype=np.int64).reshape(10, 100) * 7919
    cases = [a, a.T, a[::-1], a[:, ::-3], a[2:5, 10:90:7], np.array(5, dtype=np.int64),
             np.empty((3, 0), dtype=np.int64)]
    ro = a.copy()
    ro.flags.writeable = False
    cases.append(ro)
    for c in cases:
        got = hi(c, 1009, 2)
        assert got.shape == c.shape
        assert np.array_equal(got.numpy(), ref_ids(np.array(c, order="C"), 1009, 2))


def test_ids_large_matches_small_path():
    # large enough to release the GIL; compare to a Python reference subset
    x = torch.randint(-(2**62), 2**62, (100_000,), dtype=torch.int64)
    got = hi(x, 12345, 9)
    idx = torch.randint(0, 100_000, (500,))
    assert np.array_equal(got[idx].numpy(), ref_ids(x[idx].numpy(), 12345, 9))
    gt = hi(x.reshape(1000, 100).t(), 12345, 9)
    assert torch.equal(gt, got.reshape(1000, 100).t())


def test_ids_accepts_capsule_and_consumes_it():
    x = torch.arange(10)
    cap = x.__dlpack__()
    assert torch.equal(hi(cap, 50), hi(x, 50))
    with pytest.raises(TypeError, match="unconsumed"):
        m.hash_ids(cap, 50)


@pytest.mark.parametrize("t", [
    torch.arange(3, dtype=torch.int32), torch.arange(3, dtype=torch.float32),
    torch.arange(3, dtype=torch.float64), torch.arange(3, dtype=torch.uint8),
    torch.zeros(3, dtype=torch.bool), np.arange(3, dtype=np.uint64), np.arange(3, dtype=np.int32),
])
def test_ids_wrong_dtype(t):
    with pytest.raises(TypeError, match="int64"):
        m.hash_ids(t, 10)
    with pytest.raises(TypeError, match="int64"):
        m.hash_ids_into(t, torch.empty(3, dtype=torch.int64), 10)


@pytest.mark.parametrize("bad", [None, [1, 2], 3, "abc"])
def test_ids_not_dlpack(bad):
    with pytest.raises(TypeError, match="DLPack"):
        m.hash_ids(bad, 10)


def test_ids_requires_grad_tensor_error_propagates():
    x = torch.arange(3.0, requires_grad=True)
    with pytest.raises((RuntimeError, TypeError, BufferError)):
        m.hash_ids(x, 10)


# --------------------------------------------------------------------------- hash_ids_into

def test_into_cpu():
    x = torch.randint(-(2**63), 2**63 - 1, (40, 25), dtype=torch.int64)
    exp = hi(x, 777, 5)
    dst = torch.empty_like(x)
    assert m.hash_ids_into(x, dst, 777, 5) is None
    assert torch.equal(dst, exp)
    dst2 = torch.empty(1000, dtype=torch.int64)  # same numel, other shape
    m.hash_ids_into(x.t(), dst2, 777, 5, stream=0)
    assert torch.equal(dst2, hi(x.t(), 777, 5).reshape(-1))
    # in place
    y = x.clone()
    m.hash_ids_into(y, y, 777, 5)
    assert torch.equal(y, exp)
    # numpy destination
    nd = np.empty((40, 25), dtype=np.int64)
    m.hash_ids_into(x, nd, 777, 5)
    assert np.array_equal(nd, exp.numpy())
    # zero-size and 0-d
    m.hash_ids_into(torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), 3)
    z = torch.empty((), dtype=torch.int64)
    m.hash_ids_into(torch.tensor(42), z, U63)
    assert z.item() == ref_ids(np.array(42), U63).item()


def test_into_errors():
    x = torch.arange(12)
    with pytest.raises(ValueError, match="elements"):
        m.hash_ids_into(x, torch.empty(11, dtype=torch.int64), 10)
    with pytest.raises(ValueError, match="contiguous"):
        m.hash_ids_into(x, torch.empty(3, 4, dtype=torch.int64).t(), 10)
    ro = np.empty(12, dtype=np.int64)
    ro.flags.writeable = False
    with pytest.raises((ValueError, BufferError), match=r"read-only|readonly"):
        m.hash_ids_into(x, ro, 10)
    with pytest.raises(TypeError, match="int64"):
        m.hash_ids_into(x, torch.empty(12, dtype=torch.int32), 10)
    with pytest.raises(ValueError, match="stream"):
        m.hash_ids_into(x, torch.empty(12, dtype=torch.int64), 10, 0, -1)


# A hand-made "CUDA" DLPack capsule (we have no GPU): checks the no-CUDA build's
# error and that the capsule is consumed and its deleter run.
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", _DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER),
                ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor)]


def test_dlpack_struct_layout_matches_torch_capsules():
    # sanity-check our ctypes mirror (and thus dlpack_c.h's field order) against torch
    pycap_get = ctypes.pythonapi.PyCapsule_GetPointer
    pycap_get.restype = ctypes.c_void_p
    pycap_get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    x = torch.arange(6).reshape(2, 3)[:, 1:]
    cap = x.__dlpack__(max_version=(1, 0))
    p = ctypes.cast(pycap_get(cap, b"dltensor_versioned"), ctypes.POINTER(_DLManagedTensorVersioned))
    assert p.contents.version.major == 1
    t = p.contents.dl_tensor
    assert (t.device.device_type, t.ndim, t.dtype.code, t.dtype.bits) == (1, 2, 0, 64)
    assert [t.shape[0], t.shape[1]] == [2, 2] and [t.strides[0], t.strides[1]] == [3, 1]
    assert torch.equal(hi(cap, 99), hi(x, 99))  # then consumed by us


class FakeCuda:
    """Object exporting a fake CUDA int64 tensor via DLPack."""

    def __init__(self, versioned, n=4, flags=0, device_type=2, offset_elements=0):
        self.versioned, self.flags, self.device_type = versioned, flags, device_type
        self.shape = (ctypes.c_int64 * 1)(n)
        self.offset = offset_elements
        self.buf = (ctypes.c_int64 * (n + offset_elements))()
        self.deleted = 0
        self.kwargs = None

        def _del(_ptr):
            self.deleted += 1
        self._del = _DELETER(_del)

    def __dlpack_device__(self):
        return (self.device_type, 0)

    def __dlpack__(self, **kwargs):
        self.kwargs = kwargs
        t = _DLTensor(ctypes.cast(self.buf, ctypes.c_void_p), _DLDevice(self.device_type, 0), 1,
                      _DLDataType(0, 64, 1), self.shape, None, 8 * self.offset)
        if self.versioned:
            self.mt = _DLManagedTensorVersioned(_DLPackVersion(1, 0), None, self._del, self.flags, t)
            name = b"dltensor_versioned"
        else:
            if "max_version" in kwargs:
                raise TypeError("unexpected keyword max_version")
            self.mt = _DLManagedTensor(t, None, self._del)
            name = b"dltensor"
        new = ctypes.pythonapi.PyCapsule_New
        new.restype = ctypes.py_object
        new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return new(ctypes.addressof(self.mt), name, None)


@pytest.mark.parametrize("versioned", [True, False])
def test_cuda_without_kernel(versioned):
    src, dst = FakeCuda(versioned), FakeCuda(versioned)
    with pytest.raises(RuntimeError, match="has no CUDA kernel"):
        m.hash_ids_into(src, dst, 10, 0, 7)
    assert src.deleted == 1 and dst.deleted == 1
    assert src.kwargs.get("stream") == 7
    if versioned:
        assert src.kwargs.get("max_version") == (1, 0)
    s0 = FakeCuda(versioned)
    with pytest.raises(RuntimeError):
        m.hash_ids_into(s0, FakeCuda(versioned), 10)
    assert s0.kwargs.get("stream") == 1  # our default stream 0 -> DLPack legacy default (1)
    with pytest.raises(ValueError, match="CPU"):
        m.hash_ids(FakeCuda(versioned), 10)


def test_read_only_flag_rejected_for_dst():
    src = torch.arange(4)
    dst = FakeCuda(True, flags=1, device_type=1)  # CPU, read-only
    with pytest.raises(ValueError, match="read-only"):
        m.hash_ids_into(src, dst, 10)
    assert dst.deleted == 1
    ok = FakeCuda(True, flags=0, device_type=1)
    m.hash_ids_into(src, ok, 10)
    assert list(ok.buf) == hi(src, 10).tolist() and ok.deleted == 1
    # read-only *source* is fine
    rs = FakeCuda(True, flags=1, device_type=1)
    rs.buf[:] = [1, 2, 3, 4]
    assert hi(rs, 10).tolist() == ref_ids(np.array([1, 2, 3, 4]), 10).tolist()


@pytest.mark.parametrize("versioned", [True, False])
def test_byte_offset_and_null_strides_are_honoured(versioned):
    source = FakeCuda(versioned, n=4, device_type=1, offset_elements=3)  # CPU, data starts 24 bytes in
    source.buf[:] = [-1, -1, -1, 10, 20, 30, 40]
    assert hi(source, 1000, 1).tolist() == ref_ids(np.array([10, 20, 30, 40]), 1000, 1).tolist()
    destination = FakeCuda(versioned, n=4, device_type=1, offset_elements=2)
    m.hash_ids_into(torch.tensor([10, 20, 30, 40]), destination, 1000, 1)
    assert list(destination.buf)[:2] == [0, 0]  # nothing written before the offset
    assert list(destination.buf)[2:] == ref_ids(np.array([10, 20, 30, 40]), 1000, 1).tolist()
    assert source.deleted == 1 and destination.deleted == 1


def test_device_mismatch():
    with pytest.raises(ValueError, match="same device"):
        m.hash_ids_into(FakeCuda(True), torch.empty(4, dtype=torch.int64), 10)


# --------------------------------------------------------------------------- fastmod (C)

def test_fastmod_edge_cases_in_c(tmp_path):
    src = tmp_path / "fm.c"
    src.write_text(r'''
#include "xxhash64.h"
#include <stdio.h>
static uint64_t s = 88172645463325252ull;
static uint64_t rnd(void) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }
static int check(uint64_t d, uint64_t x, ep_fastmod64 fm) {
    if (ep_fastmod64_apply(x, fm) != x % d) { printf("FAIL d=%llu x=%llu\n",
        (unsigned long long)d, (unsigned long long)x); return 1; }
    return 0;
}
int main(void) {
    int bad = 0;
    for (int it = 0; it < 200000 && !bad; it++) {
        uint64_t d;
        switch (it % 4) {
        case 0: d = rnd() >> 1; break;
        case 1: d = rnd() >> (1 + rnd() % 63); break;
        case 2: { int k = 1 + (int)(rnd() % 62); d = (1ull << k) + (rnd() % 3) - 1; break; }
        default: d = 1 + it / 4; break;
        }
        if (d == 0) d = 1;
        if (d > 0x7fffffffffffffffull) d = 0x7fffffffffffffffull;
        ep_fastmod64 fm = ep_fastmod64_init(d);
        uint64_t q = UINT64_MAX / d;
        uint64_t xs[] = {0, 1, d - 1, d, d + 1, UINT64_MAX, UINT64_MAX - 1, q * d, q * d - 1,
                         (q / 2) * d - 1, (q / 2) * d, rnd(), rnd(), rnd() >> 1};
        for (unsigned i = 0; i < sizeof xs / sizeof xs[0]; i++) bad |= check(d, xs[i], fm);
    }
    puts(bad ? "BAD" : "OK");
    return bad;
}
''')
    exe = tmp_path / "fm"
    subprocess.check_call([*GCC, "-I" + CSRC, str(src), "-o", str(exe)])
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stdout


def test_xxh64_generic_matches_u64_path_in_c(tmp_path):
    src = tmp_path / "u.c"
    src.write_text(r'''
#include "xxhash64.h"
#include <stdio.h>
int main(void) {
    uint64_t v = 0x0123456789abcdefull;
    for (int i = 0; i < 100000; i++) {
        uint8_t b[8];
        for (int k = 0; k < 8; k++) b[k] = (uint8_t)(v >> (8 * k));
        uint64_t seed = v * 31 + (uint64_t)i;
        if (xxh64(b, 8, seed) != xxh64_u64(v, seed)) { puts("BAD"); return 1; }
        v = v * 6364136223846793005ull + 1442695040888963407ull;
    }
    puts("OK");
    return 0;
}
''')
    exe = tmp_path / "u"
    subprocess.check_call([*GCC, "-I" + CSRC, str(src), "-o", str(exe)])
    assert subprocess.run([str(exe)], capture_output=True, text=True).stdout.strip() == "OK"


# --------------------------------------------------------------------------- leaks

def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_rss_growth():
    x = torch.arange(1000, dtype=torch.int64)
    xt = x.reshape(20, 50).t()
    npx = np.arange(1000, dtype=np.int64)[::-2]
    dst = torch.empty(1000, dtype=torch.int64)
    vals = [f"abc{i}" for i in range(100)] + [b"xyz", "\u00e9\U0001F600"]
    bad_vals = ["ok", "fine", 3]

    def one_round(i):
        torch.from_dlpack(m.hash_strings(vals, 1000, i))
        m.hash_strings(vals, 7)  # capsule dropped unconsumed
        torch.from_dlpack(m.hash_ids(x, 97, i))
        torch.from_dlpack(m.hash_ids(xt, 97))
        torch.from_dlpack(m.hash_ids(npx, 97))
        m.hash_ids_into(x, dst, 13, i)
        m.hash_ids(x.__dlpack__(), 5)
        for call in (lambda: m.hash_strings(bad_vals, 10),
                     lambda: m.hash_strings(["a", "\udcff"], 10),
                     lambda: m.hash_strings(None, 10),
                     lambda: m.hash_strings(vals, 0),
                     lambda: m.hash_strings(vals, 10, -1),
                     lambda: m.hash_ids(x.int(), 10),
                     lambda: m.hash_ids(None, 10),
                     lambda: m.hash_ids_into(x, dst[:10], 10),
                     lambda: m.hash_ids_into(FakeCuda(True), FakeCuda(True), 10),
                     lambda: m.hash_ids_into(x, FakeCuda(True, flags=1, device_type=1), 10)):
            try:
                call()
            except (TypeError, ValueError, RuntimeError):
                pass

    for i in range(2000):  # warm-up: allocator pools, caches
        one_round(i)
    gc.collect()
    before = _rss_bytes()
    for i in range(20000):
        one_round(i)
    gc.collect()
    grown = _rss_bytes() - before
    # per round we allocate ~30 KB of buffers; a leak of even one would be > 500 MB
    assert grown < 8 * 1024 * 1024, f"RSS grew by {grown / 1e6:.1f} MB"


# --------------------------------------------------------------------------- the package's Python API

def test_api_returns_the_kind_it_was_given() -> None:
    strings = ep.hash_strings(["a", b"b"], 1000)
    assert isinstance(strings, torch.Tensor) and strings.dtype == torch.int64 and strings.device.type == "cpu"
    ids = torch.arange(-5, 7).reshape(3, 4)
    as_tensor = ep.hash_ids(ids, 1000, 2**64 - 1)
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == ids.shape
    assert np.array_equal(as_tensor.numpy(), ref_ids(ids.numpy(), 1000, 2**64 - 1))
    as_array = ep.hash_ids(ids.numpy(), 1000, 2**64 - 1)
    assert isinstance(as_array, np.ndarray) and as_array.dtype == np.int64
    assert np.array_equal(as_array, as_tensor.numpy())


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: ep.hash_ids(torch.arange(3, dtype=torch.int32), 10), TypeError, "int64"),
    (lambda: ep.hash_ids([1, 2], 10), TypeError, "torch.Tensor or numpy.ndarray"),
    (lambda: ep.hash_ids(torch.arange(3), True), TypeError, "num_buckets"),
    (lambda: ep.hash_ids(torch.arange(3), 0), ValueError, "num_buckets"),
    (lambda: ep.hash_ids(torch.arange(3), 2**63), ValueError, "num_buckets"),
    (lambda: ep.hash_ids(torch.arange(3), 10, -1), ValueError, "seed"),
    (lambda: ep.hash_ids(torch.arange(3), 10, 2**64), ValueError, "seed"),
    (lambda: ep.hash_ids(torch.arange(3), 10, None), TypeError, "seed"),
])
def test_api_rejects_bad_arguments(call: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def _capsule_data_pointer(capsule: Any) -> int:
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    managed = ctypes.cast(get_pointer(capsule, b"dltensor"), ctypes.POINTER(_DLManagedTensor))
    return int(managed.contents.dl_tensor.data)


@pytest.mark.parametrize("consumer", ["torch", "numpy"])
def test_results_are_wrapped_without_a_copy(consumer: str) -> None:
    for capsule in (m.hash_strings(["a", "b", "c"], 10), m.hash_ids(torch.arange(5), 10)):
        address = _capsule_data_pointer(capsule)
        if consumer == "torch":
            assert torch.from_dlpack(capsule).data_ptr() == address
        else:
            from example_package._hashing import _CapsuleHolder

            assert np.from_dlpack(_CapsuleHolder(capsule)).ctypes.data == address


def test_numpy_string_arrays_hash_like_their_python_values() -> None:
    texts = ["", "a", "h\u00e9llo", "\U0001F600 emoji", "a\x00b", "x" * 40]
    unicode_array = np.array(texts)  # dtype <U..., trailing NULs dropped like numpy does
    assert ep.hash_strings(unicode_array, 2**63 - 1, 5).tolist() == [ref_str(str(t), 2**63 - 1, 5)
                                                                      for t in unicode_array]
    raw = [b"", b"abc", b"a\x00b", b"\xff\xfe"]
    bytes_array = np.array(raw)
    assert ep.hash_strings(bytes_array, 1000).tolist() == [ref_str(bytes(b), 1000) for b in bytes_array]
    assert ep.hash_strings(unicode_array[::-2], 1000).tolist() == [ref_str(str(t), 1000) for t in unicode_array[::-2]]
    assert ep.hash_strings(np.array(texts, dtype=object), 1000).tolist() == [ref_str(t, 1000) for t in texts]


@pytest.mark.parametrize(("values", "error", "match"), [
    (np.array([["a"], ["b"]]), ValueError, "1-D"),
    (np.arange(3), TypeError, "dtype object, str_ or bytes_"),
    (np.array(["a", "b"]).astype(">U1"), TypeError, "native byte order"),
    (np.array(["ok", "\udcff"]), UnicodeEncodeError, "surrogates"),
])
def test_numpy_string_arrays_rejected_clearly(values: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ep.hash_strings(values, 10)


def test_str_utf8_cache_is_not_filled() -> None:
    """PyUnicode_AsUTF8 would attach a UTF-8 copy to every non-ASCII str for the rest of its life."""
    values = [f"h\u00e9llo w\u00f6rld {i}" for i in range(100)]
    sizes = [sys.getsizeof(v) for v in values]
    ep.hash_strings(values, 1000)
    assert [sys.getsizeof(v) for v in values] == sizes


@pytest.mark.parametrize(("function", "kind"), [("hash_ids", "tensor"), ("hash_strings", "tuple"),
                                                ("hash_strings", "numpy")])
def test_loops_release_the_gil(function: str, kind: str) -> None:
    data: Any
    if kind == "tensor":
        data = torch.randint(-(2**62), 2**62, (30_000_000,))
    else:  # not a list: a list is read in place with the GIL held (see csrc/hash_strings.c)
        data = tuple(f"value number {i} \u00e9" for i in range(2_000_000))
        if kind == "numpy":
            data = np.array(data)
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    # A long switch interval: a thread that holds the GIL through the whole call keeps the counter
    # from running at all; a call that releases it lets the counter run meanwhile.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    counter = threading.Thread(target=count)
    try:
        counter.start()
        before = ticks
        getattr(m, function)(data, 1_000_003)
        during = ticks - before
    finally:
        done.set()
        counter.join()
        sys.setswitchinterval(interval)
    assert during > 1000, during


def test_custom_op_compiles_without_graph_breaks() -> None:
    def features(ids: torch.Tensor) -> torch.Tensor:
        return ep.hash_ids(ids * 3 + 1, 1 << 20, 7) % 1000

    compiled = torch.compile(features, fullgraph=True, backend="aot_eager")
    ids = torch.arange(-50, 50).reshape(10, 10)
    assert torch.equal(compiled(ids), features(ids))
    meta = torch.ops.example_package.hash_ids(torch.empty(3, 4, dtype=torch.int64, device="meta"), 10, 0)
    assert meta.shape == (3, 4) and meta.device.type == "meta"


@pytest.mark.slow
def test_custom_op_under_inductor() -> None:
    def features(ids: torch.Tensor) -> torch.Tensor:
        return ep.hash_ids(ids + 1, 1000, 2**64 - 1) + 1

    compiled = torch.compile(features, fullgraph=True)
    ids = torch.arange(100).reshape(4, 25)
    assert torch.equal(compiled(ids), features(ids))


# --------------------------------------------------------------------------- GPU (skipped without CUDA)

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.gpu
@gpu
def test_gpu_matches_cpu_on_every_layout() -> None:
    assert m.has_cuda(), ep.NO_CUDA_REASON
    ids = torch.randint(-(2**63), 2**63 - 1, (1000, 37), dtype=torch.int64)
    for nb, seed in ((1, 0), (1 << 20, 1), (1_000_003, 2**64 - 1), (2**63 - 1, 5)):
        expected = ep.hash_ids(ids, nb, seed)
        for layout in (ids, ids.t(), ids[::3, 1:]):
            on_gpu = ep.hash_ids(layout.cuda(), nb, seed)
            assert on_gpu.device.type == "cuda"
            assert torch.equal(on_gpu.cpu(), ep.hash_ids(layout, nb, seed))
        assert torch.equal(ep.hash_ids(ids.cuda(), nb, seed).cpu(), expected)
    assert ep.hash_ids(torch.empty(0, 3, dtype=torch.int64, device="cuda"), 10).shape == (0, 3)


@pytest.mark.gpu
@gpu
def test_gpu_runs_on_the_current_stream_and_compiles() -> None:
    ids = torch.arange(1 << 20, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        result = ep.hash_ids(ids, 1000, 3)
    stream.synchronize()
    assert torch.equal(result.cpu(), ep.hash_ids(ids.cpu(), 1000, 3))
    compiled = torch.compile(lambda x: ep.hash_ids(x, 1000, 3) + 1, fullgraph=True)
    assert torch.equal(compiled(ids).cpu(), ep.hash_ids(ids.cpu(), 1000, 3) + 1)


@pytest.mark.gpu
@gpu
def test_gpu_errors_are_python_exceptions() -> None:
    ids = torch.arange(10, device="cuda")
    with pytest.raises(ValueError, match="same device"):
        m.hash_ids_into(ids, torch.empty(10, dtype=torch.int64), 10)
    with pytest.raises(ValueError, match="contiguous"):
        m.hash_ids_into(ids.reshape(2, 5).t(), torch.empty(10, dtype=torch.int64, device="cuda"), 10)

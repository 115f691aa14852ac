/*
 * feature_hashing.c - CPython C-API extension (no pybind11, no torch C++ API).
 *
 * Tensors are exchanged via DLPack:
 *   hash_strings(values, num_buckets, seed=0) -> "dltensor" capsule (1-D int64, CPU)
 *   hash_ids(obj, num_buckets, seed=0)        -> "dltensor" capsule (int64, CPU, same shape)
 *   hash_ids_into(src, dst, num_buckets, seed=0, stream=0) -> None (CPU or CUDA)
 * The Python wrapper turns returned capsules into tensors with torch.from_dlpack.
 *
 * result = XXH64(bytes, seed) % num_buckets   (unsigned 64-bit modulo, stored as int64)
 *   strings: bytes = UTF-8 encoding of a str, or the bytes object itself
 *   ids:     bytes = the 8 little-endian bytes of the int64 id
 *
 * Build with -DFH_WITH_CUDA (and link feature_hashing_cuda.cu) for CUDA support.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "dlpack_c.h"
#include "xxhash64.h"

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME feature_hashing
#endif

#define FH_CONCAT_(a, b) a##b
#define FH_CONCAT(a, b) FH_CONCAT_(a, b)
#define FH_STR_(x) #x
#define FH_STR(x) FH_STR_(x)

/* Below this many elements the GIL is not worth releasing. */
#define FH_GIL_RELEASE_THRESHOLD 2048

#ifdef FH_WITH_CUDA
/* Provided by feature_hashing_cuda.cu (which links cudart). */
extern int fh_hash_ids_cuda(const int64_t *in, int64_t *out, int64_t n, uint64_t num_buckets,
                            uint64_t seed, void *stream);
extern const char *fh_cuda_error_string(int code);
#endif

/* ======================================================================== */
/* Argument parsing                                                         */
/* ======================================================================== */

/* num_buckets: an integer in [1, 2**63-1]. */
static int fh_parse_num_buckets(PyObject *obj, uint64_t *out)
{
    PyObject *idx = PyNumber_Index(obj); /* TypeError for float, None, str ... */
    long long v;
    int overflow = 0;

    if (idx == NULL) return -1;
    v = PyLong_AsLongLongAndOverflow(idx, &overflow);
    if (v == -1 && PyErr_Occurred()) goto error;
    if (overflow != 0 || v < 1) {
        PyErr_Format(PyExc_ValueError, "num_buckets must be an integer in [1, 2**63-1], got %R", idx);
        goto error;
    }
    Py_DECREF(idx);
    *out = (uint64_t)v;
    return 0;
error:
    Py_DECREF(idx);
    return -1;
}

/* seed: an integer in [0, 2**64-1]; NULL means 0. */
static int fh_parse_seed(PyObject *obj, uint64_t *out)
{
    PyObject *idx;
    unsigned long long v;

    *out = 0;
    if (obj == NULL) return 0;
    idx = PyNumber_Index(obj);
    if (idx == NULL) return -1;
    v = PyLong_AsUnsignedLongLong(idx);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "seed must be an integer in [0, 2**64-1], got %R", idx);
        }
        Py_DECREF(idx);
        return -1;
    }
    Py_DECREF(idx);
    *out = (uint64_t)v;
    return 0;
}

/* stream: an integer in [0, 2**64-1] (a cudaStream_t; 0 = legacy default
 * stream, 1 = cudaStreamLegacy, 2 = cudaStreamPerThread); NULL or None -> 0. */
static int fh_parse_stream(PyObject *obj, uint64_t *out)
{
    PyObject *idx;
    unsigned long long v;

    *out = 0;
    if (obj == NULL || obj == Py_None) return 0;
    idx = PyNumber_Index(obj);
    if (idx == NULL) return -1;
    v = PyLong_AsUnsignedLongLong(idx);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "stream must be a non-negative integer (cudaStream_t), got %R",
                         idx);
        }
        Py_DECREF(idx);
        return -1;
    }
    Py_DECREF(idx);
    *out = (uint64_t)v;
    return 0;
}

/* ======================================================================== */
/* DLPack output: a freshly allocated, contiguous int64 CPU tensor          */
/* ======================================================================== */

typedef struct {
    DLManagedTensor mt;
    int64_t dims[]; /* shape[ndim] followed by strides[ndim] */
} fh_out_tensor;

static void fh_out_deleter(DLManagedTensor *self)
{
    /* Needs no GIL: plain C memory. */
    if (self == NULL) return;
    free(self->dl_tensor.data);
    free(self);
}

/* Allocates a contiguous int64 CPU tensor of the given shape; sets a Python
 * exception and returns NULL on failure.  numel must be the product of shape. */
static DLManagedTensor *fh_out_alloc(int32_t ndim, const int64_t *shape, int64_t numel)
{
    fh_out_tensor *o = NULL;
    void *data = NULL;
    size_t nbytes, alloc_bytes;
    int64_t stride = 1;
    int32_t i;

    if (numel < 0 || (uint64_t)numel > (uint64_t)(SIZE_MAX / sizeof(int64_t)) - 64) {
        PyErr_SetString(PyExc_MemoryError, "output tensor too large");
        return NULL;
    }
    nbytes = (size_t)numel * sizeof(int64_t);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (nbytes >= ((size_t)32 << 20)) {
        /* Large output: 2 MiB-aligned and transparent-huge-page backed, which
         * cuts first-touch page faults ~500x (they cost as much as hashing). */
        const size_t huge = (size_t)2 << 20;
        alloc_bytes = (nbytes + huge - 1) & ~(huge - 1);
        data = aligned_alloc(huge, alloc_bytes);
        if (data != NULL) (void)madvise(data, alloc_bytes, MADV_HUGEPAGE);
    } else
#endif
    {
        alloc_bytes = (nbytes + 63) & ~(size_t)63;
        if (alloc_bytes == 0) alloc_bytes = 64;
        data = aligned_alloc(64, alloc_bytes);
    }
    o = (fh_out_tensor *)malloc(sizeof(fh_out_tensor) + sizeof(int64_t) * 2 * (size_t)(ndim > 0 ? ndim : 1));
    if (data == NULL || o == NULL) {
        free(data);
        free(o);
        PyErr_NoMemory();
        return NULL;
    }
    for (i = ndim - 1; i >= 0; i--) {
        o->dims[i] = shape[i];
        o->dims[ndim + i] = stride;
        stride *= (shape[i] > 0 ? shape[i] : 1);
    }
    if (ndim == 0) {
        o->dims[0] = 1; /* unused, but keep pointers valid */
        o->dims[1] = 1;
    }
    o->mt.dl_tensor.data = data;
    o->mt.dl_tensor.device.device_type = kDLCPU;
    o->mt.dl_tensor.device.device_id = 0;
    o->mt.dl_tensor.ndim = ndim;
    o->mt.dl_tensor.dtype.code = kDLInt;
    o->mt.dl_tensor.dtype.bits = 64;
    o->mt.dl_tensor.dtype.lanes = 1;
    o->mt.dl_tensor.shape = o->dims;
    o->mt.dl_tensor.strides = o->dims + (ndim > 0 ? ndim : 1);
    o->mt.dl_tensor.byte_offset = 0;
    o->mt.manager_ctx = NULL;
    o->mt.deleter = fh_out_deleter;
    return &o->mt;
}

static void fh_capsule_destructor(PyObject *capsule)
{
    DLManagedTensor *m;
    if (PyCapsule_IsValid(capsule, "used_dltensor")) return; /* consumer owns it */
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *etype, *evalue, *etb;
    PyErr_Fetch(&etype, &evalue, &etb);
#endif
    m = (DLManagedTensor *)PyCapsule_GetPointer(capsule, "dltensor");
    if (m != NULL) {
        if (m->deleter != NULL) m->deleter(m);
    } else {
        PyErr_WriteUnraisable(capsule);
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(etype, evalue, etb);
#endif
}

/* Wraps m in a "dltensor" capsule.  Steals m (deletes it on failure). */
static PyObject *fh_wrap_capsule(DLManagedTensor *m)
{
    PyObject *cap = PyCapsule_New(m, "dltensor", fh_capsule_destructor);
    if (cap == NULL) m->deleter(m);
    return cap;
}

/* ======================================================================== */
/* DLPack input                                                             */
/* ======================================================================== */

static int fh_is_cpu_device(int32_t t) { return t == kDLCPU || t == kDLCUDAHost || t == kDLROCMHost; }
static int fh_is_cuda_device(int32_t t) { return t == kDLCUDA || t == kDLCUDAManaged; }

/* obj.__dlpack_device__() -> device type, or 0 if unavailable (errors are
 * cleared; __dlpack__ will report them). */
static int32_t fh_query_device_type(PyObject *obj)
{
    PyObject *res;
    long t = 0;
    if (PyCapsule_CheckExact(obj)) return 0;
    res = PyObject_CallMethod(obj, "__dlpack_device__", NULL);
    if (res == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (PyTuple_Check(res) && PyTuple_GET_SIZE(res) == 2) {
        t = PyLong_AsLong(PyTuple_GET_ITEM(res, 0)); /* IntEnum is fine */
        if (t == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            t = 0;
        }
    }
    Py_DECREF(res);
    return (int32_t)t;
}

/* Obtains and consumes a DLPack capsule from `obj` (an object with
 * __dlpack__, or a capsule itself).  `stream` (may be NULL) is passed as the
 * `stream=` keyword to __dlpack__.  On success the caller owns the view and
 * must call fh_release() (with the GIL held). */
static int fh_dl_acquire(PyObject *obj, const char *argname, PyObject *stream, fh_dl_view *view)
{
    PyObject *meth = NULL, *kwargs = NULL, *version = NULL, *empty = NULL, *cap = NULL;
    int ret = -1;

    memset(view, 0, sizeof *view);

    if (PyCapsule_CheckExact(obj)) {
        cap = Py_NewRef(obj);
    } else {
        meth = PyObject_GetAttrString(obj, "__dlpack__");
        if (meth == NULL) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_TypeError,
                             "%s must support the DLPack protocol (torch.Tensor, numpy.ndarray, ...) "
                             "or be a DLPack capsule, not %.200s",
                             argname, Py_TYPE(obj)->tp_name);
            }
            goto done;
        }
        empty = PyTuple_New(0);
        kwargs = PyDict_New();
        version = Py_BuildValue("(ii)", FH_DLPACK_MAJOR_VERSION, FH_DLPACK_MINOR_VERSION);
        if (empty == NULL || kwargs == NULL || version == NULL) goto done;
        if (stream != NULL && PyDict_SetItemString(kwargs, "stream", stream) < 0) goto done;
        if (PyDict_SetItemString(kwargs, "max_version", version) < 0) goto done;
        cap = PyObject_Call(meth, empty, kwargs);
        if (cap == NULL && PyErr_ExceptionMatches(PyExc_TypeError)) {
            /* Producer predates DLPack 1.0 (no max_version keyword). */
            PyErr_Clear();
            if (PyDict_DelItemString(kwargs, "max_version") < 0) goto done;
            cap = PyObject_Call(meth, empty, kwargs);
        }
        if (cap == NULL) goto done;
    }

    if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
        DLManagedTensorVersioned *mv =
            (DLManagedTensorVersioned *)PyCapsule_GetPointer(cap, "dltensor_versioned");
        if (mv == NULL) goto done;
        if (mv->version.major != FH_DLPACK_MAJOR_VERSION) {
            /* Not ours to interpret; leave the capsule unconsumed so its
             * destructor frees it. */
            PyErr_Format(PyExc_BufferError, "%s: unsupported DLPack version %u.%u (need 1.x)", argname,
                         (unsigned)mv->version.major, (unsigned)mv->version.minor);
            goto done;
        }
        if (PyCapsule_SetName(cap, "used_dltensor_versioned") < 0) goto done;
        view->versioned = mv;
        view->t = &mv->dl_tensor;
        view->flags = mv->flags;
    } else if (PyCapsule_IsValid(cap, "dltensor")) {
        DLManagedTensor *m = (DLManagedTensor *)PyCapsule_GetPointer(cap, "dltensor");
        if (m == NULL) goto done;
        if (PyCapsule_SetName(cap, "used_dltensor") < 0) goto done;
        view->legacy = m;
        view->t = &m->dl_tensor;
        view->flags = 0;
    } else {
        PyErr_Format(PyExc_TypeError,
                     "%s: expected an unconsumed DLPack capsule (\"dltensor\" or "
                     "\"dltensor_versioned\")",
                     argname);
        goto done;
    }
    ret = 0;

done:
    Py_XDECREF(cap);
    Py_XDECREF(version);
    Py_XDECREF(kwargs);
    Py_XDECREF(empty);
    Py_XDECREF(meth);
    return ret;
}

/* Releases a consumed tensor (runs the producer's deleter) with the GIL held.
 * A pending exception is stashed meanwhile: deleters may run Python code
 * (numpy's decrefs the array; a ctypes deleter is Python), which must not
 * see a set exception. */
static void fh_release(fh_dl_view *v)
{
    if (v->legacy == NULL && v->versioned == NULL) return;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
    fh_dl_view_release(v);
    if (PyErr_Occurred()) PyErr_WriteUnraisable(NULL);
    if (exc != NULL) PyErr_SetRaisedException(exc);
#else
    PyObject *etype, *evalue, *etb;
    PyErr_Fetch(&etype, &evalue, &etb);
    fh_dl_view_release(v);
    if (PyErr_Occurred()) PyErr_WriteUnraisable(NULL);
    PyErr_Restore(etype, evalue, etb);
#endif
}

/* Validates an acquired int64 tensor; computes numel. */
static int fh_check_int64_tensor(const fh_dl_view *v, const char *argname, int64_t *numel)
{
    const DLTensor *t = v->t;
    if (t->ndim < 0 || (t->ndim > 0 && t->shape == NULL)) {
        PyErr_Format(PyExc_ValueError, "%s: malformed DLPack tensor (ndim=%d)", argname, (int)t->ndim);
        return -1;
    }
    if (!fh_dl_is_int64(t->dtype)) {
        PyErr_Format(PyExc_TypeError,
                     "%s must have dtype int64, got DLPack dtype (code=%u, bits=%u, lanes=%u)%s", argname,
                     (unsigned)t->dtype.code, (unsigned)t->dtype.bits, (unsigned)t->dtype.lanes,
                     t->dtype.code == kDLInt && t->dtype.bits == 32 ? " i.e. int32; cast with .long()" : "");
        return -1;
    }
    *numel = fh_dl_numel(t);
    if (*numel < 0) {
        PyErr_Format(PyExc_ValueError, "%s: invalid shape in DLPack tensor", argname);
        return -1;
    }
    if (*numel > 0 && t->data == NULL) {
        PyErr_Format(PyExc_ValueError, "%s: DLPack tensor has NULL data", argname);
        return -1;
    }
    if (t->byte_offset % sizeof(int64_t) != 0 && *numel > 0) {
        /* Unaligned element access would still work on x86 via memcpy, but
         * no sane producer does this. */
        PyErr_Format(PyExc_ValueError, "%s: byte_offset %llu is not a multiple of 8", argname,
                     (unsigned long long)t->byte_offset);
        return -1;
    }
    return 0;
}

/* ======================================================================== */
/* CPU kernels (run without the GIL)                                        */
/* ======================================================================== */

/* Contiguous: straight loops.  The power-of-two variant vectorizes with
 * AVX2/AVX-512; the general one uses a multiply-high fast modulo. */
static void fh_hash_ids_contig(const int64_t *in, int64_t *out, int64_t n, fh_fastmod64 fm, uint64_t seed)
{
    int64_t i;
    if (fm.magic == 0) {
        const uint64_t mask = fm.mask;
        for (i = 0; i < n; i++) out[i] = (int64_t)(xxh64_u64((uint64_t)in[i], seed) & mask);
    } else {
        for (i = 0; i < n; i++) out[i] = (int64_t)fh_fastmod64_apply(xxh64_u64((uint64_t)in[i], seed), fm);
    }
}

/* General strides (in elements, possibly negative); writes `out` in
 * row-major order.  ndim >= 1, all extents > 0.  `counter` is ndim scratch. */
static void fh_hash_ids_strided(const int64_t *base, int32_t ndim, const int64_t *shape,
                                const int64_t *strides, int64_t *out, fh_fastmod64 fm, uint64_t seed,
                                int64_t *counter)
{
    const int64_t inner = shape[ndim - 1];
    const int64_t istride = strides[ndim - 1];
    int64_t off = 0; /* element offset of the current row start */
    int32_t d;

    for (d = 0; d < ndim; d++) counter[d] = 0;
    for (;;) {
        const int64_t *row = base + off;
        int64_t j;
        for (j = 0; j < inner; j++)
            out[j] = (int64_t)fh_fastmod64_apply(xxh64_u64((uint64_t)row[j * istride], seed), fm);
        out += inner;
        for (d = ndim - 2; d >= 0; d--) {
            off += strides[d];
            if (++counter[d] < shape[d]) break;
            off -= strides[d] * shape[d];
            counter[d] = 0;
        }
        if (d < 0) break;
    }
}

/* Hashes src (any strides) into contiguous out[numel].  Releases the GIL for
 * large inputs.  Returns 0, or -1 with an exception set. */
static int fh_hash_ids_cpu(const DLTensor *src, int64_t numel, int64_t *out, uint64_t num_buckets,
                           uint64_t seed)
{
    const int64_t *in = (const int64_t *)fh_dl_data_ptr(src);
    const fh_fastmod64 fm = fh_fastmod64_init(num_buckets);
    const int release = numel >= FH_GIL_RELEASE_THRESHOLD;
    PyThreadState *ts = NULL;

    if (numel == 0) return 0;
    if (fh_dl_is_contiguous(src)) {
        if (release) ts = PyEval_SaveThread();
        fh_hash_ids_contig(in, out, numel, fm, seed);
        if (release) PyEval_RestoreThread(ts);
    } else {
        int64_t *counter = (int64_t *)PyMem_Malloc(sizeof(int64_t) * (size_t)src->ndim);
        if (counter == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        if (release) ts = PyEval_SaveThread();
        fh_hash_ids_strided(in, src->ndim, src->shape, src->strides, out, fm, seed, counter);
        if (release) PyEval_RestoreThread(ts);
        PyMem_Free(counter);
    }
    return 0;
}

/* ======================================================================== */
/* Module functions                                                         */
/* ======================================================================== */

static PyObject *fh_get_static_integer(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromLong(42);
}

static PyObject *fh_add42_to_integer(PyObject *self, PyObject *arg)
{
    PyObject *idx, *k, *res;
    (void)self;
    idx = PyNumber_Index(arg);
    if (idx == NULL) return NULL;
    k = PyLong_FromLong(42);
    if (k == NULL) {
        Py_DECREF(idx);
        return NULL;
    }
    res = PyNumber_Add(idx, k);
    Py_DECREF(k);
    Py_DECREF(idx);
    return res;
}

typedef struct {
    const char *ptr;
    Py_ssize_t len;
} fh_span;

PyDoc_STRVAR(fh_hash_strings_doc,
             "hash_strings(values, num_buckets, seed=0) -> DLPack capsule\n\n"
             "values: list/tuple (or 1-D object ndarray) of str or bytes.  Returns a\n"
             "\"dltensor\" capsule holding a new 1-D int64 CPU tensor with\n"
             "out[i] = xxh64(utf8(values[i]), seed) % num_buckets.");

static PyObject *fh_hash_strings(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"values", "num_buckets", "seed", NULL};
    PyObject *values, *nb_obj, *seed_obj = NULL;
    PyObject *seq = NULL, *result = NULL;
    fh_span *spans = NULL;
    DLManagedTensor *out = NULL;
    uint64_t num_buckets, seed;
    Py_ssize_t n, i;
    (void)self;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O:hash_strings", kwlist, &values, &nb_obj, &seed_obj))
        return NULL;
    if (fh_parse_num_buckets(nb_obj, &num_buckets) < 0 || fh_parse_seed(seed_obj, &seed) < 0) return NULL;

    if (PyUnicode_Check(values) || PyBytes_Check(values) || PyByteArray_Check(values) ||
        !(PyList_Check(values) || PyTuple_Check(values) || PySequence_Check(values))) {
        PyErr_Format(PyExc_TypeError,
                     "hash_strings(): values must be a list, tuple or 1-D object array of str/bytes, "
                     "not %.200s",
                     Py_TYPE(values)->tp_name);
        return NULL;
    }
    /* Private snapshot: a tuple is immutable, so no other thread can drop the
     * references keeping the str/bytes buffers alive while the GIL is released. */
    seq = PySequence_Tuple(values);
    if (seq == NULL) goto done;
    n = PyTuple_GET_SIZE(seq);

    spans = (fh_span *)PyMem_Malloc(sizeof(fh_span) * (size_t)(n > 0 ? n : 1));
    if (spans == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(seq, i);
        if (PyUnicode_Check(item)) {
            /* UTF-8 cached on the str; raises UnicodeEncodeError on lone surrogates. */
            spans[i].ptr = PyUnicode_AsUTF8AndSize(item, &spans[i].len);
            if (spans[i].ptr == NULL) goto done;
        } else if (PyBytes_Check(item)) {
            spans[i].ptr = PyBytes_AS_STRING(item);
            spans[i].len = PyBytes_GET_SIZE(item);
        } else {
            PyErr_Format(PyExc_TypeError, "hash_strings(): values[%zd] must be str or bytes, not %.200s", i,
                         Py_TYPE(item)->tp_name);
            goto done;
        }
    }

    {
        const int64_t shape = (int64_t)n;
        out = fh_out_alloc(1, &shape, (int64_t)n);
    }
    if (out == NULL) goto done;

    {
        int64_t *dst = (int64_t *)out->dl_tensor.data;
        const fh_fastmod64 fm = fh_fastmod64_init(num_buckets);
        const int release = n >= FH_GIL_RELEASE_THRESHOLD / 8;
        PyThreadState *ts = NULL;
        if (release) ts = PyEval_SaveThread();
        for (i = 0; i < n; i++)
            dst[i] = (int64_t)fh_fastmod64_apply(xxh64(spans[i].ptr, (size_t)spans[i].len, seed), fm);
        if (release) PyEval_RestoreThread(ts);
    }

    result = fh_wrap_capsule(out); /* steals out */
    out = NULL;

done:
    if (out != NULL) out->deleter(out);
    PyMem_Free(spans);
    Py_XDECREF(seq);
    return result;
}

PyDoc_STRVAR(fh_hash_ids_doc,
             "hash_ids(x, num_buckets, seed=0) -> DLPack capsule\n\n"
             "x: CPU int64 tensor/array (anything with __dlpack__, or a DLPack capsule),\n"
             "any shape and strides.  Returns a \"dltensor\" capsule with a new contiguous\n"
             "int64 CPU tensor of the same shape: out = xxh64(le_bytes(x), seed) % num_buckets.");

static PyObject *fh_hash_ids(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "num_buckets", "seed", NULL};
    PyObject *obj, *nb_obj, *seed_obj = NULL, *result = NULL;
    fh_dl_view src;
    DLManagedTensor *out = NULL;
    uint64_t num_buckets, seed;
    int64_t numel;
    int32_t devtype;
    (void)self;

    memset(&src, 0, sizeof src);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O:hash_ids", kwlist, &obj, &nb_obj, &seed_obj))
        return NULL;
    if (fh_parse_num_buckets(nb_obj, &num_buckets) < 0 || fh_parse_seed(seed_obj, &seed) < 0) return NULL;

    devtype = fh_query_device_type(obj);
    if (devtype != 0 && !fh_is_cpu_device(devtype)) {
        PyErr_Format(PyExc_ValueError,
                     "hash_ids(): x must be on the CPU (DLPack device type %d); use hash_ids_into() "
                     "with a preallocated output for GPU tensors",
                     (int)devtype);
        return NULL;
    }
    if (fh_dl_acquire(obj, "hash_ids(): x", NULL, &src) < 0) goto done;
    if (fh_check_int64_tensor(&src, "hash_ids(): x", &numel) < 0) goto done;
    if (!fh_is_cpu_device(src.t->device.device_type)) {
        PyErr_Format(PyExc_ValueError, "hash_ids(): x must be on the CPU (DLPack device type %d)",
                     (int)src.t->device.device_type);
        goto done;
    }
    out = fh_out_alloc(src.t->ndim, src.t->shape, numel);
    if (out == NULL) goto done;
    if (fh_hash_ids_cpu(src.t, numel, (int64_t *)out->dl_tensor.data, num_buckets, seed) < 0) goto done;

    result = fh_wrap_capsule(out); /* steals out */
    out = NULL;

done:
    if (out != NULL) out->deleter(out);
    fh_release(&src);
    return result;
}

PyDoc_STRVAR(fh_hash_ids_into_doc,
             "hash_ids_into(src, dst, num_buckets, seed=0, stream=0) -> None\n\n"
             "Writes xxh64(le_bytes(src), seed) % num_buckets into dst (a writable,\n"
             "contiguous int64 tensor with src's numel on the same device).  CPU: any\n"
             "src strides.  CUDA: src must be contiguous; the kernel is launched on\n"
             "`stream` (a cudaStream_t as int; 0 = default stream), asynchronously.");

static PyObject *fh_hash_ids_into(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"src", "dst", "num_buckets", "seed", "stream", NULL};
    PyObject *src_obj, *dst_obj, *nb_obj, *seed_obj = NULL, *stream_obj = NULL;
    PyObject *dl_stream = NULL, *result = NULL;
    fh_dl_view src, dst;
    uint64_t num_buckets, seed, stream;
    int64_t numel, dst_numel;
    int32_t src_dev, dst_dev;
    (void)self;

    memset(&src, 0, sizeof src);
    memset(&dst, 0, sizeof dst);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OO:hash_ids_into", kwlist, &src_obj, &dst_obj, &nb_obj,
                                     &seed_obj, &stream_obj))
        return NULL;
    if (fh_parse_num_buckets(nb_obj, &num_buckets) < 0 || fh_parse_seed(seed_obj, &seed) < 0 ||
        fh_parse_stream(stream_obj, &stream) < 0)
        return NULL;

    /* For CUDA producers, tell __dlpack__ which stream we will use so it can
     * order its pending work before ours.  DLPack's stream=1 is the legacy
     * default stream (our 0); 1 and 2 mean the same in CUDA and DLPack. */
    src_dev = fh_query_device_type(src_obj);
    dst_dev = fh_query_device_type(dst_obj);
    if (fh_is_cuda_device(src_dev) || fh_is_cuda_device(dst_dev)) {
        dl_stream = PyLong_FromUnsignedLongLong(stream == 0 ? 1 : (unsigned long long)stream);
        if (dl_stream == NULL) return NULL;
    }

    if (fh_dl_acquire(src_obj, "hash_ids_into(): src", fh_is_cuda_device(src_dev) ? dl_stream : NULL, &src) < 0)
        goto done;
    if (fh_dl_acquire(dst_obj, "hash_ids_into(): dst", fh_is_cuda_device(dst_dev) ? dl_stream : NULL, &dst) < 0)
        goto done;
    if (fh_check_int64_tensor(&src, "hash_ids_into(): src", &numel) < 0) goto done;
    if (fh_check_int64_tensor(&dst, "hash_ids_into(): dst", &dst_numel) < 0) goto done;
    if (dst.flags & DLPACK_FLAG_BITMASK_READ_ONLY) {
        PyErr_SetString(PyExc_ValueError, "hash_ids_into(): dst is read-only");
        goto done;
    }
    if (dst.flags & DLPACK_FLAG_BITMASK_IS_COPIED) {
        PyErr_SetString(PyExc_ValueError,
                        "hash_ids_into(): dst was exported as a copy, so writes to it would be lost");
        goto done;
    }
    if (numel != dst_numel) {
        PyErr_Format(PyExc_ValueError, "hash_ids_into(): dst has %lld elements, src has %lld",
                     (long long)dst_numel, (long long)numel);
        goto done;
    }
    if (!fh_dl_is_contiguous(dst.t)) {
        PyErr_SetString(PyExc_ValueError, "hash_ids_into(): dst must be contiguous (row-major)");
        goto done;
    }
    {
        const DLDevice sd = src.t->device, dd = dst.t->device;
        const int both_cpu = fh_is_cpu_device(sd.device_type) && fh_is_cpu_device(dd.device_type);
        if (!both_cpu && (sd.device_type != dd.device_type || sd.device_id != dd.device_id)) {
            PyErr_Format(PyExc_ValueError,
                         "hash_ids_into(): src and dst must be on the same device "
                         "(got DLPack devices (%d, %d) and (%d, %d))",
                         (int)sd.device_type, (int)sd.device_id, (int)dd.device_type, (int)dd.device_id);
            goto done;
        }
        if (both_cpu) {
            if (fh_hash_ids_cpu(src.t, numel, (int64_t *)fh_dl_data_ptr(dst.t), num_buckets, seed) < 0)
                goto done;
        } else if (fh_is_cuda_device(sd.device_type)) {
#ifdef FH_WITH_CUDA
            int err;
            if (!fh_dl_is_contiguous(src.t)) {
                PyErr_SetString(PyExc_ValueError,
                                "hash_ids_into(): CUDA src must be contiguous; call .contiguous() first");
                goto done;
            }
            if (numel > 0) {
                Py_BEGIN_ALLOW_THREADS
                err = fh_hash_ids_cuda((const int64_t *)fh_dl_data_ptr(src.t), (int64_t *)fh_dl_data_ptr(dst.t),
                                       numel, num_buckets, seed, (void *)(uintptr_t)stream);
                Py_END_ALLOW_THREADS
                if (err != 0) {
                    PyErr_Format(PyExc_RuntimeError, "hash_ids_into(): CUDA kernel failed: %s (error %d)",
                                 fh_cuda_error_string(err), err);
                    goto done;
                }
            }
#else
            PyErr_SetString(PyExc_RuntimeError,
                            "hash_ids_into(): this build has no CUDA kernel because it was compiled "
                            "without FH_WITH_CUDA (no nvcc / CUDA toolkit at build time); move the "
                            "tensors to the CPU or rebuild with CUDA");
            goto done;
#endif
        } else {
            PyErr_Format(PyExc_ValueError, "hash_ids_into(): unsupported DLPack device type %d",
                         (int)sd.device_type);
            goto done;
        }
    }
    result = Py_NewRef(Py_None);

done:
    fh_release(&dst);
    fh_release(&src);
    Py_XDECREF(dl_stream);
    return result;
}

static PyObject *fh_has_cuda(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
#ifdef FH_WITH_CUDA
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef fh_methods[] = {
    {"GetStaticInteger", fh_get_static_integer, METH_NOARGS, "Returns 42."},
    {"Add42ToInteger", fh_add42_to_integer, METH_O, "Returns x + 42."},
    {"hash_strings", (PyCFunction)(void (*)(void))fh_hash_strings, METH_VARARGS | METH_KEYWORDS,
     fh_hash_strings_doc},
    {"hash_ids", (PyCFunction)(void (*)(void))fh_hash_ids, METH_VARARGS | METH_KEYWORDS, fh_hash_ids_doc},
    {"hash_ids_into", (PyCFunction)(void (*)(void))fh_hash_ids_into, METH_VARARGS | METH_KEYWORDS,
     fh_hash_ids_into_doc},
    {"has_cuda", fh_has_cuda, METH_NOARGS, "True if built with the CUDA kernel (FH_WITH_CUDA)."},
    {NULL, NULL, 0, NULL},
};

static int fh_exec(PyObject *m)
{
    if (PyModule_AddIntConstant(m, "DLPACK_MAJOR_VERSION", FH_DLPACK_MAJOR_VERSION) < 0) return -1;
    if (PyModule_AddIntConstant(m, "DLPACK_MINOR_VERSION", FH_DLPACK_MINOR_VERSION) < 0) return -1;
    return 0;
}

static PyModuleDef_Slot fh_slots[] = {
    {Py_mod_exec, (void *)fh_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef fh_module = {
    PyModuleDef_HEAD_INIT,
    FH_STR(TORCH_EXTENSION_NAME),                             /* m_name */
    "Feature hashing (XXH64 % num_buckets) for strings and int64 ids.", /* m_doc */
    0,                                                        /* m_size */
    fh_methods,                                               /* m_methods */
    fh_slots,                                                 /* m_slots */
    NULL,                                                     /* m_traverse */
    NULL,                                                     /* m_clear */
    NULL,                                                     /* m_free */
};

PyMODINIT_FUNC FH_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModuleDef_Init(&fh_module); }

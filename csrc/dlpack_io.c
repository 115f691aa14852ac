/*
 * DLPack in and out, from C.
 *
 * In: obj.__dlpack__(max_version=(1, 0)) gives a "dltensor_versioned" capsule
 * (DLPack 1.x producers) or a legacy "dltensor" one (older producers, or a
 * retry without max_version for those that do not know the keyword). The
 * consumer renames the capsule to "used_..." and from then on owns the tensor:
 * it must call the producer's deleter exactly once.
 *
 * Out: results are new contiguous int64 CPU tensors in legacy "dltensor"
 * capsules, which torch.from_dlpack and numpy.from_dlpack both accept and wrap
 * without copying.
 */
#include "example_module.h"

#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

int ep_dl_is_cpu(int32_t device_type)
{
    return device_type == kDLCPU || device_type == kDLCUDAHost || device_type == kDLROCMHost;
}

int ep_dl_is_cuda(int32_t device_type)
{
    return device_type == kDLCUDA || device_type == kDLCUDAManaged;
}

int ep_dl_device_type(PyObject *obj, const char *argname, int32_t *device_type)
{
    int status = -1;
    *device_type = 0;
    if (PyCapsule_CheckExact(obj)) {
        return 0;
    }
    PyObject *device = PyObject_CallMethod(obj, "__dlpack_device__", NULL);
    if (device == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear(); /* no __dlpack_device__: ep_dl_acquire reports objects without DLPack support */
        return 0;
    }
    long value = -1;
    if (PyTuple_Check(device) && PyTuple_GET_SIZE(device) == 2) {
        value = PyLong_AsLong(PyTuple_GET_ITEM(device, 0)); /* an IntEnum is fine */
        if (value == -1 && PyErr_Occurred()) {
            goto done;
        }
    }
    if (value < 0 || value > INT32_MAX) {
        PyErr_Format(PyExc_TypeError, "%s: __dlpack_device__() must return (device_type, device_id), got %R",
                     argname, device);
        goto done;
    }
    *device_type = (int32_t)value;
    status = 0;
done:
    Py_DECREF(device);
    return status;
}

static PyObject *call_dlpack(PyObject *obj, const char *argname, PyObject *stream)
{
    PyObject *method = NULL, *empty = NULL, *kwargs = NULL, *version = NULL, *capsule = NULL;

    method = PyObject_GetAttrString(obj, "__dlpack__");
    if (method == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "%s must support DLPack (a torch.Tensor, a numpy.ndarray, ...), not %.200s", argname,
                         Py_TYPE(obj)->tp_name);
        }
        goto done;
    }
    empty = PyTuple_New(0);
    kwargs = PyDict_New();
    version = Py_BuildValue("(ii)", EP_DLPACK_MAJOR_VERSION, EP_DLPACK_MINOR_VERSION);
    if (empty == NULL || kwargs == NULL || version == NULL) {
        goto done;
    }
    if (stream != NULL && PyDict_SetItemString(kwargs, "stream", stream) < 0) {
        goto done;
    }
    if (PyDict_SetItemString(kwargs, "max_version", version) < 0) {
        goto done;
    }
    capsule = PyObject_Call(method, empty, kwargs);
    if (capsule == NULL && PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear(); /* a producer older than DLPack 1.0 has no max_version keyword */
        if (PyDict_DelItemString(kwargs, "max_version") < 0) {
            goto done;
        }
        capsule = PyObject_Call(method, empty, kwargs);
    }
done:
    Py_XDECREF(version);
    Py_XDECREF(kwargs);
    Py_XDECREF(empty);
    Py_XDECREF(method);
    return capsule;
}

int ep_dl_acquire(PyObject *obj, const char *argname, PyObject *stream, ep_dl_view *view)
{
    int status = -1;
    memset(view, 0, sizeof *view);
    PyObject *capsule = PyCapsule_CheckExact(obj) ? Py_NewRef(obj) : call_dlpack(obj, argname, stream);
    if (capsule == NULL) {
        return -1;
    }
    if (PyCapsule_IsValid(capsule, "dltensor_versioned")) {
        DLManagedTensorVersioned *versioned = PyCapsule_GetPointer(capsule, "dltensor_versioned");
        if (versioned == NULL) {
            goto done;
        }
        if (versioned->version.major != EP_DLPACK_MAJOR_VERSION) {
            /* Left unconsumed, so the capsule's own destructor frees it. */
            PyErr_Format(PyExc_BufferError, "%s: DLPack version %u.%u is not supported (need 1.x)", argname,
                         (unsigned)versioned->version.major, (unsigned)versioned->version.minor);
            goto done;
        }
        if (PyCapsule_SetName(capsule, "used_dltensor_versioned") < 0) {
            goto done;
        }
        view->versioned = versioned;
        view->t = &versioned->dl_tensor;
        view->flags = versioned->flags;
    } else if (PyCapsule_IsValid(capsule, "dltensor")) {
        DLManagedTensor *legacy = PyCapsule_GetPointer(capsule, "dltensor");
        if (legacy == NULL || PyCapsule_SetName(capsule, "used_dltensor") < 0) {
            goto done;
        }
        view->legacy = legacy;
        view->t = &legacy->dl_tensor;
    } else {
        PyErr_Format(PyExc_TypeError, "%s: expected an unconsumed DLPack capsule (\"dltensor\" or "
                     "\"dltensor_versioned\")", argname);
        goto done;
    }
    status = 0;
done:
    Py_DECREF(capsule);
    return status;
}

void ep_dl_release(ep_dl_view *view)
{
    if (view->legacy == NULL && view->versioned == NULL) {
        return;
    }
    /* Deleters may run Python code (numpy's drops a reference to the array), which must not
     * start with an exception set: park the pending one meanwhile. */
    ep_parked_error parked = ep_error_park();
    ep_dl_view_release(view);
    if (PyErr_Occurred()) {
        PyErr_WriteUnraisable(NULL);
    }
    ep_error_restore(parked);
}

int ep_dl_check_int64(const ep_dl_view *view, const char *argname, int64_t *numel)
{
    const DLTensor *t = view->t;
    if (t->ndim < 0 || (t->ndim > 0 && t->shape == NULL)) {
        PyErr_Format(PyExc_ValueError, "%s: malformed DLPack tensor (ndim=%d)", argname, (int)t->ndim);
        return -1;
    }
    if (!ep_dl_is_int64(t->dtype)) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype int64, got DLPack dtype (code=%u, bits=%u, lanes=%u)%s",
                     argname, (unsigned)t->dtype.code, (unsigned)t->dtype.bits, (unsigned)t->dtype.lanes,
                     t->dtype.code == kDLInt && t->dtype.bits == 32 ? ", i.e. int32: convert with .long()" : "");
        return -1;
    }
    *numel = ep_dl_numel(t);
    if (*numel < 0) {
        PyErr_Format(PyExc_ValueError, "%s: invalid shape in DLPack tensor", argname);
        return -1;
    }
    if (*numel > 0 && (t->data == NULL || t->byte_offset % sizeof(int64_t) != 0)) {
        PyErr_Format(PyExc_ValueError, "%s: DLPack tensor data is NULL or misaligned (byte_offset %llu)", argname,
                     (unsigned long long)t->byte_offset);
        return -1;
    }
    return 0;
}

/* The result: the managed tensor, then shape[ndim] and strides[ndim] in one allocation. */
typedef struct {
    DLManagedTensor managed;
    int64_t dims[];
} output_tensor;

static void output_deleter(DLManagedTensor *self)
{
    if (self != NULL) { /* plain C memory: no GIL needed */
        free(self->dl_tensor.data);
        free(self);
    }
}

static void *allocate_data(size_t nbytes)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (nbytes >= ((size_t)32 << 20)) {
        /* Large results: 2 MiB aligned and backed by transparent huge pages, so the first
         * touch costs one page fault per 2 MiB instead of one per 4 KiB. */
        const size_t huge = (size_t)2 << 20;
        size_t rounded = (nbytes + huge - 1) & ~(huge - 1);
        void *data = aligned_alloc(huge, rounded);
        if (data != NULL) {
            (void)madvise(data, rounded, MADV_HUGEPAGE); /* only advice: failure is harmless */
        }
        return data;
    }
#endif
    size_t rounded = (nbytes + 63) & ~(size_t)63;
    return aligned_alloc(64, rounded == 0 ? 64 : rounded);
}

DLManagedTensor *ep_dl_alloc_int64(int32_t ndim, const int64_t *shape, int64_t numel)
{
    if (numel < 0 || (uint64_t)numel > (uint64_t)(SIZE_MAX / sizeof(int64_t)) / 2) {
        PyErr_SetString(PyExc_MemoryError, "result tensor too large");
        return NULL;
    }
    size_t dims = 2 * (size_t)(ndim > 0 ? ndim : 1);
    output_tensor *out = malloc(sizeof(output_tensor) + sizeof(int64_t) * dims);
    void *data = allocate_data((size_t)numel * sizeof(int64_t));
    if (out == NULL || data == NULL) {
        free(out);
        free(data);
        PyErr_NoMemory();
        return NULL;
    }
    int64_t stride = 1;
    for (int32_t i = ndim - 1; i >= 0; i--) {
        out->dims[i] = shape[i];
        out->dims[ndim + i] = stride;
        stride *= shape[i] > 0 ? shape[i] : 1;
    }
    DLTensor *t = &out->managed.dl_tensor;
    *t = (DLTensor){
        .data = data,
        .device = {.device_type = kDLCPU, .device_id = 0},
        .ndim = ndim,
        .dtype = {.code = kDLInt, .bits = 64, .lanes = 1},
        .shape = out->dims,
        .strides = out->dims + (ndim > 0 ? ndim : 1),
        .byte_offset = 0,
    };
    out->managed.manager_ctx = NULL;
    out->managed.deleter = output_deleter;
    return &out->managed;
}

static void capsule_destructor(PyObject *capsule)
{
    if (PyCapsule_IsValid(capsule, "used_dltensor")) {
        return; /* consumed: the consumer calls the deleter */
    }
    ep_parked_error parked = ep_error_park();
    DLManagedTensor *managed = PyCapsule_GetPointer(capsule, "dltensor");
    if (managed == NULL) {
        PyErr_WriteUnraisable(capsule);
    } else if (managed->deleter != NULL) {
        managed->deleter(managed);
    }
    ep_error_restore(parked);
}

PyObject *ep_dl_capsule(DLManagedTensor *managed)
{
    PyObject *capsule = PyCapsule_New(managed, "dltensor", capsule_destructor);
    if (capsule == NULL) {
        managed->deleter(managed);
    }
    return capsule;
}

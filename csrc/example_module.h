/*
 * Declarations shared by example_package's C sources.
 *
 * The module is split by job: example_module.c (module definition and the
 * small functions), arguments.c (parsing num_buckets, seed, stream),
 * dlpack_io.c (consuming and producing DLPack tensors), parallel.c (a
 * parallel for on POSIX threads), hash_strings.c,
 * hash_ids.c, and hash_ids_cuda.cu (compiled only when CUDA is available,
 * which defines EP_WITH_CUDA for the C files).
 *
 * Everything here is internal to the extension, named ep_* and marked
 * EP_INTERNAL (ep_internal.h).
 */
#ifndef EXAMPLE_MODULE_H
#define EXAMPLE_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "dlpack_c.h"
#include "ep_internal.h"

/* Below this many elements releasing the GIL costs more than it saves. */
#define EP_GIL_RELEASE_THRESHOLD 2048

/* Parks the pending exception (if any) while code that must not see one runs, e.g. a DLPack
 * deleter that calls into Python. PyErr_Fetch is deprecated from 3.12 on. */
typedef struct {
    PyObject *parts[3];
} ep_parked_error;

static inline ep_parked_error ep_error_park(void)
{
    ep_parked_error parked = {{NULL, NULL, NULL}};
#if PY_VERSION_HEX >= 0x030C0000
    parked.parts[0] = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&parked.parts[0], &parked.parts[1], &parked.parts[2]);
#endif
    return parked;
}

static inline void ep_error_restore(ep_parked_error parked)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(parked.parts[0]);
#else
    PyErr_Restore(parked.parts[0], parked.parts[1], parked.parts[2]);
#endif
}

/* ---- arguments.c ---- */

/* num_buckets: an int in [1, 2**63 - 1] (ValueError outside, TypeError for non-ints). */
EP_INTERNAL int ep_parse_num_buckets(PyObject *obj, uint64_t *out);
/* An int in [0, 2**64 - 1] named `what` in errors; obj NULL (an omitted argument) gives 0. */
EP_INTERNAL int ep_parse_u64(PyObject *obj, const char *what, uint64_t *out);

/* ---- dlpack_io.c ---- */

/* Consumes obj.__dlpack__() (or a capsule given directly); the caller must ep_dl_release the view. */
EP_INTERNAL int ep_dl_acquire(PyObject *obj, const char *argname, PyObject *stream, ep_dl_view *view);
/* Runs the producer's deleter (GIL held); safe on a zeroed view. */
EP_INTERNAL void ep_dl_release(ep_dl_view *view);
/* Checks dtype int64, a sane shape and alignment; stores the element count. */
EP_INTERNAL int ep_dl_check_int64(const ep_dl_view *view, const char *argname, int64_t *numel);
/* Stores obj.__dlpack_device__()[0], or 0 when obj has no such method (or is a capsule); -1 with an
 * exception set when the method fails or returns something else than (device_type, device_id). */
EP_INTERNAL int ep_dl_device_type(PyObject *obj, const char *argname, int32_t *device_type);
EP_INTERNAL int ep_dl_is_cpu(int32_t device_type);
EP_INTERNAL int ep_dl_is_cuda(int32_t device_type);
/* A new contiguous int64 CPU tensor, owned by the returned managed tensor (NULL + exception on failure). */
EP_INTERNAL DLManagedTensor *ep_dl_alloc_int64(int32_t ndim, const int64_t *shape, int64_t numel);
/* Wraps m in a "dltensor" capsule; steals m (deleting it on failure). */
EP_INTERNAL PyObject *ep_dl_capsule(DLManagedTensor *m);

/* ---- parallel.c ---- */

typedef void (*ep_range_function)(void *context, int64_t begin, int64_t end);
/* Calls function(context, begin, end) over [0, n) split in up to `threads` ranges of at least
 * min_per_thread items, on that many threads (the caller's included). Call without the GIL. */
EP_INTERNAL void ep_parallel_for(int64_t n, int64_t min_per_thread, int threads, ep_range_function function,
                                 void *context);

/* ---- hash_strings.c, hash_ids.c ---- */

EP_INTERNAL PyObject *ep_hash_strings(PyObject *self, PyObject *args, PyObject *kwargs);
EP_INTERNAL PyObject *ep_hash_ids(PyObject *self, PyObject *args, PyObject *kwargs);
EP_INTERNAL PyObject *ep_hash_ids_into(PyObject *self, PyObject *args, PyObject *kwargs);
EP_INTERNAL extern const char ep_hash_strings_doc[];
EP_INTERNAL extern const char ep_hash_ids_doc[];
EP_INTERNAL extern const char ep_hash_ids_into_doc[];

/* ---- hash_ids_cuda.cu (C linkage; the C files need no CUDA headers) ---- */

#ifdef EP_WITH_CUDA
#include "hash_ids_cuda.h"
#endif

#endif /* EXAMPLE_MODULE_H */

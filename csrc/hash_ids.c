/*
 * hash_ids(ids, num_buckets, seed=0) and hash_ids_into(src, dst, num_buckets, seed=0, stream=0):
 * xxh64(the 8 little-endian bytes of each int64 id, seed) % num_buckets.
 *
 * The CPU loops run without the GIL. The contiguous loop has no branches or
 * calls, so under -march=native the compiler vectorizes it (a power-of-two
 * num_buckets becomes a mask; any other uses a multiply-high modulo instead of
 * a 64-bit division). CUDA tensors go to the launcher in hash_ids_cuda.cu.
 */
#include "example_module.h"

#include <string.h>

#include "xxhash64.h"

EP_INTERNAL const char ep_hash_ids_doc[] =
    "hash_ids(ids, num_buckets, seed=0, threads=1) -> DLPack capsule\n\n"
    "ids: an int64 CPU tensor or array (anything with __dlpack__, or a DLPack capsule), any shape and strides.\n"
    "Returns a new contiguous int64 CPU tensor of the same shape (as a \"dltensor\" capsule):\n"
    "result = xxh64(le_bytes(ids), seed) % num_buckets.";

EP_INTERNAL const char ep_hash_ids_into_doc[] =
    "hash_ids_into(src, dst, num_buckets, seed=0, stream=0, threads=1) -> None\n\n"
    "Writes xxh64(le_bytes(src), seed) % num_buckets into dst: a writable, contiguous int64 tensor with\n"
    "src's number of elements, on src's device. On the CPU src may have any strides; on CUDA it must be\n"
    "contiguous, and the kernel is queued on `stream` (a cudaStream_t as an int; 0 is the default stream).";

static void hash_contiguous(const int64_t *restrict in, int64_t *restrict out, int64_t n, ep_fastmod64 fm,
                            uint64_t seed)
{
    if (fm.magic == 0) {
        const uint64_t mask = fm.mask;
        for (int64_t i = 0; i < n; i++) {
            out[i] = (int64_t)(xxh64_u64((uint64_t)in[i], seed) & mask);
        }
    } else {
        for (int64_t i = 0; i < n; i++) {
            out[i] = (int64_t)ep_fastmod64_apply(xxh64_u64((uint64_t)in[i], seed), fm);
        }
    }
}

/* In-place variant (src is dst): the same loop without the restrict promise. */
static void hash_in_place(int64_t *values, int64_t n, ep_fastmod64 fm, uint64_t seed)
{
    for (int64_t i = 0; i < n; i++) {
        values[i] = (int64_t)ep_fastmod64_apply(xxh64_u64((uint64_t)values[i], seed), fm);
    }
}

/* Any strides (in elements, possibly negative or zero); out is written in row-major order.
 * ndim >= 1 and every extent > 0; counter is scratch of ndim entries. */
static void hash_strided(const int64_t *base, int32_t ndim, const int64_t *shape, const int64_t *strides,
                         int64_t *out, ep_fastmod64 fm, uint64_t seed, int64_t *counter)
{
    const int64_t inner = shape[ndim - 1];
    const int64_t inner_stride = strides[ndim - 1];
    int64_t offset = 0;
    memset(counter, 0, sizeof(int64_t) * (size_t)ndim);
    for (;;) {
        const int64_t *row = base + offset;
        for (int64_t j = 0; j < inner; j++) {
            out[j] = (int64_t)ep_fastmod64_apply(xxh64_u64((uint64_t)row[j * inner_stride], seed), fm);
        }
        out += inner;
        int32_t d = ndim - 2;
        for (; d >= 0; d--) { /* odometer step over the outer dimensions */
            offset += strides[d];
            if (++counter[d] < shape[d]) {
                break;
            }
            offset -= strides[d] * shape[d];
            counter[d] = 0;
        }
        if (d < 0) {
            return;
        }
    }
}

typedef struct {
    const int64_t *in;
    int64_t *out;
    ep_fastmod64 fm;
    uint64_t seed;
} contiguous_job;

static void hash_contiguous_range(void *context, int64_t begin, int64_t end)
{
    const contiguous_job *job = context;
    if ((const void *)job->in == (const void *)job->out) {
        hash_in_place(job->out + begin, end - begin, job->fm, job->seed);
    } else {
        hash_contiguous(job->in + begin, job->out + begin, end - begin, job->fm, job->seed);
    }
}

/* Below this many ids per thread, starting a thread costs more than it saves. */
#define IDS_PER_THREAD 262144

/* Hashes src (any layout) into the contiguous out[numel], which is src itself or does not overlap it;
 * -1 with an exception set on failure. */
static int hash_on_cpu(const DLTensor *src, int64_t numel, int64_t *out, uint64_t num_buckets, uint64_t seed,
                       int threads)
{
    const int64_t *in = ep_dl_data_ptr(src);
    const ep_fastmod64 fm = ep_fastmod64_init(num_buckets);
    const int release_gil = numel >= EP_GIL_RELEASE_THRESHOLD;
    if (numel == 0) {
        return 0;
    }
    if (ep_dl_is_contiguous(src)) {
        contiguous_job job = {in, out, fm, seed};
        PyThreadState *state = release_gil ? PyEval_SaveThread() : NULL;
        ep_parallel_for(numel, IDS_PER_THREAD, threads, hash_contiguous_range, &job);
        if (state != NULL) {
            PyEval_RestoreThread(state);
        }
        return 0;
    }
    int64_t *counter = PyMem_Malloc(sizeof(int64_t) * (size_t)src->ndim);
    if (counter == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyThreadState *state = release_gil ? PyEval_SaveThread() : NULL;
    hash_strided(in, src->ndim, src->shape, src->strides, out, fm, seed, counter);
    if (state != NULL) {
        PyEval_RestoreThread(state);
    }
    PyMem_Free(counter);
    return 0;
}

PyObject *ep_hash_ids(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"ids", "num_buckets", "seed", "threads", NULL};
    PyObject *ids, *num_buckets_arg, *seed_arg = NULL, *result = NULL;
    int threads = 1;
    DLManagedTensor *out = NULL;
    ep_dl_view src = {0};
    uint64_t num_buckets, seed;
    int64_t numel;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|Oi:hash_ids", keywords, &ids, &num_buckets_arg, &seed_arg,
                                     &threads) ||
        ep_parse_num_buckets(num_buckets_arg, &num_buckets) < 0 || ep_parse_u64(seed_arg, "seed", &seed) < 0) {
        return NULL;
    }
    int32_t device_type;
    if (ep_dl_device_type(ids, "hash_ids(): ids", &device_type) < 0) {
        return NULL;
    }
    if (device_type != 0 && !ep_dl_is_cpu(device_type)) {
        /* Refused before __dlpack__, which could otherwise synchronize a device for nothing. */
        PyErr_Format(PyExc_ValueError, "hash_ids(): ids must be on the CPU here (DLPack device type %d); "
                     "device tensors go through hash_ids_into with a preallocated result", (int)device_type);
        return NULL;
    }
    if (ep_dl_acquire(ids, "hash_ids(): ids", NULL, &src) < 0 || ep_dl_check_int64(&src, "hash_ids(): ids", &numel) < 0) {
        goto done;
    }
    if (!ep_dl_is_cpu(src.t->device.device_type)) {
        PyErr_Format(PyExc_ValueError, "hash_ids(): ids must be on the CPU (DLPack device type %d)",
                     (int)src.t->device.device_type);
        goto done;
    }
    out = ep_dl_alloc_int64(src.t->ndim, src.t->shape, numel);
    if (out == NULL || hash_on_cpu(src.t, numel, out->dl_tensor.data, num_buckets, seed, threads) < 0) {
        goto done;
    }
    result = ep_dl_capsule(out);
    out = NULL;
done:
    if (out != NULL) {
        out->deleter(out);
    }
    ep_dl_release(&src);
    return result;
}

static int check_destination(const ep_dl_view *dst, int64_t src_numel, int64_t dst_numel)
{
    if (dst->flags & DLPACK_FLAG_BITMASK_READ_ONLY) {
        PyErr_SetString(PyExc_ValueError, "hash_ids_into(): dst is read-only");
        return -1;
    }
    if (dst->flags & DLPACK_FLAG_BITMASK_IS_COPIED) {
        PyErr_SetString(PyExc_ValueError, "hash_ids_into(): dst was exported as a copy, so the result would be lost");
        return -1;
    }
    if (src_numel != dst_numel) {
        PyErr_Format(PyExc_ValueError, "hash_ids_into(): dst has %lld elements, src has %lld", (long long)dst_numel,
                     (long long)src_numel);
        return -1;
    }
    if (!ep_dl_is_contiguous(dst->t)) {
        PyErr_SetString(PyExc_ValueError, "hash_ids_into(): dst must be contiguous (row-major)");
        return -1;
    }
    return 0;
}

static int hash_on_cuda(const DLTensor *src, const DLTensor *dst, int64_t numel, uint64_t num_buckets,
                        uint64_t seed, uint64_t stream)
{
#ifdef EP_WITH_CUDA
    if (!ep_dl_is_contiguous(src)) {
        PyErr_SetString(PyExc_ValueError, "hash_ids_into(): a CUDA src must be contiguous; call .contiguous()");
        return -1;
    }
    if (numel == 0) {
        return 0;
    }
    int error;
    Py_BEGIN_ALLOW_THREADS
    error = ep_hash_ids_cuda(ep_dl_data_ptr(src), ep_dl_data_ptr(dst), numel, num_buckets, seed,
                             (void *)(uintptr_t)stream);
    Py_END_ALLOW_THREADS
    if (error != 0) {
        PyErr_Format(PyExc_RuntimeError, "hash_ids_into(): CUDA error on the launch: %s (cudaError %d)",
                     ep_cuda_error_string(error), error);
        return -1;
    }
    return 0;
#else
    (void)src, (void)dst, (void)numel, (void)num_buckets, (void)seed, (void)stream;
    PyErr_SetString(PyExc_RuntimeError, "hash_ids_into(): this build has no CUDA kernel: it was compiled without "
                    "CUDA (a CPU-only torch, or no nvcc when it was built)");
    return -1;
#endif
}

/* DLPack's stream argument for a CUDA producer: the stream our kernel will run on, so the producer
 * orders its pending work before it. DLPack says 1 for the legacy default stream, which CUDA calls 0.
 * Stores a new reference, or NULL (no argument) for a producer that is not on CUDA; -1 on error. */
static int dlpack_stream_argument(PyObject *obj, const char *argname, uint64_t stream, PyObject **argument)
{
    int32_t device_type;
    *argument = NULL;
    if (ep_dl_device_type(obj, argname, &device_type) < 0) {
        return -1;
    }
    if (!ep_dl_is_cuda(device_type)) {
        return 0;
    }
    *argument = PyLong_FromUnsignedLongLong(stream == 0 ? 1 : (unsigned long long)stream);
    return *argument == NULL ? -1 : 0;
}

PyObject *ep_hash_ids_into(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"src", "dst", "num_buckets", "seed", "stream", "threads", NULL};
    int threads = 1;
    PyObject *src_obj, *dst_obj, *num_buckets_arg, *seed_arg = NULL, *stream_arg = NULL, *result = NULL;
    PyObject *src_stream = NULL, *dst_stream = NULL;
    ep_dl_view src = {0}, dst = {0};
    uint64_t num_buckets, seed, stream = 0;
    int64_t numel, dst_numel;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OOi:hash_ids_into", keywords, &src_obj, &dst_obj,
                                     &num_buckets_arg, &seed_arg, &stream_arg, &threads) ||
        ep_parse_num_buckets(num_buckets_arg, &num_buckets) < 0 || ep_parse_u64(seed_arg, "seed", &seed) < 0 ||
        (stream_arg != Py_None && ep_parse_u64(stream_arg, "stream", &stream) < 0)) {
        return NULL;
    }
    if (dlpack_stream_argument(src_obj, "hash_ids_into(): src", stream, &src_stream) < 0 ||
        dlpack_stream_argument(dst_obj, "hash_ids_into(): dst", stream, &dst_stream) < 0 ||
        ep_dl_acquire(src_obj, "hash_ids_into(): src", src_stream, &src) < 0 ||
        ep_dl_acquire(dst_obj, "hash_ids_into(): dst", dst_stream, &dst) < 0 ||
        ep_dl_check_int64(&src, "hash_ids_into(): src", &numel) < 0 ||
        ep_dl_check_int64(&dst, "hash_ids_into(): dst", &dst_numel) < 0 ||
        check_destination(&dst, numel, dst_numel) < 0) {
        goto done;
    }
    DLDevice sd = src.t->device, dd = dst.t->device;
    if (ep_dl_is_cpu(sd.device_type) && ep_dl_is_cpu(dd.device_type)) {
        if (hash_on_cpu(src.t, numel, ep_dl_data_ptr(dst.t), num_buckets, seed, threads) < 0) {
            goto done;
        }
    } else if (sd.device_type != dd.device_type || sd.device_id != dd.device_id) {
        PyErr_Format(PyExc_ValueError, "hash_ids_into(): src and dst must be on the same device, got DLPack devices "
                     "(%d, %d) and (%d, %d)", (int)sd.device_type, (int)sd.device_id, (int)dd.device_type,
                     (int)dd.device_id);
        goto done;
    } else if (!ep_dl_is_cuda(sd.device_type)) {
        PyErr_Format(PyExc_ValueError, "hash_ids_into(): DLPack device type %d is not supported (CPU or CUDA only)",
                     (int)sd.device_type);
        goto done;
    } else if (hash_on_cuda(src.t, dst.t, numel, num_buckets, seed, stream) < 0) {
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    ep_dl_release(&dst);
    ep_dl_release(&src);
    Py_XDECREF(dst_stream);
    Py_XDECREF(src_stream);
    return result;
}

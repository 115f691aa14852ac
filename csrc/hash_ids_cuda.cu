/*
 * hash_ids_cuda.cu - the CUDA kernel behind hash_ids_into() for CUDA tensors.
 *
 * out[i] = xxh64(le_bytes(in[i]), seed) % num_buckets for contiguous int64
 * in/out of n elements, launched asynchronously on the given stream.
 *
 * Exports (C linkage, so the C files need no CUDA headers):
 *   int ep_hash_ids_cuda(const int64_t *in, int64_t *out, int64_t n,
 *                        uint64_t num_buckets, uint64_t seed, void *stream);
 *       returns 0 or a cudaError_t code.
 *   const char *ep_cuda_error_string(int code);
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "xxhash64.h"

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
hash_ids_kernel(const int64_t *__restrict__ in, int64_t *__restrict__ out, int64_t n, fh_fastmod64 fm,
                   uint64_t seed)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const uint64_t h = xxh64_u64((uint64_t)__ldg(in + i), seed);
        out[i] = (int64_t)fh_fastmod64_apply(h, fm);
    }
}

/* Same kernel, for in == out (in-place); no __restrict__ / __ldg. */
__global__ void __launch_bounds__(kThreads)
hash_ids_kernel_inplace(int64_t *inout, int64_t n, fh_fastmod64 fm, uint64_t seed)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const uint64_t h = xxh64_u64((uint64_t)inout[i], seed);
        inout[i] = (int64_t)fh_fastmod64_apply(h, fm);
    }
}

} // namespace

extern "C" int ep_hash_ids_cuda(const int64_t *in, int64_t *out, int64_t n, uint64_t num_buckets, uint64_t seed,
                                void *stream)
{
    if (n <= 0) return (int)cudaSuccess;
    if (num_buckets == 0 || in == nullptr || out == nullptr) return (int)cudaErrorInvalidValue;

    /* Launch on the device that owns `out` (the caller's current device may
     * differ), restoring the current device afterwards. */
    int cur_dev = 0, dev = 0;
    cudaError_t err = cudaGetDevice(&cur_dev);
    if (err != cudaSuccess) return (int)err;
    dev = cur_dev;
    {
        cudaPointerAttributes attr;
        if (cudaPointerGetAttributes(&attr, out) == cudaSuccess &&
            (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) && attr.device >= 0)
            dev = attr.device;
        else
            (void)cudaGetLastError(); /* clear a sticky-free error from the query */
    }
    if (dev != cur_dev) {
        err = cudaSetDevice(dev);
        if (err != cudaSuccess) return (int)err;
    }

    const fh_fastmod64 fm = fh_fastmod64_init(num_buckets);
    const int64_t max_blocks = 65535LL * 8;
    int64_t blocks = (n + kThreads - 1) / kThreads;
    if (blocks > max_blocks) blocks = max_blocks;
    cudaStream_t s = (cudaStream_t)stream;

    (void)cudaGetLastError(); /* do not report someone else's earlier error */
    if ((const void *)in == (const void *)out)
        hash_ids_kernel_inplace<<<(unsigned)blocks, kThreads, 0, s>>>(out, n, fm, seed);
    else
        hash_ids_kernel<<<(unsigned)blocks, kThreads, 0, s>>>(in, out, n, fm, seed);
    err = cudaGetLastError();

    if (dev != cur_dev) {
        cudaError_t e2 = cudaSetDevice(cur_dev);
        if (err == cudaSuccess) err = e2;
    }
    return (int)err;
}

extern "C" const char *ep_cuda_error_string(int code)
{
    return cudaGetErrorString((cudaError_t)code);
}

/*
 * The CUDA kernel behind hash_ids_into() for CUDA tensors, and its launcher (declared in
 * hash_ids_cuda.h): out[i] = xxh64(le_bytes(in[i]), seed) % num_buckets for contiguous int64 in/out of
 * n elements, queued asynchronously on the caller's stream. Errors are returned as cudaError_t codes,
 * which the C caller (hash_ids.c) raises as Python exceptions.
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "hash_ids_cuda.h"
#include "xxhash64.h"

#define EP_THREADS_PER_BLOCK 256
/* A grid-stride loop covers any n; more blocks than this only add scheduling. */
#define EP_MAX_BLOCKS (65535LL * 8)

static __global__ void __launch_bounds__(EP_THREADS_PER_BLOCK)
hash_ids_kernel(const int64_t *__restrict__ in, int64_t *__restrict__ out, int64_t n, ep_fastmod64 fm,
                uint64_t seed)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = (int64_t)ep_fastmod64_apply(xxh64_u64((uint64_t)__ldg(in + i), seed), fm);
    }
}

/* In-place variant (in is out): the same loop without the __restrict__ promise and __ldg. */
static __global__ void __launch_bounds__(EP_THREADS_PER_BLOCK)
hash_ids_kernel_in_place(int64_t *values, int64_t n, ep_fastmod64 fm, uint64_t seed)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        values[i] = (int64_t)ep_fastmod64_apply(xxh64_u64((uint64_t)values[i], seed), fm);
    }
}

/* The device that owns the memory at pointer (the caller's current device may differ). */
static cudaError_t owning_device(const void *pointer, int *device)
{
    cudaPointerAttributes attributes;
    cudaError_t error = cudaPointerGetAttributes(&attributes, pointer);
    if (error != cudaSuccess) {
        return error;
    }
    if ((attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged) &&
        attributes.device >= 0) {
        *device = attributes.device;
    }
    return cudaSuccess;
}

static cudaError_t launch(const int64_t *in, int64_t *out, int64_t n, uint64_t num_buckets, uint64_t seed,
                          cudaStream_t stream)
{
    const ep_fastmod64 fm = ep_fastmod64_init(num_buckets);
    int64_t blocks = (n + EP_THREADS_PER_BLOCK - 1) / EP_THREADS_PER_BLOCK;
    if (blocks > EP_MAX_BLOCKS) {
        blocks = EP_MAX_BLOCKS;
    }
    /* An error left pending by earlier work is returned (and so raised), not cleared: it would
     * otherwise be reported as this launch's. */
    cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) {
        return error;
    }
    if ((const void *)in == (const void *)out) {
        hash_ids_kernel_in_place<<<(unsigned)blocks, EP_THREADS_PER_BLOCK, 0, stream>>>(out, n, fm, seed);
    } else {
        hash_ids_kernel<<<(unsigned)blocks, EP_THREADS_PER_BLOCK, 0, stream>>>(in, out, n, fm, seed);
    }
    return cudaGetLastError();
}

extern "C" int ep_hash_ids_cuda(const int64_t *in, int64_t *out, int64_t n, uint64_t num_buckets, uint64_t seed,
                                void *stream)
{
    int current = 0;
    int device = 0;
    cudaError_t error = cudaSuccess;
    if (n <= 0) {
        return (int)cudaSuccess;
    }
    if (num_buckets == 0 || in == NULL || out == NULL) {
        return (int)cudaErrorInvalidValue;
    }
    /* Launch on the device that owns `out`, restoring the current device afterwards. */
    error = cudaGetDevice(&current);
    if (error != cudaSuccess) {
        return (int)error;
    }
    device = current;
    error = owning_device(out, &device);
    if (error != cudaSuccess) {
        return (int)error;
    }
    if (device != current) {
        error = cudaSetDevice(device);
        if (error != cudaSuccess) {
            return (int)error;
        }
    }
    error = launch(in, out, n, num_buckets, seed, (cudaStream_t)stream);
    if (device != current) {
        cudaError_t restored = cudaSetDevice(current);
        if (error == cudaSuccess) {
            error = restored;
        }
    }
    return (int)error;
}

extern "C" const char *ep_cuda_error_string(int code)
{
    return cudaGetErrorString((cudaError_t)code);
}

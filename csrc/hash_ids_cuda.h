/*
 * The CUDA launcher behind hash_ids_into() for CUDA tensors, defined in hash_ids_cuda.cu and declared
 * here for both sides: with C linkage, so the C files need no CUDA headers.
 */
#ifndef EP_HASH_IDS_CUDA_H
#define EP_HASH_IDS_CUDA_H

#include <stdint.h>

#include "ep_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Queues out[i] = xxh64(le_bytes(in[i]), seed) % num_buckets for contiguous int64 in/out of n elements
 * on `stream` (a cudaStream_t), on the device that owns `out`. Returns 0 or a cudaError_t code. */
EP_INTERNAL int ep_hash_ids_cuda(const int64_t *in, int64_t *out, int64_t n, uint64_t num_buckets, uint64_t seed,
                                 void *stream);
/* The text of a code ep_hash_ids_cuda returned. */
EP_INTERNAL const char *ep_cuda_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* EP_HASH_IDS_CUDA_H */

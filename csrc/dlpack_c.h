/*
 * dlpack_c.h - self-contained C declarations of the DLPack ABI (v1.x), so the
 * extension does not depend on torch's or numpy's copy of dlpack.h.
 *
 * Layouts follow https://github.com/dmlc/dlpack/blob/main/include/dlpack/dlpack.h
 * Note the different field order of DLManagedTensor (tensor first) and
 * DLManagedTensorVersioned (version first, tensor last).
 *
 * Capsule protocol (Python array API / DLPack):
 *   - "dltensor"            -> DLManagedTensor*          (legacy, unversioned)
 *   - "dltensor_versioned"  -> DLManagedTensorVersioned* (DLPack >= 1.0)
 *   A consumer renames the capsule to "used_dltensor" / "used_dltensor_versioned"
 *   and becomes responsible for calling the deleter.
 */
#ifndef EP_DLPACK_C_H
#define EP_DLPACK_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EP_DLPACK_MAJOR_VERSION 1
#define EP_DLPACK_MINOR_VERSION 0

typedef enum {
    kDLCPU = 1,
    kDLCUDA = 2,
    kDLCUDAHost = 3,
    kDLOpenCL = 4,
    kDLVulkan = 7,
    kDLMetal = 8,
    kDLVPI = 9,
    kDLROCM = 10,
    kDLROCMHost = 11,
    kDLExtDev = 12,
    kDLCUDAManaged = 13,
    kDLOneAPI = 14,
    kDLWebGPU = 15,
    kDLHexagon = 16,
    kDLMAIA = 17,
    kDLTrn = 18,
} DLDeviceType;

typedef struct {
    int32_t device_type; /* DLDeviceType; stored as int32 per the ABI */
    int32_t device_id;
} DLDevice;

typedef enum {
    kDLInt = 0,
    kDLUInt = 1,
    kDLFloat = 2,
    kDLOpaqueHandle = 3,
    kDLBfloat = 4,
    kDLComplex = 5,
    kDLBool = 6,
} DLDataTypeCode;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} DLDataType;

typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides; /* in elements; NULL => compact row-major */
    uint64_t byte_offset;
} DLTensor;

typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;

typedef struct {
    uint32_t major;
    uint32_t minor;
} DLPackVersion;

#define DLPACK_FLAG_BITMASK_READ_ONLY (UINT64_C(1) << 0)
#define DLPACK_FLAG_BITMASK_IS_COPIED (UINT64_C(1) << 1)
#define DLPACK_FLAG_BITMASK_IS_SUBBYTE_TYPE_PADDED (UINT64_C(1) << 2)

typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* Uniform handle over a consumed (versioned or legacy) managed tensor. */
typedef struct {
    DLTensor *t;                    /* points into one of the two below */
    DLManagedTensor *legacy;        /* exactly one of legacy/versioned is set */
    DLManagedTensorVersioned *versioned;
    uint64_t flags;                 /* 0 for legacy */
} ep_dl_view;

/* Calls the producer's deleter (if any) and clears the view.  Idempotent. */
static inline void ep_dl_view_release(ep_dl_view *v)
{
    if (v->versioned != NULL) {
        if (v->versioned->deleter != NULL) {
            v->versioned->deleter(v->versioned);
        }
    } else if (v->legacy != NULL) {
        if (v->legacy->deleter != NULL) {
            v->legacy->deleter(v->legacy);
        }
    }
    v->t = NULL;
    v->legacy = NULL;
    v->versioned = NULL;
    v->flags = 0;
}

static inline int ep_dl_is_int64(DLDataType dt)
{
    return dt.code == kDLInt && dt.bits == 64 && dt.lanes == 1;
}

/* Number of elements (product of shape; 1 for 0-d).  Returns -1 on a
 * negative extent or overflow. */
static inline int64_t ep_dl_numel(const DLTensor *t)
{
    int64_t n = 1;
    int32_t i;
    for (i = 0; i < t->ndim; i++) {
        int64_t s = t->shape[i];
        if (s < 0) {
            return -1;
        }
        if (s == 0) {
            return 0;
        }
    }
    for (i = 0; i < t->ndim; i++) {
        int64_t s = t->shape[i];
        if (n > INT64_MAX / s) {
            return -1;
        }
        n *= s;
    }
    return n;
}

/* 1 if the tensor is compact row-major (dims of extent 1 may have any stride;
 * zero-size tensors count as contiguous). */
static inline int ep_dl_is_contiguous(const DLTensor *t)
{
    int64_t expected = 1;
    int32_t i;
    if (t->strides == NULL || t->ndim == 0) {
        return 1;
    }
    for (i = 0; i < t->ndim; i++) {
        if (t->shape[i] == 0) {
            return 1;
        }
    }
    for (i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->strides[i] != expected) {
            return 0;
        }
        expected *= t->shape[i];
    }
    return 1;
}

/* Start of element data (data + byte_offset). */
static inline void *ep_dl_data_ptr(const DLTensor *t)
{
    return (void *)((char *)t->data + t->byte_offset);
}

#ifdef __cplusplus
}
#endif

#endif /* EP_DLPACK_C_H */

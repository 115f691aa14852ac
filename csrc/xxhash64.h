/*
 * xxhash64.h - self-contained, header-only XXH64 (C11 / CUDA).
 *
 * Bit-for-bit identical to the reference XXH64 (xxHash 0.8.x), i.e. to the
 * `xxhash` PyPI package's xxhash.xxh64_intdigest(data, seed).
 *
 * Input bytes are read as little-endian words whatever the host byte order,
 * as the reference does.  All functions are `static inline` and, when the
 * header is compiled by nvcc, `__host__ __device__`.
 *
 * Also provides ep_fastmod64, a precomputed unsigned 64-bit modulo
 * (Granlund-Montgomery / libdivide "branchfree" scheme) so that
 * `h % d` in hot loops costs two multiplications instead of a division.
 */
#ifndef EP_XXHASH64_H
#define EP_XXHASH64_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define XXH_DEVICE __host__ __device__
#define XXH_FORCE_INLINE __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define XXH_DEVICE
#define XXH_FORCE_INLINE inline __attribute__((always_inline))
#else
#define XXH_DEVICE
#define XXH_FORCE_INLINE inline
#endif

#define XXH_PRIME64_1 UINT64_C(0x9E3779B185EBCA87)
#define XXH_PRIME64_2 UINT64_C(0xC2B2AE3D27D4EB4F)
#define XXH_PRIME64_3 UINT64_C(0x165667B19E3779F9)
#define XXH_PRIME64_4 UINT64_C(0x85EBCA77C2B2AE63)
#define XXH_PRIME64_5 UINT64_C(0x27D4EB2F165667C5)

/* Byte order of the host (device code: every CUDA target is little-endian). */
#if !defined(__CUDA_ARCH__) && defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && \
    (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__)
#define XXH_BIG_ENDIAN 1
#else
#define XXH_BIG_ENDIAN 0
#endif

static XXH_DEVICE XXH_FORCE_INLINE uint64_t xxh_rotl64(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64u - r)); /* r is always in 1..63 here */
}

static XXH_DEVICE XXH_FORCE_INLINE uint64_t xxh_swap64(uint64_t x)
{
    return ((x << 56) & UINT64_C(0xff00000000000000)) | ((x << 40) & UINT64_C(0x00ff000000000000)) |
           ((x << 24) & UINT64_C(0x0000ff0000000000)) | ((x << 8) & UINT64_C(0x000000ff00000000)) |
           ((x >> 8) & UINT64_C(0x00000000ff000000)) | ((x >> 24) & UINT64_C(0x0000000000ff0000)) |
           ((x >> 40) & UINT64_C(0x000000000000ff00)) | ((x >> 56) & UINT64_C(0x00000000000000ff));
}

static XXH_DEVICE XXH_FORCE_INLINE uint32_t xxh_swap32(uint32_t x)
{
    return ((x << 24) & 0xff000000u) | ((x << 8) & 0x00ff0000u) | ((x >> 8) & 0x0000ff00u) |
           ((x >> 24) & 0x000000ffu);
}

/* Unaligned little-endian loads. */
static XXH_DEVICE XXH_FORCE_INLINE uint64_t xxh_read64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
#if XXH_BIG_ENDIAN
    v = xxh_swap64(v);
#endif
    return v;
}

static XXH_DEVICE XXH_FORCE_INLINE uint32_t xxh_read32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
#if XXH_BIG_ENDIAN
    v = xxh_swap32(v);
#endif
    return v;
}

static XXH_DEVICE XXH_FORCE_INLINE uint64_t xxh64_round(uint64_t acc, uint64_t input)
{
    acc += input * XXH_PRIME64_2;
    acc = xxh_rotl64(acc, 31);
    acc *= XXH_PRIME64_1;
    return acc;
}

static XXH_DEVICE XXH_FORCE_INLINE uint64_t xxh64_merge_round(uint64_t acc, uint64_t val)
{
    val = xxh64_round(0, val);
    acc ^= val;
    acc = acc * XXH_PRIME64_1 + XXH_PRIME64_4;
    return acc;
}

static XXH_DEVICE XXH_FORCE_INLINE uint64_t xxh64_avalanche(uint64_t h)
{
    h ^= h >> 33;
    h *= XXH_PRIME64_2;
    h ^= h >> 29;
    h *= XXH_PRIME64_3;
    h ^= h >> 32;
    return h;
}

/* XXH64 of `len` bytes at `data` (data may be NULL when len == 0). */
static XXH_DEVICE inline uint64_t xxh64(const void *data, size_t len, uint64_t seed)
{
    const uint8_t *p = (const uint8_t *)data;
    uint64_t h;

    if (len >= 32) {
        const uint8_t *const limit = p + len - 32;
        uint64_t v1 = seed + XXH_PRIME64_1 + XXH_PRIME64_2;
        uint64_t v2 = seed + XXH_PRIME64_2;
        uint64_t v3 = seed + 0;
        uint64_t v4 = seed - XXH_PRIME64_1;
        do {
            v1 = xxh64_round(v1, xxh_read64(p));
            v2 = xxh64_round(v2, xxh_read64(p + 8));
            v3 = xxh64_round(v3, xxh_read64(p + 16));
            v4 = xxh64_round(v4, xxh_read64(p + 24));
            p += 32;
        } while (p <= limit);
        h = xxh_rotl64(v1, 1) + xxh_rotl64(v2, 7) + xxh_rotl64(v3, 12) + xxh_rotl64(v4, 18);
        h = xxh64_merge_round(h, v1);
        h = xxh64_merge_round(h, v2);
        h = xxh64_merge_round(h, v3);
        h = xxh64_merge_round(h, v4);
    } else {
        h = seed + XXH_PRIME64_5;
    }

    h += (uint64_t)len;
    len &= 31;
    while (len >= 8) {
        h ^= xxh64_round(0, xxh_read64(p));
        h = xxh_rotl64(h, 27) * XXH_PRIME64_1 + XXH_PRIME64_4;
        p += 8;
        len -= 8;
    }
    if (len >= 4) {
        h ^= (uint64_t)xxh_read32(p) * XXH_PRIME64_1;
        h = xxh_rotl64(h, 23) * XXH_PRIME64_2 + XXH_PRIME64_3;
        p += 4;
        len -= 4;
    }
    while (len > 0) {
        h ^= (uint64_t)(*p) * XXH_PRIME64_5;
        h = xxh_rotl64(h, 11) * XXH_PRIME64_1;
        p++;
        len--;
    }
    return xxh64_avalanche(h);
}

/*
 * XXH64 of exactly 8 bytes, given as the uint64 whose little-endian byte
 * representation is hashed: xxh64_u64(v, s) == xxh64(&le_bytes_of(v), 8, s).
 * (For an int64 id stored in memory on a little-endian host, that is simply
 * the stored value.)  Branch-free, so loops over it vectorize.
 */
static XXH_DEVICE XXH_FORCE_INLINE uint64_t xxh64_u64(uint64_t v, uint64_t seed)
{
    uint64_t h = seed + XXH_PRIME64_5 + UINT64_C(8);
    h ^= xxh64_round(0, v);
    h = xxh_rotl64(h, 27) * XXH_PRIME64_1 + XXH_PRIME64_4;
    return xxh64_avalanche(h);
}

/* ------------------------------------------------------------------------ */
/* Fast unsigned 64-bit modulo by a loop-invariant divisor d >= 1.          */
/* ------------------------------------------------------------------------ */

typedef struct ep_fastmod64 {
    uint64_t d;     /* divisor */
    uint64_t magic; /* 0 => d is a power of two (mask = d - 1) */
    uint64_t mask;  /* d - 1 */
    unsigned shift;
} ep_fastmod64;

#if defined(__SIZEOF_INT128__)
__extension__ typedef unsigned __int128 ep_uint128; /* a GNU extension: keep -Wpedantic quiet */
#endif

static XXH_DEVICE XXH_FORCE_INLINE uint64_t ep_mulhi64(uint64_t a, uint64_t b)
{
#if defined(__CUDA_ARCH__)
    return __umul64hi(a, b);
#elif defined(__SIZEOF_INT128__)
    return (uint64_t)(((ep_uint128)a * b) >> 64);
#else
    /* portable fallback */
    uint64_t a_lo = (uint32_t)a, a_hi = a >> 32, b_lo = (uint32_t)b, b_hi = b >> 32;
    uint64_t p0 = a_lo * b_lo, p1 = a_lo * b_hi, p2 = a_hi * b_lo, p3 = a_hi * b_hi;
    uint64_t mid = (p0 >> 32) + (uint32_t)p1 + (uint32_t)p2;
    return p3 + (p1 >> 32) + (p2 >> 32) + (mid >> 32);
#endif
}

static XXH_DEVICE XXH_FORCE_INLINE unsigned ep_floor_log2_u64(uint64_t d)
{
    unsigned r = 0;
    while (d >>= 1) {
        r++;
    }
    return r;
}

/* Host-side setup (d must be >= 1). */
static inline ep_fastmod64 ep_fastmod64_init(uint64_t d)
{
    ep_fastmod64 fm;
    fm.d = d;
    fm.mask = d - 1;
    fm.magic = 0;
    fm.shift = 0;
    if ((d & (d - 1)) == 0) return fm; /* power of two, including 1 */
    {
        /* libdivide u64 "branchfree" generator; d is not a power of two, so
         * 2 <= floor_log2_d <= 63 and the quotients below fit in 64 bits. */
        unsigned l = ep_floor_log2_u64(d);
        uint64_t proposed_m, rem, twice_rem;
#if defined(__SIZEOF_INT128__)
        ep_uint128 num = (ep_uint128)1 << (64 + l);
        proposed_m = (uint64_t)(num / d);
        rem = (uint64_t)(num % d);
#else
        /* long division of 2^(64+l) by d, bit by bit */
        {
            uint64_t q = 0, r = (uint64_t)1 << l; /* high word; low word is 0 */
            int i;
            for (i = 63; i >= 0; i--) {
                uint64_t carry = r >> 63;
                r <<= 1;
                q <<= 1;
                if (carry || r >= d) {
                    r -= d;
                    q |= 1;
                }
            }
            proposed_m = q;
            rem = r;
        }
#endif
        proposed_m += proposed_m;
        twice_rem = rem + rem;
        if (twice_rem >= d || twice_rem < rem) {
            proposed_m += 1;
        }
        fm.magic = proposed_m + 1;
        fm.shift = l;
    }
    return fm;
}

/* x mod fm.d */
static XXH_DEVICE XXH_FORCE_INLINE uint64_t ep_fastmod64_apply(uint64_t x, ep_fastmod64 fm)
{
    if (fm.magic == 0) {
        return x & fm.mask;
    }
    {
        uint64_t q = ep_mulhi64(fm.magic, x);
        uint64_t t = ((x - q) >> 1) + q;
        q = t >> fm.shift;
        return x - q * fm.d;
    }
}

#endif /* EP_XXHASH64_H */

/* cuda_bf16.h (emulation): __nv_bfloat16 as its 16 bits, with the CUDA
 * conversions (round to nearest even, NaN kept a NaN). */
#ifndef UPCYC_EMU_CUDA_BF16_H
#define UPCYC_EMU_CUDA_BF16_H

#include "cuda_runtime.h"

struct __nv_bfloat16_raw {
    unsigned short x;
};

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(const __nv_bfloat16_raw &r) : __x(r.x) {}
    __nv_bfloat16(float f);
    __nv_bfloat16 &operator=(const __nv_bfloat16_raw &r)
    {
        __x = r.x;
        return *this;
    }
    operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
    operator float() const { return __uint_as_float((unsigned)__x << 16); }
};

static inline __nv_bfloat16 __float2bfloat16(float f)
{
    unsigned u = __float_as_uint(f);
    __nv_bfloat16_raw r;
    if ((u & 0x7fffffffu) > 0x7f800000u)
        r.x = (unsigned short)((u >> 16) | 0x40);   /* quiet NaN */
    else
        r.x = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
    return __nv_bfloat16(r);
}
static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
static inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float((unsigned)h.__x << 16); }
inline __nv_bfloat16::__nv_bfloat16(float f) : __x(__float2bfloat16(f).__x) {}

#endif

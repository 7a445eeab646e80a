/* Portability layer: the only place where CUDA, OpenCL C and C99 differ.
 *
 * Kernel math is written once against these names:
 *   u8 u32 u64 i8 i32 i64  fixed-width integers
 *   DEVICE               a helper function callable from a kernel
 *   DEVICE_OUTLINED      one that CUDA keeps out of line: point decoding, large and called
 *                        twice, whose inlined copies would push the verify kernels into spills.
 *                        (Field arithmetic stays inline: out of line, nvcc/NVRTC 13.0 -O3
 *                        miscompiled it, see ed25519_fe.h.)
 *   DEVICE          a large helper called from many places (the field multiply): inline
 *                        everywhere. Kept out of line, nvcc/NVRTC 13.0 at -O3 miscompiled the
 *                        25.5-bit field code (wrong squares on some inputs: ZIP-215 torsion cases
 *                        gave other verdicts than the C fallback on an H100; -G or inlining fixed
 *                        it; gcc and clang with UBSan/ASan find nothing). Kept as a name so the
 *                        choice stays in one place.
 *   GLOBAL               address-space qualifier of buffers passed in from the host
 *   LOCAL                address-space qualifier of a pointer into work-group shared memory
 *   LOCAL_ARRAY(T, x, n) declares x, n elements of T in work-group shared memory (GPU kernels)
 *   LOCAL_ID             index of the work item in its group
 *   CONSTANT_TABLE       qualifier of a file-scope read-only table
 *   KERNEL               a kernel entry point (GPU targets only; C loops over items itself)
 *   KERNEL_BOUNDED(n, b) one launched in work-groups of exactly n items; on CUDA, at least b
 *                        blocks per multiprocessor, which caps registers where spills would start
 *   GLOBAL_ID            index of the current work item (GPU targets only)
 *   MAD_WIDE(a, b, c)    c + a * b for i32 a, b and i64 c: one 32 x 32 -> 64-bit multiply-add
 *
 * Item functions take the item index as their first argument and GLOBAL buffers after it, so the
 * GPU entries launch one item per thread and the C entry loops over items across cores.
 * Floating point must never be contracted into FMA: every target is built with contraction off
 * (NVRTC --fmad=false, OpenCL FP_CONTRACT OFF, gcc -ffp-contract=off). */
#ifndef AV_PORTABLE_H
#define AV_PORTABLE_H

#if defined(__OPENCL_VERSION__)
#pragma OPENCL FP_CONTRACT OFF
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef uchar u8;
typedef char i8;
typedef uint u32;
typedef ulong u64;
typedef int i32;
typedef long i64;
#define DEVICE static inline
#define DEVICE_OUTLINED DEVICE
#define GLOBAL __global
#define CONSTANT_TABLE __constant
#define KERNEL __kernel
#define KERNEL_BOUNDED(n, b) __kernel __attribute__((reqd_work_group_size(n, 1, 1))) void
#define GLOBAL_ID ((u64)get_global_id(0))
#define LOCAL __local
#define LOCAL_ARRAY(T, x, n) __local T x[n]
#define LOCAL_ID ((u32)get_local_id(0))
#define MAD_WIDE(a, b, c) ((c) + (i64)(a) * (i64)(b))

#elif defined(__CUDACC__) || defined(__CUDACC_RTC__)
typedef unsigned char u8;
typedef signed char i8;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int i32;
typedef long long i64;
#define DEVICE static __device__ inline
#define DEVICE_OUTLINED static __device__ __noinline__
#define GLOBAL
#define CONSTANT_TABLE static __device__ const
#define KERNEL extern "C" __global__
#define KERNEL_BOUNDED(n, b) extern "C" __global__ void __launch_bounds__(n, b)
#define GLOBAL_ID ((u64)blockIdx.x * (u64)blockDim.x + (u64)threadIdx.x)
#define LOCAL
#define LOCAL_ARRAY(T, x, n) __shared__ T x[n]
#define LOCAL_ID ((u32)threadIdx.x)
/* NVVM hoists loop-invariant sign extensions and then multiplies in 64 bits (three
 * instructions and two more registers); spelt in PTX it stays one IMAD.WIDE. */
static __device__ inline i64 av_mad_wide(i32 a, i32 b, i64 c) {
    i64 r;
    asm("mad.wide.s32 %0, %1, %2, %3;" : "=l"(r) : "r"(a), "r"(b), "l"(c));
    return r;
}
#define MAD_WIDE(a, b, c) av_mad_wide((a), (b), (c))

#else
#include <stdint.h>
#include <float.h>
/* Guards for the C fallback's own build flags: the GPU builds cannot be given these. */
#if defined(__FAST_MATH__)
#error "kernels must not be built with fast-math: results would differ from the GPU backends"
#endif
#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "kernels need FLT_EVAL_METHOD == 0 (SSE2-style doubles, no x87 excess precision)"
#endif
typedef uint8_t u8;
typedef int8_t i8;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int32_t i32;
typedef int64_t i64;
#define DEVICE static inline
#define DEVICE_OUTLINED DEVICE
#define GLOBAL
#define CONSTANT_TABLE static const
#define MAD_WIDE(a, b, c) ((c) + (i64)(a) * (i64)(b))
#endif

#endif

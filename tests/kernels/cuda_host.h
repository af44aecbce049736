// kernels/*.cu compiled as host C++, to hold the CUDA kernels to the Rust
// CPU ops bit for bit without a GPU (tests/kernels.rs). The launch grid is
// emulated by loops in one host thread: `launch` sets blockIdx/threadIdx
// for every thread of every block in order and calls the kernel's body.
// __half is the compiler's IEEE binary16 (_Float16: round to nearest even,
// as __float2half_rn), __nv_bfloat16 the top half of an f32 rounded to
// nearest even; both give CUDA's one NaN (0x7fff) for any NaN. An atomic is
// a plain operation (one thread runs).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __launch_bounds__(threads)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
// Per host thread: tests may run kernels from several threads at once.
inline thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

typedef _Float16 __half;
inline __half __float2half_rn(float v) {
    if (std::isnan(v)) {
        uint16_t nan = 0x7fff;
        __half h;
        std::memcpy(&h, &nan, 2);
        return h;
    }
    return (__half)v;
}
inline float __half2float(__half h) { return (float)h; }

struct __nv_bfloat16 {
    uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
    if (std::isnan(v)) return {0x7fff};
    uint32_t u;
    std::memcpy(&u, &v, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return {(uint16_t)(u >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.bits << 16;
    float v;
    std::memcpy(&v, &u, 4);
    return v;
}
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
    unsigned long long old = *p;
    *p += v;
    return old;
}
using std::isfinite;
using std::isnan;

// Every thread of a grid of `grid` blocks of `block` threads, in order.
template <class Kernel> void launch(unsigned long long grid, unsigned block, Kernel kernel) {
    gridDim.x = (unsigned)grid;
    blockDim.x = block;
    for (unsigned long long b = 0; b < grid; ++b) {
        blockIdx.x = (unsigned)b;
        for (unsigned t = 0; t < block; ++t) {
            threadIdx.x = t;
            kernel();
        }
    }
}

inline unsigned long long blocks_for(unsigned long long n, unsigned block) { return (n + block - 1) / block; }

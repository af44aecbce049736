// kernels/*.cu compiled as host C++, to hold the CUDA kernels to the Rust
// CPU ops bit for bit without a GPU (tests/kernels.rs). The launch grid is
// emulated by loops in one host thread: `launch` sets blockIdx/threadIdx
// for every thread of every block in order and calls the kernel's body.
// __half is the compiler's IEEE binary16 (_Float16: round to nearest even,
// as __float2half_rn); an atomic is a plain operation (one thread runs).
#pragma once
#include <cmath>
#include <cstdint>

#define __global__
#define __device__
#define __host__

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
// Per host thread: tests may run kernels from several threads at once.
inline thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

typedef _Float16 __half;
inline __half __float2half_rn(float v) { return (__half)v; }
inline float __half2float(__half h) { return (float)h; }
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

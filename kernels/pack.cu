// Gradient buckets on the GPU: the CUDA side of src/exchange/host.rs's pack
// and unpack, many gradient tensors into one bucket (and back) in one
// launch, for each wire type (f16, bf16, f32).
//
// A bucket is a list of pieces; piece k copies len[k] elements from
// srcs[k] + src_off[k] to bucket[bucket_off[k] ..]. bucket_off is sorted
// and the pieces tile the bucket, so a thread finds its piece by binary search.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ int find_piece(const unsigned long long *bucket_off, int pieces, unsigned long long at) {
    int lo = 0, hi = pieces - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (bucket_off[mid] <= at) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// f32 to the wire type and back, rounding to nearest even.
__device__ __half to_wire(float v, __half *) { return __float2half_rn(v); }
__device__ __nv_bfloat16 to_wire(float v, __nv_bfloat16 *) { return __float2bfloat16_rn(v); }
__device__ float to_wire(float v, float *) { return v; }
__device__ float from_wire(__half v) { return __half2float(v); }
__device__ float from_wire(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ float from_wire(float v) { return v; }

// f32 gradients -> bucket, each value times `scale` (1/N) before the cast,
// so that the sum over N ranks cannot overflow where the mean would not.
template <class W>
__device__ void pack(const unsigned long long *srcs, const unsigned long long *src_off,
                     const unsigned long long *bucket_off, int pieces, W *bucket, unsigned long long len, float scale) {
    unsigned long long at = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (at >= len) return;
    int k = find_piece(bucket_off, pieces, at);
    const float *src = (const float *)srcs[k];
    bucket[at] = to_wire(src[src_off[k] + (at - bucket_off[k])] * scale, bucket);
}

// bucket -> f32 gradients, all of them in one buffer `out`: piece k goes to
// out[out_off[k] ..], so the table does not change from step to step.
// Counts the non-finite values it writes into *nonfinite (the step is
// skipped on every rank when it is not zero).
template <class W>
__device__ void unpack(const W *bucket, unsigned long long len, float *out, const unsigned long long *out_off,
                       const unsigned long long *bucket_off, int pieces, unsigned long long *nonfinite) {
    unsigned long long at = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (at >= len) return;
    int k = find_piece(bucket_off, pieces, at);
    float v = from_wire(bucket[at]);
    out[out_off[k] + (at - bucket_off[k])] = v;
    if (!isfinite(v)) atomicAdd(nonfinite, 1ULL);
}

#define PACK_KERNELS(NAME, W)                                                                                       \
    extern "C" __global__ void __launch_bounds__(1024)                                                              \
    pack_##NAME(const unsigned long long *srcs, const unsigned long long *src_off,                                  \
                const unsigned long long *bucket_off, int pieces, W *bucket,                                        \
                unsigned long long len, float scale) {                                                              \
        pack(srcs, src_off, bucket_off, pieces, bucket, len, scale);                                               \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(1024)                                                              \
    unpack_##NAME(const W *bucket, unsigned long long len, float *out,                                              \
                  const unsigned long long *out_off, const unsigned long long *bucket_off,                          \
                  int pieces, unsigned long long *nonfinite) {                                                      \
        unpack(bucket, len, out, out_off, bucket_off, pieces, nonfinite);                                          \
    }

PACK_KERNELS(f16, __half)
PACK_KERNELS(bf16, __nv_bfloat16)
PACK_KERNELS(f32, float)

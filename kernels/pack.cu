// Gradient buckets on the GPU: the CUDA side of src/exchange.rs's pack and
// unpack, many gradient tensors into one bucket (and back) in one launch.
//
// A bucket is a list of pieces; piece k copies len[k] elements from
// srcs[k] + src_off[k] to bucket[bucket_off[k] ..]. bucket_off is sorted
// and the pieces tile the bucket, so a thread finds its piece by binary search.
#include <cuda_fp16.h>

__device__ int find_piece(const unsigned long long *bucket_off, int pieces, unsigned long long at) {
    int lo = 0, hi = pieces - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (bucket_off[mid] <= at) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// f32 gradients -> f16 bucket, each value times `scale` (1/N) before the cast,
// so that the sum over N ranks cannot overflow where the mean would not.
extern "C" __global__ void pack_f16(const unsigned long long *srcs, const unsigned long long *src_off,
                                    const unsigned long long *bucket_off, int pieces,
                                    __half *bucket, unsigned long long len, float scale) {
    unsigned long long at = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (at >= len) return;
    int k = find_piece(bucket_off, pieces, at);
    const float *src = (const float *)srcs[k];
    bucket[at] = __float2half_rn(src[src_off[k] + (at - bucket_off[k])] * scale);
}

// f16 bucket -> f32 gradients; counts the non-finite values it writes into
// *nonfinite (the step is skipped on every rank when it is not zero).
extern "C" __global__ void unpack_f16(const __half *bucket, unsigned long long len,
                                      const unsigned long long *dsts, const unsigned long long *dst_off,
                                      const unsigned long long *bucket_off, int pieces,
                                      unsigned long long *nonfinite) {
    unsigned long long at = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (at >= len) return;
    int k = find_piece(bucket_off, pieces, at);
    float v = __half2float(bucket[at]);
    ((float *)dsts[k])[dst_off[k] + (at - bucket_off[k])] = v;
    if (!isfinite(v)) atomicAdd(nonfinite, 1ULL);
}

// The kernels of kernels/ behind plain C functions, each launched over the
// grid the Rust side launches on a GPU (one thread per element, `block`
// threads a block), for tests/kernels.rs to call through dlopen.
#include "cuda_host.h"
#include "pool.cu"
#include "pack.cu"
#include "conv.cu"

extern "C" {

void host_pool2d_fwd(const float *x, float *y, const unsigned *win, int planes, int ih, int iw, int oh, int ow,
                     int is_max, unsigned block) {
    unsigned long long n = (unsigned long long)planes * oh * ow;
    launch(blocks_for(n, block), block, [&] { pool2d_fwd_f32(x, y, win, planes, ih, iw, oh, ow, is_max); });
}

void host_pool2d_bwd(const float *x, const float *gy, float *gx, const unsigned *win, int planes, int ih, int iw,
                     int oh, int ow, int is_max, unsigned block) {
    unsigned long long n = (unsigned long long)planes * ih * iw;
    launch(blocks_for(n, block), block, [&] { pool2d_bwd_f32(x, gy, gx, win, planes, ih, iw, oh, ow, is_max); });
}

void host_im2col(const float *x, float *cols, int images, int c, int h, int w, int k, int stride, int padding,
                 int oh, int ow, unsigned block) {
    unsigned long long n = (unsigned long long)c * k * k * images * oh * ow;
    launch(blocks_for(n, block), block, [&] { im2col_f32(x, cols, images, c, h, w, k, stride, padding, oh, ow); });
}

void host_col2im(const float *cols, float *dx, int images, int c, int h, int w, int k, int stride, int padding,
                 int oh, int ow, unsigned block) {
    unsigned long long n = (unsigned long long)images * c * h * w;
    launch(blocks_for(n, block), block, [&] { col2im_f32(cols, dx, images, c, h, w, k, stride, padding, oh, ow); });
}

// pack_<t> and unpack_<t> for each wire type; the bucket is passed untyped.
#define HOST_PACK(NAME, W)                                                                                          \
    void host_pack_##NAME(const unsigned long long *srcs, const unsigned long long *src_off,                       \
                          const unsigned long long *bucket_off, int pieces, void *bucket, unsigned long long len,  \
                          float scale, unsigned block) {                                                            \
        launch(blocks_for(len, block), block,                                                                       \
               [&] { pack_##NAME(srcs, src_off, bucket_off, pieces, (W *)bucket, len, scale); });                  \
    }                                                                                                               \
    void host_unpack_##NAME(const void *bucket, unsigned long long len, float *out,                                \
                            const unsigned long long *out_off, const unsigned long long *bucket_off, int pieces,   \
                            unsigned long long *nonfinite, unsigned block) {                                        \
        launch(blocks_for(len, block), block,                                                                       \
               [&] { unpack_##NAME((const W *)bucket, len, out, out_off, bucket_off, pieces, nonfinite); });      \
    }

HOST_PACK(f16, __half)
HOST_PACK(bf16, __nv_bfloat16)
HOST_PACK(f32, float)
}

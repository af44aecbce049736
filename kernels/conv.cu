// Convolution's column matrices on the GPU: the CUDA side of src/ops/conv.rs's
// im2col and col2im, the same layout and the same order of additions, so
// the columns and the input gradient match the CPU op bit for bit (the
// GEMMs between them are cuBLAS's, through candle's CUDA matmul).
//
// A group of `images` consecutive images of x (images, c, h, w) has the
// column matrix cols (c * k * k, images * oh * ow): row (ci, ki, kj),
// column (image, oy, ox), holding x[image, ci, oy * stride + ki - padding,
// ox * stride + kj - padding], 0 where that lies in the padding.

// One thread per element of cols.
extern "C" __global__ void __launch_bounds__(1024)
im2col_f32(const float *x, float *cols, int images, int c, int h, int w, int k,
           int stride, int padding, int oh, int ow) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long ohw = (long)oh * ow;
    long width = images * ohw;
    long total = (long)c * k * k * width;
    if (idx >= total) return;
    long col = idx % width;
    long row = idx / width;
    long image = col / ohw;
    int oy = (int)((col % ohw) / ow);
    int ox = (int)(col % ow);
    int ci = (int)(row / (k * k));
    int ki = (int)((row / k) % k);
    int kj = (int)(row % k);
    int iy = oy * stride + ki - padding;
    int ix = ox * stride + kj - padding;
    bool inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
    cols[idx] = inside ? x[((image * c + ci) * h + iy) * (long)w + ix] : 0.0f;
}

// One thread per element of dx (images, c, h, w): the sum of the column
// entries that read it, added in (ki, kj) order from 0 as the CPU's
// col2im adds them, so no atomics and the same rounding.
extern "C" __global__ void __launch_bounds__(1024)
col2im_f32(const float *cols, float *dx, int images, int c, int h, int w, int k,
           int stride, int padding, int oh, int ow) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long total = (long)images * c * h * w;
    if (idx >= total) return;
    int ix = (int)(idx % w);
    int iy = (int)((idx / w) % h);
    int ci = (int)((idx / ((long)h * w)) % c);
    long image = idx / ((long)c * h * w);
    long ohw = (long)oh * ow;
    long width = images * ohw;
    float acc = 0.0f;
    for (int ki = 0; ki < k; ++ki) {
        int ty = iy + padding - ki;
        if (ty < 0 || ty % stride != 0 || ty / stride >= oh) continue;
        int oy = ty / stride;
        for (int kj = 0; kj < k; ++kj) {
            int tx = ix + padding - kj;
            if (tx < 0 || tx % stride != 0 || tx / stride >= ow) continue;
            int ox = tx / stride;
            long row = ((long)ci * k + ki) * k + kj;
            acc += cols[row * width + image * ohw + (long)oy * ow + ox];
        }
    }
    dx[idx] = acc;
}

// Pooling on the GPU: the CUDA side of src/ops/pool/, same windows,
// same tie rule (first maximum in row-major window order; NaN wins), same
// accumulation order, so results match the CPU op bit for bit.
//
// Windows along each axis are precomputed on the host (PoolOp's AxisWindows)
// and passed as one array `win` of unsigned ints:
//   start_h[oh], end_h[oh], div_h[oh], start_w[ow], end_w[ow], div_w[ow]
// `end` is exclusive and already clipped to the input; `div` is the average's
// divisor (counts padding, not overhang).

struct Windows {
    const unsigned *start_h, *end_h, *div_h, *start_w, *end_w, *div_w;
    __device__ Windows(const unsigned *win, int oh, int ow)
        : start_h(win), end_h(win + oh), div_h(win + 2 * oh),
          start_w(win + 3 * oh), end_w(win + 3 * oh + ow), div_w(win + 3 * oh + 2 * ow) {}
};

// Index in the plane of the first maximum of output cell (o_h, o_w).
__device__ int window_argmax(const float *plane, int iw, const Windows &w, int o_h, int o_w) {
    float best = -INFINITY;
    int at = w.start_h[o_h] * iw + w.start_w[o_w];
    for (int i = w.start_h[o_h]; i < w.end_h[o_h]; ++i) {
        for (int j = w.start_w[o_w]; j < w.end_w[o_w]; ++j) {
            float v = plane[i * iw + j];
            if (v > best || isnan(v)) {
                best = v;
                at = i * iw + j;
                if (isnan(v)) return at;
            }
        }
    }
    return at;
}

// One thread per output element of planes x oh x ow.
extern "C" __global__ void __launch_bounds__(1024)
pool2d_fwd_f32(const float *x, float *y, const unsigned *win,
               int planes, int ih, int iw, int oh, int ow, int is_max) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long total = (long)planes * oh * ow;
    if (idx >= total) return;
    int o_w = idx % ow;
    int o_h = (idx / ow) % oh;
    long p = idx / ((long)oh * ow);
    const float *plane = x + p * ih * iw;
    Windows w(win, oh, ow);
    if (is_max) {
        y[idx] = plane[window_argmax(plane, iw, w, o_h, o_w)];
        return;
    }
    float sum = 0.0f;
    for (int i = w.start_h[o_h]; i < w.end_h[o_h]; ++i)
        for (int j = w.start_w[o_w]; j < w.end_w[o_w]; ++j)
            sum += plane[i * iw + j];
    y[idx] = sum / (float)(w.div_h[o_h] * w.div_w[o_w]);
}

// One thread per input element: adds the gradient of every output whose
// window holds it (max: whose argmax it is), in increasing output order as
// the CPU op does, so no atomics and no order-dependent rounding.
extern "C" __global__ void __launch_bounds__(1024)
pool2d_bwd_f32(const float *x, const float *gy, float *gx, const unsigned *win,
               int planes, int ih, int iw, int oh, int ow, int is_max) {
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long total = (long)planes * ih * iw;
    if (idx >= total) return;
    int j = idx % iw;
    int i = (idx / iw) % ih;
    long p = idx / ((long)ih * iw);
    const float *plane = is_max ? x + p * ih * iw : nullptr;
    const float *g = gy + p * oh * ow;
    Windows w(win, oh, ow);
    float acc = 0.0f;
    for (int o_h = 0; o_h < oh; ++o_h) {
        if (i < (int)w.start_h[o_h] || i >= (int)w.end_h[o_h]) continue;
        for (int o_w = 0; o_w < ow; ++o_w) {
            if (j < (int)w.start_w[o_w] || j >= (int)w.end_w[o_w]) continue;
            float go = g[o_h * ow + o_w];
            if (is_max) {
                if (window_argmax(plane, iw, w, o_h, o_w) == i * iw + j) acc += go;
            } else {
                acc += go / (float)(w.div_h[o_h] * w.div_w[o_w]);
            }
        }
    }
    gx[idx] = acc;
}

// Stands in for CUDA's header when kernels/*.cu are compiled as host C++:
// tests/kernels/cuda_host.h defines __nv_bfloat16 and its conversions.

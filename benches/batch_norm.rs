//! Batch norm + ReLU, forward and backward (training mode), with 1 and 2
//! compute threads (`*_1t`, `*_2t`: a pool of that many threads runs the op;
//! candle's few ops around it take 2 either way), at
//! shapes the networks give it at a 64-pixel input and batch 16: large planes
//! (ResNet50's stem), and GoogLeNet's many small ones, where the cost per plane
//! rather than per value decides. Throughput counts the input's bytes. The
//! backward includes candle's own for `sum_all` (a broadcast gradient and the
//! input's gradient accumulated), the same in every run.

use candle_core::{DType, Device, Tensor, Var};
use candle_mpi::model::batch_norm::batch_norm;
use candle_mpi::ops::param_grads;
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// (N, C, H, W) of an activation.
type Dims4 = (usize, usize, usize, usize);

const SHAPES: [(&str, Dims4); 3] = [
    ("resnet50_stem_16x64x32x32", (16, 64, 32, 32)),
    ("googlenet_4e_16x528x4x4", (16, 528, 4, 4)),
    ("googlenet_5b_16x832x2x2", (16, 832, 2, 2)),
];

fn bench(c: &mut Criterion) {
    // As the trainer binary does: freed blocks stay in the heap (src/memory.rs).
    candle_mpi::host::memory::keep_freed_memory();
    candle_mpi::host::threads::configure(Some(2)).unwrap();
    let pools: Vec<(usize, rayon::ThreadPool)> =
        [1, 2].into_iter().map(|t| (t, rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap())).collect();
    let dev = Device::Cpu;
    for (name, shape) in SHAPES {
        let varmap = VarMap::new();
        let bn = batch_norm(shape.1, 1e-3, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, shape, &dev).unwrap()).unwrap();
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes((x.elem_count() * 4) as u64));
        for (threads, pool) in &pools {
            g.bench_function(format!("forward_{threads}t"), |b| {
                b.iter(|| pool.install(|| bn.forward_relu_t(x.as_tensor(), true).unwrap()))
            });
            g.bench_function(format!("forward_backward_{threads}t"), |b| {
                b.iter(|| {
                    pool.install(|| {
                        let loss = bn.forward_relu_t(x.as_tensor(), true).unwrap().sum_all().unwrap();
                        param_grads::backward(&loss).unwrap()
                    })
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

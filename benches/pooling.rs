//! Pooling forward + backward at the sizes the networks use, with 1 and 2
//! compute threads (`*_1t`, `*_2t`: a pool of that many threads runs the op;
//! candle's few ops around it take 2 either way), next to candle's own
//! non-overlapping max-pool (which cannot do their 3x3/2 windows, 1 thread)
//! as a reference for what a memory-bound pass over the same tensor costs on
//! this machine. The backward is the trainer's (`param_grads::backward`).

use candle_core::{Device, Tensor, Var};
use candle_mpi::ops::param_grads;
use candle_mpi::ops::pool::{max_pool2d, Pool2d};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// `name_{threads}t` for each pool: the forward alone, or with its backward.
fn forward_in_pools(g: &mut Group, pools: &[(usize, rayon::ThreadPool)], name: &str, x: &Var, pool2d: Pool2d) {
    for (threads, pool) in pools {
        g.bench_function(format!("{name}_forward_{threads}t"), |b| {
            b.iter(|| pool.install(|| max_pool2d(x.as_tensor(), pool2d).unwrap()))
        });
    }
}

fn backward_in_pools(g: &mut Group, pools: &[(usize, rayon::ThreadPool)], name: &str, x: &Var, pool2d: Pool2d) {
    for (threads, pool) in pools {
        g.bench_function(format!("{name}_forward_backward_{threads}t"), |b| {
            b.iter(|| {
                pool.install(|| {
                    let loss = max_pool2d(x.as_tensor(), pool2d).unwrap().sum_all().unwrap();
                    param_grads::backward(&loss).unwrap()
                })
            })
        });
    }
}

fn randn(shape: (usize, usize, usize, usize)) -> Var {
    Var::from_tensor(&Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap()).unwrap()
}

fn pooling(c: &mut Criterion) {
    // As the trainer binary does: freed blocks stay in the heap (src/memory.rs).
    candle_mpi::host::memory::keep_freed_memory();
    candle_mpi::host::threads::configure(Some(2)).unwrap();
    let pools: Vec<(usize, rayon::ThreadPool)> =
        [1, 2].into_iter().map(|t| (t, rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap())).collect();

    // ResNet50's stem output at 64-pixel input, batch 16: (16, 64, 32, 32).
    let x = randn((16, 64, 32, 32));
    let mut g = c.benchmark_group("maxpool_16x64x32x32");
    g.throughput(Throughput::Bytes((x.elem_count() * 4) as u64));
    forward_in_pools(&mut g, &pools, "ours_3x3s2p1", &x, Pool2d::new(3, 2).padding(1));
    backward_in_pools(&mut g, &pools, "ours_3x3s2p1", &x, Pool2d::new(3, 2).padding(1));
    forward_in_pools(&mut g, &pools, "ours_2x2s2", &x, Pool2d::new(2, 2));
    let one = &pools[0].1;
    g.bench_function("candle_2x2s2_forward", |b| b.iter(|| one.install(|| x.as_tensor().max_pool2d(2).unwrap())));
    g.finish();

    // GoogLeNet's inception pool branch at 128-pixel input (3a: 16x16, 192
    // channels), 3x3 windows at stride 1: every output reads nine cells; and
    // the pool between its stages (3x3 at stride 2, ceil mode).
    let x = randn((16, 192, 16, 16));
    let mut g = c.benchmark_group("maxpool_16x192x16x16");
    g.throughput(Throughput::Bytes((x.elem_count() * 4) as u64));
    forward_in_pools(&mut g, &pools, "ours_3x3s1p1", &x, Pool2d::new(3, 1).padding(1).ceil());
    backward_in_pools(&mut g, &pools, "ours_3x3s1p1", &x, Pool2d::new(3, 1).padding(1).ceil());
    forward_in_pools(&mut g, &pools, "ours_3x3s2_ceil", &x, Pool2d::new(3, 2).ceil());
    g.finish();

    // The same branch on the small planes of 64-pixel input (3a: 8x8, 4a: 4x4).
    for (channels, side) in [(192, 8), (480, 4)] {
        let x = randn((16, channels, side, side));
        let mut g = c.benchmark_group(format!("maxpool_16x{channels}x{side}x{side}"));
        g.throughput(Throughput::Bytes((x.elem_count() * 4) as u64));
        forward_in_pools(&mut g, &pools, "ours_3x3s1p1", &x, Pool2d::new(3, 1).padding(1).ceil());
        backward_in_pools(&mut g, &pools, "ours_3x3s1p1", &x, Pool2d::new(3, 1).padding(1).ceil());
        g.finish();
    }
}

criterion_group!(benches, pooling);
criterion_main!(benches);

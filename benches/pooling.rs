//! Pooling forward + backward at the sizes the networks use, next to candle's own
//! non-overlapping max-pool (which cannot do their 3x3/2 windows) as a reference
//! for what a memory-bound pass over the same tensor costs on this machine.

use candle_core::{Device, Tensor, Var};
use candle_mpi::ops::pool::{max_pool2d, Pool2d};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn pooling(c: &mut Criterion) {
    candle_mpi::host::threads::configure(Some(1)).unwrap();
    let dev = Device::Cpu;
    // ResNet50's stem output at 64-pixel input, batch 16: (16, 64, 32, 32).
    let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (16, 64, 32, 32), &dev).unwrap()).unwrap();
    let bytes = (x.elem_count() * 4) as u64;
    let mut g = c.benchmark_group("maxpool_16x64x32x32");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("ours_3x3s2p1_forward", |b| {
        b.iter(|| max_pool2d(x.as_tensor(), Pool2d::new(3, 2).padding(1)).unwrap())
    });
    g.bench_function("ours_3x3s2p1_forward_backward", |b| {
        b.iter(|| {
            let y = max_pool2d(x.as_tensor(), Pool2d::new(3, 2).padding(1)).unwrap();
            y.sum_all().unwrap().backward().unwrap()
        })
    });
    g.bench_function("ours_2x2s2_forward", |b| b.iter(|| max_pool2d(x.as_tensor(), Pool2d::new(2, 2)).unwrap()));
    g.bench_function("candle_2x2s2_forward", |b| b.iter(|| x.as_tensor().max_pool2d(2).unwrap()));
    g.finish();

    // GoogLeNet's inception pool branch at 128-pixel input (3a: 16x16, 192
    // channels), 3x3 windows at stride 1: every output reads nine cells.
    let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (16, 192, 16, 16), &dev).unwrap()).unwrap();
    let mut g = c.benchmark_group("maxpool_16x192x16x16");
    g.throughput(Throughput::Bytes((x.elem_count() * 4) as u64));
    g.bench_function("ours_3x3s1p1_forward", |b| {
        b.iter(|| max_pool2d(x.as_tensor(), Pool2d::new(3, 1).padding(1).ceil()).unwrap())
    });
    g.bench_function("ours_3x3s2_ceil_forward", |b| {
        b.iter(|| max_pool2d(x.as_tensor(), Pool2d::new(3, 2).ceil()).unwrap())
    });
    g.finish();

    // The same branch on the small planes of 64-pixel input (3a: 8x8, 4a: 4x4).
    for (channels, side) in [(192, 8), (480, 4)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (16, channels, side, side), &dev).unwrap()).unwrap();
        let mut g = c.benchmark_group(format!("maxpool_16x{channels}x{side}x{side}"));
        g.throughput(Throughput::Bytes((x.elem_count() * 4) as u64));
        g.bench_function("ours_3x3s1p1_forward", |b| {
            b.iter(|| max_pool2d(x.as_tensor(), Pool2d::new(3, 1).padding(1).ceil()).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, pooling);
criterion_main!(benches);

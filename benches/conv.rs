//! Convolution forward + backward (input and weight gradients) of layers the
//! four networks use, batch 16 at a 64-pixel network input: candle's conv2d
//! (1 thread) against ours (src/ops/conv.rs) with 1 and 2 compute threads
//! (`ours_*_1t`, `ours_*_2t`: a pool of that many threads runs the op; the
//! few candle ops around it, `sum_all` and backward's accumulation, take 2
//! either way), in GFLOP/s (criterion's
//! "elem/s" here counts floating-point operations: 2 per multiply-add, three
//! GEMM-sized passes for forward + both gradients). Beside them, the ceiling:
//! candle's single-thread f32 GEMM on a 512 x 576 x 4096 product, the shape
//! of a 3x3 layer at 64 channels.

use candle_core::{Device, Tensor, Var};
use candle_mpi::ops::conv::{conv2d_gemm, Geometry};
use candle_mpi::ops::param_grads;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// One layer: (name, batch, in channels, out channels, input side, kernel, stride, padding).
type Layer = (&'static str, usize, usize, usize, usize, usize, usize, usize);

const LAYERS: [Layer; 11] = [
    ("alexnet_conv1_11x11s4", 16, 3, 64, 64, 11, 4, 2),
    ("vgg16_conv1_2_3x3_64ch", 16, 64, 64, 64, 3, 1, 1),
    ("resnet50_layer1_1x1_256to64", 16, 256, 64, 16, 1, 1, 0),
    ("resnet50_layer1_3x3_64ch", 16, 64, 64, 16, 3, 1, 1),
    ("googlenet_3a_branch2_3x3_96to128", 16, 96, 128, 8, 3, 1, 1),
    ("googlenet_3a_branch1_1x1_192to64", 16, 192, 64, 8, 1, 1, 0),
    // At a 128-pixel input: 16 pixels an image, so the whole batch is one GEMM group.
    ("resnet50_layer4_3x3_512ch_at_128px", 16, 512, 512, 4, 3, 1, 1),
    // At 64 pixels ResNet50's last stage sees 2x2: 64 columns, one group.
    ("resnet50_layer4_3x3_512ch", 16, 512, 512, 2, 3, 1, 1),
    ("resnet50_layer4_1x1_512to2048", 16, 512, 2048, 2, 1, 1, 0),
    // GoogLeNet's 4a (4x4, the batch in two halves) and 5a (2x2, one group).
    ("googlenet_4a_branch1_1x1_480to192", 16, 480, 192, 4, 1, 1, 0),
    ("googlenet_5a_branch1_1x1_832to384", 16, 832, 384, 2, 1, 1, 0),
];

fn conv(c: &mut Criterion) {
    // As the trainer binary does: freed blocks stay in the heap (src/memory.rs).
    candle_mpi::host::memory::keep_freed_memory();
    candle_mpi::host::threads::configure(Some(2)).unwrap();
    let pools: Vec<(usize, rayon::ThreadPool)> =
        [1, 2].into_iter().map(|t| (t, rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap())).collect();
    let dev = Device::Cpu;

    let mut g = c.benchmark_group("gemm_ceiling");
    let a = Tensor::randn(0f32, 1f32, (512, 576), &dev).unwrap();
    let b = Tensor::randn(0f32, 1f32, (576, 4096), &dev).unwrap();
    g.throughput(Throughput::Elements(2 * 512 * 576 * 4096));
    g.sample_size(10);
    let one = &pools[0].1;
    g.bench_function("matmul_512x576x4096", |bench| bench.iter(|| one.install(|| a.matmul(&b).unwrap())));
    g.finish();

    for (name, n, ci, co, side, k, stride, padding) in LAYERS {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (n, ci, side, side), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.1f32, (co, ci, k, k), &dev).unwrap()).unwrap();
        let out = (side + 2 * padding - k) / stride + 1;
        let flops = 3 * 2 * (n * out * out * co * ci * k * k) as u64;
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(flops));
        g.sample_size(10);
        g.bench_function("candle_fwd_bwd", |bench| {
            bench.iter(|| {
                one.install(|| {
                    x.as_tensor()
                        .conv2d(w.as_tensor(), padding, stride, 1, 1)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap()
                })
            })
        });
        let geometry = Geometry { kernel: k, stride, padding };
        // Forward alone: subtracted from forward + backward, it gives the
        // backward's time (scripts/conv-table.py), whose work is two of the
        // three GEMM-sized passes.
        for (threads, pool) in &pools {
            g.bench_function(format!("ours_fwd_{threads}t"), |bench| {
                bench.iter(|| pool.install(|| conv2d_gemm(x.as_tensor(), w.as_tensor(), None, geometry).unwrap()))
            });
            g.bench_function(format!("ours_fwd_bwd_{threads}t"), |bench| {
                bench.iter(|| {
                    pool.install(|| {
                        let loss =
                            conv2d_gemm(x.as_tensor(), w.as_tensor(), None, geometry).unwrap().sum_all().unwrap();
                        param_grads::backward(&loss).unwrap()
                    })
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, conv);
criterion_main!(benches);

//! The SGD update (momentum 0.9, weight decay 1e-4, in place on the CPU) of a
//! whole network's parameters, ResNet50's and GoogLeNet's at 10 classes, with
//! 1 and 2 compute threads (`*_1t`, `*_2t`: a pool of that many threads runs
//! the step). Throughput counts the bytes of parameter, gradient and momentum
//! read and of parameter and momentum written: a memory-bound pass.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_mpi::model::{ModelConfig, ModelKind};
use candle_mpi::optim::{Sgd, SgdConfig};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn sgd(c: &mut Criterion) {
    candle_mpi::host::memory::keep_freed_memory();
    candle_mpi::host::threads::configure(Some(2)).unwrap();
    let dev = Device::Cpu;
    for kind in [ModelKind::Resnet50, ModelKind::Googlenet] {
        let varmap = VarMap::new();
        kind.build(&ModelConfig::new(10, 64), VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let params: Vec<(String, Var)> =
            varmap.data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        let mut grads = GradStore::default();
        for (_, v) in &params {
            grads.insert(v.as_tensor(), Tensor::randn(0f32, 1e-3, v.shape(), &dev).unwrap());
        }
        let values: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
        let mut sgd = Sgd::new(params, SgdConfig::default()).unwrap();
        // The first step makes the momentum buffers; the benchmark times the steps after it.
        sgd.step(&grads, 1e-3).unwrap();
        let mut g = c.benchmark_group(format!("sgd_{}", kind.name()));
        g.throughput(Throughput::Bytes((values * 4 * 5) as u64));
        g.sample_size(20);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            g.bench_function(format!("step_{threads}t"), |b| {
                b.iter(|| pool.install(|| sgd.step(&grads, 1e-3).unwrap()))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, sgd);
criterion_main!(benches);

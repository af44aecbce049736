//! Pack (f32 gradients -> scaled f16/bf16) and unpack (back to f32) of one
//! default 25 MB bucket, next to a plain memcpy of the same f32 bytes measured
//! in the same run: the copy is the ceiling a conversion pass can reach.
//! Then the bucket's own pack and unpack as the trainer runs them, on the
//! calling thread (`*_1t`) and spread over a pool of 2 threads (`*_2t`).

use candle_mpi::comm::{GradDtype, Transport, WireElem};
use candle_mpi::exchange::{pack_scaled, unpack, WireBucket};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::{bf16, f16};

fn bucket(c: &mut Criterion) {
    candle_mpi::host::threads::configure(Some(2)).unwrap();
    // A 25 MB f16 bucket holds 13,107,200 gradients.
    let n = 25 * 1024 * 1024 / 2;
    let src: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 1e-3 - 0.5).collect();
    let mut f32_dst = vec![0f32; n];
    let mut h = vec![f16::ZERO; n];
    let mut b = vec![bf16::ZERO; n];
    let mut g = c.benchmark_group("bucket_13M_elements");
    // Throughput counts the f32 side (what the gradients occupy), for every row.
    g.throughput(Throughput::Bytes((n * 4) as u64));
    g.sample_size(20);
    g.bench_function("memcpy_f32", |bench| bench.iter(|| f32_dst.copy_from_slice(std::hint::black_box(&src))));
    g.bench_function("pack_f16_scaled", |bench| bench.iter(|| pack_scaled(std::hint::black_box(&src), 0.5, &mut h)));
    g.bench_function("unpack_f16", |bench| bench.iter(|| unpack(std::hint::black_box(&h), &mut f32_dst)));
    g.bench_function("unpack_f16_counting_nonfinite", |bench| {
        bench.iter(|| f16::unpack_counting(std::hint::black_box(&h), &mut f32_dst))
    });
    g.bench_function("has_nonfinite_f16", |bench| {
        bench.iter(|| candle_mpi::comm::WireElem::has_nonfinite(std::hint::black_box(&h[..])))
    });
    g.bench_function("pack_bf16_scaled", |bench| bench.iter(|| pack_scaled(std::hint::black_box(&src), 0.5, &mut b)));
    g.bench_function("unpack_bf16", |bench| bench.iter(|| unpack(std::hint::black_box(&b), &mut f32_dst)));
    // As the trainer's MPI thread calls them, from outside the compute pool:
    // unsplit on the caller (what `--threads 1` gives), or split over the
    // global pool of 2 threads.
    for threads in [1, 2] {
        let mut bucket = WireBucket::local(GradDtype::F16, n, Transport::Auto);
        if threads > 1 {
            bucket.split_over_threads();
        }
        g.bench_function(format!("bucket_pack_f16_{threads}t"), |bench| {
            bench.iter(|| bucket.pack(0, std::hint::black_box(&src), 0.5))
        });
        g.bench_function(format!("bucket_unpack_f16_{threads}t"), |bench| {
            bench.iter(|| bucket.unpack(0, &mut f32_dst))
        });
    }
    g.finish();
}

criterion_group!(benches, bucket);
criterion_main!(benches);

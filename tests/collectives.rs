//! The MPI backend and the gradient exchange under `mpirun -np 2` and `-np 3`;
//! each worker frees the shared windows it made (`release`), as a clean run does.
//! Each `#[test]` starts mpirun on this same test binary, running one of the
//! `worker_*` functions (ignored in a plain run) on every rank.

mod common;

use std::time::Duration;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_mpi::comm::{Comm, GradDtype, Reduce, Transport, WireElem, World};
use candle_mpi::exchange::{GradExchange, WireBucket};
use candle_mpi::rng::Rng;
use half::{bf16, f16};

const TIMEOUT: Duration = Duration::from_secs(120);

fn launch(np: usize, worker: &str) {
    let run = common::mpirun_worker(np, worker, TIMEOUT);
    common::assert_ok(&run, &format!("{worker} on {np} ranks"));
}

#[test]
fn sums_on_2_ranks() {
    launch(2, "worker_sums");
}

#[test]
fn sums_on_3_ranks() {
    launch(3, "worker_sums");
}

#[test]
fn exchange_on_2_ranks() {
    launch(2, "worker_exchange");
}

#[test]
fn exchange_on_3_ranks() {
    launch(3, "worker_exchange");
}

#[test]
fn nonfinite_skips_on_2_ranks() {
    launch(2, "worker_nonfinite");
}

#[test]
fn nonfinite_skips_on_3_ranks() {
    launch(3, "worker_nonfinite");
}

/// A small integer in [-4, 4] for rank r at index i: sums over 8 ranks stay exact in f16.
fn small_int(r: usize, i: usize) -> f32 {
    ((i * 3 + r * 5 + i / 7) % 9) as f32 - 4.0
}

fn random_values(r: usize, len: usize) -> Vec<f32> {
    let mut rng = Rng::keyed(1234, r as u64);
    (0..len).map(|_| rng.normal() as f32).collect()
}

/// FNV hash of bytes: every rank must end with the same bits.
fn hash_bits(bits: impl Iterator<Item = u32>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bits {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Sums through a wire bucket of `dtype` (both transports go through the same API).
fn reduce_values(comm: &Comm, dtype: GradDtype, transport: Transport, values: &[f32]) -> Vec<f32> {
    let mut bucket = WireBucket::allocate(comm, dtype, &[values.len()], transport).unwrap().remove(0);
    if transport == Transport::Auto && comm.info().size > 1 {
        assert!(bucket.is_shared(), "one host, auto transport: the bucket should be in shared memory");
    } else {
        assert!(!bucket.is_shared());
    }
    bucket.pack(0, values, 1.0);
    bucket.all_reduce(comm).unwrap();
    let mut out = vec![0f32; values.len()];
    assert_eq!(bucket.unpack(0, &mut out), 0);
    WireBucket::release(vec![bucket]).unwrap();
    out
}

/// Values as the wire type carries them.
fn rounded<T: WireElem>(v: &[f32]) -> Vec<f32> {
    let mut wire = vec![T::default(); v.len()];
    T::from_f32(v, &mut wire);
    let mut back = vec![0f32; v.len()];
    T::to_f32(&wire, &mut back);
    back
}

fn check_type<T: WireElem>(comm: &Comm, dtype: GradDtype, transport: Transport, rel_tol: f64) {
    let (me, n) = (comm.info().rank, comm.info().size);
    let what = format!("{} over {transport:?}", T::NAME);
    for len in [0usize, 1, 7, 1_000_003] {
        // Small integers: exact.
        let src: Vec<f32> = (0..len).map(|i| small_int(me, i)).collect();
        let got = reduce_values(comm, dtype, transport, &src);
        for (i, g) in got.iter().enumerate() {
            let want: f32 = (0..n).map(|r| small_int(r, i)).sum();
            assert_eq!(*g, want, "{what} len {len}: element {i} is {g}, want {want}");
        }
        // Random data: within one rounding of the f64 sum of the values sent.
        let got = reduce_values(comm, dtype, transport, &random_values(me, len));
        let mut want = vec![0f64; len];
        for r in 0..n {
            for (w, b) in want.iter_mut().zip(rounded::<T>(&random_values(r, len))) {
                *w += b as f64;
            }
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let err = (*g as f64 - w).abs();
            assert!(err <= w.abs() * rel_tol + 1e-6, "{what} len {len}: element {i} is {g}, f64 sum {w}");
        }
        let h = hash_bits(got.iter().map(|v| v.to_bits()));
        let all = comm.control().all_gather_u64(h).unwrap();
        assert!(all.iter().all(|x| *x == h), "{what} len {len}: ranks hold different results");
    }
}

#[test]
#[ignore = "runs under mpirun, launched by the tests above"]
fn worker_sums() {
    let comm = Comm::mpi(World::init().unwrap()).unwrap();
    for transport in [Transport::Auto, Transport::Messages] {
        // One rounding of the result: half an ulp of f16 (2^-11), bf16 (2^-8), f32 (2^-24).
        check_type::<f16>(&comm, GradDtype::F16, transport, 2f64.powi(-11));
        check_type::<bf16>(&comm, GradDtype::Bf16, transport, 2f64.powi(-8));
        check_type::<f32>(&comm, GradDtype::F32, transport, 2f64.powi(-22));
    }
    // The collective itself, on a plain buffer.
    let me = comm.info().rank;
    let mut v = vec![f16::from_f32(1.0); 5];
    comm.messages().all_reduce_sum(f16::wire(&mut v)).unwrap();
    assert!(v.iter().all(|x| x.to_f32() == comm.info().size as f32));
    // Broadcast and all-gather.
    let mut v: Vec<f32> = (0..5).map(|i| (i + 10 * me) as f32).collect();
    comm.control().broadcast_f32(&mut v, 1).unwrap();
    assert_eq!(v, vec![10.0, 11.0, 12.0, 13.0, 14.0]);
    let ranks = comm.control().all_gather_f64(me as f64).unwrap();
    assert_eq!(ranks, (0..comm.info().size).map(|r| r as f64).collect::<Vec<_>>());
    comm.control().barrier().unwrap();
    common::mark_done(me);
}

/// Parameters registered in a rank-dependent order; gradients that differ per rank.
fn params_for_rank(me: usize) -> Vec<(String, Var)> {
    let shapes: [(&str, &[usize]); 4] =
        [("a.weight", &[3]), ("b.weight", &[7]), ("c.bias", &[2, 2]), ("d.weight", &[5])];
    let mut order: Vec<usize> = (0..shapes.len()).collect();
    order.rotate_left(me % shapes.len());
    if me % 2 == 1 {
        order.reverse();
    }
    order
        .into_iter()
        .map(|i| {
            let (name, shape) = shapes[i];
            (name.to_string(), Var::zeros(shape, DType::F32, &Device::Cpu).unwrap())
        })
        .collect()
}

/// Rank r's gradient of parameter `name` at element i.
fn grad_value(r: usize, name: &str, i: usize) -> f32 {
    (name.len() * 7 + i * 3 + r * 11) as f32 * 0.125 - 2.0
}

fn grads_for(params: &[(String, Var)], me: usize) -> GradStore {
    let mut grads = GradStore::default();
    for (name, var) in params {
        let n = var.elem_count();
        let values: Vec<f32> = (0..n).map(|i| grad_value(me, name, i)).collect();
        grads.insert(var.as_tensor(), Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap());
    }
    grads
}

#[test]
#[ignore = "runs under mpirun, launched by the tests above"]
fn worker_exchange() {
    let comm = Comm::mpi(World::init().unwrap()).unwrap();
    let (me, n) = (comm.info().rank, comm.info().size);
    let params = params_for_rank(me);
    // Buckets of 4 elements: boundaries fall inside a.weight/b.weight and between tensors.
    for (dtype, tol, transport) in [
        (GradDtype::F16, 2e-3, Transport::Auto),
        (GradDtype::F16, 2e-3, Transport::Messages),
        (GradDtype::Bf16, 1.6e-2, Transport::Auto),
        (GradDtype::F32, 1e-6, Transport::Messages),
    ] {
        for bucket_bytes in [4 * dtype.size(), 1 << 20] {
            let mut ex = GradExchange::new(&params, bucket_bytes, dtype, &comm, transport).unwrap();
            assert_eq!(ex.is_shared(), transport == Transport::Auto && n > 1);
            let mut grads = grads_for(&params, me);
            let report = ex.exchange(&mut grads, &comm).unwrap();
            assert!(!report.skipped());
            assert_eq!(report.elements, 3 + 7 + 4 + 5);
            for (name, var) in &params {
                let got: Vec<f32> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                for (i, g) in got.iter().enumerate() {
                    let mean = (0..n).map(|r| grad_value(r, name, i) as f64).sum::<f64>() / n as f64;
                    assert!(
                        (*g as f64 - mean).abs() <= mean.abs() * tol + 1e-3 * tol,
                        "{dtype:?} bucket {bucket_bytes} B: {name}[{i}] = {g}, mean {mean}"
                    );
                }
            }
            ex.release().unwrap();
        }
    }
    // One exchange reused step after step (as the trainer does): a rank that runs
    // ahead must not overwrite results a slower rank is still reading.
    for transport in [Transport::Auto, Transport::Messages] {
        let mut ex = GradExchange::new(&params, 4 * 2, GradDtype::F32, &comm, transport).unwrap();
        for step in 0..6 {
            let mut grads = GradStore::default();
            for (name, var) in &params {
                let v: Vec<f32> =
                    (0..var.elem_count()).map(|i| grad_value(me, name, i) + (step * 100) as f32).collect();
                grads.insert(var.as_tensor(), Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap());
            }
            if me == 0 && step % 2 == 1 {
                std::thread::sleep(Duration::from_millis(30));
            }
            assert!(!ex.exchange(&mut grads, &comm).unwrap().skipped());
            for (name, var) in &params {
                let got: Vec<f32> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
                for (i, g) in got.iter().enumerate() {
                    let mean =
                        (0..n).map(|r| grad_value(r, name, i) as f64).sum::<f64>() / n as f64 + (step * 100) as f64;
                    assert!(
                        (*g as f64 - mean).abs() < 1e-3,
                        "{transport:?} step {step}: {name}[{i}] = {g}, mean {mean}"
                    );
                }
            }
        }
        ex.release().unwrap();
    }
    // Exchange order is by name whatever the registration order.
    let ex = GradExchange::new(&params, 1 << 20, GradDtype::F16, &comm, Transport::Auto).unwrap();
    assert_eq!(ex.names(), ["a.weight", "b.weight", "c.bias", "d.weight"]);
    ex.release().unwrap();
    common::mark_done(me);
}

#[test]
#[ignore = "runs under mpirun, launched by the tests above"]
fn worker_nonfinite() {
    let comm = Comm::mpi(World::init().unwrap()).unwrap();
    let me = comm.info().rank;
    let params = params_for_rank(me);
    for transport in [Transport::Auto, Transport::Messages] {
        nonfinite_with(&comm, &params, transport);
    }
    common::mark_done(me);
}

fn nonfinite_with(comm: &Comm, params: &[(String, Var)], transport: Transport) {
    let (me, n) = (comm.info().rank, comm.info().size);
    let mut ex = GradExchange::new(params, 4 * 2, GradDtype::F16, comm, transport).unwrap();
    let mut grads = grads_for(params, me);
    if me == n - 1 {
        // Too large for f16 even after dividing by the world size: becomes infinity.
        let (_, var) = params.iter().find(|(name, _)| name == "b.weight").unwrap();
        let mut v = vec![1.0f32; 7];
        v[3] = 1e9;
        grads.insert(var.as_tensor(), Tensor::from_vec(v, 7, &Device::Cpu).unwrap());
    }
    let report = ex.exchange(&mut grads, comm).unwrap();
    assert!(
        report.skipped(),
        "rank {me}: the overflow on rank {} was not seen ({transport:?}): {report:?}, shared {}",
        n - 1,
        ex.is_shared()
    );
    assert_eq!(report.nonfinite, 1);
    // No mean was put in: the gradients were consumed by the pack, and a
    // skipped step has nothing to apply.
    for (name, v) in params {
        assert!(grads.get(v.as_tensor()).is_none(), "rank {me}: {name} has a gradient after a skipped exchange");
    }
    // A NaN is caught the same way, and a clean step after it goes through.
    let mut grads = grads_for(params, me);
    if me == 0 {
        let (_, var) = &params[0];
        let mut v: Vec<f32> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        v[0] = f32::NAN;
        grads.insert(var.as_tensor(), Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap());
    }
    assert!(ex.exchange(&mut grads, comm).unwrap().skipped());
    let mut grads = grads_for(params, me);
    assert!(!ex.exchange(&mut grads, comm).unwrap().skipped());
    ex.release().unwrap();
}

//! Pooling gradients against finite differences and an independent slow
//! reference: padding, ceil mode, ties in max pooling, adaptive windows.

use candle_core::{DType, Device, Tensor, Var};
use candle_mpi::ops::pool::{adaptive_avg_pool2d, avg_pool2d, max_pool2d, Pool2d};
use candle_mpi::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Max,
    Avg,
}

/// Output length by counting windows, written apart from the library's formula:
/// floor mode keeps windows that fit the padded input; ceil mode keeps a partial
/// last window as long as it starts inside the input or its left padding.
fn ref_len(n: usize, p: Pool2d) -> usize {
    let (n, k, s, pad) = (n as isize, p.kernel as isize, p.stride as isize, p.padding as isize);
    let mut count = 0;
    for o in 0.. {
        let start = o * s - pad;
        let fits = start + k <= n + pad;
        let partial_ok = p.ceil_mode && start < n + pad - k + s && start < n;
        if fits || partial_ok {
            count += 1;
        } else {
            break;
        }
    }
    count
}

/// Slow pooling over explicit kernel offsets. Returns the output and, for each
/// output cell, the input cells it reads with the weight of each (max: the first
/// maximum gets 1; avg: every covered cell gets 1 / divisor, padding included).
fn ref_pool(x: &[f64], (h, w): (usize, usize), p: Pool2d, mode: Mode) -> (Vec<f64>, Vec<Vec<(usize, f64)>>) {
    let (oh, ow) = (ref_len(h, p), ref_len(w, p));
    let (k, s, pad) = (p.kernel as isize, p.stride as isize, p.padding as isize);
    let mut out = vec![];
    let mut reads = vec![];
    for i in 0..oh as isize {
        for j in 0..ow as isize {
            let mut cells = vec![];
            let mut padded_cells = 0;
            for a in 0..k {
                for b in 0..k {
                    let (r, c) = (i * s - pad + a, j * s - pad + b);
                    let in_padded = r < h as isize + pad && c < w as isize + pad;
                    if in_padded {
                        padded_cells += 1;
                    }
                    if r >= 0 && c >= 0 && r < h as isize && c < w as isize {
                        cells.push(r as usize * w + c as usize);
                    }
                }
            }
            match mode {
                Mode::Max => {
                    let mut best = cells[0];
                    for &c in &cells {
                        if x[c] > x[best] {
                            best = c;
                        }
                    }
                    out.push(x[best]);
                    reads.push(vec![(best, 1.0)]);
                }
                Mode::Avg => {
                    let d = padded_cells as f64;
                    out.push(cells.iter().map(|&c| x[c]).sum::<f64>() / d);
                    reads.push(cells.iter().map(|&c| (c, 1.0 / d)).collect());
                }
            }
        }
    }
    (out, reads)
}

fn pool(x: &Tensor, p: Pool2d, mode: Mode) -> Tensor {
    match mode {
        Mode::Max => max_pool2d(x, p).unwrap(),
        Mode::Avg => avg_pool2d(x, p).unwrap(),
    }
}

/// Distinct values (no ties) at least 0.01 apart, shuffled.
fn distinct_values(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * 0.01 - 1.0).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

fn random_values(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.normal()).collect()
}

const CONFIGS: [(usize, usize, usize, bool); 8] = [
    (3, 2, 0, false),
    (3, 2, 1, false),
    (3, 2, 0, true),
    (3, 1, 1, true),
    (2, 2, 0, true),
    (2, 2, 1, true),
    (3, 3, 1, true),
    (2, 1, 0, false),
];

fn configs() -> Vec<Pool2d> {
    CONFIGS
        .iter()
        .map(|&(k, s, p, c)| {
            let mut pool = Pool2d::new(k, s).padding(p);
            if c {
                pool = pool.ceil();
            }
            pool
        })
        .collect()
}

/// Checks forward and gradient (of sum(out * weights)) against the reference, per plane.
fn check_against_reference(x: &[f64], dims: (usize, usize, usize, usize), p: Pool2d, mode: Mode) {
    let (n, c, h, w) = dims;
    let xv = Var::from_vec(x.to_vec(), (n, c, h, w), &Device::Cpu).unwrap();
    let y = pool(xv.as_tensor(), p, mode);
    let (oh, ow) = (y.dim(2).unwrap(), y.dim(3).unwrap());
    assert_eq!((oh, ow), (ref_len(h, p), ref_len(w, p)), "output size for {p:?} on {h}x{w}");
    let weights = random_values(y.elem_count(), 99);
    let wt = Tensor::from_vec(weights.clone(), y.shape(), &Device::Cpu).unwrap();
    let grads = (&y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
    let got_grad: Vec<f64> = grads.get(xv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let got_out: Vec<f64> = y.flatten_all().unwrap().to_vec1().unwrap();
    for plane in 0..n * c {
        let xp = &x[plane * h * w..(plane + 1) * h * w];
        let (ref_out, reads) = ref_pool(xp, (h, w), p, mode);
        let mut ref_grad = vec![0.0; h * w];
        for (o, cells) in reads.iter().enumerate() {
            for &(cell, weight) in cells {
                ref_grad[cell] += weights[plane * oh * ow + o] * weight;
            }
        }
        for (o, r) in ref_out.iter().enumerate() {
            let g = got_out[plane * oh * ow + o];
            assert!((g - r).abs() < 1e-12, "{mode:?} {p:?} {h}x{w}: output {o} is {g}, reference {r}");
        }
        for (i, r) in ref_grad.iter().enumerate() {
            let g = got_grad[plane * h * w + i];
            assert!((g - r).abs() < 1e-12, "{mode:?} {p:?} {h}x{w}: grad {i} is {g}, reference {r}");
        }
    }
}

#[test]
fn max_and_avg_match_the_reference_with_padding_and_ceil_mode() {
    for p in configs() {
        for (h, w) in [(5, 7), (6, 6), (7, 5), (4, 9)] {
            if ref_len(h, p) == 0 || ref_len(w, p) == 0 {
                continue;
            }
            let dims = (2, 3, h, w);
            let x = distinct_values(2 * 3 * h * w, (h * 31 + w) as u64);
            check_against_reference(&x, dims, p, Mode::Max);
            check_against_reference(&random_values(2 * 3 * h * w, 7), dims, p, Mode::Avg);
        }
    }
}

#[test]
fn max_pool_ties_send_the_gradient_to_the_first_maximum() {
    for p in configs() {
        let (h, w) = (6, 7);
        // Blocks of equal values: every window holds ties.
        let x: Vec<f64> = (0..2 * h * w).map(|i| ((i / w) / 2 + (i % w) / 3) as f64).collect();
        check_against_reference(&x, (1, 2, h, w), p, Mode::Max);
        let flat = vec![1.5; 2 * h * w];
        check_against_reference(&flat, (2, 1, h, w), p, Mode::Max);
    }
}

/// Central differences of L(x) = sum(pool(x) * weights) against the backward pass.
fn check_finite_differences(x: &[f64], dims: (usize, usize, usize, usize), f: &dyn Fn(&Tensor) -> Tensor) {
    let dev = Device::Cpu;
    let xv = Var::from_vec(x.to_vec(), dims, &dev).unwrap();
    let y = f(xv.as_tensor());
    let weights = Tensor::from_vec(random_values(y.elem_count(), 5), y.shape(), &dev).unwrap();
    let loss = |t: &Tensor| -> f64 { (f(t) * &weights).unwrap().sum_all().unwrap().to_scalar().unwrap() };
    let grads = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
    let analytic: Vec<f64> = grads.get(xv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let eps = 1e-6;
    for i in 0..x.len() {
        let mut plus = x.to_vec();
        plus[i] += eps;
        let mut minus = x.to_vec();
        minus[i] -= eps;
        let tp = Tensor::from_vec(plus, dims, &dev).unwrap();
        let tm = Tensor::from_vec(minus, dims, &dev).unwrap();
        let numeric = (loss(&tp) - loss(&tm)) / (2.0 * eps);
        assert!(
            (numeric - analytic[i]).abs() < 1e-6,
            "cell {i}: finite difference {numeric}, backward {}",
            analytic[i]
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    let dims = (1, 2, 7, 6);
    let x = distinct_values(2 * 7 * 6, 11);
    for p in configs() {
        check_finite_differences(&x, dims, &|t| max_pool2d(t, p).unwrap());
        check_finite_differences(&x, dims, &|t| avg_pool2d(t, p).unwrap());
    }
    for (oh, ow) in [(1, 1), (3, 2), (6, 6), (4, 9)] {
        check_finite_differences(&x, dims, &|t| adaptive_avg_pool2d(t, oh, ow).unwrap());
    }
}

#[test]
fn adaptive_average_matches_pytorch_windows() {
    // Each output cell averages rows floor(i*H/oh)..ceil((i+1)*H/oh), same for columns.
    let (h, w) = (5, 13);
    let x = random_values(h * w, 3);
    let t = Tensor::from_vec(x.clone(), (1, 1, h, w), &Device::Cpu).unwrap();
    for (oh, ow) in [(1, 1), (2, 6), (3, 4), (6, 6), (10, 26)] {
        let got: Vec<f64> = adaptive_avg_pool2d(&t, oh, ow).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..oh {
            for j in 0..ow {
                let (r0, r1) = ((i * h) / oh, ((i + 1) * h).div_ceil(oh));
                let (c0, c1) = ((j * w) / ow, ((j + 1) * w).div_ceil(ow));
                let mut sum = 0.0;
                for r in r0..r1 {
                    for c in c0..c1 {
                        sum += x[r * w + c];
                    }
                }
                let expected = sum / ((r1 - r0) * (c1 - c0)) as f64;
                assert!((got[i * ow + j] - expected).abs() < 1e-12, "{oh}x{ow} at ({i},{j})");
            }
        }
    }
}

#[test]
fn agrees_with_candles_own_pooling_where_candle_has_it() {
    // candle implements kernel == stride without padding: a third opinion.
    let x = Tensor::from_vec(random_values(2 * 3 * 8 * 6, 4), (2, 3, 8, 6), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    for k in [1, 2, 3] {
        let ours = max_pool2d(&x, Pool2d::new(k, k)).unwrap();
        let theirs = x.max_pool2d(k).unwrap();
        let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "max pool {k}");
        let ours = avg_pool2d(&x, Pool2d::new(k, k)).unwrap();
        let theirs = x.avg_pool2d(k).unwrap();
        let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "avg pool {k}: {diff}");
    }
}

#[test]
fn refuses_what_it_cannot_pool_with_a_reason() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 1, 2, 2), DType::F32, &dev).unwrap();
    let err = max_pool2d(&x, Pool2d::new(3, 2)).unwrap_err().to_string();
    assert!(err.contains("too small"), "{err}");
    let x3 = Tensor::zeros((1, 4, 4), DType::F32, &dev).unwrap();
    let err = max_pool2d(&x3, Pool2d::new(2, 2)).unwrap_err().to_string();
    assert!(err.contains("(N, C, H, W)"), "{err}");
    let xh = Tensor::zeros((1, 1, 4, 4), DType::F16, &dev).unwrap();
    let err = avg_pool2d(&xh, Pool2d::new(2, 2)).unwrap_err().to_string();
    assert!(err.contains("f32 and f64"), "{err}");
    let err = max_pool2d(&x, Pool2d::new(3, 1).padding(2)).unwrap_err().to_string();
    assert!(err.contains("at most half the kernel"), "{err}");
}

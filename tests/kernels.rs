//! The CUDA kernels of kernels/ held to the Rust CPU ops bit for bit, with
//! no GPU and no CUDA toolkit: each .cu file is compiled as host C++ with g++
//! through tests/kernels/cuda_host.h, which runs a launch grid as loops in
//! one thread, and called through dlopen with the grids the GPU path
//! launches. Random shapes and values with the edge cases that matter: the
//! last partial block, padding, ceil mode, ties, NaN, lengths 0, 1 and odd.
//! A kernel with its index arithmetic changed must fail the same checks
//! (the last test compiles such a copy).

use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor, Var};
use candle_mpi::comm::WireElem;
use candle_mpi::exchange::{pack_scaled, plan::plan_buckets};
use candle_mpi::ops::conv::{col2im_all, im2col_all, Geometry};
use candle_mpi::ops::pool::{
    adaptive_avg_pool2d, adaptive_kernel_windows, avg_pool2d, kernel_windows, max_pool2d, Pool2d,
};
use candle_mpi::rng::Rng;
use half::{bf16, f16};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The harness compiled from `sources` (kernels/ or a mutated copy) and opened.
struct Kernels(*mut c_void);

// SAFETY: the library's functions keep no state between calls but the grid
// variables, which are thread-local (tests/kernels/cuda_host.h).
unsafe impl Send for Kernels {}
// SAFETY: as above.
unsafe impl Sync for Kernels {}

fn compile(sources: &Path, tag: &str) -> Kernels {
    let out = std::env::temp_dir().join(format!("candle-mpi-kernels-{tag}-{}.so", std::process::id()));
    let status = std::process::Command::new("g++")
        .args(["-std=c++17", "-O1", "-ffp-contract=off", "-shared", "-fPIC", "-I"])
        .arg(sources)
        .arg("-I")
        .arg(Path::new(ROOT).join("tests/kernels/include"))
        .arg("-o")
        .arg(&out)
        .arg(Path::new(ROOT).join("tests/kernels/harness.cpp"))
        .status()
        .expect("g++ (Debian's build-essential) compiles the kernels for the host");
    assert!(status.success(), "g++ could not compile the kernels of {}", sources.display());
    let path = CString::new(out.to_str().unwrap()).unwrap();
    // SAFETY: a library this test just built; RTLD_NOW resolves everything up front.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {}", out.display());
    Kernels(handle)
}

fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| compile(&Path::new(ROOT).join("kernels"), "real"))
}

impl Kernels {
    /// The function `name` as type `F`.
    ///
    /// # Safety
    /// `F` must be the function's C signature in tests/kernels/harness.cpp.
    unsafe fn get<F: Copy>(&self, name: &str) -> F {
        let c = CString::new(name).unwrap();
        // SAFETY: a live handle and a NUL-terminated name.
        let f = unsafe { libc::dlsym(self.0, c.as_ptr()) };
        assert!(!f.is_null(), "no {name} in the harness");
        // SAFETY: the caller names the signature; a function pointer is pointer-sized.
        unsafe { std::mem::transmute_copy(&f) }
    }
}

type PoolFwd = unsafe extern "C" fn(*const f32, *mut f32, *const u32, i32, i32, i32, i32, i32, i32, u32);
type PoolBwd = unsafe extern "C" fn(*const f32, *const f32, *mut f32, *const u32, i32, i32, i32, i32, i32, i32, u32);
type Columns = unsafe extern "C" fn(*const f32, *mut f32, i32, i32, i32, i32, i32, i32, i32, i32, i32, u32);
type Pack = unsafe extern "C" fn(*const u64, *const u64, *const u64, i32, *mut c_void, u64, f32, u32);
type Unpack = unsafe extern "C" fn(*const c_void, u64, *mut f32, *const u64, *const u64, i32, *mut u64, u32);

/// The block sizes a launch uses: the GPU path's 1024 (LaunchConfig::for_num_elems),
/// and small ones, so that most elements fall in a last partial block.
const BLOCKS: [u32; 3] = [1024, 7, 64];

/// Values with ties (a few levels repeat) and, when asked, NaN among them.
fn values(rng: &mut Rng, n: usize, nan: bool) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.below(20) {
            0 if nan => f32::NAN,
            r if r < 8 => (rng.below(4) as f32) - 1.5,
            _ => rng.normal() as f32,
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Bits, with every NaN as one: the GPU writes its one NaN (0x7fff) where
/// the host keeps the payload, and no step reads a NaN's payload.
fn bits_any_nan(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| if x.is_nan() { f32::NAN.to_bits() } else { x.to_bits() }).collect()
}

/// One pooling case through the kernels and the CPU op: None where the op
/// refuses the geometry (a window larger than the padded input), else the
/// first difference, if any.
fn pool_case(
    k: &Kernels,
    rng: &mut Rng,
    planes: usize,
    h: usize,
    w: usize,
    pool: Option<Pool2d>,
    is_max: bool,
) -> Option<Option<String>> {
    let nan = is_max && rng.below(3) == 0;
    let x = values(rng, planes * h * w, nan);
    let xv = Var::from_vec(x.clone(), (1, planes, h, w), &Device::Cpu).unwrap();
    let (table, oh, ow) = match pool {
        Some(p) => kernel_windows(h, w, p).ok()?,
        None => {
            let (oh, ow) = (1 + rng.below(h as u64 + 2) as usize, 1 + rng.below(w as u64 + 2) as usize);
            (adaptive_kernel_windows(h, w, oh, ow).ok()?, oh, ow)
        }
    };
    let y = match (pool, is_max) {
        (Some(p), true) => max_pool2d(xv.as_tensor(), p),
        (Some(p), false) => avg_pool2d(xv.as_tensor(), p),
        (None, _) => adaptive_avg_pool2d(xv.as_tensor(), oh, ow),
    }
    .unwrap();
    let gy = values(rng, planes * oh * ow, false);
    let grads = (y.clone() * Tensor::from_vec(gy.clone(), y.shape(), &Device::Cpu).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let cpu_y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    let cpu_gx: Vec<f32> =
        grads.get(xv.as_tensor()).map_or(vec![0.0; x.len()], |g| g.flatten_all().unwrap().to_vec1().unwrap());
    let is_max = is_max && pool.is_some();
    let what = format!("{planes}x{h}x{w} {pool:?} max {is_max}");
    // SAFETY: the signatures of harness.cpp.
    let (fwd, bwd): (PoolFwd, PoolBwd) = unsafe { (k.get("host_pool2d_fwd"), k.get("host_pool2d_bwd")) };
    for block in BLOCKS {
        let (mut ky, mut kgx) = (vec![0f32; cpu_y.len()], vec![0f32; x.len()]);
        let (p, ih, iw, oh, ow, m) = (planes as i32, h as i32, w as i32, oh as i32, ow as i32, i32::from(is_max));
        // SAFETY: every buffer has the length the kernel reads or writes.
        unsafe {
            fwd(x.as_ptr(), ky.as_mut_ptr(), table.as_ptr(), p, ih, iw, oh, ow, m, block);
            bwd(x.as_ptr(), gy.as_ptr(), kgx.as_mut_ptr(), table.as_ptr(), p, ih, iw, oh, ow, m, block);
        }
        if bits(&ky) != bits(&cpu_y) {
            return Some(Some(format!("{what}, block {block}: forward differs")));
        }
        if bits(&kgx) != bits(&cpu_gx) {
            return Some(Some(format!("{what}, block {block}: backward differs")));
        }
    }
    Some(None)
}

/// Pooling over random shapes: kernel, stride, padding and ceil mode as the
/// networks use them and beyond, sides from 1, adaptive windows that
/// overlap and repeat cells.
fn pool_cases(k: &Kernels, count: usize) -> Vec<String> {
    let mut rng = Rng::new(11);
    let (mut wrong, mut ran) = (vec![], 0);
    for case in 0..count {
        let (planes, h, w) = (1 + rng.below(5) as usize, 1 + rng.below(13) as usize, 1 + rng.below(13) as usize);
        let kernel = 1 + rng.below(4) as usize;
        let mut p = Pool2d::new(kernel, 1 + rng.below(3) as usize).padding(rng.below(kernel as u64 / 2 + 1) as usize);
        if rng.below(2) == 0 {
            p = p.ceil();
        }
        let pool = (case % 5 != 4).then_some(p);
        if let Some(outcome) = pool_case(k, &mut rng, planes, h, w, pool, case % 2 == 0) {
            ran += 1;
            wrong.extend(outcome);
        }
    }
    assert!(ran * 4 > count * 3, "only {ran} of {count} pooling geometries could run");
    wrong
}

#[test]
fn pooling_kernels_match_the_cpu_op_bit_for_bit() {
    let wrong = pool_cases(kernels(), 600);
    assert!(wrong.is_empty(), "{} of 600 cases differ:\n{}", wrong.len(), wrong.join("\n"));
}

/// One convolution geometry through the im2col and col2im kernels and the
/// CPU op's: the first difference, if any.
fn columns_case(k: &Kernels, rng: &mut Rng) -> Option<String> {
    let (n, c) = (1 + rng.below(3) as usize, 1 + rng.below(4) as usize);
    let (h, w) = (1 + rng.below(12) as usize, 1 + rng.below(12) as usize);
    let kernel = 1 + rng.below(5) as usize;
    let g = Geometry { kernel, stride: 1 + rng.below(3) as usize, padding: rng.below(kernel as u64 / 2 + 2) as usize };
    if h + 2 * g.padding < kernel || w + 2 * g.padding < kernel {
        return None;
    }
    let (oh, ow) = ((h + 2 * g.padding - kernel) / g.stride + 1, (w + 2 * g.padding - kernel) / g.stride + 1);
    let x = values(rng, n * c * h * w, false);
    let cpu_cols = im2col_all(&x, (n, c, h, w), g);
    let dcols = values(rng, cpu_cols.len(), false);
    let cpu_dx = col2im_all(&dcols, (n, c, h, w), g);
    // SAFETY: the signatures of harness.cpp.
    let (im2col, col2im): (Columns, Columns) = unsafe { (k.get("host_im2col"), k.get("host_col2im")) };
    let what = format!("{n}x{c}x{h}x{w} {g:?}");
    let arg = |v: usize| v as i32;
    for block in BLOCKS {
        let (mut cols, mut dx) = (vec![f32::NAN; cpu_cols.len()], vec![f32::NAN; cpu_dx.len()]);
        let (a, b, cc, d) = (arg(n), arg(c), arg(h), arg(w));
        let (kk, s, p, o1, o2) = (arg(kernel), arg(g.stride), arg(g.padding), arg(oh), arg(ow));
        // SAFETY: every buffer has the length the kernel reads or writes.
        unsafe {
            im2col(x.as_ptr(), cols.as_mut_ptr(), a, b, cc, d, kk, s, p, o1, o2, block);
            col2im(dcols.as_ptr(), dx.as_mut_ptr(), a, b, cc, d, kk, s, p, o1, o2, block);
        }
        if bits(&cols) != bits(&cpu_cols) {
            return Some(format!("{what}, block {block}: im2col differs"));
        }
        if bits(&dx) != bits(&cpu_dx) {
            return Some(format!("{what}, block {block}: col2im differs"));
        }
    }
    None
}

/// `count` geometries: kernels 1 to 5, strides 1 to 3, padding up to past
/// half the kernel, sides from 1.
fn columns_cases(k: &Kernels, count: usize) -> Vec<String> {
    let mut rng = Rng::new(13);
    (0..count).filter_map(|_| columns_case(k, &mut rng)).collect()
}

#[test]
fn im2col_and_col2im_kernels_match_the_cpu_op_bit_for_bit() {
    let wrong = columns_cases(kernels(), 500);
    assert!(wrong.is_empty(), "{} of 500 cases differ:\n{}", wrong.len(), wrong.join("\n"));
}

/// A bucket made of pieces of several gradients, as the exchange plans it:
/// (gradients, pieces of the one bucket checked).
fn bucket_case(rng: &mut Rng) -> (Vec<Vec<f32>>, Vec<candle_mpi::exchange::plan::Piece>) {
    let sizes: Vec<usize> = (0..1 + rng.below(5)).map(|_| rng.below(40) as usize).collect();
    let total: usize = sizes.iter().sum();
    let plan = plan_buckets(&sizes, 1 + rng.below(total.max(1) as u64) as usize);
    let grads = sizes
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| match rng.below(30) {
                    0 => f32::NAN,
                    1 => 1e9,
                    2 => 65519.0,
                    _ => rng.normal() as f32 * 100.0,
                })
                .collect()
        })
        .collect();
    let pieces = plan.get(rng.below(plan.len().max(1) as u64) as usize).cloned().unwrap_or_default();
    (grads, pieces)
}

/// Pack and unpack of one bucket in wire type `T` through the kernels and the
/// host exchange. The buckets are compared as f32 (each wire value has one
/// f32, so this is the wire's bits), NaN as one.
fn exchange_case<T: WireElem>(k: &Kernels, rng: &mut Rng) -> Option<String> {
    let (grads, pieces) = bucket_case(rng);
    let len: usize = pieces.iter().map(|p| p.len).sum();
    let scale = [1.0f32, 0.5, 0.125][rng.below(3) as usize];
    let wire_bits = |bucket: &[T]| {
        let mut wide = vec![0f32; bucket.len()];
        T::to_f32(bucket, &mut wide);
        bits_any_nan(&wide)
    };
    // The host exchange: each piece packed where it goes, then the bucket read back.
    let mut host = vec![T::default(); len];
    for p in &pieces {
        pack_scaled(
            &grads[p.param][p.param_offset..p.param_offset + p.len],
            scale,
            &mut host[p.bucket_offset..p.bucket_offset + p.len],
        );
    }
    let mut host_out: Vec<Vec<f32>> = grads.iter().map(|g| vec![0f32; g.len()]).collect();
    let mut host_bad = 0;
    for p in &pieces {
        let dst = &mut host_out[p.param][p.param_offset..p.param_offset + p.len];
        host_bad += T::unpack_counting(&host[p.bucket_offset..p.bucket_offset + p.len], dst);
    }
    // SAFETY: the signatures of harness.cpp.
    let (pack, unpack): (Pack, Unpack) =
        unsafe { (k.get(&format!("host_pack_{}", T::NAME)), k.get(&format!("host_unpack_{}", T::NAME))) };
    let srcs: Vec<u64> = pieces.iter().map(|p| grads[p.param].as_ptr() as u64).collect();
    let offs: Vec<u64> = pieces.iter().map(|p| p.param_offset as u64).collect();
    let at: Vec<u64> = pieces.iter().map(|p| p.bucket_offset as u64).collect();
    // The unpacked gradients lie one after another in one buffer.
    let starts: Vec<usize> = grads.iter().scan(0, |at, g| Some(std::mem::replace(at, *at + g.len()))).collect();
    let out_off: Vec<u64> = pieces.iter().map(|p| (starts[p.param] + p.param_offset) as u64).collect();
    let what = format!("{} {} pieces, {len} elements, scale {scale}", T::NAME, pieces.len());
    for block in BLOCKS {
        let mut bucket = vec![T::default(); len];
        let mut flat = vec![0f32; grads.iter().map(Vec::len).sum()];
        let mut bad = 0u64;
        let n = pieces.len() as i32;
        let wire = bucket.as_mut_ptr() as *mut c_void;
        // SAFETY: the tables point into live buffers of the lengths the pieces give.
        unsafe {
            pack(srcs.as_ptr(), offs.as_ptr(), at.as_ptr(), n, wire, len as u64, scale, block);
            unpack(wire, len as u64, flat.as_mut_ptr(), out_off.as_ptr(), at.as_ptr(), n, &mut bad, block);
        }
        let out: Vec<&[f32]> = grads.iter().zip(&starts).map(|(g, &s)| &flat[s..s + g.len()]).collect();
        if wire_bits(&bucket) != wire_bits(&host) {
            return Some(format!("{what}, block {block}: pack differs"));
        }
        if out.iter().zip(&host_out).any(|(a, b)| bits_any_nan(a) != bits_any_nan(b)) || bad as usize != host_bad {
            return Some(format!("{what}, block {block}: unpack differs ({bad} against {host_bad} non-finite)"));
        }
    }
    None
}

/// `count` buckets in each wire type.
fn exchange_cases(k: &Kernels, count: usize) -> Vec<String> {
    let mut rng = Rng::new(12);
    (0..count)
        .flat_map(|_| {
            [exchange_case::<f16>(k, &mut rng), exchange_case::<bf16>(k, &mut rng), exchange_case::<f32>(k, &mut rng)]
        })
        .flatten()
        .collect()
}

#[test]
fn pack_and_unpack_kernels_match_the_host_exchange_bit_for_bit() {
    let wrong = exchange_cases(kernels(), 400);
    assert!(wrong.is_empty(), "{} of 3 x 400 cases differ:\n{}", wrong.len(), wrong.join("\n"));
}

/// The checks can fail: copies of the kernels with one index computation
/// changed (a pooling output's row, a piece's offset in the bucket, a
/// column's input position) are
/// caught by the same cases.
#[test]
fn a_kernel_with_wrong_index_arithmetic_is_caught() {
    let dir = std::env::temp_dir().join(format!("candle-mpi-mutated-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mutate = |file: &str, from: &str, to: &str| {
        let text = std::fs::read_to_string(Path::new(ROOT).join("kernels").join(file)).unwrap();
        assert!(text.contains(from), "{file} no longer holds `{from}`: update this test");
        std::fs::write(dir.join(file), text.replacen(from, to, 1)).unwrap();
    };
    mutate("pool.cu", "int o_h = (idx / ow) % oh;", "int o_h = (idx / oh) % oh;");
    mutate("pack.cu", "src[src_off[k] + (at - bucket_off[k])]", "src[src_off[k] + (at - bucket_off[0])]");
    mutate("conv.cu", "int ix = ox * stride + kj - padding;", "int ix = ox * stride + kj;");
    let k = compile(&dir, "mutated");
    assert!(!pool_cases(&k, 200).is_empty(), "a pooling kernel indexing rows by the wrong size passed");
    assert!(!exchange_cases(&k, 200).is_empty(), "a pack kernel offsetting pieces from the first piece passed");
    assert!(!columns_cases(&k, 200).is_empty(), "an im2col kernel ignoring the left padding passed");
    let _: PathBuf = dir.clone();
    std::fs::remove_dir_all(&dir).unwrap();
}

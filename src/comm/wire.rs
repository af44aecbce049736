//! Element types that travel between ranks, their conversions to f32, and
//! the data plane's one call on a buffer of them (`Reduce`).

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use mpi::datatype::Equivalence;
use serde::Serialize;

/// The type gradients travel in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GradDtype {
    F16,
    Bf16,
    F32,
}

impl GradDtype {
    pub fn size(self) -> usize {
        match self {
            GradDtype::F16 | GradDtype::Bf16 => 2,
            GradDtype::F32 => 4,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            GradDtype::F16 => "f16",
            GradDtype::Bf16 => "bf16",
            GradDtype::F32 => "f32",
        }
    }
}

/// A buffer to all-reduce, in one of the wire types.
pub enum WireBuf<'a> {
    F16(&'a mut [f16]),
    Bf16(&'a mut [bf16]),
    F32(&'a mut [f32]),
}

/// The data plane for host memory: sums of wire buffers over all ranks.
pub trait Reduce {
    /// Sums `buf` element-wise over all ranks, in place, every rank calling
    /// with the same length in the same order; every rank ends with the same
    /// bits. Half-precision sums are accumulated in f32 and rounded once.
    fn all_reduce_sum(&self, buf: WireBuf<'_>) -> anyhow::Result<()>;
}

/// A type gradients travel in. Conversions work on slices so that half's SIMD
/// paths (F16C on x86) do the work.
pub trait WireElem: Copy + Default + Send + Sync + 'static {
    /// The type MPI moves (MPI has no half-precision type: f16 and bf16 travel as u16).
    type Raw: Equivalence + Copy + Default;
    const NAME: &'static str;
    fn raw(s: &[Self]) -> &[Self::Raw];
    fn raw_mut(s: &mut [Self]) -> &mut [Self::Raw];
    fn from_raw_mut(s: &mut [Self::Raw]) -> &mut [Self];
    fn to_f32(src: &[Self], dst: &mut [f32]);
    fn from_f32(src: &[f32], dst: &mut [Self]);
    /// Elements that are infinite or NaN.
    fn count_nonfinite(s: &[Self]) -> usize;
    /// Whether any element is infinite or NaN: a max over the magnitude bits,
    /// which vectorises, so the common all-finite case costs little.
    fn has_nonfinite(s: &[Self]) -> bool;
    /// The buffer as the collectives take it.
    fn wire(s: &mut [Self]) -> WireBuf<'_>;

    /// dst = round(sum of srcs in f32, in order). Portable: in cache-sized blocks.
    fn sum_into(srcs: &[&[Self]], dst: &mut [Self]) {
        const BLOCK: usize = 2048;
        let mut acc = [0f32; BLOCK];
        let mut tmp = [0f32; BLOCK];
        for start in (0..dst.len()).step_by(BLOCK) {
            let l = BLOCK.min(dst.len() - start);
            for (q, s) in srcs.iter().enumerate() {
                if q == 0 {
                    Self::to_f32(&s[start..start + l], &mut acc[..l]);
                } else {
                    Self::to_f32(&s[start..start + l], &mut tmp[..l]);
                    for (a, t) in acc[..l].iter_mut().zip(&tmp[..l]) {
                        *a += *t;
                    }
                }
            }
            Self::from_f32(&acc[..l], &mut dst[start..start + l]);
        }
    }

    /// dst = f32(src); returns how many are infinite or NaN. Portable: one
    /// conversion call, then a vectorised check of the source's bits.
    fn unpack_counting(src: &[Self], dst: &mut [f32]) -> usize {
        Self::to_f32(src, dst);
        if Self::has_nonfinite(src) {
            Self::count_nonfinite(src)
        } else {
            0
        }
    }

    /// dst = round(src * scale). Portable: in cache-sized blocks.
    fn pack_scaled(src: &[f32], scale: f32, dst: &mut [Self]) {
        const BLOCK: usize = 2048;
        assert_eq!(src.len(), dst.len());
        if scale == 1.0 {
            return Self::from_f32(src, dst);
        }
        let mut tmp = [0f32; BLOCK];
        for (s, d) in src.chunks(BLOCK).zip(dst.chunks_mut(BLOCK)) {
            for (t, v) in tmp.iter_mut().zip(s) {
                *t = v * scale;
            }
            Self::from_f32(&tmp[..s.len()], d);
        }
    }
}

/// What f16 and bf16 share: 16-bit storage, MPI moves them as u16, half's
/// slice conversions, and a non-finite test on the exponent bits.
macro_rules! half_wire_common {
    ($variant:ident, $name:literal, $exponent:literal) => {
        fn wire(s: &mut [Self]) -> WireBuf<'_> {
            WireBuf::$variant(s)
        }
        type Raw = u16;
        const NAME: &'static str = $name;
        fn raw(s: &[Self]) -> &[u16] {
            s.reinterpret_cast()
        }
        fn raw_mut(s: &mut [Self]) -> &mut [u16] {
            s.reinterpret_cast_mut()
        }
        fn from_raw_mut(s: &mut [u16]) -> &mut [Self] {
            s.reinterpret_cast_mut()
        }
        fn to_f32(src: &[Self], dst: &mut [f32]) {
            src.convert_to_f32_slice(dst)
        }
        fn from_f32(src: &[f32], dst: &mut [Self]) {
            dst.convert_from_f32_slice(src)
        }
        fn count_nonfinite(s: &[Self]) -> usize {
            // Exponent all ones: infinity or NaN.
            Self::raw(s).iter().filter(|&&b| b & $exponent == $exponent).count()
        }
        fn has_nonfinite(s: &[Self]) -> bool {
            Self::raw(s).iter().map(|&b| (b & 0x7fff) as i16).max().unwrap_or(0) >= $exponent
        }
    };
}

impl WireElem for f16 {
    half_wire_common!(F16, "f16", 0x7c00);
    // Fused F16C kernels where the CPU has them (f16 is the default wire type).
    fn sum_into(srcs: &[&[Self]], dst: &mut [Self]) {
        if !super::simd::sum_f16(srcs, dst) {
            portable_sum(srcs, dst)
        }
    }
    fn unpack_counting(src: &[Self], dst: &mut [f32]) -> usize {
        match super::simd::unpack_f16(src, dst) {
            Some(bad) => bad,
            None => {
                src.convert_to_f32_slice(dst);
                Self::count_nonfinite(src)
            }
        }
    }
    fn pack_scaled(src: &[f32], scale: f32, dst: &mut [Self]) {
        if !super::simd::pack_f16(src, scale, dst) {
            assert_eq!(src.len(), dst.len());
            let scaled: Vec<f32> = src.iter().map(|v| v * scale).collect();
            dst.convert_from_f32_slice(&scaled);
        }
    }
}

impl WireElem for bf16 {
    half_wire_common!(Bf16, "bf16", 0x7f80);
}

impl WireElem for f32 {
    fn wire(s: &mut [Self]) -> WireBuf<'_> {
        WireBuf::F32(s)
    }
    type Raw = f32;
    const NAME: &'static str = "f32";
    fn raw(s: &[Self]) -> &[f32] {
        s
    }
    fn raw_mut(s: &mut [Self]) -> &mut [f32] {
        s
    }
    fn from_raw_mut(s: &mut [f32]) -> &mut [Self] {
        s
    }
    fn to_f32(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src)
    }
    fn from_f32(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src)
    }
    fn count_nonfinite(s: &[Self]) -> usize {
        s.iter().filter(|v| !v.is_finite()).count()
    }
    fn has_nonfinite(s: &[Self]) -> bool {
        s.iter().map(|v| (v.to_bits() & 0x7fff_ffff) as i32).max().unwrap_or(0) >= 0x7f80_0000
    }
}

/// The portable sum, for f16 on CPUs without F16C.
fn portable_sum(srcs: &[&[f16]], dst: &mut [f16]) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = f16::from_f32(srcs.iter().fold(0.0f32, |a, s| a + s[i].to_f32()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonfinite_is_found_in_every_wire_type() {
        let h = [f16::from_f32(1.0), f16::INFINITY, f16::NAN, f16::MAX, f16::NEG_INFINITY];
        assert_eq!(f16::count_nonfinite(&h), 3);
        let b = [bf16::from_f32(1.0), bf16::INFINITY, bf16::MAX, bf16::NAN];
        assert_eq!(bf16::count_nonfinite(&b), 2);
        let f = [1.0f32, f32::NAN, f32::MAX];
        assert_eq!(f32::count_nonfinite(&f), 1);
        assert!(f16::has_nonfinite(&h) && bf16::has_nonfinite(&b) && f32::has_nonfinite(&f));
        assert!(!f16::has_nonfinite(&[f16::MAX, f16::MIN, f16::from_f32(-0.0)]));
        assert!(!bf16::has_nonfinite(&[bf16::MAX, bf16::MIN]));
        assert!(!f32::has_nonfinite(&[f32::MAX, f32::MIN, -0.0]));
        assert!(f32::has_nonfinite(&[f32::NEG_INFINITY]) && f16::has_nonfinite(&[f16::NEG_INFINITY]));
        // 70000 does not fit in f16: it becomes infinity and is caught.
        let mut out = [f16::ZERO; 2];
        <f16 as WireElem>::from_f32(&[70000.0, 65504.0], &mut out);
        assert_eq!(f16::count_nonfinite(&out), 1);
    }
}

//! Fused f16 kernels for x86-64 with F16C (every x86 CPU since 2012), chosen at
//! run time; other machines use the portable slice conversions of `half`.
//!
//! The arithmetic is the same as the portable path, lane by lane: widen to f32,
//! add in rank order, round to nearest even once. So both paths give the same
//! bits; the fused one makes one pass where the portable one makes four.

use half::f16;

#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    use std::sync::OnceLock;
    static F16C: OnceLock<bool> = OnceLock::new();
    *F16C.get_or_init(|| is_x86_feature_detected!("avx") && is_x86_feature_detected!("f16c"))
}

/// dst[i] = f16(src_0[i] + src_1[i] + ...), summed in f32 in the order given.
/// Returns false (and does nothing) where the CPU lacks F16C.
pub fn sum_f16(srcs: &[&[f16]], dst: &mut [f16]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() && !srcs.is_empty() {
        assert!(srcs.iter().all(|s| s.len() == dst.len()));
        // SAFETY: the CPU has AVX and F16C (checked above); lengths are equal.
        unsafe { sum_f16_avx(srcs, dst) };
        return true;
    }
    let _ = (srcs, dst);
    false
}

/// dst[i] = f16(src[i] * scale). Returns false where the CPU lacks F16C.
pub fn pack_f16(src: &[f32], scale: f32, dst: &mut [f16]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        assert_eq!(src.len(), dst.len());
        // SAFETY: as above.
        unsafe { pack_f16_avx(src, scale, dst) };
        return true;
    }
    let _ = (src, scale, dst);
    false
}

/// dst[i] = f32(src[i]); returns how many are infinite or NaN, or None where
/// the CPU lacks F16C.
pub fn unpack_f16(src: &[f16], dst: &mut [f32]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        assert_eq!(src.len(), dst.len());
        // SAFETY: as above.
        let flagged = unsafe { unpack_f16_avx(src, dst) };
        return Some(if flagged { src.iter().filter(|h| !h.is_finite()).count() } else { 0 });
    }
    let _ = (src, dst);
    None
}

/// Widens and stores; returns whether any source had an all-ones exponent.
///
/// # Safety
/// The CPU has AVX and F16C, and `src` is as long as `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn unpack_f16_avx(src: &[f16], dst: &mut [f32]) -> bool {
    use std::arch::x86_64::*;
    let n = dst.len();
    let body = n - n % 8;
    let exp = _mm_set1_epi16(0x7c00);
    let mut flags = _mm_setzero_si128();
    let mut i = 0;
    while i < body {
        // SAFETY: i + 8 <= n = src.len(): eight f16 (16 bytes) lie in src.
        let h = unsafe { _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i) };
        flags = _mm_or_si128(flags, _mm_cmpeq_epi16(_mm_and_si128(h, exp), exp));
        // SAFETY: i + 8 <= n = dst.len(): eight f32 lie in dst.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h)) };
        i += 8;
    }
    let mut flagged = _mm_movemask_epi8(flags) != 0;
    for j in body..n {
        dst[j] = src[j].to_f32();
        flagged |= !src[j].is_finite();
    }
    flagged
}

/// # Safety
/// The CPU has AVX and F16C, and every source is as long as `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn sum_f16_avx(srcs: &[&[f16]], dst: &mut [f16]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    let body = n - n % 8;
    let mut i = 0;
    while i < body {
        // SAFETY: i + 8 <= n, and every source holds n elements: eight f16
        // (16 bytes) lie in each; the same below.
        let mut acc = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(srcs[0].as_ptr().add(i) as *const __m128i) });
        for s in &srcs[1..] {
            // SAFETY: as above.
            acc = _mm256_add_ps(acc, _mm256_cvtph_ps(unsafe { _mm_loadu_si128(s.as_ptr().add(i) as *const __m128i) }));
        }
        // SAFETY: as above, for dst.
        unsafe {
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(acc))
        };
        i += 8;
    }
    for j in body..n {
        let mut acc = srcs[0][j].to_f32();
        for s in &srcs[1..] {
            acc += s[j].to_f32();
        }
        dst[j] = f16::from_f32(acc);
    }
}

/// # Safety
/// The CPU has AVX and F16C, and `src` is as long as `dst`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn pack_f16_avx(src: &[f32], scale: f32, dst: &mut [f16]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    let body = n - n % 8;
    let s = _mm256_set1_ps(scale);
    let mut i = 0;
    while i < body {
        // SAFETY: i + 8 <= n = src.len(): eight f32 lie in src.
        let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(src.as_ptr().add(i)) }, s);
        // SAFETY: i + 8 <= n = dst.len(): eight f16 (16 bytes) lie in dst.
        unsafe {
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
        };
        i += 8;
    }
    for j in body..n {
        dst[j] = f16::from_f32(src[j] * scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The fused kernels give exactly the portable path's bits, overflow included.
    #[test]
    fn fused_matches_portable_bit_for_bit() {
        let mut rng = Rng::new(8);
        for len in [0usize, 1, 7, 8, 9, 1000, 4099] {
            let ranks: Vec<Vec<f16>> =
                (0..3).map(|_| (0..len).map(|_| f16::from_f64(rng.normal() * 3000.0)).collect()).collect();
            let srcs: Vec<&[f16]> = ranks.iter().map(|r| r.as_slice()).collect();
            let mut fused = vec![f16::ZERO; len];
            if !sum_f16(&srcs, &mut fused) {
                return; // no F16C here: nothing to compare
            }
            let portable: Vec<f16> =
                (0..len).map(|i| f16::from_f32(srcs.iter().fold(0.0f32, |a, s| a + s[i].to_f32()))).collect();
            assert_eq!(
                fused.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
                portable.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
                "sum, len {len}"
            );

            let f: Vec<f32> = (0..len).map(|_| (rng.normal() * 1e5) as f32).collect();
            let mut fused = vec![f16::ZERO; len];
            assert!(pack_f16(&f, 0.3, &mut fused));
            let portable: Vec<u16> = f.iter().map(|v| f16::from_f32(v * 0.3).to_bits()).collect();
            assert_eq!(fused.iter().map(|h| h.to_bits()).collect::<Vec<_>>(), portable, "pack, len {len}");

            // Unpack, with the non-finite count (1e5 * 0.3 overflows f16 often).
            let mut back = vec![0f32; len];
            let bad = unpack_f16(&fused, &mut back).unwrap();
            assert_eq!(bad, fused.iter().filter(|h| !h.is_finite()).count(), "count, len {len}");
            for (b, h) in back.iter().zip(&fused) {
                assert!(b.to_bits() == h.to_f32().to_bits() || (b.is_nan() && h.is_nan()), "unpack, len {len}");
            }
        }
    }
}

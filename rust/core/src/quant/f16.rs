//! IEEE half-precision conversions inlined into the kernels' loops (bit-exact with `half`, which
//! is used elsewhere; its generic path is too slow for per-element use in inner loops).

#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    if exp == 0 {
        let v = man as f32 * (1.0 / 16_777_216.0); // man * 2^-24, exact
        return if sign != 0 { -v } else { v };
    }
    if exp == 31 {
        return f32::from_bits(sign | 0x7f80_0000 | (man << 13));
    }
    f32::from_bits(sign | ((exp + 112) << 23) | (man << 13))
}

/// Round to nearest, ties to even (what F16C's vcvtps2ph does by default).
#[inline(always)]
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign
            | 0x7c00
            | if man != 0 {
                0x200 | (man >> 13) as u16
            } else {
                0
            };
    }
    let e = exp - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let mut r = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        if rem > halfway || (rem == halfway && (r & 1) == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && (r & 1) == 1) {
        r += 1;
    }
    sign | r as u16
}

#[inline(always)]
pub fn round_f16(x: f32) -> f32 {
    f16_to_f32(f32_to_f16(x))
}

/// Little-endian f16 values (`src`, two bytes each) widened to f32, with F16C where the CPU has it.
pub fn widen_f16(src: &[u8], dst: &mut [f32]) {
    let n = (src.len() / 2).min(dst.len());
    #[allow(unused_mut)]
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd_level() != crate::cpu::SimdLevel::Scalar {
        // SAFETY: F16C and AVX are present whenever the level is not Scalar.
        i = unsafe { widen_f16c(&src[..2 * n], &mut dst[..n]) };
    }
    for j in i..n {
        dst[j] = f16_to_f32(u16::from_le_bytes([src[2 * j], src[2 * j + 1]]));
    }
}

/// Whole groups of eight; returns how many values were done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16c(src: &[u8], dst: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let n = dst.len().min(src.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    i
}

/// `src` narrowed to little-endian f16 (`dst`, two bytes each; round to nearest even, as
/// `f32_to_f16`), with F16C where the CPU has it.
pub fn narrow_f16(src: &[f32], dst: &mut [u8]) {
    let n = src.len().min(dst.len() / 2);
    #[allow(unused_mut)]
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd_level() != crate::cpu::SimdLevel::Scalar {
        // SAFETY: F16C and AVX are present whenever the level is not Scalar.
        i = unsafe { narrow_f16c(&src[..n], &mut dst[..2 * n]) };
    }
    for j in i..n {
        dst[2 * j..2 * j + 2].copy_from_slice(&f32_to_f16(src[j]).to_le_bytes());
    }
}

/// Whole groups of eight; returns how many values were done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn narrow_f16c(src: &[f32], dst: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
        _mm_storeu_si128(dst.as_mut_ptr().add(2 * i) as *mut __m128i, h);
        i += 8;
    }
    i
}

/// `x` rounded to the nearest f16 (ties to even) and back into `out`, with F16C where the CPU
/// has it (`vcvtps2ph` with round-to-nearest-even, as ggml converts activations).
pub fn round_f16_into(x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.reserve(x.len());
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd_level() != crate::cpu::SimdLevel::Scalar {
        let whole = x.len() / 8 * 8;
        // SAFETY: F16C and AVX are present whenever the level is not Scalar; the kernel
        // writes the first `whole` values of the capacity, which then hold initialized f32s.
        unsafe {
            round_f16c(&x[..whole], out.as_mut_ptr());
            out.set_len(whole);
        }
    }
    let done = out.len();
    out.extend(x[done..].iter().map(|&v| round_f16(v)));
}

/// Groups of eight (`src.len()` a multiple of 8) into `dst`, which has room for them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn round_f16c(src: &[f32], dst: *mut f32) {
    use std::arch::x86_64::*;
    let mut i = 0;
    while i + 8 <= src.len() {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
        _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// Every finite f32 exponent, both signs, with mantissas around the f16 rounding points
    /// and ties.
    fn rounding_points() -> Vec<f32> {
        let mut x = Vec::new();
        for e in 0..255u32 {
            for m in [
                0u32, 1, 0x0fff, 0x1000, 0x1001, 0x2000, 0x3000, 0x7f_e000, 0x7f_f000, 0x7f_ffff,
            ] {
                x.push(f32::from_bits((e << 23) | m));
                x.push(-f32::from_bits((e << 23) | m));
            }
        }
        x
    }

    #[test]
    fn narrowing_with_f16c_is_the_scalar_rounding() {
        // The rounding points, the infinities, and a length off a multiple of eight.
        let mut x = rounding_points();
        x.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            65504.0,
            65519.0,
            65520.0,
            1e-8,
            3e-5,
        ]);
        let mut got = vec![0u8; 2 * x.len()];
        narrow_f16(&x, &mut got);
        for (i, v) in x.iter().enumerate() {
            let g = u16::from_le_bytes([got[2 * i], got[2 * i + 1]]);
            assert_eq!(g, f32_to_f16(*v), "{v:e}");
        }
    }

    #[test]
    fn rounding_with_f16c_is_the_scalar_rounding() {
        let x = rounding_points();
        let mut got = Vec::new();
        round_f16_into(&x, &mut got);
        for (v, g) in x.iter().zip(&got) {
            assert_eq!(g.to_bits(), round_f16(*v).to_bits(), "{v:e}");
        }
    }

    #[test]
    fn matches_half_exhaustively() {
        for h in 0..=u16::MAX {
            let a = f16_to_f32(h);
            let b = f16::from_bits(h).to_f32();
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{h:#x}"
            );
        }
        let mut s = 0x1234_5678u32;
        for i in 0..2_000_000u32 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let x = if i % 4 == 0 {
                f32::from_bits(s)
            } else {
                (s as f32 / u32::MAX as f32 - 0.5) * 1e-3 * (i % 7) as f32
            };
            let a = f32_to_f16(x);
            let b = f16::from_f32(x).to_bits();
            assert!(
                a == b || (x.is_nan() && (a & 0x7c00) == 0x7c00),
                "{x:e}: {a:#x} vs {b:#x}"
            );
        }
    }
}

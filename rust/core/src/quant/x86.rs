//! AVX2 versions of the hot 32-block dots. Same integer lane sums, the same fused accumulation
//! and the same final pairwise sum as the portable code in `dot.rs` (and as ggml's AVX2 kernels),
//! so every level returns identical results; only the speed differs.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::dot::Block;
use super::q8::Q8Row;

#[inline(always)]
unsafe fn hsum_f32_8(x: __m256) -> f32 {
    let r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    let r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// Eight i32 lanes, lane j = Σ_{k<4} u[4j+k]·s[4j+k] (u unsigned bytes, s signed), as f32.
#[inline(always)]
unsafe fn mul_sum_us8(u: __m256i, s: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(u, s);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
}

#[inline(always)]
unsafe fn mul_sum_i8(x: __m256i, y: __m256i) -> __m256 {
    mul_sum_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(b, _mm256_set1_epi8(0x0f))
}

#[inline(always)]
unsafe fn f16le(b: &[u8], i: usize) -> f32 {
    let h = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0(w: &[u8], x: &Q8Row) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let d = _mm256_set1_ps(f16le(blk, 0) * x.d[b]);
        let qx = _mm256_loadu_si256(blk.as_ptr().add(2) as *const __m256i);
        let qy = _mm256_loadu_si256(x.q.as_ptr().add(b * 32) as *const __m256i);
        acc = _mm256_fmadd_ps(d, mul_sum_i8(qx, qy), acc);
    }
    hsum_f32_8(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1(w: &[u8], x: &Q8Row) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (b, blk) in w.chunks_exact(20).enumerate() {
        summs += f16le(blk, 2) * x.s[b];
        let d = _mm256_set1_ps(f16le(blk, 0) * x.d[b]);
        let qx = nibbles(blk.as_ptr().add(4));
        let qy = _mm256_loadu_si256(x.q.as_ptr().add(b * 32) as *const __m256i);
        acc = _mm256_fmadd_ps(d, mul_sum_us8(qx, qy), acc);
    }
    hsum_f32_8(acc) + summs
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0(w: &[u8], x: &Q8Row) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, blk) in w.chunks_exact(18).enumerate() {
        let d = _mm256_set1_ps(f16le(blk, 0) * x.d[b]);
        let qx = _mm256_sub_epi8(nibbles(blk.as_ptr().add(2)), _mm256_set1_epi8(8));
        let qy = _mm256_loadu_si256(x.q.as_ptr().add(b * 32) as *const __m256i);
        acc = _mm256_fmadd_ps(d, mul_sum_i8(qx, qy), acc);
    }
    hsum_f32_8(acc)
}

/// Bytes 0xFF where bit i of `bits` is set, for i in 0..32.
#[inline(always)]
unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
    let mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, mask), _mm256_set1_epi64x(-1))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_0(w: &[u8], x: &Q8Row) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, blk) in w.chunks_exact(22).enumerate() {
        let d = _mm256_set1_ps(f16le(blk, 0) * x.d[b]);
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        let hi = _mm256_andnot_si256(bytes_from_bits(qh), _mm256_set1_epi8(0xF0u8 as i8));
        let qx = _mm256_or_si256(nibbles(blk.as_ptr().add(6)), hi);
        let qy = _mm256_loadu_si256(x.q.as_ptr().add(b * 32) as *const __m256i);
        acc = _mm256_fmadd_ps(d, mul_sum_i8(qx, qy), acc);
    }
    hsum_f32_8(acc)
}

/// A weight row already unpacked to int8 blocks (prefill reuses it for every token).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_unpacked(blocks: &[Block], x: &Q8Row) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (b, blk) in blocks.iter().enumerate() {
        if let Some(m) = blk.m {
            summs += m * x.s[b];
        }
        let dv = _mm256_set1_ps(blk.d * x.d[b]);
        let qx = _mm256_loadu_si256(blk.q.as_ptr() as *const __m256i);
        let qy = _mm256_loadu_si256(x.q.as_ptr().add(b * 32) as *const __m256i);
        acc = _mm256_fmadd_ps(dv, mul_sum_i8(qx, qy), acc);
    }
    hsum_f32_8(acc) + summs
}

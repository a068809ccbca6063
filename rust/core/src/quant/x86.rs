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

// ---- AVX-512 (VNNI): two blocks per 512-bit register for the integer work, then one 8-lane FMA
// per block in block order, so the float rounding is the same as the AVX2 code above.

/// Sixteen i32 lanes of Σ_{k<4} w[4j+k]·y[4j+k] for signed w and y (|w|, y with w's sign).
#[inline(always)]
unsafe fn dot_i8x64(w: __m512i, y: __m512i) -> __m512 {
    let neg = _mm512_movepi8_mask(w);
    let ys = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
    _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(
        _mm512_setzero_si512(),
        _mm512_abs_epi8(w),
        ys,
    ))
}

/// Sixteen i32 lanes of Σ u[4j+k]·y[4j+k] for unsigned u.
#[inline(always)]
unsafe fn dot_u8x64(u: __m512i, y: __m512i) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u, y))
}

/// The low nibbles then the high nibbles of 16 bytes at `a`, then the same for `b`: 64 values in
/// value order of two consecutive 32-blocks.
#[inline(always)]
unsafe fn nibbles_x2(a: *const u8, b: *const u8) -> __m512i {
    let t = _mm256_inserti128_si256::<1>(
        _mm256_castsi128_si256(_mm_loadu_si128(a as *const __m128i)),
        _mm_loadu_si128(b as *const __m128i),
    );
    let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(t), _mm256_srli_epi16::<4>(t));
    let z = _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
    _mm512_shuffle_i64x2::<0b11_01_10_00>(z, z)
}

#[inline(always)]
unsafe fn lo8(f: __m512) -> __m256 {
    _mm512_castps512_ps256(f)
}

#[inline(always)]
unsafe fn hi8(f: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(f)))
}

/// The legacy types with a fast AVX-512 row dot.
pub fn has_avx512_dot(ty: super::GgmlType) -> bool {
    use super::GgmlType::*;
    matches!(ty, Q8_0 | Q4_1 | Q4_0 | Q5_0)
}

/// One weight row of a type accepted by `has_avx512_dot` against Q8 activations.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_row_512(ty: super::GgmlType, w: &[u8], x: &Q8Row) -> f32 {
    use super::GgmlType::*;
    match ty {
        Q8_0 => row_512::<34, false>(w, x, |pa, pb| {
            let w = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(pa.add(2) as *const __m256i)),
                _mm256_loadu_si256(pb.add(2) as *const __m256i),
            );
            (w, true)
        }),
        Q4_1 => row_512::<20, true>(w, x, |pa, pb| (nibbles_x2(pa.add(4), pb.add(4)), false)),
        Q4_0 => row_512::<18, false>(w, x, |pa, pb| {
            let w = _mm512_sub_epi8(nibbles_x2(pa.add(2), pb.add(2)), _mm512_set1_epi8(8));
            (w, true)
        }),
        Q5_0 => row_512::<22, false>(w, x, |pa, pb| {
            // The fifth bit set gives nibble + 16 - 16; clear gives nibble - 16.
            let qa = (pa.add(2) as *const u32).read_unaligned();
            let qb = (pb.add(2) as *const u32).read_unaligned();
            let bits: __mmask64 = qa as u64 | ((qb as u64) << 32);
            let nib = nibbles_x2(pa.add(6), pb.add(6));
            let hi = _mm512_or_si512(nib, _mm512_set1_epi8(0xF0u8 as i8));
            (_mm512_mask_blend_epi8(bits, hi, nib), true)
        }),
        _ => unreachable!("has_avx512_dot is checked by the caller"),
    }
}

/// The two f16 values at `a` and `b` as f32 lanes 0 and 1 (one conversion, no partial-register
/// dependency on earlier values).
#[inline(always)]
unsafe fn f16_pair(a: *const u8, b: *const u8) -> __m128 {
    let ha = (a as *const u16).read_unaligned() as u32;
    let hb = (b as *const u16).read_unaligned() as u32;
    _mm_cvtph_ps(_mm_cvtsi32_si128((ha | (hb << 16)) as i32))
}

/// The row loop shared by the legacy types: `TS` bytes per block, a min at byte 2 when `MIN`;
/// `load(a, b)` gives the 64 weights of blocks a, b and whether they are signed.
#[inline(always)]
unsafe fn row_512<const TS: usize, const MIN: bool>(
    w: &[u8],
    x: &Q8Row,
    load: impl Fn(*const u8, *const u8) -> (__m512i, bool),
) -> f32 {
    let nb = w.len() / TS;
    assert!(x.d.len() >= nb && x.s.len() >= nb && x.q.len() >= nb * 32);
    let (wp, yp, xd, xs) = (w.as_ptr(), x.q.as_ptr(), x.d.as_ptr(), x.s.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    let mut b = 0;
    while b + 2 <= nb {
        let (pa, pb) = (wp.add(b * TS), wp.add((b + 1) * TS));
        let y = _mm512_loadu_si512(yp.add(b * 32) as *const __m512i);
        let (q, signed) = load(pa, pb);
        let f = if signed {
            dot_i8x64(q, y)
        } else {
            dot_u8x64(q, y)
        };
        let xdd = _mm_castsi128_ps(_mm_loadl_epi64(xd.add(b) as *const __m128i));
        let dd = _mm_mul_ps(f16_pair(pa, pb), xdd);
        if MIN {
            let xss = _mm_castsi128_ps(_mm_loadl_epi64(xs.add(b) as *const __m128i));
            let ms = _mm_mul_ps(f16_pair(pa.add(2), pb.add(2)), xss);
            summs += _mm_cvtss_f32(ms);
            summs += _mm_cvtss_f32(_mm_movehdup_ps(ms));
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), lo8(f), acc);
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), hi8(f), acc);
        b += 2;
    }
    let ty = match (TS, MIN) {
        (34, _) => super::GgmlType::Q8_0,
        (20, _) => super::GgmlType::Q4_1,
        (18, _) => super::GgmlType::Q4_0,
        _ => super::GgmlType::Q5_0,
    };
    hsum_f32_8_tail(ty, &w[b * TS..], x, b, acc, summs)
}

/// Finish a row from block `b0` on with the AVX2 code (at most one block is left), adding the
/// accumulator so far in the same order.
#[inline(always)]
unsafe fn hsum_f32_8_tail(
    ty: super::GgmlType,
    w: &[u8],
    x: &Q8Row,
    b0: usize,
    acc: __m256,
    summs: f32,
) -> f32 {
    use super::GgmlType::*;
    let (mut acc, mut summs) = (acc, summs);
    for (k, blk) in w.chunks_exact(ty.type_size()).enumerate() {
        let b = b0 + k;
        let u = super::dot::unpack_block(ty, blk);
        if ty == Q4_1 {
            summs += f16le(blk, 2) * x.s[b];
        }
        let dv = _mm256_set1_ps(u.d * x.d[b]);
        let qx = _mm256_loadu_si256(u.q.as_ptr() as *const __m256i);
        let qy = _mm256_loadu_si256(x.q.as_ptr().add(b * 32) as *const __m256i);
        acc = _mm256_fmadd_ps(dv, mul_sum_i8(qx, qy), acc);
    }
    hsum_f32_8(acc) + summs
}

/// A weight row unpacked once for many tokens: int8 values, per-block scales and mins.
#[derive(Default)]
pub struct UnpackedRow {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub m: Vec<f32>,
}

/// out[k] = row · xs[k] for up to four tokens at a time, each in the single-token order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_unpacked_512(u: &UnpackedRow, xs: &[Q8Row], out: &mut [f32]) {
    let nb = u.d.len();
    let has_m = !u.m.is_empty();
    for (xs, out) in xs.chunks(4).zip(out.chunks_mut(4)) {
        let k_n = xs.len();
        for x in xs {
            assert!(x.d.len() >= nb && x.s.len() >= nb && x.q.len() >= nb * 32);
        }
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut b = 0;
        while b + 2 <= nb {
            let w = _mm512_loadu_si512(u.q.as_ptr().add(b * 32) as *const __m512i);
            let neg = _mm512_movepi8_mask(w);
            let aw = _mm512_abs_epi8(w);
            for k in 0..k_n {
                let x = &xs[k];
                let y = _mm512_loadu_si512(x.q.as_ptr().add(b * 32) as *const __m512i);
                let ys = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
                let f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), aw, ys));
                let da = _mm256_set1_ps(u.d[b] * x.d[b]);
                let db = _mm256_set1_ps(u.d[b + 1] * x.d[b + 1]);
                acc[k] = _mm256_fmadd_ps(da, lo8(f), acc[k]);
                acc[k] = _mm256_fmadd_ps(db, hi8(f), acc[k]);
            }
            b += 2;
        }
        // The mins' terms, each token's sum in block order (independent chains side by side).
        let mut summs = [0f32; 4];
        if has_m {
            for bb in 0..nb {
                for k in 0..k_n {
                    summs[k] += u.m[bb] * xs[k].s[bb];
                }
            }
        }
        for k in 0..k_n {
            let x = &xs[k];
            if b < nb {
                let dv = _mm256_set1_ps(u.d[b] * x.d[b]);
                let qx = _mm256_loadu_si256(u.q.as_ptr().add(b * 32) as *const __m256i);
                let qy = _mm256_loadu_si256(x.q.as_ptr().add(b * 32) as *const __m256i);
                acc[k] = _mm256_fmadd_ps(dv, mul_sum_i8(qx, qy), acc[k]);
            }
            out[k] = hsum_f32_8(acc[k]) + summs[k];
        }
    }
}

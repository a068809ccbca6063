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
    dot_rows_512(ty, [w], x)[0]
}

/// `R` weight rows (of equal length) against the same activations: each row summed in exactly
/// `dot_row_512`'s order, the activations loaded once for all of them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_rows_512<const R: usize>(
    ty: super::GgmlType,
    ws: [&[u8]; R],
    x: &Q8Row,
) -> [f32; R] {
    use super::GgmlType::*;
    match ty {
        Q8_0 => rows_512::<34, false, R>(ws, x, |pa, pb| {
            let w = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(pa.add(2) as *const __m256i)),
                _mm256_loadu_si256(pb.add(2) as *const __m256i),
            );
            (w, true)
        }),
        Q4_1 => rows_512::<20, true, R>(ws, x, |pa, pb| (nibbles_x2(pa.add(4), pb.add(4)), false)),
        Q4_0 => rows_512::<18, false, R>(ws, x, |pa, pb| {
            let w = _mm512_sub_epi8(nibbles_x2(pa.add(2), pb.add(2)), _mm512_set1_epi8(8));
            (w, true)
        }),
        Q5_0 => rows_512::<22, false, R>(ws, x, |pa, pb| {
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

/// The legacy types with a sixteen-row AVX-512 gemv (`dot16_512`).
pub fn has_dot16_512(ty: super::GgmlType) -> bool {
    use super::GgmlType::*;
    matches!(ty, Q8_0 | Q4_1 | Q4_0 | Q5_0)
}

/// Sixteen weight rows (`row_bytes` apart from `base`, `nb` blocks each) against one activation
/// row, one row per lane: each 4-byte group of a block is gathered from all sixteen rows, so a
/// single VNNI instruction multiplies sixteen rows by one broadcast group of activations and the
/// block's integer sum is exact before it is scaled (one rounding per block, not ggml's eight
/// lanes; within float tolerance of `dot_rows_512`, not bit-identical to it).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_512(
    ty: super::GgmlType,
    base: *const u8,
    row_bytes: usize,
    nb: usize,
    x: &Q8Row,
) -> [f32; 16] {
    use super::GgmlType::*;
    assert!(x.d.len() >= nb && x.s.len() >= nb && x.sum.len() >= nb && x.q.len() >= nb * 32);
    assert!(row_bytes
        .checked_mul(15)
        .is_some_and(|v| v < i32::MAX as usize));
    let idx = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(row_bytes as i32),
    );
    let yp = x.q.as_ptr() as *const i32;
    let nib = _mm512_set1_epi8(0x0f);
    // fifth[i]: byte k is 0x10 where bit k of i is set (Q5_0's high bits of four values).
    let fifth = {
        let mut t = [0i32; 16];
        for (i, v) in t.iter_mut().enumerate() {
            *v = (0..4)
                .filter(|k| i >> k & 1 == 1)
                .map(|k| 0x10 << (8 * k))
                .sum();
        }
        _mm512_loadu_si512(t.as_ptr() as *const _)
    };
    let mut acc = _mm512_setzero_ps();
    let mut accm = _mm512_setzero_ps();
    let gather = |p: *const u8| _mm512_i32gather_epi32::<1>(idx, p as *const i32);
    let yg = |b: usize, g: usize| _mm512_set1_epi32(yp.add(b * 8 + g).read_unaligned());
    let scale = |v: __m512i| _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v));
    let ts = ty.type_size();
    // The next sixteen rows are the next 16·row_bytes bytes: ask for as many of them per block
    // as this group reads (prefetching is a hint; an address past the matrix is not read).
    let next = base.wrapping_add(16 * row_bytes);
    for b in 0..nb {
        let mut off = 0;
        while off < 16 * ts {
            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(b * 16 * ts + off) as *const i8);
            off += 64;
        }
        let (sumi, d) = match ty {
            Q4_1 => {
                let p = base.add(b * 20);
                let dm = gather(p);
                let m = scale(_mm512_srli_epi32::<16>(dm));
                accm = _mm512_fmadd_ps(m, _mm512_set1_ps(*x.s.get_unchecked(b)), accm);
                let mut sumi = _mm512_setzero_si512();
                for g in 0..4 {
                    let q = gather(p.add(4 + 4 * g));
                    let lo = _mm512_and_si512(q, nib);
                    let hi = _mm512_and_si512(_mm512_srli_epi32::<4>(q), nib);
                    sumi = _mm512_dpbusd_epi32(sumi, lo, yg(b, g));
                    sumi = _mm512_dpbusd_epi32(sumi, hi, yg(b, g + 4));
                }
                (sumi, scale(dm))
            }
            Q4_0 => {
                let p = base.add(b * 18);
                let d = scale(gather(p));
                // Values are nibble - 8: the nibbles' products minus 8·Σy.
                let mut sumi = _mm512_set1_epi32(-8 * *x.sum.get_unchecked(b));
                for g in 0..4 {
                    let q = gather(p.add(2 + 4 * g));
                    let lo = _mm512_and_si512(q, nib);
                    let hi = _mm512_and_si512(_mm512_srli_epi32::<4>(q), nib);
                    sumi = _mm512_dpbusd_epi32(sumi, lo, yg(b, g));
                    sumi = _mm512_dpbusd_epi32(sumi, hi, yg(b, g + 4));
                }
                (sumi, d)
            }
            Q5_0 => {
                let p = base.add(b * 22);
                let d = scale(gather(p));
                let qh = gather(p.add(2));
                // Values are (nibble | fifth bit << 4) - 16. Bits 4g..4g+4 of qh, as a table
                // index, give the fifth bits of a 4-value group as 0x10 bytes.
                let mut sumi = _mm512_set1_epi32(-16 * *x.sum.get_unchecked(b));
                for g in 0..4 {
                    let q = gather(p.add(6 + 4 * g));
                    let hb_lo = _mm512_permutexvar_epi32(
                        _mm512_srlv_epi32(qh, _mm512_set1_epi32(4 * g as i32)),
                        fifth,
                    );
                    let hb_hi = _mm512_permutexvar_epi32(
                        _mm512_srlv_epi32(qh, _mm512_set1_epi32(16 + 4 * g as i32)),
                        fifth,
                    );
                    let lo = _mm512_or_si512(_mm512_and_si512(q, nib), hb_lo);
                    let hi =
                        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(q), nib), hb_hi);
                    sumi = _mm512_dpbusd_epi32(sumi, lo, yg(b, g));
                    sumi = _mm512_dpbusd_epi32(sumi, hi, yg(b, g + 4));
                }
                (sumi, d)
            }
            Q8_0 => {
                let p = base.add(b * 34);
                let d = scale(gather(p));
                // Signed bytes as unsigned (w + 128): the products minus 128·Σy.
                let mut sumi = _mm512_set1_epi32(-128 * *x.sum.get_unchecked(b));
                let flip = _mm512_set1_epi8(-128);
                for g in 0..8 {
                    let q = _mm512_xor_si512(gather(p.add(2 + 4 * g)), flip);
                    sumi = _mm512_dpbusd_epi32(sumi, q, yg(b, g));
                }
                (sumi, d)
            }
            _ => unreachable!("has_dot16_512 is checked by the caller"),
        };
        let dd = _mm512_mul_ps(d, _mm512_set1_ps(*x.d.get_unchecked(b)));
        acc = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sumi), acc);
    }
    let mut out = [0f32; 16];
    _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(acc, accm));
    out
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
/// `load(a, b)` gives the 64 weights of blocks a, b and whether they are signed. `R` rows of the
/// same length side by side, each with its own accumulator.
#[inline(always)]
unsafe fn rows_512<const TS: usize, const MIN: bool, const R: usize>(
    ws: [&[u8]; R],
    x: &Q8Row,
    load: impl Fn(*const u8, *const u8) -> (__m512i, bool),
) -> [f32; R] {
    let nb = ws[0].len() / TS;
    assert!(ws.iter().all(|w| w.len() == nb * TS));
    assert!(x.d.len() >= nb && x.s.len() >= nb && x.q.len() >= nb * 32);
    let (yp, xd, xs) = (x.q.as_ptr(), x.d.as_ptr(), x.s.as_ptr());
    let mut acc = [_mm256_setzero_ps(); R];
    let mut summs = [0f32; R];
    let mut b = 0;
    while b + 2 <= nb {
        let y = _mm512_loadu_si512(yp.add(b * 32) as *const __m512i);
        let xdd = _mm_castsi128_ps(_mm_loadl_epi64(xd.add(b) as *const __m128i));
        let xss = _mm_castsi128_ps(_mm_loadl_epi64(xs.add(b) as *const __m128i));
        for r in 0..R {
            let wp = ws[r].as_ptr();
            let (pa, pb) = (wp.add(b * TS), wp.add((b + 1) * TS));
            let (q, signed) = load(pa, pb);
            let f = if signed {
                dot_i8x64(q, y)
            } else {
                dot_u8x64(q, y)
            };
            let dd = _mm_mul_ps(f16_pair(pa, pb), xdd);
            if MIN {
                let ms = _mm_mul_ps(f16_pair(pa.add(2), pb.add(2)), xss);
                summs[r] += _mm_cvtss_f32(ms);
                summs[r] += _mm_cvtss_f32(_mm_movehdup_ps(ms));
            }
            acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), lo8(f), acc[r]);
            acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), hi8(f), acc[r]);
        }
        b += 2;
    }
    let ty = match (TS, MIN) {
        (34, _) => super::GgmlType::Q8_0,
        (20, _) => super::GgmlType::Q4_1,
        (18, _) => super::GgmlType::Q4_0,
        _ => super::GgmlType::Q5_0,
    };
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum_f32_8_tail(ty, &ws[r][b * TS..], x, b, acc[r], summs[r]);
    }
    out
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

// ---- AVX-512 (VNNI) gemm for prefill: weights as unsigned bytes (value + a per-type offset), so
// VNNI multiplies them by the signed activations directly; the offset's share (offset × the sum
// of each lane's four activations) is precomputed per token and starts the integer sum. Sixteen
// lanes accumulate two blocks at once (block pairs), so sums round differently from the
// single-token order (as llama.cpp's own prefill kernels do from its decode kernels).

/// The offset that makes a legacy type's values unsigned bytes.
pub fn gemm_offset(ty: super::GgmlType) -> u8 {
    use super::GgmlType::*;
    match ty {
        Q4_0 => 8,
        Q5_0 => 16,
        Q4_1 | Q5_1 => 0,
        _ => 128, // Q8_0, IQ4_NL
    }
}

/// A batch of Q8 activation rows laid out for `gemm_rows_512`: per token and block pair, the 64
/// int8 values, the 16 lanes of −offset·(sum of the lane's four values), and the 16 lane scales
/// [d_a ×8, d_b ×8]; per token the block sums `s` padded to a multiple of 16.
#[derive(Default)]
pub struct GemmActs {
    n_pairs: usize,
    n_s: usize,
    q: Vec<i8>,
    corr: Vec<i32>,
    d16: Vec<f32>,
    s: Vec<f32>,
}

/// One weight row laid out for `gemm_rows_512`.
#[derive(Default)]
pub struct GemmRow {
    q: Vec<u8>,
    d16: Vec<f32>,
    m: Vec<f32>,
}

impl GemmActs {
    /// Lay out `xs` (rows of `nb` blocks) for weights of offset `offset`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn new(xs: &[Q8Row], nb: usize, offset: u8) -> Self {
        let n_pairs = nb.div_ceil(2);
        let n_s = nb.div_ceil(16) * 16;
        let n = xs.len();
        let mut a = GemmActs {
            n_pairs,
            n_s,
            q: vec![0; n * n_pairs * 64],
            corr: vec![0; n * n_pairs * 16],
            d16: vec![0.0; n * n_pairs * 16],
            s: vec![0.0; n * n_s],
        };
        let off = _mm512_set1_epi8(offset as i8);
        for (t, x) in xs.iter().enumerate() {
            assert!(x.q.len() >= nb * 32 && x.d.len() >= nb && x.s.len() >= nb);
            let q = &mut a.q[t * n_pairs * 64..(t + 1) * n_pairs * 64];
            q[..nb * 32].copy_from_slice(std::slice::from_raw_parts(x.q.as_ptr(), nb * 32));
            for p in 0..n_pairs {
                let v = _mm512_loadu_si512(q.as_ptr().add(p * 64) as *const __m512i);
                let c = _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, v),
                );
                _mm512_storeu_si512(
                    a.corr.as_mut_ptr().add((t * n_pairs + p) * 16) as *mut __m512i,
                    c,
                );
                let d = &mut a.d16[(t * n_pairs + p) * 16..(t * n_pairs + p + 1) * 16];
                d[..8].fill(x.d[2 * p]);
                if 2 * p + 1 < nb {
                    d[8..].fill(x.d[2 * p + 1]);
                }
            }
            a.s[t * n_s..t * n_s + nb].copy_from_slice(&x.s[..nb]);
        }
        a
    }
}

impl GemmRow {
    /// Fill from unpacked blocks (values, scales, mins) of one row; `offset` from `gemm_offset`.
    pub fn fill(&mut self, blocks: impl Iterator<Item = super::dot::Block>, nb: usize, offset: u8) {
        let n_pairs = nb.div_ceil(2);
        self.q.clear();
        self.q.resize(n_pairs * 64, 0);
        self.d16.clear();
        self.d16.resize(n_pairs * 16, 0.0);
        self.m.clear();
        self.m.resize(nb.div_ceil(16) * 16, 0.0);
        for (b, blk) in blocks.enumerate() {
            for (o, &v) in self.q[b * 32..b * 32 + 32].iter_mut().zip(&blk.q) {
                *o = (v as u8).wrapping_add(offset);
            }
            self.d16[b * 8..b * 8 + 8].fill(blk.d);
            self.m[b] = blk.m.unwrap_or(0.0);
        }
    }
}

/// outs[r][t] = rows[r] · token t for every token of `a`, up to four rows at a time (each row's
/// output slice as long as the token count).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_rows_512(
    rows: &[&GemmRow],
    a: &GemmActs,
    has_min: bool,
    outs: &mut [&mut [f32]],
) {
    let n = outs.first().map_or(0, |o| o.len());
    assert!(rows.len() == outs.len() && rows.len() <= 4);
    assert!(a.q.len() >= n * a.n_pairs * 64 && a.s.len() >= n * a.n_s);
    for (w, o) in rows.iter().zip(outs.iter()) {
        assert!(w.q.len() == a.n_pairs * 64 && w.d16.len() == a.n_pairs * 16);
        assert!(w.m.len() == a.n_s && o.len() == n);
    }
    match rows.len() {
        4 => tokens_512::<4>(rows, a, has_min, outs, n),
        3 => tokens_512::<3>(rows, a, has_min, outs, n),
        2 => tokens_512::<2>(rows, a, has_min, outs, n),
        1 => tokens_512::<1>(rows, a, has_min, outs, n),
        _ => {}
    }
}

#[inline(always)]
unsafe fn tokens_512<const R: usize>(
    rows: &[&GemmRow],
    a: &GemmActs,
    has_min: bool,
    outs: &mut [&mut [f32]],
    n: usize,
) {
    let mut t = 0;
    while t + 4 <= n {
        tile_512::<R, 4>(rows, a, t, has_min, outs);
        t += 4;
    }
    while t < n {
        tile_512::<R, 1>(rows, a, t, has_min, outs);
        t += 1;
    }
}

/// R rows × K tokens from token `t0`: the activations of a block pair are loaded once for all
/// R rows, the weights once for all K tokens.
#[inline(always)]
unsafe fn tile_512<const R: usize, const K: usize>(
    rows: &[&GemmRow],
    a: &GemmActs,
    t0: usize,
    has_min: bool,
    outs: &mut [&mut [f32]],
) {
    let np = a.n_pairs;
    let mut acc = [[_mm512_setzero_ps(); K]; R];
    for p in 0..np {
        let mut x = [_mm512_setzero_si512(); K];
        for (k, x) in x.iter_mut().enumerate() {
            *x = _mm512_loadu_si512(a.q.as_ptr().add(((t0 + k) * np + p) * 64) as *const __m512i);
        }
        for r in 0..R {
            let w = rows[r];
            let wq = _mm512_loadu_si512(w.q.as_ptr().add(p * 64) as *const __m512i);
            let wd = _mm512_loadu_ps(w.d16.as_ptr().add(p * 16));
            for k in 0..K {
                let at = (t0 + k) * np + p;
                let c = _mm512_loadu_si512(a.corr.as_ptr().add(at * 16) as *const __m512i);
                let sum = _mm512_dpbusd_epi32(c, wq, x[k]);
                let dd = _mm512_mul_ps(wd, _mm512_loadu_ps(a.d16.as_ptr().add(at * 16)));
                acc[r][k] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(sum), acc[r][k]);
            }
        }
    }
    for r in 0..R {
        for k in 0..K {
            let mut v = acc[r][k];
            if has_min {
                let s = a.s.as_ptr().add((t0 + k) * a.n_s);
                let m = rows[r].m.as_ptr();
                for j in (0..a.n_s).step_by(16) {
                    v = _mm512_fmadd_ps(_mm512_loadu_ps(m.add(j)), _mm512_loadu_ps(s.add(j)), v);
                }
            }
            outs[r][t0 + k] = _mm512_reduce_add_ps(v);
        }
    }
}

//! AVX2 versions of the hot 32-block dots. Same integer lane sums, the same fused accumulation
//! and the same final pairwise sum as the portable code in `dot.rs` (and as ggml's AVX2 kernels),
//! so every level returns identical results; only the speed differs.

// Kernels index several arrays by the same counter.
#![allow(clippy::needless_range_loop)]
#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::dot::Block;
use super::q8::Q8Row;

#[inline(always)]
pub(crate) unsafe fn hsum_f32_8(x: __m256) -> f32 {
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

/// One weight row of a type accepted by `has_dot16_512` against Q8 activations (ggml's order).
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

/// The legacy types with the AVX-512 kernels (`dot16_512`, `gemm16_512`, `dot_rows_512`).
pub fn has_dot16_512(ty: super::GgmlType) -> bool {
    use super::GgmlType::*;
    matches!(ty, Q8_0 | Q4_1 | Q4_0 | Q5_0)
}

/// One block of sixteen rows, one row per lane: `w[j]` holds each row's values 4j..4j+4 as
/// unsigned bytes (value + `gemm_offset`), `d` the scales and `m` the mins (zero without).
#[derive(Clone, Copy)]
pub struct Block16 {
    w: [__m512i; 8],
    d: __m512,
    m: __m512,
}

/// Byte offsets of sixteen rows `row_bytes` apart, rows past `m` repeating the last one.
#[inline(always)]
pub(crate) unsafe fn row_offsets(row_bytes: usize, m: usize) -> __m512i {
    assert!(
        row_bytes
            .checked_mul(15)
            .is_some_and(|v| v < i32::MAX as usize)
            && m >= 1
    );
    let lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    let last = _mm512_set1_epi32(m as i32 - 1);
    _mm512_mullo_epi32(
        _mm512_min_epi32(lane, last),
        _mm512_set1_epi32(row_bytes as i32),
    )
}

/// Block `p` (its address in row 0) of sixteen rows at offsets `idx`, gathered 4 bytes at a time.
#[inline(always)]
unsafe fn gather16(ty: super::GgmlType, p: *const u8, idx: __m512i) -> Block16 {
    use super::GgmlType::*;
    let gather = |p: *const u8| _mm512_i32gather_epi32::<1>(idx, p as *const i32);
    let scale = |v: __m512i| _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v));
    let nib = _mm512_set1_epi8(0x0f);
    let mut w = [_mm512_setzero_si512(); 8];
    let mut m = _mm512_setzero_ps();
    let dm = gather(p);
    match ty {
        Q4_1 | Q4_0 => {
            let qs = if ty == Q4_1 { 4 } else { 2 };
            for g in 0..4 {
                let q = gather(p.add(qs + 4 * g));
                w[g] = _mm512_and_si512(q, nib);
                w[g + 4] = _mm512_and_si512(_mm512_srli_epi32::<4>(q), nib);
            }
            if ty == Q4_1 {
                m = scale(_mm512_srli_epi32::<16>(dm));
            }
        }
        Q5_0 => {
            // (nibble | fifth bit << 4); bits 4g..4g+4 of qh, as a table index, give the fifth
            // bits of a 4-value group as 0x10 bytes (`FIFTH[i]`: 0x10 in byte k where bit k of i).
            let fifth = _mm512_set_epi32(
                0x10101010, 0x10101000, 0x10100010, 0x10100000, 0x10001010, 0x10001000, 0x10000010,
                0x10000000, 0x00101010, 0x00101000, 0x00100010, 0x00100000, 0x00001010, 0x00001000,
                0x00000010, 0,
            );
            let qh = gather(p.add(2));
            let hb = |shift: i32| {
                _mm512_permutexvar_epi32(_mm512_srlv_epi32(qh, _mm512_set1_epi32(shift)), fifth)
            };
            for g in 0..4 {
                let q = gather(p.add(6 + 4 * g));
                w[g] = _mm512_or_si512(_mm512_and_si512(q, nib), hb(4 * g as i32));
                w[g + 4] = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi32::<4>(q), nib),
                    hb(16 + 4 * g as i32),
                );
            }
        }
        Q8_0 => {
            let flip = _mm512_set1_epi8(-128);
            for (g, wg) in w.iter_mut().enumerate() {
                *wg = _mm512_xor_si512(gather(p.add(2 + 4 * g)), flip);
            }
        }
        _ => unreachable!("has_dot16_512 is checked by the caller"),
    }
    Block16 { w, d: scale(dm), m }
}

/// Add block `b` of one token to a sixteen-row accumulator set in ggml's order: per 4-value group
/// j its exact integer sum (the offset's share −offset·Σy precomputed in `corr`), scaled by
/// d_w·d_y and fused-multiply-added into accumulator j; the min times the token's block sum into
/// `accm`.
#[inline(always)]
unsafe fn add_block(
    blk: &Block16,
    x: &Q8Row,
    corr: *const i32,
    b: usize,
    acc: &mut [__m512; 8],
    accm: &mut __m512,
) {
    let yp = x.q.as_ptr() as *const i32;
    let dd = _mm512_mul_ps(blk.d, _mm512_set1_ps(*x.d.get_unchecked(b)));
    for j in 0..8 {
        let y = _mm512_set1_epi32(yp.add(b * 8 + j).read_unaligned());
        let s = _mm512_dpbusd_epi32(_mm512_set1_epi32(*corr.add(b * 8 + j)), blk.w[j], y);
        acc[j] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(s), acc[j]);
    }
    *accm = _mm512_fmadd_ps(blk.m, _mm512_set1_ps(*x.s.get_unchecked(b)), *accm);
}

/// The eight accumulators folded as ggml's `hsum_float_8` folds its lanes, then the mins' term.
#[inline(always)]
unsafe fn finish16(acc: &[__m512; 8], accm: __m512) -> __m512 {
    let t: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(acc[4 + i], acc[i]));
    _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(t[0], t[2]), _mm512_add_ps(t[1], t[3])),
        accm,
    )
}

/// −offset·(sum of each four activations), the offset's share of a group's integer sum.
pub fn offset_shares(x: &Q8Row, offset: u8) -> Vec<i32> {
    x.sum4.iter().map(|&s| -(offset as i32) * s).collect()
}

/// Sixteen weight rows (`row_bytes` apart from `base`, `nb` blocks each) against one activation
/// row, one row per lane: each 4-byte group of a block is gathered from all sixteen rows, so a
/// single VNNI instruction multiplies sixteen rows by one broadcast group of activations. The
/// sums follow ggml's AVX2 dots exactly (so tokens and probabilities match llama.cpp's): eight
/// accumulators, one per 4-value group of a block (ggml's eight lanes), each group's exact integer
/// sum scaled and fused-multiply-added in block order, folded as `hsum_f32_8` folds its lanes,
/// the mins' term added last.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_512(
    ty: super::GgmlType,
    base: *const u8,
    row_bytes: usize,
    nb: usize,
    x: &Q8Row,
    corr: &[i32],
) -> [f32; 16] {
    assert!(x.d.len() >= nb && x.s.len() >= nb && corr.len() >= 8 * nb && x.q.len() >= nb * 32);
    let idx = row_offsets(row_bytes, 16);
    let ts = ty.type_size();
    let mut acc = [_mm512_setzero_ps(); 8];
    let mut accm = _mm512_setzero_ps();
    // The next sixteen rows are the next 16·row_bytes bytes: ask for as many of them per block
    // as this group reads (prefetching is a hint; an address past the matrix is not read).
    let next = base.wrapping_add(16 * row_bytes);
    for b in 0..nb {
        let mut o = 0;
        while o < 16 * ts {
            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(b * 16 * ts + o) as *const i8);
            o += 64;
        }
        let blk = gather16(ty, base.add(b * ts), idx);
        add_block(&blk, x, corr.as_ptr(), b, &mut acc, &mut accm);
    }
    let mut out = [0f32; 16];
    _mm512_storeu_ps(out.as_mut_ptr(), finish16(&acc, accm));
    out
}

/// Prefill: `m` ≤ 16 weight rows (`row_bytes` apart from `base`, `nb` blocks each) against every
/// token of `xs` (`corrs[t]` from `offset_shares`), in exactly `dot16_512`'s order per row and
/// token. The rows are gathered once into `buf` (reused between calls); tokens then go two at a
/// time, each block's weights loaded once for both. `out(t, lanes)` receives token t's sixteen
/// lanes (those past `m` are to be ignored).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm16_512(
    ty: super::GgmlType,
    base: *const u8,
    row_bytes: usize,
    m: usize,
    nb: usize,
    xs: &[Q8Row],
    corrs: &[Vec<i32>],
    buf: &mut Vec<Block16>,
    mut out: impl FnMut(usize, &[f32; 16]),
) {
    assert!(corrs.len() == xs.len());
    for (x, c) in xs.iter().zip(corrs) {
        assert!(x.d.len() >= nb && x.s.len() >= nb && c.len() >= 8 * nb && x.q.len() >= nb * 32);
    }
    let idx = row_offsets(row_bytes, m);
    let ts = ty.type_size();
    buf.clear();
    buf.extend((0..nb).map(|b| gather16(ty, base.add(b * ts), idx)));
    let mut lanes = [0f32; 16];
    let mut t = 0;
    while t + 2 <= xs.len() {
        let mut acc = [[_mm512_setzero_ps(); 8]; 2];
        let mut accm = [_mm512_setzero_ps(); 2];
        for (b, blk) in buf.iter().enumerate() {
            for k in 0..2 {
                add_block(
                    blk,
                    &xs[t + k],
                    corrs[t + k].as_ptr(),
                    b,
                    &mut acc[k],
                    &mut accm[k],
                );
            }
        }
        for k in 0..2 {
            _mm512_storeu_ps(lanes.as_mut_ptr(), finish16(&acc[k], accm[k]));
            out(t + k, &lanes);
        }
        t += 2;
    }
    if t < xs.len() {
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut accm = _mm512_setzero_ps();
        for (b, blk) in buf.iter().enumerate() {
            add_block(blk, &xs[t], corrs[t].as_ptr(), b, &mut acc, &mut accm);
        }
        _mm512_storeu_ps(lanes.as_mut_ptr(), finish16(&acc, accm));
        out(t, &lanes);
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

/// The offset that makes a legacy type's values unsigned bytes (VNNI multiplies unsigned by
/// signed bytes; the offset's share is taken back from each group's integer sum).
pub fn gemm_offset(ty: super::GgmlType) -> u8 {
    use super::GgmlType::*;
    match ty {
        Q4_0 => 8,
        Q5_0 => 16,
        Q4_1 | Q5_1 => 0,
        _ => 128, // Q8_0, IQ4_NL
    }
}

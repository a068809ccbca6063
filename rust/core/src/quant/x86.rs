//! AVX2 versions of the hot 32-block dots. Same integer lane sums, the same fused accumulation
//! and the same final pairwise sum as the portable code in `dot.rs` (and as ggml's AVX2 kernels),
//! so every level returns identical results; only the speed differs.

// Kernels index several arrays by the same counter.
#![allow(clippy::needless_range_loop)]
#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::dot::Block;
use super::q8::{Q8KRow, Q8Row};
use super::repack::{Tile, TileBlock};

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

/// The legacy types `dot_rows` takes, as its const parameter: Q8_0, Q4_1, Q4_0, Q5_0.
const L_Q8_0: u8 = 0;
const L_Q4_1: u8 = 1;
const L_Q4_0: u8 = 2;
const L_Q5_0: u8 = 3;
// Only the AVX2 tile kernels take these two.
const L_Q5_1: u8 = 4;
const L_IQ4_NL: u8 = 5;

/// Block `b` of a legacy-type row (`blk` its bytes) against the activations: the combined scale,
/// the lane sums, and Q4_1's offset term m·s (0 for the others).
#[inline(always)]
unsafe fn legacy_block<const T: u8>(
    blk: *const u8,
    qy: __m256i,
    x: &Q8Row,
    b: usize,
) -> (f32, __m256, f32) {
    // The block's f16 scales, widened as ggml does.
    let f16 = |i: usize| {
        let h = u16::from_le_bytes([*blk.add(i), *blk.add(i + 1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    };
    let d = f16(0) * x.d[b];
    match T {
        L_Q8_0 => {
            let qx = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            (d, mul_sum_i8(qx, qy), 0.0)
        }
        L_Q4_1 => (d, mul_sum_us8(nibbles(blk.add(4)), qy), f16(2) * x.s[b]),
        L_Q4_0 => {
            let qx = _mm256_sub_epi8(nibbles(blk.add(2)), _mm256_set1_epi8(8));
            (d, mul_sum_i8(qx, qy), 0.0)
        }
        _ => {
            let qh = u32::from_le_bytes([*blk.add(2), *blk.add(3), *blk.add(4), *blk.add(5)]);
            let hi = _mm256_andnot_si256(bytes_from_bits(qh), _mm256_set1_epi8(0xF0u8 as i8));
            let qx = _mm256_or_si256(nibbles(blk.add(6)), hi);
            (d, mul_sum_i8(qx, qy), 0.0)
        }
    }
}

/// `R` rows of legacy type `T` (`ts` bytes a block) against one token, interleaved so the rows'
/// independent chains overlap; each row is summed exactly as alone (ggml's AVX2 order: one
/// fused accumulator over the blocks, then the pairwise lane sum, plus Q4_1's offsets).
#[inline(always)]
unsafe fn dot_rows_of<const T: u8, const R: usize>(
    ts: usize,
    rows: [&[u8]; R],
    x: &Q8Row,
) -> [f32; R] {
    let nb = rows[0].len() / ts;
    debug_assert!(rows.iter().all(|r| r.len() == nb * ts) && x.d.len() >= nb);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut summs = [0f32; R];
    for b in 0..nb {
        let qy = _mm256_loadu_si256(x.q.as_ptr().add(b * 32) as *const __m256i);
        for i in 0..R {
            let (d, p, m) = legacy_block::<T>(rows[i].as_ptr().add(b * ts), qy, x, b);
            if T == L_Q4_1 {
                summs[i] += m;
            }
            acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d), p, acc[i]);
        }
    }
    std::array::from_fn(|i| {
        let v = hsum_f32_8(acc[i]);
        if T == L_Q4_1 {
            v + summs[i]
        } else {
            v
        }
    })
}

/// Rows (all of `ty`, one length) against one token: Q8_0, Q4_1, Q4_0 and Q5_0 (None for other
/// types). `R` rows at once run faster than one at a time and give the same values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows<const R: usize>(
    ty: super::GgmlType,
    rows: [&[u8]; R],
    x: &Q8Row,
) -> Option<[f32; R]> {
    use super::GgmlType::*;
    Some(match ty {
        Q8_0 => dot_rows_of::<L_Q8_0, R>(34, rows, x),
        Q4_1 => dot_rows_of::<L_Q4_1, R>(20, rows, x),
        Q4_0 => dot_rows_of::<L_Q4_0, R>(18, rows, x),
        Q5_0 => dot_rows_of::<L_Q5_0, R>(22, rows, x),
        _ => return None,
    })
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

/// `dot_unpacked` for four weight rows against one token at once, each row in exactly
/// `dot_unpacked`'s order (its own accumulator, block order, the same pairwise fold and mins
/// added last): the token's blocks are loaded once for the four rows instead of four times.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_unpacked4(rows: [&[Block]; 4], x: &Q8Row) -> [f32; 4] {
    let nb = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == nb) && x.d.len() >= nb && x.s.len() >= nb);
    assert!(x.q.len() >= nb * 32);
    // Types with a min (Q4_1, Q5_1) have unsigned values: their bytes multiply as they are,
    // without the sign trick (the same exact integer sums).
    if nb > 0 && rows[0][0].m.is_some() {
        return dot4::<true>(rows, x);
    }
    dot4::<false>(rows, x)
}

#[inline(always)]
unsafe fn dot4<const UNSIGNED: bool>(rows: [&[Block]; 4], x: &Q8Row) -> [f32; 4] {
    let nb = rows[0].len();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut summs = [0f32; 4];
    for b in 0..nb {
        let qy = _mm256_loadu_si256(x.q.as_ptr().add(b * 32) as *const __m256i);
        let (xd, xs) = (*x.d.get_unchecked(b), *x.s.get_unchecked(b));
        for i in 0..4 {
            let blk = rows[i].get_unchecked(b);
            if let Some(m) = blk.m {
                summs[i] += m * xs;
            }
            let dv = _mm256_set1_ps(blk.d * xd);
            let qx = _mm256_loadu_si256(blk.q.as_ptr() as *const __m256i);
            let p = if UNSIGNED {
                mul_sum_us8(qx, qy)
            } else {
                mul_sum_i8(qx, qy)
            };
            acc[i] = _mm256_fmadd_ps(dv, p, acc[i]);
        }
    }
    std::array::from_fn(|i| hsum_f32_8(acc[i]) + summs[i])
}

// ---- AVX2: the same tiles, eight rows (half a tile) per pass, one per 32-bit lane.

/// The legacy types with the AVX2 tile kernel (`dot16_avx2`): their tiles are made at load at
/// the AVX2 level too.
pub fn has_dot16_avx2(ty: super::GgmlType) -> bool {
    use super::GgmlType::*;
    matches!(ty, Q8_0 | Q4_1 | Q4_0 | Q5_0 | Q5_1 | IQ4_NL)
}

/// What the AVX2 tile kernels add to Q4_0's and Q5_0's stored values to make them unsigned (its
/// share, `offset_shares`, is taken back per group); 0 for the others (Q8_0 multiplies signed).
pub fn avx2_offset(ty: super::GgmlType) -> u8 {
    use super::GgmlType::*;
    match ty {
        Q4_0 => 8,
        Q5_0 => 16,
        _ => 0,
    }
}

/// The low and the high f16 of each 32-bit lane, as f32 (Q4_1's d and m).
#[inline(always)]
unsafe fn halves_of_words(v: __m256i) -> (__m256, __m256) {
    let mask = _mm256_set1_epi32(0xffff);
    let lo = _mm256_packus_epi32(_mm256_and_si256(v, mask), _mm256_setzero_si256());
    let hi = _mm256_packus_epi32(_mm256_srli_epi32::<16>(v), _mm256_setzero_si256());
    // packus works per 128-bit half: the wanted quads are 64-bit lanes 0 and 2.
    let pick = |x: __m256i| _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(x));
    (_mm256_cvtph_ps(pick(lo)), _mm256_cvtph_ps(pick(hi)))
}

/// One tile of sixteen legacy rows against one token, eight rows per pass, one row per lane:
/// `dot16_512`'s arithmetic with AVX2 instructions. Each group of four values of a block is one
/// 32-byte load of the tile (eight rows); its exact integer sum per row comes from `maddubs`
/// (Q4_0 / Q5_0 values unsigned, their offset taken back through the activations' sums of
/// four; Q4_1 / Q5_1 unsigned as stored; Q8_0 and IQ4_NL's table values signed, by the sign
/// trick), then accumulator j = fma(d_w·d_y, sum, accumulator j), folded as `hsum_f32_8`, the
/// mins last: each row's value equals the per-row kernels'. `corr`: the token's
/// `offset_shares` for `avx2_offset(ty)` (unread when that is 0). `vnni`: the CPU has AVX-VNNI,
/// whose `vpdpbusd` gives each group's sum in one instruction (the same integers).
pub unsafe fn dot16_avx2(
    vnni: bool,
    ty: super::GgmlType,
    tile: &Tile,
    x: &Q8Row,
    corr: &[i32],
) -> [f32; 16] {
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn plain(ty: super::GgmlType, tile: &Tile, x: &Q8Row, corr: &[i32]) -> [f32; 16] {
        dot16_of::<false>(ty, tile, x, corr)
    }
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn with_vnni(ty: super::GgmlType, tile: &Tile, x: &Q8Row, corr: &[i32]) -> [f32; 16] {
        dot16_of::<true>(ty, tile, x, corr)
    }
    check_q8(ty, x, corr, tile.n_blocks());
    if vnni {
        with_vnni(ty, tile, x, corr)
    } else {
        plain(ty, tile, x, corr)
    }
}

#[inline(always)]
unsafe fn dot16_of<const V: bool>(
    ty: super::GgmlType,
    tile: &Tile,
    x: &Q8Row,
    corr: &[i32],
) -> [f32; 16] {
    use super::GgmlType::*;
    let c = corr.as_ptr();
    let mut out = [0f32; 16];
    // Q8_0's and Q4_0's one-token sums stay on `maddubs` + `madd` with AVX-VNNI too: with
    // `vpdpbusd` LLVM kept more values live and spilled accumulators, 3-10% slower on a Zen 5
    // (warm 1024x2048 gemv at -t 1); their batches gain 15-25%.
    match ty {
        Q8_0 => dot8_avx2::<L_Q8_0, false>(tile, x, c, &mut out),
        Q4_1 => dot8_avx2::<L_Q4_1, V>(tile, x, c, &mut out),
        Q4_0 => dot8_avx2::<L_Q4_0, false>(tile, x, c, &mut out),
        Q5_0 => dot8_avx2::<L_Q5_0, V>(tile, x, c, &mut out),
        Q5_1 => dot8_avx2::<L_Q5_1, V>(tile, x, c, &mut out),
        IQ4_NL => dot8_avx2::<L_IQ4_NL, V>(tile, x, c, &mut out),
        _ => unreachable!("has_dot16_avx2 is checked by the caller"),
    }
    out
}

/// Prefill: one tile against every token of `xs`, in exactly `dot16_avx2`'s order per row and
/// token. The tile is unpacked once into `buf` (reused between calls; about 10 KiB for 640
/// columns, so it stays in L1), then each token runs over it. `out(t, lanes)` receives token
/// t's sixteen values; `corrs[t]` and `vnni` as `dot16_avx2`'s.
pub unsafe fn gemm16_avx2(
    vnni: bool,
    ty: super::GgmlType,
    tile: &Tile,
    xs: &[Q8Row],
    corrs: &[&[i32]],
    buf: &mut Vec<Block8>,
    mut out: impl FnMut(usize, &[f32; 16]),
) {
    type Out<'a> = &'a mut dyn FnMut(usize, &[f32; 16]);
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn plain(
        t: super::GgmlType,
        tile: &Tile,
        xs: &[Q8Row],
        c: &[&[i32]],
        b: &mut Vec<Block8>,
        o: Out,
    ) {
        gemm16_of::<false>(t, tile, xs, c, b, o)
    }
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn with_vnni(
        t: super::GgmlType,
        tile: &Tile,
        xs: &[Q8Row],
        c: &[&[i32]],
        b: &mut Vec<Block8>,
        o: Out,
    ) {
        gemm16_of::<true>(t, tile, xs, c, b, o)
    }
    assert_eq!(xs.len(), corrs.len());
    for (x, c) in xs.iter().zip(corrs) {
        check_q8(ty, x, c, tile.n_blocks());
    }
    if vnni {
        with_vnni(ty, tile, xs, corrs, buf, &mut out)
    } else {
        plain(ty, tile, xs, corrs, buf, &mut out)
    }
}

#[inline(always)]
unsafe fn gemm16_of<const V: bool>(
    ty: super::GgmlType,
    tile: &Tile,
    xs: &[Q8Row],
    corrs: &[&[i32]],
    buf: &mut Vec<Block8>,
    out: &mut dyn FnMut(usize, &[f32; 16]),
) {
    use super::GgmlType::*;
    match ty {
        Q8_0 => gemm8_avx2::<L_Q8_0, V>(tile, xs, corrs, buf, out),
        Q4_1 => gemm8_avx2::<L_Q4_1, V>(tile, xs, corrs, buf, out),
        Q4_0 => gemm8_avx2::<L_Q4_0, V>(tile, xs, corrs, buf, out),
        Q5_0 => gemm8_avx2::<L_Q5_0, V>(tile, xs, corrs, buf, out),
        Q5_1 => gemm8_avx2::<L_Q5_1, V>(tile, xs, corrs, buf, out),
        IQ4_NL => gemm8_avx2::<L_IQ4_NL, V>(tile, xs, corrs, buf, out),
        _ => unreachable!("has_dot16_avx2 is checked by the caller"),
    }
}

fn check_q8(ty: super::GgmlType, x: &Q8Row, corr: &[i32], nb: usize) {
    assert!(x.d.len() >= nb && x.s.len() >= nb && x.q.len() >= nb * 32);
    assert!(avx2_offset(ty) == 0 || corr.len() >= 8 * nb);
}

/// Block b of half a tile (eight rows, one per lane), unpacked: each 4-value group's values
/// (unsigned for Q4_0/Q4_1/Q5_0/Q5_1, signed for Q8_0 and IQ4_NL), the rows' scales and the mins.
#[derive(Clone, Copy)]
pub struct Block8 {
    w: [__m256i; 8],
    d: __m256,
    m: __m256,
}

#[inline(always)]
unsafe fn load8<const T: u8>(tile: &Tile, b: usize, half: usize) -> Block8 {
    let blk = tile.block(b);
    let word = |k: usize| _mm256_loadu_si256(blk.words.add(64 * k + 32 * half) as *const __m256i);
    let nib = _mm256_set1_epi8(0x0f);
    let mut w = [_mm256_setzero_si256(); 8];
    let (d, m) = if T == L_Q4_1 || T == L_Q5_1 {
        halves_of_words(word(0))
    } else {
        let d = _mm256_cvtph_ps(_mm_loadu_si128(blk.half.add(16 * half) as *const __m128i));
        (d, _mm256_setzero_ps())
    };
    match T {
        L_Q8_0 => {
            for (j, wj) in w.iter_mut().enumerate() {
                *wj = word(j);
            }
        }
        L_Q5_0 | L_Q5_1 => {
            // Q5_0: qh word 0, quants words 1..5; Q5_1: d·m word 0, qh 1, quants 2..6. The qh
            // word is stored with group g's fifth bits at bit 4 + g (low nibbles) and bit g
            // (high nibbles) of each byte (`repack::fifth_bits_lanes`).
            let first = usize::from(T == L_Q5_1);
            let qh = word(first);
            let five = _mm256_set1_epi8(0x10);
            for g in 0..4 {
                let q = word(first + 1 + g);
                let lo = _mm256_srlv_epi32(qh, _mm256_set1_epi32(g as i32));
                let hi = _mm256_sllv_epi32(qh, _mm256_set1_epi32(4 - g as i32));
                w[g] = _mm256_or_si256(_mm256_and_si256(q, nib), _mm256_and_si256(lo, five));
                w[g + 4] = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi32::<4>(q), nib),
                    _mm256_and_si256(hi, five),
                );
            }
        }
        L_IQ4_NL => {
            // The table's signed values, looked up by nibble in each 128-bit half.
            let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                super::dequant::KVALUES_IQ4NL.as_ptr() as *const __m128i,
            ));
            for g in 0..4 {
                let q = word(g);
                w[g] = _mm256_shuffle_epi8(table, _mm256_and_si256(q, nib));
                w[g + 4] =
                    _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi32::<4>(q), nib));
            }
        }
        _ => {
            // Q4_0 (words 0..4) and Q4_1 (1..5): low nibbles group g, high g + 4.
            let first = usize::from(T == L_Q4_1);
            for g in 0..4 {
                let q = word(first + g);
                w[g] = _mm256_and_si256(q, nib);
                w[g + 4] = _mm256_and_si256(_mm256_srli_epi32::<4>(q), nib);
            }
        }
    }
    Block8 { w, d, m }
}

/// `acc` plus, per 32-bit lane, the sum of its four products of unsigned bytes of `u` and
/// signed bytes of `s`: `vpdpbusd` with AVX-VNNI (`V`), else `maddubs` + `madd` + add, the same
/// integers where the callers' pair sums stay within i16 (as each kernel's bounds say).
#[inline(always)]
pub(crate) unsafe fn dpbusd<const V: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    if V {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    } else {
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
        _mm256_add_epi32(acc, p)
    }
}

/// Add block b of the tokens `xs` to their eight rows' accumulators (`dot16_avx2`'s order),
/// those of the 4-value groups `groups` (the mins with the first group), each weight word read
/// once for all `N`; `corrs` the tokens' offset shares (read for Q4_0 and Q5_0 only).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn add8<const T: u8, const V: bool, const N: usize>(
    blk: &Block8,
    xs: [&Q8Row; N],
    corrs: [*const i32; N],
    b: usize,
    acc: &mut [[__m256; 8]; N],
    accm: &mut [__m256; N],
    groups: std::ops::Range<usize>,
) {
    let yp = xs.map(|x| x.q.as_ptr() as *const i32);
    let zero = _mm256_setzero_si256();
    if (T == L_Q4_1 || T == L_Q5_1) && groups.start == 0 {
        for k in 0..N {
            let s = _mm256_set1_ps(*xs[k].s.get_unchecked(b));
            accm[k] = _mm256_fmadd_ps(blk.m, s, accm[k]);
        }
    }
    let dd = xs.map(|x| _mm256_mul_ps(blk.d, _mm256_set1_ps(*x.d.get_unchecked(b))));
    for j in groups {
        let w = blk.w[j];
        for k in 0..N {
            let y = _mm256_set1_epi32(yp[k].add(b * 8 + j).read_unaligned());
            let s = if T == L_Q8_0 || T == L_IQ4_NL {
                dpbusd::<V>(zero, _mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w))
            } else if T == L_Q4_0 || T == L_Q5_0 {
                dpbusd::<V>(_mm256_set1_epi32(*corrs[k].add(b * 8 + j)), w, y)
            } else {
                dpbusd::<V>(zero, w, y)
            };
            acc[k][j] = _mm256_fmadd_ps(dd[k], _mm256_cvtepi32_ps(s), acc[k][j]);
        }
    }
}

/// The eight accumulators folded as `hsum_f32_8` folds its lanes ((0+4)+(2+6)) + ((1+5)+(3+7)),
/// lane by lane, then Q4_1's mins.
#[inline(always)]
unsafe fn fold8<const T: u8>(acc: &[__m256; 8], accm: __m256) -> __m256 {
    let t: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(acc[4 + i], acc[i]));
    let v = _mm256_add_ps(_mm256_add_ps(t[0], t[2]), _mm256_add_ps(t[1], t[3]));
    if T == L_Q4_1 || T == L_Q5_1 {
        _mm256_add_ps(v, accm)
    } else {
        v
    }
}

#[inline(always)]
unsafe fn dot8_avx2<const T: u8, const V: bool>(
    tile: &Tile,
    x: &Q8Row,
    corr: *const i32,
    out: &mut [f32; 16],
) {
    for half in 0..2 {
        let mut acc = [[_mm256_setzero_ps(); 8]];
        let mut accm = [_mm256_setzero_ps()];
        for b in 0..tile.n_blocks() {
            if half == 0 {
                prefetch_tile(tile, b);
            } else {
                prefetch_tile_after(tile, b);
            }
            let blk = load8::<T>(tile, b, half);
            add8::<T, V, 1>(&blk, [x], [corr], b, &mut acc, &mut accm, 0..8);
        }
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * half), fold8::<T>(&acc[0], accm[0]));
    }
}

#[inline(always)]
unsafe fn gemm8_avx2<const T: u8, const V: bool>(
    tile: &Tile,
    xs: &[Q8Row],
    corrs: &[&[i32]],
    buf: &mut Vec<Block8>,
    out: &mut dyn FnMut(usize, &[f32; 16]),
) {
    let nb = tile.n_blocks();
    super::repack::refill(buf, 2 * nb, |i| load8::<T>(tile, i % nb, i / nb));
    let mut lanes = [0f32; 16];
    let mut first = 0;
    if V && (T == L_Q4_0 || T == L_Q5_0) {
        // Two tokens per pass over half a tile, four groups at a time (eight accumulators live):
        // each weight word is loaded once for both, besides the two tokens' activation and
        // offset-share broadcasts. Each accumulator takes the same fmas in the same order.
        while first + 1 < xs.len() {
            let mut two = [[0f32; 16]; 2];
            for half in 0..2 {
                let mut acc = [[_mm256_setzero_ps(); 8]; 2];
                let mut accm = [_mm256_setzero_ps(); 2];
                let x = [&xs[first], &xs[first + 1]];
                let c = [corrs[first].as_ptr(), corrs[first + 1].as_ptr()];
                for j0 in [0, 4] {
                    for (b, blk) in buf[half * nb..(half + 1) * nb].iter().enumerate() {
                        add8::<T, V, 2>(blk, x, c, b, &mut acc, &mut accm, j0..j0 + 4);
                    }
                }
                for k in 0..2 {
                    let v = fold8::<T>(&acc[k], accm[k]);
                    _mm256_storeu_ps(two[k].as_mut_ptr().add(8 * half), v);
                }
            }
            out(first, &two[0]);
            out(first + 1, &two[1]);
            first += 2;
        }
    }
    for (t, (x, corr)) in xs.iter().zip(corrs).enumerate().skip(first) {
        for half in 0..2 {
            let mut acc = [[_mm256_setzero_ps(); 8]];
            let mut accm = [_mm256_setzero_ps()];
            for (b, blk) in buf[half * nb..(half + 1) * nb].iter().enumerate() {
                add8::<T, V, 1>(blk, [x], [corr.as_ptr()], b, &mut acc, &mut accm, 0..8);
            }
            let v = fold8::<T>(&acc[0], accm[0]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * half), v);
        }
        out(t, &lanes);
    }
}

// ---- AVX-512 (VNNI): sixteen rows per pass, one per 32-bit lane, read from tiles.

/// How far ahead of the block in use a gemv asks for tile bytes: 32 KiB into L2 (`T1`). Measured
/// on an EPYC (`gemm_bench q8_0 262144 640 1 1`, gemma3's tied output): T0 at 2 KiB 13.0 ms,
/// T1 at 2 KiB 11.0, 12 KiB 9.1, 32 KiB 7.6-8.0 (22.6 GB/s, near the core's read bandwidth),
/// 48 KiB 8.7; T0 at any distance no better than at 2 KiB (it evicts the activations from L1).
/// End to end, gemma3 tg 128 -t 1 went from 35-37 to 58-64 tok/s in the same run. (The tile
/// gemvs now ask with `NTA` on AMD, see `prefetch_nta`.)
const PREFETCH_AHEAD: usize = 32768;

/// Ask for `data[from + PREFETCH_AHEAD ..][..len]` (clipped to `data`) into L2, as
/// `prefetch_tile` does for a tile: for a gemv over rows in file order, called for the rows
/// about to be read.
#[inline(always)]
pub(crate) unsafe fn prefetch_ahead(data: &[u8], from: usize, len: usize) {
    let start = from + PREFETCH_AHEAD;
    let end = (start + len).min(data.len());
    for off in (start..end).step_by(64) {
        _mm_prefetch::<_MM_HINT_T1>(data.as_ptr().add(off) as *const i8);
    }
}

/// Ask for the tile's bytes `PREFETCH_AHEAD` past block `b`'s words, as many lines as a block
/// has words: a gemv streams its weights once, and the hardware prefetcher alone leaves it at
/// about half the read bandwidth (it stops at page boundaries). Past the tile's end this
/// reaches into the next tile (a chunk's tiles are consecutive) or nowhere (a hint, never read).
#[inline(always)]
pub(crate) unsafe fn prefetch_tile(tile: &Tile, b: usize) {
    prefetch_lines(tile, b, PREFETCH_AHEAD);
    // The f16 plane is a second stream the words' prefetch reaches only at the tile's end: at
    // its first block, ask for all of this tile's plane and the next tile's.
    if b == 0 {
        let (own, next) = tile.half_planes();
        for off in (0..tile.half_bytes()).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(own.wrapping_add(off) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(off) as *const i8);
        }
    }
}

/// `prefetch_tile` one tile further on: for the second pass of a gemv that reads each tile in
/// two halves (AVX2), whose bytes come from the caches, so that the memory stream keeps going.
#[inline(always)]
pub(crate) unsafe fn prefetch_tile_after(tile: &Tile, b: usize) {
    prefetch_lines(tile, b, PREFETCH_AHEAD + tile.next_tile().1);
}

/// As many lines as a block has words, `ahead` bytes past block `b`'s: non-temporal (`NTA`)
/// on AMD, into L2 (`T1`) elsewhere (see `prefetch_nta`).
#[inline(always)]
unsafe fn prefetch_lines(tile: &Tile, b: usize, ahead: usize) {
    if prefetch_nta() {
        for k in 0..tile.words_per_block() {
            _mm_prefetch::<_MM_HINT_NTA>(tile.ahead(b, ahead + 64 * k) as *const i8);
        }
    } else {
        for k in 0..tile.words_per_block() {
            _mm_prefetch::<_MM_HINT_T1>(tile.ahead(b, ahead + 64 * k) as *const i8);
        }
    }
}

/// Whether the gemv stream's prefetches carry the non-temporal hint: on AMD's cores (and
/// Hygon's, the same design) the weights, read once per token, then displace less of what the
/// caches hold for the rest of the step. Measured on an EPYC, interleaved in the same runs:
/// tg128 mostly 2-10% faster than with `T1` at both levels and thread counts, though one of
/// five runs had smollm2 at -t 1 10% slower. `T1` stays the choice on other vendors' cores,
/// where the kernels were first tuned.
#[inline(always)]
fn prefetch_nta() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
    static NTA: AtomicU8 = AtomicU8::new(0); // 0: not yet known, 1: no, 2: yes
    match NTA.load(Relaxed) {
        0 => {
            let v = __cpuid(0);
            let vendor: Vec<u8> = [v.ebx, v.edx, v.ecx]
                .iter()
                .flat_map(|r| r.to_le_bytes())
                .collect();
            let amd = vendor == b"AuthenticAMD" || vendor == b"HygonGenuine";
            NTA.store(if amd { 2 } else { 1 }, Relaxed);
            amd
        }
        v => v == 2,
    }
}

/// The legacy types with the AVX-512 kernels (`dot16_512`, `gemm16_512`).
pub fn has_dot16_512(ty: super::GgmlType) -> bool {
    use super::GgmlType::*;
    matches!(ty, Q8_0 | Q4_1 | Q4_0 | Q5_0 | Q5_1 | IQ4_NL)
}

/// IQ4_NL's sixteen values plus 128: unsigned bytes for VNNI.
pub(crate) static IQ4NL_UNSIGNED: [u8; 16] = {
    let k = super::dequant::KVALUES_IQ4NL;
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (k[i] as i16 + 128) as u8;
        i += 1;
    }
    t
};

/// One block of sixteen rows, one row per lane: `w[j]` holds each row's values 4j..4j+4 as
/// unsigned bytes (value + `gemm_offset`), `d` the scales and `m` the mins (zero without).
#[derive(Clone, Copy)]
pub struct Block16 {
    w: [__m512i; 8],
    d: __m512,
    m: __m512,
}

/// Block `blk` of a sixteen-row tile (see `quant::repack`), unpacked one row per lane.
#[inline(always)]
unsafe fn load16(ty: super::GgmlType, blk: TileBlock) -> Block16 {
    use super::GgmlType::*;
    let word = |k: usize| _mm512_loadu_si512(blk.words.add(64 * k) as *const __m512i);
    let scale = |v: __m512i| _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v));
    let nib = _mm512_set1_epi8(0x0f);
    let mut w = [_mm512_setzero_si512(); 8];
    let mut m = _mm512_setzero_ps();
    let d = match ty {
        // d and m are word 0.
        Q4_1 | Q5_1 => scale(word(0)),
        _ => _mm512_cvtph_ps(_mm256_loadu_si256(blk.half as *const __m256i)),
    };
    match ty {
        Q4_1 | Q4_0 => {
            let qs = if ty == Q4_1 { 1 } else { 0 };
            for g in 0..4 {
                let q = word(qs + g);
                w[g] = _mm512_and_si512(q, nib);
                w[g + 4] = _mm512_and_si512(_mm512_srli_epi32::<4>(q), nib);
            }
            if ty == Q4_1 {
                m = scale(_mm512_srli_epi32::<16>(word(0)));
            }
        }
        IQ4_NL => {
            // The table's values plus 128 (`gemm_offset`), looked up by nibble in every
            // 128-bit lane.
            let table =
                _mm512_broadcast_i32x4(_mm_loadu_si128(IQ4NL_UNSIGNED.as_ptr() as *const __m128i));
            for g in 0..4 {
                let q = word(g);
                w[g] = _mm512_shuffle_epi8(table, _mm512_and_si512(q, nib));
                w[g + 4] =
                    _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi32::<4>(q), nib));
            }
        }
        Q5_0 | Q5_1 => {
            // (nibble | fifth bit << 4), the fifth bits stored as `load8` reads them.
            // Q5_1: d and m are word 0, qh word 1.
            let (qh, qs) = if ty == Q5_1 {
                (word(1), 2)
            } else {
                (word(0), 1)
            };
            if ty == Q5_1 {
                m = scale(_mm512_srli_epi32::<16>(word(0)));
            }
            let five = _mm512_set1_epi8(0x10);
            for g in 0..4 {
                let q = word(qs + g);
                let lo = _mm512_srlv_epi32(qh, _mm512_set1_epi32(g as i32));
                let hi = _mm512_sllv_epi32(qh, _mm512_set1_epi32(4 - g as i32));
                w[g] = _mm512_or_si512(_mm512_and_si512(q, nib), _mm512_and_si512(lo, five));
                w[g + 4] = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi32::<4>(q), nib),
                    _mm512_and_si512(hi, five),
                );
            }
        }
        Q8_0 => {
            let flip = _mm512_set1_epi8(-128);
            for (g, wg) in w.iter_mut().enumerate() {
                *wg = _mm512_xor_si512(word(g), flip);
            }
        }
        _ => unreachable!("has_dot16_512 is checked by the caller"),
    }
    Block16 { w, d, m }
}

/// Add block `b` of one token to a sixteen-row accumulator set in ggml's order: per 4-value group
/// j its exact integer sum (the offset's share −offset·Σy precomputed in `corr`), scaled by
/// d_w·d_y and fused-multiply-added into accumulator j; the min times the token's block sum into
/// `accm` (types with mins only: the others skip it).
#[inline(always)]
unsafe fn add_block<const MINS: bool>(
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
    if MINS {
        *accm = _mm512_fmadd_ps(blk.m, _mm512_set1_ps(*x.s.get_unchecked(b)), *accm);
    }
}

/// Eight accumulators (ggml's eight lanes, sixteen rows each) folded as ggml's `hsum_float_8`
/// folds its lanes.
#[inline(always)]
pub(crate) unsafe fn fold8_16(acc: &[__m512; 8]) -> __m512 {
    let t: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(acc[4 + i], acc[i]));
    _mm512_add_ps(_mm512_add_ps(t[0], t[2]), _mm512_add_ps(t[1], t[3]))
}

/// The eight accumulators folded, then the mins' term.
#[inline(always)]
unsafe fn finish16(acc: &[__m512; 8], accm: __m512) -> __m512 {
    _mm512_add_ps(fold8_16(acc), accm)
}

/// −offset·(sum of each four activations), the offset's share of a group's integer sum.
pub fn offset_shares(x: &Q8Row, offset: u8) -> Vec<i32> {
    x.sum4.iter().map(|&s| -(offset as i32) * s).collect()
}

/// One tile of sixteen weight rows against one activation row, one row per lane: each 4-byte
/// group of a block is one 64-byte load of the tile (all sixteen rows), so a single VNNI
/// instruction multiplies sixteen rows by one broadcast group of activations. The sums follow
/// ggml's AVX2 dots exactly (so tokens and probabilities match llama.cpp's): eight accumulators,
/// one per 4-value group of a block (ggml's eight lanes), each group's exact integer sum scaled
/// and fused-multiply-added in block order, folded as `hsum_f32_8` folds its lanes, the mins'
/// term added last.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_512(ty: super::GgmlType, tile: &Tile, x: &Q8Row, corr: &[i32]) -> [f32; 16] {
    let nb = tile.n_blocks();
    assert!(x.d.len() >= nb && x.s.len() >= nb && corr.len() >= 8 * nb && x.q.len() >= nb * 32);
    let mut acc = [_mm512_setzero_ps(); 8];
    let mut accm = _mm512_setzero_ps();
    let mins = has_mins(ty);
    for b in 0..nb {
        // Two streams of hints, one tile apart: 3-5% off gemma3's Q8_0 output gemv (7.1-7.8 ->
        // 7.0-7.3 ms at -t 1 on an EPYC, interleaved), as the AVX2 kernel's second pass gets.
        prefetch_tile(tile, b);
        prefetch_tile_after(tile, b);
        let blk = load16(ty, tile.block(b));
        if mins {
            add_block::<true>(&blk, x, corr.as_ptr(), b, &mut acc, &mut accm);
        } else {
            add_block::<false>(&blk, x, corr.as_ptr(), b, &mut acc, &mut accm);
        }
    }
    let mut out = [0f32; 16];
    _mm512_storeu_ps(out.as_mut_ptr(), finish16(&acc, accm));
    out
}

/// Prefill: one tile of sixteen weight rows against every token of `xs` (`corrs[t]` from
/// `offset_shares`), in exactly `dot16_512`'s order per row and token. The tile is unpacked
/// once into `buf` (reused between calls); tokens then go two at a time, each block's weights
/// loaded once for both. `out(t, lanes)` receives token t's sixteen lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm16_512(
    ty: super::GgmlType,
    tile: &Tile,
    xs: &[Q8Row],
    corrs: &[Vec<i32>],
    buf: &mut Vec<Block16>,
    mut out: impl FnMut(usize, &[f32; 16]),
) {
    let nb = tile.n_blocks();
    assert!(corrs.len() == xs.len());
    for (x, c) in xs.iter().zip(corrs) {
        assert!(x.d.len() >= nb && x.s.len() >= nb && c.len() >= 8 * nb && x.q.len() >= nb * 32);
    }
    super::repack::refill(buf, nb, |b| load16(ty, tile.block(b)));
    // The next tile is asked for during the first pass, a share of its lines per block: the
    // unpacking above otherwise waits on memory for every block of a matrix that is not in
    // cache (a hint: past the matrix's end it is never read).
    let mut pf = Prefetch::next_of(tile);
    let mut t = 0;
    let mins = has_mins(ty);
    debug_assert!(!mins || gemm_offset(ty) == 0);
    while t < xs.len() {
        let left = xs.len() - t;
        t += match (left, mins) {
            (1, false) => pass16::<1, false>(buf, xs, corrs, t, &mut pf, &mut out),
            (1, true) => pass16::<1, true>(buf, xs, corrs, t, &mut pf, &mut out),
            (2, false) => pass16::<2, false>(buf, xs, corrs, t, &mut pf, &mut out),
            (2, true) => pass16::<2, true>(buf, xs, corrs, t, &mut pf, &mut out),
            (_, false) => pass16::<GEMM_TOKENS, false>(buf, xs, corrs, t, &mut pf, &mut out),
            (_, true) => pass16::<GEMM_TOKENS, true>(buf, xs, corrs, t, &mut pf, &mut out),
        };
    }
}

/// The next tile's lines still to prefetch, a share per block of this one.
struct Prefetch {
    next: *const u8,
    lines: usize,
    done: usize,
    per_block: usize,
}

impl Prefetch {
    fn next_of(tile: &Tile) -> Self {
        let (next, len) = tile.next_tile();
        Prefetch {
            next,
            lines: len.div_ceil(64),
            done: 0,
            per_block: len.div_ceil(64).div_ceil(tile.n_blocks().max(1)),
        }
    }

    #[inline(always)]
    unsafe fn step(&mut self) {
        let end = (self.done + self.per_block).min(self.lines);
        for l in self.done..end {
            _mm_prefetch::<_MM_HINT_T0>(self.next.wrapping_add(64 * l) as *const i8);
        }
        self.done = end;
    }
}

/// Tokens per pass over an unpacked tile: each block's eight weight vectors loaded once for
/// all of them, 8·T accumulators held in registers.
const GEMM_TOKENS: usize = 2;

/// Whether a legacy type has a min (a term added per block outside the integer sums).
fn has_mins(ty: super::GgmlType) -> bool {
    matches!(ty, super::GgmlType::Q4_1 | super::GgmlType::Q5_1)
}

/// Tokens t..t + T against the unpacked tile `buf`; returns T. The same per-row, per-token
/// operations as `add_block` in the same order, but group-major: each weight vector is loaded
/// once and used for all T tokens at once, so only 8·T accumulators, T scales and one weight
/// vector are live (a token-major loop kept all eight weight vectors live beside the
/// accumulators and spilled). Types with mins have no offset (`gemm_offset` 0), so their
/// integer sums start at zero instead of a broadcast share.
#[inline(always)]
unsafe fn pass16<const T: usize, const MINS: bool>(
    buf: &[Block16],
    xs: &[Q8Row],
    corrs: &[Vec<i32>],
    t: usize,
    pf: &mut Prefetch,
    out: &mut impl FnMut(usize, &[f32; 16]),
) -> usize {
    let mut acc = [[_mm512_setzero_ps(); 8]; T];
    let mut accm = [_mm512_setzero_ps(); T];
    let yps: [*const i32; T] = std::array::from_fn(|k| xs[t + k].q.as_ptr() as *const i32);
    let cps: [*const i32; T] = std::array::from_fn(|k| corrs[t + k].as_ptr());
    let xds: [*const f32; T] = std::array::from_fn(|k| xs[t + k].d.as_ptr());
    let xss: [*const f32; T] = std::array::from_fn(|k| xs[t + k].s.as_ptr());
    for (b, blk) in buf.iter().enumerate() {
        if pf.done < pf.lines {
            pf.step();
        }
        let dd: [__m512; T] =
            std::array::from_fn(|k| _mm512_mul_ps(blk.d, _mm512_set1_ps(*xds[k].add(b))));
        for j in 0..8 {
            let w = blk.w[j];
            for k in 0..T {
                let y = _mm512_set1_epi32(yps[k].add(b * 8 + j).read_unaligned());
                let init = if MINS {
                    _mm512_setzero_si512()
                } else {
                    _mm512_set1_epi32(*cps[k].add(b * 8 + j))
                };
                let s = _mm512_dpbusd_epi32(init, w, y);
                acc[k][j] = _mm512_fmadd_ps(dd[k], _mm512_cvtepi32_ps(s), acc[k][j]);
            }
        }
        if MINS {
            for k in 0..T {
                accm[k] = _mm512_fmadd_ps(blk.m, _mm512_set1_ps(*xss[k].add(b)), accm[k]);
            }
        }
    }
    let mut lanes = [0f32; 16];
    for k in 0..T {
        _mm512_storeu_ps(lanes.as_mut_ptr(), finish16(&acc[k], accm[k]));
        out(t + k, &lanes);
    }
    T
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

// ---- Activation quantization.

/// Largest of eight lanes (exact in any order).
#[inline(always)]
unsafe fn hmax_f32_8(x: __m256) -> f32 {
    let r = _mm_max_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    let r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    _mm_cvtss_f32(_mm_max_ss(r, _mm_movehdup_ps(r)))
}

/// Four i32 vectors of values in [-128, 127] as 32 bytes in order.
#[inline(always)]
unsafe fn pack_i8_32(q: [__m256i; 4]) -> __m256i {
    let p = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    // The packs work per 128-bit half: undo their interleave of the four sources.
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `q8::quantize_q8_portable` eight values a vector: the largest magnitude (a max ignores NaN
/// lanes as `f32::max` does), d and 1/d as scalars, v·(1/d) rounded to nearest even.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_avx2(x: &[f32], out: &mut Q8Row) {
    out.start(x.len() / 32);
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    for (i, b) in x.chunks_exact(32).enumerate() {
        let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(b.as_ptr().add(8 * k)));
        let mut m = _mm256_setzero_ps();
        for vk in v {
            m = _mm256_max_ps(_mm256_and_ps(vk, abs), m);
        }
        let amax = hmax_f32_8(m);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q: [__m256i; 4] = std::array::from_fn(|k| {
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(v[k], id),
            );
            _mm256_cvtps_epi32(r)
        });
        let sum = hsum_epi32_8(_mm256_add_epi32(
            _mm256_add_epi32(q[0], q[1]),
            _mm256_add_epi32(q[2], q[3]),
        ));
        let p = pack_i8_32(q);
        _mm256_storeu_si256(out.q.as_mut_ptr().add(32 * i) as *mut __m256i, p);
        // Sums of four: byte pairs, then pairs of pairs.
        let s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, p), ones16);
        _mm256_storeu_si256(out.sum4.as_mut_ptr().add(8 * i) as *mut __m256i, s4);
        out.d.push(round_f16_f16c(d));
        out.s.push(round_f16_f16c(d * sum as f32));
    }
}

/// The sum of eight i32 lanes (exact).
#[inline(always)]
unsafe fn hsum_epi32_8(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_extracti128_si256(v, 1), _mm256_castsi256_si128(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)))
}

/// `round_f16` with F16C's conversion (round to nearest even, as `f32_to_f16`).
#[inline(always)]
unsafe fn round_f16_f16c(x: f32) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(
        _mm_set_ss(x),
    )))
}

/// `quantize_q8_avx2` a block (two vectors) at a time: the same largest magnitude (NaN lanes
/// skipped), d and 1/d as scalars, each value rounded to nearest even and narrowed with
/// saturation (as the AVX2 packs do), the sums of four from one VNNI instruction.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn quantize_q8_512(x: &[f32], out: &mut Q8Row) {
    out.start(x.len() / 32);
    let ones = _mm256_set1_epi8(1);
    for (i, b) in x.chunks_exact(32).enumerate() {
        let v = [
            _mm512_loadu_ps(b.as_ptr()),
            _mm512_loadu_ps(b.as_ptr().add(16)),
        ];
        let mut m = _mm512_setzero_ps();
        for vk in v {
            m = _mm512_max_ps(_mm512_abs_ps(vk), m);
        }
        let amax = _mm512_reduce_max_ps(m);
        let d = amax / 127.0;
        let id = _mm512_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q = v.map(|vk| {
            let q = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(vk, id),
            );
            _mm512_cvtsepi32_epi8(q)
        });
        let p = _mm256_set_m128i(q[1], q[0]);
        _mm256_storeu_si256(out.q.as_mut_ptr().add(32 * i) as *mut __m256i, p);
        let s4 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, p);
        _mm256_storeu_si256(out.sum4.as_mut_ptr().add(8 * i) as *mut __m256i, s4);
        let sum = hsum_epi32_8(s4);
        out.d.push(round_f16_f16c(d));
        out.s.push(round_f16_f16c(d * sum as f32));
    }
}

/// `q8::quantize_q8k_portable` eight values a vector: the scale comes from the first value of
/// the largest magnitude (found by comparing every value with that magnitude), each value is
/// rounded to nearest even and capped at 127, and each 16 values are summed exactly.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8k_avx2(x: &[f32], out: &mut Q8KRow) {
    let nb = x.len() / 256;
    out.d.clear();
    out.d.reserve_exact(nb);
    out.q.clear();
    out.q.resize(nb * 256, 0);
    out.bsums.clear();
    out.bsums.resize(nb * 16, 0);
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    let cap = _mm256_set1_epi32(127);
    for (i, b) in x.chunks_exact(256).enumerate() {
        let mut m = _mm256_setzero_ps();
        for k in 0..32 {
            m = _mm256_max_ps(
                _mm256_and_ps(_mm256_loadu_ps(b.as_ptr().add(8 * k)), abs),
                m,
            );
        }
        let amax = hmax_f32_8(m);
        if amax == 0.0 {
            out.d.push(0.0);
            continue; // q and bsums are already zero
        }
        let am = _mm256_set1_ps(amax);
        let mut first = 0;
        for k in 0..32 {
            let v = _mm256_and_ps(_mm256_loadu_ps(b.as_ptr().add(8 * k)), abs);
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, am));
            if hit != 0 {
                first = 8 * k + hit.trailing_zeros() as usize;
                break;
            }
        }
        let iscale = -127.0 / b[first];
        let is = _mm256_set1_ps(iscale);
        for g in 0..8 {
            let q: [__m256i; 4] = std::array::from_fn(|k| {
                let v = _mm256_mul_ps(is, _mm256_loadu_ps(b.as_ptr().add(32 * g + 8 * k)));
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm256_min_epi32(_mm256_cvtps_epi32(r), cap)
            });
            let p = pack_i8_32(q);
            _mm256_storeu_si256(out.q.as_mut_ptr().add(256 * i + 32 * g) as *mut __m256i, p);
            // Sums of sixteen: of four per 32-bit lane, then each 128-bit half's four lanes.
            let s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, p), ones16);
            let s8 = _mm256_hadd_epi32(s4, s4);
            let s16 = _mm256_hadd_epi32(s8, s8);
            out.bsums[16 * i + 2 * g] = _mm256_extract_epi32::<0>(s16) as i16;
            out.bsums[16 * i + 2 * g + 1] = _mm256_extract_epi32::<4>(s16) as i16;
        }
        out.d.push(1.0 / iscale);
    }
}

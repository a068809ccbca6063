//! AVX2 and AVX-512 (VNNI) K-quant dots against Q8_K activations.
//!
//! The integer sums of a super-block are formed with `maddubs` (unsigned weight × signed
//! activation, pairs to i16: no saturation, the weights are below 64, or |w| ≤ 127 with the
//! activation carrying w's sign for IQ4_XS) and a multiply-add of those pairs with the 16-value
//! scales into i32 lanes. The sums are exact, so reducing them in any order gives the integers the
//! portable code forms (Q6_K keeps ggml's eight lanes), and the f32 steps after them are
//! `kquant::KAcc`'s, in block order: every level returns bit-identical results.
//!
//! AVX2, Q2_K..Q6_K and IQ4_XS: sixteen rows per pass from tiles (`quant::repack`) as two halves
//! of eight lanes, one row per lane (`gemm16_k_avx2`, every token count; one token streams the
//! tile, a batch unpacks it once); without tiles, a single
//! token dots Q4_K / Q6_K rows directly (`dot_q4k_avx2`, `dot_q6k_avx2`). The other types, and
//! those without tiles, take a row unpacked once (`KRow`) and run four tokens per weight load
//! (`gemm_k_avx2`, and `gemm_k_512` for the types without tiles). AVX-512, Q2_K..Q6_K and
//! IQ4_XS: sixteen rows per pass from tiles, one row per lane (`gemm16_k45_512`,
//! `gemm16_k36_512`; one token streams the tile with VNNI: `dot16_q4k_512` (Q4_K, Q5_K),
//! `dot16_q6k_512`, `dot16_q3k_512`, `dot16_q2k_512`, `dot16_iq4xs_512`).

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::kquant::{k4_scales_mins, KAcc, KOrder, KRow};
use super::q8::Q8KRow;
use super::repack::{Tile, TileBlock};
use super::x86::{hsum_f32_8, prefetch_tile, prefetch_tile_after};
use super::GgmlType;

#[inline(always)]
unsafe fn f16le(b: &[u8], i: usize) -> f32 {
    let h = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

#[inline(always)]
fn check_x(x: &Q8KRow, nb: usize) {
    assert!(x.d.len() >= nb && x.q.len() >= 256 * nb && x.bsums.len() >= 16 * nb);
}

/// The integer totals of two 8-lane vectors.
#[inline(always)]
unsafe fn hsum2(s: __m256i, m: __m256i) -> (i32, i32) {
    let h = _mm256_hadd_epi32(s, m);
    let h = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
    let h = _mm_hadd_epi32(h, h);
    (_mm_cvtsi128_si32(h), _mm_extract_epi32::<1>(h))
}

/// Activation sums of 16 times the Q4_K/Q5_K mins (one per 32 values, so each used twice).
#[inline(always)]
unsafe fn k4_mins_term(sm: __m128i, bsums: *const i16) -> __m256i {
    let mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));
    _mm256_madd_epi16(_mm256_loadu_si256(bsums as *const __m256i), mins)
}

// ---------------------------------------------------------------------------------------------
// AVX2

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4k_avx2(w: &[u8], x: &Q8KRow) -> f32 {
    let nb = w.len() / 144;
    check_x(x, nb);
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = KAcc::new(KOrder::Split, false);
    for (b, blk) in w.chunks_exact(144).enumerate() {
        let sm = k4_scales_mins(&blk[4..16]);
        let qs = blk.as_ptr().add(16);
        let xq = x.q.as_ptr().add(256 * b);
        let mut iacc = _mm256_setzero_si256();
        for n in 0..4 {
            let t = _mm256_loadu_si256(qs.add(32 * n) as *const __m256i);
            let lo = _mm256_and_si256(t, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(t), m4);
            let y0 = _mm256_loadu_si256(xq.add(64 * n) as *const __m256i);
            let y1 = _mm256_loadu_si256(xq.add(64 * n + 32) as *const __m256i);
            let p0 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(lo, y0),
                _mm256_set1_epi16(sm[2 * n] as i16),
            );
            let p1 = _mm256_madd_epi16(
                _mm256_maddubs_epi16(hi, y1),
                _mm256_set1_epi16(sm[2 * n + 1] as i16),
            );
            iacc = _mm256_add_epi32(iacc, _mm256_add_epi32(p0, p1));
        }
        let smv = _mm_loadu_si128(sm.as_ptr() as *const __m128i);
        let mv = k4_mins_term(smv, x.bsums.as_ptr().add(16 * b));
        let (sumi, summ) = hsum2(iacc, mv);
        acc.add(f16le(blk, 0), f16le(blk, 2), x.d[b], sumi, summ, &[0; 8]);
    }
    acc.finish()
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6k_avx2(w: &[u8], x: &Q8KRow) -> f32 {
    let nb = w.len() / 210;
    check_x(x, nb);
    let m4 = _mm256_set1_epi8(0x0f);
    let m30 = _mm256_set1_epi8(0x30);
    let mut accf = _mm256_setzero_ps();
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let p = blk.as_ptr();
        let sc = &blk[192..208];
        let xq = x.q.as_ptr().add(256 * b);
        let mut acc = _mm256_setzero_si256();
        for h in 0..2 {
            let l0 = _mm256_loadu_si256(p.add(64 * h) as *const __m256i);
            let l1 = _mm256_loadu_si256(p.add(64 * h + 32) as *const __m256i);
            let hb = _mm256_loadu_si256(p.add(128 + 32 * h) as *const __m256i);
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(l0, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(l1, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                    _mm256_and_si256(hb, m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m30),
                ),
            ];
            for (k, qk) in q.iter().enumerate() {
                let g = 8 * h + 2 * k;
                let scv = _mm256_set_m128i(
                    _mm_set1_epi16(sc[g + 1] as i8 as i16),
                    _mm_set1_epi16(sc[g] as i8 as i16),
                );
                let y = _mm256_loadu_si256(xq.add(128 * h + 32 * k) as *const __m256i);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(*qk, y), scv));
            }
        }
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.as_ptr() as *const __m128i));
        let bs = _mm256_loadu_si256(x.bsums.as_ptr().add(16 * b) as *const __m256i);
        let off = _mm256_slli_epi32::<5>(_mm256_madd_epi16(bs, sc16));
        // ggml's eight lanes (`kquant::q6k_lanes`), each fused into its own accumulator.
        let dd = _mm256_set1_ps(x.d[b] * f16le(blk, 208));
        accf = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, off)), accf);
    }
    hsum_f32_8(accf)
}

/// One or four tokens against a row unpacked in `u` (a short batch repeats its last token).
#[inline(always)]
unsafe fn gemm4_avx2<const SIGNED: bool, const NT: usize>(
    u: &KRow,
    xp: [&Q8KRow; NT],
    nb: usize,
    order: KOrder,
) -> [f32; 4] {
    let mut st = [KAcc::new(order, u.fold); NT];
    let mut v4 = (_mm_setzero_ps(), _mm_setzero_ps());
    let xq = xp.map(|x| x.q.as_ptr());
    for b in 0..nb {
        let mut acc = [_mm256_setzero_si256(); NT];
        let mins = if order.per64() {
            mins64(u, &xp, b)
        } else {
            [[0; 8]; NT]
        };
        let sc = u.sc.as_ptr().add(16 * b);
        for v in 0..8 {
            let mut w = _mm256_loadu_si256(u.q.as_ptr().add(256 * b + 32 * v) as *const __m256i);
            let sw = w;
            if SIGNED {
                w = _mm256_sign_epi8(w, w);
            }
            let scv = _mm256_set_m128i(
                _mm_set1_epi16(*sc.add(2 * v + 1)),
                _mm_set1_epi16(*sc.add(2 * v)),
            );
            for k in 0..NT {
                let mut y = _mm256_loadu_si256(xq[k].add(256 * b + 32 * v) as *const __m256i);
                if SIGNED {
                    y = _mm256_sign_epi8(y, sw);
                }
                acc[k] =
                    _mm256_add_epi32(acc[k], _mm256_madd_epi16(_mm256_maddubs_epi16(w, y), scv));
            }
            if order.per64() && v % 2 == 1 {
                // One float step per 64 values.
                if NT == 4 {
                    add64x4(u, &xp, b, v / 2, &mins, &mut acc, &mut v4);
                } else {
                    add64(u, &xp, b, v / 2, &mins, &mut acc, &mut st);
                }
            }
        }
        if matches!(order, KOrder::Tiled | KOrder::Split) && NT == 4 {
            step4(u, &xp, b, acc, order, &mut v4);
        } else if !order.per64() {
            combine(u, &xp, b, acc, &mut st);
        }
    }
    if matches!(order, KOrder::Split64 | KOrder::Split | KOrder::Tiled) && NT == 4 {
        // Tiled keeps no mins' accumulator (v4.1 stays zero).
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), _mm_sub_ps(v4.0, v4.1));
        return out;
    }
    finish(&st)
}

/// Add the 64 values from `64·p` of super-block `b` for every token (`KOrder::Split64`), whose
/// integer sums are in `acc` (then cleared); `mins[k][j]` = mn[2j]·bsums[2j] + mn[2j+1]·bsums[2j+1]
/// of token k in this super-block.
#[inline(always)]
unsafe fn add64<const NT: usize>(
    u: &KRow,
    xp: &[&Q8KRow; NT],
    b: usize,
    p: usize,
    mins: &[[i32; 8]; NT],
    acc: &mut [__m256i; NT],
    st: &mut [KAcc; NT],
) {
    for k in 0..NT {
        let h = _mm_add_epi32(
            _mm256_castsi256_si128(acc[k]),
            _mm256_extracti128_si256::<1>(acc[k]),
        );
        let h = _mm_hadd_epi32(h, h);
        let sumi = _mm_cvtsi128_si32(_mm_hadd_epi32(h, h));
        let summ = mins[k][2 * p] + mins[k][2 * p + 1];
        st[k].add(u.d[b], u.dmin[b], xp[k].d[b], sumi, summ, &[0; 8]);
        acc[k] = _mm256_setzero_si256();
    }
}

/// `add64` for four tokens at once, one lane each (the same operations per lane): `v` holds
/// the scales' and the mins' f32 accumulators.
#[inline(always)]
unsafe fn add64x4<const NT: usize>(
    u: &KRow,
    xp: &[&Q8KRow; NT],
    b: usize,
    p: usize,
    mins: &[[i32; 8]; NT],
    acc: &mut [__m256i; NT],
    v: &mut (__m128, __m128),
) {
    let a = _mm256_hadd_epi32(acc[0], acc[1 % NT]);
    let c = _mm256_hadd_epi32(acc[2 % NT], acc[3 % NT]);
    let h = _mm256_hadd_epi32(a, c);
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
    let m = |k: usize| mins[k % NT][2 * p] + mins[k % NT][2 * p + 1];
    let m4 = _mm_setr_epi32(m(0), m(1), m(2), m(3));
    let xd = _mm_setr_ps(
        xp[0].d[b],
        xp[1 % NT].d[b],
        xp[2 % NT].d[b],
        xp[3 % NT].d[b],
    );
    let dd = _mm_mul_ps(_mm_set1_ps(u.d[b]), xd);
    let dm = _mm_mul_ps(_mm_set1_ps(u.dmin[b]), xd);
    v.0 = _mm_fmadd_ps(_mm_cvtepi32_ps(s4), dd, v.0);
    v.1 = _mm_fmadd_ps(_mm_cvtepi32_ps(m4), dm, v.1);
    *acc = [_mm256_setzero_si256(); NT];
}

/// The totals of four 8-lane vectors, one per lane.
#[inline(always)]
unsafe fn totals4(v: [__m256i; 4]) -> __m128i {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// `KOrder::Tiled` or `KOrder::Split` for four tokens at once, one lane each (the same
/// operations per lane as `KAcc::add`); `v` holds the (scales', mins') accumulators.
#[inline(always)]
unsafe fn step4<const NT: usize>(
    u: &KRow,
    xp: &[&Q8KRow; NT],
    b: usize,
    acc: [__m256i; NT],
    order: KOrder,
    v: &mut (__m128, __m128),
) {
    let mn = _mm256_loadu_si256(u.mn.as_ptr().add(16 * b) as *const __m256i);
    let mut m = [_mm256_setzero_si256(); 4];
    for (k, mk) in m.iter_mut().enumerate() {
        let bs = _mm256_loadu_si256(xp[k % NT].bsums.as_ptr().add(16 * b) as *const __m256i);
        *mk = _mm256_madd_epi16(bs, mn);
    }
    let a = [acc[0], acc[1 % NT], acc[2 % NT], acc[3 % NT]];
    let xd = _mm_setr_ps(
        xp[0].d[b],
        xp[1 % NT].d[b],
        xp[2 % NT].d[b],
        xp[3 % NT].d[b],
    );
    if order == KOrder::Tiled {
        let mut t = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            t[k] = _mm256_sub_epi32(a[k], m[k]);
        }
        let r = _mm_mul_ps(_mm_cvtepi32_ps(totals4(t)), _mm_set1_ps(u.d[b]));
        v.0 = _mm_fmadd_ps(r, xd, v.0);
    } else {
        let dd = _mm_mul_ps(_mm_set1_ps(u.d[b]), xd);
        let dm = _mm_mul_ps(_mm_set1_ps(u.dmin[b]), xd);
        v.0 = _mm_fmadd_ps(_mm_cvtepi32_ps(totals4(a)), dd, v.0);
        v.1 = _mm_fmadd_ps(_mm_cvtepi32_ps(totals4(m)), dm, v.1);
    }
}

/// Per token, the mins' shares of super-block `b` in pairs of 16-value groups (see `add64`).
#[inline(always)]
unsafe fn mins64<const NT: usize>(u: &KRow, xp: &[&Q8KRow; NT], b: usize) -> [[i32; 8]; NT] {
    let mn = _mm256_loadu_si256(u.mn.as_ptr().add(16 * b) as *const __m256i);
    let mut out = [[0i32; 8]; NT];
    for k in 0..NT {
        let bs = _mm256_loadu_si256(xp[k].bsums.as_ptr().add(16 * b) as *const __m256i);
        _mm256_storeu_si256(
            out[k].as_mut_ptr() as *mut __m256i,
            _mm256_madd_epi16(bs, mn),
        );
    }
    out
}

/// Add super-block `b` for every token whose integer sums (eight lanes each) are in `acc`.
#[inline(always)]
unsafe fn combine<const NT: usize>(
    u: &KRow,
    xp: &[&Q8KRow; NT],
    b: usize,
    acc: [__m256i; NT],
    st: &mut [KAcc; NT],
) {
    let mn = _mm256_loadu_si256(u.mn.as_ptr().add(16 * b) as *const __m256i);
    for k in 0..NT {
        let bs = _mm256_loadu_si256(xp[k].bsums.as_ptr().add(16 * b) as *const __m256i);
        let m = _mm256_madd_epi16(bs, mn);
        if st[k].order() == KOrder::Lanes {
            let mut lanes = [0i32; 8];
            _mm256_storeu_si256(
                lanes.as_mut_ptr() as *mut __m256i,
                _mm256_sub_epi32(acc[k], m),
            );
            st[k].add(u.d[b], u.dmin[b], xp[k].d[b], 0, 0, &lanes);
        } else {
            let (sumi, summ) = hsum2(acc[k], m);
            st[k].add(u.d[b], u.dmin[b], xp[k].d[b], sumi, summ, &[0; 8]);
        }
    }
}

#[inline(always)]
fn finish<const NT: usize>(st: &[KAcc; NT]) -> [f32; 4] {
    let mut out = [0f32; 4];
    for (o, a) in out.iter_mut().zip(st) {
        *o = a.finish();
    }
    out
}

#[inline(always)]
fn check_row(u: &KRow, xs: &[Q8KRow], out: &[f32]) -> usize {
    let nb = u.d.len();
    assert!(
        u.dmin.len() == nb
            && u.q.len() >= 256 * nb
            && u.sc.len() >= 16 * nb
            && u.mn.len() >= 16 * nb
            && out.len() >= xs.len()
    );
    for x in xs {
        check_x(x, nb);
    }
    nb
}

#[inline(always)]
fn quad(xs: &[Q8KRow]) -> [&Q8KRow; 4] {
    let last = xs.len() - 1;
    [&xs[0], &xs[1.min(last)], &xs[2.min(last)], &xs[3.min(last)]]
}

/// out[t] = row · xs[t], four tokens per pass over the unpacked row (a lone token on its own).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_k_avx2(
    u: &KRow,
    xs: &[Q8KRow],
    out: &mut [f32],
    order: &dyn Fn(usize) -> KOrder,
) {
    let nb = check_row(u, xs, out);
    for (c, (xs, out)) in xs.chunks(4).zip(out.chunks_mut(4)).enumerate() {
        // Every token of a chunk of four has the same order (see `KOrder::for_batch`).
        let o = order(4 * c);
        let r = match (u.signed, xs.len()) {
            (true, 1) => gemm4_avx2::<true, 1>(u, [&xs[0]], nb, o),
            (false, 1) => gemm4_avx2::<false, 1>(u, [&xs[0]], nb, o),
            (true, _) => gemm4_avx2::<true, 4>(u, quad(xs), nb, o),
            (false, _) => gemm4_avx2::<false, 4>(u, quad(xs), nb, o),
        };
        out.copy_from_slice(&r[..out.len()]);
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 over tiles: Q3_K..Q6_K, a tile of sixteen rows per pass as two halves of eight rows,
// one row per 32-bit lane (the tile layout of `quant::repack`, its 64-byte words read as two
// 32-byte halves). Without VNNI a group of four values is `maddubs` (two i16 per lane) and the
// groups of a scale are summed in i16 before one `madd` with the scale: |q·x| pairs are at most
// 2·15·127 = 3810 for Q4_K, so eight groups (a sub-block) fit an i16; 2·63·127 = 16002 for Q6_K,
// so two do. The sums are exact, so the float steps (`KAcc`'s, lane by lane) give the same bits
// as every other level.

/// `run_k4_avx2`'s weight types.
const K4: u8 = 0;
const K5: u8 = 1;
const KX: u8 = 2;

/// Q4_K super-block of eight rows (half a tile), one row per lane (also Q5_K's, and IQ4_XS's
/// with signed quants and no mins).
#[derive(Clone, Copy)]
pub struct K4Half {
    /// [sub-block][4-value group]: the quants (0..15), four bytes per lane.
    q: [[__m256i; 8]; 8],
    /// Sub-block scales, each in both i16 of its lane (for `madd`).
    sc: [__m256i; 8],
    /// Sub-block mins in pairs (2p in the low i16, 2p + 1 in the high one).
    mn: [__m256i; 4],
    d: __m256,
    dmin: __m256,
}

/// Q6_K super-block of eight rows (half a tile), one row per lane.
#[derive(Clone, Copy)]
pub struct K6Half {
    /// [16-value group][4-value word]: the quants (0..63), four bytes per lane.
    q: [[__m256i; 4]; 16],
    /// Group scales, each in both i16 of its lane.
    sc: [__m256i; 16],
    /// What multiplies the activations' 16-value sums, in pairs (2p in the low i16, 2p + 1 in
    /// the high one): the scales (Q6_K, Q3_K: their mins are a multiple of them) or Q2_K's mins.
    scp: [__m256i; 8],
    d: __m256,
    /// Q2_K's dmin (zero for the others).
    dmin: __m256,
}

/// A tile's two halves of one super-block, unpacked.
pub type KHalves<B> = [B; 2];

/// The word at byte `o` of a tile block for rows 8·half.. (eight lanes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn word8(blk: TileBlock, o: usize, half: usize) -> __m256i {
    _mm256_loadu_si256(blk.words.add(16 * o + 32 * half) as *const __m256i)
}

/// An i32 per lane (|v| < 2^15) in both of its i16.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn both16(v: __m256i) -> __m256i {
    _mm256_or_si256(
        _mm256_and_si256(v, _mm256_set1_epi32(0xffff)),
        _mm256_slli_epi32::<16>(v),
    )
}

/// The i32 of a `both16` value.
#[inline(always)]
unsafe fn of_both16(v: __m256i) -> __m256i {
    _mm256_srai_epi32::<16>(v)
}

/// `acc` + `madd(a, b)`: one `vpdpwssd` with AVX-VNNI (`V`), the same integers.
#[inline(always)]
unsafe fn madd_add<const V: bool>(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    if V {
        _mm256_dpwssd_avx_epi32(acc, a, b)
    } else {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }
}

/// `s` plus one 4-value group's products `u`·`y` per lane: in i32 by `vpdpbusd` with AVX-VNNI
/// (`V`), else in i16 pairs by `maddubs` (the callers bound those sums).
#[inline(always)]
unsafe fn group_sum<const V: bool>(s: __m256i, u: __m256i, y: __m256i) -> __m256i {
    if V {
        _mm256_dpbusd_avx_epi32(s, u, y)
    } else {
        _mm256_add_epi16(s, _mm256_maddubs_epi16(u, y))
    }
}

/// `group_sum`'s total times a scale in `both16` form, as i32 lanes: `vpmulld` with AVX-VNNI
/// (`V`), else `madd`.
#[inline(always)]
unsafe fn times_scale<const V: bool>(s: __m256i, sc: __m256i) -> __m256i {
    if V {
        _mm256_mullo_epi32(s, of_both16(sc))
    } else {
        _mm256_madd_epi16(s, sc)
    }
}

/// Two i32 per lane (|v| < 2^15) as one i16 pair (`lo` low).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn pair16(lo: __m256i, hi: __m256i) -> __m256i {
    _mm256_or_si256(
        _mm256_and_si256(lo, _mm256_set1_epi32(0xffff)),
        _mm256_slli_epi32::<16>(hi),
    )
}

/// The scale and min of sub-block `j` of eight Q4_K/Q5_K super-blocks, one per lane, from their
/// 12 packed bytes as three 4-byte words (`k4_scale_min16` for eight lanes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k4_scale_min8(packed: [__m256i; 3], j: u32) -> (__m256i, __m256i) {
    let [s0, s1, s2] = packed;
    let shr = |v: __m256i, n: u32| _mm256_srlv_epi32(v, _mm256_set1_epi32(n as i32));
    let (k6, k4, k3) = (
        _mm256_set1_epi32(63),
        _mm256_set1_epi32(15),
        _mm256_set1_epi32(3),
    );
    if j < 4 {
        (
            _mm256_and_si256(shr(s0, 8 * j), k6),
            _mm256_and_si256(shr(s1, 8 * j), k6),
        )
    } else {
        let j = j - 4;
        let hi = |v: __m256i| _mm256_slli_epi32::<4>(_mm256_and_si256(shr(v, 8 * j + 6), k3));
        (
            _mm256_or_si256(_mm256_and_si256(shr(s2, 8 * j), k4), hi(s0)),
            _mm256_or_si256(_mm256_and_si256(shr(s2, 8 * j + 4), k4), hi(s1)),
        )
    }
}

/// Q6_K's quants of values 128h + 32k + 4g.. (k = 0..4) from the words `a` (ql at 64h + 4g),
/// `c` (ql at 64h + 32 + 4g) and `hb` (qh at 128 + 32h + 4g), as `KRow::unpack` builds them.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6_quants8(a: __m256i, c: __m256i, hb: __m256i) -> [__m256i; 4] {
    let (lo4, hi2) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
    [
        _mm256_or_si256(
            _mm256_and_si256(a, lo4),
            _mm256_and_si256(_mm256_slli_epi16::<4>(hb), hi2),
        ),
        _mm256_or_si256(
            _mm256_and_si256(c, lo4),
            _mm256_and_si256(_mm256_slli_epi16::<2>(hb), hi2),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(a), lo4),
            _mm256_and_si256(hb, hi2),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(c), lo4),
            _mm256_and_si256(_mm256_srli_epi16::<2>(hb), hi2),
        ),
    ]
}

/// The sixteen signed scales of eight Q6_K super-blocks (bytes 192.., four per word), one i32 per
/// lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6_scales8(p: TileBlock, half: usize) -> [__m256i; 16] {
    let mut sc = [_mm256_setzero_si256(); 16];
    for k in 0..4 {
        let s = word8(p, 192 + 4 * k, half);
        // Sign-extend byte j of each lane: scale 4k + j.
        sc[4 * k] = _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(s));
        sc[4 * k + 1] = _mm256_srai_epi32::<24>(_mm256_slli_epi32::<16>(s));
        sc[4 * k + 2] = _mm256_srai_epi32::<24>(_mm256_slli_epi32::<8>(s));
        sc[4 * k + 3] = _mm256_srai_epi32::<24>(s);
    }
    sc
}

/// d (the low f16 of each lane's word) and dmin (the high one) of eight super-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn d_dmin8(dm: __m256i) -> (__m256, __m256) {
    let packed = _mm256_packus_epi32(
        _mm256_and_si256(dm, _mm256_set1_epi32(0xffff)),
        _mm256_srli_epi32::<16>(dm),
    );
    let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
    (
        _mm256_cvtph_ps(_mm256_castsi256_si128(packed)),
        _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(packed)),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_k4_half(p: TileBlock, half: usize, q5: bool) -> K4Half {
    let word = |o: usize| word8(p, o, half);
    let packed = [word(4), word(8), word(12)];
    let scale_min = |j: u32| k4_scale_min8(packed, j);
    let (d, dmin) = d_dmin8(word(0));
    let mut blk = K4Half {
        q: [[_mm256_setzero_si256(); 8]; 8],
        sc: [_mm256_setzero_si256(); 8],
        mn: [_mm256_setzero_si256(); 4],
        d,
        dmin,
    };
    let (nib, one) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(1));
    let quants = if q5 { 48 } else { 16 };
    for g in 0..8 {
        // Q5_K's fifth bits of values 4g.. of every 32: bit 2c (low nibbles of chunk c) and
        // 2c + 1 (high nibbles) of qh[l].
        let h = word(16 + 4 * g);
        let bit = |s: usize| {
            let v = _mm256_srl_epi16(h, _mm_cvtsi32_si128(s as i32));
            _mm256_slli_epi16::<4>(_mm256_and_si256(v, one))
        };
        for c in 0..4 {
            // 32 bytes of quants per chunk c: low nibbles are sub-block 2c, high nibbles 2c + 1.
            let q = word(quants + 32 * c + 4 * g);
            let (mut lo, mut hi) = (
                _mm256_and_si256(q, nib),
                _mm256_and_si256(_mm256_srli_epi32::<4>(q), nib),
            );
            if q5 {
                lo = _mm256_or_si256(lo, bit(2 * c));
                hi = _mm256_or_si256(hi, bit(2 * c + 1));
            }
            blk.q[2 * c][g] = lo;
            blk.q[2 * c + 1][g] = hi;
        }
    }
    for k in 0..4u32 {
        let (sc0, mn0) = scale_min(2 * k);
        let (sc1, mn1) = scale_min(2 * k + 1);
        blk.sc[2 * k as usize] = both16(sc0);
        blk.sc[2 * k as usize + 1] = both16(sc1);
        blk.mn[k as usize] = pair16(mn0, mn1);
    }
    blk
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_k6_half(p: TileBlock, half: usize) -> K6Half {
    let word = |o: usize| word8(p, o, half);
    let mut blk = K6Half {
        q: [[_mm256_setzero_si256(); 4]; 16],
        sc: [_mm256_setzero_si256(); 16],
        scp: [_mm256_setzero_si256(); 8],
        d: _mm256_cvtph_ps(_mm_loadu_si128(p.half.add(16 * half) as *const __m128i)),
        dmin: _mm256_setzero_ps(),
    };
    for h in 0..2 {
        for g in 0..8 {
            let q = q6_quants8(
                word(64 * h + 4 * g),
                word(64 * h + 32 + 4 * g),
                word(128 + 32 * h + 4 * g),
            );
            for (k, v) in q.into_iter().enumerate() {
                blk.q[8 * h + 2 * k + g / 4][g % 4] = v;
            }
        }
    }
    let sc = q6_scales8(p, half);
    for (b, &s) in blk.sc.iter_mut().zip(&sc) {
        *b = both16(s);
    }
    for p in 0..8 {
        blk.scp[p] = pair16(sc[2 * p], sc[2 * p + 1]);
    }
    blk
}

/// The sixteen scales of eight Q3_K super-blocks (half a tile), six bits each less 32
/// (`q3k_scales` lane by lane), from bytes 96..108.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q3_scales8(p: TileBlock, half: usize) -> [__m256i; 16] {
    let word = |o: usize| word8(p, o, half);
    let (a0, a1, t) = (word(96), word(100), word(104));
    let (k1, k2) = (
        _mm256_set1_epi32(0x0303_0303),
        _mm256_set1_epi32(0x0f0f_0f0f),
    );
    let hi = |v: __m256i| _mm256_slli_epi32::<4>(_mm256_and_si256(v, k1));
    let aux = [
        _mm256_or_si256(_mm256_and_si256(a0, k2), hi(t)),
        _mm256_or_si256(_mm256_and_si256(a1, k2), hi(_mm256_srli_epi32::<2>(t))),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi32::<4>(a0), k2),
            hi(_mm256_srli_epi32::<4>(t)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi32::<4>(a1), k2),
            hi(_mm256_srli_epi32::<6>(t)),
        ),
    ];
    let (byte, k32) = (_mm256_set1_epi32(0xff), _mm256_set1_epi32(32));
    std::array::from_fn(|i| {
        let v = _mm256_srlv_epi32(aux[i / 4], _mm256_set1_epi32(8 * (i % 4) as i32));
        _mm256_sub_epi32(_mm256_and_si256(v, byte), k32)
    })
}

/// Q3_K's quants (0..7) of values 128n + 32j + 4g.. of eight super-blocks: bits 2j, 2j + 1 of
/// the qs word, the third bit from bit 4n + j of the hmask word `hm` (both at 4g).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q3_quants8(qs: __m256i, hm: __m256i, n: usize, j: usize) -> __m256i {
    let count = |s: usize| _mm_cvtsi32_si128(s as i32);
    let k = 4 * n + j;
    // hmask bit k moved to bit 2 of each byte.
    let hb = if k >= 2 {
        _mm256_srl_epi16(hm, count(k - 2))
    } else {
        _mm256_sll_epi16(hm, count(2 - k))
    };
    _mm256_or_si256(
        _mm256_and_si256(_mm256_srl_epi16(qs, count(2 * j)), _mm256_set1_epi8(3)),
        _mm256_and_si256(hb, _mm256_set1_epi8(4)),
    )
}

/// Q3_K super-block of eight rows (half a tile) in `K6Half`'s form (quants 0..7, the scales
/// less 32 as `q3k_scales` makes them), lane by lane as `gemm16_k36_512` unpacks them.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_k3_half(p: TileBlock, half: usize) -> K6Half {
    let word = |o: usize| word8(p, o, half);
    let sc = q3_scales8(p, half);
    let mut blk = K6Half {
        q: [[_mm256_setzero_si256(); 4]; 16],
        sc: std::array::from_fn(|g| both16(sc[g])),
        scp: std::array::from_fn(|k| pair16(sc[2 * k], sc[2 * k + 1])),
        d: _mm256_cvtph_ps(_mm_loadu_si128(p.half.add(16 * half) as *const __m128i)),
        dmin: _mm256_setzero_ps(),
    };
    for g in 0..8 {
        let hm = word(4 * g);
        for n in 0..2 {
            let qs = word(32 + 32 * n + 4 * g);
            for j in 0..4 {
                blk.q[8 * n + 2 * j + g / 4][g % 4] = q3_quants8(qs, hm, n, j);
            }
        }
    }
    blk
}

/// Q2_K super-block of eight rows (half a tile) in `K6Half`'s form: quants 0..3, the sixteen
/// 4-bit scales and (in `scp`) mins, d and dmin, as `unpack_kblock` makes them lane by lane.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_k2_half(p: TileBlock, half: usize) -> K6Half {
    let word = |o: usize| word8(p, o, half);
    let (k4, byte) = (_mm256_set1_epi32(15), _mm256_set1_epi32(0xff));
    let mut sc = [_mm256_setzero_si256(); 16];
    let mut mn = [_mm256_setzero_si256(); 16];
    for k in 0..4 {
        let s = word(4 * k);
        for i in 0..4 {
            let b = _mm256_and_si256(_mm256_srlv_epi32(s, _mm256_set1_epi32(8 * i as i32)), byte);
            sc[4 * k + i] = _mm256_and_si256(b, k4);
            mn[4 * k + i] = _mm256_srli_epi32::<4>(b);
        }
    }
    let (d, dmin) = d_dmin8(word(80));
    let mut blk = K6Half {
        q: [[_mm256_setzero_si256(); 4]; 16],
        sc: std::array::from_fn(|g| both16(sc[g])),
        scp: std::array::from_fn(|k| pair16(mn[2 * k], mn[2 * k + 1])),
        d,
        dmin,
    };
    let three = _mm256_set1_epi8(3);
    for n in 0..2 {
        for g in 0..8 {
            let qs = word(16 + 32 * n + 4 * g);
            for j in 0..4 {
                // Values 128n + 32j + 4g..: bits 2j, 2j + 1 of each byte.
                let v = _mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * j as i32));
                blk.q[8 * n + 2 * j + g / 4][g % 4] = _mm256_and_si256(v, three);
            }
        }
    }
    blk
}

/// The scale of sub-block `j` of eight IQ4_XS super-blocks, one i32 per lane (six bits less
/// 32): the low four bits from word 1 (`sl`), the high two from the top half of word 0 (`w0`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn iq4xs_scale8(w0: __m256i, sl: __m256i, j: u32) -> __m256i {
    let shr = |v: __m256i, n: u32| _mm256_srlv_epi32(v, _mm256_set1_epi32(n as i32));
    let lo = _mm256_and_si256(shr(sl, 4 * j), _mm256_set1_epi32(15));
    let hi = _mm256_and_si256(shr(w0, 16 + 2 * j), _mm256_set1_epi32(3));
    _mm256_sub_epi32(
        _mm256_or_si256(lo, _mm256_slli_epi32::<4>(hi)),
        _mm256_set1_epi32(32),
    )
}

/// IQ4_XS's signed table values of the low (`hi` false) or high nibbles of `q` (eight lanes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn iq4xs_values8(q: __m256i, hi: bool) -> __m256i {
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(
        super::dequant::KVALUES_IQ4NL.as_ptr() as *const __m128i,
    ));
    let v = if hi { _mm256_srli_epi32::<4>(q) } else { q };
    _mm256_shuffle_epi8(table, _mm256_and_si256(v, _mm256_set1_epi8(0x0f)))
}

/// IQ4_XS super-block of eight rows (half a tile) in `K4Half`'s form: the table's signed values
/// of sub-block j (values 32j.. : low nibbles, then high), its scale (six bits less 32), no mins.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_iq4xs_half(p: TileBlock, half: usize) -> K4Half {
    let word = |o: usize| word8(p, o, half);
    let (w0, sl) = (word(0), word(4));
    let (d, _) = d_dmin8(w0);
    let mut blk = K4Half {
        q: [[_mm256_setzero_si256(); 8]; 8],
        sc: [_mm256_setzero_si256(); 8],
        mn: [_mm256_setzero_si256(); 4],
        d,
        dmin: _mm256_setzero_ps(),
    };
    for ib in 0..8u32 {
        blk.sc[ib as usize] = both16(iq4xs_scale8(w0, sl, ib));
        for i in 0..4 {
            let q = word(8 + 16 * ib as usize + 4 * i);
            blk.q[ib as usize][i] = iq4xs_values8(q, false);
            blk.q[ib as usize][4 + i] = iq4xs_values8(q, true);
        }
    }
    blk
}

/// Hand token t.. their sixteen lanes each (`r[k]` = token t + k's two halves).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn emit16_avx2(r: &[[__m256; 2]], t: usize, out: &mut impl FnMut(usize, &[f32; 16])) {
    let mut lanes = [0f32; 16];
    for (k, v) in r.iter().enumerate() {
        _mm256_storeu_ps(lanes.as_mut_ptr(), v[0]);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), v[1]);
        out(t + k, &lanes);
    }
}

/// Q4_K super-blocks in `KOrder::Split`, `Split64` or `Combine` (`MODE`), or Q5_K's (`Q5`, in
/// `Combine`), or IQ4_XS's (`KIND` `KX`: signed values, the sign trick, the mins zero), for `T`
/// tokens, both halves. Q5_K's pairs reach 2·31·127 = 7874, so its groups
/// go to the i16 sums four at a time.
/// With AVX-VNNI (`V`) a sub-block's groups sum in i32 by `vpdpbusd`, then times its scale.
#[inline(always)]
unsafe fn run_k4_avx2<const T: usize, const MODE: u8, const KIND: u8, const V: bool>(
    buf: &[KHalves<K4Half>],
    xs: [&Q8KRow; T],
    acc: &mut [[__m256; 2]; T],
    accm: &mut [[__m256; 2]; T],
) {
    let yp = xs.map(|x| x.q.as_ptr() as *const i32);
    for (b, blk) in buf.iter().enumerate() {
        let mut sumi = [[_mm256_setzero_si256(); 2]; T];
        let mut summ = [[_mm256_setzero_si256(); 2]; T];
        let step = |sumi: &mut [[__m256i; 2]; T],
                    summ: &mut [[__m256i; 2]; T],
                    acc: &mut [[__m256; 2]; T],
                    accm: &mut [[__m256; 2]; T]| {
            for k in 0..T {
                let xd = _mm256_set1_ps(*xs[k].d.get_unchecked(b));
                for h in 0..2 {
                    let dd = _mm256_mul_ps(blk[h].d, xd);
                    let dm = _mm256_mul_ps(blk[h].dmin, xd);
                    let (si, sm) = (
                        _mm256_cvtepi32_ps(sumi[k][h]),
                        _mm256_cvtepi32_ps(summ[k][h]),
                    );
                    if MODE == COMBINE {
                        let c = _mm256_sub_ps(_mm256_mul_ps(dd, si), _mm256_mul_ps(dm, sm));
                        acc[k][h] = _mm256_add_ps(acc[k][h], c);
                    } else {
                        acc[k][h] = _mm256_fmadd_ps(si, dd, acc[k][h]);
                        accm[k][h] = _mm256_fmadd_ps(sm, dm, accm[k][h]);
                    }
                    sumi[k][h] = _mm256_setzero_si256();
                    summ[k][h] = _mm256_setzero_si256();
                }
            }
        };
        for p in 0..4 {
            for j in [2 * p, 2 * p + 1] {
                // Groups summed in i16 before the scale's `madd`: IQ4_XS's pairs reach
                // 2·127·127, so each goes alone.
                let per = match KIND {
                    _ if V => 8,
                    K5 => 4,
                    KX => 1,
                    _ => 8,
                };
                for g0 in (0..8).step_by(per) {
                    let mut s = [[_mm256_setzero_si256(); 2]; T];
                    for g in g0..g0 + per {
                        for k in 0..T {
                            let y =
                                _mm256_set1_epi32(yp[k].add(b * 64 + 8 * j + g).read_unaligned());
                            for h in 0..2 {
                                let w = blk[h].q[j][g];
                                let (u, y) = if KIND == KX {
                                    (_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w))
                                } else {
                                    (w, y)
                                };
                                s[k][h] = group_sum::<V>(s[k][h], u, y);
                            }
                        }
                    }
                    for h in 0..2 {
                        for k in 0..T {
                            let v = times_scale::<V>(s[k][h], blk[h].sc[j]);
                            sumi[k][h] = _mm256_add_epi32(sumi[k][h], v);
                        }
                    }
                }
            }
            for k in 0..T {
                // Activation sums of sub-blocks 2p and 2p + 1 (|sum| ≤ 32·127: an i16 each).
                let bs = xs[k].bsums.as_ptr().add(16 * b);
                let lo = *bs.add(4 * p) as i32 + *bs.add(4 * p + 1) as i32;
                let hi = *bs.add(4 * p + 2) as i32 + *bs.add(4 * p + 3) as i32;
                let pair = _mm256_set1_epi32((lo & 0xffff) | (hi << 16));
                for h in 0..2 {
                    summ[k][h] = madd_add::<V>(summ[k][h], blk[h].mn[p], pair);
                }
            }
            if MODE == SPLIT64 {
                step(&mut sumi, &mut summ, acc, accm);
            }
        }
        if MODE != SPLIT64 {
            step(&mut sumi, &mut summ, acc, accm);
        }
    }
}

/// Q6_K super-blocks in `KOrder::Tiled` (`MODE` `TILED`), or Q3_K's (`Q3`: `Combine` with its
/// mins folded, 4·scale) or Q2_K's (`Q2`: `Combine`, d·xd·sumi − dmin·xd·summ), for `T` tokens,
/// both halves (acc[k][h][0] used).
#[inline(always)]
unsafe fn run_k6_tiled_avx2<const T: usize, const MODE: u8, const V: bool>(
    buf: &[KHalves<K6Half>],
    xs: [&Q8KRow; T],
    acc: &mut [[[__m256; 8]; 2]; T],
) {
    let yp = xs.map(|x| x.q.as_ptr() as *const i32);
    for (b, blk) in buf.iter().enumerate() {
        let mut sumi = [[_mm256_setzero_si256(); 2]; T];
        for j in 0..16 {
            // Words 0, 1 and 2, 3 of the group summed in i16 (two pairs of 2·63·127 fit).
            // With AVX-VNNI (`V`) the group's four words sum in i32, then times its scale.
            let per = if V { 4 } else { 2 };
            for g0 in (0..4).step_by(per) {
                let mut s = [[_mm256_setzero_si256(); 2]; T];
                for g in g0..g0 + per {
                    for k in 0..T {
                        let y = _mm256_set1_epi32(yp[k].add(b * 64 + 4 * j + g).read_unaligned());
                        for h in 0..2 {
                            s[k][h] = group_sum::<V>(s[k][h], blk[h].q[j][g], y);
                        }
                    }
                }
                for h in 0..2 {
                    for k in 0..T {
                        let v = times_scale::<V>(s[k][h], blk[h].sc[j]);
                        sumi[k][h] = _mm256_add_epi32(sumi[k][h], v);
                    }
                }
            }
        }
        for k in 0..T {
            let bs = xs[k].bsums.as_ptr().add(16 * b) as *const i32;
            let xd = _mm256_set1_ps(*xs[k].d.get_unchecked(b));
            for h in 0..2 {
                // Σ scp·bsum over the sixteen groups: the scales (Q6_K's mins are 32·scale,
                // Q3_K's 4·scale) or Q2_K's mins.
                let mut summ = _mm256_setzero_si256();
                for p in 0..8 {
                    let pair = _mm256_set1_epi32(bs.add(p).read_unaligned());
                    summ = madd_add::<V>(summ, blk[h].scp[p], pair);
                }
                if MODE == Q2 {
                    let dd = _mm256_mul_ps(blk[h].d, xd);
                    let dm = _mm256_mul_ps(blk[h].dmin, xd);
                    let si = _mm256_mul_ps(dd, _mm256_cvtepi32_ps(sumi[k][h]));
                    let c = _mm256_sub_ps(si, _mm256_mul_ps(dm, _mm256_cvtepi32_ps(summ)));
                    acc[k][h][0] = _mm256_add_ps(acc[k][h][0], c);
                } else if MODE == Q3 {
                    let diff = _mm256_sub_epi32(sumi[k][h], _mm256_slli_epi32::<2>(summ));
                    let dd = _mm256_mul_ps(blk[h].d, xd);
                    let c = _mm256_mul_ps(dd, _mm256_cvtepi32_ps(diff));
                    acc[k][h][0] = _mm256_add_ps(acc[k][h][0], c);
                } else {
                    let diff = _mm256_sub_epi32(sumi[k][h], _mm256_slli_epi32::<5>(summ));
                    let r = _mm256_mul_ps(_mm256_cvtepi32_ps(diff), blk[h].d);
                    acc[k][h][0] = _mm256_fmadd_ps(r, xd, acc[k][h][0]);
                }
            }
        }
    }
}

/// Q6_K super-blocks in `KOrder::Lanes` (ggml's gemv, see `lanes_block`) for `T` tokens.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn run_k6_lanes_avx2<const T: usize, const V: bool>(
    buf: &[KHalves<K6Half>],
    xs: [&Q8KRow; T],
    acc: &mut [[[__m256; 8]; 2]; T],
) {
    let yp = xs.map(|x| x.q.as_ptr() as *const i32);
    for (b, blk) in buf.iter().enumerate() {
        for k in 0..T {
            let bs = xs[k].bsums.as_ptr().add(16 * b) as *const i32;
            let xd = _mm256_set1_ps(*xs[k].d.get_unchecked(b));
            let dd = [_mm256_mul_ps(xd, blk[0].d), _mm256_mul_ps(xd, blk[1].d)];
            for j in 0..8 {
                let (hf, i) = (j / 4, j % 4);
                let mut lane = [_mm256_setzero_si256(); 2];
                for g in (hf..16).step_by(2) {
                    let y = _mm256_set1_epi32(yp[k].add(b * 64 + 4 * g + i).read_unaligned());
                    for h in 0..2 {
                        let m = _mm256_maddubs_epi16(blk[h].q[g][i], y);
                        lane[h] = madd_add::<V>(lane[h], m, blk[h].sc[g]);
                    }
                }
                let pair = _mm256_set1_epi32(bs.add(j).read_unaligned());
                for h in 0..2 {
                    let mins = _mm256_madd_epi16(blk[h].scp[j], pair);
                    let l = _mm256_sub_epi32(lane[h], _mm256_slli_epi32::<5>(mins));
                    acc[k][h][j] = _mm256_fmadd_ps(dd[h], _mm256_cvtepi32_ps(l), acc[k][h][j]);
                }
            }
        }
    }
}

/// One token against a tile of sixteen Q4_K rows in `KOrder::Split`, or Q5_K rows (`Q5`) in
/// `Combine`, streaming the tile (each word loaded once, unpacked as it is used): the sums of
/// `run_k4_avx2` for one token.
#[inline(always)]
unsafe fn dot16_q4k_avx2<const Q5: bool, const V: bool>(tile: &Tile, x: &Q8KRow) -> [__m256; 2] {
    let yp = x.q.as_ptr() as *const i32;
    let (nib, sixteen) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x10));
    // With VNNI a sub-block's groups sum in i32, then times its scale.
    let (quants, per) = if Q5 {
        (48, if V { 8 } else { 4 })
    } else {
        (16, 8)
    };
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut accm = [_mm256_setzero_ps(); 2];
    for b in 0..tile.n_blocks() {
        prefetch_tile(tile, b);
        prefetch_tile_after(tile, b);
        let p = tile.block(b);
        let word = |o: usize, h: usize| word8(p, o, h);
        let s = [
            [word(4, 0), word(8, 0), word(12, 0)],
            [word(4, 1), word(8, 1), word(12, 1)],
        ];
        let scale_min = |h: usize, j: u32| k4_scale_min8(s[h], j);
        let mut sumi = [_mm256_setzero_si256(); 2];
        let mut summ = [_mm256_setzero_si256(); 2];
        let bs = x.bsums.as_ptr().add(16 * b);
        for c in 0..4 {
            let sm: [[(__m256i, __m256i); 2]; 2] = std::array::from_fn(|h| {
                [scale_min(h, 2 * c as u32), scale_min(h, 2 * c as u32 + 1)]
            });
            // Bit `s` of each byte of `qh` as its bit 4 (16), by one immediate shift of the
            // 16-bit lanes (bit 4 of a byte only receives a bit of its own byte) and a mask.
            let fifth = |qh: __m256i, s: usize| {
                let v = match s {
                    0 => _mm256_slli_epi16::<4>(qh),
                    1 => _mm256_slli_epi16::<3>(qh),
                    2 => _mm256_slli_epi16::<2>(qh),
                    3 => _mm256_slli_epi16::<1>(qh),
                    4 => qh,
                    5 => _mm256_srli_epi16::<1>(qh),
                    6 => _mm256_srli_epi16::<2>(qh),
                    _ => _mm256_srli_epi16::<3>(qh),
                };
                _mm256_and_si256(v, sixteen)
            };
            for g0 in (0..8).step_by(per) {
                let (mut lo, mut hi) = ([_mm256_setzero_si256(); 2], [_mm256_setzero_si256(); 2]);
                for g in g0..g0 + per {
                    let y0 = _mm256_set1_epi32(yp.add(b * 64 + 16 * c + g).read_unaligned());
                    let y1 = _mm256_set1_epi32(yp.add(b * 64 + 16 * c + 8 + g).read_unaligned());
                    for h in 0..2 {
                        let q = word(quants + 32 * c + 4 * g, h);
                        let mut q0 = _mm256_and_si256(q, nib);
                        let mut q1 = _mm256_and_si256(_mm256_srli_epi32::<4>(q), nib);
                        if Q5 {
                            // Fifth bits: bit 2c (low nibbles) and 2c + 1 (high) of qh[l].
                            let qh = word(16 + 4 * g, h);
                            q0 = _mm256_or_si256(q0, fifth(qh, 2 * c));
                            q1 = _mm256_or_si256(q1, fifth(qh, 2 * c + 1));
                        }
                        lo[h] = group_sum::<V>(lo[h], q0, y0);
                        hi[h] = group_sum::<V>(hi[h], q1, y1);
                    }
                }
                for h in 0..2 {
                    let (v0, v1) = if V {
                        (
                            _mm256_mullo_epi32(lo[h], sm[h][0].0),
                            _mm256_mullo_epi32(hi[h], sm[h][1].0),
                        )
                    } else {
                        (
                            _mm256_madd_epi16(lo[h], both16(sm[h][0].0)),
                            _mm256_madd_epi16(hi[h], both16(sm[h][1].0)),
                        )
                    };
                    sumi[h] = _mm256_add_epi32(sumi[h], _mm256_add_epi32(v0, v1));
                }
            }
            let l = *bs.add(4 * c) as i32 + *bs.add(4 * c + 1) as i32;
            let u = *bs.add(4 * c + 2) as i32 + *bs.add(4 * c + 3) as i32;
            let pair = _mm256_set1_epi32((l & 0xffff) | (u << 16));
            for h in 0..2 {
                let m = _mm256_madd_epi16(pair16(sm[h][0].1, sm[h][1].1), pair);
                summ[h] = _mm256_add_epi32(summ[h], m);
            }
        }
        // d (low half of word 0) and dmin (high half), as `unpack_k4_half`.
        let xd = _mm256_set1_ps(*x.d.get_unchecked(b));
        for h in 0..2 {
            let (d, dmin) = d_dmin8(word(0, h));
            let dd = _mm256_mul_ps(d, xd);
            let dm = _mm256_mul_ps(dmin, xd);
            let (si, sm) = (_mm256_cvtepi32_ps(sumi[h]), _mm256_cvtepi32_ps(summ[h]));
            if Q5 {
                let c = _mm256_sub_ps(_mm256_mul_ps(dd, si), _mm256_mul_ps(dm, sm));
                acc[h] = _mm256_add_ps(acc[h], c);
            } else {
                acc[h] = _mm256_fmadd_ps(si, dd, acc[h]);
                accm[h] = _mm256_fmadd_ps(sm, dm, accm[h]);
            }
        }
    }
    [
        _mm256_sub_ps(acc[0], accm[0]),
        _mm256_sub_ps(acc[1], accm[1]),
    ]
}

/// One token against a tile of sixteen Q6_K rows in `KOrder::Lanes`, streaming the tile eight
/// rows per pass: the three words that hold values 128h + 32k + 4g.. (k = 0..4) give four
/// quant words of the 16-value groups 8h + 2k + g/4, all of ggml's integer lane g (see
/// `lanes_block`), so each lane's sum is formed as the words arrive. The same sums as
/// `run_k6_lanes_avx2`.
#[inline(always)]
unsafe fn dot16_q6k_avx2<const V: bool>(tile: &Tile, x: &Q8KRow) -> [__m256; 2] {
    let yp = x.q.as_ptr() as *const i32;
    let mut out = [_mm256_setzero_ps(); 2];
    for (half, out) in out.iter_mut().enumerate() {
        let mut acc = [_mm256_setzero_ps(); 8];
        for b in 0..tile.n_blocks() {
            if half == 0 {
                prefetch_tile(tile, b);
            } else {
                prefetch_tile_after(tile, b);
            }
            let p = tile.block(b);
            let word = |o: usize| word8(p, o, half);
            let sc = q6_scales8(p, half);
            let sc2: [__m256i; 16] = std::array::from_fn(|g| both16(sc[g]));
            let mut lane = [_mm256_setzero_si256(); 8];
            for h in 0..2 {
                for (g, l) in lane.iter_mut().enumerate() {
                    let q = q6_quants8(
                        word(64 * h + 4 * g),
                        word(64 * h + 32 + 4 * g),
                        word(128 + 32 * h + 4 * g),
                    );
                    for (k, q) in q.into_iter().enumerate() {
                        let grp = 8 * h + 2 * k + g / 4;
                        let y =
                            _mm256_set1_epi32(yp.add(b * 64 + 4 * grp + g % 4).read_unaligned());
                        let m = _mm256_maddubs_epi16(q, y);
                        *l = madd_add::<V>(*l, m, sc2[grp]);
                    }
                }
            }
            let bs = x.bsums.as_ptr().add(16 * b) as *const i32;
            let d = _mm256_cvtph_ps(_mm_loadu_si128(p.half.add(16 * half) as *const __m128i));
            let dd = _mm256_mul_ps(_mm256_set1_ps(*x.d.get_unchecked(b)), d);
            for (j, a) in acc.iter_mut().enumerate() {
                let pair = _mm256_set1_epi32(bs.add(j).read_unaligned());
                let scp = pair16(sc[2 * j], sc[2 * j + 1]);
                let mins = _mm256_madd_epi16(scp, pair);
                let l = _mm256_sub_epi32(lane[j], _mm256_slli_epi32::<5>(mins));
                *a = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(l), *a);
            }
        }
        *out = fold8_8(&acc);
    }
    out
}

/// One IQ4_XS token against a tile of sixteen rows in `KOrder::Combine`, streaming the tile
/// eight rows per half: each 4-value group's values by table lookup, multiplied by the sign
/// trick (`maddubs`), its pairs times the sub-block's scale by `madd` into the super-block's
/// exact total; acc += d·xd·f32(total), the bits of `run_k4_avx2` and every level.
/// With AVX-VNNI (`V`) a sub-block's groups sum in i32 by `vpdpbusd`, then times its scale.
#[inline(always)]
unsafe fn dot16_iq4xs_avx2<const V: bool>(tile: &Tile, x: &Q8KRow) -> [__m256; 2] {
    let yp = x.q.as_ptr() as *const i32;
    let mut acc = [_mm256_setzero_ps(); 2];
    for b in 0..tile.n_blocks() {
        prefetch_tile(tile, b);
        prefetch_tile_after(tile, b);
        let p = tile.block(b);
        let word = |o: usize, h: usize| word8(p, o, h);
        let w0 = [word(0, 0), word(0, 1)];
        let sl = [word(4, 0), word(4, 1)];
        let mut sumi = [_mm256_setzero_si256(); 2];
        for j in 0..8u32 {
            let sc: [__m256i; 2] = std::array::from_fn(|h| iq4xs_scale8(w0[h], sl[h], j));
            let sc2 = sc.map(|v| both16(v));
            let y0 = b * 64 + 8 * j as usize;
            let mut t = [_mm256_setzero_si256(); 2];
            for i in 0..4 {
                let yl = _mm256_set1_epi32(yp.add(y0 + i).read_unaligned());
                let yh = _mm256_set1_epi32(yp.add(y0 + 4 + i).read_unaligned());
                for h in 0..2 {
                    let q = word(8 + 16 * j as usize + 4 * i, h);
                    for (hi, y) in [(false, yl), (true, yh)] {
                        let w = iq4xs_values8(q, hi);
                        let (u, y) = (_mm256_sign_epi8(w, w), _mm256_sign_epi8(y, w));
                        if V {
                            t[h] = _mm256_dpbusd_avx_epi32(t[h], u, y);
                        } else {
                            let m = _mm256_maddubs_epi16(u, y);
                            sumi[h] = _mm256_add_epi32(sumi[h], _mm256_madd_epi16(m, sc2[h]));
                        }
                    }
                }
            }
            if V {
                for h in 0..2 {
                    sumi[h] = _mm256_add_epi32(sumi[h], _mm256_mullo_epi32(t[h], sc[h]));
                }
            }
        }
        let xd = _mm256_set1_ps(*x.d.get_unchecked(b));
        for h in 0..2 {
            let dd = _mm256_mul_ps(d_dmin8(w0[h]).0, xd);
            acc[h] = _mm256_add_ps(acc[h], _mm256_mul_ps(dd, _mm256_cvtepi32_ps(sumi[h])));
        }
    }
    acc
}

/// One Q3_K token against a tile of sixteen rows in `KOrder::Combine` (the mins folded),
/// streaming the tile eight rows per half: each 4-value group's quants (two bits of qs, the
/// third from hmask) by `maddubs` into the i16 sum of its 16-value group, which starts at
/// −4·(the group's activation sum) in its low half (|sum| ≤ 16·7·127 + 4·16·127 < 2^15), then
/// times the group's scale by `madd`: sumi − 4·summ exactly, as `run_k6_tiled_avx2` forms it.
/// With AVX-VNNI (`V`) each 16-value group sums in i32 (from −4·its activation sum) by
/// `vpdpbusd`, then times its scale.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn dot16_q3k_avx2<const V: bool>(tile: &Tile, x: &Q8KRow) -> [__m256; 2] {
    let yp = x.q.as_ptr() as *const i32;
    let mut acc = [_mm256_setzero_ps(); 2];
    for b in 0..tile.n_blocks() {
        prefetch_tile(tile, b);
        prefetch_tile_after(tile, b);
        let p = tile.block(b);
        let word = |o: usize, h: usize| word8(p, o, h);
        let bs = x.bsums.as_ptr().add(16 * b);
        let mask = if V { -1 } else { 0xffff };
        let mut s: [[__m256i; 2]; 16] =
            std::array::from_fn(|i| [_mm256_set1_epi32((-4 * *bs.add(i) as i32) & mask); 2]);
        for g in 0..8 {
            for h in 0..2 {
                let hm = word(4 * g, h);
                for n in 0..2 {
                    let qs = word(32 + 32 * n + 4 * g, h);
                    for j in 0..4 {
                        // Values 128n + 32j + 4g..
                        let q = q3_quants8(qs, hm, n, j);
                        let i = 8 * n + 2 * j + g / 4;
                        let y = _mm256_set1_epi32(yp.add(b * 64 + 4 * i + g % 4).read_unaligned());
                        s[i][h] = group_sum::<V>(s[i][h], q, y);
                    }
                }
            }
        }
        let xd = _mm256_set1_ps(*x.d.get_unchecked(b));
        for h in 0..2 {
            let sc = q3_scales8(p, h);
            let mut sumi = _mm256_setzero_si256();
            for i in 0..16 {
                let v = if V {
                    _mm256_mullo_epi32(s[i][h], sc[i])
                } else {
                    _mm256_madd_epi16(s[i][h], both16(sc[i]))
                };
                sumi = _mm256_add_epi32(sumi, v);
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(p.half.add(16 * h) as *const __m128i));
            let dd = _mm256_mul_ps(d, xd);
            acc[h] = _mm256_add_ps(acc[h], _mm256_mul_ps(dd, _mm256_cvtepi32_ps(sumi)));
        }
    }
    acc
}

/// One Q2_K token against a tile of sixteen rows in `KOrder::Combine`, streaming the tile
/// eight rows per half: each 4-value group's quants by `maddubs` into its 16-value group's i16
/// sum, times the group's scale by `madd` (sumi); the mins in i16 pairs times the activation
/// sums by `madd` (summ); acc += d·xd·f32(sumi) − dmin·xd·f32(summ), as `run_k6_tiled_avx2`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn dot16_q2k_avx2(tile: &Tile, x: &Q8KRow) -> [__m256; 2] {
    let yp = x.q.as_ptr() as *const i32;
    let three = _mm256_set1_epi8(3);
    let (k4, k4x2) = (_mm256_set1_epi32(15), _mm256_set1_epi32(0x000f_000f));
    let shr = |v: __m256i, s: usize| _mm256_srl_epi16(v, _mm_cvtsi32_si128(s as i32));
    let mut acc = [_mm256_setzero_ps(); 2];
    for b in 0..tile.n_blocks() {
        prefetch_tile(tile, b);
        prefetch_tile_after(tile, b);
        let p = tile.block(b);
        let word = |o: usize, h: usize| word8(p, o, h);
        let bs = x.bsums.as_ptr().add(16 * b);
        let mut s = [[_mm256_setzero_si256(); 2]; 16];
        for g in 0..8 {
            for n in 0..2 {
                for j in 0..4 {
                    // Values 128n + 32j + 4g..: bits 2j, 2j + 1 of each byte.
                    let i = 8 * n + 2 * j + g / 4;
                    let y = _mm256_set1_epi32(yp.add(b * 64 + 4 * i + g % 4).read_unaligned());
                    for h in 0..2 {
                        let q = _mm256_and_si256(shr(word(16 + 32 * n + 4 * g, h), 2 * j), three);
                        s[i][h] = _mm256_add_epi16(s[i][h], _mm256_maddubs_epi16(q, y));
                    }
                }
            }
        }
        let xd = _mm256_set1_ps(*x.d.get_unchecked(b));
        for h in 0..2 {
            // Scale bytes: the scale in the low four bits, the min in the high four.
            let (mut sumi, mut summ) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for k in 0..4 {
                let w = word(4 * k, h);
                for i in 0..4 {
                    let sc = _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_set1_epi32(8 * i)), k4);
                    let v = _mm256_madd_epi16(s[4 * k + i as usize][h], both16(sc));
                    sumi = _mm256_add_epi32(sumi, v);
                }
                // The mins of groups 4k, 4k + 2 (low and high i16), then of 4k + 1, 4k + 3.
                for o in 0..2 {
                    let mn = _mm256_and_si256(shr(w, 4 + 8 * o), k4x2);
                    let (a, c) = (
                        *bs.add(4 * k + o) as u16 as i32,
                        *bs.add(4 * k + o + 2) as i32,
                    );
                    let v = _mm256_madd_epi16(mn, _mm256_set1_epi32(a | (c << 16)));
                    summ = _mm256_add_epi32(summ, v);
                }
            }
            let (d, dmin) = d_dmin8(word(80, h));
            let si = _mm256_mul_ps(_mm256_mul_ps(d, xd), _mm256_cvtepi32_ps(sumi));
            let sm = _mm256_mul_ps(_mm256_mul_ps(dmin, xd), _mm256_cvtepi32_ps(summ));
            acc[h] = _mm256_add_ps(acc[h], _mm256_sub_ps(si, sm));
        }
    }
    acc
}

/// Eight accumulators (ggml's eight lanes, eight rows each) folded as `hsum_float_8` folds.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fold8_8(a: &[__m256; 8]) -> __m256 {
    let t: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(a[4 + i], a[i]));
    _mm256_add_ps(_mm256_add_ps(t[0], t[2]), _mm256_add_ps(t[1], t[3]))
}

/// Buffers `gemm16_k_avx2` reuses between tiles.
#[derive(Default)]
pub struct KTileBufs {
    k4: Vec<KHalves<K4Half>>,
    k6: Vec<KHalves<K6Half>>,
}

/// Whether the AVX2 tile kernels (`gemm16_k_avx2`) take `ty`.
pub fn has_k16_avx2(ty: super::GgmlType) -> bool {
    use super::GgmlType::*;
    matches!(ty, Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_XS)
}

/// Whether the AVX-512 tile kernels (`dot16_q4k_512`, `gemm16_k45_512`, `gemm16_k36_512`)
/// take `ty`.
pub fn has_k16_512(ty: super::GgmlType) -> bool {
    // Every K-quant with a tile layout has tile kernels at both levels.
    has_k16_avx2(ty)
}

/// A tile of sixteen Q3_K..Q6_K rows (`has_k16_avx2`) against every token of `xs`, token t in
/// `order(t)`: Q4_K in `KOrder::Split` or `Split64`, Q6_K in `Tiled` or `Lanes`, Q3_K and Q5_K
/// in `Combine`, as `KAcc`
/// steps them lane by lane, so the bits of every other level. One token streams the tile
/// (`dot16_q4k_avx2`, `dot16_q6k_avx2`, `dot16_iq4xs_avx2`, `dot16_q3k_avx2`,
/// `dot16_q2k_avx2`); otherwise the tile is unpacked once into `bufs`, then takes its tokens
/// two at a time. `out(t, lanes)` receives token t's sixteen lanes. `vnni`: the CPU has
/// AVX-VNNI, whose `vpdpbusd` sums a sub-block's groups in i32 (then times its scale: the same
/// integers).
pub unsafe fn gemm16_k_avx2(
    vnni: bool,
    tile: &Tile,
    ty: super::GgmlType,
    xs: &[Q8KRow],
    bufs: &mut KTileBufs,
    order: impl Fn(usize) -> KOrder,
    mut out: impl FnMut(usize, &[f32; 16]),
) {
    type Order<'a> = &'a dyn Fn(usize) -> KOrder;
    type Out<'a> = &'a mut dyn FnMut(usize, &[f32; 16]);
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn plain(t: &Tile, ty: GgmlType, xs: &[Q8KRow], b: &mut KTileBufs, o: Order, f: Out) {
        gemm16_k_of::<false>(t, ty, xs, b, o, f)
    }
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn vnni_(t: &Tile, ty: GgmlType, xs: &[Q8KRow], b: &mut KTileBufs, o: Order, f: Out) {
        gemm16_k_of::<true>(t, ty, xs, b, o, f)
    }
    assert!(has_k16_avx2(ty));
    let nb = tile.n_blocks();
    for x in xs {
        check_x(x, nb);
    }
    if vnni {
        vnni_(tile, ty, xs, bufs, &order, &mut out)
    } else {
        plain(tile, ty, xs, bufs, &order, &mut out)
    }
}

#[inline(always)]
unsafe fn gemm16_k_of<const V: bool>(
    tile: &Tile,
    ty: GgmlType,
    xs: &[Q8KRow],
    bufs: &mut KTileBufs,
    order: &dyn Fn(usize) -> KOrder,
    mut out: &mut dyn FnMut(usize, &[f32; 16]),
) {
    let nb = tile.n_blocks();
    use super::GgmlType::*;
    let one = match (ty, order(0)) {
        _ if xs.len() > 1 => None,
        (Q4_K, KOrder::Split) => Some(dot16_q4k_avx2::<false, V>(tile, &xs[0])),
        (Q5_K, KOrder::Combine) => Some(dot16_q4k_avx2::<true, V>(tile, &xs[0])),
        (Q6_K, KOrder::Lanes) => Some(dot16_q6k_avx2::<V>(tile, &xs[0])),
        (IQ4_XS, KOrder::Combine) => Some(dot16_iq4xs_avx2::<V>(tile, &xs[0])),
        (Q3_K, KOrder::Combine) => Some(dot16_q3k_avx2::<V>(tile, &xs[0])),
        // Q2_K's one-token sums stay on `maddubs` with AVX-VNNI: its 32 group sums in i32 were
        // 15% slower than in i16 on a Zen 5.
        (Q2_K, KOrder::Combine) => Some(dot16_q2k_avx2(tile, &xs[0])),
        _ => None,
    };
    if let Some(r) = one {
        // One token streamed the tile.
        emit16_avx2(&[r], 0, &mut out);
        return;
    }
    // Otherwise the tile is unpacked into `bufs` once; its tokens then go two at a time (one
    // when the next token sums in another order, or is the last).
    let zero = [_mm256_setzero_ps(); 2];
    let zero8 = [[_mm256_setzero_ps(); 8]; 2];
    let (q4, q5, q3, q2) = (
        matches!(ty, Q4_K | Q5_K | IQ4_XS),
        ty == Q5_K,
        ty == Q3_K,
        ty == Q2_K,
    );
    let fill = |bufs: &mut KTileBufs, blocks: std::ops::Range<usize>| {
        if q4 {
            bufs.k4.clear();
            bufs.k4.extend(blocks.map(|b| {
                let p = tile.block(b);
                if ty == IQ4_XS {
                    [unpack_iq4xs_half(p, 0), unpack_iq4xs_half(p, 1)]
                } else {
                    [unpack_k4_half(p, 0, q5), unpack_k4_half(p, 1, q5)]
                }
            }));
        } else {
            bufs.k6.clear();
            bufs.k6.extend(blocks.map(|b| {
                let p = tile.block(b);
                if q3 {
                    [unpack_k3_half(p, 0), unpack_k3_half(p, 1)]
                } else if q2 {
                    [unpack_k2_half(p, 0), unpack_k2_half(p, 1)]
                } else {
                    [unpack_k6_half(p, 0), unpack_k6_half(p, 1)]
                }
            }));
        }
    };
    fill(bufs, 0..nb);
    let mut t = 0;
    while t < xs.len() {
        let o = order(t);
        let two = t + 1 < xs.len() && order(t + 1) == o;
        let (a, c) = (&xs[t], &xs[(t + 1).min(xs.len() - 1)]);
        let (x2, x1) = ([a, c], [a]);
        let (mut acc, mut accm, mut a1, mut m1) = ([zero; 2], [zero; 2], [zero], [zero]);
        let (mut acc6, mut a6) = ([zero8; 2], [zero8]);
        if q4 {
            let buf = &bufs.k4;
            let (acc2, accm2) = (&mut acc, &mut accm);
            let (acc1, accm1) = (&mut a1, &mut m1);
            match (ty, two, o) {
                (Q4_K, true, KOrder::Split) => run_k4_avx2::<2, SPLIT, K4, V>(buf, x2, acc2, accm2),
                (Q4_K, true, KOrder::Split64) => {
                    run_k4_avx2::<2, SPLIT64, K4, V>(buf, x2, acc2, accm2)
                }
                (Q4_K, false, KOrder::Split) => {
                    run_k4_avx2::<1, SPLIT, K4, V>(buf, x1, acc1, accm1)
                }
                (Q4_K, false, KOrder::Split64) => {
                    run_k4_avx2::<1, SPLIT64, K4, V>(buf, x1, acc1, accm1)
                }
                (Q5_K, true, KOrder::Combine) => {
                    run_k4_avx2::<2, COMBINE, K5, V>(buf, x2, acc2, accm2)
                }
                (Q5_K, false, KOrder::Combine) => {
                    run_k4_avx2::<1, COMBINE, K5, V>(buf, x1, acc1, accm1)
                }
                (IQ4_XS, true, KOrder::Combine) => {
                    run_k4_avx2::<2, COMBINE, KX, V>(buf, x2, acc2, accm2)
                }
                (IQ4_XS, false, KOrder::Combine) => {
                    run_k4_avx2::<1, COMBINE, KX, V>(buf, x1, acc1, accm1)
                }
                (_, _, o) => panic!("gemm16_k_avx2 does not sum {ty} in {o:?}"),
            }
        } else {
            let buf = &bufs.k6;
            match (ty, two, o) {
                (Q6_K, true, KOrder::Tiled) => run_k6_tiled_avx2::<2, TILED, V>(buf, x2, &mut acc6),
                (Q6_K, true, KOrder::Lanes) => run_k6_lanes_avx2::<2, V>(buf, x2, &mut acc6),
                (Q6_K, false, KOrder::Tiled) => run_k6_tiled_avx2::<1, TILED, V>(buf, x1, &mut a6),
                (Q6_K, false, KOrder::Lanes) => run_k6_lanes_avx2::<1, V>(buf, x1, &mut a6),
                (Q3_K, true, KOrder::Combine) => run_k6_tiled_avx2::<2, Q3, V>(buf, x2, &mut acc6),
                (Q3_K, false, KOrder::Combine) => run_k6_tiled_avx2::<1, Q3, V>(buf, x1, &mut a6),
                (Q2_K, true, KOrder::Combine) => run_k6_tiled_avx2::<2, Q2, V>(buf, x2, &mut acc6),
                (Q2_K, false, KOrder::Combine) => run_k6_tiled_avx2::<1, Q2, V>(buf, x1, &mut a6),
                (_, _, o) => panic!("gemm16_k_avx2 does not sum {ty} in {o:?}"),
            }
        }
        if !two {
            (acc[0], accm[0], acc6[0]) = (a1[0], m1[0], a6[0]);
        }
        let r: [[__m256; 2]; 2] = std::array::from_fn(|k| {
            if q4 {
                [
                    _mm256_sub_ps(acc[k][0], accm[k][0]),
                    _mm256_sub_ps(acc[k][1], accm[k][1]),
                ]
            } else if o == KOrder::Lanes {
                [fold8_8(&acc6[k][0]), fold8_8(&acc6[k][1])]
            } else {
                [acc6[k][0][0], acc6[k][1][0]]
            }
        });
        let n = 1 + two as usize;
        emit16_avx2(&r[..n], t, &mut out);
        t += n;
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 VNNI

/// i16 lane i of vector v (values 64v..64v+64) takes the scale of values 64v+2i: group 4v + i/8.
static IDX16: [[i16; 32]; 4] = {
    let mut t = [[0i16; 32]; 4];
    let mut v = 0;
    while v < 4 {
        let mut i = 0;
        while i < 32 {
            t[v][i] = (4 * v + i / 8) as i16;
            i += 1;
        }
        v += 1;
    }
    t
};

#[inline(always)]
unsafe fn idx(t: &[[i16; 32]; 4], v: usize) -> __m512i {
    _mm512_loadu_si512(t[v].as_ptr() as *const __m512i)
}

#[inline(always)]
unsafe fn fold512(a: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64::<1>(a))
}

#[inline(always)]
unsafe fn gemm4_512<const SIGNED: bool, const NT: usize>(
    u: &KRow,
    xp: [&Q8KRow; NT],
    nb: usize,
    order: KOrder,
) -> [f32; 4] {
    let ix = [
        idx(&IDX16, 0),
        idx(&IDX16, 1),
        idx(&IDX16, 2),
        idx(&IDX16, 3),
    ];
    let mut st = [KAcc::new(order, u.fold); NT];
    let xq = xp.map(|x| x.q.as_ptr());
    for b in 0..nb {
        let sc512 = _mm512_castsi256_si512(_mm256_loadu_si256(
            u.sc.as_ptr().add(16 * b) as *const __m256i
        ));
        let mut acc = [_mm512_setzero_si512(); NT];
        for (v, ixv) in ix.iter().enumerate() {
            let mut w = _mm512_loadu_si512(u.q.as_ptr().add(256 * b + 64 * v) as *const __m512i);
            let scv = _mm512_permutexvar_epi16(*ixv, sc512);
            let neg = if SIGNED {
                let neg = _mm512_movepi8_mask(w);
                w = _mm512_abs_epi8(w);
                neg
            } else {
                0
            };
            for k in 0..NT {
                let mut y = _mm512_loadu_si512(xq[k].add(256 * b + 64 * v) as *const __m512i);
                if SIGNED {
                    y = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
                }
                acc[k] = _mm512_dpwssd_epi32(acc[k], _mm512_maddubs_epi16(w, y), scv);
            }
        }
        let mut a = [_mm256_setzero_si256(); NT];
        for k in 0..NT {
            a[k] = fold512(acc[k]);
        }
        combine(u, &xp, b, a, &mut st);
    }
    finish(&st)
}

/// out[t] = row · xs[t], four tokens per pass over the unpacked row (a lone token on its own), in
/// orders that step per super-block (Q4_K's `Split64` batches take `gemm16_k45_512`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_k_512(
    u: &KRow,
    xs: &[Q8KRow],
    out: &mut [f32],
    order: &dyn Fn(usize) -> KOrder,
) {
    let nb = check_row(u, xs, out);
    for (c, (xs, out)) in xs.chunks(4).zip(out.chunks_mut(4)).enumerate() {
        // Every token of a chunk of four has the same order (see `KOrder::for_batch`).
        let o = order(4 * c);
        assert!(!o.per64(), "Split64 batches take gemm16_k45_512");
        let r = match (u.signed, xs.len()) {
            (true, 1) => gemm4_512::<true, 1>(u, [&xs[0]], nb, o),
            (false, 1) => gemm4_512::<false, 1>(u, [&xs[0]], nb, o),
            (true, _) => gemm4_512::<true, 4>(u, quad(xs), nb, o),
            (false, _) => gemm4_512::<false, 4>(u, quad(xs), nb, o),
        };
        out.copy_from_slice(&r[..out.len()]);
    }
}

/// The scale and min of sub-block `j` of sixteen Q4_K/Q5_K super-blocks, one per lane, from
/// their 12 packed bytes as three 4-byte words (six bits each, as `k4_scales_mins`).
#[inline(always)]
unsafe fn k4_scale_min16(packed: [__m512i; 3], j: u32) -> (__m512i, __m512i) {
    let [s0, s1, s2] = packed;
    let shr = |v: __m512i, n: u32| _mm512_srlv_epi32(v, _mm512_set1_epi32(n as i32));
    let (k6, k4, k3) = (
        _mm512_set1_epi32(63),
        _mm512_set1_epi32(15),
        _mm512_set1_epi32(3),
    );
    if j < 4 {
        (
            _mm512_and_si512(shr(s0, 8 * j), k6),
            _mm512_and_si512(shr(s1, 8 * j), k6),
        )
    } else {
        let j = j - 4;
        let hi = |v: __m512i| _mm512_slli_epi32::<4>(_mm512_and_si512(shr(v, 8 * j + 6), k3));
        (
            _mm512_or_si512(_mm512_and_si512(shr(s2, 8 * j), k4), hi(s0)),
            _mm512_or_si512(_mm512_and_si512(shr(s2, 8 * j + 4), k4), hi(s1)),
        )
    }
}

/// d and dmin of sixteen Q4_K/Q5_K super-blocks from their first four bytes, one per lane.
#[inline(always)]
unsafe fn k4_d_dmin16(dm: __m512i) -> (__m512, __m512) {
    (
        _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm)),
        _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dm))),
    )
}

/// Hand token t.. their sixteen lanes each (`r[k]` is token t + k); returns how many tokens.
#[inline(always)]
unsafe fn emit16(r: &[__m512], t: usize, out: &mut impl FnMut(usize, &[f32; 16])) -> usize {
    let mut lanes = [0f32; 16];
    for (k, &v) in r.iter().enumerate() {
        _mm512_storeu_ps(lanes.as_mut_ptr(), v);
        out(t + k, &lanes);
    }
    r.len()
}

/// The 4-byte word at byte `o` (a multiple of 4) of each of a tile block's sixteen rows.
#[inline(always)]
unsafe fn word_at(blk: TileBlock, o: usize) -> __m512i {
    _mm512_loadu_si512(blk.words.add(16 * o) as *const __m512i)
}

/// The sixteen rows' f16 kept apart in a tile (Q3_K's and Q6_K's d), as f32.
#[inline(always)]
unsafe fn half16(blk: TileBlock) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(blk.half as *const __m256i))
}

/// A tile of sixteen Q4_K rows (Q5_K rows when `Q5`) against one Q8_K row, one row per lane, as
/// `x86::dot16_512` does for the legacy types: each 4-byte group of quants one load of the tile
/// (all sixteen rows; Q5_K's fifth bits from its qh words), one VNNI per group and half against
/// broadcast activations, the sub-block scales and mins unpacked sixteen rows at a time. The
/// integer sums are exact and the float steps are `KOrder::Split`'s (Q5_K: `Combine`'s), so
/// results equal every other level's.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_q4k_512<const Q5: bool>(tile: &Tile, x: &Q8KRow) -> [f32; 16] {
    let nb = tile.n_blocks();
    check_x(x, nb);
    let (nib, five) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x10));
    let yp = x.q.as_ptr() as *const i32;
    let mut acc = _mm512_setzero_ps();
    let mut accm = _mm512_setzero_ps();
    for b in 0..nb {
        super::x86::prefetch_tile(tile, b);
        super::x86::prefetch_tile_after(tile, b);
        let p = tile.block(b);
        let word = |o: usize| word_at(p, o);
        let dm = word(0);
        let packed = [word(4), word(8), word(12)];
        let scale_min = |j: u32| k4_scale_min16(packed, j);
        let bs = x.bsums.as_ptr().add(16 * b);
        let mut sumi = _mm512_setzero_si512();
        let mut summ = _mm512_setzero_si512();
        for c in 0..4u32 {
            // 32 bytes of quants: low nibbles are sub-block 2c, high nibbles sub-block 2c + 1.
            let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            let y0 = b * 64 + c as usize * 16;
            for g in 0..8 {
                let q = word(if Q5 { 48 } else { 16 } + 32 * c as usize + 4 * g);
                let ylo = _mm512_set1_epi32(yp.add(y0 + g).read_unaligned());
                let yhi = _mm512_set1_epi32(yp.add(y0 + 8 + g).read_unaligned());
                let (mut ql, mut qh) = (
                    _mm512_and_si512(q, nib),
                    _mm512_and_si512(_mm512_srli_epi32::<4>(q), nib),
                );
                if Q5 {
                    // Fifth bits: bit 2c (low nibbles) and 2c + 1 (high) of qh[l], moved to bit
                    // 4 of each byte by one immediate shift of the 16-bit lanes (bit 4 of a byte
                    // only ever receives a bit of its own byte), then masked and or-ed in by one
                    // ternary-logic operation ((h & 0x10) | q).
                    let h = word(16 + 4 * g);
                    let at4 = |b: u32| match b {
                        0 => _mm512_slli_epi16::<4>(h),
                        1 => _mm512_slli_epi16::<3>(h),
                        2 => _mm512_slli_epi16::<2>(h),
                        3 => _mm512_slli_epi16::<1>(h),
                        4 => h,
                        5 => _mm512_srli_epi16::<1>(h),
                        6 => _mm512_srli_epi16::<2>(h),
                        _ => _mm512_srli_epi16::<3>(h),
                    };
                    ql = _mm512_ternarylogic_epi32::<0xEA>(at4(2 * c), five, ql);
                    qh = _mm512_ternarylogic_epi32::<0xEA>(at4(2 * c + 1), five, qh);
                }
                lo = _mm512_dpbusd_epi32(lo, ql, ylo);
                hi = _mm512_dpbusd_epi32(hi, qh, yhi);
            }
            for (j, s) in [(2 * c, lo), (2 * c + 1, hi)] {
                let (sc, mn) = scale_min(j);
                sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(s, sc));
                let ysum = *bs.add(2 * j as usize) as i32 + *bs.add(2 * j as usize + 1) as i32;
                summ = _mm512_add_epi32(summ, _mm512_mullo_epi32(mn, _mm512_set1_epi32(ysum)));
            }
        }
        let (d, dmin) = k4_d_dmin16(dm);
        let xd = _mm512_set1_ps(*x.d.get_unchecked(b));
        // `KOrder::Split` (Q4_K) or `Combine` (Q5_K), lane by lane: the same bits as every
        // other level.
        let (si, sm) = (_mm512_cvtepi32_ps(sumi), _mm512_cvtepi32_ps(summ));
        let (dd, dm) = (_mm512_mul_ps(d, xd), _mm512_mul_ps(dmin, xd));
        if Q5 {
            acc = _mm512_add_ps(
                acc,
                _mm512_sub_ps(_mm512_mul_ps(dd, si), _mm512_mul_ps(dm, sm)),
            );
        } else {
            acc = _mm512_fmadd_ps(si, dd, acc);
            accm = _mm512_fmadd_ps(sm, dm, accm);
        }
    }
    let mut out = [0f32; 16];
    _mm512_storeu_ps(out.as_mut_ptr(), _mm512_sub_ps(acc, accm));
    out
}

/// A tile of sixteen IQ4_XS rows against one Q8_K row in `KOrder::Combine`, one row per lane,
/// streaming the tile: each word of quants gives two 4-value groups (low and high nibbles), the
/// table's values plus 128 (unsigned, for VNNI) by one byte shuffle each, one `dpbusd` per
/// group against the broadcast activations. A sub-block's sum starts at −128·(its activations'
/// sum), so it is exactly Σ q·y, then times the sub-block's scale into the super-block's total;
/// acc += d·xd·f32(total), the bits of every other level.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_iq4xs_512(tile: &Tile, x: &Q8KRow) -> [f32; 16] {
    let nb = tile.n_blocks();
    check_x(x, nb);
    let yp = x.q.as_ptr() as *const i32;
    let mut acc = _mm512_setzero_ps();
    for b in 0..nb {
        super::x86::prefetch_tile(tile, b);
        super::x86::prefetch_tile_after(tile, b);
        let p = tile.block(b);
        let word = |o: usize| word_at(p, o);
        // Word 0: d (low f16) and the scales' high bits (two per sub-block); word 1: their low
        // four bits; the quants from byte 8, sixteen bytes per sub-block.
        let (w0, sl) = (word(0), word(4));
        let bs = x.bsums.as_ptr().add(16 * b);
        let mut sumi = _mm512_setzero_si512();
        for j in 0..8u32 {
            let ysum = *bs.add(2 * j as usize) as i32 + *bs.add(2 * j as usize + 1) as i32;
            let mut s = _mm512_set1_epi32(-128 * ysum);
            let y0 = b * 64 + 8 * j as usize;
            for i in 0..4 {
                let q = word(8 + 16 * j as usize + 4 * i);
                let yl = _mm512_set1_epi32(yp.add(y0 + i).read_unaligned());
                let yh = _mm512_set1_epi32(yp.add(y0 + 4 + i).read_unaligned());
                s = _mm512_dpbusd_epi32(s, iq4xs_values16(q, false), yl);
                s = _mm512_dpbusd_epi32(s, iq4xs_values16(q, true), yh);
            }
            sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(s, iq4xs_scale16(w0, sl, j)));
        }
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(w0));
        let dd = _mm512_mul_ps(d, _mm512_set1_ps(*x.d.get_unchecked(b)));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(sumi)));
    }
    let mut out = [0f32; 16];
    _mm512_storeu_ps(out.as_mut_ptr(), acc);
    out
}

/// A tile of sixteen Q6_K rows against one Q8_K row in `KOrder::Lanes` (llama.cpp's gemv), one
/// row per lane, streaming the tile: ggml's integer lane g of a row (values 4g.. of every 32,
/// see `kquant::q6k_lanes`) is formed word by word, each word's four-value sum (below 2^15, so
/// one i16) times its group's scale by `vpdpwssd`, less 32·(the scaled activation sums of groups
/// 2g, 2g + 1); then acc_g = fma(xd·d, lane, acc_g), folded as `hsum_float_8`. The same bits as
/// every other level.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_q6k_512(tile: &Tile, x: &Q8KRow) -> [f32; 16] {
    let nb = tile.n_blocks();
    check_x(x, nb);
    let (lo4, hi2, low) = (
        _mm512_set1_epi8(0x0f),
        _mm512_set1_epi8(0x30),
        _mm512_set1_epi32(0xffff),
    );
    let yp = x.q.as_ptr() as *const i32;
    let mut acc = [_mm512_setzero_ps(); 8];
    for b in 0..nb {
        super::x86::prefetch_tile(tile, b);
        super::x86::prefetch_tile_after(tile, b);
        let p = tile.block(b);
        let word = |o: usize| word_at(p, o);
        // Scale G (sign-extended to 16 bits, the high half zero) and the pairs (2p | 2p + 1).
        let sw = [word(192), word(196), word(200), word(204)];
        let sc: [__m512i; 16] = std::array::from_fn(|g| {
            let v = _mm512_srav_epi32(
                _mm512_sllv_epi32(sw[g / 4], _mm512_set1_epi32(24 - 8 * (g % 4) as i32)),
                _mm512_set1_epi32(24),
            );
            _mm512_and_si512(v, low)
        });
        let bs = x.bsums.as_ptr().add(16 * b) as *const i32;
        let dd = _mm512_mul_ps(_mm512_set1_ps(*x.d.get_unchecked(b)), half16(p));
        for g in 0..8 {
            let mut lane = _mm512_setzero_si512();
            for h in 0..2 {
                let a = word(64 * h + 4 * g);
                let c = word(64 * h + 32 + 4 * g);
                let hb = word(128 + 32 * h + 4 * g);
                // Values 128h + 32k + 4g.. (k = 0..4), as `KRow::unpack` builds them:
                // (quants & 0x0f) | high bits.
                let q = [
                    _mm512_ternarylogic_epi32::<0xEC>(
                        a,
                        _mm512_and_si512(_mm512_slli_epi16::<4>(hb), hi2),
                        lo4,
                    ),
                    _mm512_ternarylogic_epi32::<0xEC>(
                        c,
                        _mm512_and_si512(_mm512_slli_epi16::<2>(hb), hi2),
                        lo4,
                    ),
                    _mm512_ternarylogic_epi32::<0xEC>(
                        _mm512_srli_epi16::<4>(a),
                        _mm512_and_si512(hb, hi2),
                        lo4,
                    ),
                    _mm512_ternarylogic_epi32::<0xEC>(
                        _mm512_srli_epi16::<4>(c),
                        _mm512_and_si512(_mm512_srli_epi16::<2>(hb), hi2),
                        lo4,
                    ),
                ];
                for (k, q) in q.into_iter().enumerate() {
                    let y = _mm512_set1_epi32(yp.add(b * 64 + 32 * h + 8 * k + g).read_unaligned());
                    let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, y);
                    lane = _mm512_dpwssd_epi32(lane, s, sc[8 * h + 2 * k + g / 4]);
                }
            }
            let pair = _mm512_or_si512(sc[2 * g], _mm512_slli_epi32::<16>(sc[2 * g + 1]));
            let mins = _mm512_dpwssd_epi32(
                _mm512_setzero_si512(),
                pair,
                _mm512_set1_epi32(bs.add(g).read_unaligned()),
            );
            let lane = _mm512_sub_epi32(lane, _mm512_slli_epi32::<5>(mins));
            acc[g] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(lane), acc[g]);
        }
    }
    let mut out = [0f32; 16];
    _mm512_storeu_ps(out.as_mut_ptr(), super::x86::fold8_16(&acc));
    out
}

/// `gemm16_k45_512`'s float steps (`KOrder::Split`, `Split64`, `Combine`).
const SPLIT: u8 = 0;
const SPLIT64: u8 = 1;
const COMBINE: u8 = 2;

/// The scale of sub-block `j` of sixteen IQ4_XS super-blocks, one i32 per lane (six bits less
/// 32): the low four bits from word 1 (`sl`), the high two from the top half of word 0 (`w0`).
#[inline(always)]
unsafe fn iq4xs_scale16(w0: __m512i, sl: __m512i, j: u32) -> __m512i {
    let shr = |v: __m512i, n: u32| _mm512_srlv_epi32(v, _mm512_set1_epi32(n as i32));
    let lo = _mm512_and_si512(shr(sl, 4 * j), _mm512_set1_epi32(15));
    let hi = _mm512_and_si512(shr(w0, 16 + 2 * j), _mm512_set1_epi32(3));
    _mm512_sub_epi32(
        _mm512_or_si512(lo, _mm512_slli_epi32::<4>(hi)),
        _mm512_set1_epi32(32),
    )
}

/// IQ4_XS's sixteen values plus 128, as unsigned bytes, looked up by nibble in every 128-bit
/// lane: the low (`hi` false) or high nibbles of `q`.
#[inline(always)]
unsafe fn iq4xs_values16(q: __m512i, hi: bool) -> __m512i {
    let table = _mm512_broadcast_i32x4(_mm_loadu_si128(
        super::x86::IQ4NL_UNSIGNED.as_ptr() as *const __m128i
    ));
    let v = if hi { _mm512_srli_epi32::<4>(q) } else { q };
    _mm512_shuffle_epi8(table, _mm512_and_si512(v, _mm512_set1_epi8(0x0f)))
}

/// One IQ4_XS super-block of sixteen rows unpacked for `gemm16_k45_512`: sub-block j's values
/// (32j.., low nibbles then high) plus 128, its scale, no mins.
#[inline(always)]
unsafe fn iq4xs_block16(p: TileBlock) -> K4Block16 {
    let word = |o: usize| word_at(p, o);
    let (w0, sl) = (word(0), word(4));
    K4Block16 {
        q: std::array::from_fn(|j| {
            std::array::from_fn(|g| iq4xs_values16(word(8 + 16 * j + 4 * (g % 4)), g >= 4))
        }),
        sc: std::array::from_fn(|j| iq4xs_scale16(w0, sl, j as u32)),
        mn: [_mm512_setzero_si512(); 4],
        d: _mm512_cvtph_ps(_mm512_cvtepi32_epi16(w0)),
        dmin: _mm512_setzero_ps(),
    }
}

/// One super-block of sixteen Q4_K, Q5_K or IQ4_XS rows, one row per lane (see `gemm16_k45_512`).
#[derive(Clone, Copy)]
pub struct K4Block16 {
    /// [sub-block][4-value group]: the quants (0..15) of that group, four bytes per lane.
    q: [[__m512i; 8]; 8],
    /// Sub-block scales, one i32 per lane.
    sc: [__m512i; 8],
    /// Sub-block mins in pairs (2k in the low i16, 2k + 1 in the high one), for `vpdpwssd`.
    mn: [__m512i; 4],
    d: __m512,
    dmin: __m512,
}

/// Prefill: a tile of sixteen Q4_K, Q5_K or IQ4_XS rows (`ty`) against every token of `xs`,
/// token t in `order(t)`: `Split` (exactly `dot16_q4k_512`'s order), `Split64` or `Combine`, as
/// `KAcc` steps them, so the bits of every other level. IQ4_XS's values are the table's plus
/// 128 (unsigned, for VNNI), so each sub-block's sum starts at −128·(its activations' sum) and
/// is exact; it has no mins. The tile is unpacked once into `buf`
/// (reused between calls); tokens then go two at a time. `out(t, lanes)` receives token t's
/// sixteen lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm16_k45_512(
    tile: &Tile,
    ty: super::GgmlType,
    xs: &[Q8KRow],
    buf: &mut Vec<K4Block16>,
    order: impl Fn(usize) -> KOrder,
    mut out: impl FnMut(usize, &[f32; 16]),
) {
    let nb = tile.n_blocks();
    for x in xs {
        check_x(x, nb);
    }
    use super::GgmlType::{IQ4_XS, Q4_K, Q5_K};
    assert!(matches!(ty, Q4_K | Q5_K | IQ4_XS));
    let (q5, xs4) = (ty == Q5_K, ty == IQ4_XS);
    let nib = _mm512_set1_epi8(0x0f);
    let (one, quants) = (_mm512_set1_epi8(1), if q5 { 48 } else { 16 });
    super::repack::refill(buf, nb, |b| {
        let p = tile.block(b);
        if xs4 {
            return iq4xs_block16(p);
        }
        let word = |o: usize| word_at(p, o);
        let packed = [word(4), word(8), word(12)];
        let scale_min = |j: u32| k4_scale_min16(packed, j);
        let (d, dmin) = k4_d_dmin16(word(0));
        let mut blk = K4Block16 {
            q: [[_mm512_setzero_si512(); 8]; 8],
            sc: [_mm512_setzero_si512(); 8],
            mn: [_mm512_setzero_si512(); 4],
            d,
            dmin,
        };
        for g in 0..8 {
            // Q5_K's fifth bits of values 4g.. of every 32: bit 2c (low nibbles of chunk c) and
            // 2c + 1 (high nibbles) of qh[l].
            let h = if q5 {
                word(16 + 4 * g)
            } else {
                _mm512_setzero_si512()
            };
            // 32 bytes of quants per chunk c: low nibbles are sub-block 2c, high nibbles 2c + 1.
            for c in 0..4 {
                let q = word(quants + 32 * c + 4 * g);
                let (mut lo, mut hi) = (
                    _mm512_and_si512(q, nib),
                    _mm512_and_si512(_mm512_srli_epi32::<4>(q), nib),
                );
                if q5 {
                    let bit = |s: u32| {
                        let v = _mm512_srlv_epi16(h, _mm512_set1_epi16(s as i16));
                        _mm512_slli_epi16::<4>(_mm512_and_si512(v, one))
                    };
                    lo = _mm512_or_si512(lo, bit(2 * c as u32));
                    hi = _mm512_or_si512(hi, bit(2 * c as u32 + 1));
                }
                blk.q[2 * c][g] = lo;
                blk.q[2 * c + 1][g] = hi;
            }
        }
        for k in 0..4u32 {
            let (sc0, mn0) = scale_min(2 * k);
            let (sc1, mn1) = scale_min(2 * k + 1);
            blk.sc[2 * k as usize] = sc0;
            blk.sc[2 * k as usize + 1] = sc1;
            blk.mn[k as usize] = _mm512_or_si512(mn0, _mm512_slli_epi32::<16>(mn1));
        }
        blk
    });
    // Token t's f32 sums over every super-block, `T` tokens sharing each weight load.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    unsafe fn run<const T: usize, const MODE: u8, const OFFSET: bool>(
        buf: &[K4Block16],
        xs: [&Q8KRow; T],
    ) -> [__m512; T] {
        let mut acc = [_mm512_setzero_ps(); T];
        let mut accm = [_mm512_setzero_ps(); T];
        let yp = xs.map(|x| x.q.as_ptr() as *const i32);
        for (b, blk) in buf.iter().enumerate() {
            let mut sumi = [_mm512_setzero_si512(); T];
            let mut summ = [_mm512_setzero_si512(); T];
            let mut dd = [_mm512_setzero_ps(); T];
            let mut dm = [_mm512_setzero_ps(); T];
            for k in 0..T {
                let xd = _mm512_set1_ps(*xs[k].d.get_unchecked(b));
                dd[k] = _mm512_mul_ps(blk.d, xd);
                dm[k] = _mm512_mul_ps(blk.dmin, xd);
            }
            // `KOrder::Split` (one float step per super-block), `Split64` (one per 64 values,
            // sub-blocks 2p and 2p + 1) or `Combine`, lane by lane, as `KAcc::add` steps them.
            let step = |sumi: &mut [__m512i; T],
                        summ: &mut [__m512i; T],
                        acc: &mut [__m512; T],
                        accm: &mut [__m512; T]| {
                for k in 0..T {
                    let (si, sm) = (_mm512_cvtepi32_ps(sumi[k]), _mm512_cvtepi32_ps(summ[k]));
                    if MODE == COMBINE {
                        let c = _mm512_sub_ps(_mm512_mul_ps(dd[k], si), _mm512_mul_ps(dm[k], sm));
                        acc[k] = _mm512_add_ps(acc[k], c);
                    } else {
                        acc[k] = _mm512_fmadd_ps(si, dd[k], acc[k]);
                        accm[k] = _mm512_fmadd_ps(sm, dm[k], accm[k]);
                    }
                    sumi[k] = _mm512_setzero_si512();
                    summ[k] = _mm512_setzero_si512();
                }
            };
            let bs: [*const i16; T] = std::array::from_fn(|k| xs[k].bsums.as_ptr().add(16 * b));
            for (p, &mn) in blk.mn.iter().enumerate() {
                for j in [2 * p, 2 * p + 1] {
                    let mut s = [_mm512_setzero_si512(); T];
                    if OFFSET {
                        for k in 0..T {
                            let ysum = *bs[k].add(2 * j) as i32 + *bs[k].add(2 * j + 1) as i32;
                            s[k] = _mm512_set1_epi32(-128 * ysum);
                        }
                    }
                    for g in 0..8 {
                        let w = blk.q[j][g];
                        for k in 0..T {
                            let y =
                                _mm512_set1_epi32(yp[k].add(b * 64 + 8 * j + g).read_unaligned());
                            s[k] = _mm512_dpbusd_epi32(s[k], w, y);
                        }
                    }
                    for k in 0..T {
                        sumi[k] = _mm512_add_epi32(sumi[k], _mm512_mullo_epi32(s[k], blk.sc[j]));
                    }
                }
                // Activation sums of sub-blocks 2p and 2p + 1 (|sum| ≤ 32·128: an i16 each) times
                // the mins (IQ4_XS has none).
                if !OFFSET {
                    for k in 0..T {
                        let bs = bs[k];
                        let lo = *bs.add(4 * p) as i32 + *bs.add(4 * p + 1) as i32;
                        let hi = *bs.add(4 * p + 2) as i32 + *bs.add(4 * p + 3) as i32;
                        let pair = (lo & 0xffff) | (hi << 16);
                        summ[k] = _mm512_dpwssd_epi32(summ[k], mn, _mm512_set1_epi32(pair));
                    }
                }
                if MODE == SPLIT64 {
                    step(&mut sumi, &mut summ, &mut acc, &mut accm);
                }
            }
            if MODE != SPLIT64 {
                step(&mut sumi, &mut summ, &mut acc, &mut accm);
            }
        }
        let mut r = [_mm512_setzero_ps(); T];
        for k in 0..T {
            r[k] = _mm512_sub_ps(acc[k], accm[k]);
        }
        r
    }
    let mut t = 0;
    while t < xs.len() {
        let o = order(t);
        let pair = t + 1 < xs.len() && order(t + 1) == o;
        let (a, b) = (&xs[t], &xs[(t + 1).min(xs.len() - 1)]);
        let r: &[__m512] = match (pair, o, xs4) {
            (true, KOrder::Split, false) => &run::<2, SPLIT, false>(buf, [a, b]),
            (true, KOrder::Split64, false) => &run::<2, SPLIT64, false>(buf, [a, b]),
            (true, KOrder::Combine, false) => &run::<2, COMBINE, false>(buf, [a, b]),
            (true, KOrder::Combine, true) => &run::<2, COMBINE, true>(buf, [a, b]),
            (false, KOrder::Split, false) => &run::<1, SPLIT, false>(buf, [a]),
            (false, KOrder::Split64, false) => &run::<1, SPLIT64, false>(buf, [a]),
            (false, KOrder::Combine, false) => &run::<1, COMBINE, false>(buf, [a]),
            (false, KOrder::Combine, true) => &run::<1, COMBINE, true>(buf, [a]),
            (_, o, _) => panic!("gemm16_k45_512 does not sum {ty} in {o:?}"),
        };
        t += emit16(r, t, &mut out);
    }
}

/// Q3_K's quants (0..7) of values 128n + 32j + 4g.. of sixteen super-blocks: bits 2j, 2j + 1
/// of the qs word, the third bit from bit 4n + j of the hmask word `hm` (both at 4g).
#[inline(always)]
unsafe fn q3_quants16(qs: __m512i, hm: __m512i, n: usize, j: usize) -> __m512i {
    let k = 4 * n + j;
    // hmask bit k moved to bit 2 of each byte.
    let hb = if k >= 2 {
        _mm512_srlv_epi16(hm, _mm512_set1_epi16(k as i16 - 2))
    } else {
        _mm512_sllv_epi16(hm, _mm512_set1_epi16(2 - k as i16))
    };
    let lo = _mm512_srlv_epi16(qs, _mm512_set1_epi16(2 * j as i16));
    _mm512_or_si512(
        _mm512_and_si512(lo, _mm512_set1_epi8(3)),
        _mm512_and_si512(hb, _mm512_set1_epi8(4)),
    )
}

/// The sixteen scales of sixteen Q3_K super-blocks, six bits each less 32 (`q3k_scales` lane
/// by lane), from bytes 96..108.
#[inline(always)]
unsafe fn q3_scales16(p: TileBlock) -> [__m512i; 16] {
    let word = |o: usize| word_at(p, o);
    let (a0, a1, t) = (word(96), word(100), word(104));
    let (k1, k2) = (
        _mm512_set1_epi32(0x0303_0303),
        _mm512_set1_epi32(0x0f0f_0f0f),
    );
    let hi = |v: __m512i| _mm512_slli_epi32::<4>(_mm512_and_si512(v, k1));
    let aux = [
        _mm512_or_si512(_mm512_and_si512(a0, k2), hi(t)),
        _mm512_or_si512(_mm512_and_si512(a1, k2), hi(_mm512_srli_epi32::<2>(t))),
        _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi32::<4>(a0), k2),
            hi(_mm512_srli_epi32::<4>(t)),
        ),
        _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi32::<4>(a1), k2),
            hi(_mm512_srli_epi32::<6>(t)),
        ),
    ];
    let (byte, k32) = (_mm512_set1_epi32(0xff), _mm512_set1_epi32(32));
    std::array::from_fn(|i| {
        let v = _mm512_srlv_epi32(aux[i / 4], _mm512_set1_epi32(8 * (i % 4) as i32));
        _mm512_sub_epi32(_mm512_and_si512(v, byte), k32)
    })
}

/// A tile of sixteen Q3_K rows against one Q8_K row in `KOrder::Combine` (the mins folded),
/// one row per lane, streaming the tile: each word of quants gives four 4-value groups (two bits
/// each, the third from the high-bit mask), one `dpbusd` each against the broadcast activations.
/// A 16-value group's sum starts at −4·(its activations' sum), so it is exactly Σ (q − 4)·y,
/// then times the group's scale into the super-block's total: sumi − 4·summ, as the other
/// levels form it; acc += d·xd·f32(total), the same bits.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_q3k_512(tile: &Tile, x: &Q8KRow) -> [f32; 16] {
    let nb = tile.n_blocks();
    check_x(x, nb);
    let yp = x.q.as_ptr() as *const i32;
    let mut acc = _mm512_setzero_ps();
    for b in 0..nb {
        super::x86::prefetch_tile(tile, b);
        super::x86::prefetch_tile_after(tile, b);
        let p = tile.block(b);
        let word = |o: usize| word_at(p, o);
        let sc = q3_scales16(p);
        let bs = x.bsums.as_ptr().add(16 * b);
        // s[i]: 16-value group i's sum.
        let mut s: [__m512i; 16] =
            std::array::from_fn(|i| _mm512_set1_epi32(-4 * *bs.add(i) as i32));
        for g in 0..8 {
            let hm = word(4 * g);
            for n in 0..2 {
                let qs = word(32 + 32 * n + 4 * g);
                for j in 0..4 {
                    // Values 128n + 32j + 4g..
                    let q = q3_quants16(qs, hm, n, j);
                    let i = 8 * n + 2 * j + g / 4;
                    let y = _mm512_set1_epi32(yp.add(b * 64 + 4 * i + g % 4).read_unaligned());
                    s[i] = _mm512_dpbusd_epi32(s[i], q, y);
                }
            }
        }
        let mut sumi = _mm512_setzero_si512();
        for i in 0..16 {
            sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(s[i], sc[i]));
        }
        let dd = _mm512_mul_ps(half16(p), _mm512_set1_ps(*x.d.get_unchecked(b)));
        acc = _mm512_add_ps(acc, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(sumi)));
    }
    let mut out = [0f32; 16];
    _mm512_storeu_ps(out.as_mut_ptr(), acc);
    out
}

/// A tile of sixteen Q2_K rows against one Q8_K row in `KOrder::Combine`, one row per lane,
/// streaming the tile: each word of quants gives four 4-value groups (two bits each), one
/// `dpbusd` each against the broadcast activations; the 16-value groups' sums times their
/// scales make sumi, the mins (in i16 pairs) times the activations' sums by `vpdpwssd` summ;
/// acc += d·xd·f32(sumi) − dmin·xd·f32(summ), the same bits as every level.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot16_q2k_512(tile: &Tile, x: &Q8KRow) -> [f32; 16] {
    let nb = tile.n_blocks();
    check_x(x, nb);
    let (k4, k4x2) = (_mm512_set1_epi32(15), _mm512_set1_epi32(0x000f_000f));
    let yp = x.q.as_ptr() as *const i32;
    let mut acc = _mm512_setzero_ps();
    for b in 0..nb {
        super::x86::prefetch_tile(tile, b);
        super::x86::prefetch_tile_after(tile, b);
        let p = tile.block(b);
        let word = |o: usize| word_at(p, o);
        let bs = x.bsums.as_ptr().add(16 * b);
        let mut s = [_mm512_setzero_si512(); 16];
        for g in 0..8 {
            for n in 0..2 {
                let qs = word(16 + 32 * n + 4 * g);
                for j in 0..4 {
                    // Values 128n + 32j + 4g..: bits 2j, 2j + 1 of each byte, left in place
                    // (the quants times 4^j, at most 192: the sums are 4^j times theirs).
                    let v = _mm512_and_si512(qs, _mm512_set1_epi8(3 << (2 * j)));
                    let i = 8 * n + 2 * j + g / 4;
                    let y = _mm512_set1_epi32(yp.add(b * 64 + 4 * i + g % 4).read_unaligned());
                    s[i] = _mm512_dpbusd_epi32(s[i], v, y);
                }
            }
        }
        // Scale bytes: the scale in the low four bits, the min in the high four.
        let mut sumi = _mm512_setzero_si512();
        let mut summ = _mm512_setzero_si512();
        for k in 0..4 {
            let w = word(4 * k);
            for i in 0..4 {
                let sc = _mm512_and_si512(_mm512_srlv_epi32(w, _mm512_set1_epi32(8 * i)), k4);
                // Group 4k + i's sum, exactly (a multiple of 4^j, j its 2-bit position).
                let at = 4 * k + i as usize;
                let si = _mm512_srav_epi32(s[at], _mm512_set1_epi32(2 * ((at % 8) / 2) as i32));
                sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(si, sc));
            }
            // The mins of groups 4k, 4k + 2 (low and high i16), then of 4k + 1, 4k + 3.
            for o in 0..2 {
                let mn = _mm512_and_si512(
                    _mm512_srlv_epi16(w, _mm512_set1_epi16(4 + 8 * o as i16)),
                    k4x2,
                );
                let (a, c) = (
                    *bs.add(4 * k + o) as u16 as i32,
                    *bs.add(4 * k + o + 2) as i32,
                );
                summ = _mm512_dpwssd_epi32(summ, mn, _mm512_set1_epi32(a | (c << 16)));
            }
        }
        let xd = _mm512_set1_ps(*x.d.get_unchecked(b));
        let (d, dmin) = k4_d_dmin16(word(80));
        let si = _mm512_mul_ps(_mm512_mul_ps(d, xd), _mm512_cvtepi32_ps(sumi));
        let sm = _mm512_mul_ps(_mm512_mul_ps(dmin, xd), _mm512_cvtepi32_ps(summ));
        acc = _mm512_add_ps(acc, _mm512_sub_ps(si, sm));
    }
    let mut out = [0f32; 16];
    _mm512_storeu_ps(out.as_mut_ptr(), acc);
    out
}

/// One super-block of sixteen Q6_K, Q3_K or Q2_K rows, one row per lane (see `gemm16_k36_512`).
#[derive(Clone, Copy)]
pub struct K6Block16 {
    /// [16-value sub-block][4-value group]: the quants (0..63, 0..7 or 0..3), four bytes per
    /// lane.
    q: [[__m512i; 4]; 16],
    /// Sub-block scales, one i32 per lane.
    sc: [__m512i; 16],
    /// What multiplies the activations' 16-value sums, in pairs (2k in the low i16, 2k + 1 in
    /// the high one), for `vpdpwssd`: the scales (Q6_K's and Q3_K's mins are multiples of
    /// them), or Q2_K's mins.
    scp: [__m512i; 8],
    d: __m512,
    /// Q2_K's dmin (zero for the others).
    dmin: __m512,
}

/// A tile of sixteen Q6_K rows in `order`: `KOrder::Tiled` (llama.cpp's Q6_K order from 8
/// tokens) or `Lanes` (its gemv's, below), or Q3_K or Q2_K rows (`ty`; in `Combine`, their
/// order at every batch size), against every token of `xs`: per row and token the integer sums
/// of `kblock_sums`, then acc = fma(f32(sumi − summ)·d, xd, acc) (Tiled), acc += d·xd·f32(sumi −
/// summ) (Q3_K: Combine with the mins folded), acc += d·xd·f32(sumi) − dmin·xd·f32(summ) (Q2_K)
/// or ggml's eight lanes (Lanes), the same bits as every other level. Calling as
/// `gemm16_k45_512`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm16_k36_512(
    tile: &Tile,
    ty: super::GgmlType,
    order: KOrder,
    xs: &[Q8KRow],
    buf: &mut Vec<K6Block16>,
    mut out: impl FnMut(usize, &[f32; 16]),
) {
    let nb = tile.n_blocks();
    for x in xs {
        check_x(x, nb);
    }
    use super::GgmlType::{Q2_K, Q3_K, Q6_K};
    assert!(matches!(ty, Q2_K | Q3_K | Q6_K));
    let (q3, q2) = (ty == Q3_K, ty == Q2_K);
    let (lo4, hi2) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
    let low = _mm512_set1_epi32(0xffff);
    let pairs = |sc: &[__m512i; 16]| -> [__m512i; 8] {
        std::array::from_fn(|k| {
            _mm512_or_si512(
                _mm512_and_si512(sc[2 * k], low),
                _mm512_slli_epi32::<16>(sc[2 * k + 1]),
            )
        })
    };
    let q3_block = |p: TileBlock| -> K6Block16 {
        let word = |o: usize| word_at(p, o);
        let sc = q3_scales16(p);
        let mut blk = K6Block16 {
            q: [[_mm512_setzero_si512(); 4]; 16],
            scp: pairs(&sc),
            sc,
            d: half16(p),
            dmin: _mm512_setzero_ps(),
        };
        for g in 0..8 {
            let hm = word(4 * g);
            for n in 0..2 {
                let qs = word(32 + 32 * n + 4 * g);
                for j in 0..4 {
                    blk.q[8 * n + 2 * j + g / 4][g % 4] = q3_quants16(qs, hm, n, j);
                }
            }
        }
        blk
    };
    let q2_block = |p: TileBlock| -> K6Block16 {
        let word = |o: usize| word_at(p, o);
        // Scale bytes 0..16: the scale in the low four bits, the min in the high four.
        let (k4, byte) = (_mm512_set1_epi32(15), _mm512_set1_epi32(0xff));
        let bytes: [__m512i; 16] = std::array::from_fn(|i| {
            _mm512_and_si512(
                _mm512_srlv_epi32(word(4 * (i / 4)), _mm512_set1_epi32(8 * (i % 4) as i32)),
                byte,
            )
        });
        let mn: [__m512i; 16] = std::array::from_fn(|i| _mm512_srli_epi32::<4>(bytes[i]));
        let (d, dmin) = k4_d_dmin16(word(80));
        let mut blk = K6Block16 {
            q: [[_mm512_setzero_si512(); 4]; 16],
            sc: std::array::from_fn(|i| _mm512_and_si512(bytes[i], k4)),
            scp: pairs(&mn),
            d,
            dmin,
        };
        let three = _mm512_set1_epi8(3);
        for n in 0..2 {
            for g in 0..8 {
                let qs = word(16 + 32 * n + 4 * g);
                for j in 0..4 {
                    // Values 128n + 32j + 4g..: bits 2j, 2j + 1 of each byte.
                    let v = _mm512_srlv_epi16(qs, _mm512_set1_epi16(2 * j as i16));
                    blk.q[8 * n + 2 * j + g / 4][g % 4] = _mm512_and_si512(v, three);
                }
            }
        }
        blk
    };
    let unpack = |b: usize| -> K6Block16 {
        let p = tile.block(b);
        if q3 {
            return q3_block(p);
        }
        if q2 {
            return q2_block(p);
        }
        let word = |o: usize| word_at(p, o);
        let mut blk = K6Block16 {
            q: [[_mm512_setzero_si512(); 4]; 16],
            sc: [_mm512_setzero_si512(); 16],
            scp: [_mm512_setzero_si512(); 8],
            d: half16(p),
            dmin: _mm512_setzero_ps(),
        };
        for h in 0..2 {
            for g in 0..8 {
                let a = word(64 * h + 4 * g);
                let c = word(64 * h + 32 + 4 * g);
                let hb = word(128 + 32 * h + 4 * g);
                // Values 128h + 32k + 4g.. (k = 0..4), as `KRow::unpack` builds them.
                let q = [
                    _mm512_or_si512(
                        _mm512_and_si512(a, lo4),
                        _mm512_and_si512(_mm512_slli_epi16::<4>(hb), hi2),
                    ),
                    _mm512_or_si512(
                        _mm512_and_si512(c, lo4),
                        _mm512_and_si512(_mm512_slli_epi16::<2>(hb), hi2),
                    ),
                    _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(a), lo4),
                        _mm512_and_si512(hb, hi2),
                    ),
                    _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(c), lo4),
                        _mm512_and_si512(_mm512_srli_epi16::<2>(hb), hi2),
                    ),
                ];
                for (k, v) in q.into_iter().enumerate() {
                    blk.q[8 * h + 2 * k + g / 4][g % 4] = v;
                }
            }
        }
        for k in 0..4 {
            let s = word(192 + 4 * k);
            // Sign-extend byte j of each lane: scale 4k + j.
            blk.sc[4 * k] = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(s));
            blk.sc[4 * k + 1] = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<16>(s));
            blk.sc[4 * k + 2] = _mm512_srai_epi32::<24>(_mm512_slli_epi32::<8>(s));
            blk.sc[4 * k + 3] = _mm512_srai_epi32::<24>(s);
        }
        blk.scp = pairs(&blk.sc);
        blk
    };
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    unsafe fn run<const T: usize, const MODE: u8>(
        buf: &[K6Block16],
        xs: [&Q8KRow; T],
        acc: &mut [[__m512; 8]; T],
    ) {
        let yp = xs.map(|x| x.q.as_ptr() as *const i32);
        for (b, blk) in buf.iter().enumerate() {
            if MODE == LANES {
                lanes_block(blk, b, &xs, &yp, acc);
                continue;
            }
            let mut sumi = [_mm512_setzero_si512(); T];
            for j in 0..16 {
                let mut s = [_mm512_setzero_si512(); T];
                for g in 0..4 {
                    let w = blk.q[j][g];
                    for k in 0..T {
                        let y = _mm512_set1_epi32(yp[k].add(b * 64 + 4 * j + g).read_unaligned());
                        s[k] = _mm512_dpbusd_epi32(s[k], w, y);
                    }
                }
                for k in 0..T {
                    sumi[k] = _mm512_add_epi32(sumi[k], _mm512_mullo_epi32(s[k], blk.sc[j]));
                }
            }
            for k in 0..T {
                let summ = scaled_bsums(blk, xs[k], b);
                let xd = _mm512_set1_ps(*xs[k].d.get_unchecked(b));
                if MODE == Q2 {
                    // Combine: d·xd·sumi − dmin·xd·summ, summ over the mins.
                    let si = _mm512_mul_ps(_mm512_mul_ps(blk.d, xd), _mm512_cvtepi32_ps(sumi[k]));
                    let dm = _mm512_mul_ps(blk.dmin, xd);
                    let c = _mm512_sub_ps(si, _mm512_mul_ps(dm, _mm512_cvtepi32_ps(summ)));
                    acc[k][0] = _mm512_add_ps(acc[k][0], c);
                } else if MODE == Q3 {
                    // mins are 4·scale (the −4 of the three-bit values); Combine, folded.
                    let diff = _mm512_sub_epi32(sumi[k], _mm512_slli_epi32::<2>(summ));
                    let dd = _mm512_mul_ps(blk.d, xd);
                    acc[k][0] =
                        _mm512_add_ps(acc[k][0], _mm512_mul_ps(dd, _mm512_cvtepi32_ps(diff)));
                } else {
                    // mins are 32·scale: summ = 32·Σ scale·bsum; Tiled.
                    let diff = _mm512_sub_epi32(sumi[k], _mm512_slli_epi32::<5>(summ));
                    let r = _mm512_mul_ps(_mm512_cvtepi32_ps(diff), blk.d);
                    acc[k][0] = _mm512_fmadd_ps(r, xd, acc[k][0]);
                }
            }
        }
    }
    let mode = match (ty, order) {
        (Q3_K, KOrder::Combine) => Q3,
        (Q2_K, KOrder::Combine) => Q2,
        (Q6_K, KOrder::Tiled) => TILED,
        (Q6_K, KOrder::Lanes) => LANES,
        (_, o) => panic!("gemm16_k36_512 does not sum {ty} in {o:?}"),
    };
    let finish = |a: &[__m512; 8]| {
        if mode == LANES {
            super::x86::fold8_16(a)
        } else {
            a[0]
        }
    };
    super::repack::refill(buf, nb, unpack);
    let mut t = 0;
    while t < xs.len() {
        if t + 1 < xs.len() {
            let mut acc = [[_mm512_setzero_ps(); 8]; 2];
            let x2 = [&xs[t], &xs[t + 1]];
            match mode {
                Q3 => run::<2, Q3>(buf, x2, &mut acc),
                Q2 => run::<2, Q2>(buf, x2, &mut acc),
                TILED => run::<2, TILED>(buf, x2, &mut acc),
                _ => run::<2, LANES>(buf, x2, &mut acc),
            }
            t += emit16(&[finish(&acc[0]), finish(&acc[1])], t, &mut out);
        } else {
            let mut acc = [[_mm512_setzero_ps(); 8]; 1];
            match mode {
                Q3 => run::<1, Q3>(buf, [&xs[t]], &mut acc),
                Q2 => run::<1, Q2>(buf, [&xs[t]], &mut acc),
                TILED => run::<1, TILED>(buf, [&xs[t]], &mut acc),
                _ => run::<1, LANES>(buf, [&xs[t]], &mut acc),
            }
            t += emit16(&[finish(&acc[0])], t, &mut out);
        }
    }
}

/// `gemm16_k36_512`'s float steps.
const TILED: u8 = 0;
const LANES: u8 = 1;
const Q3: u8 = 2;
/// Q2_K, in `Combine` (AVX2 only).
const Q2: u8 = 3;

/// Σ over the sixteen 16-value groups of scale·bsum (one i32 per row), in i16 pairs.
#[inline(always)]
unsafe fn scaled_bsums(blk: &K6Block16, x: &Q8KRow, b: usize) -> __m512i {
    let bs = x.bsums.as_ptr().add(16 * b) as *const i32;
    let mut summ = _mm512_setzero_si512();
    for (p, &scp) in blk.scp.iter().enumerate() {
        // bsums 2p and 2p + 1 as one i16 pair.
        let pair = _mm512_set1_epi32(bs.add(p).read_unaligned());
        summ = _mm512_dpwssd_epi32(summ, scp, pair);
    }
    summ
}

/// Q6_K super-block `b` in `KOrder::Lanes` for every token: ggml's eight integer lanes
/// (`kquant::q6k_lanes`) per row, lane j of a row holding values 4j.. of every 32 (word j % 4
/// of the 16-value groups G with G % 2 = j / 4) less 32·(sc[2j]·bsums[2j] + sc[2j+1]·bsums[2j+1]),
/// each fused into its own accumulator with xd·d.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn lanes_block<const T: usize>(
    blk: &K6Block16,
    b: usize,
    xs: &[&Q8KRow; T],
    yp: &[*const i32; T],
    acc: &mut [[__m512; 8]; T],
) {
    for k in 0..T {
        let bs = xs[k].bsums.as_ptr().add(16 * b) as *const i32;
        let dd = _mm512_mul_ps(_mm512_set1_ps(*xs[k].d.get_unchecked(b)), blk.d);
        for j in 0..8 {
            let (half, i) = (j / 4, j % 4);
            let mut lane = _mm512_setzero_si512();
            for g in (half..16).step_by(2) {
                let y = _mm512_set1_epi32(yp[k].add(b * 64 + 4 * g + i).read_unaligned());
                let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), blk.q[g][i], y);
                lane = _mm512_add_epi32(lane, _mm512_mullo_epi32(s, blk.sc[g]));
            }
            let pair = _mm512_set1_epi32(bs.add(j).read_unaligned());
            let mins = _mm512_dpwssd_epi32(_mm512_setzero_si512(), blk.scp[j], pair);
            let lane = _mm512_sub_epi32(lane, _mm512_slli_epi32::<5>(mins));
            acc[k][j] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(lane), acc[k][j]);
        }
    }
}

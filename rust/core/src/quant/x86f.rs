//! x86 kernels for float weight matrices in llama.cpp's orders (see `float.rs`): ggml's dots,
//! one row at a time, and tinyBLAS's tiles of a few rows by a few tokens. `E` is the weights' element format (0 f32, 1 f16, 2 bf16); the activations'
//! is `act_elem(E)`.

#![allow(clippy::missing_safety_doc)]
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::float::FloatOrder;
use super::x86::hsum_f32_8;
use super::GgmlType;

pub const E_F32: u8 = 0;
pub const E_F16: u8 = 1;
pub const E_BF16: u8 = 2;

#[inline(always)]
const fn size_of_elem(e: u8) -> usize {
    if e == E_F32 {
        4
    } else {
        2
    }
}

/// Sixteen values at `p` as f32.
#[inline(always)]
unsafe fn ld16<const E: u8>(p: *const u8) -> __m512 {
    match E {
        E_F32 => _mm512_loadu_ps(p as *const f32),
        E_F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
        _ => _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)),
            16,
        )),
    }
}

/// Eight values at `p` as f32.
#[inline(always)]
unsafe fn ld8<const E: u8>(p: *const u8) -> __m256 {
    match E {
        E_F32 => _mm256_loadu_ps(p as *const f32),
        E_F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
        _ => _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)),
            16,
        )),
    }
}

/// GCC's `_mm512_reduce_add_ps` (and tinyBLAS's `hsum`): halves added down to four lanes,
/// then (l0 + l2) + (l1 + l3).
#[inline(always)]
unsafe fn hsum16(x: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(x);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
    hsum_f32_8(_mm256_add_ps(hi, lo))
}

/// ggml's AVX fold of eight lanes by `hadd`: (t0 + t1) + (t2 + t3), t = low + high half.
#[inline(always)]
unsafe fn hadd8(x: __m256) -> f32 {
    let t0 = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    let t1 = _mm_hadd_ps(t0, t0);
    _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
}

#[inline(always)]
unsafe fn elem<const E: u8>(p: *const u8, i: usize) -> f32 {
    match E {
        E_F32 => (p as *const f32).add(i).read_unaligned(),
        E_F16 => super::f16::f16_to_f32((p as *const u16).add(i).read_unaligned()),
        _ => super::float::bf16_to_f32((p as *const u16).add(i).read_unaligned()),
    }
}

/// Activations are f32 for f32 and f16 weights (f16's rounded to f16 first, then widened once
/// per matmul rather than in every tile), bf16 bits for bf16 weights.
#[inline(always)]
const fn act_elem(e: u8) -> u8 {
    if e == E_BF16 {
        E_BF16
    } else {
        E_F32
    }
}

/// Sixteen weights from value `i` of row `w`.
#[inline(always)]
unsafe fn w16<const E: u8>(w: *const u8, i: usize) -> __m512 {
    ld16::<E>(w.add(i * size_of_elem(E)))
}

/// Sixteen activations from value `i` of row `x` (weights of element format `E`).
#[inline(always)]
unsafe fn x16<const E: u8>(x: *const u8, i: usize) -> __m512 {
    if act_elem(E) == E_BF16 {
        ld16::<E_BF16>(x.add(2 * i))
    } else {
        ld16::<E_F32>(x.add(4 * i))
    }
}

#[inline(always)]
unsafe fn w8<const E: u8>(w: *const u8, i: usize) -> __m256 {
    ld8::<E>(w.add(i * size_of_elem(E)))
}

#[inline(always)]
unsafe fn x8<const E: u8>(x: *const u8, i: usize) -> __m256 {
    if act_elem(E) == E_BF16 {
        ld8::<E_BF16>(x.add(2 * i))
    } else {
        ld8::<E_F32>(x.add(4 * i))
    }
}

/// Activation value `i` (weights of element format `E`).
#[inline(always)]
unsafe fn elemx<const E: u8>(x: *const u8, i: usize) -> f32 {
    if act_elem(E) == E_BF16 {
        elem::<E_BF16>(x, i)
    } else {
        elem::<E_F32>(x, i)
    }
}

/// ggml's finish after the vector part: f32 keeps an f32 sum and fuses the leftovers in; f16
/// and bf16 continue in double precision.
#[inline(always)]
unsafe fn leftovers<const E: u8>(r: f32, w: *const u8, x: *const u8, from: usize, k: usize) -> f32 {
    if E == E_F32 {
        let mut s = r;
        for i in from..k {
            s = elem::<E>(w, i).mul_add(elemx::<E>(x, i), s);
        }
        s
    } else {
        let mut s = r as f64;
        for i in from..k {
            s += (elem::<E>(w, i) * elemx::<E>(x, i)) as f64;
        }
        s as f32
    }
}

/// `ggml_vec_dot_f32/f16` at AVX-512 for row `w` against activation row `x` (`k` values):
/// four sixteen-lane accumulators over every 64 values, (a0 + a2) + (a1 + a3), across lanes.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
pub unsafe fn vec_dot_512<const E: u8>(w: *const u8, x: *const u8, k: usize) -> f32 {
    let np = k & !63;
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i < np {
        for j in 0..4 {
            let at = i + 16 * j;
            acc[j] = _mm512_fmadd_ps(w16::<E>(w, at), x16::<E>(x, at), acc[j]);
        }
        i += 64;
    }
    let a = &acc;
    let s = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
    leftovers::<E>(hsum16(s), w, x, np, k)
}

/// `ggml_vec_dot_f32/f16` at AVX2: four eight-lane accumulators over every 32 values, folded as
/// at AVX-512, across lanes by `hadd`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_256<const E: u8>(w: *const u8, x: *const u8, k: usize) -> f32 {
    let np = k & !31;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i < np {
        for j in 0..4 {
            let at = i + 8 * j;
            acc[j] = _mm256_fmadd_ps(w8::<E>(w, at), x8::<E>(x, at), acc[j]);
        }
        i += 32;
    }
    let a = &acc;
    let s = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
    let r0 = if E == E_BF16 { hsum_f32_8(s) } else { hadd8(s) };
    leftovers::<E>(r0, w, x, np, k)
}

/// `ggml_vec_dot_bf16` at AVX-512F without BF16 instructions: two sixteen-lane accumulators
/// over every 32 values, each summed across lanes, added in double precision.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
pub unsafe fn vec_dot_bf16_512(w: *const u8, x: *const u8, k: usize) -> f32 {
    let np = k & !31;
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut i = 0;
    while i < np {
        for j in 0..2 {
            let off = (i + 16 * j) * 2;
            let xv = ld16::<E_BF16>(x.add(off));
            // ggml multiplies, then adds: the same as fused, the product of two bf16 being
            // exact in f32.
            acc[j] = _mm512_fmadd_ps(ld16::<E_BF16>(w.add(off)), xv, acc[j]);
        }
        i += 32;
    }
    let s = hsum16(acc[0]) as f64 + hsum16(acc[1]) as f64;
    tail_f64(s, w, x, np, k)
}

/// The BF16 dots' finish: the leftovers' products added to the double sum `s`.
#[inline(always)]
unsafe fn tail_f64(s: f64, w: *const u8, x: *const u8, from: usize, k: usize) -> f32 {
    let mut s = s;
    for i in from..k {
        s += (elem::<E_BF16>(w, i) * elem::<E_BF16>(x, i)) as f64;
    }
    s as f32
}

/// `ggml_vec_dot_bf16` with AVX512_BF16: two `vdpbf16ps` accumulators over every 64 values,
/// each summed across lanes, added in double precision.
#[target_feature(enable = "avx512f,avx512vl,avx512bf16,avx2,fma,f16c")]
pub unsafe fn vec_dot_bf16_dp(w: *const u8, x: *const u8, k: usize) -> f32 {
    let np = k / 64 * 64;
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut i = 0;
    while i < np {
        for j in 0..2 {
            let off = (i + 32 * j) * 2;
            let xv: __m512bh = std::mem::transmute(_mm512_loadu_si512(x.add(off) as *const _));
            let wv: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(off) as *const _));
            acc[j] = _mm512_dpbf16_ps(acc[j], wv, xv);
        }
        i += 64;
    }
    let s = hsum16(acc[0]) as f64 + hsum16(acc[1]) as f64;
    tail_f64(s, w, x, np, k)
}

/// tinyBLAS at AVX-512 for `RM` rows × `RN` tokens: each output one sixteen-lane fused
/// accumulator over the row (`k` a multiple of 16), summed across lanes; `out[j][i]`.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
pub unsafe fn tile_512<const E: u8, const RM: usize, const RN: usize>(
    rows: [*const u8; RM],
    xs: [*const u8; RN],
    k: usize,
) -> [[f32; RM]; RN] {
    let mut acc = [[_mm512_setzero_ps(); RM]; RN];
    let mut l = 0;
    while l < k {
        let a: [__m512; RM] = std::array::from_fn(|i| w16::<E>(rows[i], l));
        for j in 0..RN {
            let b = x16::<E>(xs[j], l);
            for i in 0..RM {
                acc[j][i] = _mm512_fmadd_ps(a[i], b, acc[j][i]);
            }
        }
        l += 16;
    }
    std::array::from_fn(|j| std::array::from_fn(|i| hsum16(acc[j][i])))
}

/// tinyBLAS at AVX2: eight lanes (`k` a multiple of 8), across lanes by halves.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_256<const E: u8, const RM: usize, const RN: usize>(
    rows: [*const u8; RM],
    xs: [*const u8; RN],
    k: usize,
) -> [[f32; RM]; RN] {
    let mut acc = [[_mm256_setzero_ps(); RM]; RN];
    let mut l = 0;
    while l < k {
        let a: [__m256; RM] = std::array::from_fn(|i| w8::<E>(rows[i], l));
        for j in 0..RN {
            let b = x8::<E>(xs[j], l);
            for i in 0..RM {
                acc[j][i] = _mm256_fmadd_ps(a[i], b, acc[j][i]);
            }
        }
        l += 8;
    }
    std::array::from_fn(|j| std::array::from_fn(|i| hsum_f32_8(acc[j][i])))
}

/// tinyBLAS for BF16 with AVX512_BF16: one `vdpbf16ps` accumulator per output over every 32
/// values (`k` a multiple of 32).
#[target_feature(enable = "avx512f,avx512vl,avx512bf16,avx2,fma,f16c")]
pub unsafe fn tile_bf16_dp<const RM: usize, const RN: usize>(
    rows: [*const u8; RM],
    xs: [*const u8; RN],
    k: usize,
) -> [[f32; RM]; RN] {
    let mut acc = [[_mm512_setzero_ps(); RM]; RN];
    let mut l = 0;
    while l < k {
        let off = l * 2;
        let a: [__m512bh; RM] = std::array::from_fn(|i| {
            std::mem::transmute(_mm512_loadu_si512(rows[i].add(off) as *const _))
        });
        for j in 0..RN {
            let b: __m512bh = std::mem::transmute(_mm512_loadu_si512(xs[j].add(off) as *const _));
            for i in 0..RM {
                acc[j][i] = _mm512_dpbf16_ps(acc[j][i], a[i], b);
            }
        }
        l += 32;
    }
    std::array::from_fn(|j| std::array::from_fn(|i| hsum16(acc[j][i])))
}

/// ggml's dot for `order` and `ty`: row `w` against activation row `x`, `k` values each.
/// Safety: the CPU has `order`'s instructions (not `Scalar`).
#[inline(always)]
pub unsafe fn dot(order: FloatOrder, ty: GgmlType, w: *const u8, x: *const u8, k: usize) -> f32 {
    use GgmlType::*;
    match (order, ty) {
        (FloatOrder::Avx512 { bf16_dot: true }, BF16) => vec_dot_bf16_dp(w, x, k),
        (FloatOrder::Avx512 { .. }, BF16) => vec_dot_bf16_512(w, x, k),
        (FloatOrder::Avx512 { .. }, F16) => vec_dot_512::<E_F16>(w, x, k),
        (FloatOrder::Avx512 { .. }, _) => vec_dot_512::<E_F32>(w, x, k),
        (_, BF16) => vec_dot_256::<E_BF16>(w, x, k),
        (_, F16) => vec_dot_256::<E_F16>(w, x, k),
        _ => vec_dot_256::<E_F32>(w, x, k),
    }
}

/// tinyBLAS for `order` and `ty`: `RM` rows × `RN` tokens, `out[j][i]` (the tile's shape changes
/// no output's sum).
/// Safety: as `dot_rows`, and `k` is a multiple of `order.tile_step(ty)`.
#[inline(always)]
pub unsafe fn tile<const RM: usize, const RN: usize>(
    order: FloatOrder,
    ty: GgmlType,
    rows: [*const u8; RM],
    xs: [*const u8; RN],
    k: usize,
) -> [[f32; RM]; RN] {
    use GgmlType::*;
    match (order, ty) {
        (FloatOrder::Avx512 { bf16_dot: true }, BF16) => tile_bf16_dp::<RM, RN>(rows, xs, k),
        (FloatOrder::Avx512 { .. }, BF16) => tile_512::<E_BF16, RM, RN>(rows, xs, k),
        (FloatOrder::Avx512 { .. }, F16) => tile_512::<E_F16, RM, RN>(rows, xs, k),
        (FloatOrder::Avx512 { .. }, _) => tile_512::<E_F32, RM, RN>(rows, xs, k),
        (_, BF16) => tile_256::<E_BF16, RM, RN>(rows, xs, k),
        (_, F16) => tile_256::<E_F16, RM, RN>(rows, xs, k),
        _ => tile_256::<E_F32, RM, RN>(rows, xs, k),
    }
}

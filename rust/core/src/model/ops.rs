//! Element-wise and row operations of the forward pass.

/// out = x / rms(x) * w. The sum of squares is accumulated in f64 and the scale computed in f32,
/// as ggml does: rounding differences here flip activation quantization downstream.
#[inline(always)]
pub fn rmsnorm(x: &mut [f32], w: &[f32], eps: f32) {
    let ss: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    scale_row(x, ss, w, eps);
}

#[inline(always)]
fn scale_row(x: &mut [f32], ss: f64, w: &[f32], eps: f32) {
    let mean = (ss / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(w) {
        *v = (*v * scale) * g;
    }
}

/// `rmsnorm` of every `len`-long row of `x`, eight rows at a time: each row's sum of squares is
/// still one f64 chain in ggml's order, but eight independent chains run side by side instead
/// of one waiting on each add (the same bits, several times the speed).
#[inline(always)]
pub fn rmsnorm_rows(x: &mut [f32], len: usize, w: &[f32], eps: f32) {
    let mut groups = x.chunks_exact_mut(8 * len.max(1));
    for g in &mut groups {
        norm_group::<8>(g, len, w, eps);
    }
    let rest = groups.into_remainder();
    let mut fours = rest.chunks_exact_mut(4 * len.max(1));
    for g in &mut fours {
        norm_group::<4>(g, len, w, eps);
    }
    for r in fours.into_remainder().chunks_exact_mut(len.max(1)) {
        rmsnorm(r, w, eps);
    }
}

#[inline(always)]
fn norm_group<const R: usize>(g: &mut [f32], len: usize, w: &[f32], eps: f32) {
    let mut ss = [0f64; R];
    for i in 0..len {
        for (r, s) in ss.iter_mut().enumerate() {
            let v = g[r * len + i];
            *s += (v * v) as f64;
        }
    }
    for (r, row) in g.chunks_exact_mut(len).enumerate() {
        scale_row(row, ss[r], w, eps);
    }
}

/// RoPE frequency step: theta_{i+1} = theta_i * base^(-2/n_rot).
pub fn rope_theta_scale(n_rot: usize, base: f32) -> f32 {
    base.powf(-2.0 / n_rot as f32)
}

/// YaRN's parameters for one RoPE base: the extrapolation mix, the magnitude scale, and the
/// correction dimensions between which rotation frequencies are interpolated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct YarnTable {
    pub ext_factor: f32,
    pub mscale: f32,
    pub corr_dims: [f32; 2],
}

/// YaRN's correction dimensions for `n_rot` rotated values (ggml's definition).
pub fn yarn_corr_dims(
    n_rot: usize,
    n_ctx_orig: usize,
    base: f32,
    beta_fast: f32,
    beta_slow: f32,
) -> [f32; 2] {
    let dim = |n_rot_beta: f32| {
        n_rot as f32 * (n_ctx_orig as f32 / (n_rot_beta * 2.0 * std::f32::consts::PI)).ln()
            / (2.0 * base.ln())
    };
    [
        dim(beta_fast).floor().max(0.0),
        dim(beta_slow).ceil().min(n_rot as f32 - 1.0),
    ]
}

/// The (cos, sin) table of one position: theta starts at `pos` and is multiplied by `theta_scale`
/// per pair, the way ggml builds its cache (so the angles round the same way); `freq_scale`
/// interpolates (linear scaling), YaRN mixes interpolation and extrapolation per dimension.
#[allow(clippy::too_many_arguments)]
pub fn rope_cache(
    pos: f32,
    freq_scale: f32,
    theta_scale: f32,
    n_rot: usize,
    yarn: Option<YarnTable>,
    attn_factor: f32,
    freq_factors: Option<&[f32]>,
    out: &mut Vec<(f32, f32)>,
) {
    out.clear();
    let mut theta_base = pos;
    for i in 0..n_rot / 2 {
        // Per-dimension frequency factors (Llama 3.1's rope_freqs, phi3's long/short factors)
        // divide the angle before any scaling.
        let theta = match freq_factors {
            Some(ff) => theta_base / ff[i],
            None => theta_base,
        };
        let interp = freq_scale * theta;
        let (t, mscale) = match yarn {
            Some(y) if y.ext_factor != 0.0 => {
                let r = (i as f32 - y.corr_dims[0]) / (y.corr_dims[1] - y.corr_dims[0]).max(0.001);
                let mix = (1.0 - r.clamp(0.0, 1.0)) * y.ext_factor;
                (
                    interp * (1.0 - mix) + theta * mix,
                    y.mscale * (1.0 + 0.1 * (1.0 / freq_scale).ln()),
                )
            }
            Some(y) => (interp, y.mscale),
            None => (interp, attn_factor),
        };
        out.push((t.cos() * mscale, t.sin() * mscale));
        theta_base *= theta_scale;
    }
}

/// Rotate one head vector in place with a table from `rope_cache`.
#[inline(always)]
pub fn rope(x: &mut [f32], cache: &[(f32, f32)], neox: bool) {
    let half = cache.len();
    for (i, &(c, s)) in cache.iter().enumerate() {
        let (a, b) = if neox {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let x0 = x[a];
        let x1 = x[b];
        // ggml's C++ is compiled with floating-point contraction: each output is one fused
        // multiply-add over the other product, and rounding like it keeps tokens identical.
        x[a] = x0.mul_add(c, -(x1 * s));
        x[b] = x0.mul_add(s, x1 * c);
    }
}

/// e^x the way ggml's vectorized `ggml_v_expf` computes it (a range reduction and a degree-5
/// polynomial, with the same fused operations), so SiLU rounds like llama.cpp's. Within 1.5 ulp of
/// the true value; saturates to 0 / inf outside about ±88.
#[inline(always)]
pub fn expf_ggml(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23: rounds to an integer
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),                  // ln2, low part
        (-n).mul_add(f32::from_bits(0x3f31_7200), x), // ln2, high part
    );
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)),
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0));
    if (-125.0..=126.0).contains(&n) {
        // j * 2^n, exact: j is near 1 and the result stays normal.
        return j * f32::from_bits(((n as i32 + 127) as u32) << 23);
    }
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    ((j as f64) * 2f64.powi(n as i32)) as f32
}

/// g[i] = silu(g[i]) * u[i] with llama.cpp's rounding: its vector loop covers whole groups of 16
/// (on AVX-512) with `expf_ggml`, the rest with libm's expf. Every level computes those bits.
#[inline(always)]
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    use crate::cpu::SimdLevel;
    let body = g.len() & !15;
    let (gb, ub) = (&mut g[..body], &u[..body]);
    match crate::cpu::simd_level() {
        // SAFETY: a level is only chosen when the CPU has its features.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::swiglu_512(gb, ub) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 { .. } => unsafe { x86::swiglu_avx2(gb, ub) },
        _ => swiglu_portable(gb, ub),
    }
    for (a, &b) in g[body..].iter_mut().zip(&u[body..]) {
        *a = (*a / (1.0 + (-*a).exp())) * b;
    }
}

#[inline(always)]
fn swiglu_portable(g: &mut [f32], u: &[f32]) {
    for (a, &b) in g.iter_mut().zip(u) {
        *a = (*a / (1.0 + expf_ggml(-*a))) * b;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// `expf_ggml` of sixteen values (ggml's AVX-512 `ggml_v_expf`): the same fused operations,
    /// `scalef` for j·2^n (one rounding, as the scalar form's), 0 or infinity beyond |n| > 192.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn expf_ggml_512(x: __m512) -> __m512 {
        let ps = |v: u32| _mm512_set1_ps(f32::from_bits(v));
        let r = ps(0x4b40_0000);
        let z = _mm512_fmadd_ps(x, ps(0x3fb8_aa3b), r);
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(n, ps(0x35bf_be8e), _mm512_fnmadd_ps(n, ps(0x3f31_7200), x));
        let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(ps(0x3c07_2010), b, ps(0x3d2b_9f17)),
                u,
                _mm512_fmadd_ps(ps(0x3e2a_af33), b, ps(0x3eff_fedb)),
            ),
            u,
            _mm512_fmadd_ps(ps(0x3f7f_fff6), b, _mm512_set1_ps(1.0)),
        );
        let v = _mm512_scalef_ps(j, n);
        if d == 0 {
            return v;
        }
        let le0 = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps());
        let alt = _mm512_mask_blend_ps(le0, _mm512_set1_ps(f32::INFINITY), _mm512_setzero_ps());
        _mm512_mask_blend_ps(d, v, alt)
    }

    /// `expf_ggml` of eight values: the same fused operations; j·2^n through the exponent's bits
    /// where n is in -125..=126 (exact, as the scalar form's product), 0 or infinity beyond
    /// |n| > 192, and the scalar form itself for the lanes left (NaN, and results at the ends
    /// of f32's range).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn expf_ggml_avx2(x: __m256) -> __m256 {
        let ps = |v: u32| _mm256_set1_ps(f32::from_bits(v));
        let r = ps(0x4b40_0000);
        let z = _mm256_fmadd_ps(x, ps(0x3fb8_aa3b), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(n, ps(0x35bf_be8e), _mm256_fnmadd_ps(n, ps(0x3f31_7200), x));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(ps(0x3c07_2010), b, ps(0x3d2b_9f17)),
                u,
                _mm256_fmadd_ps(ps(0x3e2a_af33), b, ps(0x3eff_fedb)),
            ),
            u,
            _mm256_fmadd_ps(ps(0x3f7f_fff6), b, _mm256_set1_ps(1.0)),
        );
        let normal = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GE_OQ>(n, _mm256_set1_ps(-125.0)),
            _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_set1_ps(126.0)),
        );
        let k = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        let v = _mm256_mul_ps(j, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(k)));
        let in_range = _mm256_movemask_ps(normal);
        if in_range == 0xff {
            return v;
        }
        let abs = _mm256_castsi256_ps(_mm256_srli_epi32::<1>(_mm256_slli_epi32::<1>(
            _mm256_castps_si256(n),
        )));
        let far = _mm256_cmp_ps::<_CMP_GT_OQ>(abs, _mm256_set1_ps(192.0));
        let below = _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps());
        let alt = _mm256_blendv_ps(_mm256_set1_ps(f32::INFINITY), _mm256_setzero_ps(), below);
        let out = _mm256_blendv_ps(alt, v, normal);
        let rest = !(in_range | _mm256_movemask_ps(far)) & 0xff;
        if rest == 0 {
            return out;
        }
        let (mut xa, mut oa) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(xa.as_mut_ptr(), x);
        _mm256_storeu_ps(oa.as_mut_ptr(), out);
        for l in 0..8 {
            if rest >> l & 1 == 1 {
                oa[l] = super::expf_ggml(xa[l]);
            }
        }
        _mm256_loadu_ps(oa.as_ptr())
    }

    /// `swiglu_portable` eight at a time (g and u hold whole groups of 8): the same divide and
    /// multiplies per value.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `u` is at least as long as `g`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu_avx2(g: &mut [f32], u: &[f32]) {
        debug_assert!(g.len().is_multiple_of(8) && u.len() >= g.len());
        let one = _mm256_set1_ps(1.0);
        let sign = _mm256_set1_ps(-0.0);
        for i in (0..g.len()).step_by(8) {
            let a = _mm256_loadu_ps(g.as_ptr().add(i));
            let e = expf_ggml_avx2(_mm256_xor_ps(a, sign));
            let s = _mm256_div_ps(a, _mm256_add_ps(one, e));
            let v = _mm256_mul_ps(s, _mm256_loadu_ps(u.as_ptr().add(i)));
            _mm256_storeu_ps(g.as_mut_ptr().add(i), v);
        }
    }

    /// `super::gelu_mul` over the first multiple of eight values of `g`; returns how many.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; `u` is at least as long as `g`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn gelu_mul_f16c(g: &mut [f32], u: &[f32], table: &[f32; 65536]) -> usize {
        let body = g.len() & !7;
        let (lo, hi) = (_mm256_set1_ps(-10.0), _mm256_set1_ps(10.0));
        let mut idx = [0u16; 8];
        let mut val = [0f32; 8];
        for i in (0..body).step_by(8) {
            let x = _mm256_loadu_ps(g.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
            _mm_storeu_si128(idx.as_mut_ptr() as *mut __m128i, h);
            for (v, &k) in val.iter_mut().zip(&idx) {
                *v = table[k as usize];
            }
            let t = _mm256_loadu_ps(val.as_ptr());
            // x <= -10: 0; x >= 10: x (NaN compares false both ways and takes the table's).
            let t = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(x, lo), t);
            let t = _mm256_blendv_ps(t, x, _mm256_cmp_ps::<_CMP_GE_OQ>(x, hi));
            let v = _mm256_mul_ps(t, _mm256_loadu_ps(u.as_ptr().add(i)));
            _mm256_storeu_ps(g.as_mut_ptr().add(i), v);
        }
        body
    }

    /// `swiglu_portable` sixteen at a time (g and u hold whole groups of 16): the same divide
    /// and multiplies per value.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `u` is at least as long as `g`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn swiglu_512(g: &mut [f32], u: &[f32]) {
        debug_assert!(g.len().is_multiple_of(16) && u.len() >= g.len());
        let one = _mm512_set1_ps(1.0);
        for i in (0..g.len()).step_by(16) {
            let a = _mm512_loadu_ps(g.as_ptr().add(i));
            let neg = _mm512_castsi512_ps(_mm512_xor_si512(
                _mm512_castps_si512(a),
                _mm512_set1_epi32(i32::MIN),
            ));
            let e = expf_ggml_512(neg);
            let s = _mm512_div_ps(a, _mm512_add_ps(one, e));
            let v = _mm512_mul_ps(s, _mm512_loadu_ps(u.as_ptr().add(i)));
            _mm512_storeu_ps(g.as_mut_ptr().add(i), v);
        }
    }
}

/// GELU, tanh approximation (as Gemma uses).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    // ggml's GCC build contracts 1 + A·x·x into fma(A·x, x, 1); so do we (one table entry of
    // 65536 differs otherwise).
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (0.044_715 * x).mul_add(x, 1.0)).tanh())
}

/// GELU as llama.cpp's CPU backend computes it: the input rounded to f16 and looked up in a table
/// of f16 results (saturating outside ±10). Matching this rounding keeps our tokens equal to its.
/// A table lookup is also faster than tanh.
pub fn gelu_f16_table(x: f32) -> f32 {
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    gelu_table()[crate::quant::f16::f32_to_f16(x) as usize]
}

/// GELU of every f16 (by its bits), rounded to f16.
fn gelu_table() -> &'static [f32; 65536] {
    use half::f16;
    use std::sync::OnceLock;
    static TABLE: OnceLock<Box<[f32; 65536]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0f32; 65536]);
        for (b, v) in t.iter_mut().enumerate() {
            *v = f16::from_f32(gelu_tanh(f16::from_bits(b as u16).to_f32())).to_f32();
        }
        t
    })
}

/// g[i] = gelu_f16_table(g[i]) · u[i] (`u` at least as long as `g`); on x86 eight at a time,
/// the rounding to f16 by F16C (round to nearest even, as `f32_to_f16`).
#[inline(always)]
pub fn gelu_mul(g: &mut [f32], u: &[f32]) {
    assert!(u.len() >= g.len());
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd_level() != crate::cpu::SimdLevel::Scalar {
        // SAFETY: every level but Scalar has AVX2 and F16C; u is long enough (checked).
        done = unsafe { x86::gelu_mul_f16c(g, u, gelu_table()) };
    }
    for (a, &b) in g[done..].iter_mut().zip(&u[done..]) {
        *a = gelu_f16_table(*a) * b;
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
pub fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The F16C path of `gelu_mul` gives `gelu_f16_table`'s bits: every f16 value, the points
    /// halfway between neighbours (ties round to even) and just off them, ±10 and beyond, the
    /// infinities, subnormals; lengths off a multiple of eight.
    #[test]
    fn gelu_mul_matches_the_table_lookup() {
        let mut xs: Vec<f32> = Vec::new();
        for b in 0..=u16::MAX {
            let v = half::f16::from_bits(b).to_f32();
            if !v.is_finite() {
                continue;
            }
            let next = half::f16::from_bits(b.wrapping_add(1)).to_f32();
            let mid = (v as f64 + next as f64) / 2.0;
            xs.extend([v, mid as f32, f32::from_bits((mid as f32).to_bits() + 1)]);
            xs.push(f32::from_bits((mid as f32).to_bits().wrapping_sub(1)));
        }
        xs.extend([
            -10.0,
            10.0,
            -10.5,
            10.5,
            9.999,
            -9.999,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        xs.extend([
            1e-30, -1e-30, 0.0, -0.0, 3e-8, 6e-8, 1e5, -1e5, 65520.0, -65520.0,
        ]);
        xs.retain(|v| !v.is_nan());
        let u: Vec<f32> = (0..xs.len())
            .map(|i| 0.5 + (i % 11) as f32 * 0.37)
            .collect();
        for cut in [xs.len(), xs.len() - 3] {
            let mut got = xs[..cut].to_vec();
            gelu_mul(&mut got, &u);
            for (i, (g, x)) in got.iter().zip(&xs).enumerate() {
                let want = gelu_f16_table(*x) * u[i];
                assert_eq!(g.to_bits(), want.to_bits(), "x = {x:e}");
            }
        }
    }

    /// Rows normed eight or four at a time keep each row's bits from `rmsnorm` alone.
    #[test]
    fn rows_normed_together_match_each_alone() {
        let len = 67;
        let w: Vec<f32> = (0..len).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        for n in 0..=21 {
            let x: Vec<f32> = (0..n * len)
                .map(|i| ((i * 7919 % 1009) as f32 - 504.0) * 1e-2 * (1 + i % 5) as f32)
                .collect();
            let mut want = x.clone();
            want.chunks_exact_mut(len)
                .for_each(|r| rmsnorm(r, &w, 1e-6));
            let mut got = x;
            rmsnorm_rows(&mut got, len, &w, 1e-6);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{n} rows"
            );
        }
    }

    #[test]
    fn ggml_expf_is_close_to_exp_and_saturates() {
        let mut x = -100.0f32;
        while x < 100.0 {
            let (got, want) = (expf_ggml(x), (x as f64).exp());
            if want < f32::MAX as f64 && want > 1e-37 {
                assert!(
                    ((got as f64) - want).abs() <= 3e-7 * want,
                    "{x}: {got} vs {want}"
                );
            }
            x += 0.0137;
        }
        assert_eq!(expf_ggml(-200.0), 0.0);
        assert_eq!(expf_ggml(200.0), f32::INFINITY);
        assert_eq!(expf_ggml(0.0), 1.0);
    }

    #[test]
    fn swiglu_at_every_level_is_the_portable_one() {
        // Values across exp's whole range (saturating both ways, subnormal results), zeros of
        // both signs, and a tail past the last group of 16.
        let n = 16 * 40 + 5;
        let g0: Vec<f32> = (0..n)
            .map(|i| match i % 50 {
                0 => 0.0,
                1 => -0.0,
                2 => 150.0,
                3 => -150.0,
                4 => 87.9,
                5 => -103.0,
                _ => ((i as f32) * 0.731).sin() * (1 + i % 13) as f32 * 9.0,
            })
            .collect();
        let u: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.123).cos()).collect();
        let mut a = g0.clone();
        swiglu(&mut a, &u);
        let mut b = g0.clone();
        let body = n & !15;
        swiglu_portable(&mut b[..body], &u[..body]);
        for (v, &w) in b[body..].iter_mut().zip(&u[body..]) {
            *v = (*v / (1.0 + (-*v).exp())) * w;
        }
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::available(crate::cpu::SimdLevel::Avx2 { vnni: false }) {
            // The AVX2 form too, whatever this CPU's level (NaN and subnormal results included).
            let mut c = g0.clone();
            c[7] = f32::NAN;
            c[8] = 100.0;
            c[9] = -88.5;
            let mut d = c.clone();
            // SAFETY: the CPU has AVX2 (and FMA, which comes with the level).
            unsafe { x86::swiglu_avx2(&mut c[..body], &u[..body]) };
            swiglu_portable(&mut d[..body], &u[..body]);
            assert_eq!(bits(&c[..body]), bits(&d[..body]));
        }
    }

    /// The AVX2 exp gives the scalar form's bits across f32's range, the saturating ends and the
    /// results just inside them, infinities and NaN.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn ggml_expf_avx2_is_the_scalar_one() {
        if !crate::cpu::available(crate::cpu::SimdLevel::Avx2 { vnni: false }) {
            return;
        }
        let mut xs: Vec<f32> = (0..40000).map(|i| -140.0 + i as f32 * 0.0071).collect();
        xs.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            88.72,
            -87.34,
        ]);
        xs.extend((0..200).map(|i| -104.0 + i as f32 * 0.1));
        while !xs.len().is_multiple_of(8) {
            xs.push(1.0);
        }
        for c in xs.chunks_exact(8) {
            // SAFETY: the CPU has AVX2; the level brings FMA.
            let got = unsafe {
                use std::arch::x86_64::*;
                let mut o = [0f32; 8];
                _mm256_storeu_ps(
                    o.as_mut_ptr(),
                    x86::expf_ggml_avx2(_mm256_loadu_ps(c.as_ptr())),
                );
                o
            };
            for (g, &x) in got.iter().zip(c) {
                assert_eq!(g.to_bits(), expf_ggml(x).to_bits(), "{x}");
            }
        }
    }
}

//! Activation quantization: each activation row is quantized once per matmul to the 8-bit block
//! format its weight type is dotted against, with ggml's scale and rounding (so products round
//! the way llama.cpp's do).

use super::f16::round_f16;

/// Q8_0 / Q8_1 activations of one row: per 32-block the f16-rounded scale, the f16 of
/// d·Σq (Q8_1's `s`), the exact sum of every four values (eight per block), and the int8 values.
#[derive(Default, Clone)]
pub struct Q8Row {
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub sum4: Vec<i32>,
    pub q: Vec<i8>,
}

/// Q8_K activations of one row: per 256-block an f32 scale, int8 values and sums of 16.
#[derive(Default, Clone)]
pub struct Q8KRow {
    pub d: Vec<f32>,
    pub q: Vec<i8>,
    pub bsums: Vec<i16>,
}

impl Q8Row {
    /// Ready for `nb` blocks written in place: no scales yet (room for nb), values and sums of
    /// four sized (the SIMD quantizers store into them).
    pub fn start(&mut self, nb: usize) {
        self.d.clear();
        self.s.clear();
        self.d.reserve_exact(nb);
        self.s.reserve_exact(nb);
        self.q.clear();
        self.q.resize(nb * 32, 0);
        self.sum4.clear();
        self.sum4.resize(nb * 8, 0);
    }

    /// An empty row with room for `cols` values: quantizing into it allocates nothing (matmuls
    /// size their rows on the calling thread, so compute threads never contend on the allocator).
    pub fn with_cols(cols: usize) -> Self {
        let mut r = Self::default();
        r.reserve_cols(cols);
        r
    }

    /// Emptied, with room for `cols` values (as `with_cols`; a reused row keeps its buffers).
    pub fn reserve_cols(&mut self, cols: usize) {
        let nb = cols / 32;
        self.d.clear();
        self.s.clear();
        self.sum4.clear();
        self.q.clear();
        self.d.reserve(nb);
        self.s.reserve(nb);
        self.sum4.reserve(nb * 8);
        self.q.reserve(cols);
    }
}

impl Q8KRow {
    /// An empty row with room for `cols` values (see `Q8Row::with_cols`).
    pub fn with_cols(cols: usize) -> Self {
        let mut r = Self::default();
        r.reserve_cols(cols);
        r
    }

    /// Emptied, with room for `cols` values (see `Q8Row::reserve_cols`).
    pub fn reserve_cols(&mut self, cols: usize) {
        let nb = cols / 256;
        self.d.clear();
        self.q.clear();
        self.bsums.clear();
        self.d.reserve(nb);
        self.q.reserve(cols);
        self.bsums.reserve(nb * 16);
    }
}

/// Quantize `x` (whole 32-blocks) into `out`, with the AVX2 loop where the CPU has it (the same
/// values: the scale, the round-to-nearest-even of v·(1/d) and the exact integer sums).
#[inline(always)]
pub fn quantize_q8(x: &[f32], out: &mut Q8Row) {
    #[cfg(target_arch = "x86_64")]
    match crate::cpu::simd_level() {
        // SAFETY: the level is only chosen when the CPU has its features.
        crate::cpu::SimdLevel::Avx512 => return unsafe { super::x86::quantize_q8_512(x, out) },
        // SAFETY: AVX2, FMA and F16C are present at this level.
        crate::cpu::SimdLevel::Avx2 { .. } => {
            return unsafe { super::x86::quantize_q8_avx2(x, out) }
        }
        _ => {}
    }
    quantize_q8_portable(x, out)
}

#[inline(always)]
pub fn quantize_q8_portable(x: &[f32], out: &mut Q8Row) {
    let nb = x.len() / 32;
    out.d.clear();
    out.s.clear();
    out.sum4.clear();
    out.q.clear();
    out.d.reserve_exact(nb);
    out.s.reserve_exact(nb);
    out.sum4.reserve_exact(nb * 8);
    out.q.reserve_exact(x.len());
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for &v in b {
            let q = (v * id).round_ties_even() as i32;
            sum += q;
            out.q.push(q as i8);
        }
        out.d.push(round_f16(d));
        out.s.push(round_f16(d * sum as f32));
        let q = &out.q[out.q.len() - 32..];
        out.sum4.extend(
            q.chunks_exact(4)
                .map(|g| g.iter().map(|&v| v as i32).sum::<i32>()),
        );
    }
    debug_assert_eq!(out.d.len(), nb);
}

/// ggml's nearest_int: round half to even through the float mantissa.
#[inline]
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// Quantize `x` (whole 256-blocks) into `out`, with the AVX2 loop where the CPU has it (the same
/// values: the scale from the first value of largest magnitude, the rounding, the block sums).
#[inline(always)]
pub fn quantize_q8k(x: &[f32], out: &mut Q8KRow) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd_level() != crate::cpu::SimdLevel::Scalar {
        // SAFETY: AVX2, FMA and F16C are present whenever the level is not Scalar.
        return unsafe { super::x86::quantize_q8k_avx2(x, out) };
    }
    quantize_q8k_portable(x, out)
}

#[inline(always)]
pub fn quantize_q8k_portable(x: &[f32], out: &mut Q8KRow) {
    out.d.clear();
    out.q.clear();
    out.bsums.clear();
    let nb = x.len() / 256;
    out.d.reserve_exact(nb);
    out.q.reserve_exact(x.len());
    out.bsums.reserve_exact(nb * 16);
    for b in x.chunks_exact(256) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in b {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            out.d.push(0.0);
            out.q.extend(std::iter::repeat_n(0i8, 256));
            out.bsums.extend(std::iter::repeat_n(0i16, 16));
            continue;
        }
        let iscale = -127.0 / max;
        let start = out.q.len();
        for &v in b {
            out.q.push(nearest_int(iscale * v).min(127) as i8);
        }
        for g in out.q[start..].chunks_exact(16) {
            out.bsums.push(g.iter().map(|&v| v as i16).sum());
        }
        out.d.push(1.0 / iscale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_for_test() -> Vec<Vec<f32>> {
        let mut rows = vec![vec![0f32; 512]];
        for seed in 0..40u32 {
            let scale = [1e-6f32, 0.01, 1.0, 37.0, 3e4][seed as usize % 5];
            let mut r: Vec<f32> = (0..512u32)
                .map(|i| {
                    let h = (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 20001;
                    (h as f32 - 10000.0) / 10000.0 * scale
                })
                .collect();
            if seed % 3 == 0 {
                // Ties: exact halves after scaling, a block's extreme repeated with both signs,
                // and an all-zero block.
                for (i, v) in r.iter_mut().enumerate().take(64) {
                    *v = (i as f32 - 31.5) * 0.5;
                }
                r[300] = 1e3;
                r[301] = -1e3;
                r[256..288].iter_mut().for_each(|v| *v = 0.0);
            }
            rows.push(r);
        }
        rows
    }

    #[test]
    fn every_level_quantizes_to_the_same_values() {
        for x in rows_for_test() {
            let (mut a, mut b) = (Q8Row::with_cols(512), Q8Row::with_cols(512));
            quantize_q8(&x, &mut a);
            quantize_q8_portable(&x, &mut b);
            let bits = |r: &Q8Row| {
                (
                    r.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    r.s.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    r.sum4.clone(),
                    r.q.clone(),
                )
            };
            assert_eq!(bits(&a), bits(&b));
            // The AVX2 kernel too where the detected level is above it.
            #[cfg(target_arch = "x86_64")]
            if crate::cpu::simd_level() == crate::cpu::SimdLevel::Avx512 {
                let mut c = Q8Row::with_cols(512);
                // SAFETY: an AVX-512 CPU has AVX2, FMA and F16C.
                unsafe { crate::quant::x86::quantize_q8_avx2(&x, &mut c) };
                assert_eq!(bits(&c), bits(&b));
            }
            let (mut a, mut b) = (Q8KRow::with_cols(512), Q8KRow::with_cols(512));
            quantize_q8k(&x, &mut a);
            quantize_q8k_portable(&x, &mut b);
            let bits = |r: &Q8KRow| {
                (
                    r.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    r.q.clone(),
                    r.bsums.clone(),
                )
            };
            assert_eq!(bits(&a), bits(&b));
        }
    }

    #[test]
    fn rows_made_with_cols_never_reallocate() {
        // Compute threads quantize into rows the caller made: a reallocation there would take the
        // allocator's lock against the caller (which frees the rows) on every matmul.
        let x: Vec<f32> = (0..1024)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut r = Q8Row::with_cols(x.len());
        let ptrs = (r.d.as_ptr(), r.s.as_ptr(), r.sum4.as_ptr(), r.q.as_ptr());
        quantize_q8(&x, &mut r);
        assert_eq!(
            ptrs,
            (r.d.as_ptr(), r.s.as_ptr(), r.sum4.as_ptr(), r.q.as_ptr())
        );
        assert_eq!((r.d.len(), r.sum4.len(), r.q.len()), (32, 256, 1024));
        let mut k = Q8KRow::with_cols(x.len());
        let ptrs = (k.d.as_ptr(), k.q.as_ptr(), k.bsums.as_ptr());
        quantize_q8k(&x, &mut k);
        assert_eq!(ptrs, (k.d.as_ptr(), k.q.as_ptr(), k.bsums.as_ptr()));
        assert_eq!((k.d.len(), k.q.len(), k.bsums.len()), (4, 1024, 64));
    }
}

//! Element-wise and row operations of the forward pass.

/// out = x / rms(x) * w. The sum of squares is accumulated in f64 and the scale computed in f32,
/// as ggml does: rounding differences here flip activation quantization downstream.
pub fn rmsnorm(x: &mut [f32], w: &[f32], eps: f32) {
    let ss: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (ss / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(w) {
        *v = (*v * scale) * g;
    }
}

/// RoPE frequency step: theta_{i+1} = theta_i * base^(-2/n_rot).
pub fn rope_theta_scale(n_rot: usize, base: f32) -> f32 {
    base.powf(-2.0 / n_rot as f32)
}

/// The (cos, sin) table of one position: theta starts at `pos * freq_scale` and is multiplied by
/// `theta_scale` per pair, the way ggml builds its cache (so the angles round the same way).
pub fn rope_cache(
    pos: f32,
    freq_scale: f32,
    theta_scale: f32,
    n_rot: usize,
    out: &mut Vec<(f32, f32)>,
) {
    out.clear();
    let mut theta = pos;
    for _ in 0..n_rot / 2 {
        let t = freq_scale * theta;
        out.push((t.cos(), t.sin()));
        theta *= theta_scale;
    }
}

/// Rotate one head vector in place with a table from `rope_cache`.
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
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation (as Gemma uses).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// GELU as llama.cpp's CPU backend computes it: the input rounded to f16 and looked up in a table
/// of f16 results (saturating outside ±10). Matching this rounding keeps our tokens equal to its.
/// A table lookup is also faster than tanh.
pub fn gelu_f16_table(x: f32) -> f32 {
    use half::f16;
    use std::sync::OnceLock;
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    let t = TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| f16::from_f32(gelu_tanh(f16::from_bits(b).to_f32())).to_f32())
            .collect()
    });
    t[crate::quant::f16::f32_to_f16(x) as usize]
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

pub fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

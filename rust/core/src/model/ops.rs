//! Element-wise and row operations of the forward pass.

/// out = x / rms(x) * w
pub fn rmsnorm(x: &mut [f32], w: &[f32], eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
}

/// Precomputed inverse frequencies for RoPE: theta_i = base^(-2i/n_rot).
pub fn rope_freqs(n_rot: usize, base: f32) -> Vec<f32> {
    (0..n_rot / 2).map(|i| base.powf(-2.0 * i as f32 / n_rot as f32)).collect()
}

/// Rotate one head vector in place at position `pos` (position already scaled by the caller).
pub fn rope(x: &mut [f32], pos: f32, freqs: &[f32], neox: bool) {
    let half = freqs.len();
    for (i, &f) in freqs.iter().enumerate() {
        let theta = pos * f;
        let (s, c) = theta.sin_cos();
        let (a, b) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
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
        (0..=u16::MAX).map(|b| f16::from_f32(gelu_tanh(f16::from_bits(b).to_f32())).to_f32()).collect()
    });
    t[f16::from_f32(x).to_bits() as usize]
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

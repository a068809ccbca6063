//! f32 → block quantizers for the types a KV cache can hold (and tests need): F32, F16, BF16,
//! Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and IQ4_NL, rounding like ggml's reference quantizers (which the
//! `gguf` package's numpy quantizers reproduce).

use super::dequant::KVALUES_IQ4NL;
use super::f16::f32_to_f16;
use super::GgmlType;
use crate::error::{Error, Result};

/// Whether `quantize_row` can produce `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | IQ4_NL
    )
}

/// Quantize `x` (whole blocks of `ty`) into `out` (exactly `ty.row_bytes(x.len())` bytes).
pub fn quantize_row(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<()> {
    use GgmlType::*;
    if !can_quantize(ty) {
        return Err(Error::invalid(format!(
            "quantizing to {ty} is not supported"
        )));
    }
    let rb = ty.row_bytes(x.len()).ok_or_else(|| {
        Error::invalid(format!(
            "{} values is not a multiple of the {ty} block size",
            x.len()
        ))
    })?;
    if out.len() != rb {
        return Err(Error::invalid(format!(
            "{} values of {ty} take {rb} bytes, {} given",
            x.len(),
            out.len()
        )));
    }
    if ty == F16 {
        super::f16::narrow_f16(x, out);
        return Ok(());
    }
    let ts = ty.type_size();
    let blocks = x
        .chunks_exact(ty.block_size())
        .zip(out.chunks_exact_mut(ts));
    match ty {
        F32 => blocks.for_each(|(x, o)| o.copy_from_slice(&x[0].to_le_bytes())),
        BF16 => blocks.for_each(|(x, o)| o.copy_from_slice(&f32_to_bf16(x[0]).to_le_bytes())),
        Q8_0 => blocks.for_each(|(x, o)| q8_0(x, o)),
        Q4_0 => blocks.for_each(|(x, o)| q4_0(x, o)),
        Q5_0 => blocks.for_each(|(x, o)| q5_0(x, o)),
        Q4_1 => blocks.for_each(|(x, o)| q_min::<15>(x, o)),
        Q5_1 => blocks.for_each(|(x, o)| q_min::<31>(x, o)),
        _ => blocks.for_each(|(x, o)| iq4_nl(x, o)),
    }
    Ok(())
}

/// bf16 by round-to-nearest-even of the f32 bits (NaNs kept quiet).
fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 64) as u16;
    }
    ((b + (0x7fff + ((b >> 16) & 1))) >> 16) as u16
}

fn put_f16(o: &mut [u8], at: usize, v: f32) {
    o[at..at + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

/// The value of largest magnitude (the first one on ties), with its sign.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn pack_nibbles(q: &[u8; 32], o: &mut [u8]) {
    for j in 0..16 {
        o[j] = q[j] | (q[j + 16] << 4);
    }
}

/// 5-bit values: the fifth bits as a little-endian u32, then the low nibbles (20 bytes).
fn pack_5bit(q: &[u8; 32], o: &mut [u8]) {
    let qh = q
        .iter()
        .enumerate()
        .fold(0u32, |h, (j, &v)| h | (((v >> 4) as u32 & 1) << j));
    o[..4].copy_from_slice(&qh.to_le_bytes());
    let mut lo = *q;
    lo.iter_mut().for_each(|v| *v &= 15);
    pack_nibbles(&lo, &mut o[4..20]);
}

fn q8_0(x: &[f32], o: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(o, 0, d);
    for (q, &v) in o[2..34].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

fn q4_0(x: &[f32], o: &mut [u8]) {
    let d = signed_absmax(x) / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(o, 0, d);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((v * id + 8.5) as i8).clamp(0, 15) as u8;
    }
    pack_nibbles(&q, &mut o[2..18]);
}

fn q5_0(x: &[f32], o: &mut [u8]) {
    let d = signed_absmax(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(o, 0, d);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((v * id + 16.5) as i8).clamp(0, 31) as u8;
    }
    pack_5bit(&q, &mut o[2..22]);
}

/// Q4_1 (MAXQ 15) and Q5_1 (MAXQ 31): scale and minimum.
fn q_min<const MAXQ: u8>(x: &[f32], o: &mut [u8]) {
    let min = x.iter().copied().fold(f32::MAX, f32::min);
    let max = x.iter().copied().fold(-f32::MAX, f32::max);
    let d = (max - min) / MAXQ as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(o, 0, d);
    put_f16(o, 2, min);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (((v - min) * id + 0.5) as u8).min(MAXQ);
    }
    if MAXQ == 15 {
        pack_nibbles(&q, &mut o[4..20]);
    } else {
        pack_5bit(&q, &mut o[4..24]);
    }
}

/// Index of the grid value nearest to `x` (the lower one on ties).
fn nearest_grid(x: f32) -> u8 {
    let v = &KVALUES_IQ4NL;
    if x <= v[0] as f32 {
        return 0;
    }
    if x >= v[15] as f32 {
        return 15;
    }
    let (mut lo, mut hi) = (0usize, 15usize);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < v[mid] as f32 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - (v[hi - 1] as f32) < (v[hi] as f32) - x {
        (hi - 1) as u8
    } else {
        hi as u8
    }
}

/// IQ4_NL the way ggml's CPU backend quantizes it: weights x², the scale refined over 15 trial
/// inverse scales around the largest value, then every value snapped to the grid.
fn iq4_nl(x: &[f32], o: &mut [u8]) {
    const NTRY: i32 = 7;
    let grid = |i: u8| KVALUES_IQ4NL[i as usize] as f32;
    let max = signed_absmax(x);
    let mut scale = 0f32;
    if max.abs() >= 1e-15 {
        let fit = |id: f32| {
            let (mut sqx, mut sq2) = (0f32, 0f32);
            for &v in x {
                let q = grid(nearest_grid(id * v));
                let w = v * v;
                sqx += w * q * v;
                sq2 += w * q * q;
            }
            (sqx, sq2)
        };
        let d0 = -max / grid(0);
        let (sqx, sq2) = fit(1.0 / d0);
        let mut d = if sq2 > 0.0 { sqx / sq2 } else { 0.0 };
        let mut best = d * sqx;
        for t in -NTRY..=NTRY {
            let (sqx, sq2) = fit((t as f32 + grid(0)) / max);
            if sq2 > 0.0 && sqx * sqx > best * sq2 {
                d = sqx / sq2;
                best = d * sqx;
            }
        }
        scale = d;
    }
    put_f16(o, 0, scale);
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = nearest_grid(id * v);
    }
    pack_nibbles(&q, &mut o[2..18]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize;

    #[test]
    fn round_trips_within_the_type_step() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for (ty, tol) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 0.01),
            (GgmlType::BF16, 0.05),
            (GgmlType::Q8_0, 0.03),
            // At most one step (max/16, max/8) for the symmetric types: the far side of the largest
            // value clamps at 15 (or 7) steps; half a step for the min/scale types.
            (GgmlType::Q5_0, 0.45),
            (GgmlType::Q5_1, 0.25),
            (GgmlType::Q4_0, 0.9),
            (GgmlType::Q4_1, 0.5),
            (GgmlType::IQ4_NL, 0.9),
        ] {
            let mut buf = vec![0u8; ty.row_bytes(x.len()).unwrap()];
            quantize_row(ty, &x, &mut buf).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize(ty, &buf, &mut y).unwrap();
            let err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err <= tol, "{ty}: max error {err}");
        }
        let mut buf = vec![0u8; 18];
        assert!(quantize_row(GgmlType::Q4_0, &x[..31], &mut buf).is_err());
        assert!(quantize_row(GgmlType::Q4_0, &x[..32], &mut buf[..17]).is_err());
        assert!(quantize_row(GgmlType::Q4_K, &x, &mut buf).is_err());
    }
}

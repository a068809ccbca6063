//! Scalar dequantization to f32 for the types whose kernels exist so far.
//! The kernels issue replaces this with per-type files and SIMD.

use super::GgmlType;
use crate::error::{Error, Result};
use half::{bf16, f16};

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantize `src` (whole blocks of `ty`) into `dst`, whose length is the element count.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let expected = ty
        .row_bytes(dst.len())
        .ok_or_else(|| Error::invalid(format!("{} elements is not a multiple of the {ty} block size", dst.len())))?;
    if src.len() != expected {
        return Err(Error::invalid(format!("{ty}: {} bytes given, {expected} expected", src.len())));
    }
    let bs = ty.block_size();
    let ts = ty.type_size();
    let blocks = src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, d)| d[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, d)| d[0] = f16_at(b, 0)),
        GgmlType::BF16 => blocks.for_each(|(b, d)| d[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::Q8_0 => blocks.for_each(|(b, d)| {
            let s = f16_at(b, 0);
            for (o, &q) in d.iter_mut().zip(&b[2..34]) {
                *o = s * (q as i8) as f32;
            }
        }),
        GgmlType::Q4_0 => blocks.for_each(|(b, d)| {
            let s = f16_at(b, 0);
            for j in 0..16 {
                d[j] = s * ((b[2 + j] & 0x0f) as i32 - 8) as f32;
                d[j + 16] = s * ((b[2 + j] >> 4) as i32 - 8) as f32;
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(b, d)| {
            let s = f16_at(b, 0);
            let m = f16_at(b, 2);
            for j in 0..16 {
                d[j] = s * (b[4 + j] & 0x0f) as f32 + m;
                d[j + 16] = s * (b[4 + j] >> 4) as f32 + m;
            }
        }),
        _ => return Err(Error::invalid(format!("dequantizing {ty} is not supported yet"))),
    }
    Ok(())
}

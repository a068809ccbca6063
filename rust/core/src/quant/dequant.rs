//! Dequantization of every supported block type to f32, in the exact arithmetic of ggml's
//! reference (and the gguf package's numpy) dequantizers, so results compare bit for bit.

use super::GgmlType;
use crate::error::{Error, Result};
use half::bf16;

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    super::f16::f16_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

/// The 4-bit non-linear grid of IQ4_NL / IQ4_XS.
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Scale and min of sub-block `j` of a Q4_K / Q5_K block (6-bit packed in 12 bytes).
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Dequantize `src` (whole blocks of `ty`) into `dst`, whose length is the element count.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let expected = ty.row_bytes(dst.len()).ok_or_else(|| {
        Error::invalid(format!(
            "{} elements is not a multiple of the {ty} block size",
            dst.len()
        ))
    })?;
    if src.len() != expected {
        return Err(Error::invalid(format!(
            "{ty}: {} bytes given, {expected} expected",
            src.len()
        )));
    }
    let bs = ty.block_size();
    let ts = ty.type_size();
    let blocks = src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs));
    use GgmlType::*;
    match ty {
        F32 => blocks.for_each(|(b, d)| d[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        F16 => blocks.for_each(|(b, d)| d[0] = f16_at(b, 0)),
        BF16 => blocks.for_each(|(b, d)| d[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        Q8_0 => blocks.for_each(|(b, d)| {
            let s = f16_at(b, 0);
            for (o, &q) in d.iter_mut().zip(&b[2..34]) {
                *o = (q as i8) as f32 * s;
            }
        }),
        Q8_1 => blocks.for_each(|(b, d)| {
            let s = f16_at(b, 0);
            for (o, &q) in d.iter_mut().zip(&b[4..36]) {
                *o = (q as i8) as f32 * s;
            }
        }),
        Q4_0 => blocks.for_each(|(b, d)| {
            let s = f16_at(b, 0);
            for j in 0..16 {
                d[j] = ((b[2 + j] & 0x0f) as i32 - 8) as f32 * s;
                d[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * s;
            }
        }),
        Q4_1 => blocks.for_each(|(b, d)| {
            let s = f16_at(b, 0);
            let m = f16_at(b, 2);
            for j in 0..16 {
                d[j] = (b[4 + j] & 0x0f) as f32 * s + m;
                d[j + 16] = (b[4 + j] >> 4) as f32 * s + m;
            }
        }),
        Q5_0 | Q5_1 => blocks.for_each(|(b, d)| {
            let s = f16_at(b, 0);
            let (m, off) = if ty == Q5_1 {
                (f16_at(b, 2), 4)
            } else {
                (0.0, 2)
            };
            let qh = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
            let qs = &b[off + 4..off + 20];
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                let x0 = ((qs[j] as u32 & 0x0f) | h0) as i32;
                let x1 = ((qs[j] as u32 >> 4) | h1) as i32;
                if ty == Q5_0 {
                    d[j] = (x0 - 16) as f32 * s;
                    d[j + 16] = (x1 - 16) as f32 * s;
                } else {
                    d[j] = x0 as f32 * s + m;
                    d[j + 16] = x1 as f32 * s + m;
                }
            }
        }),
        IQ4_NL => blocks.for_each(|(b, d)| {
            let s = f16_at(b, 0);
            for j in 0..16 {
                d[j] = s * KVALUES_IQ4NL[(b[2 + j] & 0xf) as usize] as f32;
                d[j + 16] = s * KVALUES_IQ4NL[(b[2 + j] >> 4) as usize] as f32;
            }
        }),
        Q8_K => blocks.for_each(|(b, d)| {
            let s = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            for (o, &q) in d.iter_mut().zip(&b[4..260]) {
                *o = s * (q as i8) as f32;
            }
        }),
        Q2_K => blocks.for_each(|(b, y)| {
            let (scales, qs) = (&b[0..16], &b[16..80]);
            let d = f16_at(b, 80);
            let min = f16_at(b, 82);
            let mut is = 0;
            let mut o = 0;
            for n in 0..2 {
                let q = &qs[n * 32..n * 32 + 32];
                for shift in [0, 2, 4, 6] {
                    for half in 0..2 {
                        let sc = scales[is];
                        is += 1;
                        let dl = d * (sc & 0xF) as f32;
                        let ml = min * (sc >> 4) as f32;
                        for l in 0..16 {
                            y[o] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                            o += 1;
                        }
                    }
                }
            }
        }),
        Q3_K => blocks.for_each(|(b, y)| {
            let (hm, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
            let d_all = f16_at(b, 108);
            let mut aux = [0u32; 4];
            for (i, a) in aux.iter_mut().enumerate().take(3) {
                *a = u32::from_le_bytes([sc[4 * i], sc[4 * i + 1], sc[4 * i + 2], sc[4 * i + 3]]);
            }
            let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
            let tmp = aux[2];
            aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
            aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
            aux[0] = (aux[0] & k2) | ((tmp & k1) << 4);
            aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
            let scales: Vec<i8> = aux
                .iter()
                .flat_map(|a| a.to_le_bytes())
                .map(|x| x as i8)
                .collect();
            let mut m = 1u8;
            let (mut is, mut o) = (0, 0);
            for n in 0..2 {
                let q = &qs[n * 32..n * 32 + 32];
                for shift in [0, 2, 4, 6] {
                    for half in 0..2 {
                        let dl = d_all * (scales[is] as i32 - 32) as f32;
                        is += 1;
                        for l in 0..16 {
                            let k = l + 16 * half;
                            let v =
                                ((q[k] >> shift) & 3) as i32 - if hm[k] & m != 0 { 0 } else { 4 };
                            y[o] = dl * v as f32;
                            o += 1;
                        }
                    }
                    m <<= 1;
                }
            }
        }),
        Q4_K | Q5_K => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            let min = f16_at(b, 2);
            let scales = &b[4..16];
            let (qh, ql) = if ty == Q5_K {
                (&b[16..48], &b[48..176])
            } else {
                (&b[0..0], &b[16..144])
            };
            let mut o = 0;
            for (n, j) in (0..256).step_by(64).enumerate() {
                let _ = j;
                let (sc1, m1) = scale_min_k4(2 * n, scales);
                let (sc2, m2) = scale_min_k4(2 * n + 1, scales);
                let (d1, mm1) = (d * sc1 as f32, min * m1 as f32);
                let (d2, mm2) = (d * sc2 as f32, min * m2 as f32);
                let q = &ql[n * 32..n * 32 + 32];
                let (u1, u2) = (1u8 << (2 * n), 2u8 << (2 * n));
                for l in 0..32 {
                    let h = if ty == Q5_K && qh[l] & u1 != 0 { 16 } else { 0 };
                    y[o + l] = d1 * ((q[l] & 0xF) + h) as f32 - mm1;
                }
                for l in 0..32 {
                    let h = if ty == Q5_K && qh[l] & u2 != 0 { 16 } else { 0 };
                    y[o + 32 + l] = d2 * ((q[l] >> 4) + h) as f32 - mm2;
                }
                o += 64;
            }
        }),
        Q6_K => blocks.for_each(|(b, y)| {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for n in 0..2 {
                let (ql, qh, sc) = (&ql[n * 64..], &qh[n * 32..], &sc[n * 8..]);
                let yo = &mut y[n * 128..n * 128 + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    yo[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    yo[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    yo[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    yo[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }),
        IQ4_XS => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            let scales_h = u16::from_le_bytes([b[2], b[3]]) as i32;
            let scales_l = &b[4..8];
            let qs = &b[8..136];
            for ib in 0..8 {
                let ls = ((scales_l[ib / 2] as i32 >> (4 * (ib % 2))) & 0xf)
                    | (((scales_h >> (2 * ib)) & 3) << 4);
                let dl = d * (ls - 32) as f32;
                let q = &qs[ib * 16..ib * 16 + 16];
                for j in 0..16 {
                    y[ib * 32 + j] = dl * KVALUES_IQ4NL[(q[j] & 0xf) as usize] as f32;
                    y[ib * 32 + j + 16] = dl * KVALUES_IQ4NL[(q[j] >> 4) as usize] as f32;
                }
            }
        }),
        _ => {
            return Err(Error::invalid(format!(
                "dequantizing {ty} is not supported"
            )))
        }
    }
    Ok(())
}

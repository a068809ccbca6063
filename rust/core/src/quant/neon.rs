//! NEON (aarch64) version of the legacy 32-block dot: the same eight lane sums of four products
//! as `dot::dot_blocks`, each fused-multiply-added into its own f32 lane per block and folded the
//! way ggml's AVX2 `hsum_float_8` folds them, so results equal the portable code's bit for bit.

use std::arch::aarch64::*;

use super::dot::Block;
use super::q8::Q8Row;

/// The eight sums of four products of one block (values 4j..4j+4 in lane j), as f32.
#[inline(always)]
unsafe fn lanes(w: &[i8; 32], x: &[i8]) -> (float32x4_t, float32x4_t) {
    assert!(x.len() >= 32);
    let (w0, w1) = (vld1q_s8(w.as_ptr()), vld1q_s8(w.as_ptr().add(16)));
    let (x0, x1) = (vld1q_s8(x.as_ptr()), vld1q_s8(x.as_ptr().add(16)));
    // i8·i8 fits i16; pairwise widening adds give sums of two, then of four.
    let s0 = vpaddlq_s16(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
    let s1 = vpaddlq_s16(vmull_high_s8(w0, x0));
    let s2 = vpaddlq_s16(vmull_s8(vget_low_s8(w1), vget_low_s8(x1)));
    let s3 = vpaddlq_s16(vmull_high_s8(w1, x1));
    (
        vcvtq_f32_s32(vpaddq_s32(s0, s1)),
        vcvtq_f32_s32(vpaddq_s32(s2, s3)),
    )
}

/// `dot::dot_blocks` with NEON.
pub fn dot_blocks(blocks: impl Iterator<Item = Block>, x: &Q8Row) -> f32 {
    // SAFETY: NEON is part of every aarch64 target; `lanes` checks its slice lengths.
    unsafe {
        let (mut a0, mut a1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
        let mut summs = 0f32;
        for (b, blk) in blocks.enumerate() {
            if let Some(m) = blk.m {
                summs += m * x.s[b];
            }
            let d = vdupq_n_f32(blk.d * x.d[b]);
            let (l0, l1) = lanes(&blk.q, &x.q[b * 32..b * 32 + 32]);
            a0 = vfmaq_f32(a0, d, l0);
            a1 = vfmaq_f32(a1, d, l1);
        }
        // Lane i of the high half plus lane i of the low half, then (0 + 2) + (1 + 3).
        let t = vaddq_f32(a1, a0);
        let u = vadd_f32(vget_low_f32(t), vget_high_f32(t));
        vget_lane_f32::<0>(u) + vget_lane_f32::<1>(u) + summs
    }
}

/// `kquant::kblock_sums` with NEON: the same exact integers (every unpacked K-quant value fits a
/// signed byte: the unsigned types' are below 64).
#[inline(always)]
pub fn kblock_sums(q: &[u8], sc: &[i16], mn: &[i16], xq: &[i8], bsums: &[i16]) -> (i32, i32) {
    assert!(
        q.len() >= 256 && xq.len() >= 256 && sc.len() >= 16 && mn.len() >= 16 && bsums.len() >= 16
    );
    let (mut sumi, mut summ) = (0i32, 0i32);
    for g in 0..16 {
        // SAFETY: NEON is part of every aarch64 target; 16g + 16 ≤ 256 (asserted above).
        let s = unsafe {
            let w = vreinterpretq_s8_u8(vld1q_u8(q.as_ptr().add(16 * g)));
            let y = vld1q_s8(xq.as_ptr().add(16 * g));
            let lo = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(y)));
            let hi = vpaddlq_s16(vmull_high_s8(w, y));
            vaddvq_s32(vaddq_s32(lo, hi))
        };
        sumi += sc[g] as i32 * s;
        summ += mn[g] as i32 * bsums[g] as i32;
    }
    (sumi, summ)
}

#[cfg(test)]
mod tests {
    use super::super::dot::{self, unpack_block};
    use super::super::q8::quantize_q8;
    use super::super::testing::{legacy_blocks, Rng, LEGACY};

    /// Random blocks of every legacy type give the portable code's exact bits.
    #[test]
    fn neon_dot_equals_portable() {
        let mut rng = Rng::new(0x9e3779b97f4a7c15);
        for ty in LEGACY {
            let nb = 9;
            let raw = legacy_blocks(ty, nb, &mut rng);
            let x: Vec<f32> = (0..nb * 32).map(|_| rng.unit()).collect();
            let mut q = Default::default();
            quantize_q8(&x, &mut q);
            let blocks = || {
                raw.chunks_exact(ty.type_size())
                    .map(|b| unpack_block(ty, b))
            };
            let (a, b) = (
                super::dot_blocks(blocks(), &q),
                dot::dot_blocks(blocks(), &q),
            );
            assert_eq!(a.to_bits(), b.to_bits(), "{ty}: {a} vs {b}");
        }
    }

    /// The K-quant integer sums equal the portable loop's (unsigned values below 64 and signed
    /// IQ4_XS values).
    #[test]
    fn neon_kblock_sums_equal_portable() {
        let mut rng = Rng::new(0x853c49e6748fea9b);
        let mut next = || rng.next_u64();
        for signed in [false, true] {
            let q: Vec<u8> = (0..256)
                .map(|_| {
                    if signed {
                        next() as u8
                    } else {
                        (next() % 64) as u8
                    }
                })
                .collect();
            let xq: Vec<i8> = (0..256).map(|_| (next() % 255) as i8).collect();
            let sc: Vec<i16> = (0..16).map(|_| (next() % 128) as i16 - 64).collect();
            let mn: Vec<i16> = (0..16).map(|_| (next() % 64) as i16).collect();
            let bs: Vec<i16> = xq
                .chunks(16)
                .map(|g| g.iter().map(|&v| v as i16).sum())
                .collect();
            assert_eq!(
                super::kblock_sums(&q, &sc, &mn, &xq, &bs),
                super::super::kquant::kblock_sums_portable(signed, &q, &sc, &mn, &xq, &bs)
            );
        }
    }
}

//! Dot products of one quantized weight row with one quantized activation row.
//!
//! The legacy 32-blocks accumulate like ggml's AVX2 kernels: each block's integer products summed
//! in eight lanes of four, scaled and fused-multiply-added into eight f32 lane accumulators, summed
//! pairwise at the end. Keeping that order makes our results round like llama.cpp's. The loops are
//! plain Rust that LLVM vectorizes; `super::simd` compiles them once per instruction set and picks
//! one at run time.

use super::dequant::{f16_at, scale_min_k4, KVALUES_IQ4NL};
use super::q8::{Q8KRow, Q8Row};

#[inline(always)]
fn hsum8(a: [f32; 8]) -> f32 {
    let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let r = [r[0] + r[2], r[1] + r[3]];
    r[0] + r[1]
}

#[inline(always)]
fn lanes(w: &[i8; 32], x: &[i8]) -> [f32; 8] {
    let mut out = [0f32; 8];
    for (j, o) in out.iter_mut().enumerate() {
        let mut s = 0i32;
        for k in 0..4 {
            s += w[4 * j + k] as i32 * x[4 * j + k] as i32;
        }
        *o = s as f32;
    }
    out
}

#[inline(always)]
fn fma8(acc: &mut [f32; 8], d: f32, p: [f32; 8]) {
    for (a, v) in acc.iter_mut().zip(p) {
        *a = d.mul_add(v, *a);
    }
}

#[inline(always)]
pub fn dot_q8_0(w: &[u8], x: &Q8Row) -> f32 {
    let mut acc = [0f32; 8];
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let mut q = [0i8; 32];
        for (d, &s) in q.iter_mut().zip(&blk[2..34]) {
            *d = s as i8;
        }
        fma8(
            &mut acc,
            f16_at(blk, 0) * x.d[b],
            lanes(&q, &x.q[b * 32..b * 32 + 32]),
        );
    }
    hsum8(acc)
}

#[inline(always)]
pub fn dot_q4_0(w: &[u8], x: &Q8Row) -> f32 {
    let mut acc = [0f32; 8];
    for (b, blk) in w.chunks_exact(18).enumerate() {
        let mut q = [0i8; 32];
        for j in 0..16 {
            q[j] = (blk[2 + j] & 15) as i8 - 8;
            q[j + 16] = (blk[2 + j] >> 4) as i8 - 8;
        }
        fma8(
            &mut acc,
            f16_at(blk, 0) * x.d[b],
            lanes(&q, &x.q[b * 32..b * 32 + 32]),
        );
    }
    hsum8(acc)
}

#[inline(always)]
pub fn dot_iq4_nl(w: &[u8], x: &Q8Row) -> f32 {
    let mut acc = [0f32; 8];
    for (b, blk) in w.chunks_exact(18).enumerate() {
        let mut q = [0i8; 32];
        for j in 0..16 {
            q[j] = KVALUES_IQ4NL[(blk[2 + j] & 15) as usize];
            q[j + 16] = KVALUES_IQ4NL[(blk[2 + j] >> 4) as usize];
        }
        fma8(
            &mut acc,
            f16_at(blk, 0) * x.d[b],
            lanes(&q, &x.q[b * 32..b * 32 + 32]),
        );
    }
    hsum8(acc)
}

#[inline(always)]
pub fn dot_q5_0(w: &[u8], x: &Q8Row) -> f32 {
    let mut acc = [0f32; 8];
    for (b, blk) in w.chunks_exact(22).enumerate() {
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        let mut q = [0i8; 32];
        for j in 0..16 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = ((blk[6 + j] & 15) | h0) as i8 - 16;
            q[j + 16] = ((blk[6 + j] >> 4) | h1) as i8 - 16;
        }
        fma8(
            &mut acc,
            f16_at(blk, 0) * x.d[b],
            lanes(&q, &x.q[b * 32..b * 32 + 32]),
        );
    }
    hsum8(acc)
}

#[inline(always)]
pub fn dot_q4_1(w: &[u8], x: &Q8Row) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (b, blk) in w.chunks_exact(20).enumerate() {
        summs += f16_at(blk, 2) * x.s[b];
        let mut q = [0i8; 32];
        for j in 0..16 {
            q[j] = (blk[4 + j] & 15) as i8;
            q[j + 16] = (blk[4 + j] >> 4) as i8;
        }
        fma8(
            &mut acc,
            f16_at(blk, 0) * x.d[b],
            lanes(&q, &x.q[b * 32..b * 32 + 32]),
        );
    }
    hsum8(acc) + summs
}

#[inline(always)]
pub fn dot_q5_1(w: &[u8], x: &Q8Row) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (b, blk) in w.chunks_exact(24).enumerate() {
        summs += f16_at(blk, 2) * x.s[b];
        let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
        let mut q = [0i8; 32];
        for j in 0..16 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = ((blk[8 + j] & 15) | h0) as i8;
            q[j + 16] = ((blk[8 + j] >> 4) | h1) as i8;
        }
        fma8(
            &mut acc,
            f16_at(blk, 0) * x.d[b],
            lanes(&q, &x.q[b * 32..b * 32 + 32]),
        );
    }
    hsum8(acc) + summs
}

#[inline(always)]
pub fn dot_q4_k(w: &[u8], x: &Q8KRow) -> f32 {
    let mut sumf = 0f32;
    for (b, blk) in w.chunks_exact(144).enumerate() {
        let d = f16_at(blk, 0) * x.d[b];
        let dmin = f16_at(blk, 2) * x.d[b];
        let scales = &blk[4..16];
        let qs = &blk[16..144];
        let xq = &x.q[b * 256..b * 256 + 256];
        let bs = &x.bsums[b * 16..b * 16 + 16];
        let (mut sumi, mut summ) = (0i32, 0i32);
        for n in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * n, scales);
            let (sc2, m2) = scale_min_k4(2 * n + 1, scales);
            let q = &qs[n * 32..n * 32 + 32];
            let (mut s1, mut s2) = (0i32, 0i32);
            for l in 0..32 {
                s1 += (q[l] & 15) as i32 * xq[n * 64 + l] as i32;
                s2 += (q[l] >> 4) as i32 * xq[n * 64 + 32 + l] as i32;
            }
            sumi += sc1 as i32 * s1 + sc2 as i32 * s2;
            summ += m1 as i32 * (bs[4 * n] as i32 + bs[4 * n + 1] as i32)
                + m2 as i32 * (bs[4 * n + 2] as i32 + bs[4 * n + 3] as i32);
        }
        sumf += d * sumi as f32 - dmin * summ as f32;
    }
    sumf
}

#[inline(always)]
pub fn dot_q6_k(w: &[u8], x: &Q8KRow) -> f32 {
    let mut sumf = 0f32;
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let (ql, qh, sc) = (&blk[0..128], &blk[128..192], &blk[192..208]);
        let d = f16_at(blk, 208) * x.d[b];
        let xq = &x.q[b * 256..b * 256 + 256];
        let mut sumi = 0i32;
        for n in 0..2 {
            let (ql, qh, sc, xq) = (&ql[n * 64..], &qh[n * 32..], &sc[n * 8..], &xq[n * 128..]);
            let mut g = [0i32; 8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                g[is] += q1 * xq[l] as i32;
                g[is + 2] += q2 * xq[l + 32] as i32;
                g[is + 4] += q3 * xq[l + 64] as i32;
                g[is + 6] += q4 * xq[l + 96] as i32;
            }
            for (k, gs) in g.iter().enumerate() {
                sumi += (sc[k] as i8) as i32 * gs;
            }
        }
        sumf += d * sumi as f32;
    }
    sumf
}

/// f32 weights (or anything dequantized to f32) with f32 activations.
#[inline(always)]
pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut cw = w.chunks_exact(8);
    let mut cx = x.chunks_exact(8);
    for (a, b) in (&mut cw).zip(&mut cx) {
        for k in 0..8 {
            acc[k] = a[k].mul_add(b[k], acc[k]);
        }
    }
    let mut s = hsum8(acc);
    for (a, b) in cw.remainder().iter().zip(cx.remainder()) {
        s += a * b;
    }
    s
}

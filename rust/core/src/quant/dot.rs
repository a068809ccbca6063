//! Dot products of one quantized weight row with one quantized activation row.
//!
//! The legacy 32-blocks accumulate like ggml's AVX2 kernels: each block's integer products summed
//! in eight lanes of four, scaled and fused-multiply-added into eight f32 lane accumulators, summed
//! pairwise at the end. Keeping that order makes our results round like llama.cpp's. The loops are
//! plain Rust that LLVM vectorizes; `tensor` compiles them once per instruction set and picks
//! one at run time.

#[cfg(test)]
use super::dequant::scale_min_k4;
use super::dequant::{f16_at, KVALUES_IQ4NL};
#[cfg(test)]
use super::q8::Q8KRow;
use super::q8::Q8Row;
use super::GgmlType;

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

/// One 32-value block of a legacy type, unpacked: int8 values, scale, and min (Q4_1/Q5_1).
#[derive(Clone, Copy)]
pub struct Block {
    pub q: [i8; 32],
    pub d: f32,
    pub m: Option<f32>,
}

/// Whether `ty` is a 32-block type handled by `unpack_block`.
pub fn is_legacy(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | IQ4_NL)
}

#[inline(always)]
fn q5_high_bits(blk: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]])
}

/// Unpack one block (`blk` is exactly one block of `ty`, a legacy type).
#[inline(always)]
pub fn unpack_block(ty: GgmlType, blk: &[u8]) -> Block {
    use GgmlType::*;
    let mut q = [0i8; 32];
    let (d, m) = match ty {
        Q8_0 => {
            for (o, &v) in q.iter_mut().zip(&blk[2..34]) {
                *o = v as i8;
            }
            (f16_at(blk, 0), None)
        }
        Q4_0 | Q4_1 | IQ4_NL => {
            let qs = if ty == Q4_1 { &blk[4..20] } else { &blk[2..18] };
            for j in 0..16 {
                let (lo, hi) = (qs[j] & 15, qs[j] >> 4);
                (q[j], q[j + 16]) = match ty {
                    Q4_0 => (lo as i8 - 8, hi as i8 - 8),
                    Q4_1 => (lo as i8, hi as i8),
                    _ => (KVALUES_IQ4NL[lo as usize], KVALUES_IQ4NL[hi as usize]),
                };
            }
            (f16_at(blk, 0), (ty == Q4_1).then(|| f16_at(blk, 2)))
        }
        _ => {
            // Q5_0 / Q5_1: a fifth bit per value from qh.
            let off = if ty == Q5_1 { 4 } else { 2 };
            let qh = q5_high_bits(blk, off);
            let qs = &blk[off + 4..off + 20];
            let bias = if ty == Q5_0 { 16 } else { 0 };
            for j in 0..16 {
                let h0 = (((qh >> j) << 4) & 0x10) as u8;
                let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                q[j] = ((qs[j] & 15) | h0) as i8 - bias;
                q[j + 16] = ((qs[j] >> 4) | h1) as i8 - bias;
            }
            (f16_at(blk, 0), (ty == Q5_1).then(|| f16_at(blk, 2)))
        }
    };
    Block { q, d, m }
}

/// Σ over blocks in ggml's order: lane sums fused into eight accumulators, the mins' term
/// (weight min × activation block sum) added separately, pairwise sum at the end.
#[inline(always)]
pub fn dot_blocks(blocks: impl Iterator<Item = Block>, x: &Q8Row) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (b, blk) in blocks.enumerate() {
        if let Some(m) = blk.m {
            summs += m * x.s[b];
        }
        fma8(
            &mut acc,
            blk.d * x.d[b],
            lanes(&blk.q, &x.q[b * 32..b * 32 + 32]),
        );
    }
    hsum8(acc) + summs
}

/// A legacy-type weight row against Q8_0/Q8_1 activations.
#[inline(always)]
pub fn dot_legacy(ty: GgmlType, w: &[u8], x: &Q8Row) -> f32 {
    dot_blocks(
        w.chunks_exact(ty.type_size()).map(|b| unpack_block(ty, b)),
        x,
    )
}

/// The first Q4_K dot, in llama.cpp's x86 order (the scales' and the mins' terms summed apart),
/// kept as the tests' oracle for `kquant`'s bits.
#[cfg(test)]
pub fn dot_q4_k(w: &[u8], x: &Q8KRow) -> f32 {
    let (mut acc, mut accm) = (0f32, 0f32);
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
        acc = (sumi as f32).mul_add(d, acc);
        accm = (summ as f32).mul_add(dmin, accm);
    }
    acc - accm
}

/// The Q6_K dot in the lane order of ggml's AVX2 kernel, from the raw block (the tests' oracle
/// for `kquant`'s bits): lane k sums values 4k..4k+4 of every 32-value group (six-bit values
/// 0..63 times their 16-value group's scale) less 32·(bsums[2k]·sc[2k] + bsums[2k+1]·sc[2k+1]);
/// each lane is fused into its own accumulator per super-block, then folded pairwise.
#[cfg(test)]
pub fn dot_q6_k(w: &[u8], x: &Q8KRow) -> f32 {
    let mut acc = [0f32; 8];
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let (ql, qh, sc) = (&blk[0..128], &blk[128..192], &blk[192..208]);
        let d = x.d[b] * f16_at(blk, 208);
        let xq = &x.q[b * 256..b * 256 + 256];
        let bs = &x.bsums[b * 16..b * 16 + 16];
        let mut u = [0i32; 256];
        for n in 0..2 {
            for l in 0..32 {
                let (a, c, h) = (ql[64 * n + l], ql[64 * n + 32 + l], qh[32 * n + l]);
                u[128 * n + l] = ((a & 0xF) | ((h & 3) << 4)) as i32;
                u[128 * n + 32 + l] = ((c & 0xF) | (((h >> 2) & 3) << 4)) as i32;
                u[128 * n + 64 + l] = ((a >> 4) | (((h >> 4) & 3) << 4)) as i32;
                u[128 * n + 96 + l] = ((c >> 4) | (((h >> 6) & 3) << 4)) as i32;
            }
        }
        let scale = |g: usize| sc[g] as i8 as i32;
        for (k, a) in acc.iter_mut().enumerate() {
            let mut lane = 0i32;
            for e in (0..256).filter(|e| (e % 32) / 4 == k) {
                lane += scale(e / 16) * u[e] * xq[e] as i32;
            }
            lane -=
                32 * (bs[2 * k] as i32 * scale(2 * k) + bs[2 * k + 1] as i32 * scale(2 * k + 1));
            *a = d.mul_add(lane as f32, *a);
        }
    }
    let t = [
        acc[4] + acc[0],
        acc[5] + acc[1],
        acc[6] + acc[2],
        acc[7] + acc[3],
    ];
    (t[0] + t[2]) + (t[1] + t[3])
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

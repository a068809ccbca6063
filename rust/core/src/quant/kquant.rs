//! K-quant weight rows (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS) against Q8_K activations.
//!
//! Every type is first put in one common form per 256-value super-block: 256 small weights
//! (unsigned, except IQ4_XS whose grid values are signed), an integer scale per 16 values and an
//! integer "min" per 16 values that multiplies the activations' 16-value sums (`bsums`). Then
//!
//!   sumi = Σ_g sc[g] · Σ_{i in g} q[i]·x[i]        summ = Σ_g mn[g] · bsums[g]
//!
//! are exact integers, and the super-block adds, in f32 and in block order,
//!
//!   `Sub`  types (Q2_K, Q4_K, Q5_K): (d·xd)·sumi − (dmin·xd)·summ
//!   `Fold` types (Q3_K, Q6_K, IQ4_XS): (d·xd)·(sumi − summ)      (mn = offset·sc, or 0)
//!
//! which is how ggml's reference dots combine them. Because the integer sums are exact, any SIMD
//! code that forms them in any order and then does these same f32 operations in the same order
//! returns bit-identical results; `x86.rs` does exactly that.

use super::dequant::{f16_at, KVALUES_IQ4NL};
use super::q8::Q8KRow;
use super::GgmlType;

/// Whether `ty` is a K-quant dotted against Q8_K activations here.
pub fn is_kquant(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_XS)
}

/// Whether the super-block's minimum term is folded into the integer sum (see the module doc).
pub fn folds_min(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q3_K | Q6_K | IQ4_XS)
}

/// Whether the unpacked weights are signed int8 (else unsigned bytes).
pub fn signed_weights(ty: GgmlType) -> bool {
    ty == GgmlType::IQ4_XS
}

/// The 8 six-bit scales then the 8 six-bit mins of a Q4_K / Q5_K block's 12 packed bytes.
#[inline(always)]
pub fn k4_scales_mins(s: &[u8]) -> [u8; 16] {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let a = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let b = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let c = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let sc_lo = a & K1;
    let sc_hi = (c & K2) | (((a >> 6) & K3) << 4);
    let mn_lo = b & K1;
    let mn_hi = ((c >> 4) & K2) | (((b >> 6) & K3) << 4);
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&sc_lo.to_le_bytes());
    out[4..8].copy_from_slice(&sc_hi.to_le_bytes());
    out[8..12].copy_from_slice(&mn_lo.to_le_bytes());
    out[12..16].copy_from_slice(&mn_hi.to_le_bytes());
    out
}

/// The 16 signed six-bit scales (already minus 32) of a Q3_K block's 12 packed bytes.
#[inline(always)]
pub fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let t = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let aux = [
        (a0 & k2) | ((t & k1) << 4),
        (a1 & k2) | (((t >> 2) & k1) << 4),
        ((a0 >> 4) & k2) | (((t >> 4) & k1) << 4),
        ((a1 >> 4) & k2) | (((t >> 6) & k1) << 4),
    ];
    let mut out = [0i8; 16];
    for (i, a) in aux.iter().enumerate() {
        for (j, v) in a.to_le_bytes().iter().enumerate() {
            out[4 * i + j] = *v as i8 - 32;
        }
    }
    out
}

/// Unpack one super-block of `ty` (exactly `ty.type_size()` bytes) into 256 weights `q` (as
/// bytes: unsigned, or int8 for IQ4_XS), 16 scales and 16 mins; returns (d, dmin).
#[inline(always)]
pub fn unpack_kblock(
    ty: GgmlType,
    blk: &[u8],
    q: &mut [u8; 256],
    sc: &mut [i16; 16],
    mn: &mut [i16; 16],
) -> (f32, f32) {
    use GgmlType::*;
    match ty {
        Q4_K | Q5_K => {
            let sm = k4_scales_mins(&blk[4..16]);
            let ql: &[u8; 128] = blk[16 + 32 * (ty == Q5_K) as usize..][..128]
                .try_into()
                .unwrap();
            for n in 0..4 {
                for l in 0..32 {
                    q[64 * n + l] = ql[32 * n + l] & 15;
                    q[64 * n + 32 + l] = ql[32 * n + l] >> 4;
                }
            }
            if ty == Q5_K {
                let qh: &[u8; 32] = blk[16..48].try_into().unwrap();
                for n in 0..4 {
                    for l in 0..32 {
                        q[64 * n + l] |= ((qh[l] >> (2 * n)) & 1) << 4;
                        q[64 * n + 32 + l] |= ((qh[l] >> (2 * n + 1)) & 1) << 4;
                    }
                }
            }
            for g in 0..16 {
                sc[g] = sm[g / 2] as i16;
                mn[g] = sm[8 + g / 2] as i16;
            }
            (f16_at(blk, 0), f16_at(blk, 2))
        }
        Q6_K => {
            for h in 0..2 {
                let ql: &[u8; 64] = blk[64 * h..64 * h + 64].try_into().unwrap();
                let qh: &[u8; 32] = blk[128 + 32 * h..160 + 32 * h].try_into().unwrap();
                let q: &mut [u8; 128] = (&mut q[128 * h..128 * h + 128]).try_into().unwrap();
                for l in 0..32 {
                    q[l] = (ql[l] & 15) | ((qh[l] & 3) << 4);
                    q[32 + l] = (ql[32 + l] & 15) | (((qh[l] >> 2) & 3) << 4);
                    q[64 + l] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    q[96 + l] = (ql[32 + l] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
            for g in 0..16 {
                sc[g] = blk[192 + g] as i8 as i16;
                mn[g] = 32 * sc[g];
            }
            (f16_at(blk, 208), 0.0)
        }
        Q3_K => {
            let hm: &[u8; 32] = blk[0..32].try_into().unwrap();
            let s = q3k_scales(&blk[96..108]);
            for n in 0..2 {
                let qs: &[u8; 32] = blk[32 + 32 * n..64 + 32 * n].try_into().unwrap();
                for j in 0..4 {
                    let bit = 4 * n + j;
                    for l in 0..32 {
                        let v = (qs[l] >> (2 * j)) & 3;
                        q[128 * n + 32 * j + l] = v | (((hm[l] >> bit) & 1) << 2);
                    }
                }
            }
            for g in 0..16 {
                sc[g] = s[g] as i16;
                mn[g] = 4 * sc[g];
            }
            (f16_at(blk, 108), 0.0)
        }
        Q2_K => {
            let scales = &blk[0..16];
            for n in 0..2 {
                let qs: &[u8; 32] = blk[16 + 32 * n..48 + 32 * n].try_into().unwrap();
                for j in 0..4 {
                    for l in 0..32 {
                        q[128 * n + 32 * j + l] = (qs[l] >> (2 * j)) & 3;
                    }
                }
            }
            for g in 0..16 {
                sc[g] = (scales[g] & 15) as i16;
                mn[g] = (scales[g] >> 4) as i16;
            }
            (f16_at(blk, 80), f16_at(blk, 82))
        }
        IQ4_XS => {
            let sh = u16::from_le_bytes([blk[2], blk[3]]) as i32;
            let (sl, qs) = (&blk[4..8], &blk[8..136]);
            for ib in 0..8 {
                let ls =
                    ((sl[ib / 2] as i32 >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4);
                sc[2 * ib] = (ls - 32) as i16;
                sc[2 * ib + 1] = (ls - 32) as i16;
                mn[2 * ib] = 0;
                mn[2 * ib + 1] = 0;
                let src: &[u8; 16] = qs[16 * ib..16 * ib + 16].try_into().unwrap();
                for j in 0..16 {
                    q[32 * ib + j] = KVALUES_IQ4NL[(src[j] & 15) as usize] as u8;
                    q[32 * ib + 16 + j] = KVALUES_IQ4NL[(src[j] >> 4) as usize] as u8;
                }
            }
            (f16_at(blk, 0), 0.0)
        }
        _ => unreachable!("unpack_kblock: {ty} is not a K-quant"),
    }
}

/// The exact integer sums (sumi, summ) of one unpacked super-block with 256 activations.
#[inline(always)]
pub fn kblock_sums(
    signed: bool,
    q: &[u8],
    sc: &[i16],
    mn: &[i16],
    xq: &[i8],
    bsums: &[i16],
) -> (i32, i32) {
    #[cfg(target_arch = "aarch64")]
    if crate::cpu::simd_level() == crate::cpu::SimdLevel::Neon {
        // Signed or below 64, every value reads the same as a signed byte.
        return super::neon::kblock_sums(q, sc, mn, xq, bsums);
    }
    kblock_sums_portable(signed, q, sc, mn, xq, bsums)
}

/// The exact integer sums of `q.len() / 16` groups of 16 values (part of a super-block).
#[inline(always)]
pub fn kblock_sums_n(
    signed: bool,
    q: &[u8],
    sc: &[i16],
    mn: &[i16],
    xq: &[i8],
    bsums: &[i16],
) -> (i32, i32) {
    let (mut sumi, mut summ) = (0i32, 0i32);
    for g in 0..q.len() / 16 {
        let s: i32 = (16 * g..16 * g + 16)
            .map(|i| if signed { q[i] as i8 as i32 } else { q[i] as i32 } * xq[i] as i32)
            .sum();
        sumi += sc[g] as i32 * s;
        summ += mn[g] as i32 * bsums[g] as i32;
    }
    (sumi, summ)
}

/// `kblock_sums` in plain Rust: all sixteen groups of a super-block.
#[inline(always)]
pub fn kblock_sums_portable(
    signed: bool,
    q: &[u8],
    sc: &[i16],
    mn: &[i16],
    xq: &[i8],
    bsums: &[i16],
) -> (i32, i32) {
    kblock_sums_n(
        signed,
        &q[..256],
        &sc[..16],
        &mn[..16],
        &xq[..256],
        &bsums[..16],
    )
}

/// One super-block's f32 contribution, in the order every level uses.
#[inline(always)]
pub fn kblock_combine(fold: bool, d: f32, dmin: f32, xd: f32, sumi: i32, summ: i32) -> f32 {
    let dd = d * xd;
    if fold {
        dd * (sumi - summ) as f32
    } else {
        let dm = dmin * xd;
        dd * sumi as f32 - dm * summ as f32
    }
}

/// How a K-quant row's super-blocks are summed in f32, as llama.cpp's x86 kernels do (so tokens
/// and probabilities match its). Which kernel llama.cpp runs depends on the batch (`for_batch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KOrder {
    /// `kblock_combine` added per super-block (types without a verified llama.cpp order).
    #[default]
    Combine,
    /// Q4_K repacked, gemv: the scales' and the mins' terms apart, acc = fma(sumi, d·xd, acc)
    /// and accm = fma(summ, dmin·xd, accm) per super-block; acc − accm.
    Split,
    /// Q4_K repacked, gemm: as `Split`, one step per 64 values (two sub-blocks).
    Split64,
    /// Q6_K, `ggml_vec_dot_q6_K_q8_K`: eight lanes (`q6k_lanes`), each fma(xd·d, lane, acc_k),
    /// folded like `hsum_float_8`.
    Lanes,
    /// Q6_K in llama.cpp's tiled matmul: r = f32(sumi − summ)·d, acc = fma(r, xd, acc).
    Tiled,
}

impl KOrder {
    /// The order of a single token.
    pub fn of(ty: GgmlType) -> Self {
        match ty {
            GgmlType::Q4_K => Self::Split,
            GgmlType::Q6_K => Self::Lanes,
            _ => Self::Combine,
        }
    }

    /// The order of token `t` of an `n`-token matmul over `rows` rows: llama.cpp repacks Q4_K
    /// matrices of a multiple of 8 rows and runs their tokens in groups of four through its gemm,
    /// the last n % 4 through its gemv; Q6_K takes its tiled matmul from 8 tokens.
    pub fn for_batch(ty: GgmlType, rows: usize, n: usize, t: usize) -> Self {
        match ty {
            GgmlType::Q4_K if rows.is_multiple_of(8) && t < n - n % 4 => Self::Split64,
            GgmlType::Q6_K if n >= 8 => Self::Tiled,
            _ => Self::of(ty),
        }
    }

    /// Whether this order steps every 64 values (`KAcc::add64`) instead of every super-block.
    pub fn per64(self) -> bool {
        self == Self::Split64
    }
}

/// The f32 state of one row·token sum in `KOrder`.
#[derive(Clone, Copy)]
pub struct KAcc {
    order: KOrder,
    fold: bool,
    sum: f32,
    min: f32,
    lanes: [f32; 8],
}

impl KAcc {
    #[inline(always)]
    pub fn new(order: KOrder, fold: bool) -> Self {
        Self {
            order,
            fold,
            sum: 0.0,
            min: 0.0,
            lanes: [0.0; 8],
        }
    }

    pub fn order(&self) -> KOrder {
        self.order
    }

    /// Add one super-block from its exact integer sums, or lanes (`Lanes`); for `Split64`, one
    /// 64-value part.
    #[inline(always)]
    pub fn add(&mut self, d: f32, dmin: f32, xd: f32, sumi: i32, summ: i32, lanes: &[i32; 8]) {
        match self.order {
            KOrder::Combine => self.sum += kblock_combine(self.fold, d, dmin, xd, sumi, summ),
            KOrder::Tiled => self.sum = ((sumi - summ) as f32 * d).mul_add(xd, self.sum),
            KOrder::Split | KOrder::Split64 => {
                self.sum = (sumi as f32).mul_add(d * xd, self.sum);
                self.min = (summ as f32).mul_add(dmin * xd, self.min);
            }
            KOrder::Lanes => {
                let dd = xd * d;
                for (a, &l) in self.lanes.iter_mut().zip(lanes) {
                    *a = dd.mul_add(l as f32, *a);
                }
            }
        }
    }

    /// Add one unpacked super-block against 256 activations.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn add_unpacked(
        &mut self,
        signed: bool,
        q: &[u8],
        sc: &[i16],
        mn: &[i16],
        d: f32,
        dmin: f32,
        xd: f32,
        xq: &[i8],
        bs: &[i16],
    ) {
        if self.order == KOrder::Lanes {
            self.add(d, dmin, xd, 0, 0, &q6k_lanes(q, sc, mn, xq, bs));
        } else if self.order.per64() {
            for p in 0..4 {
                let r = 64 * p..64 * p + 64;
                let g = 4 * p..4 * p + 4;
                let (sumi, summ) = kblock_sums_n(
                    signed,
                    &q[r.clone()],
                    &sc[g.clone()],
                    &mn[g.clone()],
                    &xq[r],
                    &bs[g],
                );
                self.add(d, dmin, xd, sumi, summ, &[0; 8]);
            }
        } else {
            let (sumi, summ) = kblock_sums(signed, q, sc, mn, xq, bs);
            self.add(d, dmin, xd, sumi, summ, &[0; 8]);
        }
    }

    #[inline(always)]
    pub fn finish(&self) -> f32 {
        match self.order {
            KOrder::Combine | KOrder::Tiled => self.sum,
            KOrder::Split | KOrder::Split64 => self.sum - self.min,
            KOrder::Lanes => {
                let a = self.lanes;
                let t = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
                (t[0] + t[2]) + (t[1] + t[3])
            }
        }
    }
}

/// Q6_K's eight integer lanes as ggml's AVX2 dot forms them: lane k holds values 4k..4k+4 of
/// every 32-value group, each times its 16-value group's scale, less the folded mins' share
/// mn[2k]·bsums[2k] + mn[2k+1]·bsums[2k+1] (mn = 32·scale: the −32 of the six-bit values).
#[inline(always)]
pub fn q6k_lanes(q: &[u8], sc: &[i16], mn: &[i16], xq: &[i8], bs: &[i16]) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for g in 0..8 {
        for (k, lane) in lanes.iter_mut().enumerate() {
            let e = 32 * g + 4 * k;
            let s: i32 = (e..e + 4).map(|e| q[e] as i32 * xq[e] as i32).sum();
            *lane += sc[e / 16] as i32 * s;
        }
    }
    for (k, lane) in lanes.iter_mut().enumerate() {
        *lane -= mn[2 * k] as i32 * bs[2 * k] as i32 + mn[2 * k + 1] as i32 * bs[2 * k + 1] as i32;
    }
    lanes
}

/// A K-quant weight row (whole super-blocks of `ty`) against one Q8_K activation row.
#[inline(always)]
pub fn dot_k(ty: GgmlType, w: &[u8], x: &Q8KRow) -> f32 {
    let signed = signed_weights(ty);
    let (mut q, mut sc, mut mn) = ([0u8; 256], [0i16; 16], [0i16; 16]);
    let mut acc = KAcc::new(KOrder::of(ty), folds_min(ty));
    for (b, blk) in w.chunks_exact(ty.type_size()).enumerate() {
        let (d, dmin) = unpack_kblock(ty, blk, &mut q, &mut sc, &mut mn);
        let (xq, bs) = (&x.q[256 * b..256 * b + 256], &x.bsums[16 * b..16 * b + 16]);
        acc.add_unpacked(signed, &q, &sc, &mn, d, dmin, x.d[b], xq, bs);
    }
    acc.finish()
}

/// A K-quant row unpacked once and reused for many tokens (prefill).
#[derive(Default)]
pub struct KRow {
    pub q: Vec<u8>,
    pub sc: Vec<i16>,
    pub mn: Vec<i16>,
    pub d: Vec<f32>,
    pub dmin: Vec<f32>,
    pub fold: bool,
    pub signed: bool,
    pub order: KOrder,
}

impl KRow {
    #[inline(always)]
    pub fn unpack(&mut self, ty: GgmlType, w: &[u8]) {
        let nb = w.len() / ty.type_size();
        self.q.resize(256 * nb, 0);
        self.sc.resize(16 * nb, 0);
        self.mn.resize(16 * nb, 0);
        self.d.clear();
        self.dmin.clear();
        self.fold = folds_min(ty);
        self.signed = signed_weights(ty);
        self.order = KOrder::of(ty);
        let parts = w
            .chunks_exact(ty.type_size())
            .zip(self.q.chunks_exact_mut(256))
            .zip(
                self.sc
                    .chunks_exact_mut(16)
                    .zip(self.mn.chunks_exact_mut(16)),
            );
        for ((blk, q), (sc, mn)) in parts {
            let (d, dmin) = unpack_kblock(
                ty,
                blk,
                q.try_into().unwrap(),
                sc.try_into().unwrap(),
                mn.try_into().unwrap(),
            );
            self.d.push(d);
            self.dmin.push(dmin);
        }
    }

    /// This row against one token, in the same order as `dot_k`.
    #[inline(always)]
    pub fn dot(&self, x: &Q8KRow) -> f32 {
        self.dot_in(x, self.order)
    }

    /// This row against one token, summed in `order`.
    #[inline(always)]
    pub fn dot_in(&self, x: &Q8KRow, order: KOrder) -> f32 {
        let mut acc = KAcc::new(order, self.fold);
        for b in 0..self.d.len() {
            acc.add_unpacked(
                self.signed,
                &self.q[256 * b..256 * b + 256],
                &self.sc[16 * b..16 * b + 16],
                &self.mn[16 * b..16 * b + 16],
                self.d[b],
                self.dmin[b],
                x.d[b],
                &x.q[256 * b..256 * b + 256],
                &x.bsums[16 * b..16 * b + 16],
            );
        }
        acc.finish()
    }
}

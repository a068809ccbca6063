//! Matrix products over quantized weights, and the persistent thread pool that runs them.
//!
//! `matmul` computes y[t] = W · x[t] for a batch of activation rows. Activations are quantized once
//! per call to the 8-bit format the weight type pairs with (Q8_0 / Q8_1 / Q8_K, as ggml does), then
//! each thread takes a range of output rows. With several tokens a weight row is unpacked to int8
//! once and reused for every token. The inner loops are generic Rust compiled three times (baseline,
//! AVX2+FMA, AVX-512) and chosen once at run time; `RLLAMA_SIMD=scalar|avx2|avx512` forces a level.

mod pool;

use std::sync::OnceLock;

pub use pool::ThreadPool;

use crate::error::{Error, Result};
use crate::quant::dot::*;
use crate::quant::kquant::{dot_k, is_kquant, KRow};
use crate::quant::q8::{quantize_q8, quantize_q8k, Q8KRow, Q8Row};
use crate::quant::{dequantize, GgmlType};

/// A row-major weight matrix [rows = n_out] × [cols = n_in] in GGUF layout (each row whole blocks).
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

impl<'a> QMatrix<'a> {
    pub fn new(ty: GgmlType, data: &'a [u8], rows: usize, cols: usize) -> Result<Self> {
        let rb = ty.row_bytes(cols).ok_or_else(|| {
            Error::invalid(format!(
                "{cols} columns is not a multiple of the {ty} block size"
            ))
        })?;
        if rb.checked_mul(rows) != Some(data.len()) {
            return Err(Error::invalid(format!(
                "{ty} matrix {rows}x{cols}: {} bytes given",
                data.len()
            )));
        }
        Ok(Self {
            ty,
            data,
            rows,
            cols,
        })
    }
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }
    pub fn row(&self, i: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[i * rb..(i + 1) * rb]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    Scalar,
    Avx2,
    Avx512,
}

/// The instruction set the kernels use, detected once (or forced by `RLLAMA_SIMD`).
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let detected = detect();
        match std::env::var("RLLAMA_SIMD").ok().as_deref() {
            Some("scalar") => SimdLevel::Scalar,
            Some("avx2") if detected != SimdLevel::Scalar => SimdLevel::Avx2,
            Some("avx512") if detected == SimdLevel::Avx512 => SimdLevel::Avx512,
            _ => detected,
        }
    })
}

/// Run `f` compiled for the detected SIMD level: LLVM vectorizes the `#[inline(always)]` code it
/// reaches with that level's instructions (mark the closure `#[inline(always)]` too).
#[inline(always)]
pub fn simd_dispatch<R, F: FnOnce() -> R>(f: F) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        unsafe fn avx512<R, F: FnOnce() -> R>(f: F) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn avx2<R, F: FnOnce() -> R>(f: F) -> R {
            f()
        }
        match simd_level() {
            // SAFETY: the level is only chosen when the CPU reports these features.
            SimdLevel::Avx512 => return unsafe { avx512(f) },
            SimdLevel::Avx2 => return unsafe { avx2(f) },
            SimdLevel::Scalar => {}
        }
    }
    f()
}

fn detect() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return SimdLevel::Avx512;
        }
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Scalar
}

/// Activations of a batch, quantized for one weight type.
enum Acts {
    Q8(Vec<Q8Row>),
    Q8K(Vec<Q8KRow>),
    F32,
}

fn quantize_acts(ty: GgmlType, x: &[f32], cols: usize) -> Acts {
    match ty {
        _ if is_legacy(ty) => Acts::Q8(
            x.chunks_exact(cols)
                .map(|r| {
                    let mut q = Q8Row::default();
                    quantize_q8(r, &mut q);
                    q
                })
                .collect(),
        ),
        _ if is_kquant(ty) => Acts::Q8K(
            x.chunks_exact(cols)
                .map(|r| {
                    let mut q = Q8KRow::default();
                    quantize_q8k(r, &mut q);
                    q
                })
                .collect(),
        ),
        _ => Acts::F32,
    }
}

#[inline(always)]
fn dot_unpacked(u: &[Block], x: &Q8Row) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd_level() != SimdLevel::Scalar {
        // SAFETY: AVX2, FMA and F16C are present whenever the level is not Scalar.
        return unsafe { crate::quant::x86::dot_unpacked(u, x) };
    }
    dot_blocks(u.iter().copied(), x)
}

/// Ask for a later weight row ahead of time: the dot loops are short enough that waiting for
/// each cache line shows.
#[inline(always)]
fn prefetch_row(w: &QMatrix, r: usize, end: usize) {
    #[cfg(target_arch = "x86_64")]
    if r < end {
        let row = w.row(r);
        let mut off = 0;
        while off < row.len() {
            // SAFETY: prefetching is a hint; the address is inside the row.
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    row.as_ptr().add(off) as *const i8,
                    std::arch::x86_64::_MM_HINT_T0,
                )
            };
            off += 64;
        }
    }
}

struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of output rows (its own row range) of the buffer the
// caller exclusively borrows for the duration of the call.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

/// Rows [r0, r1) of y = W·x for every token.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_kernel(
    level: SimdLevel,
    w: &QMatrix,
    acts: &Acts,
    x: &[f32],
    n: usize,
    r0: usize,
    r1: usize,
    y: &OutPtr,
) {
    let put = |t: usize, r: usize, v: f32| {
        // SAFETY: t < n and r < w.rows, so the index is inside y (n*rows values); row r belongs to
        // this task only (see OutPtr).
        unsafe { *y.0.add(t * w.rows + r) = v };
    };
    match acts {
        Acts::Q8(xs) => {
            let mut u: Vec<Block> = Vec::new();
            let ts = w.ty.type_size();
            #[cfg(target_arch = "x86_64")]
            let fast512 = simd_level() == SimdLevel::Avx512;
            #[cfg(target_arch = "x86_64")]
            let mut unpacked = crate::quant::x86::UnpackedRow::default();
            #[cfg(target_arch = "x86_64")]
            let mut col = vec![0f32; n];
            for r in r0..r1 {
                let row = w.row(r);
                prefetch_row(w, r + 2, r1);
                #[cfg(target_arch = "x86_64")]
                if fast512 {
                    use crate::quant::x86;
                    if n == 1 && x86::has_avx512_dot(w.ty) {
                        // SAFETY: the AVX-512 level is only chosen when the CPU has these features.
                        put(0, r, unsafe { x86::dot_row_512(w.ty, row, &xs[0]) });
                        continue;
                    }
                    if n > 1 {
                        unpacked.q.clear();
                        unpacked.d.clear();
                        unpacked.m.clear();
                        for b in row.chunks_exact(ts) {
                            let blk = unpack_block(w.ty, b);
                            unpacked.q.extend_from_slice(&blk.q);
                            unpacked.d.push(blk.d);
                            if let Some(m) = blk.m {
                                unpacked.m.push(m);
                            }
                        }
                        // SAFETY: as above.
                        unsafe { x86::dot_unpacked_512(&unpacked, xs, &mut col) };
                        for (t, &v) in col.iter().enumerate() {
                            put(t, r, v);
                        }
                        continue;
                    }
                }
                if n > 1 {
                    // Prefill: decode the row once, reuse it for every token.
                    u.clear();
                    u.extend(row.chunks_exact(ts).map(|b| unpack_block(w.ty, b)));
                    for (t, xt) in xs.iter().enumerate() {
                        put(t, r, dot_unpacked(&u, xt));
                    }
                    continue;
                }
                for (t, xt) in xs.iter().enumerate() {
                    #[cfg(target_arch = "x86_64")]
                    if simd_level() != SimdLevel::Scalar {
                        use crate::quant::x86;
                        // SAFETY: AVX2, FMA and F16C are present whenever the level is not Scalar.
                        let v = unsafe {
                            match w.ty {
                                GgmlType::Q8_0 => Some(x86::dot_q8_0(row, xt)),
                                GgmlType::Q4_1 => Some(x86::dot_q4_1(row, xt)),
                                GgmlType::Q4_0 => Some(x86::dot_q4_0(row, xt)),
                                GgmlType::Q5_0 => Some(x86::dot_q5_0(row, xt)),
                                _ => None,
                            }
                        };
                        if let Some(v) = v {
                            put(t, r, v);
                            continue;
                        }
                    }
                    put(t, r, dot_legacy(w.ty, row, xt));
                }
            }
        }
        Acts::Q8K(xs) => rows_k(level, w, xs, r0, r1, put),
        Acts::F32 => {
            let mut buf = vec![0f32; w.cols];
            for r in r0..r1 {
                if dequantize(w.ty, w.row(r), &mut buf).is_err() {
                    continue; // type checked by the caller
                }
                for t in 0..n {
                    put(t, r, dot_f32(&buf, &x[t * w.cols..(t + 1) * w.cols]));
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_avx2(
    level: SimdLevel,
    w: &QMatrix,
    acts: &Acts,
    x: &[f32],
    n: usize,
    r0: usize,
    r1: usize,
    y: &OutPtr,
) {
    rows_kernel(level, w, acts, x, n, r0, r1, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_avx512(
    level: SimdLevel,
    w: &QMatrix,
    acts: &Acts,
    x: &[f32],
    n: usize,
    r0: usize,
    r1: usize,
    y: &OutPtr,
) {
    rows_kernel(level, w, acts, x, n, r0, r1, y)
}

#[allow(clippy::too_many_arguments)]
fn rows_dispatch(
    level: SimdLevel,
    w: &QMatrix,
    acts: &Acts,
    x: &[f32],
    n: usize,
    r0: usize,
    r1: usize,
    y: &OutPtr,
) {
    match level {
        // SAFETY: `matmul_at` only passes levels the CPU supports.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { rows_avx512(level, w, acts, x, n, r0, r1, y) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { rows_avx2(level, w, acts, x, n, r0, r1, y) },
        _ => rows_kernel(level, w, acts, x, n, r0, r1, y),
    }
}

/// Rows [r0, r1) of a K-quant matrix against Q8_K activations, with `level`'s kernels: one token
/// dots the packed row (Q4_K / Q6_K directly, the others through an unpacked row); several tokens
/// unpack each row once and run four tokens per pass over it.
#[inline(always)]
fn rows_k(
    level: SimdLevel,
    w: &QMatrix,
    xs: &[Q8KRow],
    r0: usize,
    r1: usize,
    put: impl Fn(usize, usize, f32),
) {
    let n = xs.len();
    let mut u = KRow::default();
    let mut col = vec![0f32; n];
    for r in r0..r1 {
        let row = w.row(r);
        prefetch_row(w, r + 2, r1);
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 | SimdLevel::Avx2 => {
                use crate::quant::x86k;
                let avx512 = level == SimdLevel::Avx512;
                // SAFETY: `level` is one the CPU supports (see `matmul_at`).
                unsafe {
                    match (n, w.ty, avx512) {
                        (1, GgmlType::Q4_K, true) => col[0] = x86k::dot_q4k_512(row, &xs[0]),
                        (1, GgmlType::Q6_K, true) => col[0] = x86k::dot_q6k_512(row, &xs[0]),
                        (1, GgmlType::Q4_K, false) => col[0] = x86k::dot_q4k_avx2(row, &xs[0]),
                        (1, GgmlType::Q6_K, false) => col[0] = x86k::dot_q6k_avx2(row, &xs[0]),
                        _ => {
                            u.unpack(w.ty, row);
                            if avx512 {
                                x86k::gemm_k_512(&u, xs, &mut col);
                            } else {
                                x86k::gemm_k_avx2(&u, xs, &mut col);
                            }
                        }
                    }
                }
            }
            _ => {
                if n == 1 {
                    col[0] = dot_k(w.ty, row, &xs[0]);
                } else {
                    u.unpack(w.ty, row);
                    for (c, xt) in col.iter_mut().zip(xs) {
                        *c = u.dot(xt);
                    }
                }
            }
        }
        for (t, &v) in col.iter().enumerate() {
            put(t, r, v);
        }
    }
}

fn supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q8_1
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | Q8_K
            | IQ4_NL
            | IQ4_XS
    )
}

/// y[t*rows + r] = W[r] · x[t*cols ..] for t in 0..n_tokens.
pub fn matmul(
    pool: &ThreadPool,
    w: &QMatrix,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
) -> Result<()> {
    matmul_at(simd_level(), pool, w, x, n_tokens, y)
}

fn level_rank(l: SimdLevel) -> u8 {
    match l {
        SimdLevel::Scalar => 0,
        SimdLevel::Avx2 => 1,
        SimdLevel::Avx512 => 2,
    }
}

/// `matmul` with the K-quant kernels of a given SIMD level (tests compare the levels); an error
/// when the CPU lacks it.
pub fn matmul_at(
    level: SimdLevel,
    pool: &ThreadPool,
    w: &QMatrix,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
) -> Result<()> {
    if level_rank(level) > level_rank(detect()) {
        return Err(Error::invalid(format!("this CPU lacks {level:?}")));
    }
    if x.len() != n_tokens * w.cols || y.len() != n_tokens * w.rows {
        return Err(Error::invalid(format!(
            "matmul shapes: W {}x{}, x {} values, y {} values, {n_tokens} tokens",
            w.rows,
            w.cols,
            x.len(),
            y.len()
        )));
    }
    if !supported(w.ty) {
        return Err(Error::invalid(format!(
            "matmul over {} weights is not supported",
            w.ty
        )));
    }
    if w.ty.row_bytes(w.cols).map(|b| b * w.rows) != Some(w.data.len()) {
        return Err(Error::invalid("weight bytes do not match the matrix shape"));
    }
    let acts = quantize_acts(w.ty, x, w.cols);
    let out = OutPtr(y.as_mut_ptr());
    let nt = pool.n_threads();
    // Enough chunks to balance the threads, each big enough to amortize scheduling.
    let n_chunks = if nt == 1 {
        1
    } else {
        (nt * 4).min(w.rows.div_ceil(16)).max(1)
    };
    let per = w.rows.div_ceil(n_chunks);
    pool.run(n_chunks, &|c| {
        let r0 = c * per;
        let r1 = ((c + 1) * per).min(w.rows);
        if r0 < r1 {
            rows_dispatch(level, w, &acts, x, n_tokens, r0, r1, &out);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dequantized W times the quantized-then-dequantized activations, in f64.
    fn reference(w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
        let mut xq = Vec::with_capacity(x.len());
        for r in x.chunks_exact(w.cols) {
            let mut q = Q8Row::default();
            quantize_q8(r, &mut q);
            xq.extend(q.q.iter().enumerate().map(|(i, &v)| v as f32 * q.d[i / 32]));
        }
        let x = &xq;
        let mut row = vec![0f32; w.cols];
        let mut y = vec![0f32; n * w.rows];
        for r in 0..w.rows {
            dequantize(w.ty, w.row(r), &mut row).unwrap();
            for t in 0..n {
                y[t * w.rows + r] = row
                    .iter()
                    .zip(&x[t * w.cols..])
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn q8_0_matches_dequantized_reference() {
        // Q8_0 blocks with scale 1/64 and values -60..60.
        let (rows, cols, n) = (37, 96, 3);
        let mut data = Vec::new();
        for r in 0..rows {
            for b in 0..cols / 32 {
                data.extend_from_slice(&half::f16::from_f32(1.0 / 64.0).to_le_bytes());
                for j in 0..32 {
                    data.push((((r * 7 + b * 3 + j * 5) % 121) as i32 - 60) as i8 as u8);
                }
            }
        }
        let w = QMatrix::new(GgmlType::Q8_0, &data, rows, cols).unwrap();
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let want = reference(&w, &x, n);
        for threads in [1, 2, 3] {
            let mut y = vec![0f32; n * rows];
            matmul(&ThreadPool::new(threads), &w, &x, n, &mut y).unwrap();
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
        let mut y = vec![0f32; 1];
        assert!(matmul(&ThreadPool::new(1), &w, &x, n, &mut y).is_err());
        assert!(QMatrix::new(GgmlType::Q8_0, &data[1..], rows, cols).is_err());
        assert!(QMatrix::new(GgmlType::Q8_0, &data, rows, 33).is_err());
    }
    /// Random K-quant rows: random bytes with each f16 scale field a small finite value.
    fn random_k(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let f16_fields: &[usize] = match ty {
            GgmlType::Q2_K => &[80, 82],
            GgmlType::Q3_K => &[108],
            GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            GgmlType::Q6_K => &[208],
            GgmlType::IQ4_XS => &[0],
            _ => unreachable!(),
        };
        let mut st = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = || {
            st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (st >> 33) as u32
        };
        let ts = ty.type_size();
        let mut data: Vec<u8> = (0..ty.row_bytes(cols).unwrap() * rows)
            .map(|_| next() as u8)
            .collect();
        for blk in data.chunks_exact_mut(ts) {
            for &off in f16_fields {
                let v = 0.002 + (next() % 1000) as f32 * 2e-5;
                blk[off..off + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
        data
    }

    /// Dequantized W times the Q8_K-quantized-then-dequantized activations, in f64.
    fn reference_k(w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
        let mut xq = Vec::with_capacity(x.len());
        for r in x.chunks_exact(w.cols) {
            let mut q = Q8KRow::default();
            quantize_q8k(r, &mut q);
            xq.extend(q.q.iter().enumerate().map(|(i, &v)| v as f32 * q.d[i / 256]));
        }
        let mut row = vec![0f32; w.cols];
        let mut y = vec![0f32; n * w.rows];
        for r in 0..w.rows {
            dequantize(w.ty, w.row(r), &mut row).unwrap();
            for t in 0..n {
                y[t * w.rows + r] = row
                    .iter()
                    .zip(&xq[t * w.cols..])
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    fn levels() -> Vec<SimdLevel> {
        [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512]
            .into_iter()
            .filter(|&l| level_rank(l) <= level_rank(detect()))
            .collect()
    }

    #[test]
    fn kquants_match_reference_at_every_level() {
        use GgmlType::*;
        let (rows, cols) = (37, 768);
        for (i, ty) in [Q4_K, Q6_K, Q5_K, IQ4_XS, Q3_K, Q2_K].into_iter().enumerate() {
            let data = random_k(ty, rows, cols, i as u64 + 1);
            let w = QMatrix::new(ty, &data, rows, cols).unwrap();
            for n in [1, 5, 7] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|j| (((j * 7919 + i * 13) % 1013) as f32 - 506.0) / 300.0)
                    .collect();
                let want = reference_k(&w, &x, n);
                assert!(want.iter().any(|v| v.abs() > 1.0), "{ty}: degenerate test data");
                let mut first: Option<Vec<f32>> = None;
                for level in levels() {
                    for threads in [1, 2, 3] {
                        let mut y = vec![0f32; n * rows];
                        matmul_at(level, &ThreadPool::new(threads), &w, &x, n, &mut y).unwrap();
                        for (a, b) in y.iter().zip(&want) {
                            assert!(
                                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                                "{ty} {level:?} n={n} t={threads}: {a} vs {b}"
                            );
                        }
                        // Every level and thread count gives the same bits.
                        match &first {
                            None => first = Some(y),
                            Some(f) => assert!(
                                f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{ty} {level:?} n={n} t={threads} differs from scalar"
                            ),
                        }
                    }
                }
                // One token and a batch give the same bits per token.
                if n > 1 {
                    let mut y1 = vec![0f32; rows];
                    for level in levels() {
                        for t in 0..n {
                            let xt = &x[t * cols..(t + 1) * cols];
                            matmul_at(level, &ThreadPool::new(1), &w, xt, 1, &mut y1).unwrap();
                            let f = first.as_ref().unwrap();
                            assert!(y1
                                .iter()
                                .zip(&f[t * rows..])
                                .all(|(a, b)| a.to_bits() == b.to_bits()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn q4k_q6k_keep_the_original_portable_bits() {
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
            let cols = 512;
            let data = random_k(ty, 3, cols, 99);
            let x: Vec<f32> = (0..cols).map(|j| ((j * 31 % 97) as f32 - 48.0) / 20.0).collect();
            let mut q = Q8KRow::default();
            quantize_q8k(&x, &mut q);
            for row in data.chunks_exact(ty.row_bytes(cols).unwrap()) {
                let old = if ty == GgmlType::Q4_K {
                    dot_q4_k(row, &q)
                } else {
                    dot_q6_k(row, &q)
                };
                assert_eq!(old.to_bits(), dot_k(ty, row, &q).to_bits());
            }
        }
    }
}

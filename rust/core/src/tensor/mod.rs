//! Matrix products over quantized weights, and the persistent thread pool that runs them.
//!
//! `matmul` computes y[t] = W · x[t] for a batch of activation rows. Activations are quantized once
//! per call to the 8-bit format the weight type pairs with (Q8_0 / Q8_1 / Q8_K, as ggml does), then
//! each thread takes a range of output rows. With several tokens a weight row is unpacked to int8
//! once and reused for every token. The inner loops are generic Rust compiled three times (baseline,
//! AVX2+FMA, AVX-512) and chosen once at run time, the AVX2 integer kernels twice more with AVX-VNNI;
//! `RLLAMA_SIMD=scalar|avx2|avxvnni|avx512` forces a level (`cpu::SimdLevel`).

mod pool;

#[cfg(target_arch = "x86_64")]
use std::sync::OnceLock;

pub use pool::{SendPtr, ThreadPool};

use std::mem::MaybeUninit;

use crate::cpu::{available, simd_dispatch, simd_level, SimdLevel};
use crate::error::{Error, Result};
use crate::quant::dot::*;
use crate::quant::float::{self, FloatOrder};
use crate::quant::kquant::{dot_k, is_kquant, KOrder, KRow};
use crate::quant::q8::{quantize_q8, quantize_q8k, Q8KRow, Q8Row};
#[cfg(target_arch = "x86_64")]
use crate::quant::repack::{self, Tile};
use crate::quant::repack::{PackJob, Tiles, TILE};
use crate::quant::{dequantize, GgmlType};

/// A row-major weight matrix [rows = n_out] × [cols = n_in] in GGUF layout (each row whole
/// blocks), with the same rows repacked for the sixteen-row kernels when `tiles` is set.
#[derive(Clone, Copy)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
    pub tiles: Option<&'a Tiles>,
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
            tiles: None,
        })
    }

    /// `tiles` (made by `pack_tiles` from this matrix) for the kernels to read instead of `data`.
    pub fn with_tiles(self, tiles: Option<&'a Tiles>) -> Self {
        if let Some(t) = tiles {
            assert!(t.ty() == self.ty && t.n_tiles() == self.rows.div_ceil(TILE));
        }
        Self { tiles, ..self }
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }
    pub fn row(&self, i: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[i * rb..(i + 1) * rb]
    }
}

/// Activations of a batch, quantized for one weight type.
enum Acts {
    Q8(Vec<Q8Row>),
    Q8K(Vec<Q8KRow>),
    /// F16 / BF16 weights: the rows rounded to that format (F32 weights: empty, `x` is read).
    Float(float::FloatActs),
    /// Other types: each weight row dequantized and dotted with `x`.
    Dequant,
}

/// The activation format a weight type is dotted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ActFormat {
    Q8,
    Q8K,
    Float(GgmlType),
    Dequant,
}

fn act_format(ty: GgmlType) -> ActFormat {
    match ty {
        _ if is_legacy(ty) => ActFormat::Q8,
        _ if is_kquant(ty) => ActFormat::Q8K,
        _ if float::is_float(ty) => ActFormat::Float(ty),
        _ => ActFormat::Dequant,
    }
}

/// Quantize each of the `n` rows of `x` (`cols` values each, possibly none), rows split over the
/// pool when there are enough of them, compiled for the detected SIMD level.
/// The rows are taken (sized, or allocated) on the calling thread, which later gives them back.
fn quantize_rows<T: ActRow>(
    pool: &ThreadPool,
    x: &[f32],
    n: usize,
    cols: usize,
    quantize: impl Fn(&[f32], &mut T) + Sync,
) -> Vec<T> {
    let mut out: Vec<T> = take_rows(n, cols);
    pool.for_rows(&mut out, 1, 8, &|i, q| {
        simd_dispatch(
            #[inline(always)]
            || quantize(&x[i * cols..(i + 1) * cols], &mut q[0]),
        )
    });
    out
}

/// Quantized activation rows of dropped `Activations`, kept for the next ones made on the same
/// thread: a prefill otherwise allocated and freed four vectors per token for every matmul
/// input (malloc and free were 4-5% of a prefill's samples, on the thread the others wait for).
#[derive(Default)]
struct SpareRows {
    q8: Vec<Q8Row>,
    q8k: Vec<Q8KRow>,
}

/// At most this many rows of each format are kept per thread.
const SPARE_ROWS: usize = 1024;

thread_local! {
    static SPARE: std::cell::RefCell<SpareRows> = std::cell::RefCell::new(SpareRows::default());
}

/// A row format of quantized activations.
trait ActRow: Send + Default {
    fn reserve_cols(&mut self, cols: usize);
    fn spare(s: &mut SpareRows) -> &mut Vec<Self>;
}

impl ActRow for Q8Row {
    fn reserve_cols(&mut self, cols: usize) {
        Q8Row::reserve_cols(self, cols)
    }
    fn spare(s: &mut SpareRows) -> &mut Vec<Self> {
        &mut s.q8
    }
}

impl ActRow for Q8KRow {
    fn reserve_cols(&mut self, cols: usize) {
        Q8KRow::reserve_cols(self, cols)
    }
    fn spare(s: &mut SpareRows) -> &mut Vec<Self> {
        &mut s.q8k
    }
}

/// `n` empty rows with room for `cols` values each, spare ones first.
fn take_rows<T: ActRow>(n: usize, cols: usize) -> Vec<T> {
    let mut out = SPARE
        .try_with(|s| {
            let mut s = s.borrow_mut();
            let v = T::spare(&mut s);
            v.split_off(v.len().saturating_sub(n))
        })
        .unwrap_or_default();
    out.resize_with(n, T::default);
    out.iter_mut().for_each(|r| r.reserve_cols(cols));
    out
}

/// Keep `rows` for `take_rows` on this thread, as many as there is room for.
fn give_back<T: ActRow>(rows: Vec<T>) {
    let _ = SPARE.try_with(|s| {
        let mut s = s.borrow_mut();
        let v = T::spare(&mut s);
        let room = SPARE_ROWS.saturating_sub(v.len());
        v.extend(rows.into_iter().take(room));
    });
}

/// A batch of activation rows quantized once for one family of weight types: several matrices
/// that read the same input (Q, K and V; gate and up) share it.
pub struct Activations<'x> {
    x: &'x [f32],
    n: usize,
    format: ActFormat,
    acts: Acts,
    /// The AVX-512 sixteen-row kernels' offset shares, made on first use (with the weight
    /// offset they were made for).
    #[cfg(target_arch = "x86_64")]
    gemm: OnceLock<(u8, Gemm)>,
    /// Sum every token in the order of a token alone (`KOrder::of`), whatever the batch size:
    /// a row's bits then do not depend on what else is in the batch (deterministic mode).
    invariant: bool,
}

impl Drop for Activations<'_> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.acts, Acts::Dequant) {
            Acts::Q8(rows) => give_back(rows),
            Acts::Q8K(rows) => give_back(rows),
            _ => {}
        }
    }
}

impl<'x> Activations<'x> {
    /// Sum every token as if it were alone (see `invariant`).
    pub fn batch_invariant(mut self, on: bool) -> Self {
        self.invariant = on;
        self
    }

    /// Quantize `n` rows of `x` for weights of type `ty`.
    pub fn new(pool: &ThreadPool, ty: GgmlType, x: &'x [f32], n: usize) -> Result<Self> {
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(Error::invalid(format!(
                "{} activation values do not split into {n} rows",
                x.len()
            )));
        }
        let cols = x.len() / n;
        let format = act_format(ty);
        // The closures (not the bare functions) carry `inline(always)` into the SIMD-compiled
        // dispatch; a function item is called through a shim compiled for the baseline.
        #[allow(clippy::redundant_closure)]
        let acts = match format {
            ActFormat::Q8 if cols.is_multiple_of(32) => Acts::Q8(quantize_rows(
                pool,
                x,
                n,
                cols,
                #[inline(always)]
                |r, q| quantize_q8(r, q),
            )),
            ActFormat::Q8K if cols.is_multiple_of(256) => Acts::Q8K(quantize_rows(
                pool,
                x,
                n,
                cols,
                #[inline(always)]
                |r, q| quantize_q8k(r, q),
            )),
            ActFormat::Float(ty) => Acts::Float(float::FloatActs::new(ty, x)),
            ActFormat::Dequant => Acts::Dequant,
            _ => {
                return Err(Error::invalid(format!(
                    "{cols} columns is not a multiple of the {ty} block size"
                )))
            }
        };
        Ok(Self {
            x,
            n,
            format,
            acts,
            #[cfg(target_arch = "x86_64")]
            gemm: OnceLock::new(),
            invariant: false,
        })
    }

    /// Whether these activations can be multiplied by weights of type `ty`.
    pub fn pairs_with(&self, ty: GgmlType) -> bool {
        act_format(ty) == self.format
    }
}

#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn dot_unpacked(level: SimdLevel, u: &[Block], x: &Q8Row) -> f32 {
    #[cfg(target_arch = "aarch64")]
    if level == SimdLevel::Neon {
        return crate::quant::neon::dot_blocks(u.iter().copied(), x);
    }
    #[cfg(target_arch = "x86_64")]
    if level != SimdLevel::Scalar {
        // SAFETY: AVX2, FMA and F16C are present whenever the level is not Scalar.
        return unsafe { crate::quant::x86::dot_unpacked(u, x) };
    }
    dot_blocks(u.iter().copied(), x)
}

/// Ask for a later weight row ahead of time: the dot loops are short enough that waiting for
/// each cache line shows.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
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

/// Rows [r0, r1) of y = W·x for every token.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
#[inline(always)]
fn rows_kernel(job: &Job, r0: usize, r1: usize) {
    let Job {
        level,
        w,
        acts,
        gemm,
        x,
        n,
        y,
        invariant,
    } = *job;
    let put = |t: usize, r: usize, v: f32| {
        // SAFETY: t < n and r < w.rows, so the index is inside y (n*rows values); row r belongs to
        // this task only (tasks get disjoint row ranges of the y the caller borrows mutably).
        unsafe { *y.0.add(t * w.rows + r) = v };
    };
    // A tile's `m` (at most sixteen) values for token t, rows r.. (`put`'s safety): one vector
    // store for a whole tile instead of sixteen scalar ones (scattered over the output, they
    // were 9% of a prefill's time).
    let put16 = |t: usize, r: usize, m: usize, v: &[f32; TILE]| {
        debug_assert!(m <= TILE && r + m <= w.rows && t < n);
        // SAFETY: as `put`, for each of the rows r..r + m.
        unsafe {
            let p = y.0.add(t * w.rows + r);
            if m == TILE {
                (p as *mut [f32; TILE]).write_unaligned(*v);
            } else {
                put_part(p, &v[..m]);
            }
        }
    };
    match acts {
        Acts::Q8(xs) => {
            let mut u: Vec<Block> = Vec::new();
            let ts = w.ty.type_size();
            #[cfg(target_arch = "x86_64")]
            let fast512 = level == SimdLevel::Avx512;
            #[cfg(target_arch = "x86_64")]
            if let (Some(shares), true) = (gemm, fast512) {
                // AVX-512, types with the sixteen-row kernels: one row per lane, in ggml's order,
                // a tile of sixteen rows at a time (r0 is on a tile boundary).
                use crate::quant::x86;
                let mut scratch = Vec::new();
                let mut buf = Vec::new();
                for r in (r0..r1).step_by(TILE) {
                    let m = (r1 - r).min(TILE);
                    let tile = tile_at(w, r, &mut scratch);
                    if n > 1 {
                        // Prefill: the tile unpacked once, then every token against it.
                        // SAFETY: the AVX-512 level is only chosen when the CPU has these
                        // features.
                        unsafe {
                            x86::gemm16_512(w.ty, &tile, xs, shares, &mut buf, |t, v| {
                                put16(t, r, m, v)
                            })
                        };
                    } else {
                        // SAFETY: as above.
                        let v = unsafe { x86::dot16_512(w.ty, &tile, &xs[0], &shares[0]) };
                        put16(0, r, m, &v);
                    }
                }
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if let (Some(tiles), SimdLevel::Avx2 { vnni }, true) =
                (w.tiles, level, crate::quant::x86::has_dot16_avx2(w.ty))
            {
                // AVX2 with tiles (made at load for `x86::has_dot16_avx2` types): a token alone
                // streams each tile eight rows per pass; a batch unpacks each tile once and
                // takes every token against it (r0 is on a tile boundary).
                let mut buf = Vec::new();
                // Each token's offset shares (Q4_0, Q5_0; none needed for the others).
                let corr = |t: usize| gemm.map_or(&[][..], |g| g[t].as_slice());
                for r in (r0..r1).step_by(TILE) {
                    let m = (r1 - r).min(TILE);
                    let tile = tiles.tile(r / TILE);
                    let emit = |t: usize, v: &[f32; 16]| put16(t, r, m, v);
                    // SAFETY: AVX2, FMA and F16C are present at this level.
                    unsafe {
                        if n == 1 {
                            emit(
                                0,
                                &crate::quant::x86::dot16_avx2(vnni, w.ty, &tile, &xs[0], corr(0)),
                            );
                        } else {
                            let corrs: Vec<&[i32]> = (0..n).map(corr).collect();
                            crate::quant::x86::gemm16_avx2(
                                vnni, w.ty, &tile, xs, &corrs, &mut buf, emit,
                            );
                        }
                    }
                }
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if n > 1 && level != SimdLevel::Scalar {
                prefill_rows(
                    level,
                    w.ty,
                    |i| w.row(r0 + i),
                    r1 - r0,
                    xs,
                    |t, i, v| put(t, r0 + i, v),
                );
                return;
            }
            #[cfg(target_arch = "x86_64")]
            let mut r0 = r0;
            #[cfg(target_arch = "x86_64")]
            if n == 1 && level != SimdLevel::Scalar {
                // One token: four rows at a time, their chains interleaved (each row's sum as
                // alone); the tail and the types without it go one row at a time below.
                while r0 + 4 <= r1 {
                    // SAFETY: the level has SSE (a hint; the range is inside the matrix).
                    unsafe {
                        crate::quant::x86::prefetch_ahead(
                            w.data,
                            r0 * w.row_bytes(),
                            4 * w.row_bytes(),
                        )
                    };
                    let rows = std::array::from_fn(|i| w.row(r0 + i));
                    // SAFETY: AVX2, FMA and F16C are present whenever the level is not Scalar.
                    let Some(v) = (unsafe { crate::quant::x86::dot_rows::<4>(w.ty, rows, &xs[0]) })
                    else {
                        break;
                    };
                    for (i, &v) in v.iter().enumerate() {
                        put(0, r0 + i, v);
                    }
                    r0 += 4;
                }
            }
            for r in r0..r1 {
                let row = w.row(r);
                prefetch_row(w, r + 2, r1);
                if n > 1 {
                    // Prefill: decode the row once, reuse it for every token.
                    u.clear();
                    u.extend(row.chunks_exact(ts).map(|b| unpack_block(w.ty, b)));
                    for (t, xt) in xs.iter().enumerate() {
                        put(t, r, dot_unpacked(level, &u, xt));
                    }
                    continue;
                }
                for (t, xt) in xs.iter().enumerate() {
                    #[cfg(target_arch = "x86_64")]
                    if level != SimdLevel::Scalar {
                        use crate::quant::x86;
                        // SAFETY: AVX2, FMA and F16C are present whenever the level is not Scalar.
                        let v = unsafe { x86::dot_rows::<1>(w.ty, [row], xt) }.map(|v| v[0]);
                        if let Some(v) = v {
                            put(t, r, v);
                            continue;
                        }
                    }
                    #[cfg(target_arch = "aarch64")]
                    if level == SimdLevel::Neon {
                        let blocks = row.chunks_exact(ts).map(|b| unpack_block(w.ty, b));
                        put(t, r, crate::quant::neon::dot_blocks(blocks, xt));
                        continue;
                    }
                    put(t, r, dot_legacy(w.ty, row, xt));
                }
            }
        }
        Acts::Q8K(xs) => rows_k(level, w, xs, r0, r1, invariant, put, put16),
        Acts::Float(conv) => float_rows(level, w, x, conv, n, invariant, r0, r1, put),
        Acts::Dequant => {
            let mut buf = vec![0f32; w.cols];
            for r in r0..r1 {
                if dequantize(w.ty, w.row(r), &mut buf).is_err() {
                    // Type checked by the caller; the row is still written (see `matmul_acts`).
                    (0..n).for_each(|t| put(t, r, f32::NAN));
                    continue;
                }
                for t in 0..n {
                    put(t, r, dot_f32(&buf, &x[t * w.cols..(t + 1) * w.cols]));
                }
            }
        }
    }
}

/// Rows [r0, r1) of a float matrix (F32, F16, BF16) in llama.cpp's order for `level`
/// (`float.rs`): tinyBLAS's four-row × several-token tiles for a batch it takes, ggml's dot
/// (four rows at a time sharing each activation load) otherwise and in deterministic mode.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn float_rows(
    level: SimdLevel,
    w: &QMatrix,
    x: &[f32],
    conv: &float::FloatActs,
    n: usize,
    invariant: bool,
    r0: usize,
    r1: usize,
    put: impl Fn(usize, usize, f32),
) {
    let (ty, k) = (w.ty, w.cols);
    let order = FloatOrder::of(level);
    let act = |t: usize| float::act_row(x, conv, t, k);
    #[cfg(target_arch = "x86_64")]
    if order != FloatOrder::Scalar {
        use crate::quant::x86f;
        let tiled = !invariant && order.tiled(ty, w.rows, k, n);
        if tiled {
            // Tiles as large as the registers hold (32 at AVX-512, 16 at AVX2).
            // (3 × 4 measured the same at AVX2, 4 × 3 slower: it spills.)
            if level == SimdLevel::Avx512 {
                float_tiles::<4, 6>(order, w, &act, n, r0, r1, &put);
            } else {
                float_tiles::<4, 2>(order, w, &act, n, r0, r1, &put);
            }
            return;
        }
        // One row at a time: consecutive rows are one sequential stream for the hardware
        // prefetcher (four rows side by side, or software prefetches, measured slower).
        for r in r0..r1 {
            for t in 0..n {
                // SAFETY: the level is this CPU's; each row and activation holds k values.
                put(t, r, unsafe {
                    x86f::dot(order, ty, w.row(r).as_ptr(), act(t).as_ptr(), k)
                });
            }
        }
        return;
    }
    let _ = (order, invariant);
    for r in r0..r1 {
        for t in 0..n {
            put(t, r, float::dot_scalar(ty, w.row(r), act(t), k));
        }
    }
}

/// Rows [r0, r1) of a float matrix × every token through tinyBLAS: tiles of `RM` rows × up to
/// `RN` tokens (rows past the last whole `RM` one at a time). Safety: as `x86f::tile`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn float_tiles<'a, const RM: usize, const RN: usize>(
    order: FloatOrder,
    w: &QMatrix,
    act: &impl Fn(usize) -> &'a [u8],
    n: usize,
    r0: usize,
    r1: usize,
    put: &impl Fn(usize, usize, f32),
) {
    // Tokens in blocks whose activations stay in L2 while the chunk's rows pass.
    for tb in (0..n).step_by(96) {
        let te = (tb + 96).min(n);
        let mut r = r0;
        while r + RM <= r1 {
            float_block::<RM, RN>(order, w, act, tb, te, r, put);
            r += RM;
        }
        for r in r..r1 {
            float_block::<1, RN>(order, w, act, tb, te, r, put);
        }
    }
}

/// Rows `r`..`r + RM` × tokens [tb, te), `RN` tokens per tile.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn float_block<'a, const RM: usize, const RN: usize>(
    order: FloatOrder,
    w: &QMatrix,
    act: &impl Fn(usize) -> &'a [u8],
    tb: usize,
    te: usize,
    r: usize,
    put: &impl Fn(usize, usize, f32),
) {
    let (ty, k) = (w.ty, w.cols);
    let rows = std::array::from_fn(|i| w.row(r + i).as_ptr());
    let mut t = tb;
    while t < te {
        let m = (te - t).min(RN);
        // SAFETY: the level is this CPU's (`matmul_at`) and `tiled` checked k.
        unsafe {
            match m {
                1 => float_tile::<RM, 1>(order, ty, rows, t, act, k, r, put),
                2 => float_tile::<RM, 2>(order, ty, rows, t, act, k, r, put),
                3 => float_tile::<RM, 3>(order, ty, rows, t, act, k, r, put),
                4 => float_tile::<RM, 4>(order, ty, rows, t, act, k, r, put),
                5 => float_tile::<RM, 5>(order, ty, rows, t, act, k, r, put),
                _ => float_tile::<RM, 6>(order, ty, rows, t, act, k, r, put),
            }
        }
        t += m;
    }
}

/// One tinyBLAS tile: rows `r`..`r + RM` × tokens `t`..`t + RN`.
/// Safety: as `x86f::tile`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn float_tile<'a, const RM: usize, const RN: usize>(
    order: FloatOrder,
    ty: GgmlType,
    rows: [*const u8; RM],
    t: usize,
    act: &impl Fn(usize) -> &'a [u8],
    k: usize,
    r: usize,
    put: &impl Fn(usize, usize, f32),
) {
    let xs = std::array::from_fn(|j| act(t + j).as_ptr());
    let v = crate::quant::x86f::tile::<RM, RN>(order, ty, rows, xs, k);
    for (j, vj) in v.iter().enumerate() {
        for (i, &v) in vj.iter().enumerate() {
            put(t + j, r + i, v);
        }
    }
}

/// A batch against `m` legacy rows (`row(i)`): four rows decoded at a time, each token's blocks
/// loaded once for all four (the same sums per row and token as `dot_unpacked`); `put(t, i, v)`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefill_rows<'r>(
    level: SimdLevel,
    ty: GgmlType,
    row: impl Fn(usize) -> &'r [u8],
    m: usize,
    xs: &[Q8Row],
    put: impl Fn(usize, usize, f32),
) {
    let ts = ty.type_size();
    let unpack = |i: usize, into: &mut Vec<Block>| {
        into.extend(row(i).chunks_exact(ts).map(|b| unpack_block(ty, b)));
    };
    let nb = row(0).len() / ts;
    let mut u4: Vec<Block> = Vec::with_capacity(4 * nb);
    let mut i0 = 0;
    while i0 + 4 <= m {
        u4.clear();
        for i in 0..4 {
            unpack(i0 + i, &mut u4);
        }
        let rows: [&[Block]; 4] = std::array::from_fn(|i| &u4[i * nb..(i + 1) * nb]);
        for (t, xt) in xs.iter().enumerate() {
            // SAFETY: AVX2, FMA and F16C are present whenever the level is not Scalar.
            let v = unsafe { crate::quant::x86::dot_unpacked4(rows, xt) };
            for (i, &v) in v.iter().enumerate() {
                put(t, i0 + i, v);
            }
        }
        i0 += 4;
    }
    for i in i0..m {
        u4.clear();
        unpack(i, &mut u4);
        for (t, xt) in xs.iter().enumerate() {
            put(t, i, dot_unpacked(level, &u4, xt));
        }
    }
}

/// One matmul as the row kernels see it.
#[derive(Clone, Copy)]
struct Job<'a> {
    level: SimdLevel,
    w: &'a QMatrix<'a>,
    acts: &'a Acts,
    gemm: Option<&'a Gemm>,
    x: &'a [f32],
    n: usize,
    y: &'a SendPtr<f32>,
    invariant: bool,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(job: &Job, r0: usize, r1: usize) {
    rows_kernel(job, r0, r1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn rows_avx512(job: &Job, r0: usize, r1: usize) {
    rows_kernel(job, r0, r1)
}

fn rows_dispatch(job: &Job, r0: usize, r1: usize) {
    match job.level {
        // SAFETY: only levels the CPU supports reach here (`simd_level`, `matmul_at`).
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { rows_avx512(job, r0, r1) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 { .. } => unsafe { rows_avx2(job, r0, r1) },
        _ => rows_kernel(job, r0, r1),
    }
}

/// Rows [r0, r1) of a K-quant matrix against Q8_K activations, with `level`'s kernels: one token
/// dots the packed row (Q4_K / Q6_K directly, the others through an unpacked row); several tokens
/// unpack each row once and run four tokens per pass over it.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
#[allow(clippy::too_many_arguments)]
fn rows_k(
    level: SimdLevel,
    w: &QMatrix,
    xs: &[Q8KRow],
    r0: usize,
    r1: usize,
    invariant: bool,
    put: impl Fn(usize, usize, f32),
    put16: impl Fn(usize, usize, usize, &[f32; TILE]),
) {
    let n = xs.len();
    let mut u = KRow::default();
    let mut col = vec![0f32; n];
    // llama.cpp's kernel, and so summation order, for each token (see `KOrder::for_batch`).
    let order = |t: usize| {
        if invariant {
            KOrder::of(w.ty)
        } else {
            KOrder::for_batch(w.ty, w.rows, n, t)
        }
    };
    #[cfg(target_arch = "x86_64")]
    if level == SimdLevel::Avx512 && crate::quant::x86k::has_k16_512(w.ty) {
        use crate::quant::x86k;
        // A tile of sixteen rows at a time (r0 is on a tile boundary), one row per lane: a Q4_K
        // (`Split`), Q6_K (`Lanes`), Q2_K, Q3_K, Q5_K or IQ4_XS (`Combine`) token alone streams
        // the tile; batches of Q4_K (`Split`, `Split64`), Q2_K, Q3_K, Q5_K and IQ4_XS
        // (`Combine`) and Q6_K (`Tiled`, `Lanes`) unpack it once, then take every token.
        let (mut scratch, mut b4, mut b6) = (Vec::new(), Vec::new(), Vec::new());
        for r in (r0..r1).step_by(TILE) {
            let m = (r1 - r).min(TILE);
            let emit = |t: usize, v: &[f32; 16]| put16(t, r, m, v);
            let tile = tile_at(w, r, &mut scratch);
            // SAFETY: the AVX-512 level is only chosen when the CPU has these features.
            unsafe {
                match w.ty {
                    GgmlType::Q4_K if n == 1 => {
                        emit(0, &x86k::dot16_q4k_512::<false>(&tile, &xs[0]))
                    }
                    GgmlType::Q5_K if n == 1 => {
                        emit(0, &x86k::dot16_q4k_512::<true>(&tile, &xs[0]))
                    }
                    GgmlType::Q6_K if n == 1 => emit(0, &x86k::dot16_q6k_512(&tile, &xs[0])),
                    GgmlType::Q3_K if n == 1 => emit(0, &x86k::dot16_q3k_512(&tile, &xs[0])),
                    GgmlType::Q2_K if n == 1 => emit(0, &x86k::dot16_q2k_512(&tile, &xs[0])),
                    GgmlType::IQ4_XS if n == 1 => emit(0, &x86k::dot16_iq4xs_512(&tile, &xs[0])),
                    GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::IQ4_XS => {
                        x86k::gemm16_k45_512(&tile, w.ty, xs, &mut b4, order, emit)
                    }
                    _ => x86k::gemm16_k36_512(&tile, w.ty, order(0), xs, &mut b6, emit),
                }
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let (Some(tiles), SimdLevel::Avx2 { vnni }) = (w.tiles, level) {
        use crate::quant::x86k;
        if x86k::has_k16_avx2(w.ty) {
            // Tiles made at load (r0 is on a tile boundary): sixteen rows per pass, every token
            // count (`x86k::gemm16_k_avx2`).
            let mut bufs = x86k::KTileBufs::default();
            for r in (r0..r1).step_by(TILE) {
                let m = (r1 - r).min(TILE);
                let emit = |t: usize, v: &[f32; 16]| put16(t, r, m, v);
                // SAFETY: AVX2, FMA and F16C are present at this level.
                unsafe {
                    let tile = tiles.tile(r / TILE);
                    x86k::gemm16_k_avx2(vnni, &tile, w.ty, xs, &mut bufs, order, emit)
                };
            }
            return;
        }
    }
    for r in r0..r1 {
        let row = w.row(r);
        prefetch_row(w, r + 2, r1);
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 | SimdLevel::Avx2 { .. } => {
                use crate::quant::x86k;
                let avx512 = level == SimdLevel::Avx512;
                // SAFETY: `level` is one the CPU supports (see `matmul_at`).
                unsafe {
                    match (n, w.ty, avx512) {
                        (1, GgmlType::Q4_K, false) => col[0] = x86k::dot_q4k_avx2(row, &xs[0]),
                        (1, GgmlType::Q6_K, false) => col[0] = x86k::dot_q6k_avx2(row, &xs[0]),
                        _ => {
                            u.unpack(w.ty, row);
                            if avx512 {
                                x86k::gemm_k_512(&u, xs, &mut col, &order);
                            } else {
                                x86k::gemm_k_avx2(&u, xs, &mut col, &order);
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
                    for (t, (c, xt)) in col.iter_mut().zip(xs).enumerate() {
                        *c = u.dot_in(xt, order(t));
                    }
                }
            }
        }
        for (t, &v) in col.iter().enumerate() {
            put(t, r, v);
        }
    }
}

/// The last, partial tile's outputs for one token, kept out of line: inlined, LLVM merged both
/// of `put16`'s stores into one memcpy call of m values (for every token and tile).
///
/// # Safety
/// `p` has room for `v.len()` values that nothing else accesses.
#[cold]
#[inline(never)]
unsafe fn put_part(p: *mut f32, v: &[f32]) {
    std::ptr::copy_nonoverlapping(v.as_ptr(), p, v.len());
}

/// The tile of rows r.. (r a multiple of 16): the matrix's own, or its rows packed now into
/// `scratch`.
#[cfg(target_arch = "x86_64")]
fn tile_at<'t>(w: &QMatrix<'t>, r: usize, scratch: &'t mut Vec<u8>) -> Tile<'t> {
    let nb = w.cols / w.ty.block_size();
    if let Some(t) = w.tiles {
        return t.tile(r / TILE);
    }
    let rb = w.row_bytes();
    scratch.resize(repack::tile_bytes(w.ty, nb), 0);
    repack::pack_tile(
        w.ty,
        &w.data[r * rb..(r + TILE).min(w.rows) * rb],
        nb,
        scratch,
    );
    Tile::new(w.ty, scratch, nb)
}

/// Whether the sixteen-row kernels in use have a tile layout for `ty`.
pub fn tiles_wanted(ty: GgmlType) -> bool {
    match simd_level() {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => {
            use crate::quant::{x86, x86k};
            x86::has_dot16_512(ty) || x86k::has_k16_512(ty)
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 { .. } => {
            crate::quant::x86::has_dot16_avx2(ty) || crate::quant::x86k::has_k16_avx2(ty)
        }
        _ => {
            let _ = ty;
            false
        }
    }
}

/// Repack the matrices `ws` on `pool` for the sixteen-row kernels, those whose type they have a
/// layout for, into one buffer in the order given (`done(i, range)` as for `Tiles::pack_all`,
/// `i` indexing `ws`). None for a matrix left in its rows.
pub fn pack_tiles(
    pool: &ThreadPool,
    ws: &[QMatrix],
    done: &(dyn Fn(usize, std::ops::Range<usize>) + Sync),
) -> Vec<Option<Tiles>> {
    let picked: Vec<usize> = (0..ws.len()).filter(|&i| tiles_wanted(ws[i].ty)).collect();
    let jobs: Vec<PackJob> = picked
        .iter()
        .map(|&i| {
            let w = &ws[i];
            PackJob {
                ty: w.ty,
                data: w.data,
                rows: w.rows,
                nb: w.cols / w.ty.block_size(),
            }
        })
        .collect();
    let packed = Tiles::pack_all(&jobs, |n, f| pool.run(n, f), &|k, r| done(picked[k], r));
    let mut out: Vec<Option<Tiles>> = ws.iter().map(|_| None).collect();
    for (i, t) in picked.into_iter().zip(packed) {
        out[i] = t;
    }
    out
}

/// Per token, −offset·(sum of every four activations): what the AVX-512 sixteen-row kernels
/// take back from each group's integer sum (elsewhere a type with no values).
#[cfg(target_arch = "x86_64")]
type Gemm = Vec<Vec<i32>>;
#[cfg(not(target_arch = "x86_64"))]
enum Gemm {}

/// The offsets' shares of `a` for `w`'s type when the sixteen-row kernels need them: cached
/// in `a` for the first weight offset asked for, else built into `own`.
fn gemm_layout<'a>(
    level: SimdLevel,
    w: &QMatrix,
    a: &'a Activations,
    own: &'a mut Option<Gemm>,
) -> Option<&'a Gemm> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::quant::x86;
        let Acts::Q8(xs) = &a.acts else { return None };
        let off = match level {
            SimdLevel::Avx512 if x86::has_dot16_512(w.ty) => x86::gemm_offset(w.ty),
            // The AVX2 tile kernels, for the types they store with an offset.
            SimdLevel::Avx2 { .. } if w.tiles.is_some() && x86::avx2_offset(w.ty) != 0 => {
                x86::avx2_offset(w.ty)
            }
            _ => return None,
        };
        let make = || xs.iter().map(|x| x86::offset_shares(x, off)).collect();
        let (o, g) = a.gemm.get_or_init(|| (off, make()));
        if *o == off {
            return Some(g);
        }
        return Some(own.insert(make()));
    }
    #[allow(unreachable_code)]
    {
        let _ = (level, w, a, own);
        None
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

/// `matmul` with the kernels of a given SIMD level (tests compare the levels); an error when the
/// CPU lacks it.
pub fn matmul_at(
    level: SimdLevel,
    pool: &ThreadPool,
    w: &QMatrix,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
) -> Result<()> {
    if !available(level) {
        return Err(Error::invalid(format!("this CPU lacks {level:?}")));
    }
    let acts = Activations::new(pool, w.ty, x, n_tokens)?;
    matmul_acts_at(level, pool, vec![(w, &acts, as_uninit(y))])
}

fn check_weights(w: &QMatrix) -> Result<()> {
    if !supported(w.ty) {
        return Err(Error::invalid(format!(
            "matmul over {} weights is not supported",
            w.ty
        )));
    }
    if w.ty.row_bytes(w.cols).map(|b| b * w.rows) != Some(w.data.len()) {
        return Err(Error::invalid("weight bytes do not match the matrix shape"));
    }
    Ok(())
}

/// `matmul` with activations quantized beforehand (see `Activations`), into a new vector. The
/// kernels write every value, so it is not zeroed first (that memset was 2-3% of a prefill).
pub fn matmul_acts(pool: &ThreadPool, w: &QMatrix, a: &Activations) -> Result<Vec<f32>> {
    Ok(matmul_many(pool, &[(w, a)])?.pop().unwrap_or_default())
}

/// `matmul_acts` for several matrices at once, in one job on the pool: their chunks are claimed
/// from one list, so a token's small matrices (K and V beside Q; gate beside up) cost the
/// threads one start and one wait instead of one each, and one matrix's tail overlaps the next.
pub fn matmul_many(pool: &ThreadPool, mats: &[(&QMatrix, &Activations)]) -> Result<Vec<Vec<f32>>> {
    let mut ys: Vec<Vec<f32>> = mats
        .iter()
        .map(|(w, a)| Vec::with_capacity(a.n * w.rows))
        .collect();
    let list = ys
        .iter_mut()
        .zip(mats)
        .map(|(y, &(w, a))| (w, a, &mut y.spare_capacity_mut()[..a.n * w.rows]))
        .collect();
    matmul_acts_at(simd_level(), pool, list)?;
    for (y, (w, a)) in ys.iter_mut().zip(mats) {
        // SAFETY: `matmul_acts_at` returned Ok, so it wrote every value of every output (the
        // chunks cover each matrix's rows and each kernel writes every token of its rows).
        unsafe { y.set_len(a.n * w.rows) };
    }
    Ok(ys)
}

/// `y` as storage the kernels only write.
fn as_uninit(y: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: the same layout, and only valid f32 values are written through it.
    unsafe { &mut *(y as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// Each (W, activations, y) of `mats`: y = W·x for every token, all of them in one pool job.
fn matmul_acts_at(
    level: SimdLevel,
    pool: &ThreadPool,
    mut mats: Vec<(&QMatrix, &Activations, &mut [MaybeUninit<f32>])>,
) -> Result<()> {
    for (w, a, y) in &mut mats {
        let n_tokens = a.n;
        if a.x.len() != n_tokens * w.cols || y.len() != n_tokens * w.rows || !a.pairs_with(w.ty) {
            return Err(Error::invalid(format!(
                "matmul shapes: W {} {}x{}, x {} values, y {} values, {n_tokens} tokens, {:?} activations",
                w.ty,
                w.rows,
                w.cols,
                a.x.len(),
                y.len(),
                a.format,
            )));
        }
        check_weights(w)?;
        if w.cols == 0 {
            // Each output is an empty sum (no kernel takes rows without blocks).
            y.fill(MaybeUninit::new(0.0));
        }
    }
    let mut own_gemm: Vec<Option<Gemm>> = mats.iter().map(|_| None).collect();
    let outs: Vec<SendPtr<f32>> = mats
        .iter()
        .map(|(_, _, y)| SendPtr(y.as_ptr() as *mut f32))
        .collect();
    let jobs: Vec<Job> = mats
        .iter()
        .zip(own_gemm.iter_mut())
        .zip(&outs)
        .map(|(((w, a, _), own), out)| Job {
            level,
            w,
            acts: &a.acts,
            gemm: gemm_layout(level, w, a, own),
            x: a.x,
            n: a.n,
            y: out,
            invariant: a.invariant,
        })
        .collect();
    let nt = pool.n_threads();
    let mut chunks: Vec<(usize, usize, usize)> = Vec::new();
    for (i, (w, a, _)) in mats.iter().enumerate() {
        if w.cols == 0 {
            continue;
        }
        let align = if a.n > 1 || level == SimdLevel::Avx512 || w.tiles.is_some() {
            // Batches write sixteen consecutive outputs per token, and token generation over
            // tiles takes sixteen rows per pass: keep chunks on those boundaries.
            16
        } else {
            1
        };
        let cut = chunk_rows(w.rows, a.n, nt, align);
        chunks.extend(cut.into_iter().map(|(r0, r1)| (i, r0, r1)));
    }
    pool.run(chunks.len(), &|c| {
        let (i, r0, r1) = chunks[c];
        if r0 < r1 {
            rows_dispatch(&jobs[i], r0, r1);
        }
    });
    Ok(())
}

/// How `matmul_at` cuts `rows` into tasks for `nt` threads (each chunk on an `align`-row
/// boundary). A batch is compute-bound: 16·nt equal chunks (at least a tile each), claimed as
/// threads come free; each tile is unpacked once whatever the chunk, so a small chunk costs only
/// its claim, and the thread that finishes first waits for at most one (4·nt left the compute
/// thread waiting 8% of a smollm2 prefill's samples at -t 2, most of it at the end of matmuls;
/// with 16·nt and the activation rows reused, 4%). A single
/// token streams the weights once, so each thread first takes one contiguous run of 7/8 of its
/// share (its prefetch stream then runs unbroken, and no chunk starts cold in the middle of
/// another thread's stream), and the last eighth goes in 2·nt small chunks to whichever thread
/// is free, so a thread that starts late or is preempted does not hold the others up. Against
/// 4·nt equal chunks for one token too (an EPYC, -t 2, tg128 alternating, 4 rounds): gemma3
/// best 127.6 -> 139.3 t/s at AVX-512, 123.8 -> 128.8 at AVX2; smollm2 282 -> 325 at AVX2,
/// level at AVX-512; 13 of the 16 pairs faster. Timers around gemma3's matmuls put the gain in the layers'
/// small matrices (2.4-2.7 -> 2.1-2.3 ms a token), each of which eight chunks cut into pieces
/// of 14-134 KiB.
fn chunk_rows(rows: usize, n_tokens: usize, nt: usize, align: usize) -> Vec<(usize, usize)> {
    let up = |v: usize| v.div_ceil(align) * align;
    if nt <= 1 {
        return vec![(0, rows)];
    }
    if n_tokens > 1 {
        let n_chunks = (nt * 16).min(rows.div_ceil(16)).max(1);
        let per = up(rows.div_ceil(n_chunks)).max(1);
        return (0..rows.div_ceil(per))
            .map(|c| (c * per, ((c + 1) * per).min(rows)))
            .collect();
    }
    let big = up(rows * 7 / 8 / nt);
    let head = (big * nt).min(rows);
    let mut chunks: Vec<(usize, usize)> = (0..nt)
        .map(|c| ((c * big).min(head), ((c + 1) * big).min(head)))
        .filter(|(a, b)| a < b)
        .collect();
    let small = up((rows - head).div_ceil(2 * nt)).max(align);
    let mut r = head;
    while r < rows {
        chunks.push((r, (r + small).min(rows)));
        r += small;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows kept from dropped activations (wider or narrower, of more or fewer tokens) quantize
    /// exactly as new ones, for both row formats.
    #[test]
    fn reused_activation_rows_are_as_new() {
        let pool = ThreadPool::new(1);
        let x: Vec<f32> = (0..40 * 1024)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0)
            .collect();
        for (cols, n) in [(1024, 40), (256, 3), (512, 40), (2048, 20), (256, 1)] {
            let xs = &x[..cols * n];
            let a = Activations::new(&pool, GgmlType::Q4_0, xs, n).unwrap();
            let Acts::Q8(rows) = &a.acts else {
                panic!("Q8 rows")
            };
            for (i, r) in rows.iter().enumerate() {
                let mut want = Q8Row::with_cols(cols);
                quantize_q8(&xs[i * cols..(i + 1) * cols], &mut want);
                assert_eq!(
                    (&r.d, &r.s, &r.sum4, &r.q),
                    (&want.d, &want.s, &want.sum4, &want.q)
                );
            }
            let k = Activations::new(&pool, GgmlType::Q4_K, xs, n).unwrap();
            let Acts::Q8K(rows) = &k.acts else {
                panic!("Q8_K rows")
            };
            for (i, r) in rows.iter().enumerate() {
                let mut want = Q8KRow::with_cols(cols);
                quantize_q8k(&xs[i * cols..(i + 1) * cols], &mut want);
                assert_eq!((&r.d, &r.q, &r.bsums), (&want.d, &want.q, &want.bsums));
            }
        }
        assert!(SPARE.with_borrow(|s| !s.q8.is_empty() && !s.q8k.is_empty()));
    }

    #[test]
    fn chunks_cover_every_row_once_on_boundaries() {
        for rows in [1, 15, 16, 17, 100, 256, 640, 2048, 262144, 1001] {
            for n_tokens in [1, 2, 7] {
                for nt in [1, 2, 3, 8] {
                    for align in [1, 16] {
                        let c = chunk_rows(rows, n_tokens, nt, align);
                        let mut at = 0;
                        for &(a, b) in &c {
                            assert_eq!(a, at, "{rows} {n_tokens} {nt} {align}: {c:?}");
                            assert!(a < b && (a % align == 0));
                            at = b;
                        }
                        assert_eq!(at, rows, "{rows} {n_tokens} {nt} {align}: {c:?}");
                    }
                }
            }
        }
        // One token: a contiguous run per thread, then small chunks.
        assert_eq!(chunk_rows(2048, 1, 2, 16)[..2], [(0, 896), (896, 1792)]);
    }

    /// Dequantized W times already dequantized activations `xq` (n rows), in f64.
    fn dequantized_product(w: &QMatrix, xq: &[f32], n: usize) -> Vec<f32> {
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

    /// Dequantized W times the quantized-then-dequantized activations, in f64.
    fn reference(w: &QMatrix, x: &[f32], n: usize) -> Vec<f32> {
        let mut xq = Vec::with_capacity(x.len());
        for r in x.chunks_exact(w.cols) {
            let mut q = Q8Row::default();
            quantize_q8(r, &mut q);
            xq.extend(q.q.iter().enumerate().map(|(i, &v)| v as f32 * q.d[i / 32]));
        }
        dequantized_product(w, &xq, n)
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
        let mut st = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            st = st
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
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
            xq.extend(
                q.q.iter()
                    .enumerate()
                    .map(|(i, &v)| v as f32 * q.d[i / 256]),
            );
        }
        dequantized_product(w, &xq, n)
    }

    /// Every legacy type gives scalar's exact bits at every level this CPU has, one token or a
    /// batch, one thread or two (all follow ggml's summation order).
    #[test]
    fn legacy_types_identical_at_every_level() {
        use crate::quant::testing::{legacy_blocks, Rng, LEGACY};
        let mut rng = Rng::new(0x2545f4914f6cdd1d);
        let (rows, cols) = (40, 256);
        for ty in LEGACY {
            let raw = legacy_blocks(ty, rows * cols / 32, &mut rng);
            let w = QMatrix::new(ty, &raw, rows, cols).unwrap();
            let tiles = Tiles::pack(ty, &raw, rows, cols / 32, serial, &|_| {});
            let x: Vec<f32> = (0..5 * cols).map(|_| rng.unit()).collect();
            for n in [1, 5] {
                let mut want = vec![0f32; n * rows];
                matmul_at(
                    SimdLevel::Scalar,
                    &ThreadPool::new(1),
                    &w,
                    &x[..n * cols],
                    n,
                    &mut want,
                )
                .unwrap();
                for level in levels() {
                    for (threads, packed) in [(1, false), (2, false), (1, true), (2, true)] {
                        // Tiles made at load, or (without) packed as the kernels go.
                        let w = w.with_tiles(tiles.as_ref().filter(|_| packed));
                        let mut y = vec![0f32; n * rows];
                        matmul_at(
                            level,
                            &ThreadPool::new(threads),
                            &w,
                            &x[..n * cols],
                            n,
                            &mut y,
                        )
                        .unwrap();
                        assert!(
                            y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{ty} {level:?} n={n} t={threads} packed={packed}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn float_matmuls_follow_llama_cpp_order() {
        use crate::quant::float::{reference, tests::random_row};
        use crate::quant::testing::Rng;
        let mut rng = Rng::new(0x5851_f42d_4c95_7f2d);
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            // Tiled shapes, a row count tinyBLAS refuses, and columns off its step.
            for (rows, cols) in [(36, 64), (20, 224), (18, 64), (16, 200)] {
                let raw: Vec<u8> = (0..rows)
                    .flat_map(|_| random_row(ty, cols, &mut rng))
                    .collect();
                let w = QMatrix::new(ty, &raw, rows, cols).unwrap();
                let x: Vec<f32> = (0..13 * cols).map(|_| rng.unit() * 3.0).collect();
                let conv = float::FloatActs::new(ty, &x);
                for level in levels() {
                    let order = FloatOrder::of(level);
                    for n in [1, 2, 7, 13] {
                        for (threads, invariant) in [(1, false), (2, false), (2, true)] {
                            let pool = ThreadPool::new(threads);
                            let a = Activations::new(&pool, ty, &x[..n * cols], n)
                                .unwrap()
                                .batch_invariant(invariant);
                            let mut y = vec![0f32; n * rows];
                            matmul_acts_at(level, &pool, vec![(&w, &a, as_uninit(&mut y))])
                                .unwrap();
                            let tiled = !invariant && order.tiled(ty, rows, cols, n);
                            for t in 0..n {
                                let xt = float::act_row(&x, &conv, t, cols);
                                for r in 0..rows {
                                    let want = reference(order, ty, w.row(r), xt, cols, tiled);
                                    assert_eq!(
                                        y[t * rows + r].to_bits(),
                                        want.to_bits(),
                                        "{ty} {level:?} {rows}x{cols} n={n} t={threads} inv={invariant} ({t},{r})"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn serial(n: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..n).for_each(f)
    }

    fn levels() -> Vec<SimdLevel> {
        SimdLevel::ALL
            .into_iter()
            .filter(|&l| available(l))
            .collect()
    }

    #[test]
    fn batch_invariant_matmuls_give_each_token_its_bits_alone() {
        use GgmlType::*;
        let cols = 768;
        for (i, (ty, rows)) in [(Q4_K, 48), (Q4_K, 37), (Q6_K, 48), (Q5_K, 48), (Q3_K, 37)]
            .into_iter()
            .enumerate()
        {
            let data = random_k(ty, rows, cols, i as u64 + 11);
            let w = QMatrix::new(ty, &data, rows, cols).unwrap();
            let tiles = Tiles::pack(ty, &data, rows, cols / 256, serial, &|_| {});
            let packed = w.with_tiles(tiles.as_ref());
            for n in [2, 9, 66] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|j| (((j * 7919 + i * 13) % 1013) as f32 - 506.0) / 300.0)
                    .collect();
                for level in levels() {
                    for (threads, w) in [(1, w), (2, w), (2, packed)] {
                        let pool = ThreadPool::new(threads);
                        let mut y = vec![0f32; n * rows];
                        let a = Activations::new(&pool, w.ty, &x, n)
                            .unwrap()
                            .batch_invariant(true);
                        matmul_acts_at(level, &pool, vec![(&w, &a, as_uninit(&mut y))]).unwrap();
                        for t in 0..n {
                            let mut y1 = vec![0f32; rows];
                            let xt = &x[t * cols..(t + 1) * cols];
                            matmul_at(level, &pool, &w, xt, 1, &mut y1).unwrap();
                            assert!(
                                y1.iter()
                                    .zip(&y[t * rows..])
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{ty} rows {rows} {level:?} n={n} t={threads} token {t}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn kquants_match_reference_at_every_level() {
        use GgmlType::*;
        let cols = 768;
        // 37 rows: Q4_K sums per super-block at every batch size; 48 (a multiple of 8): per 64
        // values for tokens in groups of four below 64 tokens, as llama.cpp's repacked gemm does.
        for (i, (ty, rows)) in [
            (Q4_K, 37),
            (Q4_K, 48),
            (Q6_K, 37),
            (Q5_K, 37),
            (IQ4_XS, 37),
            (Q3_K, 37),
            (Q2_K, 37),
        ]
        .into_iter()
        .enumerate()
        {
            let data = random_k(ty, rows, cols, i as u64 + 1);
            let w = QMatrix::new(ty, &data, rows, cols).unwrap();
            let tiles = Tiles::pack(ty, &data, rows, cols / 256, serial, &|_| {});
            let packed = w.with_tiles(tiles.as_ref());
            for n in [1, 5, 7, 65] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|j| (((j * 7919 + i * 13) % 1013) as f32 - 506.0) / 300.0)
                    .collect();
                let want = reference_k(&w, &x, n);
                assert!(
                    want.iter().any(|v| v.abs() > 1.0),
                    "{ty}: degenerate test data"
                );
                let mut first: Option<Vec<f32>> = None;
                for level in levels() {
                    for (threads, w) in [(1, w), (2, w), (3, w), (1, packed), (2, packed)] {
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
                // One token and a batch give the same bits per token (where llama.cpp's kernels
                // for both sum in one order).
                let same_order =
                    (0..n).all(|t| KOrder::for_batch(ty, rows, n, t) == KOrder::of(ty));
                if n > 1 && same_order {
                    let mut y1 = vec![0f32; rows];
                    for (level, w) in levels().into_iter().flat_map(|l| [(l, w), (l, packed)]) {
                        for t in 0..n {
                            let xt = &x[t * cols..(t + 1) * cols];
                            matmul_at(level, &ThreadPool::new(1), &w, xt, 1, &mut y1).unwrap();
                            let f = first.as_ref().unwrap();
                            assert!(
                                y1.iter()
                                    .zip(&f[t * rows..])
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{ty} {level:?} n={n} token {t}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    /// Q4_K and Q6_K sum in llama.cpp's order (see `kquant::KOrder`), checked against oracles
    /// written from that order.
    fn q4k_q6k_follow_llama_cpp_order() {
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
            let cols = 512;
            let data = random_k(ty, 3, cols, 99);
            let x: Vec<f32> = (0..cols)
                .map(|j| ((j * 31 % 97) as f32 - 48.0) / 20.0)
                .collect();
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

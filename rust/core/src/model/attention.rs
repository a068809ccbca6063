//! Causal grouped-query attention of one layer over the KV caches, in the arithmetic of
//! llama.cpp's CPU flash attention (ggml-cpu `ggml_compute_forward_flash_attn_ext_f16`), so that
//! tokens and probabilities match its. It has three paths, and so do we:
//!
//! - Batches of at least `TILE` tokens (llama.cpp's tiled path): per query head, tiles of up to
//!   64 query rows against 64 cache cells at a time; scores in f32, each one fused multiply-add
//!   chain over the head's values; an online softmax per key tile (ggml's vectorized exp, each
//!   sixteen weights summed in `_mm512_reduce_add_ps`'s order and the tile's sums in f64); values
//!   accumulated in f32, each output one fused multiply-add chain over the tile's cells.
//! - Smaller batches (its one-row path): one pass per (token, head), the query and the value
//!   accumulator rounded to f16, rescaled at each new maximum; the query heads of one KV head
//!   run together, sharing each read of the cache.
//! - A single token over at least `SPLIT_KV_MIN` cells (its split-KV path): the cells cut in one
//!   chunk per thread, each chunk as above, the partial results then combined in f32.
//!
//! Which cells llama.cpp looks at (and so where the split falls) follows its padded KV view
//! (`viewed_cells`). Keys and values are read through each sequence's block table one tile (one
//! block) of one head at a time and widened to f32 there (the AVX-512 one-row kernel reads the f16
//! cells in place and widens them in registers). Caches of other types than f16 (and
//! `--flash-attn off`) take the tiled path for every batch: f32 throughout.

// Kernels index several arrays by the same counter.
#![allow(clippy::needless_range_loop)]

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use crate::cpu::SimdLevel;
use crate::cpu::{simd_dispatch, simd_level};
use crate::kv::{CacheTypes, KvSeq};
use crate::quant::f16::round_f16;
use crate::tensor::{SendPtr, ThreadPool};

use super::ops::expf_ggml;
use super::BatchToken;

/// Query rows and cache cells per tile (llama.cpp's GGML_FA_TILE_Q and GGML_FA_TILE_KV); batches
/// of at least this many tokens take the tiled path.
pub const TILE: usize = 64;

/// A single token whose view of the cache has at least this many cells takes the split-KV path.
const SPLIT_KV_MIN: usize = 512;

/// `--flash-attn`. llama.cpp's CPU backend runs flash attention for `on` and `auto` alike (the
/// paths above); `off` here is the tiled f32 path for every batch size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlashAttn {
    #[default]
    Auto,
    On,
    Off,
}

impl FlashAttn {
    pub fn parse(s: &str) -> crate::error::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "on" | "true" | "1" | "enabled" => Ok(Self::On),
            "off" | "false" | "0" | "disabled" => Ok(Self::Off),
            other => Err(crate::error::Error::invalid(format!(
                "unknown flash attention setting '{other}' (on, off or auto)"
            ))),
        }
    }
}

/// What one layer's attention needs to know.
pub struct AttnParams {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    /// Sliding window (0: none) for this layer.
    pub window: usize,
    pub flash: FlashAttn,
    /// Deterministic mode: the tiled path for every batch (a row's result then depends on its
    /// own query and cells only).
    pub fixed: bool,
}

/// Cells of llama.cpp's KV view for a sequence whose last position is `top`: the used cells
/// padded to a multiple of 256 (at least 256), at most the cache's size.
fn viewed_cells(top: usize, n_ctx: usize) -> usize {
    (top + 1).next_multiple_of(256).min(n_ctx)
}

/// One KV head of one layer of a sequence's cache, read a tile (one block) at a time through
/// its block table.
struct HeadKv<'a> {
    cache: KvSeq<'a>,
    layer: usize,
    cols: Range<usize>,
}

impl HeadKv<'_> {
    fn keys(&self, pos0: usize, n: usize, dst: &mut [f32]) {
        self.cache
            .widen_keys(self.layer, pos0, n, self.cols.clone(), dst)
    }
    fn values(&self, pos0: usize, n: usize, dst: &mut [f32]) {
        self.cache
            .widen_values(self.layer, pos0, n, self.cols.clone(), dst)
    }
}

/// One query row: its vector, the positions it attends to ([lo, hi]) and where its `head_dim`
/// outputs go.
struct Row<'a> {
    q: &'a [f32],
    lo: usize,
    hi: usize,
    out: *mut f32,
}

/// att[i, h] = softmax(q[i, h] · K[seq_i, lo..=pos_i]) · V[...] for every token i of `batch` and
/// query head h, with keys/values of `layer` taken from sequence `caches[seq]`.
pub fn attention(
    pool: &ThreadPool,
    p: &AttnParams,
    batch: &[BatchToken],
    q: &[f32],
    caches: &[KvSeq],
    layer: usize,
    att: &mut [f32],
) {
    let (hd, qd) = (p.head_dim, p.n_head * p.head_dim);
    let n = batch.len();
    assert!(q.len() == n * qd && att.len() == n * qd);
    let group = p.n_head / p.n_head_kv;
    let out = SendPtr(att.as_mut_ptr());
    let head_kv = |seq: usize, h: usize| HeadKv {
        cache: caches[seq],
        layer,
        cols: (h / group) * hd..(h / group + 1) * hd,
    };
    let row = |i: usize, h: usize| {
        let t = batch[i];
        let at = i * qd + h * hd;
        Row {
            q: &q[at..at + hd],
            lo: if p.window > 0 {
                (t.pos + 1).saturating_sub(p.window)
            } else {
                0
            },
            hi: t.pos,
            out: out.get().wrapping_add(at),
        }
    };
    let f16_cache = batch
        .iter()
        .all(|t| caches[t.seq].types() == CacheTypes::default());
    if p.fixed || p.flash == FlashAttn::Off || !f16_cache || n >= TILE {
        // Tiles of up to TILE batch-adjacent tokens of one sequence, one task per (tile, head).
        let mut tiles: Vec<(usize, usize)> = Vec::new();
        for (i, t) in batch.iter().enumerate() {
            match tiles.last_mut() {
                Some((s, e)) if *e - *s < TILE && batch[*s].seq == t.seq => *e += 1,
                _ => tiles.push((i, i + 1)),
            }
        }
        pool.run(tiles.len() * p.n_head, &|task| {
            let ((t0, t1), h) = (tiles[task / p.n_head], task % p.n_head);
            let rows: Vec<Row> = (t0..t1).map(|i| row(i, h)).collect();
            let kv = head_kv(batch[t0].seq, h);
            // Compiled for the CPU's level: its scalar loops (the softmax's exp, the transposes)
            // get fused multiply-adds instead of calls to libm's fmaf, and vectors.
            simd_dispatch(
                #[inline(always)]
                || {
                    // SAFETY: each row's output (one token and head) belongs to this task only.
                    unsafe { tile_rows(&kv, hd, &rows, p.scale) }
                },
            );
        });
        return;
    }
    let single = batch[0];
    let n_kv = viewed_cells(single.pos, caches[single.seq].n_ctx());
    let n_chunks = pool.n_threads();
    if n == 1 && n_kv >= SPLIT_KV_MIN && n_chunks > 1 {
        // Split-KV: chunk c covers cells [c·size, (c+1)·size) of the view, for every KV head
        // (its query heads together).
        let size = n_kv.div_ceil(n_chunks);
        let stride = 2 + hd;
        let mut partials = vec![0f32; p.n_head * n_chunks * stride];
        let parts = SendPtr(partials.as_mut_ptr());
        let n_kv_heads = p.n_head / group;
        pool.run(n_kv_heads * n_chunks, &|task| {
            let (g, c) = (task / n_chunks, task % n_chunks);
            let r = row(0, g * group);
            let lo = r.lo.max(c * size);
            let hi = r.hi.min((c + 1) * size - 1);
            // SAFETY: each (head, chunk) owns its `stride` values of `partials`, and this task
            // owns chunk c of its group's heads.
            let mut heads = group_rows(g * group..(g + 1) * group, |h| {
                let at = parts.get().wrapping_add((h * n_chunks + c) * stride + 2);
                (row(0, h).q, unsafe {
                    std::slice::from_raw_parts_mut(at, hd)
                })
            });
            one_chunk(&head_kv(single.seq, g * group), &mut heads, lo, hi, p.scale);
            for (i, r) in heads.iter().enumerate() {
                let h = g * group + i;
                // SAFETY: as above (the two values before the head's chunk's accumulator).
                unsafe {
                    let at = parts.get().wrapping_add((h * n_chunks + c) * stride);
                    *at = r.m;
                    *at.add(1) = r.sum;
                }
            }
        });
        for h in 0..p.n_head {
            // SAFETY: the head's output slice lies inside `att`, which nothing else touches now.
            let o = unsafe { std::slice::from_raw_parts_mut(row(0, h).out, hd) };
            let own = &partials[h * n_chunks * stride..(h + 1) * n_chunks * stride];
            reduce_partials(own.chunks_exact(stride), o);
        }
        return;
    }
    // One task per (token, KV head, part of its query heads): a group's heads share each widened
    // tile, and a group is cut into parts only when there are fewer (token, KV head) pairs than
    // threads (a decode step of a model with one KV head, gemma3's, would otherwise run on one
    // thread while the others wait). Each head's arithmetic is its own whatever its part.
    let n_kv_heads = p.n_head / group;
    let parts = pool.n_threads().div_ceil(n * n_kv_heads).clamp(1, group);
    let n_tasks = n * n_kv_heads * parts;
    let per = n_tasks
        .div_ceil((pool.n_threads() * 16).min(n_tasks).max(1))
        .max(1);
    pool.run(n_tasks.div_ceil(per), &|c| {
        for task in c * per..((c + 1) * per).min(n_tasks) {
            let (i, g, part) = (
                task / (n_kv_heads * parts),
                task / parts % n_kv_heads,
                task % parts,
            );
            let r0 = row(i, g * group);
            let heads_of = g * group + part * group / parts..g * group + (part + 1) * group / parts;
            let mut heads = group_rows(heads_of, |h| {
                let r = row(i, h);
                // SAFETY: each (token, head) slice of `att` is written by exactly one task.
                (r.q, unsafe { std::slice::from_raw_parts_mut(r.out, hd) })
            });
            one_chunk(
                &head_kv(batch[i].seq, g * group),
                &mut heads,
                r0.lo,
                r0.hi,
                p.scale,
            );
            for r in heads.iter_mut() {
                let inv = if r.sum == 0.0 { 0.0 } else { 1.0 / r.sum };
                r.acc.iter_mut().for_each(|v| *v *= inv);
            }
        }
    });
}

/// Combine the split-KV partials (max, sum, unnormalized values) of one head in chunk order, as
/// `ggml_flash_attn_ext_reduce_partials` does (its build contracts both updates into one fused
/// multiply-add each: a·so + (b·sn)), into `out`.
fn reduce_partials<'a>(parts: impl Iterator<Item = &'a [f32]>, out: &mut [f32]) {
    let (mut m, mut s) = (f32::NEG_INFINITY, 0f32);
    out.fill(0.0);
    for part in parts {
        let (mc, sc, vc) = (part[0], part[1], &part[2..]);
        if sc == 0.0 {
            continue;
        }
        let mn = m.max(mc);
        let (so, sn) = ((m - mn).exp(), (mc - mn).exp());
        for (o, &v) in out.iter_mut().zip(vc) {
            *o = o.mul_add(so, v * sn);
        }
        s = s.mul_add(so, sc * sn);
        m = mn;
    }
    if s != 0.0 {
        let inv = 1.0 / s;
        out.iter_mut().for_each(|v| *v *= inv);
    }
}

/// softmax(q·K^T · scale) · V for one head's query rows (llama.cpp's tiled path; see the module
/// comment), written to each row's `out`.
///
/// The scores are computed transposed, one cell per row and one query per column (`st`, `ld`
/// lanes a cell): the queries are transposed once, the keys are used as they are widened, and the
/// softmax runs sixteen queries to a vector. Each score is still one fused multiply-add chain over
/// the head's values, and each query's softmax the same operations in the same order, so the bits
/// are those of one query at a time.
///
/// # Safety
/// Every row's `out` points to `hd` writable values that nothing else accesses.
#[inline(always)]
unsafe fn tile_rows(kv: &HeadKv, hd: usize, rows: &[Row], scale: f32) {
    let nr = rows.len();
    let ld = nr.next_multiple_of(16);
    let mut qt = vec![0f32; hd * ld];
    for (r, row) in rows.iter().enumerate() {
        for (d, &v) in row.q.iter().enumerate() {
            qt[d * ld + r] = v;
        }
    }
    // Each lane's visible cells; the padding lanes see none.
    let lo: Vec<usize> = (0..ld)
        .map(|r| rows.get(r).map_or(usize::MAX, |x| x.lo))
        .collect();
    let hi: Vec<usize> = (0..ld).map(|r| rows.get(r).map_or(0, |x| x.hi)).collect();
    let mut keys = vec![0f32; TILE * hd];
    let mut vals = vec![0f32; TILE * hd];
    let mut st = vec![0f32; TILE * ld];
    let mut acc = vec![0f32; nr * hd];
    let mut mx = vec![f32::NEG_INFINITY; ld];
    let mut sum = vec![0f32; ld];
    let klo = rows.iter().map(|r| r.lo).min().unwrap_or(0);
    let khi = rows.iter().map(|r| r.hi).max().unwrap_or(0);
    // Cell tiles start at multiples of TILE, like llama.cpp's over its view of the cache.
    let mut c0 = klo / TILE * TILE;
    while c0 <= khi {
        let w = (khi + 1 - c0).min(TILE);
        let c1 = c0 + w - 1;
        if rows.iter().all(|r| r.lo > c1 || r.hi < c0) {
            c0 += TILE;
            continue;
        }
        kv.keys(c0, w, &mut keys[..w * hd]);
        st[..w * ld].fill(0.0);
        gemm_acc(&mut st, ld, &keys, hd, 1, &qt, ld, w, hd, ld);
        let mut rescale = |r: usize, ms: f32| {
            if r < nr {
                acc[r * hd..(r + 1) * hd].iter_mut().for_each(|v| *v *= ms);
            }
        };
        let tile = ScoreTile {
            c0,
            w,
            ld,
            lo: &lo,
            hi: &hi,
            scale,
        };
        softmax_lanes(&tile, &mut st, &mut mx, &mut sum, &mut rescale);
        kv.values(c0, w, &mut vals[..w * hd]);
        gemm_acc(&mut acc, hd, &st, 1, ld, &vals, hd, nr, w, hd);
        c0 += TILE;
    }
    for (r, row) in rows.iter().enumerate() {
        let inv = if sum[r] == 0.0 { 0.0 } else { 1.0 / sum[r] };
        for d in 0..hd {
            *row.out.add(d) = acc[r * hd + d] * inv;
        }
    }
}

/// One key tile's transposed scores: cells c0..c0 + w (row j of the tile is cell c0 + j; rows up
/// to TILE are read as masked), `ld` query lanes a row, lane r seeing cells lo[r]..=hi[r].
struct ScoreTile<'a> {
    c0: usize,
    w: usize,
    ld: usize,
    lo: &'a [usize],
    hi: &'a [usize],
    scale: f32,
}

/// The online-softmax step of one key tile for every lane of `st`: the scores scaled, the cells a
/// lane does not see at −∞, the lane's max updated (`rescale(r, e^(old − new))` for each lane
/// whose max grew, its sum scaled too), the scores replaced by e^(s − max) and their sum added
/// (`softmax_tile`'s order). A lane that sees no cell of the tile gets zeros and keeps its state.
#[inline(always)]
fn softmax_lanes(
    t: &ScoreTile,
    st: &mut [f32],
    mx: &mut [f32],
    sum: &mut [f32],
    rescale: &mut impl FnMut(usize, f32),
) {
    assert!(st.len() >= TILE * t.ld && mx.len() >= t.ld && sum.len() >= t.ld);
    assert!(t.lo.len() >= t.ld && t.hi.len() >= t.ld && t.ld.is_multiple_of(16));
    #[cfg(target_arch = "x86_64")]
    if simd_level() == SimdLevel::Avx512 {
        // SAFETY: the AVX-512 level is only chosen when the CPU has it; the lengths are checked.
        unsafe { x86::softmax_lanes_512(t, st, mx, sum, rescale) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(simd_level(), SimdLevel::Avx2 { .. }) {
        // SAFETY: as above, for AVX2.
        unsafe { x86::softmax_lanes_avx2(t, st, mx, sum, rescale) };
        return;
    }
    softmax_lanes_portable(t, st, mx, sum, rescale);
}

/// `softmax_lanes` one lane at a time.
#[inline(always)]
fn softmax_lanes_portable(
    t: &ScoreTile,
    st: &mut [f32],
    mx: &mut [f32],
    sum: &mut [f32],
    rescale: &mut impl FnMut(usize, f32),
) {
    let c1 = t.c0 + t.w - 1;
    for r in 0..t.ld {
        let (a, b) = (t.lo[r].max(t.c0), t.hi[r].min(c1));
        let mut v = [0f32; TILE];
        if a <= b {
            for (j, vj) in v.iter_mut().enumerate() {
                *vj = if (a - t.c0..=b - t.c0).contains(&j) {
                    st[j * t.ld + r] * t.scale
                } else {
                    f32::NEG_INFINITY
                };
            }
            let tile_max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let m = mx[r].max(tile_max);
            if m > mx[r] {
                let ms = (mx[r] - m).exp();
                rescale(r, ms);
                sum[r] *= ms;
            }
            mx[r] = m;
            sum[r] = (sum[r] as f64 + softmax_tile(&mut v, m)) as f32;
        }
        for (j, &vj) in v.iter().enumerate() {
            st[j * t.ld + r] = vj;
        }
    }
}

/// c[i][j] += Σ_k a[i][k] · b[k][j] over row-major c and b (leading dimensions `ldc`, `ldb`), a's
/// element (i, k) at `i·lda + k·ak` (`ak` 1: row-major; `lda` 1: a transposed), each element one
/// fused multiply-add chain in k order (ggml's `simd_gemm`).
#[allow(clippy::too_many_arguments)]
fn gemm_acc(
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    ak: usize,
    b: &[f32],
    ldb: usize,
    m: usize,
    k: usize,
    n: usize,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(
        c.len() >= (m - 1) * ldc + n
            && a.len() > (m - 1) * lda + (k - 1) * ak
            && b.len() >= (k - 1) * ldb + n
    );
    match simd_level() {
        // SAFETY: the level is only chosen when the CPU has these features; the lengths are
        // checked above.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::gemm_acc_512(c, ldc, a, lda, ak, b, ldb, m, k, n) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 { .. } => unsafe {
            x86::gemm_acc_avx2(c, ldc, a, lda, ak, b, ldb, m, k, n)
        },
        _ => gemm_portable(c, ldc, a, lda, ak, b, ldb, m, k, n, 0),
    }
}

/// `gemm_acc` for the columns from `j0` on, one element at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_portable(
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    ak: usize,
    b: &[f32],
    ldb: usize,
    m: usize,
    k: usize,
    n: usize,
    j0: usize,
) {
    if j0 >= n {
        // Nothing left (the SIMD kernels took every column): skip the m·k empty passes, which
        // cost a prefill 4% of its time.
        return;
    }
    for i in 0..m {
        for kk in 0..k {
            let x = a[i * lda + kk * ak];
            let br = &b[kk * ldb + j0..kk * ldb + n];
            for (cv, &bv) in c[i * ldc + j0..i * ldc + n].iter_mut().zip(br) {
                *cv = x.mul_add(bv, *cv);
            }
        }
    }
}

/// Sixteen values summed in the order of GCC's `_mm512_reduce_add_ps`.
#[inline(always)]
fn reduce16(a: &[f32]) -> f32 {
    let t: [f32; 8] = std::array::from_fn(|i| a[8 + i] + a[i]);
    let u: [f32; 4] = std::array::from_fn(|i| t[4 + i] + t[i]);
    (u[0] + u[2]) + (u[1] + u[3])
}

/// s[j] = exp(s[j] − m) for a tile's scores; their sum, sixteen at a time in f64
/// (`ggml_vec_soft_max_f32`).
#[inline(always)]
fn softmax_tile(s: &mut [f32; TILE], m: f32) -> f64 {
    let mut sum = 0f64;
    for g in s.chunks_exact_mut(16) {
        g.iter_mut().for_each(|v| *v = expf_ggml(*v - m));
        sum += reduce16(g) as f64;
    }
    sum
}

/// One query head's state in llama.cpp's one-row pass: its query rounded to f16, its value
/// accumulator (unnormalized), the running max and sum.
struct OneRow<'a> {
    q: Vec<f32>,
    acc: &'a mut [f32],
    m: f32,
    sum: f32,
}

impl<'a> OneRow<'a> {
    fn new(q: &[f32], acc: &'a mut [f32]) -> Self {
        let mut q = q.to_vec();
        round_f16_slice(&mut q);
        acc.fill(0.0);
        Self {
            q,
            acc,
            m: f32::NEG_INFINITY,
            sum: 0.0,
        }
    }
}

/// The one-row state of query heads `hs` (one KV head's), each from its (query, accumulator).
fn group_rows<'a>(
    hs: Range<usize>,
    f: impl Fn(usize) -> (&'a [f32], &'a mut [f32]),
) -> Vec<OneRow<'a>> {
    hs.map(|h| {
        let (q, acc) = f(h);
        OneRow::new(q, acc)
    })
    .collect()
}

/// llama.cpp's one-row pass of each of `heads` (query heads sharing one KV head) over positions
/// [lo, hi]: an online softmax, the value accumulator rounded to f16 at each step; each head's
/// arithmetic is its own, in llama.cpp's order, and the cache tiles are widened once for all of
/// them. Leaves each head's unnormalized values in its `acc`, its (max, sum) in `m`, `sum`;
/// (-inf, 0) when lo > hi.
fn one_chunk(kv: &HeadKv, heads: &mut [OneRow], lo: usize, hi: usize, scale: f32) {
    match simd_level() {
        // SAFETY: the level is only chosen when the CPU reports these features.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { one_chunk_avx512(kv, heads, lo, hi, scale) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 { .. } => unsafe { one_chunk_avx2(kv, heads, lo, hi, scale) },
        _ => one_chunk_kernel(kv, heads, lo, hi, scale),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn one_chunk_avx2(kv: &HeadKv, heads: &mut [OneRow], lo: usize, hi: usize, scale: f32) {
    if !x86::one_rows_avx2(kv, heads, lo, hi, scale) {
        one_chunk_kernel(kv, heads, lo, hi, scale)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn one_chunk_avx512(kv: &HeadKv, heads: &mut [OneRow], lo: usize, hi: usize, scale: f32) {
    if !x86::one_rows_512(kv, heads, lo, hi, scale) {
        one_chunk_kernel(kv, heads, lo, hi, scale)
    }
}

#[inline(always)]
fn one_chunk_kernel(kv: &HeadKv, heads: &mut [OneRow], lo: usize, hi: usize, scale: f32) {
    let Some(first) = heads.first() else {
        return;
    };
    let hd = first.q.len();
    let mut keys = vec![0f32; TILE.min(hi.wrapping_sub(lo).wrapping_add(1)) * hd];
    let mut vals = keys.clone();
    let mut c0 = lo;
    while c0 <= hi {
        let w = (hi + 1 - c0).min(TILE);
        kv.keys(c0, w, &mut keys[..w * hd]);
        kv.values(c0, w, &mut vals[..w * hd]);
        // Cell-major: the heads' accumulator chains (each a fused multiply-add and two f16
        // conversions per cell) are independent, so interleaving them hides their latency.
        for j in 0..w {
            for r in heads.iter_mut() {
                let s = dot_f16_order(&r.q, &keys[j * hd..(j + 1) * hd]) * scale;
                let mut ms = 1.0;
                let mut vs = 1.0;
                if s > r.m {
                    ms = (r.m - s).exp();
                    r.m = s;
                    r.acc.iter_mut().for_each(|a| *a *= ms);
                    round_f16_slice(r.acc);
                } else {
                    vs = (s - r.m).exp();
                }
                for (a, &v) in r.acc.iter_mut().zip(&vals[j * hd..(j + 1) * hd]) {
                    *a = v.mul_add(vs, *a);
                }
                round_f16_slice(r.acc);
                // ggml's build contracts this into one fused multiply-add; so do we, to round
                // alike.
                r.sum = r.sum.mul_add(ms, vs);
            }
        }
        c0 += w;
    }
}

/// q·k for f16-valued inputs in the order of ggml's AVX-512 `ggml_vec_dot_f16`: four 16-lane
/// accumulators over steps of 64, folded (0+2)+(1+3), then the 16 lanes halved three times; the
/// tail (head sizes not a multiple of 64) added in f64.
#[inline(always)]
fn dot_f16_order(q: &[f32], k: &[f32]) -> f32 {
    let np = q.len() & !63;
    let mut s = [[0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, sj) in s.iter_mut().enumerate() {
            let (qj, kj) = (
                &q[i + 16 * j..i + 16 * j + 16],
                &k[i + 16 * j..i + 16 * j + 16],
            );
            for l in 0..16 {
                sj[l] = qj[l].mul_add(kj[l], sj[l]);
            }
        }
    }
    let mut x = [0f32; 16];
    for l in 0..16 {
        x[l] = (s[0][l] + s[2][l]) + (s[1][l] + s[3][l]);
    }
    let mut t = [0f32; 8];
    for i in 0..8 {
        t[i] = x[i + 8] + x[i];
    }
    let u = [t[4] + t[0], t[5] + t[1], t[6] + t[2], t[7] + t[3]];
    let mut sum = ((u[0] + u[2]) + (u[1] + u[3])) as f64;
    for (a, b) in q[np..].iter().zip(&k[np..]) {
        sum += (a * b) as f64;
    }
    sum as f32
}

/// Round every value to the nearest f16 (ties to even), in place.
#[inline(always)]
fn round_f16_slice(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() != SimdLevel::Scalar {
        // SAFETY: F16C and AVX are present whenever the level is not Scalar.
        unsafe { x86::round_f16_slice(x) };
        return;
    }
    x.iter_mut().for_each(|v| *v = round_f16(*v));
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::model::ops::x86::{expf_ggml_512, expf_ggml_avx2};
    use crate::quant::f16::round_f16;
    use crate::quant::x86::hsum_f32_8;

    use super::{gemm_portable, HeadKv, OneRow, ScoreTile, TILE};

    /// Sixteen f32 lanes: one AVX-512 register, or two AVX2 ones (lanes 0..8 first), so that the
    /// one-row kernel is written once for both levels (the same lane operations, the same bits).
    trait F32x16: Copy {
        unsafe fn zero() -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        unsafe fn splat(v: f32) -> Self;
        unsafe fn add(self, b: Self) -> Self;
        unsafe fn mul(self, b: Self) -> Self;
        /// self·b + c, fused.
        unsafe fn fmadd(self, b: Self, c: Self) -> Self;
        /// Each lane rounded to f16 and back.
        unsafe fn round_f16(self) -> Self;
        /// Sixteen f16 at `p`, widened.
        unsafe fn widen(p: *const u8) -> Self;
        /// Lanes 8..16 plus lanes 0..8, then `hsum_f32_8`: ggml's fold of a sixteen-lane sum.
        unsafe fn fold(self) -> f32;
    }

    impl F32x16 for __m512 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self)
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            _mm512_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            _mm512_add_ps(self, b)
        }
        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            _mm512_mul_ps(self, b)
        }
        #[inline(always)]
        unsafe fn fmadd(self, b: Self, c: Self) -> Self {
            _mm512_fmadd_ps(self, b, c)
        }
        #[inline(always)]
        unsafe fn round_f16(self) -> Self {
            _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(self))
        }
        #[inline(always)]
        unsafe fn widen(p: *const u8) -> Self {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }
        #[inline(always)]
        unsafe fn fold(self) -> f32 {
            let t = _mm256_add_ps(
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self))),
                _mm512_castps512_ps256(self),
            );
            hsum_f32_8(t)
        }
    }

    /// Two AVX2 registers as sixteen lanes (see `F32x16`).
    #[derive(Clone, Copy)]
    struct Avx2x2(__m256, __m256);

    impl F32x16 for Avx2x2 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2x2(_mm256_setzero_ps(), _mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2x2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0);
            _mm256_storeu_ps(p.add(8), self.1);
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx2x2(_mm256_set1_ps(v), _mm256_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            Avx2x2(_mm256_add_ps(self.0, b.0), _mm256_add_ps(self.1, b.1))
        }
        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            Avx2x2(_mm256_mul_ps(self.0, b.0), _mm256_mul_ps(self.1, b.1))
        }
        #[inline(always)]
        unsafe fn fmadd(self, b: Self, c: Self) -> Self {
            Avx2x2(
                _mm256_fmadd_ps(self.0, b.0, c.0),
                _mm256_fmadd_ps(self.1, b.1, c.1),
            )
        }
        #[inline(always)]
        unsafe fn round_f16(self) -> Self {
            let r = |v: __m256| _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
            Avx2x2(r(self.0), r(self.1))
        }
        #[inline(always)]
        unsafe fn widen(p: *const u8) -> Self {
            Avx2x2(
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i)),
            )
        }
        #[inline(always)]
        unsafe fn fold(self) -> f32 {
            hsum_f32_8(_mm256_add_ps(self.1, self.0))
        }
    }

    /// `super::one_chunk_kernel` for head sizes 64, 128 and 256 (false for others, left
    /// undone), the same operations in the same order per head: the query and the f16-rounded
    /// accumulator live in registers for the whole pass instead of being stored and reloaded for
    /// every cell, and for head size 64 up to three heads go cell by cell together (a dozen
    /// accumulator registers), so their independent accumulator chains (a fused multiply-add and
    /// two f16 conversions per cell) overlap.
    ///
    /// # Safety
    /// The CPU has AVX-512F and F16C; every head's `q` and `acc` hold the head size.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn one_rows_512(
        kv: &HeadKv,
        heads: &mut [OneRow],
        lo: usize,
        hi: usize,
        scale: f32,
    ) -> bool {
        by_head_size::<__m512>(kv, heads, lo, hi, scale)
    }

    /// `one_rows_512` with AVX2 registers (the query and accumulator spill where sixteen
    /// registers do not hold them).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; every head's `q` and `acc` hold the head size.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn one_rows_avx2(
        kv: &HeadKv,
        heads: &mut [OneRow],
        lo: usize,
        hi: usize,
        scale: f32,
    ) -> bool {
        by_head_size::<Avx2x2>(kv, heads, lo, hi, scale)
    }

    #[inline(always)]
    unsafe fn by_head_size<V: F32x16>(
        kv: &HeadKv,
        heads: &mut [OneRow],
        lo: usize,
        hi: usize,
        scale: f32,
    ) -> bool {
        match heads.first().map_or(0, |r| r.q.len()) {
            64 => one_rows::<V, 4>(kv, heads, lo, hi, scale),
            128 => one_rows::<V, 8>(kv, heads, lo, hi, scale),
            256 => one_rows::<V, 16>(kv, heads, lo, hi, scale),
            _ => return false,
        }
        true
    }

    #[inline(always)]
    unsafe fn one_rows<V: F32x16, const N: usize>(
        kv: &HeadKv,
        heads: &mut [OneRow],
        lo: usize,
        hi: usize,
        scale: f32,
    ) {
        let hd = 16 * N;
        for r in heads.iter() {
            assert!(r.q.len() == hd && r.acc.len() == hd && kv.cols.len() == hd);
        }
        let mut h0 = 0;
        while h0 < heads.len() {
            let left = heads.len() - h0;
            let part = &mut heads[h0..];
            h0 += match (N, left) {
                (4, 1) => pass::<V, N, 1>(kv, part, lo, hi, scale),
                (4, 2) => pass::<V, N, 2>(kv, part, lo, hi, scale),
                (4, _) => pass::<V, N, 3>(kv, part, lo, hi, scale),
                _ => pass::<V, N, 1>(kv, part, lo, hi, scale),
            };
        }
    }

    /// The first H heads of `heads` over [lo, hi], the f16 cache read in place (widening is
    /// exact, so converting in registers gives the widened tile's values); returns H.
    #[inline(always)]
    unsafe fn pass<V: F32x16, const N: usize, const H: usize>(
        kv: &HeadKv,
        heads: &mut [OneRow],
        lo: usize,
        hi: usize,
        scale: f32,
    ) -> usize {
        let q: [[V; N]; H] = std::array::from_fn(|h| {
            std::array::from_fn(|i| V::load(heads[h].q.as_ptr().add(16 * i)))
        });
        let mut acc = [[V::zero(); N]; H];
        let mut m = [f32::NEG_INFINITY; H];
        let mut sum = [0f32; H];
        let stride = kv.cache.f16_row_bytes();
        let n_cells = if lo > hi { 0 } else { hi - lo + 1 };
        let read = kv
            .cache
            .f16_runs(kv.layer, lo, n_cells, kv.cols.start, |ks, vs, n, _| {
                assert!(n == 0 || ks.len() >= (n - 1) * stride + 32 * N);
                assert!(vs.len() == ks.len());
                for j in 0..n {
                    let kp = ks.as_ptr().add(j * stride);
                    let vp = vs.as_ptr().add(j * stride);
                    for h in 0..H {
                        // `dot_f16_order`: four accumulators over steps of 64, folded (0+2)+(1+3),
                        // then the sixteen lanes halved three times.
                        let mut d = [V::zero(); 4];
                        for i in 0..N {
                            d[i % 4] = q[h][i].fmadd(V::widen(kp.add(32 * i)), d[i % 4]);
                        }
                        let s = (d[0].add(d[2])).add(d[1].add(d[3])).fold() * scale;
                        let mut ms = 1.0;
                        let mut vs = 1.0;
                        if s > m[h] {
                            ms = (m[h] - s).exp();
                            m[h] = s;
                            let f = V::splat(ms);
                            for a in acc[h].iter_mut() {
                                *a = a.mul(f).round_f16();
                            }
                        } else {
                            vs = (s - m[h]).exp();
                        }
                        let f = V::splat(vs);
                        for (i, a) in acc[h].iter_mut().enumerate() {
                            *a = V::widen(vp.add(32 * i)).fmadd(f, *a).round_f16();
                        }
                        sum[h] = sum[h].mul_add(ms, vs);
                    }
                }
            });
        assert!(read.is_some(), "the one-row path reads an f16 cache");
        for h in 0..H {
            for i in 0..N {
                acc[h][i].store(heads[h].acc.as_mut_ptr().add(16 * i));
            }
            heads[h].m = m[h];
            heads[h].sum = sum[h];
        }
        H
    }

    /// `super::gemm_acc` with sixteen-lane registers: blocks of four rows by 64 columns, then by
    /// 16, the last columns one at a time (the same chains either way).
    ///
    /// # Safety
    /// The CPU has AVX-512F; the slices hold the matrices (`super::gemm_acc` checks).
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_acc_512(
        c: &mut [f32],
        ldc: usize,
        a: &[f32],
        lda: usize,
        ak: usize,
        b: &[f32],
        ldb: usize,
        m: usize,
        k: usize,
        n: usize,
    ) {
        let mut j0 = 0;
        while j0 + 64 <= n {
            block_512::<4>(
                c.as_mut_ptr().add(j0),
                ldc,
                a.as_ptr(),
                lda,
                ak,
                b.as_ptr().add(j0),
                ldb,
                m,
                k,
            );
            j0 += 64;
        }
        while j0 + 16 <= n {
            block_512::<1>(
                c.as_mut_ptr().add(j0),
                ldc,
                a.as_ptr(),
                lda,
                ak,
                b.as_ptr().add(j0),
                ldb,
                m,
                k,
            );
            j0 += 16;
        }
        gemm_portable(c, ldc, a, lda, ak, b, ldb, m, k, n, j0);
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_512<const RN: usize>(
        c: *mut f32,
        ldc: usize,
        a: *const f32,
        lda: usize,
        ak: usize,
        b: *const f32,
        ldb: usize,
        m: usize,
        k: usize,
    ) {
        let mut i0 = 0;
        while i0 < m {
            let rows = (m - i0).min(4);
            let mut acc = [[_mm512_setzero_ps(); RN]; 4];
            let mut ar = [a; 4];
            for i in 0..4 {
                // Missing rows of the last block repeat its last row; their results are dropped.
                ar[i] = a.add((i0 + i.min(rows - 1)) * lda);
            }
            for i in 0..rows {
                for r in 0..RN {
                    acc[i][r] = _mm512_loadu_ps(c.add((i0 + i) * ldc + 16 * r));
                }
            }
            for kk in 0..k {
                let mut bv = [_mm512_setzero_ps(); RN];
                for r in 0..RN {
                    bv[r] = _mm512_loadu_ps(b.add(kk * ldb + 16 * r));
                }
                for i in 0..4 {
                    let x = _mm512_set1_ps(*ar[i].add(kk * ak));
                    for r in 0..RN {
                        acc[i][r] = _mm512_fmadd_ps(x, bv[r], acc[i][r]);
                    }
                }
            }
            for i in 0..rows {
                for r in 0..RN {
                    _mm512_storeu_ps(c.add((i0 + i) * ldc + 16 * r), acc[i][r]);
                }
            }
            i0 += 4;
        }
    }

    /// `super::gemm_acc` with eight-lane registers: blocks of four rows by 16 columns, then by
    /// 8, the last columns one at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the slices hold the matrices (`super::gemm_acc` checks).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_acc_avx2(
        c: &mut [f32],
        ldc: usize,
        a: &[f32],
        lda: usize,
        ak: usize,
        b: &[f32],
        ldb: usize,
        m: usize,
        k: usize,
        n: usize,
    ) {
        let mut j0 = 0;
        while j0 + 16 <= n {
            block_avx2::<2>(
                c.as_mut_ptr().add(j0),
                ldc,
                a.as_ptr(),
                lda,
                ak,
                b.as_ptr().add(j0),
                ldb,
                m,
                k,
            );
            j0 += 16;
        }
        while j0 + 8 <= n {
            block_avx2::<1>(
                c.as_mut_ptr().add(j0),
                ldc,
                a.as_ptr(),
                lda,
                ak,
                b.as_ptr().add(j0),
                ldb,
                m,
                k,
            );
            j0 += 8;
        }
        gemm_portable(c, ldc, a, lda, ak, b, ldb, m, k, n, j0);
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block_avx2<const RN: usize>(
        c: *mut f32,
        ldc: usize,
        a: *const f32,
        lda: usize,
        ak: usize,
        b: *const f32,
        ldb: usize,
        m: usize,
        k: usize,
    ) {
        let mut i0 = 0;
        while i0 < m {
            let rows = (m - i0).min(4);
            let mut acc = [[_mm256_setzero_ps(); RN]; 4];
            let mut ar = [a; 4];
            for i in 0..4 {
                ar[i] = a.add((i0 + i.min(rows - 1)) * lda);
            }
            for i in 0..rows {
                for r in 0..RN {
                    acc[i][r] = _mm256_loadu_ps(c.add((i0 + i) * ldc + 8 * r));
                }
            }
            for kk in 0..k {
                let mut bv = [_mm256_setzero_ps(); RN];
                for r in 0..RN {
                    bv[r] = _mm256_loadu_ps(b.add(kk * ldb + 8 * r));
                }
                for i in 0..4 {
                    let x = _mm256_set1_ps(*ar[i].add(kk * ak));
                    for r in 0..RN {
                        acc[i][r] = _mm256_fmadd_ps(x, bv[r], acc[i][r]);
                    }
                }
            }
            for i in 0..rows {
                for r in 0..RN {
                    _mm256_storeu_ps(c.add((i0 + i) * ldc + 8 * r), acc[i][r]);
                }
            }
            i0 += 4;
        }
    }

    /// `super::softmax_lanes` sixteen lanes to a vector: per lane the same operations in the same
    /// order (the masked scaling, a max that skips nothing, `ggml_v_expf`, `reduce16`'s tree and
    /// the tile's sums in f64), libm's exp for a grown max's factor as there.
    ///
    /// # Safety
    /// The CPU has AVX-512F; the slices are as long as `super::softmax_lanes` checks.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn softmax_lanes_512(
        t: &ScoreTile,
        st: &mut [f32],
        mx: &mut [f32],
        sum: &mut [f32],
        rescale: &mut impl FnMut(usize, f32),
    ) {
        let ld = t.ld;
        let c1 = t.c0 + t.w - 1;
        let p = st.as_mut_ptr();
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let scale = _mm512_set1_ps(t.scale);
        for r0 in (0..ld).step_by(16) {
            // Each lane's visible cells as tile rows a..=b; `any`: the lanes that see one.
            let (mut a, mut b, mut any) = ([1i32; 16], [0i32; 16], 0u16);
            for l in 0..16 {
                let (lo, hi) = (t.lo[r0 + l].max(t.c0), t.hi[r0 + l].min(c1));
                if lo <= hi {
                    (a[l], b[l]) = ((lo - t.c0) as i32, (hi - t.c0) as i32);
                    any |= 1 << l;
                }
            }
            let (av, bv) = (
                _mm512_loadu_si512(a.as_ptr() as *const __m512i),
                _mm512_loadu_si512(b.as_ptr() as *const __m512i),
            );
            let mut tmax = ninf;
            for j in 0..TILE {
                let jv = _mm512_set1_epi32(j as i32);
                let vis = _mm512_cmpge_epi32_mask(jv, av) & _mm512_cmple_epi32_mask(jv, bv);
                let at = p.add(j * ld + r0);
                let v = _mm512_mask_mul_ps(ninf, vis, _mm512_loadu_ps(at), scale);
                _mm512_storeu_ps(at, v);
                // f32::max's fold: a NaN score is skipped (max_ps returns its second operand).
                tmax = _mm512_max_ps(v, tmax);
            }
            let old = _mm512_loadu_ps(mx.as_ptr().add(r0));
            let m = _mm512_max_ps(tmax, old);
            let grow = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, old) & any;
            if grow != 0 {
                let (mut ma, mut oa) = ([0f32; 16], [0f32; 16]);
                _mm512_storeu_ps(ma.as_mut_ptr(), m);
                _mm512_storeu_ps(oa.as_mut_ptr(), old);
                for l in 0..16 {
                    if grow >> l & 1 == 1 {
                        let ms = (oa[l] - ma[l]).exp();
                        rescale(r0 + l, ms);
                        sum[r0 + l] *= ms;
                    }
                }
            }
            _mm512_storeu_ps(mx.as_mut_ptr().add(r0), _mm512_mask_blend_ps(any, old, m));
            let (mut s_lo, mut s_hi) = (_mm512_setzero_pd(), _mm512_setzero_pd());
            for g in 0..TILE / 16 {
                let e: [__m512; 16] = std::array::from_fn(|k| {
                    let at = p.add((16 * g + k) * ld + r0);
                    let x = _mm512_sub_ps(_mm512_loadu_ps(at), m);
                    let e = _mm512_maskz_mov_ps(any, expf_ggml_512(x));
                    _mm512_storeu_ps(at, e);
                    e
                });
                let t8: [__m512; 8] = std::array::from_fn(|i| _mm512_add_ps(e[8 + i], e[i]));
                let u4: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(t8[4 + i], t8[i]));
                let rg = _mm512_add_ps(_mm512_add_ps(u4[0], u4[2]), _mm512_add_ps(u4[1], u4[3]));
                let (lo, hi) = halves(rg);
                s_lo = _mm512_add_pd(s_lo, _mm512_cvtps_pd(lo));
                s_hi = _mm512_add_pd(s_hi, _mm512_cvtps_pd(hi));
            }
            let sv = _mm512_loadu_ps(sum.as_ptr().add(r0));
            let (lo, hi) = halves(sv);
            let new_lo = _mm512_cvtpd_ps(_mm512_add_pd(_mm512_cvtps_pd(lo), s_lo));
            let new_hi = _mm512_cvtpd_ps(_mm512_add_pd(_mm512_cvtps_pd(hi), s_hi));
            let new = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castps_pd(_mm512_castps256_ps512(new_lo)),
                _mm256_castps_pd(new_hi),
            ));
            _mm512_storeu_ps(sum.as_mut_ptr().add(r0), _mm512_mask_blend_ps(any, sv, new));
        }
    }

    /// `softmax_lanes_512` eight lanes to a vector, with AVX2: the same operations per lane.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the slices are as long as `super::softmax_lanes` checks.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_lanes_avx2(
        t: &ScoreTile,
        st: &mut [f32],
        mx: &mut [f32],
        sum: &mut [f32],
        rescale: &mut impl FnMut(usize, f32),
    ) {
        let ld = t.ld;
        let c1 = t.c0 + t.w - 1;
        let p = st.as_mut_ptr();
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        let scale = _mm256_set1_ps(t.scale);
        for r0 in (0..ld).step_by(8) {
            // Each lane's visible cells as tile rows a..=b; `any`: the lanes that see one.
            let (mut a, mut b, mut seen, mut any) = ([1i32; 8], [0i32; 8], [0i32; 8], 0i32);
            for l in 0..8 {
                let (lo, hi) = (t.lo[r0 + l].max(t.c0), t.hi[r0 + l].min(c1));
                if lo <= hi {
                    (a[l], b[l], seen[l]) = ((lo - t.c0) as i32, (hi - t.c0) as i32, -1);
                    any |= 1 << l;
                }
            }
            let load = |x: &[i32; 8]| _mm256_loadu_si256(x.as_ptr() as *const __m256i);
            let (av, bv) = (load(&a), load(&b));
            let anyv = _mm256_castsi256_ps(load(&seen));
            let mut tmax = ninf;
            for j in 0..TILE {
                let jv = _mm256_set1_epi32(j as i32);
                let hidden =
                    _mm256_or_si256(_mm256_cmpgt_epi32(av, jv), _mm256_cmpgt_epi32(jv, bv));
                let at = p.add(j * ld + r0);
                let x = _mm256_mul_ps(_mm256_loadu_ps(at), scale);
                let v = _mm256_blendv_ps(x, ninf, _mm256_castsi256_ps(hidden));
                _mm256_storeu_ps(at, v);
                // f32::max's fold: a NaN score is skipped (max_ps returns its second operand).
                tmax = _mm256_max_ps(v, tmax);
            }
            let old = _mm256_loadu_ps(mx.as_ptr().add(r0));
            let m = _mm256_max_ps(tmax, old);
            let grow = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(m, old)) & any;
            if grow != 0 {
                let (mut ma, mut oa) = ([0f32; 8], [0f32; 8]);
                _mm256_storeu_ps(ma.as_mut_ptr(), m);
                _mm256_storeu_ps(oa.as_mut_ptr(), old);
                for l in 0..8 {
                    if grow >> l & 1 == 1 {
                        let ms = (oa[l] - ma[l]).exp();
                        rescale(r0 + l, ms);
                        sum[r0 + l] *= ms;
                    }
                }
            }
            _mm256_storeu_ps(mx.as_mut_ptr().add(r0), _mm256_blendv_ps(old, m, anyv));
            let (mut s_lo, mut s_hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
            for g in 0..TILE / 16 {
                let e: [__m256; 16] = std::array::from_fn(|k| {
                    let at = p.add((16 * g + k) * ld + r0);
                    // A lane that sees nothing gets e^−∞ = 0 (and no NaN from −∞ − −∞).
                    let x = _mm256_blendv_ps(ninf, _mm256_sub_ps(_mm256_loadu_ps(at), m), anyv);
                    let e = expf_ggml_avx2(x);
                    _mm256_storeu_ps(at, e);
                    e
                });
                let t8: [__m256; 8] = std::array::from_fn(|i| _mm256_add_ps(e[8 + i], e[i]));
                let u4: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(t8[4 + i], t8[i]));
                let rg = _mm256_add_ps(_mm256_add_ps(u4[0], u4[2]), _mm256_add_ps(u4[1], u4[3]));
                s_lo = _mm256_add_pd(s_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(rg)));
                s_hi = _mm256_add_pd(s_hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(rg)));
            }
            let sv = _mm256_loadu_ps(sum.as_ptr().add(r0));
            let wide =
                |h: __m128, s: __m256d| _mm256_cvtpd_ps(_mm256_add_pd(_mm256_cvtps_pd(h), s));
            let new = _mm256_set_m128(
                wide(_mm256_extractf128_ps::<1>(sv), s_hi),
                wide(_mm256_castps256_ps128(sv), s_lo),
            );
            _mm256_storeu_ps(sum.as_mut_ptr().add(r0), _mm256_blendv_ps(sv, new, anyv));
        }
    }

    /// Lanes 0..8 and 8..16.
    #[inline(always)]
    unsafe fn halves(v: __m512) -> (__m256, __m256) {
        let d = _mm512_castps_pd(v);
        (
            _mm256_castpd_ps(_mm512_castpd512_pd256(d)),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(d)),
        )
    }

    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn round_f16_slice(x: &mut [f32]) {
        let mut c = x.chunks_exact_mut(8);
        for v in &mut c {
            let p = v.as_mut_ptr();
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p));
            _mm256_storeu_ps(p, _mm256_cvtph_ps(h));
        }
        c.into_remainder()
            .iter_mut()
            .for_each(|v| *v = round_f16(*v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{BlockTable, KvPool};

    /// Softmax attention in f64 of `q` over positions [lo, hi] of the widened cache.
    fn reference(
        q: &[f32],
        kf: &[f32],
        vf: &[f32],
        hd: usize,
        lo: usize,
        hi: usize,
        scale: f64,
    ) -> Vec<f64> {
        let s: Vec<f64> = (lo..=hi)
            .map(|p| {
                (0..hd)
                    .map(|d| q[d] as f64 * kf[p * hd + d] as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let m = s.iter().cloned().fold(f64::MIN, f64::max);
        let w: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = w.iter().sum();
        (0..hd)
            .map(|d| {
                (0..w.len())
                    .map(|j| w[j] * vf[(lo + j) * hd + d] as f64)
                    .sum::<f64>()
                    / z
            })
            .collect()
    }

    #[test]
    fn exp_and_gemm_levels_agree_with_portable() {
        // ggml's exp: close to exp, 0 far below, and the AVX-512 form gives the same bits.
        for i in 0..2000 {
            let x = -100.0 + i as f32 * 0.0517;
            let e = expf_ggml(x);
            assert!(
                (e as f64 - (x as f64).exp()).abs() <= 1e-6 * (x as f64).exp() + 1e-44,
                "{x}"
            );
        }
        assert_eq!(expf_ggml(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf_ggml(-200.0), 0.0);
        // The softmax step of a key tile, at this CPU's level and one lane at a time: lanes
        // that see all, part or none of the tile, a first tile (max −∞), maxima that grow and
        // ones that do not, and a NaN score.
        let ld = 48;
        let (c0, w) = (128, 50);
        let lo: Vec<usize> = (0..ld).map(|r| [0, 130, 140, 200, 129][r % 5]).collect();
        let hi: Vec<usize> = (0..ld).map(|r| [300, 160, 135, 250, 177][r % 5]).collect();
        let st0: Vec<f32> = (0..TILE * ld)
            .map(|i| {
                if i == 7 * ld + 3 {
                    f32::NAN
                } else {
                    ((i * 37 % 101) as f32 - 50.0) / 7.0
                }
            })
            .collect();
        let mx0: Vec<f32> = (0..ld)
            .map(|r| {
                if r % 3 == 0 {
                    f32::NEG_INFINITY
                } else {
                    (r % 7) as f32 - 2.0
                }
            })
            .collect();
        let sum0: Vec<f32> = (0..ld)
            .map(|r| if r % 3 == 0 { 0.0 } else { 1.5 + r as f32 })
            .collect();
        let tile = ScoreTile {
            c0,
            w,
            ld,
            lo: &lo,
            hi: &hi,
            scale: 0.6,
        };
        let run = |portable: bool| {
            let (mut st, mut mx, mut sum) = (st0.clone(), mx0.clone(), sum0.clone());
            let mut scaled = Vec::new();
            let mut rescale = |r: usize, ms: f32| scaled.push((r, ms.to_bits()));
            if portable {
                softmax_lanes_portable(&tile, &mut st, &mut mx, &mut sum, &mut rescale);
            } else {
                softmax_lanes(&tile, &mut st, &mut mx, &mut sum, &mut rescale);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (bits(&st[..w * ld]), bits(&mx), bits(&sum), scaled)
        };
        let want = run(true);
        assert!(!want.3.is_empty() && want.3.len() < ld);
        assert_eq!(run(false), want);
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::available(SimdLevel::Avx2 { vnni: false }) {
            // The AVX2 form too, whatever this CPU's level.
            let (mut st, mut mx, mut sum) = (st0.clone(), mx0.clone(), sum0.clone());
            let mut scaled = Vec::new();
            let mut rescale = |r: usize, ms: f32| scaled.push((r, ms.to_bits()));
            // SAFETY: the CPU has AVX2 (FMA comes with the level); the lengths are as checked.
            unsafe { x86::softmax_lanes_avx2(&tile, &mut st, &mut mx, &mut sum, &mut rescale) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!((bits(&st[..w * ld]), bits(&mx), bits(&sum), scaled), want);
        }

        // Every shape's blocks and column tails give each element the same chain.
        let (m, k, n) = (7, 37, 83);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
            .collect();
        let c0: Vec<f32> = (0..m * n).map(|i| (i % 5) as f32 * 0.25).collect();
        let mut want = c0.clone();
        gemm_portable(&mut want, n, &a, k, 1, &b, n, m, k, n, 0);
        let mut got = c0;
        gemm_acc(&mut got, n, &a, k, 1, &b, n, m, k, n);
        assert_eq!(got, want);
    }

    /// A cache of one layer whose keys and values at each position are deterministic, in every
    /// other block of a pool twice its size (so reads go through the block table).
    fn cache(n_ctx: usize, kvd: usize, types: CacheTypes) -> (KvPool, BlockTable) {
        let nb = n_ctx.div_ceil(crate::kv::BLOCK);
        let mut pool = KvPool::new(1, 2 * nb, kvd, types).unwrap();
        let (mut t, mut gap) = (BlockTable::new(n_ctx), BlockTable::new(n_ctx));
        for i in 1..=nb {
            assert!(pool.grow(&mut gap, i * crate::kv::BLOCK));
            assert!(pool.grow(&mut t, i * crate::kv::BLOCK));
        }
        pool.clear(&mut gap);
        assert_eq!(t.blocks()[..3], [1, 3, 5]);
        for p in 0..n_ctx {
            let k: Vec<f32> = (0..kvd)
                .map(|i| (((p * kvd + i) * 37 % 101) as f32 - 50.0) / 40.0)
                .collect();
            let v: Vec<f32> = (0..kvd)
                .map(|i| (((p * kvd + i) * 53 % 97) as f32 - 48.0) / 30.0)
                .collect();
            pool.store(&t, 0, p, &k, &v);
        }
        (pool, t)
    }

    #[test]
    fn every_path_matches_softmax() {
        // Two KV heads of 80 values (a 64-value block and a 16-value tail), three query heads
        // each, a window on one layer: batches on the tiled path (70 tokens), the one-row path (5)
        // and single tokens whose view splits (at position 700 of 1024 cells) or not.
        let (n_head, n_head_kv, hd, n_ctx) = (6, 2, 80, 1024);
        let kvd = n_head_kv * hd;
        let pool = ThreadPool::new(2);
        for types in [
            CacheTypes::default(),
            CacheTypes::parse("f32", "f32").unwrap(),
            CacheTypes::parse("q8_0", "q4_1").unwrap(),
        ] {
            let (cp, ct) = cache(n_ctx, kvd, types);
            let c = cp.seq(&ct);
            let (mut kf, mut vf) = (vec![0f32; n_ctx * kvd], vec![0f32; n_ctx * kvd]);
            c.widen_keys(0, 0, n_ctx, 0..kvd, &mut kf);
            c.widen_values(0, 0, n_ctx, 0..kvd, &mut vf);
            let head_of = |x: &[f32], g: usize| -> Vec<f32> {
                x.chunks_exact(kvd)
                    .flat_map(|r| r[g * hd..(g + 1) * hd].to_vec())
                    .collect()
            };
            for (window, tokens) in [
                (0, 600..670),
                (100, 130..200),
                (0, 40..45),
                (50, 300..305),
                (0, 700..701),
                (0, 200..201),
                (300, 900..901),
            ] {
                for flash in [FlashAttn::Auto, FlashAttn::Off] {
                    let batch: Vec<BatchToken> = tokens
                        .clone()
                        .map(|pos| BatchToken {
                            token: 0,
                            pos,
                            rope_pos: pos,
                            seq: 0,
                            logits: false,
                        })
                        .collect();
                    let n = batch.len();
                    let q: Vec<f32> = (0..n * n_head * hd)
                        .map(|i| ((i * 7 % 13) as f32 / 5.0 - 1.2) * 0.5)
                        .collect();
                    let mut att = vec![0f32; q.len()];
                    let p = AttnParams {
                        n_head,
                        n_head_kv,
                        head_dim: hd,
                        scale: 0.125,
                        window,
                        flash,
                        fixed: false,
                    };
                    attention(&pool, &p, &batch, &q, &[c], 0, &mut att);
                    // The f16 path rounds the query and the accumulator to f16.
                    let tiled =
                        n >= TILE || flash == FlashAttn::Off || types != CacheTypes::default();
                    let tol = if tiled { 1e-5 } else { 2e-2 };
                    for (i, t) in batch.iter().enumerate() {
                        for h in 0..n_head {
                            let g = h / (n_head / n_head_kv);
                            let lo = if window > 0 {
                                (t.pos + 1).saturating_sub(window)
                            } else {
                                0
                            };
                            let at = i * n_head * hd + h * hd;
                            let want = reference(
                                &q[at..at + hd],
                                &head_of(&kf, g),
                                &head_of(&vf, g),
                                hd,
                                lo,
                                t.pos,
                                0.125,
                            );
                            for d in 0..hd {
                                let got = att[at + d] as f64;
                                assert!(
                                    (got - want[d]).abs() <= tol * want[d].abs().max(0.1),
                                    "{types:?} {flash:?} window {window} pos {} head {h} d {d}: {got} vs {}",
                                    t.pos,
                                    want[d]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn register_one_row_pass_is_the_generic_one() {
        // The register kernels (AVX-512 and AVX2) give the generic one-row loop's bits, for
        // each head size they take and one to four heads sharing a KV head (a range crossing
        // blocks).
        let mut levels = vec![];
        if simd_level() == SimdLevel::Avx512 {
            levels.push(SimdLevel::Avx512);
        }
        if simd_level() != SimdLevel::Scalar {
            levels.push(SimdLevel::Avx2 { vnni: false });
        }
        for hd in [64, 128, 256] {
            let (cp, ct) = cache(300, hd, CacheTypes::default());
            let kv = HeadKv {
                cache: cp.seq(&ct),
                layer: 0,
                cols: 0..hd,
            };
            for n in 1..=4 {
                let q: Vec<f32> = (0..n * hd)
                    .map(|i| ((i * 7 % 13) as f32 / 5.0 - 1.2) * 0.9)
                    .collect();
                let run = |fast: Option<SimdLevel>| {
                    let mut out = vec![0f32; n * hd];
                    let mut heads: Vec<OneRow> = out
                        .chunks_exact_mut(hd)
                        .zip(q.chunks_exact(hd))
                        .map(|(o, q)| OneRow::new(q, o))
                        .collect();
                    match fast {
                        // SAFETY: the CPU has the level (checked above).
                        Some(SimdLevel::Avx512) => unsafe {
                            one_chunk_avx512(&kv, &mut heads, 5, 290, 0.1)
                        },
                        // SAFETY: as above.
                        Some(_) => unsafe { one_chunk_avx2(&kv, &mut heads, 5, 290, 0.1) },
                        None => one_chunk_kernel(&kv, &mut heads, 5, 290, 0.1),
                    }
                    let ms: Vec<(u32, u32)> = heads
                        .iter()
                        .map(|r| (r.m.to_bits(), r.sum.to_bits()))
                        .collect();
                    drop(heads);
                    (out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), ms)
                };
                let want = run(None);
                for &l in &levels {
                    assert_eq!(run(Some(l)), want, "hd {hd}, {n} heads, {l:?}");
                }
            }
        }
    }

    #[test]
    fn split_decode_combines_like_one_pass() {
        // One chunk per thread, then combined: within f16 rounding of the unsplit pass, and one
        // thread is the unsplit pass bit for bit.
        let (n_head, hd, n_ctx) = (2, 64, 1024);
        let (cp, ct) = cache(n_ctx, n_head * hd, CacheTypes::default());
        let c = cp.seq(&ct);
        let batch = [BatchToken {
            token: 0,
            pos: 777,
            rope_pos: 777,
            seq: 0,
            logits: true,
        }];
        let q: Vec<f32> = (0..n_head * hd)
            .map(|i| ((i * 5 % 11) as f32 / 4.0 - 1.0) * 0.7)
            .collect();
        let p = AttnParams {
            n_head,
            n_head_kv: n_head,
            head_dim: hd,
            scale: 0.125,
            window: 0,
            flash: FlashAttn::Auto,
            fixed: false,
        };
        let run = |threads: usize| {
            let mut att = vec![0f32; q.len()];
            attention(&ThreadPool::new(threads), &p, &batch, &q, &[c], 0, &mut att);
            att
        };
        let (one, two) = (run(1), run(2));
        let kv = HeadKv {
            cache: c,
            layer: 0,
            cols: 0..hd,
        };
        let mut acc = vec![0f32; hd];
        let mut heads = [OneRow::new(&q[..hd], &mut acc)];
        one_chunk(&kv, &mut heads, 0, 777, 0.125);
        let s = heads[0].sum;
        let unsplit: Vec<f32> = acc.iter().map(|a| a * (1.0 / s)).collect();
        assert_eq!(one[..hd], unsplit[..]);
        assert_ne!(one, two);
        for (a, b) in one.iter().zip(&two) {
            assert!((a - b).abs() <= 1e-2 * a.abs().max(0.1), "{a} vs {b}");
        }
    }

    #[test]
    fn one_row_heads_cut_over_threads_keep_their_bits() {
        // One KV head shared by four or five query heads (gemma3's decode step): at two or more
        // threads the heads are cut into parts that run on different threads, each head's
        // values the bits of the whole group run on one thread; the same for a small batch.
        // (Views of fewer than `SPLIT_KV_MIN` cells: longer ones split the cells instead.)
        let (hd, n_ctx) = (64, 512);
        let (cp, ct) = cache(n_ctx, hd, CacheTypes::default());
        let c = cp.seq(&ct);
        for (n_head, positions) in [(4, 100..101), (5, 255..256), (4, 40..43)] {
            let batch: Vec<BatchToken> = positions
                .map(|pos| BatchToken {
                    token: 0,
                    pos,
                    rope_pos: pos,
                    seq: 0,
                    logits: true,
                })
                .collect();
            let q: Vec<f32> = (0..batch.len() * n_head * hd)
                .map(|i| ((i * 5 % 11) as f32 / 4.0 - 1.0) * 0.7)
                .collect();
            let p = AttnParams {
                n_head,
                n_head_kv: 1,
                head_dim: hd,
                scale: 0.125,
                window: 0,
                flash: FlashAttn::Auto,
                fixed: false,
            };
            let run = |threads: usize| {
                let mut att = vec![0f32; q.len()];
                attention(&ThreadPool::new(threads), &p, &batch, &q, &[c], 0, &mut att);
                att.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
            };
            let one = run(1);
            for threads in [2, 3, 5] {
                assert_eq!(run(threads), one, "{n_head} heads, {threads} threads");
            }
        }
    }
}

//! Causal grouped-query attention of one layer over the KV caches.
//!
//! The keys and values a batch needs are widened to f32 once per layer and sequence (with F16C
//! where the CPU has it). The loops are generic Rust compiled per SIMD level (see
//! `tensor::simd_level`).
//!
//! Two paths (`FlashAttn` picks): llama.cpp's flash-attention numerics, so tokens match its —
//! one task per (token, head), the query and the value accumulator rounded to f16, rescaled at
//! each new maximum (an online softmax in one pass) — for f16 caches and small batches; and an
//! f32 path in tiles of up to `TILE_TOKENS` tokens per KV head, which shares every key and value
//! row among the tile's query rows (prompts, and caches of other types).

// Kernels index several arrays by the same counter.
#![allow(clippy::needless_range_loop)]

use crate::kv::{CacheTypes, KvCache};
use crate::quant::f16::round_f16;
#[cfg(target_arch = "x86_64")]
use crate::tensor::SimdLevel;
use crate::tensor::{simd_level, SendPtr, ThreadPool};

use super::BatchToken;

/// Batches of at least this many tokens take llama.cpp's tiled f32 attention path; smaller ones
/// (and single-token decode) its f16-accumulating path.
pub const F32_ATTENTION_MIN_TOKENS: usize = 64;

/// `--flash-attn`: which attention path runs. `On` is one pass per (token, head) with an online
/// softmax (llama.cpp's flash attention: no score row, f16 query and accumulator over an f16
/// cache); `Off` computes every score row, then the softmax, then the weighted values, in f32;
/// `Auto` takes the first for batches under `F32_ATTENTION_MIN_TOKENS` (token generation) and
/// the second for larger ones (llama.cpp's tiled path).
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
}

/// att[i, h] = softmax(q[i, h] · K[seq_i, lo..=pos_i]) · V[...] for every token i of `batch` and
/// query head h, with keys/values of `layer` taken from `caches[seq]`.
pub fn attention(
    pool: &ThreadPool,
    p: &AttnParams,
    batch: &[BatchToken],
    q: &[f32],
    caches: &[&KvCache],
    layer: usize,
    att: &mut [f32],
) {
    let (hd, kvd, qd) = (p.head_dim, p.n_head_kv * p.head_dim, p.n_head * p.head_dim);
    let n = batch.len();
    debug_assert!(q.len() == n * qd && att.len() == n * qd);
    // Widen each sequence's keys and values [0, max pos] to f32 once.
    let mut wide: Vec<Option<(Vec<f32>, Vec<f32>)>> = (0..caches.len()).map(|_| None).collect();
    for (s, slot) in wide.iter_mut().enumerate() {
        let Some(top) = batch.iter().filter(|t| t.seq == s).map(|t| t.pos).max() else {
            continue;
        };
        let mut kf = vec![0f32; (top + 1) * kvd];
        let mut vf = vec![0f32; (top + 1) * kvd];
        caches[s].widen_keys(layer, top + 1, &mut kf);
        caches[s].widen_values(layer, top + 1, &mut vf);
        *slot = Some((kf, vf));
    }
    // llama.cpp's f16-accumulating path exists for f16 caches; other cache types work in f32.
    let f16_cache = |s: usize| caches[s].types() == CacheTypes::default();
    let one_pass = match p.flash {
        FlashAttn::Auto => n < F32_ATTENTION_MIN_TOKENS,
        FlashAttn::On => true,
        FlashAttn::Off => false,
    };
    let group = p.n_head / p.n_head_kv;
    let out = SendPtr(att.as_mut_ptr());
    let window_lo = |pos: usize| {
        if p.window > 0 {
            (pos + 1).saturating_sub(p.window)
        } else {
            0
        }
    };
    let widened = |s: usize| -> (&[f32], &[f32]) {
        let Some((kf, vf)) = &wide[s] else {
            unreachable!("every token's sequence was widened")
        };
        (kf, vf)
    };
    if one_pass && batch.iter().all(|t| f16_cache(t.seq)) {
        // llama.cpp's f16 path: one task per (token, head).
        let n_tasks = n * p.n_head;
        let per = n_tasks
            .div_ceil((pool.n_threads() * 16).min(n_tasks).max(1))
            .max(1);
        pool.run(n_tasks.div_ceil(per), &|c| {
            let mut scratch = Vec::new();
            for task in c * per..((c + 1) * per).min(n_tasks) {
                let (i, h) = (task / p.n_head, task % p.n_head);
                let t = batch[i];
                let (keys, vals) = widened(t.seq);
                let head = Head {
                    dim: hd,
                    keys,
                    vals,
                    stride: kvd,
                    off: (h / group) * hd,
                    lo: window_lo(t.pos),
                    hi: t.pos,
                    scale: p.scale,
                };
                let at = i * qd + h * hd;
                // SAFETY: each (token, head) slice of `att` is written by exactly one task, and
                // `att` outlives the pool call.
                let o = unsafe { std::slice::from_raw_parts_mut(out.get().wrapping_add(at), hd) };
                head_dispatch(&head, &q[at..at + hd], &mut scratch, o);
            }
        });
        return;
    }
    // f32: tiles of up to TILE_TOKENS batch-adjacent tokens of one sequence, one task per (tile,
    // KV head); its query rows (tokens × the KV head's query heads) share every key and value.
    let mut tiles: Vec<(usize, usize)> = Vec::new();
    for (i, t) in batch.iter().enumerate() {
        match tiles.last_mut() {
            Some((s, e))
                if *e == i && e.wrapping_sub(*s) < TILE_TOKENS && batch[*s].seq == t.seq =>
            {
                *e += 1
            }
            _ => tiles.push((i, i + 1)),
        }
    }
    let n_tasks = tiles.len() * p.n_head_kv;
    pool.run(n_tasks, &|task| {
        let ((t0, t1), kvh) = (tiles[task / p.n_head_kv], task % p.n_head_kv);
        let (keys, vals) = widened(batch[t0].seq);
        let mut rows = Vec::with_capacity((t1 - t0) * group);
        for i in t0..t1 {
            let t = batch[i];
            for h in kvh * group..(kvh + 1) * group {
                let at = i * qd + h * hd;
                rows.push(TileRow {
                    q: &q[at..at + hd],
                    lo: window_lo(t.pos),
                    hi: t.pos,
                    out: out.get().wrapping_add(at),
                });
            }
        }
        let kv = KvView {
            dim: hd,
            keys,
            vals,
            stride: kvd,
            off: kvh * hd,
        };
        // SAFETY: each row's output slice (one token and head) belongs to this task only.
        unsafe { tile_dispatch(&kv, &rows, p.scale) };
    });
}

/// Tokens per f32 attention tile: each key and value row is read once for all of their query rows.
const TILE_TOKENS: usize = 16;

/// One KV head's keys and values in the widened cache (`stride` values per position, this head's
/// at `off`).
struct KvView<'a> {
    dim: usize,
    keys: &'a [f32],
    vals: &'a [f32],
    stride: usize,
    off: usize,
}

/// One query row of a tile: its vector, the positions it attends to ([lo, hi]) and where its
/// `dim` outputs go.
struct TileRow<'a> {
    q: &'a [f32],
    lo: usize,
    hi: usize,
    out: *mut f32,
}

/// Keys per score block, and query rows per register tile.
const KB: usize = 16;
const RB: usize = 4;

/// softmax(q·K^T · scale) · V for every row of a tile, in f32: scores sixteen keys at a time
/// against four query rows (keys transposed once per block so each step is a broadcast query
/// value times sixteen keys), a masked softmax per row, then the weighted values four rows and
/// up to 64 values at a time.
///
/// # Safety
/// Every row's `out` points to `kv.dim` writable values that nothing else accesses.
#[inline(always)]
unsafe fn tile_kernel(kv: &KvView, rows: &[TileRow], scale: f32) {
    let hd = kv.dim;
    let klo = rows.iter().map(|r| r.lo).min().unwrap_or(0);
    let khi = rows.iter().map(|r| r.hi).max().unwrap_or(0);
    let nk = khi + 1 - klo;
    let nr = rows.len();
    let mut s = vec![0f32; nr * nk];
    let mut kt = vec![0f32; hd * KB];
    let key = |j: usize| &kv.keys[(klo + j) * kv.stride + kv.off..][..hd];
    let val = |j: usize| &kv.vals[(klo + j) * kv.stride + kv.off..][..hd];
    for j0 in (0..nk).step_by(KB) {
        let w = (nk - j0).min(KB);
        for l in 0..KB {
            let k = key(j0 + l.min(w - 1));
            for d in 0..hd {
                kt[d * KB + l] = k[d];
            }
        }
        for r0 in (0..nr).step_by(RB) {
            // Missing rows of the last group repeat the last row; their results are dropped.
            let qs: [&[f32]; RB] = std::array::from_fn(|r| &rows[(r0 + r).min(nr - 1)].q[..hd]);
            let mut acc = [[0f32; KB]; RB];
            #[cfg(target_arch = "x86_64")]
            match simd_level() {
                SimdLevel::Avx512 => x86::scores_512(&kt, qs, hd, &mut acc),
                SimdLevel::Avx2 => x86::scores_avx2(&kt, qs, hd, &mut acc),
                _ => scores(&kt, qs, hd, &mut acc),
            }
            #[cfg(not(target_arch = "x86_64"))]
            scores(&kt, qs, hd, &mut acc);
            for r in 0..RB.min(nr - r0) {
                for l in 0..w {
                    s[(r0 + r) * nk + j0 + l] = acc[r][l] * scale;
                }
            }
        }
    }
    let mut inv = vec![0f32; nr];
    for (r, row) in rows.iter().enumerate() {
        let sr = &mut s[r * nk..(r + 1) * nk];
        let (a, b) = (row.lo - klo, row.hi - klo);
        let m = sr[a..=b].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in &mut sr[a..=b] {
            *v = (*v - m).exp();
            sum += *v;
        }
        sr[..a].fill(0.0);
        sr[b + 1..].fill(0.0);
        inv[r] = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    }
    for r0 in (0..nr).step_by(RB) {
        let m = RB.min(nr - r0);
        let ps: [&[f32]; RB] = std::array::from_fn(|r| &s[(r0 + r.min(m - 1)) * nk..][..nk]);
        let mut d0 = 0;
        while d0 + 64 <= hd {
            pv_block::<4>(&val, &ps, nk, d0, &rows[r0..r0 + m], &inv[r0..r0 + m]);
            d0 += 64;
        }
        while d0 + 16 <= hd {
            pv_block::<1>(&val, &ps, nk, d0, &rows[r0..r0 + m], &inv[r0..r0 + m]);
            d0 += 16;
        }
        for d in d0..hd {
            for (r, row) in rows[r0..r0 + m].iter().enumerate() {
                let mut a = 0f32;
                for j in 0..nk {
                    a = ps[r][j].mul_add(val(j)[d], a);
                }
                *row.out.add(d) = a * inv[r0 + r];
            }
        }
    }
}

/// Values [d0, d0 + 16·C) of up to RB rows: Σ_j p[r][j] · V[j], scaled by the row's 1/Σp.
///
/// # Safety
/// As `tile_kernel`.
#[inline(always)]
unsafe fn pv_block<'a, const C: usize>(
    val: &impl Fn(usize) -> &'a [f32],
    ps: &[&[f32]; RB],
    nk: usize,
    d0: usize,
    rows: &[TileRow],
    inv: &[f32],
) {
    let mut acc = [[[0f32; 16]; C]; RB];
    #[cfg(target_arch = "x86_64")]
    match simd_level() {
        SimdLevel::Avx512 => x86::pv_512(val, ps, nk, d0, &mut acc),
        SimdLevel::Avx2 => x86::pv_avx2(val, ps, nk, d0, &mut acc),
        _ => pv(val, ps, nk, d0, &mut acc),
    }
    #[cfg(not(target_arch = "x86_64"))]
    pv(val, ps, nk, d0, &mut acc);
    for (r, row) in rows.iter().enumerate() {
        for c in 0..C {
            for l in 0..16 {
                *row.out.add(d0 + 16 * c + l) = acc[r][c][l] * inv[r];
            }
        }
    }
}

/// acc[r][l] = Σ_d q[r][d] · kt[d][l] (keys transposed in blocks of KB).
#[inline(always)]
fn scores(kt: &[f32], qs: [&[f32]; RB], hd: usize, acc: &mut [[f32; KB]; RB]) {
    for d in 0..hd {
        let k: &[f32; KB] = kt[d * KB..(d + 1) * KB].try_into().unwrap();
        for r in 0..RB {
            let qv = qs[r][d];
            for l in 0..KB {
                acc[r][l] = qv.mul_add(k[l], acc[r][l]);
            }
        }
    }
}

/// acc[r][c][l] = Σ_j p[r][j] · V[j][d0 + 16c + l].
#[inline(always)]
fn pv<'a, const C: usize>(
    val: &impl Fn(usize) -> &'a [f32],
    ps: &[&[f32]; RB],
    nk: usize,
    d0: usize,
    acc: &mut [[[f32; 16]; C]; RB],
) {
    for j in 0..nk {
        let v = &val(j)[d0..d0 + 16 * C];
        for r in 0..RB {
            let p = ps[r][j];
            for c in 0..C {
                for l in 0..16 {
                    acc[r][c][l] = p.mul_add(v[16 * c + l], acc[r][c][l]);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2(kv: &KvView, rows: &[TileRow], scale: f32) {
    tile_kernel(kv, rows, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn tile_avx512(kv: &KvView, rows: &[TileRow], scale: f32) {
    tile_kernel(kv, rows, scale)
}

/// # Safety
/// As `tile_kernel`.
unsafe fn tile_dispatch(kv: &KvView, rows: &[TileRow], scale: f32) {
    match simd_level() {
        // SAFETY: the level is only chosen when the CPU reports these features.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => tile_avx512(kv, rows, scale),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => tile_avx2(kv, rows, scale),
        _ => tile_kernel(kv, rows, scale),
    }
}

/// One query head's view of the widened cache: rows [lo, hi], `stride` values per position, this
/// head's slice at `off`.
struct Head<'a> {
    /// Values per head.
    dim: usize,
    keys: &'a [f32],
    vals: &'a [f32],
    stride: usize,
    off: usize,
    lo: usize,
    hi: usize,
    scale: f32,
}

impl Head<'_> {
    #[inline(always)]
    fn key(&self, p: usize, hd: usize) -> &[f32] {
        &self.keys[p * self.stride + self.off..p * self.stride + self.off + hd]
    }
    #[inline(always)]
    fn val(&self, p: usize, hd: usize) -> &[f32] {
        &self.vals[p * self.stride + self.off..p * self.stride + self.off + hd]
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

/// One query head against its keys and values, llama.cpp's f16 way: one pass with an online
/// softmax, the query and the value accumulator rounded to f16.
#[inline(always)]
fn head_kernel(h: &Head, q: &[f32], scratch: &mut Vec<f32>, out: &mut [f32]) {
    let hd = h.dim;
    // One pass, online softmax, query and accumulator rounded to f16 like llama.cpp.
    scratch.clear();
    scratch.resize(2 * hd, 0.0);
    let (qr, acc) = scratch.split_at_mut(hd);
    qr.copy_from_slice(q);
    round_f16_slice(qr);
    let mut m = f32::NEG_INFINITY;
    let mut sum = 0f32;
    for p in h.lo..=h.hi {
        let s = dot_f16_order(qr, h.key(p, hd)) * h.scale;
        let mut ms = 1.0;
        let mut vs = 1.0;
        if s > m {
            ms = if m == f32::NEG_INFINITY {
                0.0
            } else {
                (m - s).exp()
            };
            m = s;
            acc.iter_mut().for_each(|a| *a *= ms);
            round_f16_slice(acc);
        } else {
            vs = (s - m).exp();
        }
        for (a, &v) in acc.iter_mut().zip(h.val(p, hd)) {
            *a = v.mul_add(vs, *a);
        }
        round_f16_slice(acc);
        // ggml's build contracts this into one fused multiply-add; so do we, to round alike.
        sum = sum.mul_add(ms, vs);
    }
    let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = a * inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn head_avx2(h: &Head, q: &[f32], scratch: &mut Vec<f32>, out: &mut [f32]) {
    head_kernel(h, q, scratch, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn head_avx512(h: &Head, q: &[f32], scratch: &mut Vec<f32>, out: &mut [f32]) {
    head_kernel(h, q, scratch, out)
}

fn head_dispatch(h: &Head, q: &[f32], scratch: &mut Vec<f32>, out: &mut [f32]) {
    match simd_level() {
        // SAFETY: the level is only chosen when the CPU reports these features.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { head_avx512(h, q, scratch, out) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { head_avx2(h, q, scratch, out) },
        _ => head_kernel(h, q, scratch, out),
    }
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

/// f16 → f32 for a whole slice.
#[cfg(target_arch = "x86_64")]
mod x86 {

    use std::arch::x86_64::*;

    use crate::quant::f16::round_f16;

    use super::{KB, RB};

    /// `super::scores` with sixteen-lane registers (same sums, same order per lane).
    #[inline(always)]
    pub fn scores_512(kt: &[f32], qs: [&[f32]; RB], hd: usize, acc: &mut [[f32; KB]; RB]) {
        assert!(kt.len() >= hd * KB && qs.iter().all(|q| q.len() >= hd));
        // SAFETY: the AVX-512 level is only chosen when the CPU has it; every index is below the
        // lengths asserted above.
        unsafe {
            let mut a = [_mm512_setzero_ps(); RB];
            for d in 0..hd {
                let k = _mm512_loadu_ps(kt.as_ptr().add(d * KB));
                for r in 0..RB {
                    a[r] = _mm512_fmadd_ps(_mm512_set1_ps(*qs[r].get_unchecked(d)), k, a[r]);
                }
            }
            for r in 0..RB {
                _mm512_storeu_ps(acc[r].as_mut_ptr(), a[r]);
            }
        }
    }

    /// `super::scores` with eight-lane registers (same sums, same order per lane).
    #[inline(always)]
    pub fn scores_avx2(kt: &[f32], qs: [&[f32]; RB], hd: usize, acc: &mut [[f32; KB]; RB]) {
        assert!(kt.len() >= hd * KB && qs.iter().all(|q| q.len() >= hd));
        // SAFETY: the AVX2 level is only chosen when the CPU has AVX2 and FMA; every index is
        // below the lengths asserted above.
        unsafe {
            let mut a = [[_mm256_setzero_ps(); 2]; RB];
            for d in 0..hd {
                let k0 = _mm256_loadu_ps(kt.as_ptr().add(d * KB));
                let k1 = _mm256_loadu_ps(kt.as_ptr().add(d * KB + 8));
                for r in 0..RB {
                    let q = _mm256_set1_ps(*qs[r].get_unchecked(d));
                    a[r][0] = _mm256_fmadd_ps(q, k0, a[r][0]);
                    a[r][1] = _mm256_fmadd_ps(q, k1, a[r][1]);
                }
            }
            for r in 0..RB {
                _mm256_storeu_ps(acc[r].as_mut_ptr(), a[r][0]);
                _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), a[r][1]);
            }
        }
    }

    /// `super::pv` with eight-lane registers, one sixteen-value chunk at a time.
    #[inline(always)]
    pub fn pv_avx2<'a, const C: usize>(
        val: &impl Fn(usize) -> &'a [f32],
        ps: &[&[f32]; RB],
        nk: usize,
        d0: usize,
        acc: &mut [[[f32; 16]; C]; RB],
    ) {
        assert!(ps.iter().all(|p| p.len() >= nk));
        // SAFETY: as in `scores_avx2`; each value row slice is bounds-checked once.
        unsafe {
            for c in 0..C {
                let mut a = [[_mm256_setzero_ps(); 2]; RB];
                for j in 0..nk {
                    let v = &val(j)[d0 + 16 * c..d0 + 16 * c + 16];
                    let v0 = _mm256_loadu_ps(v.as_ptr());
                    let v1 = _mm256_loadu_ps(v.as_ptr().add(8));
                    for r in 0..RB {
                        let p = _mm256_set1_ps(*ps[r].get_unchecked(j));
                        a[r][0] = _mm256_fmadd_ps(p, v0, a[r][0]);
                        a[r][1] = _mm256_fmadd_ps(p, v1, a[r][1]);
                    }
                }
                for r in 0..RB {
                    _mm256_storeu_ps(acc[r][c].as_mut_ptr(), a[r][0]);
                    _mm256_storeu_ps(acc[r][c].as_mut_ptr().add(8), a[r][1]);
                }
            }
        }
    }

    /// `super::pv` with sixteen-lane registers (same sums, same order per lane).
    #[inline(always)]
    pub fn pv_512<'a, const C: usize>(
        val: &impl Fn(usize) -> &'a [f32],
        ps: &[&[f32]; RB],
        nk: usize,
        d0: usize,
        acc: &mut [[[f32; 16]; C]; RB],
    ) {
        assert!(ps.iter().all(|p| p.len() >= nk));
        // SAFETY: as in `scores_512`; each value row slice is bounds-checked once.
        unsafe {
            let mut a = [[_mm512_setzero_ps(); C]; RB];
            for j in 0..nk {
                let v = &val(j)[d0..d0 + 16 * C];
                let vs: [__m512; C] =
                    std::array::from_fn(|c| _mm512_loadu_ps(v.as_ptr().add(16 * c)));
                for r in 0..RB {
                    let p = _mm512_set1_ps(*ps[r].get_unchecked(j));
                    for c in 0..C {
                        a[r][c] = _mm512_fmadd_ps(p, vs[c], a[r][c]);
                    }
                }
            }
            for r in 0..RB {
                for c in 0..C {
                    _mm512_storeu_ps(acc[r][c].as_mut_ptr(), a[r][c]);
                }
            }
        }
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
    use crate::quant::f16::widen_f16;
    use half::f16;

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
    fn both_paths_match_softmax_and_levels_agree() {
        // 80 values per head: two sixteen-value chunks after the 64-value block, so every part
        // of the value loop runs.
        let (hd, n_pos) = (80, 37);
        let keys: Vec<f16> = (0..n_pos * hd)
            .map(|i| f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 40.0))
            .collect();
        let vals: Vec<f16> = (0..n_pos * hd)
            .map(|i| f16::from_f32(((i * 53 % 97) as f32 - 48.0) / 30.0))
            .collect();
        let (mut kf, mut vf) = (vec![0f32; keys.len()], vec![0f32; vals.len()]);
        let bytes = |v: &[f16]| -> Vec<u8> { v.iter().flat_map(|h| h.to_le_bytes()).collect() };
        widen_f16(&bytes(&keys), &mut kf);
        widen_f16(&bytes(&vals), &mut vf);
        for (a, b) in kf.iter().zip(&keys) {
            assert_eq!(*a, b.to_f32());
        }
        let close = |got: &[f32], want: &[f64], tol: f64, what: &str| {
            for d in 0..hd {
                assert!(
                    (got[d] as f64 - want[d]).abs() <= tol * want[d].abs().max(0.1),
                    "{what} d {d}: {} vs {}",
                    got[d],
                    want[d]
                );
            }
        };
        // Query rows with their own ranges: five rows (a full group of four and one more), as a
        // tile of tokens at different positions with a window would have.
        let ranges = [(3, n_pos - 1), (0, 20), (5, 5), (10, 30), (0, n_pos - 1)];
        let qs: Vec<Vec<f32>> = (0..ranges.len())
            .map(|r| {
                (0..hd)
                    .map(|i| ((i * 7 + 3 * r) % 13) as f32 / 5.0 - 1.2)
                    .collect()
            })
            .collect();

        // llama.cpp's f16 path, one head at a time.
        for (q, &(lo, hi)) in qs.iter().zip(&ranges) {
            let h = Head {
                dim: hd,
                keys: &kf,
                vals: &vf,
                stride: hd,
                off: 0,
                lo,
                hi,
                scale: 0.125,
            };
            let mut out = vec![0f32; hd];
            head_dispatch(&h, q, &mut Vec::new(), &mut out);
            let mut portable = vec![0f32; hd];
            head_kernel(&h, q, &mut Vec::new(), &mut portable);
            assert_eq!(out, portable, "f16 path: SIMD and portable differ");
            close(
                &out,
                &reference(q, &kf, &vf, hd, lo, hi, 0.125),
                2e-2,
                "f16 path",
            );
        }

        // The f32 tile path, all rows together.
        let kv = KvView {
            dim: hd,
            keys: &kf,
            vals: &vf,
            stride: hd,
            off: 0,
        };
        let run = |portable: bool| -> Vec<Vec<f32>> {
            let mut outs = vec![vec![0f32; hd]; qs.len()];
            let rows: Vec<TileRow> = qs
                .iter()
                .zip(&ranges)
                .zip(outs.iter_mut())
                .map(|((q, &(lo, hi)), o)| TileRow {
                    q,
                    lo,
                    hi,
                    out: o.as_mut_ptr(),
                })
                .collect();
            // SAFETY: each row writes its own vector of hd values.
            unsafe {
                if portable {
                    tile_kernel(&kv, &rows, 0.125)
                } else {
                    tile_dispatch(&kv, &rows, 0.125)
                }
            };
            outs
        };
        let (simd, portable) = (run(false), run(true));
        for (r, (q, &(lo, hi))) in qs.iter().zip(&ranges).enumerate() {
            assert_eq!(
                simd[r], portable[r],
                "tile path: SIMD and portable differ (row {r})"
            );
            close(
                &simd[r],
                &reference(q, &kf, &vf, hd, lo, hi, 0.125),
                1e-5,
                "tile path",
            );
        }
    }
}

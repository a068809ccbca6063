//! Causal grouped-query attention of one layer over the f16 KV caches.
//!
//! The keys and values a batch needs are widened to f32 once per layer and sequence (with F16C
//! where the CPU has it), then every (token, head) pair is an independent task on the pool. The
//! loops are generic Rust compiled per SIMD level (see `tensor::simd_level`).
//!
//! Numerics follow llama.cpp's CPU flash attention, so tokens match its: batches of fewer than
//! `F32_ATTENTION_MIN_TOKENS` (token generation included) round the query to f16 and keep the
//! value accumulator in f16, rescaled at each new maximum (an online softmax in one pass);
//! larger batches work in f32.

use crate::kv::{CacheTypes, KvCache};
use crate::quant::dot::dot_f32;
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
    // The one-pass path takes one task per (token, head); the other one per (token, KV head),
    // its query heads sharing each key and value row as it is read.
    let heads_per_task = if one_pass { 1 } else { group };
    let n_tasks = n * p.n_head / heads_per_task;
    let per = n_tasks
        .div_ceil((pool.n_threads() * 16).min(n_tasks).max(1))
        .max(1);
    pool.run(n_tasks.div_ceil(per), &|c| {
        let mut scratch = Vec::new();
        for task in c * per..((c + 1) * per).min(n_tasks) {
            let tasks_per_token = p.n_head / heads_per_task;
            let (i, h0) = (
                task / tasks_per_token,
                (task % tasks_per_token) * heads_per_task,
            );
            let t = batch[i];
            let lo = if p.window > 0 {
                (t.pos + 1).saturating_sub(p.window)
            } else {
                0
            };
            let Some((kf, vf)) = &wide[t.seq] else {
                unreachable!("every token's sequence was widened")
            };
            let head = Head {
                dim: hd,
                keys: kf,
                vals: vf,
                stride: kvd,
                off: (h0 / group) * hd,
                lo,
                hi: t.pos,
                scale: p.scale,
            };
            let at = i * qd + h0 * hd;
            let qs = &q[at..at + heads_per_task * hd];
            // SAFETY: each (token, head) slice of `att` is written by exactly one task, and `att`
            // outlives the pool call.
            let o = unsafe {
                std::slice::from_raw_parts_mut(out.get().wrapping_add(at), heads_per_task * hd)
            };
            head_dispatch(&head, qs, one_pass && f16_cache(t.seq), &mut scratch, o);
        }
    });
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

#[inline(always)]
fn head_kernel(h: &Head, q: &[f32], f16_acc: bool, scratch: &mut Vec<f32>, out: &mut [f32]) {
    let hd = h.dim;
    if f16_acc {
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
            sum = sum * ms + vs;
        }
        let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
        for (o, a) in out.iter_mut().zip(acc.iter()) {
            *o = a * inv;
        }
        return;
    }
    // f32, for every query head in `q` (heads sharing this KV head): scores, then one softmax,
    // then the weighted sum of values; each key and value row is read once for all of them.
    let n = h.hi + 1 - h.lo;
    let g = q.len() / hd;
    scratch.clear();
    scratch.resize(g * n, 0.0);
    for j in 0..n {
        let key = h.key(h.lo + j, hd);
        for (k, qk) in q.chunks_exact(hd).enumerate() {
            scratch[k * n + j] = dot_f32(qk, key) * h.scale;
        }
    }
    let mut inv = [0f32; 16];
    let mut inv_big = Vec::new();
    let inv: &mut [f32] = if g <= 16 {
        &mut inv[..g]
    } else {
        inv_big.resize(g, 0.0);
        &mut inv_big
    };
    for (s, inv) in scratch.chunks_exact_mut(n).zip(inv.iter_mut()) {
        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in s.iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        *inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    }
    out.fill(0.0);
    for j in 0..n {
        let val = h.val(h.lo + j, hd);
        for (k, o) in out.chunks_exact_mut(hd).enumerate() {
            let w = scratch[k * n + j];
            for (o, &v) in o.iter_mut().zip(val) {
                *o = v.mul_add(w, *o);
            }
        }
    }
    for (o, &inv) in out.chunks_exact_mut(hd).zip(inv.iter()) {
        o.iter_mut().for_each(|o| *o *= inv);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn head_avx2(h: &Head, q: &[f32], f16_acc: bool, scratch: &mut Vec<f32>, out: &mut [f32]) {
    head_kernel(h, q, f16_acc, scratch, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn head_avx512(h: &Head, q: &[f32], f16_acc: bool, scratch: &mut Vec<f32>, out: &mut [f32]) {
    head_kernel(h, q, f16_acc, scratch, out)
}

fn head_dispatch(h: &Head, q: &[f32], f16_acc: bool, scratch: &mut Vec<f32>, out: &mut [f32]) {
    match simd_level() {
        // SAFETY: the level is only chosen when the CPU reports these features.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { head_avx512(h, q, f16_acc, scratch, out) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { head_avx2(h, q, f16_acc, scratch, out) },
        _ => head_kernel(h, q, f16_acc, scratch, out),
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

    /// Plain softmax attention in f64 over the f16-rounded cache.
    #[test]
    fn f32_path_matches_softmax_and_levels_agree() {
        let (hd, n_pos) = (64, 37);
        let keys: Vec<f16> = (0..n_pos * hd)
            .map(|i| f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 40.0))
            .collect();
        let vals: Vec<f16> = (0..n_pos * hd)
            .map(|i| f16::from_f32(((i * 53 % 97) as f32 - 48.0) / 30.0))
            .collect();
        let q: Vec<f32> = (0..hd).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let (mut kf, mut vf) = (vec![0f32; keys.len()], vec![0f32; vals.len()]);
        let bytes = |v: &[f16]| -> Vec<u8> { v.iter().flat_map(|h| h.to_le_bytes()).collect() };
        widen_f16(&bytes(&keys), &mut kf);
        widen_f16(&bytes(&vals), &mut vf);
        for (a, b) in kf.iter().zip(&keys) {
            assert_eq!(*a, b.to_f32());
        }
        let h = Head {
            dim: hd,
            keys: &kf,
            vals: &vf,
            stride: hd,
            off: 0,
            lo: 3,
            hi: n_pos - 1,
            scale: 0.125,
        };
        let s: Vec<f64> = (3..n_pos)
            .map(|p| {
                (0..hd)
                    .map(|d| q[d] as f64 * kf[p * hd + d] as f64)
                    .sum::<f64>()
                    * 0.125
            })
            .collect();
        let m = s.iter().cloned().fold(f64::MIN, f64::max);
        let w: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = w.iter().sum();
        for f16_acc in [false, true] {
            let mut out = vec![0f32; hd];
            head_dispatch(&h, &q, f16_acc, &mut Vec::new(), &mut out);
            let mut portable = vec![0f32; hd];
            head_kernel(&h, &q, f16_acc, &mut Vec::new(), &mut portable);
            assert_eq!(
                out, portable,
                "SIMD and portable differ (f16_acc {f16_acc})"
            );
            let tol = if f16_acc { 2e-2 } else { 1e-5 };
            for d in 0..hd {
                let want: f64 = (0..w.len())
                    .map(|j| w[j] * vf[(3 + j) * hd + d] as f64)
                    .sum::<f64>()
                    / z;
                assert!(
                    (out[d] as f64 - want).abs() <= tol * want.abs().max(0.1),
                    "f16_acc {f16_acc} d {d}: {} vs {want}",
                    out[d]
                );
            }
        }
        // Query heads sharing the KV head, evaluated together, give each one's own result.
        let q2: Vec<f32> = q.iter().rev().map(|v| v * 0.5).collect();
        let both: Vec<f32> = q.iter().chain(&q2).copied().collect();
        let mut out2 = vec![0f32; 2 * hd];
        head_dispatch(&h, &both, false, &mut Vec::new(), &mut out2);
        for (qi, o) in [&q, &q2].into_iter().zip(out2.chunks_exact(hd)) {
            let mut alone = vec![0f32; hd];
            head_dispatch(&h, qi, false, &mut Vec::new(), &mut alone);
            assert_eq!(o, &alone[..]);
        }
    }
}

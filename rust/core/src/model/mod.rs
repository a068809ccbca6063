//! Model forward passes. One `Model` per GGUF file; architectures differ only in which optional
//! weights exist and a few switches in `ModelConfig` (norm placement, RoPE style, activation).
//!
//! `forward` evaluates a batch of tokens that may belong to several sequences at different
//! positions (each with its own KV cache), and returns logits only for the rows asked for.

mod config;
pub mod ops;

use std::sync::Arc;

pub use config::{Arch, ModelConfig, RopeStyle};
use half::f16;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::kv::KvCache;
use crate::quant::f16::{f16_to_f32, round_f16};
use crate::quant::{dequantize, GgmlType};
use crate::tensor::{matmul, QMatrix, ThreadPool};

struct Layer {
    attn_norm: Vec<f32>,
    wq: TensorInfo,
    wk: TensorInfo,
    wv: TensorInfo,
    wo: TensorInfo,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    attn_post_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    ffn_gate: TensorInfo,
    ffn_up: TensorInfo,
    ffn_down: TensorInfo,
    ffn_post_norm: Option<Vec<f32>>,
}

pub struct Model {
    pub file: Arc<GgufFile>,
    pub cfg: ModelConfig,
    layers: Vec<Layer>,
    tok_embd: TensorInfo,
    output: TensorInfo,
    output_norm: Vec<f32>,
    theta_scale: f32,
    theta_scale_swa: f32,
    pool: ThreadPool,
}

/// One token of a batch: which sequence (index into the caches passed to `forward`), its
/// position there, and whether its logits are wanted.
#[derive(Clone, Copy, Debug)]
pub struct BatchToken {
    pub token: u32,
    pub pos: usize,
    pub seq: usize,
    pub logits: bool,
}

pub struct ForwardOutput {
    /// n_vocab logits for each token with `logits: true`, in batch order.
    pub logits: Vec<f32>,
    /// Final-normed hidden states of every token (only when asked for: embeddings).
    pub hidden: Option<Vec<f32>>,
}

fn expect_shape(t: &TensorInfo, dims: &[usize]) -> Result<()> {
    let got: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    if got != dims {
        return Err(Error::load(format!(
            "tensor {} has shape {got:?}, expected {dims:?}",
            t.name
        )));
    }
    Ok(())
}

impl Model {
    pub fn load(file: Arc<GgufFile>, n_threads: usize) -> Result<Self> {
        let cfg = ModelConfig::from_gguf(&file)?;
        let get = |name: &str| -> Result<TensorInfo> {
            file.tensor(name)
                .cloned()
                .ok_or_else(|| Error::load(format!("missing tensor {name}")))
        };
        let vec_f32 = |name: &str, n: usize| -> Result<Vec<f32>> {
            let t = get(name)?;
            expect_shape(&t, &[n])?;
            let mut v = vec![0f32; n];
            dequantize(t.ggml_type, file.tensor_data(&t), &mut v)?;
            Ok(v)
        };
        let opt_vec = |name: &str, n: usize| -> Result<Option<Vec<f32>>> {
            if file.tensor(name).is_some() {
                vec_f32(name, n).map(Some)
            } else {
                Ok(None)
            }
        };
        let (e, hd) = (cfg.n_embd, cfg.head_dim);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let l = Layer {
                attn_norm: vec_f32(&n("attn_norm.weight"), e)?,
                wq: get(&n("attn_q.weight"))?,
                wk: get(&n("attn_k.weight"))?,
                wv: get(&n("attn_v.weight"))?,
                wo: get(&n("attn_output.weight"))?,
                q_norm: opt_vec(&n("attn_q_norm.weight"), hd)?,
                k_norm: opt_vec(&n("attn_k_norm.weight"), hd)?,
                attn_post_norm: opt_vec(&n("post_attention_norm.weight"), e)?,
                ffn_norm: vec_f32(&n("ffn_norm.weight"), e)?,
                ffn_gate: get(&n("ffn_gate.weight"))?,
                ffn_up: get(&n("ffn_up.weight"))?,
                ffn_down: get(&n("ffn_down.weight"))?,
                ffn_post_norm: opt_vec(&n("post_ffw_norm.weight"), e)?,
            };
            expect_shape(&l.wq, &[e, cfg.q_dim()])?;
            expect_shape(&l.wk, &[e, cfg.kv_dim()])?;
            expect_shape(&l.wv, &[e, cfg.kv_dim()])?;
            expect_shape(&l.wo, &[cfg.q_dim(), e])?;
            expect_shape(&l.ffn_gate, &[e, cfg.n_ff])?;
            expect_shape(&l.ffn_up, &[e, cfg.n_ff])?;
            expect_shape(&l.ffn_down, &[cfg.n_ff, e])?;
            if cfg.arch == Arch::Gemma3
                && (l.q_norm.is_none() || l.attn_post_norm.is_none() || l.ffn_post_norm.is_none())
            {
                return Err(Error::load(format!(
                    "gemma3 layer {il} lacks its QK or post norms"
                )));
            }
            layers.push(l);
        }
        let tok_embd = get("token_embd.weight")?;
        expect_shape(&tok_embd, &[e, cfg.n_vocab])?;
        let output = match file.tensor("output.weight") {
            Some(t) => t.clone(),
            None => tok_embd.clone(),
        };
        expect_shape(&output, &[e, cfg.n_vocab])?;
        let output_norm = vec_f32("output_norm.weight", e)?;
        let theta_scale = ops::rope_theta_scale(cfg.n_rot, cfg.rope_base);
        let theta_scale_swa = ops::rope_theta_scale(cfg.n_rot, cfg.rope_base_swa);
        Ok(Model {
            file,
            cfg,
            layers,
            tok_embd,
            output,
            output_norm,
            theta_scale,
            theta_scale_swa,
            pool: ThreadPool::new(n_threads),
        })
    }

    pub fn new_cache(&self, n_ctx: usize) -> Result<KvCache> {
        KvCache::new(self.cfg.n_layer, n_ctx, self.cfg.kv_dim())
    }

    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    fn mat(&self, t: &TensorInfo) -> QMatrix<'_> {
        let (cols, rows) = t.rows();
        // Shapes were checked at load; the bytes are the file's own.
        QMatrix {
            ty: t.ggml_type,
            data: self.file.tensor_data(t),
            rows,
            cols,
        }
    }

    fn linear(&self, t: &TensorInfo, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let w = self.mat(t);
        let mut y = vec![0f32; n * w.rows];
        matmul(&self.pool, &w, x, n, &mut y)?;
        Ok(y)
    }

    /// Evaluate `batch`. `caches[seq]` is the KV cache of sequence `seq`. Every position earlier than
    /// a token's own must already be in its cache (or earlier in this batch).
    pub fn forward(
        &self,
        batch: &[BatchToken],
        caches: &mut [&mut KvCache],
        want_hidden: bool,
    ) -> Result<ForwardOutput> {
        self.pool
            .install(|| self.forward_on_pool(batch, caches, want_hidden))
    }

    fn forward_on_pool(
        &self,
        batch: &[BatchToken],
        caches: &mut [&mut KvCache],
        want_hidden: bool,
    ) -> Result<ForwardOutput> {
        let cfg = &self.cfg;
        let n = batch.len();
        let (e, hd, kvd) = (cfg.n_embd, cfg.head_dim, cfg.kv_dim());
        for t in batch {
            if t.token as usize >= cfg.n_vocab {
                return Err(Error::invalid(format!(
                    "token id {} out of range (vocab {})",
                    t.token, cfg.n_vocab
                )));
            }
            let cache = caches.get(t.seq).ok_or_else(|| {
                Error::invalid(format!("batch names sequence {} with no cache", t.seq))
            })?;
            if t.pos >= cache.n_ctx() {
                return Err(Error::ContextFull(format!(
                    "position {} exceeds the context size {}",
                    t.pos,
                    cache.n_ctx()
                )));
            }
        }
        // Embeddings.
        let mut x = vec![0f32; n * e];
        let emb = self.mat(&self.tok_embd);
        for (i, t) in batch.iter().enumerate() {
            dequantize(
                emb.ty,
                emb.row(t.token as usize),
                &mut x[i * e..(i + 1) * e],
            )?;
        }
        if cfg.arch == Arch::Gemma3 {
            let s = (e as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }

        let mut xn = vec![0f32; n * e];
        let mut att = vec![0f32; n * cfg.q_dim()];
        let group = cfg.n_head / cfg.n_head_kv;
        for (il, l) in self.layers.iter().enumerate() {
            xn.copy_from_slice(&x);
            xn.chunks_exact_mut(e)
                .for_each(|r| ops::rmsnorm(r, &l.attn_norm, cfg.rms_eps));
            let mut q = self.linear(&l.wq, &xn, n)?;
            let mut k = self.linear(&l.wk, &xn, n)?;
            let v = self.linear(&l.wv, &xn, n)?;
            if let Some(w) = &l.q_norm {
                q.chunks_exact_mut(hd)
                    .for_each(|h| ops::rmsnorm(h, w, cfg.rms_eps));
            }
            if let Some(w) = &l.k_norm {
                k.chunks_exact_mut(hd)
                    .for_each(|h| ops::rmsnorm(h, w, cfg.rms_eps));
            }
            let swa = cfg.swa_layers[il];
            let theta_scale = if swa {
                self.theta_scale_swa
            } else {
                self.theta_scale
            };
            let neox = cfg.rope_style == RopeStyle::Neox;
            let mut rc = Vec::with_capacity(cfg.n_rot / 2);
            for (i, t) in batch.iter().enumerate() {
                ops::rope_cache(
                    t.pos as f32,
                    cfg.rope_scale,
                    theta_scale,
                    cfg.n_rot,
                    &mut rc,
                );
                for h in q[i * cfg.q_dim()..(i + 1) * cfg.q_dim()].chunks_exact_mut(hd) {
                    ops::rope(&mut h[..cfg.n_rot], &rc, neox);
                }
                for h in k[i * kvd..(i + 1) * kvd].chunks_exact_mut(hd) {
                    ops::rope(&mut h[..cfg.n_rot], &rc, neox);
                }
                caches[t.seq].store(
                    il,
                    t.pos,
                    &k[i * kvd..(i + 1) * kvd],
                    &v[i * kvd..(i + 1) * kvd],
                );
            }
            // Attention: each token over its own sequence's positions [lo, pos], every
            // (token, head) pair an independent task on the pool.
            let f16_acc = n < F32_ATTENTION_MIN_TOKENS;
            let qd = cfg.q_dim();
            let caches_ro: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
            let out = AttOut(att.as_mut_ptr());
            let n_tasks = n * cfg.n_head;
            let per = n_tasks.div_ceil((self.pool.n_threads() * 4).min(n_tasks).max(1));
            self.pool.run(n_tasks.div_ceil(per), &|c| {
                let mut scratch = Vec::new();
                for task in c * per..((c + 1) * per).min(n_tasks) {
                    let (i, h) = (task / cfg.n_head, task % cfg.n_head);
                    let t = batch[i];
                    let lo = if swa && cfg.n_swa > 0 {
                        (t.pos + 1).saturating_sub(cfg.n_swa)
                    } else {
                        0
                    };
                    let cache = caches_ro[t.seq];
                    let qh = &q[i * qd + h * hd..i * qd + (h + 1) * hd];
                    // SAFETY: each (token, head) slice of `att` is written by exactly one task, and
                    // `att` outlives the pool call.
                    let o = unsafe { std::slice::from_raw_parts_mut(out.at(i * qd + h * hd), hd) };
                    let (keys, vals) = (cache.keys(il), cache.values(il));
                    attention_head(
                        qh,
                        keys,
                        vals,
                        kvd,
                        (h / group) * hd,
                        lo,
                        t.pos,
                        cfg.attn_scale,
                        f16_acc,
                        &mut scratch,
                        o,
                    );
                }
            });
            let mut o = self.linear(&l.wo, &att, n)?;
            if let Some(w) = &l.attn_post_norm {
                o.chunks_exact_mut(e)
                    .for_each(|r| ops::rmsnorm(r, w, cfg.rms_eps));
            }
            ops::add_into(&mut x, &o);

            xn.copy_from_slice(&x);
            xn.chunks_exact_mut(e)
                .for_each(|r| ops::rmsnorm(r, &l.ffn_norm, cfg.rms_eps));
            let mut g = self.linear(&l.ffn_gate, &xn, n)?;
            let u = self.linear(&l.ffn_up, &xn, n)?;
            match cfg.arch {
                Arch::Gemma3 => g
                    .iter_mut()
                    .zip(&u)
                    .for_each(|(a, b)| *a = ops::gelu_f16_table(*a) * b),
                Arch::Llama => g
                    .iter_mut()
                    .zip(&u)
                    .for_each(|(a, b)| *a = ops::silu(*a) * b),
            }
            let mut d = self.linear(&l.ffn_down, &g, n)?;
            if let Some(w) = &l.ffn_post_norm {
                d.chunks_exact_mut(e)
                    .for_each(|r| ops::rmsnorm(r, w, cfg.rms_eps));
            }
            ops::add_into(&mut x, &d);
        }

        x.chunks_exact_mut(e)
            .for_each(|r| ops::rmsnorm(r, &self.output_norm, cfg.rms_eps));
        let rows: Vec<usize> = (0..n).filter(|&i| batch[i].logits).collect();
        let mut logits = Vec::new();
        if !rows.is_empty() {
            let mut sel = Vec::with_capacity(rows.len() * e);
            for &i in &rows {
                sel.extend_from_slice(&x[i * e..(i + 1) * e]);
            }
            logits = self.linear(&self.output, &sel, rows.len())?;
            if cfg.final_logit_softcap > 0.0 {
                let c = cfg.final_logit_softcap;
                logits.iter_mut().for_each(|v| *v = (*v / c).tanh() * c);
            }
        }
        Ok(ForwardOutput {
            logits,
            hidden: want_hidden.then_some(x),
        })
    }

    /// Type of every weight matrix (for summaries).
    pub fn weight_type(&self) -> GgmlType {
        self.layers
            .first()
            .map(|l| l.ffn_gate.ggml_type)
            .unwrap_or(GgmlType::F32)
    }
}

/// Batches of at least this many tokens take llama.cpp's tiled f32 attention path; smaller ones
/// (and single-token decode) its f16-accumulating path. We follow the same split so our rounding,
/// and therefore our tokens, match its.
const F32_ATTENTION_MIN_TOKENS: usize = 64;

struct AttOut(*mut f32);
// SAFETY: tasks write disjoint (token, head) slices; see the call site.
unsafe impl Sync for AttOut {}

impl AttOut {
    fn at(&self, i: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer this pointer came from.
        unsafe { self.0.add(i) }
    }
}

#[inline(always)]
fn dot_f16_f32(q: &[f32], k: &[f16]) -> f32 {
    let mut acc = [0f32; 8];
    let mut s = 0f32;
    let mut qc = q.chunks_exact(8);
    let mut kc = k.chunks_exact(8);
    for (a, b) in (&mut qc).zip(&mut kc) {
        for l in 0..8 {
            acc[l] = a[l].mul_add(f16_to_f32(b[l].to_bits()), acc[l]);
        }
    }
    for (a, b) in qc.remainder().iter().zip(kc.remainder()) {
        s += a * f16_to_f32(b.to_bits());
    }
    acc.iter().sum::<f32>() + s
}

/// One query head against keys/values at positions [lo, hi] of a cache laid out [pos][kv_dim],
/// this head's slice starting at `off`: a single pass with an online softmax. With `f16_acc` the
/// query is rounded to f16 and the value accumulator kept in f16 (fused multiply-add, then
/// rounding), as llama.cpp's CPU flash-attention does for small batches; otherwise all in f32.
#[allow(clippy::too_many_arguments)]
fn attention_head(
    q: &[f32],
    keys: &[f16],
    vals: &[f16],
    kvd: usize,
    off: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    f16_acc: bool,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    let round = |v: f32| if f16_acc { round_f16(v) } else { v };
    scratch.clear();
    scratch.resize(2 * hd, 0.0);
    let (qr, acc) = scratch.split_at_mut(hd);
    for (d, &v) in qr.iter_mut().zip(q) {
        *d = round(v);
    }
    let mut m = f32::NEG_INFINITY;
    let mut sum = 0f32;
    for p in lo..=hi {
        let kr = &keys[p * kvd + off..p * kvd + off + hd];
        let s = dot_f16_f32(qr, kr) * scale;
        let mut ms = 1.0;
        let mut vs = 1.0;
        if s > m {
            ms = if m == f32::NEG_INFINITY {
                0.0
            } else {
                (m - s).exp()
            };
            m = s;
            for a in acc.iter_mut() {
                *a = round(*a * ms);
            }
        } else {
            vs = (s - m).exp();
        }
        let vr = &vals[p * kvd + off..p * kvd + off + hd];
        for (a, v) in acc.iter_mut().zip(vr) {
            *a = round(f16_to_f32(v.to_bits()).mul_add(vs, *a));
        }
        sum = sum * ms + vs;
    }
    let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = a * inv;
    }
}

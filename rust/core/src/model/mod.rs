//! Model forward passes. One `Model` per GGUF file; architectures differ only in which optional
//! weights exist and a few switches in `ModelConfig` (norm placement, RoPE style, activation).
//!
//! `forward` evaluates a batch of tokens that may belong to several sequences at different
//! positions (each with its own block table in one KV pool), and returns logits only for the rows
//! asked for.

mod attention;
mod config;
pub mod ops;

use std::collections::HashMap;
use std::sync::Arc;

pub use attention::FlashAttn;
use attention::{attention, AttnParams};
pub use config::{Arch, ModelConfig, RopeOverrides, RopeStyle, Yarn};

use crate::cpu::simd_dispatch;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::kv::{BlockTable, CacheTypes, KvPool, KvSeq, BLOCK};
use crate::quant::repack::Tiles;
use crate::quant::{dequantize, GgmlType};
use crate::tensor::{matmul_many, pack_tiles, Activations, QMatrix, ThreadPool};

/// The Q, K and V projections: three matrices, or one whose output rows are [Q | K | V] (phi3).
enum Qkv {
    Separate([TensorInfo; 3]),
    Fused(TensorInfo),
}

struct Layer {
    attn_norm: Vec<f32>,
    qkv: Qkv,
    wo: TensorInfo,
    /// Biases of the Q, K, V projections (qwen2).
    qkv_bias: Option<[Vec<f32>; 3]>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    attn_post_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// None when `ffn_up` is fused: its output rows are [gate | up] (phi3).
    ffn_gate: Option<TensorInfo>,
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
    /// The matrices repacked for the kernels in use, by tensor offset (their mapped pages are
    /// given back: see `pack_weights`).
    tiles: HashMap<u64, Tiles>,
    /// RoPE frequency factors for contexts up to `cfg.n_ctx_orig` and beyond it (the same
    /// vector twice for a single `rope_freqs` tensor).
    rope_factors: Option<[Vec<f32>; 2]>,
    theta_scale: f32,
    theta_scale_swa: f32,
    pool: ThreadPool,
    /// Threads for single-token batches (`--threads`) and for larger ones (`--threads-batch`).
    threads: usize,
    threads_batch: usize,
    cache_types: CacheTypes,
    flash_attn: FlashAttn,
    /// Deterministic mode: every token summed in one order whatever shares its batch.
    deterministic: bool,
}

/// One token of a batch: which sequence (index into the block tables passed to `forward`), its
/// cell there, its RoPE position, and whether its logits are wanted.
#[derive(Clone, Copy, Debug)]
pub struct BatchToken {
    pub token: u32,
    /// The cell its key and value go to; it attends to the cells before it.
    pub pos: usize,
    /// The position RoPE rotates it by: `pos`, except where self-extend has regrouped the
    /// sequence's positions.
    pub rope_pos: usize,
    pub seq: usize,
    pub logits: bool,
}

pub struct ForwardOutput {
    /// n_vocab logits for each token with `logits: true`, in batch order.
    pub logits: Vec<f32>,
    /// Final-normed hidden states of every token (only when asked for: embeddings).
    pub hidden: Option<Vec<f32>>,
}

/// Repack the matrices `ts` for the kernels in use (see `tensor::pack_tiles`), each once, on
/// `pool`. The file's pages of a repacked tensor are given back as packing goes, sixteen tiles
/// at a time, so memory holds one copy of the weights (and a little), not two. (The token
/// embeddings are still read from the file; only the rows looked up come back in.)
/// The matrices `ts` repacked for the kernels in use, all in one buffer in the order given (see
/// `Tiles::pack_all`), keyed by file offset; the file's pages of each are given back as read.
fn pack_weights(pool: &ThreadPool, file: &GgufFile, ts: &[&TensorInfo]) -> HashMap<u64, Tiles> {
    let mut seen = std::collections::HashSet::new();
    // Shapes were checked; a type without blocks of `cols` has no tiles.
    let (infos, ws): (Vec<&TensorInfo>, Vec<QMatrix>) = ts
        .iter()
        .filter(|t| seen.insert(t.offset))
        .filter_map(|t| {
            let (cols, rows) = t.rows();
            let w = QMatrix::new(t.ggml_type, file.tensor_data(t), rows, cols).ok()?;
            Some((*t, w))
        })
        .unzip();
    let packed = pack_tiles(pool, &ws, &|i, range| file.release(infos[i], range));
    let mut out = HashMap::new();
    for (t, tiles) in infos.into_iter().zip(packed) {
        if let Some(tiles) = tiles {
            // Once more as a whole: a page fault maps the pages around it too (fault-around), so
            // a task's first reads brought some of the previous task's pages back.
            file.release(t, 0..t.nbytes);
            out.insert(t.offset, tiles);
        }
    }
    out
}

/// How a key row is cut into heads and rotated.
#[derive(Clone, Copy)]
struct KeyShape {
    head_dim: usize,
    n_rot: usize,
    neox: bool,
}

/// Rotate the keys of cells `from..from + deltas.len()` of `t` (every layer; `swa[layer]` picks
/// its RoPE base) by `deltas[i]` positions, with `table(delta, swa)` RoPE's cos/sin pairs for a
/// delta. One table per distinct delta and base.
fn rotate_cells(
    cache: &mut KvPool,
    t: &BlockTable,
    from: usize,
    deltas: &[i64],
    swa: &[bool],
    shape: KeyShape,
    table: impl Fn(i64, bool) -> Vec<(f32, f32)>,
) {
    let mut tables: HashMap<(i64, bool), Vec<(f32, f32)>> = HashMap::new();
    let mut buf = vec![0f32; cache.kv_dim()];
    for (layer, &w) in swa.iter().enumerate().take(cache.n_layer()) {
        for (i, &d) in deltas.iter().enumerate() {
            if d == 0 {
                continue;
            }
            let rot = tables.entry((d, w)).or_insert_with(|| table(d, w));
            cache.update_key(t, layer, from + i, &mut buf, |row| {
                for h in row.chunks_exact_mut(shape.head_dim) {
                    ops::rope(&mut h[..shape.n_rot], rot, shape.neox);
                }
            });
        }
    }
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
            let qkv = match file.tensor(&n("attn_qkv.weight")) {
                Some(t) => {
                    expect_shape(t, &[e, cfg.q_dim() + 2 * cfg.kv_dim()])?;
                    Qkv::Fused(t.clone())
                }
                None => {
                    let [q, k, v] = [
                        get(&n("attn_q.weight"))?,
                        get(&n("attn_k.weight"))?,
                        get(&n("attn_v.weight"))?,
                    ];
                    expect_shape(&q, &[e, cfg.q_dim()])?;
                    expect_shape(&k, &[e, cfg.kv_dim()])?;
                    expect_shape(&v, &[e, cfg.kv_dim()])?;
                    Qkv::Separate([q, k, v])
                }
            };
            let ffn_gate = match cfg.arch {
                Arch::Phi3 => file.tensor(&n("ffn_gate.weight")).cloned(),
                _ => Some(get(&n("ffn_gate.weight"))?),
            };
            let l = Layer {
                attn_norm: vec_f32(&n("attn_norm.weight"), e)?,
                qkv,
                wo: get(&n("attn_output.weight"))?,
                qkv_bias: match (
                    opt_vec(&n("attn_q.bias"), cfg.q_dim())?,
                    opt_vec(&n("attn_k.bias"), cfg.kv_dim())?,
                    opt_vec(&n("attn_v.bias"), cfg.kv_dim())?,
                ) {
                    (Some(q), Some(k), Some(v)) => Some([q, k, v]),
                    (None, None, None) => None,
                    _ => {
                        return Err(Error::load(format!(
                            "layer {il} has some but not all of the Q/K/V biases"
                        )))
                    }
                },
                q_norm: opt_vec(&n("attn_q_norm.weight"), hd)?,
                k_norm: opt_vec(&n("attn_k_norm.weight"), hd)?,
                attn_post_norm: opt_vec(&n("post_attention_norm.weight"), e)?,
                ffn_norm: vec_f32(&n("ffn_norm.weight"), e)?,
                ffn_gate,
                ffn_up: get(&n("ffn_up.weight"))?,
                ffn_down: get(&n("ffn_down.weight"))?,
                ffn_post_norm: opt_vec(&n("post_ffw_norm.weight"), e)?,
            };
            expect_shape(&l.wo, &[cfg.q_dim(), e])?;
            match &l.ffn_gate {
                Some(g) => {
                    expect_shape(g, &[e, cfg.n_ff])?;
                    expect_shape(&l.ffn_up, &[e, cfg.n_ff])?;
                }
                None => expect_shape(&l.ffn_up, &[e, 2 * cfg.n_ff])?,
            }
            expect_shape(&l.ffn_down, &[cfg.n_ff, e])?;
            if cfg.arch == Arch::Qwen2 && l.qkv_bias.is_none() {
                return Err(Error::load(format!(
                    "qwen2 layer {il} lacks its Q/K/V biases"
                )));
            }
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
        let half = cfg.n_rot / 2;
        let rope_factors = match (
            opt_vec("rope_freqs.weight", half)?,
            opt_vec("rope_factors_short.weight", half)?,
            opt_vec("rope_factors_long.weight", half)?,
        ) {
            (Some(f), None, None) => Some([f.clone(), f]),
            (None, Some(s), Some(l)) => Some([s, l]),
            (None, None, None) => None,
            _ => {
                return Err(Error::load(
                    "RoPE frequency factors: expected rope_freqs, or both rope_factors_short and rope_factors_long",
                ))
            }
        };
        if let Some(f) = rope_factors
            .iter()
            .flatten()
            .flatten()
            .find(|v| v.is_nan() || **v <= 0.0)
        {
            return Err(Error::load(format!(
                "RoPE frequency factor {f} is not positive"
            )));
        }
        let theta_scale = ops::rope_theta_scale(cfg.n_rot, cfg.rope_base);
        let theta_scale_swa = ops::rope_theta_scale(cfg.n_rot, cfg.rope_base_swa);
        // In the order a forward pass reads them (see `pack_weights`).
        let mut matrices: Vec<&TensorInfo> = Vec::new();
        for l in &layers {
            match &l.qkv {
                Qkv::Separate(qkv) => matrices.extend(qkv),
                Qkv::Fused(t) => matrices.push(t),
            }
            matrices.push(&l.wo);
            matrices.extend(&l.ffn_gate);
            matrices.extend([&l.ffn_up, &l.ffn_down]);
        }
        matrices.push(&output);
        let pool = ThreadPool::new(n_threads);
        let tiles = pack_weights(&pool, &file, &matrices);
        Ok(Model {
            file,
            cfg,
            layers,
            tok_embd,
            output,
            output_norm,
            tiles,
            rope_factors,
            theta_scale,
            theta_scale_swa,
            pool,
            threads: n_threads.max(1),
            threads_batch: n_threads.max(1),
            cache_types: CacheTypes::default(),
            flash_attn: FlashAttn::default(),
            deterministic: false,
        })
    }

    /// Use `threads` threads to generate (single-token batches) and `threads_batch` for prompts,
    /// over one pool of the larger size.
    pub fn set_threads(&mut self, threads: usize, threads_batch: usize) {
        let (t, tb) = (threads.max(1), threads_batch.max(1));
        if t.max(tb) != self.pool.size() {
            self.pool = ThreadPool::new(t.max(tb));
        }
        (self.threads, self.threads_batch) = (t, tb);
    }

    /// Override the file's RoPE settings (see `RopeOverrides`).
    pub fn set_rope(&mut self, o: &RopeOverrides) -> Result<()> {
        self.cfg.apply_rope_overrides(o)?;
        self.theta_scale = ops::rope_theta_scale(self.cfg.n_rot, self.cfg.rope_base);
        Ok(())
    }

    /// Store keys and values of caches made from now on as `types` (llama.cpp's `-ctk/-ctv`).
    pub fn set_cache_types(&mut self, types: CacheTypes) -> Result<()> {
        // Fails now, not at the first request, when the KV width does not fit the block size.
        KvPool::new(1, 1, self.cfg.kv_dim(), types)?;
        self.cache_types = types;
        Ok(())
    }

    /// Choose the attention path (`--flash-attn on|off|auto`).
    pub fn set_flash_attn(&mut self, f: FlashAttn) {
        self.flash_attn = f;
    }

    pub fn flash_attn(&self) -> FlashAttn {
        self.flash_attn
    }

    /// Deterministic mode (`--deterministic`): matmuls sum every token in the order of a token
    /// alone and attention takes its tiled path for every batch, so a sequence's logits are the
    /// same bits whatever else shares its batch and however its prompt is cut. Off: llama.cpp's
    /// batch-size-dependent orders (its exact outputs).
    pub fn set_deterministic(&mut self, on: bool) {
        self.deterministic = on;
    }

    pub fn deterministic(&self) -> bool {
        self.deterministic
    }

    pub fn cache_types(&self) -> CacheTypes {
        self.cache_types
    }

    /// Bytes of KV cache per context position (every layer, keys and values).
    pub fn cache_bytes_per_pos(&self) -> usize {
        KvPool::bytes_for(self.cfg.n_layer, 1, self.cfg.kv_dim(), self.cache_types)
            .unwrap_or(usize::MAX)
    }

    /// A KV pool of `n_blocks` blocks for this model.
    pub fn new_pool(&self, n_blocks: usize) -> Result<KvPool> {
        KvPool::new(
            self.cfg.n_layer,
            n_blocks,
            self.cfg.kv_dim(),
            self.cache_types,
        )
    }

    /// A pool and one table holding positions [0, n_ctx) (scratch evaluations: logits,
    /// embeddings, benchmarks).
    pub fn scratch_cache(&self, n_ctx: usize) -> Result<(KvPool, BlockTable)> {
        let mut pool = self.new_pool(n_ctx.div_ceil(BLOCK))?;
        let mut t = BlockTable::new(n_ctx);
        pool.grow(&mut t, n_ctx);
        Ok((pool, t))
    }

    /// A hash of what a KV row depends on (architecture, shapes, every tensor's name, type and
    /// place, the RoPE settings): slot files record it so a file from another model is refused.
    pub fn fingerprint(&self) -> u64 {
        use crate::kv::slot_file::{fnv1a, FNV_OFFSET};
        let c = &self.cfg;
        let mut h = fnv1a(c.arch_name.as_bytes(), FNV_OFFSET);
        for v in [
            c.n_layer,
            c.n_embd,
            c.n_head,
            c.n_head_kv,
            c.head_dim,
            c.n_vocab,
            c.n_rot,
        ] {
            h = fnv1a(&(v as u64).to_le_bytes(), h);
        }
        for v in [c.rope_base, c.rope_base_swa, c.rope_scale] {
            h = fnv1a(&v.to_le_bytes(), h);
        }
        for t in &self.file.tensors {
            h = fnv1a(t.name.as_bytes(), h);
            h = fnv1a(&t.ggml_type.id().to_le_bytes(), h);
            h = fnv1a(&t.offset.to_le_bytes(), h);
        }
        h
    }

    /// The RoPE frequency factors for a cache of `n_ctx` positions (phi3's long factors beyond
    /// the original context).
    fn rope_factors_for(&self, n_ctx: usize) -> Option<&[f32]> {
        self.rope_factors.as_ref().map(|[short, long]| {
            if n_ctx > self.cfg.n_ctx_orig {
                long.as_slice()
            } else {
                short.as_slice()
            }
        })
    }

    /// YaRN's table for RoPE base `base`; `mscale` overrides the configured attention factor.
    fn yarn_table(&self, base: f32, mscale: Option<f32>) -> Option<ops::YarnTable> {
        let cfg = &self.cfg;
        cfg.yarn.map(|y| ops::YarnTable {
            ext_factor: y.ext_factor,
            mscale: mscale.unwrap_or(y.attn_factor),
            corr_dims: ops::yarn_corr_dims(cfg.n_rot, y.n_ctx_orig, base, y.beta_fast, y.beta_slow),
        })
    }

    /// Context shift: drop positions [n_keep, n_keep + n_discard) of sequence `t` (filled up to
    /// `n_past`), move the rest down and re-rotate their keys by -n_discard positions, as
    /// llama.cpp's K-shift does (RoPE rotations compose, so rotating the stored key by the
    /// difference gives the key at its new position, up to the cache type's rounding). Blocks
    /// the shift writes that are shared are copied first; the blocks it empties go back to the
    /// pool. False (nothing changed) when the pool has no block left for such a copy.
    pub fn shift_cache(
        &self,
        cache: &mut KvPool,
        t: &mut BlockTable,
        n_keep: usize,
        n_discard: usize,
        n_past: usize,
    ) -> bool {
        if n_discard == 0 || n_keep + n_discard > n_past || n_past > t.capacity() {
            return false;
        }
        let n_moved = n_past - n_keep - n_discard;
        let new_len = n_keep + n_moved;
        // The blocks written: from the one holding n_keep to the new end (the ones after it
        // are only read, then dropped).
        for i in n_keep / BLOCK..new_len.div_ceil(BLOCK) {
            if !cache.make_writable(t, i) {
                return false;
            }
        }
        cache.unhash_from(t, n_keep);
        for p in n_keep..new_len {
            cache.move_cell(t, p + n_discard, p);
        }
        cache.truncate(t, new_len);
        self.rotate_keys(cache, t, n_keep, &vec![-(n_discard as i64); n_moved])
    }

    /// Re-rotate the keys of cells `from..from + deltas.len()` of `t` by `deltas[i]` positions
    /// each (context shift, self-extend), as llama.cpp's K-shift does: RoPE rotations compose,
    /// so rotating the stored key by the difference gives the key at its new position, up to
    /// the cache type's rounding. Blocks written that are shared are copied first, and the
    /// table's hashes from `from` on are dropped (its keys are no longer what evaluating its
    /// tokens gives). False (nothing changed) when the pool has no block left for a copy.
    pub fn rotate_keys(
        &self,
        cache: &mut KvPool,
        t: &mut BlockTable,
        from: usize,
        deltas: &[i64],
    ) -> bool {
        let cfg = &self.cfg;
        let end = from + deltas.len();
        if end > t.capacity() {
            return false;
        }
        for i in from / BLOCK..end.div_ceil(BLOCK) {
            if !cache.make_writable(t, i) {
                return false;
            }
        }
        cache.unhash_from(t, from);
        let factors = self.rope_factors_for(t.n_ctx());
        let table = |delta: i64, swa: bool| {
            let (theta_scale, base) = if swa {
                (self.theta_scale_swa, cfg.rope_base_swa)
            } else {
                (self.theta_scale, cfg.rope_base)
            };
            // The magnitude was scaled when the key was stored: only rotate now.
            let yarn = self.yarn_table(base, Some(1.0));
            let mut t = Vec::new();
            ops::rope_cache(
                delta as f32,
                cfg.rope_scale,
                theta_scale,
                cfg.n_rot,
                yarn,
                1.0,
                factors,
                &mut t,
            );
            t
        };
        let shape = KeyShape {
            head_dim: cfg.head_dim,
            n_rot: cfg.n_rot,
            neox: cfg.rope_style == RopeStyle::Neox,
        };
        rotate_cells(cache, t, from, deltas, &cfg.swa_layers, shape, table);
        true
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
            tiles: self.tiles.get(&t.offset),
        }
    }

    fn linear(&self, t: &TensorInfo, x: &[f32], n: usize) -> Result<Vec<f32>> {
        Ok(self.linears(&[t], x, n)?.pop().unwrap_or_default())
    }

    /// W·x for several matrices that read the same input, quantizing it once per format, all
    /// in one job on the pool (`matmul_many`).
    fn linears(&self, ts: &[&TensorInfo], x: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
        let ws: Vec<QMatrix> = ts.iter().map(|t| self.mat(t)).collect();
        let mut acts: Vec<Activations> = Vec::new();
        let mut pick = Vec::with_capacity(ws.len());
        for w in &ws {
            let i = match acts.iter().position(|a| a.pairs_with(w.ty)) {
                Some(i) => i,
                None => {
                    let a = Activations::new(&self.pool, w.ty, x, n)?;
                    acts.push(a.batch_invariant(self.deterministic));
                    acts.len() - 1
                }
            };
            pick.push(i);
        }
        let mats: Vec<(&QMatrix, &Activations)> =
            ws.iter().zip(&pick).map(|(w, &i)| (w, &acts[i])).collect();
        matmul_many(&self.pool, &mats)
    }

    /// `f` on every `len`-long row of `data`, on the pool for big batches, compiled for the
    /// detected SIMD level.
    fn rows(&self, data: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
        self.pool.for_rows(data, len, 16, &|i, r| {
            simd_dispatch(
                #[inline(always)]
                || f(i, r),
            )
        });
    }

    /// `ops::rmsnorm_rows` over `data`'s `len`-long rows, on the pool for big batches.
    fn norm_rows(&self, data: &mut [f32], len: usize, w: &[f32]) {
        let eps = self.cfg.rms_eps;
        self.pool.for_row_runs(data, len, 16, &|_, rows| {
            simd_dispatch(
                #[inline(always)]
                || ops::rmsnorm_rows(rows, len, w, eps),
            )
        });
    }

    /// Evaluate `batch`. `tables[seq]` is the block table of sequence `seq` in `cache`: it must
    /// hold a block for every position of the batch, the ones written not shared (see
    /// `KvPool::make_writable`), and every position earlier than a token's own must already be
    /// in it (or earlier in this batch).
    pub fn forward(
        &self,
        batch: &[BatchToken],
        cache: &mut KvPool,
        tables: &[&BlockTable],
        want_hidden: bool,
    ) -> Result<ForwardOutput> {
        let width = if batch.len() > 1 {
            self.threads_batch
        } else {
            self.threads
        };
        self.pool.with_width(width, || {
            self.forward_on_pool(batch, cache, tables, want_hidden)
        })
    }

    fn forward_on_pool(
        &self,
        batch: &[BatchToken],
        cache: &mut KvPool,
        tables: &[&BlockTable],
        want_hidden: bool,
    ) -> Result<ForwardOutput> {
        let cfg = &self.cfg;
        let mut n = batch.len();
        // Whether the last layer's FFN ran on the logits rows only (see there).
        let mut pruned = false;
        let (e, hd, kvd) = (cfg.n_embd, cfg.head_dim, cfg.kv_dim());
        for t in batch {
            if t.token as usize >= cfg.n_vocab {
                return Err(Error::invalid(format!(
                    "token id {} out of range (vocab {})",
                    t.token, cfg.n_vocab
                )));
            }
            let table = tables.get(t.seq).ok_or_else(|| {
                Error::invalid(format!("batch names sequence {} with no cache", t.seq))
            })?;
            if t.pos >= table.n_ctx() {
                return Err(Error::ContextFull(format!(
                    "position {} exceeds the context size {}",
                    t.pos,
                    table.n_ctx()
                )));
            }
            if t.pos >= table.capacity() {
                return Err(Error::invalid(format!(
                    "position {} of sequence {} has no KV block",
                    t.pos, t.seq
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

        // RoPE tables, one per position and base (they do not change from layer to layer).
        let rope_tables = |theta_scale: f32, base: f32| -> Vec<(f32, f32)> {
            let half = cfg.n_rot / 2;
            let yarn = self.yarn_table(base, None);
            let mut all = Vec::with_capacity(n * half);
            let mut rc = Vec::with_capacity(half);
            for t in batch {
                let factors = self.rope_factors_for(tables[t.seq].n_ctx());
                ops::rope_cache(
                    t.rope_pos as f32,
                    cfg.rope_scale,
                    theta_scale,
                    cfg.n_rot,
                    yarn,
                    cfg.rope_attn_factor,
                    factors,
                    &mut rc,
                );
                all.extend_from_slice(&rc);
            }
            all
        };
        let rope_global = rope_tables(self.theta_scale, cfg.rope_base);
        let rope_swa = if cfg.swa_layers.iter().any(|&s| s) {
            rope_tables(self.theta_scale_swa, cfg.rope_base_swa)
        } else {
            Vec::new()
        };
        let neox = cfg.rope_style == RopeStyle::Neox;
        let half = cfg.n_rot / 2;

        let mut xn = vec![0f32; n * e];
        let mut att = vec![0f32; n * cfg.q_dim()];
        for (il, l) in self.layers.iter().enumerate() {
            xn.copy_from_slice(&x);
            self.norm_rows(&mut xn, e, &l.attn_norm);
            let [mut q, mut k, mut v]: [Vec<f32>; 3] = match &l.qkv {
                Qkv::Separate([wq, wk, wv]) => self
                    .linears(&[wq, wk, wv], &xn, n)?
                    .try_into()
                    .map_err(|_| Error::invalid("projection count"))?,
                Qkv::Fused(w) => {
                    let qkv = self.linear(w, &xn, n)?;
                    let qd = cfg.q_dim();
                    let split = |from: usize, width: usize| -> Vec<f32> {
                        qkv.chunks_exact(qd + 2 * kvd)
                            .flat_map(|r| &r[from..from + width])
                            .copied()
                            .collect()
                    };
                    [split(0, qd), split(qd, kvd), split(qd + kvd, kvd)]
                }
            };
            if let Some([bq, bk, bv]) = &l.qkv_bias {
                for (m, b) in [(&mut q, bq), (&mut k, bk), (&mut v, bv)] {
                    self.rows(
                        m,
                        b.len(),
                        #[inline(always)]
                        |_, r| ops::add_into(r, b),
                    );
                }
            }
            let swa = cfg.swa_layers[il];
            let table = if swa { &rope_swa } else { &rope_global };
            // QK-norm (gemma3) then RoPE, per token row.
            for (m, width, norm) in [(&mut q, cfg.q_dim(), &l.q_norm), (&mut k, kvd, &l.k_norm)] {
                self.rows(
                    m,
                    width,
                    #[inline(always)]
                    |i, row| {
                        if let Some(w) = norm {
                            ops::rmsnorm_rows(row, hd, w, cfg.rms_eps);
                        }
                        for h in row.chunks_exact_mut(hd) {
                            ops::rope(&mut h[..cfg.n_rot], &table[i * half..(i + 1) * half], neox);
                        }
                    },
                );
            }
            // gemma3: llama.cpp scales Q in f32 after RoPE and attends with scale 1, so the f16
            // rounding of Q in flash attention sees the scaled values.
            let prescale = cfg.arch == Arch::Gemma3;
            if prescale {
                let s = cfg.attn_scale;
                self.rows(
                    &mut q,
                    cfg.q_dim(),
                    #[inline(always)]
                    |_, r| r.iter_mut().for_each(|v| *v *= s),
                );
            }
            for (i, t) in batch.iter().enumerate() {
                cache.store(
                    tables[t.seq],
                    il,
                    t.pos,
                    &k[i * kvd..(i + 1) * kvd],
                    &v[i * kvd..(i + 1) * kvd],
                );
            }
            let caches_ro: Vec<KvSeq> = tables.iter().map(|t| cache.seq(t)).collect();
            let params = AttnParams {
                n_head: cfg.n_head,
                n_head_kv: cfg.n_head_kv,
                head_dim: hd,
                scale: if prescale { 1.0 } else { cfg.attn_scale },
                window: if swa { cfg.n_swa } else { 0 },
                flash: self.flash_attn,
                fixed: self.deterministic,
            };
            attention(&self.pool, &params, batch, &q, &caches_ro, il, &mut att);
            let mut o = self.linear(&l.wo, &att, n)?;
            // After the last layer's output projection llama.cpp keeps only the rows that want
            // logits, so the FFN's matmuls see that batch size (kernels, and so rounding, depend
            // on it). Hidden states (embeddings) keep every row.
            if il + 1 == self.layers.len() && !want_hidden {
                let keep: Vec<usize> = (0..n).filter(|&i| batch[i].logits).collect();
                if !keep.is_empty() && keep.len() < n {
                    let pick = |m: &[f32]| -> Vec<f32> {
                        keep.iter()
                            .flat_map(|&i| m[i * e..(i + 1) * e].iter().copied())
                            .collect()
                    };
                    (o, x) = (pick(&o), pick(&x));
                    n = keep.len();
                    xn = vec![0f32; n * e];
                    pruned = true;
                }
            }
            if let Some(w) = &l.attn_post_norm {
                self.norm_rows(&mut o, e, w);
            }
            self.rows(
                &mut x,
                e,
                #[inline(always)]
                |i, r| ops::add_into(r, &o[i * e..(i + 1) * e]),
            );

            xn.copy_from_slice(&x);
            self.norm_rows(&mut xn, e, &l.ffn_norm);
            let nff = cfg.n_ff;
            let [mut g, u]: [Vec<f32>; 2] = match &l.ffn_gate {
                Some(gate) => self
                    .linears(&[gate, &l.ffn_up], &xn, n)?
                    .try_into()
                    .map_err(|_| Error::invalid("projection count"))?,
                None => {
                    let gu = self.linear(&l.ffn_up, &xn, n)?;
                    let half = |from: usize| -> Vec<f32> {
                        gu.chunks_exact(2 * nff)
                            .flat_map(|r| &r[from..from + nff])
                            .copied()
                            .collect()
                    };
                    [half(0), half(nff)]
                }
            };
            match cfg.arch {
                Arch::Gemma3 => self.rows(
                    &mut g,
                    nff,
                    #[inline(always)]
                    |i, r| ops::gelu_mul(r, &u[i * nff..(i + 1) * nff]),
                ),
                Arch::Llama | Arch::Qwen2 | Arch::Phi3 => self.rows(
                    &mut g,
                    nff,
                    #[inline(always)]
                    |i, r| ops::swiglu(r, &u[i * nff..(i + 1) * nff]),
                ),
            }
            let mut d = self.linear(&l.ffn_down, &g, n)?;
            if let Some(w) = &l.ffn_post_norm {
                self.norm_rows(&mut d, e, w);
            }
            self.rows(
                &mut x,
                e,
                #[inline(always)]
                |i, r| ops::add_into(r, &d[i * e..(i + 1) * e]),
            );
        }

        self.norm_rows(&mut x, e, &self.output_norm);
        let rows: Vec<usize> = (0..n).filter(|&i| pruned || batch[i].logits).collect();
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
            .map(|l| l.ffn_up.ggml_type)
            .unwrap_or(GgmlType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::CacheTypes;

    /// Keys rotated by per-cell deltas are the keys RoPE gives at the new positions (up to the
    /// f16 cache's rounding), for both RoPE styles and two bases.
    #[test]
    fn rotated_keys_are_the_keys_at_their_new_positions() {
        let (head_dim, n_rot, n_head) = (64, 48, 2);
        let kvd = head_dim * n_head;
        let swa = [false, true];
        let table = |p: i64, w: bool| {
            let (theta_scale, f) = if w { (0.8f32, 0.5f32) } else { (0.9, 1.0) };
            let mut t = Vec::new();
            ops::rope_cache(p as f32, f, theta_scale, n_rot, None, 1.0, None, &mut t);
            t
        };
        let n = 150;
        let old: Vec<i64> = (0..n).collect();
        // Self-extend-like moves: down by varying amounts, some cells not at all.
        let new: Vec<i64> = old
            .iter()
            .map(|&p| if p < 10 { p } else { p / 3 + 7 })
            .collect();
        for neox in [false, true] {
            let shape = KeyShape {
                head_dim,
                n_rot,
                neox,
            };
            let mut pool = KvPool::new(2, 4, kvd, CacheTypes::default()).unwrap();
            let mut t = BlockTable::new(256);
            assert!(pool.grow(&mut t, n as usize));
            let raw = |p: usize| -> Vec<f32> {
                (0..kvd)
                    .map(|i| (((p * kvd + i) * 37 % 101) as f32 - 50.0) / 40.0)
                    .collect()
            };
            let roped = |p: usize, at: i64, layer: usize| {
                let mut k = raw(p);
                let rot = table(at, swa[layer]);
                for h in k.chunks_exact_mut(head_dim) {
                    ops::rope(&mut h[..n_rot], &rot, neox);
                }
                k
            };
            for layer in 0..2 {
                for (p, &at) in old.iter().enumerate() {
                    let k = roped(p, at, layer);
                    pool.store(&t, layer, p, &k, &k);
                }
            }
            let deltas: Vec<i64> = new.iter().zip(&old).map(|(a, b)| a - b).collect();
            rotate_cells(&mut pool, &t, 0, &deltas, &swa, shape, table);
            let mut got = vec![0f32; kvd];
            for layer in 0..2 {
                for (p, &at) in new.iter().enumerate() {
                    pool.update_key(&t, layer, p, &mut got, |_| {});
                    let want = roped(p, at, layer);
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 2e-3 * b.abs().max(1.0),
                            "neox {neox} layer {layer} cell {p} [{i}]: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}

//! KV cache of one sequence: per layer, keys and values by position, stored as f16 (llama.cpp's
//! default cache type). The Engine issue turns this into a paged cache shared by slots.

use half::f16;

use crate::error::{Error, Result};

pub struct KvCache {
    n_layer: usize,
    n_ctx: usize,
    kv_dim: usize,
    k: Vec<f16>,
    v: Vec<f16>,
}

impl KvCache {
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> Result<Self> {
        let n = n_layer
            .checked_mul(n_ctx)
            .and_then(|x| x.checked_mul(kv_dim))
            .filter(|&n| n <= (1usize << 36))
            .ok_or_else(|| Error::invalid(format!("KV cache of {n_ctx} positions is too large")))?;
        Ok(Self {
            n_layer,
            n_ctx,
            kv_dim,
            k: vec![f16::ZERO; n],
            v: vec![f16::ZERO; n],
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Bytes held by the cache.
    pub fn nbytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 2
    }

    fn at(&self, layer: usize, pos: usize) -> usize {
        debug_assert!(layer < self.n_layer && pos < self.n_ctx);
        (layer * self.n_ctx + pos) * self.kv_dim
    }

    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let i = self.at(layer, pos);
        use crate::quant::f16::f32_to_f16;
        for (d, &s) in self.k[i..i + self.kv_dim].iter_mut().zip(k) {
            *d = f16::from_bits(f32_to_f16(s));
        }
        for (d, &s) in self.v[i..i + self.kv_dim].iter_mut().zip(v) {
            *d = f16::from_bits(f32_to_f16(s));
        }
    }

    /// Keys of `layer` for positions [0, n_ctx), row-major [pos][kv_dim].
    pub fn keys(&self, layer: usize) -> &[f16] {
        let i = self.at(layer, 0);
        &self.k[i..i + self.n_ctx * self.kv_dim]
    }

    pub fn values(&self, layer: usize) -> &[f16] {
        let i = self.at(layer, 0);
        &self.v[i..i + self.n_ctx * self.kv_dim]
    }
}

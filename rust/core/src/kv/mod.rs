//! KV cache of one slot: per layer, keys and values by position, each position one row of
//! `kv_dim` values stored as a GGUF block type (llama.cpp's `-ctk/-ctv`: f16 by default; f32,
//! q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1). Each slot of the engine owns one, allocated when the
//! engine starts; `slot_file` saves and restores one. (A paged pool shared by every slot, with
//! prefix blocks reused across slots, is the design's next step: see DESIGN.md.)

pub mod slot_file;

use std::ops::Range;

use crate::error::{Error, Result};
use crate::quant::quantize::quantize_row;
use crate::quant::{dequantize, GgmlType};

/// The types a cache can hold.
pub const CACHE_TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::IQ4_NL,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
];

/// The key and value types of a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheTypes {
    pub k: GgmlType,
    pub v: GgmlType,
}

impl Default for CacheTypes {
    fn default() -> Self {
        Self {
            k: GgmlType::F16,
            v: GgmlType::F16,
        }
    }
}

impl CacheTypes {
    /// Parse llama.cpp's names (`f16`, `q8_0`, …, any case).
    pub fn parse(k: &str, v: &str) -> Result<Self> {
        let one = |name: &str, which: &str| {
            GgmlType::from_name(&name.to_ascii_uppercase())
                .filter(|t| CACHE_TYPES.contains(t))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "unsupported cache type for {which}: {name} (use one of f32, f16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1)"
                    ))
                })
        };
        Ok(Self {
            k: one(k, "K")?,
            v: one(v, "V")?,
        })
    }
}

/// One of the two halves (keys or values) of a cache.
struct Store {
    ty: GgmlType,
    row_bytes: usize,
    data: Vec<u8>,
}

impl Store {
    fn new(ty: GgmlType, n_rows: usize, kv_dim: usize) -> Result<Self> {
        let row_bytes = ty.row_bytes(kv_dim).ok_or_else(|| {
            Error::invalid(format!(
                "cache type {} needs the KV width ({kv_dim}) to be a multiple of {}",
                ty.name().to_ascii_lowercase(),
                ty.block_size()
            ))
        })?;
        let n = n_rows
            .checked_mul(row_bytes)
            .filter(|&n| n <= (1usize << 38))
            .ok_or_else(|| Error::invalid("KV cache too large"))?;
        // Fallible: a context that does not fit in memory is an error, never an abort.
        let mut data = Vec::new();
        data.try_reserve_exact(n).map_err(|_| {
            Error::load(format!(
                "cannot allocate {} MiB for the KV cache: use a smaller context (-c / n_ctx) or a smaller cache type",
                n >> 20
            ))
        })?;
        data.resize(n, 0);
        Ok(Self {
            ty,
            row_bytes,
            data,
        })
    }

    fn get(&self, row: usize, dst: &mut [f32]) {
        self.widen(row, 1, dst)
    }

    fn rows(&self, row0: usize, n_rows: usize) -> &[u8] {
        &self.data[row0 * self.row_bytes..(row0 + n_rows) * self.row_bytes]
    }

    fn rows_mut(&mut self, row0: usize, n_rows: usize) -> &mut [u8] {
        &mut self.data[row0 * self.row_bytes..(row0 + n_rows) * self.row_bytes]
    }

    /// Move `n` rows from `from` to `to` (ranges may overlap).
    fn move_rows(&mut self, from: usize, to: usize, n: usize) {
        let rb = self.row_bytes;
        self.data.copy_within(from * rb..(from + n) * rb, to * rb);
    }

    fn put(&mut self, row: usize, x: &[f32]) {
        let at = row * self.row_bytes;
        // The width and type were checked when the cache was made.
        quantize_row(self.ty, x, &mut self.data[at..at + self.row_bytes])
            .expect("cache rows are whole blocks of a quantizable type");
    }

    fn widen(&self, row0: usize, n_rows: usize, dst: &mut [f32]) {
        self.widen_bytes(
            &self.data[row0 * self.row_bytes..(row0 + n_rows) * self.row_bytes],
            dst,
        );
    }

    fn widen_bytes(&self, src: &[u8], dst: &mut [f32]) {
        if self.ty == GgmlType::F16 {
            crate::quant::f16::widen_f16(src, dst);
        } else {
            dequantize(self.ty, src, dst).expect("cache rows are whole blocks of a known type");
        }
    }

    /// Values `cols` of `kv_dim`-wide rows [row0, row0 + n_rows), row-major into `dst`.
    fn widen_cols(
        &self,
        row0: usize,
        n_rows: usize,
        kv_dim: usize,
        cols: Range<usize>,
        dst: &mut [f32],
    ) {
        let w = cols.len();
        // Byte offsets of the columns when they fall on block boundaries (one head of a cache
        // whose head size is a multiple of the block size: every case but odd quantized ones).
        let span = self
            .ty
            .row_bytes(cols.start)
            .zip(self.ty.row_bytes(cols.end));
        let mut full = Vec::new();
        for r in 0..n_rows {
            let row = &self.data[(row0 + r) * self.row_bytes..][..self.row_bytes];
            let out = &mut dst[r * w..(r + 1) * w];
            match span {
                Some((b0, b1)) => self.widen_bytes(&row[b0..b1], out),
                None => {
                    full.resize(kv_dim, 0.0);
                    self.widen_bytes(row, &mut full);
                    out.copy_from_slice(&full[cols.clone()]);
                }
            }
        }
    }
}

/// Bytes of memory this process can still get (Linux: MemAvailable, and under an address-space
/// limit what is left of it), None where unknown.
pub fn available_memory() -> Option<usize> {
    let field = |text: &str, key: &str| -> Option<usize> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let mut avail = field(&meminfo, "MemAvailable:")?.checked_mul(1024)?;
    // "Max address space  <soft> <hard> bytes" when a limit is set.
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| field(&t, "Max address space"));
    let used = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| field(&t, "VmSize:"))
        .and_then(|kib| kib.checked_mul(1024));
    if let (Some(limit), Some(used)) = (limit, used) {
        avail = avail.min(limit.saturating_sub(used));
    }
    Some(avail)
}

pub struct KvCache {
    n_layer: usize,
    n_ctx: usize,
    kv_dim: usize,
    k: Store,
    v: Store,
}

impl KvCache {
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize, types: CacheTypes) -> Result<Self> {
        let rows = n_layer
            .checked_mul(n_ctx)
            .ok_or_else(|| Error::invalid(format!("KV cache of {n_ctx} positions is too large")))?;
        Ok(Self {
            n_layer,
            n_ctx,
            kv_dim,
            k: Store::new(types.k, rows, kv_dim)?,
            v: Store::new(types.v, rows, kv_dim)?,
        })
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Bytes a cache of these dimensions takes (None: a width the types cannot hold, or too
    /// many to count).
    pub fn bytes_for(
        n_layer: usize,
        n_ctx: usize,
        kv_dim: usize,
        types: CacheTypes,
    ) -> Option<usize> {
        let per_pos = types
            .k
            .row_bytes(kv_dim)?
            .checked_add(types.v.row_bytes(kv_dim)?)?;
        per_pos.checked_mul(n_layer)?.checked_mul(n_ctx)
    }

    pub fn types(&self) -> CacheTypes {
        CacheTypes {
            k: self.k.ty,
            v: self.v.ty,
        }
    }

    /// Bytes held by the cache.
    pub fn nbytes(&self) -> usize {
        self.k.data.len() + self.v.data.len()
    }

    fn row(&self, layer: usize, pos: usize) -> usize {
        debug_assert!(layer < self.n_layer && pos < self.n_ctx);
        layer * self.n_ctx + pos
    }

    /// Store the key and value rows (`kv_dim` values each) of `layer` at `pos`.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        debug_assert!(k.len() == self.kv_dim && v.len() == self.kv_dim);
        let r = self.row(layer, pos);
        self.k.put(r, k);
        self.v.put(r, v);
    }

    /// Bytes per position of the keys and of the values (one layer).
    pub fn row_bytes(&self) -> (usize, usize) {
        (self.k.row_bytes, self.v.row_bytes)
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Raw key and value bytes of `layer` at positions [0, n_pos) (for slot files).
    pub fn raw(&self, layer: usize, n_pos: usize) -> (&[u8], &[u8]) {
        let r = self.row(layer, 0);
        (self.k.rows(r, n_pos), self.v.rows(r, n_pos))
    }

    /// Writable raw key and value bytes of `layer` at positions [0, n_pos).
    pub fn raw_mut(&mut self, layer: usize, n_pos: usize) -> (&mut [u8], &mut [u8]) {
        let r = self.row(layer, 0);
        (self.k.rows_mut(r, n_pos), self.v.rows_mut(r, n_pos))
    }

    /// Copy positions [0, n_pos) of every layer from `src`, a cache of the same shape and types
    /// (prefix reuse across slots: the keys and values of a prompt another slot has evaluated).
    pub fn copy_prefix_from(&mut self, src: &KvCache, n_pos: usize) {
        assert!(
            src.types() == self.types() && src.kv_dim == self.kv_dim && src.n_layer == self.n_layer,
            "prefix copied between caches of different shapes"
        );
        let n_pos = n_pos.min(self.n_ctx).min(src.n_ctx);
        for layer in 0..self.n_layer {
            let (sk, sv) = src.raw(layer, n_pos);
            let (dk, dv) = self.raw_mut(layer, n_pos);
            dk.copy_from_slice(sk);
            dv.copy_from_slice(sv);
        }
    }

    /// Drop positions [n_keep, n_keep + n_discard) of every layer and move the `n_past` -
    /// `n_keep` - `n_discard` positions after them down (context shift). The moved keys still
    /// carry their old RoPE rotation; `rotate_key` re-rotates them.
    pub fn discard(&mut self, n_keep: usize, n_discard: usize, n_past: usize) {
        debug_assert!(n_keep + n_discard <= n_past && n_past <= self.n_ctx);
        let n_move = n_past - n_keep - n_discard;
        for layer in 0..self.n_layer {
            let r = self.row(layer, 0);
            self.k.move_rows(r + n_keep + n_discard, r + n_keep, n_move);
            self.v.move_rows(r + n_keep + n_discard, r + n_keep, n_move);
        }
    }

    /// Apply `f` to the key row of `layer` at `pos` (widened to f32 and stored back).
    pub fn update_key(
        &mut self,
        layer: usize,
        pos: usize,
        buf: &mut [f32],
        f: impl FnOnce(&mut [f32]),
    ) {
        let r = self.row(layer, pos);
        self.k.get(r, buf);
        f(buf);
        self.k.put(r, buf);
    }

    /// Keys of `layer` at positions [pos0, pos0 + n_pos), values `cols` of each (one head's), as
    /// f32 row-major [pos][cols] into `dst`: attention reads the cache one tile at a time.
    pub fn widen_keys(
        &self,
        layer: usize,
        pos0: usize,
        n_pos: usize,
        cols: Range<usize>,
        dst: &mut [f32],
    ) {
        debug_assert!(pos0 + n_pos <= self.n_ctx && cols.end <= self.kv_dim);
        self.k
            .widen_cols(self.row(layer, pos0), n_pos, self.kv_dim, cols, dst);
    }

    /// Values, as `widen_keys`.
    pub fn widen_values(
        &self,
        layer: usize,
        pos0: usize,
        n_pos: usize,
        cols: Range<usize>,
        dst: &mut [f32],
    ) {
        debug_assert!(pos0 + n_pos <= self.n_ctx && cols.end <= self.kv_dim);
        self.v
            .widen_cols(self.row(layer, pos0), n_pos, self.kv_dim, cols, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cache_type_stores_and_widens() {
        let kv_dim = 64;
        let k: Vec<f32> = (0..kv_dim).map(|i| (i as f32 - 30.0) / 16.0).collect();
        let v: Vec<f32> = k.iter().map(|x| -x * 0.5).collect();
        for ty in CACHE_TYPES {
            let mut c = KvCache::new(2, 4, kv_dim, CacheTypes { k: ty, v: ty }).unwrap();
            c.store(1, 2, &k, &v);
            let mut out = vec![0f32; 3 * kv_dim];
            c.widen_keys(1, 0, 3, 0..kv_dim, &mut out);
            let err = out[2 * kv_dim..]
                .iter()
                .zip(&k)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 0.25, "{ty}: {err}");
            assert!(out[..2 * kv_dim].iter().all(|&x| x == 0.0));
            c.widen_values(1, 0, 3, 0..kv_dim, &mut out);
            assert!((out[2 * kv_dim + 3] - v[3]).abs() < 0.25);
            // One head's columns of one position: block-aligned, and not (widened whole).
            for cols in [32..64, 8..24] {
                let mut head = vec![0f32; cols.len()];
                c.widen_values(1, 2, 1, cols.clone(), &mut head);
                assert_eq!(
                    head,
                    out[2 * kv_dim + cols.start..2 * kv_dim + cols.end],
                    "{ty} {cols:?}"
                );
            }
        }
        assert!(CacheTypes::parse("q8_0", "Q4_1").is_ok());
        assert!(CacheTypes::parse("q4_k", "f16").is_err());
        let t = CacheTypes::parse("q8_0", "f16").unwrap();
        let mut a = KvCache::new(2, 4, kv_dim, t).unwrap();
        let mut b = KvCache::new(2, 4, kv_dim, t).unwrap();
        a.store(1, 0, &k, &v);
        a.store(1, 1, &v, &k);
        a.store(1, 2, &k, &k);
        b.copy_prefix_from(&a, 2);
        assert_eq!(b.raw(1, 2), a.raw(1, 2));
        assert_ne!(b.raw(1, 3), a.raw(1, 3), "only the prefix is copied");
        let bad = CacheTypes::parse("q8_0", "f16").unwrap();
        assert!(KvCache::new(1, 4, 48, bad).is_err());
    }
}

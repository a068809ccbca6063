//! The KV pool: one allocation, made when the engine starts, of fixed-size blocks of `BLOCK`
//! cells; a cell holds, for every layer, one key row and one value row of `kv_dim` values stored
//! as a GGUF block type (llama.cpp's `-ctk/-ctv`: f16 by default; f32, q8_0, q4_0, q4_1,
//! iq4_nl, q5_0, q5_1). A sequence owns a `BlockTable` (its blocks in position order, shared by
//! every layer); attention reads through it one block (= one of its tiles) at a time.
//!
//! Blocks are refcounted. A full block can be registered under a chained hash of the tokens it
//! and every block before it hold (seeded with the cache types), so a later sequence with the
//! same prefix takes references to those blocks instead of evaluating or copying them. A block
//! that is registered or referenced twice is never written: a writer gets a copy first
//! (copy-on-write). Registered blocks nobody references stay cached until a block is needed,
//! then go least recently released first. `slot_file` saves and restores one table's cells.

pub mod slot_file;

use std::collections::{BTreeSet, HashMap};
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

    /// Copy `n` rows from `from` to `to` (ranges may overlap).
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

/// Cells per block: attention's tile (`model::attention::TILE`), so a tile is one block.
pub const BLOCK: usize = 64;

/// The blocks of one sequence, in position order (block i holds positions [64·i, 64·i + 64)),
/// and the chained hashes of its leading full blocks.
#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: Vec<u32>,
    /// Positions the sequence may reach (its slot's context): the padded view attention
    /// follows and RoPE's choice of factors depend on it.
    n_ctx: usize,
    /// Hashes of blocks [0, hashes.len()), each registered in the pool or a duplicate of one
    /// that is.
    hashes: Vec<u64>,
    /// False after a context shift: the blocks past `hashes` hold re-rotated keys, which are
    /// not what evaluating their tokens gives, so they are never offered to another sequence.
    hashable: bool,
}

impl BlockTable {
    pub fn new(n_ctx: usize) -> Self {
        Self {
            blocks: Vec::new(),
            n_ctx,
            hashes: Vec::new(),
            hashable: true,
        }
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Positions the table's blocks can hold.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * BLOCK
    }
}

/// Blocks needed for `n` cells.
pub fn blocks_for(n: usize) -> usize {
    n.div_ceil(BLOCK)
}

pub struct KvPool {
    n_layer: usize,
    kv_dim: usize,
    k: Store,
    v: Store,
    refs: Vec<u32>,
    /// The hash a block is registered under.
    hash: Vec<Option<u64>>,
    /// Registered blocks by hash.
    cached: HashMap<u64, u32>,
    /// Registered blocks nobody references, by the clock when the last reference went.
    idle: BTreeSet<(u64, u32)>,
    released_at: Vec<u64>,
    clock: u64,
    free: Vec<u32>,
    seed: u64,
}

impl KvPool {
    pub fn new(n_layer: usize, n_blocks: usize, kv_dim: usize, types: CacheTypes) -> Result<Self> {
        if n_blocks > u32::MAX as usize {
            return Err(Error::invalid("KV pool too large"));
        }
        let rows = n_layer
            .checked_mul(n_blocks)
            .and_then(|r| r.checked_mul(BLOCK))
            .ok_or_else(|| Error::invalid(format!("KV pool of {n_blocks} blocks is too large")))?;
        let seed = crate::kv::slot_file::fnv1a(
            &[types.k.id().to_le_bytes(), types.v.id().to_le_bytes()].concat(),
            crate::kv::slot_file::FNV_OFFSET,
        );
        Ok(Self {
            n_layer,
            kv_dim,
            k: Store::new(types.k, rows, kv_dim)?,
            v: Store::new(types.v, rows, kv_dim)?,
            refs: vec![0; n_blocks],
            hash: vec![None; n_blocks],
            cached: HashMap::new(),
            idle: BTreeSet::new(),
            released_at: vec![0; n_blocks],
            clock: 0,
            // Popped from the end: block 0 first.
            free: (0..n_blocks as u32).rev().collect(),
            seed,
        })
    }

    /// Bytes a pool of `n_cells` cells takes (None: a width the types cannot hold, or too many
    /// to count).
    pub fn bytes_for(
        n_layer: usize,
        n_cells: usize,
        kv_dim: usize,
        types: CacheTypes,
    ) -> Option<usize> {
        let per_pos = types
            .k
            .row_bytes(kv_dim)?
            .checked_add(types.v.row_bytes(kv_dim)?)?;
        per_pos.checked_mul(n_layer)?.checked_mul(n_cells)
    }

    pub fn types(&self) -> CacheTypes {
        CacheTypes {
            k: self.k.ty,
            v: self.v.ty,
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.refs.len()
    }

    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Bytes held by the pool.
    pub fn nbytes(&self) -> usize {
        self.k.data.len() + self.v.data.len()
    }

    /// Bytes per cell of the keys and of the values (one layer).
    pub fn row_bytes(&self) -> (usize, usize) {
        (self.k.row_bytes, self.v.row_bytes)
    }

    /// Blocks a sequence could get now: free ones and cached ones nobody references.
    pub fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Blocks referenced by some sequence.
    pub fn n_used(&self) -> usize {
        self.n_blocks() - self.available()
    }

    /// Registered (shareable) blocks, referenced or not.
    pub fn n_cached(&self) -> usize {
        self.cached.len()
    }

    pub fn refcount(&self, block: u32) -> u32 {
        self.refs[block as usize]
    }

    /// A block for one sequence (refcount 1): a free one, else the least recently released
    /// cached one (forgotten). None: every block is referenced.
    fn alloc(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let &(t, b) = self.idle.iter().next()?;
                self.idle.remove(&(t, b));
                if let Some(h) = self.hash[b as usize].take() {
                    self.cached.remove(&h);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    fn retain(&mut self, b: u32) {
        let i = b as usize;
        if self.refs[i] == 0 {
            self.idle.remove(&(self.released_at[i], b));
        }
        self.refs[i] += 1;
    }

    fn release(&mut self, b: u32) {
        let i = b as usize;
        debug_assert!(self.refs[i] > 0);
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] == 0 {
            if self.hash[i].is_some() {
                self.clock += 1;
                self.released_at[i] = self.clock;
                self.idle.insert((self.clock, b));
            } else {
                self.free.push(b);
            }
        }
    }

    /// Drop every block of `t` (the registered ones stay cached).
    pub fn clear(&mut self, t: &mut BlockTable) {
        self.truncate(t, 0);
    }

    /// Keep the blocks of `t` that hold positions [0, n); forget hashes past them.
    pub fn truncate(&mut self, t: &mut BlockTable, n: usize) {
        let keep = blocks_for(n);
        while t.blocks.len() > keep {
            let b = t.blocks.pop().expect("longer than keep");
            self.release(b);
        }
        t.hashes.truncate(n / BLOCK);
        if n <= t.hashes.len() * BLOCK {
            t.hashable = true;
        }
    }

    /// Give `t` blocks for positions [0, n). False (with what it could get) when the pool has
    /// too few.
    pub fn grow(&mut self, t: &mut BlockTable, n: usize) -> bool {
        while t.blocks.len() < blocks_for(n) {
            match self.alloc() {
                Some(b) => t.blocks.push(b),
                None => return false,
            }
        }
        true
    }

    /// Make block `i` of `t` safe to write: a copy when another sequence references it or it
    /// is registered (the cached copy keeps its contents). False when no block is left for
    /// the copy (a registered block only `t` holds is then unregistered instead).
    pub fn make_writable(&mut self, t: &mut BlockTable, i: usize) -> bool {
        let Some(&b) = t.blocks.get(i) else {
            return true;
        };
        let bi = b as usize;
        if self.refs[bi] == 1 && self.hash[bi].is_none() {
            return true;
        }
        let Some(nb) = self.alloc() else {
            if self.refs[bi] == 1 {
                if let Some(h) = self.hash[bi].take() {
                    self.cached.remove(&h);
                }
                return true;
            }
            return false;
        };
        let rows = self.n_layer * BLOCK;
        self.k.move_rows(bi * rows, nb as usize * rows, rows);
        self.v.move_rows(bi * rows, nb as usize * rows, rows);
        t.blocks[i] = nb;
        self.release(b);
        true
    }

    /// Chained hashes of the full blocks of `tokens`.
    pub fn chain_hashes(&self, tokens: &[u32]) -> Vec<u64> {
        let mut h = self.seed;
        tokens
            .chunks_exact(BLOCK)
            .map(|c| {
                let bytes: Vec<u8> = c.iter().flat_map(|t| t.to_le_bytes()).collect();
                h = crate::kv::slot_file::fnv1a(&bytes, h ^ 0x9e37_79b9_7f4a_7c15);
                h
            })
            .collect()
    }

    /// Cached full blocks that hold the first tokens of `prompt` (at most `limit` tokens'
    /// worth), as a count of blocks.
    pub fn cached_prefix(&self, prompt: &[u32], limit: usize) -> usize {
        self.chain_hashes(&prompt[..limit.min(prompt.len())])
            .iter()
            .take_while(|h| self.cached.contains_key(h))
            .count()
    }

    /// Replace the contents of `t` by references to the first `n_blocks` cached blocks of
    /// `prompt` (see `cached_prefix`); returns the positions they hold.
    pub fn share_prefix(&mut self, t: &mut BlockTable, prompt: &[u32], n_blocks: usize) -> usize {
        let hashes = self.chain_hashes(&prompt[..(n_blocks * BLOCK).min(prompt.len())]);
        let shared: Vec<u32> = hashes
            .iter()
            .map_while(|h| self.cached.get(h).copied())
            .collect();
        for &b in &shared {
            self.retain(b);
        }
        self.clear(t);
        t.blocks = shared;
        t.hashes = hashes[..t.blocks.len()].to_vec();
        t.hashable = true;
        t.blocks.len() * BLOCK
    }

    /// Replace the contents of `dst` by references to the blocks of `src` that hold its
    /// positions [0, n) (another sequence's prefix, the last block maybe partial: whoever
    /// writes into a shared block gets a copy first, see `make_writable`).
    pub fn share_from(&mut self, dst: &mut BlockTable, src: &BlockTable, n: usize) {
        let n = n.min(src.capacity());
        let blocks = src.blocks[..blocks_for(n)].to_vec();
        let hashes = src.hashes[..src.hashes.len().min(n / BLOCK)].to_vec();
        for &b in &blocks {
            self.retain(b);
        }
        self.clear(dst);
        dst.blocks = blocks;
        dst.hashes = hashes;
        dst.hashable = src.hashable || n <= dst.hashes.len() * BLOCK;
    }

    /// Register the full blocks of `t` that `tokens` (its contents by position) now fill, so
    /// other sequences can share them. A block whose hash is already cached (the same tokens
    /// evaluated elsewhere) stays private.
    pub fn register(&mut self, t: &mut BlockTable, tokens: &[u32]) {
        if !t.hashable {
            return;
        }
        let n_full = (tokens.len() / BLOCK).min(t.blocks.len());
        while t.hashes.len() < n_full {
            let i = t.hashes.len();
            let prev = t.hashes.last().copied();
            let mut h = prev.unwrap_or(self.seed);
            let bytes: Vec<u8> = tokens[i * BLOCK..(i + 1) * BLOCK]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            h = crate::kv::slot_file::fnv1a(&bytes, h ^ 0x9e37_79b9_7f4a_7c15);
            let b = t.blocks[i];
            if self.hash[b as usize].is_none() && !self.cached.contains_key(&h) {
                self.hash[b as usize] = Some(h);
                self.cached.insert(h, b);
            }
            t.hashes.push(h);
        }
    }

    /// After a context shift of `t`: its blocks from the one holding `n_keep` on no longer
    /// match their tokens' hashes.
    pub fn unhash_from(&mut self, t: &mut BlockTable, n_keep: usize) {
        t.hashes.truncate(n_keep / BLOCK);
        t.hashable = false;
    }

    fn row(&self, t: &BlockTable, layer: usize, pos: usize) -> usize {
        debug_assert!(layer < self.n_layer && pos < t.capacity());
        (t.blocks[pos / BLOCK] as usize * self.n_layer + layer) * BLOCK + pos % BLOCK
    }

    /// Store the key and value rows (`kv_dim` values each) of `layer` at `pos` of `t` (whose
    /// block there must be writable: see `make_writable`).
    pub fn store(&mut self, t: &BlockTable, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        debug_assert!(k.len() == self.kv_dim && v.len() == self.kv_dim);
        let r = self.row(t, layer, pos);
        self.k.put(r, k);
        self.v.put(r, v);
    }

    /// Copy the cells (every layer) at `from` to `to` within `t` (context shift).
    pub fn move_cell(&mut self, t: &BlockTable, from: usize, to: usize) {
        for layer in 0..self.n_layer {
            let (a, b) = (self.row(t, layer, from), self.row(t, layer, to));
            self.k.move_rows(a, b, 1);
            self.v.move_rows(a, b, 1);
        }
    }

    /// Apply `f` to the key row of `layer` at `pos` (widened to f32 and stored back).
    pub fn update_key(
        &mut self,
        t: &BlockTable,
        layer: usize,
        pos: usize,
        buf: &mut [f32],
        f: impl FnOnce(&mut [f32]),
    ) {
        let r = self.row(t, layer, pos);
        self.k.get(r, buf);
        f(buf);
        self.k.put(r, buf);
    }

    /// Raw key and value bytes of `layer` at `pos` (slot files).
    pub fn raw(&self, t: &BlockTable, layer: usize, pos: usize) -> (&[u8], &[u8]) {
        let r = self.row(t, layer, pos);
        (self.k.rows(r, 1), self.v.rows(r, 1))
    }

    /// Writable raw key and value bytes of `layer` at `pos`.
    pub fn raw_mut(&mut self, t: &BlockTable, layer: usize, pos: usize) -> (&mut [u8], &mut [u8]) {
        let r = self.row(t, layer, pos);
        (self.k.rows_mut(r, 1), self.v.rows_mut(r, 1))
    }

    /// A read-only view of one sequence.
    pub fn seq<'a>(&'a self, t: &'a BlockTable) -> KvSeq<'a> {
        KvSeq {
            pool: self,
            table: t,
        }
    }
}

/// One sequence's keys and values, read through its block table.
#[derive(Clone, Copy)]
pub struct KvSeq<'a> {
    pool: &'a KvPool,
    table: &'a BlockTable,
}

impl KvSeq<'_> {
    pub fn n_ctx(&self) -> usize {
        self.table.n_ctx
    }

    pub fn types(&self) -> CacheTypes {
        self.pool.types()
    }

    /// `f(row0, n, at)` for each run of cells [pos0, pos0 + n_pos) inside one block: its
    /// first row in the pool, its length and its offset from `pos0`.
    fn runs(
        &self,
        layer: usize,
        pos0: usize,
        n_pos: usize,
        mut f: impl FnMut(usize, usize, usize),
    ) {
        let mut p = pos0;
        while p < pos0 + n_pos {
            let n = (BLOCK - p % BLOCK).min(pos0 + n_pos - p);
            f(self.pool.row(self.table, layer, p), n, p - pos0);
            p += n;
        }
    }

    /// Keys of `layer` at positions [pos0, pos0 + n_pos), values `cols` of each (one head's), as
    /// f32 row-major [pos][cols] into `dst`.
    pub fn widen_keys(
        &self,
        layer: usize,
        pos0: usize,
        n_pos: usize,
        cols: Range<usize>,
        dst: &mut [f32],
    ) {
        let (w, kvd) = (cols.len(), self.pool.kv_dim);
        self.runs(layer, pos0, n_pos, |r, n, at| {
            self.pool
                .k
                .widen_cols(r, n, kvd, cols.clone(), &mut dst[at * w..(at + n) * w])
        });
    }

    /// An f16 cache's cells [pos0, pos0 + n_pos) of `layer` read in place: `f(keys, values,
    /// n, at)` for each run of `n` cells inside one block, `at` cells from `pos0`; `keys` and
    /// `values` are the bytes from the run's first cell's column `col0` on, one row of `kv_dim`
    /// f16 values (`row_bytes()` bytes) per cell. None for other cache types.
    pub fn f16_runs(
        &self,
        layer: usize,
        pos0: usize,
        n_pos: usize,
        col0: usize,
        mut f: impl FnMut(&[u8], &[u8], usize, usize),
    ) -> Option<()> {
        let (k, v) = (&self.pool.k, &self.pool.v);
        if k.ty != GgmlType::F16 || v.ty != GgmlType::F16 || col0 > self.pool.kv_dim {
            return None;
        }
        self.runs(layer, pos0, n_pos, |r, n, at| {
            let (a, b) = (r * k.row_bytes + 2 * col0, (r + n) * k.row_bytes);
            f(&k.data[a..b], &v.data[a..b], n, at)
        });
        Some(())
    }

    /// Bytes per cell of one layer's keys (or values) in an f16 cache: `kv_dim` f16 values.
    pub fn f16_row_bytes(&self) -> usize {
        2 * self.pool.kv_dim
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
        let (w, kvd) = (cols.len(), self.pool.kv_dim);
        self.runs(layer, pos0, n_pos, |r, n, at| {
            self.pool
                .v
                .widen_cols(r, n, kvd, cols.clone(), &mut dst[at * w..(at + n) * w])
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(kv_dim: usize, p: usize) -> (Vec<f32>, Vec<f32>) {
        let k: Vec<f32> = (0..kv_dim)
            .map(|i| ((i + 3 * p) % 61) as f32 / 16.0 - 1.5)
            .collect();
        let v: Vec<f32> = k.iter().map(|x| -x * 0.5).collect();
        (k, v)
    }

    /// Store `rows(p + shift)` at positions 0..n of `t` in `layer`.
    fn fill(pool: &mut KvPool, t: &BlockTable, layer: usize, n: usize, shift: usize) {
        for p in 0..n {
            let (k, v) = rows(pool.kv_dim(), p + shift);
            pool.store(t, layer, p, &k, &v);
        }
    }

    #[test]
    fn every_cache_type_stores_and_widens_across_blocks() {
        let kv_dim = 64;
        for ty in CACHE_TYPES {
            let mut pool = KvPool::new(2, 3, kv_dim, CacheTypes { k: ty, v: ty }).unwrap();
            let mut t = BlockTable::new(192);
            assert!(pool.grow(&mut t, 130));
            assert_eq!(t.blocks(), &[0, 1, 2]);
            fill(&mut pool, &t, 1, 130, 0);
            // A read that spans two blocks gives each position's own row.
            let mut out = vec![0f32; 10 * kv_dim];
            pool.seq(&t).widen_keys(1, 60, 10, 0..kv_dim, &mut out);
            for (j, o) in out.chunks_exact(kv_dim).enumerate() {
                let (k, _) = rows(kv_dim, 60 + j);
                let err = o
                    .iter()
                    .zip(&k)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(err < 0.25, "{ty}: {err}");
            }
            pool.seq(&t)
                .widen_values(1, 128, 2, 0..kv_dim, &mut out[..2 * kv_dim]);
            assert!((out[3] - rows(kv_dim, 128).1[3]).abs() < 0.25);
            // One head's columns: block-aligned and not.
            for cols in [32..64, 8..24] {
                let mut head = vec![0f32; cols.len()];
                pool.seq(&t)
                    .widen_values(1, 129, 1, cols.clone(), &mut head);
                assert_eq!(
                    head,
                    out[kv_dim + cols.start..kv_dim + cols.end],
                    "{ty} {cols:?}"
                );
            }
        }
        assert!(CacheTypes::parse("q8_0", "Q4_1").is_ok());
        assert!(CacheTypes::parse("q4_k", "f16").is_err());
        let bad = CacheTypes::parse("q8_0", "f16").unwrap();
        assert!(KvPool::new(1, 4, 48, bad).is_err());
    }

    #[test]
    fn blocks_are_allocated_freed_and_exhausted() {
        let mut pool = KvPool::new(1, 4, 32, CacheTypes::default()).unwrap();
        let (mut a, mut b) = (BlockTable::new(256), BlockTable::new(256));
        assert!(pool.grow(&mut a, 65));
        assert_eq!((a.blocks().len(), pool.available()), (2, 2));
        // Not enough for 200 positions: b gets what there is, and a request can wait for more.
        assert!(!pool.grow(&mut b, 200));
        assert_eq!((b.blocks().len(), pool.available()), (2, 0));
        pool.truncate(&mut a, 10);
        assert_eq!((a.blocks().len(), pool.available()), (1, 1));
        assert!(pool.grow(&mut b, 192));
        assert!(!pool.grow(&mut b, 193));
        pool.clear(&mut a);
        pool.clear(&mut b);
        assert_eq!(pool.available(), 4);
        assert_eq!(pool.n_used(), 0);
    }

    #[test]
    fn full_blocks_are_shared_by_refcount_and_evicted_least_recently_used() {
        let kv = 32;
        let mut pool = KvPool::new(1, 4, kv, CacheTypes::default()).unwrap();
        let prompt: Vec<u32> = (0..150).collect();
        let mut a = BlockTable::new(256);
        assert!(pool.grow(&mut a, 150));
        fill(&mut pool, &a, 0, 150, 0);
        pool.register(&mut a, &prompt);
        assert_eq!(pool.n_cached(), 2, "the partial third block is not shared");
        // Another sequence with the same first 140 tokens shares the two full blocks.
        let mut other: Vec<u32> = prompt[..140].to_vec();
        other.push(9999);
        assert_eq!(pool.cached_prefix(&other, other.len() - 1), 2);
        let mut b = BlockTable::new(256);
        assert_eq!(pool.share_prefix(&mut b, &other, 2), 128);
        assert_eq!(b.blocks(), &a.blocks()[..2]);
        assert_eq!(pool.refcount(a.blocks()[0]), 2);
        let (mut x, mut y) = (vec![0f32; kv], vec![0f32; kv]);
        pool.seq(&a).widen_keys(0, 100, 1, 0..kv, &mut x);
        pool.seq(&b).widen_keys(0, 100, 1, 0..kv, &mut y);
        assert_eq!(x, y);
        // A different first block shares nothing (the hash is chained).
        let mut c = other.clone();
        c[0] = 7;
        assert_eq!(pool.cached_prefix(&c, c.len()), 0);
        // Released by both: the blocks stay cached (available, but still shareable) ...
        pool.clear(&mut a);
        pool.clear(&mut b);
        assert_eq!((pool.available(), pool.n_cached()), (4, 2));
        let mut d = BlockTable::new(256);
        assert_eq!(pool.share_prefix(&mut d, &other, 2), 128);
        pool.clear(&mut d);
        // ... until blocks are needed: the free ones go first, then the least recently
        // released cached one (a table lets its last block go first, so a chain loses its
        // tail before its head).
        let mut e = BlockTable::new(256);
        assert!(pool.grow(&mut e, 192));
        assert_eq!(pool.n_cached(), 1);
        assert_eq!(
            pool.cached_prefix(&other, 139),
            1,
            "the chain's second block is gone"
        );
        assert!(pool.grow(&mut e, 256));
        assert_eq!((pool.n_cached(), pool.available()), (0, 0));
    }

    #[test]
    fn a_shared_block_is_copied_before_it_is_written() {
        let kv = 32;
        let mut pool = KvPool::new(2, 3, kv, CacheTypes::default()).unwrap();
        let prompt: Vec<u32> = (0..64).collect();
        let mut a = BlockTable::new(192);
        assert!(pool.grow(&mut a, 64));
        for layer in 0..2 {
            fill(&mut pool, &a, layer, 64, layer);
        }
        pool.register(&mut a, &prompt);
        let mut b = BlockTable::new(192);
        pool.share_prefix(&mut b, &prompt, 1);
        // b keeps 40 of the 64 positions and writes the 41st: it gets its own copy first.
        pool.truncate(&mut b, 40);
        assert!(pool.make_writable(&mut b, 0));
        assert_ne!(b.blocks()[0], a.blocks()[0]);
        assert_eq!(pool.refcount(a.blocks()[0]), 1);
        for layer in 0..2 {
            for p in 0..64 {
                assert_eq!(pool.raw(&a, layer, p), pool.raw(&b, layer, p));
            }
        }
        let (k, v) = rows(kv, 500);
        pool.store(&b, 1, 40, &k, &v);
        assert_ne!(pool.raw(&a, 1, 40), pool.raw(&b, 1, 40));
        // The cached block kept its contents: a third sequence still shares it.
        let mut c = BlockTable::new(192);
        assert_eq!(pool.share_prefix(&mut c, &prompt, 1), 64);
        assert_eq!(c.blocks()[0], a.blocks()[0]);
        // A registered block only one table holds, and no block left for a copy: unregistered.
        pool.clear(&mut c);
        let mut d = BlockTable::new(192);
        assert!(pool.grow(&mut d, 64));
        assert_eq!(pool.available(), 0);
        assert!(pool.make_writable(&mut a, 0));
        assert_eq!(pool.n_cached(), 0);
        // Shared and nothing left: refused.
        pool.register(&mut d, &[1; 64]);
        let mut e = BlockTable::new(192);
        pool.share_prefix(&mut e, &[1; 65], 1);
        assert_eq!(pool.refcount(d.blocks()[0]), 2);
        assert!(!pool.make_writable(&mut e, 0));
    }

    #[test]
    fn a_partial_block_is_shared_then_copied_by_its_writer() {
        let kv = 32;
        let mut pool = KvPool::new(1, 4, kv, CacheTypes::default()).unwrap();
        let mut a = BlockTable::new(256);
        assert!(pool.grow(&mut a, 100));
        fill(&mut pool, &a, 0, 100, 0);
        let mut b = BlockTable::new(256);
        pool.share_from(&mut b, &a, 90);
        assert_eq!(b.blocks(), a.blocks());
        assert_eq!(pool.refcount(a.blocks()[1]), 2);
        // b writes position 90: its second block becomes its own copy; a's is untouched.
        assert!(pool.make_writable(&mut b, 1));
        assert_ne!(b.blocks()[1], a.blocks()[1]);
        assert_eq!(b.blocks()[0], a.blocks()[0]);
        let before = pool.raw(&a, 0, 90).0.to_vec();
        let (k, v) = rows(kv, 900);
        pool.store(&b, 0, 90, &k, &v);
        assert_eq!(pool.raw(&a, 0, 90).0, &before[..]);
        assert_eq!(pool.raw(&a, 0, 89), pool.raw(&b, 0, 89));
        pool.clear(&mut a);
        pool.clear(&mut b);
        assert_eq!(pool.available(), 4);
    }
}

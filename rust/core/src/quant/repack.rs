//! Weights repacked for the sixteen-row kernels (one row per 32-bit lane of a 512-bit register).
//!
//! A tile holds sixteen consecutive rows. Block b of the tile keeps, for each 4-byte word k of
//! a block (bytes `words_from + 4k ..`), the sixteen rows' words side by side: 64 contiguous
//! bytes, lane r from row r, which is what a 16-lane gather of that word used to assemble. The
//! one 2-byte scale a type may have outside its words (`half`) goes to a second plane, sixteen
//! f16 side by side. So a kernel reads one contiguous stream per tile with plain loads, and
//! gets exactly the lane values it got before (same arithmetic, same bits). The last tile of a
//! matrix repeats its last row in the lanes past the end.

use super::GgmlType;

/// Rows per tile.
pub const TILE: usize = 16;

/// Where a block's fields go in a tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Byte offset in the block of word 0.
    pub words_from: usize,
    /// 4-byte words per block.
    pub n_words: usize,
    /// Byte offset of the f16 kept apart, if any.
    pub half: Option<usize>,
}

/// The layout of `ty`'s tiles, for the types with sixteen-row kernels.
pub fn layout(ty: GgmlType) -> Option<Layout> {
    use GgmlType::*;
    let (words_from, n_words, half) = match ty {
        Q8_0 => (2, 8, Some(0)),
        Q4_0 => (2, 4, Some(0)),
        Q5_0 => (2, 5, Some(0)),
        Q4_1 => (0, 5, None),
        Q3_K => (0, 27, Some(108)),
        Q4_K => (0, 36, None),
        Q5_K => (0, 44, None),
        Q6_K => (0, 52, Some(208)),
        _ => return None,
    };
    debug_assert_eq!(4 * n_words + 2 * half.is_some() as usize, ty.type_size());
    Some(Layout {
        words_from,
        n_words,
        half,
    })
}

/// Bytes of one tile of `nb` blocks: the blocks' bytes, rounded up to whole cache lines.
pub fn tile_bytes(ty: GgmlType, nb: usize) -> usize {
    (TILE * ty.type_size() * nb).div_ceil(64) * 64
}

/// Pack `rows` (1 to 16 rows of `nb` blocks each; missing lanes repeat the last row) into `out`
/// (`tile_bytes` long).
pub fn pack_tile(ty: GgmlType, rows: &[&[u8]], nb: usize, out: &mut [u8]) {
    let l = layout(ty).expect("a type with a tile layout");
    let ts = ty.type_size();
    assert!(!rows.is_empty() && rows.len() <= TILE && out.len() >= tile_bytes(ty, nb));
    assert!(rows.iter().all(|r| r.len() == nb * ts));
    let halves = nb * l.n_words * 64;
    for lane in 0..TILE {
        let row = rows[lane.min(rows.len() - 1)];
        for (b, blk) in row.chunks_exact(ts).enumerate() {
            for k in 0..l.n_words {
                let src = l.words_from + 4 * k;
                let dst = (b * l.n_words + k) * 64 + 4 * lane;
                out[dst..dst + 4].copy_from_slice(&blk[src..src + 4]);
            }
            if let Some(h) = l.half {
                let dst = halves + b * 32 + 2 * lane;
                out[dst..dst + 2].copy_from_slice(&blk[h..h + 2]);
            }
        }
    }
}

/// One packed tile of `nb` blocks.
#[derive(Clone, Copy)]
pub struct Tile<'a> {
    bytes: &'a [u8],
    nb: usize,
    n_words: usize,
}

/// Block b of a tile: its words (64 bytes each) and its f16 plane (32 bytes).
#[derive(Clone, Copy)]
pub struct TileBlock {
    pub words: *const u8,
    pub half: *const u8,
}

impl<'a> Tile<'a> {
    pub fn new(ty: GgmlType, bytes: &'a [u8], nb: usize) -> Self {
        let l = layout(ty).expect("a type with a tile layout");
        assert!(bytes.len() >= tile_bytes(ty, nb));
        Self {
            bytes,
            nb,
            n_words: l.n_words,
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.nb
    }

    pub fn words_per_block(&self) -> usize {
        self.n_words
    }

    /// Block `b` (< `n_blocks`): word k at `words + 64k`, the f16s at `half` (when the type
    /// has one).
    #[inline(always)]
    pub fn block(&self, b: usize) -> TileBlock {
        assert!(b < self.nb);
        let p = self.bytes.as_ptr();
        TileBlock {
            // In bounds: b·n_words·64 + n_words·64 ≤ nb·n_words·64 ≤ the tile's length, and the
            // half plane (nb·32 bytes) follows the words.
            words: p.wrapping_add(b * self.n_words * 64),
            half: p.wrapping_add(self.nb * self.n_words * 64 + b * 32),
        }
    }

    /// The address `ahead` bytes past block `b`'s words (for prefetching; maybe outside).
    #[inline(always)]
    pub fn ahead(&self, b: usize, ahead: usize) -> *const u8 {
        self.bytes
            .as_ptr()
            .wrapping_add(b * self.n_words * 64 + ahead)
    }
}

/// A whole matrix in tiles, owned: anonymous pages (tiles start on a cache line; zeroed by the
/// OS as first touched, not written twice), transparent huge pages where Linux grants them (a
/// gemv streams the whole buffer: fewer TLB misses).
pub struct Tiles {
    ty: GgmlType,
    nb: usize,
    tile_bytes: usize,
    n_tiles: usize,
    buf: memmap2::MmapMut,
}

impl Tiles {
    /// Repack `rows` rows of `nb` blocks each from `data` (GGUF layout). `done(bytes)` is told
    /// how many leading bytes of `data` have been read and will not be read again (the caller
    /// may drop those pages). None for a type with no tile layout, or when the OS has no memory.
    pub fn pack(
        ty: GgmlType,
        data: &[u8],
        rows: usize,
        nb: usize,
        mut done: impl FnMut(usize),
    ) -> Option<Self> {
        layout(ty)?;
        let rb = nb * ty.type_size();
        if rows == 0 || data.len() != rows * rb {
            return None;
        }
        let tb = tile_bytes(ty, nb);
        let n_tiles = rows.div_ceil(TILE);
        let mut buf = memmap2::MmapMut::map_anon(n_tiles.checked_mul(tb)?).ok()?;
        #[cfg(target_os = "linux")]
        let _ = buf.advise(memmap2::Advice::HugePage);
        let mut last_done = 0;
        for i in 0..n_tiles {
            let (r0, r1) = (i * TILE, ((i + 1) * TILE).min(rows));
            let rs: Vec<&[u8]> = (r0..r1).map(|r| &data[r * rb..(r + 1) * rb]).collect();
            pack_tile(ty, &rs, nb, &mut buf[i * tb..(i + 1) * tb]);
            // Tell the caller in steps of about a megabyte.
            if r1 * rb - last_done >= 1 << 20 || r1 == rows {
                last_done = r1 * rb;
                done(last_done);
            }
        }
        Some(Self {
            ty,
            nb,
            tile_bytes: tb,
            n_tiles,
            buf,
        })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn n_tiles(&self) -> usize {
        self.n_tiles
    }

    /// Tile `i`: rows 16i .. 16i + 16.
    pub fn tile(&self, i: usize) -> Tile<'_> {
        let b = &self.buf[i * self.tile_bytes..(i + 1) * self.tile_bytes];
        Tile::new(self.ty, b, self.nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Word k of lane r is row r's bytes at words_from + 4k; the f16 plane holds each row's
    /// half field; lanes past the rows repeat the last row.
    #[test]
    fn tiles_hold_each_rows_fields() {
        use GgmlType::*;
        for ty in [Q8_0, Q4_0, Q5_0, Q4_1, Q3_K, Q4_K, Q5_K, Q6_K] {
            let l = layout(ty).unwrap();
            let (rows, nb, ts) = (21, 3, ty.type_size());
            let data: Vec<u8> = (0..rows * nb * ts).map(|i| (i * 7 % 251) as u8).collect();
            let mut seen = 0;
            let t = Tiles::pack(ty, &data, rows, nb, |d| seen = d).unwrap();
            assert_eq!(seen, data.len());
            assert_eq!(t.n_tiles(), 2);
            for i in 0..2 {
                let tile = t.tile(i);
                for b in 0..nb {
                    let blk = tile.block(b);
                    for lane in 0..TILE {
                        let r = (16 * i + lane).min(rows - 1);
                        let src = &data[(r * nb + b) * ts..(r * nb + b + 1) * ts];
                        for k in 0..l.n_words {
                            // SAFETY: inside the tile (see `Tile::block`).
                            let got = unsafe {
                                std::slice::from_raw_parts(blk.words.add(64 * k + 4 * lane), 4)
                            };
                            assert_eq!(got, &src[l.words_from + 4 * k..][..4], "{ty}");
                        }
                        if let Some(h) = l.half {
                            // SAFETY: as above.
                            let got =
                                unsafe { std::slice::from_raw_parts(blk.half.add(2 * lane), 2) };
                            assert_eq!(got, &src[h..h + 2], "{ty}");
                        }
                    }
                }
            }
        }
    }
}

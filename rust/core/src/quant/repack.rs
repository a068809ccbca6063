//! Weights repacked for the sixteen-row kernels (one row per 32-bit lane of a 512-bit register).
//!
//! A tile holds sixteen consecutive rows. Block b of the tile keeps, for each 4-byte word k of
//! a block (bytes `words_from + 4k ..`), the sixteen rows' words side by side: 64 contiguous
//! bytes, lane r from row r, which is what a 16-lane gather of that word used to assemble. The
//! one 2-byte scale a type may have outside its words (`half`) goes to a second plane, sixteen
//! f16 side by side. So a kernel reads one contiguous stream per tile with plain loads, and
//! gets exactly the lane values it got before (same arithmetic, same bits). The last tile of a
//! matrix repeats its last row in the lanes past the end.
//!
//! One word is stored rearranged: the fifth bits (qh) of Q5_0 and Q5_1, by `fifth_bits_lanes`,
//! so that a kernel gets a group's four fifth bits as the 0x10 bits of its four bytes with one
//! shift and one mask (the bits are the same, only their places differ).

use super::GgmlType;
use std::sync::Arc;

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
        Q5_1 => (0, 6, None),
        IQ4_NL => (2, 4, Some(0)),
        IQ4_XS => (0, 34, None),
        Q2_K => (0, 21, None),
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

/// The word of `ty`'s block that is stored rearranged (`fifth_bits_lanes`), if any.
pub fn qh_word(ty: GgmlType) -> Option<usize> {
    match ty {
        GgmlType::Q5_0 => Some(0),
        GgmlType::Q5_1 => Some(1),
        _ => None,
    }
}

/// A Q5 block's qh (bit v: the fifth bit of value v) rearranged for the kernels: byte k holds,
/// at bit 4 + g, the fifth bit of value 4g + k (the low nibble of byte k of quant word g) and,
/// at bit g, that of value 16 + 4g + k (its high nibble), for g in 0..4. So group g's bits are
/// `(w >> g) & 0x10` per byte for the low nibbles and `(w << (4 - g)) & 0x10` for the high.
pub fn fifth_bits_lanes(qh: u32) -> u32 {
    // Bit k of a nibble n to bit 8k: n · (1 + 2^7 + 2^14 + 2^21), masked.
    let spread = |n: u32| (n * 0x0020_4081) & 0x0101_0101;
    (0..4).fold(0, |w, g| {
        w | spread((qh >> (4 * g)) & 0xf) << (4 + g) | spread((qh >> (16 + 4 * g)) & 0xf) << g
    })
}

/// Bytes of one tile of `nb` blocks: the blocks' bytes, rounded up to whole cache lines.
pub fn tile_bytes(ty: GgmlType, nb: usize) -> usize {
    (TILE * ty.type_size() * nb).div_ceil(64) * 64
}

/// Pack `rows` (1 to 16 consecutive rows of `nb` blocks each, GGUF layout; missing lanes repeat
/// the last row) into `out` (`tile_bytes` long).
pub fn pack_tile(ty: GgmlType, rows: &[u8], nb: usize, out: &mut [u8]) {
    let l = layout(ty).expect("a type with a tile layout");
    let (ts, nw) = (ty.type_size(), l.n_words);
    let rb = nb * ts;
    let m = rows.len() / rb.max(1);
    assert!((1..=TILE).contains(&m) && rows.len() == m * rb && out.len() >= tile_bytes(ty, nb));
    let (words, halves) = out.split_at_mut(nb * nw * 64);
    let qh = qh_word(ty);
    for (b, wblk) in words.chunks_exact_mut(nw * 64).enumerate() {
        for lane in 0..TILE {
            let r = lane.min(m - 1);
            let blk = &rows[r * rb + b * ts..r * rb + (b + 1) * ts];
            let src = &blk[l.words_from..l.words_from + 4 * nw];
            for (k, w) in src.chunks_exact(4).enumerate() {
                let dst = &mut wblk[64 * k + 4 * lane..64 * k + 4 * lane + 4];
                if qh == Some(k) {
                    let v = u32::from_le_bytes(w.try_into().expect("a 4-byte word"));
                    dst.copy_from_slice(&fifth_bits_lanes(v).to_le_bytes());
                } else {
                    dst.copy_from_slice(w);
                }
            }
            if let Some(h) = l.half {
                let at = 32 * b + 2 * lane;
                halves[at..at + 2].copy_from_slice(&blk[h..h + 2]);
            }
        }
    }
}

/// `buf` emptied and refilled with `f(0), .., f(n - 1)`, each written in place (through
/// `extend`, a kernel's unpacked blocks of several hundred bytes were built on the stack and
/// copied: a memcpy per tile).
#[inline(always)]
pub fn refill<B>(buf: &mut Vec<B>, n: usize, mut f: impl FnMut(usize) -> B) {
    buf.clear();
    buf.reserve(n);
    for (i, slot) in buf.spare_capacity_mut()[..n].iter_mut().enumerate() {
        slot.write(f(i));
    }
    // SAFETY: the first n elements were written just above.
    unsafe { buf.set_len(n) };
}

/// One packed tile of `nb` blocks.
#[derive(Clone, Copy)]
pub struct Tile<'a> {
    bytes: &'a [u8],
    nb: usize,
    n_words: usize,
    has_half: bool,
    len: usize,
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
            has_half: l.half.is_some(),
            len: tile_bytes(ty, nb),
        }
    }

    /// Where the next tile of the same matrix starts (a matrix's tiles are consecutive), and
    /// this tile's length: for prefetching, maybe outside the matrix.
    #[inline(always)]
    pub fn next_tile(&self) -> (*const u8, usize) {
        (self.bytes.as_ptr().wrapping_add(self.len), self.len)
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

    /// Bytes of the f16 plane (zero for a type without one): it follows the words.
    #[inline(always)]
    pub fn half_bytes(&self) -> usize {
        if self.has_half {
            self.nb * 32
        } else {
            0
        }
    }

    /// Where this tile's f16 plane starts, and where the next tile's does (a chunk's tiles are
    /// consecutive; for prefetching, maybe outside).
    #[inline(always)]
    pub fn half_planes(&self) -> (*const u8, *const u8) {
        let words = self.nb * self.n_words * 64;
        let len = (words + self.nb * 32).div_ceil(64) * 64;
        let p = self.bytes.as_ptr();
        (p.wrapping_add(words), p.wrapping_add(len + words))
    }
}

/// A whole matrix in tiles. Every matrix packed by one `pack_all` call lies in one buffer, back to
/// back in the order given (a model gives them in the order a forward pass reads them), so a
/// gemv's prefetch stream runs on from one matrix into the next and the small matrices of a
/// layer share huge pages: anonymous pages (tiles start on a cache line; zeroed by the OS as
/// first touched, not written twice), transparent huge pages where Linux grants them (a gemv
/// streams the whole buffer: fewer TLB misses).
pub struct Tiles {
    ty: GgmlType,
    nb: usize,
    tile_bytes: usize,
    n_tiles: usize,
    buf: Arc<memmap2::MmapMut>,
    /// Where this matrix's first tile starts in `buf`.
    start: usize,
}

/// A matrix for `pack_all`: `rows` rows of `nb` blocks each in `data` (GGUF layout).
pub struct PackJob<'d> {
    pub ty: GgmlType,
    pub data: &'d [u8],
    pub rows: usize,
    pub nb: usize,
}

/// Tiles packed per task of `pack`, and the rows given back after each.
const GROUP: usize = 16;

/// The tiles' bytes, written by `pack`'s tasks at disjoint places.
struct Out(*mut u8);
// SAFETY: each task writes only its own group's tiles (see `Tiles::pack`).
unsafe impl Sync for Out {}

impl Out {
    fn at(&self, offset: usize) -> *mut u8 {
        self.0.wrapping_add(offset)
    }
}

impl Tiles {
    /// Repack one matrix (see `pack_all`).
    pub fn pack(
        ty: GgmlType,
        data: &[u8],
        rows: usize,
        nb: usize,
        run: impl Fn(usize, &(dyn Fn(usize) + Sync)),
        done: &(dyn Fn(std::ops::Range<usize>) + Sync),
    ) -> Option<Self> {
        let job = PackJob { ty, data, rows, nb };
        Self::pack_all(&[job], run, &|_, r| done(r)).pop().flatten()
    }

    /// Repack each job's matrix into one shared buffer, sixteen tiles per task: `run(n, task)`
    /// must call `task(g)` once for every g in 0..n, from any threads. After a task, `done(job,
    /// range)` is told the bytes of that job's `data` it read (no later task reads them but at
    /// the ends: the caller may drop those pages). None for a job whose type has no tile layout
    /// or whose bytes do not match its shape (or who has no rows or columns); all None when the OS
    /// has no memory.
    pub fn pack_all(
        jobs: &[PackJob],
        run: impl Fn(usize, &(dyn Fn(usize) + Sync)),
        done: &(dyn Fn(usize, std::ops::Range<usize>) + Sync),
    ) -> Vec<Option<Self>> {
        let mut starts = Vec::with_capacity(jobs.len());
        let mut total = 0usize;
        for j in jobs {
            let rb = j.nb * j.ty.type_size();
            let fits = layout(j.ty).is_some()
                && j.rows > 0
                && j.nb > 0
                && Some(j.data.len()) == j.rows.checked_mul(rb);
            let len = fits
                .then(|| j.rows.div_ceil(TILE).checked_mul(tile_bytes(j.ty, j.nb)))
                .flatten();
            match len.and_then(|l| total.checked_add(l)) {
                Some(end) => {
                    starts.push(Some(total));
                    total = end;
                }
                None => starts.push(None),
            }
        }
        let none = || jobs.iter().map(|_| None).collect();
        if total == 0 {
            return none();
        }
        let Ok(mut buf) = memmap2::MmapMut::map_anon(total) else {
            return none();
        };
        #[cfg(target_os = "linux")]
        let _ = buf.advise(memmap2::Advice::HugePage);
        let out = Out(buf.as_mut_ptr());
        for (k, (j, start)) in jobs.iter().zip(&starts).enumerate() {
            let Some(start) = *start else { continue };
            let (ty, nb, rows) = (j.ty, j.nb, j.rows);
            let rb = nb * ty.type_size();
            let tb = tile_bytes(ty, nb);
            let n_tiles = rows.div_ceil(TILE);
            run(n_tiles.div_ceil(GROUP), &|g| {
                let tiles = g * GROUP..((g + 1) * GROUP).min(n_tiles);
                let bytes = tiles.start * TILE * rb..(tiles.end * TILE).min(rows) * rb;
                for i in tiles {
                    let src = &j.data[i * TILE * rb..((i + 1) * TILE).min(rows) * rb];
                    // SAFETY: tile i of this job lies inside the buffer (`start` and the lengths
                    // were summed above), and only this task (of group g) writes it; the buffer
                    // outlives `run`.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.at(start + i * tb), tb) };
                    pack_tile(ty, src, nb, dst);
                }
                done(k, bytes);
            });
        }
        let buf = Arc::new(buf);
        jobs.iter()
            .zip(starts)
            .map(|(j, start)| {
                Some(Self {
                    ty: j.ty,
                    nb: j.nb,
                    tile_bytes: tile_bytes(j.ty, j.nb),
                    n_tiles: j.rows.div_ceil(TILE),
                    buf: buf.clone(),
                    start: start?,
                })
            })
            .collect()
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    pub fn n_tiles(&self) -> usize {
        self.n_tiles
    }

    /// Tile `i`: rows 16i .. 16i + 16.
    pub fn tile(&self, i: usize) -> Tile<'_> {
        assert!(i < self.n_tiles);
        let b = &self.buf[self.start + i * self.tile_bytes..][..self.tile_bytes];
        Tile::new(self.ty, b, self.nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Word k of lane r is row r's bytes at words_from + 4k (Q5's qh rearranged); the f16 plane
    /// holds each row's half field; lanes past the rows repeat the last row.
    #[test]
    fn tiles_hold_each_rows_fields() {
        use GgmlType::*;
        for ty in [Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, IQ4_NL, Q3_K, Q4_K, Q5_K, Q6_K] {
            let l = layout(ty).unwrap();
            let (rows, nb, ts) = (21, 3, ty.type_size());
            let data: Vec<u8> = (0..rows * nb * ts).map(|i| (i * 7 % 251) as u8).collect();
            let seen = std::sync::atomic::AtomicUsize::new(0);
            let add = |r: std::ops::Range<usize>| {
                seen.fetch_add(r.len(), std::sync::atomic::Ordering::Relaxed);
            };
            let t = Tiles::pack(ty, &data, rows, nb, |n, f| (0..n).for_each(f), &add).unwrap();
            assert_eq!(seen.into_inner(), data.len());
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
                            let mut want: [u8; 4] =
                                src[l.words_from + 4 * k..][..4].try_into().unwrap();
                            if qh_word(ty) == Some(k) {
                                let v = fifth_bits_lanes(u32::from_le_bytes(want));
                                want = v.to_le_bytes();
                            }
                            assert_eq!(got, want, "{ty}");
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

    /// Each fifth bit lands where `fifth_bits_lanes` says, one bit for one bit.
    #[test]
    fn fifth_bits_go_to_their_groups_bytes() {
        for v in 0..32 {
            let w = fifth_bits_lanes(1 << v);
            let (g, k, hi) = (v % 16 / 4, v % 4, v >= 16);
            let at = 8 * k + if hi { g } else { 4 + g };
            assert_eq!(w, 1 << at, "value {v}");
            // What the kernels take out of it for group g.
            let lanes = (if hi { w << (4 - g) } else { w >> g }) & 0x1010_1010;
            assert_eq!(lanes, 0x10 << (8 * k), "value {v}");
        }
        assert_eq!(fifth_bits_lanes(u32::MAX), u32::MAX);
    }

    /// Matrices packed together lie back to back in one buffer, each tile as `pack` alone makes
    /// it; a job that does not fit its shape (or has no layout) is left out, the others not.
    #[test]
    fn pack_all_lays_matrices_back_to_back() {
        use GgmlType::*;
        let mats: Vec<(GgmlType, usize, usize)> =
            vec![(Q5_0, 21, 3), (F32, 4, 1), (Q4_K, 37, 2), (Q8_0, 16, 5)];
        let datas: Vec<Vec<u8>> = mats
            .iter()
            .map(|&(ty, rows, nb)| {
                let n = rows * nb * ty.type_size() * if ty == F32 { 32 } else { 1 };
                (0..n).map(|i| (i * 13 % 253) as u8).collect()
            })
            .collect();
        let mut jobs: Vec<PackJob> = mats
            .iter()
            .zip(&datas)
            .map(|(&(ty, rows, nb), data)| PackJob { ty, data, rows, nb })
            .collect();
        let short = &datas[3][..datas[3].len() - 1];
        jobs.push(PackJob {
            ty: Q8_0,
            data: short,
            rows: 16,
            nb: 5,
        });
        let serial = |n: usize, f: &(dyn Fn(usize) + Sync)| (0..n).for_each(f);
        let read = std::sync::Mutex::new(vec![0usize; jobs.len()]);
        let all = Tiles::pack_all(&jobs, serial, &|k, r| read.lock().unwrap()[k] += r.len());
        assert_eq!(all.len(), 5);
        assert!(all[1].is_none() && all[4].is_none());
        let read = read.into_inner().unwrap();
        let mut next: Option<*const u8> = None;
        for (k, j) in jobs.iter().enumerate() {
            let Some(t) = &all[k] else { continue };
            assert_eq!(read[k], j.data.len());
            let alone = Tiles::pack(j.ty, j.data, j.rows, j.nb, serial, &|_| {}).unwrap();
            assert_eq!(t.n_tiles(), alone.n_tiles());
            for i in 0..t.n_tiles() {
                let (a, b) = (t.tile(i), alone.tile(i));
                if let Some(p) = next.take() {
                    assert_eq!(a.bytes.as_ptr(), p, "job {k} follows the one before");
                }
                assert_eq!(a.bytes, b.bytes, "job {k} tile {i}");
                next = Some(a.next_tile().0);
            }
        }
    }
}

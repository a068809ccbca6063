//! Slot files: a slot's tokens and KV rows on disk, so `/slots/{id}?action=restore` continues
//! where `save` left off.
//!
//! Layout (little-endian): magic `RLLAMASL`, format version (u32), the model's fingerprint
//! (u64), K and V cache types (u32 GGUF type ids), layer count and KV width (u32 each), token
//! count n (u32), n tokens (u32 each), then per layer the n key rows and the n value rows as the
//! cache stores them, and last an FNV-1a 64 checksum of every byte before it. The file is written
//! to a temporary name beside the target and renamed, so a crash never leaves half a file.

use std::io::Write;
use std::path::Path;

use super::{BlockTable, CacheTypes, KvPool};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

const MAGIC: &[u8; 8] = b"RLLAMASL";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8 + 4 * 5;

/// FNV-1a, 64 bits: a checksum against truncation and corruption (not an adversary).
pub fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Write `tokens` and their KV rows (positions [0, n) of `table` in `cache`) to `path`; returns
/// the bytes written.
pub fn save(
    path: &Path,
    fingerprint: u64,
    cache: &KvPool,
    table: &BlockTable,
    tokens: &[u32],
) -> Result<usize> {
    let n = tokens.len().min(table.capacity());
    let tokens = &tokens[..n];
    let types = cache.types();
    let (rk, rv) = cache.row_bytes();
    let total = HEADER + 4 * n + cache.n_layer() * n * (rk + rv) + 8;
    let mut buf = Vec::new();
    buf.try_reserve_exact(total)
        .map_err(|_| Error::invalid("not enough memory to write the slot file"))?;
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&fingerprint.to_le_bytes());
    for v in [
        types.k.id(),
        types.v.id(),
        cache.n_layer() as u32,
        cache.kv_dim() as u32,
        n as u32,
    ] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    for t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    for layer in 0..cache.n_layer() {
        for pos in 0..n {
            buf.extend_from_slice(cache.raw(table, layer, pos).0);
        }
        for pos in 0..n {
            buf.extend_from_slice(cache.raw(table, layer, pos).1);
        }
    }
    let sum = fnv1a(&buf, FNV_OFFSET);
    buf.extend_from_slice(&sum.to_le_bytes());

    let io = |e: std::io::Error| Error::invalid(format!("cannot write {}: {e}", path.display()));
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid("the slot file needs a file name"))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(buf.len())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Read `path` into `table` (a sequence of at most `table.n_ctx()` positions) of `cache`
/// (which must match the file's model and cache types); returns the tokens and the bytes read.
/// The table is untouched when the file is refused; on success it holds blocks of its own for
/// exactly the file's positions.
pub fn restore(
    path: &Path,
    fingerprint: u64,
    cache: &mut KvPool,
    table: &mut BlockTable,
) -> Result<(Vec<u32>, usize)> {
    let bad = |why: &str| Error::invalid(format!("slot file {}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(&e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file"));
    }
    let (rk, rv) = cache.row_bytes();
    let max = HEADER + 8 + table.n_ctx() * (4 + cache.n_layer() * (rk + rv));
    if meta.len() as usize > max {
        return Err(bad("larger than this slot's context can hold"));
    }
    let b = std::fs::read(path).map_err(|e| bad(&e.to_string()))?;
    if b.len() < HEADER + 8 || &b[..8] != MAGIC {
        return Err(bad("not an rllama slot file"));
    }
    if u32_at(&b, 8) != VERSION {
        return Err(bad(&format!(
            "format version {} (this build reads {VERSION})",
            u32_at(&b, 8)
        )));
    }
    let (body, tail) = b.split_at(b.len() - 8);
    if fnv1a(body, FNV_OFFSET) != u64::from_le_bytes(tail.try_into().expect("8 bytes")) {
        return Err(bad("checksum mismatch (truncated or corrupt)"));
    }
    let fp = u64::from_le_bytes(b[12..20].try_into().expect("8 bytes"));
    if fp != fingerprint {
        return Err(bad("saved from another model"));
    }
    let types = CacheTypes {
        k: GgmlType::from_id(u32_at(&b, 20)).ok_or_else(|| bad("unknown K cache type"))?,
        v: GgmlType::from_id(u32_at(&b, 24)).ok_or_else(|| bad("unknown V cache type"))?,
    };
    if types != cache.types() {
        return Err(bad(&format!(
            "saved with cache types {}/{}, this server uses {}/{}",
            types.k.name(),
            types.v.name(),
            cache.types().k.name(),
            cache.types().v.name()
        )));
    }
    if u32_at(&b, 28) as usize != cache.n_layer() || u32_at(&b, 32) as usize != cache.kv_dim() {
        return Err(bad("layer count or KV width differs from this model"));
    }
    let n = u32_at(&b, 36) as usize;
    if n > table.n_ctx() {
        return Err(bad(&format!(
            "holds {n} tokens, more than this slot's context ({})",
            table.n_ctx()
        )));
    }
    if body.len() != HEADER + 4 * n + cache.n_layer() * n * (rk + rv) {
        return Err(bad("size does not match its header"));
    }
    let tokens: Vec<u32> = (0..n).map(|i| u32_at(&b, HEADER + 4 * i)).collect();
    // Blocks of its own (the old ones may be shared): checked before anything is dropped.
    let mut fresh = BlockTable::new(table.n_ctx());
    if !cache.grow(&mut fresh, n) {
        cache.clear(&mut fresh);
        return Err(Error::ContextFull(format!(
            "slot file {}: {n} tokens need {} KV blocks, and only {} are free now",
            path.display(),
            super::blocks_for(n),
            cache.available()
        )));
    }
    let mut at = HEADER + 4 * n;
    for layer in 0..cache.n_layer() {
        for pos in 0..n {
            cache
                .raw_mut(&fresh, layer, pos)
                .0
                .copy_from_slice(&b[at..at + rk]);
            at += rk;
        }
        for pos in 0..n {
            cache
                .raw_mut(&fresh, layer, pos)
                .1
                .copy_from_slice(&b[at..at + rv]);
            at += rv;
        }
    }
    cache.clear(table);
    *table = fresh;
    // Restored cells are offered to no one: they were not evaluated here.
    cache.unhash_from(table, 0);
    Ok((tokens, b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pool: &mut KvPool) -> BlockTable {
        let mut t = BlockTable::new(128);
        assert!(pool.grow(&mut t, 70));
        for layer in 0..2 {
            for pos in 0..70 {
                let k: Vec<f32> = (0..32).map(|i| (i + pos + layer) as f32 / 8.0).collect();
                let v: Vec<f32> = k.iter().map(|x| -x).collect();
                pool.store(&t, layer, pos, &k, &v);
            }
        }
        t
    }

    #[test]
    fn save_then_restore_gives_the_same_rows_and_refuses_bad_files() {
        let dir = std::env::temp_dir().join(format!("rllama-slot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.bin");
        let mut pool = KvPool::new(2, 6, 32, CacheTypes::default()).unwrap();
        let c = filled(&mut pool);
        let toks: Vec<u32> = (0..70).collect();
        let n = save(&path, 42, &pool, &c, &toks).unwrap();
        assert_eq!(n as u64, std::fs::metadata(&path).unwrap().len());

        let mut d = BlockTable::new(128);
        let (t, read) = restore(&path, 42, &mut pool, &mut d).unwrap();
        assert_eq!((t.as_slice(), read), (&toks[..], n));
        assert_eq!(d.blocks().len(), 2);
        assert!(d.blocks().iter().all(|b| !c.blocks().contains(b)));
        for layer in 0..2 {
            for pos in 0..70 {
                assert_eq!(pool.raw(&c, layer, pos), pool.raw(&d, layer, pos));
            }
        }
        // Restoring again gives the table fresh blocks and lets the old ones go.
        restore(&path, 42, &mut pool, &mut d).unwrap();
        assert_eq!(pool.n_used(), 4);
        // No room in the pool: refused, the table untouched.
        let mut e = BlockTable::new(128);
        assert!(pool.grow(&mut e, 128));
        let mut f = BlockTable::new(128);
        assert!(restore(&path, 42, &mut pool, &mut f).is_err());
        assert!(f.blocks().is_empty());
        pool.clear(&mut e);
        // Another model, other cache types, too small a context.
        assert!(restore(&path, 43, &mut pool, &mut f)
            .unwrap_err()
            .to_string()
            .contains("another model"));
        let q8 = CacheTypes {
            k: GgmlType::Q8_0,
            v: GgmlType::Q8_0,
        };
        let mut p8 = KvPool::new(2, 6, 32, q8).unwrap();
        assert!(restore(&path, 42, &mut p8, &mut f).is_err());
        assert!(restore(&path, 42, &mut pool, &mut BlockTable::new(64)).is_err());
        // Corrupt and truncated files.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 7] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(restore(&path, 42, &mut pool, &mut f)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(restore(&path, 42, &mut pool, &mut f).is_err());
        std::fs::write(&path, b"hello").unwrap();
        assert!(restore(&path, 42, &mut pool, &mut f).is_err());
        assert!(restore(&dir, 42, &mut pool, &mut f).is_err());
        assert!(f.blocks().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

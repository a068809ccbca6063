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

use super::{CacheTypes, KvCache};
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

/// Write `tokens` and their KV rows from `cache` to `path`; returns the bytes written.
pub fn save(path: &Path, fingerprint: u64, cache: &KvCache, tokens: &[u32]) -> Result<usize> {
    let n = tokens.len();
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
        let (k, v) = cache.raw(layer, n);
        buf.extend_from_slice(k);
        buf.extend_from_slice(v);
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

/// Read `path` into `cache` (which must match the file's model and cache types); returns the
/// tokens and the bytes read. The cache is untouched when the file is refused.
pub fn restore(path: &Path, fingerprint: u64, cache: &mut KvCache) -> Result<(Vec<u32>, usize)> {
    let bad = |why: &str| Error::invalid(format!("slot file {}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(&e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file"));
    }
    let (rk, rv) = cache.row_bytes();
    let max = HEADER + 8 + cache.n_ctx() * (4 + cache.n_layer() * (rk + rv));
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
    if n > cache.n_ctx() {
        return Err(bad(&format!(
            "holds {n} tokens, more than this slot's context ({})",
            cache.n_ctx()
        )));
    }
    if body.len() != HEADER + 4 * n + cache.n_layer() * n * (rk + rv) {
        return Err(bad("size does not match its header"));
    }
    let tokens: Vec<u32> = (0..n).map(|i| u32_at(&b, HEADER + 4 * i)).collect();
    let mut at = HEADER + 4 * n;
    for layer in 0..cache.n_layer() {
        let (k, v) = cache.raw_mut(layer, n);
        k.copy_from_slice(&b[at..at + n * rk]);
        at += n * rk;
        v.copy_from_slice(&b[at..at + n * rv]);
        at += n * rv;
    }
    Ok((tokens, b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(types: CacheTypes) -> KvCache {
        let mut c = KvCache::new(2, 8, 32, types).unwrap();
        for layer in 0..2 {
            for pos in 0..5 {
                let k: Vec<f32> = (0..32).map(|i| (i + pos + layer) as f32 / 8.0).collect();
                let v: Vec<f32> = k.iter().map(|x| -x).collect();
                c.store(layer, pos, &k, &v);
            }
        }
        c
    }

    #[test]
    fn save_then_restore_gives_the_same_rows_and_refuses_bad_files() {
        let dir = std::env::temp_dir().join(format!("rllama-slot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.bin");
        let c = filled(CacheTypes::default());
        let toks = [1u32, 2, 3, 4, 5];
        let n = save(&path, 42, &c, &toks).unwrap();
        assert_eq!(n as u64, std::fs::metadata(&path).unwrap().len());

        let mut d = KvCache::new(2, 8, 32, CacheTypes::default()).unwrap();
        let (t, read) = restore(&path, 42, &mut d).unwrap();
        assert_eq!((t.as_slice(), read), (&toks[..], n));
        for layer in 0..2 {
            assert_eq!(c.raw(layer, 5), d.raw(layer, 5));
        }
        // Another model, other cache types, too small a context.
        assert!(restore(&path, 43, &mut d)
            .unwrap_err()
            .to_string()
            .contains("another model"));
        let q8 = CacheTypes {
            k: GgmlType::Q8_0,
            v: GgmlType::Q8_0,
        };
        assert!(restore(&path, 42, &mut KvCache::new(2, 8, 32, q8).unwrap()).is_err());
        assert!(restore(
            &path,
            42,
            &mut KvCache::new(2, 4, 32, CacheTypes::default()).unwrap()
        )
        .is_err());
        // Corrupt and truncated files.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 7] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(restore(&path, 42, &mut d)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(restore(&path, 42, &mut d).is_err());
        std::fs::write(&path, b"hello").unwrap();
        assert!(restore(&path, 42, &mut d).is_err());
        assert!(restore(&dir, 42, &mut d).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

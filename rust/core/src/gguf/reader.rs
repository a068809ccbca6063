use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use memmap2::Mmap;

use super::value::{Value, ValueType};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Nested metadata arrays deeper than this are refused (no real file nests more than twice).
const MAX_ARRAY_DEPTH: usize = 8;

/// How to bring the file into memory (`--no-mmap`, `--mlock`).
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub no_mmap: bool,
    pub mlock: bool,
}

/// One tensor as described in the header. `dims` are in ggml order: `dims[0]` is the
/// contiguous (row) dimension.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    pub nbytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Length of one row (dims[0]) and number of rows (product of the rest).
    pub fn rows(&self) -> (usize, usize) {
        let n0 = self.dims.first().copied().unwrap_or(1) as usize;
        let rest: u64 = self.dims.iter().skip(1).product();
        (n0, rest as usize)
    }
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A validated GGUF file. Every tensor's bytes are known to lie inside the data section and not
/// to overlap another's, so `tensor_data` never fails for a tensor listed here.
pub struct GgufFile {
    pub version: u32,
    pub alignment: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    pub file_size: u64,
    /// Non-fatal problems met while loading (for example mlock refused by the OS).
    pub warnings: Vec<String>,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    storage: Storage,
    /// Whether the mapping is locked in memory (`--mlock`): its pages stay.
    locked: bool,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

fn refuse_non_regular(path: &Path, ft: &std::fs::FileType) -> Result<()> {
    if ft.is_file() {
        return Ok(());
    }
    let what = if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file (a FIFO, socket or device)"
    };
    Err(Error::load(format!(
        "{}: is {what}, not a GGUF model file",
        path.display()
    )))
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let io_err = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        // A FIFO, a device or a directory would block in open or read, or fail with an errno
        // that names no cause ("No such device"): only regular files are model files.
        let meta = std::fs::metadata(path).map_err(io_err)?;
        refuse_non_regular(path, &meta.file_type())?;
        let mut file = File::open(path).map_err(io_err)?;
        // The path may have been replaced between the two calls: check what was opened.
        refuse_non_regular(path, &file.metadata().map_err(io_err)?.file_type())?;
        let storage = if opts.no_mmap {
            let mut buf = Vec::new();
            file.read_to_end(&mut buf).map_err(io_err)?;
            Storage::Owned(buf)
        } else {
            // SAFETY: the mapping is read-only; like every mmap-based model loader we assume the
            // file is not truncated or rewritten by another process while it is mapped.
            let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
            Storage::Mapped(map)
        };
        let mut gguf = Self::parse(storage)?;
        if opts.mlock {
            let locked = match &gguf.storage {
                Storage::Mapped(m) => m.lock(),
                Storage::Owned(_) => Ok(()),
            };
            gguf.locked = locked.is_ok();
            if let Err(e) = locked {
                gguf.warnings.push(format!(
                    "warning: failed to mlock {} bytes: {e} (try raising `ulimit -l`)",
                    gguf.file_size
                ));
            }
        }
        Ok(gguf)
    }

    /// Parse a file held in memory (tests and fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<Self> {
        let header = Header::parse(storage.bytes())?;
        Ok(GgufFile {
            version: header.version,
            alignment: header.alignment,
            meta_index: header
                .metadata
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect(),
            tensor_index: header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            metadata: header.metadata,
            tensors: header.tensors,
            data_offset: header.data_offset,
            file_size: storage.bytes().len() as u64,
            warnings: Vec::new(),
            storage,
            locked: false,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(Value::as_i64)
    }
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }
    pub fn get_array(&self, key: &str) -> Option<&[Value]> {
        self.get(key).and_then(Value::as_array)
    }
    /// `general.architecture`, the prefix of the model's hyperparameter keys.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor listed in this file.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.storage.bytes()[start..start + info.nbytes]
    }

    /// Let the OS take back the resident pages of bytes `range` of tensor `info` (a copy of them
    /// is kept elsewhere): a later read faults them in from the file again. Nothing happens for
    /// a file read into memory or locked there.
    pub fn release(&self, info: &TensorInfo, range: std::ops::Range<usize>) {
        let Storage::Mapped(m) = &self.storage else {
            return;
        };
        if self.locked || range.start >= range.end || range.end > info.nbytes {
            return;
        }
        let start = (self.data_offset + info.offset) as usize + range.start;
        // SAFETY: the mapping is private and read-only, so its pages are never dirty: dropping
        // them discards nothing, and every later access (through any slice still borrowed)
        // reads the file's bytes again, as the first access did. Failure is harmless (the
        // pages stay).
        let _ = unsafe {
            m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, range.len())
        };
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }
}

struct Header {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    data_offset: u64,
}

/// A bounds-checked little-endian reader; every failure names the offset it happened at.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(self.pos as u64, msg)
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "file truncated: {what} needs {n} bytes, {} left",
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// An element count that must fit in what is left of the file at `min_size` bytes each.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = (n as u128) * (min_size.max(1) as u128) <= self.remaining() as u128;
        if !fits {
            return Err(Error::format(
                at as u64,
                format!(
                    "{what} {n} cannot fit in the {} bytes left",
                    self.remaining()
                ),
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.count(&format!("{what} length"), 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::format(at as u64, format!("{what} is not valid UTF-8")))
    }
    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>("u8")?[0]),
            ValueType::I8 => Value::I8(self.array::<1>("i8")?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            ValueType::U32 => Value::U32(self.u32("u32")?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            ValueType::U64 => Value::U64(self.u64("u64")?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>("bool")?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(Error::format(
                            at as u64,
                            format!("bool value {b} is not 0 or 1"),
                        ))
                    }
                }
            }
            ValueType::String => Value::String(self.string("string value")?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem = self.value_type("array element type")?;
                let n = self.count("array length", elem.min_size())?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
    fn value_type(&mut self, what: &str) -> Result<ValueType> {
        let at = self.pos;
        let id = self.u32(what)?;
        ValueType::from_id(id)
            .ok_or_else(|| Error::format(at as u64, format!("unknown metadata value type {id}")))
    }
}

impl Header {
    fn parse(buf: &[u8]) -> Result<Header> {
        let mut c = Cursor { buf, pos: 0 };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(Error::format(
                0,
                format!("bad magic {magic:02x?}, expected \"GGUF\""),
            ));
        }
        let version = c.u32("version")?;
        if version != 2 && version != 3 {
            return Err(Error::format(
                4,
                format!("unsupported GGUF version {version} (supported: 2, 3)"),
            ));
        }
        // Minimal sizes: a tensor info is at least name length + n_dims + type + offset.
        let n_tensors = c.count("tensor count", 8 + 4 + 4 + 8)?;
        let n_kv = c.count("metadata count", 8 + 4)?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut seen = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let at = c.pos;
            let key = c.string("metadata key")?;
            let ty = c.value_type("metadata value type")?;
            let value = c.value(ty, 0)?;
            if seen.insert(key.clone(), ()).is_some() {
                return Err(Error::format(
                    at as u64,
                    format!("duplicate metadata key {key:?}"),
                ));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
            Some((_, v)) => {
                return Err(Error::format(
                    c.pos as u64,
                    format!("general.alignment must be a power-of-two u32, got {v:?}"),
                ))
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut names = HashMap::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let at = c.pos as u64;
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::format(
                    at,
                    format!("tensor {name:?} has {n_dims} dimensions (1..=4)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64("tensor dimension")?);
            }
            let type_at = c.pos as u64;
            let type_id = c.u32("tensor type")?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                Error::format(
                    type_at,
                    format!("tensor {name:?} has unknown type id {type_id}"),
                )
            })?;
            let offset = c.u64("tensor offset")?;
            let nbytes =
                tensor_nbytes(&name, &dims, ggml_type).map_err(|m| Error::format(at, m))?;
            if offset % alignment != 0 {
                return Err(Error::format(
                    at,
                    format!("tensor {name:?} offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            if names.insert(name.clone(), ()).is_some() {
                return Err(Error::format(at, format!("duplicate tensor name {name:?}")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                nbytes,
            });
        }

        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;
        if n_tensors > 0 && data_offset > file_len {
            return Err(Error::format(
                c.pos as u64,
                "file truncated before the data section",
            ));
        }
        // Every tensor inside the file, none overlapping another.
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| tensors[i].offset);
        let mut prev_end = 0u64;
        let mut prev_name = "";
        for &i in &order {
            let t = &tensors[i];
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.nbytes as u64));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_len => {
                    if s - data_offset < prev_end {
                        return Err(Error::format(
                            s,
                            format!("tensor {:?} overlaps tensor {prev_name:?}", t.name),
                        ));
                    }
                    prev_end = e - data_offset;
                    prev_name = &t.name;
                }
                _ => {
                    return Err(Error::format(
                        data_offset.saturating_add(t.offset),
                        format!(
                            "tensor {:?} ({} bytes at data offset {}) extends past the end of the file ({file_len} bytes)",
                            t.name, t.nbytes, t.offset
                        ),
                    ))
                }
            }
        }
        Ok(Header {
            version,
            alignment,
            metadata,
            tensors,
            data_offset,
        })
    }
}

fn tensor_nbytes(name: &str, dims: &[u64], ty: GgmlType) -> std::result::Result<usize, String> {
    let mut n: u64 = 1;
    for &d in dims {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= (isize::MAX as u64))
            .ok_or_else(|| format!("tensor {name:?} dimensions {dims:?} overflow"))?;
    }
    let bs = ty.block_size() as u64;
    if !dims[0].is_multiple_of(bs) {
        return Err(format!(
            "tensor {name:?} row length {} is not a multiple of the {ty} block size {bs}",
            dims[0]
        ));
    }
    (n / bs)
        .checked_mul(ty.type_size() as u64)
        .filter(|&b| b <= isize::MAX as u64)
        .map(|b| b as usize)
        .ok_or_else(|| format!("tensor {name:?} byte size overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny hand-built v3 file: two metadata keys and one F32 tensor.
    fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&2u64.to_le_bytes()); // kv
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        };
        s(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "x.list");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&9u32.to_le_bytes());
        s(&mut b, "t");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn reads_sample() {
        let f = GgufFile::from_bytes(sample()).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(
            f.get("x.list"),
            Some(&Value::Array(
                ValueType::U32,
                vec![Value::U32(7), Value::U32(9)]
            ))
        );
        let t = f.tensor("t").unwrap();
        assert_eq!(t.nbytes, 16);
        assert_eq!(f.tensor_data(t)[4..8], 2.0f32.to_le_bytes());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = sample();
        for n in 0..full.len() {
            let r = GgufFile::from_bytes(full[..n].to_vec());
            assert!(r.is_err(), "truncated at {n} parsed");
        }
    }

    #[test]
    fn absurd_counts_are_refused_without_allocating() {
        let mut b = sample();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = GgufFile::from_bytes(b).unwrap_err().to_string();
        assert!(e.contains("tensor count"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn random_flips_never_panic(flips in proptest::collection::vec((0usize..200, proptest::prelude::any::<u8>()), 1..8)) {
            let mut b = sample();
            for (i, v) in flips {
                let n = b.len();
                b[i % n] = v;
            }
            let _ = GgufFile::from_bytes(b);
        }
    }

    #[test]
    fn directories_are_refused_before_opening() {
        let dir = std::env::temp_dir();
        let e = GgufFile::open(&dir, &LoadOptions::default()).unwrap_err();
        assert!(matches!(e, Error::ModelLoad(_)), "{e:?}");
        assert!(e.to_string().contains("is a directory"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let path = std::env::temp_dir().join(format!("rllama-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let ok = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return; // no mkfifo here: nothing to test
        }
        let e = GgufFile::open(&path, &LoadOptions::default()).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}

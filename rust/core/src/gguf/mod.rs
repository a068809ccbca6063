//! GGUF file format: header, metadata, tensor infos and the data section, validated before use.
//! Tensors are zero-copy views over a read-only mmap, or over an owned buffer with `--no-mmap`.

mod reader;
mod value;

pub use reader::{GgufFile, LoadOptions, TensorInfo};
pub use value::{Value, ValueType};

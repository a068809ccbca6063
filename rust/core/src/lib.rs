//! rllama core: GGUF files, quantized kernels, tokenizers, model forward passes and sampling.
//! Pure Rust (no pyo3) so it can be tested and benchmarked with cargo alone.

pub mod cpu;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod kv;
pub mod model;
pub mod quant;
pub mod sampling;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};

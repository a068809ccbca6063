//! Quantized block types. `types.rs` names every ggml type with its block geometry; the kernels
//! (dequantize, quantize, vec_dot) for each supported type live one file per type.

mod dequant;
mod types;

pub use dequant::dequantize;
pub use types::GgmlType;

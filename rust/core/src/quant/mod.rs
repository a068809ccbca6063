//! Quantized block types: dequantization of every supported type (`dequant.rs`), activation
//! quantizers (`q8.rs`) and weight-row × activation-row dot products (`dot.rs`), compiled per
//! instruction set by `tensor::matmul`'s dispatch.

mod dequant;
pub mod dot;
pub mod q8;
mod types;

pub use dequant::dequantize;
pub use types::GgmlType;

//! Quantized block types: dequantization of every supported type (`dequant.rs`), activation
//! quantizers (`q8.rs`) and weight-row × activation-row dot products (`dot.rs`), compiled per
//! instruction set by `tensor::matmul`'s dispatch.

mod dequant;
pub mod dot;
pub mod f16;
pub mod float;
pub mod kquant;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod q8;
pub mod quantize;
pub mod repack;
#[cfg(test)]
pub mod testing;
mod types;
#[cfg(target_arch = "x86_64")]
pub mod x86;
#[cfg(target_arch = "x86_64")]
pub mod x86f;
#[cfg(target_arch = "x86_64")]
pub mod x86k;

pub use dequant::dequantize;
pub use types::GgmlType;

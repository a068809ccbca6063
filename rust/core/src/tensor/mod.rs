//! Matrix products over quantized weights, and the persistent thread pool that runs them.
//!
//! `matmul` is the one entry point the model code calls: y[t] = W · x[t] for each activation row t.
//! This first version dequantizes each weight row and runs a scalar f32 dot on one thread; the
//! kernels issue replaces its insides (8-bit activation blocks, integer SIMD, gemv/gemm tiling,
//! a real pool) without changing the signature.

use crate::error::{Error, Result};
use crate::quant::{dequantize, GgmlType};

/// A row-major weight matrix [rows = n_out] × [cols = n_in] in GGUF layout (each row whole blocks).
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

impl<'a> QMatrix<'a> {
    pub fn new(ty: GgmlType, data: &'a [u8], rows: usize, cols: usize) -> Result<Self> {
        let rb = ty
            .row_bytes(cols)
            .ok_or_else(|| Error::invalid(format!("{cols} columns is not a multiple of the {ty} block size")))?;
        if rb.checked_mul(rows) != Some(data.len()) {
            return Err(Error::invalid(format!("{ty} matrix {rows}x{cols}: {} bytes given", data.len())));
        }
        Ok(Self { ty, data, rows, cols })
    }
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }
    pub fn row(&self, i: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[i * rb..(i + 1) * rb]
    }
}

/// Threads used by matmul. Sized once per model (`--threads` / `--threads-batch`).
pub struct ThreadPool {
    n_threads: usize,
}

impl ThreadPool {
    pub fn new(n_threads: usize) -> Self {
        Self { n_threads: n_threads.max(1) }
    }
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }
}

/// y[t*rows + r] = dot(W[r], x[t*cols ..]) for t in 0..n_tokens.
pub fn matmul(_pool: &ThreadPool, w: &QMatrix, x: &[f32], n_tokens: usize, y: &mut [f32]) -> Result<()> {
    if x.len() != n_tokens * w.cols || y.len() != n_tokens * w.rows {
        return Err(Error::invalid(format!(
            "matmul shapes: W {}x{}, x {} values, y {} values, {n_tokens} tokens",
            w.rows,
            w.cols,
            x.len(),
            y.len()
        )));
    }
    let mut row = vec![0f32; w.cols];
    for r in 0..w.rows {
        dequantize(w.ty, w.row(r), &mut row)?;
        for t in 0..n_tokens {
            let xt = &x[t * w.cols..(t + 1) * w.cols];
            y[t * w.rows + r] = row.iter().zip(xt).map(|(a, b)| a * b).sum();
        }
    }
    Ok(())
}

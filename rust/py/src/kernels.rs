//! Kernel bindings for tests and `python -m rllama bench kernels`: a matmul over caller-provided
//! weight bytes, the SIMD level in use, and a streaming-read bandwidth probe.

use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rllama_core::cpu::simd_level;
use rllama_core::quant::repack::Tiles;
use rllama_core::quant::GgmlType;
use rllama_core::tensor::{matmul, pack_tiles, QMatrix, ThreadPool};
use rllama_core::Error;

use crate::errors::to_py;

/// Bytes read between cold timings (allocated once per process): several times the L3 a core
/// of these machines can reach.
const COLD_FLUSH_BYTES: usize = 256 << 20;

/// A weight matrix held in Rust with its own pool, to time or check `matmul` (repacked as a
/// model's are).
#[pyclass(name = "KernelMatrix", module = "rllama._core", frozen)]
pub struct PyKernelMatrix {
    ty: GgmlType,
    data: Vec<u8>,
    rows: usize,
    cols: usize,
    tiles: Option<Tiles>,
    pool: ThreadPool,
    /// As many bytes as the weights, for `time_read` (made on first use).
    read_buf: std::sync::OnceLock<Vec<u64>>,
    /// A copy of the first tile's rows, multiplied after each flush so that the code a cold
    /// `time` runs is back in the caches (Zen's L2 holds the L1 instruction cache's lines, so
    /// the flush evicts them too; a decode step's kernels are always hot).
    probe: (Vec<u8>, usize, Option<Tiles>),
}

/// Read `COLD_FLUSH_BYTES` of other memory on every thread of `pool`, so that what a timing
/// reads next comes from DRAM.
fn flush_caches(pool: &ThreadPool) {
    static FLUSH: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    let flush = FLUSH.get_or_init(|| (0..COLD_FLUSH_BYTES as u64 / 8).collect());
    sum_on_threads(pool, flush);
}

/// Every thread of `pool` sums its share of `data` (a streaming read).
fn sum_on_threads(pool: &ThreadPool, data: &[u64]) {
    let part = data.len().div_ceil(pool.n_threads());
    pool.broadcast(&|i| {
        let lo = (i * part).min(data.len());
        let hi = ((i + 1) * part).min(data.len());
        std::hint::black_box(data[lo..hi].iter().fold(0u64, |a, &b| a.wrapping_add(b)));
    });
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[pymethods]
impl PyKernelMatrix {
    #[new]
    #[pyo3(signature = (type_name, data, rows, cols, n_threads = 1))]
    fn new(
        type_name: &str,
        data: Vec<u8>,
        rows: usize,
        cols: usize,
        n_threads: usize,
    ) -> PyResult<Self> {
        let ty = GgmlType::from_name(type_name)
            .ok_or_else(|| to_py(Error::invalid(format!("unknown type {type_name}"))))?;
        let w = QMatrix::new(ty, &data, rows, cols).map_err(to_py)?;
        let pool = ThreadPool::new(n_threads);
        // The probe: the first tile's rows (all of them in a smaller matrix, none in an empty one).
        let probe_rows = rows.min(16);
        let probe_data = data[..data.len() / rows.max(1) * probe_rows].to_vec();
        let p = QMatrix::new(ty, &probe_data, probe_rows, cols).map_err(to_py)?;
        let mut packed = pack_tiles(&pool, &[w, p], &|_, _| {}).into_iter();
        let (tiles, probe_tiles) = (packed.next().flatten(), packed.next().flatten());
        Ok(Self {
            ty,
            data,
            rows,
            cols,
            tiles,
            pool,
            read_buf: std::sync::OnceLock::new(),
            probe: (probe_data, probe_rows, probe_tiles),
        })
    }

    /// y = W·x for `n_tokens` rows of x (f32 bytes); returns f32 bytes [n_tokens][rows].
    fn matmul<'py>(
        &self,
        py: Python<'py>,
        x: &[u8],
        n_tokens: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let x = f32s(x);
        let y = py
            .detach(|| {
                let w = QMatrix::new(self.ty, &self.data, self.rows, self.cols)?
                    .with_tiles(self.tiles.as_ref());
                let mut y = vec![0f32; n_tokens * self.rows];
                matmul(&self.pool, &w, &x, n_tokens, &mut y).map(|_| y)
            })
            .map_err(to_py)?;
        let bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(PyBytes::new(py, &bytes))
    }

    /// Seconds per matmul of `n_tokens` random activations, best of `iters`. With `cold`, each
    /// timed call follows a read of `COLD_FLUSH_BYTES` of other memory, so the weights come
    /// from DRAM as a decode step's do (a model's weights are read once per token, far more
    /// than the caches hold), not from a cache the previous repetition filled; then a matmul of
    /// the probe (other bytes) brings the code back, as hot as in a decode step.
    #[pyo3(signature = (n_tokens, iters, cold = false))]
    fn time(&self, py: Python<'_>, n_tokens: usize, iters: usize, cold: bool) -> PyResult<f64> {
        py.detach(|| {
            let w = QMatrix::new(self.ty, &self.data, self.rows, self.cols)?
                .with_tiles(self.tiles.as_ref());
            let x: Vec<f32> = (0..n_tokens * self.cols)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
                .collect();
            let mut y = vec![0f32; n_tokens * self.rows];
            let (pd, pr, pt) = &self.probe;
            let probe = QMatrix::new(self.ty, pd, *pr, self.cols)?.with_tiles(pt.as_ref());
            let mut py = vec![0f32; n_tokens * pr];
            let mut best = f64::INFINITY;
            for _ in 0..iters.max(1) {
                if cold {
                    flush_caches(&self.pool);
                    matmul(&self.pool, &probe, &x, n_tokens, &mut py)?;
                }
                let t = Instant::now();
                matmul(&self.pool, &w, &x, n_tokens, &mut y)?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok(best)
        })
        .map_err(to_py)
    }

    /// Seconds to stream as many bytes as the weights from DRAM (after the same flush as a cold
    /// `time`) on the same threads, best of `iters`: the read a cold gemv of this matrix is
    /// held against, taken at its size and, called between gemv timings, in the same moments
    /// of a shared machine.
    fn time_read(&self, py: Python<'_>, iters: usize) -> f64 {
        py.detach(|| {
            let buf = self
                .read_buf
                .get_or_init(|| (0..self.data.len().div_ceil(8) as u64).collect());
            let mut best = f64::INFINITY;
            for _ in 0..iters.max(1) {
                flush_caches(&self.pool);
                let t = Instant::now();
                sum_on_threads(&self.pool, buf);
                best = best.min(t.elapsed().as_secs_f64());
            }
            best
        })
    }
}

/// f32 values (little-endian bytes) quantized to `type_name` blocks.
#[pyfunction]
fn quantize<'py>(py: Python<'py>, type_name: &str, values: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let ty = GgmlType::from_name(type_name)
        .ok_or_else(|| to_py(Error::invalid(format!("unknown type {type_name}"))))?;
    let x = f32s(values);
    let n = ty.row_bytes(x.len()).ok_or_else(|| {
        to_py(Error::invalid(format!(
            "{} values is not a multiple of the {ty} block size",
            x.len()
        )))
    })?;
    let mut out = vec![0u8; n];
    rllama_core::quant::quantize::quantize_row(ty, &x, &mut out).map_err(to_py)?;
    Ok(PyBytes::new(py, &out))
}

/// (values per block, bytes per block) of the type named `type_name`.
#[pyfunction]
fn type_sizes(type_name: &str) -> PyResult<(usize, usize)> {
    let ty = GgmlType::from_name(type_name)
        .ok_or_else(|| to_py(Error::invalid(format!("unknown type {type_name}"))))?;
    Ok((ty.block_size(), ty.type_size()))
}

/// The SIMD level the kernels use ("scalar", "avx2", "avxvnni", "avx512", "neon").
#[pyfunction]
fn simd() -> &'static str {
    simd_level().name()
}

/// Streaming-read bandwidth in GB/s: `n_threads` threads summing disjoint parts of `n_bytes`.
#[pyfunction]
#[pyo3(signature = (n_bytes, n_threads = 1, iters = 3))]
fn read_bandwidth(py: Python<'_>, n_bytes: usize, n_threads: usize, iters: usize) -> f64 {
    py.detach(|| {
        let n = (n_bytes / 8).max(1024);
        let data: Vec<u64> = (0..n as u64).collect();
        let pool = ThreadPool::new(n_threads);
        let mut best = f64::INFINITY;
        for _ in 0..iters.max(1) {
            let t = Instant::now();
            sum_on_threads(&pool, &data);
            best = best.min(t.elapsed().as_secs_f64());
        }
        (n * 8) as f64 / best / 1e9
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyKernelMatrix>()?;
    m.add_function(wrap_pyfunction!(simd, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(type_sizes, m)?)?;
    m.add_function(wrap_pyfunction!(read_bandwidth, m)?)?;
    Ok(())
}

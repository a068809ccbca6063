use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rllama_core::gguf::{GgufFile, LoadOptions};
use rllama_core::model::{BatchToken, Model};

use crate::errors::to_py;

/// A loaded model (weights mmap'd) and its thread pool.
#[pyclass(name = "Model", module = "rllama._core", frozen)]
pub struct PyModel {
    inner: Arc<Model>,
}

#[pymethods]
impl PyModel {
    #[new]
    #[pyo3(signature = (path, n_threads = 1, no_mmap = false, mlock = false))]
    fn new(py: Python<'_>, path: std::path::PathBuf, n_threads: usize, no_mmap: bool, mlock: bool) -> PyResult<Self> {
        let opts = LoadOptions { no_mmap, mlock };
        let m = py
            .detach(|| GgufFile::open(&path, &opts).and_then(|f| Model::load(Arc::new(f), n_threads)))
            .map_err(to_py)?;
        Ok(Self { inner: Arc::new(m) })
    }

    #[getter]
    fn n_vocab(&self) -> usize {
        self.inner.cfg.n_vocab
    }
    #[getter]
    fn n_embd(&self) -> usize {
        self.inner.cfg.n_embd
    }
    #[getter]
    fn n_ctx_train(&self) -> usize {
        self.inner.cfg.n_ctx_train
    }

    /// Evaluate `tokens` (one sequence from position 0) in batches of `n_batch`; returns f32 logits
    /// bytes for every position when `all_logits`, else only for the last.
    #[pyo3(signature = (tokens, n_ctx, n_batch = 512, all_logits = false))]
    fn eval<'py>(
        &self,
        py: Python<'py>,
        tokens: Vec<u32>,
        n_ctx: usize,
        n_batch: usize,
        all_logits: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let m = self.inner.clone();
        let out = py
            .detach(move || -> rllama_core::Result<Vec<f32>> {
                let mut cache = m.new_cache(n_ctx)?;
                let mut logits = Vec::new();
                let n = tokens.len();
                for (c, chunk) in tokens.chunks(n_batch.max(1)).enumerate() {
                    let batch: Vec<BatchToken> = chunk
                        .iter()
                        .enumerate()
                        .map(|(i, &t)| {
                            let pos = c * n_batch.max(1) + i;
                            BatchToken { token: t, pos, seq: 0, logits: all_logits || pos + 1 == n }
                        })
                        .collect();
                    let o = m.forward(&batch, &mut [&mut cache], false)?;
                    logits.extend_from_slice(&o.logits);
                }
                Ok(logits)
            })
            .map_err(to_py)?;
        let bytes: Vec<u8> = out.iter().flat_map(|x| x.to_le_bytes()).collect();
        Ok(PyBytes::new(py, &bytes))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    Ok(())
}

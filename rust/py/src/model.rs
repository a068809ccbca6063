use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rllama_core::engine::{generate, GenerateParams, Generation, Sequence, StopReason, TokenEvent};
use rllama_core::gguf::{GgufFile, LoadOptions};
use rllama_core::kv::CacheTypes;
use rllama_core::model::{BatchToken, FlashAttn, Model, RopeOverrides};

use crate::errors::to_py;
use crate::sampling::{PySamplerVocab, PySamplingParams};

/// A loaded model (weights mmap'd), its thread pool, and one cached sequence for in-process use.
#[pyclass(name = "Model", module = "rllama._core", frozen)]
pub struct PyModel {
    inner: Arc<Model>,
    slot: Arc<Mutex<Option<Sequence>>>,
}

enum Event {
    Token(TokenEvent),
    Done(Generation),
    Failed(rllama_core::Error),
}

/// A running generation: iterate to receive ("token", id, text, logprob, top) tuples and finally
/// ("done", summary). Dropping it (or calling cancel) stops the generation at the next token.
#[pyclass(name = "Generation", module = "rllama._core")]
pub struct PyGeneration {
    rx: Mutex<Option<Receiver<Event>>>,
    cancel: Arc<AtomicBool>,
    finished: bool,
}

fn stop_fields(s: &StopReason) -> (&'static str, Option<String>) {
    match s {
        StopReason::Eos => ("eos", None),
        StopReason::Limit => ("limit", None),
        StopReason::Word(w) => ("word", Some(w.clone())),
        StopReason::Cancelled => ("cancelled", None),
    }
}

#[pymethods]
impl PyGeneration {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.finished {
            return Err(PyStopIteration::new_err(()));
        }
        let poisoned = |_| pyo3::exceptions::PyRuntimeError::new_err("generation state poisoned");
        let rx = self.rx.lock().map_err(poisoned)?.take();
        let Some(rx) = rx else {
            return Err(PyStopIteration::new_err(()));
        };
        let (rx, ev) = py.detach(move || {
            let ev = rx.recv();
            (rx, ev)
        });
        *self.rx.lock().map_err(poisoned)? = Some(rx);
        match ev {
            Ok(Event::Token(t)) => {
                let top: Vec<(u32, f32)> = t.top;
                Ok(("token", t.token, t.text, t.logprob, top)
                    .into_pyobject(py)?
                    .into_any())
            }
            Ok(Event::Done(g)) => {
                self.finished = true;
                let d = PyDict::new(py);
                let (kind, word) = stop_fields(&g.stop);
                d.set_item("tokens", g.tokens)?;
                d.set_item("content", g.content)?;
                d.set_item("stop_type", kind)?;
                d.set_item("stopping_word", word.unwrap_or_default())?;
                d.set_item("n_prompt", g.n_prompt)?;
                d.set_item("n_prompt_evaluated", g.n_prompt_evaluated)?;
                d.set_item("prompt_ms", g.prompt_ms)?;
                d.set_item("gen_ms", g.gen_ms)?;
                d.set_item("truncated", g.truncated)?;
                d.set_item("seed", g.seed)?;
                d.set_item("n_cached", g.n_cached)?;
                Ok(("done", d).into_pyobject(py)?.into_any())
            }
            Ok(Event::Failed(e)) => {
                self.finished = true;
                Err(to_py(e))
            }
            Err(_) => {
                self.finished = true;
                Err(pyo3::exceptions::PyRuntimeError::new_err(
                    "generation thread ended unexpectedly",
                ))
            }
        }
    }

    fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for PyGeneration {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

#[pymethods]
impl PyModel {
    #[new]
    /// Load the model at `path`, or from `file` (an open `GgufFile`, whose parsed metadata and
    /// mapping are then shared instead of opened again).
    #[pyo3(signature = (path, n_threads = 1, n_threads_batch = None, no_mmap = false, mlock = false, cache_type_k = "f16", cache_type_v = "f16", file = None, rope_scaling = None, rope_freq_base = None, rope_freq_scale = None, yarn_orig_ctx = None, yarn_ext_factor = None, yarn_attn_factor = None, yarn_beta_fast = None, yarn_beta_slow = None, flash_attn = "auto"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: std::path::PathBuf,
        n_threads: usize,
        n_threads_batch: Option<usize>,
        no_mmap: bool,
        mlock: bool,
        cache_type_k: &str,
        cache_type_v: &str,
        file: Option<PyRef<'_, crate::gguf::PyGgufFile>>,
        rope_scaling: Option<String>,
        rope_freq_base: Option<f32>,
        rope_freq_scale: Option<f32>,
        yarn_orig_ctx: Option<usize>,
        yarn_ext_factor: Option<f32>,
        yarn_attn_factor: Option<f32>,
        yarn_beta_fast: Option<f32>,
        yarn_beta_slow: Option<f32>,
        flash_attn: &str,
    ) -> PyResult<Self> {
        let rope = RopeOverrides {
            scaling: rope_scaling,
            freq_base: rope_freq_base,
            freq_scale: rope_freq_scale,
            yarn_orig_ctx,
            yarn_ext_factor,
            yarn_attn_factor,
            yarn_beta_fast,
            yarn_beta_slow,
        };
        let opts = LoadOptions { no_mmap, mlock };
        let types = CacheTypes::parse(cache_type_k, cache_type_v).map_err(to_py)?;
        let flash = FlashAttn::parse(flash_attn).map_err(to_py)?;
        let shared = file.map(|f| f.file());
        let m = py
            .detach(|| {
                let f = match shared {
                    Some(f) => f,
                    None => Arc::new(GgufFile::open(&path, &opts)?),
                };
                let mut m = Model::load(f, n_threads)?;
                m.set_threads(n_threads, n_threads_batch.unwrap_or(n_threads));
                m.set_cache_types(types)?;
                m.set_rope(&rope)?;
                m.set_flash_attn(flash);
                Ok::<_, rllama_core::Error>(m)
            })
            .map_err(to_py)?;
        Ok(Self {
            inner: Arc::new(m),
            slot: Arc::new(Mutex::new(None)),
        })
    }

    /// Final-normed hidden states (f32 bytes, n_tokens × n_embd) of `tokens` evaluated from position 0.
    #[pyo3(signature = (tokens, n_batch = 512))]
    fn hidden<'py>(
        &self,
        py: Python<'py>,
        tokens: Vec<u32>,
        n_batch: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let m = self.inner.clone();
        let out = py
            .detach(move || -> rllama_core::Result<Vec<f32>> {
                let mut cache = m.new_cache(tokens.len().max(1))?;
                let mut hidden = Vec::with_capacity(tokens.len() * m.cfg.n_embd);
                let nb = n_batch.max(1);
                for (c, chunk) in tokens.chunks(nb).enumerate() {
                    let batch: Vec<BatchToken> = chunk
                        .iter()
                        .enumerate()
                        .map(|(i, &t)| BatchToken {
                            token: t,
                            pos: c * nb + i,
                            seq: 0,
                            logits: false,
                        })
                        .collect();
                    let o = m.forward(&batch, &mut [&mut cache], true)?;
                    hidden.extend_from_slice(&o.hidden.unwrap_or_default());
                }
                Ok(hidden)
            })
            .map_err(to_py)?;
        let bytes: Vec<u8> = out.iter().flat_map(|x| x.to_le_bytes()).collect();
        Ok(PyBytes::new(py, &bytes))
    }

    /// Benchmark helper: decode `tokens` one at a time from position 0 (llama-bench's tg test).
    fn decode_bench(&self, py: Python<'_>, tokens: Vec<u32>) -> PyResult<()> {
        let m = self.inner.clone();
        py.detach(move || -> rllama_core::Result<()> {
            let mut cache = m.new_cache(tokens.len().max(1))?;
            for (pos, &t) in tokens.iter().enumerate() {
                let b = [BatchToken {
                    token: t,
                    pos,
                    seq: 0,
                    logits: true,
                }];
                m.forward(&b, &mut [&mut cache], false)?;
            }
            Ok(())
        })
        .map_err(to_py)
    }

    /// Start generating from `prompt` on this model's cached sequence (created with `n_ctx`).
    #[pyo3(signature = (prompt, vocab, sampling, n_ctx, n_predict = -1, stop = Vec::new(), n_batch = 512,
                        cache_prompt = true, n_keep = 0, post_sampling_probs = false))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        prompt: Vec<u32>,
        vocab: &PySamplerVocab,
        sampling: &PySamplingParams,
        n_ctx: usize,
        n_predict: i64,
        stop: Vec<String>,
        n_batch: usize,
        cache_prompt: bool,
        n_keep: i64,
        post_sampling_probs: bool,
    ) -> PyResult<PyGeneration> {
        if vocab.inner.n_vocab() != self.inner.cfg.n_vocab {
            return Err(crate::errors::InvalidRequestError::new_err(format!(
                "vocabulary has {} tokens, the model {}",
                vocab.inner.n_vocab(),
                self.inner.cfg.n_vocab
            )));
        }
        let params = GenerateParams {
            n_predict,
            stop,
            n_batch,
            cache_prompt,
            n_keep,
            sampling: sampling.inner.clone(),
            post_sampling_probs,
        };
        let (tx, rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let (model, slot, vocab, flag) = (
            self.inner.clone(),
            self.slot.clone(),
            vocab.inner.clone(),
            cancel.clone(),
        );
        std::thread::spawn(move || {
            let mut guard = match slot.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let mut run = || -> rllama_core::Result<Generation> {
                if guard.as_ref().is_none_or(|s| s.n_ctx() != n_ctx) {
                    *guard = Some(Sequence::new(&model, n_ctx)?);
                }
                let seq = guard.as_mut().expect("sequence was just created");
                generate(&model, &vocab, seq, &prompt, &params, &mut |ev| {
                    let _ = tx.send(Event::Token(ev.clone()));
                    !flag.load(Ordering::Relaxed)
                })
            };
            let result = run();
            if result.is_err() {
                // A failed evaluation leaves the cache in an unknown state: forget its tokens.
                if let Some(s) = guard.as_mut() {
                    s.tokens.clear();
                }
            }
            let _ = tx.send(match result {
                Ok(g) => Event::Done(g),
                Err(e) => Event::Failed(e),
            });
        });
        Ok(PyGeneration {
            rx: Mutex::new(Some(rx)),
            cancel,
            finished: false,
        })
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
    #[pyo3(signature = (tokens, n_ctx, n_batch = 512, all_logits = false, logits_from = 0))]
    fn eval<'py>(
        &self,
        py: Python<'py>,
        tokens: Vec<u32>,
        n_ctx: usize,
        n_batch: usize,
        all_logits: bool,
        logits_from: usize,
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
                            let want = (all_logits && pos >= logits_from) || pos + 1 == n;
                            BatchToken {
                                token: t,
                                pos,
                                seq: 0,
                                logits: want,
                            }
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
    m.add_class::<PyGeneration>()?;
    Ok(())
}

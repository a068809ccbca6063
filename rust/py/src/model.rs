use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use rllama_core::engine::{
    Engine, EngineConfig, Event, GenerateParams, Job, SelfExtend, StopReason,
};
use rllama_core::gguf::{GgufFile, LoadOptions};
use rllama_core::kv::CacheTypes;
use rllama_core::model::{FlashAttn, Model, RopeOverrides};

use crate::errors::to_py;
use crate::sampling::{PySamplerVocab, PySamplingParams};

/// A loaded model (weights mmap'd) and the engine that runs every request on it: one scheduler
/// thread with its slots. Submissions return an id; `wait_events` hands back what happened.
#[pyclass(name = "Model", module = "rllama._core", frozen)]
pub struct PyModel {
    inner: Arc<Model>,
    engine: OnceLock<Engine>,
}

fn stop_fields(s: &StopReason) -> (&'static str, Option<String>) {
    match s {
        StopReason::Eos => ("eos", None),
        StopReason::Limit => ("limit", None),
        StopReason::Word(w) => ("word", Some(w.clone())),
        StopReason::Cancelled => ("cancelled", None),
    }
}

fn f32_bytes<'py>(py: Python<'py>, v: &[f32]) -> Bound<'py, PyBytes> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    PyBytes::new(py, &bytes)
}

/// One event as a Python tuple: (id, kind, payload).
fn event_to_py<'py>(py: Python<'py>, id: u64, ev: Event) -> PyResult<Bound<'py, PyAny>> {
    let obj: Bound<'py, PyAny> = match ev {
        Event::Token(t) => (id, "token", (t.token, t.text, t.logprob, t.top))
            .into_pyobject(py)?
            .into_any(),
        Event::Done(g) => {
            let d = PyDict::new(py);
            let (kind, word) = stop_fields(&g.stop);
            d.set_item("tokens", g.tokens)?;
            d.set_item("content", g.content)?;
            d.set_item("stop_type", kind)?;
            d.set_item("stopping_word", word.unwrap_or_default())?;
            d.set_item("id_slot", g.id_slot)?;
            d.set_item("n_prompt", g.n_prompt)?;
            d.set_item("n_prompt_evaluated", g.n_prompt_evaluated)?;
            d.set_item("prompt_ms", g.prompt_ms)?;
            d.set_item("gen_ms", g.gen_ms)?;
            d.set_item("truncated", g.truncated)?;
            d.set_item("seed", g.seed)?;
            d.set_item("n_cached", g.n_cached)?;
            (id, "done", d).into_pyobject(py)?.into_any()
        }
        Event::Failed(e) => (id, "error", to_py(e).into_value(py))
            .into_pyobject(py)?
            .into_any(),
        Event::Floats(arrays) => {
            let l = PyList::empty(py);
            for a in &arrays {
                l.append(f32_bytes(py, a))?;
            }
            (id, "floats", l).into_pyobject(py)?.into_any()
        }
        Event::SlotOp(r) => {
            let d = PyDict::new(py);
            d.set_item("n_tokens", r.n_tokens)?;
            d.set_item("n_bytes", r.n_bytes)?;
            d.set_item("ms", r.ms)?;
            (id, "slot", d).into_pyobject(py)?.into_any()
        }
        Event::Dead(msg) => (id, "dead", msg).into_pyobject(py)?.into_any(),
    };
    Ok(obj)
}

impl PyModel {
    fn engine(&self) -> PyResult<&Engine> {
        self.engine
            .get()
            .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("the engine is not started"))
    }

    fn submit(&self, py: Python<'_>, job: Job) -> PyResult<u64> {
        let e = self.engine()?;
        py.detach(|| e.submit(job)).map_err(to_py)
    }
}

#[pymethods]
impl PyModel {
    #[new]
    /// Load the model at `path`, or from `file` (an open `GgufFile`, whose parsed metadata and
    /// mapping are then shared instead of opened again).
    #[pyo3(signature = (path, n_threads = 1, n_threads_batch = None, no_mmap = false, mlock = false, cache_type_k = "f16", cache_type_v = "f16", file = None, rope_scaling = None, rope_freq_base = None, rope_freq_scale = None, yarn_orig_ctx = None, yarn_ext_factor = None, yarn_attn_factor = None, yarn_beta_fast = None, yarn_beta_slow = None, flash_attn = "auto", deterministic = false))]
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
        deterministic: bool,
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
                m.set_deterministic(deterministic);
                Ok::<_, rllama_core::Error>(m)
            })
            .map_err(to_py)?;
        Ok(Self {
            inner: Arc::new(m),
            engine: OnceLock::new(),
        })
    }

    /// Allocate the slots' caches and start the scheduler thread.
    #[pyo3(signature = (vocab, n_parallel = 1, n_ctx = 4096, kv_unified = false, n_ubatch = 512,
                        context_shift = true, slot_prompt_similarity = 0.5, grp_attn_n = 1,
                        grp_attn_w = 512))]
    #[allow(clippy::too_many_arguments)]
    fn start_engine(
        &self,
        py: Python<'_>,
        vocab: &PySamplerVocab,
        n_parallel: usize,
        n_ctx: usize,
        kv_unified: bool,
        n_ubatch: usize,
        context_shift: bool,
        slot_prompt_similarity: f32,
        grp_attn_n: i64,
        grp_attn_w: i64,
    ) -> PyResult<()> {
        let cfg = EngineConfig {
            n_parallel,
            n_ctx,
            kv_unified,
            n_ubatch,
            context_shift,
            slot_prompt_similarity,
            self_extend: SelfExtend::new(grp_attn_n, grp_attn_w).map_err(to_py)?,
        };
        let (m, v) = (self.inner.clone(), vocab.inner.clone());
        let engine = py.detach(move || Engine::start(m, v, cfg)).map_err(to_py)?;
        self.engine
            .set(engine)
            .map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("the engine is already started"))
    }

    /// Queue a generation; returns its id. Bad options and grammars raise here.
    #[pyo3(signature = (prompt, sampling, n_predict = -1, stop = Vec::new(), cache_prompt = true,
                        n_keep = 0, post_sampling_probs = false, id_slot = -1))]
    #[allow(clippy::too_many_arguments)]
    fn submit_generate(
        &self,
        py: Python<'_>,
        prompt: Vec<u32>,
        sampling: &PySamplingParams,
        n_predict: i64,
        stop: Vec<String>,
        cache_prompt: bool,
        n_keep: i64,
        post_sampling_probs: bool,
        id_slot: i64,
    ) -> PyResult<u64> {
        let params = GenerateParams {
            n_predict,
            stop,
            cache_prompt,
            n_keep,
            sampling: sampling.inner.clone(),
            post_sampling_probs,
            id_slot,
        };
        let e = self.engine()?;
        py.detach(|| e.submit_generate(&prompt, params))
            .map_err(to_py)
    }

    /// Queue an evaluation of `tokens` from position 0: its result is the f32 logits of the last
    /// position, or of every position from `logits_from` on when `all_logits`.
    #[pyo3(signature = (tokens, n_ctx = 0, n_batch = 512, all_logits = false, logits_from = 0))]
    fn submit_logits(
        &self,
        py: Python<'_>,
        tokens: Vec<u32>,
        n_ctx: usize,
        n_batch: usize,
        all_logits: bool,
        logits_from: usize,
    ) -> PyResult<u64> {
        self.submit(
            py,
            Job::Logits {
                tokens,
                n_ctx,
                n_batch,
                all: all_logits,
                logits_from,
            },
        )
    }

    /// Queue hidden states (embeddings) of each input: one f32 array (n_tokens × n_embd) each.
    #[pyo3(signature = (inputs, n_batch = 512))]
    fn submit_hidden(
        &self,
        py: Python<'_>,
        inputs: Vec<Vec<u32>>,
        n_batch: usize,
    ) -> PyResult<u64> {
        self.submit(py, Job::Hidden { inputs, n_batch })
    }

    /// Queue llama-bench's tg test: decode `tokens` one at a time from position 0.
    fn submit_decode_bench(&self, py: Python<'_>, tokens: Vec<u32>) -> PyResult<u64> {
        self.submit(py, Job::DecodeBench { tokens })
    }

    fn submit_slot_save(
        &self,
        py: Python<'_>,
        slot: usize,
        path: std::path::PathBuf,
    ) -> PyResult<u64> {
        self.submit(py, Job::SlotSave { slot, path })
    }

    fn submit_slot_restore(
        &self,
        py: Python<'_>,
        slot: usize,
        path: std::path::PathBuf,
    ) -> PyResult<u64> {
        self.submit(py, Job::SlotRestore { slot, path })
    }

    fn submit_slot_erase(&self, py: Python<'_>, slot: usize) -> PyResult<u64> {
        self.submit(py, Job::SlotErase { slot })
    }

    /// Stop request `id` at the next step (its final event still comes).
    fn cancel(&self, id: u64) -> PyResult<()> {
        self.engine()?.cancel(id);
        Ok(())
    }

    /// Hold request `id` after its current token (`paused`), or let it continue (flow control
    /// for a consumer that has fallen behind; the other requests keep running).
    fn pause(&self, id: u64, paused: bool) -> PyResult<()> {
        self.engine()?.pause(id, paused);
        Ok(())
    }

    /// Every event since the last call as (id, kind, payload) tuples, waiting up to
    /// `timeout_ms` for the first (GIL released while waiting).
    fn wait_events<'py>(&self, py: Python<'py>, timeout_ms: u64) -> PyResult<Bound<'py, PyList>> {
        let e = self.engine()?;
        let events = py.detach(|| e.wait_events(Duration::from_millis(timeout_ms)));
        let out = PyList::empty(py);
        for (id, ev) in events {
            out.append(event_to_py(py, id, ev)?)?;
        }
        Ok(out)
    }

    /// Counters and the slots' state (for /metrics, /slots, /health).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.engine()?.stats();
        let d = PyDict::new(py);
        d.set_item("prompt_tokens_total", s.prompt_tokens_total)?;
        d.set_item("prompt_seconds_total", s.prompt_ms_total / 1e3)?;
        d.set_item("tokens_predicted_total", s.predicted_tokens_total)?;
        d.set_item("tokens_predicted_seconds_total", s.predicted_ms_total / 1e3)?;
        d.set_item("n_decode_total", s.n_decode_total)?;
        d.set_item("n_busy_slots_total", s.n_busy_slots_total)?;
        d.set_item("kv_cache_tokens", s.kv_cache_tokens)?;
        d.set_item("kv_cache_cells", s.kv_cache_cells)?;
        d.set_item("requests_processing", s.requests_processing)?;
        d.set_item("requests_deferred", s.requests_deferred)?;
        d.set_item("prefix_shared_tokens_total", s.prefix_shared_tokens_total)?;
        d.set_item("kv_blocks_used", s.kv_blocks_used)?;
        d.set_item("kv_blocks_cached", s.kv_blocks_cached)?;
        d.set_item("kv_blocks_total", s.kv_blocks_total)?;
        let slots = PyList::empty(py);
        for st in &s.slots {
            let sd = PyDict::new(py);
            sd.set_item("id", st.id)?;
            sd.set_item("n_ctx", st.n_ctx)?;
            sd.set_item("id_task", st.id_task)?;
            sd.set_item("n_past", st.n_past)?;
            sd.set_item("n_prompt", st.n_prompt)?;
            sd.set_item("n_decoded", st.n_decoded)?;
            sd.set_item("n_remain", st.n_remain)?;
            slots.append(sd)?;
        }
        d.set_item("slots", slots)?;
        Ok(d)
    }

    /// Cancel every request, send their final events and join the scheduler thread.
    fn shutdown(&self, py: Python<'_>) {
        if let Some(e) = self.engine.get() {
            py.detach(|| e.shutdown());
        }
    }

    #[getter]
    fn n_ctx_slot(&self) -> PyResult<usize> {
        Ok(self.engine()?.n_ctx_slot())
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

    /// The engine's whole context (`n_ctx` as given, or what 0 resolved to).
    #[getter]
    fn n_ctx(&self) -> PyResult<usize> {
        Ok(self.engine()?.config().n_ctx)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    Ok(())
}

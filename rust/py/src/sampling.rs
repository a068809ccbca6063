//! Sampling bindings: native params, a vocabulary handle, the per-sequence sampler (to run on
//! fixed logit vectors) and the grammar parser/matcher. Conversions only; logic is in the core.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use rllama_core::sampling::grammar::{Grammar, Matcher};
use rllama_core::sampling::{self as core_sampling, SamplerKind};

use crate::errors::to_py;

/// Sampling options resolved to token ids (what `rllama.sampling.from_request` returns).
#[pyclass(name = "SamplingParams", module = "rllama._core")]
#[derive(Clone)]
pub struct PySamplingParams {
    pub inner: core_sampling::SamplingParams,
}

#[pymethods]
impl PySamplingParams {
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut p = core_sampling::SamplingParams::default();
        if let Some(kw) = kwargs {
            for (k, v) in kw.iter() {
                let k: String = k.extract()?;
                set_field(&mut p, &k, &v)?;
            }
        }
        Ok(Self { inner: p })
    }

    /// The options as a dict of plain values (`samplers` as names, `seed` as stored: -1 random).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = &self.inner;
        let d = PyDict::new(py);
        d.set_item("temperature", p.temperature)?;
        d.set_item("dynatemp_range", p.dynatemp_range)?;
        d.set_item("dynatemp_exponent", p.dynatemp_exponent)?;
        d.set_item("top_k", p.top_k)?;
        d.set_item("top_p", p.top_p)?;
        d.set_item("min_p", p.min_p)?;
        d.set_item("tfs_z", p.tfs_z)?;
        d.set_item("typical_p", p.typical_p)?;
        d.set_item("min_keep", p.min_keep)?;
        d.set_item(
            "samplers",
            p.samplers.iter().map(|s| s.name()).collect::<Vec<_>>(),
        )?;
        d.set_item("repeat_penalty", p.repeat_penalty)?;
        d.set_item("repeat_last_n", p.repeat_last_n)?;
        d.set_item("penalize_nl", p.penalize_nl)?;
        d.set_item("presence_penalty", p.presence_penalty)?;
        d.set_item("frequency_penalty", p.frequency_penalty)?;
        d.set_item("penalty_prompt", p.penalty_prompt.clone())?;
        d.set_item("mirostat", p.mirostat)?;
        d.set_item("mirostat_tau", p.mirostat_tau)?;
        d.set_item("mirostat_eta", p.mirostat_eta)?;
        d.set_item(
            "logit_bias",
            p.logit_bias
                .iter()
                .map(|&(t, b)| {
                    (
                        t,
                        if b == f32::NEG_INFINITY {
                            None
                        } else {
                            Some(b)
                        },
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        d.set_item("ignore_eos", p.ignore_eos)?;
        d.set_item(
            "seed",
            if p.seed == core_sampling::rng::RANDOM_SEED {
                -1i64
            } else {
                p.seed as i64
            },
        )?;
        d.set_item("n_probs", p.n_probs)?;
        d.set_item("grammar", &p.grammar)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!("SamplingParams({:?})", self.inner)
    }
}

fn set_field(p: &mut core_sampling::SamplingParams, k: &str, v: &Bound<'_, PyAny>) -> PyResult<()> {
    match k {
        "temperature" => p.temperature = v.extract()?,
        "dynatemp_range" => p.dynatemp_range = v.extract()?,
        "dynatemp_exponent" => p.dynatemp_exponent = v.extract()?,
        "top_k" => p.top_k = v.extract()?,
        "top_p" => p.top_p = v.extract()?,
        "min_p" => p.min_p = v.extract()?,
        "tfs_z" => p.tfs_z = v.extract()?,
        "typical_p" => p.typical_p = v.extract()?,
        "min_keep" => p.min_keep = v.extract()?,
        "samplers" => {
            let names: Vec<String> = v.extract()?;
            p.samplers = names
                .iter()
                .map(|n| SamplerKind::from_name(n))
                .collect::<Result<_, _>>()
                .map_err(to_py)?;
        }
        "repeat_penalty" => p.repeat_penalty = v.extract()?,
        "repeat_last_n" => p.repeat_last_n = v.extract()?,
        "penalize_nl" => p.penalize_nl = v.extract()?,
        "presence_penalty" => p.presence_penalty = v.extract()?,
        "frequency_penalty" => p.frequency_penalty = v.extract()?,
        "penalty_prompt" => p.penalty_prompt = v.extract()?,
        "mirostat" => p.mirostat = v.extract()?,
        "mirostat_tau" => p.mirostat_tau = v.extract()?,
        "mirostat_eta" => p.mirostat_eta = v.extract()?,
        "logit_bias" => {
            // [(token, bias or None)], None meaning "never".
            let items: Vec<(u32, Option<f32>)> = v.extract()?;
            p.logit_bias = items
                .into_iter()
                .map(|(t, b)| (t, b.unwrap_or(f32::NEG_INFINITY)))
                .collect();
        }
        "ignore_eos" => p.ignore_eos = v.extract()?,
        "seed" => {
            let s: i64 = v.extract()?;
            p.seed = if s < 0 {
                core_sampling::rng::RANDOM_SEED
            } else {
                (s & 0xFFFF_FFFF) as u32
            };
        }
        "n_probs" => p.n_probs = v.extract()?,
        "grammar" => p.grammar = v.extract()?,
        _ => {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "unknown sampling option {k:?}"
            )))
        }
    }
    Ok(())
}

/// A model's vocabulary as the sampler sees it: token bytes and end-of-generation ids.
#[pyclass(name = "SamplerVocab", module = "rllama._core", frozen)]
pub struct PySamplerVocab {
    pub inner: Arc<core_sampling::SamplerVocab>,
}

#[pymethods]
impl PySamplerVocab {
    #[new]
    fn new(pieces: Vec<Vec<u8>>, eog: Vec<u32>) -> Self {
        Self {
            inner: core_sampling::SamplerVocab::new(pieces, eog),
        }
    }

    /// The vocabulary of a tokenizer: every token's bytes, its end-of-generation ids, and its
    /// control/unknown tokens hidden from generated text.
    #[staticmethod]
    fn from_tokenizer(tok: &crate::tokenizer::PyTokenizer) -> Self {
        let t = &tok.inner;
        let hidden: Vec<u32> = (0..t.n_vocab() as u32)
            .filter(|&i| t.token_to_piece(i, false).is_empty())
            .collect();
        Self {
            inner: core_sampling::SamplerVocab::with_hidden(
                t.token_bytes(),
                t.eog_ids().to_vec(),
                &hidden,
            ),
        }
    }

    fn __len__(&self) -> usize {
        self.inner.n_vocab()
    }

    #[getter]
    fn eog(&self) -> Vec<u32> {
        self.inner.eog.clone()
    }

    #[getter]
    fn newline(&self) -> Option<u32> {
        self.inner.newline
    }
}

fn logits_from(obj: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        let bytes = b.as_bytes();
        if bytes.len() % 4 != 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "logits bytes must be float32 (length multiple of 4)",
            ));
        }
        return Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect());
    }
    obj.extract()
}

/// One sequence's sampler. `logits` are float32 bytes (numpy `.tobytes()`) or a float sequence.
#[pyclass(name = "Sampler", module = "rllama._core")]
pub struct PySampler {
    inner: Mutex<core_sampling::Sampler>,
}

impl PySampler {
    fn with<R>(&self, f: impl FnOnce(&mut core_sampling::Sampler) -> R) -> PyResult<R> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("sampler poisoned"))?;
        Ok(f(&mut g))
    }
}

#[pymethods]
impl PySampler {
    #[new]
    fn new(params: &PySamplingParams, vocab: &PySamplerVocab) -> PyResult<Self> {
        let s = core_sampling::Sampler::new(&params.inner, vocab.inner.clone()).map_err(to_py)?;
        Ok(Self {
            inner: Mutex::new(s),
        })
    }

    fn sample(&self, py: Python<'_>, logits: &Bound<'_, PyAny>) -> PyResult<u32> {
        let l = logits_from(logits)?;
        py.detach(|| self.with(|s| s.sample(&l)))?.map_err(to_py)
    }

    /// Draw `n` times from the same logits without accepting (distribution tests).
    fn sample_n(&self, py: Python<'_>, logits: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<u32>> {
        let l = logits_from(logits)?;
        py.detach(|| self.with(|s| (0..n).map(|_| s.sample(&l)).collect::<Result<Vec<_>, _>>()))?
            .map_err(to_py)
    }

    fn accept(&self, token: u32) -> PyResult<()> {
        self.with(|s| s.accept(token))?.map_err(to_py)
    }

    fn set_history(&self, tokens: Vec<u32>) -> PyResult<()> {
        self.with(|s| s.set_history(&tokens))
    }

    fn grammar_done(&self) -> PyResult<bool> {
        self.with(|s| s.grammar_done())
    }

    fn grammar_can_end(&self) -> PyResult<bool> {
        self.with(|s| s.grammar_can_end())
    }

    #[getter]
    fn seed(&self) -> PyResult<u32> {
        self.with(|s| s.seed())
    }

    /// (sampled, grammar_redraws, trie_walks) counters.
    #[getter]
    fn stats(&self) -> PyResult<(u64, u64, u64)> {
        self.with(|s| (s.stats.sampled, s.stats.grammar_redraws, s.stats.trie_walks))
    }

    fn post_sampling_probs(&self, n: usize) -> PyResult<Vec<(u32, f32)>> {
        self.with(|s| s.post_sampling_probs(n))
    }

    /// Sample and accept `n_tokens` tokens, each from the next row of `logits` (n_tokens x
    /// n_vocab float32 bytes), stopping after an end-of-generation token. Returns the tokens and
    /// the total seconds spent in `sample` (for overhead measurements).
    fn generate(
        &self,
        py: Python<'_>,
        logits: &Bound<'_, PyAny>,
        n_vocab: usize,
    ) -> PyResult<(Vec<u32>, f64)> {
        let l = logits_from(logits)?;
        if n_vocab == 0 || l.len() % n_vocab != 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "logits length must be a multiple of n_vocab",
            ));
        }
        py.detach(|| {
            self.with(|s| -> rllama_core::Result<(Vec<u32>, f64)> {
                let mut out = Vec::new();
                let mut secs = 0.0;
                for row in l.chunks_exact(n_vocab) {
                    let t0 = std::time::Instant::now();
                    let t = s.sample(row)?;
                    s.accept(t)?;
                    secs += t0.elapsed().as_secs_f64();
                    out.push(t);
                    if out.last().is_some_and(|&t| is_eog(s, t)) {
                        break;
                    }
                }
                Ok((out, secs))
            })
        })?
        .map_err(to_py)
    }
}

fn is_eog(s: &core_sampling::Sampler, t: u32) -> bool {
    s.vocab().is_eog(t)
}

/// A parsed GBNF grammar; `matches` tells whether a whole byte string is in its language.
#[pyclass(name = "Grammar", module = "rllama._core", frozen)]
pub struct PyGrammar {
    inner: Arc<Grammar>,
}

#[pymethods]
impl PyGrammar {
    #[new]
    fn new(py: Python<'_>, text: String) -> PyResult<Self> {
        let g = py.detach(|| Grammar::parse(&text)).map_err(to_py)?;
        Ok(Self { inner: g })
    }

    #[getter]
    fn n_rules(&self) -> usize {
        self.inner.n_rules
    }

    fn matches(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<bool> {
        let bytes: Vec<u8> = match text.extract::<String>() {
            Ok(s) => s.into_bytes(),
            Err(_) => text.extract()?,
        };
        let g = self.inner.clone();
        py.detach(move || Matcher::new(g)?.matches_completely(&bytes))
            .map_err(to_py)
    }

    /// Token ids (end-of-generation ones excluded) the grammar allows after `prefix`, by the same
    /// vocabulary walk the sampler uses.
    fn allowed_tokens(
        &self,
        py: Python<'_>,
        vocab: &PySamplerVocab,
        prefix: Vec<u8>,
    ) -> PyResult<Vec<u32>> {
        let g = self.inner.clone();
        let v = vocab.inner.clone();
        py.detach(move || -> rllama_core::Result<Vec<u32>> {
            let mut m = Matcher::new(g)?;
            m.accept_bytes(&prefix)?;
            let mut out = Vec::new();
            m.allowed_tokens(v.trie(), &v.pieces, &mut out)?;
            out.sort_unstable();
            Ok(out)
        })
        .map_err(to_py)
    }

    /// Whether `text` can be continued into a match (a valid prefix).
    fn allows_prefix(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<bool> {
        let bytes: Vec<u8> = match text.extract::<String>() {
            Ok(s) => s.into_bytes(),
            Err(_) => text.extract()?,
        };
        let g = self.inner.clone();
        py.detach(move || -> rllama_core::Result<bool> {
            let mut m = Matcher::new(g)?;
            Ok(bytes.is_empty() || m.token_allowed(&bytes)?)
        })
        .map_err(to_py)
    }
}

/// Log-softmax of raw logits: the top `n` (token, logprob), best first.
#[pyfunction]
fn top_logprobs(logits: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<(u32, f32)>> {
    let l = logits_from(logits)?;
    Ok(core_sampling::top_logprobs(&l, n))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySamplingParams>()?;
    m.add_class::<PySamplerVocab>()?;
    m.add_class::<PySampler>()?;
    m.add_class::<PyGrammar>()?;
    m.add_function(wrap_pyfunction!(top_logprobs, m)?)?;
    Ok(())
}

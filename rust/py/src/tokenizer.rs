//! Tokenizer bindings: a vocabulary-only tokenizer loaded from a GGUF file, and the incremental
//! decoder. Conversions only; the GIL is released around tokenizing and detokenizing.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rllama_core::gguf::{GgufFile, LoadOptions};
use rllama_core::tokenizer::{IncrementalDecoder, Model, Tokenizer};

use crate::errors::to_py;

#[pyclass(name = "Tokenizer", module = "rllama._core", frozen)]
pub struct PyTokenizer {
    pub inner: Arc<Tokenizer>,
}

fn opt(v: Option<u32>) -> i64 {
    v.map_or(-1, i64::from)
}

/// Python ints to token ids: a negative or too large id is an `InvalidRequestError`.
fn to_ids(ids: &[i64], n_vocab: usize) -> PyResult<Vec<u32>> {
    ids.iter()
        .map(|&i| {
            if (0..n_vocab as i64).contains(&i) {
                Ok(i as u32)
            } else {
                Err(to_py(rllama_core::Error::invalid(format!(
                    "token id {i} out of range (n_vocab {n_vocab})"
                ))))
            }
        })
        .collect()
}

#[pymethods]
impl PyTokenizer {
    /// Load only the tokenizer of a GGUF file.
    #[staticmethod]
    fn from_gguf(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let t = py
            .detach(|| {
                let f = GgufFile::open(&path, &LoadOptions::default())?;
                Tokenizer::from_gguf(&f)
            })
            .map_err(to_py)?;
        Ok(Self { inner: Arc::new(t) })
    }

    /// The tokenizer of an already open GGUF file (its parsed metadata is shared, not re-read).
    #[staticmethod]
    fn from_file(py: Python<'_>, file: PyRef<'_, crate::gguf::PyGgufFile>) -> PyResult<Self> {
        let f = file.file();
        let t = py.detach(|| Tokenizer::from_gguf(&f)).map_err(to_py)?;
        Ok(Self { inner: Arc::new(t) })
    }

    #[pyo3(signature = (text, add_special = false, parse_special = true))]
    fn tokenize(
        &self,
        py: Python<'_>,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Vec<u32> {
        let text = text.to_owned();
        let t = &self.inner;
        py.detach(move || t.tokenize(&text, add_special, parse_special))
    }

    #[pyo3(signature = (ids, remove_special = false, unparse_special = true))]
    fn detokenize(
        &self,
        py: Python<'_>,
        ids: Vec<i64>,
        remove_special: bool,
        unparse_special: bool,
    ) -> PyResult<String> {
        let t = &self.inner;
        let ids = to_ids(&ids, t.n_vocab())?;
        py.detach(move || t.detokenize(&ids, remove_special, unparse_special))
            .map_err(to_py)
    }

    #[pyo3(signature = (ids, remove_special = false, unparse_special = true))]
    fn detokenize_bytes<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<i64>,
        remove_special: bool,
        unparse_special: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let t = &self.inner;
        let ids = to_ids(&ids, t.n_vocab())?;
        let b = py
            .detach(move || t.detokenize_bytes(&ids, remove_special, unparse_special))
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &b))
    }

    #[pyo3(signature = (id, special = true))]
    fn token_to_piece<'py>(
        &self,
        py: Python<'py>,
        id: i64,
        special: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let n = self.inner.n_vocab() as i64;
        if !(0..n).contains(&id) {
            return Err(to_py(rllama_core::Error::invalid(format!(
                "token id {id} out of range (n_vocab {n})"
            ))));
        }
        Ok(PyBytes::new(
            py,
            &self.inner.token_to_piece(id as u32, special),
        ))
    }

    fn token_text(&self, id: i64) -> Option<String> {
        let id = u32::try_from(id).ok()?;
        self.inner.token_text(id).map(str::to_owned)
    }

    fn is_eog(&self, id: i64) -> bool {
        u32::try_from(id).is_ok_and(|i| self.inner.is_eog(i))
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.n_vocab()
    }
    #[getter]
    fn model(&self) -> &'static str {
        match self.inner.model() {
            Model::Spm => "llama",
            Model::Bpe => "gpt2",
            Model::Wpm => "bert",
        }
    }
    #[getter]
    fn pre(&self) -> String {
        self.inner.pre().to_owned()
    }
    #[getter]
    fn add_bos(&self) -> bool {
        self.inner.add_bos()
    }
    #[getter]
    fn add_eos(&self) -> bool {
        self.inner.add_eos()
    }
    #[getter]
    fn eog_ids(&self) -> Vec<u32> {
        self.inner.eog_ids().to_vec()
    }
    /// Special ids by name (-1 when absent).
    fn special_ids(&self) -> Vec<(&'static str, i64)> {
        let s = self.inner.special_ids();
        vec![
            ("bos", opt(s.bos)),
            ("eos", opt(s.eos)),
            ("eot", opt(s.eot)),
            ("eom", opt(s.eom)),
            ("unk", opt(s.unk)),
            ("sep", opt(s.sep)),
            ("pad", opt(s.pad)),
            ("mask", opt(s.mask)),
            ("fim_pre", opt(s.fim_pre)),
            ("fim_suf", opt(s.fim_suf)),
            ("fim_mid", opt(s.fim_mid)),
            ("fim_pad", opt(s.fim_pad)),
            ("fim_rep", opt(s.fim_rep)),
            ("fim_sep", opt(s.fim_sep)),
            ("nl", opt(self.inner.nl())),
        ]
    }

    #[pyo3(signature = (special = true))]
    fn decoder(&self, special: bool) -> PyIncrementalDecoder {
        PyIncrementalDecoder {
            tok: self.inner.clone(),
            inner: Mutex::new(IncrementalDecoder::new(special)),
        }
    }
}

/// Streams token ids to text, never splitting a UTF-8 character.
#[pyclass(name = "IncrementalDecoder", module = "rllama._core", frozen)]
pub struct PyIncrementalDecoder {
    tok: Arc<Tokenizer>,
    inner: Mutex<IncrementalDecoder>,
}

#[pymethods]
impl PyIncrementalDecoder {
    fn push(&self, id: i64) -> PyResult<String> {
        let id = to_ids(&[id], self.tok.n_vocab())?[0];
        let mut d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        d.push(&self.tok, id).map_err(to_py)
    }
    fn flush(&self) -> String {
        let mut d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        d.flush()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyIncrementalDecoder>()?;
    Ok(())
}

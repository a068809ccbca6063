use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use rllama_core::gguf::{GgufFile, LoadOptions, Value};

use crate::errors::to_py;

/// A GGUF file opened by the core (mmap by default).
#[pyclass(name = "GgufFile", module = "rllama._core", frozen)]
pub struct PyGgufFile {
    inner: Arc<GgufFile>,
}

fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::U8(x) => x.into_pyobject(py)?.into_any(),
        Value::I8(x) => x.into_pyobject(py)?.into_any(),
        Value::U16(x) => x.into_pyobject(py)?.into_any(),
        Value::I16(x) => x.into_pyobject(py)?.into_any(),
        Value::U32(x) => x.into_pyobject(py)?.into_any(),
        Value::I32(x) => x.into_pyobject(py)?.into_any(),
        Value::U64(x) => x.into_pyobject(py)?.into_any(),
        Value::I64(x) => x.into_pyobject(py)?.into_any(),
        Value::F32(x) => x.into_pyobject(py)?.into_any(),
        Value::F64(x) => x.into_pyobject(py)?.into_any(),
        Value::Bool(x) => x.into_pyobject(py)?.to_owned().into_any(),
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(_, items) => {
            let list = PyList::empty(py);
            for it in items {
                list.append(value_to_py(py, it)?)?;
            }
            list.into_any()
        }
    })
}

#[pymethods]
impl PyGgufFile {
    #[new]
    #[pyo3(signature = (path, no_mmap = false, mlock = false))]
    fn new(py: Python<'_>, path: std::path::PathBuf, no_mmap: bool, mlock: bool) -> PyResult<Self> {
        let opts = LoadOptions { no_mmap, mlock };
        let f = py.detach(|| GgufFile::open(&path, &opts)).map_err(to_py)?;
        Ok(Self { inner: Arc::new(f) })
    }

    #[getter]
    fn version(&self) -> u32 {
        self.inner.version
    }
    #[getter]
    fn alignment(&self) -> u64 {
        self.inner.alignment
    }
    #[getter]
    fn data_offset(&self) -> u64 {
        self.inner.data_offset
    }
    #[getter]
    fn file_size(&self) -> u64 {
        self.inner.file_size
    }
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.inner.warnings.clone()
    }

    /// Metadata as a dict of plain Python values, in file order.
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in &self.inner.metadata {
            d.set_item(k, value_to_py(py, v)?)?;
        }
        Ok(d)
    }

    /// One metadata value (None when the key is absent).
    fn get<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner.get(key).map(|v| value_to_py(py, v)).transpose()
    }

    /// Metadata value type names by key ("u32", "string", "array", ...).
    fn metadata_types(&self) -> Vec<(String, String)> {
        self.inner
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.type_name().to_string()))
            .collect()
    }

    /// Tensor infos: (name, type name, dims in ggml order, offset, nbytes).
    fn tensor_infos(&self) -> Vec<(String, String, Vec<u64>, u64, usize)> {
        self.inner
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.ggml_type.name().to_string(),
                    t.dims.clone(),
                    t.offset,
                    t.nbytes,
                )
            })
            .collect()
    }

    /// The raw bytes of one tensor.
    fn tensor_bytes<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        let t = self.tensor(name)?;
        Ok(PyBytes::new(py, self.inner.tensor_data(t)))
    }

    /// Dequantize one tensor to little-endian f32 bytes (numpy reads them with frombuffer).
    fn dequantize<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyBytes>> {
        let t = self.tensor(name)?.clone();
        let n = t.n_elements() as usize;
        let inner = self.inner.clone();
        let out = py
            .detach(move || {
                let mut out = vec![0f32; n];
                rllama_core::quant::dequantize(t.ggml_type, inner.tensor_data(&t), &mut out)
                    .map(|_| out)
            })
            .map_err(to_py)?;
        let bytes: Vec<u8> = out.iter().flat_map(|x| x.to_le_bytes()).collect();
        Ok(PyBytes::new(py, &bytes))
    }
}

impl PyGgufFile {
    fn tensor(&self, name: &str) -> PyResult<&rllama_core::gguf::TensorInfo> {
        self.inner.tensor(name).ok_or_else(|| {
            pyo3::exceptions::PyKeyError::new_err(format!("no tensor named {name:?}"))
        })
    }
    pub fn file(&self) -> Arc<GgufFile> {
        self.inner.clone()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGgufFile>()?;
    Ok(())
}

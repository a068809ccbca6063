use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use rllama_core::Error;

create_exception!(
    _core,
    RllamaError,
    PyException,
    "Base class of rllama's errors."
);
create_exception!(
    _core,
    ModelLoadError,
    RllamaError,
    "A model file that cannot be loaded."
);
create_exception!(
    _core,
    InvalidRequestError,
    RllamaError,
    "Invalid arguments or request options."
);
create_exception!(
    _core,
    GrammarError,
    InvalidRequestError,
    "A grammar that cannot be parsed or used."
);
create_exception!(
    _core,
    ContextFullError,
    RllamaError,
    "The context window is full."
);

/// The one place core errors become Python exceptions.
pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Io { .. } | Error::Format { .. } | Error::ModelLoad(_) => {
            ModelLoadError::new_err(msg)
        }
        Error::InvalidRequest(_) => InvalidRequestError::new_err(msg),
        Error::Grammar(_) => GrammarError::new_err(msg),
        Error::ContextFull(_) => ContextFullError::new_err(msg),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("RllamaError", py.get_type::<RllamaError>())?;
    m.add("ModelLoadError", py.get_type::<ModelLoadError>())?;
    m.add("InvalidRequestError", py.get_type::<InvalidRequestError>())?;
    m.add("GrammarError", py.get_type::<GrammarError>())?;
    m.add("ContextFullError", py.get_type::<ContextFullError>())?;
    Ok(())
}

//! `rllama._core`: conversions between Python and rllama-core, and nothing else.
//! Each area registers its classes from its own file; errors map in one place (errors.rs).

use pyo3::prelude::*;

mod errors;
mod gguf;
mod kernels;
mod model;
mod sampling;
mod tokenizer;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    gguf::register(m)?;
    kernels::register(m)?;
    tokenizer::register(m)?;
    model::register(m)?;
    sampling::register(m)?;
    Ok(())
}

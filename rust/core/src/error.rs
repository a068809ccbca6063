use thiserror::Error;

/// The core's one error type. The Python binding maps each variant to one exception class
/// (see rust/py/src/errors.rs), so the variant is the contract, the message is for people.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A malformed GGUF file: what is wrong and at which byte offset.
    #[error("invalid GGUF file: {msg} (at byte offset {offset})")]
    Format { offset: u64, msg: String },
    /// A model or file the code understands but cannot load (architecture, tokenizer, type).
    #[error("{0}")]
    ModelLoad(String),
    /// Bad arguments from a caller (lengths, options, token ids).
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Grammar(String),
    #[error("{0}")]
    ContextFull(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn format(offset: u64, msg: impl Into<String>) -> Self {
        Error::Format {
            offset,
            msg: msg.into(),
        }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidRequest(msg.into())
    }
    pub fn load(msg: impl Into<String>) -> Self {
        Error::ModelLoad(msg.into())
    }
    /// The same kind of error with the same message (for failing several requests at once).
    pub fn duplicate(&self) -> Self {
        match self {
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Format { offset, msg } => Error::Format {
                offset: *offset,
                msg: msg.clone(),
            },
            Error::ModelLoad(m) => Error::ModelLoad(m.clone()),
            Error::InvalidRequest(m) => Error::InvalidRequest(m.clone()),
            Error::Grammar(m) => Error::Grammar(m.clone()),
            Error::ContextFull(m) => Error::ContextFull(m.clone()),
        }
    }
}

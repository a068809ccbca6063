"""rllama's exception hierarchy (defined by the native module so Rust errors map onto it)."""

from rllama._core import (
    ContextFullError,
    GrammarError,
    InvalidRequestError,
    ModelLoadError,
    RllamaError,
)

__all__ = ["ContextFullError", "GrammarError", "InvalidRequestError", "ModelLoadError", "RllamaError"]

"""rllama's exception hierarchy (defined by the native module so Rust errors map onto it)."""

from rllama._core import (
    ContextFullError,
    GrammarError,
    InvalidRequestError,
    ModelLoadError,
    RllamaError,
)


class TemplateError(InvalidRequestError):
    """A chat template that fails to render: a syntax error, an error it raises itself, or a
    template that exceeds the rendering limits (work, output size, recursion)."""


__all__ = [
    "ContextFullError",
    "GrammarError",
    "InvalidRequestError",
    "ModelLoadError",
    "RllamaError",
    "TemplateError",
]

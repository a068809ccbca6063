"""rllama: run and serve GGUF language models (llama-server compatible), with a Rust core."""

from rllama import gguf, models
from rllama._core import __version__
from rllama.errors import (
    ContextFullError,
    GrammarError,
    InvalidRequestError,
    ModelLoadError,
    RllamaError,
    TemplateError,
)
from rllama.model import Model
from rllama.tokenizer import Tokenizer

__all__ = [
    "ContextFullError",
    "GrammarError",
    "InvalidRequestError",
    "Model",
    "ModelLoadError",
    "RllamaError",
    "TemplateError",
    "Tokenizer",
    "__version__",
    "gguf",
    "models",
]

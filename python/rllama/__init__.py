"""rllama: run and serve GGUF language models (llama-server compatible), with a Rust core."""

from rllama._core import __version__
from rllama.errors import (
    ContextFullError,
    GrammarError,
    InvalidRequestError,
    ModelLoadError,
    RllamaError,
)
from rllama import gguf, models
from rllama.model import Model
from rllama.tokenizer import Tokenizer

__all__ = [
    "__version__",
    "RllamaError",
    "ModelLoadError",
    "InvalidRequestError",
    "GrammarError",
    "ContextFullError",
    "Model",
    "Tokenizer",
    "gguf",
    "models",
]

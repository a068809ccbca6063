"""rllama's HTTP server: llama.cpp's `llama-server` API on Quart + Hypercorn."""

from rllama.server.app import create_app

__all__ = ["create_app"]

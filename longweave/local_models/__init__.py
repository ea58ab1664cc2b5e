"""Local HuggingFace models: the bundled default model, request batching, constrained decoding
and an OpenAI-compatible server. Importing this package loads neither torch nor transformers."""

from __future__ import annotations

from longweave.local_models.backend import LocalLLM

__all__ = ["LocalLLM"]

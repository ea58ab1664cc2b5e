"""Settings from the environment (LONGWEAVE_* and OPENAI_*), validated and passed explicitly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from longweave.errors import ConfigError, invalid_fields


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "longweave"


class Settings(BaseSettings):
    """Process-wide defaults; every field can be set as LONGWEAVE_<FIELD> in the environment."""

    model_config = SettingsConfigDict(env_prefix="LONGWEAVE_", extra="forbid")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems, hint = invalid_fields(exc, type(self).model_fields,
                                            named=lambda field: f"LONGWEAVE_{field.upper()}")
            raise ConfigError(f"invalid setting: {problems}",
                              hint=hint or "fix or unset that environment variable") from None

    model: str = "local"
    """The model string used when none is given: 'local', 'hf:<id>' or 'openai:<model>'."""
    strategy: str = "chain-of-agents"
    """The strategy used when none is given."""

    @field_validator("model")
    @classmethod
    def _a_model_string(cls, value: str) -> str:
        from longweave.llm import MODEL_FORMS, is_model_string

        if not is_model_string(value):
            raise ValueError(f"unknown model {value!r}: use {MODEL_FORMS}")
        return value

    @field_validator("strategy")
    @classmethod
    def _a_strategy_name(cls, value: str) -> str:
        from longweave.agents.base import BUILTINS, available

        if value not in BUILTINS and value not in (names := available()):
            raise ValueError(f"unknown strategy {value!r}: choose one of "
                             f"{', '.join(sorted(names))}")
        return value

    cache_dir: Path = Field(default_factory=default_cache_dir)
    """Where completions and per-document artifacts are cached."""
    cache: bool = True
    """Cache completions made at temperature 0 on disk (SQLite)."""
    max_document_bytes: int = Field(256 * 1024 * 1024, ge=1)
    """Files larger than this are refused with a clear error rather than read into memory;
    at least 1 (there is no "no limit": a file of any size would be read whole)."""
    openai_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "LONGWEAVE_OPENAI_API_KEY")
    )
    """API key for the OpenAI-compatible backend."""
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "LONGWEAVE_OPENAI_BASE_URL")
    )
    """Base URL of an OpenAI-compatible server (vLLM, llama.cpp, `longweave serve`, ...)."""
    context_window: int | None = Field(None, ge=256)
    """The window, in tokens, of the OpenAI-compatible server's model (vLLM's --max-model-len,
    llama.cpp's -c), in place of the published or assumed one; `context_window=` wins."""
    request_timeout: float = Field(120.0, gt=0)
    """Seconds before a remote model call is abandoned and retried."""
    max_retries: int = Field(4, ge=0)
    """Retries on 429, 5xx and timeouts, with exponential backoff that honours Retry-After."""
    concurrency: int = Field(8, ge=1)
    """Model calls in flight at once, per backend."""
    prefix_cache_size: int = Field(2, ge=0)
    """Prompt prefixes whose key/value cache the local backend keeps for reuse (0: off)."""

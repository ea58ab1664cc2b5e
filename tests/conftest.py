"""Suite-wide settings: one private cache directory for the whole run.

The bundled model is dequantized from its GGUF file once per cache directory (tens of
seconds); sharing one directory across the session pays that once, and keeps tests away from
the user's own cache.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["LONGWEAVE_CACHE_DIR"] = str(tmp_path_factory.mktemp("longweave-cache"))

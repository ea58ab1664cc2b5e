"""Embedders: the real bundled MiniLM, an OpenAI-compatible server on loopback, and the cache."""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from longweave.config import Settings
from longweave.errors import ConfigError, MissingDependency, ModelError
from longweave.retrieval.embeddings import (
    CachedEmbedder,
    Embedder,
    EmbeddingCache,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    make_embedder,
)

SENTENCES = [
    "The cat sat on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply after the interest rate decision.",
    "Lima is the capital of Peru.",
]


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()  # loads on first embed, once for the module


class Counting:
    """Wraps an embedder and records every batch it is asked to compute."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[list[str]] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.embed(texts)


class Letters:
    """A tiny deterministic embedder: letter counts a-h."""

    def __init__(self, name: str = "letters") -> None:
        self.name = name
        self.dim = 8

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = [[t.count(c) + 0.1 for c in "abcdefgh"] for t in texts]
        out = np.array(rows, dtype=np.float32).reshape(-1, 8)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_bundled_dim_is_known_without_loading_the_model() -> None:
    e = SentenceTransformerEmbedder()
    assert (e.name, e.dim) == ("st:all-MiniLM-L6-v2", 384)
    assert e._model is None
    assert isinstance(e, Embedder)


def test_minilm_embeds_normalized_vectors_where_similar_means_close(
    minilm: SentenceTransformerEmbedder,
) -> None:
    v = minilm.embed(SENTENCES)
    assert v.shape == (4, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # cat/kitten vs cat/stock market
    assert sim[0, 1] > sim[0, 3]
    assert minilm.embed([]).shape == (0, 384)
    again = minilm.embed(SENTENCES[:1])
    assert np.allclose(again[0], v[0], atol=1e-5)  # batching does not change a text's vector


def test_cache_means_no_second_computation(
    minilm: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    spy = Counting(minilm)
    cached = CachedEmbedder(spy, EmbeddingCache(tmp_path / "e.sqlite"))
    first = cached.embed(SENTENCES[:3])
    assert (cached.embedded, cached.cached, len(spy.calls)) == (3, 0, 1)
    second = cached.embed(SENTENCES[:3])
    assert (cached.embedded, cached.cached, len(spy.calls)) == (3, 3, 1)
    assert np.array_equal(first, second)
    # A new process (new objects, same file) finds them too; only the new text is computed.
    fresh = CachedEmbedder(Counting(minilm), EmbeddingCache(tmp_path / "e.sqlite"))
    out = fresh.embed([SENTENCES[3], SENTENCES[0]])
    assert (fresh.embedded, fresh.cached) == (1, 1)
    assert fresh.inner.calls == [[SENTENCES[3]]]  # type: ignore[attr-defined]
    assert np.array_equal(out[1], first[0])


def test_cache_is_keyed_by_model_and_computes_repeats_once(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    a = CachedEmbedder(Counting(Letters("a")), cache)
    b = CachedEmbedder(Counting(Letters("b")), cache)
    out = a.embed(["abc", "abc", "hh", "abc"])
    assert a.inner.calls == [["abc", "hh"]]  # type: ignore[attr-defined]
    assert (a.embedded, a.cached) == (2, 2)
    assert np.array_equal(out[0], out[3])
    b.embed(["abc"])
    assert b.embedded == 1  # another model's vectors are never served
    assert a.embed([]).shape == (0, 8)


def test_a_corrupt_cache_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "e.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    cached = CachedEmbedder(Letters(), EmbeddingCache(path))
    with pytest.warns(RuntimeWarning, match="embedding cache"):
        first = cached.embed(["abc"])
    assert (tmp_path / "e.sqlite.corrupt").exists()
    assert np.array_equal(cached.embed(["abc"]), first)  # served by the new file
    assert (cached.embedded, cached.cached) == (1, 1)
    assert sqlite3.connect(path).execute("SELECT count(*) FROM embeddings").fetchone() == (1,)


def test_make_embedder_resolves_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert make_embedder("bundled").name == "st:all-MiniLM-L6-v2"
    hub_name = make_embedder("st:sentence-transformers/all-MiniLM-L6-v2")
    assert hub_name.name == "st:all-MiniLM-L6-v2" and hub_name.dim == 384  # the bundled copy
    assert make_embedder("st:/models/bge-small").name == "st:/models/bge-small"
    remote = make_embedder("openai:text-embedding-3-small")
    assert isinstance(remote, OpenAIEmbedder)
    assert (remote.name, remote.dim) == ("openai:text-embedding-3-small", 1536)
    with pytest.raises(ConfigError, match="unknown embedder 'bge'") as err:
        make_embedder("bge")
    assert "st:<" in str(err.value)


def test_missing_sentence_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(MissingDependency) as err:
        SentenceTransformerEmbedder().embed(["x"])
    assert (err.value.package, err.value.extra) == ("sentence-transformers", "local")
    assert "longweave[local]" in str(err.value)


def test_openai_embedder_needs_a_key_or_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIEmbedder("text-embedding-3-small")


class FakeEmbeddings:
    """`/v1/embeddings` on 127.0.0.1: vector = (length, vowels, 3), answered in reverse order."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.drop_one = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(
                    {"path": self.path, "auth": self.headers["Authorization"], **body}
                )
                if outer.status != 200:
                    reply: dict[str, Any] = {"error": {"message": "bad key", "type": "auth"}}
                else:
                    data = [
                        {
                            "object": "embedding",
                            "index": i,
                            "embedding": [len(t), sum(t.count(v) for v in "aeiou"), 3.0],
                        }
                        for i, t in enumerate(body["input"])
                    ][::-1]
                    reply = {
                        "object": "list",
                        "model": body["model"],
                        "data": data[1:] if outer.drop_one else data,
                        "usage": {"prompt_tokens": 1, "total_tokens": 1},
                    }
                raw = json.dumps(reply).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def server() -> Iterator[FakeEmbeddings]:
    fake = FakeEmbeddings()
    thread = threading.Thread(target=fake.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def embedder(server: FakeEmbeddings, **kw: Any) -> OpenAIEmbedder:
    settings = Settings(max_retries=0, request_timeout=5)
    return OpenAIEmbedder("local-embed", server.base_url, "sk-test", settings=settings, **kw)


def test_openai_embedder_batches_orders_and_normalizes(server: FakeEmbeddings) -> None:
    e = embedder(server, batch_size=2)
    texts = ["aa", "bbbb", "", "oi", "xyz"]
    v = e.embed(texts)
    assert v.shape == (5, 3) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    expected = np.array([[2, 2, 3], [4, 0, 3], [1, 0, 3], [2, 2, 3], [3, 0, 3]], dtype=np.float32)
    assert np.allclose(v, expected / np.linalg.norm(expected, axis=1, keepdims=True))
    assert [r["input"] for r in server.requests] == [["aa", "bbbb"], [" ", "oi"], ["xyz"]]
    first = server.requests[0]
    assert first["path"] == "/v1/embeddings" and first["auth"] == "Bearer sk-test"
    assert first["model"] == "local-embed" and first["encoding_format"] == "float"
    assert "dimensions" not in first
    assert e.name == "openai:local-embed" and e.dim == 3


def test_openai_embedder_asks_an_unknown_model_its_dimension_once(server: FakeEmbeddings) -> None:
    e = embedder(server)
    assert e.dim == 3 and e.dim == 3
    assert len(server.requests) == 1
    assert embedder(server, dimensions=3).name == "openai:local-embed@3"


def test_openai_embedder_errors_are_model_errors(server: FakeEmbeddings) -> None:
    server.status = 401
    with pytest.raises(ModelError, match="HTTP 401") as err:
        embedder(server).embed(["a"])
    assert err.value.status == 401 and err.value.provider == "openai"
    server.status, server.drop_one = 200, True
    with pytest.raises(ModelError, match="expected 2 embeddings"):
        embedder(server).embed(["a", "b"])
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    closed.server_close()  # nobody listens on that port any more
    url = f"http://127.0.0.1:{closed.server_address[1]}/v1"
    settings = Settings(max_retries=0, request_timeout=2)
    gone = OpenAIEmbedder("m", url, "sk-test", settings=settings)
    with pytest.raises(ModelError, match="cannot reach") as err:
        gone.embed(["a"])
    assert "OPENAI_BASE_URL" in str(err.value)

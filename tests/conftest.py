"""Suite-wide settings and shared fixtures: one private cache directory for the whole run.

The bundled model is dequantized from its GGUF file once per cache directory (tens of
seconds); sharing one directory across the session pays that once, and keeps tests away from
the user's own cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

import longweave.llm
from longweave.testing import ScriptedModel


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["LONGWEAVE_CACHE_DIR"] = str(tmp_path_factory.mktemp("longweave-cache"))


@pytest.fixture
def scripted_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., ScriptedModel]:
    """Serves a scripted model to the command line, which resolves its model from a string.

    Every model string resolves to the model served, and the cache lives in the test's own
    folder (`tmp_path / "cache"`), so no test is answered from another's cache. `columns` is the
    terminal width output is laid out for: a number sets COLUMNS, "unset" removes it (laid out as
    for a pipe, 80 columns), None leaves the environment's.
    """

    def serve(
        model: ScriptedModel | None = None,
        *,
        context_window: int = 8192,
        columns: int | Literal["unset"] | None = None,
    ) -> ScriptedModel:
        """`model`, or a new one of `context_window` tokens with no replies yet, served."""
        served = model if model is not None else ScriptedModel(context_window=context_window)
        monkeypatch.setattr(longweave.llm, "resolve_model", lambda spec, **_: served)
        monkeypatch.setenv("LONGWEAVE_CACHE_DIR", str(tmp_path / "cache"))
        if columns == "unset":
            monkeypatch.delenv("COLUMNS", raising=False)
        elif columns is not None:
            monkeypatch.setenv("COLUMNS", str(columns))
        return served

    return serve


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """faiss sees one GPU; an index copied "to it" is a CPU clone, recorded in the list."""
    import faiss

    from longweave.retrieval import faiss_index

    moved: list[object] = []

    def to_gpu(resources: object, device: int, index: object) -> object:
        moved.append(index)
        return faiss.clone_index(index)  # a separate copy, as a GPU index would be

    monkeypatch.setattr(faiss_index, "gpu_count", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    faiss_index.gpu_resources.cache_clear()
    yield moved
    faiss_index.gpu_resources.cache_clear()


@pytest.fixture(scope="module")
def ray_runtime(request: pytest.FixtureRequest) -> Iterator[None]:
    """A local Ray runtime on 2 CPUs for one test module, whose scripted replies (closures
    defined there) are shipped to the workers by value."""
    import cloudpickle
    import ray

    cloudpickle.register_pickle_by_value(request.module)
    # A loaded 2-core machine can take longer than Ray's default wait to start its raylet.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "180")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(request.module)


@pytest.fixture
def ctrl_c() -> None:
    """Python's own Ctrl-C handler for the test, as in a terminal: a process started in the
    background by a shell without job control inherits SIGINT ignored, and would never see it."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)

"""The CUDA code paths, run without a GPU against fakes that enforce what the real ones enforce.

`strict_gpu` stands in for faiss-gpu: an index copied "to the GPU" is a CPU clone that refuses
what faiss-gpu refuses (k or nprobe past its selection limit, search parameters other than
SearchParametersIVF on an IVF index, HNSW) and counts the times two threads were inside the
one StandardGpuResources together, which faiss-gpu does not survive.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from longweave.retrieval import faiss_index, store
from longweave.retrieval.store import Record, VectorStore

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


class FakeResources:
    """A StandardGpuResources that notices being used by two threads at once."""

    def __init__(self) -> None:
        self.user: int | None = None
        self.clashes = 0

    @contextmanager
    def busy(self) -> Iterator[None]:
        me = threading.get_ident()
        if self.user not in (None, me):
            self.clashes += 1
        outer, self.user = self.user, me
        try:
            time.sleep(0.001)  # a kernel in flight: long enough for another thread to arrive
            yield
        finally:
            self.user = outer


class FakeGpuIndex:
    """A CPU clone with faiss-gpu's limits (GpuIndex::search, GpuIndexIVF::copyFrom)."""

    def __init__(self, resources: FakeResources, index: Any, limit: int) -> None:
        import faiss

        if isinstance(index, faiss.IndexHNSW):
            raise RuntimeError("This index type is not implemented on GPU.")
        self.ivf = isinstance(index, faiss.IndexIVF)
        if self.ivf and not 0 < index.nprobe <= limit:
            raise RuntimeError(f"GPU index only supports nprobe <= {limit}; passed {index.nprobe}")
        self.resources, self.limit = resources, limit
        with resources.busy():
            self.inner = faiss.clone_index(index)

    @property
    def ntotal(self) -> int:
        return int(self.inner.ntotal)

    def add(self, x: np.ndarray) -> None:
        with self.resources.busy():
            self.inner.add(x)

    def search(self, x: np.ndarray, k: int, *, params: Any = None) -> Any:
        import faiss

        with self.resources.busy():
            if k > self.limit:
                raise RuntimeError(f"GPU index only supports k <= {self.limit}")
            if self.ivf and params is not None:
                if not isinstance(params, faiss.SearchParametersIVF):
                    raise RuntimeError("GPU IVF index: passed unhandled SearchParameters class")
                if not 0 < params.nprobe <= self.limit or params.max_codes:
                    raise RuntimeError(f"GPU index only supports nprobe <= {self.limit}")
            return self.inner.search(x, k, params=params)


@pytest.fixture
def strict_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeResources:
    """faiss sees one GPU with faiss-gpu's limits; the fixture is the shared resources."""
    import faiss

    made: list[FakeResources] = []

    def resources() -> FakeResources:
        made.append(FakeResources())
        return made[-1]

    def to_gpu(res: FakeResources, device: int, index: Any) -> FakeGpuIndex:
        assert device == 0
        return FakeGpuIndex(res, index, faiss_index.GPU_MAX_SELECT)

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", resources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    faiss_index.gpu_resources.cache_clear()
    shared = faiss_index.gpu_resources()
    yield shared
    faiss_index.gpu_resources.cache_clear()
    assert len(made) == 1, "one StandardGpuResources per process"


def small_select(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """faiss-gpu's 2048 scaled down, so that tests reach it with a few thousand vectors."""
    monkeypatch.setattr(faiss_index, "GPU_MAX_SELECT", limit)
    monkeypatch.setattr(store, "GPU_MAX_SELECT", limit)
    monkeypatch.setattr(store, "MAX_FETCH", limit)


def vectors(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, list[Record]]:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x, [Record(f"doc{i % 7}", i, 0, 1) for i in range(n)]


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check_paths", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the vector store on the GPU -----------------------------------------------------------------


def test_stores_searched_from_two_threads_take_the_shared_gpu_in_turn(
        strict_gpu: FakeResources) -> None:
    x, recs = vectors(2000)
    stores = [VectorStore(16, index="flat", gpu=True) for _ in range(2)]
    for s in stores:
        s.add(x, recs)
    start, errors = threading.Barrier(2), []

    def search(s: VectorStore) -> None:
        try:
            start.wait()
            for i in range(25):
                s.search(x[i], 5)
                s.add(x[i:i + 1], recs[i:i + 1])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=search, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(s.on_gpu for s in stores)
    assert strict_gpu.clashes == 0


def test_an_ivf_nprobe_past_the_gpu_limit_still_copies_and_searches(
        strict_gpu: FakeResources, monkeypatch: pytest.MonkeyPatch) -> None:
    small_select(monkeypatch, 8)
    x, recs = vectors(640)  # 16 lists, all probed on the CPU
    on_gpu = VectorStore(16, index="ivf", nprobe=16, gpu=True)
    on_gpu.add(x, recs)
    assert on_gpu.on_gpu and on_gpu._cpu.nlist == 16
    assert on_gpu._cpu.nprobe == 16  # the master copy keeps its own setting
    assert len(on_gpu.search(x[3], 5)) == 5  # through the GPU copy, at its limit of 8 lists


def test_a_k_past_the_gpu_limit_searches_the_cpu_index_with_the_full_nprobe(
        strict_gpu: FakeResources, monkeypatch: pytest.MonkeyPatch) -> None:
    small_select(monkeypatch, 8)
    x, recs = vectors(640)
    on_gpu = VectorStore(16, index="ivf", nprobe=16, gpu=True)
    on_cpu = VectorStore(16, index="ivf", nprobe=16, gpu=False)
    on_gpu.add(x, recs)
    on_cpu.add(x, recs)
    queries = np.random.default_rng(1).standard_normal((20, 16), dtype=np.float32)
    assert on_gpu.search_batch(queries, 12) == on_cpu.search_batch(queries, 12)


def test_the_benchmark_passes_against_faiss_gpus_limits(
        gpu_check: ModuleType, strict_gpu: FakeResources, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.setattr(gpu_check, "torch_cuda", lambda: False)
    out = tmp_path / "gpu_check.json"
    monkeypatch.setattr("sys.argv", ["gpu_check.py", "--vectors", "3000", "--queries", "30",
                                     "--dim", "16", "--k", "5", "--out", str(out)])
    assert gpu_check.main() == 0
    flat, ivf, model = json.loads(out.read_text())
    common = {"check", "passed", "vectors", "dim", "queries", "k", "identical_queries",
              "recall_vs_cpu", "max_score_diff", "ties_only", "cpu_search_s", "gpu_search_s",
              "speedup", "cpu_queries_per_s", "gpu_queries_per_s"}
    assert set(flat) == common and flat["passed"]
    assert set(ivf) == common | {"nlist", "nprobe", "cpu_recall_vs_exact", "gpu_recall_vs_exact"}
    assert ivf["passed"] and ivf["nlist"] > 1
    assert model == {"check": gpu_check.MODEL, "passed": None,
                     "skipped": "torch sees no CUDA device: install a CUDA build of torch"}
    assert strict_gpu.clashes == 0


def test_a_check_that_raises_fails_alone_and_the_others_still_run(
        gpu_check: ModuleType, strict_gpu: FakeResources, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: object) -> dict[str, Any]:
        raise RuntimeError("GPU index only supports nprobe <= 2048")

    monkeypatch.setattr(gpu_check, "torch_cuda", lambda: False)
    monkeypatch.setattr(gpu_check, "check_store", broken)
    out = tmp_path / "gpu_check.json"
    monkeypatch.setattr("sys.argv", ["gpu_check.py", "--vectors", "3000", "--queries", "20",
                                     "--dim", "16", "--skip-model", "--out", str(out)])
    assert gpu_check.main() == 1
    flat, ivf = json.loads(out.read_text())
    assert flat == {"check": gpu_check.FLAT, "passed": False,
                    "error": "RuntimeError: GPU index only supports nprobe <= 2048"}
    assert ivf["passed"]
    printed = capsys.readouterr()
    assert "[FAIL] faiss flat index, GPU vs CPU: RuntimeError" in printed.out
    assert "[PASS] faiss IVF index" in printed.out and "Traceback" in printed.err


def test_without_a_gpu_the_json_file_is_still_written(
        gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(gpu_check, "torch_cuda", lambda: False)
    monkeypatch.setattr(gpu_check, "faiss_gpus", lambda: 0)
    out = tmp_path / "gpu_check.json"
    monkeypatch.setattr("sys.argv", ["gpu_check.py", "--out", str(out)])
    assert gpu_check.main() == 0
    assert json.loads(out.read_text()) == []


# -- the local model on CUDA ---------------------------------------------------------------------


def test_auto_dtype_is_float16_on_a_gpu_that_only_emulates_bfloat16(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from longweave.local_models.loader import resolve_dtype

    # torch's answer on a V100 or T4: True unless emulation is ruled out.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    assert resolve_dtype("auto", "cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == torch.float32


class FakeModel:
    """Records how the benchmark calls a transformers causal LM."""

    device = "cpu"

    def __init__(self) -> None:
        self.forwards: list[dict[str, Any]] = []
        self.generates: list[dict[str, Any]] = []

    def forward(self, input_ids: Any = None, attention_mask: Any = None,
                logits_to_keep: int = 0) -> None:
        self.forwards.append({"input_ids": input_ids, "attention_mask": attention_mask,
                              "logits_to_keep": logits_to_keep})

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.forward(*args, **kwargs)

    def generate(self, **kwargs: Any) -> None:
        self.generates.append(kwargs)


def test_prefill_is_timed_as_generate_runs_it_and_decode_counts_the_steps_after_it(
        gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    model = FakeModel()

    class Tokenizer:
        eos_token_id = 2

        def __call__(self, text: str, return_tensors: str) -> Any:
            return type("Encoded", (), {"input_ids": torch.arange(500)[None, :]})

    class Llm:
        def hf_model(self) -> FakeModel:
            return model

        def hf_tokenizer(self) -> Tokenizer:
            return Tokenizer()

    times = iter([0.5, 2.5])  # the prefill's median, then one generate() of prefill + decode
    monkeypatch.setattr(gpu_check, "timed", lambda fn, repeats=3: (fn(), next(times))[1])
    synced: list[int] = []
    rates = gpu_check.rates(Llm(), 256, 33, lambda: synced.append(1))
    assert rates["prompt_tokens"] == 256 and rates["prefill_tokens_per_s"] == 512
    assert rates["decode_tokens_per_s"] == 32 / 2.0  # the prefill made the first of the 33
    assert model.forwards[0]["logits_to_keep"] == 1  # generate() keeps only the last logits
    assert model.forwards[0]["attention_mask"].shape == (1, 256)
    run = model.generates[0]
    assert run["max_new_tokens"] == run["min_new_tokens"] == 33 and not run["do_sample"]
    assert run["attention_mask"].shape == (1, 256) and len(synced) == 2


@pytest.mark.real_model
def test_the_model_check_reports_every_figure(
        gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """check_model end to end with the bundled model on the CPU and torch.cuda's calls faked:
    every figure is there, and weights off CUDA fail the check."""
    import torch

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake GPU")
    result = gpu_check.check_model(prompt_tokens=48, new_tokens=4)
    assert result["check"] == gpu_check.MODEL and result["passed"] is False
    assert result["device"] == "cpu" and result["dtype"] == "torch.float32"
    assert result["gpu_name"] == "Fake GPU" and result["bf16_supported"] is False
    for side in ("cuda", "cpu"):
        assert result[side]["prompt_tokens"] == 48
        assert result[side]["prefill_tokens_per_s"] > 0
        assert set(result[side]) == {"prompt_tokens", "prefill_s", "prefill_tokens_per_s",
                                     "new_tokens", "generate_s", "decode_tokens_per_s"}
    assert result["reply"] and result["reply_usage"]["completion_tokens"] > 0
    assert "[FAIL] bundled model on CUDA vs CPU: weights on cpu" in gpu_check.report(result)

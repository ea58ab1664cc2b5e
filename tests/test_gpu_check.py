"""benchmarks/gpu_check.py's vector-store checks, run against the fake GPU of `fake_gpu`.

No GPU is needed: the fake copies an index "to the GPU" as a CPU clone, so the checks must pass;
a fake that loses the vectors on the way must make them fail. The real run needs a CUDA machine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flat_check_passes_when_the_gpu_copy_is_faithful(gpu_check: ModuleType,
                                                         fake_gpu: list[object]) -> None:
    result = gpu_check.check_store(3000, 40, 16, 5)
    assert fake_gpu, "the GPU store never copied its index"
    assert result["passed"] and result["recall_vs_cpu"] == 1.0
    assert result["identical_queries"] == 1.0 and result["max_score_diff"] < 1e-5
    assert result["speedup"] > 0
    assert "[PASS] faiss flat index" in gpu_check.report(result)


def test_ivf_check_compares_lists_and_recall_against_exact(gpu_check: ModuleType,
                                                           fake_gpu: list[object]) -> None:
    result = gpu_check.check_ivf(6000, 40, 16, 5, exact_queries=20)
    assert fake_gpu and result["passed"]
    assert result["nlist"] > 1 and result["recall_vs_cpu"] == 1.0
    assert result["gpu_recall_vs_exact"] == result["cpu_recall_vs_exact"] > 0.5
    assert "recall vs exact" in gpu_check.report(result)


def test_checks_fail_when_the_gpu_copy_loses_the_vectors(
        gpu_check: ModuleType, fake_gpu: list[object], monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    class Lossy:  # a "GPU copy" that stores every batch it is given in reverse row order
        def __init__(self, index: faiss.Index) -> None:
            self.inner = faiss.clone_index(index)

        def add(self, x: np.ndarray) -> None:
            self.inner.add(np.ascontiguousarray(x[::-1]))

        def search(self, q: np.ndarray, k: int, params: object = None) -> object:
            return self.inner.search(q, k, params=params)

    def scrambled(resources: object, device: int, index: faiss.Index) -> Lossy:
        fake_gpu.append(index)
        return Lossy(index)

    monkeypatch.setattr(faiss, "index_cpu_to_gpu", scrambled, raising=False)
    result = gpu_check.check_store(2000, 30, 16, 5)
    assert not result["passed"] and result["recall_vs_cpu"] < 0.5
    assert "[FAIL]" in gpu_check.report(result)


def test_without_a_gpu_it_says_so_and_exits_cleanly(
        gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(gpu_check, "torch_cuda", lambda: False)
    monkeypatch.setattr(gpu_check, "faiss_gpus", lambda: 0)
    monkeypatch.setattr("sys.argv", ["gpu_check.py"])
    assert gpu_check.main() == 0
    assert "no CUDA GPU on this machine" in capsys.readouterr().out

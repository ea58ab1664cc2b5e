"""Check longweave's CUDA paths on a machine with a GPU; exit 0 with a message on one without.

1. Vector store: `VectorStore(index="flat", gpu=True)` (a FAISS GPU copy of the flat index) must
   return the same neighbours as the CPU store over the same vectors (default 1,000,000 random
   384-d vectors, 1,000 queries, k=10); reports search time on each and the speedup.
2. Local backend: `LocalLLM.bundled()` must pick CUDA (bfloat16 where supported) and answer a
   prompt through `complete`; reports prefill and decode tokens/s on CUDA against the CPU.

    python benchmarks/gpu_check.py                       # both checks
    python benchmarks/gpu_check.py --vectors 200000 --skip-model
    python benchmarks/gpu_check.py --out gpu_check.json  # also write the figures as JSON

Exit status: 0 when every check that could run passed (or there is no GPU), 1 when one failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PARAGRAPH = (
    "The harbour wall was built from granite blocks cut at the quarry inland. Carts brought the "
    "stone down the valley road, and the work took eleven summers. A storm broke the outer end, "
    "and the mason rebuilt it with iron clamps between the blocks. "
)


def torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def faiss_gpus() -> int:
    try:
        from longweave.retrieval.store import gpu_count

        return gpu_count()
    except Exception:  # faiss missing or a driver that cannot start: no GPU for faiss
        return 0


def timed(fn: Any, repeats: int = 3) -> float:
    """The median wall-clock seconds of `fn()` (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# -- 1. the FAISS GPU index ----------------------------------------------------------------------


def check_store(n: int, queries: int, dim: int, k: int) -> dict[str, Any]:
    import numpy as np

    from longweave.retrieval.store import Record, VectorStore

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    asked = rng.standard_normal((queries, dim), dtype=np.float32)
    records = [Record("bench", i, 0, 0) for i in range(n)]
    cpu = VectorStore(dim, index="flat", gpu=False)
    gpu = VectorStore(dim, index="flat", gpu=True)
    for store in (cpu, gpu):
        for lo in range(0, n, 100_000):  # in slices: normalizing copies each slice once
            store.add(vectors[lo:lo + 100_000], records[lo:lo + 100_000])
    assert gpu.on_gpu and not cpu.on_gpu, "the GPU store did not put its index on the GPU"
    cpu_hits = cpu.search_batch(asked, k)
    gpu_hits = gpu.search_batch(asked, k)
    same, overlap, worst = 0, 0, 0.0
    for a, b in zip(cpu_hits, gpu_hits, strict=True):
        ids_a, ids_b = [h.chunk_index for h in a], [h.chunk_index for h in b]
        same += ids_a == ids_b
        overlap += len(set(ids_a) & set(ids_b))
        worst = max(worst, max(abs(x.score - y.score) for x, y in zip(a, b, strict=True)))
    # A differing id is acceptable only as a tie: equal scores up to float32 summation order.
    ties_only = all(
        {h.chunk_index for h in a} == {h.chunk_index for h in b}
        or abs(a[-1].score - b[-1].score) < 1e-4
        for a, b in zip(cpu_hits, gpu_hits, strict=True)
    )
    cpu_s = timed(lambda: cpu.search_batch(asked, k), repeats=2)
    gpu_s = timed(lambda: gpu.search_batch(asked, k), repeats=5)
    passed = ties_only and overlap / (queries * k) >= 0.999 and worst < 1e-3
    return {"check": "faiss flat index, GPU vs CPU", "passed": passed, "vectors": n,
            "dim": dim, "queries": queries, "k": k, "identical_queries": same / queries,
            "recall_vs_cpu": overlap / (queries * k), "max_score_diff": worst,
            "cpu_search_s": cpu_s, "gpu_search_s": gpu_s, "speedup": cpu_s / gpu_s,
            "cpu_queries_per_s": queries / cpu_s, "gpu_queries_per_s": queries / gpu_s}


# -- 2. the local model on CUDA ------------------------------------------------------------------


def rates(llm: Any, prompt_tokens: int, new_tokens: int, sync: Any) -> dict[str, float]:
    """Prefill tokens/s (one forward over the prompt) and decode tokens/s (greedy generation of
    exactly `new_tokens`, minus the prefill), with the backend's own weights."""
    import torch

    model, tokenizer = llm.hf_model(), llm.hf_tokenizer()
    text = PARAGRAPH * (prompt_tokens // 40 + 1)
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :prompt_tokens].to(model.device)

    def prefill() -> None:
        with torch.inference_mode():
            model(ids)
        sync()

    def generate() -> None:
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=tokenizer.eos_token_id)
        sync()

    prefill_s = timed(prefill)
    generate_s = timed(generate, repeats=1)
    return {"prompt_tokens": ids.shape[1], "prefill_s": prefill_s,
            "prefill_tokens_per_s": ids.shape[1] / prefill_s, "new_tokens": new_tokens,
            "decode_tokens_per_s": new_tokens / max(generate_s - prefill_s, 1e-9)}


def check_model(prompt_tokens: int, new_tokens: int) -> dict[str, Any]:
    import torch

    from longweave.llm import user
    from longweave.local_models import LocalLLM
    from longweave.local_models.loader import resolve_device, resolve_dtype

    device = resolve_device("auto")
    expected = resolve_dtype("auto", device)
    gpu = LocalLLM.bundled()  # device and dtype "auto": what users get
    reply = asyncio.run(gpu.complete([user("What is the capital of Peru? Answer briefly.")],
                                     max_tokens=16))
    weights = next(gpu.hf_model().parameters())
    bf16 = torch.cuda.is_bf16_supported()
    on_cuda = weights.device.type == "cuda"
    cuda = rates(gpu, prompt_tokens, new_tokens, torch.cuda.synchronize)
    cpu = rates(LocalLLM.bundled(device="cpu", dtype="float32"), prompt_tokens,
                max(16, new_tokens // 4), lambda: None)
    passed = on_cuda and device == "cuda" and weights.dtype == expected and bool(reply.text)
    return {"check": "bundled model on CUDA vs CPU", "passed": passed, "device": str(
        weights.device), "dtype": str(weights.dtype), "bf16_supported": bf16,
        "gpu_name": torch.cuda.get_device_name(0), "reply": reply.text.strip(),
        "reply_usage": reply.usage.model_dump(), "cuda": cuda, "cpu": cpu,
        "prefill_speedup": cuda["prefill_tokens_per_s"] / cpu["prefill_tokens_per_s"],
        "decode_speedup": cuda["decode_tokens_per_s"] / cpu["decode_tokens_per_s"]}


def report(result: dict[str, Any]) -> str:
    verdict = "PASS" if result["passed"] else "FAIL"
    if "speedup" in result:
        return (f"[{verdict}] {result['check']}: {result['vectors']:,} x {result['dim']}-d, "
                f"{result['queries']:,} queries, k={result['k']}: identical top-k for "
                f"{result['identical_queries']:.1%} of queries, recall vs CPU "
                f"{result['recall_vs_cpu']:.4f}, max score diff {result['max_score_diff']:.1e}; "
                f"CPU {result['cpu_search_s']:.3f} s, GPU {result['gpu_search_s']:.3f} s "
                f"({result['speedup']:.1f}x)")
    c, p = result["cuda"], result["cpu"]
    return (f"[{verdict}] {result['check']}: weights on {result['device']} as {result['dtype']} "
            f"({result['gpu_name']}; bf16 supported: {result['bf16_supported']}); reply "
            f"{result['reply']!r}. Prefill of {c['prompt_tokens']} tokens: "
            f"{c['prefill_tokens_per_s']:,.0f} tok/s on CUDA vs {p['prefill_tokens_per_s']:,.0f} "
            f"on CPU ({result['prefill_speedup']:.1f}x); decode {c['decode_tokens_per_s']:,.0f} vs "
            f"{p['decode_tokens_per_s']:,.0f} tok/s ({result['decode_speedup']:.1f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--skip-store", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--out", help="Also write the results as JSON here.")
    args = parser.parse_args()
    cuda, gpus = torch_cuda(), faiss_gpus()
    if not cuda and not gpus:
        print("no CUDA GPU on this machine (torch sees none, faiss sees none): nothing to check; "
              "run this on a machine with an NVIDIA GPU and faiss-gpu installed")
        return 0
    results: list[dict[str, Any]] = []
    if not args.skip_store:
        if gpus:
            results.append(check_store(args.vectors, args.queries, args.dim, args.k))
        else:
            print("[SKIP] faiss sees no GPU (faiss-cpu installed?): pip install faiss-gpu-cu12")
    if not args.skip_model:
        if cuda:
            results.append(check_model(args.prompt_tokens, args.new_tokens))
        else:
            print("[SKIP] torch sees no CUDA device: install a CUDA build of torch")
    for result in results:
        print(report(result), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

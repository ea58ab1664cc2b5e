"""Check longweave's CUDA paths on a machine with a GPU; exit 0 with a message on one without.

1. Vector store: `VectorStore(index="flat", gpu=True)` (a FAISS GPU copy of the flat index) must
   return the same neighbours as the CPU store over the same vectors (default 1,000,000 random
   384-d vectors, 1,000 queries, k=10); reports search time on each and the speedup. Then the
   same for `index="ivf"` (trained on the CPU, searched on a GPU copy with the same nprobe): the
   GPU's top-k must match the CPU's and lose no recall against exact search.
2. Local backend: `LocalLLM.bundled()` must pick CUDA (bfloat16 where supported) and answer a
   prompt through `complete`; reports prefill and decode tokens/s on CUDA against the CPU.

    python benchmarks/gpu_check.py                       # both checks
    python benchmarks/gpu_check.py --vectors 200000 --skip-model
    python benchmarks/gpu_check.py --out gpu_check.json  # also write the figures as JSON

Exit status: 0 when every check that could run passed (or there is no GPU), 1 when one failed.
A check that raises counts as failed, with its error, and the others still run; `--out` is
rewritten after each check (skipped ones too, with "passed": null), so a crash keeps the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FLAT = "faiss flat index, GPU vs CPU"
IVF = "faiss IVF index, GPU vs CPU"
MODEL = "bundled model on CUDA vs CPU"

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
    except Exception as exc:  # faiss missing or a driver that cannot start: no GPU for faiss
        print(f"faiss: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0


def faiss_installs() -> str:
    """The faiss distributions pip installed: faiss-cpu beside a GPU build share one `faiss`
    folder, and whichever wrote it last decides what `import faiss` gets."""
    from importlib import metadata

    names = sorted({d.metadata["Name"] for d in metadata.distributions()
                    if (d.metadata["Name"] or "").lower().startswith("faiss")})
    return ", ".join(names) or "none"


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


def random_vectors(n: int, queries: int, dim: int) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, dim), dtype=np.float32),
            rng.standard_normal((queries, dim), dtype=np.float32))


def filled(kind: str, gpu: bool, vectors: Any) -> Any:
    """A VectorStore of `kind` over `vectors` (an IVF index is trained on the CPU either way,
    with faiss's fixed k-means seed, so both stores hold the same lists)."""
    from longweave.retrieval.store import Record, VectorStore

    store = VectorStore(vectors.shape[1], index=kind, gpu=gpu)
    records = [Record("bench", i, 0, 0) for i in range(len(vectors))]
    step = 100_000  # in slices: normalizing copies each slice once
    for lo in range(0, len(vectors), step):
        store.add(vectors[lo:lo + step], records[lo:lo + step])
    return store


def agreement(cpu_hits: list[list[Any]], gpu_hits: list[list[Any]]) -> dict[str, Any]:
    """How far the GPU's top-k lists are from the CPU's over the same index."""
    same, worst = 0, 0.0
    for a, b in zip(cpu_hits, gpu_hits, strict=True):
        same += [h.chunk_index for h in a] == [h.chunk_index for h in b]
        worst = max(worst, max(abs(x.score - y.score) for x, y in zip(a, b, strict=True)))
    # A differing id is acceptable only as a tie: equal scores up to float32 summation order.
    ties_only = all(
        {h.chunk_index for h in a} == {h.chunk_index for h in b}
        or abs(a[-1].score - b[-1].score) < 1e-4
        for a, b in zip(cpu_hits, gpu_hits, strict=True)
    )
    return {"identical_queries": same / len(cpu_hits), "recall_vs_cpu": recall(gpu_hits, cpu_hits),
            "max_score_diff": worst, "ties_only": ties_only}


def recall(hits: list[list[Any]], reference: list[list[Any]]) -> float:
    """Share of the reference top-k lists (exact search, or the CPU's) that `hits` found."""
    found = sum(len({h.chunk_index for h in a} & {h.chunk_index for h in b})
                for a, b in zip(hits, reference, strict=True))
    return found / sum(len(b) for b in reference)


def speed(cpu: Any, gpu: Any, asked: Any, k: int) -> dict[str, float]:
    cpu_s = timed(lambda: cpu.search_batch(asked, k), repeats=2)
    gpu_s = timed(lambda: gpu.search_batch(asked, k), repeats=5)
    return {"cpu_search_s": cpu_s, "gpu_search_s": gpu_s, "speedup": cpu_s / gpu_s,
            "cpu_queries_per_s": len(asked) / cpu_s, "gpu_queries_per_s": len(asked) / gpu_s}


def check_store(n: int, queries: int, dim: int, k: int) -> dict[str, Any]:
    """The flat (exact) index: the GPU copy must return the CPU's neighbours, ties aside."""
    vectors, asked = random_vectors(n, queries, dim)
    cpu, gpu = filled("flat", False, vectors), filled("flat", True, vectors)
    assert gpu.on_gpu and not cpu.on_gpu, "the GPU store did not put its index on the GPU"
    agree = agreement(cpu.search_batch(asked, k), gpu.search_batch(asked, k))
    passed = (agree["ties_only"] and agree["recall_vs_cpu"] >= 0.999
              and agree["max_score_diff"] < 1e-3)
    return {"check": FLAT, "passed": passed, "vectors": n,
            "dim": dim, "queries": queries, "k": k, **agree, **speed(cpu, gpu, asked, k)}


def check_ivf(n: int, queries: int, dim: int, k: int, *, exact_queries: int = 100
              ) -> dict[str, Any]:
    """The IVF index (what `index="auto"` picks past its threshold): trained once per store on
    the CPU, searched on the GPU copy with the same nprobe. Its lists must match the CPU's
    (recall against the CPU's top-k >= 0.99) and its recall against exact search must be the
    CPU's within 0.01 (on a sample of `exact_queries`)."""
    vectors, asked = random_vectors(n, queries, dim)
    cpu, gpu = filled("ivf", False, vectors), filled("ivf", True, vectors)
    assert gpu.on_gpu and not cpu.on_gpu, "the GPU store did not put its IVF index on the GPU"
    cpu_hits, gpu_hits = cpu.search_batch(asked, k), gpu.search_batch(asked, k)
    agree = agreement(cpu_hits, gpu_hits)
    sample = min(exact_queries, queries)
    exact = filled("flat", False, vectors).search_batch(asked[:sample], k)
    cpu_recall = recall(cpu_hits[:sample], exact)
    gpu_recall = recall(gpu_hits[:sample], exact)
    passed = agree["recall_vs_cpu"] >= 0.99 and gpu_recall >= cpu_recall - 0.01
    return {"check": IVF, "passed": passed, "vectors": n, "dim": dim,
            "queries": queries, "k": k, "nlist": int(cpu._cpu.nlist), "nprobe": cpu.nprobe,
            **agree, "cpu_recall_vs_exact": cpu_recall, "gpu_recall_vs_exact": gpu_recall,
            **speed(cpu, gpu, asked, k)}


# -- 2. the local model on CUDA ------------------------------------------------------------------


def rates(llm: Any, prompt_tokens: int, new_tokens: int, sync: Any) -> dict[str, float]:
    """Prefill tokens/s (one forward over the prompt, as generate() runs it) and decode tokens/s
    (greedy generation of exactly `new_tokens`, minus the prefill), with the backend's weights.

    The prefill yields the first new token, so the rest took `new_tokens - 1` decode steps.
    """
    import torch

    model, tokenizer = llm.hf_model(), llm.hf_tokenizer()
    text = PARAGRAPH * (prompt_tokens // 40 + 1)
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :prompt_tokens].to(model.device)
    mask = torch.ones_like(ids)
    last_only = prefill_kwargs(model)

    def prefill() -> None:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, **last_only)
        sync()

    def generate() -> None:
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=tokenizer.eos_token_id)
        sync()

    prefill_s = timed(prefill)
    generate_s = timed(generate, repeats=1)
    return {"prompt_tokens": ids.shape[1], "prefill_s": prefill_s,
            "prefill_tokens_per_s": ids.shape[1] / prefill_s, "new_tokens": new_tokens,
            "generate_s": generate_s,
            "decode_tokens_per_s": (new_tokens - 1) / max(generate_s - prefill_s, 1e-9)}


def prefill_kwargs(model: Any) -> dict[str, int]:
    """What generate() passes to its own prefill: logits for the last position only. Logits
    over the whole prompt (a vocabulary-wide matrix product per token) would make the timed
    prefill slower than generate's, and the decode rate derived from both too high."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(
        model.forward).parameters else {}


def check_model(prompt_tokens: int, new_tokens: int) -> dict[str, Any]:
    import torch

    from longweave.llm import user
    from longweave.local_models import LocalLLM
    from longweave.local_models.loader import cuda_bf16, resolve_device, resolve_dtype

    device = resolve_device("auto")
    expected = resolve_dtype("auto", device)
    gpu = LocalLLM.bundled()  # device and dtype "auto": what users get
    reply = asyncio.run(gpu.complete([user("What is the capital of Peru? Answer briefly.")],
                                     max_tokens=16))
    weights = next(gpu.hf_model().parameters())
    bf16 = cuda_bf16()
    on_cuda = weights.device.type == "cuda"
    cuda = rates(gpu, prompt_tokens, new_tokens, torch.cuda.synchronize)
    cpu = rates(LocalLLM.bundled(device="cpu", dtype="float32"), prompt_tokens,
                max(16, new_tokens // 4), lambda: None)
    passed = on_cuda and device == "cuda" and weights.dtype == expected and bool(reply.text)
    return {"check": MODEL, "passed": passed, "device": str(
        weights.device), "dtype": str(weights.dtype), "bf16_supported": bf16,
        "gpu_name": torch.cuda.get_device_name(0), "reply": reply.text.strip(),
        "reply_usage": reply.usage.model_dump(), "cuda": cuda, "cpu": cpu,
        "prefill_speedup": cuda["prefill_tokens_per_s"] / cpu["prefill_tokens_per_s"],
        "decode_speedup": cuda["decode_tokens_per_s"] / cpu["decode_tokens_per_s"]}


def report(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"[SKIP] {result['check']}: {result['skipped']}"
    if "error" in result:
        return f"[FAIL] {result['check']}: {result['error']}"
    verdict = "PASS" if result["passed"] else "FAIL"
    if "speedup" in result:
        ivf = (f"; recall vs exact {result['gpu_recall_vs_exact']:.4f} on the GPU, "
               f"{result['cpu_recall_vs_exact']:.4f} on the CPU (nlist {result['nlist']}, "
               f"nprobe {result['nprobe']})" if "nlist" in result else "")
        return (f"[{verdict}] {result['check']}: {result['vectors']:,} x {result['dim']}-d, "
                f"{result['queries']:,} queries, k={result['k']}: identical top-k for "
                f"{result['identical_queries']:.1%} of queries, recall vs CPU "
                f"{result['recall_vs_cpu']:.4f}, max score diff {result['max_score_diff']:.1e}"
                f"{ivf}; CPU {result['cpu_search_s']:.3f} s, GPU {result['gpu_search_s']:.3f} s "
                f"({result['speedup']:.1f}x)")
    c, p = result["cuda"], result["cpu"]
    return (f"[{verdict}] {result['check']}: weights on {result['device']} as {result['dtype']} "
            f"({result['gpu_name']}; bf16 supported: {result['bf16_supported']}); reply "
            f"{result['reply']!r}. Prefill of {c['prompt_tokens']} tokens: "
            f"{c['prefill_tokens_per_s']:,.0f} tok/s on CUDA vs {p['prefill_tokens_per_s']:,.0f} "
            f"on CPU ({result['prefill_speedup']:.1f}x); decode {c['decode_tokens_per_s']:,.0f} vs "
            f"{p['decode_tokens_per_s']:,.0f} tok/s ({result['decode_speedup']:.1f}x)")


def run(title: str, check: Any, *args: Any) -> dict[str, Any]:
    """`check(*args)`, or a failed result carrying the error (its traceback goes to stderr)."""
    try:
        return check(*args)
    except Exception as exc:
        traceback.print_exc()
        return {"check": title, "passed": False, "error": f"{type(exc).__name__}: {exc}"}


def skipped(title: str, why: str) -> dict[str, Any]:
    return {"check": title, "passed": None, "skipped": why}


def checks(args: argparse.Namespace, cuda: bool, gpus: int) -> Iterator[dict[str, Any]]:
    """The results, one at a time, in the order they run."""
    if not args.skip_store:
        if not gpus:
            why = (f"faiss sees no GPU (installed: {faiss_installs()}): `make faiss-gpu` "
                   "swaps faiss-cpu for the GPU build of the same version")
            yield skipped(FLAT, why)
        else:
            yield run(FLAT, check_store, args.vectors, args.queries, args.dim, args.k)
        if not args.skip_ivf:
            yield (run(IVF, check_ivf, args.vectors, args.queries, args.dim, args.k) if gpus
                   else skipped(IVF, "faiss sees no GPU"))
    if not args.skip_model:
        yield (run(MODEL, check_model, args.prompt_tokens, args.new_tokens) if cuda
               else skipped(MODEL, "torch sees no CUDA device: install a CUDA build of torch"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--skip-store", action="store_true")
    parser.add_argument("--skip-ivf", action="store_true", help="Only the flat index.")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--out", help="Also write the results as JSON here.")
    args = parser.parse_args()
    cuda, gpus = torch_cuda(), faiss_gpus()
    results: list[dict[str, Any]] = []
    if not cuda and not gpus:
        print("no CUDA GPU on this machine (torch sees none, faiss sees none): nothing to check; "
              "run this on a machine with an NVIDIA GPU and faiss-gpu installed")
        write(args.out, results)
        return 0
    for result in checks(args, cuda, gpus):
        results.append(result)
        print(report(result), flush=True)
        write(args.out, results)
    return 0 if all(r["passed"] is not False for r in results) else 1


def write(out: str | None, results: list[dict[str, Any]]) -> None:
    if out:
        Path(out).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())

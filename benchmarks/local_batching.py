"""Measure the local backend: model load times, CPU dtypes, and request batching.

Batching: N concurrent requests (`asyncio.gather` of `LocalLLM.complete`) against the same N
one after another, through the public async API, in one run. Prompts are excerpts of the
Paul Graham essays (../shared/data/niah_pg_essays) or, without them, generated text.

    python benchmarks/local_batching.py                      # defaults: 8 x ~420 tokens, 32 new
    python benchmarks/local_batching.py --dtypes float32     # skip the bfloat16 comparison
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from longweave.llm import Message, user  # noqa: E402
from longweave.local_models import LocalLLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "niah_pg_essays" / "essays"
QUESTION = "\n\nSummarize the passage above in two sentences."


def passages(data: Path, n: int) -> list[str]:
    """N different ~2,000-character passages (the real essays when present)."""
    files = sorted(data.glob("*.txt")) if data.is_dir() else []
    if files:
        texts = [" ".join(f.read_text(encoding="utf-8").split()) for f in files[:n]]
    else:
        words = "the river carried small boats past old mills and quiet farms".split()
        texts = [" ".join(words[(i + j) % len(words)] for j in range(600)) for i in range(n)]
    return texts


def prompts(llm: LocalLLM, texts: list[str], target: int) -> list[list[Message]]:
    """Trim each passage so the templated prompt is `target` tokens, give or take a few."""
    out = []
    for text in texts:
        lo, hi = 0, len(text)
        while lo < hi:  # the longest prefix that fits
            mid = (lo + hi + 1) // 2
            if llm.count_prompt_tokens([user(text[:mid] + QUESTION)]) <= target:
                lo = mid
            else:
                hi = mid - 1
        out.append([user(text[:lo] + QUESTION)])
    return out


async def batching(llm: LocalLLM, batch: list[list[Message]], new: int) -> dict[str, float]:
    await llm.complete(batch[0], max_tokens=4)  # warm-up: load weights, first-call overhead
    started = time.perf_counter()
    one_by_one = [await llm.complete(m, max_tokens=new) for m in batch]
    sequential = time.perf_counter() - started
    started = time.perf_counter()
    together = await asyncio.gather(*(llm.complete(m, max_tokens=new) for m in batch))
    concurrent = time.perf_counter() - started
    return {
        "sequential": sequential,
        "concurrent": concurrent,
        "speedup": sequential / concurrent,
        "tokens": sum(c.usage.completion_tokens for c in together),
        "prompt": sum(c.usage.prompt_tokens for c in together) / len(together),
        "same": sum(a.text == b.text for a, b in zip(one_by_one, together, strict=True)),
        "batch": max(c.meta["batch_size"] for c in together),
    }


async def speeds(llm: LocalLLM, text: str) -> dict[str, float]:
    long = prompts(llm, [text * 4], 2048)[0]
    first = await llm.complete(long, max_tokens=1)
    short = prompts(llm, [text], 420)[0]
    one = await llm.complete(short, max_tokens=1)
    many = await llm.complete(short, max_tokens=64)
    steps = max(1, many.usage.completion_tokens - 1)
    return {
        "prefill": first.usage.seconds,
        "decode": steps / max(1e-9, many.usage.seconds - one.usage.seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=420)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import torch

    print(
        f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}\n"
    )

    with tempfile.TemporaryDirectory() as cache:
        cold = LocalLLM.bundled(cache_dir=cache)
        cold.load()
        warm = LocalLLM.bundled(cache_dir=cache)
        warm.load()
        print("| load | tokenizer s | weights s |\n|---|---|---|")
        for label, llm in (("from GGUF (first use)", cold), ("from the cache", warm)):
            print(
                f"| {label} | {llm.load_seconds['tokenizer']:.2f} | "
                f"{llm.load_seconds['model']:.2f} |"
            )
        cold.close()
        warm.close()

        texts = passages(args.data, args.requests)
        rows = []
        for dtype in args.dtypes.split(","):
            llm = LocalLLM.bundled(cache_dir=cache, dtype=dtype, max_batch_size=args.requests)
            batch = prompts(llm, texts, args.prompt_tokens)
            result = asyncio.run(batching(llm, batch, args.new_tokens))
            result.update(asyncio.run(speeds(llm, texts[0])))
            rows.append((dtype, result))
            llm.close()

    n = args.requests
    print(
        f"\n{n} requests of ~{args.prompt_tokens} prompt tokens, {args.new_tokens} new tokens "
        "each, through LocalLLM.complete\n"
    )
    print(
        "| dtype | one after another s | concurrent s | speedup | batch | completion tokens "
        "| batched == one by one | prefill 2,048 tok s | decode tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype, r in rows:
        print(
            f"| {dtype} | {r['sequential']:.2f} | {r['concurrent']:.2f} | "
            f"{r['speedup']:.2f}x | {r['batch']:.0f} | {r['tokens']:.0f} | "
            f"{r['same']:.0f}/{n} | {r['prefill']:.2f} | {r['decode']:.1f} |"
        )


if __name__ == "__main__":
    main()

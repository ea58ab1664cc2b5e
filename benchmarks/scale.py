"""Batch throughput: the local executor against Ray at 1, 2 and 4 workers, side by side.

The model is a loopback OpenAI-compatible server that answers every call after a fixed latency,
so the figures measure the executors (scheduling, process hops, per-document overheads), not a
model. Every configuration answers the same documents with the same strategy in one run.

    python benchmarks/scale.py --docs 48 --latency 0.25 --out /tmp/scale
    python benchmarks/scale.py --data ../shared/data/leval --docs 48   # real documents

From the measured per-document calls, tokens and seconds it projects a run over 1,000,000
documents. Needs the `ray` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longweave.batch import BatchItem, BatchJob, ResultLog, arun_batch  # noqa: E402
from longweave.executors.local import LocalExecutor  # noqa: E402
from longweave.executors.ray import RayExecutor  # noqa: E402

WORDS = (
    "the harbour board met again on tuesday to settle the question of the north pier "
    "whose timbers had rotted through after three winters of storms and neglect "
).split()


def _server(latency: float) -> tuple[str, uvicorn.Server]:
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        await asyncio.sleep(latency)
        prompt = sum(len(m["content"].split()) for m in body["messages"])
        return JSONResponse({
            "id": "bench", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "The pier was rebuilt."}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 5,
                      "total_tokens": prompt + 5},
        })

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1", server


def _documents(folder: Path, n: int, words: int, data: Path | None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sources: list[str] = []
    if data is not None:
        for path in sorted(data.rglob("*")):
            if path.suffix in {".txt", ".md"} and path.stat().st_size > 2000:
                sources.append(path.read_text(encoding="utf-8", errors="replace")[: words * 7])
    paths: list[Path] = []
    for i in range(n):
        if sources:
            text = sources[i % len(sources)]
        else:
            text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(words)) + "."
        path = folder / f"doc{i:04d}.txt"
        path.write_text(f"Document {i}. {text}", encoding="utf-8")
        paths.append(path)
    return paths


async def _measure(
    label: str, items: list[BatchItem], warmup: list[BatchItem], job: BatchJob, executor,
    out: Path,
) -> dict:
    # Warm up first (worker processes started, imports and tokenizers loaded), as a long run is.
    await arun_batch(warmup, out.with_suffix(".warmup.jsonl"), job, executor=executor)
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    summary = await arun_batch(items, out, job, executor=executor)
    seconds = time.perf_counter() - started
    records = ResultLog(out).records()
    docs = len({r.document for r in records})
    return {
        "executor": label, "documents": docs, "answered": summary.answered,
        "failed": summary.failed, "seconds": seconds, "docs_per_min": 60 * docs / seconds,
        "calls": summary.usage.calls, "prompt_tokens": summary.usage.prompt_tokens,
        "completion_tokens": summary.usage.completion_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=48)
    parser.add_argument("--words", type=int, default=2400, help="words per synthetic document")
    parser.add_argument("--latency", type=float, default=0.25, help="seconds per model call")
    parser.add_argument("--window", type=int, default=1024, help="chain-of-agents window")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--data", type=Path, default=None, help="take document text from here")
    parser.add_argument("--out", type=Path, default=Path("scale-bench"))
    args = parser.parse_args()

    base_url, server = _server(args.latency)
    os.environ["OPENAI_BASE_URL"] = base_url  # Ray workers inherit it from the driver
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    workers = [int(w) for w in args.workers.split(",")]
    docs = _documents(args.out / "docs", args.docs + 2 * max(workers), args.words, args.data)
    items = [BatchItem(document=str(p), question="What happened to the pier?") for p in docs]
    items, warmup = items[: args.docs], items[args.docs :]
    job = BatchJob("chain-of-agents", "openai:bench", cache=False,
                   options={"window": args.window, "max_new": 64},
                   cache_dir=args.out / "cache")
    rows = []
    for w in workers:
        rows.append(asyncio.run(_measure(
            f"local, concurrency {w}", items, warmup[: 2 * w], job, LocalExecutor(concurrency=w),
            args.out / f"local{w}.jsonl")))
    import ray

    for w in workers:
        ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False)
        try:
            executor = RayExecutor(concurrency=1, max_in_flight=2 * w)
            rows.append(asyncio.run(_measure(
                f"ray, {w} worker{'s' if w > 1 else ''}", items, warmup[: 2 * w], job, executor,
                args.out / f"ray{w}.jsonl")))
        finally:
            ray.shutdown()
    server.should_exit = True

    base = rows[0]["docs_per_min"]
    print(f"{args.docs} documents x 1 question, chain-of-agents window {args.window}, "
          f"{args.latency:.2f}s per call, {os.cpu_count()} CPUs\n")
    print("| executor | docs/min | × local c=1 | calls | prompt tokens | seconds | failed |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['executor']} | {r['docs_per_min']:.1f} | {r['docs_per_min'] / base:.2f} | "
              f"{r['calls']} | {r['prompt_tokens']:,} | {r['seconds']:.1f} | {r['failed']} |")
    best = max(rows, key=lambda r: r["docs_per_min"])
    per_doc_calls = best["calls"] / best["documents"]
    per_doc_tokens = (best["prompt_tokens"] + best["completion_tokens"]) / best["documents"]
    minutes = 1_000_000 / best["docs_per_min"]
    print(f"\n1,000,000 documents at the best rate ({best['executor']}): "
          f"{per_doc_calls * 1e6:,.0f} calls, {per_doc_tokens * 1e6:,.0f} tokens, "
          f"{minutes / 60:,.1f} hours; each added worker adds about "
          f"{best['docs_per_min'] / max(workers):.1f} docs/min while the endpoint keeps up.")
    (args.out / "scale.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()

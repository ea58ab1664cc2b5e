"""Retrieval quality and speed: dense (bundled MiniLM + longweave's FAISS store) beside BM25.

1. HotpotQA (dev, distractor setting): the paragraphs of every question are pooled into one
   store (deduplicated by title and text), and each question is searched against the whole pool.
   recall@k = the share of a question's gold supporting paragraphs in its top k, averaged over
   questions; "both@k" = the share of questions with both gold paragraphs in the top k. Dense
   retrieval embeds "title\\ntext" with the bundled all-MiniLM-L6-v2; BM25 (bm25s, Lucene
   variant, English stopwords, no stemming) indexes the same strings, in the same run.
2. Embedding throughput of the bundled MiniLM on this machine (paragraphs per second).
3. Search latency of `VectorStore` at 10k, 100k and 1M vectors (`--sizes`), flat (exact)
   against HNSW and IVF: build seconds, ms per query one at a time (faiss on all cores, then on
   the one thread the store now uses) and batched, and recall@10 of each approximate index
   against flat. The vectors are SYNTHETIC but embedding-like: each is the normalized blend of
   two real MiniLM paragraph vectors from part 1 plus isotropic noise, and the queries are the
   real MiniLM question vectors. HNSW sizes whose build would not fit the time budget
   (estimated from the previous size) are skipped and reported as skipped.

    .venv/bin/pip install -e '.[bench]'
    nice -n 5 .venv/bin/python benchmarks/retrieval.py [DATA_DIR] [--sizes 10000,100000]
        [--out FILE] [--latency-out FILE]
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from longweave.retrieval.embeddings import SentenceTransformerEmbedder  # noqa: E402
from longweave.retrieval.store import Record, VectorStore  # noqa: E402

COMMAND = ("nice -n 5 .venv/bin/python benchmarks/retrieval.py ../shared/data "
           "--nprobes 16,32,64,128,256")
KS = (2, 5, 10)
NOTES = [
    "- Timings come from a shared 2-core machine on which other jobs ran at the same time (see",
    "  the load averages): absolute numbers are pessimistic, ratios within the run are what to",
    "  read.",
    "- all-MiniLM-L6-v2 reads at most 256 word pieces: longer paragraphs are embedded from their",
    "  first 256 pieces only (counted above). longweave's rag chunks default to 256 model tokens.",
]
LATENCY_NOTES = [
    "- HNSW builds run in size order; a size whose build, extrapolated from the previous size's",
    "  rate, would overrun `--hnsw-budget-s` (default 300 s) is skipped and reported as such.",
    "- The indexes of a size are measured one after another, so the load can differ between",
    "  them. With more runnable jobs than cores, a query that outlasts a scheduler time slice",
    "  waits for the CPU again and again, so wall times above a few ms are stretched by the load",
    "  far more than short ones: compare CPU times across rows and sizes.",
]


def load_hotpot(data_dir: Path, limit: int | None) -> tuple[list[str], list[str], list[set[int]]]:
    """Pooled unique paragraphs ("title\\ntext"), questions, and each question's gold ids."""
    path = data_dir / "hotpotqa" / "hotpotqa_dev_subsampled.jsonl"
    pool: dict[tuple[str, str], int] = {}
    questions, gold = [], []
    for line in path.read_text(encoding="utf-8").splitlines()[:limit]:
        row = json.loads(line)
        ids = set()
        for ctx in row["contexts"]:
            key = (ctx["title"], ctx["paragraph_text"])
            pid = pool.setdefault(key, len(pool))
            if ctx["is_supporting"]:
                ids.add(pid)
        questions.append(row["question_text"])
        gold.append(ids)
    passages = [f"{title}\n{text}" for (title, text) in pool]
    return passages, questions, gold


def recall_table(ranked: list[list[int]], gold: list[set[int]]) -> dict[str, float]:
    out = {}
    for k in KS:
        out[f"recall@{k}"] = statistics.mean(len(set(r[:k]) & g) / len(g) for r, g in
                                             zip(ranked, gold, strict=True))
        out[f"both@{k}"] = statistics.mean(g <= set(r[:k]) for r, g in
                                           zip(ranked, gold, strict=True))
    return out


def dense(passages: list[str], questions: list[str], gold: list[set[int]]) -> dict[str, Any]:
    embedder = SentenceTransformerEmbedder()
    started = time.perf_counter()
    embedder.embed(["warm up"])  # loads the model; not part of the throughput
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    vectors = embedder.embed(passages)
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    queries = embedder.embed(questions)
    query_s = time.perf_counter() - started
    st = embedder._load()  # the sentence-transformers model, to count what it reads
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # counting long paragraphs is not running them
    pieces = [len(ids) for ids in st.tokenizer(passages, add_special_tokens=True)["input_ids"]]
    store = VectorStore(embedder.dim, embedder=embedder.name, index="flat")
    store.add(vectors, [Record(str(i), i, 0, 0) for i in range(len(passages))])
    started = time.perf_counter()
    hits = store.search_batch(queries, k=max(KS))
    search_s = time.perf_counter() - started
    ranked = [[h.chunk_index for h in row] for row in hits]
    return {
        "recall": recall_table(ranked, gold),
        "vectors": vectors,
        "queries": queries,
        "load_s": load_s,
        "embed_s": embed_s,
        "per_s": len(passages) / embed_s,
        "query_per_s": len(questions) / query_s,
        "pieces_mean": statistics.mean(pieces),
        "over_limit": sum(p > st.max_seq_length for p in pieces),
        "max_seq_length": st.max_seq_length,
        "batch_size": embedder.batch_size,
        "search_ms": 1000 * search_s / len(questions),
    }


def bm25(passages: list[str], questions: list[str], gold: list[set[int]]) -> dict[str, Any]:
    import bm25s

    started = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(passages, stopwords="en", show_progress=False),
                    show_progress=False)
    index_s = time.perf_counter() - started
    query_tokens = bm25s.tokenize(questions, stopwords="en", return_ids=False, show_progress=False)
    started = time.perf_counter()
    ids, _ = retriever.retrieve(query_tokens, k=max(KS), show_progress=False)
    search_s = time.perf_counter() - started
    ranked = [[int(i) for i in row] for row in ids]
    return {"recall": recall_table(ranked, gold), "index_s": index_s,
            "search_ms": 1000 * search_s / len(questions)}


def synthetic(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n embedding-like unit vectors: blends of two real vectors plus isotropic noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    scale = np.float32(0.8 / np.sqrt(base.shape[1]))
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        a = rng.integers(len(base), size=hi - lo)
        b = rng.integers(len(base), size=hi - lo)
        block = base[a] + np.float32(0.7) * base[b]
        block += scale * rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[lo:hi] = block
    return out


def timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def clocked(fn: Any) -> tuple[Any, float, float]:
    """`fn()`, its wall seconds and the CPU seconds of the whole process (every thread) meanwhile.

    On a machine with more runnable jobs than cores, wall time stretches with the load once a
    call outlasts a scheduler time slice; CPU time is the work itself (for faiss on all cores it
    includes the OpenMP threads' spinning, which is part of what one thread saves).
    """
    cpu = time.process_time()
    out, wall = timed(fn)
    return out, wall, time.process_time() - cpu


def one_at_a_time(store: VectorStore, queries: np.ndarray, threads: int | None
                  ) -> tuple[dict[str, float], list[set[int]]]:
    """p50 wall and CPU ms of one-query `search(k=10)` calls, faiss on `threads` (None: all)."""
    store.query_threads = threads
    walls, cpus, found = [], [], []
    for q in queries:
        hits, wall, cpu = clocked(lambda q=q: store.search(q, k=10))
        walls.append(1000 * wall)
        cpus.append(1000 * cpu)
        found.append({h.chunk_index for h in hits})
    store.query_threads = 1
    return {"p50_ms": statistics.median(walls), "mean_ms": statistics.mean(walls),
            "cpu_p50_ms": statistics.median(cpus)}, found


def recall(found: list[set[int]], exact: list[set[int]]) -> float:
    return statistics.mean(len(a & e) / len(e) for a, e in zip(found, exact, strict=True))


def measure(kind: str, x: np.ndarray, q: np.ndarray, exact: list[set[int]] | None,
            nprobes: Sequence[int] = ()) -> tuple[dict[str, Any], list[set[int]]]:
    """Build a store of `kind` over `x` through the public API, then time its searches."""
    store = VectorStore(x.shape[1], index=kind, gpu=False)  # type: ignore[arg-type]
    records = [Record("s", i, 0, 0) for i in range(len(x))]
    _, build, build_cpu = clocked(lambda: store.add(x, records))
    row: dict[str, Any] = {"index": kind, "build_s": build, "build_cpu_s": build_cpu}
    if kind == "ivf":
        row["nlist"], row["nprobe"] = int(store._cpu.nlist), store.nprobe
    # Before: faiss's default, every core for each query; after: the store's one thread.
    row["all"], _ = one_at_a_time(store, q, None)
    row["one"], found = one_at_a_time(store, q, 1)
    _, seconds = timed(lambda: store.search_batch(q, k=10))
    row["batch_ms"] = 1000 * seconds / len(q)
    if exact is not None:
        row["recall@10"] = recall(found, exact)
    if kind == "ivf" and exact is not None and nprobes:
        row["sweep"] = []
        for nprobe in nprobes:  # how recall and one-query time trade at this size
            store.nprobe = nprobe
            times, swept = one_at_a_time(store, q, 1)
            row["sweep"].append({"nprobe": nprobe, **times, "recall@10": recall(swept, exact)})
    row.update(n=len(x), queries=len(q), load=os.getloadavg()[0])
    print(json.dumps(row), flush=True)
    return row, found


def scale(base: np.ndarray, queries: np.ndarray, sizes: list[int], hnsw_budget_s: float,
          n_queries: int, nprobes: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Flat, HNSW and IVF at each size: build, one-query and batched latency, recall vs flat."""
    rows = []
    data, seconds = timed(lambda: synthetic(base, max(sizes)))
    print(f"generated {max(sizes):,} synthetic vectors in {seconds:.1f}s", flush=True)
    q = queries[:n_queries]
    spent_hnsw, rate = 0.0, None  # seconds of HNSW building so far; seconds per vector
    for n in sorted(sizes):
        x = data[:n]
        flat, exact = measure("flat", x, q, None)
        rows.append(flat)
        gc.collect()  # each store is dropped before the next is built (1M vectors: 1.5 GB each)
        estimate = rate * n * 1.15 if rate is not None else 0.0  # HNSW grows a bit faster than n
        if hnsw_budget_s <= 0 or estimate > hnsw_budget_s - spent_hnsw:
            why = (f"estimated build {estimate / 60:.0f} min (from the previous size), over the "
                   f"{hnsw_budget_s / 60:.0f}-min budget") if hnsw_budget_s > 0 else "not asked"
            rows.append({"index": "hnsw", "n": n, "queries": len(q), "load": os.getloadavg()[0],
                         "skipped": why})
            print(json.dumps(rows[-1]), flush=True)
        else:
            hnsw, _ = measure("hnsw", x, q, exact)
            rows.append(hnsw)
            gc.collect()
            spent_hnsw += hnsw["build_s"]
            rate = hnsw["build_s"] / n
        rows.append(measure("ivf", x, q, exact, nprobes)[0])
        gc.collect()
    return rows


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report(hot: dict[str, Any], dense_r: dict[str, Any], bm25_r: dict[str, Any],
           scale_rows: list[dict[str, Any]], load: float) -> str:
    lines = [
        "## Retrieval",
        "",
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs ({platform.machine()}), no "
        f"GPU; load average {load:.1f} when the run started (a shared machine: timings are "
        f"indicative). Versions: faiss-cpu {version('faiss-cpu')}, sentence-transformers "
        f"{version('sentence-transformers')}, torch {version('torch')}, bm25s {version('bm25s')}.",
        "",
        f"### HotpotQA: {hot['questions']} dev questions, {hot['passages']:,} paragraphs pooled "
        "into one store",
        "",
        "| retriever | recall@2 | recall@5 | recall@10 | both@2 | both@5 | both@10 | ms/query |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in (("dense: bundled all-MiniLM-L6-v2, flat FAISS", dense_r),
                    ("BM25 (bm25s, Lucene, stopwords, no stemming)", bm25_r)):
        rec = r["recall"]
        lines.append(
            f"| {name} | " + " | ".join(f"{rec[f'recall@{k}']:.3f}" for k in KS) + " | "
            + " | ".join(f"{rec[f'both@{k}']:.3f}" for k in KS) + f" | {r['search_ms']:.2f} |"
        )
    lines += [
        "",
        "recall@k: share of a question's two gold supporting paragraphs found in its top k, "
        "averaged over questions; both@k: share of questions with both gold paragraphs in the "
        "top k. Each paragraph is indexed as \"title\\ntext\". ms/query: one batched search over "
        "all questions, divided by their number (dense: the store search only, question "
        "embedding excluded).",
        "",
        "### Embedding throughput (bundled all-MiniLM-L6-v2, CPU)",
        "",
        "| paragraphs | mean word pieces | over the 256-piece limit | batch | seconds | "
        "paragraphs/s | questions/s | model load s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {hot['passages']:,} | {dense_r['pieces_mean']:.0f} | {dense_r['over_limit']} | "
        f"{dense_r['batch_size']} | {dense_r['embed_s']:.1f} | {dense_r['per_s']:.0f} | "
        f"{dense_r['query_per_s']:.0f} | {dense_r['load_s']:.1f} |",
        "",
        "",
        latency_section(scale_rows),
        *NOTES,
        "",
        "Reproduce (after `.venv/bin/pip install -e '.[bench]'`):",
        "",
        f"    {COMMAND}",
        "",
    ]
    return "\n".join(lines)


def seconds(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def latency_section(rows: list[dict[str, Any]]) -> str:
    """The "Search latency" subsection: one row per size and index kind."""
    from longweave.retrieval import faiss_index as fi

    loads = [r["load"] for r in rows]
    lines = [
        "### Search latency: flat (exact), HNSW and IVF, 10k to 1M vectors",
        "",
        f"HNSW: M={fi.HNSW_M}, efConstruction={fi.HNSW_EF_CONSTRUCTION}, "
        f"efSearch={fi.HNSW_EF_SEARCH}. IVF: IVFFlat over inner product, sqrt(n) lists with a "
        f"flat quantizer, k-means on {fi.IVF_TRAIN_PER_LIST} sampled vectors per list, "
        f"nprobe={fi.IVF_NPROBE}. Each index is built through `VectorStore(index=...).add` "
        "(IVF build = k-means training + adding). Synthetic 384-d vectors: each the normalized "
        "blend of two real MiniLM paragraph vectors (weights 1 and 0.7) plus isotropic Gaussian "
        "noise (norm about 0.8); queries are the real MiniLM question vectors (not drawn near "
        "data points). One query: `VectorStore.search(k=10)` per query, faiss on all cores "
        "(before; faiss's default) and on one thread (now; the store's `query_threads=1`). "
        "Batched: one `search_batch(k=10)` over all queries, divided by their number. In "
        "brackets: CPU time of the whole process (`time.process_time`, every thread), the work "
        "itself, which other jobs on the machine do not stretch; with faiss on all cores it "
        "includes OpenMP threads spinning while they wait. recall@10: share of the flat index's "
        "exact top 10 found by the approximate index. "
        f"Load average during this part: {min(loads):.1f} to {max(loads):.1f} on "
        f"{os.cpu_count()} cores; faiss-cpu {version('faiss-cpu')}.",
        "",
        "| vectors | index | build s (CPU s) | 1 query, all threads: p50 ms (CPU) | 1 query, 1 "
        "thread: p50 ms (CPU) | batched ms/query | recall@10 vs flat | queries |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["index"] + (f" ({r['nlist']} lists)" if "nlist" in r else "")
        if "skipped" in r:
            lines.append(f"| {r['n']:,} | {name} | skipped: {r['skipped']} | – | – | – | – | – |")
            continue
        recall_cell = f"{r['recall@10']:.3f}" if "recall@10" in r else "1 (exact)"
        lines.append(
            f"| {r['n']:,} | {name} | {seconds(r['build_s'])} ({seconds(r['build_cpu_s'])}) | "
            f"{r['all']['p50_ms']:.2f} ({r['all']['cpu_p50_ms']:.2f}) | "
            f"{r['one']['p50_ms']:.2f} ({r['one']['cpu_p50_ms']:.2f}) | {r['batch_ms']:.2f} | "
            f"{recall_cell} | {r['queries']} |"
        )
    swept = [r for r in rows if r.get("sweep")]
    if swept:
        probes = [p["nprobe"] for p in swept[0]["sweep"]]
        lines += [
            "",
            "IVF nprobe against recall@10 and one-query time (1 thread; p50 wall ms, p50 CPU ms "
            "in brackets), same queries:",
            "",
            "| vectors | lists | " + " | ".join(f"nprobe {p}" for p in probes) + " |",
            "|---|---|" + "---|" * len(probes),
        ]
        for r in swept:
            cells = [f"{p['recall@10']:.3f} in {p['p50_ms']:.1f} ({p['cpu_p50_ms']:.1f})"
                     for p in r["sweep"]]
            lines.append(f"| {r['n']:,} | {r['nlist']} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", *LATENCY_NOTES, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", nargs="?", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--questions", type=int, default=None, help="first N questions (all)")
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        help="vector counts for the latency part (drop 1000000 to save time)")
    parser.add_argument("--hnsw-budget-s", type=float, default=300.0,
                        help="seconds all HNSW builds together may take (0: no HNSW)")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--nprobes", default="",
                        help="IVF nprobe values to sweep at each size, e.g. 16,32,64,128,256")
    parser.add_argument("--vectors", default=None,
                        help="an .npz of the MiniLM paragraph and question vectors: written by a "
                        "full run, or, if it exists, read to run the latency part alone")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    parser.add_argument("--latency-out", default=None,
                        help="also write the search latency subsection alone here")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size]
    nprobes = [int(p) for p in args.nprobes.split(",") if p]
    load = os.getloadavg()[0]
    if args.vectors and Path(args.vectors).is_file():
        saved = np.load(args.vectors)
        rows = scale(saved["paragraphs"], saved["questions"], sizes, args.hnsw_budget_s,
                     args.latency_queries, nprobes)
        text = latency_section(rows)
    else:
        passages, questions, gold = load_hotpot(Path(args.data_dir), args.questions)
        print(f"{len(questions)} questions, {len(passages)} pooled paragraphs", flush=True)
        dense_r = dense(passages, questions, gold)
        print("dense", json.dumps(dense_r["recall"]), f"{dense_r['per_s']:.0f} paragraphs/s",
              flush=True)
        if args.vectors:
            np.savez(args.vectors, paragraphs=dense_r["vectors"], questions=dense_r["queries"])
        bm25_r = bm25(passages, questions, gold)
        print("bm25", json.dumps(bm25_r["recall"]), flush=True)
        rows = scale(dense_r["vectors"], dense_r["queries"], sizes, args.hnsw_budget_s,
                     args.latency_queries, nprobes)
        text = report({"questions": len(questions), "passages": len(passages)}, dense_r,
                      bm25_r, rows, load)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    if args.latency_out:
        Path(args.latency_out).write_text(latency_section(rows), encoding="utf-8")


if __name__ == "__main__":
    main()

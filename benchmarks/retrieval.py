"""Retrieval quality and speed: dense (bundled MiniLM + longweave's FAISS store) beside BM25.

1. HotpotQA (dev, distractor setting): the paragraphs of every question are pooled into one
   store (deduplicated by title and text), and each question is searched against the whole pool.
   recall@k = the share of a question's gold supporting paragraphs in its top k, averaged over
   questions; "both@k" = the share of questions with both gold paragraphs in the top k. Dense
   retrieval embeds "title\\ntext" with the bundled all-MiniLM-L6-v2; BM25 (bm25s, Lucene
   variant, English stopwords, no stemming) indexes the same strings, in the same run.
2. Embedding throughput of the bundled MiniLM on this machine (paragraphs per second).
3. Search latency of `VectorStore` at 10k, 100k and 1M vectors, flat (exact) against HNSW, and
   the recall@10 of HNSW against flat. The vectors are SYNTHETIC but embedding-like: each is the
   normalized blend of two real MiniLM paragraph vectors from part 1 plus isotropic noise, and
   the queries are the real MiniLM question vectors. HNSW sizes whose build would not fit the
   time budget (estimated from the previous size) are skipped and reported as skipped.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/retrieval.py [DATA_DIR] [--out FILE]
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
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from longweave.retrieval.embeddings import SentenceTransformerEmbedder  # noqa: E402
from longweave.retrieval.store import Record, VectorStore  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/retrieval.py ../shared/data"
KS = (2, 5, 10)
NOTES = [
    "- Timings come from a shared 2-core machine on which other jobs ran at the same time (see",
    "  the load average above): absolute numbers are pessimistic, ratios within the run are",
    "  what to read. faiss searches with all cores by default; the \"1 thread\" column shows",
    "  how much OpenMP threads waiting on each other cost on a busy machine.",
    "- all-MiniLM-L6-v2 reads at most 256 word pieces: longer paragraphs are embedded from their",
    "  first 256 pieces only (counted above). longweave's rag chunks default to 256 model tokens.",
    "- HNSW builds run in size order; a size whose build, extrapolated from the previous size's",
    "  rate, would overrun `--hnsw-budget-s` (default 300 s) is skipped and reported as such.",
    "  The store switches to HNSW past 50,000 vectors (`hnsw_threshold`).",
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


def latency(
    store: VectorStore, queries: np.ndarray, threads: int | None = None
) -> tuple[float, float, list[set[int]]]:
    """Median and mean ms of one-query searches, with faiss on `threads` OpenMP threads."""
    import faiss

    default = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads or default)
    times, found = [], []
    try:
        for q in queries:
            started = time.perf_counter()
            hits = store.search(q, k=10)
            times.append(1000 * (time.perf_counter() - started))
            found.append({h.chunk_index for h in hits})
    finally:
        faiss.omp_set_num_threads(default)
    return statistics.median(times), statistics.mean(times), found


def scale(base: np.ndarray, queries: np.ndarray, sizes: list[int], hnsw_budget_s: float,
          n_queries: int) -> list[dict[str, Any]]:
    rows = []
    started = time.perf_counter()
    data = synthetic(base, max(sizes))
    print(f"generated {max(sizes):,} synthetic vectors in {time.perf_counter() - started:.1f}s",
          flush=True)
    dim = base.shape[1]
    spent_hnsw, rate = 0.0, None  # seconds of HNSW building so far; seconds per vector
    for n in sorted(sizes):
        x = data[:n]
        q = queries[: n_queries if n < 1_000_000 else max(10, n_queries // 3)]
        records = [Record("s", i, 0, 0) for i in range(n)]
        row: dict[str, Any] = {"n": n, "queries": len(q)}
        flat = VectorStore(dim, index="flat", gpu=False)
        t = time.perf_counter()
        flat.add(x, records)
        row["flat_build_s"] = time.perf_counter() - t
        row["flat_p50_ms"], row["flat_mean_ms"], exact = latency(flat, q)
        # One thread too: on a busy machine OpenMP threads wait on each other.
        row["flat1_p50_ms"], _, _ = latency(flat, q, threads=1)
        del flat
        gc.collect()
        estimate = rate * n * 1.15 if rate is not None else 0.0  # HNSW grows a bit faster than n
        if estimate > hnsw_budget_s - spent_hnsw:
            row["hnsw_skipped"] = f"estimated build {estimate / 60:.0f} min; budget left " \
                                  f"{max(0, hnsw_budget_s - spent_hnsw) / 60:.0f} min"
        else:
            hnsw = VectorStore(dim, index="hnsw", gpu=False)
            t = time.perf_counter()
            hnsw.add(x, records)
            build = time.perf_counter() - t
            spent_hnsw += build
            rate = build / n
            row["hnsw_build_s"] = build
            row["hnsw_p50_ms"], row["hnsw_mean_ms"], approx = latency(hnsw, q)
            row["hnsw_recall@10"] = statistics.mean(
                len(a & e) / len(e) for a, e in zip(approx, exact, strict=True))
            del hnsw
            gc.collect()
        rows.append(row)
        print(json.dumps(row), flush=True)
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
        "### Search latency: flat (exact) against HNSW (M=32, efConstruction=128, efSearch=128)",
        "",
        "Synthetic 384-d vectors: each the normalized blend of two real MiniLM paragraph vectors "
        "(weights 1 and 0.7) plus isotropic Gaussian noise (norm about 0.8); queries are the real "
        "MiniLM question vectors, searched one at a time through `VectorStore.search(k=10)`. "
        "HNSW recall@10 is measured against the flat index's exact top 10.",
        "",
        "| vectors | flat build s | flat p50 ms | flat mean ms | flat p50 ms, 1 thread | "
        "HNSW build s | HNSW p50 ms | HNSW mean ms | HNSW recall@10 | queries |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in scale_rows:
        if "hnsw_build_s" in row:
            hnsw = (f"{row['hnsw_build_s']:.1f} | {row['hnsw_p50_ms']:.2f} | "
                    f"{row['hnsw_mean_ms']:.2f} | {row['hnsw_recall@10']:.3f}")
        else:
            hnsw = f"skipped: {row['hnsw_skipped']} | – | – | –"
        lines.append(
            f"| {row['n']:,} | {row['flat_build_s']:.2f} | {row['flat_p50_ms']:.2f} | "
            f"{row['flat_mean_ms']:.2f} | {row['flat1_p50_ms']:.2f} | {hnsw} | "
            f"{row['queries']} |"
        )
    lines += ["", *NOTES, "", "Reproduce (after `.venv/bin/pip install -e '.[bench]'`):", "",
              f"    {COMMAND}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", nargs="?", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--questions", type=int, default=None, help="first N questions (all)")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--hnsw-budget-s", type=float, default=300.0,
                        help="seconds all HNSW builds together may take")
    parser.add_argument("--latency-queries", type=int, default=100)
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    passages, questions, gold = load_hotpot(Path(args.data_dir), args.questions)
    print(f"{len(questions)} questions, {len(passages)} pooled paragraphs", flush=True)
    dense_r = dense(passages, questions, gold)
    print("dense", json.dumps(dense_r["recall"]), f"{dense_r['per_s']:.0f} paragraphs/s",
          flush=True)
    bm25_r = bm25(passages, questions, gold)
    print("bm25", json.dumps(bm25_r["recall"]), flush=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows = scale(dense_r["vectors"], dense_r["queries"], sizes, args.hnsw_budget_s,
                 args.latency_queries)
    text = report({"questions": len(questions), "passages": len(passages)}, dense_r, bm25_r,
                  rows, load)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

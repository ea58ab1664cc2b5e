"""PRISM with the local backend's prefix cache on and off, side by side in one process.

PRISM keeps its task, question and schema byte-identical at the head of every step prompt
(STRATEGIES.md §5.2); with the prefix cache the bundled model prefills that prefix once and then
only what changed. Both runs use the same loaded model (greedy, no completion cache) on the first
`--chunks` chunks of the document; the answers and every step's output must be identical.
Token counts are exact; timings on a shared machine are noisy, so `--repeats` alternates the
order and the summary takes each mode's fastest run.

    python benchmarks/prefix_cache.py [DOCUMENT] [QUESTION] [--chunks 10] [--chunk-tokens 200]
        [--repeats 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Row(NamedTuple):
    name: str
    wall: float
    cpu: float
    steps: int
    calls: int
    prompt: int
    cached: int
    output: int

    @property
    def computed(self) -> int:
        return self.prompt - self.cached


def head(text: str, chunks: int, chunk_tokens: int, tokenizer: Any) -> str:
    """The text of the first `chunks` chunks, as PRISM's chunker will cut them."""
    from longweave.chunking import Chunker

    pieces = Chunker(chunk_tokens, tokenizer=tokenizer).split(text[: chunks * chunk_tokens * 8])
    return text[: pieces[min(chunks, len(pieces)) - 1].end]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("document", nargs="?", default=str(ROOT / "examples" / "moon_stories.txt"))
    parser.add_argument(
        "question", nargs="?", default="Where does the very young man have a chance to go?"
    )
    parser.add_argument("--chunks", type=int, default=10, help="chunks read from the start")
    parser.add_argument("--chunk-tokens", type=int, default=200)
    parser.add_argument("--step-max-new", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1,
                        help="pairs of runs, alternating which goes first; timings take the best")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from longweave.agents.prism import Prism
    from longweave.documents import Document, open_document
    from longweave.llm import user
    from longweave.local_models import LocalLLM

    llm = LocalLLM.bundled()
    llm.load()
    source = open_document(args.document)
    text = head(source.text, args.chunks, args.chunk_tokens, llm.tokenizer)
    document = Document.from_text(text, source=source.source)
    prism = Prism(window=4096, chunk_tokens=args.chunk_tokens, step_max_new=args.step_max_new,
                  answer_max_new=64, value_chars=80, max_revisions=2, list_items=3,
                  answer_chars=200, retries=0)
    await llm.complete([user("Say hello.")], max_tokens=4)  # warm up outside the timings

    rows: list[Row] = []
    answers: dict[str, list[Any]] = {}
    modes = [("off", 0), ("on", 2)]
    for repeat in range(args.repeats):
        for name, size in modes if repeat % 2 == 0 else modes[::-1]:
            rows.append(await run(llm, prism, document, args.question, name, size, answers))
    llm.close()

    print(f"{rows[0].steps} chunks of <= {args.chunk_tokens} tokens, "
          f"{len(text):,} characters of {Path(args.document).name}\n")
    print("| prefix cache | wall s | CPU s | steps | calls | prompt tokens | cached | computed "
          "| output |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.wall:.1f} | {r.cpu:.1f} | {r.steps} | {r.calls} | {r.prompt:,} "
              f"| {r.cached:,} | {r.computed:,} | {r.output:,} |")
    off = min((r for r in rows if r.name == "off"), key=lambda r: r.wall)
    on = min((r for r in rows if r.name == "on"), key=lambda r: r.wall)
    reference = trace(answers["off"][0])
    same = all(trace(a) == reference for a in answers["on"] + answers["off"])
    print(f"\nprompt tokens computed: {on.computed / off.computed:.0%} of the uncached run "
          f"({1 - on.computed / off.computed:.0%} fewer); cache hit rate "
          f"{on.cached / on.prompt:.0%}; best wall {off.wall / on.wall:.2f}x, "
          f"CPU {off.cpu / on.cpu:.2f}x faster")
    print(f"identical answer and steps: {same}")
    print(f"answer: {answers['on'][0].text!r}")


def trace(answer: Any) -> list[Any]:
    """The answer and every step, less the cached-token counts that are meant to differ."""
    steps = [(s.role, s.output, {k: v for k, v in s.detail.items() if k != "cached_tokens"})
             for s in answer.steps]
    return [answer.text, answer.citations, steps]


async def run(llm: Any, prism: Any, document: Any, question: str, name: str, size: int,
              answers: dict[str, list[Any]]) -> Row:
    """One PRISM run with a prefix cache of `size` entries (0: off)."""
    from longweave.local_models.prefix_cache import PrefixCache
    from longweave.runner import arun

    llm.prefix_cache = PrefixCache(size=size)
    started, cpu = time.perf_counter(), time.process_time()
    answer = await arun(prism, document, question, llm)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    answers.setdefault(name, []).append(answer)
    u = answer.usage
    steps = sum(s.role == "stepper" for s in answer.steps)
    return Row(name, wall, cpu, steps, u.calls, u.prompt_tokens, u.cached_tokens,
               u.completion_tokens)


if __name__ == "__main__":
    asyncio.run(main())

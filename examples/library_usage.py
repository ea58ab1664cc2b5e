"""Ask a question of a document from Python, and follow the strategy's progress as it works.

    python examples/library_usage.py                   # offline stand-in model, about a second
    python examples/library_usage.py --model local     # the bundled SmolLM2 (minutes on 2 cores)
    python examples/library_usage.py --model openai:gpt-4o-mini   # with OPENAI_API_KEY set

The offline stand-in (`_offline.py`) is not a language model: it answers with the sentence that
shares the most words with the question, which is enough to show the call, its citations, its
usage and its events.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _offline import resolve

import longweave
from longweave.events import Event

HERE = Path(__file__).parent


def show_progress(event: Event) -> None:
    """An application's progress sink: one line per step a strategy takes."""
    if event.kind == "step":
        print(f"  [{event.strategy}] {event.role}: {event.message[:70]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="offline", help="'offline', 'local', 'hf:<id>' or "
                        "'openai:<model>'")
    parser.add_argument("--strategy", default="chain-of-agents")
    parser.add_argument("--question", default="Who was the first keeper of the lighthouse?")
    args = parser.parse_args()

    offline = args.model == "offline"
    answer = longweave.ask(
        HERE / "harbour_report.md",
        args.question,
        strategy=args.strategy,
        model=resolve(args.model),
        cache=not offline,  # the stand-in is instant; real models reuse cached completions
        on_event=show_progress,
        max_new=128,
    )
    print(f"Q: {args.question}")
    print(f"A: {answer.text}")
    for citation in answer.citations:
        print(f"  cited chars {citation.start}-{citation.end}: {citation.text[:60]!r}...")
    print(answer.usage.line())


if __name__ == "__main__":
    main()

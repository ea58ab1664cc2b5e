"""A multi-turn conversation about a document inside an application: `longweave.Session`.

    python examples/session_usage.py                 # offline stand-in model, about a second
    python examples/session_usage.py --model local   # the bundled SmolLM2 (minutes on 2 cores)

A follow-up ("And who took over from her?") is first rewritten into a standalone question from
the conversation memory (one short `rewrite` call), then answered by the strategy. The offline
stand-in (`_offline.py`) is not a language model: its rewrite puts the first name of the last
answer in place of the pronoun, and it answers with the sentence sharing most words with the
question.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _offline import resolve

import longweave

HERE = Path(__file__).parent
QUESTIONS = (
    "Who was the first keeper of the lighthouse?",
    "And who took over from her?",
    "When was the lamp first lit?",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="offline", help="'offline', 'local', 'hf:<id>' or "
                        "'openai:<model>'")
    parser.add_argument("--strategy", default="truncate")
    args = parser.parse_args()

    offline = args.model == "offline"
    # persist=False keeps this example out of the resume files in the cache directory;
    # `longweave chat` saves after every turn and `Session.open(..., resume=True)` continues.
    session = longweave.Session.open(
        HERE / "harbour_report.md", strategy=args.strategy, model=resolve(args.model),
        cache=not offline, persist=False, max_new=96,
    )
    for question in QUESTIONS:
        answer = session.ask(question)
        turn = session.history[-1]
        print(f"Q: {question}")
        if turn.standalone != question:
            print(f"   (asked as: {turn.standalone})")
        print(f"A: {answer.text}")
        print(f"   {answer.usage.line()}")
    print(f"Conversation: {len(session.history)} turns, {session.usage.line()}")

    with tempfile.TemporaryDirectory() as folder:
        saved = session.save(Path(folder) / "conversation.md")
        heading = saved.read_text(encoding="utf-8").splitlines()[0]
        print(f"Transcript starts: {heading}")


if __name__ == "__main__":
    main()

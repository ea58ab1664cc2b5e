"""Questions about a conversation file (JSONL turns), with LIGHT's memory and with truncate.

    python examples/conversation_file.py                   # offline stand-in, a few seconds
    python examples/conversation_file.py --model local     # the bundled SmolLM2 (many minutes)
    python examples/conversation_file.py --strategies truncate

`festival_chat.jsonl` holds one `{"speaker", "text", "time"}` object per line: two people
planning a festival, with a date that changes halfway. A conversation file opens as a document
with one turn per line, so citations are the turns that were used. LIGHT builds its memory
(episodic retrieval over units of turns, the most recent units, a scratchpad of facts) once per
conversation and answers each question from it; truncate reads what fits of the conversation.

The offline stand-in (`_offline.py`) is not a language model: it answers with the sentence that
shares the most words with the question, and it uses a bag-of-words embedder (`HashEmbedder`)
in place of the bundled sentence-transformers model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from _offline import resolve

import longweave
from longweave.agents.base import get_strategy
from longweave.agents.light import LIGHT
from longweave.api import make_model
from longweave.testing import HashEmbedder

HERE = Path(__file__).parent
QUESTIONS = (
    "Which Saturday is the festival now?",
    "Who will collect the lanterns from the tide mill?",
    "How much money is left after paying the band?",
)


def strategy(name: str, offline: bool) -> Any:
    """The strategy to ask with: small LIGHT units so a short chat still spans several."""
    if name != "light":
        return get_strategy(name, max_new=96)
    light = LIGHT(unit_tokens=160, extract_max_new=256, max_new=96)
    return light.with_embedder(HashEmbedder()) if offline else light


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="offline", help="'offline', 'local', 'hf:<id>' or "
                        "'openai:<model>'")
    parser.add_argument("--strategies", default="light,truncate")
    args = parser.parse_args()

    offline = args.model == "offline"
    # One backend for every question, loaded once; a real one behind the completion cache.
    model = resolve(args.model, 4096) if offline else make_model(args.model)
    source = longweave.load_source(HERE / "festival_chat.jsonl")
    print(f"{source.name}: {len(source.meta['turns'])} turns")
    for name in args.strategies.split(","):
        chosen = strategy(name.strip(), offline)
        for question in QUESTIONS:
            answer = longweave.ask(source, question, strategy=chosen, model=model, cache=False)
            print(f"[{answer.strategy}] Q: {question}")
            print(f"[{answer.strategy}] A: {answer.text}")
            turns = ", ".join(c.text.split("] ", 1)[-1][:40] for c in answer.citations[:2])
            print(f"    cites {len(answer.citations)} span(s): {turns} · {answer.usage.line()}")


if __name__ == "__main__":
    main()

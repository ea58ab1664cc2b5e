"""Ask a question of a document from Python.

Runs anywhere with a scripted model; pass model="local" (the bundled model) or
model="openai:gpt-4o-mini" (with OPENAI_API_KEY set) for real answers.
"""

from __future__ import annotations

from pathlib import Path

import longweave
from longweave.testing import ScriptedModel

HERE = Path(__file__).parent


def main() -> None:
    model = ScriptedModel(context_window=1024)
    model.on("worker", reply="Mara Quill was the first keeper of the Gull Point light [c1].")
    model.on("manager", reply="Mara Quill [c1].")
    answer = longweave.ask(
        HERE / "harbour_report.md",
        "Who was the first keeper of the lighthouse?",
        model=model,
        cache=False,
        max_new=128,
    )
    print(answer.text)
    for citation in answer.citations:
        print(f"  chars {citation.start}-{citation.end}: {citation.text[:60]!r}...")
    print(answer.usage.line())


if __name__ == "__main__":
    main()

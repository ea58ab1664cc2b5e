"""Batch question answering over a folder of documents, with a questions file, from Python.

    python examples/batch_folder.py                  # offline stand-in model, a few seconds
    python examples/batch_folder.py --model local    # the bundled SmolLM2 (minutes on 2 cores)
    python examples/batch_folder.py --out answers.jsonl   # keep the output (rerun to resume)

`town_questions.jsonl` holds one question without a `document` (asked of every file in
`town/`) and two tied to one file each, with a `gold` field that rides along in each record's
`meta`. Each answer is appended to the output as it is done, so the second run below skips all
of them: that is how an interrupted batch resumes. The command line does the same:
`longweave batch examples/town --questions examples/town_questions.jsonl --out answers.jsonl`.

The offline stand-in (`_offline.py`) is not a language model: it answers with the sentence that
shares the most words with the question.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _offline import resolve

from longweave.batch import BatchJob, BatchRecord, run_batch
from longweave.batch_inputs import batch_items

HERE = Path(__file__).parent


def show(record: BatchRecord) -> None:
    """Called as each record is written: an application's progress hook."""
    name = Path(record.document).name
    said = record.answer if record.ok else f"ERROR {record.error_type}: {record.error}"
    gold = f"  (gold: {record.meta['gold']})" if "gold" in record.meta else ""
    print(f"{name} | {record.question} -> {said}{gold}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="offline", help="'offline', 'local', 'hf:<id>' or "
                        "'openai:<model>'")
    parser.add_argument("--strategy", default="chain-of-agents")
    parser.add_argument("--out", type=Path, help="output JSONL (default: a temporary file)")
    args = parser.parse_args()

    items = batch_items(HERE / "town", HERE / "town_questions.jsonl")
    print(f"{len(items)} questions over {len({i.document for i in items})} documents")
    offline = args.model == "offline"
    job = BatchJob(args.strategy, resolve(args.model), options={"max_new": 96},
                   cache=not offline)
    with tempfile.TemporaryDirectory() as folder:
        out = args.out or Path(folder) / "answers.jsonl"
        first = run_batch(items, out, job, concurrency=2, on_record=show)
        print(f"first run: {first.answered} answered, {first.failed} failed, "
              f"{first.usage.line()}")
        again = run_batch(items, out, job)
        print(f"second run: {again.skipped} skipped (already answered), "
              f"{again.answered} asked again")
        lines = out.read_text(encoding="utf-8").splitlines()
        print(f"{out.name}: {len(lines)} records")


if __name__ == "__main__":
    main()

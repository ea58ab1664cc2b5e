"""How prompts set documents and notes apart: XML-like tags against quote lines, side by side.

Every strategy quotes the text it shows the model (a chunk, the notes handed on, a passage)
with `longweave.llm.quoted`: the text between two lines of three double quotes. Before, the
prompts wrapped it in tags such as `<part>...</part>` and `<notes>...</notes>`. This asks the
same HotpotQA questions of the bundled local model (greedy decoding, no completion cache) with
each style, through the evaluation harness, and reports per call role how many replies hold
markup tags (`<td`, `</notes>`, ...: the model continuing the prompt as HTML) or the style's own
delimiter, and per strategy the mean F1 of the answers.

    OMP_NUM_THREADS=2 python benchmarks/delimiters.py --data ../shared/data/hotpotqa \\
        [--limit 12] [--length 4096] [--styles tags,quotes] \\
        [--strategies truncate,chain-of-agents] [--out delimiters/]

The `tags` style rewrites each quoted block of a prompt into the tag the earlier prompts used
for it, found by the label before the block ("Part 2 of 3 of the text:" -> `<part>`, "Notes from
the previous reader:" -> `<notes>`, "Document:" -> `<document>`); the labels themselves stay, so
the two styles differ only in their delimiters. Token budgets are computed on the quoted prompts
(the two differ by a few tokens). Chain-of-Agents runs with 2,048-token windows, so each
4k-token context takes several workers. Each run needs a new --out folder: the harness resumes
from an existing one, and the reply counts would then cover only the new calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longweave.llm import Message, resolve_model  # noqa: E402

BLOCK = re.compile(r'(?:^|(?<=\n))([^\n]*)\n("{3,})\n(.*?)\n\2(?=\n|$)', re.DOTALL)
MARKUP = re.compile(r"</?[a-zA-Z][\w-]*[ >/]")
LEAK = {"tags": MARKUP, "quotes": re.compile(r'"{3,}')}
# The tags of the earlier prompts, by the label now before each block (its start).
TAGS = (
    ("Part ", "part"), ("Notes from the previous reader", "notes"), ("Document", "document"),
    ("Your part of the document", "part"), ("First part", "part"), ("Second part", "part"),
    ("What you have read", "memory"), ("You reached this passage", "passage"),
    ("The last passage you read", "passage"), ("Piece ", "piece"), ("Earlier context", "context"),
    ("New passage", "passage"), ("Recent history", "history"), ("Latest exchange", "latest"),
    ("Notes", "notes"), ("Context", "context"), ("Passage", "passage"),
    ("A chunk of the text", "chunk"), ("Notebook of path", "notebook"),
)


def as_tags(text: str) -> str:
    """The prompt with each quoted block in the tag the earlier prompts used for it.

    The Chain-of-Agents manager's notes (a block after a blank line) and InfiniRetri's context
    had no label before them: `<notes>` and `<text>` as before, told apart by the prompt."""
    def tag(match: re.Match[str]) -> str:
        label, body = match.group(1), match.group(3)
        name = next((t for start, t in TAGS if label.startswith(start)), None)
        if name is None:
            name = "notes" if "condensed it into the notes below" in text else "text"
        return f"{label}\n<{name}>\n{body}\n</{name}>"

    return BLOCK.sub(tag, text)


class Styled:
    """The model behind a prompt style: rewrites prompts, keeps every reply by role."""

    def __init__(self, inner: Any, style: str) -> None:
        self.inner, self.style, self.replies = inner, style, []
        self.name, self.context_window = inner.name, inner.context_window

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def complete(self, messages: Any, **options: Any) -> Any:
        if self.style == "tags":
            messages = [Message(m.role, as_tags(m.content)) for m in messages]
        completion = await self.inner.complete(messages, **options)
        self.replies.append((options.get("role") or "?", completion.text))
        return completion


async def run_style(args: argparse.Namespace, inner: Any, style: str) -> dict[str, Any]:
    from longweave.evals.harness import arun_eval

    model = Styled(inner, style)
    strategies = args.strategies.split(",")
    options: dict[str, Any] = {"max_new": args.max_new}
    if "chain-of-agents" in strategies:
        options["chain-of-agents.window"] = args.coa_window
    results = await arun_eval(args.data, out=Path(args.out) / style, strategies=strategies,
                              model=model, limit=args.limit, lengths=(args.length,),
                              concurrency=1, options=options, cache=False)
    roles: dict[str, list[int]] = {}
    for role, text in model.replies:
        counts = roles.setdefault(role, [0, 0, 0])
        counts[0] += 1
        counts[1] += bool(MARKUP.search(text))
        counts[2] += bool(LEAK[style].search(text))
    scores: dict[str, list[float]] = {}
    for case in results.results:
        scores.setdefault(case.strategy, []).append(case.score)
    return {"style": style, "roles": roles,
            "f1": {s: sum(v) / len(v) for s, v in scores.items()},
            "cases": {s: len(v) for s, v in scores.items()}}


def table(rows: list[dict[str, Any]]) -> str:
    roles = sorted({r for row in rows for r in row["roles"]})
    strategies = sorted({s for row in rows for s in row["f1"]})
    head = (["style"] + [f"{r}: markup" for r in roles] + [f"{r}: own delimiter" for r in roles]
            + [f"{s} F1" for s in strategies])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["style"]]
        for k in (1, 2):
            cells += [f"{row['roles'][r][k]}/{row['roles'][r][0]}" if r in row["roles"] else "-"
                      for r in roles]
        cells += [f"{row['f1'][s]:.3f} ({row['cases'][s]})" if s in row["f1"] else "-"
                  for s in strategies]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the HotpotQA file or folder")
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--styles", default="tags,quotes")
    parser.add_argument("--strategies", default="truncate,chain-of-agents")
    parser.add_argument("--max-new", type=int, default=64)
    parser.add_argument("--coa-window", type=int, default=2048)
    parser.add_argument("--model", default="local")
    parser.add_argument("--out", default="delimiters")
    args = parser.parse_args()
    styles = args.styles.split(",")
    if unknown := set(styles) - set(LEAK):
        parser.error(f"unknown style(s) {sorted(unknown)}; choose from {sorted(LEAK)}")
    taken = [s for s in styles if (Path(args.out) / s).exists()]
    if taken:
        parser.error(f"{args.out} already holds runs of {taken}: choose a new --out")
    inner = resolve_model(args.model)
    rows = []
    for style in styles:
        rows.append(asyncio.run(run_style(args, inner, style)))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()

"""How the reply's shape is shown to the model: the JSON schema against the sketch, side by side.

Every structured call ends its prompt with an instruction that says what JSON to write. This
runs the same structured calls of the bundled local model (constrained decoding on, as in every
strategy run) twice per passage: once with the JSON schema in the instruction (titles dropped:
what longweave sent before the sketch) and once with `structured.json_instructions`, the sketch
of the shape with types and limits where the values go. It reports, per call kind and variant:
replies that validated, list items kept (a cut reply keeps the items that closed before the
cut, as the strategies do), how many of those items hold words of either instruction in their
values (`$defs`, `maxLength`, `properties`, `string`, `at most 60`, the schema's field names
such as `key_elements`, ...: the model copying the instruction instead of reading the passage)
and the instruction's tokens.

    OMP_NUM_THREADS=1 python benchmarks/json_instructions.py \\
        --data ../shared/data/leval/quality.jsonl [--row 8] [--pieces 4] \\
        [--variants schema,sketch] [--out rows.jsonl | --table-from rows.jsonl]

The passages are the first --pieces 384-token pieces of examples/harbour_report.md and of the
L-Eval row's document. Greedy decoding, so a rerun gives the same replies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import longweave.structured as structured  # noqa: E402
from longweave.errors import ParseError  # noqa: E402
from longweave.llm import Message  # noqa: E402

INSTRUCTION_WORDS = (  # of the schema, then of the sketch
    r"\$defs|\$ref|#/|maxLength|maxItems|minItems|additionalProperties|properties|\btype\b|"
    r"_KV|AtomicFact|ScoredNode|\bstring\b|\binteger\b|\bcharacters\b|at most \d|true\|false")
PIECE_TOKENS = 384


def schema_instructions(schema: type[BaseModel]) -> str:
    """The instruction as it was before the sketch: the JSON schema, `title` keys dropped."""
    def drop(node: Any) -> Any:
        if isinstance(node, list):
            return [drop(item) for item in node]
        if not isinstance(node, dict):
            return node
        return {k: ({n: drop(s) for n, s in v.items()} if k in ("properties", "$defs")
                    and isinstance(v, dict) else drop(v))
                for k, v in node.items() if not (k == "title" and isinstance(v, str))}

    text = json.dumps(drop(schema.model_json_schema()), separators=(",", ":"), ensure_ascii=False)
    return ("Answer with exactly one JSON object and nothing else: no prose, no code fences. "
            f"It must match this JSON schema: {text}")


VARIANTS: dict[str, Callable[[type[BaseModel]], str]] = {
    "schema": schema_instructions,
    "sketch": structured.json_instructions,
}


def use(instructions: Callable[[type[BaseModel]], str]) -> None:
    """Make every caller of `json_instructions` (the backends, PRISM's prompt) use this one."""
    from longweave.agents import prism_prompts

    structured.json_instructions = instructions
    prism_prompts.json_instructions = instructions


def jobs(question: str) -> list[tuple[str, Callable[[str], list[Message]], type[BaseModel], int]]:
    """(name, messages for a passage, reply schema, token cap): the list-writing calls, with the
    strategies' default schema settings and the caps of benchmarks/estimate.py."""
    from longweave.agents import graph_reader_prompts as gp
    from longweave.agents import light_prompts as lp
    from longweave.agents import prism_prompts as pp
    from longweave.agents.graph_reader import GraphReader
    from longweave.agents.light import LIGHT
    from longweave.agents.prism import Prism
    from longweave.memory.structured_memory import from_model

    g, li, p = GraphReader(), LIGHT(), Prism()
    batch = pp.revision_schema(from_model(pp.QAMemory), p._ops(), p.value_chars, p.list_items,
                               p.max_revisions)

    def prism(piece: str) -> list[Message]:
        # Built per call so that the instruction of the variant under test is in the prefix.
        prefix = pp.static_prefix("Answer the question about the text.", question,
                                  from_model(pp.QAMemory), p._ops(), "in_place", batch)
        return pp.step_messages(prefix, pp.memory_part("{}", "in_place"), 0, 1, piece)

    return [
        ("LIGHT key/value index", lambda t: lp.kv_messages("", t), lp.kv_schema(li.kv_items), 128),
        ("LIGHT facts", lambda t: lp.facts_messages("", t), lp.facts_schema(li.fact_items), 128),
        ("GraphReader extraction", lambda t: gp.extraction_messages(t, g.max_facts),
         gp.extraction_schema(g.max_facts, g.fact_chars, g.key_chars, g.max_keys), 192),
        ("PRISM revisions (QA memory)", prism, batch, 128),
    ]


def pieces(text: str, tokenizer: Any, n: int) -> list[str]:
    starts = [*tokenizer.token_starts(text), len(text)]
    cuts = list(range(0, len(starts) - 1, PIECE_TOKENS))[:n]
    return [text[starts[c]:starts[min(c + PIECE_TOKENS, len(starts) - 1)]] for c in cuts]


async def call(llm: Any, messages: list[Message], schema: type[BaseModel], cap: int,
               ) -> tuple[bool, str]:
    """(validated, raw reply)."""
    try:
        reply = await llm.complete(messages, max_tokens=cap, schema=schema, role="bench")
    except ParseError as exc:
        return False, exc.raw or ""
    return True, reply.text


def items(raw: str, valid: bool, schema: type[BaseModel]) -> list[Any]:
    """The list items a strategy gets from the reply: all of a valid one, else the whole items
    that closed before the cut (`keep_cut`)."""
    field = next(iter(schema.model_fields))
    if valid:
        return list(getattr(structured.parse_structured(raw, schema), field))
    return structured.whole_items(raw, schema, field)


def copied_words(schema: type[BaseModel]) -> re.Pattern[str]:
    """Words of either instruction, and the schema's own field names with an underscore (a
    value such as "key_elements" copies the instruction, a natural word may not)."""
    fields = {name for name in re.findall(r'"([A-Za-z_]+)"', json.dumps(
        schema.model_json_schema())) if "_" in name.strip("_")}
    names = "|".join(rf"\b{re.escape(name)}\b" for name in sorted(fields))
    return re.compile(INSTRUCTION_WORDS + (f"|{names}" if names else ""))


def values(item: Any) -> list[str]:
    """The strings inside an item, keys left out (they are the schema's field names)."""
    if isinstance(item, BaseModel):
        item = item.model_dump()
    if isinstance(item, dict):
        return [text for value in item.values() for text in values(value)]
    if isinstance(item, list | tuple):
        return [text for value in item for text in values(value)]
    return [item] if isinstance(item, str) else []


def table(replies: list[dict[str, Any]], variants: list[str]) -> str:
    schemas = {name: schema for name, _, schema, _ in jobs("")}
    lines = ["| call | variant | replies | valid | items kept | items with instruction words | "
             "instruction tokens |", "|---" * 7 + "|"]
    for name, schema in schemas.items():
        words = copied_words(schema)
        for variant in variants:
            rows = [r for r in replies if r["call"] == name and r["variant"] == variant]
            if not rows:
                continue
            kept = [item for r in rows for item in items(r["reply"], r["valid"], schema)]
            dirty = sum(any(words.search(text) for text in values(item)) for item in kept)
            lines.append(
                f"| {name} | {variant} | {len(rows)} | {sum(r['valid'] for r in rows)} | "
                f"{len(kept)} | {dirty} | {rows[0]['instruction_tokens']} |")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="An L-Eval .jsonl task file.")
    parser.add_argument("--row", type=int, default=8, help="The L-Eval row to use.")
    parser.add_argument("--pieces", type=int, default=4, help="Passages per document.")
    parser.add_argument("--variants", default="schema,sketch",
                        help=f"Comma-separated, from {', '.join(VARIANTS)}.")
    parser.add_argument("--out", help="Also write every reply here (JSON lines).")
    parser.add_argument("--table-from", metavar="ROWS",
                        help="Print the table of replies saved with --out instead of running.")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if args.table_from:
        saved = [json.loads(line) for line in
                 Path(args.table_from).read_text(encoding="utf-8").splitlines() if line]
        print(table(saved, variants))
        return
    from longweave.local_models import LocalLLM

    row = json.loads(Path(args.data).read_text(encoding="utf-8").splitlines()[args.row])
    docs = [("harbour_report.md", (ROOT / "examples" / "harbour_report.md").read_text(
        encoding="utf-8"), "Who was the first keeper of the lighthouse?"),
        (f"{Path(args.data).stem}[{args.row}]", row["input"],
         row["instructions"][0].split("\n")[0])]
    llm = LocalLLM.bundled()
    llm.load()
    started = time.perf_counter()
    replies: list[dict[str, Any]] = []
    for doc, text, question in docs:
        calls = jobs(question)
        for piece_no, piece in enumerate(pieces(text, llm.tokenizer, args.pieces)):
            for name, messages, schema, cap in calls:
                for variant in variants:
                    use(VARIANTS[variant])
                    try:
                        ok, raw = await call(llm, messages(piece), schema, cap)
                    finally:
                        use(VARIANTS["sketch"])
                    replies.append({
                        "document": doc, "piece": piece_no, "call": name, "variant": variant,
                        "valid": ok, "instruction_tokens": llm.count_tokens(
                            VARIANTS[variant](schema)), "reply": raw})
                    print(json.dumps(replies[-1]), file=sys.stderr, flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in replies),
                                  encoding="utf-8")
    print(table(replies, variants))
    print(f"\n{len(replies)} calls in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    asyncio.run(main())

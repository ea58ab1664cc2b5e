"""The pre-run estimate against real runs of the bundled local model, strategy by strategy.

For each document and strategy: `longweave.estimate` (no model call), then the real run with
SmolLM2-135M on CPU (no completion cache, no artifact cache, so every build is paid), and the
ratio estimate / actual for calls, prompt, completion and all tokens, plus whether the actual
run fell inside the estimate's low-high bounds. Windows and generation caps are kept small so
the whole run takes minutes on two cores; the larger documents get fewer strategies.

    python benchmarks/estimate.py                                   # the examples/ documents
    python benchmarks/estimate.py --data ../shared/data/leval/quality.jsonl --row 8
    python benchmarks/estimate.py --only harbour --strategies rag truncate
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from longweave.agents.base import get_strategy  # noqa: E402
from longweave.api import load_source  # noqa: E402
from longweave.estimate import BUNDLED, Assumptions, Estimate, aestimate  # noqa: E402
from longweave.runner import arun  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Small windows and caps: every strategy runs, and the run stays affordable on CPU.
SETTINGS: dict[str, dict[str, Any]] = {
    "chain-of-agents": {"window": 2048, "max_new": 64},
    "long-agent": {"chunk_size": 512, "max_new": 64, "max_rounds": 2, "window": 4096,
                   "instruction_chars": 200, "answer_chars": 200},
    "graph-reader": {"window": 2048, "chunk_tokens": 512, "extract_max_new": 192, "n_init": 2,
                     "max_steps_per_path": 2, "plan_max_new": 48, "select_max_new": 96,
                     "step_max_new": 128, "answer_max_new": 96, "notebook_chars": 300,
                     "analysis_chars": 200},
    "mem-walker": {"window": 2048, "segment_tokens": 384, "summary_max_new": 48,
                   "nav_max_new": 96, "answer_max_new": 48, "reasoning_chars": 160},
    "prism": {"window": 4096, "chunk_tokens": 1024, "step_max_new": 128, "answer_max_new": 64},
    "light": {"window": 2048, "unit_tokens": 384, "extract_max_new": 128, "max_new": 48,
              "filter_cap": 3},
    "infini-retri": {"window": 512, "topk": 64, "max_new": 32},
    "rag": {"k": 4, "max_new": 32},
    "truncate": {"window": 2048, "max_new": 32},
}
ALL = list(SETTINGS)
LARGE = ["truncate", "rag", "infini-retri", "chain-of-agents"]


class Counting:
    """The model, counting every call of each role and its tokens, including the calls whose
    reply failed validation (strategies other than LongAgent leave those out of `Usage`)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.roles: dict[str, int] = {}
        self.prompt_tokens = self.completion_tokens = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def complete(self, messages: Any, **kwargs: Any) -> Any:
        from longweave.errors import ParseError
        from longweave.structured import json_instructions

        role = kwargs.get("role", "")
        self.roles[role] = self.roles.get(role, 0) + 1
        try:
            reply = await self.inner.complete(messages, **kwargs)
        except ParseError as exc:  # the model ran: count what it read and wrote
            schema = kwargs.get("schema")
            extra = json_instructions(schema) if schema is not None else ""
            self.prompt_tokens += (self.inner.count_prompt_tokens(messages)
                                   + self.inner.count_tokens("\n\n" + extra))
            self.completion_tokens += self.inner.count_tokens(exc.raw or "") + 1
            raise
        self.prompt_tokens += reply.usage.prompt_tokens
        self.completion_tokens += reply.usage.completion_tokens
        return reply


@dataclass
class Case:
    name: str
    source: Any
    question: str
    strategies: list[str] = field(default_factory=lambda: list(ALL))


def cases(args: argparse.Namespace) -> list[Case]:
    out = [
        Case("harbour_report.md", ROOT / "examples" / "harbour_report.md",
             "Who was the first keeper of the lighthouse?"),
        Case("moon_stories.txt", ROOT / "examples" / "moon_stories.txt",
             "Why did the very young man not want to go to Venus?", list(LARGE)),
    ]
    if args.data:
        path = Path(args.data)
        if path.suffix == ".jsonl":  # an L-Eval task file: one row, its first question
            row = json.loads(path.read_text(encoding="utf-8").splitlines()[args.row])
            question = row["instructions"][0].split("\n")[0]
            out.append(Case(f"{path.stem}[{args.row}]", row["input"], question,
                            ["truncate", "rag", "chain-of-agents", "mem-walker"]))
        else:
            out.append(Case(path.name, path, args.question, list(LARGE)))
    if args.only:
        out = [c for c in out if args.only in c.name]
    if args.strategies:
        for c in out:
            c.strategies = [s for s in args.strategies if s in SETTINGS]
    return out


def ratio(estimated: int, actual: int) -> str:
    return f"{estimated / actual:.2f}" if actual else "-"


async def measure(case: Case, strategy: str, llm: Any) -> dict[str, Any]:
    """Estimate, then run: one row with (estimate, actual) pairs."""
    doc = load_source(case.source)
    options = SETTINGS[strategy]
    est = await aestimate(doc, strategy, llm, case.question, **options)
    started = time.perf_counter()
    counting = Counting(llm)
    answer = await arun(get_strategy(strategy, **options), doc, case.question, counting)
    u, called = answer.usage, counting
    if strategy == "infini-retri":  # scoring forwards never reach `complete`: usage has them
        called.roles["scorer"] = u.calls - sum(called.roles.values())
        called.prompt_tokens, called.completion_tokens = u.prompt_tokens, u.completion_tokens
    calls = sum(called.roles.values())
    row = {"document": case.name, "strategy": strategy, "calls": (0, calls),
           "prompt": (0, called.prompt_tokens), "completion": (0, called.completion_tokens),
           "tokens": (0, called.prompt_tokens + called.completion_tokens),
           "usage": [u.calls, u.prompt_tokens, u.completion_tokens],
           "roles": {r: [0, n] for r, n in called.roles.items()},
           "seconds": time.perf_counter() - started}
    return with_estimate(row, est)


def with_estimate(row: dict[str, Any], est: Estimate) -> dict[str, Any]:
    """The row with the estimate's side (and the bounds check) filled in from `est`."""
    actual = {k: row[k][1] for k in ("calls", "prompt", "completion")}
    inside = all(getattr(est.low, f) <= actual[k] <= getattr(est.high, f)
                 for k, f in (("calls", "calls"), ("prompt", "prompt_tokens"),
                              ("completion", "completion_tokens")))
    seen = row.get("roles", {})
    roles = {r: [c.calls, seen.get(r, [0, 0])[1]] for r, c in est.roles.items()}
    roles |= {r: [0, v[1]] for r, v in seen.items() if r not in roles}
    return row | {
        "chunks": est.n_chunks, "calls": (est.calls, actual["calls"]),
        "prompt": (est.prompt_tokens, actual["prompt"]),
        "completion": (est.completion_tokens, actual["completion"]),
        "tokens": (est.tokens, actual["prompt"] + actual["completion"]), "inside": inside,
        "range": (est.low.calls, est.high.calls), "roles": roles,
    }


async def reestimate(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict]:
    """Rows of an earlier run with their estimates made again by the current code."""
    from longweave.local_models import LocalLLM

    llm = LocalLLM.bundled()  # the tokenizer only: estimating loads no weights
    args.only, args.strategies = None, None
    by_name = {c.name: c for c in cases(args)}
    base = {} if args.generic else dict(BUNDLED)
    changed = dict(kv.split("=", 1) for kv in args.assume or [])
    extra = {"assumptions": Assumptions(**{**base, **changed})} if args.generic or changed else {}
    out = []
    for row in rows:
        case = by_name[row["document"]]
        est = await aestimate(load_source(case.source), row["strategy"], llm, case.question,
                              **extra, **SETTINGS[row["strategy"]])
        out.append(with_estimate(row, est))
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| document | strategy | chunks | calls est/actual (ratio) [low-high] | in Usage | "
             "prompt tokens est/actual (ratio) | completion est/actual (ratio) | all tokens "
             "ratio | in bounds | run s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e, a = r["calls"]
        low, high = r["range"]
        cells = [r["document"], r["strategy"], str(r["chunks"]),
                 f"{e}/{a} ({ratio(e, a)}) [{low}-{high}]",
                 str(r["usage"][0]) if r.get("usage") else str(a)]
        for key in ("prompt", "completion"):
            e, a = r[key]
            cells.append(f"{e:,}/{a:,} ({ratio(e, a)})")
        cells += [ratio(*r["tokens"]), "yes" if r["inside"] else "no", f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    def within(key: str) -> int:
        return sum(1 for r in rows if r[key][1] and abs(r[key][0] / r[key][1] - 1) <= 0.25)

    n = len(rows)
    return (f"Within 25% of actual: calls {within('calls')}/{n}, prompt tokens "
            f"{within('prompt')}/{n}, completion tokens {within('completion')}/{n}, all tokens "
            f"{within('tokens')}/{n}; actual inside the low-high bounds: "
            f"{sum(r['inside'] for r in rows)}/{n}.")


def pooled(rows: list[dict[str, Any]]) -> str:
    """Per strategy, the estimates and actual runs summed over its documents: what a batch
    estimate is held to (one document's decision-dependent run can land on either side)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["strategy"], []).append(r)
    lines = ["| strategy | documents | calls est/actual (ratio) | prompt tokens est/actual (ratio) "
             "| completion est/actual (ratio) | all tokens ratio |", "|---|---|---|---|---|---|"]
    sums: dict[str, list[int]] = {}
    for strategy in [s for s in SETTINGS if s in by]:
        group = by[strategy]
        cells = [strategy, str(len(group))]
        for key in ("calls", "prompt", "completion", "tokens"):
            e, a = (sum(r[key][i] for r in group) for i in (0, 1))
            sums.setdefault(key, []).append(int(a > 0 and abs(e / a - 1) <= 0.25))
            cells.append(f"{e:,}/{a:,} ({ratio(e, a)})" if key != "tokens" else ratio(e, a))
        lines.append("| " + " | ".join(cells) + " |")
    n = len(sums.get("calls", []))
    counts = ", ".join(f"{label} {sum(sums[key])}/{n}" for key, label in (
        ("calls", "calls"), ("prompt", "prompt tokens"), ("completion", "completion tokens"),
        ("tokens", "all tokens")))
    return "\n".join(lines) + f"\n\nPooled by strategy, within 25% of actual: {counts}."


def piloted(rows: list[dict[str, Any]]) -> str:
    """Held-out check of a pilot: each run's estimate scaled by its strategy's other documents
    as the pilot (actual / estimated summed over them, per quantity, as `Estimate.calibrated`
    scales; without its clamp to the bounds, which these rows do not hold), against its actual."""
    keys = ("calls", "prompt", "completion", "tokens")
    lines = ["| document | strategy | pilot documents | " + " | ".join(
        f"{k} ratio before -> after" for k in keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    near = {k: [0, 0] for k in keys}  # within 25%: before, after
    n = 0
    for r in rows:
        others = [o for o in rows if o["strategy"] == r["strategy"] and o is not r]
        if not others:
            continue
        n += 1
        cells = [r["document"], r["strategy"], str(len(others))]
        for k in keys:
            e, a = r[k]
            pe, pa = sum(o[k][0] for o in others), sum(o[k][1] for o in others)
            fixed = e * (pa / pe) if pe and pa else e
            for j, value in enumerate((e, fixed)):
                near[k][j] += int(a > 0 and abs(value / a - 1) <= 0.25)
            cells.append(f"{ratio(e, a)} -> {fixed / a:.2f}" if a else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if not n:
        return ""
    counts = "; ".join(f"{k} {near[k][0]}/{n} -> {near[k][1]}/{n}" for k in keys)
    return ("\n".join(lines) + f"\n\nWithin 25% of actual, before -> after the pilot "
            f"correction: {counts}.")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="An L-Eval .jsonl task file, or a text document.")
    parser.add_argument("--row", type=int, default=0, help="The L-Eval row to use.")
    parser.add_argument("--question", default="What is this text about?",
                        help="The question for a --data text document.")
    parser.add_argument("--only", help="Only documents whose name contains this.")
    parser.add_argument("--strategies", nargs="*", help="Only these strategies.")
    parser.add_argument("--out", help="Also write the markdown table here.")
    parser.add_argument("--table-from", nargs="+", metavar="LOG",
                        help="Print the table of earlier runs' JSON-lines logs (each row is "
                        "printed to stderr as it completes) instead of running; where a "
                        "document and strategy ran more than once, the latest row counts "
                        "(logs in the order given, oldest first).")
    parser.add_argument("--reestimate", action="store_true",
                        help="With --table-from: make the estimates again with the current code.")
    parser.add_argument("--assume", action="append", metavar="FIELD=VALUE",
                        help="With --reestimate: change one field of the assumptions "
                        "(repeatable), e.g. --assume json_fill=0.8.")
    parser.add_argument("--generic", action="store_true",
                        help="With --reestimate: use the generic `Assumptions()` instead of the "
                        "ones fitted to the bundled model (as for a model nobody has measured; "
                        "the pilot table then shows what a pilot run corrects).")
    args = parser.parse_args()
    if (args.assume or args.generic) and not args.reestimate:
        parser.error("--assume and --generic change the estimates: use them with --reestimate")
    if args.table_from:
        lines = [line for path in args.table_from
                 for line in Path(path).read_text(encoding="utf-8").splitlines()]
        found = {}
        for row in (json.loads(line) for line in lines if line.startswith("{")):
            found[(row["document"], row["strategy"])] = row  # the latest run of each
        order = list(SETTINGS)
        rows = sorted(found.values(), key=lambda r: (r["document"], order.index(r["strategy"])))
        if args.reestimate:
            rows = await reestimate(rows, args)
        print(f"{table(rows)}\n\n{summary(rows)}\n\n{pooled(rows)}\n\n{piloted(rows)}")
        return
    from longweave.local_models import LocalLLM

    llm = LocalLLM.bundled()
    started = time.perf_counter()
    llm.load()
    load_s = time.perf_counter() - started
    rows = []
    for case in cases(args):
        for strategy in case.strategies:
            row = await measure(case, strategy, llm)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    text = (f"{table(rows)}\n\n{summary(rows)}\n\n{pooled(rows)}\n\nModel load {load_s:.0f} s; "
            f"whole run {time.perf_counter() - started:.0f} s.")
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())

"""Needle in a haystack on Paul Graham's essays: InfiniRetri beside chain-of-agents, RAG, truncate.

Every case is a document of a given length in the bundled model's tokens with the upstream
needle at a given depth (`longweave.evals.needle`); each strategy answers it with the bundled
SmolLM2-135M-Instruct in the same run. Reported per case: whether the needle sentence is among
what the strategy kept or read (its citations cover the needle), whether the answer contains the
needle's value (and the share of its content words it mentions), calls, tokens and seconds.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/niah.py DATA [--lengths 4096 ... 65536]
        [--depths 0 25 50 75 100] [--runs infini-retri infini-retri:layer=20 truncate rag]
        [--dtype bfloat16] [--threads 1] [--plot niah.png] [--json niah.json]
        [--overhead-samples 6]

DATA is the benchmark data folder (`../shared/data` beside a checkout). The haystack before
the needle is the same text in every case, so identical scoring forwards and answer calls are
run once and reused; each case is still charged the full time of every forward and call it made.

At the end, `--overhead-samples` of InfiniRetri's scoring windows are timed again both ways: the
attention extraction (the forward up to the chosen layer, then that layer's question rows) and a
plain prefill of the whole model with its default (sdpa) attention on the same tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longweave.agents.base import get_strategy
from longweave.agents.infini_retri_sentences import split_sentences
from longweave.documents import Document
from longweave.evals.needle import Needle, NeedleCase, make_case, read_haystack
from longweave.llm import Message
from longweave.runner import arun


class MemoScorer:
    """An AttentionScorer that runs each distinct forward once and charges its first time."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.context_window = inner.context_window
        self.memo: dict[str, tuple[np.ndarray, float]] = {}
        self.charged = self.actual = 0.0
        self.computed = self.reused = 0
        self.windows: list[tuple[tuple[int, ...], int, int]] = []  # distinct forwards, in order

    def render(self, messages: Sequence[Message]) -> str:
        return self.inner.render(messages)

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)

    def attention(self, ids: Sequence[int], start: int, *, layer: int = -1) -> np.ndarray:
        started = time.perf_counter()
        key = hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes() + f"|{start}|{layer}"
                           .encode()).hexdigest()
        if key in self.memo:
            rows, seconds = self.memo[key]
            self.reused += 1
        else:
            rows = self.inner.attention(ids, start, layer=layer)
            seconds = time.perf_counter() - started
            self.memo[key] = (rows, seconds)
            self.windows.append((tuple(ids), start, layer))
            self.computed += 1
        self.charged += seconds
        self.actual += time.perf_counter() - started
        return rows


class MemoLLM:
    """An LLM whose identical calls are answered once; a replay keeps the original usage."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.memo: dict[str, Any] = {}
        self.computed = self.reused = 0

    def __getattr__(self, attr: str) -> Any:
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    async def complete(self, messages: Sequence[Message], *, max_tokens: int,
                       temperature: float = 0.0, schema: Any = None, role: str = "") -> Any:
        key = json.dumps([[m.role, m.content] for m in messages] + [max_tokens, temperature,
                                                                     repr(schema)])
        if key not in self.memo:
            self.memo[key] = await self.inner.complete(
                messages, max_tokens=max_tokens, temperature=temperature, schema=schema, role=role
            )
            self.computed += 1
        else:
            self.reused += 1
        return self.memo[key]


def needle_from(data: Path) -> Needle:
    spec = json.loads((data / "niah_pg_essays" / "needles.json").read_text())["single_needle"]
    return Needle(spec["needle"].strip(), spec["retrieval_question"], (spec["answer"],))


def needle_sentence(case: NeedleCase, encode: Any, window: int) -> int | None:
    """Index of the needle among InfiniRetri's sentences of the case (as its trace numbers them)."""
    for s in split_sentences(case.document, encode, window):
        if s.start <= case.needle_start and case.needle_end <= s.end:
            return s.index
    return None


@dataclass(frozen=True)
class Run:
    """One column of the benchmark: a strategy with options, on cases up to `max_length`."""

    label: str
    strategy: str
    options: dict[str, Any]
    max_length: int | None = None


def parse_run(spec: str, max_new: int) -> Run:
    """`NAME[:KEY=VALUE,...]`; the key `max_length` limits the run to cases up to that length."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    max_length = options.pop("max_length", None)
    label = ",".join(p for p in rest.split(",") if p and not p.startswith("max_length="))
    label = f"{name}:{label}" if label else name
    if name != "infini-retri":  # the baselines answer as briefly as InfiniRetri does
        options.setdefault("max_new", max_new)
    return Run(label, name, options, max_length)


async def run_case(run: Run, target: int, case: NeedleCase, llm: MemoLLM, scorer: MemoScorer
                   ) -> dict[str, Any]:
    options = dict(run.options)
    if run.strategy == "infini-retri":
        options["scorer"] = scorer
    strategy = get_strategy(run.strategy, **options)
    doc = Document.from_text(case.document, source=f"niah-{case.tokens}-{case.depth:g}")
    before = (scorer.charged, scorer.actual, scorer.reused, llm.reused)
    started = time.perf_counter()
    answer = await arun(strategy, doc, case.question, llm)
    wall = time.perf_counter() - started
    # Replayed forwards cost ~0 s here: charge the time each took when it first ran.
    seconds = answer.usage.seconds + (scorer.charged - before[0]) - (scorer.actual - before[1])
    row: dict[str, Any] = {
        "strategy": run.label, "length": target, "tokens": case.tokens, "depth": case.depth,
        "reached_depth": round(case.reached_depth, 2),
        "retained": case.retained_by((c.start, c.end) for c in answer.citations),
        "answer_has_value": case.contains_answer(answer.text),
        "answer_recall": round(case.answer_recall(answer.text), 3),
        "answer": answer.text, "calls": answer.usage.calls,
        "prompt_tokens": answer.usage.prompt_tokens,
        "completion_tokens": answer.usage.completion_tokens,
        "seconds": round(seconds, 2), "s_per_1k": round(seconds / case.tokens * 1000, 3),
        "wall": round(wall, 2),
        "reused": (scorer.reused - before[2]) + (llm.reused - before[3]),
    }
    if run.strategy == "infini-retri":
        window = strategy.window  # type: ignore[attr-defined]
        index = needle_sentence(case, scorer.encode, window)
        scored = [s for s in answer.steps if s.role == "scorer"]
        held = [index in s.detail["kept"] for s in scored]
        first = held.index(True) if True in held else None
        row["kept_when_read"] = first is not None
        # The scoring step (window) at which re-scoring first dropped it after keeping it.
        row["dropped_at"] = next((t for t in range(first, len(held)) if not held[t]), None) \
            if first is not None else None
        row["windows"] = len(scored)
        row["evicted"] = any(index in s.detail["evicted"] for s in scored)
        row["final_cache_tokens"] = scored[-1].detail["cache_tokens"] if scored else 0
        row["max_prompt_tokens"] = max((s.detail["prompt_tokens"] for s in scored), default=0)
    return row


def attention_overhead(local: Any, scorer: MemoScorer, samples: int) -> dict[str, Any]:
    """Time InfiniRetri's attention extraction against a plain sdpa prefill of the same windows.

    For `samples` of the run's distinct scoring forwards (spread over the run, longest included),
    each is timed both ways back to back, twice in alternating order; each side keeps its faster
    time. The ratio is the summed extraction time over the summed prefill time.
    """
    import torch

    from longweave.local_models.attention import question_attention

    model = local.hf_model()
    windows = scorer.windows
    if not windows:
        return {}
    step = max(1, len(windows) // samples)
    picked = windows[::step][:samples]
    longest = max(windows, key=lambda w: len(w[0]))
    picked = picked if longest in picked else [*picked[:-1], longest]

    def prefill(ids: tuple[int, ...]) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            model.model(input_ids=torch.tensor([list(ids)]), use_cache=False)
        return time.perf_counter() - started

    def extract(ids: tuple[int, ...], start: int, layer: int) -> float:
        started = time.perf_counter()
        question_attention(model, ids, start, layer=layer)
        return time.perf_counter() - started

    extraction = plain = 0.0
    tokens = 0
    for ids, start, layer in picked:
        first = extract(ids, start, layer), prefill(ids)
        second = prefill(ids), extract(ids, start, layer)
        extraction += min(first[0], second[1])
        plain += min(first[1], second[0])
        tokens += len(ids)
    return {"windows": len(picked), "tokens": tokens, "extraction_s": round(extraction, 2),
            "sdpa_prefill_s": round(plain, 2), "ratio": round(extraction / plain, 3),
            "attn_implementation": model.config._attn_implementation}


def mark(flag: bool) -> str:
    return "yes" if flag else "no"


def tables(rows: list[dict[str, Any]], labels: list[str]) -> str:
    by = {(r["strategy"], r["length"], r["depth"]): r for r in rows}
    lines = ["| length | depth | " + " | ".join(f"{n}: retained / answer (recall)" for n in labels)
             + " |", "|---|---|" + "---|" * len(labels)]
    for length, depth in sorted({(r["length"], r["depth"]) for r in rows}):
        cells = []
        for n in labels:
            r = by.get((n, length, depth))
            cells.append("–" if r is None else f"{mark(r['retained'])} / "
                         f"{mark(r['answer_has_value'])} ({r['answer_recall']:.2f})")
        lines.append(f"| {length:,} | {depth:g}% | " + " | ".join(cells) + " |")
    lines += ["", "| run | length | retained | answer has value | answer recall | calls | "
              "prompt tokens | s per case | s per 1K tokens |", "|---" * 9 + "|"]
    for n in labels:
        for length in sorted({r["length"] for r in rows}):
            group = [r for r in rows if r["strategy"] == n and r["length"] == length]
            if not group:
                continue
            k = len(group)
            lines.append(
                f"| {n} | {length:,} | {sum(r['retained'] for r in group)}/{k} | "
                f"{sum(r['answer_has_value'] for r in group)}/{k} | "
                f"{np.mean([r['answer_recall'] for r in group]):.2f} | "
                f"{np.mean([r['calls'] for r in group]):.0f} | "
                f"{np.mean([r['prompt_tokens'] for r in group]):,.0f} | "
                f"{np.mean([r['seconds'] for r in group]):.0f} | "
                f"{np.mean([r['s_per_1k'] for r in group]):.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], labels: list[str], path: Path) -> bool:
    """One grid per run, lengths by depths: green where the needle was kept, red where lost;
    each cell shows the answer's recall of the needle's value (* when it contains it whole)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    by = {(r["strategy"], r["length"], r["depth"]): r for r in rows}
    fig, axes = plt.subplots(1, len(labels), figsize=(3.4 * len(labels), 0.7 * len(lengths) + 1.8),
                             squeeze=False)
    for ax, label in zip(axes[0], labels, strict=True):
        grid = np.full((len(lengths), len(depths)), np.nan)
        for i, length in enumerate(lengths):
            for j, depth in enumerate(depths):
                r = by.get((label, length, depth))
                if r is None:
                    continue
                grid[i, j] = float(r["retained"])
                ax.text(j, i, f"{r['answer_recall']:.2f}{'*' if r['answer_has_value'] else ''}",
                        ha="center", va="center", fontsize=8)
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(depths)), [f"{d:g}%" for d in depths])
        ax.set_yticks(range(len(lengths)), [f"{n / 1024:g}K" for n in lengths])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("needle depth")
    fig.suptitle("needle kept (green) or lost (red); text: answer recall of the value", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def render(rows: list[dict[str, Any]], labels: list[str], plot_path: Path | None) -> None:
    print("\n" + tables(rows, labels) + "\n")
    if plot_path and plot(rows, labels, plot_path):
        print(f"plot: {plot_path}")


async def main_async(args: argparse.Namespace) -> None:
    from longweave.local_models import LocalLLM
    from longweave.local_models.attention import LocalAttentionScorer

    started = time.perf_counter()
    load = os.getloadavg()[0]
    local = LocalLLM.bundled(dtype=args.dtype)
    local.load()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    llm, scorer = MemoLLM(local), MemoScorer(LocalAttentionScorer(local))
    haystack = read_haystack(args.data / "niah_pg_essays" / "essays")
    needle = needle_from(args.data)
    t = time.perf_counter()
    cases = [(n, make_case(haystack, needle, tokens=n, depth=d, count_tokens=local.count_tokens))
             for n in args.lengths for d in args.depths]
    build_s = time.perf_counter() - t
    runs = [parse_run(spec, args.max_new) for spec in args.runs]
    labels = [r.label for r in runs]
    rows = []
    for target, case in cases:  # by length: the short cases' forwards recur in the long ones
        for run in runs:
            if run.max_length is not None and target > run.max_length:
                continue
            row = await run_case(run, target, case, llm, scorer)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "answer"}), flush=True)
    overhead = attention_overhead(local, scorer, args.overhead_samples) \
        if args.overhead_samples else {}
    wall = time.perf_counter() - started
    render(rows, labels, args.plot)
    if overhead:
        print(f"\nAttention extraction against a plain {overhead['attn_implementation']} prefill "
              f"of the same {overhead['windows']} scoring windows ({overhead['tokens']:,} tokens): "
              f"{overhead['extraction_s']} s against {overhead['sdpa_prefill_s']} s, "
              f"ratio {overhead['ratio']:.2f}.")
    print(f"Run: Python {platform.python_version()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), dtype {args.dtype}, load average {load:.1f} at "
          f"start; model load {sum(local.load_seconds.values()):.1f} s; {len(cases)} cases built "
          f"in {build_s:.1f} s; scoring forwards run {scorer.computed}, reused {scorer.reused}; "
          f"answer calls run {llm.computed}, reused {llm.reused}; wall {wall / 60:.1f} min.")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
        if overhead:
            args.json.with_suffix(".overhead.json").write_text(json.dumps(overhead, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the benchmark data folder")
    parser.add_argument("--lengths", type=int, nargs="+",
                        default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--depths", type=float, nargs="+", default=[0, 25, 50, 75, 100])
    parser.add_argument("--runs", nargs="+",
                        default=["infini-retri", "chain-of-agents", "rag", "truncate"],
                        metavar="NAME[:KEY=VALUE,...]",
                        help="strategies with options; max_length=N limits one to N tokens")
    parser.add_argument("--max-new", type=int, default=128, help="baselines' answer cap")
    parser.add_argument("--dtype", default="auto", help="local model dtype (auto = float32 on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's)")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--overhead-samples", type=int, default=6, metavar="N",
                        help="time N scoring windows against a plain prefill (0 = skip)")
    parser.add_argument("--json", type=Path, help="write every case's figures here")
    parser.add_argument("--from-json", type=Path, help="only render the tables and plot of a "
                        "saved --json (DATA is then ignored)")
    args = parser.parse_args()
    if args.from_json:
        rows = json.loads(args.from_json.read_text())
        render(rows, list(dict.fromkeys(r["strategy"] for r in rows)), args.plot)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

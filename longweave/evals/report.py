"""Evaluation reports: a summary per strategy, task and length, as a rich table, JSON, CSV and a
PNG plot of score against context length (matplotlib, from the `eval` extra)."""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

    from longweave.evals.harness import CaseResult, EvalResults

__all__ = ["SummaryRow", "plot_depths", "plot_scores", "results_table", "summarize",
           "write_reports"]

METRIC_ORDER = ("option", "em", "f1", "contains", "cloze", "abstain", "beam", "beam_faithful",
                "cited")
"""Metric columns, in the order tables and files show them."""
METRIC_TITLES = {"option": "option acc", "beam": "beam (float)", "beam_faithful":
                 "beam (faithful)", "cited": "needle cited"}


@dataclass
class SummaryRow:
    """Means over the cases of one strategy, task and context length."""

    strategy: str
    task: str
    length: int
    n: int
    score: float
    failed: int
    metrics: dict[str, float] = field(default_factory=dict)
    calls: float = 0.0
    tokens: float = 0.0
    seconds: float = 0.0


def summarize(results: EvalResults) -> list[SummaryRow]:
    """One row per (strategy, task, length), in run order; failures score 0 and are counted."""
    groups: dict[tuple[str, str, int], list[CaseResult]] = defaultdict(list)
    for r in results.results:
        groups[(r.strategy, r.task, r.length)].append(r)
    rows: list[SummaryRow] = []
    for (strategy, task, length), cases in groups.items():
        n = len(cases)
        named: dict[str, list[float]] = defaultdict(list)
        for c in cases:
            for name, value in c.scores.items():
                named[name].append(value)
        rows.append(SummaryRow(
            strategy, task, length, n, sum(c.score for c in cases) / n,
            sum(c.error is not None for c in cases),
            {k: sum(v) / len(v) for k, v in named.items()},
            sum(c.calls for c in cases) / n,
            sum(c.prompt_tokens + c.completion_tokens for c in cases) / n,
            sum(c.seconds for c in cases) / n,
        ))
    return sorted(rows, key=lambda r: (results.strategies.index(r.strategy)
                                       if r.strategy in results.strategies else 99,
                                       r.task, r.length))


def _k(tokens: int) -> str:
    return f"{tokens / 1024:g}k" if tokens % 256 == 0 else f"{tokens:,}"


def _columns(rows: list[SummaryRow]) -> list[str]:
    present = {k for r in rows for k in r.metrics}
    return [m for m in METRIC_ORDER if m in present]


def results_table(results: EvalResults) -> Table:
    """The summary as a rich table: score (each case's own metric), the metrics, the cost."""
    from rich.table import Table

    rows = summarize(results)
    columns = _columns(rows)
    table = Table(title=f"{Path(results.dataset).name} ({results.format}) · model "
                  f"{results.model}", title_justify="left")
    names = ["strategy", "task", "length", "n", "score", *columns,
             "failed", "calls/q", "tokens/q", "s/q"]
    cells = [[r.strategy, r.task, _k(r.length), str(r.n), f"{r.score:.3f}",
              *(f"{r.metrics[m]:.3f}" if m in r.metrics else "" for m in columns),
              str(r.failed), f"{r.calls:.1f}", f"{r.tokens:,.0f}", f"{r.seconds:.1f}"]
             for r in rows]
    for i, name in enumerate(names):
        title = METRIC_TITLES.get(name, name)
        if name in ("strategy", "task"):  # names; they head each row stacked on a narrow terminal
            table.add_column(title, overflow="fold")
            continue
        # A number is never cut to "0.…": its column keeps the width of its longest cell.
        widest = max([len(title), *(len(row[i]) for row in cells)])
        table.add_column(title, justify="right", no_wrap=True, min_width=widest)
    score, failed = names.index("score"), names.index("failed")
    for row, r in zip(cells, rows, strict=True):
        row[score] = f"[bold]{row[score]}[/]"
        if r.failed:
            row[failed] = f"[red]{row[failed]}[/]"
        table.add_row(*row)
    return table


def _write_json(results: EvalResults, path: Path) -> None:
    payload = results.model_dump()
    payload["summary"] = [asdict(r) for r in summarize(results)]
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")


def _write_csv(results: EvalResults, path: Path) -> None:
    """One row per (strategy, case), every metric in its own column."""
    names = [m for m in METRIC_ORDER if any(m in r.scores for r in results.results)]
    head = ["strategy", "case", "task", "category", "length", "tokens", "depth", "metric",
            "score", *names, "error", "calls", "prompt_tokens", "completion_tokens", "seconds",
            "answer"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(head)
        for r in results.results:
            writer.writerow([
                r.strategy, r.case, r.task, r.category or "", r.length, r.tokens,
                "" if r.depth is None else r.depth, r.metric, f"{r.score:.4f}",
                *(f"{r.scores[m]:.4f}" if m in r.scores else "" for m in names),
                r.error or "", r.calls, r.prompt_tokens, r.completion_tokens,
                f"{r.seconds:.2f}", r.answer or "",
            ])


def plot_scores(results: EvalResults, path: str | os.PathLike[str]) -> Path:
    """Mean score against context length, one line per strategy (tasks averaged)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none touched
    import matplotlib.pyplot as plt

    points: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results.results:
        points[r.strategy][r.length].append(r.score)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for strategy in results.strategies:
        series = sorted(points[strategy].items())
        if series:
            ax.plot([x for x, _ in series], [sum(v) / len(v) for _, v in series], marker="o",
                    label=strategy)
    lengths = sorted({r.length for r in results.results})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [_k(x) for x in lengths])
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("mean score")
    ax.set_title(f"{Path(results.dataset).name} ({results.format}) · {results.model}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_depths(results: EvalResults, path: str | os.PathLike[str]) -> Path:
    """Needle cases: score by depth (rows) and length (columns), one panel per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [r for r in results.results if r.depth is not None]
    lengths = sorted({r.length for r in cases})
    depths = sorted({r.depth for r in cases if r.depth is not None})
    fig, axes = plt.subplots(1, len(results.strategies), squeeze=False, dpi=110,
                             figsize=(1.2 + 2.2 * len(results.strategies) + 0.4 * len(lengths),
                                      1.4 + 0.35 * len(depths)))
    for ax, strategy in zip(axes[0], results.strategies, strict=True):
        grid = [[float("nan")] * len(lengths) for _ in depths]
        for r in cases:
            if r.strategy == strategy:
                grid[depths.index(r.depth)][lengths.index(r.length)] = r.score
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [_k(x) for x in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
        ax.set_title(strategy, fontsize=10)
        ax.set_xlabel("context length")
    axes[0][0].set_ylabel("needle depth")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="score")
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def write_reports(results: EvalResults, out: str | os.PathLike[str]) -> dict[str, Path | None]:
    """`results.json`, `results.csv`, `score_by_length.png` and, for needle cases,
    `needle_by_depth.png` (plots are None without matplotlib)."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | None] = {"json": root / "results.json", "csv": root / "results.csv"}
    _write_json(results, root / "results.json")
    _write_csv(results, root / "results.csv")
    try:
        written["plot"] = plot_scores(results, root / "score_by_length.png")
        if any(r.depth is not None for r in results.results):
            written["depth_plot"] = plot_depths(results, root / "needle_by_depth.png")
    except ImportError:
        written["plot"] = None
    return written

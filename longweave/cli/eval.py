"""`longweave eval DATASET`: every case through every strategy, scored, tabled, saved, plotted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from longweave.cli.options import Model, NoCache, RayAddress, check_ray_address, parse_options


def _depths(text: str | None) -> tuple[float, ...]:
    from longweave.errors import ConfigError

    try:
        values = tuple(float(x) for x in (text or "").split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"bad depths {text!r}", hint="write depths like 0,50,100") from None
    return values


def _check_folder(folder: Path) -> None:
    """Refuse now an output folder that cannot be made (a file where it or a folder above it
    should be, a place that cannot be written): an error naming it before any answer, not a
    crash once the first one is to be saved. Nothing is created here."""
    import os

    from longweave.batch import folder_to_create_in
    from longweave.errors import DocumentError

    hint = "pass another folder to --out"
    if folder.exists() and not folder.is_dir():
        raise DocumentError(folder, "is a file, not a folder", hint=hint)
    base = folder_to_create_in(folder, folder, hint)
    if not os.access(base, os.W_OK | os.X_OK):
        raise DocumentError(folder, f"cannot be written: {base} is read-only", hint=hint)


def eval_command(
    dataset: Annotated[Path, typer.Argument(help="The dataset's file or folder.")],
    format: Annotated[
        str | None,
        typer.Option("--format", "-f", help="leval, loogle, hotpotqa, locomo, beam, needle or "
                     "jsonl (detected from the path when left out)."),
    ] = None,
    strategies: Annotated[
        str, typer.Option("--strategies", "-s", "-S", help="Comma-separated strategy names.")
    ] = "truncate,rag",
    model: Model = "local",
    judge: Annotated[
        str | None, typer.Option("--judge", help="Judge model for BEAM (default: --model).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="At most N questions per task (and "
                                 "per length for generated sets).")
    ] = None,
    lengths: Annotated[
        str | None, typer.Option("--lengths", help="HotpotQA/needle context lengths, e.g. "
                                 "4k,8k,16k (k = 1,024 tokens).")
    ] = None,
    depths: Annotated[
        str | None, typer.Option("--depths", help="Needle depths in percent, e.g. 0,50,100.")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Items in flight.")
    ] = 4,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default: "
                                  "longweave-eval/<dataset name>); rerun to resume.")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--set", help="Strategy option key=value, or "
                                       "strategy.key=value for one strategy (repeatable).")
    ] = None,
    no_cache: NoCache = False,
    trace: Annotated[
        Path | None,
        typer.Option("--trace", help="Append every call (prompt, output, usage) and step to "
                     "this JSONL file."),
    ] = None,
    executor: Annotated[
        str, typer.Option("--executor", help="Where the answers run: 'local' or 'ray'.")
    ] = "local",
    ray_address: RayAddress = None,
) -> None:
    """Evaluate strategies on a benchmark: answers, scores, a table, JSON, CSV and a plot."""
    import asyncio

    from rich.console import Console

    from longweave.cli.batch_view import BatchView
    from longweave.cli.render import print_table
    from longweave.evals.datasets import parse_lengths
    from longweave.evals.harness import arun_eval
    from longweave.evals.report import results_table, write_reports
    from longweave.executors import get_executor

    check_ray_address(executor, ray_address)
    err = Console(stderr=True)
    names = [s.strip() for s in strategies.split(",") if s.strip()]
    folder = out or Path("longweave-eval") / (dataset.stem or "dataset")
    _check_folder(folder)
    if trace is not None:
        from longweave.batch import check_writable

        check_writable(trace, "trace")
    view = BatchView(err)
    extra = {"address": ray_address} if executor == "ray" else {}
    runner = get_executor(executor, concurrency=concurrency, **extra)
    try:
        with view:
            results = asyncio.run(arun_eval(
                dataset, out=folder, strategies=names, model=model, judge=judge, format=format,
                limit=limit, lengths=parse_lengths(lengths), depths=_depths(depths),
                concurrency=concurrency, options=parse_options(option), cache=not no_cache,
                on_start=lambda name, todo, skipped: view.start(todo, skipped, name),
                on_record=view.record, trace=trace, executor=runner,
            ))
    except KeyboardInterrupt:
        from longweave.cli.exits import interrupted

        raise interrupted(err, f"answers so far are kept in {folder / 'answers'}; rerun the "
                               "same command to resume") from None
    for note in results.notes:
        err.print(f"[dim]note: {escape(note)}[/]", highlight=False)
    print_table(Console(), results_table(results))
    written = write_reports(results, folder)
    json_path, csv_path = escape(str(written["json"])), escape(str(written["csv"]))
    err.print(f"[dim]wrote {json_path} and {csv_path}[/]", highlight=False)
    if written["plot"] is None:
        err.print("[yellow]no plot: matplotlib is not installed "
                  "(pip install 'longweave[eval]')[/]", highlight=False)
    else:
        for key in ("plot", "depth_plot"):
            if written.get(key):
                err.print(f"[dim]wrote {escape(str(written[key]))}[/]", highlight=False)

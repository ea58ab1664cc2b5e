"""`longweave batch DIR --questions FILE --out answers.jsonl`: many answers, resumable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from longweave.cli.options import (
    Model,
    NoCache,
    PriceIn,
    PriceOut,
    RayAddress,
    StrategyName,
    Throughput,
    check_estimate_flags,
    check_ray_address,
    parse_options,
)

if TYPE_CHECKING:
    from longweave.batch import BatchItem
    from longweave.estimate import Estimate


def batch(
    folder: Annotated[Path, typer.Argument(help="The folder of documents (searched recursively).")],
    questions: Annotated[
        Path,
        typer.Option("--questions", "-q", help="JSONL or CSV: 'question', optional 'document' "
                     "and 'id'; other fields are kept as meta."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="JSONL output; appended to, and resumed from.")
    ],
    strategy: StrategyName = "chain-of-agents",
    model: Model = "local",
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Questions in flight at once "
                          "(with --executor ray: per document task)."),
    ] = 4,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="File glob to read (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="File glob to skip (repeatable).")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option("--set", help="Strategy option key=value (repeatable).")
    ] = None,
    steps: Annotated[
        bool, typer.Option("--steps", help="Keep each answer's steps in its record.")
    ] = False,
    trace: Annotated[
        Path | None,
        typer.Option("--trace", help="Append every call (prompt, output, usage) and step to "
                     "this JSONL file, each line with its record's key."),
    ] = None,
    no_cache: NoCache = False,
    executor: Annotated[
        str, typer.Option("--executor", help="Where the work runs: 'local' or 'ray'.")
    ] = "local",
    ray_address: RayAddress = None,
    estimate: Annotated[bool, typer.Option(
        "--estimate", help="Print the expected calls, tokens (and cost) of the questions not yet "
        "answered and exit without calling the model; with --run, answer too and compare.",
    )] = False,
    run_too: Annotated[bool, typer.Option(
        "--run", help="With --estimate: run the batch as well, then print estimate against "
        "actual.")] = False,
    pilot: Annotated[int, typer.Option(
        "--pilot", min=0, help="With --estimate: first answer this many questions for real "
        "(on different documents where possible; kept in the output), then estimate the rest "
        "corrected by how the pilot compared with its own estimate.")] = 0,
    price_in: PriceIn = None,
    price_out: PriceOut = None,
    throughput: Throughput = None,
) -> None:
    """Answer the questions of --questions about the documents in FOLDER, one JSONL record each.

    A question with a 'document' field is asked of that file (relative to FOLDER, or
    absolute); one without is asked of every document in FOLDER. Each record (document,
    question, answer, citations, usage, error) is appended the moment it is done. Rerunning
    the same command skips what is answered and retries what failed; Ctrl-C stops cleanly.

    Exit status: 0 when every question was answered, 1 when any failed or an error every
    question would hit stopped the run (the errors are in the output), 130 when interrupted.
    """
    import asyncio

    from rich.console import Console

    from longweave.batch import BatchJob, BatchStopped, BatchSummary, arun_batch
    from longweave.batch_inputs import batch_items
    from longweave.cli.batch_view import BatchView
    from longweave.executors import get_executor

    if (pilot or run_too) and not estimate:
        raise typer.BadParameter("--pilot and --run go with --estimate",
                                 param_hint="--pilot/--run")
    check_estimate_flags(estimate, price_in, price_out, throughput)
    check_ray_address(executor, ray_address)
    err = Console(stderr=True)
    items = batch_items(folder, questions, include=include, exclude=exclude)
    _check_paths(out, questions, trace)
    job = BatchJob(strategy, model, options=parse_options(option), cache=not no_cache, steps=steps)
    extra = {"address": ray_address} if executor == "ray" else {}
    runner = get_executor(executor, concurrency=concurrency, **extra)
    views: list[BatchView] = []  # one per run: the pilot's, then the batch's

    async def run(chosen: list[BatchItem], view: BatchView) -> BatchSummary:
        try:
            return await arun_batch(
                chosen, out, job, executor=runner, on_start=view.start, on_record=view.record,
                trace=trace,
            )
        except asyncio.CancelledError:  # asyncio's Ctrl-C: the answers in flight are dropped
            err.print("[yellow]stopping…[/]")
            raise

    def answer(chosen: list[BatchItem]) -> BatchSummary:
        view = BatchView(err)
        views.append(view)
        try:
            with view:
                return asyncio.run(run(chosen, view))
        except BatchStopped as stopped:  # the table of what was done, then the error
            Console().print(view.summary(stopped.summary))
            raise
        except KeyboardInterrupt:
            from longweave.cli.exits import interrupted

            raise interrupted(err, f"{view.written} answers written to {out} ({view.failed} "
                                   "of them failed); rerun the same command to resume") from None

    planned = None
    if estimate:
        from functools import reduce
        from operator import add

        from longweave.answer import Usage
        from longweave.batch import ResultLog
        from longweave.cache import ArtifactCache
        from longweave.cli.ask import print_estimate
        from longweave.estimate import estimate_many
        from longweave.llm import resolve_model

        artifacts = ArtifactCache(job.settings().cache_dir / "artifacts")
        counter = resolve_model(model)  # once for every plan: lazy, only its tokenizer loads

        def plan(chosen: list[BatchItem], built: bool = False) -> Estimate:
            return estimate_many([(i.document, i.question) for i in chosen], strategy, counter,
                                 artifacts=artifacts, built=built, **job.options)

        log = ResultLog(out)
        done = log.answered()
        todo = [i for i in items if job.key(i) not in done]
        trial = _pilot(todo, pilot)
        ok: list[BatchItem] = []
        stopped: BatchStopped | None = None
        if trial:
            # Each pilot question's estimate is made before the pilot runs, as the rest's is.
            ahead, seen = {}, set()
            for item in trial:
                ahead[job.key(item)] = plan([item], built=item.document in seen)
                seen.add(item.document)
            try:
                answer(trial)
            except BatchStopped as exc:  # the estimate still prints; the rest is not run
                stopped = exc
            done = log.answered()
            ok = [i for i in trial if job.key(i) in done]
            err.print(f"[bold]pilot:[/] {len(ok)} of {len(trial)} questions answered"
                      + (f"; the {len(trial) - len(ok)} that failed (errors in {out}) are "
                         "left out of the calibration and estimated with the rest"
                         if len(ok) < len(trial) else ""), highlight=False)
        rest = [i for i in todo if job.key(i) not in done]
        planned = plan(rest)
        if ok:
            before = reduce(add, (ahead[job.key(i)] for i in ok))
            # Summed per question: each distinct document (and its chunks) counted once.
            firsts = {i.document: ahead[job.key(i)] for i in reversed(ok)}
            before = before.model_copy(update={
                "documents": len(firsts), "n_chunks": sum(e.n_chunks for e in firsts.values())})
            used = reduce(add, (done[job.key(i)].usage for i in ok), Usage())
            print_estimate(err, before, actual=used)
            if rest:  # nothing left: there is nothing to calibrate
                planned = planned.calibrated(before, used)
        if not run_too or stopped is not None:
            print_estimate(Console(), planned, notes=err, price_in=price_in,
                           price_out=price_out, throughput=throughput)
            err.print(f"[dim]{len(rest)} questions to answer, {len(items) - len(rest)} already "
                      "answered; nothing " + ("else " if trial else "") + "was asked of the "
                      "model[/]", highlight=False)
            if stopped is not None:  # the pilot met an error every question would hit
                raise stopped
            return
    summary = answer(items)
    Console().print(views[-1].summary(summary))
    if planned is not None:
        from longweave.cli.ask import print_estimate

        print_estimate(err, planned, actual=summary.usage, price_in=price_in,
                       price_out=price_out, throughput=throughput)
    if summary.failed:
        err.print(f"[red]{summary.failed} failed[/]: their errors are in {escape(str(out))}; "
                  "rerun the same command to retry them", highlight=False)
        raise typer.Exit(1)


def _check_paths(out: Path, questions: Path, trace: Path | None) -> None:
    """Refuse, before any model call, an output or trace the run could not write, or one that
    is the questions file (or the other): answers would be computed and lost, or spoil it."""
    from longweave.batch import ResultLog, check_writable
    from longweave.errors import DocumentError

    def same(a: Path, b: Path) -> bool:
        try:
            return a.resolve() == b.resolve() or (a.exists() and b.exists()
                                                  and os.path.samefile(a, b))
        except (OSError, RuntimeError):
            return False

    if same(out, questions):
        raise DocumentError(out, "is the questions file; the answers would be appended to it",
                            hint="pass another file to --out, e.g. answers.jsonl")
    ResultLog(out).check()
    if trace is not None:
        if same(trace, out) or same(trace, questions):
            raise DocumentError(trace, "is also the " + ("output" if same(trace, out) else
                                                         "questions") + " file",
                                hint="pass another file to --trace, e.g. trace.jsonl")
        check_writable(trace, "trace")


def _pilot(todo: list[BatchItem], n: int) -> list[BatchItem]:
    """`n` questions for a pilot run: the first question of each document first, so the pilot
    pays for per-document builds as most of the batch will, then the next ones in order."""
    firsts: dict[str, BatchItem] = {}
    for item in todo:
        firsts.setdefault(item.document, item)
    picked = list(firsts.values())[:n]
    taken = {id(i) for i in picked}
    return picked + [i for i in todo if id(i) not in taken][: n - len(picked)]

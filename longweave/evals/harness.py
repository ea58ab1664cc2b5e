"""The evaluation harness: every case through every strategy with the batch machinery, then scores.

Answers go to `<out>/answers/<strategy>.jsonl` through `longweave.batch.arun_batch`, so a rerun
asks only what is not yet answered (resume), items run concurrently, and progress comes from
its callbacks. Scoring reads those logs back; BEAM judgements are kept in
`<out>/judgements.jsonl`, keyed by the answer, so a rerun judges nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from longweave.batch import (
    BatchItem,
    BatchJob,
    BatchRecord,
    ResultLog,
    arun_batch,
    options_as_json,
)
from longweave.compare import split_options
from longweave.errors import ConfigError
from longweave.evals import metrics
from longweave.trace import TraceWriter, open_trace

if TYPE_CHECKING:
    from longweave.evals.datasets import EvalCase
    from longweave.executors.base import Executor
    from longweave.llm import LLM

__all__ = ["CaseResult", "EvalResults", "arun_eval", "score_text", "split_options"]


class CaseResult(BaseModel):
    """One case answered by one strategy: its score, every applicable metric, and the cost."""

    strategy: str
    case: str
    task: str
    category: str | None = None
    length: int
    tokens: int
    depth: float | None = None
    metric: str
    score: float
    """The case's own metric; 0 for a failed item."""
    scores: dict[str, float] = Field(default_factory=dict)
    answer: str | None = None
    error: str | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


class EvalResults(BaseModel):
    """What an evaluation run measured, case by case, with the settings that produced it."""

    dataset: str
    format: str
    model: str
    judge: str | None = None
    strategies: list[str]
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Each strategy's `--set` options, as it ran with them."""
    limit: int | None = None
    lengths: list[int] = Field(default_factory=list)
    depths: list[float] = Field(default_factory=list)
    cases: int
    notes: list[str] = Field(default_factory=list)
    results: list[CaseResult] = Field(default_factory=list)


def score_text(case: EvalCase, answer: str) -> dict[str, float]:
    """Every metric that applies to the case, by name (the judge-scored `beam` aside)."""
    scores: dict[str, float] = {}
    if case.metric == "option":
        scores["option"] = metrics.option_accuracy(answer, case.answers, case.labels,
                                                   case.options, multi=case.multi)
    elif case.metric == "cloze":
        scores["cloze"] = metrics.cloze_accuracy(answer, case.meta.get("masks", {}))
    elif case.metric == "abstain":
        scores["abstain"] = metrics.abstains(answer)
    elif case.answers:
        scores["em"] = metrics.exact_match(answer, case.answers)
        scores["f1"] = metrics.token_f1(answer, case.answers)
        scores["contains"] = metrics.contains_answer(answer, case.answers)
    return scores


def _cited(case: EvalCase, record: BatchRecord) -> float | None:
    """For a needle case: whether the answer's citations cover the whole needle."""
    start, end = case.meta.get("needle_start"), case.meta.get("needle_end")
    if start is None or end is None:
        return None
    reach = start
    for s, e in sorted((c.start, c.end) for c in record.citations):
        if s > reach:
            break
        reach = max(reach, e)
    return float(reach >= end)


class Judgements:
    """BEAM judge verdicts on disk, keyed by record and answer, so reruns reuse them."""

    def __init__(self, path: Path, llm: LLM | None, concurrency: int) -> None:
        self.path, self.llm, self.concurrency = path, llm, concurrency
        self.known: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.known[row["id"]] = row
                except (ValueError, KeyError):
                    continue  # a torn line: that answer is judged again

    async def scores(self, case: EvalCase, record: BatchRecord) -> dict[str, float]:
        from longweave.evals import beam

        answer = record.answer or ""
        ident = hashlib.sha256(json.dumps([record.key, answer]).encode()).hexdigest()[:24]
        rubric = case.meta["rubric"]
        row = self.known.get(ident)
        if row is None:
            if self.llm is None:
                raise ConfigError("BEAM questions need a judge model", hint="pass --judge")
            row = {"id": ident, "case": case.id, "strategy": record.strategy}
            if case.meta.get("ordering"):
                row["order"] = await beam.judge_order(self.llm, case.question, answer, rubric)
            else:
                row["grades"] = await beam.judge_nuggets(self.llm, case.question, answer, rubric,
                                                         concurrency=self.concurrency)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
            self.known[ident] = row
        if "order" in row:
            value = beam.ordering_score(row["order"], len(rubric))
            return {"beam": value, "beam_faithful": value}
        return {"beam": beam.rubric_score(row["grades"]),
                "beam_faithful": beam.rubric_score(row["grades"], faithful=True)}


def _latest(records: Iterable[BatchRecord]) -> dict[str, BatchRecord]:
    """The record to score per key: the last answer, else the last failure."""
    found: dict[str, BatchRecord] = {}
    for record in records:
        if record.ok or record.key not in found or not found[record.key].ok:
            found[record.key] = record
    return found


async def _score(case: EvalCase, record: BatchRecord | None, strategy: str,
                 judgements: Judgements) -> CaseResult:
    result = CaseResult(strategy=strategy, case=case.id, task=case.task, category=case.category,
                        length=case.length, tokens=case.tokens, depth=case.depth,
                        metric=case.metric, score=0.0)
    if record is None or not record.ok:
        result.error = "not answered" if record is None else record.error
        # 0 on every metric the case is scored by, so the metric columns agree with `score`.
        result.scores = {name: 0.0 for name in score_text(case, "")} | {case.metric: 0.0}
    else:
        answer = record.answer or ""
        scores = score_text(case, answer)
        if case.metric == "beam":
            scores.update(await judgements.scores(case, record))
        cited = _cited(case, record)
        if cited is not None:
            scores["cited"] = cited
        result.answer, result.scores = answer, scores
        result.score = scores.get(case.metric, 0.0)
    if record is not None:
        result.calls, result.seconds = record.usage.calls, record.seconds
        result.prompt_tokens = record.usage.prompt_tokens
        result.completion_tokens = record.usage.completion_tokens
    return result


async def arun_eval(
    dataset: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    strategies: Sequence[str],
    model: str | LLM = "local",
    judge: str | LLM | None = None,
    format: str | None = None,
    limit: int | None = None,
    lengths: Sequence[int] = (),
    depths: Sequence[float] = (),
    concurrency: int = 4,
    options: dict[str, Any] | None = None,
    cache: bool = True,
    executor: Executor | None = None,
    on_start: Callable[[str, int, int], None] | None = None,
    on_record: Callable[[BatchRecord], None] | None = None,
    trace: str | os.PathLike[str] | TraceWriter | None = None,
) -> EvalResults:
    """Load the dataset, answer every case with every strategy (resumable), and score.

    `on_start(strategy, todo, skipped)` opens each strategy's run; `on_record` follows every
    answer. The judge (BEAM only) defaults to the model under test. `trace` receives every
    call and step of every strategy (`longweave.trace`). With an executor other than the local
    one, jobs carry the model string, so each worker builds its own backend.
    """
    from longweave.agents.base import strategy_class
    from longweave.api import make_model
    from longweave.evals.datasets import load_dataset
    from longweave.llm import resolve_model

    if not strategies:
        raise ConfigError("no strategies to evaluate", hint="pass --strategies a,b")
    for name in strategies:  # an unknown name is named as such, not as an option no one has
        strategy_class(name)
    notes: list[str] = []
    per_strategy = split_options(options or {}, strategies, notes=notes)
    llm = resolve_model(model)  # one backend (one set of weights) shared by every strategy
    root = Path(out)
    data = load_dataset(dataset, format, workdir=root / "documents", count_tokens=llm.count_tokens,
                        limit=limit, lengths=lengths, depths=depths)
    items = [BatchItem(document=c.document, question=c.question, id=c.id,
                       meta={"task": c.task, "metric": c.metric, "answers": c.answers,
                             "length": c.length})
             for c in data.cases]
    shipped = executor is not None and executor.name != "local" and isinstance(model, str)
    job_model: str | LLM = model if shipped else llm
    jobs = {s: BatchJob(s, job_model, options=per_strategy[s], cache=cache) for s in strategies}
    for job in jobs.values():
        job.check()  # a bad option fails before any strategy runs
    with open_trace(trace) if trace is not None else nullcontext() as writer:
        for name, job in jobs.items():
            await arun_batch(
                items, root / "answers" / f"{name}.jsonl", job, executor=executor,
                concurrency=concurrency, on_record=on_record, trace=writer,
                on_start=(lambda todo, skipped, n=name: on_start(n, todo, skipped))
                if on_start else None,
            )
    needs_judge = any(c.metric == "beam" for c in data.cases)
    same = judge is None or judge == model  # one set of weights when the judge is the model
    judge_llm = make_model(llm if same else judge, cache=cache) if needs_judge else None
    judgements = Judgements(root / "judgements.jsonl", judge_llm, concurrency)
    results = EvalResults(
        dataset=str(dataset), format=data.format, model=llm.name, strategies=list(strategies),
        judge=(judge_llm.name if judge_llm else None), cases=len(data.cases),
        options={s: options_as_json(o) for s, o in per_strategy.items()},
        limit=limit, lengths=list(lengths), depths=list(depths), notes=data.notes + notes,
    )
    for name, job in jobs.items():
        latest = _latest(ResultLog(root / "answers" / f"{name}.jsonl").records())
        for case, item in zip(data.cases, items, strict=True):
            results.results.append(
                await _score(case, latest.get(job.key(item)), name, judgements))
    return results

"""Batch question answering: (document, question) items in, one JSONL record per answer out.

The output file is the state of the run: each record is appended and flushed the moment its
answer is done, a rerun skips every key already answered (failures are retried), and a run
stopped by Ctrl-C or a crash loses nothing but the answers in flight. Where the work runs is an
executor's business (`longweave.executors`); this module owns the items, the records, the
output log and the job that turns one item into one record.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import stat
import time
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from longweave.answer import Citation, Step, Usage, plural
from longweave.errors import DocumentError, LongweaveError, LongweaveWarning, ModelError
from longweave.events import EventSink, ignore
from longweave.trace import combine

if TYPE_CHECKING:
    from longweave.documents import Document
    from longweave.executors.base import Executor
    from longweave.llm import LLM
    from longweave.trace import RunTrace, TraceWriter

__all__ = [
    "BatchItem",
    "BatchJob",
    "BatchRecord",
    "BatchSummary",
    "ResultLog",
    "arun_batch",
    "check_writable",
    "folder_to_create_in",
    "group_by_document",
    "run_batch",
]


class BatchItem(BaseModel):
    """One question about one document; `meta` rides along to the record (e.g. gold answers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    document: str
    """The document's path: a file, or a folder read as one corpus (a `Path` is accepted).
    Not literal text: records name their document by this path and resume by it."""
    question: str
    id: str | None = None
    """The caller's id for the question; when set it, not the text, identifies the item."""
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("document", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    def key(self, strategy: str, model: str, options: dict[str, Any] | None = None) -> str:
        """The item's identity in an output file: document, question (or id), strategy, model
        and the strategy options (when there are any), so answers made with other settings are
        neither skipped on resume nor mistaken for these."""
        ident: list[Any] = [self.document, self.id if self.id is not None else self.question,
                            strategy, model]
        if options:
            ident.append(json.dumps(options, sort_keys=True, default=repr))
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:20]


class BatchRecord(BaseModel):
    """One line of a batch output: the answer or the error, with what it cost."""

    model_config = ConfigDict(extra="forbid")

    key: str
    document: str
    question: str
    id: str | None = None
    strategy: str
    model: str
    options: dict[str, Any] = Field(default_factory=dict)
    """The strategy options the answer was made with (part of `key`)."""
    document_stamp: str | None = None
    """The document file's size and modification time when it was answered: a rerun warns
    when the file has changed since (its answer is kept, not asked again)."""
    answer: str | None = None
    citations: list[Citation] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    seconds: float = 0.0
    """Wall time of this item, document loading included."""
    error: str | None = None
    error_type: str | None = None
    hint: str | None = None
    """What to do about the error, when longweave knows."""
    fatal: bool = False
    """The error stops the run: every remaining question would hit it too (a bad key, an
    unknown model, a server that is not there, a model that cannot load)."""
    meta: dict[str, Any] = Field(default_factory=dict)
    steps: list[Step] | None = None
    """The answer's steps, only when the job was run with `steps=True` (they can be large)."""
    trace: list[dict[str, Any]] | None = None
    """This item's trace lines on their way from a worker to the driver, which writes them to
    the trace file; never part of the output file."""

    @property
    def ok(self) -> bool:
        return self.error is None


class BatchStopped(ModelError):
    """A batch stopped at an error that every remaining question would hit too (a `fatal`
    record); `summary` says what it did before. The answers so far are kept, and running the
    same batch again resumes once the cause is fixed."""

    def __init__(self, record: BatchRecord, summary: BatchSummary, path: Path) -> None:
        self.record, self.summary = record, summary
        what = f"stopped at an error every remaining question would hit: {record.error}"
        hint = (f"{record.hint}; then " if record.hint else "fix it, then ") + (
            f"run the same command again: it keeps the answers in {path} and asks the rest")
        super().__init__(what, hint=hint, fatal=True)


class BatchSummary(BaseModel):
    """What a batch run did: counts, summed usage and wall time."""

    answered: int = 0
    failed: int = 0
    skipped: int = 0
    """Items already answered in the output file before this run started."""
    usage: Usage = Field(default_factory=Usage)
    seconds: float = 0.0
    interrupted: bool = False
    stopped: str | None = None
    """The error that stopped the run early (`BatchStopped`), if one did."""

    def add(self, record: BatchRecord) -> None:
        if record.ok:
            self.answered += 1
        else:
            self.failed += 1
        self.usage = self.usage + record.usage


class ResultLog:
    """An append-only JSONL file of `BatchRecord`s that survives crashes and reruns."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not os.fspath(path):
            raise DocumentError("''", "the output path is empty", hint="name a .jsonl file")
        self.path = Path(path)

    def check(self) -> None:
        """Fail with a `DocumentError` before any work when the path cannot be this run's
        output: not a regular file (a folder, a device, a FIFO), a path that cannot be created
        or written, or an existing file that holds text but not one batch record (a note, a
        questions file), which appending would spoil. An output with records resumes."""
        check_writable(self.path, "output")
        if self.path.exists() and self._foreign():
            raise DocumentError(
                self.path, "is not a batch output: none of its lines is a batch record",
                hint="pass a new file (or an earlier output of batch) to --out; "
                     "nothing was appended to this one",
            )

    def _foreign(self) -> bool:
        """Text in the file, and no line of it is a record (one torn line alone is a crash
        during the very first write, not a foreign file). Reads only up to the first record."""
        texts: list[bytes] = []
        for line in self._lines():
            if _record(line) is not None:
                return False
            if line.strip():
                texts.append(line)
        return bool(texts) and not (len(texts) == 1 and texts[0].lstrip().startswith(b'{"key"'))

    def _lines(self) -> Iterator[bytes]:
        """The file's lines, read lazily (a caller may stop early)."""
        if not self.path.exists():
            return
        if not self.path.is_file():  # a device or a FIFO would be read forever (or block)
            raise DocumentError(self.path, "is not a regular file",
                                hint="pass a .jsonl file to --out")
        try:
            with self.path.open("rb") as handle:
                yield from handle
        except OSError as exc:
            raise DocumentError(self.path, f"cannot read the output ({exc.strerror or exc})",
                                hint="check the path and its permissions") from None

    def records(self) -> list[BatchRecord]:
        """Every readable record, in file order; a torn last line (a crash mid-write) is skipped."""
        return [r for r in map(_record, self._lines()) if r is not None]

    def answered(self) -> dict[str, BatchRecord]:
        """Records without an error, by key: what a rerun skips."""
        return {r.key: r for r in self.records() if r.ok}

    def append(self, record: BatchRecord) -> None:
        """Write one record and flush it to disk before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell():
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # the previous run died mid-line: start a fresh one
                    handle.write(b"\n")
            line = record.model_dump_json(exclude_none=False, exclude={"trace"})
            handle.write(line.encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())


def _record(line: bytes) -> BatchRecord | None:
    """One output line as a record; None for a blank, torn or foreign line (the item, if it
    is one, is simply asked again)."""
    if not line.strip():
        return None
    try:
        return BatchRecord.model_validate_json(line)
    except ValueError:
        return None


def _key_value(given: Any, validated: Any) -> Any:
    """An option's value in a record key: a validated number, text or flag, with a whole float
    written as an integer (`temperature=0`, validated 0.0, keys as it did before options were
    validated, and so does `max_new=48.0`); anything else as given (a validated schema object
    has no stable text)."""
    if isinstance(validated, float) and validated.is_integer():
        return int(validated)
    if validated is None or isinstance(validated, str | int | float | bool):
        return validated
    return given


def options_as_json(options: dict[str, Any]) -> dict[str, Any]:
    """Strategy options as a record holds them: JSON values, anything else by its repr (a
    schema class, say)."""
    return json.loads(json.dumps(options, default=repr))


def document_stamp(source: str) -> str | None:
    """A document file's size and modification time ("size:mtime_ns"); None for a folder or a
    path that cannot be read (its change is not tracked)."""
    try:
        info = os.stat(source)
    except (OSError, ValueError):
        return None
    return f"{info.st_size}:{info.st_mtime_ns}" if stat.S_ISREG(info.st_mode) else None


def folder_to_create_in(folder: Path, target: Path, hint: str) -> Path:
    """The nearest folder that exists at or above `folder`, where creating `target` begins; a
    `DocumentError` naming `target` when a file stands there instead."""
    base = folder
    while not base.exists() and base != base.parent:
        base = base.parent
    if base.exists() and not base.is_dir():
        raise DocumentError(target, f"cannot be created: {base} is a file, not a folder",
                            hint=hint)
    return base


def check_writable(path: str | os.PathLike[str], what: str = "output") -> None:
    """Fail with a `DocumentError` unless `path` names a file this process can append to, or
    create (with its missing folders): checked before any model call, so that answers are not
    computed and then lost. Creating is tried for real and undone."""
    if not os.fspath(path):
        raise DocumentError("''", f"the {what} path is empty", hint=f"name a file for the {what}")
    p = Path(path)
    hint = f"pass a file path for the {what} in a folder you can write to"
    if p.is_dir():
        raise DocumentError(p, "is a directory", hint=f"name a file inside it for the {what}"
                            + (" (an empty path means the current folder)"
                               if str(p) == "." else ""))
    if p.exists():
        if what == "output" and not p.is_file():
            raise DocumentError(p, "is not a regular file (a device, a pipe or a socket)",
                                hint="pass a .jsonl file to --out: it is read back to resume")
        if p.is_file():
            try:
                with p.open("ab"):
                    pass
            except OSError as exc:
                raise DocumentError(p, f"cannot be written ({exc.strerror or exc})",
                                    hint=hint) from None
        return
    if os.path.lexists(p):
        raise DocumentError(p, "is a broken symbolic link", hint=hint)
    base = folder_to_create_in(p.parent, p, hint)
    try:
        if base == p.parent:  # the file itself, created and removed
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            os.unlink(p)
        else:  # folders to create: one made and removed where the first would go
            import tempfile

            os.rmdir(tempfile.mkdtemp(dir=base, prefix=".longweave-check-"))
    except OSError as exc:
        raise DocumentError(p, f"cannot be created ({exc.strerror or exc})", hint=hint) from None


class BatchJob:
    """How every item of a run is answered: strategy, its options, model and cache.

    It is plain data so an executor can ship it to another process; the model and the open
    documents are built lazily where the job runs and are not part of its pickled state.
    `steps=True` keeps each answer's steps in its record. A job made by `traced` writes each
    item's trace lines to the driver's `TraceWriter` as they happen; shipped to another
    process (where that file is not), it collects them in `BatchRecord.trace` instead.
    """

    def __init__(
        self,
        strategy: str = "chain-of-agents",
        model: str | LLM = "local",
        *,
        options: dict[str, Any] | None = None,
        cache: bool = True,
        steps: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.strategy = strategy
        self.model = model
        self.options = dict(options or {})
        self.cache = cache
        self.steps = steps
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.collect_trace = False
        """Collect each item's trace lines (set by `traced`)."""
        self._llm: LLM | None = None
        self._documents: OrderedDict[str, Document] = OrderedDict()
        self._trace: TraceWriter | None = None
        self._keyed: tuple[dict[str, Any], dict[str, Any]] | None = None
        """The options and their validated form, which `key` uses (made once, not per item)."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_llm"] = None if isinstance(self.model, str) else state["_llm"]
        state["_documents"] = OrderedDict()
        state["_trace"] = None  # an open file stays with the driver; workers collect instead
        return state

    def traced(self, writer: TraceWriter) -> BatchJob:
        """This job, tracing every item to `writer` (sharing the loaded model and documents)."""
        clone = object.__new__(BatchJob)
        clone.__dict__.update(self.__dict__)  # not copy.copy: it would drop the loaded model
        clone.collect_trace, clone._trace = True, writer
        return clone

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.name

    def key(self, item: BatchItem) -> str:
        return item.key(self.strategy, self.model_name, self._validated_options())

    def _validated_options(self) -> dict[str, Any]:
        """The options as the strategy's settings validated them (`max_new=48.0` is 48), so
        that options meaning the same settings give the same keys, and a rerun written either
        way resumes the other's answers. A strategy that is not a pydantic model keeps them as
        given; a bad option is the strategy's `ConfigError`, as `check` raises it."""
        if not self.options:
            return {}
        if self._keyed is None or self._keyed[0] != self.options:
            from longweave.agents.base import get_strategy

            strategy = get_strategy(self.strategy, **self.options)
            dump = getattr(strategy, "model_dump", None)
            validated = dump(include=set(self.options)) if dump is not None else self.options
            self._keyed = (dict(self.options), {k: _key_value(v, validated.get(k, v))
                                                for k, v in self.options.items()})
        return self._keyed[1]

    def check(self) -> None:
        """Fail before any work starts on an unknown strategy or a bad option."""
        from longweave.agents.base import get_strategy

        get_strategy(self.strategy, **self.options)

    def settings(self) -> Any:
        from longweave.config import Settings

        return Settings(cache_dir=self.cache_dir) if self.cache_dir else Settings()

    def llm(self) -> LLM:
        if self._llm is None:
            from longweave.api import make_model

            self._llm = make_model(self.model, cache=self.cache, settings=self.settings())
        return self._llm

    def document(self, source: str) -> Document:
        """Open a document once per job and keep the last few (a group's questions share it)."""
        from longweave.api import load_source

        if source in self._documents:
            self._documents.move_to_end(source)
            return self._documents[source]
        document = load_source(Path(source))
        self._documents[source] = document
        while len(self._documents) > 4:
            self._documents.popitem(last=False)
        return document

    async def answer(self, item: BatchItem, *, on_event: EventSink = ignore) -> BatchRecord:
        """Answer one item; any failure becomes the record's error instead of an exception."""
        from longweave.agents.base import get_strategy
        from longweave.cache import ArtifactCache
        from longweave.runner import arun, usage_of

        record = BatchRecord(
            key=self.key(item), document=item.document, question=item.question, id=item.id,
            strategy=self.strategy, model=self.model_name, meta=item.meta,
            options=options_as_json(self.options),
            document_stamp=document_stamp(item.document),
        )
        started = time.perf_counter()
        run = self._run_trace(record)
        try:
            llm = self.llm()  # first: a model that cannot be made fails every item (`fatal`)
            document = self.document(item.document)
            strategy = get_strategy(self.strategy, **self.options)
            artifacts = ArtifactCache(self.settings().cache_dir / "artifacts")
            answer = await arun(
                strategy, document, item.question, llm,
                on_event=combine(on_event, run), artifacts=artifacts,
            )
        except LongweaveError as exc:
            record.error, record.error_type = exc.message, type(exc).__name__
            record.hint = exc.hint or None
            record.usage, failure = usage_of(exc), exc
            record.fatal = self._llm is None or bool(getattr(exc, "fatal", False))
        except Exception as exc:  # a failing item is recorded and the run goes on
            record.error, record.error_type = f"{type(exc).__name__}: {exc}", type(exc).__name__
            record.usage, failure = usage_of(exc), exc
            record.fatal = self._llm is None
        except BaseException as exc:  # cancelled: the trace says so, the record is never written
            if run is not None:
                run.fail(exc)
            raise
        else:
            record.answer, record.citations = answer.text, answer.citations
            record.flags, record.usage = answer.flags, answer.usage
            record.steps = answer.steps if self.steps else None
        record.seconds = time.perf_counter() - started
        if run is not None and record.ok:
            run.finish(answer, seconds=record.seconds)
        elif run is not None:
            run.fail(failure, seconds=record.seconds)
        return record

    def _run_trace(self, record: BatchRecord) -> RunTrace | None:
        """The item's trace: live to the driver's writer, or collected into the record."""
        if not self.collect_trace:
            return None
        from longweave.trace import RunTrace

        if self._trace is not None:
            run = RunTrace(self._trace.write, key=record.key)
        else:
            record.trace = []
            run = RunTrace(record.trace.append, key=record.key)
        run.start(strategy=record.strategy, document=record.document, question=record.question,
                  model=record.model, id=record.id)
        return run


def group_by_document(items: Iterable[BatchItem]) -> list[list[BatchItem]]:
    """Items grouped per document, in first-seen order: documents are the unit of work."""
    groups: dict[str, list[BatchItem]] = {}
    for item in items:
        groups.setdefault(item.document, []).append(item)
    return list(groups.values())


async def arun_batch(
    items: Iterable[BatchItem],
    out: str | os.PathLike[str],
    job: BatchJob,
    *,
    executor: Executor | None = None,
    concurrency: int = 4,
    on_record: Callable[[BatchRecord], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    trace: str | os.PathLike[str] | TraceWriter | None = None,
) -> BatchSummary:
    """Answer every item not yet answered in `out`, appending each record as it completes.

    `on_start(todo, skipped)` is called once the resume set is known; `on_record` after each
    record is written. Cancelling the run (Ctrl-C) keeps everything already written. `trace`
    appends every item's calls and steps to a JSONL file, each line with the item's `key`
    (`longweave.trace`): as they happen in this process, or when the item's record arrives
    from an executor's worker process.
    """
    # Checked before the trace file is opened, so a bad output or strategy leaves none behind.
    job.check()
    log = ResultLog(out)
    log.check()
    if trace is None:
        return await _run_batch(items, log, job, executor, concurrency, on_record, on_start)
    from longweave.trace import TraceWriter, open_trace

    if not isinstance(trace, TraceWriter):
        check_writable(trace, "trace")
    with open_trace(trace) as writer:
        return await _run_batch(items, log, job.traced(writer), executor, concurrency,
                                on_record, on_start, writer)


async def _run_batch(
    items: Iterable[BatchItem],
    log: ResultLog,
    job: BatchJob,
    executor: Executor | None,
    concurrency: int,
    on_record: Callable[[BatchRecord], None] | None,
    on_start: Callable[[int, int], None] | None,
    writer: TraceWriter | None = None,
) -> BatchSummary:
    from longweave.executors.local import LocalExecutor

    done = log.answered()
    todo: list[BatchItem] = []
    seen: set[str] = set()
    skipped = 0
    stamped: set[str] = set()  # documents whose file was compared with its record once
    changed: list[str] = []
    for item in items:
        key = job.key(item)
        if key in done:
            skipped += 1
            if item.document not in stamped:
                stamped.add(item.document)
                recorded, now = done[key].document_stamp, document_stamp(item.document)
                if recorded is not None and now not in (None, recorded):
                    changed.append(item.document)
        elif key not in seen:  # the same question twice in the input is asked once
            seen.add(key)
            todo.append(item)
    if changed:
        warnings.warn(
            f"{plural(len(changed), 'document')} changed since {log.path} answered "
            f"{'it' if len(changed) == 1 else 'them'} (first: {changed[0]}); those answers are "
            "kept, not asked again: write to a new --out to answer the new text",
            LongweaveWarning, stacklevel=3)
    summary = BatchSummary(skipped=skipped)
    if on_start is not None:
        on_start(len(todo), skipped)
    runner = executor or LocalExecutor(concurrency=concurrency)
    started = time.perf_counter()
    halt = asyncio.Event()
    stoppable = "stop" in inspect.signature(runner.run).parameters
    groups = group_by_document(todo)
    stream: AsyncIterator[BatchRecord] = (runner.run(job, groups, stop=halt) if stoppable
                                          else runner.run(job, groups))
    stop: BatchRecord | None = None
    try:
        async for record in stream:
            if record.trace is not None:  # collected in a worker: written here, once
                for line in record.trace if writer is not None else ():
                    writer.write(line)
                record.trace = None
            log.append(record)
            summary.add(record)
            if on_record is not None:
                on_record(record)
            if record.fatal and stop is None:
                # No more work; what is already finished still comes, and is written.
                stop = record
                halt.set()
                if not stoppable:  # closing the stream below cancels the work in flight
                    break
    except BaseException:
        summary.interrupted = True
        raise
    finally:
        summary.seconds = time.perf_counter() - started
        await _close(stream)
    if stop is not None:
        summary.stopped = stop.error
        raise BatchStopped(stop, summary, log.path)
    return summary


async def _close(stream: AsyncIterator[BatchRecord]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def run_batch(
    items: Sequence[BatchItem] | Iterable[BatchItem],
    out: str | os.PathLike[str],
    job: BatchJob,
    **kwargs: Any,
) -> BatchSummary:
    """The synchronous form of `arun_batch`."""
    from longweave.sync import run_sync

    return run_sync(arun_batch(items, out, job, **kwargs))

"""JSONL traces: every model call (prompt, output, usage) and every step of a run, one line each.

A `TraceWriter` is an event sink over an append-only file. Each line is one JSON object with a
`type`: `start` (strategy, document, question), `call` (role, index, the messages sent, the
output, finish reason, that call's usage, time and cache hit; a failed call has `error`),
`step` (the `Step` fields), then `finish` (the answer, its usage and flags) or `error`. Every
line carries `run`, an id per answer, and whatever keys the caller bound (a batch item's `key`,
a session's `turn`), so the interleaved lines of concurrent answers can be told apart. Lines are
flushed as they are written: a crash loses nothing that happened before it.

>>> import io, json
>>> from longweave.testing import ScriptedModel
>>> from longweave import ask
>>> model = ScriptedModel()
>>> model.on("reader", reply="Under the mat.")
>>> out = io.StringIO()
>>> _ = ask("The key is under the mat.", "Where?", strategy="truncate", model=model,
...         cache=False, trace=TraceWriter(out))
>>> [json.loads(line)["type"] for line in out.getvalue().splitlines()]
['start', 'step', 'call', 'step', 'finish']
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from longweave.answer import Usage
from longweave.errors import DocumentError
from longweave.events import Event, EventSink, ignore

if TYPE_CHECKING:
    from longweave.answer import Answer

__all__ = [
    "RunTrace", "TraceWriter", "combine", "open_trace", "read_trace",
    "trace_sink",
]

Record = dict[str, Any]


def combine(*sinks: EventSink | None) -> EventSink:
    """One sink that passes each event to every given sink (`None` and `ignore` are dropped).

    With nothing left it is `ignore` itself, so a strategy still knows nobody listens.
    """
    kept = [s for s in sinks if s is not None and s is not ignore]
    if not kept:
        return ignore
    if len(kept) == 1:
        return kept[0]

    def both(event: Event) -> None:
        for sink in kept:
            sink(event)

    return both


def _jsonable(value: Any) -> Any:
    """What `json.dumps` cannot write: models, dataclasses, arrays, sets; the rest as text."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _usage(usage: Usage) -> Record:
    return usage.model_dump()


class RunTrace:
    """The trace of one answer: an event sink whose lines carry the run id and bound keys.

    Made by `TraceWriter.run`, which writes the `start` line at once; the runner's own
    start/finish events are then skipped and `finish(answer)` or `fail(exc)` closes the run.
    `write` may be any function taking one record (a list's `append` buffers a run's lines
    where the file is not, e.g. in a Ray worker).
    """

    def __init__(self, write: Callable[[Record], None], run: str | None = None,
                 **keys: Any) -> None:
        self.write = write
        self.run = run or uuid.uuid4().hex[:12]
        self.keys = keys
        self.usage = Usage()
        """The usage of the calls seen so far."""
        self.explicit = False

    def _record(self, type_: str, **fields: Any) -> Record:
        return {"type": type_, "run": self.run, **self.keys, "time": round(time.time(), 3),
                **fields}

    def start(self, *, strategy: str | None = None, document: Any = None,
              question: str | None = None, model: str | None = None, **fields: Any) -> None:
        """Write the `start` line; the runner's start/finish events are skipped from now on."""
        self.explicit = True
        where: Record = {}
        if isinstance(document, str | os.PathLike):
            where = {"document": os.fspath(document)}
        elif document is not None:  # a Document
            where = {"document": document.name, "source": document.source,
                     "document_id": document.id}
        self.write(self._record("start", strategy=strategy, **where, question=question,
                                model=model, **fields))

    def finish(self, answer: Answer, **fields: Any) -> None:
        """Write the `finish` line: the answer's text, usage, flags and citations."""
        self.write(self._record(
            "finish", strategy=answer.strategy, model=answer.model, answer=answer.text,
            usage=_usage(answer.usage), flags=answer.flags,
            citations=[c.model_dump(mode="json") for c in answer.citations], **fields,
        ))

    def fail(self, exc: BaseException, **fields: Any) -> None:
        """Write the `error` line of a run that raised (or was cancelled), with the usage of the
        calls it made."""
        text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        self.write(self._record("error", error=text, error_type=type(exc).__name__,
                                usage=_usage(self.usage), **fields))

    async def watch(self, work: Awaitable[Answer], **fields: Any) -> Answer:
        """Await `work` (a run that emits to this trace) and close the trace with its outcome."""
        try:
            answer = await work
        except BaseException as exc:
            self.fail(exc)
            raise
        self.finish(answer, **fields)
        return answer

    def __call__(self, event: Event) -> None:
        record = self.record(event)
        if record is not None:
            self.write(record)

    def record(self, event: Event) -> Record | None:
        """The line an event becomes, or None for events a trace does not keep."""
        if event.kind == "result":
            return self._call(event)
        if event.kind == "step":
            step = event.payload
            output = step.output if step is not None else event.message
            return self._record("step", strategy=event.strategy, role=event.role,
                                index=event.index, output=output, detail=event.data)
        if self.explicit:
            return None
        if event.kind == "start":
            return self._record("start", strategy=event.strategy, message=event.message,
                                **{k: event.data[k] for k in ("document", "question", "model")
                                   if k in event.data})
        if event.kind == "finish":
            usage = event.data.get("usage")
            return self._record("finish", strategy=event.strategy, message=event.message,
                                usage=usage if usage is not None else _usage(self.usage),
                                answer=event.data.get("answer"), wall=event.data.get("wall"))
        return None  # call/progress/token: the result line says it all

    def _call(self, event: Event) -> Record:
        data = event.data
        completion = data.get("completion")
        fields: Record = {
            "strategy": event.strategy, "role": event.role, "index": event.index,
            "total": event.total,
            "messages": [{"role": m.role, "content": m.content} for m in data["messages"]],
            "max_tokens": data.get("max_tokens"), "temperature": data.get("temperature"),
            "schema": data.get("schema"),
        }
        if completion is not None:
            self.usage = self.usage + completion.usage
            fields.update(
                output=completion.text, finish_reason=completion.finish_reason,
                model=completion.model, usage=_usage(completion.usage),
                cache_hit=bool(completion.usage.cache_hits) or data.get("cache") == "hit",
            )
            if completion.parsed is not None:
                fields["parsed"] = completion.parsed
        else:
            fields.update(output=data.get("raw"), error=data.get("error"),
                          error_type=data.get("error_type"))
        fields["seconds"] = round(data.get("seconds", 0.0), 6)
        return self._record("call", **fields)


class TraceWriter:
    """An event sink that appends every call, step, start and finish to a JSONL file.

    Use it as a context manager (the file opens on entry), or call `open()`/`close()`. As a
    plain sink it starts a new run at each runner `start` event, which suits answers that come
    one after another (`compare`, a chat); concurrent answers each take their own `run(...)`.
    `fields` are added to the start line of such runs. Writing is thread-safe.
    """

    def __init__(self, target: str | os.PathLike[str] | TextIO, **fields: Any) -> None:
        self.path: Path | None = None
        self._file: TextIO | None = None
        if isinstance(target, str | os.PathLike):
            self.path = Path(target)
        else:  # an open text stream (tests, stdout): written to, never closed here
            self._file = target
        self._owned = self.path is not None
        self._lock = threading.Lock()
        self._fields = fields
        self._current: RunTrace | None = None

    def open(self) -> TraceWriter:
        """Open the file for appending (a torn last line from a crash is ended first)."""
        if self._file is None and self.path is not None:
            if self.path.is_fifo():
                self._file = open_pipe(self.path, "trace")
                return self
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                torn = False
                if self.path.is_file() and self.path.stat().st_size:
                    with self.path.open("rb") as handle:
                        handle.seek(-1, os.SEEK_END)
                        torn = handle.read(1) != b"\n"
                self._file = self.path.open("a", encoding="utf-8")
            except OSError as exc:  # a folder, a read-only place, a file in the way
                raise DocumentError(self.path, f"cannot be written as the trace "
                                    f"({exc.strerror or exc})",
                                    hint="pass a file path for the trace") from None
            if torn:
                self._file.write("\n")
        return self

    def close(self) -> None:
        if self._file is not None and self._owned:
            self._file.close()
            self._file = None

    def __enter__(self) -> TraceWriter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, record: Record) -> None:
        """Append one record as a line and flush it."""
        line = json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n"
        with self._lock:
            if self._file is None:
                self.open()
            assert self._file is not None
            self._file.write(line)
            self._file.flush()

    def run(self, *, run: str | None = None, keys: dict[str, Any] | None = None,
            **start: Any) -> RunTrace:
        """The trace of one answer, its `start` line written now; `keys` go on every line,
        `start` (strategy, document, question, model, ...) on the start line."""
        trace = RunTrace(self.write, run, **(keys or {}))
        trace.start(**start)
        return trace

    def __call__(self, event: Event) -> None:
        if event.kind == "start" or self._current is None:
            self._current = RunTrace(self.write)
        record = self._current.record(event)
        if record is not None:
            self.write({**record, **self._fields} if event.kind == "start" else record)


def open_pipe(path: Path, what: str) -> TextIO:
    """`path`, a named pipe, opened for writing text; a `DocumentError` when nothing reads it,
    where a plain open would block the run before its first answer. A pipe with a reader (a
    live view of the trace) is written as a file is."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise DocumentError(path, f"cannot be written ({exc.strerror or exc})",
                                hint=f"pass a file path for the {what}") from None
        raise DocumentError(path, "is a named pipe that nothing reads: writing would block",
                            hint=f"start its reader first (e.g. `cat {path}`), or pass a "
                                 f"file path for the {what}") from None
    os.set_blocking(fd, True)  # the reader sets the pace from here on
    return os.fdopen(fd, "a", encoding="utf-8")


def open_trace(
    target: str | os.PathLike[str] | TraceWriter,
) -> AbstractContextManager[TraceWriter]:
    """A context for `target`: a path opens (and closes) a writer; a writer is used as it is."""
    if isinstance(target, TraceWriter):
        return nullcontext(target)
    return TraceWriter(target)


@contextmanager
def trace_sink(
    target: str | os.PathLike[str] | TraceWriter | None, **fields: Any
) -> Iterator[EventSink]:
    """A sink for `combine(view, sink)`: a `TraceWriter` on `target`, or `ignore` for None.

    `fields` (e.g. `document=..., question=...`) are added to each run's start line.
    """
    if target is None:
        yield ignore
        return
    if isinstance(target, TraceWriter):
        yield target
        return
    with TraceWriter(target, **fields) as writer:
        yield writer


def read_trace(path: str | os.PathLike[str]) -> list[Record]:
    """Every readable line of a trace file; a torn last line (a crash mid-write) is skipped."""
    records: list[Record] = []
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    return records

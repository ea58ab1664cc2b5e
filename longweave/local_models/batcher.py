"""Gather concurrent generation requests into padded batches run by one worker thread.

A small model on CPU is bound by matrix throughput, not by latency: eight prompts in one
padded forward pass cost about half of eight passes one after another. Requests arrive from
any event loop or thread; a single worker owns the model, so there is never more than one
generate() at a time, and futures carry results back.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenRequest:
    """One prompt to continue: token ids, its own token cap, and what it may share a batch with."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    group: Hashable = None
    """Requests batch together only when `(temperature, group)` match (e.g. the same schema)."""
    extra: Any = None
    """Opaque data for the runner (e.g. the constrained-decoding index)."""
    on_text: Callable[..., None] | None = None
    """Receives the reply's text deltas while it is generated (from the worker thread), and
    `("", restart=True)` when a failed batch is rerun and the text so far is void."""
    future: Future[GenResult] = field(default_factory=Future)
    cancelled: bool = False
    """Set when the caller stopped waiting: the runner ends the row at its next token."""


@dataclass(frozen=True)
class GenResult:
    """The generated token ids (without the stop token), why generation ended, and batch facts."""

    token_ids: list[int]
    finish_reason: str
    batch_size: int
    batch_seconds: float
    cached_tokens: int = 0
    """Prompt tokens whose keys and values came from the prefix cache, not a forward pass."""


_STOP: Any = object()

Runner = Callable[[Sequence[GenRequest]], list[GenResult]]


class Batcher:
    """Queues requests; a daemon worker runs compatible ones together through `runner`."""

    def __init__(
        self,
        runner: Runner,
        *,
        max_batch_size: int = 8,
        wait_s: float = 0.01,
        max_batch_tokens: int = 32768,
        max_padding: float = 0.3,
    ) -> None:
        self.runner = runner
        self.max_batch_size = max(1, max_batch_size)
        self.wait_s = max(0.0, wait_s)
        self.max_batch_tokens = max_batch_tokens
        self.max_padding = max_padding
        self._queue: queue.Queue[Any] = queue.Queue()
        """The current worker's queue: each worker has its own (see `close`)."""
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._last: threading.Thread | None = None
        """The worker `close` stopped, which may still be running the requests queued to it."""
        self._held: dict[asyncio.AbstractEventLoop, list[GenRequest]] = {}

    def submit(self, request: GenRequest) -> Future[GenResult]:
        """Queue one request and return its future; starts the worker on first use."""
        self._put([request])
        return request.future

    def submit_async(self, request: GenRequest) -> asyncio.Future[GenResult]:
        """Queue from a coroutine: requests made in the same event-loop turn travel together.

        `asyncio.gather(*calls)` starts every call in one turn of the loop, so holding the
        submissions until the next turn hands them to the worker as one group, however long
        each took to tokenize; `wait_s` then only has to cover other loops and threads.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            held = self._held.get(loop)
            if held is None:
                held = self._held[loop] = []
                loop.call_soon(self._release, loop)
            held.append(request)
        waiter = asyncio.wrap_future(request.future, loop=loop)
        # A running concurrent future cannot be cancelled: flag the request instead, so a
        # cancelled call stops generating (and holding the worker) at its next token.
        waiter.add_done_callback(lambda done: _flag_cancelled(request, done))
        return waiter

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            held = self._held.pop(loop, [])
        if held:
            self._put(held)

    def _put(self, requests: list[GenRequest]) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._queue = queue.Queue()
                self._worker = threading.Thread(
                    target=self._loop, args=(self._queue, self._last),
                    name="longweave-local-model", daemon=True,
                )
                self._worker.start()
            self._queue.put(requests)

    def close(self) -> None:
        """Stop the worker after the requests already queued, and wait for it (so the caller
        may then free what they run on); it restarts on the next submit.

        A submit while this waits starts a new worker on a queue of its own, which first waits
        for this one: one generate() at a time, and the stop reaches the worker it is for."""
        with self._lock:
            worker, self._worker = self._worker, None
            if worker is not None and worker.is_alive():
                self._queue.put(_STOP)
                self._last = worker
        if worker is not None and worker is not threading.current_thread():
            worker.join()

    def _loop(self, jobs: queue.Queue[Any], previous: threading.Thread | None) -> None:
        if previous is not None:
            previous.join()  # the stopped worker finishes its queue first
        while True:
            first = jobs.get()
            if first is _STOP:
                return
            pending = list(first)
            # Wait briefly for requests issued together (asyncio.gather) to arrive; requests
            # that queue while a batch runs are picked up at once on the next round.
            deadline = time.monotonic() + self.wait_s
            while True:
                try:
                    timeout = deadline - time.monotonic()
                    item = jobs.get_nowait() if timeout <= 0 else jobs.get(timeout=timeout)
                except queue.Empty:
                    break
                if item is _STOP:
                    jobs.put(item)  # handled after this round's batches
                    break
                pending.extend(item)
            for batch in plan_batches(
                pending, self.max_batch_size, self.max_batch_tokens, self.max_padding
            ):
                self._run(batch)

    def _run(self, batch: list[GenRequest]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if live:
            self._settle(live)

    def _settle(self, live: list[GenRequest]) -> None:
        """Run `live` and give each its result or error.

        One request can sink a whole batch (a prompt past the model's positions, memory for
        the padded batch): a batch that fails is rerun one request at a time, so the others
        still complete and the error reaches only the call that causes it. A LongweaveError
        (the model cannot load) concerns every request alike and is not rerun.
        """
        from longweave.errors import LongweaveError

        try:
            results = self.runner(live)
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about the failure
            if len(live) == 1 or isinstance(exc, LongweaveError):
                _fail(live, exc)
                return
            for request in live:
                if request.on_text is not None:
                    with contextlib.suppress(Exception):  # a display must not stop the rerun
                        request.on_text("", restart=True)
                self._settle([request])
            return
        except BaseException as exc:
            _fail(live, exc)
            return
        for request, result in zip(live, results, strict=True):
            request.future.set_result(result)


def _fail(requests: list[GenRequest], exc: BaseException) -> None:
    for request in requests:
        request.future.set_exception(exc)


def _flag_cancelled(request: GenRequest, waiter: asyncio.Future[GenResult]) -> None:
    if waiter.cancelled():
        request.cancelled = True


def plan_batches(
    requests: Sequence[GenRequest],
    max_batch_size: int,
    max_batch_tokens: int,
    max_padding: float,
    min_slack: int = 256,
) -> list[list[GenRequest]]:
    """Split requests into batches of one kind, similar lengths and bounded padded size.

    Left-padding a 100-token prompt to 4,000 tokens costs as much as a 4,000-token prompt, so a
    batch grows (shortest first) only while its padding stays under `max_padding` of the real
    tokens (or `min_slack` tokens, which cost little) and its padded size under
    `max_batch_tokens`. Kinds keep their arrival order.
    """
    kinds: dict[Hashable, list[GenRequest]] = {}
    for request in requests:
        kinds.setdefault((request.temperature, request.group), []).append(request)
    batches: list[list[GenRequest]] = []
    for members in kinds.values():
        current: list[GenRequest] = []
        real = 0
        for request in sorted(members, key=lambda r: len(r.prompt_ids)):
            size = len(request.prompt_ids)  # the longest so far: members are sorted
            padded = size * (len(current) + 1)
            fits = (
                len(current) < max_batch_size
                and padded <= max(max_batch_tokens, size)
                and padded - (real + size) <= max(max_padding * (real + size), min_slack)
            )
            if current and not fits:
                batches.append(current)
                current, real = [], 0
            current.append(request)
            real += size
        if current:
            batches.append(current)
    return batches

"""The Ray executor: documents are distributed as Ray tasks; records stream back to the driver.

Each task answers one document's questions (the first alone, so the per-document artifacts are
built once in that worker's cache, then the rest concurrently) and returns their records. The
driver appends records as tasks finish, exactly as the local executor's records are appended,
so resume, progress and the summary behave the same. A worker process that dies mid-document
has its task retried by Ray (`max_retries`); the driver yields a key at most once, so a retried
task can never put a pair into the output twice. With `arun_batch(..., trace=FILE)` each worker
collects its items' trace lines in their records (`BatchRecord.trace`), and the driver writes them
to the one trace file as the records arrive: a retried task's lines come back once, with its
records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from longweave.errors import ConfigError, MissingDependency

if TYPE_CHECKING:
    from longweave.batch import BatchItem, BatchJob, BatchRecord
    from longweave.llm import LLM

# One model per worker process and model string: Ray reuses worker processes across tasks,
# and loading a local model per document would dominate the run.
_WORKER_MODELS: dict[tuple[Any, ...], LLM] = {}


def _worker_llm(job: BatchJob) -> None:
    """Give the job this worker's model. A model that cannot be built is left to `job.answer`,
    which records its error on each item as the local executor does; raised here, it would fail
    the whole task with Ray's traceback as every item's error."""
    if not isinstance(job.model, str):
        return  # an LLM object travelled with the job (tests, custom backends)
    key = (job.model, job.cache, str(job.cache_dir))
    if key not in _WORKER_MODELS:
        try:
            _WORKER_MODELS[key] = job.llm()
        except Exception:
            return
    job._llm = _WORKER_MODELS[key]


async def _answer_group(job: BatchJob, items: list[BatchItem], concurrency: int) -> list[Any]:
    slots = asyncio.Semaphore(concurrency)

    async def one(item: BatchItem) -> BatchRecord:
        async with slots:
            return await job.answer(item)

    first = await one(items[0])
    rest = await asyncio.gather(*(one(item) for item in items[1:]))
    return [first, *rest]


def answer_group(job: BatchJob, items: list[BatchItem], concurrency: int) -> list[str]:
    """The body of a Ray task: one document's records, as JSON (cheap and version-proof)."""
    _worker_llm(job)
    records = asyncio.run(_answer_group(job, items, concurrency))
    return [r.model_dump_json() for r in records]


def _uses_local_model(job: BatchJob) -> bool:
    return isinstance(job.model, str) and (job.model == "local" or job.model.startswith("hf:"))


class RayExecutor:
    """Run batch work on a Ray cluster (`address="auto"`, `ray://host:port`) or a local runtime.

    `max_in_flight` bounds the document tasks submitted at once (default: twice the cluster's
    CPUs), so a million-document run does not put a million tasks into Ray's queue; each task
    answers its document's questions with up to `concurrency` in flight. When the model is local
    and the cluster has GPUs, each task asks Ray for `num_gpus` (default 1).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        concurrency: int = 4,
        max_in_flight: int | None = None,
        max_retries: int = 3,
        num_cpus: float = 1,
        num_gpus: float | None = None,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        _import_ray()  # a missing extra fails here, before any work or progress display
        self.address = address
        self.concurrency = concurrency
        self.max_in_flight = max_in_flight
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.init_options = dict(init_options or {})

    def _ray(self) -> Any:
        """Ray, connected: a failure to connect or start is a `ConfigError` naming the address
        (Ray's own errors would read as a bug in longweave)."""
        ray = _import_ray()
        if not ray.is_initialized():
            _check_reachable(self.address)
            # Ray's own start-up lines ("Started a local Ray instance", its token notice) would
            # land in the middle of longweave's output; its errors still show.
            options = {"include_dashboard": False, "log_to_driver": False,
                       "logging_level": logging.ERROR, **self.init_options}
            try:
                _start(ray, self.address, options)
            except Exception as exc:
                where = (f"connect to the Ray cluster at {self.address!r}" if self.address
                         else "start a local Ray runtime")
                raise ConfigError(
                    f"cannot {where}: {type(exc).__name__}: {exc}",
                    hint=_ADDRESS_HINT if self.address else "Ray's own logs (under /tmp/ray "
                    "unless RAY_TMPDIR says otherwise) tell why",
                ) from exc
        return ray

    def _task(self, ray: Any, job: BatchJob) -> Any:
        gpus = self.num_gpus
        if gpus is None:
            has_gpus = ray.cluster_resources().get("GPU", 0) > 0
            gpus = 1 if has_gpus and _uses_local_model(job) else 0
        return ray.remote(answer_group).options(
            num_cpus=self.num_cpus, num_gpus=gpus, max_retries=self.max_retries
        )

    async def run(
        self, job: BatchJob, groups: list[list[BatchItem]], *, stop: asyncio.Event | None = None
    ) -> AsyncIterator[BatchRecord]:
        ray = self._ray()
        # Ctrl-C while Ray was starting could only mark this task cancelled (the start blocks the
        # event loop): the cancellation lands here, before any work is submitted.
        await asyncio.sleep(0)
        task = self._task(ray, job)
        job_ref = ray.put(job)
        limit = self.max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending = [g for g in groups if g]
        pending.reverse()  # pop() from the end keeps the input order of submission
        running: dict[asyncio.Future[Any], tuple[Any, list[BatchItem]]] = {}
        emitted: set[str] = set()

        def stopping() -> bool:
            return stop is not None and stop.is_set()

        try:
            while (pending and not stopping()) or running:
                last = stopping()  # what already finished is still given; the rest cancelled
                if last:
                    done = {future for future in running if future.done()}
                else:
                    while pending and len(running) < limit:
                        group = pending.pop()
                        ref = task.remote(job_ref, group, self.concurrency)
                        running[asyncio.wrap_future(ref.future())] = (ref, group)
                    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    _, group = running.pop(future)
                    for record in _records(job, group, future):
                        if record.key not in emitted:
                            emitted.add(record.key)
                            yield record
                if last:
                    break
        finally:
            for future, (ref, _) in running.items():
                # The cancelled task's error lands in its future later; retrieve it, or asyncio
                # prints "Future exception was never retrieved" over the interrupted run.
                future.add_done_callback(_retrieve)
                ray.cancel(ref, force=True)


_ADDRESS_HINT = (
    "the address is 'auto' (the cluster this machine joined with `ray start`), the head's "
    "host:port, or ray://host:10001; leave it out to start a local Ray runtime"
)
_CONNECT_TIMEOUT = 5.0


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingDependency("ray", "ray") from exc
    return ray


def _start(ray: Any, address: str | None, options: dict[str, Any]) -> None:
    """`ray.init`, stopping what it started when it does not finish: Ctrl-C (the
    KeyboardInterrupt goes on, for the caller to end the run as at any other moment) or a
    failure. What Ray already connected is shut down; processes it had not yet handed to its
    runtime end with this process, as all of Ray's local processes do."""
    try:
        ray.init(address=address, **options)
    except BaseException:
        with contextlib.suppress(Exception):  # the original error is the one to report
            ray.shutdown()
        raise


def _check_reachable(address: str | None) -> None:
    """Fail fast when nothing listens at a host:port address: Ray retries a dead address for
    many minutes (20 tries of about 40 s each) before it gives up."""
    target = address if address not in (None, "auto") else os.environ.get("RAY_ADDRESS")
    if not target or target in ("auto", "local"):
        return  # Ray's own lookup of a running cluster fails at once when there is none
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port: Ray's error names the format
    try:
        socket.create_connection((host.strip("[]"), int(port)), _CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot connect to the Ray cluster at {target!r}: nothing answers there "
            f"({exc.strerror or exc})", hint=_ADDRESS_HINT,
        ) from None


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _records(job: BatchJob, group: list[BatchItem], future: asyncio.Future[Any]) -> list[Any]:
    """A finished task's records; a task that failed for good becomes one error per item."""
    from longweave.batch import BatchRecord

    try:
        return [BatchRecord.model_validate_json(line) for line in future.result()]
    except Exception as exc:  # retries exhausted (the worker kept dying) or a Ray failure
        message = f"the Ray task for this document failed: {type(exc).__name__}: {exc}"
        return [
            BatchRecord(
                key=job.key(item), document=item.document, question=item.question, id=item.id,
                strategy=job.strategy, model=job.model_name, meta=item.meta,
                error=message[:2000], error_type=type(exc).__name__,
            )
            for item in group
        ]

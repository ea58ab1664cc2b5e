"""The default executor: asyncio in this process, with bounded concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from longweave.errors import ConfigError

if TYPE_CHECKING:
    from longweave.batch import BatchItem, BatchJob, BatchRecord


class LocalExecutor:
    """Up to `concurrency` items in flight; a document's first question runs alone.

    The first question of a document builds its per-document artifacts (embeddings, a tree, a
    graph); letting its siblings start at the same time would build them once per sibling, so
    they wait for it and then run concurrently against the cached artifacts.
    """

    name = "local"

    def __init__(self, concurrency: int = 4) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency

    async def run(
        self, job: BatchJob, groups: list[list[BatchItem]], *, stop: asyncio.Event | None = None
    ) -> AsyncIterator[BatchRecord]:
        slots = asyncio.Semaphore(self.concurrency)
        results: asyncio.Queue[BatchRecord] = asyncio.Queue()

        async def one(item: BatchItem) -> None:
            async with slots:
                record = await job.answer(item)
            await results.put(record)

        async def group(items: list[BatchItem]) -> None:
            await one(items[0])
            await asyncio.gather(*(one(item) for item in items[1:]))

        expected = sum(len(g) for g in groups)
        tasks = [asyncio.create_task(group(g)) for g in groups if g]
        try:
            for _ in range(expected):
                if stop is not None and stop.is_set():
                    break
                getter = asyncio.ensure_future(results.get())
                while not getter.done():
                    running = [t for t in tasks if not t.done()]
                    await asyncio.wait([getter, *running], return_when=asyncio.FIRST_COMPLETED)
                    for task in tasks:  # a bug in a job surfaces instead of hanging the run
                        if task.done() and not task.cancelled() and task.exception():
                            getter.cancel()
                            raise task.exception()  # type: ignore[misc]
                yield getter.result()
            if stop is not None and stop.is_set():
                # Work in flight is cancelled; answers it already finished are still given.
                await _cancel(tasks)
                while not results.empty():
                    yield results.get_nowait()
        finally:
            await _cancel(tasks)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

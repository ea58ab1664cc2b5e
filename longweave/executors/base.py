"""The executor contract and the lookup by name."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from longweave.errors import ConfigError

if TYPE_CHECKING:
    from longweave.batch import BatchItem, BatchJob, BatchRecord


@runtime_checkable
class Executor(Protocol):
    """Runs a job over document groups, yielding each item's record as soon as it is done.

    A record must come back exactly once per item; the order is free. Cancelling the iteration
    must stop the work in flight. `stop`, once set (by the driver, at an error every item would
    hit), means: start nothing more, cancel the work in flight, give the records of work already
    finished, and end. An executor whose `run` takes no `stop` is simply closed there.
    """

    name: str

    def run(
        self, job: BatchJob, groups: list[list[BatchItem]], *, stop: asyncio.Event | None = None
    ) -> AsyncIterator[BatchRecord]: ...


def get_executor(name: str, **options: Any) -> Executor:
    """`local` or `ray`, with their options (`concurrency`; `address` for Ray)."""
    if name == "local":
        from longweave.executors.local import LocalExecutor

        return LocalExecutor(**options)
    if name == "ray":
        try:
            from longweave.executors.ray import RayExecutor
        except ImportError as exc:  # the module exists only once the Ray executor lands
            raise ConfigError("the ray executor is not available", hint=str(exc)) from exc
        return RayExecutor(**options)
    raise ConfigError(f"unknown executor {name!r}", hint="use 'local' or 'ray'")

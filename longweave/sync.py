"""The synchronous forms' one way into async code, from a script or from inside a running loop.

`asyncio.run` refuses to start while a loop runs in the thread, which is where a Jupyter cell
runs, so `longweave.ask(...)` in a notebook failed ("cannot be called from a running event
loop"). There the coroutine runs on a fresh loop in a worker thread, and the call waits for it,
as a synchronous call does anywhere else; an interrupt while it waits (Ctrl-C, a notebook's
"interrupt kernel") cancels the coroutine, as `asyncio.run` does, before it is raised.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end and return its result, whether or not a loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    return _Worker(coroutine).result()


class _Worker:
    """`coroutine` on its own loop in a thread of its own, cancellable from the caller's."""

    def __init__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.coroutine = coroutine
        self.done: Future[Any] = Future()
        self.task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()
        context = contextvars.copy_context()  # the caller's context variables go along
        self.thread = threading.Thread(target=context.run, args=(self._run,),
                                       name="longweave-sync", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.done.set_result(asyncio.run(self._main()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            self.done.set_exception(exc)
        finally:
            self.started.set()  # also when the loop never started: nobody waits in vain

    async def _main(self) -> Any:
        self.loop, self.task = asyncio.get_running_loop(), asyncio.current_task()
        self.started.set()
        return await self.coroutine

    def result(self) -> Any:
        try:
            return self.done.result()
        except BaseException:
            if not self.done.done():  # interrupted while waiting: stop the work, then raise
                self.started.wait()
                if self.loop is not None and self.task is not None:
                    self.loop.call_soon_threadsafe(self.task.cancel)
                self.thread.join()
            raise

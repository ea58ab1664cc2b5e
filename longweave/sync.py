"""The synchronous forms' one way into async code, from a script or from inside a running loop.

`asyncio.run` refuses to start while a loop runs in the thread, which is where a Jupyter cell
runs, so `longweave.ask(...)` in a notebook failed ("cannot be called from a running event
loop"). There the coroutine runs on a fresh loop in a worker thread, and the call waits for it,
as a synchronous call does anywhere else.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end and return its result, whether or not a loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    context = contextvars.copy_context()  # the caller's context variables go along
    with ThreadPoolExecutor(1, thread_name_prefix="longweave-sync") as pool:
        return pool.submit(context.run, asyncio.run, coroutine).result()

"""Where batch work runs: `local` (asyncio, bounded concurrency) or a cluster engine such as Ray.

Executors take a `longweave.batch.BatchJob` and the items grouped per document, and yield one
`BatchRecord` per item as it completes; the driver (`longweave.batch.arun_batch`) writes them.
"""

from __future__ import annotations

from longweave.executors.base import Executor, get_executor

__all__ = ["Executor", "get_executor"]

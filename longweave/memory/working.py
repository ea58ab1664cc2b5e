"""Working memory: the most recent units of a stream, kept in order (LIGHT, `longweave chat`).

A unit is a span of a document: a (user, assistant) turn pair of a conversation, or a chunk of
a plain document. The memory keeps the last `capacity` of them; selecting under a token budget
fills newest-first, so the latest exchange is never the one dropped (the reference code filled
oldest-first and could keep only the older part, STRATEGIES.md §6.5.3), and renders the chosen
units chronologically.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["MemoryUnit", "WorkingMemory"]


@dataclass(frozen=True)
class MemoryUnit:
    """A unit of a stream: its position, its span `[start, end)` in the document, and its text."""

    index: int
    start: int
    end: int
    text: str

    @property
    def label(self) -> str:
        """The tag prompts and scratchpad bullets use for this unit."""
        return f"u{self.index}"


class WorkingMemory:
    """The last `capacity` units in arrival order.

    >>> wm = WorkingMemory(2)
    >>> for i in range(3): wm.add(MemoryUnit(i, i, i + 1, "x"))
    >>> [u.index for u in wm.units]
    [1, 2]
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._units: deque[MemoryUnit] = deque(maxlen=capacity or None)

    def add(self, unit: MemoryUnit) -> None:
        """Append the newest unit; the oldest falls out past `capacity`."""
        if self.capacity:
            self._units.append(unit)

    def extend(self, units: Iterable[MemoryUnit]) -> None:
        for unit in units:
            self.add(unit)

    @property
    def units(self) -> list[MemoryUnit]:
        """Oldest first."""
        return list(self._units)

    def __len__(self) -> int:
        return len(self._units)

    def select(
        self, budget: int, cost: Callable[[MemoryUnit], int], *, skip: frozenset[int] = frozenset()
    ) -> list[MemoryUnit]:
        """The newest units whose costs sum to at most `budget`, returned oldest first.

        Filling stops at the first unit that does not fit, so the selection is always a
        contiguous run ending at the newest unit (units in `skip` are passed over).
        """
        chosen: list[MemoryUnit] = []
        used = 0
        for unit in reversed(self._units):
            if unit.index in skip:
                continue
            c = cost(unit)
            if used + c > budget:
                break
            chosen.append(unit)
            used += c
        return chosen[::-1]

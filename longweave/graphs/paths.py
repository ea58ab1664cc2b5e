"""One GraphReader exploration path as a state machine, with no model in it (STRATEGIES.md §3.2).

The path is in one of three states (`facts`, `chunk`, `neighbors`), each offering only its legal
subset of the paper's functions. `check` validates a chosen call against the graph and the
path; `apply` runs a validated call. The chunk queue is FIFO; `read_previous_chunk` and
`read_subsequent_chunk` push to its front; no chunk is shown twice in one path (§3.5.1).

A chunk counts as read only when a step shows it (`show_chunk`), not when a call queues it or
makes it current: a path capped right after `read_chunk` has read nothing of that chunk, and
citations and the notebook's sources must not claim otherwise.

A step whose facts or neighbours were trimmed to its token budget shows fewer choices than the
state has; `offer` narrows the step's choices to those shown, so `legal`, `check` and the
schema built from `chunk_choices`/`neighbor_choices` never offer what the prompt hid (§3.3).
The narrowing lasts until the next call is applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from longweave.graphs.store import KeyGraph, normalize_key

__all__ = ["ACTIONS", "Call", "PathState"]

Mode = Literal["facts", "chunk", "neighbors", "done"]

ACTIONS: dict[str, tuple[str, ...]] = {
    "facts": ("read_chunk", "stop_and_read_neighbor"),
    "chunk": ("search_more", "read_previous_chunk", "read_subsequent_chunk", "termination"),
    "neighbors": ("read_neighbor_node", "termination"),
}
"""The seven functions of the paper, by the state that offers them."""


@dataclass(frozen=True)
class Call:
    """A function call chosen by the model (its arguments as written, before validation)."""

    action: str
    chunk_ids: tuple[int, ...] = ()
    neighbor: str = ""


@dataclass
class PathState:
    """Where one path stands: its node, state, chunk queue, visited sets and notebook."""

    graph: KeyGraph
    node: str
    neighbor_limit: int = 25
    mode: Mode = "facts"
    queue: list[int] = field(default_factory=list)
    current: int | None = None  # the chunk the `chunk` state shows next
    read: list[int] = field(default_factory=list)  # chunks shown to the model, in order
    visited: list[str] = field(default_factory=list)  # nodes entered, in order
    notebook: str = ""
    actions: list[str] = field(default_factory=list)
    shown_facts: list[int] = field(default_factory=list)  # fact ids shown in `facts` states
    steps: int = 0
    ended: str = ""  # why the path ended: "termination", "capped", "invalid", "no_neighbors"
    offered_ids: frozenset[int] | None = None  # this step's shown chunk ids; None: all
    offered_names: frozenset[str] | None = None  # this step's shown neighbours; None: all

    def __post_init__(self) -> None:
        if not self.visited:
            self.visited.append(self.node)

    # -- what the state shows -----------------------------------------------------------------

    def chunk_choices(self) -> list[int]:
        """In `facts`: the node's chunks not read yet and not queued, in document order (only
        those `offer`ed, when this step's facts were trimmed)."""
        seen = set(self.read) | set(self.queue)
        ids = sorted({f.chunk for f in self.graph.node_facts(self.node)} - seen)
        return ids if self.offered_ids is None else [i for i in ids if i in self.offered_ids]

    def neighbor_choices(self) -> list[str]:
        """In `neighbors`: unvisited neighbours by co-occurrence count, at most the limit (only
        those `offer`ed, when this step's list was trimmed)."""
        names = self.graph.neighbors(self.node, exclude=set(self.visited),
                                     limit=self.neighbor_limit)
        if self.offered_names is None:
            return names
        return [n for n in names if n in self.offered_names]

    def offer(self, *, ids: Iterable[int] | None = None,
              names: Iterable[str] | None = None) -> None:
        """Narrow this step's choices to the chunk ids and neighbour names its prompt shows."""
        self.offered_ids = None if ids is None else frozenset(ids)
        self.offered_names = None if names is None else frozenset(names)

    def legal(self) -> list[str]:
        """The functions this state offers now."""
        if self.mode == "facts":
            return [a for a in ACTIONS["facts"] if a != "read_chunk" or self.chunk_choices()]
        if self.mode == "chunk":
            assert self.current is not None
            n, cur, seen = len(self.graph.spans), self.current, set(self.read)
            return [
                a for a in ACTIONS["chunk"]
                if (a != "read_previous_chunk" or (cur > 0 and cur - 1 not in seen))
                and (a != "read_subsequent_chunk" or (cur + 1 < n and cur + 1 not in seen))
            ]
        if self.mode == "neighbors":
            return [a for a in ACTIONS["neighbors"]
                    if a != "read_neighbor_node" or self.neighbor_choices()]
        return []

    def show_chunk(self) -> int:
        """The chunk the `chunk` state shows now, recorded as read from here on."""
        if self.mode != "chunk" or self.current is None:
            raise ValueError(f"no chunk to show in the {self.mode} state")
        if self.current not in self.read:
            self.read.append(self.current)
        return self.current

    # -- validation and moves -----------------------------------------------------------------

    def check(self, call: Call) -> tuple[Call | None, str | None]:
        """The call resolved against the graph (names normalized), or a message saying why not."""
        legal = self.legal()
        if call.action not in legal:
            return None, (f"{call.action!r} is not available in the {self.mode} state; "
                          f"choose one of: {', '.join(legal)}")
        if call.action == "read_chunk":
            n, shown = len(self.graph.spans), self.chunk_choices()
            if not call.chunk_ids:
                return None, "read_chunk needs at least one id in chunk_ids"
            for i in call.chunk_ids:
                if not 0 <= i < n:
                    return None, f"chunk {i} does not exist (chunks are numbered 0 to {n - 1})"
                if i not in shown:
                    return None, (f"chunk {i} is not one of the unread chunks shown; "
                                  f"choose from {shown}")
            return Call(call.action, tuple(dict.fromkeys(call.chunk_ids))), None
        if call.action == "read_neighbor_node":
            shown = self.neighbor_choices()
            key = normalize_key(call.neighbor)
            if not self.graph.has(key):
                return None, (f"there is no node named {call.neighbor!r} in the graph; "
                              f"choose one of the listed neighbours: {', '.join(shown)}")
            if key not in shown:
                return None, (f"{call.neighbor!r} is not one of the neighbours listed (unvisited "
                              f"neighbours of {self.node!r}); choose one of: {', '.join(shown)}")
            return Call(call.action, neighbor=key), None
        return Call(call.action), None

    def apply(self, call: Call) -> None:
        """Run a call that `check` accepted; the next step offers its own choices."""
        self.offer()
        self.actions.append(_describe(call))
        if call.action == "read_chunk":
            self.queue.extend(i for i in call.chunk_ids if i not in self.queue)
            self._next_chunk()
        elif call.action == "stop_and_read_neighbor":
            self._to_neighbors()
        elif call.action == "search_more":
            self._next_chunk()
        elif call.action in ("read_previous_chunk", "read_subsequent_chunk"):
            assert self.current is not None
            step = -1 if call.action == "read_previous_chunk" else 1
            target = self.current + step
            if target in self.queue:
                self.queue.remove(target)
            self.queue.insert(0, target)
            self._next_chunk()
        elif call.action == "read_neighbor_node":
            self.node, self.mode, self.current = call.neighbor, "facts", None
            self.visited.append(call.neighbor)
        elif call.action == "termination":
            self.end("termination")

    def end(self, why: str) -> None:
        self.mode, self.ended = "done", why

    def _next_chunk(self) -> None:
        """Make the queue's front chunk current (the next step shows it); with nothing queued,
        move on to the neighbours."""
        while self.queue:
            nxt = self.queue.pop(0)
            if nxt not in self.read and nxt != self.current:
                self.current, self.mode = nxt, "chunk"
                return
        self._to_neighbors()

    def _to_neighbors(self) -> None:
        self.current = None
        self.mode = "neighbors"
        if not self.neighbor_choices():  # nothing to offer: the path ends without a call
            self.end("no_neighbors")


def _describe(call: Call) -> str:
    if call.action == "read_chunk":
        return f"read_chunk({list(call.chunk_ids)})"
    if call.action == "read_neighbor_node":
        return f"read_neighbor_node({call.neighbor!r})"
    return f"{call.action}()"

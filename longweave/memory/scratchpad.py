"""The scratchpad: salient facts as tagged bullets, compressed past a threshold, split into pieces.

Bullets carry the units they came from as `[u<i>]` tags, so facts shown to a reader still cite
spans of the source. The pad itself only holds and measures; compression is a model call the
owner makes when `needs_compression()` says so (LIGHT: when T(pad) > 2 * target, STRATEGIES.md
§6.2), then `replace()` installs the result. `pieces()` splits the pad where the topic changes
(embedding distance between neighbouring bullets above a percentile), for per-query filtering.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from longweave.retrieval.embeddings import Embedder

__all__ = ["Bullet", "Piece", "Scratchpad", "parse_bullet"]

_TAG = re.compile(r"\s*\[u(\d+)\]")


@dataclass(frozen=True)
class Bullet:
    """One fact and the units it came from."""

    text: str
    units: tuple[int, ...] = ()

    def render(self) -> str:
        return "- " + self.text + "".join(f" [u{u}]" for u in self.units)


@dataclass(frozen=True)
class Piece:
    """Consecutive bullets on one topic: the unit a question-time filter keeps or drops."""

    bullets: tuple[Bullet, ...]

    @property
    def text(self) -> str:
        return "\n".join(b.render() for b in self.bullets)

    @property
    def units(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(u for b in self.bullets for u in b.units))


def parse_bullet(line: str, fallback_units: Sequence[int] = ()) -> Bullet | None:
    """A bullet from a line like `- fact [u3] [u7]`; tags found anywhere are collected.

    >>> parse_bullet("- Ana moved to Lima [u4]")
    Bullet(text='Ana moved to Lima', units=(4,))
    """
    units = tuple(dict.fromkeys(int(m) for m in _TAG.findall(line)))
    text = _TAG.sub("", line).strip().lstrip("-*• ").strip()
    if not text:
        return None
    return Bullet(text, units or tuple(fallback_units))


class Scratchpad:
    """Tagged fact bullets measured in a model's tokens.

    >>> pad = Scratchpad(target_tokens=100, count=lambda s: len(s.split()))
    >>> pad.add(["Ana lives in Lima"], unit=0); pad.render()
    '- Ana lives in Lima [u0]'
    """

    def __init__(self, target_tokens: int, count: Callable[[str], int]) -> None:
        if target_tokens < 1:
            raise ValueError("target_tokens must be >= 1")
        self.target_tokens = target_tokens
        self.count = count
        self.bullets: list[Bullet] = []
        self.compressions = 0

    def add(self, facts: Iterable[str], unit: int) -> None:
        """Append a unit's facts, tagged with the unit."""
        for fact in facts:
            bullet = parse_bullet(fact, (unit,))
            if bullet is not None:
                self.bullets.append(Bullet(bullet.text, (unit,)))

    def render(self) -> str:
        return "\n".join(b.render() for b in self.bullets)

    def tokens(self) -> int:
        return self.count(self.render()) if self.bullets else 0

    def needs_compression(self) -> bool:
        """True once the pad holds more than twice its target."""
        return self.tokens() > 2 * self.target_tokens

    def replace(self, bullets: Sequence[Bullet]) -> None:
        """Install a compressed pad, cut to at most `target_tokens` by dropping its last bullets."""
        kept = list(bullets)
        while kept and self.count("\n".join(b.render() for b in kept)) > self.target_tokens:
            kept.pop()
        self.bullets = kept
        self.compressions += 1

    def pieces(
        self,
        embedder: Embedder | None = None,
        *,
        max_tokens: int,
        percentile: float = 80.0,
        buffer: int = 1,
    ) -> list[Piece]:
        """Split the pad at topic shifts, each piece at most `max_tokens` (a lone bullet may
        exceed it). Without an embedder, pieces are filled by size alone."""
        if not self.bullets:
            return []
        breaks = self._breakpoints(embedder, percentile, buffer) if embedder else set()
        pieces: list[Piece] = []
        current: list[Bullet] = []
        for i, bullet in enumerate(self.bullets):
            grown = [*current, bullet]
            over = self.count("\n".join(b.render() for b in grown)) > max_tokens
            if current and (i in breaks or over):
                pieces.append(Piece(tuple(current)))
                current = [bullet]
            else:
                current = grown
        pieces.append(Piece(tuple(current)))
        return pieces

    def _breakpoints(self, embedder: Embedder, percentile: float, buffer: int) -> set[int]:
        """Indices i where bullet i starts a new topic: the distance between the windows around
        bullets i-1 and i is above the percentile of all such distances."""
        import numpy as np

        n = len(self.bullets)
        if n < 3:
            return set()
        windows = [" ".join(b.text for b in self.bullets[max(0, i - buffer): i + buffer + 1])
                   for i in range(n)]
        vectors = embedder.embed(windows)
        distances = 1.0 - np.sum(vectors[:-1] * vectors[1:], axis=1)
        cut = float(np.percentile(distances, percentile))
        return {i + 1 for i, d in enumerate(distances) if d > cut}

"""How many document tokens fit in one call once everything else in the prompt has its room.

STRATEGIES.md §8.2: the chunk budget reserves room for the fixed prompt parts (instructions and
question), for state a strategy carries from call to call (Chain-of-Agents' communication unit,
a notebook, a memory) at its cap, for the generation cap, and for the chat template's overhead.
Chain-of-Agents (§1.2): B = k - T(I_W) - T(q) - cu_cap - max_new - margin.
"""

from __future__ import annotations

from longweave.errors import BudgetExceeded, ConfigError

__all__ = ["DEFAULT_MARGIN", "MIN_CHUNK_TOKENS", "chunk_budget"]

DEFAULT_MARGIN = 64
"""Tokens kept free for the chat template's role markers (ours, STRATEGIES.md §1.2)."""

MIN_CHUNK_TOKENS = 64
"""Below this a chunk holds a sentence or two: the call would cost more than it reads (ours)."""


def chunk_budget(
    window: int,
    *,
    max_new: int,
    fixed_tokens: int,
    carried_tokens: int = 0,
    margin: int = DEFAULT_MARGIN,
    min_chunk: int = MIN_CHUNK_TOKENS,
) -> int:
    """Largest chunk, in tokens, such that fixed + carried + chunk + margin + max_new <= window.

    >>> chunk_budget(8192, max_new=1024, fixed_tokens=300, carried_tokens=1024)
    5780
    """
    parts = {
        "window": window,
        "max_new": max_new,
        "fixed_tokens": fixed_tokens,
        "carried_tokens": carried_tokens,
        "margin": margin,
        "min_chunk": min_chunk,
    }
    for name, value in parts.items():
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    budget = window - fixed_tokens - carried_tokens - max_new - margin
    if budget < max(min_chunk, 1):
        raise BudgetExceeded(
            fixed_tokens + carried_tokens + margin + max(min_chunk, 1),
            max_new,
            window,
            hint=(
                f"the {window}-token window leaves {max(budget, 0)} tokens for document text "
                f"(at least {max(min_chunk, 1)} needed) after the instructions and question "
                f"({fixed_tokens}), carried state ({carried_tokens}), generation cap ({max_new}) "
                f"and template margin ({margin}); shorten the question, lower the generation or "
                "carried-state cap (the strategy's *max_new settings: `longweave strategies "
                "NAME`), or use a model with a larger context window"
            ),
        )
    return budget

"""The chunk budget: room for the fixed prompt, carried state, generation and template margin."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longweave.budget import DEFAULT_MARGIN, MIN_CHUNK_TOKENS, chunk_budget
from longweave.errors import BudgetExceeded, ConfigError


def test_chain_of_agents_default() -> None:
    # STRATEGIES.md §1.2: B = k - T(I_W) - T(q) - cu_cap - max_new - margin, cu_cap = max_new.
    k, instructions_and_question, cu_cap = 8192, 300, 1024
    budget = chunk_budget(
        k, max_new=cu_cap, fixed_tokens=instructions_and_question, carried_tokens=cu_cap
    )
    assert budget == 8192 - 300 - 1024 - 1024 - 64
    assert DEFAULT_MARGIN == 64


def test_paper_budget_without_reserving_state() -> None:
    assert chunk_budget(8192, max_new=0, fixed_tokens=300, margin=0) == 7892


@settings(max_examples=200)
@given(
    st.integers(0, 200_000),
    st.integers(0, 4096),
    st.integers(0, 4096),
    st.integers(0, 4096),
    st.integers(0, 256),
)
def test_everything_fits_exactly(
    window: int, max_new: int, fixed: int, carried: int, margin: int
) -> None:
    try:
        budget = chunk_budget(
            window, max_new=max_new, fixed_tokens=fixed, carried_tokens=carried, margin=margin
        )
    except BudgetExceeded as exc:
        assert window - fixed - carried - max_new - margin < MIN_CHUNK_TOKENS
        assert exc.window == window and exc.max_tokens == max_new
        assert exc.prompt_tokens + exc.max_tokens > window  # the message's claim is true
    else:
        assert budget >= MIN_CHUNK_TOKENS
        assert fixed + carried + budget + margin + max_new == window


def test_smallest_allowed_chunk() -> None:
    assert chunk_budget(1000, max_new=800, fixed_tokens=72, margin=64) == 64
    with pytest.raises(BudgetExceeded):
        chunk_budget(1000, max_new=801, fixed_tokens=72, margin=64)
    assert chunk_budget(1000, max_new=801, fixed_tokens=72, margin=64, min_chunk=1) == 63


def test_hint_explains_where_the_window_went() -> None:
    with pytest.raises(BudgetExceeded) as info:
        chunk_budget(2048, max_new=1024, fixed_tokens=500, carried_tokens=600, margin=64)
    message = str(info.value)
    for part in ("2048", "1024", "500", "600", "64", "larger context window"):
        assert part in message
    assert info.value.window == 2048


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new": -1, "fixed_tokens": 0},
        {"max_new": 10, "fixed_tokens": -5},
        {"max_new": 10, "fixed_tokens": 0, "carried_tokens": 1.5},
        {"max_new": 10, "fixed_tokens": 0, "margin": -1},
    ],
)
def test_invalid_parts_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        chunk_budget(4096, **kwargs)  # type: ignore[arg-type]

"""What every strategy's answer gets from the runner, whatever the strategy: flags and errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from longweave.agents.chain_of_agents import ChainOfAgents
from longweave.agents.truncate import Truncate
from longweave.cache import CachedLLM, CompletionCache
from longweave.documents import Document
from longweave.errors import ModelError
from longweave.runner import arun
from longweave.testing import ScriptedModel

DOC = Document.from_text("Mara Quill kept the lighthouse from 1871.")


async def test_a_blank_final_answer_is_flagged_for_any_strategy() -> None:
    model = ScriptedModel()
    model.on("worker", reply="Mara Quill kept it.")
    model.on("manager", reply="  \n")
    answer = await arun(ChainOfAgents(max_new=64), DOC, "Who kept it?", model)
    assert answer.text == "" and "empty_answer" in answer.flags
    model.rules.pop()
    model.on("manager", reply="Mara Quill.")
    answer = await arun(ChainOfAgents(max_new=64), DOC, "Who kept it?", model)
    assert "empty_answer" not in answer.flags


class _NoneText(ScriptedModel):
    """A broken custom backend: its Completion has no text."""

    async def complete(self, messages, **kwargs):  # type: ignore[no-untyped-def]
        return replace(await super().complete(messages, **kwargs), text=None)


@pytest.mark.parametrize("cached", [False, True])
async def test_a_backend_that_returns_no_text_is_named(cached: bool, tmp_path: Path) -> None:
    model = _NoneText(name="my-backend")
    model.on("reader", reply="ignored")
    llm = CachedLLM(model, CompletionCache(tmp_path / "c.sqlite")) if cached else model
    with pytest.raises(ModelError, match="my-backend: the backend returned NoneType as the reply"):
        await arun(Truncate(), DOC, "Who kept it?", llm)

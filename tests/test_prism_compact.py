"""PRISM's overflow policy `compact`, its cost index and its revision field order (§5.2, §5.4).

Against the strict scripted model: each test scripts the compressor's replies and checks the
prompts sent, the calls made and the trace.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from pydantic import ValidationError

from longweave.agents.base import RunContext
from longweave.agents.prism import Prism, _cost_report
from longweave.agents.prism_compact import (
    COMPLAINT_CHARS,
    ITEMS_CEILING,
    UNBOUNDED_CHARS,
    rewrite_request,
)
from longweave.agents.prism_prompts import QAMemory, revision_schema
from longweave.answer import Usage
from longweave.errors import BudgetExceeded
from longweave.llm import Completion
from longweave.memory.structured_memory import from_model
from longweave.runner import arun
from longweave.structured import json_instructions, reask_message
from longweave.testing import Request, ScriptedModel
from tests.test_prism import END_OF_MEMORY, SENTINEL, SMALL, chunk_text, piece, sentinel_document

LINE = '{{"path":["evidence",{i}],"op":"add","value":"saw {v}"}}\n'  # one log line: 30 tokens
SHOWN = re.compile(r"Memory \((\d+) characters\):\n(.*)")


def shown_memory(request: Request) -> dict[str, Any]:
    """The memory a compressor request shows, as JSON."""
    match = SHOWN.search(request.text)
    assert match and int(match.group(1)) == len(match.group(2))
    return json.loads(match.group(2))


def fact_step(request: Request) -> dict[str, Any]:
    """One fact per piece (its sentinel) at the next free index, and one revision outside the
    schema, whichever way the memory is shown."""
    i = request.text.split(END_OF_MEMORY)[0].count('"saw ')  # the facts the memory holds
    seen = SENTINEL.findall(chunk_text(request))
    return {"revisions": [
        {"path": ["evidence", i], "op": "add", "value": f"saw {','.join(seen)}"},
        {"path": ["nowhere"], "op": "add", "value": "x"},
    ]}


def keep_last(request: Request) -> dict[str, Any]:
    """A rewrite keeping only the newest evidence."""
    return {"evidence": shown_memory(request)["evidence"][-1:]}


def model_with(compressor: Any, step: Any = fact_step, answer: Any = None) -> ScriptedModel:
    model = ScriptedModel(context_window=2400)
    model.on("stepper", reply=step)
    model.on("compressor", reply=compressor)
    model.on("manager", reply=answer or {"answer": "a", "used_paths": []})
    return model


def compact(**options: Any) -> Prism:
    return Prism(overflow="compact", **{"mem_cap": 100, **SMALL, **options})


def events(answer: Any, *actions: str) -> list[Any]:
    return [s for s in answer.steps if s.role == "overflow" and s.detail["action"] in actions]


@pytest.mark.parametrize("variant", ["amendments", "in_place"])
async def test_compaction_runs_exactly_when_the_rule_says(variant: str) -> None:
    model = model_with(keep_last)
    prism = compact(variant=variant, mem_cap=30 if variant == "in_place" else 100,
                    compact_at=0.5, compact_target=0.3, max_compactions=20)
    answer = await arun(prism, sentinel_document(8), "q?", model)
    cap = answer.steps[0].detail["mem_cap"]
    traced = [s for s in answer.steps if s.role == "stepper"]
    n = len(traced)
    # The rule: after step i, rewrite when a revision was rejected at mem_cap, or when chunks
    # are left and the memory is above compact_at x mem_cap. (The shown memory is the larger
    # rendering here: the log in amendments mode, the JSON itself in place.)
    expected = []
    for s in traced:
        over = any("mem_cap" in r["reason"] for r in s.detail["rejected"])
        high = s.index < n - 1 and s.detail["memory_tokens"] > 0.5 * cap
        expected += ["stepper", *(["compressor"] if over or high else [])]
    assert [r.role for r in model.requests] == [*expected, "manager"]
    done = events(answer, "compact")
    assert 2 <= len(done) == len(model.calls("compressor"))
    for event, request in zip(done, model.calls("compressor"), strict=True):
        before = next(s for s in traced if s.index == event.index)
        assert event.detail["before_tokens"] == before.detail["memory_tokens"]
        assert event.detail["target_tokens"] == int(0.3 * cap)
        assert event.detail["after_tokens"] < event.detail["before_tokens"]
        assert event.detail["cache_break"] is True
        # The compressor saw the memory as it stood after that step, as JSON.
        saw = [f"saw {k}" for k in range(event.index + 1)]
        assert shown_memory(request)["evidence"] == saw[-len(shown_memory(request)["evidence"]):]
        # The next step reads the rewritten memory, logged as fresh adds.
        following = next((r for r in model.calls("stepper") if piece(r) == event.index + 1), None)
        if following is not None:
            memory = following.text.split(END_OF_MEMORY)[0]
            fresh = LINE.format(i=0, v=event.index)
            assert memory.endswith(fresh if variant == "amendments" else
                                   f'{{"evidence":["saw {event.index}"]}}\n')
    assert all(s.detail["memory_tokens"] <= cap for s in traced)
    assert len({r.messages[0].content for r in model.calls("stepper")}) == 1
    assert "compacted" in answer.flags and "compact_invalid" not in answer.flags


async def test_freeze_never_calls_the_compressor() -> None:
    model = model_with(keep_last)
    answer = await arun(Prism(mem_cap=100, **SMALL), sentinel_document(8), "q?", model)
    assert not model.calls("compressor") and not events(answer, "compact")
    assert "mem_cap" in answer.flags


def four_facts(request: Request) -> dict[str, Any]:
    return fact_step(request) if piece(request) < 4 else {"revisions": []}


@pytest.mark.parametrize(("used", "cited"), [
    ([["evidence", 0]], [3]),  # kept word for word: the chunk of the revision that did not fit
    ([["evidence", 1]], [0, 1, 2, 3]),  # reworded: every chunk that wrote `evidence`
    ([["evidence", 2]], [1]),  # kept, moved from index 1: its own chunk
])
async def test_revisions_rejected_at_the_cap_are_folded_in_with_provenance(
    used: list[list[Any]], cited: list[int]
) -> None:
    rewrite = {"evidence": ["saw 3", "saw 0 and 2", "saw 1"]}
    model = model_with(rewrite, step=four_facts, answer={"answer": "a", "used_paths": used})
    # compact_at 1: only a rejected revision triggers a rewrite (the memory never passes mem_cap)
    answer = await arun(compact(compact_at=1.0), sentinel_document(6), "q?", model)
    (request,) = model.calls("compressor")
    assert shown_memory(request) == {"evidence": ["saw 0", "saw 1", "saw 2"]}
    assert ("Revisions from the last piece read that no longer fit in the memory:\n"
            '{"path":["evidence",3],"op":"add","value":"saw 3"}') in request.text
    assert "at most 4 items" in request.text  # the widest list (3) plus the one pending
    (event,) = events(answer, "compact")
    assert event.index == 3 and event.detail["pending"] == 1
    final = answer.steps[-1]
    assert json.loads(final.detail["memory"]) == rewrite
    assert [c.chunk_index for c in answer.citations] == cited


async def test_a_value_nobody_wrote_cites_nothing() -> None:
    rewrite = {"evidence": ["saw 3"], "entities": [{"key": "Mara", "value": "keeper"}]}
    model = model_with(rewrite, step=four_facts,
                       answer={"answer": "a", "used_paths": [["entities", "Mara"]]})
    answer = await arun(compact(compact_at=1.0), sentinel_document(6), "q?", model)
    assert answer.steps[-1].detail["cited_by"] == "contributing"  # no source of its own
    assert [c.chunk_index for c in answer.citations] == [3]  # what the memory still holds


@pytest.mark.parametrize(("at", "pending"), [(1.0, 1), (0.5, 0)])
async def test_the_rewrite_shows_the_memory_last_and_names_no_entry_field(
        at: float, pending: int) -> None:
    # Shown the reply's shape after the memory, and told to write dicts as {"key", "value"}
    # entries, the bundled model wrote {"people": [{"key": "key", "value": "value"}]}: the
    # shape, not the memory; the steps after it went on adding to the key "key".
    model = model_with(keep_last, step=four_facts)
    answer = await arun(compact(compact_at=at, compact_target=0.3), sentinel_document(6), "q?",
                        model)
    request = model.calls("compressor")[0]
    assert events(answer, "compact")[0].detail["pending"] == pending
    (prompt,) = [m.content for m in request.messages if m.role == "user"]
    shape = prompt[prompt.index("Answer with exactly one JSON object"):]
    shape = shape[:shape.index("\n\n")]
    assert '{"key": string (1 to 64 characters), "value": string' in shape  # entities' entries
    # After the shape come the memory and the revisions that did not fit, and nothing else.
    memory = prompt.index("\nMemory (")
    assert prompt.index(shape) < memory
    outside = prompt[:memory].replace(shape, "")  # the wording around the shape
    assert '"key"' not in outside and '"value"' not in outside
    assert "A dict becomes a list with one entry per name it keeps" in outside
    last = prompt[memory:].splitlines()[-1]
    if pending:
        assert last == '{"path":["evidence",3],"op":"add","value":"saw 3"}'
        assert "or the revisions after it do not hold" in outside
    else:
        assert json.loads(last) == shown_memory(request)
        assert "Revisions from the last piece" not in prompt


BAD_REWRITES = [
    ("not json at all", 3, "no usable rewrite"),
    ({"evidence": "saw everything"}, 3, "no usable rewrite"),  # not a list: never coerced
    ({"nowhere": ["x"]}, 3, "no usable rewrite"),  # not a field of the schema
    ({"evidence": ["x" * 301]}, 3, "no usable rewrite"),  # over value_chars
    ({"evidence": ["a"], "entities": [{"key": "M", "value": "1"}, {"key": "M", "value": "2"}]},
     1, 'the key(s) ["M"] repeat'),
    # short as JSON, but four log lines are over mem_cap: not re-asked
    ({"evidence": ["saw 0", "saw 1", "saw 2", "saw 3"]}, 1, "over its cap"),
]


@pytest.mark.parametrize(("reply", "calls", "reason"), BAD_REWRITES)
async def test_a_bad_rewrite_falls_back_to_freeze(reply: Any, calls: int, reason: str) -> None:
    model = model_with(reply)
    answer = await arun(compact(max_compactions=1), sentinel_document(5), "q?", model)
    assert len(model.calls("compressor")) == calls  # after `retries` re-asks, no more
    (failed,) = [e for e in events(answer, "freeze") if e.detail.get("compaction")]
    assert failed.index == 3 and reason in failed.detail["reason"]
    assert failed.detail["attempts"] == calls and failed.detail["cache_break"] is False
    assert failed.detail["after_tokens"] == failed.detail["before_tokens"]
    # the memory is unchanged: the next step reads the same log as the one before
    steps = model.calls("stepper")
    assert steps[4].text.split(END_OF_MEMORY)[0] == steps[3].text.split(END_OF_MEMORY)[0]
    assert "".join(LINE.format(i=k, v=k) for k in range(3)) in steps[4].text
    assert json.loads(answer.steps[-1].detail["memory"]) == {
        "evidence": ["saw 0", "saw 1", "saw 2"]}
    assert "compact_invalid" in answer.flags and "compacted" not in answer.flags


def shorten_first(request: Request) -> dict[str, Any]:
    """A rewrite smaller than the memory, but not by enough."""
    first, *rest = shown_memory(request)["evidence"]
    return {"evidence": [first.removeprefix("saw "), *rest]}


@pytest.mark.parametrize(("rewrite", "at", "reason"), [
    (shown_memory, 0.9, "not below compact_at x mem_cap (90 tokens)"),  # unchanged, at 90
    (shorten_first, 0.8, "not below compact_at x mem_cap (80 tokens)"),
    (shown_memory, 1.0, "gave the memory back unchanged"),  # a rejected revision was due
], ids=["unchanged", "still-above", "unchanged-below"])
async def test_a_rewrite_that_makes_no_room_is_a_failed_compaction(
        rewrite: Any, at: float, reason: str) -> None:
    """Accepted as `compacted`, it left the next step due again, until no compaction was left."""
    model = model_with(rewrite)
    answer = await arun(compact(compact_at=at, compact_target=0.25), sentinel_document(8),
                        "Where?", model)
    tried = [e for e in events(answer, "compact", "freeze") if e.detail.get("compaction")]
    assert tried and not events(answer, "compact")
    assert all(reason in e.detail["reason"] for e in tried), [e.detail for e in tried]
    assert all(e.detail["after_tokens"] == e.detail["before_tokens"] for e in tried)
    assert "compact_invalid" in answer.flags and "compacted" not in answer.flags


def test_a_rewrite_must_be_smaller_than_what_it_had_to_hold() -> None:
    """Below compact_at x mem_cap but larger than the memory: a rejected revision may be due to
    compact a small memory, and a rewrite that grows it and shows nothing folded made no room."""
    from types import SimpleNamespace

    from longweave.agents.prism_compact import _room
    from longweave.memory.structured_memory import StructuredMemory

    def memory_of(*facts: str) -> StructuredMemory:
        memory = StructuredMemory(from_model(QAMemory))
        for k, fact in enumerate(facts):
            assert memory.apply("add", ["evidence", k], fact, k) is None
        return memory

    prism, ctx = compact(compact_at=0.9), SimpleNamespace(llm=ScriptedModel())
    memory, longer = memory_of("saw 0", "saw 1"), memory_of("saw 0", "saw 1 and more")

    def room(result: StructuredMemory, revisions: list[Any]) -> StructuredMemory | str:
        return _room(prism, ctx, memory, memory.render("in_place"), result,
                     prism._size(ctx, result), revisions, 1000)

    assert "no smaller than the memory (" in room(longer, [])
    shown = [SimpleNamespace(op="add", path=["evidence", 2], value="saw 2 and a lot more")]
    assert room(longer, shown) is longer  # folded, and smaller
    assert "no smaller than the memory with the revisions shown" in room(
        memory_of("saw 0", "saw 1", "saw 2 and a lot more, and more"), shown)


@dataclasses.dataclass
class ProseModel(ScriptedModel):
    """Its first reply to each of `roles` comes back with no parsed object and no ParseError, as
    from a backend that found no JSON in the text; the later ones are scripted."""

    roles: tuple[str, ...] = ()

    async def complete(self, messages: Any, **options: Any) -> Completion:
        reply = await super().complete(messages, **options)
        if options["role"] in self.roles and len(self.calls(options["role"])) == 1:
            return dataclasses.replace(reply, text="Here is the memory.", parsed=None)
        return reply


async def test_a_reply_without_json_is_not_told_it_was_cut() -> None:
    model = ProseModel(context_window=2400, roles=("stepper", "compressor"))
    model.on("stepper", reply=fact_step)
    model.on("compressor", reply=keep_last)
    model.on("manager", reply={"answer": "a", "used_paths": []})
    answer = await arun(compact(compact_at=0.5, compact_target=0.25), sentinel_document(5), "q?",
                        model)
    for role in ("stepper", "compressor"):
        reask = model.calls(role)[1].messages[-1].content
        assert reask.startswith("Your previous reply was not usable: the reply held no JSON "
                                "object."), reask
        assert "cut off" not in reask
    assert events(answer, "compact")[0].detail["attempts"] == 2


async def test_step_and_rewrite_reasks_clip_the_complaint_to_complaint_chars() -> None:
    """Both calls are re-asked by one loop: the same prompt, then the validator's complaint cut
    to COMPLAINT_CHARS characters."""
    model = ScriptedModel(context_window=2400)
    model.on("stepper", reply={"revisions": [{"path": ["evidence", 0], "op": "drop"}]}, times=1)
    model.on("stepper", reply=fact_step)
    model.on("compressor", reply={"evidence": [[1], [2], [3]]}, times=1)
    model.on("compressor", reply=keep_last)
    model.on("manager", reply={"answer": "a", "used_paths": []})
    answer = await arun(compact(compact_at=0.5, compact_target=0.25), sentinel_document(5), "q?",
                        model)
    blank = reask_message("").content
    for role in ("stepper", "compressor"):
        first, again = model.calls(role)[:2]
        assert again.messages[:-1] == first.messages
        reask = again.messages[-1].content
        assert reask.startswith("Your previous reply was not usable: reply does not match "), reask
        assert len(reask) == len(blank) + COMPLAINT_CHARS  # the complaint was longer
    assert [s.detail["attempts"] for s in answer.steps if s.role == "stepper"][0] == 2
    assert events(answer, "compact")[0].detail["attempts"] == 2


async def test_compactions_are_capped_one_per_step_at_most() -> None:
    model = model_with(keep_last)
    prism = compact(compact_at=0.5, compact_target=0.25, max_compactions=2)
    answer = await arun(prism, sentinel_document(8), "q?", model)
    assert len(model.calls("compressor")) == 2
    assert len(events(answer, "compact")) == 2
    capped = [e for e in events(answer, "freeze") if "max_compactions" in e.detail["reason"]]
    assert capped and all(e.index > events(answer, "compact")[-1].index for e in capped)
    indices = [e.index for e in events(answer, "compact", "freeze")]
    assert len(indices) == len(set(indices))  # at most one compaction (or refusal) per step
    assert "capped" in answer.flags
    assert all(s.detail["memory_tokens"] <= 100 for s in answer.steps if s.role == "stepper")


async def test_the_rewrite_call_fits_the_window_and_lowers_the_default_cap() -> None:
    plans = {}
    for overflow in ("freeze", "compact"):
        model = model_with(keep_last)
        prism = Prism(overflow=overflow, compact_at=0.3, compact_target=0.1, **SMALL)
        answer = await arun(prism, sentinel_document(40, words=20), "q?", model)
        plans[overflow] = answer.steps[0].detail["mem_cap"]
        for request in model.requests:  # the scripted model refuses any that would not fit
            assert request.prompt_tokens + request.max_tokens <= 2400
    assert plans["compact"] < plans["freeze"]
    assert model.calls("compressor")
    assert all(r.max_tokens == plans["compact"] for r in model.calls("compressor"))
    with pytest.raises(BudgetExceeded, match="overflow=freeze"):
        await arun(compact(mem_cap=plans["freeze"]), sentinel_document(4), "q?",
                   model_with(keep_last))


async def test_a_rewrite_reask_with_the_longest_complaint_fits_the_window() -> None:
    """The default cap leaves the rewrite call room for a memory at mem_cap, one step reply of
    revisions, its reply at mem_cap and a complaint of COMPLAINT_CHARS punctuation marks (a
    token each to the scripted model)."""
    model, prism = model_with(keep_last), Prism(overflow="compact", **SMALL)
    ctx = RunContext(model, sentinel_document(4), "q?", prism.name)
    run = (await prism.initial_state(ctx))["run"]
    cap = run.plan.mem_cap
    messages, _ = rewrite_request(prism, "q?", run.schema, "x " * cap,
                                  ["x " * prism.step_max_new], UNBOUNDED_CHARS, ITEMS_CEILING)
    worst = [*messages, reask_message("!" * COMPLAINT_CHARS)]
    assert model.count_prompt_tokens(worst) + cap <= run.plan.window


async def test_revisions_shown_to_the_rewrite_are_bounded_by_one_step_reply() -> None:
    long = [" ".join(f"{'abcd'[k]}{j}" for j in range(60)) for k in range(4)]  # 80 tokens

    def step(request: Request) -> Any:
        if piece(request) == 0:
            return {"revisions": [{"path": ["evidence", 0], "op": "add", "value": "saw 0"}]}
        if piece(request) == 1:  # cut at step_max_new: its four whole revisions are kept
            cut = {"path": ["evidence", 5], "op": "add", "value": "cut here"}
            return json.dumps({"revisions": [
                *({"path": ["entities", f"k{k}"], "op": "add", "value": v}
                  for k, v in enumerate(long)), cut]})[:-6]
        return {"revisions": []}

    folded = {"evidence": ["saw 0"], "entities": [{"key": "k0", "value": "a0 to a59"}]}
    model = model_with(folded, step=step)  # the memory given back unchanged would not count
    answer = await arun(compact(compact_at=1.0), sentinel_document(4), "q?", model)
    (request,) = model.calls("compressor")
    assert long[0] in request.text and long[1] not in request.text  # 2 lines > step_max_new
    (event,) = events(answer, "compact")
    assert event.index == 1 and event.detail["pending"] == 1
    assert "4 revisions rejected at mem_cap" in [s.output for s in answer.steps]


def test_compact_target_must_be_below_compact_at() -> None:
    with pytest.raises(ValidationError, match="compact_target"):
        Prism(overflow="compact", compact_at=0.5, compact_target=0.5)


# -- cost index (§5.4) -----------------------------------------------------------------------


@dataclasses.dataclass
class CachingModel(ScriptedModel):
    """Reports a quarter of each step prompt after the first as served from a prefix cache."""

    cached: list[int] = dataclasses.field(default_factory=list)

    async def complete(self, messages: Any, **options: Any) -> Completion:
        reply = await super().complete(messages, **options)
        first = len(self.requests) == 1
        hit = 0 if first or options["role"] != "stepper" else reply.usage.prompt_tokens // 4
        self.cached.append(hit)
        usage = reply.usage.model_copy(update={"cached_tokens": hit})
        return dataclasses.replace(reply, usage=usage)


@pytest.mark.parametrize("weight", [3.0, 1.5])
async def test_cost_index_and_cache_hit_rate_from_known_usage(weight: float) -> None:
    model = CachingModel(context_window=2400)
    model.on("stepper", reply=fact_step)
    model.on("manager", reply={"answer": "a", "used_paths": []})
    options = {} if weight == 3.0 else {"output_weight": weight}  # the default is the paper's
    answer = await arun(Prism(**SMALL, **options), sentinel_document(6), "q?", model)
    prompt = sum(r.prompt_tokens for r in model.requests)
    cached = sum(model.cached)
    output = answer.usage.completion_tokens
    assert cached > 0 and output > 0
    cost = answer.steps[-1].detail["cost"]
    assert cost["uncached_prompt_tokens"] == prompt - cached
    assert cost["cached_prompt_tokens"] == cached == answer.usage.cached_tokens
    assert cost["output_tokens"] == output
    assert cost["cache_hit_rate"] == pytest.approx(cached / prompt)
    assert cost["cost_index"] == pytest.approx(prompt - cached + weight * output)
    assert cost["output_weight"] == weight


def test_no_hit_rate_without_prompt_tokens() -> None:
    # every call answered from the completion cache: no prompt tokens, no rate to speak of
    assert _cost_report(Usage(calls=3, cache_hits=3), 3.0)["cache_hit_rate"] is None
    assert _cost_report(Usage(prompt_tokens=10, completion_tokens=2), 3.0)["cost_index"] == 16


# -- revision field order (§5.3) -------------------------------------------------------------


async def test_revisions_are_written_path_then_op_then_value() -> None:
    batch = revision_schema(from_model(QAMemory), ("add", "update"), 300, 10, 16)
    revision = batch.model_fields["revisions"].annotation.__args__[0]
    assert list(revision.model_fields) == ["path", "op", "value"]
    for template in batch.model_json_schema()["properties"]["revisions"]["items"]["anyOf"]:
        assert list(template["properties"]) == ["path", "op", "value"] == template["required"]
    sketch = json_instructions(batch)
    first = sketch[sketch.index("[{"):]  # the first revision template of the sketch
    assert first.index('"path"') < first.index('"op"') < first.index('"value"')
    model = model_with(keep_last)
    await arun(Prism(ops="add_update", **SMALL), sentinel_document(3), "q?", model)
    prefix = model.calls("stepper")[0].messages[0].content
    assert sketch in prefix and 'revisions {"path", "op", "value"}' in prefix
    assert LINE.format(i=0, v=0) in model.calls("stepper")[1].text  # the log, in that order

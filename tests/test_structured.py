"""Schema-valid output: instructions, repair of small models' broken JSON, re-ask, schema bounds."""

from __future__ import annotations

import json
import warnings
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from longweave.agents.base import RunContext
from longweave.documents import Document
from longweave.errors import ParseError
from longweave.llm import Message
from longweave.structured import (
    json_instructions,
    parse_structured,
    reask,
    reask_message,
    repair_json,
    reply_floor_tokens,
    schema_fits,
    schema_sketch,
    strict_schema,
    whole_items,
)
from longweave.testing import ScriptedModel


class Step(BaseModel):
    """A bounded nested item."""

    action: Literal["read", "answer"]
    chunk: int = Field(ge=0, le=999)


class Plan(BaseModel):
    """A bounded schema, as §8.4 asks of every structured call."""

    title: str = Field(max_length=30)
    steps: list[Step] = Field(max_length=3)
    done: bool = False
    note: str | None = Field(default=None, max_length=20)


GOOD = {"title": "Find it", "steps": [{"action": "read", "chunk": 3}], "done": True, "note": None}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        (
            'Sure! Here:\n```json\n{"a": 1, "b": [1, 2,],}\n```\nHope that helps {x}.',
            {"a": 1, "b": [1, 2]},
        ),
        ("{'a': 'it's fine', 'b': True, 'c': None}", {"a": "it's fine", "b": True, "c": None}),
        ('Thinking {not json} then {"a": "x"} and more prose', {"a": "x"}),
        ('{"a": "line\nbreak"}', {"a": "line\nbreak"}),
        ("{'a': 'say \"hi\"'}", {"a": 'say "hi"'}),
    ],
)
def test_repair_of_common_breakage(text: str, value: dict[str, object]) -> None:
    assert repair_json(text)[0] == value


@pytest.mark.parametrize(
    ("cut", "value"),
    [
        ('{"answer": "Lima is the cap', {"answer": "Lima is the cap"}),  # a cut string is kept
        ('{"answer": "Lima", "ite', {"answer": "Lima"}),  # a cut key is dropped
        ('{"answer": "Lima", "items": [1, 2, 3', {"answer": "Lima", "items": [1, 2]}),
        ('{"answer": "Lima", "ok": tru', {"answer": "Lima"}),
        ('{"a": [{"x": "a"}, {"x": "b\\', {"a": [{"x": "a"}, {"x": "b"}]}),
        ('{"a": {"b": 1,', {"a": {"b": 1}}),
    ],
)
def test_a_length_cut_is_closed_at_the_last_complete_value(cut: str, value: object) -> None:
    assert repair_json(cut) == (value, True)


def test_every_prefix_of_valid_json_repairs_or_fails_cleanly() -> None:
    text = json.dumps(
        GOOD | {"steps": [{"action": "read", "chunk": 3}, {"action": "answer", "chunk": 12}]}
    )
    closed = 0
    for end in range(1, len(text) + 1):
        try:
            value, _ = repair_json(text[:end])
        except ValueError:
            continue
        assert isinstance(value, dict)
        closed += 1
    assert repair_json(text) == (json.loads(text), False)
    assert closed > len(text) - 5  # nearly every cut point yields an object


def test_text_without_json_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no JSON object found"):
        repair_json("I am not sure what you mean.")


def test_parse_structured_validates_and_complains_precisely() -> None:
    assert parse_structured(json.dumps(GOOD), Plan) == Plan.model_validate(GOOD)
    with pytest.raises(ParseError) as info:
        parse_structured('{"title": "x", "steps": [{"action": "jump", "chunk": 5000}]}', Plan)
    message = info.value.message
    assert message.startswith("the reply does not match Plan:")
    assert "steps.0.action: Input should be 'read' or 'answer'" in message
    assert "steps.0.chunk: Input should be less than or equal to 999" in message
    assert info.value.raw.startswith('{"title"')


def test_parse_structured_reports_broken_json_with_the_raw_text() -> None:
    with pytest.raises(ParseError) as info:
        parse_structured("No JSON here.", Plan)
    assert "not valid JSON" in info.value.message and info.value.raw == "No JSON here."


def test_reask_message_carries_the_complaint() -> None:
    error = ParseError("the reply does not match Plan: title: Field required", raw="{}")
    message = reask_message(error)
    assert message.role == "user" and "title: Field required" in message.content
    assert reask_message("plain complaint").content.startswith(
        "Your previous reply was not usable: plain complaint."
    )


def test_reask_shows_the_bad_reply_between_the_prompt_and_the_complaint() -> None:
    prompt = [Message("system", "Reply in JSON."), Message("user", "Plan a trip.")]
    error = ParseError("the reply does not match Plan: title: Field required", raw="{}")
    again = reask(prompt, '{"steps": []}', error)
    assert again[:2] == prompt and again[2] == Message("assistant", '{"steps": []}')
    assert again[3] == reask_message(error) and len(again) == 4
    assert prompt == [Message("system", "Reply in JSON."), Message("user", "Plan a trip.")]


def test_reask_after_an_empty_reply_shows_no_empty_turn() -> None:
    prompt = [Message("user", "Plan a trip.")]
    assert reask(prompt, "", "no JSON") == [*prompt, reask_message("no JSON")]


class Node(BaseModel):
    name: str = Field(max_length=10)
    children: list[Node] = Field(default_factory=list, max_length=2)


class Holder(BaseModel):
    main: Step = Field(description="the step to take")
    tree: Node
    tags: dict[str, int] = Field(default_factory=dict, description="tag -> count")


def test_instructions_sketch_the_shape_with_types_and_limits_in_place() -> None:
    text = json_instructions(Plan)
    # Class docstrings are written for programmers: neither Plan's nor Step's is shown.
    assert text.endswith(
        'where the values go: {"title": string (at most 30 characters), "steps": [{"action": '
        '"read"|"answer", "chunk": integer (from 0 to 999)}, ...] (at most 3 items), "done" '
        '(optional): true|false, "note" (optional): string (at most 20 characters) or null}')


def test_the_sketch_holds_no_schema_keywords_for_a_model_to_copy() -> None:
    # The bundled 135M model wrote keys like "#/$defs/..." and "additionalProperties" when
    # shown the JSON schema; the sketch names fields and types only.
    sketch = schema_sketch(Holder.model_json_schema())
    for keyword in ("$defs", "$ref", "maxLength", "additionalProperties", "properties", "type"):
        assert keyword not in sketch
    assert sketch == (
        '{"main": {"action": "read"|"answer", "chunk": integer (from 0 to 999)} (the step to '
        'take), "tree": Node, "tags" (optional): {string: integer, ...} (tag -> count)}; where '
        'Node is {"name": string (at most 10 characters), "children" (optional): [Node, ...] '
        '(at most 2 items)}')  # a type that refers to itself: named, and sketched once


class Limits(BaseModel):
    share: float = Field(gt=0, lt=1)
    count: int = Field(ge=1, multiple_of=2)
    label: str | None = Field(max_length=5, description="a short\n   label")
    notes: list[str] = Field(min_length=1)
    extra: dict[str, Any]


def test_the_sketch_words_every_limit() -> None:
    assert schema_sketch(Limits.model_json_schema()) == (
        '{"share": number (more than 0, less than 1), "count": integer (at least 1, a multiple '
        'of 2), "label": string (at most 5 characters) or null (a short label), "notes": '
        '[string, ...] (at least 1 item), "extra": {string: any value, ...}}')
    listed = {"type": ["string", "null"], "maxLength": 3}  # a type list keeps its limits
    assert schema_sketch(listed) == "string (at most 3 characters) or null"


def test_strict_schema_requires_every_field_and_forbids_extras() -> None:
    body, strict = strict_schema(Plan)
    assert strict
    assert body["required"] == ["title", "steps", "done", "note"]
    assert body["additionalProperties"] is False
    assert body["$defs"]["Step"]["additionalProperties"] is False
    assert "default" not in json.dumps(body)


def test_free_form_maps_are_not_strict() -> None:
    class Scores(BaseModel):
        scores: dict[str, int]

    assert strict_schema(Scores)[1] is False


def test_schema_fits_uses_the_serialized_upper_bound() -> None:
    count = len  # one token per character: an upper bound for ASCII
    skeleton = {
        "title": "",
        "steps": [{"action": "answer", "chunk": 999}] * 3,
        "done": False,
        "note": "",
    }
    bound = len(json.dumps(skeleton)) + 30 + 20
    assert schema_fits(Plan, bound, count)
    assert not schema_fits(Plan, bound - 1, count)


def test_unbounded_schemas_never_fit() -> None:
    class Loose(BaseModel):
        items: list[str]

    assert not schema_fits(Loose, 10**9, len)


class _Link(BaseModel):
    name: str = Field(max_length=12)
    next: _Link | None  # required, but null ends the chain


class _Floor(BaseModel):
    tag: Literal["long-choice", "b"]
    lines: list[str] = Field(min_length=2, max_length=9)  # each line empty: no limit to fill
    head: _Link
    pair: tuple[int, str] = (0, "")  # not required: left out
    score: int = Field(ge=3, le=9)


def test_reply_floor_is_the_shortest_reply_with_text_at_its_limits() -> None:
    seen: list[str] = []

    def count(text: str) -> int:
        seen.append(text)
        return len(text)

    floor = reply_floor_tokens(_Floor, count)
    reply = json.loads(seen[-1])
    assert reply == {"tag": "b", "lines": ["", ""],
                     "head": {"name": "The keeper w", "next": None}, "score": 3}
    assert floor == len(seen[-1])
    # Plan: the title at its 30 characters; no steps; the optional fields left out.
    assert json.loads(_last(Plan)) == {"title": "The keeper wrote down the name", "steps": []}


def test_reply_floor_in_strict_mode_writes_every_field() -> None:
    """OpenAI strict mode makes every field required: the optional ones are written too."""
    from longweave.openai_backend import OpenAILLM

    texts: list[str] = []
    strict = reply_floor_tokens(_Floor, lambda t: texts.append(t) or len(t), every_field=True)
    reply = json.loads(texts[-1])
    assert reply["pair"] == [0, ""] and set(reply) == {"tag", "lines", "head", "pair", "score"}
    assert strict > reply_floor_tokens(_Floor, len)
    backend = OpenAILLM("gpt-4o", api_key="x")
    assert backend.writes_every_field(Plan)
    assert not OpenAILLM("gpt-4o", api_key="x", structured="instructions").writes_every_field(Plan)


def _last(schema: type[BaseModel]) -> str:
    texts: list[str] = []
    reply_floor_tokens(schema, lambda t: texts.append(t) or 0)
    return texts[-1]


def test_reply_floor_fills_long_limits_with_prose() -> None:
    class Long(BaseModel):
        text: str = Field(max_length=1000)

    text = json.loads(_last(Long))["text"]
    assert len(text) == 1000 and text.startswith("The keeper") and " " in text[900:]


class _Fact(BaseModel):
    fact: str = Field(max_length=40)
    keys: list[str] = Field(min_length=1)


class _Facts(BaseModel):
    facts: list[_Fact]
    note: str


def test_whole_items_keeps_what_closed_before_the_cut() -> None:
    raw = ('{"facts": [{"fact": "The lamp is red.", "keys": ["lamp"]}, '
           '{"fact": "no keys", "keys": []}, {"fact": "The keeper retired in 1920.", '
           '"keys": ["keeper"]}, {"fact": "The keeper was Mara Qu')
    kept = whole_items(raw, _Facts, "facts")
    # The invalid item (no keys) is skipped, the cut one dropped; `note` was never written.
    assert [f.fact for f in kept] == ["The lamp is red.", "The keeper retired in 1920."]
    assert whole_items('{"note": "x", "facts": [', _Facts, "facts") == []
    assert whole_items("Sorry, I cannot help.", _Facts, "facts") == []
    # Complete JSON was not cut: nothing is salvaged from it (its caller re-asks).
    finished = '{"facts": [{"fact": "a", "keys": ["b"]}], "note": "c"}'
    assert whole_items(finished, _Facts, "facts") == []
    # Cut later, in another field: the closed list is kept whole.
    assert len(whole_items(finished[:-3], _Facts, "facts")) == 1


def test_whole_items_obeys_the_list_bound_and_drops_a_number_at_the_cut() -> None:
    class Scores(BaseModel):
        scores: list[int] = Field(max_length=2)

    assert whole_items('{"scores": [12, 34, 56, 7', Scores, "scores") == [12, 34]
    assert whole_items('{"scores": [12, 3', Scores, "scores") == [12]


async def test_a_cap_below_the_reply_floor_warns_once_per_role_and_cap() -> None:
    class Note(BaseModel):
        text: str = Field(max_length=200)

    model = ScriptedModel()
    model.on("reader", reply={"text": "short"})
    ctx = RunContext(model, Document.from_text("Some text."), "q?", "test")
    floor = reply_floor_tokens(Note, model.count_tokens)
    with pytest.warns(RuntimeWarning, match=rf"test reader: a Note reply .* about {floor} tokens, "
                      rf"over the cap of {floor - 1}") as caught:
        for _ in range(2):
            await ctx.call("reader", [], max_tokens=floor - 1, schema=Note)
    assert len(caught) == 1  # checked once per role, schema and cap, not on every call
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await ctx.call("reader", [], max_tokens=floor, schema=Note)
        await ctx.call("reader", [], max_tokens=8)  # no schema: nothing to check
    assert len(model.calls("reader")) == 4

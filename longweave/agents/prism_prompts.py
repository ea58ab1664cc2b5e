"""PRISM's built-in schemas, structured-output models and prompt wording (STRATEGIES.md §5.3).

The step prompt is laid out static prefix (system message: task, question, schema, revision
format) -> memory -> chunk, so consecutive step prompts share as long a byte prefix as possible.
The compaction prompt (overflow `compact`) asks for the whole memory again, shorter, and shows
the memory last.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from longweave.llm import Message, quoted, system, user
from longweave.memory.structured_memory import (
    KEY_CHARS,
    FieldSpec,
    SchemaSpec,
    TypeNode,
    render_json,
)
from longweave.structured import is_complete_json, json_instructions, repair_json, whole_items

PROMPT_VERSION = "prism-6"
"""Bumped when wording changes; keys the cached generated schemas."""

END_OF_MEMORY = "--- end of memory ---"
Variant = Literal["amendments", "in_place"]


class QAMemory(BaseModel):
    """Built-in memory for answering a question about a long text."""

    evidence: list[str] = Field(
        description="facts from the text that bear on the question, with names, numbers, dates")
    entities: dict[str, str] = Field(
        description="people, places or things that matter to the question -> what the text says")
    candidate_answers: list[str] = Field(description="possible answers, best supported first")


class SummaryMemory(BaseModel):
    """Built-in memory for summarizing a long text."""

    events: list[str] = Field(description="main events or points, in the order the text gives")
    people: dict[str, str] = Field(description="people or groups -> their role in the text")
    themes: list[str] = Field(description="recurring topics, conclusions or themes")


# Hand-written specs from other domains, the few-shot examples of schema generation (§5.2).
EXAMPLE_SPECS = [
    ("Questions about a software repository", "Which function parses the config file?",
     SchemaSpec(name="code_repository", fields=[
         FieldSpec(name="functions", type="dict[str,str]",
                   description="function name -> what it does and where it is defined"),
         FieldSpec(name="call_edges", type="list[str]", description="'caller -> callee' pairs"),
         FieldSpec(name="config_keys", type="list[str]", description="configuration names seen"),
     ])),
    ("Questions about a commercial contract", "When can either party terminate?",
     SchemaSpec(name="contract", fields=[
         FieldSpec(name="parties", type="dict[str,str]", description="party name -> its role"),
         FieldSpec(name="obligations", type="dict[str,list[str]]",
                   description="party name -> what it must do"),
         FieldSpec(name="dates", type="dict[str,str]", description="event -> date or deadline"),
     ])),
    ("Questions about a cookbook", "Which recipes use saffron?",
     SchemaSpec(name="cookbook", fields=[
         FieldSpec(name="recipes", type="dict[str,list[str]]",
                   description="recipe name -> its ingredients"),
         FieldSpec(name="cooking_minutes", type="dict[str,int]",
                   description="recipe name -> total time in minutes"),
     ])),
]


def _no_description(schema: dict[str, Any]) -> None:
    # A small model shown the class docstring in the JSON schema copies it as its answer.
    schema.pop("description", None)


class FinalAnswer(BaseModel):
    """The final answer and the memory paths it used (for citations)."""

    model_config = ConfigDict(json_schema_extra=_no_description)

    answer: str = Field(max_length=1000)
    used_paths: list[Annotated[list[Annotated[str, Field(max_length=KEY_CHARS)] | Annotated[
        int, Field(ge=0, le=9999)]], Field(max_length=4)]] = Field(default_factory=list,
                                                                    max_length=10)


def final_schema(answer_chars: int) -> type[BaseModel]:
    """FinalAnswer with the configured answer bound."""
    if answer_chars == 1000:
        return FinalAnswer
    return create_model(
        "FinalAnswer", __base__=FinalAnswer,
        answer=(str, Field(max_length=answer_chars)),
    )


def _value_type(node: TypeNode, chars: int, items: int) -> Any:
    if node.kind == "str":
        return Annotated[str, Field(max_length=chars)]
    if node.kind == "int":
        return Annotated[int, Field(ge=-(10**12), le=10**12)]
    if node.kind == "float":
        return float
    if node.kind == "bool":
        return bool
    if node.kind == "list":
        return Annotated[list[_value_type(node.item, chars, items)], Field(max_length=items)]  # type: ignore[misc]
    raise ValueError(f"no revision value type for {node.label()}")


def _all_types(node: TypeNode) -> list[TypeNode]:
    found: list[TypeNode] = []
    for child in node.fields.values() if node.kind == "object" else [node.item]:  # type: ignore[list-item]
        found += [child, *(_all_types(child) if child.kind not in ("str", "int", "float",
                                                                    "bool") else [])]
    return found


def _has_mapping(node: TypeNode) -> bool:
    if node.kind in ("map", "object"):
        return True
    return node.kind == "list" and _has_mapping(node.item)  # type: ignore[arg-type]


def revision_schema(
    schema: TypeNode, ops: tuple[str, ...], chars: int, items: int, max_revisions: int
) -> type[BaseModel]:
    """RevisionBatch for `schema`: any path of its depth; values are its scalar and list types."""
    values: list[Any] = []
    labels: list[str] = []
    for node in _all_types(schema):
        # Maps and objects are written key by key (missing ones are created), so values stay
        # free of free-form maps, which small models cannot be held to (§8.4).
        if _has_mapping(node):
            continue
        if node.label() not in labels:  # one alternative per distinct type, in schema order
            labels.append(node.label())
            values.append(_value_type(node, chars, items))
    value = Union[tuple(values)] if len(values) > 1 else values[0]  # noqa: UP007
    step = Annotated[str, Field(max_length=KEY_CHARS)] | Annotated[int, Field(ge=0, le=9999)]
    # Field order is the order a model writes them (§5.3): where, then how, then what.
    revision = create_model(
        "Revision",
        path=(list[step], Field(min_length=1, max_length=max(1, schema.depth()))),
        op=(Literal[ops], ...),  # type: ignore[valid-type]
        value=(value, ...),
    )
    variants = _templates(schema, ops, chars, items)

    def templated(js: dict[str, Any]) -> None:
        # Decoding follows the schema's path templates (§5.3: anyOf over fixed field names and
        # free keys or indices, each with its value type); parsing stays generic, so a
        # well-formed revision on a wrong path is a logged validator reject, not a parse error.
        js["properties"]["revisions"]["items"] = {"anyOf": variants}
        js.pop("$defs", None)

    return create_model(
        "RevisionBatch",
        __config__=ConfigDict(json_schema_extra=templated),
        revisions=(list[revision], Field(max_length=max_revisions)),  # type: ignore[valid-type]
    )


def _templates(
    schema: TypeNode, ops: tuple[str, ...], chars: int, items: int
) -> list[dict[str, Any]]:
    """One JSON schema per path template whose value has no map inside."""
    found: list[dict[str, Any]] = []

    def walk(node: TypeNode, steps: list[dict[str, Any]]) -> None:
        children: list[tuple[dict[str, Any], TypeNode]]
        if node.kind == "object":
            children = [({"const": name}, sub) for name, sub in node.fields.items()]
        elif node.kind == "map":
            children = [({"type": "string", "minLength": 1, "maxLength": KEY_CHARS}, node.item)]  # type: ignore[list-item]
        elif node.kind == "list":
            children = [({"type": "integer", "minimum": 0, "maximum": 9999}, node.item)]  # type: ignore[list-item]
        else:
            return
        for step, child in children:
            path = [*steps, step]
            if not _has_mapping(child):
                value = TypeAdapter(_value_type(child, chars, items)).json_schema()
                found.append({
                    "type": "object",
                    "properties": {
                        "path": {"type": "array", "prefixItems": path, "items": step,
                                 "minItems": len(path), "maxItems": len(path)},
                        "op": {"enum": list(ops)} if len(ops) > 1 else {"const": ops[0]},
                        "value": value,
                    },
                    "required": ["path", "op", "value"],
                })
            walk(child, path)

    walk(schema, [])
    return found


def _ops_text(ops: tuple[str, ...]) -> str:
    # Paths are described in words: shown `["field", "key"]`, the bundled model wrote "key",
    # "str" or a field's name where the text's names belong.
    text = (
        '- "add" writes what is not there yet: a whole field, a new name in a dict, or the next '
        "item of a list (its position: how many items the list has now, counting from 0)."
    )
    if "update" in ops:
        text += '\n- "update" replaces a value that exists, at the same path.'
    else:
        text += "\n- Values cannot be changed once written: only add."
    return text


def static_prefix(
    task: str, question: str, schema: TypeNode, ops: tuple[str, ...], variant: Variant,
    batch: type[BaseModel],
) -> str:
    """The cached part of every step prompt: byte-identical across the steps of a run.

    It ends with the reply's shape and then what the names and values in it are taken from:
    told to keep values exact before a shape of `string (1 to 64 characters)` placeholders, the
    bundled model filled the shape with its own words (a field's name as every list item)."""
    lines = [
        "You keep a structured memory while reading a long text one piece at a time. You never "
        "see the whole text again: only the memory and the current piece.",
        f"Task: {task}",
    ]
    if question.strip():
        lines.append(f"Question: {question.strip()}")
    lines += ["Memory schema (the memory is a JSON object with these fields):",
              *("- " + line for line in schema.outline())]
    lines += [
        'You change the memory only through revisions {"path", "op", "value"}: the path is the '
        "field, then a name in it or a list position.", _ops_text(ops),
        "A revision that breaks the schema is rejected.",
    ]
    if variant == "amendments":
        lines.append("The memory is shown as a log of revisions, one per line; later lines "
                     "override earlier ones.")
    lines += [
        json_instructions(batch),
        "That shape only says where things go. Every name and value you write is taken from the "
        "piece: the name of a person, place or thing as the piece writes it, and a short fact "
        "with the names, numbers and dates the piece gives. Propose only revisions this piece "
        "justifies, or none when it adds nothing relevant.",
    ]
    return "\n".join(lines)


def memory_part(rendered: str, variant: Variant) -> str:
    """The memory block; it ends where the chunk part begins, with no closing tag of its own."""
    if variant == "amendments":
        return "Memory log:\n" + rendered
    return "Memory:\n" + rendered + "\n"


def chunk_part(i: int, total: int, chunk: str) -> str:
    """The piece being read (i is 0-based)."""
    return (
        f"{END_OF_MEMORY}\n\nPiece {i + 1} of {total}:\n{quoted(chunk)}\n\n"
        "Reply with the revisions this piece justifies (an empty list if none)."
    )


def step_messages(prefix: str, memory: str, i: int, total: int, chunk: str) -> list[Message]:
    """A step prompt: static prefix, then memory, then chunk."""
    return [system(prefix), user(memory + chunk_part(i, total, chunk))]


def _task_head(task: str, question: str, schema: TypeNode) -> list[str]:
    """The lines the final and compaction calls open with: task, question, schema."""
    head = [f"Task: {task}"]
    if question.strip():
        head.append(f"Question: {question.strip()}")
    return [*head, "Memory schema:", *("- " + line for line in schema.outline())]


def _memory_head(task: str, question: str, schema: TypeNode, memory: str) -> list[str]:
    """The lines the final call opens with: task, question, schema, memory."""
    return [*_task_head(task, question, schema), memory]


def final_messages(
    task: str, question: str, schema: TypeNode, memory: str, *, query: bool
) -> list[Message]:
    """The final call: the memory and the question, no chunk text."""
    head = _memory_head(task, question, schema, f"Memory:\n{memory}")
    if query:
        ask = ("Answer the question from the memory alone, briefly. In used_paths list the "
               'memory paths you relied on, like ["evidence", 0].')
    else:
        ask = "Write a summary of the whole text from the memory alone.\n\nSummary:"
    return [
        system("You complete a task about a long text that you can only see through a "
               "structured memory written while reading it."),
        user("\n".join(head) + "\n\n" + ask),
    ]


def memory_reply_schema(schema: TypeNode, chars: int, items: int) -> type[BaseModel]:
    """A compaction reply: the whole memory with S's fields, each optional; a dict is written as
    a list of {key, value} entries (no free-form maps, §8.4); lists hold at most `items`."""

    def typed(node: TypeNode, name: str) -> Any:
        if node.kind == "object":
            fields: dict[str, Any] = {k: (typed(sub, f"{name}_{k}"), None)
                                      for k, sub in node.fields.items()}
            return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)
        if node.kind == "map":
            entry = create_model(
                f"{name}_entry", __config__=ConfigDict(extra="forbid"),
                key=(Annotated[str, Field(min_length=1, max_length=KEY_CHARS)], ...),
                value=(typed(node.item, f"{name}_value"), ...),  # type: ignore[arg-type]
            )
            return Annotated[list[entry], Field(max_length=items)]  # type: ignore[valid-type]
        if node.kind == "list":
            return Annotated[list[typed(node.item, name)], Field(max_length=items)]  # type: ignore[arg-type, misc]
        return _value_type(node, chars, items)

    return typed(schema, "Memory")  # type: ignore[no-any-return]


def memory_from_reply(reply: BaseModel, schema: TypeNode) -> dict[str, Any] | str:
    """The memory a compaction reply writes (dicts back from their entries), or why it is none."""

    def back(node: TypeNode, value: Any) -> Any:
        if node.kind == "object":
            return {k: back(node.fields[k], v) for k, v in value.items()}
        if node.kind == "list":
            return [back(node.item, v) for v in value]  # type: ignore[arg-type]
        if node.kind == "map":
            keys = [e["key"] for e in value]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:
                raise ValueError(f"the key(s) {render_json(twice)} repeat in one dict")
            return {e["key"]: back(node.item, e["value"]) for e in value}  # type: ignore[arg-type]
        return value

    try:
        return back(schema, reply.model_dump(exclude_unset=True))  # type: ignore[no-any-return]
    except ValueError as exc:
        return f"the rewritten memory: {exc}"


def compact_messages(
    task: str, question: str, schema: TypeNode, memory: str, pending: list[str], chars: int,
    reply: type[BaseModel],
) -> list[Message]:
    """The compaction call (overflow `compact`): what to do, the size to rewrite the whole memory
    within and the reply's shape, then the memory as JSON and the revisions of the last piece
    that did not fit.

    The memory comes last, nearest the reply, and the wording quotes no name from the reply's
    shape: shown that shape after the memory, with dicts to be written as `{"key", "value"}`
    entries, the bundled model copied the shape instead of the memory and wrote
    `{"key": "key", "value": "value"}`, which the steps after it then copied in turn."""
    ask = (
        f"Write the memory below again in at most {chars} characters of JSON. Merge entries that "
        "say the same thing, shorten long values and leave out what matters least for the task; "
        "keep names, numbers and dates exactly as written. Add nothing that the memory"
        f"{' or the revisions after it do' if pending else ' does'} not hold."
    )
    if any(node.kind == "map" for node in _all_types(schema)):
        ask += (" A dict becomes a list with one entry per name it keeps: the name as the memory "
                "writes it, then its text.")
    shown = [f"Memory ({len(memory)} characters):\n{memory}"]
    if pending:
        shown.append("Revisions from the last piece read that no longer fit in the memory:\n"
                     + "\n".join(pending))
    return [
        system("You keep the memory of a reader of a long text under its size limit. The memory "
               "has grown too large: you rewrite it smaller, keeping what the task needs."),
        user("\n".join(_task_head(task, question, schema)) + "\n\n" + ask + "\n\n"
             + json_instructions(reply) + "\n\n" + "\n".join(shown)),
    ]


def schema_messages(task: str, example_query: str) -> list[Message]:
    """Schema generation: three specs from other domains, then this task (§5.3)."""
    shots = "\n\n".join(
        f"Task: {t}\nExample question: {q}\nSchema: {render_json(s.model_dump())}"
        for t, q, s in EXAMPLE_SPECS
    )
    return [
        system("You design the memory a reader keeps while reading a long text for a task: a "
               "few typed fields that will hold what the task needs."),
        user(f"{shots}\n\nTask: {task}\nExample question: {example_query or '(none)'}\n"
             "Schema:"),
    ]


def salvage_final(raw: str, answer_chars: int) -> tuple[str, list[list[Any]]] | None:
    """The answer text and the whole used paths of a final reply cut at max_tokens (not one
    that is complete but invalid); None when it holds no answer text (ours)."""
    if is_complete_json(raw):
        return None  # it was not cut, it failed its schema
    try:
        value, _ = repair_json(raw)  # keeps the cut answer string: partial text beats none
    except ValueError:
        return None
    answer = value.get("answer") if isinstance(value, dict) else None
    if not isinstance(answer, str) or not answer.strip():
        return None
    used = whole_items(raw, final_schema(answer_chars), "used_paths")
    return answer.strip()[:answer_chars], [list(path) for path in used]


def render_revision(revision: BaseModel) -> str:
    """A revision as the trace shows it."""
    return render_json(revision.model_dump())

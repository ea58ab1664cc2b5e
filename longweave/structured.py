"""Schema-valid output: JSON instructions, tolerant parsing with repair, and the re-ask.

Backend-independent: the OpenAI-compatible backend uses it when a server cannot enforce a JSON
schema, and local backends use it to validate (and, without constrained decoding, to repair).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from longweave.errors import ParseError
from longweave.llm import Message

T = TypeVar("T", bound=BaseModel)

__all__ = [
    "is_complete_json",
    "json_instructions",
    "parse_structured",
    "reask",
    "reask_message",
    "repair_json",
    "reply_floor_tokens",
    "schema_fits",
    "schema_sketch",
    "strict_schema",
    "whole_items",
]

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[-+]?[0-9.]+(?:[eE][-+]?[0-9]*)?")
_PY_LITERALS = {"True": "true", "False": "false", "None": "null"}
_JSON_LITERALS = {"true", "false", "null"}
_MAX_STARTS = 5  # prose may contain stray braces; try only the first few object starts


def schema_sketch(schema: dict[str, Any]) -> str:
    """A JSON schema as a one-line sketch of the reply's shape: field names in JSON, types and
    limits in words where the values go, e.g. `{"items": [{"key": string (at most 60
    characters)}, ...] (at most 8 items)}`. Models read it more easily than the schema itself, and
    small ones stop copying schema keywords ("$defs", "maxLength", "additionalProperties") into
    their replies (docs/BENCHMARKS.md, "JSON instructions"). Field descriptions are shown beside
    their fields; class docstrings (the root's and the definitions' own descriptions) are not,
    as they are written for programmers. A type that refers to itself is shown by name and
    sketched once at the end."""
    defs: dict[str, Any] = schema.get("$defs", {})
    recursive = _recursive_defs(defs)

    def count(n: Any, unit: str) -> str:
        return f"{n} {unit[:-1] if n == 1 else unit}"

    def size(node: dict[str, Any], unit: str, lo_key: str, hi_key: str) -> str:
        lo, hi = node.get(lo_key), node.get(hi_key)
        if lo and hi is not None:
            return f"{lo} to {count(hi, unit)}"
        if hi is not None:
            return f"at most {count(hi, unit)}"
        return f"at least {count(lo, unit)}" if lo else ""

    def bounds(node: dict[str, Any]) -> str:
        lo, hi = node.get("minimum"), node.get("maximum")
        if lo is not None and hi is not None:
            return f"from {lo} to {hi}"
        parts = [f"at least {lo}" if lo is not None else "",
                 f"more than {node['exclusiveMinimum']}" if "exclusiveMinimum" in node else "",
                 f"at most {hi}" if hi is not None else "",
                 f"less than {node['exclusiveMaximum']}" if "exclusiveMaximum" in node else "",
                 f"a multiple of {node['multipleOf']}" if "multipleOf" in node else ""]
        return ", ".join(p for p in parts if p)

    def noted(text: str, node: dict[str, Any], *notes: str) -> str:
        described = " ".join(str(node.get("description", "")).split())
        kept = [n for n in (*notes, described) if n]
        return f"{text} ({'; '.join(kept)})" if kept else text

    def body(name: str) -> dict[str, Any]:
        """A definition without its class docstring."""
        return {k: v for k, v in defs[name].items() if k != "description"}

    def sketch(node: Any) -> str:
        if not isinstance(node, dict) or not node:
            return "any value"
        name = _local_ref(node)
        if name is not None and name in defs:
            if name in recursive:
                return noted(name, node)
            return sketch({**body(name), **{k: v for k, v in node.items() if k != "$ref"}})
        for key in ("anyOf", "oneOf", "allOf"):
            if isinstance(node.get(key), list):
                joint = " and " if key == "allOf" else " or "
                return noted(joint.join(sketch(n) for n in node[key]), node)
        if "const" in node:
            return noted(json.dumps(node["const"], ensure_ascii=False), node)
        if "enum" in node:
            return noted("|".join(json.dumps(v, ensure_ascii=False) for v in node["enum"]), node)
        kind = node.get("type")
        if isinstance(kind, list):  # each type keeps the limits beside it
            rest = {k: v for k, v in node.items() if k not in ("type", "description")}
            return noted(" or ".join(sketch({**rest, "type": k}) for k in kind), node)
        if kind == "object" or "properties" in node:
            required = set(node.get("required", []))
            fields = [f"{json.dumps(field, ensure_ascii=False)}"
                      f"{'' if field in required else ' (optional)'}: {sketch(sub)}"
                      for field, sub in node.get("properties", {}).items()]
            extra = node.get("additionalProperties", "properties" not in node)
            if extra is not False and extra is not None:
                key = sketch(node["propertyNames"]) if "propertyNames" in node else "string"
                fields.append(f"{key}: {sketch(extra if isinstance(extra, dict) else {})}, ...")
            return noted("{" + ", ".join(fields) + "}", node,
                         size(node, "keys", "minProperties", "maxProperties"))
        if kind == "array":
            if isinstance(node.get("prefixItems"), list):
                return noted(f"[{', '.join(sketch(n) for n in node['prefixItems'])}]", node)
            return noted(f"[{sketch(node.get('items', {}))}, ...]", node,
                         size(node, "items", "minItems", "maxItems"))
        if kind == "string":
            return noted("string", node, size(node, "characters", "minLength", "maxLength"),
                         f"format {node['format']}" if "format" in node else "",
                         f"matching /{node['pattern']}/" if "pattern" in node else "")
        if kind in ("integer", "number"):
            return noted(kind, node, bounds(node))
        if kind == "boolean":
            return noted("true|false", node)
        if kind == "null":
            return "null"
        return noted("any value", node)

    text = sketch({k: v for k, v in schema.items() if k not in ("description", "$defs")})
    named = [n for n in defs if n in recursive]
    return text + "".join(f"; where {n} is {sketch(body(n))}" for n in named)


def _recursive_defs(defs: dict[str, Any]) -> set[str]:
    """The definitions that refer to themselves, directly or through others."""
    if not defs:
        return set()

    def refs(node: Any) -> set[str]:
        if isinstance(node, list):
            return set().union(*(refs(item) for item in node))
        if not isinstance(node, dict):
            return set()
        own = _local_ref(node)
        return ({own} if own else set()).union(*(refs(value) for value in node.values()))

    import networkx as nx  # only schemas with definitions get here

    graph = nx.DiGraph()
    graph.add_edges_from((name, target) for name, node in defs.items() for target in refs(node))
    return {name for group in nx.strongly_connected_components(graph) for name in group
            if len(group) > 1 or graph.has_edge(name, name)}


def _local_ref(node: dict[str, Any]) -> str | None:
    """X of a `{"$ref": "#/$defs/X"}` node, else None."""
    ref = node.get("$ref")
    return ref[len("#/$defs/"):] if isinstance(ref, str) and ref.startswith("#/$defs/") else None


def json_instructions(schema: type[BaseModel]) -> str:
    """The instruction that asks for one JSON object of `schema`'s shape, sketched in place.

    Completions and built artifacts depend on this text: changing it means bumping
    `cache.KEY_VERSION` and the `PROMPT_VERSION` of strategies that cache what structured
    calls built (GraphReader, LIGHT, PRISM)."""
    return (
        "Answer with exactly one JSON object and nothing else: no prose, no code fences. "
        "Its shape, with types and limits where the values go: "
        f"{schema_sketch(schema.model_json_schema())}"
    )


def strict_schema(schema: type[BaseModel]) -> tuple[dict[str, Any], bool]:
    """The schema shaped for OpenAI strict mode, and whether strict mode can accept it.

    Strict mode wants every property required, `additionalProperties: false` and no defaults;
    free-form maps (`dict[str, X]`) cannot be expressed, so those schemas go non-strict.
    """
    ok = [True]

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("title", "default"):
                continue
            if key in ("properties", "$defs") and isinstance(value, dict):
                out[key] = {name: walk(sub) for name, sub in value.items()}
            else:
                out[key] = walk(value)
        if out.get("type") == "object" or "properties" in out:
            if out.get("additionalProperties", False) not in (False, None):
                ok[0] = False
            else:
                out["additionalProperties"] = False
                out["required"] = list(out.get("properties", {}))
        return out

    return walk(schema.model_json_schema()), ok[0]


class _Repairer:
    """One pass over JSON-ish text that writes strict JSON and remembers where it may be cut."""

    def __init__(self, text: str, start: int) -> None:
        self.s = text
        self.i = start
        self.out: list[str] = []
        self.stack: list[str] = []
        self.expect_key: list[bool] = []
        self.safe: tuple[int, tuple[str, ...]] | None = None
        self.repaired = False

    def emit(self, piece: str) -> None:
        self.out.append(piece)

    def mark_safe(self) -> None:
        self.safe = (len(self.out), tuple(self.stack))

    def value_done(self) -> None:
        if not self.stack:
            return
        self.mark_safe()

    def run(self) -> str:
        s, n = self.s, len(self.s)
        while self.i < n:
            ch = s[self.i]
            if ch in " \t\r\n":
                self.emit(ch)
                self.i += 1
            elif ch in "{[":
                self.stack.append(ch)
                self.expect_key.append(ch == "{")
                self.emit(ch)
                self.i += 1
                self.mark_safe()
            elif ch in "}]":
                self.close_one()
                self.i += 1
                if not self.stack:
                    return "".join(self.out)  # the root value closed; whatever follows is prose
                self.value_done()
            elif ch == ",":
                self.emit(ch)
                self.i += 1
                if self.stack and self.stack[-1] == "{":
                    self.expect_key[-1] = True
            elif ch == ":":
                self.emit(ch)
                self.i += 1
                if self.expect_key:
                    self.expect_key[-1] = False
            elif ch in "\"'":
                if not self.string(ch):
                    return self.finish_truncated(in_string=True)
            elif ch.isalpha() or ch == "_":
                if not self.word():
                    return self.finish_truncated(in_string=False)
            elif ch in "-+.0123456789":
                if not self.number():
                    return self.finish_truncated(in_string=False)
            else:
                raise ValueError(f"unexpected character {ch!r} at position {self.i}")
        return self.finish_truncated(in_string=False)

    def close_one(self) -> None:
        if not self.stack:
            raise ValueError(f"unbalanced {self.s[self.i]!r} at position {self.i}")
        self.drop_trailing_comma()
        self.expect_key.pop()
        self.emit("}" if self.stack.pop() == "{" else "]")

    def drop_trailing_comma(self) -> None:
        for k in range(len(self.out) - 1, -1, -1):
            piece = self.out[k]
            if piece.strip() == "":
                continue
            if piece == ",":
                del self.out[k]
                self.repaired = True
            return

    def string(self, quote: str) -> bool:
        """Copy one string as a JSON string; False when the text ends inside it."""
        s, n = self.s, len(self.s)
        j = self.i + 1
        chars: list[str] = []
        while j < n:
            c = s[j]
            if c == "\\" and j + 1 < n:
                nxt = s[j + 1]
                chars.append("'" if (quote == "'" and nxt == "'") else c + nxt)
                j += 2
                continue
            if c == "\\":  # a lone backslash at the very end: a cut escape
                j += 1
                continue
            if c == quote:
                # In a single-quoted string an apostrophe ends it only where JSON may continue.
                rest = s[j + 1 :].lstrip()
                if quote == '"' or not rest or rest[0] in ",:}]":
                    break
            chars.append('\\"' if (c == '"' and quote == "'") else c)
            j += 1
        is_key = bool(self.stack) and self.stack[-1] == "{" and self.expect_key[-1]
        if quote == "'":
            self.repaired = True
        self.emit('"' + "".join(chars) + '"')
        if j >= n:
            self.i = n
            self.repaired = True
            # A cut value string is kept (partial text beats none); a cut key is not.
            if not is_key:
                self.value_done()
            return False
        self.i = j + 1
        if not is_key:
            self.value_done()
        return True

    def word(self) -> bool:
        m = _WORD.match(self.s, self.i)
        assert m is not None
        word = m.group(0)
        self.i = m.end()
        if word in _PY_LITERALS:
            word = _PY_LITERALS[word]
            self.repaired = True
        if word not in _JSON_LITERALS:
            if self.i >= len(self.s):
                return False  # e.g. "tru" cut by the length limit
            raise ValueError(f"unexpected word {word!r}")
        self.emit(word)
        self.value_done()
        return True

    def number(self) -> bool:
        m = _NUMBER.match(self.s, self.i)
        if m is None:
            raise ValueError(f"unexpected character {self.s[self.i]!r} at position {self.i}")
        self.i = m.end()
        if self.i >= len(self.s):
            return False  # a number at the cut may have lost digits: drop it
        self.emit(m.group(0).lstrip("+"))
        self.value_done()
        return True

    def finish_truncated(self, *, in_string: bool) -> str:
        """Close a value cut by a length limit: back up to the last complete value, then close."""
        if not self.stack:
            return "".join(self.out)
        self.repaired = True
        if self.safe is None:
            raise ValueError("the JSON text ends before its first value")
        count, stack = self.safe
        text = "".join(self.out[:count]).rstrip()
        if text.endswith(","):
            text = text[:-1]
        closers = "".join("}" if c == "{" else "]" for c in reversed(stack))
        return text + closers


def _candidates(text: str) -> list[tuple[str, int]]:
    """Texts to try and where the JSON value starts in each: fenced blocks first, then the text."""
    sources = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    found: list[tuple[str, int]] = []
    for source in sources:
        starts = [k for k, c in enumerate(source) if c in "{["][:_MAX_STARTS]
        found.extend((source, k) for k in starts)
    return found


def repair_json(text: str) -> tuple[Any, bool]:
    """Parse JSON from model output, repairing common breakage; returns (value, was_repaired).

    Handles code fences, prose around the value, trailing commas, single-quoted strings,
    Python's True/False/None and a value cut off by a length limit. Raises ValueError.
    """
    stripped = text.strip()
    try:
        # strict=False: raw newlines inside strings are common and harmless.
        return json.loads(stripped, strict=False), False
    except ValueError:
        pass
    first_error = "no JSON object found"
    for source, start in _candidates(text):
        try:
            repairer = _Repairer(source, start)
            fixed = repairer.run()
            return json.loads(fixed, strict=False), True
        except ValueError as exc:
            if first_error == "no JSON object found":
                first_error = str(exc)
    raise ValueError(first_error)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_structured(text: str, schema: type[T]) -> T:
    """Parse and validate `text` against `schema`, repairing common breakage; raises ParseError."""
    try:
        value, _ = repair_json(text)
    except ValueError as exc:
        raise ParseError(f"the reply is not valid JSON: {exc}", raw=text) from None
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        raise ParseError(
            f"the reply does not match {schema.__name__}: {_describe(exc)}", raw=text
        ) from None


def is_complete_json(text: str) -> bool:
    """Whether `text` is one whole JSON value: a reply that was not cut by its token limit."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def whole_items(raw: str, schema: type[BaseModel], field: str) -> list[Any]:
    """The items of list field `field` of a reply cut by its token limit that closed before the
    cut, each validated alone against the list's item type (an invalid one is skipped), at most
    the list's `max_length` of them.

    A cut reply fails its schema as a whole, yet the items before the cut are finished work;
    unlike `repair_json`, an item cut inside a string (or a number at the very end) is dropped,
    never kept half-written. A reply that is complete JSON was not cut: it gives no items, so the
    caller re-asks with the validator's complaint.

    >>> from pydantic import BaseModel
    >>> class Facts(BaseModel):
    ...     facts: list[str]
    >>> whole_items('{"facts": ["The lamp is red.", 7, "The keeper ret', Facts, "facts")
    ['The lamp is red.']
    """
    from typing import get_args

    from pydantic import TypeAdapter

    if is_complete_json(raw):
        return []  # not cut
    found = re.search(re.escape(f'"{field}"') + r"\s*:\s*\[", raw)
    if found is None:
        return []
    info = schema.model_fields[field]
    limit = min((m.max_length for m in info.metadata  # Field(max_length=...) on the list
                 if getattr(m, "max_length", None) is not None), default=None)
    adapter: TypeAdapter[Any] = TypeAdapter((get_args(info.annotation) or (Any,))[0])
    decoder, at, kept = json.JSONDecoder(strict=False), found.end(), []
    while limit is None or len(kept) < limit:
        while at < len(raw) and raw[at] in " \t\r\n,":
            at += 1
        if at >= len(raw) or raw[at] == "]":
            break
        try:
            item, at = decoder.raw_decode(raw, at)
        except ValueError:
            break  # the cut item, or broken text: stop at the last whole one
        if at >= len(raw) and not isinstance(item, dict | list | str):
            break  # a number or literal that ends the text may have lost its tail
        try:
            kept.append(adapter.validate_python(item))
        except ValidationError:
            continue
    return kept


def reask_message(error: ParseError | str) -> Message:
    """The user message for the one re-ask, carrying the validator's complaint."""
    complaint = error.message if isinstance(error, ParseError) else str(error)
    return Message(
        "user",
        f"Your previous reply was not usable: {complaint}. Reply again with only one JSON "
        "object that matches the schema: no prose, no code fences.",
    )


def reask(
    messages: Sequence[Message], reply: str, complaint: ParseError | str
) -> list[Message]:
    """The prompt again, then the unusable reply (when there was one) and the re-ask message.

    Shown its own reply, the model meets a prompt it has not answered yet: at temperature 0 the
    same prompt again would mostly get the same reply again. The caller clips `reply` and
    `complaint` where a long one must not crowd out the prompt.
    """
    shown = [Message("assistant", reply)] if reply else []
    return [*messages, *shown, reask_message(complaint)]


def schema_fits(
    schema: type[BaseModel], max_tokens: int, count_tokens: Callable[[str], int]
) -> bool:
    """Whether `max_tokens` covers the schema's serialized upper bound (§8.4); False if unbounded.

    The skeleton (keys, punctuation, widest numbers and enum values) is counted with the
    tokenizer; free string content is counted as one token per allowed character, which is an
    upper bound for ASCII text.
    """
    root = schema.model_json_schema()
    worst = _worst(root, root.get("$defs", {}))
    if worst is None:
        return False
    skeleton, content_tokens = worst
    return count_tokens(json.dumps(skeleton, ensure_ascii=False)) + content_tokens <= max_tokens


# Plain English prose, repeated to fill a string to its limit: tokenizers split it at a typical
# rate (about four characters a token), unlike repeated letters or digits.
_FILLER = (
    "The keeper wrote down the names of the ships that passed the harbour light each night, "
    "with the hour, the weather and the state of the sea. "
)


def reply_floor_tokens(schema: type[BaseModel], count_tokens: Callable[[str], int], *,
                       every_field: bool = False) -> int:
    """Tokens of the shortest reply whose text fields are written to their length limits.

    The reply keeps only required fields (every field with `every_field`, as OpenAI strict mode
    writes them: optional ones as their shortest value, null where allowed), the fewest list
    items and the shortest of alternatives; each bounded string holds English prose of its
    `maxLength`. A token cap below this number cuts every reply that writes its required text
    fields to their limits, so the call fails and is re-asked. Unbounded strings count as empty.
    """
    root = schema.model_json_schema()
    floor = _floor(root, root.get("$defs", {}), every_field=every_field)
    return count_tokens(json.dumps(floor, ensure_ascii=False))


def _floor(node: dict[str, Any], defs: dict[str, Any], inside: frozenset[str] = frozenset(),
           *, every_field: bool = False) -> Any:
    def floor(sub: dict[str, Any], within: frozenset[str] = inside) -> Any:
        return _floor(sub, defs, within, every_field=every_field)

    ref = _local_ref(node)
    if ref is not None:  # a type inside itself: stop there (its shortest value cannot nest it)
        return None if ref in inside else floor(defs[ref], inside | {ref})
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return _shortest(node["enum"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            return _shortest(floor(sub) for sub in node[key])
    kind = node.get("type")
    if isinstance(kind, list):  # a type list: the shortest of its types
        return _shortest(floor({**node, "type": k}) for k in kind)
    if kind == "string":
        n = node.get("maxLength", node.get("minLength", 0))
        return (_FILLER * (n // len(_FILLER) + 1))[:n]
    if kind in ("integer", "number"):  # 0 where allowed, else the bound nearest to it
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        return low if low is not None and low > 0 else high if high is not None and high < 0 else 0
    if kind == "boolean":
        return False
    if kind == "array":
        prefix = [floor(sub) for sub in node.get("prefixItems", [])]
        items = node.get("items")
        extra = max(node.get("minItems", 0) - len(prefix), 0)
        return prefix + ([floor(items)] * extra if isinstance(items, dict) else [])
    if kind == "object":
        props = node.get("properties", {})
        required = list(props) if every_field else [
            name for name in node.get("required", ()) if name in props]
        return {name: floor(props[name]) for name in required}
    return None


def _shortest(values: Iterable[Any]) -> Any:
    """The value with the shortest JSON text."""
    return min(values, key=lambda v: len(json.dumps(v, ensure_ascii=False)))


def _worst(node: dict[str, Any], defs: dict[str, Any]) -> tuple[Any, int] | None:
    """A worst-case skeleton value for `node` and the string-content tokens it leaves out."""
    if "$ref" in node:
        return _worst(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "const" in node:
        return node["const"], 0
    if "enum" in node:
        return max(node["enum"], key=lambda v: len(json.dumps(v))), 0
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = [_worst(sub, defs) for sub in node[key]]
            if any(o is None for o in options):
                return None
            return max(options, key=lambda o: len(json.dumps(o[0])) + o[1])  # type: ignore[index]
    kind = node.get("type")
    if kind == "string":
        return ("", node["maxLength"]) if "maxLength" in node else None
    if kind == "integer":
        bounds = [node[k] for k in ("minimum", "maximum") if k in node]
        return (max(bounds, key=lambda b: len(str(b))), 0) if len(bounds) == 2 else None
    if kind == "number":
        return -1.2345678901234567e-300, 0  # the widest float repr
    if kind in ("boolean", "null"):
        return (False if kind == "boolean" else None), 0
    if kind == "array":
        item = _worst(node.get("items", {}), defs)
        if item is None or "maxItems" not in node:
            return None
        return [item[0]] * node["maxItems"], item[1] * node["maxItems"]
    if kind == "object" and not node.get("additionalProperties"):
        out: dict[str, Any] = {}
        total = 0
        for name, sub in node.get("properties", {}).items():
            worst = _worst(sub, defs)
            if worst is None:
                return None
            out[name], extra = worst
            total += extra
        return out, total
    return None

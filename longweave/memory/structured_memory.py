"""PRISM's typed memory: a schema, revisions validated against it, and byte-stable rendering.

STRATEGIES.md §5.2. A schema is a tree of `TypeNode`s, built from a pydantic model, a JSON
schema or a model-written `SchemaSpec` (parsed, never executed). Revisions are
(path, op, value); `StructuredMemory.apply` either applies one or returns why it was rejected,
and never coerces a value. Rendering is compact JSON in insertion order, so the same memory
gives the same bytes in every process and a grown memory shares its prefix with the old one.
`StructuredMemory.rebuilt` replaces a memory by a rewritten one (the `compact` overflow policy).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from longweave.errors import ConfigError

__all__ = [
    "KEY_CHARS",
    "OVER_CAP",
    "FieldSpec",
    "SchemaSpec",
    "StructuredMemory",
    "TypeNode",
    "check_value",
    "from_json_schema",
    "from_model",
    "from_spec",
    "leaves",
    "load_schema_file",
    "render_json",
    "widest",
]

Kind = Literal["str", "int", "float", "bool", "list", "map", "object"]
PathItem = str | int
SpecType = Literal["str", "int", "float", "bool", "list[str]", "list[int]", "dict[str,str]",
                   "dict[str,int]", "dict[str,list[str]]"]
KEY_CHARS = 64
"""Longest map key or field name in a path (§5.2 rule 1)."""
OVER_CAP = "the memory would exceed its cap (mem_cap)"
"""Why a revision was rejected by the memory-cap check (§5.2 rule 5)."""
WHOLE_ITEMS = 1 << 30
"""No per-value item bound when a whole memory is checked: lists grow one revision at a time."""


@dataclass(frozen=True)
class TypeNode:
    """One type of the memory schema: a scalar, a list, a string-keyed map or an object."""

    kind: Kind
    item: TypeNode | None = None  # list and map values
    fields: dict[str, TypeNode] = field(default_factory=dict)  # object fields, in order
    description: str = ""

    def depth(self) -> int:
        """The longest path this type admits (a scalar admits none below itself)."""
        if self.kind in ("list", "map"):
            return 1 + self.item.depth()  # type: ignore[union-attr]
        if self.kind == "object":
            return 1 + max((f.depth() for f in self.fields.values()), default=0)
        return 0

    def label(self) -> str:
        """The type as the prompt shows it: str, list[str], dict[str,int], {a,b}."""
        if self.kind == "list":
            return f"list[{self.item.label()}]"  # type: ignore[union-attr]
        if self.kind == "map":
            return f"dict[str,{self.item.label()}]"  # type: ignore[union-attr]
        if self.kind == "object":
            return "{" + ", ".join(f"{k}: {v.label()}" for k, v in self.fields.items()) + "}"
        return self.kind

    def outline(self, prefix: str = "") -> list[str]:
        """One line per field of an object schema: `path: type — description`."""
        lines = []
        for name, sub in self.fields.items():
            note = f" — {sub.description}" if sub.description else ""
            lines.append(f"{prefix}{name}: {sub.label()}{note}")
        return lines


# -- schemas from pydantic models, JSON schemas and files ------------------------------------

_SCHEMA_HINT = (
    'a memory schema is a JSON schema of an object whose "properties" are strings, integers, '
    "numbers, booleans, arrays, objects with properties or string-keyed maps "
    '("additionalProperties"), e.g. {"type": "object", "properties": {"evidence": {"type": '
    '"array", "items": {"type": "string"}}}}; see memory_schema in docs/strategies/prism.md'
)
"""What every error about a JSON or pydantic memory schema ends with."""


def _schema_error(message: str) -> ConfigError:
    return ConfigError(message, hint=_SCHEMA_HINT)


def from_model(model: type[BaseModel]) -> TypeNode:
    """The schema of a pydantic model (through its JSON schema, so nothing is executed)."""
    return from_json_schema(model.model_json_schema())


def from_json_schema(schema: dict[str, Any]) -> TypeNode:
    """Convert a JSON schema of objects, arrays, string-keyed maps and scalars; ConfigError else."""
    root = _convert(schema, schema.get("$defs", schema.get("definitions", {})), depth=0)
    if root.kind != "object" or not root.fields:
        raise _schema_error("a memory schema must be an object with at least one field")
    return root


_SCALARS: dict[str, Kind] = {"string": "str", "integer": "int", "number": "float",
                             "boolean": "bool"}


def _convert(node: dict[str, Any], defs: dict[str, Any], depth: int) -> TypeNode:
    if depth > 8:
        raise _schema_error("the memory schema nests deeper than 8 levels (recursive?)")
    if not isinstance(node, dict):
        raise _schema_error(
            f"the memory schema has {json.dumps(node)[:120]} where a type belongs")
    desc = str(node.get("description", ""))[:200]
    if "$ref" in node:
        target = defs.get(node["$ref"].rsplit("/", 1)[-1])
        if target is None:
            raise _schema_error(f"unresolved $ref {node['$ref']!r} in the memory schema")
        inner = _convert(target, defs, depth + 1)
        return TypeNode(inner.kind, inner.item, inner.fields, desc or inner.description)
    for key in ("anyOf", "oneOf"):
        if key in node:  # Optional[X] is X: an absent path already means "unknown"
            options = [o for o in node[key] if not isinstance(o, dict) or o.get("type") != "null"]
            if len(options) != 1:
                raise _schema_error("memory schema unions other than Optional are not supported")
            inner = _convert(options[0], defs, depth + 1)
            return TypeNode(inner.kind, inner.item, inner.fields, desc or inner.description)
    kind = node.get("type")
    if kind in _SCALARS:
        return TypeNode(_SCALARS[kind], description=desc)
    if kind == "array":
        return TypeNode("list", _convert(node.get("items", {}), defs, depth + 1), description=desc)
    if kind == "object":
        props = node.get("properties")
        if props:
            fields = {n: _convert(s, defs, depth + 1) for n, s in props.items()}
            return TypeNode("object", fields=fields, description=desc)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return TypeNode("map", _convert(extra, defs, depth + 1), description=desc)
        raise _schema_error(f"an object without properties in the memory schema: "
                            f"{json.dumps(node)[:120]}")
    raise _schema_error(f"unsupported type in the memory schema: {json.dumps(node)[:120]}")


def load_schema_file(path: str | Path) -> TypeNode:
    """A memory schema from a JSON schema file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the memory schema {path}: {exc}",
                          hint=f"give a JSON file: {_SCHEMA_HINT}") from None
    if not isinstance(data, dict):
        raise _schema_error(f"the memory schema {path} is not a JSON object")
    return from_json_schema(data)


class FieldSpec(BaseModel):
    """One field of a model-written schema (§5.3)."""

    name: str = Field(max_length=40, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    description: str = Field(max_length=200)
    type: SpecType


class SchemaSpec(BaseModel):
    """A declarative memory schema a model may write: parsed and checked, never executed."""

    name: str = Field(max_length=40)
    fields: list[FieldSpec] = Field(min_length=1, max_length=8)


def from_spec(spec: SchemaSpec) -> TypeNode:
    """The schema a `SchemaSpec` declares; ConfigError on duplicate field names."""
    names = [f.name for f in spec.fields]
    if len(set(names)) != len(names):
        raise ConfigError(f"schema {spec.name!r} repeats a field name")
    fields = {f.name: _spec_type(f.type, f.description) for f in spec.fields}
    return TypeNode("object", fields=fields, description=spec.name)


def _spec_type(label: str, description: str) -> TypeNode:
    scalars: dict[str, Kind] = {"str": "str", "int": "int", "float": "float", "bool": "bool"}
    if label in scalars:
        return TypeNode(scalars[label], description=description)
    inner = label[label.index("[") + 1 : -1].split(",")[-1]
    kind: Kind = "list" if label.startswith("list") else "map"
    return TypeNode(kind, _spec_type(inner, ""), description=description)


# -- rendering ------------------------------------------------------------------------------


def render_json(value: Any) -> str:
    """Compact JSON, insertion order, non-ASCII kept: identical values give identical bytes."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# -- the memory -----------------------------------------------------------------------------


@dataclass
class StructuredMemory:
    """A memory shaped by `schema`, with its amendment log and the provenance of every path."""

    schema: TypeNode
    value_chars: int = 300
    list_items: int = 10
    ops: tuple[str, ...] = ("add",)
    data: dict[str, Any] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[tuple[PathItem, ...], list[int]] = field(default_factory=dict)

    def render(self, variant: str = "in_place") -> str:
        """The memory as the prompt shows it: JSON (in place) or one log line per amendment."""
        if variant == "amendments":
            return "".join(render_json(e) + "\n" for e in self.log)
        return render_json(self.data)

    def apply(
        self,
        op: str,
        path: list[PathItem],
        value: Any,
        chunk: int,
        fits: Callable[[StructuredMemory], bool] | None = None,
    ) -> str | None:
        """Apply one revision read from chunk `chunk`; None if applied, else the reason it was not.

        `fits` is the memory-cap check (§5.2 rule 5), run on the memory as it would be after.
        """
        if op not in self.ops:
            return f"operation {op!r} is not allowed (allowed: {', '.join(self.ops)})"
        found = self._locate(path)
        if isinstance(found, str):
            return found
        parent, key, node = found
        exists = _has(parent, key)
        if op == "add" and exists:
            return f"add: {_show(path)} already exists (use a new key or index)"
        if op == "update" and not exists:
            return f"update: {_show(path)} does not exist yet"
        if op == "add" and isinstance(parent, list) and key != len(parent):
            return f"add: list index must be {len(parent)} (the next free slot), not {key}"
        problem = check_value(value, node, self.value_chars, self.list_items)
        if problem:
            return f"value at {_show(path)}: {problem}"
        trial = self._copy()
        trial._set(path, value)
        trial.log.append({"path": list(path), "op": op, "value": value})
        if fits is not None and not fits(trial):
            return OVER_CAP
        self.data, self.log = trial.data, trial.log
        chunks = self.provenance.setdefault(tuple(path), [])
        if chunk not in chunks:
            chunks.append(chunk)
        return None

    def rebuilt(
        self,
        data: dict[str, Any],
        pending: list[tuple[list[PathItem], Any, int]],
        fits: Callable[[StructuredMemory], bool] | None = None,
    ) -> StructuredMemory | str:
        """A fresh memory holding `data`, or why `data` cannot replace this one (rejected, never
        coerced). Its log is one `add` per scalar of `data`; empty lists and maps are dropped.

        `pending`: revisions (path, value, chunk) that did not fit, which `data` may fold in.
        Provenance: a scalar kept word for word (matched by value within its top-level field,
        so a list item that moved keeps its chunks) keeps the chunks that wrote it; a new or
        reworded one is credited to every chunk that wrote its top-level field.
        """
        problem = check_value(data, self.schema, self.value_chars, WHOLE_ITEMS)
        if problem:
            return f"the rewritten memory: {problem}"
        written = [(p, v, self.sources(list(p))) for p, v in leaves(self.schema, self.data)]
        for path, value, chunk in pending:
            found = self._locate(path)
            if not isinstance(found, str):
                written += [(p, v, [chunk]) for p, v in leaves(found[2], value, tuple(path))]
        by_value: dict[tuple[PathItem, str], set[int]] = {}
        by_field: dict[PathItem, set[int]] = {}
        for p, v, chunks in written:
            by_value.setdefault((p[0], render_json(v)), set()).update(chunks)
            by_field.setdefault(p[0], set()).update(chunks)
        fresh = StructuredMemory(self.schema, self.value_chars, self.list_items, self.ops)
        for path, value in leaves(self.schema, data):
            reason = fresh.apply("add", list(path), value, -1)
            if reason is not None:
                return f"the rewritten memory: {reason}"
            credit = by_value.get((path[0], render_json(value))) or by_field.get(path[0], set())
            fresh.provenance[path] = sorted(credit)
            if not credit:  # nothing read wrote it: it cites nothing
                del fresh.provenance[path]
        if fits is not None and not fits(fresh):
            return "the rewritten memory is over its cap (mem_cap)"
        return fresh

    def sources(self, path: list[PathItem]) -> list[int]:
        """Chunks that wrote `path`, anything under it, or a container holding it."""
        want = tuple(path)
        found: list[int] = []
        for written, chunks in self.provenance.items():
            n = min(len(written), len(want))
            if written[:n] == want[:n]:
                found += [c for c in chunks if c not in found]
        return sorted(found)

    def contributing(self) -> list[int]:
        """Every chunk that wrote something."""
        return sorted({c for chunks in self.provenance.values() for c in chunks})

    # -- internals --------------------------------------------------------------------------

    def _locate(self, path: list[PathItem]) -> tuple[Any, PathItem, TypeNode] | str:
        """(parent container, key, type at path), or why the path is not in the schema."""
        if not path:
            return "the path is empty"
        node, container = self.schema, self.data
        for depth, item in enumerate(path):
            where = _show(path[: depth + 1])
            if node.kind == "object":
                if not isinstance(item, str) or item not in node.fields:
                    return f"path {where} is not in the schema (fields: {', '.join(node.fields)})"
                child = node.fields[item]
            elif node.kind == "map":
                if not isinstance(item, str) or not 0 < len(item) <= KEY_CHARS:
                    return f"path {where}: a map key is a string of 1-{KEY_CHARS} characters"
                child = node.item
            elif node.kind == "list":
                if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                    return f"path {where}: a list index is a non-negative integer"
                child = node.item
            else:
                return f"path {where} goes below a {node.kind} value"
            assert child is not None
            if depth == len(path) - 1:
                return container, item, child
            if _has(container, item):
                container = container[item]  # type: ignore[index]
            elif isinstance(container, list) and item != len(container):
                return f"path {where}: list index out of range"
            else:  # a missing intermediate container is created when the revision applies
                container = {} if child.kind in ("object", "map") else []
            node = child
        raise AssertionError("unreachable")

    def _set(self, path: list[PathItem], value: Any) -> None:
        node, container = self.schema, self.data
        for item in path[:-1]:
            child = node.fields[item] if node.kind == "object" else node.item  # type: ignore[index]
            assert child is not None
            if not _has(container, item):
                fresh: Any = {} if child.kind in ("object", "map") else []
                if isinstance(container, list):
                    container.append(fresh)
                else:
                    container[item] = fresh
            container = container[item]
            node = child
        last = path[-1]
        if isinstance(container, list) and last == len(container):
            container.append(value)
        else:
            container[last] = value

    def _copy(self) -> StructuredMemory:
        return StructuredMemory(self.schema, self.value_chars, self.list_items, self.ops,
                                json.loads(render_json(self.data)), list(self.log), {})


def leaves(
    node: TypeNode, value: Any, path: tuple[PathItem, ...] = ()
) -> list[tuple[tuple[PathItem, ...], Any]]:
    """Every scalar of `value` (of type `node`, already checked) with its path, in order."""
    if node.kind in ("object", "map"):
        return [leaf for key, sub in value.items() for leaf in leaves(
            node.fields[key] if node.kind == "object" else node.item, sub, (*path, key))]  # type: ignore[arg-type]
    if node.kind == "list":
        return [leaf for k, sub in enumerate(value)
                for leaf in leaves(node.item, sub, (*path, k))]  # type: ignore[arg-type]
    return [(path, value)]


def widest(value: Any) -> int:
    """The most items of any list or dict in `value`."""
    if isinstance(value, dict):
        return max([len(value), *(widest(v) for v in value.values())])
    if isinstance(value, list):
        return max([len(value), *(widest(v) for v in value)])
    return 0


def _has(container: Any, key: PathItem) -> bool:
    if isinstance(container, dict):
        return key in container
    if isinstance(container, list):
        return isinstance(key, int) and 0 <= key < len(container)
    return False


def _show(path: list[PathItem]) -> str:
    return render_json(list(path))


def check_value(value: Any, node: TypeNode, chars: int, items: int) -> str | None:
    """Why `value` does not have type `node`, or None: no coercion (§5.5 pitfall 3)."""
    kind = node.kind
    if kind == "str":
        if not isinstance(value, str):
            return f"expected a string, got {_type_name(value)}"
        return f"string longer than {chars} characters" if len(value) > chars else None
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected an integer, got {_type_name(value)}"
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {_type_name(value)}"
        return None if math.isfinite(value) else "numbers must be finite"
    if kind == "bool":
        return None if isinstance(value, bool) else f"expected true/false, got {_type_name(value)}"
    if kind == "list":
        if not isinstance(value, list):
            return f"expected a list, got {_type_name(value)}"
        if len(value) > items:
            return f"list longer than {items} items"
        subs = (check_value(v, node.item, chars, items) for v in value)  # type: ignore[arg-type]
    elif kind == "map":
        if not isinstance(value, dict):
            return f"expected an object of key -> value, got {_type_name(value)}"
        if len(value) > items:
            return f"map with more than {items} keys"
        if any(not 0 < len(k) <= KEY_CHARS for k in value):
            return f"map keys must have 1-{KEY_CHARS} characters"
        subs = (check_value(v, node.item, chars, items) for v in value.values())  # type: ignore[arg-type]
    else:
        if not isinstance(value, dict):
            return f"expected an object, got {_type_name(value)}"
        unknown = [k for k in value if k not in node.fields]
        if unknown:
            return f"unknown field(s) {', '.join(unknown)}"
        subs = (check_value(v, node.fields[k], chars, items) for k, v in value.items())
    return next((s for s in subs if s), None)


def _type_name(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
             list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)

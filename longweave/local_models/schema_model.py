"""Turn a request's JSON schema into a pydantic model, so `LLM.complete(schema=...)` can take it.

Covers the subset that OpenAI's structured outputs use: objects with properties, strings
(maxLength, minLength, pattern), integers and numbers (bounds), booleans, null, arrays
(maxItems, minItems), enum, const, anyOf/oneOf, type lists and `$ref` into `$defs`. Anything
else (recursive refs, free-form maps, allOf, ...) is refused with a ConfigError that names it,
rather than silently loosened.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from longweave.errors import ConfigError

_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool}


def model_from_schema(schema: dict[str, Any], name: str = "Response") -> type[BaseModel]:
    """A pydantic model whose validation and JSON schema follow `schema` (an object schema)."""
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise ConfigError("response_format schema must be a JSON object schema")
    builder = _Builder(schema.get("$defs") or schema.get("definitions") or {})
    model = builder.object(schema, _identifier(name) or "Response")
    if not isinstance(model, type):
        raise ConfigError("response_format schema must describe an object with properties")
    return model


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text).strip("_")


class _Builder:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.models: dict[str, Any] = {}
        self.resolving: set[str] = set()

    def type_of(self, node: Any, hint: str) -> Any:
        if not isinstance(node, dict):
            raise ConfigError(f"schema node {hint!r} is not an object")
        if "$ref" in node:
            return self.ref(node["$ref"])
        if "const" in node:
            return Literal[node["const"]]
        if "enum" in node:
            return Literal[tuple(node["enum"])]
        for key in ("anyOf", "oneOf"):
            if key in node:
                options = [self.type_of(sub, hint) for sub in node[key]]
                return Union[tuple(options)]  # noqa: UP007 - built at run time from a list
        kind = node.get("type")
        if isinstance(kind, list):
            options = [self.type_of({**node, "type": k}, hint) for k in kind]
            return Union[tuple(options)]  # noqa: UP007
        for key in ("allOf", "not", "if", "patternProperties"):
            if key in node:
                raise ConfigError(f"JSON schema keyword {key!r} is not supported (at {hint!r})")
        if kind == "null":
            return type(None)
        if kind == "object" or "properties" in node:
            return self.object(node, hint)
        if kind == "array":
            item = self.type_of(node.get("items", {}), hint + "_item") if "items" in node else Any
            return Annotated[
                list[item],  # type: ignore[valid-type]
                Field(min_length=node.get("minItems"), max_length=node.get("maxItems")),
            ]
        if kind == "string":
            return Annotated[
                str,
                Field(
                    min_length=node.get("minLength"),
                    max_length=node.get("maxLength"),
                    pattern=node.get("pattern"),
                ),
            ]
        if kind in ("integer", "number"):
            bounds = {
                k: node.get(j)
                for k, j in (
                    ("ge", "minimum"),
                    ("le", "maximum"),
                    ("gt", "exclusiveMinimum"),
                    ("lt", "exclusiveMaximum"),
                )
            }
            return Annotated[_SCALARS[kind], Field(**bounds)]
        if kind in _SCALARS:
            return _SCALARS[kind]
        raise ConfigError(f"JSON schema type {kind!r} is not supported (at {hint!r})")

    def ref(self, ref: str) -> Any:
        prefix = next((p for p in ("#/$defs/", "#/definitions/") if ref.startswith(p)), None)
        if prefix is None or ref[len(prefix) :] not in self.defs:
            raise ConfigError(f"JSON schema $ref {ref!r} cannot be resolved")
        key = ref[len(prefix) :]
        if key not in self.models:
            if key in self.resolving:
                raise ConfigError(f"recursive JSON schema $ref {ref!r} is not supported")
            self.resolving.add(key)
            self.models[key] = self.type_of(self.defs[key], key)
            self.resolving.discard(key)
        return self.models[key]

    def object(self, node: dict[str, Any], hint: str) -> Any:
        properties = node.get("properties")
        if not properties:
            raise ConfigError(
                f"free-form object {hint!r} is not supported: give it properties",
                hint="constrained decoding needs a bounded schema",
            )
        required = set(node.get("required", []))
        fields: dict[str, Any] = {}
        for i, (key, sub) in enumerate(properties.items()):
            annotation = self.type_of(sub, f"{hint}_{_identifier(key)}")
            default = ... if key in required else None
            fields[f"f{i}"] = (
                annotation,
                Field(
                    default,
                    alias=key,
                    description=sub.get("description") if isinstance(sub, dict) else None,
                ),
            )
        extra = "forbid" if node.get("additionalProperties") is False else "ignore"
        config = ConfigDict(extra=extra, populate_by_name=True)
        return create_model(_identifier(hint) or "Object", __config__=config, **fields)

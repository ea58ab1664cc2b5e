"""The paper's call-string form of a GraphReader step, parsed by a strict grammar.

Faithful mode (STRATEGIES.md §3.3): instead of a JSON object, the model writes its notebook, a
rationale and one function call as the paper shows them, e.g. `read_chunk([3, 7])`. The reply
is parsed here; the call then goes through the same validation as a JSON one
(`PathState.check`), so an unknown id or name is still refused with a message.

Reply form (labels at the start of a line, in this order; Rationale may be left out):

    Notebook: <text, may span lines>
    Rationale: <text>
    Action: <call>

The call is the rest of the Action line; text on later lines is ignored. Its grammar:

    call    := name "(" ")"                      for the five functions without arguments
             | "read_chunk(" "[" [int ("," int)*] "]" ")"
             | "read_neighbor_node(" string ")"
    string  := '"' chars-without-'"' '"' | "'" chars-without-"'" "'"

Spaces are allowed around brackets, commas and parentheses; nothing else is (no trailing
period, no code fences, no keyword arguments).
"""

from __future__ import annotations

import re
from typing import Any

from longweave.errors import ParseError

__all__ = ["SIGNATURES", "parse_call", "parse_step"]

SIGNATURES: dict[str, str] = {
    "read_chunk": "read_chunk([id, ...])",
    "stop_and_read_neighbor": "stop_and_read_neighbor()",
    "search_more": "search_more()",
    "read_previous_chunk": "read_previous_chunk()",
    "read_subsequent_chunk": "read_subsequent_chunk()",
    "termination": "termination()",
    "read_neighbor_node": 'read_neighbor_node("name")',
}
"""How each of the paper's seven functions is written, as shown to the model."""

_NO_ARGS = re.compile(
    r"(stop_and_read_neighbor|search_more|read_previous_chunk|read_subsequent_chunk|termination)"
    r"\s*\(\s*\)"
)
_READ_CHUNK = re.compile(r"read_chunk\s*\(\s*\[\s*(\d+(?:\s*,\s*\d+)*)?\s*\]\s*\)")
_NEIGHBOR = re.compile(r"""read_neighbor_node\s*\(\s*(?:"([^"]*)"|'([^']*)')\s*\)""")
_LABEL = re.compile(r"^(Notebook|Rationale|Action):", re.MULTILINE)


def parse_call(text: str) -> dict[str, Any]:
    """One call string as {action, chunk_ids, neighbor}; ParseError when it is not grammatical."""
    call = text.strip()
    if match := _NO_ARGS.fullmatch(call):
        return {"action": match.group(1)}
    if match := _READ_CHUNK.fullmatch(call):
        ids = match.group(1)
        return {"action": "read_chunk",
                "chunk_ids": [int(i) for i in ids.split(",")] if ids else []}
    if match := _NEIGHBOR.fullmatch(call):
        name = match.group(1) if match.group(1) is not None else match.group(2)
        return {"action": "read_neighbor_node", "neighbor": name}
    raise ParseError(
        f"{call[:80]!r} is not a function call; write exactly one of: "
        + ", ".join(SIGNATURES.values()),
        raw=text,
    )


def parse_step(reply: str) -> dict[str, Any]:
    """A whole step reply as {notebook, rationale, action, chunk_ids?, neighbor?}."""
    found = list(_LABEL.finditer(reply))
    parts: dict[str, str] = {}
    for n, match in enumerate(found):
        end = found[n + 1].start() if n + 1 < len(found) else len(reply)
        label = match.group(1)
        if label in parts:
            raise ParseError(f"the reply has more than one {label}: line", raw=reply)
        parts[label] = reply[match.end() : end].strip()
    missing = [label for label in ("Notebook", "Action") if label not in parts]
    if missing:
        raise ParseError(
            "the reply needs a line starting " + " and a line starting ".join(
                f"{label}:" for label in missing), raw=reply)
    order = [m.group(1) for m in found]
    if order[-1] != "Action":
        raise ParseError("the Action: line must come last", raw=reply)
    lines = parts["Action"].splitlines()
    try:
        call = parse_call(lines[0] if lines else "")
    except ParseError as exc:
        raise ParseError(exc.message, raw=reply) from None
    return {"notebook": parts["Notebook"], "rationale": parts.get("Rationale", ""), **call}

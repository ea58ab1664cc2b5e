"""Conversation input: JSONL/JSON turn lists, LoCoMo and BEAM files, rendered with turn spans."""

from __future__ import annotations

from pathlib import Path

import pytest

from longweave.conversations import (
    Conversation,
    Turn,
    conversation_turns,
    load_conversation,
    load_conversations,
)
from longweave.documents import Document
from longweave.errors import DocumentError

FIXTURES = Path(__file__).parent / "fixtures" / "conversations"


def test_jsonl_renders_one_line_per_turn_with_spans() -> None:
    conv = load_conversation(FIXTURES / "turns.jsonl")
    assert [t.speaker for t in conv.turns] == ["Ana", "Ben", "Ana"]
    doc = conv.document()
    lines = doc.text.split("\n")
    assert len(lines) == 3
    assert lines[0] == "[2024-03-01] Ana: I moved to Lima last spring."
    assert lines[1] == "Ben: How do you like it? The food must be great."  # inner break flattened
    spans = conversation_turns(doc)
    assert spans is not None
    assert [doc.text[s.start:s.end] for s in spans] == lines


def test_locomo_sessions_are_dated_and_ordered() -> None:
    convs = load_conversations(FIXTURES / "locomo_excerpt.json")
    assert len(convs) == 1 and convs[0].name == "conv-26"
    turns = convs[0].turns
    assert len(turns) == 6
    assert turns[0].id == "D1:1" and turns[-1].id.startswith("D2:")
    assert turns[0].time != turns[-1].time


def test_beam_strips_index_tags_and_keeps_time_anchor() -> None:
    conv = load_conversation(FIXTURES / "beam_excerpt.json")
    assert [t.speaker for t in conv.turns] == ["user", "assistant"]
    assert "->->" not in conv.turns[0].text
    assert conv.turns[0].time == "March-15-2024"


def test_plain_documents_have_no_turns_and_bad_files_fail_clearly(tmp_path: Path) -> None:
    assert conversation_turns(Document.from_text("hello")) is None
    bad = tmp_path / "x.json"
    bad.write_text('[{"speaker": 1}]')
    with pytest.raises(DocumentError, match="speaker"):
        load_conversations(bad)
    with pytest.raises(DocumentError, match="named"):
        load_conversation(FIXTURES / "turns.jsonl", "nope")


def test_conversation_files_obey_the_document_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    turns = FIXTURES / "turns.jsonl"
    monkeypatch.setenv("LONGWEAVE_MAX_DOCUMENT_BYTES", "100")
    with pytest.raises(DocumentError, match="over the 100-byte limit"):
        load_conversation(turns)
    monkeypatch.delenv("LONGWEAVE_MAX_DOCUMENT_BYTES")
    assert load_conversation(turns).turns
    for name, data, problem in [("empty.jsonl", b"", "empty"),
                                ("latin.jsonl", b'{"speaker": "a", "text": "caf\xe9"}', "UTF-8")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DocumentError, match=problem):
            load_conversations(tmp_path / name)


def test_role_content_keys_accepted() -> None:
    conv = Conversation((Turn("user", "hi"), Turn("assistant", "hello")))
    assert conv.document().text == "user: hi\nassistant: hello"


@pytest.mark.parametrize(("text", "problem"), [
    ('{"title": "not turns"}', "not a conversation"),
    ('[{"speaker": "A", "text": "hi"}, 5]', "turn 1 is not an object"),
])
def test_a_json_file_that_is_not_a_conversation_is_named_by_its_path(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "obj.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DocumentError) as info:
        load_conversations(path)
    assert info.value.path == str(path) and info.value.problem.startswith(problem)

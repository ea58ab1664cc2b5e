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
    ('[{"speaker": "A", "text": "hi"}, 5]', "turn 2: expected a JSON object, got int"),
])
def test_a_json_file_that_is_not_a_conversation_is_named_by_its_path(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "obj.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DocumentError) as info:
        load_conversations(path)
    assert info.value.path == str(path) and info.value.problem.startswith(problem)


def test_a_saved_chat_reads_back_as_a_conversation(tmp_path: Path) -> None:
    from longweave.api import load_source
    from longweave.config import Settings
    from longweave.session import Session
    from longweave.testing import ScriptedModel

    model = ScriptedModel()
    model.on("reader", contains="Question: Who kept", reply="Mara «Quill»,\nthe widow.")
    model.on("reader", contains="Question: Summarise", reply="Long " * 5000)
    settings = Settings(cache_dir=tmp_path / "cache")
    session = Session.open("Mara Quill kept the light.", strategy="truncate", model=model,
                           cache=False, persist=False, rewrite=False, settings=settings,
                           max_new=6000)
    session.ask("Who kept\nthe light?")
    session.ask("Summarise.")
    doc = load_source(session.save(tmp_path / "chat.json"))
    lines = doc.text.split("\n")
    assert len(lines) == 4 and doc.meta["conversation"] == "chat"
    assert lines[0].endswith(" UTC] user: Who kept the light?")
    assert lines[1].endswith(" UTC] assistant: Mara «Quill», the widow.")
    assert lines[3].endswith("assistant: " + " ".join(["Long"] * 5000))
    spans = conversation_turns(doc)
    assert spans is not None and [s.speaker for s in spans] == ["user", "assistant"] * 2
    # ... and a chat about the chat opens on it.
    model.on("reader", contains=["user: Who kept the light?", "Question: Who was"],
             reply="Mara.")
    again = Session.open(tmp_path / "chat.json", strategy="truncate", model=model, cache=False,
                         persist=False, settings=settings, max_new=32)
    assert again.ask("Who was asked about?").text == "Mara."


@pytest.mark.parametrize("text", [
    '[{"conversation": {"session_1": [{"text": "x"}]}}]',  # a LoCoMo turn without a speaker
    '[{"conversation": {"session_1": ["just text"]}}]',
    '{"chat": [1]}',  # BEAM batches that are not objects
    '{"chat": "x"}',
    '{"document_id": "x", "turns": [{"question": "q"}]}',  # a saved chat without answers
])
def test_a_malformed_locomo_beam_or_chat_file_is_a_document_error(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DocumentError) as info:
        load_conversations(path)
    assert info.value.path == str(path)
    assert info.value.problem.startswith("a conversation in it is malformed (")


def test_line_breaks_in_speakers_and_times_keep_one_line_per_turn(tmp_path: Path) -> None:
    conv = Conversation((Turn("Ana\nBen", "hi\nthere", "2024\n03"), Turn("", ""), Turn("x", "y")))
    doc = conv.document()
    assert doc.text.split("\n") == ["[2024 03] Ana Ben: hi there", ": ", "x: y"]
    spans = conversation_turns(doc)
    assert spans is not None and spans[0].speaker == "Ana Ben" and spans[0].time == "2024 03"
    path = tmp_path / "ids.json"
    path.write_text('[{"speaker": "a", "text": "b", "id": null}, '
                    '{"speaker": "a", "text": "c", "id": 7}]', encoding="utf-8")
    assert [t.id for t in load_conversation(path).turns] == [None, "7"]  # not "None"
    path.write_text('[{"conversation": {"session_x": [], "session_1": '
                    '[{"speaker": 5, "text": 6}]}}]', encoding="utf-8")
    assert load_conversation(path).document().text == "5: 6"

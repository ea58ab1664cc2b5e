"""`Session` under faults: two sessions on one text, failed rewrites, long conversations, and
saved files that are damaged, foreign, newer, or hold what UTF-8 cannot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import longweave
import longweave.session
from longweave.answer import Answer
from longweave.config import Settings
from longweave.documents import Document
from longweave.errors import DocumentError, LongweaveWarning, ModelError
from longweave.session import ConversationMemory, Session, Turn
from longweave.testing import Request, ScriptedModel

ROOT = Path(__file__).parents[1]
TEXT = "Mara Quill kept the Tarn light from 1871. Her nephew Tobias Quill took over in 1920."


def model() -> ScriptedModel:
    m = ScriptedModel(context_window=4096)
    m.on("reader", reply="Mara Quill.")
    m.on("rewrite", reply="Who kept the Tarn light?")
    return m


def opened(tmp_path: Path, m: Any = None, **kw: Any) -> Session:
    kw.setdefault("resume", True)
    return Session.open(TEXT, strategy="truncate", model=m or model(), cache=False,
                        settings=Settings(cache_dir=tmp_path / "cache"), **kw)


def saved_questions(session: Session) -> list[str]:
    return [t["question"] for t in json.loads(session.path.read_text("utf-8"))["turns"]]


# -- two sessions on one text -------------------------------------------------------------------


async def test_two_sessions_on_one_text_keep_each_others_turns(tmp_path: Path) -> None:
    ma, mb = model(), model()
    a, b = opened(tmp_path, ma), opened(tmp_path, mb)
    await a.aask("A1?")
    await b.aask("B1?")  # B never read A1: its save used to write B1 alone
    await a.aask("A2?")
    assert saved_questions(a) == ["A1?", "B1?", "A2?"]
    # Each session's own conversation is untouched: its history, its cost, its rewrites.
    assert [t.question for t in a.history] == ["A1?", "A2?"]
    assert [t.question for t in b.history] == ["B1?"] and b.usage.calls == 1
    assert "B1?" not in ma.calls("rewrite")[-1].text
    await b.aask("B2?")
    assert saved_questions(b) == ["A1?", "B1?", "A2?", "B2?"]
    resumed = opened(tmp_path)
    assert [t.question for t in resumed.history] == ["A1?", "B1?", "A2?", "B2?"]


async def test_a_turn_with_a_lone_surrogate_is_merged_once(tmp_path: Path) -> None:
    """The file holds such a text as U+FFFD: read back, the turn must still be known as this
    session's own, not taken for another session's and written twice."""
    a, b = opened(tmp_path, model()), opened(tmp_path, model())
    await a.aask("bad byte \udcff here?")
    await b.aask("B1?")
    await a.aask("A2?")
    assert saved_questions(a) == ["bad byte \ufffd here?", "B1?", "A2?"]


async def test_a_chat_started_over_meanwhile_is_not_merged_into(tmp_path: Path) -> None:
    """A continues the text's conversation; B starts over (chat --new moves the file aside,
    then opens without resuming). Neither conversation takes the other's turns: the one that
    finds the other's in the file is saved beside it, with a warning."""
    a = opened(tmp_path)
    await a.aask("T0?")
    os.replace(a.path, a.path.with_name(f"{a.path.stem}.previous.json"))  # what --new does
    b = opened(tmp_path, resume=False)
    await b.aask("B1?")
    with pytest.warns(LongweaveWarning, match="another conversation about this text"):
        await a.aask("A1?")
    assert saved_questions(b) == ["B1?"]
    assert saved_questions(a) == ["T0?", "A1?"] and a.path != b.path
    await b.aask("B2?")
    assert saved_questions(b) == ["B1?", "B2?"]
    assert [t.question for t in opened(tmp_path).history] == ["B1?", "B2?"]  # the newest


async def test_turns_a_session_dropped_are_not_brought_back(tmp_path: Path) -> None:
    a = opened(tmp_path)
    await a.aask("A1?")
    await a.aask("A2?")
    b = opened(tmp_path)
    await b.aask("B1?")
    a.history.pop(0)  # the owner forgets A1 on purpose; B1 is another session's, kept
    await a.aask("A3?")
    assert saved_questions(a) == ["A2?", "B1?", "A3?"]


def _child(cache: Path, name: str, turns: int, go: Path | None = None) -> subprocess.Popen[str]:
    code = f"""
import pathlib, sys, time
sys.path.insert(0, {str(ROOT)!r})
from longweave.config import Settings
from longweave.session import Session
from longweave.testing import ScriptedModel
model = ScriptedModel()
model.on("reader", reply="ok")
s = Session.open({TEXT!r}, strategy="truncate", model=model, cache=False, rewrite=False,
                 resume=True, settings=Settings(cache_dir={str(cache)!r}))
go = {str(go) if go else None!r}
if go:
    pathlib.Path(go + ".{name}").touch()
    while not pathlib.Path(go).exists():
        time.sleep(0.005)
for i in range({turns}):
    s.ask("{name}" + str(i) + "?")
"""
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait(child: subprocess.Popen[str]) -> None:
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0, out


async def test_a_session_in_another_process_keeps_its_turns(tmp_path: Path) -> None:
    a = opened(tmp_path)
    await a.aask("A1?")
    _wait(_child(tmp_path / "cache", "B", 1))
    await a.aask("A2?")
    assert saved_questions(a) == ["A1?", "B0?", "A2?"]


def test_two_processes_answering_at_once_lose_no_turn(tmp_path: Path) -> None:
    go = tmp_path / "go"
    children = [_child(tmp_path / "cache", name, 25, go) for name in "PQ"]
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.{n}").exists() for n in "PQ") and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    for child in children:
        _wait(child)
    probe = opened(tmp_path, persist=False)
    asked = [t.question for t in probe.history]
    assert sorted(asked) == sorted(f"{n}{i}?" for n in "PQ" for i in range(25))
    for n in "PQ":  # each process's turns in the order it asked them
        assert [q for q in asked if q.startswith(n)] == [f"{n}{i}?" for i in range(25)]


# -- rewrites that fail, long conversations -----------------------------------------------------


def _fails(fatal: bool):  # noqa: ANN202
    def reply(request: Request) -> str:
        raise ModelError("the server timed out", provider="scripted", fatal=fatal)

    return reply


async def test_a_rewrite_that_fails_still_answers_the_follow_up(tmp_path: Path) -> None:
    m = ScriptedModel(context_window=4096)
    m.on("reader", reply="Mara Quill.")
    m.on("rewrite", reply=_fails(fatal=False), times=1)
    m.on("rewrite", reply="")  # then an empty reply
    session = opened(tmp_path, m)
    await session.aask("Who kept the light?")
    with pytest.warns(LongweaveWarning, match="rewrite call failed .*timed out"):
        answer = await session.aask("And after her?")
    assert answer.text == "Mara Quill."
    turn = session.history[-1]
    # The same fallback as an unusable reply: the previous question carries the context.
    assert turn.standalone == "Who kept the light? And after her?"
    assert answer.steps[0].role == "rewrite"
    assert answer.steps[0].detail["error"] == "the server timed out"
    assert answer.usage.calls == 1  # only the reader's call was made and counted
    answer = await session.aask("When?")
    assert session.history[-1].standalone == "Who kept the light? And after her? When?"
    assert len(saved_questions(session)) == 3


async def test_a_fatal_rewrite_error_fails_the_turn_and_keeps_nothing(tmp_path: Path) -> None:
    m = ScriptedModel(context_window=4096)
    m.on("reader", reply="Mara Quill.")
    m.on("rewrite", reply=_fails(fatal=True))
    session = opened(tmp_path, m)
    await session.aask("Who kept the light?")
    before = session.path.read_bytes()
    with pytest.raises(ModelError, match="timed out"):
        await session.aask("And after her?")
    assert len(session.history) == 1 and session.path.read_bytes() == before
    assert len(m.calls("reader")) == 1  # no second call that would fail the same way


async def test_a_model_error_mid_answer_keeps_no_half_turn(tmp_path: Path) -> None:
    m = model()
    session = opened(tmp_path, m)
    await session.aask("Who kept the light?")
    before = session.path.read_bytes()
    m.rules.insert(0, longweave.testing.Rule("reader", (), _fails(fatal=False)))
    with pytest.raises(ModelError):
        await session.aask("And after her?")
    assert [t.question for t in session.history] == ["Who kept the light?"]
    assert session.path.read_bytes() == before and session.usage.calls == 1


def _turn(i: int) -> Turn:
    answer = Answer(text=f"Answer {i}: " + "detail " * 40, strategy="truncate", model="scripted")
    return Turn(question=f"Question {i}?", standalone=f"Question {i}?", answer=answer,
                asked_at=1_700_000_000 + i)


async def test_a_long_conversation_is_remembered_turn_by_turn_within_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    added: list[int] = []
    add = ConversationMemory.add

    def counted(self: ConversationMemory, index: int, question: str, answer: str) -> None:
        added.append(index)
        add(self, index, question, answer)

    monkeypatch.setattr(ConversationMemory, "add", counted)
    m = model()
    session = Session(Document.from_text(TEXT), strategy="truncate", model=m, cache=False,
                      persist=False, history=[_turn(i) for i in range(300)])
    await session.aask("And then?")
    assert len(added) == 300  # the memory is built once ...
    await session.aask("And after?")
    await session.aask("Why?")
    assert added[300:] == [300, 301]  # ... then each turn adds only itself
    window = longweave.session.REWRITE_WINDOW
    for call in m.calls("rewrite"):
        assert call.prompt_tokens + call.max_tokens <= window
    assert "Question 299?" in m.calls("rewrite")[0].text
    # A history changed by hand is read again, not trusted.
    session.history[:] = session.history[:2]
    await session.aask("And?")
    assert "Question 299?" not in m.calls("rewrite")[-1].text
    assert "Question 1?" in m.calls("rewrite")[-1].text


# -- saved files: newer, foreign, damaged meanwhile, not encodable ------------------------------


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record), encoding="utf-8")


async def test_a_newer_format_is_named_and_kept(tmp_path: Path) -> None:
    session = opened(tmp_path)
    await session.aask("Who?")
    record = json.loads(session.path.read_text("utf-8"))
    _write(session.path, {**record, "version": 2, "branches": []})
    with pytest.warns(LongweaveWarning, match="format 2; this longweave reads format 1"):
        resumed = opened(tmp_path)
    assert resumed.history == []
    (kept,) = session.path.parent.glob("*.unreadable-*.json")
    assert json.loads(kept.read_text("utf-8"))["version"] == 2


async def test_a_saved_session_about_another_text_is_kept_not_overwritten(
    tmp_path: Path,
) -> None:
    probe = opened(tmp_path, persist=False)
    foreign = {"document_id": "0" * 64, "strategy": "truncate", "turns": []}
    _write(probe.path, foreign)
    with pytest.warns(LongweaveWarning, match=r"\(it is the conversation about another text\)"):
        session = opened(tmp_path)
    await session.aask("Who?")
    (kept,) = session.path.parent.glob("*.unreadable-*.json")
    assert json.loads(kept.read_text("utf-8")) == foreign
    assert saved_questions(session) == ["Who?"]


async def test_a_saved_file_damaged_meanwhile_is_kept_aside(tmp_path: Path) -> None:
    session = opened(tmp_path)
    await session.aask("A1?")
    session.path.write_text('{"version": 1, "turns": [', encoding="utf-8")  # an editor, a crash
    with pytest.warns(LongweaveWarning, match="unreadable .* saving this conversation in its"):
        await session.aask("A2?")
    assert saved_questions(session) == ["A1?", "A2?"]
    (kept,) = session.path.parent.glob("*.unreadable-*.json")
    assert kept.read_text("utf-8") == '{"version": 1, "turns": ['


async def test_lone_surrogates_do_not_stop_the_saves(tmp_path: Path) -> None:
    m = ScriptedModel(context_window=4096)
    m.on("reader", reply="An emoji cut in half: \ud83d, whole: \ud83d\ude00.")
    session = opened(tmp_path, m)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LongweaveWarning)  # the save used to warn and give up
        await session.aask("caf\udce9?")  # a Latin-1 byte read with surrogateescape
    assert saved_questions(session) == ["caf\ufffd?"]
    md = session.save(tmp_path / "chat.md").read_text("utf-8")
    assert "caf\ufffd?" in md and "half: \ufffd, whole: \U0001f600." in md
    assert json.loads(session.save(tmp_path / "chat.json").read_text("utf-8"))["turns"]
    assert opened(tmp_path).history[0].answer.text.endswith("whole: \U0001f600.")


# -- opening ------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [None, b"\x00\x01binary\xff", b"", b"  \n"])
def test_open_fails_on_a_bad_file_as_ask_does(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "doc.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DocumentError) as opening:
        Session.open(path, model=model(), settings=Settings(cache_dir=tmp_path / "cache"))
    with pytest.raises(DocumentError) as asking:
        longweave.ask(path, "Who?", model=model())
    assert str(opening.value) == str(asking.value)
    assert not (tmp_path / "cache" / "sessions").exists() or not os.listdir(
        tmp_path / "cache" / "sessions")


def test_a_model_string_of_no_known_form_fails_when_the_session_opens(tmp_path: Path) -> None:
    """It failed only at the first question, so `longweave chat -m nonsense` opened first."""
    from longweave.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown model 'nonsense'"):
        Session.open(TEXT, strategy="truncate", model="nonsense", cache=False,
                     settings=Settings(cache_dir=tmp_path / "cache"))

"""`Session`: follow-ups rewritten from the conversation memory, usage, persistence and resume."""

from __future__ import annotations

import asyncio
import doctest
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import longweave
import longweave.session
from longweave.config import Settings
from longweave.errors import ConfigError, DocumentError
from longweave.llm import Completion, Message
from longweave.session import ConversationMemory, Session, clean_rewrite
from longweave.testing import HashEmbedder, ScriptedModel

EXAMPLE = Path(__file__).parents[1] / "examples" / "harbour_report.md"
FIRST = "Who was the first keeper of the lighthouse?"
FOLLOW = "And who took over from her?"
STANDALONE = "Who took over the lighthouse from Mara Quill?"


def scripted() -> ScriptedModel:
    """The truncate baseline reads the whole report in one `reader` call per question."""
    model = ScriptedModel(context_window=4096)
    model.on("reader", contains=FIRST, reply="Mara Quill, the widow of a pilot.")
    model.on("rewrite", contains="Latest question: And who took over", reply=STANDALONE)
    model.on("reader", contains=STANDALONE, reply="Her nephew Tobias Quill.")
    return model


def open_session(tmp_path: Path, model: Any, **kw: Any) -> Session:
    kw.setdefault("strategy", "truncate")
    return Session.open(EXAMPLE, model=model, cache=False,
                        settings=Settings(cache_dir=tmp_path / "cache"), **kw)


def test_session_is_exported_lazily() -> None:
    assert longweave.Session is Session
    assert "Session" in longweave.__all__


def test_module_examples_run() -> None:
    result = doctest.testmod(longweave.session)
    assert result.attempted >= 3 and result.failed == 0


async def test_follow_up_is_rewritten_from_the_previous_turn(tmp_path: Path) -> None:
    model = scripted()
    session = open_session(tmp_path, model)
    first = await session.aask(FIRST)
    assert model.calls("rewrite") == []  # nothing to resolve on the first turn
    answer = await session.aask(FOLLOW)
    assert answer.text == "Her nephew Tobias Quill."

    (rewrite,) = model.calls("rewrite")
    assert FIRST in rewrite.text and first.text in rewrite.text  # the previous turn, verbatim
    assert rewrite.text.rstrip().endswith(f"Latest question: {FOLLOW}\n\nRewritten question:")
    assert rewrite.max_tokens == longweave.session.REWRITE_MAX_NEW
    # The standalone question, not the follow-up, is what the strategy answers.
    reader = model.calls("reader")[1]
    assert f"Question: {STANDALONE}" in reader.text and FOLLOW not in reader.text

    turn = session.history[1]
    assert (turn.question, turn.standalone) == (FOLLOW, STANDALONE)
    assert answer.steps[0].role == "rewrite" and answer.steps[0].output == STANDALONE
    # The rewrite is counted in the turn: two calls, both calls' tokens.
    assert answer.usage.calls == 2
    expected = sum(r.prompt_tokens for r in (rewrite, reader))
    assert answer.usage.prompt_tokens == expected
    assert session.usage.calls == 3 == len(model.requests)
    assert session.usage.prompt_tokens == sum(r.prompt_tokens for r in model.requests)


async def test_rewrite_can_be_switched_off_and_empty_questions_are_not_rewritten(
    tmp_path: Path,
) -> None:
    model = ScriptedModel(context_window=4096)
    model.on("reader", reply="An answer.")
    model.on("reader", reply="A summary.")
    session = open_session(tmp_path, model, rewrite=False)
    await session.aask(FIRST)
    await session.aask(FOLLOW)
    session.rewrite = True
    await session.aask("")  # a summary request has nothing to resolve
    assert model.calls("rewrite") == []
    assert session.history[1].standalone == FOLLOW


def test_memory_keeps_recent_turns_verbatim_and_older_ones_as_facts() -> None:
    def words(s: str) -> int:
        return len(s.split())

    memory = ConversationMemory(words, recent=2, earlier_tokens=30)
    for i in range(6):
        memory.add(i, f"question {i}?", f"answer {i}. " + "detail " * 3)
    text = memory.render(400)
    recent = text.split("Recent:")[1]
    assert "User: question 4?" in recent and "User: question 5?" in recent
    assert "question 3" not in recent
    earlier = text.split("Recent:")[0]
    assert "question 3? -> answer 3." in earlier and "[u3]" in earlier
    assert "question 0" not in text  # the oldest fact fell out of the 30-token target
    # A tight budget keeps the newest turn and drops the rest.
    tight = memory.render(words("User: question 5?\nAssistant: answer 5. " + "detail " * 3) + 2)
    assert "question 5" in tight and "question 4" not in tight and "Earlier" not in tight


def test_clean_rewrite_strips_labels_and_falls_back_when_unusable() -> None:
    q = "and her brother?"
    assert clean_rewrite('Rewritten question: "Who is Mara\'s brother?"\n', q) == (
        "Who is Mara's brother?"
    )
    assert clean_rewrite("  \n ", q) == q
    # Unusable replies fall back to the previous question followed by this one.
    before = "Who is Mara?"
    assert clean_rewrite("  \n ", q, before) == "Who is Mara? and her brother?"
    assert clean_rewrite("x" * 500 + "?", q, before) == f"{before} {q}"  # an essay
    assert clean_rewrite("Her brother is Tobias.", q, before) == f"{before} {q}"  # an answer
    assert clean_rewrite("Tell me about Mara's brother", "tell me about her brother") == (
        "Tell me about Mara's brother"  # a request stays a request
    )


async def test_rewrite_memory_fits_a_small_window(tmp_path: Path) -> None:
    model = ScriptedModel(context_window=4096)
    model.on("reader", reply=lambda r: "word " * 300)
    model.on("rewrite", reply="What next?")
    session = open_session(tmp_path, model, max_new=400)
    for _ in range(3):
        await session.aask("Tell me more about the harbour, please.")
    model.context_window = 300  # now only a little memory fits the rewrite call
    await session.standalone("and then?")
    last = model.calls("rewrite")[-1]
    assert last.prompt_tokens + last.max_tokens <= 300
    # The newest turn is still there (as its standalone question), its answer cut short.
    assert "User: What next?\nAssistant: word word" in last.text
    assert "Earlier" not in last.text


async def test_session_is_saved_after_each_turn_and_resumed(tmp_path: Path) -> None:
    model = scripted()
    session = open_session(tmp_path, model, max_new=64)
    await session.aask(FIRST)
    await session.aask(FOLLOW)
    path = session.path
    assert path.parent == tmp_path / "cache" / "sessions"
    assert path.name == f"{session.document.id}.json"
    saved = json.loads(path.read_text())
    assert [t["question"] for t in saved["turns"]] == [FIRST, FOLLOW]
    assert saved["strategy"] == "truncate" and saved["options"] == {"max_new": 64}
    # No temporary files left (`paths/` says which conversation each file's text last had).
    assert [p.name for p in path.parent.iterdir() if p.is_file()] == [path.name]

    model.on("rewrite", contains="Tobias", reply="When did Tobias Quill take over?")
    model.on("reader", contains="When did Tobias", reply="In 1920.")
    resumed = Session.open(EXAMPLE, model=model, cache=False, resume=True,
                           settings=Settings(cache_dir=tmp_path / "cache"))
    assert [t.question for t in resumed.history] == [FIRST, FOLLOW]
    assert resumed.strategy.name == "truncate" and resumed.options == {"max_new": 64}
    assert resumed.usage == session.usage
    answer = await resumed.aask("When was that?")
    assert answer.text == "In 1920."
    rewrite = model.calls("rewrite")[-1]
    assert "Tobias Quill" in rewrite.text  # the resumed turns are in the memory
    assert len(json.loads(path.read_text())["turns"]) == 3


async def test_explicit_strategy_overrides_the_saved_one_and_new_starts_over(
    tmp_path: Path,
) -> None:
    model = scripted()
    session = open_session(tmp_path, model, max_new=64)
    await session.aask(FIRST)
    other = Session.open(EXAMPLE, model=model, cache=False, resume=True, strategy="rag",
                         settings=Settings(cache_dir=tmp_path / "cache"))
    assert other.strategy.name == "rag" and other.options == {}
    assert len(other.history) == 1
    fresh = open_session(tmp_path, model)  # resume=False: a new conversation
    assert fresh.history == []
    assert len(json.loads(session.path.read_text())["turns"]) == 1  # untouched until it answers
    model.on("reader", contains="Anything else?", reply="No.")
    await fresh.aask("Anything else?")
    assert [t["question"] for t in json.loads(session.path.read_text())["turns"]] == [
        "Anything else?"
    ]


def test_unreadable_saved_session_warns_and_starts_over(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path / "cache")
    probe = Session.open(EXAMPLE, model=ScriptedModel(), persist=False, settings=settings,
                         strategy="truncate")
    probe.path.parent.mkdir(parents=True)
    probe.path.write_text('{"version": 1, "turns": [')
    with pytest.warns(RuntimeWarning, match="unreadable .*; starting a new one; it was moved to"):
        session = Session.open(EXAMPLE, model=ScriptedModel(), resume=True, settings=settings)
    assert session.history == []
    # Kept beside, so the new session's first turn does not overwrite the old conversation.
    (kept,) = [p for p in probe.path.parent.iterdir() if p != probe.path]
    assert kept.name.startswith(f"{probe.path.stem}.unreadable-") and kept.suffix == ".json"
    assert kept.read_text() == '{"version": 1, "turns": ['


@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b"not json at all", b""])
def test_a_saved_session_that_is_not_utf8_or_json_warns_and_starts_over(
    tmp_path: Path, content: bytes
) -> None:
    settings = Settings(cache_dir=tmp_path / "cache")
    probe = Session.open(EXAMPLE, model=ScriptedModel(), persist=False, settings=settings,
                         strategy="truncate")
    probe.path.parent.mkdir(parents=True)
    probe.path.write_bytes(content)
    with pytest.warns(RuntimeWarning, match="unreadable") as caught:
        session = Session.open(EXAMPLE, model=ScriptedModel(), resume=True, settings=settings)
    assert session.history == [] and str(probe.path) in str(caught[0].message)


async def test_a_saved_strategy_that_no_longer_loads_falls_back_to_the_default(
    tmp_path: Path,
) -> None:
    session = open_session(tmp_path, scripted())
    await session.aask(FIRST)
    record = json.loads(session.path.read_text())
    record["options"] = {"renamed_setting": 1}
    session.path.write_text(json.dumps(record))
    with pytest.warns(RuntimeWarning, match="renamed_setting"):
        resumed = Session.open(EXAMPLE, model=ScriptedModel(), resume=True,
                               settings=Settings(cache_dir=tmp_path / "cache"))
    assert resumed.strategy.name == "chain-of-agents" and len(resumed.history) == 1


def test_another_document_has_its_own_session(tmp_path: Path) -> None:
    model = ScriptedModel()
    model.on("reader", reply="Yes.")
    settings = Settings(cache_dir=tmp_path / "cache")
    a = Session.open("Text one.", model=model, strategy="truncate", cache=False,
                     settings=settings)
    a.ask("One?")
    b = Session.open("Text two.", model=model, strategy="truncate", cache=False, resume=True,
                     settings=settings)
    assert b.history == [] and a.path != b.path


async def test_save_writes_markdown_and_json_and_refuses_other_suffixes(tmp_path: Path) -> None:
    session = open_session(tmp_path, scripted(), persist=False)
    await session.aask(FIRST)
    await session.aask(FOLLOW)
    md = session.save(tmp_path / "chat.md").read_text()
    assert md.startswith("# Conversation about harbour_report.md")
    assert f"## 2. {FOLLOW}" in md and f"*Asked as:* {STANDALONE}" in md
    assert "Her nephew Tobias Quill." in md and "chars 0-" in md
    record = json.loads(session.save(tmp_path / "chat.json").read_text())
    assert record["turns"][1]["standalone"] == STANDALONE
    assert record["turns"][1]["answer"]["usage"]["calls"] == 2
    with pytest.raises(ConfigError, match="chat.txt"):
        session.save(tmp_path / "chat.txt")
    assert not session.path.exists()  # persist=False writes no resume file


async def test_save_to_a_path_that_cannot_be_written_is_a_document_error(
    tmp_path: Path,
) -> None:
    session = open_session(tmp_path, scripted(), persist=False)
    await session.aask(FIRST)
    note = tmp_path / "note.md"
    note.write_text("mine", encoding="utf-8")
    (tmp_path / "folder.md").mkdir()
    targets = [note / "chat.md", tmp_path / "folder.md"]
    if Path("/proc/self").is_dir():
        targets.append(Path("/proc/longweave-chat.md"))
    for target in targets:
        with pytest.raises(DocumentError, match="cannot be written"):
            session.save(target)
    assert note.read_text(encoding="utf-8") == "mine"


async def test_set_strategy_and_model_validate_and_apply_to_the_next_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = scripted()
    session = open_session(tmp_path, model)
    with pytest.raises(ConfigError, match="max_nwe"):
        session.set_strategy("truncate", max_nwe=3)
    with pytest.raises(ConfigError, match="unknown strategy"):
        session.set_strategy("nonesuch")
    assert session.strategy.name == "truncate"
    with pytest.raises(ConfigError, match="unknown model"):
        session.set_model("nonsense")
    assert session.llm is model

    other = ScriptedModel(name="other", context_window=4096)
    other.on("reader", reply="From the other model.")
    session.set_model(other)
    session.set_strategy("truncate", max_new=32)
    answer = await session.aask(FIRST)
    assert answer.text == "From the other model." and answer.model == "other"
    assert other.calls("reader")[0].max_tokens == 32 and model.requests == []


class Gate:
    """An LLM wrapper that holds `reader` calls until released, to cancel mid-answer."""

    def __init__(self, inner: ScriptedModel) -> None:
        self.inner = inner
        self.name, self.context_window = inner.name, inner.context_window
        self.tokenizer = inner.tokenizer
        self.entered = asyncio.Event()

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return self.inner.count_prompt_tokens(messages)

    async def complete(self, messages: Sequence[Message], **kw: Any) -> Completion:
        if kw.get("role") == "reader":
            self.entered.set()
            await asyncio.Event().wait()  # forever: only cancellation ends it
        return await self.inner.complete(messages, **kw)


async def test_cancel_mid_answer_leaves_the_session_and_its_file_unchanged(
    tmp_path: Path,
) -> None:
    model = scripted()
    session = open_session(tmp_path, model)
    await session.aask(FIRST)
    before = session.path.read_text()
    gate = Gate(model)
    session.set_model(gate)
    task = asyncio.ensure_future(session.aask(FOLLOW))
    await asyncio.wait_for(gate.entered.wait(), 10)
    assert model.calls("rewrite")  # the rewrite ran; the reader is in flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [t.question for t in session.history] == [FIRST]
    assert session.path.read_text() == before
    assert session.usage.calls == 1


async def test_per_document_artifacts_are_reused_across_turns(tmp_path: Path) -> None:
    from longweave.agents.rag import RAG

    model = ScriptedModel(context_window=4096)
    model.on("reader", reply="Mara Quill.")
    model.on("rewrite", reply="Who followed Mara Quill?")
    fake = HashEmbedder(dim=64)
    strategy = RAG(chunk_tokens=96, k=2, max_new=32).with_embedder(fake)
    session = open_session(tmp_path, model, strategy=strategy, persist=False)
    first = await session.aask(FIRST)
    embedded = fake.texts
    second = await session.aask(FOLLOW)
    assert first.steps[0].detail["reused"] is False
    index = next(s for s in second.steps if s.role == "index")
    assert index.detail["reused"] is True
    assert fake.texts == embedded + 1  # only the standalone question was embedded


async def test_a_strategy_setting_json_cannot_hold_is_saved_as_unset_with_a_warning(
    tmp_path: Path,
) -> None:
    from pydantic import ConfigDict

    from longweave.agents.truncate import Truncate

    class WithObject(Truncate):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        helper: Any = None

    model = scripted()
    with pytest.warns(longweave.LongweaveWarning, match="settings of type object cannot be saved"):
        session = open_session(tmp_path, model, strategy=WithObject(helper=object()))
    answer = await session.aask(FIRST)
    assert answer.text == "Mara Quill, the widow of a pilot."
    saved = json.loads(session.path.read_text(encoding="utf-8"))
    assert saved["options"]["helper"] is None and saved["options"]["max_new"] == 256


async def test_an_edited_document_names_its_earlier_conversation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session file is keyed by the text: after an edit, `chat` started empty without a
    word about the conversation saved for the same file."""
    from longweave.errors import LongweaveWarning

    doc = tmp_path / "report.md"
    doc.write_text(EXAMPLE.read_text())
    model = scripted()
    settings = Settings(cache_dir=tmp_path / "cache")

    def reopen(source: str | Path) -> Session:
        return Session.open(source, strategy="truncate", model=model, cache=False,
                            settings=settings, resume=True)

    first = reopen(doc)
    await first.aask(FIRST)
    doc.write_text(EXAMPLE.read_text() + "\nThe lamp was electrified in 1931.\n")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(LongweaveWarning, match="changed since") as caught:
        edited = reopen("report.md")  # the same file, named another way
    (note,) = [str(w.message) for w in caught if "changed since" in str(w.message)]
    assert str(first.path) in note and "1 turn," in note and "restore the earlier text" in note
    # Not carried over: its answers were about the earlier text.
    assert edited.history == [] and edited.path != first.path
    await edited.aask(FIRST)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the file's conversation is this one now
        assert len(reopen(doc).history) == 1
        # The earlier text, wherever it is read from, still continues its conversation.
        assert [t.answer.text for t in reopen(EXAMPLE).history] == [first.history[0].answer.text]


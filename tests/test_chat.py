"""`longweave chat`: the controller's commands, the loop (Ctrl-C, quit), streaming through the
OpenAI backend, the command line with resume, and the whole thing in a pseudo-terminal."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from rich.console import Console

import longweave.llm
from longweave.agents.chain_of_agents import ChainOfAgents
from longweave.agents.rag import RAG
from longweave.agents.truncate import Truncate
from longweave.api import make_model
from longweave.cli import main
from longweave.cli.chat import ChatController, LiveAnswer, run
from longweave.config import Settings
from longweave.documents import Document
from longweave.errors import ModelError
from longweave.events import Event, EventLog, token_sink
from longweave.llm import Completion, Message, user
from longweave.openai_backend import OpenAILLM
from longweave.runner import arun
from longweave.session import Session
from longweave.testing import HashEmbedder, ScriptedModel
from tests.faultserver import (
    FaultServer,
    Reply,
    completion,
    error,
    html_page,
    slow,
    stalled,
    streamed,
)

EXAMPLE = Path(__file__).parents[1] / "examples" / "harbour_report.md"
FIRST = "Who was the first keeper of the lighthouse?"
FOLLOW = "And who took over from her?"
STANDALONE = "Who took over the lighthouse from Mara Quill?"


def scripted() -> ScriptedModel:
    model = ScriptedModel(context_window=4096)
    model.on("reader", contains=FIRST, reply="Mara Quill, the widow of a pilot.")
    model.on("rewrite", contains=FOLLOW, reply=STANDALONE)
    model.on("reader", contains=STANDALONE, reply="Her nephew Tobias Quill.")
    return model


def session_of(tmp_path: Path, model: Any, **kw: Any) -> Session:
    kw.setdefault("strategy", "truncate")
    return Session.open(EXAMPLE, model=model, cache=False,
                        settings=Settings(cache_dir=tmp_path / "cache"), **kw)


@pytest.fixture
def controller(tmp_path: Path) -> ChatController:
    return ChatController(session_of(tmp_path, scripted()))


# -- the controller: questions and every command -------------------------------------------


async def test_questions_and_follow_ups_answer_with_citations_and_usage(
    controller: ChatController,
) -> None:
    out = await controller.handle(FIRST)
    text = out.text()
    assert "Mara Quill, the widow of a pilot." in text and "chars 0-" in text
    assert "1 call ·" in text and out.answer is not None and not out.quit
    follow = await controller.handle(FOLLOW)
    assert "Her nephew Tobias Quill." in follow.text() and "2 calls" in follow.text()
    assert controller.session.history[1].standalone == STANDALONE


async def test_sources_show_each_cited_span_highlighted_in_its_context(tmp_path: Path) -> None:
    model = ScriptedModel(context_window=4096)
    model.on("reader", reply="Mara Quill [2].")
    strategy = RAG(chunk_tokens=48, k=2, max_new=32).with_embedder(HashEmbedder(dim=64))
    controller = ChatController(session_of(tmp_path, model, strategy=strategy))
    assert "nothing asked yet" in controller.command("/sources").text()
    answer = (await controller.handle(FIRST)).answer
    assert answer is not None and len(answer.citations) == 2
    out = controller.command("/sources")
    text = out.text(width=400)
    doc = controller.session.document.text
    for n, cite in enumerate(answer.citations, 1):
        assert f"[{n}] harbour_report.md, chars {cite.start}-{cite.end}" in text
        before = " ".join(doc[max(0, cite.start - 60) : cite.start].split()[1:])
        assert before in " ".join(text.split())  # the text just before the span is shown
    # The span itself is highlighted; the context around it is dimmed.
    console = Console(file=io.StringIO(), width=400, force_terminal=True, color_system="standard")
    out.render(console)
    raw = console.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[1;33m" in raw and "\x1b[2m" in raw


async def test_trace_lists_the_steps_of_the_last_answer(controller: ChatController) -> None:
    assert "nothing asked yet" in controller.command("/trace").text()
    await controller.handle(FIRST)
    await controller.handle(FOLLOW)
    text = controller.command("/trace").text(width=200)
    assert "3 steps of the last answer" in text
    rows = [line for line in text.splitlines() if line.strip()[:1] in "│┃|" or "rewrite" in line]
    joined = "\n".join(rows)
    assert joined.index("rewrite") < joined.index("plan") < joined.index("reader")
    assert "Who took over the lighthouse" in text and "Her nephew Tobias Quill." in text


async def test_cost_shows_each_turn_and_the_total(controller: ChatController) -> None:
    assert "nothing asked yet" in controller.command("/cost").text()
    await controller.handle(FIRST)
    await controller.handle(FOLLOW)
    text = controller.command("/cost").text(width=200)
    usage = controller.session.usage
    rows = [line.split() for line in text.splitlines()]
    first, second = (next(r for r in rows if r[:2] == [n, word])
                     for n, word in (("1", "Who"), ("2", "And")))
    turns = controller.session.history
    # calls, prompt and completion tokens per turn: the rewrite counts in the second
    assert first[-4:-1] == ["1", f"{turns[0].answer.usage.prompt_tokens:,}",
                            f"{turns[0].answer.usage.completion_tokens:,}"]
    assert second[-4] == "2"
    total = next(r for r in rows if r[:1] == ["total"])
    assert total[1:4] == ["3", f"{usage.prompt_tokens:,}", f"{usage.completion_tokens:,}"]
    assert "strategy" not in text and "from cache" not in text  # columns of one value


async def test_strategy_and_model_commands(
    controller: ChatController, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = controller.command("/strategy").text()
    assert "strategy: truncate" in shown and "chain-of-agents" in shown  # the choices
    assert "strategy: rag (k=3)" in controller.command("/strategy rag k=3").text()
    assert controller.session.strategy.k == 3  # type: ignore[attr-defined]
    bad = controller.command("/strategy rag kk=3").text()
    assert "error: invalid options for rag" in bad and controller.session.strategy.name == "rag"
    assert "unknown strategy" in controller.command("/strategy nonesuch").text()

    assert "model: scripted" in controller.command("/model").text()
    other = ScriptedModel(name="other")
    monkeypatch.setattr(longweave.llm, "resolve_model", lambda spec, **_: other)
    assert "model: openai:other" in controller.command("/model openai:other").text()
    assert controller.session.llm is other
    assert "one model string" in controller.command("/model a b").text()


async def test_save_help_quit_and_unknown_commands(
    controller: ChatController, tmp_path: Path
) -> None:
    await controller.handle(FIRST)
    out = controller.command(f"/save {tmp_path / 'talk.md'}")
    assert "saved 1 turn to" in out.text()
    assert "Mara Quill" in (tmp_path / "talk.md").read_text()
    assert "needs a file name" in controller.command("/save").text()
    controller.command(f"/save {tmp_path / 'my talk.json'}")
    assert json.loads((tmp_path / "my talk.json").read_text())["turns"][0]["question"] == FIRST
    assert "cannot save" in controller.command(f"/save {tmp_path / 'talk.doc'}").text()
    help_text = controller.command("/help").text()
    for name in ("/strategy", "/model", "/sources", "/trace", "/cost", "/save", "/help", "/quit"):
        assert name in help_text
    assert controller.command("/quit").quit and controller.command("/exit").quit
    assert "unknown command /nope" in controller.command("/nope").text()
    assert (await controller.handle("   ")).items == []


async def test_a_save_that_cannot_be_written_prints_an_error_and_the_chat_goes_on(
    controller: ChatController, tmp_path: Path
) -> None:
    await controller.handle(FIRST)
    note = tmp_path / "note.md"
    note.write_text("mine", encoding="utf-8")
    out = controller.command(f"/save {note / 'x.md'}")
    text = " ".join(out.text().split())
    assert text.startswith("error:") and "cannot be written" in text and not out.quit
    assert "note.md is a file, not a folder" in text
    assert len(controller.session.history) == 1 and "total" in controller.command("/cost").text()
    assert "saved 1 turn to" in controller.command(f"/save {tmp_path / 'ok.md'}").text()


async def test_a_failing_question_prints_the_error_and_keeps_the_session(
    controller: ChatController,
) -> None:
    out = await controller.handle("What is not scripted?")
    assert "error: no rule answers a reader request" in out.text()
    assert controller.session.history == []


# -- the loop: lines in, Ctrl-C, quit -----------------------------------------------------


class Lines:
    """Scripted input for `run`: each item is a line, or a coroutine function awaited first."""

    def __init__(self, *items: Any) -> None:
        self.items = list(items)

    async def read(self) -> str:
        while self.items:
            item = self.items.pop(0)
            if callable(item):
                await item()
                continue
            return item
        raise EOFError


class Gate:
    """Wraps a model; `reader` calls wait until cancelled (to press Ctrl-C mid-answer)."""

    def __init__(self, inner: ScriptedModel, hold: int = 1) -> None:
        self.inner, self.hold = inner, hold
        self.name, self.context_window = inner.name, inner.context_window
        self.tokenizer = inner.tokenizer
        self.entered = asyncio.Event()

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        return self.inner.count_prompt_tokens(messages)

    async def complete(self, messages: Sequence[Message], **kw: Any) -> Completion:
        if kw.get("role") == "reader" and self.hold:
            self.hold -= 1
            self.entered.set()
            await asyncio.Event().wait()
        return await self.inner.complete(messages, **kw)


def recording_console() -> Console:
    return Console(file=io.StringIO(), width=120, color_system=None, record=True)


async def test_ctrl_c_cancels_the_answer_and_the_chat_goes_on(tmp_path: Path) -> None:
    model = scripted()
    gate = Gate(model)
    session = session_of(tmp_path, gate)

    async def press_ctrl_c() -> None:
        async def later() -> None:
            await gate.entered.wait()
            os.kill(os.getpid(), signal.SIGINT)  # what the terminal sends on Ctrl-C

        asyncio.ensure_future(later())

    console = recording_console()
    handler = signal.getsignal(signal.SIGINT)
    await run(ChatController(session), console,
              Lines(press_ctrl_c, FIRST, FIRST, FOLLOW, "/cost", "/quit", "never read"))
    text = console.export_text()
    assert "cancelled" in text
    assert [t.question for t in session.history] == [FIRST, FOLLOW]  # no half turn
    assert text.count("Mara Quill, the widow of a pilot.") == 1
    assert "Her nephew Tobias Quill." in text and "total" in text
    assert signal.getsignal(signal.SIGINT) is handler  # the usual Ctrl-C is back
    saved = json.loads(session.path.read_text())
    assert [t["question"] for t in saved["turns"]] == [FIRST, FOLLOW]


async def test_an_unexpected_failure_is_reported_and_the_chat_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = scripted()
    model.on("reader", contains="boom", reply=lambda r: 1 / 0)
    monkeypatch.delenv("LONGWEAVE_DEBUG", raising=False)
    console = recording_console()
    session = session_of(tmp_path, model, rewrite=False)
    await run(ChatController(session), console, Lines("boom?", FIRST))
    text = console.export_text()
    assert "unexpected error: ZeroDivisionError" in text and "Mara Quill" in text
    assert [t.question for t in session.history] == [FIRST]


async def test_a_command_that_fails_unexpectedly_is_reported_and_the_chat_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LONGWEAVE_DEBUG", raising=False)
    console = recording_console()
    session = session_of(tmp_path, scripted(), rewrite=False)
    chat = ChatController(session)
    monkeypatch.setattr(chat, "_cost", lambda args: 1 / 0)
    await run(chat, console, Lines(FIRST, "/save ~no-such-user-here/x.md", "/cost",
                                   f"/save {tmp_path / 'two  spaces.md'}", "/strategy rag k"))
    text = console.export_text()
    assert "cannot be written" in text  # an unknown ~user: an error line, not the end
    assert "unexpected error: ZeroDivisionError" in text
    assert (tmp_path / "two  spaces.md").is_file() and "saved 1 turn to" in text
    assert "write options as /strategy rag key=value" in text


async def test_a_multi_line_question_keeps_every_line_through_the_rewrite(
    tmp_path: Path,
) -> None:
    model = scripted()
    pasted = "Who was the first keeper of the lighthouse?\nWhen was the lamp first lit?"
    model.on("rewrite", contains="When was the lamp", reply=pasted + "\n(rewritten as asked)")
    model.on("reader", contains="When was the lamp", reply="Mara Quill; in 1859.")
    session = session_of(tmp_path, model)
    await session.aask(FIRST)
    await session.aask(pasted)
    assert session.history[-1].standalone == pasted
    assert "When was the lamp first lit?" in model.calls("reader")[-1].text


async def test_the_loop_ends_on_end_of_input(controller: ChatController) -> None:
    console = recording_console()
    await run(controller, console, Lines(FIRST))
    assert "Mara Quill" in console.export_text()


def test_live_view_shows_streamed_tokens_and_restarts() -> None:
    console = Console(file=io.StringIO(), width=40, height=6, color_system=None)
    with LiveAnswer(console) as view:
        view(Event("call", "truncate", "reader", message="reader call"))
        for word in ["Mara ", "Quill"]:
            view(Event("token", "truncate", "reader", message=word))
        assert view.streamed == "Mara Quill" and view.live is not None
        view(Event("token", "truncate", "reader", data={"restart": True}))
        view(Event("token", "truncate", "reader", message="Again"))
        assert view.streamed == "Again"
        view.streamed = "\n".join(f"line {i}" for i in range(20))
        assert view._tail().splitlines()[-1] == "line 19" and len(view._tail().splitlines()) <= 4


def test_live_view_hides_quote_lines_the_model_copies() -> None:
    console = Console(file=io.StringIO(), width=40, height=10, color_system=None)
    shown = []
    with LiveAnswer(console) as view:
        for piece in ['"', '""', "\n", "Mara", " Quill", "\n", '""', '"']:
            view(Event("token", "truncate", "reader", message=piece))
            shown.append(view._tail())
    assert shown == ["", "", "", "Mara", "Mara Quill", "Mara Quill", "Mara Quill", "Mara Quill"]


# -- streaming through the OpenAI backend -----------------------------------------------------


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv
    assert srv.unscripted == 0, "the backend sent more requests than the test scripted"


def openai_llm(server: FaultServer, **kw: Any) -> OpenAILLM:
    llm = OpenAILLM("test-model", base_url=server.base_url, api_key="sk-test", timeout=5.0,
                    max_retries=2, context_window=4096, **kw)

    async def no_wait(seconds: float) -> None:
        pass

    llm.sleep = no_wait
    return llm


def tokens(log: EventLog) -> str:
    text = ""
    for event in log.of_kind("token"):
        text = "" if event.data.get("restart") else text
        text += event.message
    return text


async def test_final_answer_streams_with_exact_usage(server: FaultServer, tmp_path: Path) -> None:
    server.push(streamed("Mara Quill kept the light.", prompt_tokens=911, completion_tokens=7),
                completion(STANDALONE, prompt_tokens=50, completion_tokens=9),
                streamed("Tobias Quill.", prompt_tokens=930, completion_tokens=4))
    session = session_of(tmp_path, openai_llm(server))
    log = EventLog()
    first = await session.aask(FIRST, on_event=log)
    assert [e.message for e in log.of_kind("token")] == ["Mara ", "Quill ", "kept ", "the ",
                                                         "light."]
    assert tokens(log) == first.text == "Mara Quill kept the light."
    assert all(e.role == "reader" for e in log.of_kind("token"))
    # Usage is the server's own count (stream_options.include_usage), not an estimate.
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (911, 7)
    body = server.requests[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}

    log = EventLog()
    second = await session.aask(FOLLOW, on_event=log)
    assert tokens(log) == second.text == "Tobias Quill."
    assert "stream" not in server.requests[1].body  # the rewrite call does not stream
    assert (second.usage.calls, second.usage.prompt_tokens) == (2, 980)
    assert second.usage.completion_tokens == 13


async def test_a_stream_cut_midway_is_retried_and_restarted(server: FaultServer) -> None:

    server.push(streamed("one two three four", cut_after=2), streamed("one two three four"))
    log = EventLog()
    answer = await arun(Truncate(), Document.from_text("Some text."), "Count?",
                        openai_llm(server), on_event=log)
    restarts = [e for e in log.of_kind("token") if e.data.get("restart")]
    assert len(restarts) == 1
    assert tokens(log) == answer.text == "one two three four"
    assert answer.usage.calls == 1 and len(server.requests) == 2


async def test_a_stream_that_ends_before_the_reply_is_retried_not_kept(
    server: FaultServer, tmp_path: Path
) -> None:
    # A proxy closed the stream cleanly after two words: no finish reason, no usage, no [DONE].
    server.push(streamed("one two three four", stop_after=2), streamed("one two three four"))
    log = EventLog()
    answer = await arun(Truncate(), Document.from_text("Some text."), "Count?",
                        openai_llm(server), on_event=log)
    assert answer.text == tokens(log) == "one two three four" and len(server.requests) == 2
    assert sum(1 for e in log.of_kind("token") if e.data.get("restart")) == 1


async def test_a_stalled_stream_is_retried_and_a_login_page_is_not(server: FaultServer) -> None:
    llm = OpenAILLM("test-model", base_url=server.base_url, api_key="sk-test", timeout=0.5,
                    max_retries=2, context_window=4096)

    async def no_wait(seconds: float) -> None:
        pass

    llm.sleep = no_wait
    first = b'data: {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m", ' \
            b'"choices": [{"index": 0, "delta": {"content": "Li"}, "finish_reason": null}]}\n\n'
    # A stream kept alive with comments but no chunk after "Li", then a whole one.
    server.push(stalled(first), streamed("Lima."))
    log = EventLog()
    answer = await arun(Truncate(), Document.from_text("Lima is in Peru."), "Capital?", llm,
                        on_event=log)
    assert answer.text == tokens(log) == "Lima." and len(server.requests) == 2
    server.push(lambda request: Reply(200, b"busy", {"Content-Type": "text/plain"}))
    server.push(streamed("Lima."))  # another body that is no stream: worth a retry
    assert (await arun(Truncate(), Document.from_text("Lima is in Peru."), "Capital?", llm,
                       on_event=EventLog())).text == "Lima."
    # A proxy's login page is the same page on every retry: it fails at once, for good.
    server.push(html_page())
    with pytest.raises(ModelError, match="answered with a web page") as failed:
        await arun(Truncate(), Document.from_text("Lima is in Peru."), "Capital?", llm,
                   on_event=EventLog())
    assert failed.value.fatal and len(server.requests) == 5


async def test_an_error_event_inside_the_stream_is_retried(server: FaultServer) -> None:
    server.push(streamed("Lima is the capital.", fail_after=2), streamed("Lima is the capital."))
    log = EventLog()
    answer = await arun(Truncate(), Document.from_text("Lima is in Peru."), "Capital?",
                        openai_llm(server), on_event=log)
    assert answer.text == tokens(log) == "Lima is the capital."
    assert sum(1 for e in log.of_kind("token") if e.data.get("restart")) == 1
    assert len(server.requests) == 2


async def test_a_stream_that_keeps_failing_gives_up_with_a_model_error(
    server: FaultServer,
) -> None:
    server.push(*(streamed("Lima.", fail_after=1) for _ in range(3)))
    with pytest.raises(ModelError, match="the stream failed: generation failed; gave up after 3"):
        await arun(Truncate(), Document.from_text("Lima is in Peru."), "Capital?",
                   openai_llm(server), on_event=EventLog())


async def test_without_a_listener_or_for_schema_calls_nothing_streams(server: FaultServer) -> None:

    class City(BaseModel):
        city: str

    server.push(completion("Lima."), completion('{"city": "Lima"}'))
    llm = openai_llm(server)
    answer = await arun(Truncate(), Document.from_text("Lima is in Peru."), "Where?", llm)
    assert answer.text == "Lima."
    token = token_sink.set(lambda delta, *, restart=False: None)
    try:
        reply = await llm.complete([user("city?")], max_tokens=20, schema=City)
    finally:
        token_sink.reset(token)
    assert reply.parsed == City(city="Lima")
    assert all("stream" not in r.body for r in server.requests)


async def test_servers_that_refuse_or_ignore_streaming_are_asked_plainly(
    server: FaultServer,
) -> None:

    doc = Document.from_text("Lima is in Peru.")
    server.push(error(400, "stream_options is not supported"), completion("Lima."),
                completion("Lima again."))
    llm = openai_llm(server)
    log = EventLog()
    answer = await arun(Truncate(), doc, "Where?", llm, on_event=log)
    assert answer.text == "Lima." and llm.streaming_unsupported
    again = await arun(Truncate(), doc, "Where now?", llm, on_event=log)
    assert again.text == "Lima again." and log.of_kind("token") == []
    assert [r.body.get("stream") for r in server.requests] == [True, None, None]

    server.push(completion("A whole reply."))  # a server that answers a stream with JSON
    llm = openai_llm(server)
    answer = await arun(Truncate(), doc, "Where?", llm, on_event=log)
    assert answer.text == "A whole reply." and llm.streaming_unsupported
    assert answer.usage.completion_tokens == 3  # the JSON body's usage


async def test_chain_of_agents_streams_only_the_managers_answer(server: FaultServer) -> None:

    server.push(completion("Notes: Lima [c1]."), streamed("Lima [c1]."))
    log = EventLog()
    answer = await arun(ChainOfAgents(max_new=64), Document.from_text("Lima is in Peru."),
                        "Where?", openai_llm(server), on_event=log)
    assert tokens(log) == "Lima [c1]." and answer.text == "Lima."
    assert {e.role for e in log.of_kind("token")} == {"manager"}
    assert [r.body.get("stream") for r in server.requests] == [None, True]


async def test_a_cached_answer_does_not_stream_but_still_answers(
    server: FaultServer, tmp_path: Path
) -> None:
    server.push(streamed("Mara Quill."))
    settings = Settings(cache_dir=tmp_path / "cache")
    llm = make_model(openai_llm(server), settings=settings)
    session = Session.open(EXAMPLE, model=llm, strategy="truncate", settings=settings,
                           persist=False)
    first_log, second_log = EventLog(), EventLog()
    await session.aask(FIRST, on_event=first_log)
    session.rewrite = False
    again = await session.aask(FIRST, on_event=second_log)
    assert tokens(first_log) == "Mara Quill." and second_log.of_kind("token") == []
    assert again.text == "Mara Quill." and again.usage.cache_hits == 1
    assert len(server.requests) == 1


async def test_the_chat_loop_renders_a_streamed_answer(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.push(streamed("Mara Quill kept the light."))
    session = session_of(tmp_path, openai_llm(server))
    seen: list[str] = []
    original = LiveAnswer.__call__

    def spy(self: LiveAnswer, event: Event) -> None:
        original(self, event)
        if event.kind == "token":
            seen.append(self.streamed)

    console = recording_console()
    monkeypatch.setattr(LiveAnswer, "__call__", spy)
    await run(ChatController(session), console, Lines(FIRST))
    assert seen[-1] == "Mara Quill kept the light." and len(seen) == 5
    assert "Mara Quill kept the light." in console.export_text()


# -- the command line ---------------------------------------------------------------------


def chat_cli(monkeypatch: pytest.MonkeyPatch, capsys: Any, stdin: str, *args: str) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    monkeypatch.setattr(sys, "argv", ["longweave", "chat", str(EXAMPLE), *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.fixture
def cli_model(scripted_cli: Callable[..., ScriptedModel]) -> ScriptedModel:
    """The scripted model behind every model string of the CLI, and a private cache."""
    return scripted_cli(scripted())


def test_chat_command_resumes_the_conversation_and_new_starts_over(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, cli_model: ScriptedModel, tmp_path: Path
) -> None:
    out = chat_cli(monkeypatch, capsys, f"{FIRST}\n", "--strategy", "truncate",
                   "--model", "openai:x", "--no-cache")
    assert "longweave chat · harbour_report.md" in out and "Mara Quill" in out
    out = chat_cli(monkeypatch, capsys, f"{FOLLOW}\n/cost\n", "--no-cache")
    assert "resumed 1 turn " in out and "truncate" in out  # the saved strategy
    assert "Her nephew Tobias Quill." in out and "total" in out
    out = chat_cli(monkeypatch, capsys, "/cost\n", "--new", "--strategy", "truncate")
    assert "resumed" not in out and "nothing asked yet" in out
    assert "starting over; the earlier conversation is kept in" in " ".join(out.split())
    (kept,) = (tmp_path / "cache" / "sessions").glob("*.previous.json")
    assert [t["question"] for t in json.loads(kept.read_text())["turns"]] == [FIRST, FOLLOW]
    # A second --new keeps the conversation it replaces beside the first one's.
    chat_cli(monkeypatch, capsys, f"{FIRST}\n", "--strategy", "truncate", "--no-cache")
    chat_cli(monkeypatch, capsys, "/cost\n", "--new", "--strategy", "truncate")
    second = kept.with_name(kept.name.replace(".previous.json", ".previous-2.json"))
    assert [t["question"] for t in json.loads(kept.read_text())["turns"]] == [FIRST, FOLLOW]
    assert [t["question"] for t in json.loads(second.read_text())["turns"]] == [FIRST]


def test_options_on_resume_apply_to_the_saved_strategy_or_say_which_it_is(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, cli_model: ScriptedModel, tmp_path: Path
) -> None:
    chat_cli(monkeypatch, capsys, f"{FIRST}\n", "--strategy", "truncate", "--no-cache")
    out = chat_cli(monkeypatch, capsys, "/cost\n", "--set", "max_new=64")
    assert "truncate" in out and "resumed 1 turn " in out
    monkeypatch.setattr(sys, "stdin", io.StringIO("/cost\n"))
    monkeypatch.setattr(sys, "argv", ["longweave", "chat", str(EXAMPLE), "--set", "paths=bidir"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 1
    assert "invalid options for truncate: paths: no such setting (the resumed session's " \
           "strategy)" in err and "pass --strategy to choose another" in err


def test_a_trace_or_cache_that_cannot_be_written_is_said_at_the_start(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, cli_model: ScriptedModel, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{FIRST}\n"))
    monkeypatch.setattr(sys, "argv", ["longweave", "chat", str(EXAMPLE), "--trace",
                                      str(tmp_path), "-s", "truncate"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 1 and "is a directory" in err and "unexpected" not in err
    assert cli_model.requests == []


def test_chat_starts_over_with_a_warning_when_the_saved_session_is_not_utf8(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, tmp_path: Path, cli_model: ScriptedModel
) -> None:
    chat_cli(monkeypatch, capsys, f"{FIRST}\n", "--strategy", "truncate", "--no-cache")
    (saved,) = (tmp_path / "cache" / "sessions").glob("*.json")
    saved.write_bytes(b"\xff\xfe garbage")
    monkeypatch.setattr(sys, "stdin", io.StringIO("/cost\n"))
    monkeypatch.setattr(sys, "argv", ["longweave", "chat", str(EXAMPLE), "--strategy",
                                      "truncate"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    said = "".join(captured.err.split())  # the path may be wrapped anywhere
    assert exit_info.value.code in (0, None), captured.err
    # On stderr: stdout is the conversation.
    assert "warning:thesavedsession" in said and saved.name in said
    assert "warning:" not in captured.out
    assert "startinganewone" in said and "unexpected" not in captured.err
    assert "nothing asked yet" in captured.out and "resumed" not in captured.out


# -- a pseudo-terminal: the real command, prompt_toolkit, streaming and Ctrl-C -------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]|\x1b\][^\x07]*\x07|\x1b[=>]|\r")


class Terminal:
    """A child process on a pseudo-terminal, read until patterns appear (a little pexpect)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: its terminal is the pty, so Ctrl-C is a real SIGINT
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.seen = ""

    def expect(self, pattern: str, deadline_s: float = 90.0) -> str:
        """Read until `pattern` shows in the output since the last match; return that output."""
        import select

        found = re.compile(pattern)
        buffered = b""
        until = time.monotonic() + deadline_s  # only so a broken chat cannot hang the suite
        while True:
            text = _ANSI.sub("", buffered.decode("utf-8", errors="replace"))
            if found.search(text):
                self.seen += text
                return text
            ready, _, _ = select.select([self.fd], [], [], max(0.0, until - time.monotonic()))
            if not ready:
                raise AssertionError(f"no {pattern!r} in the output: {text[-1500:]!r}")
            try:
                buffered += os.read(self.fd, 4096)
            except OSError as exc:  # the child closed the terminal
                ended = f"the chat ended before {pattern!r}: {text[-1500:]!r}"
                raise AssertionError(ended) from exc

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, ok: bool = True) -> int:
        """The child's exit code; after a failed check (`ok=False`) it is killed first, so a
        chat still waiting for input cannot hang the test run."""
        if not ok:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        while True:
            try:
                os.read(self.fd, 4096)  # drain, or the child may block writing
            except OSError:
                break
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_chat_in_a_pseudo_terminal(server: FaultServer, tmp_path: Path) -> None:
    server.push(
        streamed("Mara Quill kept the light."),
        completion(STANDALONE),  # the rewrite of the follow-up
        streamed("Her nephew Tobias Quill."),
        completion("When did Tobias Quill retire?"),
        slow(streamed("Too late."), 60),  # held back: Ctrl-C lands while it is awaited
    )
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test",
           "LONGWEAVE_CACHE_DIR": str(tmp_path / "cache"), "PROMPT_TOOLKIT_NO_CPR": "1",
           "TERM": "xterm", "COLUMNS": "110", "LINES": "40", "HF_HUB_OFFLINE": "1"}
    term = Terminal([sys.executable, "-m", "longweave.cli", "chat", str(EXAMPLE), "--model",
                     "openai:test-model", "--strategy", "truncate", "--no-cache"], env)
    finished = False
    try:
        assert "longweave chat · harbour_report.md" in term.expect("›")
        term.send(FIRST + "\r")
        out = term.expect(r"calls? ·[^\n]*\n[\s\S]*›")
        assert "│ Mara Quill kept the light. │" in out and "1 call ·" in out

        term.send(FOLLOW + "\r")
        out = term.expect(r"calls? ·[^\n]*\n[\s\S]*›")
        assert "│ Her nephew Tobias Quill. │" in out and "2 calls" in out
        rewrite = server.requests[1].body["messages"][-1]["content"]
        assert FIRST in rewrite and "Mara Quill kept the light." in rewrite
        assert STANDALONE in server.requests[2].body["messages"][-1]["content"]

        term.send("/sources\r")
        out = term.expect(r"chars 0-\d+[\s\S]*›")
        assert "[1] harbour_report.md, chars 0-3824" in out and "Saltmere" in out
        term.send("/cost\r")
        out = term.expect(r"total[^\n]*\n[\s\S]*›")
        assert re.search(r"total\s+3\s", out)

        term.send("When did he retire?\r")
        until = time.monotonic() + 90
        while len(server.requests) < 5 and time.monotonic() < until:
            time.sleep(0.05)  # until the answer's request is in flight
        term.send("\x03")  # Ctrl-C
        assert "cancelled" in term.expect(r"cancelled[\s\S]*›")
        term.send("half a line\x03")  # Ctrl-C at the prompt drops the line, the chat goes on
        term.expect(r"half a line[\s\S]*›")
        term.send("/cost\r")
        out = term.expect(r"total[^\n]*\n[\s\S]*›")
        assert re.search(r"total\s+3\s", out)  # the cancelled turn is not there
        term.send("/quit\r")
        finished = True
    finally:
        code = term.wait(ok=finished)
    assert code == 0
    (saved,) = (tmp_path / "cache" / "sessions").glob("*.json")
    assert [t["question"] for t in json.loads(saved.read_text())["turns"]] == [FIRST, FOLLOW]


async def test_trace_open_draws_the_path_of_the_last_answer(tmp_path: Path, monkeypatch) -> None:
    from longweave.agents.mem_walker import MemWalker
    from longweave.documents import Document
    from tests.test_show import TREE_SET, tree_model, tree_text

    monkeypatch.setenv("LONGWEAVE_NO_BROWSER", "1")
    document = Document.from_text(tree_text())
    session = Session.open(document, model=tree_model(), cache=False,
                           strategy=MemWalker(**TREE_SET),
                           settings=Settings(cache_dir=tmp_path / "cache"))
    chat = ChatController(session)
    before = await chat.handle("/trace open")
    assert "nothing asked yet" in before.text()
    answer = (await chat.handle("Where is S4?")).answer
    assert answer is not None and answer.text == "S4"
    out = await chat.handle("/trace open")
    shown = out.text(width=400)
    page_path = Path(shown.split("the path of the last answer: ", 1)[1].split()[0])
    page = page_path.read_text(encoding="utf-8")
    assert "SENTINEL-4" in page and "http://" not in page and "https://" not in page
    assert 'id="lw-path"' in page and " hl" in page  # the walked path is marked
    # The chat's own loop runs it too (it once sent every command to the plain table).
    console, target = recording_console(), tmp_path / "from  the loop.html"  # spaces kept
    await run(chat, console, Lines(f"/trace open {target}"))
    assert target.is_file() and "the path of the last answer" in console.export_text()
    # Without a display, no browser is started over the terminal: the path is the way in.
    monkeypatch.delenv("LONGWEAVE_NO_BROWSER")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setattr("webbrowser.open", lambda url: pytest.fail("a browser was started"))
    shown = (await chat.handle("/trace open")).text(width=400)
    assert "no browser to open it here: open the file yourself" in shown


async def test_trace_open_explains_strategies_without_a_structure(
    controller: ChatController, tmp_path: Path
) -> None:
    await controller.handle(FIRST)
    out = await controller.handle(f"/trace open {tmp_path / 'view.html'}")
    assert "error" in out.text() and not (tmp_path / "view.html").exists()

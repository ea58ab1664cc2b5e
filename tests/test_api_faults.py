"""A misbehaving OpenAI-compatible server, end to end: `longweave ask` and `batch` on the command
line and `longweave.ask` in Python, against the scripted loopback server of tests/faultserver.py.

Each failure must end in one `error:` line with a hint (exit 1), never a traceback or an
"unexpected error"; retries happen as configured (counted on the server); finished work is kept.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import longweave
from longweave.errors import ModelError
from longweave.openai_backend import OpenAILLM
from tests.cli_run import run_cli
from tests.faultserver import (
    Behaviour,
    FaultServer,
    Reply,
    Request,
    assistant,
    body,
    completion,
    error,
    hang,
    html_page,
    malformed,
    rate_limited,
    refused,
    server_error,
    slow,
    unauthorized,
)

QUESTION = "Who kept the lamp?"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FaultServer]:
    """The fault server behind OPENAI_BASE_URL, one retry, a one-second timeout, a wide
    terminal (so messages are not wrapped) and a private cache."""
    with FaultServer() as srv:
        for name, value in {
            "OPENAI_BASE_URL": srv.base_url, "OPENAI_API_KEY": "sk-test", "COLUMNS": "400",
            "LONGWEAVE_MAX_RETRIES": "1", "LONGWEAVE_REQUEST_TIMEOUT": "1",
            "LONGWEAVE_CACHE_DIR": str(tmp_path / "cache"),
        }.items():
            monkeypatch.setenv(name, value)
        yield srv
    assert srv.unscripted == 0, "longweave sent more requests than the test scripted"


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    """One chunk: chain-of-agents makes two calls, a worker's and the (streamed) manager's."""
    path = tmp_path / "keeper.txt"
    path.write_text("The lighthouse keeper of Port Alva was Jacob Rowe.\n")
    return path


def ask_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            doc: Path) -> tuple[int, str, str]:
    code = run_cli(monkeypatch, "ask", str(doc), QUESTION, "-m", "openai:test-model")
    out, err = capsys.readouterr()
    return code, out, err


# -- longweave ask ------------------------------------------------------------------------------

NOTES = completion("Notes: Jacob Rowe kept it [c1].")


@pytest.mark.parametrize(
    ("script", "requests", "hint"),
    [
        pytest.param([unauthorized()], 1, "check OPENAI_API_KEY", id="401"),
        pytest.param([error(403, "Project does not have access")], 1, "not allowed", id="403"),
        pytest.param([error(404, "The model `test-model` does not exist")], 1, "model name",
                     id="404"),
        pytest.param([error(400, "This model's maximum context length is 8192 tokens",
                            code="context_length_exceeded")], 1, "LONGWEAVE_CONTEXT_WINDOW",
                     id="400"),
        pytest.param([server_error(500)] * 2, 2, "LONGWEAVE_MAX_RETRIES", id="500-forever"),
        pytest.param([rate_limited("0")] * 2, 2, "LONGWEAVE_CONCURRENCY", id="429-forever"),
        pytest.param([hang(5), hang(5)], 2, "LONGWEAVE_REQUEST_TIMEOUT", id="hang"),
        # A web page and a 501 do not change on a retry: one request each, no retry.
        pytest.param([html_page()], 1, "a proxy on the way wants you to sign in",
                     id="html-200"),
        pytest.param([NOTES, html_page()], 2, "OPENAI_BASE_URL", id="html-200-to-stream"),
        pytest.param([error(501, "Not Implemented")], 1, "does not implement this request",
                     id="501"),
        pytest.param([malformed()] * 2, 2, "OPENAI_BASE_URL", id="not-json"),
        pytest.param([body({"choices": []})] * 2, 2, "OPENAI_BASE_URL", id="no-choices"),
        # The manager's call streams: a JSON list there crashed with a TypeError.
        pytest.param([NOTES, body([1, 2]), body([1, 2])], 3, "OPENAI_BASE_URL",
                     id="list-body-to-stream"),
    ],
)
def test_ask_failures_end_in_one_clear_error(
    server: FaultServer, doc: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], script: list[Behaviour], requests: int, hint: str,
) -> None:
    server.push(*script)
    code, out, err = ask_cli(monkeypatch, capsys, doc)
    assert code == 1 and out == ""
    assert err.lstrip().startswith("error: test-model: ") and hint in err, err
    assert "unexpected error" not in err and "Traceback" not in err and ".;" not in err
    assert len(server.requests) == requests  # retried exactly as configured, or not at all


async def test_a_web_page_or_a_501_fails_at_once_naming_the_url(server: FaultServer) -> None:
    """A proxy's login page (HTTP 200) or a server without the endpoint (501) fails at once,
    naming the base URL. A page is fatal, so a batch stops at it rather than asking every
    question of the login page."""
    from longweave.llm import user

    llm = OpenAILLM("m", base_url=server.base_url, api_key="sk-test", max_retries=3)
    login = (b"<!DOCTYPE html>\n<html><head><title>\n  Proxy: sign in </title></head>"
             b"<body><form>...</form></body></html>")
    server.push(lambda request: Reply(200, login, {"Content-Type": "text/html; charset=utf-8"}))
    with pytest.raises(ModelError) as failed:
        await llm.complete([user("hi")], max_tokens=4)
    assert failed.value.fatal and len(server.requests) == 1
    assert failed.value.message == (f"m: {server.base_url} answered with a web page "
                                     "('Proxy: sign in'), not the API's JSON")
    server.push(error(501, "Unsupported method ('POST')"))
    with pytest.raises(ModelError, match=f"HTTP 501 from {server.base_url}") as failed:
        await llm.complete([user("hi")], max_tokens=4)
    assert failed.value.status == 501 and len(server.requests) == 2
    assert "/chat/completions" in failed.value.hint


async def test_a_web_page_labelled_as_json_fails_at_once_as_a_page(server: FaultServer) -> None:
    """Some proxies label their sign-in page application/json: it was retried as a body that
    is not JSON, and the error did not say it was a page."""
    from longweave.llm import user

    page = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>...</body></html>"
    server.push(lambda request: Reply(200, page, {"Content-Type": "application/json"}))
    llm = OpenAILLM("m", base_url=server.base_url, api_key="sk-test", max_retries=3)
    with pytest.raises(ModelError) as failed:
        await llm.complete([user("hi")], max_tokens=4)
    assert failed.value.fatal and len(server.requests) == 1
    assert "answered with a web page ('Sign in')" in failed.value.message


async def test_an_html_error_page_is_named_by_its_title_not_quoted_whole(
        server: FaultServer) -> None:
    """A gateway's 502 page (retried, then the error) and a proxy's 403 page: the message names
    the page by its title in one short line instead of carrying kilobytes of markup."""
    from longweave.llm import user

    page = (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title><style>"
            + b"body{margin:0}" * 400 + b"</style></head><body><h1>Bad Gateway</h1></body></html>")
    llm = OpenAILLM("m", base_url=server.base_url, api_key="sk-test", max_retries=1)
    for status in (502, 403):
        server.push(*[lambda request, s=status: Reply(s, page, {"Content-Type": "text/html"})] * 2)
        with pytest.raises(ModelError) as failed:
            await llm.complete([user("hi")], max_tokens=4)
        message = failed.value.message
        assert f"HTTP {status}" in message and "an HTML page titled '502 Bad Gateway'" in message
        assert "<" not in message and "margin" not in message and len(message) < 400, message


async def test_a_501_naming_json_schema_falls_back_to_instructions(server: FaultServer) -> None:
    from pydantic import BaseModel

    from longweave.llm import user

    class City(BaseModel):
        city: str

    llm = OpenAILLM("m", base_url=server.base_url, api_key="sk-test", max_retries=3)
    server.push(error(501, "response_format json_schema is not implemented"),
                completion('{"city": "Lima"}'))
    done = await llm.complete([user("Where?")], max_tokens=16, schema=City)
    assert done.parsed == City(city="Lima") and llm.json_schema_unsupported
    assert "response_format" not in server.requests[1].body


def test_ask_names_a_server_that_is_not_running(
    doc: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("LONGWEAVE_MAX_RETRIES", "0")
    code, _, err = ask_cli(monkeypatch, capsys, doc)
    assert code == 1
    assert f"cannot connect to http://127.0.0.1:{port}/v1" in err
    assert "check OPENAI_BASE_URL and that the server is running" in err


def test_ask_rides_out_transient_faults_and_slow_replies(
    server: FaultServer, doc: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server.push(server_error(503), NOTES, rate_limited("0"),
                slow(completion("Jacob Rowe [c1]."), 0.5))  # within the 1 s timeout
    code, out, err = ask_cli(monkeypatch, capsys, doc)
    assert code == 0 and "Jacob Rowe." in out and "2 calls" in err
    assert len(server.requests) == 4


def test_a_refusal_is_the_answer_and_a_content_filter_is_a_warning(
    server: FaultServer, doc: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Both read as an empty answer with no reason given.
    server.push(assistant({"content": ""}, finish_reason="content_filter"),
                refused("I can't help with that."))
    code, out, err = ask_cli(monkeypatch, capsys, doc)
    assert code == 0 and "I can't help with that." in out
    assert "warning: test-model: the server's content filter stopped the reply" in err


def test_library_ask_raises_the_model_error(server: FaultServer, doc: Path) -> None:
    server.push(unauthorized())
    with pytest.raises(ModelError) as info:
        longweave.ask(doc, QUESTION, model="openai:test-model", cache=False)
    assert info.value.status == 401 and "OPENAI_API_KEY" in info.value.hint
    assert len(server.requests) == 1


# -- a multi-call strategy --------------------------------------------------------------------


def walker_server(refusals: int) -> Behaviour:
    """MemWalker's calls answered by kind: summaries in prose, navigation in JSON (down to the
    first child, then an answer); the first `refusals` navigation calls are refused."""
    left = [refusals]

    def reply(request: Request) -> Reply:
        fmt = request.body.get("response_format")
        if fmt is None:
            return completion("A summary of the keepers.")(request)
        if left[0] > 0:
            left[0] -= 1
            return refused()(request)
        if fmt["json_schema"]["name"] == "TriageAction":
            decision: dict[str, Any] = {"reasoning": "first", "action": "goto", "child": 1}
        else:
            decision = {"reasoning": "here", "action": "answer", "answer": "Jacob Rowe"}
        return completion(json.dumps(decision))(request)

    return reply


def test_a_refusal_mid_walk_is_recovered_and_keeps_json_schema(
    server: FaultServer, tmp_path: Path
) -> None:
    text = "\n\n".join(f"Year {1900 + i}: the keeper was person {i}. " + "Rope and tide. " * 40
                       for i in range(8))
    (tmp_path / "log.txt").write_text(text + "\n\nThe keeper of Port Alva was Jacob Rowe.\n")
    server.push(*[walker_server(refusals=1)] * 60)
    llm = OpenAILLM("test-model", base_url=server.base_url, api_key="sk-test")
    answer = longweave.ask(tmp_path / "log.txt", QUESTION, strategy="mem-walker", model=llm,
                           cache=False, segment_tokens=128)
    assert answer.text == "Jacob Rowe"
    # A refusal says nothing about the server's json_schema support: it was not turned off.
    assert not llm.json_schema_unsupported
    navigation = [r for r in server.requests if "response_format" in r.body]
    assert len(navigation) >= 3  # the refused step, its re-ask by the strategy, the rest


# -- longweave batch --------------------------------------------------------------------------


def by_document(failure: Behaviour) -> Behaviour:
    """`failure` for requests about the second document, a cited answer for the others."""

    def reply(request: Request) -> Reply:
        if any("Keeper2" in m["content"] for m in request.messages):
            return failure(request)
        return completion("Keeper [c1].")(request)

    return reply


@pytest.mark.parametrize(
    ("failure", "tries", "message"),
    [
        pytest.param(server_error(500), 2, "HTTP 500", id="500-forever"),
        pytest.param(error(400, "this request is invalid"), 1, "HTTP 400", id="400"),
    ],
)
def test_batch_keeps_answers_around_a_failed_document_and_a_rerun_resumes(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], failure: Behaviour, tries: int, message: str,
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in (1, 2, 3):
        (folder / f"d{i}.txt").write_text(f"Document {i}. Its keeper was Keeper{i}.\n")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "q1", "question": "Who was the keeper?"}\n')
    out = tmp_path / "answers.jsonl"
    args = ("batch", str(folder), "-q", str(questions), "-o", str(out), "-m", "openai:test-model",
            "--no-cache", "-c", "2")
    server.push(*[by_document(failure)] * 20)
    monkeypatch.setenv("COLUMNS", "80")  # a pipe's width
    assert run_cli(monkeypatch, *args) == 1
    err = capsys.readouterr().err
    assert "failed q1 on d2.txt" in err and "rerun the same command to retry them" in err
    records = {Path(r["document"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    # The failure, its whole error and its hint on one line, off a terminal.
    (line,) = [ln for ln in err.splitlines() if ln.startswith("failed q1 on d2.txt")]
    assert records["d2.txt"]["error"] in line and (records["d2.txt"]["hint"] or "") in line
    assert records["d1.txt"]["answer"] == records["d3.txt"]["answer"] == "Keeper."
    assert message in records["d2.txt"]["error"] and records["d2.txt"]["answer"] is None
    about_d2 = [r for r in server.requests if "Keeper2" in json.dumps(r.body)]
    assert len(about_d2) == tries and len(server.requests) == 4 + tries

    server.script.clear()
    server.requests.clear()
    server.push(completion("Keeper [c1]."), completion("Keeper [c1]."))
    assert run_cli(monkeypatch, *args) == 0  # only document 2 is asked again
    assert "2 already answered in the output: skipped" in capsys.readouterr().err
    assert len(server.requests) == 2
    *_, last = [json.loads(line) for line in out.read_text().splitlines()]
    assert Path(last["document"]).name == "d2.txt" and last["answer"] == "Keeper."


def test_a_batch_stops_at_an_error_every_question_would_hit_and_resumes_once_fixed(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad key fails every question the same way: the batch stops at the first such error
    (it used to ask, and fail, every remaining question), keeping what it answered."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in (1, 2, 3, 4):
        (folder / f"d{i}.txt").write_text(f"Document {i}. Its keeper was Keeper{i}.\n")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "q1", "question": "Who was the keeper?"}\n')
    out = tmp_path / "answers.jsonl"
    args = ("batch", str(folder), "-q", str(questions), "-o", str(out), "-m", "openai:test-model",
            "--no-cache", "-c", "1")
    server.push(*[by_document(unauthorized())] * 20)
    assert run_cli(monkeypatch, *args) == 1
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert "error: stopped at an error every remaining question would hit: " in err
    assert "HTTP 401" in err and "check OPENAI_API_KEY" in err
    assert f"run the same command again: it keeps the answers in {out} and asks the rest" in err
    assert "stopped" in captured.out  # the summary table still prints
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(Path(r["document"]).name, r["fatal"]) for r in records] == [
        ("d1.txt", False), ("d2.txt", True)]
    assert records[1]["hint"].startswith("check OPENAI_API_KEY")
    assert not [r for r in server.requests if "Keeper3" in json.dumps(r.body)]

    server.script.clear()
    server.requests.clear()
    server.push(*(completion("Keeper [c1].") for _ in range(6)))
    assert run_cli(monkeypatch, *args) == 0  # the key fixed: the other three are asked
    assert len(server.requests) == 6  # a worker and the manager each


def test_which_api_errors_stop_a_batch() -> None:
    """Fatal: what no later call can get past. Not: one request's trouble (a 403 some gateways
    give a flagged input, a 400, a 5xx, a connection that broke mid-reply)."""
    import httpx
    import openai

    from longweave.errors import stops_every_call, unreachable

    assert stops_every_call(401) and stops_every_call(404) and stops_every_call(403)
    assert stops_every_call(501)  # the server does not implement the endpoint
    assert stops_every_call(429, "insufficient_quota")
    assert not stops_every_call(403, "", "Your input was flagged by moderation")
    assert not any(stops_every_call(s) for s in (400, 408, 429, 500, 503))
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")

    def wrapped(cause: Exception) -> openai.APIConnectionError:
        error = openai.APIConnectionError(request=request)
        error.__cause__ = cause
        return error

    assert unreachable(wrapped(httpx.ConnectError("refused", request=request)))
    assert unreachable(wrapped(httpx.ConnectTimeout("slow", request=request)))
    assert not unreachable(wrapped(httpx.RemoteProtocolError("cut", request=request)))
    assert not unreachable(wrapped(httpx.ReadError("reset", request=request)))


def test_a_dead_server_stops_a_batch_from_the_embedder_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from longweave.config import Settings
    from longweave.errors import ModelError
    from longweave.retrieval.embeddings import OpenAIEmbedder

    monkeypatch.setenv("LONGWEAVE_MAX_RETRIES", "0")
    embedder = OpenAIEmbedder("text-embedding-3-small", base_url="http://127.0.0.1:1/v1",
                              api_key="x", settings=Settings())
    with pytest.raises(ModelError, match="cannot reach") as failed:
        embedder.embed(["hello"])
    assert failed.value.fatal


async def test_a_chat_model_with_nothing_at_its_address_is_fatal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from longweave.errors import ModelError
    from longweave.llm import user
    from longweave.openai_backend import OpenAILLM

    llm = OpenAILLM("m", base_url="http://127.0.0.1:1/v1", api_key="x", max_retries=0)
    with pytest.raises(ModelError, match="cannot connect") as failed:
        await llm.complete([user("hi")], max_tokens=4)
    assert failed.value.fatal

"""`longweave serve`: the OpenAI-compatible server, called with the real `openai` client."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from longweave.events import token_sink
from longweave.local_models.schema_model import model_from_schema
from longweave.local_models.server import running_server
from longweave.testing import ScriptedModel
from tests.cli_run import run_cli


class Capital(BaseModel):
    city: str = Field(max_length=20)
    country: str = Field(max_length=20)


@pytest.fixture(scope="module")
def scripted() -> ScriptedModel:
    model = ScriptedModel(name="scripted-model", context_window=64)
    model.on("", contains="capital of Peru", reply="Lima is the capital. END more")
    model.on("", contains="cut JSON", reply='{"city": "Li')
    model.on("", contains="as JSON", reply=Capital(city="Lima", country="Peru"))
    return model


@pytest.fixture(scope="module")
def fake_url(scripted: ScriptedModel):
    with running_server(scripted) as url:
        yield url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="x", max_retries=0)


def test_models_lists_the_served_model(fake_url: str) -> None:
    ids = [m.id for m in client(fake_url).models.list()]
    assert ids == ["scripted-model"]


def test_chat_completion_reports_usage(fake_url: str, scripted: ScriptedModel) -> None:
    reply = client(fake_url).chat.completions.create(
        model="anything",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is the capital of Peru?"}]},
        ],
        max_tokens=16,
        temperature=0,
    )
    assert reply.choices[0].message.content == "Lima is the capital. END more"
    assert reply.choices[0].finish_reason == "stop"
    sent = scripted.requests[-1]
    assert [m.role for m in sent.messages] == ["system", "user"]
    assert sent.max_tokens == 16 and sent.temperature == 0.0
    assert reply.usage.prompt_tokens == sent.prompt_tokens
    assert reply.usage.completion_tokens == scripted.count_tokens(reply.choices[0].message.content)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.prompt_tokens_details.cached_tokens == 0


def test_stop_strings_and_streaming(fake_url: str) -> None:
    stream = client(fake_url).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "capital of Peru?"}],
        max_tokens=16,
        stop=[" END"],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Lima is the capital."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


class _GatedModel(ScriptedModel):
    """Streams "Lima", then waits for the test to open the gate before writing the rest."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(name="gated")
        self.on("", reply="Lima is the capital.")
        self.gate, self.fail = threading.Event(), fail

    async def complete(self, messages, **kwargs):  # type: ignore[no-untyped-def]
        sink = token_sink.get()
        assert sink is not None  # the server streams text replies live
        sink("Lima")
        await asyncio.to_thread(self.gate.wait, 10)
        if self.fail:
            raise RuntimeError("the model crashed")
        sink(" is the capital.")
        return await super().complete(messages, **kwargs)


def test_text_replies_stream_as_they_are_generated() -> None:
    model = _GatedModel()
    with running_server(model) as url:
        stream = client(url).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "capital of Peru?"}], max_tokens=16,
            stream=True, stream_options={"include_usage": True})
        first = next(c for c in stream if c.choices and c.choices[0].delta.content)
        assert first.choices[0].delta.content == "Lima" and not model.gate.is_set()
        model.gate.set()  # the first words arrived while the model was still writing
        rest = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    assert text == " is the capital."
    assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "stop"
    assert rest[-1].usage.completion_tokens == model.count_tokens("Lima is the capital.")


def test_an_error_after_the_first_chunk_breaks_the_stream() -> None:
    model = _GatedModel(fail=True)
    with running_server(model) as url:
        stream = client(url).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "capital of Peru?"}], max_tokens=16,
            stream=True)
        model.gate.set()
        with pytest.raises(openai.APIError, match="the model crashed"):
            list(stream)


class _RerunModel(ScriptedModel):
    """Streams part of a reply, then generates it again from the start (a batch that failed
    for another request is rerun): with the same text, another text, or a shorter one."""

    def __init__(self, other: str = "same") -> None:
        super().__init__(name="rerun")
        self.on("", reply="Lima is the capital.")
        self.other = other

    async def complete(self, messages, **kwargs):  # type: ignore[no-untyped-def]
        sink = token_sink.get()
        assert sink is not None
        sink("Lima is")
        sink("", restart=True)
        again = {"other": ["Bogota", " is it."], "shorter": ["Lima"],
                 "same": ["Lima", " is", " the capital."]}[self.other]
        for delta in again:
            sink(delta)
        return await super().complete(messages, **kwargs)


@pytest.mark.parametrize("other", ["same", "other", "shorter"])
def test_a_reply_generated_again_mid_stream_is_not_sent_twice(other: str) -> None:
    with running_server(_RerunModel(other)) as url:
        stream = client(url).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "capital of Peru?"}], max_tokens=16,
            stream=True)
        if other != "same":  # what was sent cannot be taken back: the stream breaks instead
            with pytest.raises(openai.APIError, match="differs from the text already streamed"):
                list(stream)
            return
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Lima is the capital."  # it was "Lima isLima is the capital."


def test_json_schema_response_format(fake_url: str, scripted: ScriptedModel) -> None:
    reply = client(fake_url).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Peru's capital as JSON"}],
        max_tokens=32,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "capital", "schema": Capital.model_json_schema()},
        },
    )
    assert json.loads(reply.choices[0].message.content) == {"city": "Lima", "country": "Peru"}
    schema = scripted.requests[-1].schema
    assert schema is not None and schema.model_json_schema()["required"] == ["city", "country"]


def test_output_that_misses_the_schema_is_returned_not_a_server_error(fake_url: str) -> None:
    # A real server returns what the model wrote; a 500 would make clients retry in vain.
    reply = client(fake_url).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Peru's capital as cut JSON"}],
        max_tokens=4,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "capital", "schema": Capital.model_json_schema()},
        },
    )
    assert reply.choices[0].message.content == '{"city": "Li'
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens >= 4 and reply.usage.prompt_tokens > 0


def test_a_schema_miss_reports_the_usage_the_backend_counted() -> None:
    """The local backend attaches the call's usage to its ParseError: those are the tokens it
    generated (re-encoding the decoded text may count other), and the finish follows them."""
    from longweave.answer import Usage
    from longweave.errors import ParseError

    class Counted(ScriptedModel):
        async def complete(self, messages, **kwargs):  # type: ignore[no-untyped-def]
            error = ParseError("cut", raw='{"city": "Li')
            error.usage = Usage(calls=1, prompt_tokens=21, completion_tokens=4)  # type: ignore[attr-defined]
            raise error

    with running_server(Counted(name="counted")) as url:
        reply = client(url).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "as cut JSON"}], max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {
                "name": "capital", "schema": Capital.model_json_schema()}})
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (21, 4)
    assert reply.choices[0].finish_reason == "length"


def test_errors_are_openai_shaped(fake_url: str) -> None:
    over = {
        "model": "m",
        "messages": [{"role": "user", "content": "capital of Peru"}],
        "max_tokens": 1000,
    }
    response = httpx.post(f"{fake_url}/chat/completions", json=over)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client(fake_url).chat.completions.create(
            model="m", messages=[{"role": "tool", "content": "x"}], max_tokens=4
        )
    response = httpx.post(f"{fake_url}/chat/completions", content=b"{not json")
    assert response.status_code == 400 and "error" in response.json()
    response = httpx.post(
        f"{fake_url}/chat/completions",
        json={"messages": [{"role": "user", "content": "unscripted"}], "max_tokens": 4},
    )
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "UnscriptedCall"


@pytest.mark.parametrize(("field", "value"), [
    ("response_format", "json"),
    ("response_format", {"type": "json_schema", "json_schema": "x"}),
    ("stop", 5),
    ("stop", ["END", 5]),
    ("stream_options", "x"),
    ("messages", 5),
    ("messages", "capital of Peru"),
    ("max_tokens", True),
    ("temperature", "0"),
])
def test_wrongly_typed_fields_are_a_400_not_a_server_error(
    fake_url: str, field: str, value: object
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "capital of Peru"}],
            "max_tokens": 4, field: value}
    response = httpx.post(f"{fake_url}/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and field in error["message"]


def test_request_details_follow_the_openai_contract(fake_url: str, scripted: ScriptedModel,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    chat = f"{fake_url}/chat/completions"
    # A prompt over the window without max_tokens: the context-length error, naming messages.
    long = {"messages": [{"role": "user", "content": "capital of Peru " + "word " * 80}]}
    error = httpx.post(chat, json=long).json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    # max_completion_tokens: 0 is refused like max_tokens: 0, and the field is named.
    for field in ("max_completion_tokens", "max_tokens"):
        body = {"messages": [{"role": "user", "content": "capital of Peru"}], field: 0}
        response = httpx.post(chat, json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == field
    # Text parts stay apart, as vLLM joins them.
    parts = [{"type": "text", "text": "The report ends here."},
             {"type": "text", "text": "What is the capital of Peru?"}]
    httpx.post(chat, json={"messages": [{"role": "user", "content": parts}], "max_tokens": 4})
    assert scripted.requests[-1].messages[-1].content == (
        "The report ends here.\nWhat is the capital of Peru?")
    # With include_usage, every chunk but the last has "usage": null.
    body = {"messages": [{"role": "user", "content": "capital of Peru"}], "max_tokens": 8,
            "stream": True, "stream_options": {"include_usage": True}}
    lines = [line[6:] for line in httpx.post(chat, json=body).text.splitlines()
             if line.startswith("data: {")]
    chunks = [json.loads(line) for line in lines]
    assert [c["usage"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["usage"]["total_tokens"] > 0
    # Unknown paths and methods answer in the same JSON shape; one model can be retrieved.
    for response in (httpx.get(f"{fake_url}/completions"), httpx.get(chat)):
        assert response.status_code in (404, 405)
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert client(fake_url).models.retrieve("scripted-model").id == "scripted-model"
    with pytest.raises(openai.NotFoundError) as info:
        client(fake_url).models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found"
    # A server fault is logged for the operator, not only sent to the client.
    with caplog.at_level("ERROR", logger="longweave.serve"):
        httpx.post(chat, json={"messages": [{"role": "user", "content": "unscripted"}],
                               "max_tokens": 4})
    assert any("UnscriptedCall" in r.getMessage() for r in caplog.records)


class _SlowModel(ScriptedModel):
    """Writes for a long time; records whether the request was cancelled."""

    def __init__(self) -> None:
        super().__init__(name="slow")
        self.cancelled = threading.Event()

    async def complete(self, messages, **kwargs):  # type: ignore[no-untyped-def]
        sink = token_sink.get()
        try:
            for _ in range(200):
                if sink is not None:
                    sink("word ")
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("never cancelled")


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_cancels_its_generation(stream: bool) -> None:
    model = _SlowModel()
    with running_server(model) as url:
        body = {"messages": [{"role": "user", "content": "Write."}], "max_tokens": 16,
                "stream": stream}
        with httpx.Client(timeout=httpx.Timeout(0.6)) as http:
            if stream:
                with http.stream("POST", f"{url}/chat/completions", json=body) as response:
                    next(response.iter_lines())  # one chunk, then the client hangs up
            else:
                with pytest.raises(httpx.ReadTimeout):
                    http.post(f"{url}/chat/completions", json=body)
        assert model.cancelled.wait(5)


# -- `longweave serve`: the address ------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HOSTS = ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="no IPv6 loopback here"))]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """`longweave serve` with a scripted model and no server: what the server was given, and
    whether another server could have bound the port while it was being given it."""
    import longweave.llm
    import longweave.local_models.server as server_module

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(longweave.llm, "resolve_model",
                        lambda spec, **_: ScriptedModel(name="scripted-model"))

    def serve(llm: Any, *, host: str, port: int, sockets: list[socket.socket]) -> None:
        with socket.socket(sockets[0].family) as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers
            try:
                other.bind(sockets[0].getsockname()[:2])
                taken = False
            except OSError:
                taken = True
        calls.append({"host": host, "port": port, "sockets": sockets, "held": taken,
                      "family": sockets[0].family, "address": sockets[0].getsockname()[:2]})

    monkeypatch.setattr(server_module, "serve", serve)
    return calls


@pytest.mark.parametrize("host", HOSTS)
def test_serve_refuses_a_port_in_use_before_loading_the_model(served, monkeypatch, capsys,
                                                               host: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as taken:
        taken.bind((host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = run_cli(monkeypatch, "serve", "--host", host, "--port", str(port))
    out, err = capsys.readouterr()
    assert code == 1 and served == []
    assert err.startswith(f"error: cannot listen on {host}:{port} (Address already in use)")
    assert "pass another --port (or --host)" in err and "Traceback" not in err


@pytest.mark.parametrize("host", HOSTS)
def test_serve_hands_the_server_the_socket_it_bound(served, monkeypatch, host: str) -> None:
    """One bind, before the model loads, and the server accepts on that very socket: no
    moment in which another process could take the port between a check and the server."""
    assert run_cli(monkeypatch, "serve", "--host", host, "--port", "0") == 0
    [call] = served
    [sock] = call["sockets"]
    assert (call["host"], call["port"]) == (host, 0)
    assert call["family"] == (socket.AF_INET6 if ":" in host else socket.AF_INET)
    assert call["address"][0] == host and call["address"][1] > 0
    assert call["held"]  # even a server binding with SO_REUSEADDR could not take it
    assert sock.fileno() == -1  # closed when the command ends


_SERVE = """
import longweave.llm
from longweave.testing import ScriptedModel

model = ScriptedModel(name="scripted-model")
model.on("", contains="capital of Peru", reply="Lima.")
longweave.llm.resolve_model = lambda spec, **_: model
from longweave.cli import main

main()
"""


@pytest.mark.parametrize("host", HOSTS)
def test_the_serve_command_answers_on_the_port_it_bound_and_stops_on_ctrl_c(host: str) -> None:
    command = [sys.executable, "-c", _SERVE, "serve", "--host", host, "--port", "0"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              text=True)
    watchdog = threading.Timer(60, server.kill)  # a server that never says where it runs
    watchdog.start()
    try:
        lines = []
        assert server.stderr is not None
        for line in server.stderr:
            lines.append(line)
            if found := re.search(r"Uvicorn running on (http://\S+) \(Press CTRL\+C", line):
                break
        assert found, "".join(lines)
        url = found[1] + "/v1"
        assert url.startswith(f"http://[{host}]:" if ":" in host else f"http://{host}:")
        assert [m.id for m in client(url).models.list()] == ["scripted-model"]
        reply = client(url).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "capital of Peru?"}], max_tokens=8)
        assert reply.choices[0].message.content == "Lima."
        server.send_signal(signal.SIGINT)  # uvicorn's own handler: it stops gracefully
        rest = server.stderr.read()
        assert server.wait(30) == 0, rest
    finally:
        watchdog.cancel()
        if server.poll() is None:
            server.kill()
            server.wait()
    assert "Finished server process" in rest and "Traceback" not in rest


def test_schema_conversion_keeps_bounds_and_refuses_free_maps() -> None:
    class Inner(BaseModel):
        tags: list[str] = Field(max_length=3)

    class Outer(BaseModel):
        name: str = Field(max_length=10)
        inner: Inner
        kind: str = Field(default="a", pattern="^[ab]$")

    model = model_from_schema(Outer.model_json_schema(), "outer")
    value = model.model_validate({"name": "n", "inner": {"tags": ["x"]}})
    assert value.model_dump(by_alias=True, exclude_unset=True) == {
        "name": "n",
        "inner": {"tags": ["x"]},
    }
    with pytest.raises(ValueError):
        model.model_validate({"name": "n" * 11, "inner": {"tags": []}})
    with pytest.raises(ValueError):
        model.model_validate({"name": "n", "inner": {"tags": ["a", "b", "c", "d"]}})
    from longweave.errors import ConfigError

    with pytest.raises(ConfigError, match="free-form"):
        model_from_schema({"type": "object", "properties": {"m": {"type": "object"}}})


@pytest.mark.real_model
def test_real_local_model_through_the_server(tmp_path_factory: pytest.TempPathFactory) -> None:
    from longweave.local_models import LocalLLM

    llm = LocalLLM.bundled(cache_dir=tmp_path_factory.getbasetemp() / "longweave-cache")
    with running_server(llm) as url:
        stream = client(url).chat.completions.create(
            model=llm.name, messages=[{"role": "user", "content": "Name a color."}],
            max_tokens=8, temperature=0, stream=True)
        deltas = [c.choices[0].delta.content for c in stream if c.choices and
                  c.choices[0].delta.content]
        reply = client(url).chat.completions.create(
            model=llm.name,
            messages=[
                {
                    "role": "user",
                    "content": "Text: The capital of Peru is Lima.\n"
                    "Question: What is the capital of Peru?",
                }
            ],
            max_tokens=12,
            temperature=0,
        )
    assert "Lima" in reply.choices[0].message.content
    messages_tokens = reply.usage.prompt_tokens
    from longweave.llm import user

    assert messages_tokens == llm.count_prompt_tokens(
        [user("Text: The capital of Peru is Lima.\nQuestion: What is the capital of Peru?")]
    )
    assert 0 < reply.usage.completion_tokens <= 12
    assert len(deltas) > 1  # the local model's reply streams token by token through the server


@pytest.mark.real_model
def test_openai_backend_runs_chain_of_agents_through_the_server() -> None:
    """The whole path: longweave's OpenAI backend -> `longweave serve` -> the bundled model."""
    from pathlib import Path

    import longweave
    from longweave.local_models import LocalLLM
    from longweave.openai_backend import OpenAILLM

    llm = LocalLLM.bundled()
    example = Path(__file__).parents[1] / "examples" / "harbour_report.md"
    with running_server(llm) as url:
        remote = OpenAILLM(llm.name, base_url=url, context_window=llm.context_window)
        answer = longweave.ask(
            example, "Who was the first keeper of the lighthouse?", model=remote, cache=False,
            window=1024, max_new=32,
        )
    assert answer.model == f"openai:{llm.name}"
    assert answer.text.strip()
    chunks = answer.steps[0].detail["chunks"]
    assert chunks >= 2
    assert answer.usage.calls == chunks + 1
    # the usage comes from the server's replies, counted with the served model's tokenizer
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 300 * chunks


def test_listen_binds_as_uvicorn_did() -> None:
    """`localhost` is IPv4, as uvicorn bound it; `::` takes IPv4 clients too where the system
    runs dual-stack sockets (it did under uvicorn's own bind)."""
    from longweave.local_models.server import listen

    (sock,) = listen("localhost", 0)
    with sock:
        assert sock.family == socket.AF_INET
    if not socket.has_ipv6:
        return
    try:
        (sock,) = listen("::", 0)
    except OSError:  # no IPv6 on this machine
        return
    with sock:
        assert sock.family == socket.AF_INET6
        if sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
            return  # the system makes IPv6 sockets IPv6-only
        with socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=5):
            pass  # an IPv4 client reaches the server listening on ::

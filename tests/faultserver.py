"""An OpenAI-compatible HTTP server on 127.0.0.1 whose every reply is scripted, for fault injection.

    with FaultServer(rate_limited("2"), completion("hi")) as server:
        llm = OpenAILLM("m", base_url=server.base_url, api_key="sk-test")
        ...
        assert len(server.requests) == 2

Each request to `/v1/chat/completions` takes the next scripted behaviour; a request with none
left gets HTTP 418 (not retried by the backend), so an unexpected extra call fails loudly.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    """What the client sent: the path, the headers (lower-cased names) and the JSON body."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, str]]:
        return list(self.body.get("messages", []))


@dataclass(frozen=True)
class Reply:
    """What the server answers; `delay` holds the reply back (a hang, past the client timeout);
    `cut` sends only that many bytes of the body, then drops the connection; `keepalive` sends
    `tail` every that many seconds after the body, never ending it (a stalled server)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    cut: int | None = None
    keepalive: float | None = None
    tail: bytes = b": keep-alive\n\n"


Behaviour = Callable[[Request], Reply]


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status,
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def _words(text: str) -> int:
    return len(text.split())


def completion(
    content: str | None = None,
    *,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    cached_tokens: int = 0,
    usage: bool = True,
    finish_reason: str = "stop",
    model: str = "fault-model",
) -> Behaviour:
    """A normal chat completion; without `content` it echoes the last user message.

    Usage defaults to word counts (prompt: all messages; completion: the reply), so numbers
    are deterministic and checkable.
    """

    def reply(request: Request) -> Reply:
        users = [m["content"] for m in request.messages if m.get("role") == "user"]
        text = content if content is not None else f"echo: {users[-1] if users else ''}"
        payload: dict[str, Any] = {
            "id": f"chatcmpl-fault-{id(request)}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
        }
        if usage:
            prompt = (
                prompt_tokens
                if prompt_tokens is not None
                else sum(_words(m["content"]) for m in request.messages)
            )
            done = completion_tokens if completion_tokens is not None else _words(text)
            payload["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": done,
                "total_tokens": prompt + done,
                "prompt_tokens_details": {"cached_tokens": cached_tokens},
            }
        return _json(200, payload)

    return reply


def assistant(message: dict[str, Any], *, finish_reason: str = "stop") -> Behaviour:
    """A chat completion (no usage) whose message is `message` exactly: content null, a
    `refusal`, content parts, ... as servers send when they do not echo OpenAI to the letter."""
    payload = {"id": "chatcmpl-fault", "object": "chat.completion", "created": 1_700_000_000,
               "model": "fault-model",
               "choices": [{"index": 0, "message": {"role": "assistant", **message},
                            "finish_reason": finish_reason}]}
    return lambda request: _json(200, payload)


def refused(refusal: str = "I'm sorry, I can't help with that.") -> Behaviour:
    """HTTP 200 with no content and a `refusal`, as OpenAI's structured outputs decline."""
    return assistant({"content": None, "refusal": refusal})


def body(payload: Any) -> Behaviour:
    """HTTP 200 with `payload` as the JSON body, whatever its shape (a list, no choices, an
    error object as some proxies send with 200)."""
    return lambda request: _json(200, payload)


def streamed(
    content: str | None = None,
    *,
    pieces: list[str] | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    finish_reason: str = "stop",
    model: str = "fault-model",
    cut_after: int | None = None,
    fail_after: int | None = None,
    stop_after: int | None = None,
) -> Behaviour:
    """A streamed chat completion (server-sent events), the text sent in `pieces` (default: word
    by word); a usage chunk follows when the request asked `stream_options.include_usage`.
    `cut_after` drops the connection after that many content chunks; `fail_after` sends an error
    event in the stream after that many, as servers do when generation fails; `stop_after` ends
    the body cleanly after that many, with no finish reason, usage or [DONE]. Without `content` it
    echoes the last user message; usage defaults to word counts, as in `completion`."""

    def reply(request: Request) -> Reply:
        users = [m["content"] for m in request.messages if m.get("role") == "user"]
        text = content if content is not None else f"echo: {users[-1] if users else ''}"
        words = text.split(" ")
        parts = pieces if pieces is not None else [w + " " for w in words[:-1]] + words[-1:]
        head = {"id": "chatcmpl-fault-stream", "object": "chat.completion.chunk",
                "created": 1_700_000_000, "model": model}

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + json.dumps({**head, "choices": choices, **extra}).encode() + b"\n\n"

        events = [event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None}])]
        for part in parts:
            events.append(event([{"index": 0, "delta": {"content": part}, "finish_reason": None}]))
        cut = sum(map(len, events[: cut_after + 1])) if cut_after is not None else None
        if fail_after is not None:
            failure = {"error": {"message": "generation failed", "type": "server_error"}}
            body = b"".join(events[: fail_after + 1])
            body += b"data: " + json.dumps(failure).encode() + b"\n\n"
            return Reply(200, body, {"Content-Type": "text/event-stream"})
        if stop_after is not None:
            return Reply(200, b"".join(events[: stop_after + 1]),
                         {"Content-Type": "text/event-stream"})
        events.append(event([{"index": 0, "delta": {}, "finish_reason": finish_reason}]))
        if (request.body.get("stream_options") or {}).get("include_usage"):
            prompt = (
                prompt_tokens
                if prompt_tokens is not None
                else sum(_words(m["content"]) for m in request.messages)
            )
            done = completion_tokens if completion_tokens is not None else _words(text)
            usage = {"prompt_tokens": prompt, "completion_tokens": done,
                     "total_tokens": prompt + done}
            events.append(event([], usage=usage))
        events.append(b"data: [DONE]\n\n")
        return Reply(200, b"".join(events), {"Content-Type": "text/event-stream"}, cut=cut)

    return reply


def error(status: int, message: str, *, code: str | None = None, **headers: str) -> Behaviour:
    """An error reply in OpenAI's shape: `{"error": {"message", "type", "code"}}`."""
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    names = {k.replace("_", "-"): v for k, v in headers.items()}
    return lambda request: _json(status, body, names)


def rate_limited(retry_after: str | None = None, *, retry_after_ms: str | None = None) -> Behaviour:
    """HTTP 429, optionally with `Retry-After` (seconds or an HTTP date) or `retry-after-ms`."""
    headers = {}
    if retry_after is not None:
        headers["retry_after"] = retry_after
    if retry_after_ms is not None:
        headers["retry_after_ms"] = retry_after_ms
    return error(429, "Rate limit reached for requests", code="rate_limit_exceeded", **headers)


def server_error(status: int = 500) -> Behaviour:
    """A 5xx from an overloaded or broken server."""
    return error(status, "The server had an error while processing your request.")


def unauthorized() -> Behaviour:
    """HTTP 401 as OpenAI sends it for a wrong key."""
    return error(401, "Incorrect API key provided: sk-test.", code="invalid_api_key")


def reject_response_format() -> Behaviour:
    """HTTP 400 as servers without structured-output support answer `response_format`."""
    return error(400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported")


def hang(seconds: float = 10.0) -> Behaviour:
    """Say nothing for `seconds` (cut short when the server closes), then answer normally."""
    answer = completion("too late")
    return lambda request: replace(answer(request), delay=seconds)


def slow(behaviour: Behaviour, seconds: float) -> Behaviour:
    """`behaviour`, answered after `seconds` (to hold requests in flight together)."""
    return lambda request: replace(behaviour(request), delay=seconds)


def stalled(first: bytes, content_type: str = "text/event-stream", every: float = 0.05,
            tail: bytes = b": keep-alive\n\n") -> Behaviour:
    """HTTP 200 that sends `first`, then `tail` every `every` seconds and never finishes: a
    server that keeps the connection alive (SSE comments, trickled bytes) without answering."""
    return lambda request: Reply(200, first, {"Content-Type": content_type}, keepalive=every,
                                 tail=tail)


def html_page() -> Behaviour:
    """HTTP 200 with an HTML page, as a proxy's login or error page answers."""
    body = b"<html><body><h1>Please sign in</h1></body></html>"
    return lambda request: Reply(200, body, {"Content-Type": "text/html"})


def malformed(content_type: str = "application/json") -> Behaviour:
    """HTTP 200 whose body is cut mid-way, as from a proxy that dropped the connection."""
    body = b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"index": 0, "mess'
    return lambda request: Reply(200, body, {"Content-Type": content_type})


class FaultServer:
    """A scripted OpenAI-compatible server in a background thread on an ephemeral port."""

    def __init__(self, *behaviours: Behaviour) -> None:
        self.script: deque[Behaviour] = deque(behaviours)
        self.requests: list[Request] = []
        self.unscripted = 0
        self.in_flight = 0
        self.peak = 0
        """The most requests the server was answering at once."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def push(self, *behaviours: Behaviour) -> None:
        """Append behaviours to the script."""
        with self._lock:
            self.script.extend(behaviours)

    def _enter(self, request: Request) -> Behaviour:
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.requests.append(request)
            if not self.script:
                self.unscripted += 1
                behaviour: Behaviour = error(418, "unscripted request to the fault server")
            else:
                behaviour = self.script.popleft()
        return behaviour

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(error(404, f"no route {self.path}")(Request(self.path, {}, {})))
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Request(self.path, headers, json.loads(raw or b"{}"))
                try:
                    self._send(server._enter(request)(request))
                finally:
                    server._leave()

            def _send(self, reply: Reply) -> None:
                if reply.delay and server._stop.wait(reply.delay):
                    return  # closing: abandon the hanging reply
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.keepalive is None:
                        self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body if reply.cut is None else reply.body[: reply.cut])
                    while reply.keepalive is not None and not server._stop.wait(reply.keepalive):
                        self.wfile.write(reply.tail)
                        self.wfile.flush()
                    if reply.cut is not None:
                        self.close_connection = True  # the client sees a body cut short
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # keep test output clean

        return Handler

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

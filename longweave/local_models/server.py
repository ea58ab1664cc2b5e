"""`longweave serve`: an OpenAI-compatible HTTP server over any `LLM` (the local model by default).

Endpoints: `POST /v1/chat/completions` and `GET /v1/models`. Concurrent HTTP requests reach
`LLM.complete` concurrently, so the local backend batches them. `response_format` of type
`json_schema` is turned into a pydantic model (see `schema_model`) and decoded under that
schema. With `stream=true` a text reply streams as the model generates it (when the model streams,
as the local backend does); a schema reply, or one with `stop` strings, arrives as one chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from longweave.answer import Usage
from longweave.errors import (
    BudgetExceeded,
    ConfigError,
    LongweaveError,
    MissingDependency,
    ModelError,
    ParseError,
    raised_from,
)
from longweave.events import token_sink
from longweave.llm import LLM, Completion, Message
from longweave.local_models.schema_model import model_from_schema

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["build_app", "listen", "running_server", "serve"]

_log = logging.getLogger("longweave.serve")

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class BadRequest(ConfigError):
    """The request body is not a chat completion request this server can answer; `param` names
    the field at fault, as the OpenAI API's errors do."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _require_starlette() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingDependency(exc.name or "starlette", "local") from None


def build_app(llm: LLM | None = None) -> Starlette:
    """The ASGI app serving `llm` (default: the bundled local model, loaded on first request)."""
    _require_starlette()
    from starlette.applications import Starlette
    from starlette.routing import Route

    if llm is None:
        from longweave.local_models import LocalLLM

        llm = LocalLLM.bundled()
    model = llm
    schemas: dict[str, Any] = {}

    async def models(request: Request) -> Response:
        from starlette.responses import JSONResponse

        entry = {"id": model.name, "object": "model", "created": 0, "owned_by": "longweave"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def chat(request: Request) -> Response:
        from starlette.responses import JSONResponse, StreamingResponse

        try:
            try:
                body = await request.json()
            except ValueError:
                raise BadRequest("the request body is not valid JSON") from None
            call = _parse_request(body, model, schemas)
            if _streams_live(call):
                # The first delta, or the whole reply (or its error) when none came first.
                deltas: asyncio.Queue[str] = asyncio.Queue()
                task = asyncio.create_task(_complete_streaming(model, call, deltas.put_nowait))
                first = asyncio.create_task(deltas.get())
                await _while_connected(request, {task, first})
                if first.done():
                    head = {**_head(model), "include_usage": call["include_usage"]}
                    events = _live_stream(head, first.result(), deltas, task, call)
                    return StreamingResponse(events, media_type="text/event-stream")
                first.cancel()
                completion = task.result()
            else:
                task = asyncio.create_task(model.complete(call["messages"], **call["kwargs"]))
                await _while_connected(request, {task})
                completion = task.result()
        except _ClientGone:
            from starlette.responses import Response as Plain

            return Plain(status_code=499)  # nobody reads it; the generation was cancelled
        except ParseError as exc:
            # Output that missed the schema (often cut at max_tokens) is still an answer: an
            # OpenAI-compatible server returns it with its finish reason, and the client decides
            # (re-ask, repair, fallback); a 500 would only make it retry the same generation.
            completion = _unparsed(model, call, exc)
        except Exception as exc:  # noqa: BLE001 - an HTTP client must get a JSON error body
            return _error_response(exc)
        text = completion.text
        if completion.parsed is not None:
            text = json.dumps(
                completion.parsed.model_dump(mode="json", by_alias=True, exclude_unset=True),
                ensure_ascii=False,
            )
        finish = completion.finish_reason
        text, finish = _apply_stop(text, finish, call["stop"])
        usage_body = _usage_body(completion.usage)
        head = _head(model, completion)
        if call["stream"]:
            head["include_usage"] = call["include_usage"]
            events = _stream(head, text, finish, usage_body if call["include_usage"] else None)
            return StreamingResponse(events, media_type="text/event-stream")
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": None,
        }
        return JSONResponse(
            {**head, "object": "chat.completion", "choices": [choice], "usage": usage_body}
        )

    async def one_model(request: Request) -> Response:
        from starlette.responses import JSONResponse

        if request.path_params["name"] != model.name:
            return _error(404, f"the model {request.path_params['name']!r} does not exist; this "
                          f"server serves {model.name!r}", "invalid_request_error",
                          "model_not_found", "model")
        return JSONResponse({"id": model.name, "object": "model", "created": 0,
                             "owned_by": "longweave"})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", "") or "error"
        hint = " (this server has GET /v1/models and POST /v1/chat/completions)"
        return _error(status, f"{detail}: {request.method} {request.url.path}{hint}",
                      "invalid_request_error", None)

    from starlette.exceptions import HTTPException

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", one_model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


class _ClientGone(Exception):
    """The client disconnected before its reply was ready."""


async def _while_connected(request: Request, tasks: set[asyncio.Task[Any]],
                           poll: float = 0.25) -> None:
    """Wait until one of `tasks` is done; if the client disconnects first, cancel them all and
    raise `_ClientGone`, so an abandoned request stops holding a batch slot."""
    while True:
        done, _ = await asyncio.wait(tasks, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
        if done:
            return
        if await request.is_disconnected():
            for task in tasks:
                task.cancel()
            raise _ClientGone


def _streams_live(call: dict[str, Any]) -> bool:
    """Text replies stream as generated; schema replies (sent re-serialized) and replies with
    stop strings (cut after generation) arrive as one chunk."""
    return call["stream"] and not call["stop"] and call["kwargs"].get("schema") is None


async def _complete_streaming(
    llm: LLM, call: dict[str, Any], send: Callable[[str], None]
) -> Completion:
    """`llm.complete` with its text deltas sent as they come (in this task's own context)."""
    relay = _Relay(send)
    token_sink.set(relay)
    completion = await llm.complete(call["messages"], **call["kwargs"])
    if relay.again is not None:  # the new reply ended before it caught up with what was sent
        relay.diverged = relay.again != relay.sent
    if relay.diverged:
        raise ModelError(f"{llm.name}: the reply was generated again after a failed batch and "
                         "differs from the text already streamed", provider="local",
                         hint="ask again")
    return completion


class _Relay:
    """Passes text deltas on to the client. A restart (the backend generated the reply again,
    after a batch failed) cannot take back what was sent: the new text is held until it goes
    past the sent text, and only the rest is sent, as long as it repeats the sent text (greedy
    decoding does); otherwise `diverged` is set and the stream ends with an error."""

    def __init__(self, send: Callable[[str], None]) -> None:
        self.send, self.sent = send, ""
        self.again: str | None = None
        self.diverged = False

    def __call__(self, delta: str, *, restart: bool = False) -> None:
        if restart:
            self.again = "" if self.sent else None
        elif self.diverged or not delta:
            return
        elif self.again is None:
            self.sent += delta
            self.send(delta)
        else:
            self._catch_up(self.again + delta)

    def _catch_up(self, again: str) -> None:
        known = min(len(again), len(self.sent))
        if again[:known] != self.sent[:known]:
            self.diverged = True
        elif len(again) <= len(self.sent):
            self.again = again
        else:
            rest, self.sent, self.again = again[len(self.sent):], again, None
            self.send(rest)


def _head(llm: LLM, completion: Completion | None = None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": (completion.model if completion is not None else "") or llm.name,
    }


def _usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _error_response(exc: Exception) -> Response:
    from longweave.local_models.loader import ModelLoadError  # the server's fault, not a request's

    if isinstance(exc, MissingDependency):
        return _error(500, str(exc), "server_error", "missing_dependency")
    if isinstance(exc, (BudgetExceeded, ConfigError)) and not isinstance(exc, ModelLoadError):
        code = "context_length_exceeded" if isinstance(exc, BudgetExceeded) else None
        param = getattr(exc, "param", None) or ("messages" if code else None)
        return _error(400, str(exc), "invalid_request_error", code, param)
    # A server fault: the operator sees it in the log, the client in the body.
    _log.error("chat completion failed: %s: %s", type(exc).__name__, exc,
               exc_info=not isinstance(exc, LongweaveError))
    if isinstance(exc, ModelError) and exc.provider != "local":
        # The model served is an API that failed, could not be reached or did not answer in
        # time: this server is its gateway (a local model's own failure stays a 500).
        if _timed_out(exc) or exc.status in (408, 504):
            return _error(504, str(exc), "server_error", "upstream_timeout")
        return _error(502, str(exc), "server_error", "upstream_error")
    if isinstance(exc, LongweaveError):
        return _error(500, str(exc), "server_error", type(exc).__name__)
    return _error(500, f"{type(exc).__name__}: {exc}", "server_error", None)


def _timed_out(exc: BaseException) -> bool:
    """Whether a timeout is what `exc` was raised from or while handling. Backends end their
    retries with an error raised `from None`, which hides the timeout from tracebacks but
    keeps it as the context: a TimeoutError, or an HTTP library's *Timeout class."""
    return raised_from(exc, lambda e: isinstance(e, TimeoutError) or type(e).__name__.endswith(
        ("Timeout", "TimeoutError")), context=True, depth=6)


def _unparsed(llm: LLM, call: dict[str, Any], error: ParseError) -> Completion:
    """The reply for output that failed its schema: the raw text, with the call's own usage
    when the backend attached it (the local one does), else counted with the tokenizer (text
    decoded and encoded again may count other than the tokens generated)."""
    usage = getattr(error, "usage", None)
    if not isinstance(usage, Usage):
        usage = Usage(calls=1, prompt_tokens=llm.count_prompt_tokens(call["messages"]),
                      completion_tokens=llm.count_tokens(error.raw))
    max_tokens = call["kwargs"].get("max_tokens") or 0
    cut = max_tokens and usage.completion_tokens >= max_tokens
    return Completion(text=error.raw, finish_reason="length" if cut else "stop", usage=usage,
                      model=llm.name)


def _error(status: int, message: str, kind: str, code: str | None,
           param: str | None = None) -> Response:
    from starlette.responses import JSONResponse

    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _parse_request(body: Any, llm: LLM, schemas: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    messages = [_message(m) for m in raw_messages]
    for key in ("tools", "functions"):
        if body.get(key):
            raise BadRequest(f"'{key}' is not supported by this server", param=key)
    if body.get("n", 1) not in (1, None):
        raise BadRequest("only n=1 is supported", param="n")
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    max_tokens = body.get(field)
    if max_tokens is None:  # as vLLM: whatever room the window leaves
        prompt = llm.count_prompt_tokens(messages)
        if prompt >= llm.context_window:
            raise BudgetExceeded(prompt, 1, llm.context_window,
                                 hint="shorten the messages: they fill the model's window")
        max_tokens = llm.context_window - prompt
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest(f"{field} must be a positive integer, got {max_tokens!r}", param=field)
    temperature = body.get("temperature")
    temperature = 1.0 if temperature is None else temperature  # the OpenAI API's default
    if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
            or not 0 <= temperature <= 2):
        raise BadRequest("temperature must be a number between 0 and 2", param="temperature")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest(f"'stop' must be a string or a list of strings, got {body['stop']!r:.80}",
                         param="stop")
    kwargs: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": float(temperature),
        "schema": _schema(body.get("response_format"), schemas),
    }
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest(f"'stream_options' must be an object, got {options!r:.80}",
                         param="stream_options")
    return {
        "messages": messages,
        "kwargs": kwargs,
        "stop": stop,
        "stream": bool(body.get("stream")),
        "include_usage": bool(options.get("include_usage")),
    }


def _message(raw: Any) -> Message:
    if not isinstance(raw, dict) or raw.get("role") not in _ROLES:
        raise BadRequest(f"each message needs a role among {sorted(_ROLES)}, got {raw!r:.80}")
    content = raw.get("content")
    if isinstance(content, list):  # content parts: only text is understood
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise BadRequest("only text content parts are supported")
        content = "\n".join(str(p.get("text", "")) for p in content)  # as vLLM joins them
    if not isinstance(content, str):
        raise BadRequest("message content must be a string or a list of text parts")
    return Message(_ROLES[raw["role"]], content)  # type: ignore[arg-type]


def _schema(response_format: Any, schemas: dict[str, Any]) -> Any:
    if not response_format:
        return None
    if not isinstance(response_format, dict):
        raise BadRequest("response_format must be an object such as {\"type\": \"text\"}, got "
                         f"{response_format!r:.80}")
    if response_format.get("type") == "text":
        return None
    if response_format.get("type") != "json_schema":
        raise BadRequest(
            "response_format must be 'text' or 'json_schema' (json_object is not "
            "supported: send a schema)"
        )
    spec = response_format.get("json_schema") or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("name", ""), str):
        raise BadRequest("response_format.json_schema must be an object with a string 'name' "
                         "and a 'schema'")
    key = json.dumps(spec, sort_keys=True)
    if key not in schemas:
        if len(schemas) >= 256:
            schemas.clear()
        schemas[key] = model_from_schema(spec.get("schema") or {}, spec.get("name", "Response"))
    return schemas[key]


def _apply_stop(text: str, finish: str, stop: list[str]) -> tuple[str, str]:
    """Cut at the first stop string (applied after generation; usage still counts every token)."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], "stop") if cuts else (text, finish)


def _chunk(head: dict[str, Any], delta: dict[str, Any] | None, reason: str | None = None,
           **more: Any) -> str:
    """One server-sent event of a streamed chat completion (no choices when `delta` is None).
    With `include_usage` in `head`, every chunk but the last carries `"usage": null`, as the
    OpenAI API documents."""
    choices = [] if delta is None else [
        {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}]
    head = dict(head)
    usage = {"usage": None} if head.pop("include_usage", False) else {}
    chunk = {**head, "object": "chat.completion.chunk", "choices": choices, **usage, **more}
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


async def _stream(
    head: dict[str, Any], text: str, finish: str, usage: dict[str, Any] | None
) -> AsyncIterator[str]:
    """A finished reply sent as a stream: all its text in one chunk."""
    yield _chunk(head, {"role": "assistant", "content": text})
    yield _chunk(head, {}, finish)
    if usage is not None:
        yield _chunk(head, None, usage=usage)
    yield "data: [DONE]\n\n"


async def _live_stream(
    head: dict[str, Any], first: str, deltas: asyncio.Queue[str],
    task: asyncio.Task[Completion], call: dict[str, Any],
) -> AsyncIterator[str]:
    """A reply sent as it is generated: each text delta as a chunk, then the finish reason and
    usage. An error after the first chunk ends the stream with an OpenAI-shaped error event and
    no `[DONE]`, so a client sees a broken stream rather than a short answer."""
    get: asyncio.Future[str] | None = None
    try:
        yield _chunk(head, {"role": "assistant", "content": first})
        while True:
            get = asyncio.ensure_future(deltas.get())
            await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                break
            yield _chunk(head, {"content": get.result()})
        while not deltas.empty():  # deltas posted just before the task ended
            yield _chunk(head, {"content": deltas.get_nowait()})
        try:
            completion = task.result()
        except Exception as exc:  # noqa: BLE001 - reported in the stream
            body = json.loads(bytes(_error_response(exc).body))
            yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
            return
        yield _chunk(head, {}, completion.finish_reason)
        if call["include_usage"]:
            yield _chunk(head, None, usage=_usage_body(completion.usage))
        yield "data: [DONE]\n\n"
    finally:
        if get is not None and not get.done():  # cancelled while waiting: no pending getter
            get.cancel()
        if not task.done():  # the client went away: stop waiting for the reply
            task.cancel()


def listen(host: str = "127.0.0.1", port: int = 8000) -> list[socket.socket]:
    """A socket listening on `port` at `host`, made as uvicorn makes its own (IPv6 when the
    host is written with a colon, so `::` takes IPv4 clients too where the system allows; IPv4
    otherwise, so `localhost` is 127.0.0.1), for `serve` to accept on (a list, as uvicorn takes
    them). Bound here, once, and listening at once (on Linux a socket that is only bound still
    lets another server bind the port with SO_REUSEADDR), so no other process can take the port
    before the server runs; connections made meanwhile wait to be answered. Raises OSError when
    the address cannot be listened on (a port in use, a host not of this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return [sock]


def serve(
    llm: LLM | None = None, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
    *, sockets: list[socket.socket] | None = None,
) -> None:
    """Serve `llm` until interrupted; binds loopback unless told otherwise. `sockets` are
    those `listen(host, port)` bound already (the command line binds before loading the
    model, so that a port in use is an error line rather than a failure after the load)."""
    _require_starlette()
    import uvicorn

    sockets = sockets if sockets is not None else listen(host, port)
    try:
        server = uvicorn.Server(uvicorn.Config(build_app(llm), log_level=log_level))
        logging.getLogger("uvicorn.error").info(
            "Uvicorn running on %s (Press CTRL+C to quit)", _url(host, sockets))
        server.run(sockets=sockets)
    except KeyboardInterrupt:  # Ctrl-C stopped the server gracefully: its normal end
        pass
    finally:
        for sock in sockets:
            sock.close()


def _url(host: str, sockets: list[socket.socket]) -> str:
    """`http://host:port` for `host` as given (bracketed when IPv6) and the port it is bound to
    (the one picked for port 0)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{sockets[0].getsockname()[1]}"


@contextlib.contextmanager
def running_server(llm: LLM | None = None, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the server in a background thread; yields its base URL (`http://host:port/v1`).

    Port 0 picks a free port, which suits tests and in-process use.
    """
    _require_starlette()
    import uvicorn

    sockets = listen(host, port)
    config = uvicorn.Config(build_app(llm), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the longweave server did not start")
            time.sleep(0.01)
        yield f"{_url(host, sockets)}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        for sock in sockets:
            sock.close()

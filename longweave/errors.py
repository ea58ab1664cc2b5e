"""One documented error tree: every error carries its data and says what to do next."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path


class LongweaveError(Exception):
    """Base of every error longweave raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        if hint is not None:
            self.hint = hint
        super().__init__(f"{message} ({self.hint})" if self.hint else message)


def debugging() -> bool:
    """LONGWEAVE_DEBUG is set to something other than 0, false, no or off: show tracebacks."""
    import os

    return os.environ.get("LONGWEAVE_DEBUG", "").strip().lower() not in ("", "0", "false", "no",
                                                                         "off")


class LongweaveWarning(RuntimeWarning):
    """Base of every warning longweave gives: work goes on, but something deserves a look."""


class DocumentError(LongweaveError):
    """A file could not be read as a document; `path` names it and `hint` says how to fix it."""

    def __init__(self, path: str | Path, problem: str, *, hint: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}", hint=hint)


class ConfigError(LongweaveError):
    """Invalid settings, an unknown model string or strategy, or a missing optional extra.

    `fatal`: raised by a call, it fails every later call too (a backend with no API key), so a
    batch stops at it, as at a fatal `ModelError`."""

    fatal: bool = False

    def __init__(self, message: str, *, hint: str | None = None,
                 fatal: bool | None = None) -> None:
        if fatal is not None:  # else the class's own (a failed model load is always fatal)
            self.fatal = fatal
        super().__init__(message, hint=hint)


def invalid_fields(
    exc: Exception, fields: Iterable[str] = (), *, named: Callable[[str], str] = str
) -> tuple[str, str]:
    """A pydantic ValidationError as one line per field for users, and a hint: no error URLs
    or type codes; an unknown key is named with the closest of `fields`. `named` turns a field
    into the name the user wrote (an environment variable, say)."""
    import difflib

    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc), ""
    problems, hints = [], []
    for error in errors(include_url=False):
        name = named(".".join(str(part) for part in error["loc"])) if error["loc"] else "value"
        if error["type"] == "extra_forbidden":
            problems.append(f"{name}: no such setting")
            close = difflib.get_close_matches(str(error["loc"][-1]), list(fields), n=1)
            if close:
                hints.append(f"did you mean {named(close[0])}?")
        elif error["type"] == "value_error":  # a validator's own message names the value
            problems.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
        else:
            problems.append(f"{name}: {error['msg']} (got {error['input']!r:.60})")
    return "; ".join(problems), " ".join(hints)


class MissingDependency(ConfigError):
    """An optional dependency is not installed; the hint names the extra that provides it."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is not installed",
            hint=f"install it with: pip install 'longweave[{extra}]'",
        )


class BackendCapabilityError(ConfigError):
    """The model backend cannot do what a strategy needs of it, e.g. InfiniRetri reading the
    attention of an API model; raised when the strategy is set up, before any call."""

    def __init__(self, message: str, *, capability: str, hint: str) -> None:
        self.capability = capability
        """What the strategy needed, e.g. "attention"."""
        super().__init__(message, hint=hint)


class BudgetExceeded(LongweaveError):
    """A prompt plus its generation cap would not fit the model's window."""

    def __init__(self, prompt_tokens: int, max_tokens: int, window: int, *, hint: str = "") -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.window = window
        super().__init__(
            f"prompt of {prompt_tokens} tokens + {max_tokens} new tokens exceeds the "
            f"{window}-token window",
            hint=hint or "use smaller chunks or a model with a larger context window",
        )


class ModelError(LongweaveError):
    """A model backend failed: the provider refused, timed out or returned an error.

    `fatal`: no call to this backend can succeed until the user fixes something (the key, a
    permission, the model name, the quota, a server that is not there), so a batch stops at the
    first such error instead of failing every remaining question the same way.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        hint: str | None = None,
        fatal: bool = False,
    ) -> None:
        self.provider = provider
        self.status = status
        self.fatal = fatal
        super().__init__(message, hint=hint)


_ABOUT_CONTENT = ("moderat", "flagged", "content", "safety", "policy")


def choose_from(name: str, choices: Sequence[str]) -> str:
    """The hint for an unknown `name`: the closest of `choices` if one is close, then them all
    in the order given."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    guess = f"did you mean {close[0]}? " if close else ""
    return f"{guess}choose one of: {', '.join(choices)}"


def stops_every_call(status: int, code: str = "", detail: str = "") -> bool:
    """Whether an API's HTTP error means no later call can succeed either (a `fatal`
    ModelError): a rejected key (401), an unknown model or endpoint (404), an endpoint the
    server does not implement (501), an exhausted quota, no permission (403) unless the 403 is
    about this request's content, as some gateways answer a flagged input."""
    if status in (401, 404, 501) or code == "insufficient_quota":
        return True
    lowered = f"{code} {detail}".lower()
    return status == 403 and not any(word in lowered for word in _ABOUT_CONTENT)


def unreachable(exc: BaseException) -> bool:
    """Whether a connection error means nothing answers at the address (refused, no such host,
    no connection within the timeout), rather than a connection that broke mid-reply.

    Told by the HTTP library's exception names along the cause chain: the openai client's
    transport may be httpx or a renamed copy of it, whose classes are not httpx's."""
    return raised_from(exc, lambda e: type(e).__name__ in ("ConnectError", "ConnectTimeout"))


def raised_from(exc: BaseException, matches: Callable[[BaseException], bool], *,
                context: bool = False, depth: int = 5) -> bool:
    """Whether `exc`, or an error it was raised from (`__cause__`, looking `depth` errors
    deep), `matches`. `context`: follow the error being handled when it was raised too
    (`__context__`), which an error raised `from None` keeps though tracebacks hide it."""
    seen: BaseException | None = exc
    for _ in range(depth):
        if seen is None:
            return False
        if matches(seen):
            return True
        seen = seen.__cause__ or (seen.__context__ if context else None)
    return False


class ParseError(ModelError):
    """The model's output did not validate against the requested schema, even after a re-ask."""

    def __init__(self, message: str, *, raw: str, provider: str = "",
                 hint: str | None = None) -> None:
        self.raw = raw
        super().__init__(
            message,
            provider=provider,
            hint=hint or "use a stronger model, or raise max_tokens so the JSON can close",
        )


class UnscriptedCall(LongweaveError):
    """A scripted test model received a request that no rule answers."""

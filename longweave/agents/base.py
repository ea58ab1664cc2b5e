"""The Strategy protocol, the registry, and the run context every strategy's nodes receive."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from longweave.answer import Citation, Step, Usage
from longweave.errors import (
    ConfigError,
    LongweaveWarning,
    ModelError,
    ParseError,
    choose_from,
    invalid_fields,
)
from longweave.events import Event, EventSink, TokenSink, ignore, result_event, token_sink

if TYPE_CHECKING:
    from langgraph.graph import StateGraph
    from pydantic import BaseModel

    from longweave.cache import ArtifactCache
    from longweave.chunking import Chunk
    from longweave.documents import Document
    from longweave.llm import LLM, Completion, Message


class Strategy(Protocol):
    """A long-context strategy: validated settings, an initial state, and a LangGraph graph.

    The graph's final state must hold `answer` (str) and may hold `citations` and `flags`.
    `initial_state` may be a coroutine function: strategies that build per-document artifacts
    (a tree, a graph, an index) build or load them there, through `ctx.artifacts`.
    """

    name: ClassVar[str]
    summary: ClassVar[str]

    def initial_state(self, ctx: RunContext) -> dict[str, Any]: ...

    def max_steps(self, state: dict[str, Any]) -> int:
        """An upper bound on node visits, from the strategy's caps (the recursion limit)."""
        ...

    def build(self) -> StateGraph: ...


@dataclass
class RunContext:
    """What a strategy's nodes may use: the model, the document, the question, and the ledger."""

    llm: LLM
    document: Document
    question: str
    strategy: str
    emit: EventSink = ignore
    artifacts: ArtifactCache | None = None
    """Where per-document artifacts are kept between runs; None keeps nothing."""
    usage: Usage = field(default_factory=Usage)
    steps: list[Step] = field(default_factory=list)
    _cap_checked: set[tuple[str, str, int]] = field(default_factory=set, repr=False)

    async def call(
        self,
        role: str,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        schema: type[BaseModel] | None = None,
        temperature: float = 0.0,
        index: int | None = None,
        total: int | None = None,
        stream: bool = False,
    ) -> Completion:
        """Call the model as `role`, adding its usage to the ledger and announcing it.

        `stream=True` marks the strategy's final answer: a backend that streams then emits its
        text deltas as `token` events while it generates (schema calls never stream).
        """
        self.emit(Event("call", self.strategy, role, index, total, f"{role} call"))
        # By name: some strategies build a schema class per step (GraphReader's legal actions).
        if schema is not None and (role, schema.__name__, max_tokens) not in self._cap_checked:
            self._cap_checked.add((role, schema.__name__, max_tokens))
            self._check_cap(role, schema, max_tokens)
        started = time.perf_counter()
        wanted = stream and schema is None and self.emit is not ignore
        # Always set (None too), so an unmarked call never streams into an outer call's sink.
        token = token_sink.set(self._token_sink(role, index) if wanted else None)
        request = {"max_tokens": max_tokens, "temperature": temperature,
                   "schema": schema.__name__ if schema is not None else None}
        try:
            completion = await self.llm.complete(
                messages, max_tokens=max_tokens, temperature=temperature, schema=schema, role=role
            )
        except Exception as exc:  # a trace keeps the failed call too (the strategy may recover)
            if isinstance(exc, ParseError):
                # The model ran and wrote something that missed the schema: the call costs what
                # it cost even though it returned no Completion.
                self.usage = self.usage + _failed_usage(self.llm, messages, exc)
            self.emit(result_event(self.strategy, role, messages, None, index=index, total=total,
                                   seconds=time.perf_counter() - started, error=exc, **request))
            raise
        finally:
            token_sink.reset(token)
        if not isinstance(completion.text, str):  # a custom backend's bug, named as such
            raise ModelError(f"{self.llm.name}: the backend returned "
                             f"{type(completion.text).__name__} as the reply text, not a string",
                             hint="fix the LLM backend's complete() to return Completion(text=str)")
        self.usage = self.usage + completion.usage
        self.emit(result_event(self.strategy, role, messages, completion, index=index,
                               total=total, seconds=time.perf_counter() - started, **request))
        self.emit(
            Event(
                "progress",
                self.strategy,
                role,
                index,
                total,
                f"{role} done",
                {"seconds": time.perf_counter() - started, "cache": completion.meta.get("cache")},
            )
        )
        return completion

    def _check_cap(self, role: str, schema: type[BaseModel], max_tokens: int) -> None:
        """Warn when a reply that writes its text fields to their limits cannot fit the cap.

        Such a reply is cut at `max_tokens`, fails validation and is re-asked, so a model that
        writes long text can spend every attempt on cut replies (a text limit of 600 characters
        under a cap of 64 tokens, say).
        """
        from longweave.structured import reply_floor_tokens

        try:
            every = getattr(self.llm, "writes_every_field", None)  # OpenAI strict mode
            strict = bool(every(schema)) if callable(every) else False
            floor = reply_floor_tokens(schema, self.llm.count_tokens, every_field=strict)
        except Exception:  # an advice, never a reason to fail the call: a schema it cannot walk
            return
        if floor > max_tokens:
            warnings.warn(
                f"{self.strategy} {role}: a {schema.__name__} reply with its text at the length "
                f"limits takes about {floor} tokens, over the cap of {max_tokens}, so such replies "
                f"are cut and asked again (raise the role's cap among the *max_new settings of "
                f"`longweave strategies {self.strategy}`, or lower its *_chars limits).",
                LongweaveWarning, stacklevel=3,
            )

    def _token_sink(self, role: str, index: int | None) -> TokenSink:
        def sink(delta: str, *, restart: bool = False) -> None:
            data = {"restart": True} if restart else {}
            self.emit(Event("token", self.strategy, role, index, message=delta, data=data))

        return sink

    def step(self, role: str, output: str = "", *, index: int | None = None, **detail: Any) -> None:
        """Record one step of the trace."""
        step = Step(role=role, index=index, detail=detail, output=output)
        self.steps.append(step)
        self.emit(Event("step", self.strategy, role, index, message=output[:200], data=detail,
                        payload=step))

    def chunk(self, max_tokens: int) -> list[Chunk]:
        """Split the document with the model's own tokenizer into chunks of at most max_tokens."""
        from longweave.chunking import Chunker

        return Chunker(max_tokens, tokenizer=self.llm.tokenizer).split(self.document.text)

    def cite_chunk(self, chunk: Chunk) -> Citation:
        """A citation covering one whole chunk."""
        return Citation(
            doc_id=self.document.id,
            start=chunk.start,
            end=chunk.end,
            text=chunk.text,
            chunk_index=chunk.index,
            source=self.document.source,
        )


def repeat_then(
    state: type, repeat: Callable[..., Any], then: Sequence[Callable[..., Any]], *, over: str
) -> StateGraph:
    """Wiring shared by stream strategies: `repeat` runs once per item of `state[over]`
    (it advances `state["position"]`), then the `then` nodes run in order."""
    from langgraph.graph import END, START, StateGraph

    graph = StateGraph(state, context_schema=RunContext)
    for node in (repeat, *then):
        graph.add_node(node)  # named after the method: `self.work` is node "work"
    first, rest = repeat.__name__, [node.__name__ for node in then]

    def more(current: dict[str, Any]) -> str:
        return first if current["position"] < len(current[over]) else rest[0]

    graph.add_edge(START, first)
    graph.add_conditional_edges(first, more, [first, rest[0]])
    for a, b in zip(rest, [*rest[1:], END], strict=True):
        graph.add_edge(a, b)
    return graph


# Built-in strategies, imported only when asked for so `import longweave` stays light.
BUILTINS: dict[str, str] = {
    "chain-of-agents": "longweave.agents.chain_of_agents:ChainOfAgents",
    "graph-reader": "longweave.agents.graph_reader:GraphReader",
    "infini-retri": "longweave.agents.infini_retri:InfiniRetri",
    "light": "longweave.agents.light:LIGHT",
    "long-agent": "longweave.agents.long_agent:LongAgent",
    "mem-walker": "longweave.agents.mem_walker:MemWalker",
    "prism": "longweave.agents.prism:Prism",
    "rag": "longweave.agents.rag:RAG",
    "truncate": "longweave.agents.truncate:Truncate",
}


def _load(target: str) -> type:
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


def available() -> dict[str, str]:
    """Every strategy name with where it comes from: built-ins first, then entry points."""
    names = dict(BUILTINS)
    for ep in entry_points(group="longweave.strategies"):
        names.setdefault(ep.name, ep.value)
    return names


def strategy_class(name: str) -> type:
    """The class registered under `name`; unknown names list the choices."""
    names = available()
    if name not in names:
        raise ConfigError(f"unknown strategy {name!r}", hint=choose_from(str(name), sorted(names)))
    try:
        return _load(names[name])
    except Exception as exc:
        if name in BUILTINS:  # a longweave bug: let it surface as one
            raise
        # A plugin's own import failure: name it, not as a longweave bug.
        raise ConfigError(f"strategy plugin {name!r} ({names[name]}) failed to load: "
                          f"{type(exc).__name__}: {exc}",
                          hint="fix or reinstall the package that provides it") from exc


def get_strategy(name: str | Strategy, **options: Any) -> Strategy:
    """A configured strategy by name; options are validated against its settings."""
    if not isinstance(name, str):
        if not (callable(getattr(name, "build", None)) and hasattr(name, "initial_state")):
            raise ConfigError(
                f"a strategy is a name or a strategy object, not {type(name).__name__}",
                hint="`longweave strategies` lists the names")
        if options:
            raise ConfigError("options cannot be applied to a strategy instance")
        return name
    cls = strategy_class(name)
    try:
        return cls(**options)
    except Exception as exc:  # pydantic's ValidationError, reworded for users
        problems, hint = invalid_fields(exc, getattr(cls, "model_fields", ()))
        listing = f"`longweave strategies {name}` lists its settings (null or None unsets one)"
        raise ConfigError(f"invalid options for {name}: {problems}",
                          hint=f"{hint} {listing}".lstrip()) from exc


def _failed_usage(llm: LLM, messages: Sequence[Message], exc: ParseError) -> Usage:
    """What a call that raised ParseError cost: the backend's count when it attached one, else
    its prompt and raw reply counted with the model's tokenizer (one call; a backend's internal
    re-ask is not seen here)."""
    usage = getattr(exc, "usage", None)
    if isinstance(usage, Usage):
        return usage
    return Usage(calls=1, prompt_tokens=llm.count_prompt_tokens(messages),
                 completion_tokens=llm.count_tokens(exc.raw) if exc.raw else 0)

"""A conversation over one document: follow-up questions, a running cost, and a saved transcript.

A follow-up ("and where was she born?") is rewritten into a standalone question by one short
model call (role `rewrite`) that sees the conversation memory: the last turns verbatim (LIGHT's
`WorkingMemory`) and older turns as one-line facts (LIGHT's `Scratchpad`). The standalone
question then goes through the shared runner like any `ask`, with the artifact cache, so
per-document artifacts (indexes, trees, graphs) are built once and reused on every turn.

The rewrite call is part of the turn: its usage is added to the turn's `Answer.usage` and it is
the first step (`rewrite`) of the answer's trace, so `Session.usage` is what the conversation
cost. A session is saved after every turn, atomically, to `<cache dir>/sessions/<document
sha256>.json` (the key does not depend on the strategy or model); `resume=True` continues it.
Two sessions on the same text (two chats, two processes) share that file: a save keeps the turns
another session wrote there since this one last read or wrote it, so no finished turn is lost.
Each save also records, under `sessions/paths/`, which conversation the document's file or folder
has; resuming after the file was edited (a new text, so no saved conversation) names the earlier
one in a warning instead of starting empty without a word. It is not carried over: its answers
were about the earlier text.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import re
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from longweave.answer import Answer, Step, Usage
from longweave.errors import ConfigError, DocumentError, LongweaveWarning, ModelError
from longweave.events import Event, EventSink, ignore, result_event
from longweave.llm import Message, check_model_string
from longweave.memory.scratchpad import Scratchpad
from longweave.memory.working import MemoryUnit, WorkingMemory

if TYPE_CHECKING:
    from longweave.agents.base import Strategy
    from longweave.config import Settings
    from longweave.documents import Document
    from longweave.llm import LLM
    from longweave.trace import TraceWriter

__all__ = ["ConversationMemory", "Session", "Turn", "rewrite_messages"]

RECENT_TURNS = 4
"""Turns the rewrite sees verbatim (ours); older ones are kept as one-line facts."""
EARLIER_TOKENS = 256
"""Token target of the older turns' facts (ours); the oldest facts are dropped past it."""
ANSWER_CHARS = 600
"""An answer is clipped to this many characters in the memory (ours): enough to resolve a
reference, little enough to keep the rewrite call short."""
REWRITE_WINDOW = 2048
"""Most tokens one rewrite call uses, prompt and reply, even with a larger model window (ours)."""
REWRITE_MAX_NEW = 128
"""Generation cap of the rewrite call (ours)."""
_MARGIN = 32
FORMAT_VERSION = 1

REWRITE_SYSTEM = (
    "You rewrite the latest question of a conversation about a document so that it can be "
    "understood without the conversation. Replace pronouns and vague references (he, she, it, "
    "they, that, there, the same) with what they refer to in the conversation. Keep the meaning "
    "and the language of the question and do not answer it. If it already stands alone, repeat "
    "it unchanged. Reply with the rewritten question only."
)


def rewrite_messages(conversation: str, question: str) -> list[Message]:
    """The prompt of the rewrite call: the conversation memory, then the latest question."""
    prompt = (f"Conversation so far:\n{conversation}\n\nLatest question: {question}\n\n"
              "Rewritten question:")
    return [Message("system", REWRITE_SYSTEM), Message("user", prompt)]


class Turn(BaseModel):
    """One exchange: the question as typed, the standalone question asked, and the answer."""

    model_config = ConfigDict(extra="forbid")

    question: str
    standalone: str
    answer: Answer
    asked_at: float = Field(default_factory=time.time)
    """Seconds since the epoch when the answer was complete."""


class _Record(BaseModel):
    """What a saved session holds (the persisted JSON and `save("x.json")`)."""

    model_config = ConfigDict(extra="forbid")

    version: int = FORMAT_VERSION
    document_id: str
    source: str | None = None
    strategy: str
    options: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    conversation: str = ""
    """Which conversation this is (a random id; "" in files saved before it existed): two
    chats on one text merge their turns only when they continue the same conversation."""
    turns: list[Turn] = Field(default_factory=list)


class ConversationMemory:
    """The conversation as the rewrite sees it: recent turns verbatim, older ones as facts.

    >>> memory = ConversationMemory(lambda s: len(s.split()), recent=1)
    >>> memory.add(0, "Who kept the light?", "Mara Quill.")
    >>> memory.add(1, "When?", "From 1871.")
    >>> print(memory.render(100))
    Earlier:
    - Who kept the light? -> Mara Quill. [u0]
    <BLANKLINE>
    Recent:
    User: When?
    Assistant: From 1871.
    """

    def __init__(self, count: Callable[[str], int], *, recent: int = RECENT_TURNS,
                 earlier_tokens: int = EARLIER_TOKENS) -> None:
        self.count = count
        self.recent = WorkingMemory(recent)
        self.earlier = Scratchpad(earlier_tokens, count)
        self._turns: dict[int, tuple[str, str]] = {}

    @classmethod
    def of(
        cls, turns: Sequence[Turn], count: Callable[[str], int], **options: Any
    ) -> ConversationMemory:
        """The memory after `turns` (their standalone questions resolve later references)."""
        memory = cls(count, **options)
        for i, turn in enumerate(turns):
            memory.add(i, turn.standalone or turn.question, turn.answer.text)
        return memory

    def add(self, index: int, question: str, answer: str) -> None:
        """Remember a turn; the turn it pushes out of the recent window becomes a fact."""
        self._turns[index] = (question.strip(), answer.strip())
        units = self.recent.units
        if not self.recent.capacity:
            self._remember(index)
            return
        if len(units) == self.recent.capacity:
            self._remember(units[0].index)
        # A turn is a unit of the conversation; its "span" is its position in it.
        self.recent.add(MemoryUnit(index, index, index + 1, self._text(index, ANSWER_CHARS)))

    def _text(self, index: int, answer_chars: int) -> str:
        question, answer = self._turns[index]
        return f"User: {question}\nAssistant: {_clip(answer, answer_chars)}"

    def _remember(self, index: int) -> None:
        question, answer = self._turns.pop(index)  # a fact now: its full text is not needed
        fact = f"{_one_line(question)} -> {_clip(_one_line(answer), ANSWER_CHARS // 3)}"
        self.earlier.add([fact], unit=index)
        while self.earlier.bullets and self.earlier.tokens() > self.earlier.target_tokens:
            self.earlier.bullets.pop(0)  # the oldest fact goes first

    def render(self, budget: int) -> str:
        """Recent turns (newest kept first) and then older facts, within `budget` tokens."""
        turns = self.recent.select(budget, lambda u: self.count(u.text) + 2)
        if not turns and self.recent.units:
            # The newest turn alone is over budget: keep it with its answer cut shorter, since
            # the latest exchange is what a follow-up most likely refers to.
            newest = self.recent.units[-1].index
            for chars in (ANSWER_CHARS // 2, ANSWER_CHARS // 4, ANSWER_CHARS // 10, 0):
                unit = MemoryUnit(newest, newest, newest + 1, self._text(newest, chars))
                if self.count(unit.text) + 2 <= budget:
                    turns = [unit]
                    break
        left = budget - sum(self.count(u.text) + 2 for u in turns) - 4
        facts: list[str] = []
        for bullet in reversed(self.earlier.bullets):
            line = bullet.render()
            cost = self.count(line) + 1
            if cost > left:
                break
            facts.insert(0, line)
            left -= cost
        parts = []
        if facts:
            parts.append("Earlier:\n" + "\n".join(facts))
        if turns:
            parts.append("Recent:\n" + "\n\n".join(u.text for u in turns))
        return "\n\n".join(parts)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


_LABEL = re.compile(r"^(?:rewritten|standalone)?\s*question\s*:\s*", re.IGNORECASE)


def clean_rewrite(text: str, question: str, previous: str = "") -> str:
    """The rewritten question from a reply; when the reply is unusable (empty, an essay, or a
    statement where a question was asked: the model answered instead of rewriting), the previous
    standalone question followed by this one, which still carries the context.

    >>> clean_rewrite("The keeper was Mara.", "And after her?", "Who kept the light?")
    'Who kept the light? And after her?'
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # As many lines as the question has (a pasted question may hold several); the rest of a
    # reply is the model explaining itself.
    asked = max(1, sum(1 for line in question.splitlines() if line.strip()))
    out = "\n".join(_LABEL.sub("", line).strip().strip("\"'`“”").strip()
                    for line in lines[:asked]).strip()
    answered = question.rstrip().endswith("?") and "?" not in out
    if not out or answered or len(out) > max(400, 4 * len(question)):
        return f"{previous} {question}".strip()
    return out


class Session:
    """A conversation over one document (or folder) with a strategy and a model.

    >>> from longweave.testing import ScriptedModel
    >>> model = ScriptedModel()
    >>> model.on("reader", contains="Who is Mara?", reply="Mara Quill.")
    >>> model.on("rewrite", reply="Where was Mara Quill born?")
    >>> model.on("reader", contains="Where was Mara Quill born?", reply="In Tarn.")
    >>> s = Session.open("Mara Quill was born in Tarn.", strategy="truncate", model=model,
    ...                  cache=False, persist=False)
    >>> s.ask("Who is Mara?").text, s.ask("Where was she born?").text
    ('Mara Quill.', 'In Tarn.')
    >>> s.history[1].standalone, s.usage.calls
    ('Where was Mara Quill born?', 3)
    """

    def __init__(
        self,
        document: Document,
        *,
        strategy: str | Strategy | None = None,
        model: str | LLM | None = None,
        cache: bool = True,
        persist: bool = True,
        rewrite: bool = True,
        settings: Settings | None = None,
        history: Sequence[Turn] = (),
        trace: str | os.PathLike[str] | TraceWriter | None = None,
        **options: Any,
    ) -> None:
        from longweave.cache import ArtifactCache
        from longweave.config import Settings

        self.settings = settings or Settings()
        self.document = document
        self.cache = cache
        self.persist = persist
        """Save after every turn to `path`."""
        self.rewrite = rewrite
        """Rewrite follow-ups into standalone questions (one short model call per turn)."""
        self.history: list[Turn] = list(history)
        self.trace = trace
        """Where every turn's calls and steps are appended as JSONL (`longweave.trace`), or None."""
        self.path = self.settings.cache_dir / "sessions" / f"{document.id}.json"
        """Where the session is saved: keyed by the document's sha256 alone."""
        self._origin = _origin(document)
        """The document's file or folder, resolved (None for text): each save records there
        which conversation its text has (`_pointer`), so one about its earlier text is named."""
        self._pointed = False
        self.artifacts = ArtifactCache(self.settings.cache_dir / "artifacts")
        self._stamp: tuple[int, ...] | None = None
        """The saved file as this session last read or wrote it (`_stamp`)."""
        self._known = {_key(t) for t in self.history}
        """Turns this session has read from or written to the file."""
        self._others: list[Turn] = []
        """Turns other sessions saved to the file: written back with this session's turns."""
        self.conversation = uuid.uuid4().hex
        """This conversation's id: a new one's is random; `open(resume=True)` continues the
        saved one's (or "", the first conversation about the text, which every resumer joins)."""
        self._memory: tuple[ConversationMemory | None, list[Turn]] = (None, [])
        self._llm: LLM | None = None
        self._model: str | LLM = self.settings.model if model is None else model
        if isinstance(self._model, str):  # fails at open, as ask does (the model loads lazily)
            check_model_string(self._model)
        self._use_strategy(self.settings.strategy if strategy is None else strategy, options)

    @classmethod
    def open(
        cls,
        source: str | os.PathLike[str] | Document,
        *,
        strategy: str | Strategy | None = None,
        model: str | LLM | None = None,
        resume: bool = False,
        cache: bool = True,
        persist: bool = True,
        rewrite: bool = True,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        settings: Settings | None = None,
        trace: str | os.PathLike[str] | TraceWriter | None = None,
        **options: Any,
    ) -> Session:
        """A session over `source` (a path, a folder, a Document or text); `resume` continues
        the saved conversation about the same text, keeping its strategy and model unless given.
        `options` configure the strategy; `include`/`exclude` filter a folder's files; `trace`
        appends every turn's calls and steps to a JSONL file."""
        from longweave.api import load_source
        from longweave.config import Settings

        settings = settings or Settings()
        document = load_source(source, include=include, exclude=exclude)
        path = settings.cache_dir / "sessions" / f"{document.id}.json"
        stamp = _stamp(path)  # before reading: a save in between then shows as a change
        saved = _load(path, document.id) if resume else None
        if resume and saved is None:
            _name_earlier(settings.cache_dir / "sessions", document)
        history: list[Turn] = []
        if saved is not None:
            history = saved.turns
            if strategy is None and _valid(saved.strategy, saved.options):
                strategy, options = saved.strategy, _on_saved(saved.strategy, saved.options,
                                                              options)
            model = model or saved.model
        session = cls(document, strategy=strategy, model=model, cache=cache, persist=persist,
                      rewrite=rewrite, settings=settings, history=history, trace=trace,
                      **options)
        # Not resuming, the file as it is now is replaced at the first answer (chat's --new
        # moves it aside first); a change after this is another session's, and is kept.
        session._stamp = stamp
        if resume:  # the text's conversation: the saved one, or the first, "" (any resumer's)
            session.conversation = saved.conversation if saved is not None else ""
        return session

    # -- what it uses ------------------------------------------------------------------------

    @property
    def strategy(self) -> Strategy:
        """The configured strategy the next question goes through."""
        return self._strategy

    @property
    def options(self) -> dict[str, Any]:
        """The strategy options given (by name), as saved with the session."""
        return dict(self._options)

    @property
    def model(self) -> str:
        """The model string (or the backend's name when an `LLM` object was given)."""
        return self._model if isinstance(self._model, str) else self._model.name

    @property
    def llm(self) -> LLM:
        """The backend, resolved on first use, behind the completion cache."""
        if self._llm is None:
            from longweave.api import make_model

            self._llm = make_model(self._model, cache=self.cache, settings=self.settings)
        return self._llm

    @property
    def usage(self) -> Usage:
        """Usage of every turn so far, rewrites included."""
        return sum((t.answer.usage for t in self.history), Usage())

    def set_strategy(self, name: str | Strategy, **options: Any) -> None:
        """Use another strategy (validated now; options as in `ask`) for the next questions."""
        self._use_strategy(name, options)
        self._save_state()

    def _use_strategy(self, name: str | Strategy, options: dict[str, Any]) -> None:
        from longweave.agents.base import get_strategy

        chosen = get_strategy(name, **options)
        unsaved: list[str] = []

        def unsaveable(value: Any) -> None:  # a setting JSON cannot hold (a scorer object, say)
            unsaved.append(type(value).__name__)

        # Saved as JSON: a schema class as its schema, an object JSON cannot hold as null.
        dumped = (chosen.model_dump(mode="json", fallback=unsaveable)
                  if hasattr(chosen, "model_dump") else None)
        if unsaved and self.persist:
            warnings.warn(f"{chosen.name}: settings of type {', '.join(unsaved)} cannot be "
                          "saved with the session; a resumed session reads them as unset",
                          LongweaveWarning, 3)
        if dumped is not None:
            # An instance is saved as all its settings; a name with options as those options.
            options = (dumped if not isinstance(name, str)
                       else {k: dumped.get(k, v) for k, v in options.items()})
        self._strategy, self._options = chosen, dict(options)

    def set_model(self, model: str | LLM) -> None:
        """Use another model for the next questions (a bad model string fails now)."""
        from longweave.api import make_model

        self._llm = make_model(model, cache=self.cache, settings=self.settings)
        self._model = model
        self._save_state()

    # -- asking ------------------------------------------------------------------------------

    async def aask(
        self,
        question: str,
        *,
        on_event: EventSink = ignore,
        trace: str | os.PathLike[str] | TraceWriter | None = None,
    ) -> Answer:
        """Answer `question` in the context of the conversation; the turn is kept only once the
        answer is complete (a cancelled or failed question leaves the session unchanged).
        `trace` (default: the session's) appends the turn's calls and steps as JSONL."""
        target = trace if trace is not None else self.trace
        if target is None:
            return await self._ask(question, on_event)
        from longweave.trace import combine, open_trace

        with open_trace(target) as writer:
            run = writer.run(
                keys={"session": self.document.id[:16], "turn": len(self.history) + 1},
                strategy=self._strategy.name, document=self.document, question=question,
                model=self.model,
            )
            return await run.watch(self._ask(question, combine(on_event, run)))

    async def _ask(self, question: str, on_event: EventSink) -> Answer:
        from longweave.runner import arun

        llm, strategy = self.llm, self._strategy
        standalone, step, rewrite = await self._standalone(question, llm, on_event)
        answer = await arun(strategy, self.document, standalone, llm, on_event=on_event,
                            artifacts=self.artifacts)
        if step is not None:
            answer = answer.model_copy(
                update={"usage": rewrite + answer.usage, "steps": [step, *answer.steps]}
            )
        self.history.append(Turn(question=question, standalone=standalone, answer=answer))
        self._save_state()
        return answer

    def ask(
        self,
        question: str,
        *,
        on_event: EventSink = ignore,
        trace: str | os.PathLike[str] | TraceWriter | None = None,
    ) -> Answer:
        """The synchronous form of `aask`."""
        from longweave.sync import run_sync

        return run_sync(self.aask(question, on_event=on_event, trace=trace))

    async def standalone(self, question: str) -> str:
        """The question as the next turn would ask it (makes the rewrite call when needed)."""
        return (await self._standalone(question, self.llm, ignore))[0]

    async def _standalone(
        self, question: str, llm: LLM, on_event: EventSink
    ) -> tuple[str, Step | None, Usage]:
        """The question to answer, the `rewrite` step (None when no call was made) and the
        call's usage."""
        if not (self.rewrite and self.history and question.strip()):
            return question, None, Usage()
        memory = self._conversation(llm)
        window = min(llm.context_window, REWRITE_WINDOW)
        budget = window - llm.count_prompt_tokens(rewrite_messages("", question))
        budget -= REWRITE_MAX_NEW + _MARGIN
        messages = rewrite_messages(memory.render(budget), question)
        for _ in range(3):  # the parts are counted one by one; shrink if the whole is over
            over = llm.count_prompt_tokens(messages) + REWRITE_MAX_NEW - window
            if over <= 0:
                break
            budget -= over + _MARGIN
            messages = rewrite_messages(memory.render(budget), question)
        if budget <= 0 or not memory.render(budget):
            return question, None, Usage()  # no room for any memory: ask the question as typed
        name = self._strategy.name
        previous = self.history[-1].standalone or self.history[-1].question
        detail: dict[str, Any] = {"question": question}
        on_event(Event("call", name, "rewrite", message="rewrite call"))
        started = time.perf_counter()
        request = {"max_tokens": REWRITE_MAX_NEW, "temperature": 0.0, "schema": None}
        try:
            reply = await llm.complete(messages, max_tokens=REWRITE_MAX_NEW, temperature=0.0,
                                       role="rewrite")
        except Exception as exc:
            on_event(result_event(name, "rewrite", messages, None, error=exc,
                                  seconds=time.perf_counter() - started, **request))
            if not isinstance(exc, ModelError) or exc.fatal:
                raise  # a fatal error (a bad key, no server) would fail the answer the same way
            # A timeout or an unparsable reply costs the follow-up its rewrite, not its answer.
            standalone = clean_rewrite("", question, previous)
            warnings.warn(f"the rewrite call failed ({exc.message}); asking {standalone!r}",
                          LongweaveWarning, 2)
            detail["error"] = exc.message
            return standalone, Step(role="rewrite", output=standalone, detail=detail), Usage()
        on_event(result_event(name, "rewrite", messages, reply,
                              seconds=time.perf_counter() - started, **request))
        on_event(Event("progress", name, "rewrite", message="rewrite done",
                       data={"seconds": time.perf_counter() - started,
                             "cache": reply.meta.get("cache")}))
        standalone = clean_rewrite(reply.text, question, previous)
        return standalone, Step(role="rewrite", output=standalone, detail=detail), reply.usage

    def _conversation(self, llm: LLM) -> ConversationMemory:
        """The rewrite's memory, extended by the turns added since the last call: rebuilding it
        from every turn made each turn slower as the conversation grew. Rebuilt when the
        history was changed otherwise, or the model (its token count) was."""
        memory, seen = self._memory
        if (memory is None or memory.count != llm.count_tokens or len(seen) > len(self.history)
                or any(a is not b for a, b in zip(seen, self.history, strict=False))):
            memory, seen = ConversationMemory(llm.count_tokens), []
        for i in range(len(seen), len(self.history)):
            turn = self.history[i]
            memory.add(i, turn.standalone or turn.question, turn.answer.text)
        self._memory = (memory, list(self.history))
        return memory

    # -- saving ------------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """The session as JSON-ready data (what `save("x.json")` and the resume file hold)."""
        return self._record(self.history)

    def _record(self, turns: Sequence[Turn]) -> dict[str, Any]:
        return _Record(
            document_id=self.document.id,
            source=self.document.source,
            strategy=self._strategy.name,
            options=self._options,
            model=self._model if isinstance(self._model, str) else None,
            conversation=self.conversation,
            turns=list(turns),
        ).model_dump(mode="json")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the transcript: `.md` as readable markdown, `.json` as the full record."""
        try:
            target = Path(path).expanduser()
        except RuntimeError as exc:  # "~nosuchuser/x.md"
            raise DocumentError(path, f"cannot be written ({exc})",
                                hint="write the path out, or ~/ for your home") from None
        suffix = target.suffix.lower()
        if suffix == ".json":
            text = json.dumps(self.record(), indent=2, ensure_ascii=False)
        elif suffix in (".md", ".markdown"):
            text = transcript(self)
        else:
            raise ConfigError(f"cannot save a session as {target.name!r}",
                              hint="name a .md (transcript) or .json (full record) file")
        try:
            write_atomic(target, text)
        except OSError as exc:  # a parent that is a file, a read-only or virtual folder, ...
            parent = next((p for p in target.parents if p.exists()), None)
            why = (f"{parent} is a file, not a folder" if parent is not None
                   and not parent.is_dir() else exc.strerror or str(exc))
            raise DocumentError(target, f"cannot be written ({why})",
                                hint="save to a file in a folder you can write to") from None
        return target

    def _save_state(self) -> None:
        if not (self.persist and self.history):
            return
        try:
            with _locked(self.path.parent):  # another process's save waits: none is lost
                self._take_others()
                turns = list(heapq.merge(self.history, self._others, key=_when))
                write_atomic(self.path, json.dumps(self._record(turns), ensure_ascii=False))
                self._stamp = _stamp(self.path)
                self._known.update(_key(t) for t in turns)
                self._point()
        except OSError as exc:  # the answer stands; only the resume file is missing
            warnings.warn(f"could not save the session to {self.path}: {exc}", LongweaveWarning, 3)
        except (TypeError, ValueError) as exc:  # a strategy setting that JSON cannot hold
            warnings.warn(f"could not save the session to {self.path}: a strategy setting is "
                          f"not JSON ({exc}); open it with persist=False to stop trying",
                          LongweaveWarning, 3)

    def _save_apart(self) -> None:
        """Another conversation took the file meanwhile (a chat on the same text started over
        with --new while this one went on): neither replaces the other; this one is saved
        beside it from now on."""
        apart = self.path.with_name(f"{self.document.id}.{self.conversation[:12]}.json")
        warnings.warn(f"another conversation about this text was saved to {self.path} "
                      f"meanwhile; this one is saved to {apart} from now on", LongweaveWarning, 4)
        self.path, self._stamp, self._others = apart, _stamp(apart), []
        self._pointed = False

    def _point(self) -> None:
        """Record that this conversation is the one about the document's file now (best
        effort: without it, an edit of the file is only not announced)."""
        if self._origin is None or self._pointed:
            return
        with contextlib.suppress(OSError):
            write_atomic(_pointer(self.path.parent, self._origin), json.dumps(
                {"path": self._origin, "document_id": self.document.id, "file": self.path.name}))
            self._pointed = True

    def _take_others(self) -> None:
        """Keep the turns another session (another chat on the same text) saved since this one
        last read or wrote the file: writing this session's turns alone dropped them."""
        stamp = _stamp(self.path)
        if stamp is None or stamp == self._stamp:
            return
        found = _read(self.path, self.document.id)
        if isinstance(found, str):
            _set_aside(self.path, found, "saving this conversation in its place")
            return
        if found.conversation != self.conversation:
            self._save_apart()
            return
        mine = self._known | {_key(t) for t in (*self.history, *self._others)}
        self._others = sorted([*self._others, *(t for t in found.turns if _key(t) not in mine)],
                              key=_when)


def _origin(document: Document) -> str | None:
    """The document's file or folder as one name however it was typed, or None (text)."""
    if not document.source:
        return None
    try:
        found = os.path.realpath(os.path.expanduser(document.source))
    except (OSError, ValueError):
        return None
    return found if os.path.exists(found) else None


def _pointer(sessions: Path, origin: str) -> Path:
    """Where the conversation last saved about the file or folder `origin` is named."""
    digest = hashlib.sha256(origin.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return sessions / "paths" / f"{digest}.json"


def _name_earlier(sessions: Path, document: Document) -> None:
    """Warn when the conversation last saved about this document's file or folder was about
    other text (the file was edited since; the session file is keyed by the text). It is not
    continued, since its answers were about the earlier text, but it is named."""
    origin = _origin(document)
    if origin is None:
        return
    try:
        pointer = json.loads(_pointer(sessions, origin).read_text(encoding="utf-8"))
        earlier, name = str(pointer["document_id"]), Path(str(pointer["file"])).name
    except (OSError, ValueError, KeyError, TypeError):
        return  # none recorded (or saved before longweave recorded them)
    saved = sessions / name
    found = _read(saved, earlier) if earlier != document.id and saved.is_file() else None
    if not isinstance(found, _Record) or not found.turns:
        return
    n, last = len(found.turns), time.localtime(found.turns[-1].asked_at)
    warnings.warn(
        f"{document.source} changed since its last conversation ({n} turn{'s' * (n != 1)}, "
        f"the last on {time.strftime('%Y-%m-%d %H:%M', last)}), which is kept in {saved}; its "
        "answers were about the earlier text, so this is a new conversation. To continue that "
        "one, restore the earlier text of the file and open it again.",
        LongweaveWarning, 3)


def _key(turn: Turn) -> tuple[float, str, str]:
    """What tells one saved turn from another, across sessions and processes: its texts as
    saved (a lone surrogate is written as U+FFFD, so the turn read back must match)."""
    return (turn.asked_at, _encodable(turn.question), _encodable(turn.answer.text))


def _when(turn: Turn) -> float:
    return turn.asked_at


def _stamp(path: Path) -> tuple[int, ...] | None:
    """The file's identity and version (each save is a new file), or None when there is none."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the sessions folder while a save reads and replaces a file, so that two processes
    saving the same conversation take turns. Best effort: without flock (Windows) or where
    the file system refuses it, the save goes on unlocked."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = _lock(folder)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _lock(folder: Path) -> int | None:
    """A handle on `folder` holding its exclusive flock, or None where there is none to take."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # a file system without locks
        pass
    return fd


def transcript(session: Session) -> str:
    """The conversation as markdown: each question, the answer, its sources and its usage."""
    doc = session.document
    lines = [f"# Conversation about {doc.name}", "",
             f"{len(session.history)} turns · strategy `{session.strategy.name}` · model "
             f"`{session.model}` · {session.usage.line()}", ""]
    for n, turn in enumerate(session.history, 1):
        lines += [f"## {n}. {_one_line(turn.question) or '(summary)'}", ""]
        if turn.standalone != turn.question:
            lines += [f"*Asked as:* {turn.standalone}", ""]
        lines += [turn.answer.text or "*(no answer)*", ""]
        if turn.answer.citations:
            lines += ["Sources:", ""]
            for i, cite in enumerate(turn.answer.citations, 1):
                where = f"{cite.source or doc.name}, chars {cite.start}-{cite.end}"
                lines.append(f"{i}. {where}: “{_clip(_one_line(cite.text), 200)}”")
            lines.append("")
        lines += [f"*{turn.answer.strategy} · {turn.answer.usage.line()}*", ""]
    return "\n".join(lines)


def _on_saved(strategy: str, saved: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The saved options with the given ones over them; a given option the resumed strategy
    does not have is an error that says which strategy that is."""
    from longweave.agents.base import get_strategy

    options = {**saved, **given}
    try:
        get_strategy(strategy, **options)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} (the resumed session's strategy)",
                          hint=f"pass --strategy to choose another, or --new to start over; "
                               f"{exc.hint}".strip()) from None
    return options


def _valid(strategy: str, options: dict[str, Any]) -> bool:
    """Whether a saved strategy still loads (a plugin may be gone, a setting renamed)."""
    from longweave.agents.base import get_strategy

    try:
        get_strategy(strategy, **options)
    except ConfigError as exc:
        warnings.warn(f"the saved strategy no longer loads ({exc.message}); using the default",
                      LongweaveWarning, 3)
        return False
    return True


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: never half a file."""
    text = _encodable(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _encodable(text: str) -> str:
    """`text` with lone surrogates (a byte that was not UTF-8, read with surrogateescape; half
    an emoji escaped in a JSON reply) as U+FFFD: UTF-8 cannot hold them, and failing there
    lost the transcript, and every later turn's save."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _load(path: Path, document_id: str) -> _Record | None:
    """A saved session, or None when there is none or it cannot be read (with a warning)."""
    if not path.exists():
        return None
    found = _read(path, document_id)
    if isinstance(found, str):
        _set_aside(path, found, "starting a new one")
        return None
    return found


def _read(path: Path, document_id: str) -> _Record | str:
    """The saved session at `path`, or why it cannot be continued."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        version = raw.get("version") if isinstance(raw, dict) else None
        if isinstance(version, int) and version != FORMAT_VERSION:
            # Checked first: a newer format's new fields would read as a validation error.
            return f"format {version}; this longweave reads format {FORMAT_VERSION}"
        record = _Record.model_validate(raw)
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON, not a record
        return (str(exc).splitlines() or [type(exc).__name__])[0]
    if record.document_id != document_id:
        return "it is the conversation about another text"
    return record


def _set_aside(path: Path, problem: str, doing: str) -> None:
    """Move an unreadable saved session beside its name, with a warning: a newer longweave's
    file, or one a crash or an editor damaged, may still matter to its owner, so it is kept
    rather than overwritten by the next save."""
    stem = f"{path.stem}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
    aside = path.with_name(f"{stem}{path.suffix}")
    for n in range(2, 100):  # a second one within the same second must not replace the first
        if not aside.exists():
            break
        aside = path.with_name(f"{stem}-{n}{path.suffix}")
    try:
        os.replace(path, aside)
        kept = f"; it was moved to {aside.name}"
    except OSError:
        kept = ""
    warnings.warn(f"the saved session {path} is unreadable ({problem}); {doing}{kept}",
                  LongweaveWarning, 4)

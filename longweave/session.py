"""A conversation over one document: follow-up questions, a running cost, and a saved transcript.

A follow-up ("and where was she born?") is rewritten into a standalone question by one short
model call (role `rewrite`) that sees the conversation memory: the last turns verbatim (LIGHT's
`WorkingMemory`) and older turns as one-line facts (LIGHT's `Scratchpad`); see
`longweave.session_rewrite`. The standalone question then goes through the shared runner like
any `ask`, with the artifact cache, so per-document artifacts (indexes, trees, graphs) are built
once and reused on every turn.

The rewrite call is part of the turn: its usage is added to the turn's `Answer.usage` and it is
the first step (`rewrite`) of the answer's trace, so `Session.usage` is what the conversation
cost. A session is saved after every turn, atomically, to `<cache dir>/sessions/<document
sha256>.json`; `resume=True` continues it. Two sessions on the same text share that file
without losing each other's turns, and resuming after the document's file was edited names the
earlier conversation; see `longweave.session_store`.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longweave.answer import Answer, Step, Usage
from longweave.errors import ConfigError, DocumentError, LongweaveWarning, ModelError
from longweave.events import Event, EventSink, ignore, result_event
from longweave.llm import check_model_string
from longweave.session_rewrite import ANSWER_CHARS as ANSWER_CHARS
from longweave.session_rewrite import EARLIER_TOKENS as EARLIER_TOKENS
from longweave.session_rewrite import RECENT_TURNS as RECENT_TURNS
from longweave.session_rewrite import REWRITE_SYSTEM as REWRITE_SYSTEM
from longweave.session_rewrite import ConversationMemory, clean_rewrite, rewrite_messages
from longweave.session_store import FORMAT_VERSION as FORMAT_VERSION
from longweave.session_store import (
    SessionFile,
    SessionRecord,
    Turn,
    file_stamp,
    load_saved,
    name_earlier,
    options_on_saved,
    session_path,
    strategy_loads,
    transcript,
    write_atomic,
)

if TYPE_CHECKING:
    from longweave.agents.base import Strategy
    from longweave.config import Settings
    from longweave.documents import Document
    from longweave.llm import LLM
    from longweave.trace import TraceWriter

__all__ = ["ConversationMemory", "Session", "Turn", "rewrite_messages"]
# The constants imported `as` themselves are re-exported: they, like clean_rewrite, transcript
# and write_atomic, were defined here before session_rewrite and session_store split off.

# `doctest.testmod(longweave.session)` still runs the examples of what moved out.
__test__ = {"ConversationMemory": ConversationMemory, "clean_rewrite": clean_rewrite}

REWRITE_WINDOW = 2048
"""Most tokens one rewrite call uses, prompt and reply, even with a larger model window (ours)."""
REWRITE_MAX_NEW = 128
"""Generation cap of the rewrite call (ours)."""
_MARGIN = 32


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
        self._file = SessionFile(self.settings.cache_dir / "sessions", document, self.history)
        """The saved file, and the turns other sessions wrote to it (`longweave.session_store`)."""
        self.artifacts = ArtifactCache(self.settings.cache_dir / "artifacts")
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
        path = session_path(settings.cache_dir / "sessions", document.id)
        stamp = file_stamp(path)  # before reading: a save in between then shows as a change
        saved = load_saved(path, document.id) if resume else None
        if resume and saved is None:
            name_earlier(settings.cache_dir / "sessions", document)
        history: list[Turn] = []
        if saved is not None:
            history = saved.turns
            if strategy is None and strategy_loads(saved.strategy, saved.options):
                strategy, options = saved.strategy, options_on_saved(saved.strategy,
                                                                     saved.options, options)
            model = model or saved.model
        session = cls(document, strategy=strategy, model=model, cache=cache, persist=persist,
                      rewrite=rewrite, settings=settings, history=history, trace=trace,
                      **options)
        # Not resuming, the file as it is now is replaced at the first answer (chat's --new
        # moves it aside first); a change after this is another session's, and is kept.
        session._file.stamp = stamp
        if resume:  # the text's conversation: the saved one, or the first, "" (any resumer's)
            session.conversation = saved.conversation if saved is not None else ""
        return session

    # -- what it uses ------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """Where the session is saved: keyed by the document's sha256 alone (beside that file
        once another conversation about the text took it)."""
        return self._file.path

    @path.setter
    def path(self, path: Path) -> None:
        self._file.path = path

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
        return SessionRecord(
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
            self._file.save(self.history, self.conversation, self._record)
        except OSError as exc:  # the answer stands; only the resume file is missing
            warnings.warn(f"could not save the session to {self.path}: {exc}", LongweaveWarning, 3)
        except (TypeError, ValueError) as exc:  # a strategy setting that JSON cannot hold
            warnings.warn(f"could not save the session to {self.path}: a strategy setting is "
                          f"not JSON ({exc}); open it with persist=False to stop trying",
                          LongweaveWarning, 3)

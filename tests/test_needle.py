"""Needle-in-a-haystack case generation: length, depth, exact span, sentence boundaries, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from longweave.agents.infini_retri_sentences import split_sentences
from longweave.errors import ConfigError
from longweave.evals.needle import PG_NEEDLE, Needle, NeedleCase, make_case, read_haystack
from longweave.tokenizers import TiktokenTokenizer

TOK = TiktokenTokenizer()
NEEDLE = Needle(
    "The secret number of the lighthouse keeper is 4096.",
    "What is the secret number of the lighthouse keeper?",
    ("4096",),
)
_TOPICS = ["harbours", "essays", "startups", "lighthouses", "ferries", "gardens", "printing"]


def build_haystack(sentences: int = 400) -> str:
    """Deterministic prose of varied sentence lengths, paragraphs, and false sentence ends."""
    parts: list[str] = []
    for i in range(sentences):
        topic = _TOPICS[i % len(_TOPICS)]
        words = " ".join(["and so on"] * (i % 5))
        parts.append(f"Sentence {i} is about {topic} {words}.")
        if i % 9 == 4:  # abbreviations and decimals are not sentence ends
            parts.append(f"Some {topic}, e.g. small ones, cost 3.14 coins each.")
        parts.append("\n\n" if i % 12 == 11 else " ")
    return "".join(parts).strip()


HAYSTACK = build_haystack()
LONGEST_SENTENCE = max(TOK.count(s) for s in re.split(r"(?<=\.)\s+(?=[A-Z])", HAYSTACK))


def case(tokens: int = 2000, depth: float = 50, haystack: str = HAYSTACK) -> NeedleCase:
    return make_case(haystack, NEEDLE, tokens=tokens, depth=depth, count_tokens=TOK.count)


@pytest.mark.parametrize("tokens", [300, 1000, 2500, 4000])
def test_length_is_within_one_sentence_of_the_target(tokens: int) -> None:
    c = case(tokens)
    assert c.tokens == TOK.count(c.document)
    assert tokens - LONGEST_SENTENCE - 2 <= c.tokens <= tokens
    assert c.haystack_tokens < c.tokens


@pytest.mark.parametrize("depth", [0, 10, 25, 50, 75, 90, 100])
def test_needle_lands_at_or_just_before_the_depth(depth: float) -> None:
    c = case(3000, depth)
    slack = 100 * (LONGEST_SENTENCE + 1) / c.haystack_tokens
    assert depth - slack <= c.reached_depth <= depth
    assert c.depth == depth


def test_depth_extremes_and_order() -> None:
    first, last = case(depth=0), case(depth=100)
    assert first.needle_start == 0 and first.document.startswith(NEEDLE.text + " ")
    assert last.document.endswith(" " + NEEDLE.text)
    starts = [case(depth=d).needle_start for d in (0, 20, 40, 60, 80, 100)]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


@pytest.mark.parametrize("depth", [0, 33, 100])
def test_needle_span_is_exact_and_the_rest_is_the_haystack(depth: float) -> None:
    c = case(1500, depth)
    assert c.needle == NEEDLE.text == c.document[slice(*c.needle_span)]
    before, after = c.document[: c.needle_start], c.document[c.needle_end :]
    # Around the needle is the haystack, unchanged up to the whitespace at the joins.
    head = before.rstrip()
    assert HAYSTACK.startswith(head)
    assert before[len(head) :] in (" ", HAYSTACK[len(head) : len(before)])  # own or one added
    assert HAYSTACK[len(head) :].lstrip().startswith(after.strip())
    assert after == "" or after.startswith(" ")
    assert c.question == NEEDLE.question and c.answers == NEEDLE.answers


@pytest.mark.parametrize("depth", [5, 15, 45, 55, 85])
def test_needle_goes_in_at_a_sentence_boundary(depth: float) -> None:
    c = case(2500, depth)
    before = c.document[: c.needle_start]
    assert before.endswith((". ", ".\n\n")) or before == ""
    assert not before.endswith(("e.g. ", "3.")), "an abbreviation is not a sentence end"
    after = c.document[c.needle_end :]
    assert re.match(r"\s+[A-Z]", after) or after == ""


def test_infini_retri_reads_the_needle_as_one_sentence() -> None:
    c = case(2500, 60)
    sentences = split_sentences(c.document, lambda t: list(TOK.encode(t)), 1024)
    assert any(s.text.strip() == NEEDLE.text for s in sentences)


def test_boundaries_after_paragraphs_and_a_glued_haystack() -> None:
    # Paragraph breaks are boundaries; "end.Next" (upstream's glued essays) is not.
    haystack = "First part ends here.Next part goes on\n\nA new paragraph starts. " * 40
    c = make_case(haystack.strip(), NEEDLE, tokens=500, depth=50, count_tokens=TOK.count)
    before = c.document[: c.needle_start]
    assert before.endswith(("\n\n", "starts. "))
    assert not before.endswith("here.")


def test_deterministic() -> None:
    assert case(1800, 40) == case(1800, 40)


def test_too_short_haystack_raises() -> None:
    with pytest.raises(ConfigError, match="too short"):
        case(TOK.count(HAYSTACK) + 50)
    with pytest.raises(ConfigError, match="too short"):
        case(TOK.count(NEEDLE.text))  # no room for any haystack besides the needle


def test_case_smaller_than_the_first_sentence_raises() -> None:
    haystack = "A very long opening sentence " + "that goes on " * 50 + "and ends. Short. " * 5
    with pytest.raises(ConfigError, match="first sentence"):
        make_case(haystack, NEEDLE, tokens=40, depth=50, count_tokens=TOK.count)


@pytest.mark.parametrize("depth", [-1, 100.5])
def test_depth_outside_0_to_100_raises(depth: float) -> None:
    with pytest.raises(ConfigError, match="outside 0-100"):
        case(depth=depth)


def test_empty_needle_raises() -> None:
    with pytest.raises(ConfigError, match="empty"):
        make_case(HAYSTACK, Needle("  ", "q?", ("a",)), tokens=500, depth=0, count_tokens=len)


def test_answer_checks() -> None:
    c = make_case(HAYSTACK, PG_NEEDLE, tokens=800, depth=50, count_tokens=TOK.count)
    good = "You should eat a sandwich and sit in Dolores Park, on a sunny day!"
    assert c.contains_answer(good) and c.answer_recall(good) == 1.0
    assert not c.contains_answer("Eat a sandwich in Dolores Park.")
    assert c.answer_recall("Eat a sandwich in Dolores Park.") == pytest.approx(4 / 7)
    assert c.answer_recall("Visit the Golden Gate Bridge.") == 0.0
    assert not case().contains_answer("40960")  # whole words only


def test_retained_by_needs_the_whole_needle_covered() -> None:
    c = case(1000, 50)
    s, e = c.needle_span
    assert c.retained_by([(s, e)])
    assert c.retained_by([(0, s + 5), (s + 3, e + 10)])
    assert not c.retained_by([(s + 1, e)])
    assert not c.retained_by([(0, s + 10), (s + 11, e)])
    assert not c.retained_by([])


def test_read_haystack_joins_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("Second essay.\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("First essay.", encoding="utf-8")
    (tmp_path / "notes.md").write_text("Not an essay.", encoding="utf-8")
    assert read_haystack(tmp_path) == "First essay.\n\nSecond essay."
    with pytest.raises(ConfigError, match="no"):
        read_haystack(tmp_path / "missing")

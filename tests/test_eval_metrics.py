"""Answer metrics: SQuAD normalization, EM, F1, contains, option parsing, BEAM scoring."""

from __future__ import annotations

import doctest

import pytest

from longweave.evals import beam, metrics
from longweave.evals.beam import kendall_tau_b, ordering_score, rubric_score
from longweave.evals.metrics import (
    abstains,
    cloze_accuracy,
    contains_answer,
    exact_match,
    normalize_answer,
    option_accuracy,
    parse_choice,
    parse_choices,
    token_f1,
)

LETTERS = ["A", "B", "C", "D"]


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An   apple, a day ", "apple day"),
        ("theater of the absurd", "theater of absurd"),  # "the" inside a word stays
        ("“Chief of Protocol”—U.S.", "chief of protocolus"),  # curly quotes and dashes go
        ("", ""),
    ],
)
def test_normalize_answer_follows_squad(text, normal) -> None:
    assert normalize_answer(text) == normal


def test_exact_match_ignores_case_punctuation_articles_and_takes_the_best_gold() -> None:
    assert exact_match("The Chief of Protocol.", ["chief of protocol"]) == 1.0
    assert exact_match("Chief of Protocol of the US", ["chief of protocol"]) == 0.0
    assert exact_match("1923", ["in 1922", "1923"]) == 1.0
    assert exact_match("", ["x"]) == 0.0


def test_token_f1_values_and_edge_cases() -> None:
    # prediction "in paris france" vs gold "paris": precision 1/3, recall 1 -> 0.5
    assert token_f1("in Paris, France", ["Paris"]) == pytest.approx(0.5)
    assert token_f1("Paris", ["Paris, France", "Paris"]) == 1.0  # best gold wins
    assert token_f1("the the the", ["a"]) == 1.0  # both normalize to nothing: SQuAD says equal
    assert token_f1("nothing", ["the"]) == 0.0
    assert token_f1("red red blue", ["red blue blue"]) == pytest.approx(2 / 3)  # multiset overlap
    assert token_f1("anything", []) == 0.0


def test_contains_answer_is_word_bounded() -> None:
    assert contains_answer("It was built in 1923, I think.", ["1923"]) == 1.0
    assert contains_answer("Code 19234 is not the year.", ["1923"]) == 0.0
    assert contains_answer("Eat a sandwich and sit in Dolores Park!",
                           ["eat a sandwich and sit in Dolores Park"]) == 1.0
    assert contains_answer("anything", [""]) == 0.0  # an empty gold is contained nowhere


def test_abstains_and_cloze() -> None:
    assert abstains("That is not mentioned in the conversation.") == 1.0
    assert abstains("She ran a charity race.") == 0.0
    masks = {"<mask-0>": "Justin Timberlake", "<mask-1>": "Kentwood"}
    assert cloze_accuracy("<mask-0>: Justin Timberlake\n<mask-1>: Baton Rouge", masks) == 0.5
    assert cloze_accuracy("", {}) == 0.0


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ("I think the answer is (C) because the text says so.", "C"),
        ("B", "B"),
        ("B. Their subconscious knew.", "B"),
        ("Answer: d", None),  # labels are capitals; a lowercase d is not read as one
        ("The correct option is B.", "B"),
        ("A good reason is that C fits best.", "C"),  # "A" as an article is not a choice
        ("A", "A"),
        ("A and C are both possible", None),  # two bare letters: no clear choice
        ("They used drug hypnosis while they taught him.", "A"),  # the option's text, quoted
        ("None of them.", None),
    ],
)
def test_parse_choice_from_free_text(text, choice) -> None:
    options = ["drug hypnosis", "boredom", "sleep teaching", "knock out"]
    assert parse_choice(text, LETTERS, options) == choice


def test_parse_choices_multi_select() -> None:
    assert parse_choices("ACD", LETTERS, multi=True) == ["A", "C", "D"]
    assert parse_choices("The answers are A, C and D.", LETTERS, multi=True) == ["A", "C", "D"]
    assert parse_choices("(B) and (A)", LETTERS, multi=True) == ["A", "B"]
    assert option_accuracy("Answer: A, C", ["A", "B", "C"], LETTERS, multi=True) == 0.0
    assert option_accuracy("Answer: C, A, B", ["A", "B", "C"], LETTERS, multi=True) == 1.0


def test_letters_past_d_are_read_as_the_options_parser_allows_them() -> None:
    # `split_choices` reads options A-Z, so an L-Eval case may be labelled past D
    ten = list("ABCDEFGHIJ")
    assert parse_choice("E", ten) == "E" and parse_choice("The answer is (J).", ten) == "J"
    assert option_accuracy("Answer: B, E", ["B", "E"], ten[:5], multi=True) == 1.0
    # "I" as a pronoun is not option I, as "A" as an article is not option A
    assert parse_choice("I think it must be G.", ten) == "G"
    assert parse_choice("I'd say H", ten) == "H"
    assert parse_choice("I", ten) == "I" and parse_choice("I is right", ten) == "I"
    assert parse_choice("I think it must be G.", LETTERS) is None  # G is no option here


def test_word_and_number_labels() -> None:
    assert parse_choice("True, according to the story.", ["True", "False"]) == "True"
    assert parse_choice("false: the planet has no atmosphere", ["True", "False"]) == "False"
    numbered = ["1", "2", "3", "4"]
    options = ["seven", "six", "five", "four"]
    assert parse_choice("3. five", numbered, options) == "3"
    assert parse_choice("There were five of them.", numbered, options) == "3"
    # a number in the prose is not a choice: "3 brothers" does not pick option 3
    assert parse_choice("He had 3 brothers.", numbered, options) is None
    assert option_accuracy("no idea", ["3"], numbered, options) == 0.0


def test_beam_rubric_partial_credit_float_and_faithful() -> None:
    # STRATEGIES.md §6.6 check 6: 0.5 stays 0.5 by default, floors to 0 in faithful mode.
    assert rubric_score([0.5]) == 0.5
    assert rubric_score([0.5], faithful=True) == 0.0
    assert rubric_score([1.0, 0.5, 0.0, 1.0]) == pytest.approx(0.625)
    assert rubric_score([1.0, 0.5, 0.0, 1.0], faithful=True) == 0.5
    assert rubric_score([]) == 0.0


def test_kendall_and_ordering_score() -> None:
    assert kendall_tau_b([0, 1, 2], [1, 2, 3]) == pytest.approx(1.0)
    assert kendall_tau_b([0, 1, 2], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau_b([0, 1, 2, 3], [1, 1, 2, 3]) == pytest.approx(5 / 30**0.5)  # a tie
    assert ordering_score([1, 2, 3], 3) == 1.0
    assert ordering_score([3, 2, 1], 3) == 0.0  # all matched, reversed
    # one swap of three: tau = 1/3 -> normalized 2/3; all matched so F1 = 1
    assert ordering_score([1, 3, 2], 3) == pytest.approx(2 / 3)
    # two of three matched in order plus one extra item: P = 2/3, R = 2/3
    assert ordering_score([1, 0, 2], 3) == pytest.approx(2 / 3)
    assert ordering_score([2, 2], 3) == pytest.approx(0.5)  # one item (repeats count once)
    assert ordering_score([], 3) == 0.0


def test_docstring_examples_run() -> None:
    assert doctest.testmod(metrics).failed == 0
    assert doctest.testmod(beam).failed == 0

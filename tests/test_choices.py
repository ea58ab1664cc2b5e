"""One reading of lettered options: the eval loaders label multiple-choice cases with
`split_choices`, the parser MemWalker restricts its answers with, so on any question the letters
a strategy may answer with are the letters the scorer scores."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

import longweave.choices
from longweave.choices import split_choices
from longweave.errors import DocumentError
from longweave.evals.datasets import EvalCase, load_dataset
from longweave.evals.metrics import option_accuracy
from longweave.testing import RegexTokenizer

count = RegexTokenizer().count


def leval_case(tmp_path: Path, task: str, question: str, gold: str) -> EvalCase:
    """The case the L-Eval loader makes of one exam question of `task`."""
    row = {"input": "The keeper lit the lamp.", "instructions": [question], "outputs": [gold],
           "evaluation": "exam"}
    (tmp_path / f"{task}.jsonl").write_text(json.dumps(row) + "\n")
    (case,) = load_dataset(tmp_path / f"{task}.jsonl", workdir=tmp_path / "docs",
                           count_tokens=count).cases
    return case


def generic_cases(tmp_path: Path, *rows: dict) -> list[EvalCase]:
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"document": "Some text.", **r}) + "\n" for r in rows))
    return load_dataset(path, workdir=tmp_path / "docs", count_tokens=count).cases


def test_the_docstring_examples_run() -> None:
    assert doctest.testmod(longweave.choices).failed == 0


# Questions on which the loader's own option pattern (A-D, any order, no space needed) and
# `split_choices` (A, B, C, ... in order, a space after "A." or "A)") used to disagree.
@pytest.mark.parametrize(
    ("task", "question", "gold", "labels", "options", "answers"),
    [
        # a fifth option: scored too, and its gold letter kept (the loader read A-D only)
        ("tpo", "Which one?\nA. ten\nB. twenty\nC. thirty\nD. forty\nE. fifty", "E",
         ["A", "B", "C", "D", "E"], ["ten", "twenty", "thirty", "forty", "fifty"], ["E"]),
        ("coursera", "Which hold?\nA. x\nB. y\nC. z\nD. w\nE. v", "BE",
         ["A", "B", "C", "D", "E"], ["x", "y", "z", "w", "v"], ["B", "E"]),
        ("quality", "Which one?\n (A) ten \n (B) twenty \n (C) thirty \n (D) forty \n (E) fifty",
         "(E) fifty", ["A", "B", "C", "D", "E"], ["ten", "twenty", "thirty", "forty", "fifty"],
         ["E"]),
        # "A.text": no options for either (initials such as "A.B. Smith" are written so), so
        # the strategy answers freely and the scorer reads L-Eval's four letters
        ("tpo", "Which one?\nA.ten\nB.twenty\nC.thirty", "B", ["A", "B", "C", "D"], [], ["B"]),
        # letters out of order are no list: the loader took B, A, C, D as options
        ("tpo", "Which one?\nB. twenty\nA. ten\nC. thirty\nD. forty", "A",
         ["A", "B", "C", "D"], [], ["A"]),
        # a lettered line in the prose above the options: the loader took it for an option
        ("tpo", "Notes:\nA. Lincoln spoke first.\nWho came next?\nA. Grant\nB. Lee\nC. Sherman",
         "B", ["A", "B", "C"], ["Grant", "Lee", "Sherman"], ["B"]),
        # a gold written as a letter and its text: the letter, not the text's capitals
        ("tpo", "Which year?\nA. 1989\nB. 1990\nC. 1991", "B. In 1990", ["A", "B", "C"],
         ["1989", "1990", "1991"], ["B"]),
        ("coursera", "Which hold?\nA. x\nB. y\nC. z\nD. w", "A, C and D",
         ["A", "B", "C", "D"], ["x", "y", "z", "w"], ["A", "C", "D"]),
        # prose under the options that starts like one ("D.C. ..."): not an option
        ("tpo", "Where?\nA. Boston\nB. Denver\nC. Austin\nD.C. is not among them.", "C",
         ["A", "B", "C"], ["Boston", "Denver", "Austin"], ["C"]),
    ],
)
def test_the_loader_labels_the_options_as_a_strategy_reads_them(
        tmp_path: Path, task: str, question: str, gold: str, labels: list[str],
        options: list[str], answers: list[str]) -> None:
    case = leval_case(tmp_path, task, question, gold)
    choices = split_choices(case.question)
    assert (case.labels, case.options, case.answers) == (labels, options, answers)
    if options:  # MemWalker answers with exactly the letters scored
        assert list(choices.letters) == case.labels
        assert [text for _, text in choices.options] == case.options
        assert choices.multi == case.multi == (task == "coursera")
    else:  # no options read: MemWalker's answer is free text, read for a letter by the scorer
        assert choices.options == () and choices.stem == case.question
    assert option_accuracy("".join(answers), case.answers, case.labels, case.options,
                           multi=case.multi) == 1.0


def test_generic_options_are_listed_one_a_line(tmp_path: Path) -> None:
    (case,) = generic_cases(tmp_path, {"question": "Where?", "answers": "C",
                                       "options": ["a harbour", "a hill\nby the sea", "a field"]})
    assert "B. a hill by the sea\nC. a field" in case.question
    assert list(split_choices(case.question).letters) == case.labels == ["A", "B", "C"]
    assert case.options[1] == "a hill\nby the sea"  # the texts scored are as given


def test_generic_options_with_labels_that_are_not_letters_are_not_restricted(
        tmp_path: Path) -> None:
    (case,) = generic_cases(tmp_path, {"question": "Which?", "answers": "2",
                                       "options": {"1": "one", "2": "two"}})
    assert case.labels == ["1", "2"] and split_choices(case.question).options == ()


@pytest.mark.parametrize(
    ("options", "read"),
    [
        (["ten", "twenty", ""], "A, B but are labelled A, B, C"),  # "C." alone: no option
        ({"A": "ten", "B": "twenty", "D": "forty"}, "A, B but are labelled A, B, D"),
        ([str(n) for n in range(27)], "X, Y, Z but are labelled A, B, C"),  # past Z
    ],
)
def test_generic_options_a_strategy_would_read_otherwise_are_refused(
        tmp_path: Path, options: list[str] | dict[str, str], read: str) -> None:
    with pytest.raises(DocumentError, match="line 1: its options read as A, B") as caught:
        generic_cases(tmp_path, {"question": "Which?", "answers": "A", "options": options})
    assert read in caught.value.problem
    assert "keyed A, B, C" in caught.value.hint

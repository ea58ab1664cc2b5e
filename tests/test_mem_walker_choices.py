"""Multiple-choice questions: the option parser (`longweave.choices`) on the formats the eval
harness writes, and MemWalker's options slot and letter-only answers (STRATEGIES.md §4.3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from longweave.agents import mem_walker_prompts as prompts
from longweave.agents.base import RunContext
from longweave.agents.mem_walker import COMPLAINT_TOKENS, MemWalker
from longweave.choices import Choices, split_choices
from longweave.evals.datasets import load_dataset
from longweave.evals.metrics import option_accuracy
from longweave.llm import user
from longweave.runner import arun
from longweave.structured import json_instructions, reask_message
from longweave.testing import RegexTokenizer, Request
from tests.test_mem_walker import BACK, FALLBACK, LEAF, MW, passage, scripted, sentinel_document

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
# L-Eval QuALITY, verbatim from tests/fixtures/eval/leval/quality.jsonl (spaces around lines
# and inside options kept), with the hint the harness appends.
QUALITY = (
    "Why did the Tr'en leave Korvin's door unlocked?\n\n"
    " (A) They were careless in guarding him. \n"
    " (B) Their subconscious knew that Korvin was an insoluble problem. \n"
    " (C) They were tired of the  Ruler's dictatorship.  \n"
    " (D) They found him wasteful and confusing, but not a threat. "
    "\n\nAnswer with the letter of the correct option."
)
STEM = ("Why did the Tr'en leave Korvin's door unlocked?\n\n"
        "Answer with the letter of the correct option.")
COURSERA = (
    "Question 1. What is the main goal of data science?\nA. Analyze trends\nB. Generate data\n"
    "C. Answer questions using data\nD. Use technology\n\n"
    "Answer with the letters of all correct options."
)


# -- the parser --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "stem", "options", "multi"),
    [
        (QUALITY, STEM, [("A", "They were careless in guarding him."),
                         ("B", "Their subconscious knew that Korvin was an insoluble problem."),
                         ("C", "They were tired of the  Ruler's dictatorship."),
                         ("D", "They found him wasteful and confusing, but not a threat.")], False),
        (COURSERA, "Question 1. What is the main goal of data science?\n\n"
                   "Answer with the letters of all correct options.",
         [("A", "Analyze trends"), ("B", "Generate data"), ("C", "Answer questions using data"),
          ("D", "Use technology")], True),
        ("How far?\nA) ten miles\nB) twenty miles\nC) thirty", "How far?",
         [("A", "ten miles"), ("B", "twenty miles"), ("C", "thirty")], False),
        ("How far?\n\nA. ten\n\nB. twenty\n", "How far?", [("A", "ten"), ("B", "twenty")], False),
        ("(A)ten\n(B)twenty\nSelect all that apply.", "Select all that apply.",
         [("A", "ten"), ("B", "twenty")], True),
        # a lettered list in the stem, then the options: the last list is the options
        ("Statements:\nA) x is odd\nB) y is even\nWhich hold?\n(A) A only\n(B) B only\n(C) both",
         "Statements:\nA) x is odd\nB) y is even\nWhich hold?",
         [("A", "A only"), ("B", "B only"), ("C", "both")], False),
        ("Pick one.\nA. a\nB. b\nC. c\nD. d\nE. e\nF. f", "Pick one.",
         [(x, x.lower()) for x in "ABCDEF"], False),
    ],
)
def test_options_are_split_from_the_stem(question: str, stem: str, options: list[Any],
                                         multi: bool) -> None:
    choices = split_choices(question)
    assert choices == Choices(stem, tuple(options), multi)
    assert choices.letters == tuple(x for x, _ in options)


@pytest.mark.parametrize(
    "question",
    [
        "Was it a) the keeper or b) the pilot?",  # "a)" mid-sentence
        "What does (A) stand for? And (B)?",  # letters inside a line
        "Which one?\nA. the only option",  # one option is no choice
        "Which one?\nB. second\nC. third",  # not starting at A
        "Which one?\nA. first\nC. third",  # a letter skipped
        "Which one?\na) first\nb) second",  # small letters: a list in prose
        "Who spoke last?\nA: Hello there.\nB: Hi.",  # a quoted dialogue, not options
        "Which one?\nA. first\nmore about it\nB. second",  # broken by a line of prose
        "A.B. Smith or\nB.C. Jones?",  # initials
        "Which of the numbered ones?\n1. first\n2. second",  # numbers are left as text
        "",
    ],
)
def test_ordinary_questions_have_no_options(question: str) -> None:
    assert split_choices(question) == Choices(question)


def test_an_answer_is_tidied_for_its_question() -> None:
    multi, single = split_choices(COURSERA), split_choices(QUALITY)
    assert [multi.tidy(a) for a in ("CA", "DDB", "A C", "")] == ["AC", "BD", "AC", ""]
    assert [single.tidy(a) for a in (" B ", "CA")] == ["B", "CA"]
    assert Choices("q?").tidy("  Mara Quill ") == "Mara Quill"


def test_the_formats_the_eval_harness_writes_are_read_as_it_labels_them(tmp_path: Path) -> None:
    count = RegexTokenizer().count
    cases = [case for name in ("leval", "generic/questions.jsonl")
             for case in load_dataset(FIXTURES / name, workdir=tmp_path, count_tokens=count).cases]
    lettered = [c for c in cases if c.labels and all(len(x) == 1 for x in c.labels)]
    assert {c.task for c in lettered} == {"leval/quality", "leval/coursera", "questions"}
    for case in cases:
        choices = split_choices(case.question)
        if case in lettered:
            assert list(choices.letters) == case.labels
            assert [text for _, text in choices.options] == case.options
            assert choices.multi == case.multi
            assert not any(line.lstrip().startswith(("A.", "(A)")) for line in
                           choices.stem.splitlines())
        else:  # free text, and True/False, are left as they are
            assert choices == Choices(case.question)


# -- MemWalker ---------------------------------------------------------------------------------


def mc_reader(target: int, *answers: str) -> Any:
    """At the leaf holding `target`, answers in turn (the last one repeated); else back."""
    left = list(answers)

    def reply(request: Request) -> dict[str, Any]:
        if target not in passage(request):
            return BACK
        letter = left.pop(0) if len(left) > 1 else left[0]
        return {"reasoning": "it is here", "action": "answer", "answer": letter}

    return reply


def answer_field(request: Request) -> dict[str, Any]:
    assert request.schema is not None
    return request.schema.model_json_schema()["properties"]["answer"]


async def test_a_multiple_choice_question_fills_the_options_slot_and_admits_only_letters() -> None:
    model = scripted(reader=mc_reader(0, "C"))
    answer = await arun(MW, sentinel_document(9), QUALITY, model)
    (read,) = [r for r in model.calls("reader") if LEAF in r.text]
    assert read.text.count("Question: ") == 1
    assert f"Question: {STEM}\n\nOptions:\nA. They were careless in guarding him.\n" in read.text
    assert "D. They found him wasteful and confusing, but not a threat.\n\n" in read.text
    assert " (A)" not in read.text  # the option lines are not shown twice
    assert '"answer" the letter of the correct option' in read.text
    assert answer_field(read) == {"enum": ["A", "B", "C", "D"], "title": "Answer",
                                  "type": "string"}
    assert read.schema.model_validate({"reasoning": "r", "action": "back"}).answer == "A"
    assert answer.text == "C" and answer.flags == []
    # triage reads the question as it was given
    assert all(QUALITY in r.text for r in model.calls("navigator"))


async def test_a_letter_outside_the_options_is_reasked() -> None:
    model = scripted(reader=mc_reader(0, "E", "the second", "B"))
    answer = await arun(MW, sentinel_document(9), QUALITY, model)
    reads = [r for r in model.calls("reader") if LEAF in r.text]
    assert len(reads) == 3
    assert all("Your previous reply was not usable" in r.text for r in reads[1:])
    assert "'A', 'B', 'C' or 'D'" in reads[1].messages[-1].content
    assert answer.text == "B" and "invalid_action" not in answer.flags
    assert [s.detail["attempts"] for s in answer.steps if s.role == "reader"] == [3]


async def test_the_letters_admitted_are_the_letters_the_eval_case_scores(tmp_path: Path) -> None:
    # a fifth option: L-Eval's loader once labelled A-D only, so an answer "E" scored nothing
    question = "Which one?\nA. ten\nB. twenty\nC. thirty\nD. forty\nE. fifty"
    row = {"input": "x", "instructions": [question], "outputs": ["E"], "evaluation": "exam"}
    (tmp_path / "tpo.jsonl").write_text(json.dumps(row) + "\n")
    (case,) = load_dataset(tmp_path / "tpo.jsonl", workdir=tmp_path / "docs",
                           count_tokens=RegexTokenizer().count).cases
    model = scripted(reader=mc_reader(0, "E"))
    answer = await arun(MW, sentinel_document(9), case.question, model)
    (read,) = [r for r in model.calls("reader") if LEAF in r.text]
    assert answer_field(read)["enum"] == case.labels == ["A", "B", "C", "D", "E"]
    assert "E. fifty\n\n" in read.text
    assert answer.text == "E"
    assert option_accuracy(answer.text, case.answers, case.labels, case.options) == 1.0


async def test_an_ordinary_question_has_no_options_slot_and_a_free_answer() -> None:
    question = "Was it a) the keeper or b) the pilot?"
    model = scripted(reader=mc_reader(0, "the keeper"))
    answer = await arun(MW, sentinel_document(9), question, model)
    (read,) = [r for r in model.calls("reader") if LEAF in r.text]
    assert f"Question: {question}\n\n" in read.text
    assert all("Options:" not in r.text for r in model.requests)
    assert answer_field(read) == {"maxLength": 300, "title": "Answer", "type": "string"}
    assert answer.text == "the keeper"


async def test_option_detection_can_be_turned_off() -> None:
    model = scripted(reader=mc_reader(0, "the second one"))
    walker = MW.model_copy(update={"choices": "off"})
    answer = await arun(walker, sentinel_document(9), QUALITY, model)
    (read,) = [r for r in model.calls("reader") if LEAF in r.text]
    assert f"Question: {QUALITY}\n\n" in read.text and "Options:" not in read.text
    assert "enum" not in answer_field(read) and answer.text == "the second one"
    with pytest.raises(ValueError, match="choices"):
        MemWalker(choices="always")


async def test_the_fallback_of_a_multiple_choice_question_answers_with_a_letter() -> None:
    model = scripted(reader=BACK)
    model.rules[-1].reply = {"answer": "D"}
    answer = await arun(MW, sentinel_document(4), QUALITY, model)
    (asked,) = [r for r in model.calls("reader") if FALLBACK in r.text]
    assert asked.schema is not None and asked.schema.__name__ == "LeafAnswer"
    assert answer_field(asked)["enum"] == ["A", "B", "C", "D"]
    assert f"Question: {STEM}\n\nOptions:\nA. " in asked.text
    assert '{"answer": "<letter>"}' in asked.text
    assert answer.text == "D" and "invalid_answer" not in answer.flags
    # a letter outside the options every time: re-asked, then kept as written, flagged
    model = scripted(reader=BACK)
    model.rules[-1].reply = {"answer": "E"}
    answer = await arun(MW, sentinel_document(4), QUALITY, model)
    assert len([r for r in model.calls("reader") if FALLBACK in r.text]) == 1 + MW.retries
    assert answer.text == "E" and "invalid_answer" in answer.flags


async def test_a_question_asking_for_every_correct_option_takes_letters_in_option_order() -> None:
    model = scripted(reader=mc_reader(0, "CA"))
    answer = await arun(MW, sentinel_document(9), COURSERA, model)
    (read,) = [r for r in model.calls("reader") if LEAF in r.text]
    assert answer_field(read) == {"maxLength": 4, "pattern": "^[A-D]{0,4}$",
                                  "title": "Answer", "type": "string"}
    assert "all the correct options in a row" in read.text
    assert answer.text == "AC"
    model = scripted(reader=mc_reader(0, "AE", "", "BD"))  # E is no option; empty is no answer
    answer = await arun(MW, sentinel_document(9), COURSERA, model)
    reads = [r for r in model.calls("reader") if LEAF in r.text]
    assert len(reads) == 3 and '"answer" needs' in reads[2].messages[-1].content
    assert answer.text == "BD"


async def test_options_and_their_letters_count_as_question_in_the_budget() -> None:
    # 20 short options: few tokens as given, but a long list of letters in the schema
    options = "\n".join(f"{x}. {x.lower()}" for x in "ABCDEFGHIJKLMNOPQRST")
    question = f"Which one?\n{options}"
    # segments as long as the budget allows: the leaf prompt is then full to its margin
    walker = MW.model_copy(update={"segment_tokens": 1000})
    model, doc = scripted(), sentinel_document(9)
    ctx = RunContext(model, doc, question, walker.name)
    on = await walker.initial_state(ctx)
    off = await walker.model_copy(update={"choices": "off"}).initial_state(ctx)
    assert model.count_tokens(question) < 102 and off["wm_limit"] == 256  # under the reserve
    assert on["wm_limit"] < 256 - 20  # the letters take room from the working memory
    # §4.6.2 with the options slot: a full working memory, a full segment, the schema written
    # into the prompt (backends without a native schema format) and a re-ask still fit
    plan, choices = walker.plan(ctx), on["choices"]
    memory, segment = "x " * on["wm_limit"], "x " * plan.segment_tokens
    complaint = reask_message("x " * COMPLAINT_TOKENS)
    for messages, schema, max_new in [
        (prompts.leaf_messages(choices.stem, memory, segment, choices.options),
         prompts.leaf_action_schema(walker.reasoning_chars, walker.answer_chars, choices.letters),
         walker.nav_max_new),
        (prompts.fallback_messages(choices.stem, memory, segment, choices.options),
         prompts.leaf_answer_schema(walker.answer_chars, choices.letters), walker.answer_max_new),
    ]:
        *head, last = [*messages, complaint]
        written = user(f"{last.content}\n\n{json_instructions(schema)}")
        assert model.count_prompt_tokens([*head, written]) + max_new <= plan.window

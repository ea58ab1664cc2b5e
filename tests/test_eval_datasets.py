"""Dataset loaders on small excerpts of each format (tests/fixtures/eval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longweave.api import load_source
from longweave.errors import ConfigError, DocumentError
from longweave.evals.datasets import (
    detect_format,
    length_bucket,
    load_dataset,
    parse_lengths,
)
from longweave.testing import RegexTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
count = RegexTokenizer().count


def load(tmp_path: Path, name: str, **kwargs):
    return load_dataset(FIXTURES / name, workdir=tmp_path / "docs", count_tokens=count, **kwargs)


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("leval", "leval"),
        ("leval/quality.jsonl", "leval"),
        ("loogle", "loogle"),
        ("hotpotqa", "hotpotqa"),
        ("locomo", "locomo"),
        ("locomo/locomo10.json", "locomo"),
        ("beam", "beam"),
        ("beam/chats/100K_01.json", "beam"),
        ("needle", "needle"),
        ("generic", "jsonl"),
    ],
)
def test_detect_format(path, fmt) -> None:
    assert detect_format(FIXTURES / path) == fmt


def test_detect_format_errors_name_the_fix(tmp_path) -> None:
    (tmp_path / "a.jsonl").write_text('{"what": 1}\n')
    with pytest.raises(ConfigError, match="no known format") as info:
        detect_format(tmp_path)
    assert "--format" in info.value.hint
    with pytest.raises(DocumentError):
        detect_format(tmp_path / "missing")


@pytest.mark.parametrize("name", ["data.jsonl", "data.json"])
def test_detect_format_on_a_file_that_is_not_utf8_names_it(tmp_path, name: str) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / name).write_bytes(b"1\xbb\r\x90\xa5gB\xa6\xcf\xfb\n\x08\xa3h")
    for target in (folder / name, folder):  # the file, and a folder holding it
        with pytest.raises(DocumentError, match="is not UTF-8 text") as info:
            detect_format(target)
        assert info.value.path == str(folder / name)


def test_a_needle_haystack_that_is_not_utf8_is_a_document_error(tmp_path) -> None:
    haystack = tmp_path / "haystack.txt"
    haystack.write_bytes(b"An essay \xff\xfe about nothing.\n")
    assert detect_format(haystack) == "needle"
    with pytest.raises(DocumentError, match="is not UTF-8 text"):
        load_dataset(haystack, workdir=tmp_path / "work",
                     count_tokens=lambda text: len(text.split()))


def test_parse_lengths_and_buckets() -> None:
    assert parse_lengths("2k, 8k,16000") == (2048, 8192, 16000)
    assert parse_lengths(None) == ()
    with pytest.raises(ConfigError):
        parse_lengths("4q")
    assert [length_bucket(t) for t in (10, 1024, 1025, 5226)] == [1024, 1024, 2048, 8192]


def test_leval_exam_and_f1_tasks(tmp_path) -> None:
    data = load(tmp_path, "leval")
    by_task: dict[str, list] = {}
    for case in data.cases:
        by_task.setdefault(case.task, []).append(case)
    assert "leval/news_summ" not in by_task  # ROUGE-scored: skipped with a note
    assert any("news_summ" in note for note in data.notes)
    quality = by_task["leval/quality"][0]
    assert quality.metric == "option" and quality.answers == ["B"]  # gold "(B) Their ..."
    assert quality.labels == ["A", "B", "C", "D"] and len(quality.options) == 4
    assert quality.question.endswith("Answer with the letter of the correct option.")
    coursera = by_task["leval/coursera"]
    assert all(c.multi for c in coursera)
    assert any(len(c.answers) > 1 for c in coursera)  # e.g. "ABC" -> three labels
    sci_fi = by_task["leval/sci_fi"][0]
    assert sci_fi.labels == ["True", "False"] and sci_fi.answers == ["True"]  # "True [fact: ..]"
    assert by_task["leval/topic_retrieval_longchat"][0].metric == "contains"
    assert by_task["leval/financial_qa"][0].metric == "f1"
    row = json.loads((FIXTURES / "leval" / "quality.jsonl").read_text().splitlines()[0])
    assert Path(quality.document).read_text() == row["input"]
    assert quality.tokens == count(row["input"])
    assert Path(quality.document).is_relative_to(tmp_path / "docs")


def test_limit_applies_per_task(tmp_path) -> None:
    data = load(tmp_path, "leval", limit=1)
    tasks = [c.task for c in data.cases]
    assert len(tasks) == len(set(tasks)) == 5


def test_loogle_options_cloze_and_skipped_summaries(tmp_path) -> None:
    data = load(tmp_path, "loogle")
    mc, free, cloze = data.cases
    assert mc.metric == "option" and mc.labels == ["1", "2", "3", "4"] and mc.answers == ["3"]
    assert mc.options[2] == "five"
    assert free.metric == "f1"
    assert cloze.metric == "cloze" and cloze.meta["masks"]["<mask-2>"] == "Kentwood"
    assert any("summarization" in note for note in data.notes)


def test_hotpotqa_pools_paragraphs_to_each_length(tmp_path) -> None:
    data = load(tmp_path, "hotpotqa", lengths=(600, 1500), limit=2)
    assert [c.length for c in data.cases] == [600, 600, 1500, 1500]
    rows = [json.loads(x) for x in (FIXTURES / "hotpotqa" / "hotpotqa_dev_subsampled.jsonl")
            .read_text().splitlines()]
    for case in data.cases:
        text = Path(case.document).read_text()
        row = next(r for r in rows if case.id.startswith(r["question_id"]))
        assert case.tokens == count(text) <= case.length
        for ctx in row["contexts"]:
            if ctx["is_supporting"]:
                assert ctx["paragraph_text"].strip() in text
        assert case.answers == row["answers_objects"][0]["spans"]
    long = Path(data.cases[2].document).read_text()
    own = {c["title"] for c in rows[0]["contexts"]}
    others = {c["title"] for r in rows[1:] for c in r["contexts"]} - own
    assert any(f"{title}\n" in long for title in others)  # distractors of other questions
    again = load(tmp_path, "hotpotqa", lengths=(600, 1500), limit=2)
    assert [c.document for c in again.cases] == [c.document for c in data.cases]  # same files


def test_locomo_conversation_and_adversarial_questions(tmp_path) -> None:
    data = load(tmp_path, "locomo")
    first, second, adversarial = data.cases
    assert first.answers == ["7 May 2023"] and first.metric == "f1" and first.category == "2"
    assert adversarial.metric == "abstain"
    document = load_source(first.document)  # the turns file opens as a conversation
    assert document.meta["kind"] == "conversation"
    assert "Caroline:" in document.text and first.tokens == count(document.text)


def test_beam_questions_carry_their_rubric(tmp_path) -> None:
    data = load(tmp_path, "beam")
    by_ability = {c.category: c for c in data.cases}
    assert set(by_ability) == {"information_extraction", "event_ordering", "abstention"}
    info = by_ability["information_extraction"]
    assert info.metric == "beam" and info.answers == ["My first sprint ends on March 29."]
    assert info.meta["rubric"] == ["LLM response should state: March 29"]
    assert by_ability["event_ordering"].meta["ordering"] is True
    assert load_source(info.document).meta["kind"] == "conversation"


def test_needle_grid_of_lengths_and_depths(tmp_path) -> None:
    data = load(tmp_path, "needle", lengths=(300, 600), depths=(0, 50, 100))
    assert [(c.length, c.depth) for c in data.cases] == [
        (300, 0), (300, 50), (300, 100), (600, 0), (600, 50), (600, 100)]
    needle = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park"
    for case in data.cases:
        text = Path(case.document).read_text()
        start = case.meta["needle_start"]
        assert text[start:].startswith(needle)
        assert case.tokens <= case.length and case.metric == "contains"
    assert data.cases[0].meta["needle_start"] == 0
    assert data.notes == []
    long = load(tmp_path, "needle", lengths=(3000,), depths=(50,))  # the essays hold ~1.2k
    assert "repeated 3x" in long.notes[0]
    assert long.cases[0].tokens <= 3000 and long.cases[0].tokens > 2900


def test_generic_jsonl(tmp_path) -> None:
    data = load(tmp_path, "generic")
    keeper, lamp, choice, inline = data.cases
    assert keeper.metric == "f1" and keeper.document == str(
        (FIXTURES / "generic" / "docs" / "lighthouse.txt").resolve())
    assert lamp.metric == "em"
    assert choice.metric == "option" and choice.labels == ["A", "B", "C"]
    assert "B. twenty-two nautical miles" in choice.question
    assert inline.task == "inline" and inline.answers == ["a museum"]
    assert Path(inline.document).read_text().startswith("The keeper's cottage")


def test_generic_jsonl_errors(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "document_path": "nope.txt", "answers": ["x"]}\n')
    with pytest.raises(DocumentError, match="does not exist"):
        load_dataset(bad, workdir=tmp_path / "docs", count_tokens=count)
    with pytest.raises(ConfigError, match="unknown dataset format"):
        load_dataset(bad, "csv", workdir=tmp_path / "docs", count_tokens=count)


def test_generic_jsonl_needs_answers(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?", "document": "Some text."}\n')
    with pytest.raises(DocumentError, match="line 1: needs `answers`"):
        load_dataset(bad, workdir=tmp_path / "docs", count_tokens=count)
    fine = tmp_path / "abstain.jsonl"
    fine.write_text('{"question": "Q?", "document": "Some text.", "metric": "abstain"}\n')
    assert load_dataset(fine, workdir=tmp_path / "docs", count_tokens=count).cases


@pytest.mark.parametrize(("name", "fmt", "key", "field"), [
    ("leval/quality.jsonl", "leval", '"outputs"', "outputs"),
    ("loogle/longdep_qa.jsonl", "loogle", "'A'", "A"),  # qa_pairs hold a Python literal
    ("locomo/locomo10.json", "locomo", '"question"', "question"),
])
def test_a_record_missing_a_field_is_named_not_a_crash(tmp_path, name, fmt, key, field) -> None:
    source = FIXTURES / name
    damaged = tmp_path / source.name
    text = source.read_text(encoding="utf-8")
    assert key in text
    # Rename the field's first occurrence: the record still parses, the field is gone.
    damaged.write_text(text.replace(key, key[0] + "renamed" + key[0], 1), encoding="utf-8")
    with pytest.raises(DocumentError) as info:
        load_dataset(damaged, fmt, workdir=tmp_path / "docs", count_tokens=count)
    assert f"a record has no '{field}' field, which the {fmt} format needs" in info.value.message


def test_a_file_read_as_another_format_is_named_not_a_crash(tmp_path) -> None:
    with pytest.raises(DocumentError) as info:
        load_dataset(FIXTURES / "leval" / "quality.jsonl", "hotpotqa", workdir=tmp_path / "d",
                     count_tokens=count)
    assert "which the hotpotqa format needs" in info.value.message
    assert "leave --format out" in info.value.hint


def test_a_record_without_questions_does_not_end_the_file(tmp_path) -> None:
    source = FIXTURES / "leval" / "quality.jsonl"
    (row,) = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    full = len(load_dataset(source, workdir=tmp_path / "a", count_tokens=count).cases)
    empty = {**row, "instructions": [], "outputs": []}
    emptied = tmp_path / "quality.jsonl"  # a row without questions, then the real one
    emptied.write_text(json.dumps(empty) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    data = load_dataset(emptied, workdir=tmp_path / "b", count_tokens=count)
    assert len(data.cases) == full > 0
    assert all(case.id.startswith("leval/quality-1-") for case in data.cases)


def test_a_file_whose_rows_are_all_skipped_says_why(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset(FIXTURES / "leval" / "news_summ.jsonl", workdir=tmp_path / "d",
                     count_tokens=count)
    assert "no questions found" in info.value.message
    assert "skipped L-Eval questions scored by ROUGE or a judge: news_summ" in info.value.message


def test_hotpotqa_notes_a_length_below_the_gold_paragraphs(tmp_path) -> None:
    data = load(tmp_path, "hotpotqa", lengths=(16,), limit=1)
    (case,) = data.cases
    assert case.tokens > 16
    assert any("longer than their --lengths" in note for note in data.notes)


def test_an_leval_row_with_more_questions_than_answers_says_so(tmp_path) -> None:
    (row,) = [json.loads(line) for line in
              (FIXTURES / "leval" / "quality.jsonl").read_text(encoding="utf-8").splitlines()]
    row["outputs"] = row["outputs"][:1]
    uneven = tmp_path / "quality.jsonl"
    uneven.write_text(json.dumps(row) + "\n", encoding="utf-8")
    data = load_dataset(uneven, workdir=tmp_path / "d", count_tokens=count)
    assert len(data.cases) == 1
    assert any("quality.jsonl row 0:" in note and "only the first 1 pairs" in note
               for note in data.notes)

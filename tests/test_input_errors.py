"""Input files the user got wrong: each refused in one line that names the file once, the line
of the file (as an editor counts it) or the field, and a hint saying what to write instead."""

from __future__ import annotations

import codecs
import json
import os
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from longweave.batch_inputs import batch_items, load_questions
from longweave.conversations import load_conversations
from longweave.documents import open_document
from longweave.errors import DocumentError, LongweaveWarning
from longweave.evals.datasets import GENERIC_METRICS, load_dataset
from longweave.testing import ScriptedModel
from tests.cli_run import run_cli

_JSON_ERROR = "not valid JSON (Expecting property name enclosed in double quotes at column 2)"
_GENERIC_HINT = ("a generic JSONL line holds question, answers and document or document_path; "
                 "metric is one of em, f1, contains, option, abstain")


@pytest.fixture
def model(scripted_cli: Callable[..., ScriptedModel]) -> ScriptedModel:
    """A scripted model that no test here may reach: every input is refused before a call."""
    return scripted_cli(columns="unset")


def _error(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """The command's error and hint lines: exactly two lines on stderr, nothing on stdout."""
    out, err = capsys.readouterr()
    assert out == ""
    error, hint = err.splitlines()
    return error, hint


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _load(path: Path, tmp_path: Path, fmt: str | None = "jsonl"):
    return load_dataset(path, fmt, workdir=tmp_path / "docs", count_tokens=len)


def _refused(path: Path, tmp_path: Path) -> DocumentError:
    with pytest.raises(DocumentError) as info:
        _load(path, tmp_path)
    return info.value


_ROW = {"question": "Who?", "document": "Ada wrote it.", "answers": ["Ada"]}


# -- 1. JSON errors name the line of the file ---------------------------------------------------


def test_a_conversation_jsonl_error_names_the_file_line(model, monkeypatch, capsys,
                                                        tmp_path) -> None:
    conv = _write(tmp_path / "c2.jsonl", '{"speaker": "a", "text": "hi"}\n\n{bad\n')
    assert run_cli(monkeypatch, "ask", str(conv), "q", "--estimate", "-s", "truncate") == 1
    error, hint = _error(capsys)
    assert error == f"error: {conv}: line 3: {_JSON_ERROR}"
    assert hint.startswith("a conversation file holds a JSON list (or JSONL lines)")
    assert model.requests == []


def test_a_conversation_and_a_questions_file_word_the_same_error_alike(tmp_path) -> None:
    text = '{"speaker": "a", "text": "hi", "question": "q"}\n{bad\n'
    with pytest.raises(DocumentError) as conversation:
        load_conversations(_write(tmp_path / "c.jsonl", text))
    with pytest.raises(DocumentError) as questions:
        load_questions(_write(tmp_path / "q.jsonl", text))
    assert conversation.value.problem == questions.value.problem == f"line 2: {_JSON_ERROR}"


def test_a_json_conversation_error_names_the_line_within_the_file(tmp_path) -> None:
    conv = _write(tmp_path / "c.json", '[\n  {"speaker": "a", "text": "hi"},\n  {bad}\n]\n')
    with pytest.raises(DocumentError) as info:
        load_conversations(conv)
    assert info.value.problem == f"line 3: {_JSON_ERROR[:-2]}4)"


def test_an_eval_jsonl_error_names_the_file_line(model, monkeypatch, capsys, tmp_path) -> None:
    bad = _write(tmp_path / "bad.jsonl", json.dumps(_ROW) + "\n\n{bad\n")
    assert run_cli(monkeypatch, "eval", str(bad), "-f", "jsonl", "-s", "truncate",
                   "-o", str(tmp_path / "out")) == 1
    error, hint = _error(capsys)
    assert error == f"error: {bad}: line 3: {_JSON_ERROR}"
    assert hint == "fix that line, or pass the dataset's own file or folder"
    assert model.requests == []


def test_an_eval_row_after_blank_lines_is_named_by_its_file_line(tmp_path) -> None:
    rows = _write(tmp_path / "ev.jsonl", "\n\n" + json.dumps({**_ROW, "answers": None}) + "\n")
    assert _refused(rows, tmp_path).problem == "line 3: needs `answers` (the gold answers)"
    rows.write_text("\n\n" + json.dumps(_ROW) + "\n\n" + json.dumps(_ROW) + "\n")
    first, second = _load(rows, tmp_path).cases
    assert (first.meta["line"], second.meta["line"]) == (3, 5)
    assert (first.id, second.id) == ("ev-0", "ev-1")  # ids count rows, as before: reruns resume


def test_a_line_break_inside_a_json_string_is_not_a_line_of_the_file(tmp_path) -> None:
    # U+2028 may stand unescaped in a JSON string; str.splitlines() would split the row there.
    text = "Ada\u2028Lovelace"
    conv = tmp_path / "c.jsonl"
    conv.write_text(json.dumps({"speaker": "a", "text": text}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    assert load_conversations(conv)[0].turns[0].text == text
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": text}, ensure_ascii=False) + "\n",
                         encoding="utf-8")
    assert [q.question for q in load_questions(questions)] == [text]
    rows = tmp_path / "ev.jsonl"
    rows.write_text(json.dumps({**_ROW, "question": text}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    assert _load(rows, tmp_path).cases[0].question == text


@pytest.mark.parametrize("brk", ["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1e", "\x85"])
def test_a_csv_cell_holding_a_break_splitlines_knows_stays_one_cell(tmp_path, brk) -> None:
    # csv splits rows itself (newline=""); str.splitlines() would end the row inside the cell.
    questions = tmp_path / "q.csv"
    questions.write_text(f'question,id\n"Ada{brk}Lovelace?",1\nWhich{brk}year?,2\n',
                         encoding="utf-8")
    assert [(q.question, q.id, q.line) for q in load_questions(questions)] == [
        (f"Ada{brk}Lovelace?", "1", 2), (f"Which{brk}year?", "2", 3)]


def test_a_csv_error_after_such_a_cell_names_the_file_line(tmp_path) -> None:
    questions = tmp_path / "q.csv"
    questions.write_text('question,id\n"Ada\u2028Lovelace?",1\n\n"Why\nnot?",2\nWho?,3,x\n',
                         encoding="utf-8")
    with pytest.raises(DocumentError) as info:
        load_questions(questions)
    assert info.value.problem == "line 6: more cells than the header has columns"
    questions.write_text('question,id\r\n"Ada\u2028Lovelace?",1\r\nWho?,1\r\n',
                         encoding="utf-8", newline="")
    with pytest.raises(DocumentError) as info:
        load_questions(questions)
    assert info.value.problem == "line 3: id '1' is already used on line 2"


# -- 2. the metric hint lists every generic metric, from one list -------------------------------


def test_an_unknown_metric_is_named_with_every_generic_metric(model, monkeypatch, capsys,
                                                              tmp_path) -> None:
    rows = _write(tmp_path / "ev.jsonl", json.dumps({**_ROW, "metric": "bogus"}) + "\n")
    assert run_cli(monkeypatch, "eval", str(rows), "-f", "jsonl", "-s", "truncate",
                   "-o", str(tmp_path / "out")) == 1
    error, hint = _error(capsys)
    assert error == (f"error: {rows}: line 1: `metric` must be one of em, f1, contains, option, "
                     "abstain, got 'bogus'")
    assert hint == "choose one of: em, f1, contains, option, abstain"
    assert GENERIC_METRICS == ("em", "f1", "contains", "option", "abstain")


def test_a_close_metric_is_suggested_and_loader_only_metrics_are_refused(tmp_path) -> None:
    rows = _write(tmp_path / "ev.jsonl", json.dumps({**_ROW, "metric": "abstian"}) + "\n")
    assert _refused(rows, tmp_path).hint.startswith("did you mean abstain? choose one of: em")
    rows.write_text(json.dumps({**_ROW, "metric": "cloze"}) + "\n")  # needs LooGLE's masks
    assert "got 'cloze'" in _refused(rows, tmp_path).problem
    rows.write_text(json.dumps({**_ROW, "metric": "abstain"}) + "\n")
    assert _load(rows, tmp_path).cases[0].metric == "abstain"


# -- 3. an unknown format lists the choices as the rest of the CLI does -------------------------


@pytest.mark.parametrize(("fmt", "hint"), [
    ("nope", "choose one of: leval, loogle, hotpotqa, locomo, beam, needle, jsonl"),
    ("jsnl", "did you mean jsonl? choose one of: leval, loogle, hotpotqa, locomo, beam, needle, "
             "jsonl"),
])
def test_an_unknown_format_lists_the_formats(model, monkeypatch, capsys, tmp_path, fmt,
                                             hint) -> None:
    assert run_cli(monkeypatch, "eval", str(tmp_path), "-f", fmt, "-s", "truncate",
                   "-o", str(tmp_path / "out")) == 1
    assert _error(capsys) == (f"error: unknown dataset format '{fmt}'", hint)


# -- 4. generic errors name the file once -------------------------------------------------------


def test_a_generic_row_error_names_the_file_once(model, monkeypatch, capsys, tmp_path) -> None:
    rows = _write(tmp_path / "ev2.jsonl", json.dumps({"question": "q", "document": "d"}) + "\n")
    assert run_cli(monkeypatch, "eval", str(rows), "-f", "jsonl", "-s", "truncate",
                   "-o", str(tmp_path / "out")) == 1
    error, hint = _error(capsys)
    assert error == f"error: {rows}: line 1: needs `answers` (the gold answers)"
    assert hint == _GENERIC_HINT


def test_a_missing_document_path_is_named_with_the_jsonl_line(tmp_path) -> None:
    rows = _write(tmp_path / "ev.jsonl", "\n" + json.dumps(
        {"question": "q", "document_path": "docs/nope.txt", "answers": "a"}) + "\n")
    error = _refused(rows, tmp_path)
    assert error.path == str(rows)
    assert error.problem == (f"line 2: the document_path {tmp_path / 'docs' / 'nope.txt'} does "
                             "not exist")


# -- 5. conversation turns count from 1; JSONL names the line ----------------------------------


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("c.json", '[{"speaker": "a", "text": "hi"}, {"speaker": "b"}]',
     "turn 2: needs string `speaker` and `text`"),
    ("c.json", '[{"speaker": "a", "text": "hi"}, 5]', "turn 2: expected a JSON object, got int"),
    ("c.jsonl", '{"speaker": "a", "text": "hi"}\n\n{"speaker": "b", "text": 7}\n',
     "line 3: needs string `speaker` and `text`"),
    ("c.jsonl", '{"speaker": "a", "text": "hi"}\n["b", "hello"]\n',
     "line 2: expected a JSON object, got list"),
])
def test_a_bad_turn_is_counted_from_one_or_named_by_its_line(model, monkeypatch, capsys, tmp_path,
                                                             name, text, problem) -> None:
    conv = _write(tmp_path / name, text)
    assert run_cli(monkeypatch, "ask", str(conv), "q", "--estimate", "-s", "truncate") == 1
    error, hint = _error(capsys)
    assert error == f"error: {conv}: {problem}"
    assert hint.startswith("a conversation file holds")


# -- 6. generic fields of the wrong type are refused, not converted -----------------------------


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("options", "abc", "a list of strings or an object of label: text, got 'abc'"),
    ("options", {"A": ["x"]}, "a list of strings or an object of label: text, got {'A': ['x']}"),
    ("document", ["a"], "a string (the document's text), got ['a']"),
    ("document_path", 3, "a string (a file path), got 3"),
    ("answers", {"a": 1}, "a string or a list of strings, got {'a': 1}"),
    ("answers", [["Ada"]], "a string or a list of strings, got [['Ada']]"),
    ("answers", [True], "a string or a list of strings, got [True]"),
    ("question", ["Who?"], "a string, got ['Who?']"),
    ("id", True, "a string or an integer, got True"),
    ("task", 5, "a string, got 5"),
    ("category", ["x"], "a string or an integer, got ['x']"),
])
def test_a_field_of_the_wrong_type_is_named_with_the_type_it_needs(tmp_path, field, value,
                                                                   expected) -> None:
    rows = _write(tmp_path / "ev.jsonl", json.dumps({**_ROW, field: value}) + "\n")
    error = _refused(rows, tmp_path)
    assert error.problem == f"line 1: `{field}` must be {expected}"
    assert error.hint == _GENERIC_HINT


def test_numbers_are_read_as_text_where_text_is_listed(tmp_path) -> None:
    rows = _write(tmp_path / "ev.jsonl", json.dumps(
        {"id": 7, "question": "When?", "document": "In 1923.", "answers": 1923, "category": 2,
         "options": [1923, 1968.5]}) + "\n")
    (case,) = _load(rows, tmp_path).cases
    assert (case.id, case.answers, case.category) == ("7", ["1923"], "2")
    assert case.options == ["1923", "1968.5"] and case.labels == ["A", "B"]


def test_a_row_that_is_not_an_object_is_named(tmp_path) -> None:
    rows = _write(tmp_path / "ev.jsonl", json.dumps(_ROW) + "\n" + json.dumps([_ROW]) + "\n")
    assert _refused(rows, tmp_path).problem == "line 2: expected a JSON object, got list"


# -- 7. batch says a missing folder does not exist, as ask does ---------------------------------


def test_a_missing_batch_folder_is_worded_as_ask_words_a_missing_path(model, monkeypatch, capsys,
                                                                      tmp_path) -> None:
    questions = _write(tmp_path / "q.jsonl", '{"question": "Which fruit?"}\n')
    missing = tmp_path / "nodir"
    assert run_cli(monkeypatch, "batch", str(missing), "-q", str(questions), "-s", "truncate",
                   "-o", str(tmp_path / "out.jsonl")) == 1
    batch_lines = _error(capsys)
    assert batch_lines == (f"error: {missing}: no such file", "check the path and its spelling")
    assert run_cli(monkeypatch, "ask", str(missing), "Which fruit?", "-s", "truncate") == 1
    assert _error(capsys) == batch_lines
    assert model.requests == []


def test_a_file_given_as_the_batch_folder_is_not_a_folder(tmp_path) -> None:
    questions = _write(tmp_path / "q.jsonl", '{"question": "Which fruit?"}\n')
    with pytest.raises(DocumentError) as info:
        batch_items(questions, questions)
    assert info.value.problem == "is not a folder"
    assert info.value.hint == "pass the folder of documents"


# -- 8. pipes, sockets and devices are refused before they are opened ---------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Makes named pipes with no writer in `tmp_path`. Should a reader block on one, a writer
    opens and closes it after 5 s, so that a regression fails the test (the reader sees an empty
    file) instead of hanging the suite."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    timers: list[threading.Timer] = []

    def make(name: str) -> Path:
        path = tmp_path / name
        os.mkfifo(path)

        def unblock() -> None:
            try:  # succeeds only while a reader has it open: nobody else is left blocked
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass

        timers.append(threading.Timer(5, unblock))
        timers[-1].start()
        return path

    yield make
    for timer in timers:
        timer.cancel()


def test_ask_refuses_a_named_pipe_instead_of_waiting_for_a_writer(model, fifo, monkeypatch,
                                                                 capsys) -> None:
    pipe = fifo("doc.txt")
    assert run_cli(monkeypatch, "ask", str(pipe), "q", "--estimate", "-s", "truncate") == 1
    error, hint = _error(capsys)
    assert error == f"error: {pipe}: is a pipe (FIFO), not a regular file"
    assert hint == "save the text to a file first (e.g. `command > doc.txt`) and pass that"
    assert model.requests == []


def test_a_named_pipe_as_a_conversation_is_refused_too(fifo) -> None:
    with pytest.raises(DocumentError) as info:
        load_conversations(fifo("turns.jsonl"))
    assert info.value.problem == "is a pipe (FIFO), not a regular file"


def test_a_named_pipe_in_a_folder_is_skipped_with_a_warning(fifo, tmp_path) -> None:
    from longweave.api import load_source

    _write(tmp_path / "a.txt", "The apple is red.")
    fifo("b.txt")
    with pytest.warns(LongweaveWarning, match="b.txt: is a pipe"):
        corpus = load_source(tmp_path)
    assert "The apple is red." in corpus.text


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets here")
def test_a_socket_is_refused() -> None:
    with tempfile.TemporaryDirectory() as folder:  # short: a socket path has ~100 bytes at most
        path = Path(folder) / "s.txt"
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            assert stat.S_ISSOCK(path.stat().st_mode)
            with pytest.raises(DocumentError) as info:
                open_document(path)
    assert info.value.problem == "is a socket, not a regular file"


_PIPE = "is a pipe (FIFO), not a regular file"


def test_batch_refuses_a_named_pipe_as_the_questions_file(model, fifo, monkeypatch, capsys,
                                                          tmp_path) -> None:
    _write(tmp_path / "a.txt", "The apple is red.")
    pipe = fifo("q.jsonl")
    assert run_cli(monkeypatch, "batch", str(tmp_path), "-q", str(pipe), "-s", "truncate",
                   "-o", str(tmp_path / "out.jsonl")) == 1
    assert _error(capsys) == (
        f"error: {pipe}: {_PIPE}",
        "save the questions to a file first (e.g. `command > q.jsonl`) and pass that")
    with pytest.raises(DocumentError) as info:
        load_questions(fifo("q.csv"))
    assert info.value.problem == _PIPE
    assert model.requests == [] and not (tmp_path / "out.jsonl").exists()


def test_eval_refuses_a_named_pipe_as_the_dataset(model, fifo, monkeypatch, capsys,
                                                  tmp_path) -> None:
    pipe = fifo("ev.jsonl")
    assert run_cli(monkeypatch, "eval", str(pipe), "-s", "truncate",
                   "-o", str(tmp_path / "out")) == 1
    assert _error(capsys) == (
        f"error: {pipe}: {_PIPE}",
        "save the dataset to a file first (e.g. `command > data.jsonl`) and pass that")
    assert model.requests == []


@pytest.mark.parametrize(("name", "fmt"), [
    ("ev.jsonl", "jsonl"), ("ev.jsonl", "leval"), ("ev.json", "locomo"), ("ev.json", "beam"),
    ("haystack.txt", None), ("haystack.txt", "needle"), ("data", None),
])
def test_a_named_pipe_as_any_dataset_is_refused_before_it_is_opened(fifo, tmp_path, name,
                                                                    fmt) -> None:
    # With --format nothing is detected (nor opened to detect it); the needle loader would
    # otherwise read the pipe's folder as its haystack.
    _write(tmp_path / "essay.txt", "Grass is green. " * 50)
    pipe = fifo(name)
    with pytest.raises(DocumentError) as info:
        _load(pipe, tmp_path, fmt)
    assert (info.value.path, info.value.problem) == (str(pipe), _PIPE)


def test_a_named_pipe_inside_a_dataset_folder_is_refused(fifo, tmp_path) -> None:
    # BEAM reads every chats/*.json it finds, and a needle spec wherever it is.
    (tmp_path / "chats").mkdir()
    pipe = fifo("chats/chat.json")
    with pytest.raises(DocumentError) as info:
        _load(tmp_path, tmp_path, "beam")
    assert (info.value.path, info.value.problem) == (str(pipe), _PIPE)
    needle = tmp_path / "needle"
    needle.mkdir()
    _write(needle / "essay.txt", "Grass is green. " * 50)
    spec = fifo("needle/needles.json")
    with pytest.raises(DocumentError) as info:
        _load(needle, tmp_path, "needle")
    assert (info.value.path, info.value.problem) == (str(spec), _PIPE)


def test_a_named_pipe_among_the_haystack_files_is_refused(fifo, tmp_path) -> None:
    from longweave.evals.needle import read_haystack

    _write(tmp_path / "a.txt", "Grass is green. " * 50)
    pipe = fifo("b.txt")
    with pytest.raises(DocumentError) as info:
        read_haystack(tmp_path)
    assert (info.value.path, info.value.problem) == (str(pipe), _PIPE)


# -- 9. datasets may start with a byte-order mark, as questions and conversations may -----------


_EVAL_FIXTURES = Path(__file__).parent / "fixtures" / "eval"


@pytest.mark.parametrize(("source", "fmt"), [
    (None, "jsonl"), (_EVAL_FIXTURES / "leval" / "quality.jsonl", "leval"),
])
def test_a_dataset_with_a_utf8_byte_order_mark_loads(tmp_path, source, fmt) -> None:
    text = (json.dumps(_ROW) + "\n" if source is None
            else source.read_text(encoding="utf-8"))
    plain = _write(tmp_path / f"{fmt}.jsonl", text)
    marked = tmp_path / "marked" / plain.name
    marked.parent.mkdir()
    marked.write_bytes(codecs.BOM_UTF8 + plain.read_bytes())
    expected = [(c.question, c.answers) for c in _load(plain, tmp_path, fmt).cases]
    for given in (fmt, None):  # the format is detected through the mark too
        loaded = _load(marked, tmp_path, given)
        assert (loaded.format, [(c.question, c.answers) for c in loaded.cases]) == (
            fmt, expected)
    assert expected  # a file of questions, not an empty comparison


def test_a_dataset_that_is_not_utf8_is_named_clearly(tmp_path) -> None:
    latin = tmp_path / "ev.jsonl"
    latin.write_bytes(json.dumps(_ROW).replace("Ada wrote", "Ad\u00e9 wrote").encode("latin-1"))
    error = _refused(latin, tmp_path)
    at = latin.read_bytes().index(b"\xe9")
    assert error.problem == f"not UTF-8 text (invalid continuation byte at byte {at})"
    assert error.hint == "datasets are JSON or JSONL in UTF-8: convert the file"
    with pytest.raises(DocumentError) as info:  # detecting the format reads it too
        _load(latin, tmp_path, None)
    assert info.value.problem == "is not UTF-8 text"


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_a_byte_that_is_not_utf8_is_named_by_its_offset_in_the_file(tmp_path: Path,
                                                                   bom: bytes) -> None:
    from longweave.evals.datasets import read_jsonl

    path = tmp_path / "t.jsonl"
    path.write_bytes(bom + b'{"speaker": "a", "text": "\xff"}\n')
    at = len(bom) + 26  # the mark is read, not decoded: the offset still counts it
    for read in (load_conversations, read_jsonl):
        with pytest.raises(DocumentError) as info:
            read(path)
        assert info.value.problem == f"not UTF-8 text (invalid start byte at byte {at})"

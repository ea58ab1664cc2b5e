"""The generic JSONL dataset format: one object per line, each field type-checked.

    {"id": "q1", "document": "<text>" | "document_path": "docs/a.txt", "question": "...",
     "answers": ["..."], "options": ["...", "..."], "metric": "f1", "task": "mine"}

`answers` may be a string; with `options`, answers are option letters (A, B, ...) and the
metric defaults to `option`; otherwise `f1`. A relative `document_path` is read from the
JSONL file's folder. Errors name the file's line and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from longweave.choices import split_choices
from longweave.errors import DocumentError, choose_from, invalid_fields
from longweave.evals.datasets import (
    GENERIC_METRICS,
    MULTI_HINT,
    OPTION_HINT,
    Dataset,
    EvalCase,
    GenericMetric,
    LoadOptions,
    files_of,
    length_bucket,
    read_json,
    read_jsonl,
)

__all__ = ["load_generic"]

_GENERIC = ("a generic JSONL line holds question, answers and document or document_path; "
            f"metric is one of {', '.join(GENERIC_METRICS)}")

_Scalar = str | int | float
"""An answer or option: numbers are read as their text (strict: true and false are not)."""


class _GenericRow(BaseModel):
    """One line of the generic JSONL format, typed strictly: text where a list belongs, or a
    list where text belongs, is a mistake in the file, refused rather than converted ("abc" as
    three options, ["a"] as the document "['a']")."""

    model_config = ConfigDict(strict=True)

    question: str = Field("", description="a string")
    answers: _Scalar | list[_Scalar] | None = Field(
        None, description="a string or a list of strings")
    answer: _Scalar | list[_Scalar] | None = Field(
        None, description="a string or a list of strings")
    document: str | None = Field(None, description="a string (the document's text)")
    document_path: str | None = Field(None, description="a string (a file path)")
    options: list[_Scalar] | dict[str, _Scalar] | None = Field(
        None, description="a list of strings or an object of label: text")
    metric: GenericMetric | None = Field(
        None, description=f"one of {', '.join(GENERIC_METRICS)}")
    id: str | int | None = Field(None, description="a string or an integer")
    task: str | None = Field(None, description="a string")
    category: str | int | None = Field(None, description="a string or an integer")


def load_generic(path: Path, opts: LoadOptions, out: Dataset) -> None:
    """The documented generic JSONL format (see the module docstring)."""
    per_task: dict[str, int] = {}
    for file in files_of(path, "jsonl"):
        for n, (line, where, raw) in enumerate(_generic_rows(file)):
            row = _generic_row(file, where, raw)
            task = row.task or file.stem
            if opts.limit is not None and per_task.get(task, 0) >= opts.limit:
                continue
            per_task[task] = per_task.get(task, 0) + 1
            out.cases.append(_generic_case(file, where, row, task, opts, line=line,
                                           default_id=f"{task}-{n}"))


def _generic_rows(file: Path) -> list[tuple[int, str, Any]]:
    """Each record with where it is: its line in a JSONL file, its place in a JSON list."""
    if file.suffix.lower() == ".jsonl":
        return [(n, f"line {n}", row) for n, row in read_jsonl(file)]
    data = read_json(file)
    return [(n, f"record {n}", row)
            for n, row in enumerate(data if isinstance(data, list) else [data], 1)]


def _generic_row(file: Path, where: str, raw: Any) -> _GenericRow:
    if not isinstance(raw, dict):
        raise DocumentError(file, f"{where}: expected a JSON object, got {type(raw).__name__}",
                            hint=_GENERIC)
    try:
        return _GenericRow.model_validate(raw)
    except ValidationError as exc:
        name = str(exc.errors()[0]["loc"][0])  # a union's members add their own errors after it
        value = raw[name]
        expected = _GenericRow.model_fields[name].description
        hint = choose_from(str(value), GENERIC_METRICS) if name == "metric" else _GENERIC
        raise DocumentError(file, f"{where}: `{name}` must be {expected}, got {value!r:.60}",
                            hint=hint) from None


def _generic_case(file: Path, where: str, row: _GenericRow, task: str, opts: LoadOptions, *,
                  line: int, default_id: str) -> EvalCase:
    question = row.question
    if not question.strip():
        raise DocumentError(file, f"{where}: needs a `question` string", hint=_GENERIC)
    given = row.answers if row.answers is not None else row.answer
    if given is None and row.metric != "abstain":
        raise DocumentError(file, f"{where}: needs `answers` (the gold answers)", hint=_GENERIC)
    gold = given if isinstance(given, list) else [] if given is None else [given]
    answers = [str(a) for a in gold]
    if row.document is not None:
        doc, tokens = opts.store.text(task, row.document)
    elif row.document_path is not None:
        target = (file.parent / row.document_path).expanduser().resolve()
        if not target.exists():
            raise DocumentError(file, f"{where}: the document_path {target} does not exist",
                                hint="document_path is read relative to the JSONL file")
        from longweave.api import load_source

        doc = str(target)
        tokens = opts.store.count(str(target), load_source(target).text)
    else:
        raise DocumentError(file, f"{where}: needs `document` or `document_path`",
                            hint=_GENERIC)
    labels: list[str] = []
    options: list[str] = []
    if isinstance(row.options, dict):
        labels, options = list(row.options), [str(v) for v in row.options.values()]
    elif row.options:
        options = [str(o) for o in row.options]
        labels = [chr(ord("A") + i) for i in range(len(options))]
    metric = row.metric or ("option" if options else "f1")
    if options:
        # one line an option (a line break would end the list), as `split_choices` reads them
        listed = "\n".join(f"{x}. {' '.join(o.split())}"
                           for x, o in zip(labels, options, strict=True))
        multi = len(answers) > 1
        question = f"{question}\n\n{listed}\n\n{MULTI_HINT if multi else OPTION_HINT}"
        _check_letters(file, where, question, labels)
    try:
        return EvalCase(
            id=default_id if row.id is None else str(row.id), task=task, document=doc,
            question=question, answers=answers, metric=metric, labels=labels, options=options,
            multi=bool(options) and len(answers) > 1,
            category=None if row.category is None else str(row.category),
            tokens=tokens, length=length_bucket(tokens), meta={"line": line},
        )
    except ValidationError as exc:
        problem, _ = invalid_fields(exc)
        raise DocumentError(file, f"{where}: {problem}", hint=_GENERIC) from None


def _check_letters(file: Path, where: str, question: str, labels: list[str]) -> None:
    """Option letters a strategy reads from the question (MemWalker answers with them only)
    must be the labels scored; a question whose options it reads as none is answered freely."""
    read = list(split_choices(question).letters)
    if read and read != labels:
        raise DocumentError(
            file, f"{where}: its options read as {', '.join(read)} but are labelled "
                  f"{', '.join(labels)}",
            hint="options are non-empty texts, at most 26; keyed options are keyed A, B, C, "
                 "... in order, or with labels that are not letters")

"""Questions for a batch run, read from JSONL or CSV and expanded over a folder of documents.

Every row needs a `question`; `document` ties it to one file (relative to the folder, or
absolute, and it need not be one the folder's globs select), and a row without one is asked of
every document in the folder. `id` names the question (it, not the text, identifies it in the
output, so rewording a question with an id does not ask it again); every other field rides along
to the record's `meta` (gold answers, a category).

>>> import tempfile, pathlib
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> _ = (tmp / "a.txt").write_text("Alpha."), (tmp / "b.txt").write_text("Beta.")
>>> _ = (tmp / "q.jsonl").write_text('{"question": "Which letter?", "gold": "A"}\\n')
>>> [(pathlib.Path(i.document).name, i.meta) for i in batch_items(tmp, tmp / "q.jsonl")]
[('a.txt', {'gold': 'A'}), ('b.txt', {'gold': 'A'})]
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longweave.batch import BatchItem
from longweave.documents import parse_jsonl, stat_input
from longweave.errors import DocumentError

__all__ = ["Question", "batch_items", "expand_questions", "load_questions"]

_JSONL = {".jsonl", ".ndjson", ".json"}
_CSV = {".csv": ",", ".tsv": "\t"}
_RESERVED = ("question", "document", "id")


@dataclass(frozen=True)
class Question:
    """One row of a questions file: the question, its optional document and id, the rest."""

    question: str
    document: str | None = None
    id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    line: int = 0
    """Line of the questions file the row came from (for error messages)."""


def load_questions(path: str | os.PathLike[str]) -> list[Question]:
    """Read a .jsonl (.ndjson, .json: one object per line), .csv or .tsv file of questions.

    A malformed row is a `DocumentError` naming the file and the line.
    """
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if p.is_dir():
        raise DocumentError(p, "is a folder, not a questions file",
                            hint="pass the .jsonl or .csv file of questions (the documents' "
                            "folder is the first argument)")
    if suffix not in _JSONL and suffix not in _CSV:
        raise DocumentError(
            p, f"unknown questions format {suffix or '(no suffix)'!r}",
            hint="write the questions as .jsonl (one JSON object per line) or .csv with a "
            "'question' column",
        )
    try:
        stat_input(p, hint="save the questions to a file first (e.g. `command > q.jsonl`) and "
                           "pass that")
        # -sig: spreadsheets write a byte-order mark. Line ends are read as "\n" (a cell's
        # "\r\n" too, so a question's text, its key when it has no id, is the same either way).
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DocumentError(p, "no such file", hint="check the --questions path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DocumentError(p, f"cannot read the questions file ({exc})",
                            hint="save it as UTF-8 text") from None
    rows = _jsonl_rows(p, text) if suffix in _JSONL else _csv_rows(p, text, _CSV[suffix])
    questions = [_question(p, line, row) for line, row in rows]
    if not questions:
        raise DocumentError(p, "holds no questions", hint="add one row per question")
    _check_ids(p, questions)
    return questions


def _jsonl_rows(p: Path, text: str) -> Iterable[tuple[int, dict[str, Any]]]:
    for n, row in parse_jsonl(p, text, hint=_FIX_ROW):
        if not isinstance(row, dict):
            raise _bad(p, n, f"expected a JSON object, got {type(row).__name__}")
        yield n, row


def _csv_rows(p: Path, text: str, delimiter: str) -> Iterable[tuple[int, dict[str, Any]]]:
    # Rows split as csv splits them (newline=""), not by splitlines(): a cell may hold U+2028,
    # \x0c and other characters splitlines() breaks at.
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = reader.fieldnames or []
        if "question" not in header:
            raise _bad(p, 1, f"the header has no 'question' column (it has {header})")
        for row in reader:
            if None in row:  # DictReader files surplus cells under the key None
                raise _bad(p, reader.line_num, "more cells than the header has columns")
            # An empty cell is an absent field: a CSV cannot say "no document" any other way.
            yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}
    except csv.Error as exc:
        raise _bad(p, reader.line_num, f"not valid CSV ({exc})") from None


def _question(p: Path, line: int, row: dict[str, Any]) -> Question:
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        got = "missing" if question is None else f"{question!r}"
        raise _bad(p, line, f"'question' must be a non-empty string ({got})")
    document = row.get("document")
    if document is not None and (not isinstance(document, str) or not document.strip()):
        raise _bad(p, line, f"'document' must be a file path, got {document!r}")
    ident = row.get("id")
    if isinstance(ident, bool) or (ident is not None and not isinstance(ident, (str, int))):
        raise _bad(p, line, f"'id' must be a string or an integer, got {ident!r}")
    meta = {k: v for k, v in row.items() if k not in _RESERVED}
    return Question(
        question=question, document=document, id=None if ident is None else str(ident),
        meta=meta, line=line,
    )


def _check_ids(p: Path, questions: Sequence[Question]) -> None:
    # An id identifies a question in the output: two questions under one id would answer once.
    seen: dict[tuple[str | None, str], int] = {}
    for q in questions:
        if q.id is None:
            continue
        first = seen.setdefault((q.document, q.id), q.line)
        if first != q.line:
            raise _bad(p, q.line, f"id {q.id!r} is already used on line {first}")


_FIX_ROW = "fix that row of the questions file"


def _bad(p: Path, line: int, problem: str) -> DocumentError:
    return DocumentError(p, f"line {line}: {problem}", hint=_FIX_ROW)


def expand_questions(
    questions: Sequence[Question],
    folder: str | os.PathLike[str],
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[BatchItem]:
    """One item per (document, question): a row's own document, or every file of the folder.

    The folder is walked (recursively, with `include`/`exclude` globs as in corpus mode) only
    when some row has no document. Documents are absolute paths, so the output's keys do not
    depend on the directory the command is run from. A missing document is not an error here:
    its items fail one by one in the run and are recorded.
    """
    from longweave.retrieval.corpus import corpus_files

    root = Path(folder).expanduser()
    if not root.exists():  # worded as `ask` words a missing path
        raise DocumentError(root, "no such file", hint="check the path and its spelling")
    if not root.is_dir():
        raise DocumentError(root, "is not a folder", hint="pass the folder of documents")
    everywhere: list[str] | None = None
    items: list[BatchItem] = []
    for q in questions:
        if q.document is not None:
            targets = [_absolute(root, q.document)]
        else:
            if everywhere is None:
                # corpus_files gives paths under `root` as given: absolute, not re-joined.
                files = corpus_files(root, include=include, exclude=exclude)
                everywhere = [os.path.abspath(f) for f in files]
                if not everywhere:
                    raise DocumentError(
                        root, "holds no documents matching the include/exclude globs",
                        hint="check --include/--exclude, or give each question a 'document'",
                    )
            targets = everywhere
        items.extend(
            BatchItem(document=d, question=q.question, id=q.id, meta=q.meta) for d in targets
        )
    return items


def _absolute(root: Path, document: str) -> str:
    path = Path(document).expanduser()
    # abspath, not resolve: it normalizes '..' but keeps a symlinked file under its own name.
    return os.path.abspath(path if path.is_absolute() else root / path)


def batch_items(
    folder: str | os.PathLike[str],
    questions: str | os.PathLike[str],
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[BatchItem]:
    """Load `questions` and expand them over `folder` (see `expand_questions`)."""
    return expand_questions(load_questions(questions), folder, include=include, exclude=exclude)

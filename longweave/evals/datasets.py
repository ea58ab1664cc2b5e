"""Evaluation datasets: every supported format becomes a list of `EvalCase`s over files.

A case is one question about one document file, with its gold answers and the metric that
scores it. Loaders write each document once into a work folder (named by a hash of its text),
so batch items reference files and a rerun finds the same paths (resume). Nothing here assumes
where the data lies: every loader takes the path it is given.

Formats (auto-detected from the path; `format=` overrides): `leval`, `loogle`, `hotpotqa`,
`locomo`, `beam`, `needle` (their loaders: `longweave.evals.loaders`) and the generic `jsonl`
format, one object per line (`longweave.evals.generic`).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from longweave.documents import parse_json, parse_jsonl, stat_input
from longweave.errors import ConfigError, DocumentError, choose_from

__all__ = [
    "Dataset",
    "DocumentStore",
    "EvalCase",
    "FORMATS",
    "LoadOptions",
    "detect_format",
    "length_bucket",
    "load_dataset",
    "parse_lengths",
]

GenericMetric = Literal["em", "f1", "contains", "option", "abstain"]
"""The metrics a generic JSONL line may name: cloze and beam need data only loaders supply."""
Metric = Literal[GenericMetric, "cloze", "beam"]
CountTokens = Callable[[str], int]

FORMATS = ("leval", "loogle", "hotpotqa", "locomo", "beam", "needle", "jsonl")
"""Every dataset format `load_dataset` reads."""
GENERIC_METRICS: tuple[str, ...] = get_args(GenericMetric)

OPTION_HINT = "Answer with the letter of the correct option."
MULTI_HINT = "Answer with the letters of all correct options."
_FIX_LINE = "fix that line, or pass the dataset's own file or folder"


class EvalCase(BaseModel):
    """One question about one document file, and what counts as a right answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    task: str
    """The subset the case belongs to (`leval/quality`, `hotpotqa`, ...); limits apply per task."""
    document: str
    """The document's file (text, or a JSONL conversation of turns)."""
    question: str
    """The question as asked, with its options and answer-format hint."""
    answers: list[str]
    """Gold answers; option labels for `option` cases (all correct ones for multi-select)."""
    metric: Metric
    """The metric of the case's score; the other text metrics are reported beside it."""
    labels: list[str] = Field(default_factory=list)
    """Option labels (A, B, C, D / 1-4 / True, False) of a multiple-choice case."""
    options: list[str] = Field(default_factory=list)
    """Option texts, label by label, so an answer quoting an option's text is read too."""
    multi: bool = False
    """Several options may be correct and all must be chosen (L-Eval's Coursera)."""
    category: str | None = None
    """A finer grouping: a LoCoMo category, a BEAM ability, a LooGLE question type."""
    tokens: int = 0
    """The document's length in the model's tokens."""
    length: int = 0
    """The context length the case stands for: the target length of generated cases, the
    document's length rounded up to a power of two (1k = 1,024 tokens) otherwise."""
    depth: float | None = None
    """Needle depth in percent, for needle cases."""
    meta: dict[str, Any] = Field(default_factory=dict)


@dataclass
class Dataset:
    """The cases of one dataset, its format, and notes on what was skipped or ignored."""

    format: str
    cases: list[EvalCase]
    notes: list[str] = field(default_factory=list)


class DocumentStore:
    """Writes documents into a folder once, named by their text's hash, and counts tokens."""

    def __init__(self, folder: str | os.PathLike[str], count_tokens: CountTokens) -> None:
        self.folder = Path(folder)
        self.count_tokens = count_tokens
        self._tokens: dict[str, int] = {}

    def write(self, hint: str, text: str, suffix: str = ".txt") -> str:
        """The file holding `text`, written if absent."""
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        path = self.folder / f"{_slug(hint)}-{digest}{suffix}"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8", newline="")
            os.replace(tmp, path)  # a reader never sees half a document
        return str(path.resolve())

    def text(self, hint: str, text: str) -> tuple[str, int]:
        """The text file holding `text` and its token count."""
        path = self.write(hint, text)
        return path, self.count(path, text)

    def count(self, key: str, text: str) -> int:
        if key not in self._tokens:
            self._tokens[key] = self.count_tokens(text)
        return self._tokens[key]


@dataclass(frozen=True)
class LoadOptions:
    """What to load: the per-task limit, generated lengths and depths, and the shuffle seed."""

    store: DocumentStore
    limit: int | None = None
    lengths: tuple[int, ...] = ()
    depths: tuple[float, ...] = ()
    seed: int = 0

    def take(self, items: list[Any]) -> list[Any]:
        return items if self.limit is None else items[: self.limit]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "doc"


def length_bucket(tokens: int) -> int:
    """The smallest power-of-two multiple of 1,024 tokens holding `tokens` (at least 1k)."""
    return 1024 * 2 ** max(0, math.ceil(math.log2(max(tokens, 1) / 1024)))


def parse_lengths(text: str | None) -> tuple[int, ...]:
    """`"2k,8k,16000"` -> (2048, 8192, 16000): k means 1,024 tokens."""
    values: list[int] = []
    for part in (text or "").split(","):
        part = part.strip().lower()
        if not part:
            continue
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(k?)", part)
        if not match or float(match.group(1)) <= 0:
            raise ConfigError(f"bad length {part!r}", hint="write lengths like 2k,8k,16000")
        scale = 1024 if match.group(2) else 1
        values.append(int(float(match.group(1)) * scale))
    return tuple(values)


def read_json(path: Path) -> Any:
    """A JSON file's value, or a JSONL file's records as a list; a file that cannot be read or
    parsed is a `DocumentError` naming its line."""
    if path.suffix.lower() == ".jsonl":
        return [row for _, row in read_jsonl(path)]
    return parse_json(path, _text(path), hint=_FIX_LINE)


def read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """A JSONL file's records, each with its line in the file (`documents.parse_jsonl`)."""
    return parse_jsonl(path, _text(path), hint=_FIX_LINE)


def _text(path: Path) -> str:
    try:
        _stat(path)
        return path.read_text(encoding="utf-8-sig")  # -sig: as questions and conversations
    except UnicodeDecodeError as exc:
        with path.open("rb") as file:  # the byte-order mark was read, not decoded
            at = exc.start + (len(codecs.BOM_UTF8) if file.read(3) == codecs.BOM_UTF8 else 0)
        raise DocumentError(path, f"not UTF-8 text ({exc.reason} at byte {at})",
                            hint="datasets are JSON or JSONL in UTF-8: convert the file") from None
    except OSError as exc:
        raise DocumentError(path, f"cannot be read ({exc.strerror or exc})",
                            hint="pass the dataset's file or folder") from None


def _stat(path: Path) -> os.stat_result:
    """`path`'s stat; a pipe or device is refused before anything opens it (`stat_input`)."""
    return stat_input(path, hint="save the dataset to a file first (e.g. `command > data.jsonl`) "
                                 "and pass that")


def _first_record(path: Path) -> Any:
    """The first record of a data file; None when it is not JSON. A file that is not UTF-8
    text, or cannot be read, is a `DocumentError` naming it."""
    try:
        _stat(path)
        if path.suffix.lower() == ".jsonl":
            with path.open(encoding="utf-8-sig") as handle:
                for line in handle:
                    if line.strip():
                        try:
                            return json.loads(line)
                        except ValueError:
                            return None
            return None
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DocumentError(path, "is not UTF-8 text",
                            hint="datasets are JSON or JSONL in UTF-8: convert the file, "
                                 "or pass the dataset's own file or folder") from None
    except OSError as exc:
        raise DocumentError(path, f"cannot be read ({exc.strerror or exc})",
                            hint="pass the dataset's file or folder") from None
    try:
        return json.loads(text)
    except ValueError:
        return None


def sniff(path: Path) -> str | None:
    """The format of one data file, from the shape of its first record."""
    if path.suffix.lower() not in (".json", ".jsonl"):
        return None
    data = _first_record(path)
    if isinstance(data, dict) and "chat" in data and "probing_questions" in data:
        return "beam"
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
        if "conversation" in data and "qa" in data:
            return "locomo"
    if not isinstance(data, dict):
        return None
    keys = set(data)
    if {"input", "instructions", "outputs"} <= keys:
        return "leval"
    if {"input", "qa_pairs"} <= keys:
        return "loogle"
    if {"question_text", "contexts", "answers_objects"} <= keys:
        return "hotpotqa"
    if "question" in keys and ("document" in keys or "document_path" in keys):
        return "jsonl"
    return None


def data_files(path: Path) -> list[Path]:
    """The JSON and JSONL files of a dataset folder (two levels deep), in name order."""
    found = [*path.glob("*.json"), *path.glob("*.jsonl"), *path.glob("*/*.json"),
             *path.glob("*/*.jsonl")]
    return sorted(p for p in found
                  if p.name not in ("manifest.json", "needles.json") and p.is_file())


def detect_format(path: str | os.PathLike[str]) -> str:
    """The dataset format of a file or folder; a ConfigError names the choices when unsure."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DocumentError(p, "does not exist", hint="pass the dataset's file or folder")
    _stat(p)
    hint = f"pass --format, one of: {', '.join(FORMATS)}"
    if p.is_dir():
        texts = [*p.glob("*.txt"), *p.glob("essays/*.txt")]
        if (p / "needles.json").exists() or texts and not data_files(p):
            return "needle"
        kinds = {sniff(f) for f in data_files(p)} - {None}
        if len(kinds) == 1:
            return kinds.pop()
        what = f"several formats ({', '.join(sorted(kinds))})" if kinds else "no known format"
        raise ConfigError(f"{p} holds {what}", hint=hint)
    if p.suffix.lower() == ".txt":
        return "needle"
    kind = sniff(p)
    if kind is None:
        raise ConfigError(f"cannot tell the format of {p}", hint=hint)
    return kind


def files_of(path: Path, fmt: str) -> list[Path]:
    """The data files of `fmt` in a folder, or the file itself."""
    if path.is_file():
        return [path]
    return [f for f in data_files(path) if sniff(f) == fmt]


def load_dataset(
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    workdir: str | os.PathLike[str],
    count_tokens: CountTokens,
    limit: int | None = None,
    lengths: Iterable[int] = (),
    depths: Iterable[float] = (),
    seed: int = 0,
) -> Dataset:
    """The cases of the dataset at `path`, documents written under `workdir`.

    `limit` caps the cases per task (per task and length for generated sets, in file order).
    `lengths` (tokens, counted by `count_tokens`) and `depths` (percent) apply to the generated
    sets: HotpotQA pooled contexts and needle-in-a-haystack cases.
    """
    from longweave.evals import generic, loaders

    p = Path(path).expanduser()
    fmt = format or detect_format(p)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown dataset format {fmt!r}", hint=choose_from(fmt, FORMATS))
    if not p.exists():
        raise DocumentError(p, "does not exist", hint="pass the dataset's file or folder")
    # detect_format refuses a pipe too, but --format skips it (and the needle loader would read
    # the pipe's folder as the haystack)
    _stat(p)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    opts = LoadOptions(DocumentStore(workdir, count_tokens), limit, tuple(lengths),
                       tuple(depths), seed)
    dataset = Dataset(fmt, [])
    if opts.lengths and fmt not in ("hotpotqa", "needle"):
        dataset.notes.append("--lengths applies to hotpotqa and needle; ignored")
    reader = loaders.LOADERS[fmt] if fmt != "jsonl" else generic.load_generic
    shape = (f"it was read as --format {fmt}: leave --format out to detect the format"
             if format else "check the file, or pass --format if it is another format")
    try:
        reader(p, opts, dataset)
    except KeyError as exc:
        raise DocumentError(p, f"a record has no {exc.args[0]!r} field, which the {fmt} format "
                               "needs", hint=shape) from None
    except (TypeError, AttributeError, IndexError, ValueError) as exc:
        raise DocumentError(p, f"a record is not shaped as the {fmt} format expects "
                               f"({type(exc).__name__}: {exc})", hint=shape) from None
    if not dataset.cases:
        skipped = f" ({'; '.join(dataset.notes)})" if dataset.notes else ""
        raise ConfigError(f"no questions found in {p} as {fmt}{skipped}",
                          hint="check the path and --format")
    return dataset

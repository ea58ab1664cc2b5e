"""Corpus mode: the documents of a folder read as one `Document`, so any strategy can take a folder.

The corpus text is each file's text under a one-line header naming it, in path order, and
`meta["corpus"]` records where every file's text lies in it (`CorpusPart`). Strategies that know
about corpora (rag) index and cite each file on its own; `cite_span` turns any span of the corpus
text into citations of the files it covers, with offsets into each file's own text and
`Citation.source` naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from longweave.answer import Citation
from longweave.documents import Document, open_document
from longweave.errors import DocumentError, LongweaveWarning

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_INCLUDE",
    "CorpusPart",
    "cite_span",
    "corpus_files",
    "corpus_parts",
    "member",
    "open_corpus",
]

DEFAULT_INCLUDE = ("*.txt", "*.text", "*.md", "*.markdown", "*.rst", "*.html", "*.htm", "*.pdf")
"""Files a folder contributes when no include patterns are given: the formats longweave reads."""
DEFAULT_EXCLUDE = (".*",)
"""Hidden files and folders (.git, .venv, .cache) are always skipped; `exclude` adds to this."""


@dataclass(frozen=True)
class CorpusPart:
    """One file of a corpus: its path, its document id, and its span [start, end) of the corpus."""

    source: str
    doc_id: str
    start: int
    end: int


def _header(relative: str) -> str:
    return f"===== {relative} =====\n\n"


def _matches(relative: str, patterns: Sequence[str]) -> bool:
    """Whether the path (relative, with '/') or any of its folders or its name matches a pattern.

    `fnmatch` lets `*` cross '/', so "*.md" matches "notes/a.md" and "drafts/*" a whole folder.
    """
    parts = relative.split("/")
    candidates = [relative, *parts, *("/".join(parts[: i + 1]) for i in range(len(parts) - 1))]
    return any(fnmatch(c, p) for c in candidates for p in patterns)


def corpus_files(
    folder: str | Path,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[Path]:
    """The files under `folder` (recursively, symlinked folders not followed), in path order.

    A file is taken when its path relative to `folder`, its name or one of its folders matches
    an `include` pattern (default `DEFAULT_INCLUDE`) and none matches an `exclude` pattern.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DocumentError(root, "is not a folder", hint="pass a folder of documents")
    include = tuple(include) if include else DEFAULT_INCLUDE
    exclude = DEFAULT_EXCLUDE + tuple(exclude or ())
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # Prune excluded folders so a big .git or node_modules is never walked.
        dirnames[:] = sorted(
            d for d in dirnames if not _matches((here / d).relative_to(root).as_posix(), exclude)
        )
        for name in sorted(filenames):
            relative = (here / name).relative_to(root).as_posix()
            if _matches(relative, include) and not _matches(relative, exclude):
                found.append(here / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def open_corpus(
    folder: str | Path,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    max_bytes: int | None = None,
) -> Document:
    """Read every matching file under `folder` into one corpus `Document`.

    Files that cannot be read are skipped with a `LongweaveWarning` naming them (and listed in
    `meta["skipped"]` as `[path, problem]`); a folder with no readable file is a `DocumentError`,
    and so is one whose files add up to more than the document size limit (`max_bytes`, default
    `LONGWEAVE_MAX_DOCUMENT_BYTES`), which holds for a folder as for one file.
    """
    from longweave.config import Settings

    root = Path(folder).expanduser()
    files = corpus_files(root, include=include, exclude=exclude)
    limit = Settings().max_document_bytes if max_bytes is None else max_bytes
    pieces: list[str] = []
    parts: list[CorpusPart] = []
    skipped: list[list[str]] = []
    offset = total = 0
    for path in files:
        try:
            size = path.stat().st_size
        except OSError:
            size = 0  # open_document names the problem below
        if total + size > limit:
            raise DocumentError(
                root, f"its files add up to more than the {limit:,}-byte limit (reached at "
                f"{path.relative_to(root).as_posix()}, file {len(parts) + 1} of {len(files)})",
                hint="raise LONGWEAVE_MAX_DOCUMENT_BYTES, or read fewer files with --include "
                     "and --exclude")
        try:
            doc = open_document(path, max_bytes=max_bytes)
        except DocumentError as exc:
            warnings.warn(f"skipping {path}: {exc.problem}", LongweaveWarning, stacklevel=2)
            skipped.append([str(path), exc.problem])
            continue
        sep = "\n\n" if pieces else ""
        header = sep + _header(path.relative_to(root).as_posix())
        start = offset + len(header)
        pieces += [header, doc.text]
        parts.append(CorpusPart(str(path), doc.id, start, start + len(doc.text)))
        offset = start + len(doc.text)
        total += size
    if not parts:
        problem = (
            f"none of its {len(files)} matching files could be read"
            if files
            else "no files match the include patterns"
        )
        raise DocumentError(
            root,
            problem,
            hint="check the folder, --include and --exclude (default: "
            + " ".join(DEFAULT_INCLUDE)
            + ")",
        )
    meta = {"format": "corpus", "corpus": tuple(parts), "skipped": skipped}
    return Document.from_text("".join(pieces), source=str(root), meta=meta)


def corpus_parts(document: Document) -> tuple[CorpusPart, ...] | None:
    """The files of a corpus document, or None for a single document."""
    parts = document.meta.get("corpus")
    return tuple(parts) if parts else None


def member(document: Document, part: CorpusPart) -> Document:
    """One file of a corpus as its own `Document` (its id is the file text's sha256)."""
    return Document(part.doc_id, document.text[part.start : part.end], part.source)


def cite_span(
    document: Document, start: int, end: int, *, chunk_index: int | None = None
) -> list[Citation]:
    """Citations of `document.text[start:end]`: one for a document, one per file for a corpus.

    In a corpus, headers between files are not cited, and each citation's offsets are into the
    file's own text (`text == file_text[start:end]`) with `source` naming the file.
    """
    parts = corpus_parts(document)
    if parts is None:
        return [
            Citation(
                doc_id=document.id,
                start=start,
                end=end,
                text=document.text[start:end],
                chunk_index=chunk_index,
                source=document.source,
            )
        ]
    out = []
    for part in parts:
        lo, hi = max(start, part.start), min(end, part.end)
        if hi <= lo or not document.text[lo:hi].strip():
            continue
        out.append(
            Citation(
                doc_id=part.doc_id,
                start=lo - part.start,
                end=hi - part.start,
                text=document.text[lo:hi],
                chunk_index=chunk_index,
                source=part.source,
            )
        )
    return out

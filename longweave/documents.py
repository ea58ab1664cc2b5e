"""Documents: reading text, Markdown, HTML and PDF files into one normalized string with an id.

Everything else in longweave refers to character offsets in `Document.text`.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import io
import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longweave.config import Settings
from longweave.errors import DocumentError

__all__ = ["Document", "open_document"]

_HTML_EXTS = {".html", ".htm", ".xhtml"}
_CONVERT = "longweave reads plain text, Markdown, HTML and PDF; convert the file to one of them"
# Magic bytes, only used to name what a file that already looks binary probably is.
_MAGIC = [
    (b"PK\x03\x04", "a zip archive (.docx, .xlsx, .epub and .jar files are zip archives too)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x7fELF", "an ELF executable"),
    (b"MZ", "a Windows executable"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\xfd7zXZ", "an xz archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\xd0\xcf\x11\xe0", "a legacy Office document (.doc, .xls, .ppt)"),
]
_BOMS = [
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE, whose BOM is its prefix
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")  # ESC (\x1b) is common in logs
# What a path that is neither a file nor a folder is, by its stat mode.
_SPECIAL = [
    (stat.S_ISFIFO, "a pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
]


@dataclass(frozen=True)
class Document:
    """A text and its id (sha256 of the UTF-8 text); `meta` holds format details like PDF pages.

    >>> Document.from_text("Hello.").name
    'text'
    """

    id: str
    text: str = field(repr=False)
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_text(
        cls, text: str, source: str | None = None, meta: dict[str, Any] | None = None
    ) -> Document:
        """Make a document from a string, computing its id."""
        return cls(hashlib.sha256(text.encode("utf-8")).hexdigest(), text, source, dict(meta or {}))

    @property
    def name(self) -> str:
        """The file name the text came from, or "text"."""
        return Path(self.source).name if self.source else "text"

    def __hash__(self) -> int:
        # The generated hash would fail on the `meta` dict; the id already identifies the text.
        return hash(self.id)


def open_document(path: str | Path, *, max_bytes: int | None = None) -> Document:
    """Read a text, Markdown, HTML or PDF file; raise `DocumentError` saying why it can't be."""
    p = Path(path).expanduser()
    data = read_document_bytes(p, max_bytes=max_bytes)
    ext = p.suffix.lower()
    if data.startswith(b"%PDF-") or ext == ".pdf":
        text, meta = _pdf_text(p, data)
    else:
        text, encoding = _decode(p, data)
        meta = {"format": "text", "encoding": encoding}
        head = text.lstrip()[:64].lower()
        if ext in _HTML_EXTS or head.startswith(("<!doctype html", "<html")):
            text, meta["format"] = _html_text(text), "html"
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise DocumentError(p, "the file has no text", hint="check that you passed the right file")
    return Document.from_text(text, source=str(p), meta=meta)


def stat_input(path: Path, *, hint: str) -> os.stat_result:
    """The stat of an input file or folder, refused with a `DocumentError` (`hint` says what to
    pass instead) when it is a pipe, socket or device: opening a pipe blocks until something
    writes to it, and a device may never end, so they are refused before anything opens them.

    Errors of `stat` itself (a missing file) propagate: each caller words those.
    """
    info = path.stat()
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        kind = next((name for test, name in _SPECIAL if test(info.st_mode)), "a special file")
        raise DocumentError(path, f"is {kind}, not a regular file", hint=hint)
    return info


def parse_json(path: Path, text: str, *, hint: str, line: int = 0) -> Any:
    """`text` (from the file at `path`) parsed, or a `DocumentError` naming the line: `line`
    is where `text` starts in the file, 0 when it is the whole file."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(path, f"line {line or exc.lineno}: not valid JSON ({exc.msg} at "
                                  f"column {exc.colno})", hint=hint) from None


def parse_jsonl(path: Path, text: str, *, hint: str) -> list[tuple[int, Any]]:
    """The records of JSONL `text`, each with its line in the file: blank lines are skipped but
    counted, so an error names the line an editor shows. Split at "\n" only, not as
    `splitlines` does: JSON strings may hold U+2028 and other breaks unescaped."""
    return [(n, parse_json(path, record, hint=hint, line=n))
            for n, record in enumerate(text.split("\n"), 1) if record.strip()]


def read_document_bytes(path: str | Path, *, max_bytes: int | None = None) -> bytes:
    """A document file's bytes, refused with a `DocumentError` when the file is missing,
    unreadable, a folder, not a regular file (a pipe, socket or device), empty, or over
    `max_bytes` (default: LONGWEAVE_MAX_DOCUMENT_BYTES)."""
    p = Path(path).expanduser()
    limit = Settings().max_document_bytes if max_bytes is None else max_bytes
    try:
        info = stat_input(p, hint="save the text to a file first (e.g. `command > doc.txt`) "
                                  "and pass that")
        if stat.S_ISDIR(info.st_mode):
            raise DocumentError(
                p, "is a directory", hint="pass a file, or use batch/corpus mode over folders"
            )
        size = info.st_size
        with p.open("rb") as stream:  # bounded: the file may have grown since stat
            data = stream.read(limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise DocumentError(
                p,
                f"the file is {max(size, len(data)):,} bytes, over the {limit:,}-byte limit"
                if size > limit else f"it holds more than the {limit:,}-byte limit",
                hint="raise LONGWEAVE_MAX_DOCUMENT_BYTES or split the file",
            )
    except FileNotFoundError:
        raise DocumentError(p, "no such file", hint="check the path and its spelling") from None
    except PermissionError:
        raise DocumentError(
            p, "permission denied", hint="make the file readable (chmod) or copy it somewhere"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DocumentError(
                p, "the symbolic link loops (it points back to itself through its targets)",
                hint="fix or remove the link (ls -l shows where it points), or pass the file",
            ) from None
        raise DocumentError(
            p, f"cannot read the file ({exc.strerror or exc})", hint="copy it to a local disk"
        ) from None
    if not data.strip():
        raise DocumentError(
            p,
            "the file is empty" if not data else "the file holds only whitespace",
            hint="check that you passed the right file",
        )
    return data


def _decode(p: Path, data: bytes) -> tuple[str, str]:
    """Decode bytes: BOMs, UTF-8, BOM-less UTF-16, then charset detection (Western-biased)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return _checked(p, data, encoding)
            except UnicodeDecodeError:
                break  # a stray BOM-like prefix; detection below decides
    sample = data[: 1 << 16]
    encoding = _bomless_utf16(sample) or "utf-8"
    if encoding == "utf-8" and b"\x00" in sample:
        raise _binary(p, data)
    try:
        return _checked(p, data, encoding)
    except UnicodeDecodeError:
        if encoding != "utf-8":
            raise _binary(p, data) from None
    for candidate in _legacy_encodings(data):
        try:
            return _checked(p, data, candidate)
        except (UnicodeDecodeError, LookupError):
            continue
    raise DocumentError(
        p,
        "the text is in no encoding that could be detected",
        hint="convert it to UTF-8, e.g. `iconv -f <its encoding> -t utf-8 in.txt > out.txt`",
    )


def _bomless_utf16(sample: bytes) -> str | None:
    # ASCII-heavy UTF-16 without a BOM puts a NUL in every other byte.
    even, odd = sample[0::2], sample[1::2]
    if len(sample) < 4:
        return None
    if odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.05 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.4 * len(even) and odd.count(0) < 0.05 * len(odd):
        return "utf-16-be"
    return None


def _legacy_encodings(data: bytes) -> list[str]:
    import charset_normalizer

    best = charset_normalizer.from_bytes(data).best()
    western = charset_normalizer.from_bytes(data, cp_isolation=["cp1252"]).best()
    # Detection on short Western text often prefers cp1250 or a Mac/DOS code page, turning
    # "naïve" into "naďve"; cp1252 (a superset of Latin-1's printable range) is by far the
    # likeliest legacy encoding, so it wins unless it reads clearly worse than the best guess.
    order = []
    if western is not None and (best is None or western.chaos <= best.chaos + 0.1):
        order.append("cp1252")
    if best is not None:
        order.append(best.encoding)
    return order


def _checked(p: Path, data: bytes, encoding: str) -> tuple[str, str]:
    """Decode strictly, and refuse text that is mostly control characters."""
    text = data.decode(encoding)
    sample = text[: 1 << 16]
    if len(_CONTROL.findall(sample)) > 0.05 * len(sample):
        raise _binary(p, data)
    return text, encoding


def _binary(p: Path, data: bytes) -> DocumentError:
    kind = next((name for magic, name in _MAGIC if data.startswith(magic)), None)
    problem = f"this looks like {kind}, not text" if kind else "this looks like a binary file"
    return DocumentError(p, problem, hint=_CONVERT)


def _html_text(html: str) -> str:
    """Visible text of an HTML page, with block elements on their own lines.

    One walk over the parsed tree collects the text and the block marks in document order; the
    tree is never edited (bs4 finds an element's place among its siblings by a scan, so editing
    every element made pages of many sibling paragraphs quadratic: 77 s for 20 MB)."""
    from bs4 import BeautifulSoup, CData, NavigableString, Tag

    soup = BeautifulSoup(html, "html.parser")
    parts: list[str] = []
    stack: list[tuple[Any, bool]] = [(soup, False)]
    preformatted = 0  # inside <pre> or <textarea>: spacing kept as it is
    while stack:
        node, leaving = stack.pop()
        if leaving:
            if node.name in ("pre", "textarea"):
                preformatted -= 1
            if node.name in ("td", "th"):
                parts.append("\t")
            elif node.name in _PARAGRAPHS or node.name in _BLOCKS:
                parts.append(_PARA if node.name in _PARAGRAPHS else _LINE)
            continue
        if isinstance(node, NavigableString):
            if type(node) is NavigableString:
                parts.append(node.replace(" ", _SPACE).replace("\t", _TAB) if preformatted
                             else re.sub(r"\s+", " ", node))
            elif isinstance(node, CData):
                parts.append(str(node))
            continue  # comments, doctype and processing instructions are not visible text
        if not isinstance(node, Tag) or node.name in _HIDDEN:
            continue
        if node.name == "br":
            parts.append(_LINE)
            continue
        if node.name in _PARAGRAPHS or node.name in _BLOCKS:
            parts.append(_PARA if node.name in _PARAGRAPHS else _LINE)
        if node.name in ("pre", "textarea"):
            preformatted += 1
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(node.contents))
    # A run of block boundaries (and the spaces around them) becomes one line break, or a blank
    # line when any of them ends a paragraph.
    text = re.sub(
        f"[ \t\n]*[{_LINE}{_PARA}][ \t\n{_LINE}{_PARA}]*",
        lambda m: "\n\n" if _PARA in m.group() else "\n",
        "".join(parts),
    )
    return text.strip().replace(_SPACE, " ").replace(_TAB, "\t")


_HIDDEN = {"script", "style", "noscript", "template"}

# Private-use characters mark spacing and block boundaries while the text is assembled.
_SPACE, _TAB, _LINE, _PARA = "\ue000", "\ue001", "\ue002", "\ue003"
_PARAGRAPHS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table", "ul", "ol"}
_BLOCKS = {
    "address", "article", "aside", "caption", "dd", "details", "dialog", "div", "dl", "dt",
    "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "nav",
    "section", "summary", "title", "tr",
}  # fmt: skip


def _pdf_text(p: Path, data: bytes) -> tuple[str, dict[str, Any]]:
    """Text of every page joined by blank lines; `meta["pages"]` holds each page's start offset."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    decrypt = "decrypt it first, e.g. `qpdf --password=PASSWORD --decrypt in.pdf out.pdf`"
    # pypdf logs what it repairs ("invalid pdf header", "EOF marker not found") through its own
    # logger, which would print over the progress display; a file it cannot read still fails
    # below with a DocumentError that says why.
    quiet = logging.getLogger("pypdf")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentError(p, "the PDF is encrypted with a password", hint=decrypt)
        pages = [(page.extract_text() or "") for page in reader.pages]
    except DocumentError:
        raise
    except DependencyError:
        raise DocumentError(
            p,
            "the PDF is encrypted with AES, which needs the 'cryptography' package",
            hint="pip install cryptography, or " + decrypt,
        ) from None
    except Exception as exc:  # pypdf raises many types on damaged files; none should escape raw
        raise DocumentError(
            p,
            f"broken or truncated PDF ({type(exc).__name__}: {exc})",
            hint="re-download or re-export it, or repair it with `qpdf in.pdf out.pdf`",
        ) from None
    finally:
        quiet.setLevel(level)
    starts, parts, offset = [], [], 0
    for page in pages:
        page = page.replace("\r\n", "\n").replace("\r", "\n")
        starts.append(offset)
        parts.append(page)
        offset += len(page) + 2
    text = "\n\n".join(parts)
    if not text.strip():
        raise DocumentError(
            p,
            f"the PDF has {len(pages)} page(s) but no extractable text",
            hint="is it scanned? run OCR first, e.g. `ocrmypdf in.pdf out.pdf`",
        )
    return text, {"format": "pdf", "pages": starts}

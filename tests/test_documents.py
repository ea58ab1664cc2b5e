"""Reading documents: formats, encodings, and a clear error for every kind of bad input."""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pathlib
from pathlib import Path

import pypdf
import pytest

from longweave.documents import Document, open_document
from longweave.errors import DocumentError

FIXTURES = Path(__file__).parent / "fixtures" / "documents"


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page ("" = a page without text)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        page_no, content_no = len(objects) + 1, len(objects) + 2
        kids.append(f"{page_no} 0 R")
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET" if text else ""
        objects.append(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 "
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> "
            f"/Contents {content_no} 0 R >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def encrypted(pdf: bytes, **options: str) -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(pdf)))
    writer.encrypt(**options)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path: Path, **kwargs: int) -> DocumentError:
    """Open `path`, expecting a DocumentError that names the file and carries a hint."""
    with pytest.raises(DocumentError) as info:
        open_document(path, **kwargs)
    error = info.value
    assert str(path) in str(error)
    assert error.path == str(path)
    assert error.hint and error.hint in str(error)
    # The user sees our message, not a library traceback chained under it.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    return error


# -- the Document value ------------------------------------------------------------------


def test_document_id_is_sha256_of_utf8_text() -> None:
    doc = Document.from_text("Grüße", source="notes/a.txt", meta={"k": 1})
    assert doc.id == hashlib.sha256("Grüße".encode()).hexdigest()
    assert doc.name == "a.txt"
    assert Document.from_text("x").name == "text"
    assert doc.meta == {"k": 1}
    assert {doc, Document.from_text("Grüße", source="notes/a.txt", meta={"k": 1})} == {doc}
    assert "Grüße" not in repr(doc)  # long texts must not flood reprs and logs


def test_text_markdown_and_rst_open_with_newlines_normalized(tmp_path: Path) -> None:
    for name in ("a.txt", "b.md", "c.rst", "d.log", "no_extension"):
        path = write(tmp_path, name, b"Line one\r\nLine two\rLine three\n")
        doc = open_document(path)
        assert doc.text == "Line one\nLine two\nLine three\n"
        assert doc.source == str(path)
        assert doc.name == name
        assert doc.id == hashlib.sha256(doc.text.encode()).hexdigest()


# -- encodings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Le café de la gare: naïve résumé, façade, über, señor.\n", "latin-1"),
        ("Grüße aus München, schöne Straße.", "latin-1"),
        ("He said \u201chello\u201d \u2014 it\u2019s only \u20ac5 at the café.\n", "cp1252"),
        ("Привет, как дела? Это тестовый текст на русском языке.\n" * 3, "cp1251"),
    ],
)
def test_legacy_encodings_are_detected(tmp_path: Path, text: str, encoding: str) -> None:
    doc = open_document(write(tmp_path, "legacy.txt", text.encode(encoding)))
    assert doc.text == text


@pytest.mark.parametrize(
    "data",
    [
        "Hello wörld ✓\nzwei".encode("utf-16"),  # BOM, native order
        codecs.BOM_UTF16_BE + "Hello wörld ✓\nzwei".encode("utf-16-be"),
        codecs.BOM_UTF16_LE + "Hello wörld ✓\nzwei".encode("utf-16-le"),
        codecs.BOM_UTF8 + "Hello wörld ✓\nzwei".encode(),
        "Hello wörld ✓\nzwei".encode("utf-16-le"),  # no BOM
    ],
)
def test_unicode_encodings_and_boms(tmp_path: Path, data: bytes) -> None:
    assert open_document(write(tmp_path, "u.txt", data)).text == "Hello wörld ✓\nzwei"


def test_undecodable_text_is_refused_with_a_conversion_hint(tmp_path: Path) -> None:
    error = refused(write(tmp_path, "weird.txt", bytes(range(128, 256)) * 4))
    assert "encoding" in error.problem
    assert "utf-8" in error.hint.lower()


# -- bad input -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    error = refused(tmp_path / "nope.txt")
    assert "no such file" in error.problem
    assert "path" in error.hint


def test_a_symlink_loop_is_named_as_one(tmp_path: Path) -> None:
    loop = tmp_path / "loop.txt"
    loop.symlink_to(tmp_path / "back.txt")
    (tmp_path / "back.txt").symlink_to(loop)
    with pytest.raises(DocumentError, match="symbolic link loops") as info:
        open_document(loop)
    assert "copy it to a local disk" not in info.value.hint and "link" in info.value.hint


def test_directory_points_to_batch_mode(tmp_path: Path) -> None:
    error = refused(tmp_path)
    assert "directory" in error.problem
    assert "batch" in error.hint


@pytest.mark.parametrize(("data", "problem"), [(b"", "empty"), (b" \n\t\r\n  ", "whitespace")])
def test_empty_and_whitespace_only_files(tmp_path: Path, data: bytes, problem: str) -> None:
    error = refused(write(tmp_path, "blank.txt", data))
    assert problem in error.problem
    assert "right file" in error.hint


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), "PNG image"),
        ("report.docx", b"PK\x03\x04\x14\x00\x06\x00" + bytes(64), "zip archive"),
        ("tool", b"\x7fELF\x02\x01\x01" + bytes(64), "ELF executable"),
        ("blob.dat", os.urandom(4096), "binary"),
        ("controls.txt", bytes(range(1, 9)) * 64, "binary"),  # no NUL, mostly control bytes
    ],
)
def test_binary_files_are_named_and_refused(
    tmp_path: Path, name: str, data: bytes, kind: str
) -> None:
    error = refused(write(tmp_path, name, data))
    assert kind in error.problem
    assert "PDF" in error.hint and "convert" in error.hint


def test_files_over_the_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "big.txt", b"word " * 100)
    error = refused(path, max_bytes=100)
    assert "500" in error.problem and "100" in error.problem
    assert "LONGWEAVE_MAX_DOCUMENT_BYTES" in error.hint
    monkeypatch.setenv("LONGWEAVE_MAX_DOCUMENT_BYTES", "499")  # the default comes from Settings
    refused(path)
    monkeypatch.setenv("LONGWEAVE_MAX_DOCUMENT_BYTES", "500")
    assert open_document(path).text.startswith("word word")



@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_is_refused_before_it_is_read() -> None:
    # /dev/zero reports size 0 and never ends: it is refused as a device, not read.
    error = refused(Path("/dev/zero"), max_bytes=1000)
    assert error.problem == "is a character device, not a regular file"
    assert "save the text to a file" in error.hint


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "secret.txt", b"classified")

    def deny(self: Path, *args: object, **kwargs: object) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    # Tests may run as root, where chmod does not stop reads; simulate the OS refusing.
    monkeypatch.setattr(pathlib.Path, "open", deny)
    error = refused(path)
    assert "permission denied" in error.problem
    assert "readable" in error.hint


# -- HTML ----------------------------------------------------------------------------------


def test_html_text_without_tags_scripts_or_styles() -> None:
    doc = open_document(FIXTURES / "sample.html")
    text = doc.text
    assert doc.meta["format"] == "html"
    for hidden in ("SHOULD_NOT_APPEAR", "font-family", "<p>", "<b>", "&amp;", "&nbsp;"):
        assert hidden not in text
    # Paragraphs survive as blank-line separated blocks; inline whitespace is collapsed.
    assert "\n\nMara kept the light on Gull Island for thirty years.\n\n" in text
    assert "Every night she climbed 212 steps & wound the clock." in text
    assert "Oil lamp\nFresnel lens" in text  # list items on their own lines
    assert "First line\nSecond line" in text  # <br>
    assert "def rotate(lens):\n    lens.turn()" in text  # <pre> keeps its indentation
    assert "Year\tShips\n1901\t14" in text  # table rows on lines, cells tab-separated
    assert "\n\n\n" not in text
    assert text.endswith("The end.")


def test_html_is_sniffed_without_an_extension_and_empty_pages_refused(tmp_path: Path) -> None:
    page = b"<!DOCTYPE html><html><body><p>Hi <i>there</i></p><p>Two</p></body></html>"
    assert open_document(write(tmp_path, "page", page)).text == "Hi there\n\nTwo"
    error = refused(write(tmp_path, "blank.html", b"<html><script>x()</script><p> </p></html>"))
    assert "no text" in error.problem


# -- PDF -----------------------------------------------------------------------------------


def test_pdf_pages_are_joined_and_their_offsets_recorded(tmp_path: Path) -> None:
    pages = ["Hello from page one.", "Page two (with parentheses).", "Third page."]
    doc = open_document(write(tmp_path, "three.pdf", make_pdf(pages)))
    assert doc.text == "\n\n".join(pages)
    assert doc.meta["format"] == "pdf"
    starts = doc.meta["pages"]
    assert len(starts) == 3
    for start, page in zip(starts, pages, strict=True):
        assert doc.text[start : start + len(page)] == page


def test_pdf_is_sniffed_by_magic_bytes(tmp_path: Path) -> None:
    doc = open_document(write(tmp_path, "download.bin", make_pdf(["Magic works."])))
    assert doc.text == "Magic works."


@pytest.mark.parametrize(
    "options",
    [
        {"user_password": "", "owner_password": "owner"},
        {"user_password": "", "owner_password": "owner", "algorithm": "AES-256"},
    ],
)
def test_pdf_encrypted_with_an_empty_password_opens(tmp_path: Path, options: dict) -> None:
    pdf = encrypted(make_pdf(["Readable anyway."]), **options)
    assert open_document(write(tmp_path, "locked.pdf", pdf)).text == "Readable anyway."


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-256"])
def test_pdf_with_a_password_is_refused(tmp_path: Path, algorithm: str) -> None:
    pdf = encrypted(make_pdf(["Top secret."]), user_password="hunter2", algorithm=algorithm)
    error = refused(write(tmp_path, "locked.pdf", pdf))
    assert "encrypted" in error.problem
    assert "qpdf" in error.hint and "--decrypt" in error.hint


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_pdf_is_refused(
    tmp_path: Path, keep: float, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    pdf = make_pdf(["Some text that will be cut off."])
    with caplog.at_level(logging.WARNING):
        error = refused(write(tmp_path, "cut.pdf", pdf[: int(len(pdf) * keep)]))
    assert "broken or truncated PDF" in error.problem
    assert "re-export" in error.hint
    # pypdf's own repair notes ("EOF marker not found") do not print over the display.
    assert not [r for r in caplog.records if r.name.startswith("pypdf")]
    assert logging.getLogger("pypdf").level == logging.NOTSET  # and its level is put back


def test_non_pdf_with_a_pdf_extension_is_refused(tmp_path: Path) -> None:
    error = refused(write(tmp_path, "fake.pdf", b"this is not a PDF at all"))
    assert "PDF" in error.problem


def test_pdf_without_text_suggests_ocr(tmp_path: Path) -> None:
    error = refused(write(tmp_path, "scan.pdf", make_pdf(["", ""])))
    assert "2 page(s)" in error.problem and "no extractable text" in error.problem
    assert "OCR" in error.hint

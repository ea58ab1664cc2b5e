"""longweave: reason over documents far longer than a model's context window.

>>> import longweave
>>> longweave.ask("report.pdf", "What changed in 2024?")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from longweave.answer import Answer, Citation, Step, Usage
from longweave.api import aask, ask, load_source
from longweave.errors import (
    BackendCapabilityError,
    BudgetExceeded,
    ConfigError,
    DocumentError,
    LongweaveError,
    LongweaveWarning,
    ModelError,
    ParseError,
)

if TYPE_CHECKING:
    from longweave.documents import Document
    from longweave.session import Session

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "BackendCapabilityError",
    "BudgetExceeded",
    "Citation",
    "ConfigError",
    "Document",
    "DocumentError",
    "LongweaveError",
    "LongweaveWarning",
    "ModelError",
    "ParseError",
    "Session",
    "Step",
    "Usage",
    "aask",
    "ask",
    "load_source",
    "open_document",
    "strategies",
]


def open_document(path: Any) -> Document:
    """Read a .txt, .md, .html or .pdf file into a Document (see `longweave.documents`)."""
    from longweave.documents import open_document as _open

    return _open(path)


def strategies() -> dict[str, str]:
    """Every registered strategy name and where it is defined."""
    from longweave.agents.base import available

    return available()


def __dir__() -> list[str]:
    """The public names, the lazy ones (`Document`, `Session`) included, for dir() and help()."""
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str) -> Any:
    """`Document` and `Session`, imported on first use (so `import longweave` stays light)."""
    # Document lives in a module that is cheap but not needed at import time.
    if name == "Document":
        from longweave.documents import Document

        return Document
    if name == "Session":  # a conversation over a document (`longweave chat` is built on it)
        from longweave.session import Session

        return Session
    raise AttributeError(f"module 'longweave' has no attribute {name!r}")

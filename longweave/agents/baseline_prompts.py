"""Prompt wording of the two baselines, `rag` and `truncate`, kept apart from their algorithms."""

from __future__ import annotations

from collections.abc import Sequence

from longweave.llm import Message, quoted, system, user

PROMPT_VERSION = 2
"""Bumped when the wording changes (completions cached under the old wording are then missed)."""

RAG_SYSTEM = (
    "You answer questions about a long document. You cannot see the whole document, only the "
    "passages below, which a search picked from it as the most relevant to the question."
)
TRUNCATE_SYSTEM = "You answer questions about a document."


def passage_block(n: int, text: str, label: str | None = None) -> str:
    """Passage `n` (1-based) as it appears in the prompt; `label` names its file in a corpus."""
    head = f"[{n}]" + (f" ({label})" if label else "")
    return f"{head}\n{text.strip()}\n\n"


def rag_messages(passages: Sequence[str], question: str) -> list[Message]:
    """The reader's prompt: the retrieved passages (already formatted), then the question."""
    shown = "".join(passages) or "(no passages)\n\n"
    return [
        system(RAG_SYSTEM),
        user(
            f"Passages:\n\n{shown}"
            f"Question: {question}\n\n"
            "Answer the question from the passages alone, briefly. If they do not contain the "
            "answer, say that the passages do not say.\n\nAnswer:"
        ),
    ]


def truncate_messages(text: str, question: str) -> list[Message]:
    """The plain prompt: the document (what fits of it), then the question or a summary request."""
    body = f"Document:\n{quoted(text)}\n\n"
    if question.strip():
        task = f"Question: {question}\n\nAnswer the question from the document, briefly.\n\nAnswer:"
    else:
        task = "Summarize the document.\n\nSummary:"
    return [system(TRUNCATE_SYSTEM), user(body + task)]

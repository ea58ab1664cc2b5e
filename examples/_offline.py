"""An offline stand-in for a language model, so the examples run anywhere in about a second.

It is not a language model. It is `longweave.testing.ScriptedModel` with one rule per caller
role, and each rule answers with the sentence of the text it was shown that shares the most
words with the question. That is enough for the extractive questions the examples ask, and it
shows what the strategies send and cite. Pass `--model local` to an example for real answers.
"""

from __future__ import annotations

import re
from typing import Any

from longweave.testing import Request, ScriptedModel, quoted_after, quoted_blocks

__all__ = ["best_sentence", "offline_model", "resolve"]

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_NAME = re.compile(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)+")
_PRONOUN = re.compile(r"\b(she|he|her|him|they|them|it)\b", re.IGNORECASE)
# Words that say nothing about which sentence answers (question words, articles, auxiliaries).
_STOP = frozenset(
    "a an and are as at be by did do does for from had has have how in is it its of on or "
    "the their there this to was were what when where which who whom whose why with".split()
)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def best_sentence(question: str, text: str) -> str:
    """The sentence of `text` sharing the most words with `question` ('' when none shares any).

    >>> best_sentence("Who kept the light?", "It rained. Mara Quill kept the light.")
    'Mara Quill kept the light.'
    """
    wanted = _words(question)
    best, score = "", 0
    for sentence in _SENTENCE.split(text):
        sentence = sentence.strip()
        shared = len(wanted & _words(sentence))
        if shared > score:  # strictly more: the earliest of equally good sentences wins
            best, score = sentence, shared
    return best


def _question(request: Request) -> str:
    found = re.search(r"(?:Latest question|Question): (.*)", request.text)
    return found.group(1).strip() if found else ""


def _worker(request: Request) -> str:
    """Chain-of-Agents: keep the better of the notes so far and this part's best sentence."""
    text, question = request.text, _question(request)
    part = re.search(r"Part (\d+) of", text)
    tag = f" [c{part.group(1)}]" if part else ""
    notes = quoted_after(text, "Notes from the previous reader:").strip()
    notes = "" if notes.startswith("none yet") else notes  # the first reader gets no notes
    candidate = best_sentence(question, quoted_after(text, "of the text:"))
    if candidate and len(_words(question) & _words(candidate)) > len(
        _words(question) & _words(notes)
    ):
        return candidate + tag
    return notes if notes.endswith("]") else "Nothing relevant yet."


def _manager(request: Request) -> str:
    notes = quoted_blocks(request.text)
    return (notes[0].strip() if notes else "") or "The text does not say."


def _reader(request: Request) -> str:
    """truncate, rag and LIGHT's reader: the best sentence of everything before the question."""
    context = request.messages[-1].content.split("Question:", 1)[0]
    # Labels at the start of a line ([1], [u3], [time]) are not part of what was said.
    context = re.sub(r"^(?:\s*\[[^\]]*\])+\s*", "", context, flags=re.MULTILINE)
    return best_sentence(_question(request), context) or "The text does not say."


def _rewrite(request: Request) -> str:
    """A follow-up's pronoun becomes the first name in the last answer ("she" -> "Mara Quill")."""
    question = _question(request)
    answers = re.findall(r"Assistant: (.*)", request.text)
    names = _NAME.findall(answers[-1]) if answers else []
    return _PRONOUN.sub(names[0], question, count=1) if names else question


def _facts(request: Request) -> dict[str, Any]:
    lines = [s.strip() for s in quoted_after(request.text, "Latest exchange:").splitlines()]
    return {"facts": [line[:190] for line in lines if line][:12]}


def offline_model(context_window: int = 1024) -> ScriptedModel:
    """The stand-in, scripted for chain-of-agents, truncate, rag, LIGHT and Session rewrites."""
    model = ScriptedModel(name="offline-stand-in", context_window=context_window)
    model.on("worker", reply=_worker)
    model.on("manager", reply=_manager)
    model.on("reader", reply=_reader)
    model.on("rewrite", reply=_rewrite)
    model.on("extractor", contains="New passage:", reply=lambda r: {
        "items": [], "summary": quoted_after(r.text, "New passage:").strip()[:380]})
    model.on("extractor", contains="Latest exchange:", reply=_facts)
    model.on("compressor", reply={"critical_context": []})
    model.on("filter", reply={"needed": "yes"})
    return model


def resolve(model: str, context_window: int = 1024) -> Any:
    """`offline` gives the stand-in; anything else ('local', 'hf:<id>', 'openai:<model>') is a
    model string that longweave resolves itself."""
    return offline_model(context_window) if model == "offline" else model

"""Multiple-choice questions: a question written as one string, split into its stem and options.

Questions reach strategies as one string. The eval harness writes options as lines under the
question: `A. text` for its own JSONL format (and Coursera, verbatim from L-Eval), ` (A) text `
for L-Eval's QuALITY and TPO; other datasets use `A) text`. A strategy that can restrict an
answer to the option letters (MemWalker's leaf schema, §4.3) asks `split_choices` for them, and
the eval loaders label their cases with them, so the letters scored are the letters allowed.

>>> c = split_choices("Who kept the lamp?\\n\\nA. Mara\\nB. Tobias\\n\\nAnswer with the letter.")
>>> c.stem, c.letters, c.options[1]
('Who kept the lamp?\\n\\nAnswer with the letter.', ('A', 'B'), ('B', 'Tobias'))
>>> split_choices("Was it a) the keeper or b) the pilot?").options
()
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Choices", "split_choices"]

# One option on its own line: "(A) text", "A. text" or "A) text". Capital letters only: "a)"
# lists run through ordinary prose. "A: text" is left out, as it is how transcripts write
# speakers (a dialogue quoted in a question is not a list of options).
_OPTION = re.compile(r"^\s*(?:\(([A-Z])\)\s*|([A-Z])[.)]\s+)(\S.*?)\s*$")
# Wording that asks for every correct option (the harness's "Answer with the letters of all
# correct options.", "Select all that apply"), not for one.
_MULTI = re.compile(
    r"\b(?:letters of all|all that apply"
    r"|all (?:the )?(?:correct|right|true) (?:options|answers|choices|statements)"
    r"|one or more (?:of the )?(?:options|answers|choices))\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Choices:
    """A question split into its stem and lettered options; no options for an ordinary one."""

    stem: str
    """The question without its option lines: the text above them and any below (an answer
    format hint, say), a blank line between. An ordinary question is kept as it was given."""
    options: tuple[tuple[str, str], ...] = ()
    """(letter, text) pairs in order: A, B, C, ..."""
    multi: bool = False
    """The question asks for every correct option (its answer is several letters)."""

    @property
    def letters(self) -> tuple[str, ...]:
        """The option letters, A first."""
        return tuple(letter for letter, _ in self.options)

    def tidy(self, answer: str) -> str:
        """An answer to this question, stripped; for a question asking for every correct
        option, its option letters once each, in option order ("CA" is "AC")."""
        if self.multi:
            return "".join(x for x in self.letters if x in answer)
        return answer.strip()


def split_choices(question: str) -> Choices:
    """The question's stem and options: the last run of at least two option lines lettered A, B,
    C, ... in order (blank lines between them allowed). Without one, the question as given."""
    lines = question.splitlines()
    block: tuple[int, int, list[tuple[str, str]]] | None = None  # first line, last line, options
    run: list[tuple[str, str]] = []
    start = end = 0
    for i, line in enumerate(lines):
        match = _OPTION.match(line)
        letter = (match.group(1) or match.group(2)) if match else None
        if match and letter == chr(ord("A") + len(run)):
            if not run:
                start = i
            run.append((letter, match.group(3)))
            end = i
            continue
        if run and not line.strip():
            continue  # a blank line inside the list
        if len(run) >= 2:
            block = (start, end, run)
        run = []
        if match and letter == "A":  # a new list starts here
            start, end, run = i, i, [("A", match.group(3))]
    if len(run) >= 2:
        block = (start, end, run)
    if block is None:
        return Choices(question)
    first, last, options = block
    above = "\n".join(lines[:first]).strip()
    below = "\n".join(lines[last + 1:]).strip()
    stem = "\n\n".join(part for part in (above, below) if part)
    return Choices(stem, tuple(options), multi=bool(_MULTI.search(stem)))

"""Chain-of-Agents prompt wording, kept apart from the algorithm (STRATEGIES.md §1.3).

The worker and manager prompts follow the paper's slots in longweave's own words; the cite
instructions are longweave's addition and disappear with `cite=False`. The code prompts are
longweave's own too: the paper's code prompt is not checked here (§1.3, §8.11).
"""

from __future__ import annotations

from typing import Literal

from longweave.llm import Message, quoted, system, user

Mode = Literal["query", "summarize", "code"]
"""Which prompts run: a question's, a summary's (no question), or code completion's."""

WORKER_SYSTEM = (
    "You are one reader in a relay that works through a long text one part at a time. "
    "You see one part and the notes handed to you by the reader before you."
)
CITE_WORKER = (
    " After each statement you keep, write the tag of the part it came from, like [c{n}] for this "
    "part; keep the tags that are already in the notes."
)
STRONGEST_FIRST = (
    " Order the notes by strength of evidence, the strongest first and the weakest last, so that "
    "notes cut short lose only the weakest."
)
"""Cite mode's answer to a CU cut at its cap losing its tail (STRATEGIES.md §1.5.6)."""
CITE_MANAGER = " After each statement you use, keep its [c<number>] tag."
CODE_TASK = "Write the next line of code after the end of the source."
"""The code task when the question is empty: RepoBench-P's next-line completion."""
CODE_WORKER = (
    "Write updated notes from which someone who sees only your notes can do the task. The code "
    "goes at the completion point: the end of the source, unless the task names another place. "
    "Copy these exactly, character for character: import statements; the signatures of the "
    "functions, classes and methods the new code may call, override or extend; the names and "
    "values of constants and module-level variables; and the lines of code just before the "
    "completion point. Describe the rest in a few words, or leave it out. Write only the notes."
)
CODE_LAST_PART = " This part is the end of the source: copy its last lines exactly."


def worker_messages(
    i: int, total: int, chunk: str, previous: str, question: str, *, mode: Mode, cite: bool
) -> list[Message]:
    """The prompt of worker i (0-based) of `total`, carrying the previous communication unit."""
    notes = previous.strip() or "none yet: you are the first reader."
    source = "source code" if mode == "code" else "text"
    body = (
        f"Part {i + 1} of {total} of the {source}:\n{quoted(chunk)}\n\n"
        f"Notes from the previous reader:\n{quoted(notes)}\n\n"
    )
    if mode == "query":
        task = (
            f"Question: {question}\n\n"
            "Write updated notes that keep every piece of evidence, from the notes and from this "
            "part, that bears on the question. Readers after you see only your notes, so keep "
            "names, numbers and wording exact. Do not answer the question yet; "
            "write only the notes."
        )
    elif mode == "code":
        task = f"Task: {question.strip() or CODE_TASK}\n\n{CODE_WORKER}"
        if i == total - 1:
            task += CODE_LAST_PART
    else:
        task = (
            "Extend the notes into a summary of everything read so far, this part included. "
            "Make it fairly long and detailed: the final summary will be written from it alone. "
            "Write only the summary."
        )
    if cite:
        task += CITE_WORKER.format(n=i + 1)
        if mode == "query":  # a summary keeps the text's order; evidence can be ranked
            task += STRONGEST_FIRST
    return [system(WORKER_SYSTEM), user(body + task)]


def manager_messages(notes: str, question: str, *, mode: Mode, cite: bool) -> list[Message]:
    """The manager's prompt: the last communication unit and the task, nothing else."""
    source = "source code" if mode == "code" else "source text"
    intro = (
        f"The {source} was too long to show you, so readers went through it part by part and "
        "condensed it into the notes below.\n\n"
        f"{quoted(notes.strip() or '(the readers found nothing relevant)')}\n\n"
    )
    if mode == "query":
        task = f"Question: {question}\n\nAnswer the question from the notes alone, briefly."
        cue = "\n\nAnswer:"
    elif mode == "code":
        task = (
            f"Task: {question.strip() or CODE_TASK}\n\n"
            "Write the code the task asks for from the notes alone, using the exact names, "
            "signatures and style of the code in them. Reply with the code only: no explanation "
            "and no Markdown fences."
        )
        cue = "\n\nCode:"
    else:
        task = "Write a summary of the whole text from the notes alone."
        cue = "\n\nSummary:"
    if cite:
        task += CITE_MANAGER
    return [
        system("You complete a task about a long text that you can only see through notes."),
        user(intro + task + cue),
    ]


def judge_question(question: str, mode: Mode) -> str:
    """What the judge is told the candidates answer: the question, or the task it stands for."""
    if question.strip():
        return question
    return CODE_TASK if mode == "code" else "Summarize the whole text."


def judge_messages(question: str, candidates: list[str]) -> list[Message]:
    """Ask which of several candidate answers (at most 5, one per path) best answers the
    question (multi-path mode)."""
    listed = "\n".join(f"{n}. {c}" for n, c in enumerate(candidates, 1))
    return [
        system("You compare candidate answers to a question and pick the best supported one."),
        user(
            f"Question: {question}\n\nCandidates:\n{listed}\n\n"
            'Reply with JSON {"reason": "...", "index": <number of the best candidate>}.'
        ),
    ]

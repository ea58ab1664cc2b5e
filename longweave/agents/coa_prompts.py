"""Chain-of-Agents prompt wording, kept apart from the algorithm (STRATEGIES.md §1.3).

The worker and manager prompts follow the paper's slots in longweave's own words; the cite
instructions are longweave's addition and disappear with `cite=False`.
"""

from __future__ import annotations

from longweave.llm import Message, quoted, system, user

WORKER_SYSTEM = (
    "You are one reader in a relay that works through a long text one part at a time. "
    "You see one part and the notes handed to you by the reader before you."
)
CITE_WORKER = (
    " After each statement you keep, write the tag of the part it came from, like [c{n}] for this "
    "part; keep the tags that are already in the notes."
)
CITE_MANAGER = " After each statement you use, keep its [c<number>] tag."


def worker_messages(
    i: int, total: int, chunk: str, previous: str, question: str, *, query: bool, cite: bool
) -> list[Message]:
    """The prompt of worker i (0-based) of `total`, carrying the previous communication unit."""
    notes = previous.strip() or "none yet: you are the first reader."
    body = (
        f"Part {i + 1} of {total} of the text:\n{quoted(chunk)}\n\n"
        f"Notes from the previous reader:\n{quoted(notes)}\n\n"
    )
    if query:
        task = (
            f"Question: {question}\n\n"
            "Write updated notes that keep every piece of evidence, from the notes and from this "
            "part, that bears on the question. Readers after you see only your notes, so keep "
            "names, numbers and wording exact. Do not answer the question yet; "
            "write only the notes."
        )
    else:
        task = (
            "Extend the notes into a summary of everything read so far, this part included. "
            "Make it fairly long and detailed: the final summary will be written from it alone. "
            "Write only the summary."
        )
    if cite:
        task += CITE_WORKER.format(n=i + 1)
    return [system(WORKER_SYSTEM), user(body + task)]


def manager_messages(notes: str, question: str, *, query: bool, cite: bool) -> list[Message]:
    """The manager's prompt: the last communication unit and the task, nothing else."""
    intro = (
        "The source text was too long to show you, so readers went through it part by part and "
        "condensed it into the notes below.\n\n"
        f"{quoted(notes.strip() or '(the readers found nothing relevant)')}\n\n"
    )
    if query:
        task = f"Question: {question}\n\nAnswer the question from the notes alone, briefly."
        cue = "\n\nAnswer:"
    else:
        task = "Write a summary of the whole text from the notes alone."
        cue = "\n\nSummary:"
    if cite:
        task += CITE_MANAGER
    return [
        system("You complete a task about a long text that you can only see through notes."),
        user(intro + task + cue),
    ]


def judge_messages(question: str, candidates: list[str]) -> list[Message]:
    """Ask which of several candidate answers best answers the question (multi-path mode)."""
    listed = "\n".join(f"{n}. {c}" for n, c in enumerate(candidates, 1))
    return [
        system("You compare candidate answers to a question and pick the best supported one."),
        user(
            f"Question: {question}\n\nCandidates:\n{listed}\n\n"
            'Reply with JSON {"reason": "...", "index": <number of the best candidate>}.'
        ),
    ]

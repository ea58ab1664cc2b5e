"""Loaders of the benchmark formats: L-Eval, LooGLE, HotpotQA (pooled), LoCoMo, BEAM, needles.

Each reads the files it is given (see `longweave.evals.datasets` for the case type), writes the
documents through the `DocumentStore` and appends `EvalCase`s. Answer-format hints appended to
questions are ours and are the same for every strategy.
"""

from __future__ import annotations

import ast
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longweave.choices import split_choices
from longweave.errors import ConfigError, DocumentError
from longweave.evals.datasets import (
    MULTI_HINT,
    OPTION_HINT,
    Dataset,
    EvalCase,
    LoadOptions,
    files_of,
    length_bucket,
    read_json,
)

__all__ = ["LOADERS"]

SHORT_HINT = "Answer in a few words."
LOCOMO_HINT = 'Answer in a few words; if the conversation does not say, answer "not mentioned".'

_NUMBER_OPTION = re.compile(r"^\s*([1-9])\.\s*(.+?)\s*$", re.MULTILINE)
_EXAM_TASKS = {"quality", "coursera", "tpo"}
_LEADING_LETTERS = re.compile(r"(?:[A-Z]+(?![a-z])(?:[\s,.;]|and\b)*)*")
"""Option letters at the start of a gold answer ("ACD", "A, C and D"; "B. In 1990" is B)."""


def _options(question: str, pattern: re.Pattern[str]) -> tuple[list[str], list[str]]:
    found = pattern.findall(question)
    return [x for x, _ in found], [t for _, t in found]


def load_leval(path: Path, opts: LoadOptions, out: Dataset) -> None:
    """L-Eval: closed-ended (exam) tasks and F1 tasks; ROUGE and judge-scored rows are skipped."""
    skipped: dict[str, int] = {}
    for file in files_of(path, "leval"):
        task, taken = f"leval/{file.stem}", 0
        for row_no, row in enumerate(read_json(file)):
            evaluation = row.get("evaluation")
            if evaluation not in ("exam", "f1"):
                skipped[file.stem] = skipped.get(file.stem, 0) + len(row["instructions"])
                continue
            if opts.limit is not None and taken >= opts.limit:
                break
            pairs = list(zip(row["instructions"], row["outputs"], strict=False))
            if len(row["instructions"]) != len(row["outputs"]):
                out.notes.append(
                    f"{file.name} row {row_no}: {len(row['instructions'])} questions and "
                    f"{len(row['outputs'])} answers; only the first {len(pairs)} pairs are asked")
            if opts.limit is not None:
                pairs = pairs[: opts.limit - taken]
            if not pairs:
                continue  # a row without questions: the next one may have some
            doc, tokens = opts.store.text(task, row["input"])
            for q_no, (question, gold) in enumerate(pairs):
                case = dict(id=f"{task}-{row_no}-{q_no}", task=task, document=doc,
                            tokens=tokens, length=length_bucket(tokens))
                out.cases.append(_leval_case(file.stem, evaluation, question, gold, case))
            taken += len(pairs)
    if skipped:
        listed = ", ".join(f"{t} ({n})" for t, n in sorted(skipped.items()))
        out.notes.append(f"skipped L-Eval questions scored by ROUGE or a judge: {listed}")


def _leval_case(name: str, evaluation: str, question: str, gold: str,
                case: dict[str, Any]) -> EvalCase:
    if name in _EXAM_TASKS:
        multi = name == "coursera"  # any Coursera question may have several correct answers
        asked = f"{question.rstrip()}\n\n{MULTI_HINT if multi else OPTION_HINT}"
        # The options as a strategy reads them (MemWalker answers with these letters only), so
        # the letters scored are the letters a strategy may answer with.
        choices = split_choices(asked)
        # "(B) text", or letters alone ("ACD", "A, C"): not the capitals of a text after them
        head = gold.split(")")[0] if gold.startswith("(") else _LEADING_LETTERS.match(gold)[0]
        return EvalCase(question=asked, answers=re.findall(r"[A-Z]", head), metric="option",
                        labels=list(choices.letters) or list("ABCD"),  # none read: L-Eval's four
                        options=[text for _, text in choices.options], multi=multi, **case)
    if name == "sci_fi":  # "True [fact: False]": the first part answers from the document
        answer = gold.split("[")[0].strip()
        return EvalCase(question=f"{question.rstrip()}\n\nAnswer True or False.",
                        answers=[answer], metric="option", labels=["True", "False"], **case)
    metric = "contains" if evaluation == "exam" else "f1"  # topic retrieval: the topic named
    return EvalCase(question=question, answers=[gold], metric=metric, **case)


def load_loogle(path: Path, opts: LoadOptions, out: Dataset) -> None:
    """LooGLE: long/short-dependency QA and cloze; summarization (ROUGE) is skipped."""
    for file in files_of(path, "loogle"):
        task, taken = f"loogle/{file.stem}", 0
        unscored = 0
        for row_no, row in enumerate(read_json(file)):
            if opts.limit is not None and taken >= opts.limit:
                break
            raw = row.get("qa_pairs")
            if not raw or str(raw).strip().lower() == "none":
                unscored += 1  # summarization, scored by ROUGE
                continue
            pairs = ast.literal_eval(raw) if isinstance(raw, str) else raw
            if opts.limit is not None:
                pairs = pairs[: opts.limit - taken]
            if not pairs:
                continue
            doc, tokens = opts.store.text(task, row["input"])
            for q_no, qa in enumerate(pairs):
                case = dict(id=f"{task}-{row_no}-{q_no}", task=task, document=doc,
                            tokens=tokens, length=length_bucket(tokens),
                            category=qa.get("type"))
                out.cases.append(_loogle_case(qa, case))
            taken += len(pairs)
        if unscored:
            out.notes.append(f"skipped {task}: {unscored} documents without questions "
                             "(summarization, scored by ROUGE)")


def _loogle_case(qa: dict[str, Any], case: dict[str, Any]) -> EvalCase:
    question, gold = str(qa["Q"]), qa["A"]
    if isinstance(gold, dict):  # cloze: {"<mask-0>": entity}
        hint = "Name the entity behind each mask, one per line, as '<mask-0>: name'."
        return EvalCase(question=f"{question}\n\n{hint}", answers=[str(v) for v in gold.values()],
                        metric="cloze", meta={"masks": {str(k): str(v) for k, v in gold.items()}},
                        **case)
    labels, options = _options(question, _NUMBER_OPTION)
    if len(labels) >= 2 and str(gold).strip() in labels:
        return EvalCase(question=f"{question}\n\nAnswer with the number of the correct option.",
                        answers=[str(gold).strip()], metric="option", labels=labels,
                        options=options, **case)
    return EvalCase(question=question, answers=[str(gold)], metric="f1", **case)


def load_hotpotqa(path: Path, opts: LoadOptions, out: Dataset) -> None:
    """HotpotQA questions, each in a context of a chosen length: its gold paragraphs, its own
    distractors, then paragraphs of other questions, shuffled deterministically per case."""
    rows = [r for f in files_of(path, "hotpotqa") for r in read_json(f)]
    pool = [(c["title"], c["paragraph_text"]) for r in rows for c in r["contexts"]]
    lengths = opts.lengths or (4096,)
    if not opts.lengths:
        out.notes.append("hotpotqa: no --lengths given, pooled to 4k tokens")
    sizes: dict[int, int] = {}

    def size(i: int) -> int:  # a paragraph's tokens, its separator included
        if i not in sizes:
            sizes[i] = opts.store.count_tokens(_paragraph(*pool[i]) + "\n\n")
        return sizes[i]

    index = {(t, p): i for i, (t, p) in enumerate(pool)}
    over: list[int] = []  # contexts longer than asked: the gold paragraphs alone are longer
    for length in lengths:
        for row in opts.take(rows):
            own = [index[(c["title"], c["paragraph_text"])] for c in row["contexts"]]
            gold = [i for i, c in zip(own, row["contexts"], strict=True) if c["is_supporting"]]
            rng = random.Random(f"{opts.seed}:{row['question_id']}:{length}")
            others = rng.sample(range(len(pool)), len(pool))
            chosen = _fill(gold, [i for i in own if i not in gold] + others, length, size, pool)
            rng.shuffle(chosen)
            text = "\n\n".join(_paragraph(*pool[i]) for i in chosen)
            while opts.store.count_tokens(text) > length and len(chosen) > len(gold):
                # the joined text counted more than its parts: drop the last distractor
                drop = max(k for k, i in enumerate(chosen) if i not in gold)
                chosen.pop(drop)
                text = "\n\n".join(_paragraph(*pool[i]) for i in chosen)
            doc, tokens = opts.store.text("hotpotqa", text)
            if tokens > length:
                over.append(tokens)
            spans = sorted({s for a in row["answers_objects"] for s in a.get("spans", [])})
            out.cases.append(EvalCase(
                id=f"{row['question_id']}@{length}", task="hotpotqa", document=doc,
                question=f"{row['question_text']}\n\n{SHORT_HINT}", answers=spans, metric="f1",
                tokens=tokens, length=length, meta={"paragraphs": len(chosen)},
            ))
    if over:
        out.notes.append(f"hotpotqa: {len(over)} contexts are longer than their --lengths "
                         f"(up to {max(over):,} tokens): their gold paragraphs alone are longer, "
                         "and are always kept")


def _paragraph(title: str, text: str) -> str:
    return f"{title}\n{text.strip()}"


def _fill(gold: list[int], candidates: list[int], length: int, size: Callable[[int], int],
          pool: list[tuple[str, str]]) -> list[int]:
    chosen, titles = list(gold), {pool[i][0] for i in gold}
    used, misses = sum(size(i) for i in gold), 0
    for i in candidates:
        if pool[i][0] in titles:
            continue  # one paragraph per title: a second copy could contradict the gold one
        if used + size(i) > length:
            misses += 1
            if misses > 16:  # nearly full: stop looking for a paragraph small enough
                break
            continue
        chosen.append(i)
        titles.add(pool[i][0])
        used += size(i)
    return chosen


def load_locomo(path: Path, opts: LoadOptions, out: Dataset) -> None:
    """LoCoMo QA over each conversation (written as a turns file); category 5 (adversarial)
    questions are scored on declining to answer, as LoCoMo's scorer does."""
    from longweave.conversations import load_conversations

    taken = 0
    for file in files_of(path, "locomo"):
        samples = read_json(file)
        conversations = load_conversations(file)
        for n, sample in enumerate(samples if isinstance(samples, list) else [samples]):
            if opts.limit is not None and taken >= opts.limit:
                break
            qa = sample.get("qa", [])
            if opts.limit is not None:
                qa = qa[: opts.limit - taken]
            if not qa:
                continue  # a conversation without questions: the next one may have some
            doc, tokens = _conversation(opts, conversations[n], "locomo")
            for i, q in enumerate(qa):
                category = int(q.get("category", 0))
                adversarial = category == 5 or "answer" not in q
                answers = [str(q.get("adversarial_answer" if adversarial else "answer", ""))]
                out.cases.append(EvalCase(
                    id=f"{sample.get('sample_id', n)}-q{i}", task="locomo", document=doc,
                    question=f"{q['question']}\n\n{LOCOMO_HINT}", answers=answers,
                    metric="abstain" if adversarial else "f1", category=str(category),
                    tokens=tokens, length=length_bucket(tokens),
                    meta={"evidence": q.get("evidence", [])},
                ))
            taken += len(qa)


def _conversation(opts: LoadOptions, conv: Any, hint: str) -> tuple[str, int]:
    """Write a conversation as a JSONL turns file; count the tokens of its rendering."""
    lines = [json.dumps({"speaker": t.speaker, "text": t.text, "time": t.time,
                         **({"id": t.id} if t.id is not None else {})}) for t in conv.turns]
    doc = opts.store.write(f"{hint}-{conv.name}", "\n".join(lines) + "\n", suffix=".jsonl")
    rendered = conv.document().text
    return doc, opts.store.count(f"conversation:{doc}", rendered)


_BEAM_REFERENCE = ("answer", "ideal_answer", "ideal_response", "ideal_summary")


def load_beam(path: Path, opts: LoadOptions, out: Dataset) -> None:
    """BEAM probing questions over each chat, scored by the rubric judge (`evals.beam`)."""
    from longweave.conversations import load_conversations

    files = sorted((path / "chats").glob("*.json")) if (path / "chats").is_dir() else []
    taken = 0
    for file in files or files_of(path, "beam"):
        chat = read_json(file)
        questions = [(ability, i, q) for ability, qs in chat.get("probing_questions", {}).items()
                     for i, q in enumerate(qs)]
        if opts.limit is not None and taken >= opts.limit:
            break
        if opts.limit is not None:
            questions = questions[: opts.limit - taken]
        if not questions:
            continue  # a chat without probing questions: the next one may have some
        conv = load_conversations(file)[0]
        doc, tokens = _conversation(opts, conv, f"beam-{chat.get('tier', '')}")
        for ability, i, q in questions:
            reference = next((str(q[k]) for k in _BEAM_REFERENCE if k in q), None)
            rubric = [str(r) for r in q.get("rubric", [])]
            if not rubric:
                raise DocumentError(file, f"{ability} question {i} has no rubric",
                                    hint="BEAM questions are scored against their rubric")
            out.cases.append(EvalCase(
                id=f"beam-{chat.get('chat_id', file.stem)}-{ability}-{i}", task="beam",
                document=doc, question=str(q["question"]),
                answers=[reference] if reference else [], metric="beam", category=ability,
                tokens=tokens, length=length_bucket(tokens),
                meta={"rubric": rubric, "ordering": ability == "event_ordering",
                      "tier": chat.get("tier")},
            ))
        taken += len(questions)


def load_needle(path: Path, opts: LoadOptions, out: Dataset) -> None:
    """Needle in a haystack: the haystack files at each length and depth (`evals.needle`)."""
    from longweave.evals.needle import (
        PG_NEEDLE,
        Needle,
        make_case,
        read_haystack,
        read_haystack_file,
    )

    folder = path if path.is_dir() else path.parent
    if path.is_file():
        haystack = read_haystack_file(path)
    else:
        essays = folder / "essays" if (folder / "essays").is_dir() else folder
        haystack = read_haystack(essays)
    # Line ends as documents are read back (CRLF -> LF), so the needle's offsets stay exact.
    haystack = haystack.replace("\r\n", "\n").replace("\r", "\n")
    needle = PG_NEEDLE
    spec = folder / "needles.json"
    if spec.exists():
        single = read_json(spec).get("single_needle", {})
        if single:
            needle = Needle(single["needle"].strip(), single["retrieval_question"],
                            (single["answer"],))
    lengths = opts.lengths or (4096,)
    depths = opts.depths or (0.0, 25.0, 50.0, 75.0, 100.0)
    if not opts.lengths:
        out.notes.append("needle: no --lengths given, 4k tokens")
    have = opts.store.count_tokens(haystack)
    if 0 < have < max(lengths) + 64:  # upstream repeats the essays until the length is reached
        copies = -(-(max(lengths) + 64) // have)
        haystack = "\n\n".join([haystack.strip()] * copies)
        out.notes.append(f"needle: the haystack ({have:,} tokens) is repeated {copies}x")
    for length in lengths:
        grid = opts.take([float(d) for d in depths])
        for depth in grid:
            try:
                case = make_case(haystack, needle, tokens=length, depth=depth,
                                 count_tokens=opts.store.count_tokens)
            except ConfigError as exc:
                raise ConfigError(f"needle at {length:,} tokens: {exc.message}",
                                  hint=exc.hint) from None
            doc, tokens = opts.store.text(f"needle-{length}", case.document)
            out.cases.append(EvalCase(
                id=f"needle-{length}-{depth:g}", task="needle", document=doc,
                question=case.question, answers=list(case.answers), metric="contains",
                tokens=tokens, length=length, depth=depth,
                meta={"needle_start": case.needle_start, "needle_end": case.needle_end,
                      "reached_depth": round(case.reached_depth, 2)},
            ))


LOADERS: dict[str, Callable[[Path, LoadOptions, Dataset], None]] = {
    "beam": load_beam,
    "hotpotqa": load_hotpotqa,
    "leval": load_leval,
    "locomo": load_locomo,
    "loogle": load_loogle,
    "needle": load_needle,
}
"""The benchmark loaders by format name (the generic JSONL one lives in `datasets`)."""

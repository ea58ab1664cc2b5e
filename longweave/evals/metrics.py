"""Answer metrics: exact match, token F1, contains-answer and multiple-choice accuracy.

Text metrics use SQuAD's answer normalization (lowercase, drop punctuation and the articles
a/an/the, collapse whitespace) and take the best score over the gold answers, as the SQuAD,
HotpotQA and L-Eval scorers do.

>>> exact_match("The Eiffel Tower.", ["eiffel tower"])
1.0
>>> token_f1("in Paris, France", ["Paris"])
0.5
>>> parse_choice("I think the answer is (C) because...", ["A", "B", "C", "D"])
'C'
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

__all__ = [
    "ABSTAIN_PHRASES",
    "abstains",
    "cloze_accuracy",
    "contains_answer",
    "exact_match",
    "normalize_answer",
    "option_accuracy",
    "parse_choice",
    "parse_choices",
    "token_f1",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | set("‘’“”–—…")


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals a normalized gold answer."""
    said = normalize_answer(prediction)
    return float(any(said == normalize_answer(a) for a in answers))


def _f1(prediction: str, answer: str) -> float:
    said, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not said or not gold:  # SQuAD: two empty answers agree, one empty one does not
        return float(said == gold)
    common = sum((Counter(said) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(said), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """The best bag-of-tokens F1 between the prediction and a gold answer."""
    return max((_f1(prediction, a) for a in answers), default=0.0)


def contains_answer(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when a normalized gold answer appears, on word boundaries, in the prediction."""
    said = f" {normalize_answer(prediction)} "
    return float(any(g and f" {g} " in said for g in map(normalize_answer, answers)))


ABSTAIN_PHRASES = ("not mentioned", "no information", "not specified", "does not say",
                   "doesn't say", "does not mention", "not stated", "unknown",
                   "cannot be determined")
"""What counts as declining to answer (LoCoMo's scorer accepts the first two)."""


def abstains(prediction: str) -> float:
    """1.0 when the prediction declines to answer (for unanswerable questions)."""
    said = prediction.lower()
    return float(any(p in said for p in ABSTAIN_PHRASES))


def cloze_accuracy(prediction: str, answers: dict[str, str]) -> float:
    """The share of masked entities (`{"<mask-0>": "Kentwood"}`) the prediction names."""
    if not answers:
        return 0.0
    return sum(contains_answer(prediction, [v]) for v in answers.values()) / len(answers)


def _label_pattern(labels: Sequence[str]) -> str:
    return "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))


def _word_labels(text: str, labels: Sequence[str]) -> list[str]:
    """Word labels (True/False, yes/no): every mention, in order of appearance."""
    pattern = re.compile(rf"\b({_label_pattern(labels)})\b", re.IGNORECASE)
    lower = {x.lower(): x for x in labels}
    return [lower[m.group(1).lower()] for m in pattern.finditer(text)]


def _explicit(text: str, labels: Sequence[str], multi: bool) -> list[str]:
    """Labels the text states as its choice, most explicit form first."""
    alt = _label_pattern(labels)
    if multi:  # "Answer: A, C and D" / "answers are (A) and (C)": the whole list
        listed = re.search(
            rf"(?i:answers?|options?|choices?)\s*(?i:are|is|:|=)?\s*((?:[\(\[]?(?:{alt})[\)\]]?"
            rf"(?:\s*(?:,|and|&|/)?\s*)?)+)(?!\w)", text)
        if listed:
            return re.findall(rf"(?<!\w)({alt})(?!\w)", listed.group(1))
    forms = (
        # "answer is B", "Answer: (B)", "option C", "correct choice: D"
        rf"(?i:answer|option|choice)\s*(?i:is|:|=|would be)?\s*[\(\[]?({alt})(?!\w)",
        rf"[\(\[]({alt})[\)\]]",  # "(B)" or "[B]" anywhere
        rf"^\W*({alt})\s*(?:[\).:,]|$)",  # "B." "B)" "B:" or just "B" at a line's start
    )
    for form in forms:
        found = re.findall(form, text, flags=re.MULTILINE)
        if found:
            return found
    return []


def _bare(text: str, labels: Sequence[str]) -> list[str]:
    """Standalone letter labels, skipping "A" used as an article ("A good reason is...") and,
    in a list long enough to have an option I, "I" as a pronoun ("I think...")."""
    found = []
    for m in re.finditer(rf"(?<![\w'’])({_label_pattern(labels)})(?![\w'’])", text):
        word = re.match(r"\s+(?!(?:and|or|is|was)\b)[a-z]", text[m.end():])
        if m.group(1) in ("A", "I") and word:
            continue
        found.append(m.group(1))
    return found


def parse_choices(
    text: str, labels: Sequence[str], options: Sequence[str] = (), *, multi: bool = False
) -> list[str]:
    """The option labels a free-text answer picks (several only when `multi`), in label order.

    Letters and digits are read from explicit forms ("answer is B", "(B)", "B." at the start),
    then (letters only) from bare labels, ignoring "A" used as an article, then from the option
    texts quoted in the answer. Word labels (True/False) are read as the first such word.
    """
    if not labels:
        return []
    order = list(labels)
    if all(len(x) > 1 for x in labels):  # word labels: the first one said is the choice
        words = _word_labels(text, labels)
        return sorted(set(words), key=order.index) if multi else words[:1]
    found = _explicit(text, labels, multi)
    if multi and not found:
        # "ACD" as the whole answer (L-Eval's Coursera gold is written so)
        compact = re.fullmatch(r"\W*([A-Z]{2,})\W*", text.strip())
        if compact and all(ch in labels for ch in compact.group(1)):
            found = list(compact.group(1))
    if not found and all(x.isalpha() for x in labels):
        bare = _bare(text, labels)
        if multi or len(set(bare)) == 1:
            found = bare
    if not found and options:
        said = f" {normalize_answer(text)} "
        found = [x for x, o in zip(labels, options, strict=False)
                 if normalize_answer(o) and f" {normalize_answer(o)} " in said]
        if not multi and len(found) != 1:
            found = []
    if multi:
        return sorted(set(found), key=order.index)
    return found[:1]


def parse_choice(text: str, labels: Sequence[str], options: Sequence[str] = ()) -> str | None:
    """The one option label a free-text answer picks, or None when it picks none clearly."""
    chosen = parse_choices(text, labels, options)
    return chosen[0] if chosen else None


def option_accuracy(
    prediction: str,
    gold: Sequence[str],
    labels: Sequence[str],
    options: Sequence[str] = (),
    *,
    multi: bool = False,
) -> float:
    """1.0 when the labels picked are exactly the gold labels (all of them, for multi-select)."""
    picked = parse_choices(prediction, labels, options, multi=multi)
    return float(bool(picked) and set(picked) == set(gold))

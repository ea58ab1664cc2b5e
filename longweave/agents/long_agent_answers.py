"""How LongAgent reads its members' replies: normalized answers, clusters, conflict resolution,
and citations narrowed to the quotes members gave (STRATEGIES.md §2.2, §8.8)."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from difflib import SequenceMatcher
from typing import TYPE_CHECKING

from longweave.agents.long_agent_prompts import MemberReply, Shown
from longweave.answer import Citation, vote_key

if TYPE_CHECKING:
    from longweave.agents.base import RunContext
    from longweave.chunking import Chunk

@dataclass(frozen=True)
class Cluster:
    """Members whose answers agree up to normalization, with the quotes they gave."""

    answer: str
    key: str  # the normalized answer that others are compared with
    members: tuple[int, ...]  # chunk indices, ascending
    quotes: tuple[str, ...] = ()
    copied: bool = False  # a member's answer was counted as found for copying its part

    def shown(self, chars: int) -> Shown:
        return Shown(self.answer[:chars], self.members)


def same(a: str, b: str, threshold: float) -> bool:
    """Whether two normalized answers agree."""
    return a == b or SequenceMatcher(None, a, b).ratio() >= threshold


def rank(clusters: list[Cluster]) -> list[Cluster]:
    """Largest cluster first, ties to the one holding the earliest chunk."""
    return sorted(clusters, key=lambda c: (-len(c.members), c.members[0]))


def cluster_replies(
    replies: Sequence[MemberReply], threshold: float, copied: Collection[int] = ()
) -> list[Cluster]:
    """Group the members who found an answer by normalized answer, ranked; `copied` are the
    members whose answer was counted as found because it copies their part (`quoted_answers`)."""
    clusters: list[Cluster] = []
    for j, reply in enumerate(replies):
        key = vote_key(reply.answer)
        if not reply.found or not key:
            continue
        for n, cluster in enumerate(clusters):
            if same(key, cluster.key, threshold):
                clusters[n] = replace(cluster, members=(*cluster.members, j),
                                      quotes=(*cluster.quotes, *reply.evidence),
                                      copied=cluster.copied or j in copied)
                break
        else:
            clusters.append(Cluster(reply.answer.strip(), key, (j,), tuple(reply.evidence),
                                    j in copied))
    return rank(clusters)


def resolve_conflict(
    a: Cluster, b: Cluster, reply: MemberReply, threshold: float
) -> tuple[list[Cluster], str]:
    """What is left of clusters a and b after a merger re-answered over their chunks."""
    key = vote_key(reply.answer)
    quotes = tuple(reply.evidence)
    if not reply.found or not key:
        # Ours: the joint reading supports neither answer. A side whose answer copies its own
        # part stays: the merger's found = false is the same flag that copying overrode.
        kept = [c for c in (a, b) if c.copied]
        return kept, "neither" if not kept else "kept_copied"
    if same(key, a.key, threshold):
        return [replace(a, quotes=a.quotes + quotes)], "first"
    if same(key, b.key, threshold):
        return [replace(b, quotes=b.quotes + quotes)], "second"
    ratio = SequenceMatcher(None, key, a.key).ratio(), SequenceMatcher(None, key, b.key).ratio()
    base = a if ratio[0] >= ratio[1] else b
    return [Cluster(reply.answer.strip(), key, base.members, base.quotes + quotes,
                    base.copied)], "new"


def supporting_cluster(answer: str, clusters: Sequence[Cluster]) -> Cluster | None:
    """The surviving cluster that backs the answer (§2.2 line 20): with several (later rounds,
    leftover conflicts), one the answer contains or that contains it, else the most similar;
    ties go to the newest round's largest. None only when no member found anything."""
    key = vote_key(answer)
    best, best_score = None, -1.0
    for cluster in clusters:
        contained = bool(key) and (
            f" {cluster.key} " in f" {key} " or f" {key} " in f" {cluster.key} "
        )
        score = 1.0 if contained else SequenceMatcher(None, key, cluster.key).ratio()
        if score > best_score:
            best, best_score = cluster, score
    return best


WORD = re.compile(r"\w+")


def copied_span(answer: str, text: str, known: str) -> tuple[int, int, int] | None:
    """The run of words `answer` copies from `text` that holds the most words absent from
    `known`: (new words, start, end) with the span's character offsets in `text`, or None.

    Words are compared case-folded and punctuation is ignored, so "Mara Quill, the widow"
    matches "mara quill the widow"; the span itself is exact text of `text`.
    """
    known_words = {w.casefold() for w in WORD.findall(known)}
    said = [w.casefold() for w in WORD.findall(answer)]
    marks = list(WORD.finditer(text))
    where: dict[str, list[int]] = {}
    for j, m in enumerate(marks):
        where.setdefault(m.group().casefold(), []).append(j)
    new = [0]
    for w in said:
        new.append(new[-1] + (w not in known_words))
    best: tuple[int, int, int, int] | None = None  # (new words, length, last text word, length)
    runs: dict[int, int] = {}  # text word index -> length of the common run ending there
    for i, w in enumerate(said, 1):
        here = {j: runs.get(j - 1, 0) + 1 for j in where.get(w, ())}
        for j, length in here.items():
            score = (new[i] - new[i - length], length)
            if best is None or score > best[:2]:
                best = (*score, j, length)
        runs = here
    if best is None:
        return None
    fresh, _, last, length = best
    return fresh, marks[last - length + 1].start(), marks[last].end()


def locate(text: str, quote: str) -> tuple[int, int] | None:
    """Where `quote` lies in `text`: exact match first, then with whitespace normalized."""
    quote = quote.strip()
    if not quote:
        return None
    at = text.find(quote)
    if at >= 0:
        return at, at + len(quote)
    match = re.search(r"\s+".join(map(re.escape, quote.split())), text)
    return (match.start(), match.end()) if match else None


def cite_cluster(
    ctx: RunContext, chunks: Sequence[Chunk], cluster: Cluster
) -> tuple[list[Citation], int]:
    """Quote citations where a cluster's quotes are found in its members' chunks, else the
    whole chunk; returns the citations and how many quotes were found nowhere (dropped)."""
    quotes = [q for q in dict.fromkeys(cluster.quotes) if q.strip()]
    located: set[str] = set()
    citations: list[Citation] = []
    for j in cluster.members:
        chunk = chunks[j]
        spans = sorted({span for q in quotes if (span := locate(chunk.text, q))})
        located.update(q for q in quotes if locate(chunk.text, q))
        if not spans:
            citations.append(ctx.cite_chunk(chunk))
        for start, end in spans:
            start, end = chunk.start + start, chunk.start + end
            citations.append(Citation(
                doc_id=ctx.document.id, start=start, end=end, text=ctx.document.text[start:end],
                chunk_index=chunk.index, kind="quote", source=ctx.document.source,
            ))
    return citations, len(quotes) - len(located)

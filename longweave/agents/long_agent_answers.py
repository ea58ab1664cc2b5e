"""How LongAgent reads its members' replies: normalized answers, clusters, conflict resolution,
and citations narrowed to the quotes members gave (STRATEGIES.md §2.2, §8.8)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from difflib import SequenceMatcher
from typing import TYPE_CHECKING

from longweave.agents.long_agent_prompts import MemberReply, Shown
from longweave.answer import Citation

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

    def shown(self, chars: int) -> Shown:
        return Shown(self.answer[:chars], self.members)


def normalize(answer: str) -> str:
    """SQuAD-style normalization: lower case, no punctuation, no articles, single spaces."""
    text = re.sub(r"[^\w\s]", " ", answer.lower())
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def same(a: str, b: str, threshold: float) -> bool:
    """Whether two normalized answers agree."""
    return a == b or SequenceMatcher(None, a, b).ratio() >= threshold


def rank(clusters: list[Cluster]) -> list[Cluster]:
    """Largest cluster first, ties to the one holding the earliest chunk."""
    return sorted(clusters, key=lambda c: (-len(c.members), c.members[0]))


def cluster_replies(replies: Sequence[MemberReply], threshold: float) -> list[Cluster]:
    """Group the members who found an answer by normalized answer, ranked."""
    clusters: list[Cluster] = []
    for j, reply in enumerate(replies):
        key = normalize(reply.answer)
        if not reply.found or not key:
            continue
        for n, cluster in enumerate(clusters):
            if same(key, cluster.key, threshold):
                clusters[n] = replace(cluster, members=(*cluster.members, j),
                                      quotes=(*cluster.quotes, *reply.evidence))
                break
        else:
            clusters.append(Cluster(reply.answer.strip(), key, (j,), tuple(reply.evidence)))
    return rank(clusters)


def resolve_conflict(
    a: Cluster, b: Cluster, reply: MemberReply, threshold: float
) -> tuple[list[Cluster], str]:
    """What is left of clusters a and b after a merger re-answered over their chunks."""
    key = normalize(reply.answer)
    quotes = tuple(reply.evidence)
    if not reply.found or not key:
        return [], "neither"  # ours: the joint reading supports neither answer
    if same(key, a.key, threshold):
        return [replace(a, quotes=a.quotes + quotes)], "first"
    if same(key, b.key, threshold):
        return [replace(b, quotes=b.quotes + quotes)], "second"
    ratio = SequenceMatcher(None, key, a.key).ratio(), SequenceMatcher(None, key, b.key).ratio()
    base = a if ratio[0] >= ratio[1] else b
    return [Cluster(reply.answer.strip(), key, base.members, base.quotes + quotes)], "new"


def supporting_cluster(answer: str, clusters: Sequence[Cluster]) -> Cluster | None:
    """The surviving cluster that backs the answer (§2.2 line 20): with several (later rounds,
    leftover conflicts), one the answer contains or that contains it, else the most similar;
    ties go to the newest round's largest. None only when no member found anything."""
    key = normalize(answer)
    best, best_score = None, -1.0
    for cluster in clusters:
        contained = bool(key) and (
            f" {cluster.key} " in f" {key} " or f" {key} " in f" {cluster.key} "
        )
        score = 1.0 if contained else SequenceMatcher(None, key, cluster.key).ratio()
        if score > best_score:
            best, best_score = cluster, score
    return best


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

"""GraphReader's key-element graph as a page: nodes sized by their atomic facts, the answer's path
highlighted, a node's facts and chunk ids on click."""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING

from longweave.visualize.layout import graph_layout, prune
from longweave.visualize.page import esc, page, write
from longweave.visualize.trail import Trail

if TYPE_CHECKING:
    import networkx as nx

    from longweave.answer import Answer
    from longweave.graphs.store import KeyGraph

__all__ = ["render_graph"]

SIZE, PAD = 1000, 60
"""The SVG's drawing box (viewBox units) and the margin around it."""
LABEL_CHARS = 80
"""A drawn label's length at most (GraphReader's names stay under it by default): a longer name
would be drawn across the whole graph. The tooltip, the search and the panel keep it whole."""

FOLD = r"""
function fold(s){return s.normalize('NFKC').toUpperCase().toLowerCase().replace(/ß/g,'ss')
 .replace(/ς/g,'σ').replace(/[\uab70-\uabbf\u13f8-\u13fd]/g,c=>c.toUpperCase())
 .normalize('NFKC').replace(/i\u0307/g,'i').replace(/[^\p{L}\p{N}\p{M}]+/gu,' ')
 .replace(/\s+/g,' ').trim()}
"""
"""The search's folding of a query and of the names, as close to GraphReader's `normalize_key`
(NFKC, `casefold`, NFKC again, the dot of a casefolded "İ" dropped, runs of anything but
letters, digits and combining marks to one space) as JavaScript gets.
`toLowerCase` alone is not `casefold`: upper-casing first expands what folds to several letters
("ﬀ", "ŉ", "ΐ" as `casefold` spells them), "ß" and "ẞ" become "ss", every sigma "σ" (lower-
casing makes a final one "ς"), and Cherokee folds to its capitals as in Python. Left apart:
"ı" folds to "i" here, and stays "ı" in Python; the query and the names are folded alike, so
they still meet (a query "i" also finds an "ı")."""

SCRIPT = FOLD + """
const nodes=[...svg.querySelectorAll('.node')];const info=document.getElementById('lw-info');
const intro=[...info.childNodes];
function show(i){nodes.forEach(n=>n.classList.toggle('sel',+n.dataset.id===i));
 const d=data.nodes[i];const byChunk=new Map();
 for(const f of d.facts){const [c,t]=data.facts[f];if(!byChunk.has(c))byChunk.set(c,[]);
  byChunk.get(c).push(t)}
 const chunks=[...byChunk.keys()].sort((a,b)=>a-b);
 info.replaceChildren(el('h2',d.name),el('p',`${d.facts.length} atomic fact`+
  (d.facts.length===1?'':'s')+` · chunk${chunks.length===1?'':'s'} ${chunks.join(', ')}`,'meta'));
 for(const c of chunks){info.append(el('h3','chunk '+c));const ul=el('ul');
  for(const t of byChunk.get(c))ul.append(el('li',t));info.append(ul)}
 if(d.adj.length){info.append(el('h3','neighbours'));const p=el('p');
  for(const j of d.adj){const b=el('span',data.nodes[j].name,'chip');b.dataset.goto=j;p.append(b)}
  info.append(p)}
 const back=el('span','← overview','chip');back.dataset.back='1';const bp=el('p');bp.append(back);
 info.append(bp)}
info.addEventListener('click',e=>{const t=e.target.closest('[data-goto],[data-back]');if(!t)return;
 if(t.dataset.back){nodes.forEach(n=>n.classList.remove('sel'));info.replaceChildren(...intro)}
 else show(+t.dataset.goto)});
nodes.forEach(n=>n.addEventListener('click',()=>show(+n.dataset.id)));
const q=document.getElementById('lw-q');const keys=nodes.map(n=>fold(n.dataset.name));
q.addEventListener('input',()=>{const v=fold(q.value);svg.classList.toggle('dim',!!v);
 nodes.forEach((n,i)=>n.classList.toggle('match',!!v&&keys[i].includes(v)))});
const p=document.getElementById('lw-path');
if(p)p.addEventListener('click',()=>svg.classList.toggle('pathonly'));
"""


def render_graph(
    graph: KeyGraph,
    path: str | os.PathLike[str] | None = None,
    *,
    highlight: Trail | Answer | Iterable[Hashable] | None = None,
    title: str | None = None,
    max_nodes: int = 300,
    labels: int = 40,
) -> str:
    """The graph as a self-contained HTML page; with `path`, also written there (by suffix:
    .html, .svg, or .png/.pdf through matplotlib).

    `highlight` marks a path: a `Trail`, an `Answer` (its steps), or node names. The
    `max_nodes` nodes with the most facts are drawn (the highlighted ones always), and the
    `labels` largest carry a visible label (every node shows its name on hover).
    """
    trail = as_trail(highlight)
    g = prune(graph.graph, max_nodes, trail.nodes)
    pos = graph_layout(g)
    order = list(g.nodes)
    index = {n: i for i, n in enumerate(order)}
    named = set(sorted(order, key=lambda n: (-_facts(g, n), str(n)))[:labels]) | set(trail.nodes)
    chunks = {n: sorted({graph.facts[i].chunk for i in g.nodes[n].get("facts", ())}) for n in order}
    sizes = radii(g)
    svg = _svg(g, pos, order, trail, named, chunks, sizes)
    total, shown = graph.graph.number_of_nodes(), g.number_of_nodes()
    doc = str(graph.settings.get("model", "")) or "unknown model"
    subtitle = (f"{total:,} key elements, {graph.graph.number_of_edges():,} edges, "
                f"{len(graph.facts):,} atomic facts from {len(graph.spans):,} chunks · "
                f"built by {doc}" + (f" · showing the {shown:,} with the most facts"
                                     if shown < total else ""))
    # Only the facts of the nodes drawn travel in the page, renumbered in order.
    used = sorted({i for n in order for i in g.nodes[n].get("facts", ())})
    renumber = {fact: k for k, fact in enumerate(used)}
    data = {
        "facts": [[graph.facts[i].chunk, graph.facts[i].text] for i in used],
        "nodes": [{"name": str(n), "facts": [renumber[i] for i in g.nodes[n].get("facts", ())],
                   "adj": [index[v] for v in sorted(g[n], key=lambda v: (-g[n][v].get(
                       "weight", 1), str(v)))]} for n in order],
    }
    tools = ("<input id=\"lw-q\" type=\"search\" placeholder=\"find a node…\">"
             + ("<button id=\"lw-path\" type=\"button\">path only</button>" if trail.nodes
                else ""))
    html_text = page(kind="graph", title=title or "GraphReader graph", subtitle=subtitle,
                     tools=tools, view=svg, aside=_intro(trail, index, order, g), data=data,
                     script=SCRIPT)
    if path is not None:
        from longweave.visualize.image import graph_image

        write(path, html_text=html_text, svg=svg,
              image=lambda p: graph_image(p, g, pos, sizes, trail, named,
                                          title or "GraphReader graph"))
    return html_text


def as_trail(highlight: Trail | Answer | Iterable[Hashable] | None) -> Trail:
    """A `Trail` from whatever `highlight` was given."""
    from longweave.answer import Answer
    from longweave.visualize.trail import trail

    if highlight is None:
        return Trail()
    if isinstance(highlight, Trail):
        return highlight
    if isinstance(highlight, Answer):
        return trail(highlight)
    return Trail.of(highlight)


def radii(g: nx.Graph) -> dict[Hashable, float]:
    """Node radii in viewBox units: area grows with facts; the largest shrink as nodes crowd."""
    counts = {n: _facts(g, n) for n in g.nodes}
    most = max(counts.values(), default=1) or 1
    big = min(max(0.3 * SIZE / math.sqrt(max(len(counts), 1)), 8.0), 30.0)
    small = max(3.0, big / 4)
    return {n: small + (big - small) * math.sqrt(c / most) for n, c in counts.items()}


def _clip(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else name[:LABEL_CHARS - 1].rstrip() + "…"


def _facts(g: nx.Graph, node: Hashable) -> int:
    return len(g.nodes[node].get("facts", ()))


def _svg(g: nx.Graph, pos: dict[Hashable, tuple[float, float]], order: list[Hashable],
         trail: Trail, named: set[Hashable], chunks_of: dict[Hashable, list[int]],
         sizes: dict[Hashable, float]) -> str:
    def xy(n: Hashable) -> tuple[float, float]:
        return PAD + pos[n][0] * SIZE, PAD + pos[n][1] * SIZE

    index = {n: i for i, n in enumerate(order)}
    lines = []
    for u, v, d in g.edges(data=True):
        (x1, y1), (x2, y2) = xy(u), xy(v)
        hl = trail.walked(u, v)
        width = 1.0 + 0.6 * min(d.get("weight", 1), 6) + (2.0 if hl else 0.0)
        lines.append(f"<line class=\"edge{' hl' if hl else ''}\" data-a=\"{index[u]}\" "
                     f"data-b=\"{index[v]}\" x1=\"{x1:.1f}\" y1=\"{y1:.1f}\" x2=\"{x2:.1f}\" "
                     f"y2=\"{y2:.1f}\" stroke-width=\"{width:.1f}\"/>")
    circles = []
    for n in order:
        x, y = xy(n)
        facts = _facts(g, n)
        chunks = chunks_of[n]
        cls = "node" + (" hl" if n in trail else "") + (" start" if n in trail.starts else "") + (
            " end" if n in trail.ends else "")
        tip = f"{n} · {facts} fact{'' if facts == 1 else 's'}" + (
            f" · chunks {', '.join(map(str, chunks))}" if chunks else "")
        r = sizes[n]
        circles.append(
            f"<g class=\"{cls}\" data-id=\"{index[n]}\" data-name=\"{esc(n)}\" "
            f"transform=\"translate({x:.1f},{y:.1f})\"><title>{esc(tip)}</title>"
            f"<circle r=\"{r:.1f}\"/><text class=\"{'major' if n in named else 'minor'}\" "
            f"text-anchor=\"middle\" dy=\"{-r - 4:.1f}\">{esc(_clip(str(n)))}</text></g>")
    box = SIZE + 2 * PAD
    return (f"<svg id=\"lw-svg\" viewBox=\"0 0 {box} {box}\" role=\"img\" "
            f"aria-label=\"key-element graph\"><g class=\"edges\">{''.join(lines)}</g>"
            f"<g class=\"nodes\">{''.join(circles)}</g></svg>")


def _intro(trail: Trail, index: dict[Hashable, int], order: list[Hashable],
           g: nx.Graph) -> str:
    """The panel before any click: the legend and the answer's path (or the biggest nodes)."""
    def chips(nodes: Iterable[Hashable]) -> str:
        return "".join(f"<span class=\"chip\" data-goto=\"{index[n]}\">{esc(n)}</span>"
                       for n in nodes if n in index)

    legend = ("<p class=\"legend\"><span><i class=\"dot\" style=\"background:var(--node)\"></i>"
              "key element (size: atomic facts)</span><span><i class=\"dot\" "
              "style=\"background:var(--hl)\"></i>on the answer's path</span></p>")
    help_line = ("<p class=\"meta\">Click a node for its atomic facts and chunk ids; drag to "
                 "pan, scroll to zoom.</p>")
    if trail.nodes:
        body = (f"<h2>The answer's path</h2><p>{len(trail.nodes)} nodes visited"
                + (f", chunks read: {', '.join(map(str, trail.chunks))}" if trail.chunks else "")
                + "</p>" + (f"<h3>started at</h3><p>{chips(trail.starts)}</p>"
                            if trail.starts else "")
                + f"<h3>visited</h3><p>{chips(trail.nodes)}</p>")
    else:
        top = sorted(order, key=lambda n: (-_facts(g, n), str(n)))[:15]
        body = f"<h2>Key elements</h2><h3>with the most facts</h3><p>{chips(top)}</p>"
    return body + legend + help_line


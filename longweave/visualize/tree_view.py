"""MemWalker's summary tree as a page: a top-down overview (summaries on hover) above an
indented, collapsible outline of every node's summary, with the answer's path highlighted."""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING

from longweave.visualize.graph_view import as_trail
from longweave.visualize.layout import tree_layout
from longweave.visualize.page import esc, page, write
from longweave.visualize.trail import Trail

if TYPE_CHECKING:
    from longweave.answer import Answer
    from longweave.memory.summary_tree import SummaryTree, TreeNode

__all__ = ["render_tree"]

LEVEL_GAP, LEAF_GAP, PAD = 110, 36, 40
"""Pixels between levels and between neighbouring leaves in the overview, and its margin."""
PREVIEW_CHARS = 90
"""How much of a summary the outline shows on a collapsed node's line."""

SCRIPT = """
const nodes=[...svg.querySelectorAll('.node')];
function select(i){nodes.forEach(n=>n.classList.toggle('sel',+n.dataset.id===i))}
function open(i){const d=document.getElementById('t'+i);if(!d)return;
 for(let p=d;p;p=p.parentElement.closest('details'))p.open=true;
 document.querySelectorAll('.flash').forEach(f=>f.classList.remove('flash'));
 d.classList.add('flash');d.scrollIntoView({block:'center',behavior:'smooth'});select(i)}
nodes.forEach(n=>n.addEventListener('click',()=>open(+n.dataset.id)));
document.getElementById('lw-outline').addEventListener('click',e=>{
 const s=e.target.closest('summary');if(s)select(+s.parentElement.id.slice(1))});
document.getElementById('lw-info').addEventListener('click',e=>{
 const t=e.target.closest('[data-goto]');if(t)open(+t.dataset.goto)});
const all=[...document.querySelectorAll('details.tnode')];
document.getElementById('lw-open').addEventListener('click',()=>all.forEach(d=>d.open=true));
document.getElementById('lw-close').addEventListener('click',()=>all.forEach(d=>d.open=false));
const p=document.getElementById('lw-path');if(p)p.addEventListener('click',()=>{
 svg.classList.toggle('pathonly');all.forEach(d=>d.open=d.classList.contains('hl'))});
"""


def render_tree(
    tree: SummaryTree,
    path: str | os.PathLike[str] | None = None,
    *,
    highlight: Trail | Answer | Iterable[Hashable] | None = None,
    text: str | None = None,
    title: str | None = None,
    excerpt_chars: int = 400,
) -> str:
    """The tree as a self-contained HTML page; with `path`, also written there (by suffix:
    .html, .svg, or .png/.pdf through matplotlib).

    `highlight` marks a path: a `Trail`, an `Answer` (its steps), or node ids. With the
    document's `text`, each leaf also shows the opening `excerpt_chars` of its segment.
    """
    trail = as_trail(highlight)
    pos = tree_layout(tree)
    width = max(len(tree.leaves) - 1, 1) * LEAF_GAP
    height = max(tree.depth, 1) * LEVEL_GAP
    svg = _svg(tree, pos, trail, width, height)
    outline = _outline(tree, tree.root, trail, text, excerpt_chars)
    subtitle = (f"{len(tree.nodes):,} nodes, {len(tree.leaves):,} leaves, depth {tree.depth}"
                f" · built by {tree.settings.get('model', 'an unknown model')}")
    tools = ("<button id=\"lw-open\" type=\"button\">expand all</button>"
             "<button id=\"lw-close\" type=\"button\">collapse all</button>"
             + ("<button id=\"lw-path\" type=\"button\">path only</button>" if trail.nodes
                else ""))
    below = f"<section id=\"lw-outline\"><h2>Outline</h2>{outline}</section>"
    html_text = page(kind="tree", title=title or "MemWalker tree", subtitle=subtitle,
                     tools=tools, view=svg, aside=_intro(tree, trail), data={"root": tree.root},
                     script=SCRIPT, below=below)
    if path is not None:
        from longweave.visualize.image import tree_image

        write(path, html_text=html_text, svg=svg,
              image=lambda p: tree_image(p, tree, pos, trail, title or "MemWalker tree"))
    return html_text


def _svg(tree: SummaryTree, pos: dict[int, tuple[float, float]], trail: Trail, width: float,
         height: float) -> str:
    def xy(i: int) -> tuple[float, float]:
        return PAD + pos[i][0] * width, PAD + pos[i][1] * height

    lines, circles = [], []
    for node in tree.nodes:
        x1, y1 = xy(node.id)
        for child in node.children:
            x2, y2 = xy(child)
            hl = trail.walked(node.id, child)
            lines.append(f"<line class=\"edge{' hl' if hl else ''}\" x1=\"{x1:.1f}\" "
                         f"y1=\"{y1:.1f}\" x2=\"{x2:.1f}\" y2=\"{y2:.1f}\" "
                         f"stroke-width=\"{3.5 if hl else 1.5}\"/>")
        cls = "node" + (" hl" if node.id in trail else "") + (
            " start" if node.id in trail.starts else "") + (" end" if node.id in trail.ends else "")
        tip = f"#{node.id} · {_where(node)}\n{node.summary or '(no summary)'}"
        r = 7 if node.is_leaf else 10
        circles.append(
            f"<g class=\"{cls}\" data-id=\"{node.id}\" transform=\"translate({x1:.1f},{y1:.1f})\">"
            f"<title>{esc(tip)}</title><circle r=\"{r}\"/><text class=\"major\" "
            f"text-anchor=\"middle\" dy=\"{-r - 5}\">{node.id}</text></g>")
    return (f"<svg id=\"lw-svg\" viewBox=\"0 0 {width + 2 * PAD:.0f} {height + 2 * PAD:.0f}\" "
            f"role=\"img\" aria-label=\"summary tree\"><g class=\"edges\">{''.join(lines)}</g>"
            f"<g class=\"nodes\">{''.join(circles)}</g></svg>")


def _where(node: TreeNode) -> str:
    kind = f"leaf, chunk {node.chunk_index}" if node.is_leaf else f"level {node.level}"
    return f"{kind}, chars {node.start:,}–{node.end:,}"


def _outline(tree: SummaryTree, node_id: int, trail: Trail, text: str | None,
             excerpt_chars: int) -> str:
    node = tree.node(node_id)
    on_path = node_id in trail
    cls = "tnode" + (" leaf" if node.is_leaf else "") + (" hl" if on_path else "") + (
        " end" if node_id in trail.ends else "")
    marks = ("<span class=\"mark\">start</span>" if node_id in trail.starts else "") + (
        "<span class=\"mark end\">answered here</span>" if node_id in trail.ends else "")
    preview = node.summary.replace("\n", " ")
    if len(preview) > PREVIEW_CHARS:
        preview = preview[:PREVIEW_CHARS].rstrip() + "…"
    body = f"<p class=\"sum\">{esc(node.summary) or '<i>(no summary)</i>'}</p>"
    if node.is_leaf and text is not None:
        segment = text[node.start:node.end]
        clipped = segment[:excerpt_chars] + ("…" if len(segment) > excerpt_chars else "")
        body += f"<blockquote class=\"seg\">{esc(clipped)}</blockquote>"
    kids = "".join(_outline(tree, c, trail, text, excerpt_chars) for c in node.children)
    # The root and the nodes on the answer's path start open, so the path reads top-down.
    opened = " open" if on_path or node_id == tree.root else ""
    return (f"<details id=\"t{node_id}\" class=\"{cls}\"{opened}><summary>"
            f"<span class=\"nid\">#{node_id}</span><span class=\"meta\">{esc(_where(node))}"
            f"</span>{marks} <span class=\"prev\">{esc(preview)}</span></summary>{body}{kids}"
            "</details>")


def _intro(tree: SummaryTree, trail: Trail) -> str:
    def chips(ids: Iterable[Hashable]) -> str:
        return "".join(f"<span class=\"chip\" data-goto=\"{i}\">#{i}</span>" for i in ids
                       if isinstance(i, int) and 0 <= i < len(tree.nodes))

    root = tree.node(tree.root)
    help_line = ("<p class=\"meta\">Hover a node for its summary, click it to open it in the "
                 "outline below; drag to pan, scroll to zoom.</p>")
    if trail.nodes:
        body = (f"<h2>The answer's path</h2><p>{len(trail.nodes)} nodes visited"
                + (f", leaves read: chunks {', '.join(map(str, trail.chunks))}"
                   if trail.chunks else "") + "</p>"
                + f"<h3>visited, in order</h3><p>{chips(trail.nodes)}</p>"
                + (f"<h3>answered from</h3><p>{chips(trail.ends)}</p>" if trail.ends else ""))
    else:
        body = "<h2>The whole text</h2>"
    summary = esc(root.summary) or "<i>(a one-leaf tree has no summary)</i>"
    return body + f"<h3>root summary</h3><p class=\"sum\">{summary}</p>" + help_line

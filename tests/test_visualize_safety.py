"""The pages `show` and chat's `/trace open` write hold text from anyone: documents, what a model
made of them (which a document can steer), file names. Built through the real strategies with the
scripted model over a document full of markup, the pages must stay inert, offline and writable."""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from longweave.agents.graph_reader import GraphReader
from longweave.agents.mem_walker import MemWalker
from longweave.answer import Answer, Step
from longweave.cache import ArtifactCache
from longweave.documents import Document
from longweave.errors import DocumentError
from longweave.graphs.store import Fact, KeyGraph
from longweave.memory.summary_tree import SummaryTree, TreeNode
from longweave.runner import arun
from longweave.testing import HashEmbedder, Rule, ScriptedModel
from longweave.visualize import (
    afind_structure,
    arender_answer,
    graph_view,
    render_graph,
    render_tree,
    trail,
    tree_view,
)
from tests.cli_run import run_cli
from tests.test_show import GRAPH_SET, TREE_SET, page_data, tree_model, tree_text

EVIL = ("</script><script>alert(1)</script> <img src=x onerror=alert(2)> \" ' "
        "<a href=\"javascript:alert(3)\">x</a> <!-- ${alert(4)} `5` \u2028\u2029 </style> "
        "</title><svg onload=alert(6)> <link rel=stylesheet href=https://evil.example/x.css> "
        "&amp; <iframe src=//evil.example>")
"""Every way out of an element, an attribute, a script or a template literal we know of."""

TAGS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "p", "div",
        "input", "button", "main", "section", "aside", "svg", "g", "line", "circle", "text",
        "script", "span", "i", "ul", "li", "details", "summary", "blockquote"}
"""The elements the renderers write themselves; any other one was injected."""


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of each <script> and <style>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.raw: list[tuple[str, str]] = []
        self.inside = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "style"):
            self.inside = tag
            self.raw.append((tag, ""))

    def handle_endtag(self, tag: str) -> None:
        self.inside = "" if tag == self.inside else self.inside

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.raw[-1] = (self.inside, self.raw[-1][1] + data)


def assert_inert(page: str) -> None:
    """Only the renderers' own elements, no handler or fetching attribute, no CSS that fetches,
    and two scripts: the data (JSON that parses) and the renderer's code, unchanged."""
    found = Elements()
    found.feed(page)
    assert {tag for tag, _ in found.tags} <= TAGS
    for tag, attrs in found.tags:
        assert not [a for a in attrs if a.startswith("on") or a in ("src", "href", "xlink:href")]
        assert "style" not in attrs or tag == "i"  # the legend's dots only
    scripts = [text for kind, text in found.raw if kind == "script"]
    assert len(scripts) == 2 and isinstance(json.loads(scripts[0]), dict)
    assert graph_view.SCRIPT in scripts[1] or tree_view.SCRIPT in scripts[1]
    assert not [t for kind, t in found.raw if kind == "style" and ("url(" in t or "@" in t)]


def evil_graph_model() -> ScriptedModel:
    """An extractor that repeats the markup as a fact about Mara, in every chunk."""
    model = ScriptedModel()
    model.on("extractor", reply=lambda r: {"atomic_facts": [
        {"fact": f"Mara wrote {EVIL}", "key_elements": ["Mara", "alert"]}]})
    return model


def evil_tree_model() -> ScriptedModel:
    """`tree_model`, with the markup in every summary (the sentinels stay, so the walk does)."""
    model = tree_model()
    model.rules[0] = Rule("summarizer", (), lambda r: tree_model().rules[0].reply(r) + " " + EVIL)
    return model


async def test_markup_from_the_document_and_the_model_stays_text(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    doc = Document.from_text(f"Mara wrote {EVIL}\n\nNothing else.")
    reader = GraphReader(**GRAPH_SET | {"chunk_tokens": 40}).with_embedder(HashEmbedder(dim=64))
    graph = await afind_structure(doc, "graph", evil_graph_model(), cache, strategy=reader,
                                  build=True)
    assert isinstance(graph, KeyGraph) and graph.graph.number_of_nodes() == 2
    page = render_graph(graph, highlight=["mara"], title=EVIL)
    assert_inert(page)
    fact = " ".join(f"Mara wrote {EVIL}".split())  # as the graph keeps a fact: spaces folded
    assert {text for _, text in page_data(page)["facts"]} == {fact}  # one per chunk

    text = tree_text().replace("SENTINEL-4", f"SENTINEL-4 {EVIL}")
    doc, walker = Document.from_text(text), MemWalker(**TREE_SET)
    answer = await arun(walker, doc, f"Where is S4? {EVIL}", evil_tree_model(), artifacts=cache)
    quiet = ScriptedModel(context_window=1024)
    trace = await arender_answer(answer, doc, quiet, cache, tmp_path / "trace.html",
                                 strategy=walker)  # chat's /trace open
    assert_inert(trace)
    assert html.escape(EVIL)[:60] in trace  # shown, as text
    assert 'class="tnode leaf hl end" open' in trace  # the walk itself was not disturbed


def test_names_that_no_graph_reader_would_write_stay_text() -> None:
    """The library takes any KeyGraph; names straight from it are escaped too."""
    graph = KeyGraph.from_facts("d", [(0, 10)], [Fact(0, "x", 0, (EVIL, "b"))], {"model": EVIL})
    page = render_graph(graph, highlight=[EVIL])
    assert_inert(page)
    assert [n["name"] for n in page_data(page)["nodes"]] == [EVIL, "b"]


def test_the_data_block_parses_back_with_line_separators() -> None:
    graph = KeyGraph.from_facts("d", [(0, 10)], [Fact(0, "a\u2028b\u2029c</b>", 0, ("a",))], {})
    raw = re.search(r'id="lw-data">(.*?)</script>', render_graph(graph), re.S)
    assert raw is not None and "<" not in raw.group(1) and ">" not in raw.group(1)
    assert json.loads(raw.group(1))["facts"] == [[0, "a\u2028b\u2029c</b>"]]


def control_tree() -> SummaryTree:
    leaves = [TreeNode(id=i, level=0, summary=f"page\x0c{i}\x00\x1b end", start=i, end=i + 1,
                       chunk_index=i) for i in range(3)]
    root = TreeNode(id=3, level=1, summary="the\x0bwhole", children=(0, 1, 2), start=0, end=3)
    return SummaryTree(doc_id="d", nodes=(*leaves, root), root=3)


def test_control_characters_leave_the_svg_well_formed(tmp_path: Path) -> None:
    """A PDF's form feed in a summary (or a name) once made the whole .svg unreadable XML."""
    render_tree(control_tree(), tmp_path / "tree.svg")
    ET.parse(tmp_path / "tree.svg")
    graph = KeyGraph.from_facts("d", [(0, 10)], [Fact(0, "x", 0, ("form\x0cfeed", "b"))], {})
    render_graph(graph, tmp_path / "graph.svg")
    ET.parse(tmp_path / "graph.svg")
    assert "page 0" in render_tree(control_tree())  # the HTML outline shows a space


def test_long_names_are_clipped_in_labels_only() -> None:
    long = "n" * 10_000
    graph = KeyGraph.from_facts("d", [(0, 10)], [Fact(0, "x", 0, (long, "b"))], {})
    page = render_graph(graph)
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", page)
    assert max(map(len, labels)) <= 80 and "n" * 79 + "…" in labels
    assert f'data-name="{long}"' in page and page_data(page)["nodes"][0]["name"] == long


def test_thousands_of_nodes_draw_at_most_max_nodes() -> None:
    facts = [Fact(i, f"fact {i}", i % 7, (f"k{i}", f"k{i + 1}")) for i in range(3000)]
    graph = KeyGraph.from_facts("d", [(0, 10)] * 7, facts, {})
    page = render_graph(graph, max_nodes=40, highlight=["k2999"])
    drawn = re.findall(r'<g class="node[ "]', page)
    assert len(page_data(page)["nodes"]) == len(drawn) == 40
    assert "showing the 40 with the most facts" in page and len(page) < 100_000


# -- writing the file ----------------------------------------------------------------------------


def test_missing_folders_spaces_unicode_and_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "new folder" / "ünï cödé" / "my tree ☃.html"
    page = render_tree(control_tree(), target)
    assert target.read_text(encoding="utf-8") == page
    render_tree(control_tree(), target, title="again")  # an existing file is replaced
    assert "<title>again</title>" in target.read_text(encoding="utf-8")


def test_a_path_that_cannot_be_written_is_a_document_error(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a file").write_text("x")
    with pytest.raises(DocumentError, match=r"cannot be written \(.*a file\)"):
        render_tree(control_tree(), tmp_path / "a file" / "tree.html")
    (tmp_path / "folder.svg").mkdir()
    with pytest.raises(DocumentError, match="folder.svg: cannot be written"):
        render_tree(control_tree(), tmp_path / "folder.svg")

    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)  # root ignores chmod; this does not
    with pytest.raises(DocumentError, match=r"cannot be written \(Permission denied\) \("):
        render_tree(control_tree(), tmp_path / "tree.html")  # not naming a temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file", "folder.svg"]


@pytest.mark.parametrize(("failure", "raised"), [
    (KeyboardInterrupt(), KeyboardInterrupt),
    (OSError(28, "No space left on device"), DocumentError),
], ids=["ctrl-c", "disk-full"])
def test_a_write_cut_short_leaves_the_old_page_whole(
        tmp_path: Path, failure: BaseException, raised: type[BaseException],
        monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "tree.html"
    old = render_tree(control_tree(), target, title="old")
    write_text = Path.write_text

    def half_then_fail(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise failure

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(raised):  # Ctrl-C stays Ctrl-C; a full disk is a DocumentError
        render_tree(control_tree(), target, title="new")
    assert target.read_text(encoding="utf-8") == old  # never half a page
    assert [p.name for p in tmp_path.iterdir()] == ["tree.html"]  # nor a temporary file left


def test_a_page_is_written_as_any_new_file_and_through_a_link(tmp_path: Path) -> None:
    """The temporary file is not private as mkstemp's are: a page keeps the umask's mode, or
    the mode of the page it replaces; a link to a page keeps pointing at the new page."""
    import os
    import stat

    umask = os.umask(0o022)
    try:
        render_tree(control_tree(), tmp_path / "new.html")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.html").stat().st_mode) == 0o644
    (tmp_path / "new.html").chmod(0o640)
    (tmp_path / "link.html").symlink_to(tmp_path / "new.html")
    render_tree(control_tree(), tmp_path / "link.html", title="again")
    assert (tmp_path / "link.html").is_symlink()
    assert "<title>again</title>" in (tmp_path / "new.html").read_text(encoding="utf-8")
    assert stat.S_IMODE((tmp_path / "new.html").stat().st_mode) == 0o640


def refuse_temporary_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder this process may not add files to, for the temporary file beside a page only:
    root ignores a folder's mode, and a page may still be written in place there."""
    import os

    os_open = os.open

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and Path(path).name.startswith(".") and ".tmp" in Path(path).name:
            raise PermissionError(13, "Permission denied", str(path))
        return os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


def test_a_page_in_a_folder_closed_to_new_files_is_written_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rename needs a new file in the folder; a plain write of the page does not."""
    target = tmp_path / "tree.html"
    render_tree(control_tree(), target, title="old")
    inode = target.stat().st_ino
    refuse_temporary_files(monkeypatch)
    render_tree(control_tree(), target, title="new")
    assert "<title>new</title>" in target.read_text(encoding="utf-8")
    assert target.stat().st_ino == inode and [p.name for p in tmp_path.iterdir()] == ["tree.html"]


def test_show_writes_a_page_its_check_let_through(tmp_path: Path, monkeypatch, capsys) -> None:
    """`show` checked that the page could be written, built, then failed renaming over it."""
    target = tmp_path / "page.html"
    target.write_text("old", encoding="utf-8")
    refuse_temporary_files(monkeypatch)
    monkeypatch.setattr("longweave.visualize.find_structure", lambda *a, **k: control_tree())
    monkeypatch.setattr("longweave.api.load_source", lambda *a, **k: Document.from_text("t"))
    assert run_cli(monkeypatch, "show", "doc.md", "--tree", "-o", str(target)) == 0, (
        capsys.readouterr().err)
    assert "<html" in target.read_text(encoding="utf-8")


def test_a_page_keeps_its_hard_links(tmp_path: Path) -> None:
    import os

    target, other = tmp_path / "tree.html", tmp_path / "also.html"
    render_tree(control_tree(), target, title="old")
    os.link(target, other)
    render_tree(control_tree(), target, title="new")
    assert "<title>new</title>" in other.read_text(encoding="utf-8")
    assert target.stat().st_ino == other.stat().st_ino


def test_a_page_of_another_owner_keeps_its_owner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Renamed over, the page would become ours: it is written in place instead. Root gives it
    to another owner for real; anyone else sees it reported as another owner's."""
    import os

    target = tmp_path / "tree.html"
    render_tree(control_tree(), target, title="old")
    inode, root = target.stat().st_ino, getattr(os, "geteuid", lambda: 1)() == 0
    if root:
        os.chown(target, 65534, 65534)  # nobody's
    else:
        real_stat, page = Path.stat, os.path.realpath(target)

        def stat(self: Path, *args: Any, **kwargs: Any) -> os.stat_result:
            found = real_stat(self, *args, **kwargs)
            if os.path.realpath(self) != page:
                return found
            return os.stat_result((*found[:4], 65534, 65534, *found[6:10]))

        monkeypatch.setattr(Path, "stat", stat)
    render_tree(control_tree(), target, title="new")
    assert "<title>new</title>" in target.read_text(encoding="utf-8")
    assert target.stat().st_ino == inode  # written in place, not replaced by a new file
    assert [p.name for p in tmp_path.iterdir()] == ["tree.html"]  # no temporary file left
    if root:
        assert (target.stat().st_uid, target.stat().st_gid) == (65534, 65534)


def test_a_read_only_page_is_refused_as_the_check_refuses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename would replace it: the folder allows that, but `show` refused it up front."""
    import os

    from longweave.batch import check_writable

    target = tmp_path / "tree.html"
    render_tree(control_tree(), target, title="old")
    target.chmod(0o444)
    if getattr(os, "geteuid", lambda: 1)() == 0:  # root may write it anyway: refuse as for others
        opened = Path.open

        def refusing(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if Path(os.path.realpath(self)) == target.resolve() and mode[0] in "aw":
                raise PermissionError(13, "Permission denied", str(self))
            return opened(self, mode, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refusing)
    with pytest.raises(DocumentError, match=r"cannot be written \(Permission denied\)"):
        check_writable(target, "drawing")
    with pytest.raises(DocumentError, match=r"tree.html: cannot be written \(Permission denied\)"):
        render_tree(control_tree(), target, title="new")
    assert "<title>old</title>" in target.read_text(encoding="utf-8")


async def test_cli_and_chat_report_an_unwritable_output(tmp_path: Path, monkeypatch,
                                                        capsys) -> None:
    """Once an OSError, which the CLI called an unexpected error and asked to be reported."""
    from longweave.cli.chat import ChatController
    from longweave.config import Settings
    from longweave.session import Session

    (tmp_path / "a file").write_text("x")
    blocked = tmp_path / "a file" / "t.html"
    with monkeypatch.context() as patch:
        patch.setattr("longweave.visualize.find_structure", lambda *a, **k: control_tree())
        patch.setattr("longweave.api.load_source", lambda *a, **k: Document.from_text("t"))
        patch.setenv("COLUMNS", "300")
        assert run_cli(patch, "show", "doc.md", "--tree", "-o", str(blocked)) == 1
    err = capsys.readouterr().err  # refused up front, before reading the document
    assert "cannot be created" in err and "a file, not a folder" in err
    assert "unexpected" not in err

    session = Session.open(Document.from_text(tree_text()), model=tree_model(), cache=False,
                           strategy=MemWalker(**TREE_SET),
                           settings=Settings(cache_dir=tmp_path / "cache"))
    chat = ChatController(session)
    await chat.handle("Where is S4?")
    (tmp_path / "file").write_text("x")  # no space: /trace open takes one word (chat.py)
    said = (await chat.handle(f"/trace open {tmp_path / 'file' / 't.html'}")).text(width=300)
    assert "error:" in said and "cannot be written" in said


# -- the trail read from an edited answer file --------------------------------------------------


def test_a_trail_skips_step_details_of_the_wrong_shape() -> None:
    graph = Answer(text="x", strategy="graph-reader", model="m", steps=[
        Step(role="planner", detail={"stage": "select", "starts": [["a"], "b", {"c": 1}]}),
        Step(role="planner", detail={"stage": "select", "starts": 5}),
        Step(role="stepper", index=0, detail={"path": [1], "node": "b"}),
        Step(role="stepper", index=0, detail={"path": [1], "node": "d"})])
    path = trail(graph)
    assert path.starts == ("b",) and path.nodes == ("b", "d") and path.walked("b", "d")
    tree = Answer(text="x", strategy="mem-walker", model="m", steps=[
        Step(role="navigator", detail={"node": 3, "action": "goto", "child": 1}),
        Step(role="reader", detail={"node": [1], "action": "answer"}),
        Step(role="overview", detail={"node": None})])
    assert trail(tree).nodes == (3, 1) and trail(tree).ends == ()


def test_open_hands_the_browser_a_file_uri(tmp_path: Path, monkeypatch, capsys) -> None:
    """`--open` is asked for, so it opens (LONGWEAVE_NO_BROWSER is chat's `/trace open`'s)."""
    import webbrowser

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr("longweave.visualize.find_structure", lambda *a, **k: control_tree())
    monkeypatch.setattr("longweave.api.load_source", lambda *a, **k: Document.from_text("t"))
    target = tmp_path / "my tree ☃.html"
    assert run_cli(monkeypatch, "show", "doc.md", "--tree", "-o", str(target), "--open") == 0
    assert opened == [target.resolve().as_uri()] and "%20" in opened[0]
    assert run_cli(monkeypatch, "show", "doc.md", "--tree", "-o", str(target)) == 0
    assert len(opened) == 1  # without --open, nothing is opened
    # A headless Linux machine: webbrowser would start lynx or w3m over the terminal.
    monkeypatch.delenv("DISPLAY")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    capsys.readouterr()
    assert run_cli(monkeypatch, "show", "doc.md", "--tree", "-o", str(target), "--open") == 0
    assert len(opened) == 1 and "no browser to open it in here" in capsys.readouterr().err

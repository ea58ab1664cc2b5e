"""The graph page's search box: the query and the node names are folded alike, as close to
GraphReader's `normalize_key` (NFKC, casefold, punctuation to spaces) as JavaScript gets.

Without Node.js only the page's code is checked (it carries the folding and uses it on both
sides). With `node` on the PATH, the folding function taken from a rendered page runs: on
queries against the names GraphReader writes, and on every character Python's Unicode
database assigns, against `normalize_key` itself. The event wiring in a browser is not run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import unicodedata

import pytest

from longweave.graphs.store import Fact, KeyGraph, normalize_key
from longweave.visualize import render_graph

NAMES = ["Straßenbahn", "Mara Quill's", "ΟΔΥΣΣΕΥΣ", "ﬁle room", "Kelvin"]
"""Names as a document writes them; the graph holds them as GraphReader normalizes them."""

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")


def graph_page() -> str:
    keys = tuple(normalize_key(name) for name in NAMES)
    return render_graph(KeyGraph.from_facts("d", [(0, 10)], [Fact(0, "x", 0, keys)], {}))


def page_fold(page: str) -> str:
    """The page's own `fold` function, as its script carries it."""
    found = re.search(r"function fold\(s\)\{return .*?\.trim\(\)\}", page, re.S)
    assert found is not None, "the page has no fold function"
    return found.group(0)


def run_fold(fold: str, texts: list[str]) -> list[str]:
    script = (fold + ";const texts=JSON.parse(require('fs').readFileSync(0,'utf8'));"
              "process.stdout.write(JSON.stringify(texts.map(fold)))")
    done = subprocess.run(["node", "-e", script], input=json.dumps(texts), capture_output=True,
                          text=True, encoding="utf-8", check=True, timeout=120)
    return json.loads(done.stdout)


def test_the_page_folds_the_query_and_the_names_alike() -> None:
    page = graph_page()
    fold = page_fold(page)
    assert "normalize('NFKC')" in fold and "toUpperCase().toLowerCase()" in fold
    assert "const keys=nodes.map(n=>fold(n.dataset.name))" in page
    assert "const v=fold(q.value)" in page and "keys[i].includes(v)" in page
    names = [json.loads(f'"{m}"') for m in re.findall(r'"name":"((?:[^"\\]|\\.)*)"', page)]
    assert names == [normalize_key(name) for name in NAMES]  # what the search is matched to


@needs_node
@pytest.mark.parametrize(("query", "found"), [
    ("Straße", "strassenbahn"),  # toLowerCase alone leaves "ß": no match
    ("STRASSENBAHN", "strassenbahn"),
    ("Quill's", "mara quill s"),  # the apostrophe became a space in Python
    ("Οδυσσευς", "οδυσσευσ"),  # a final sigma, as lower-casing writes it
    ("ＦＩＬＥ", "file room"),  # full-width letters (NFKC), and "ﬁ" in the name
    ("\u212aelvin", "kelvin"),  # the Kelvin sign
])
def test_a_query_finds_the_name_python_folded(query: str, found: str) -> None:
    fold = page_fold(graph_page())
    names = [normalize_key(name) for name in NAMES]
    keys = run_fold(fold, names)
    (folded,) = run_fold(fold, [query])
    assert [name for name, key in zip(names, keys, strict=True) if folded in key] == [found]


@needs_node
def test_fold_is_normalize_key_for_every_character_python_knows() -> None:
    """Each assigned character between letters ("ab?Cd"), folded by the page and by Python.
    The one known difference is the dotless i, which JavaScript folds to "i"."""
    node_unicode = subprocess.run(["node", "-p", "process.versions.unicode"], text=True,
                                  capture_output=True, check=True).stdout.strip()
    if _version(node_unicode) < _version(unicodedata.unidata_version):
        pytest.skip(f"node knows Unicode {node_unicode}, Python {unicodedata.unidata_version}")
    chars = [chr(c) for c in range(0x20, 0x30000)
             if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    texts = [f"ab{c}Cd" for c in chars]
    folded = run_fold(page_fold(graph_page()), texts)
    differ = {c for c, text, js in zip(chars, texts, folded, strict=True)
              if js != normalize_key(text)}
    assert differ <= {"\u0131", "\U0001d6a4"}  # ı and mathematical italic ı


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())

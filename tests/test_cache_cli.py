"""`longweave cache`: what the cache folder holds by kind, `--prune` of leftovers only (beside
running writers), `--clear` by kind that keeps chat sessions unless they are named."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

import longweave
import longweave.retrieval.index as index_module
from longweave.cache_contents import CACHE_KINDS, KEPT_KINDS
from longweave.cli.cache import size_text
from longweave.retrieval.durable import STALE_AFTER_S, temp_folder
from longweave.retrieval.embeddings import CachedEmbedder, EmbeddingCache
from longweave.testing import HashEmbedder, ScriptedModel
from tests.cli_run import run_cli

EXAMPLE = Path(__file__).parents[1] / "examples" / "harbour_report.md"
ANSWER = "Mara Quill kept the light first."
HOUR_AGO = time.time() - STALE_AFTER_S - 600


@pytest.fixture
def model(scripted_cli: Callable[..., ScriptedModel],
          monkeypatch: pytest.MonkeyPatch) -> ScriptedModel:
    """A scripted model behind every model string, a hashing embedder behind every embedder
    spec (cached as the real one is), and a private cache folder that does not exist yet."""
    scripted = scripted_cli(context_window=1024, columns="unset")
    scripted.on("reader", contains="passage of the text", reply={
        "reasoning": "r", "action": "answer", "answer": "Mara"})  # MemWalker's leaf
    scripted.on("reader", reply=ANSWER)
    scripted.on("summarizer", reply="a summary of this part")
    scripted.on("navigator", reply={"reasoning": "r", "action": "goto", "child": 1})
    monkeypatch.setattr(index_module, "resolve_embedder", lambda spec, cache_dir=None:
                        CachedEmbedder(HashEmbedder(), EmbeddingCache(
                            Path(cache_dir) / "embeddings.sqlite")))
    return scripted


@dataclass
class Filled:
    """A cache folder built by longweave itself, with what each test checks by name."""

    root: Path
    damaged: Path  # an index moved aside by the artifact cache when it failed its checksum
    old_index: Path  # an index of format 1, which this longweave never reads
    old_corpus: Path  # a corpus of format 1 (its store, no corpus.json)
    old_memory: Path  # a LIGHT memory saved without checksums (refused at load)
    newer: Path  # an index of a format newer than this longweave: kept
    dead: Path  # the temporary folder of a writer that died over an hour ago
    dead_fresh: Path  # ... of a writer that died a moment ago: kept for an hour
    live: Path  # ... of this process, still running, unchanged for over an hour: kept
    session: Path

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"


def _died_writing(folder: Path, key: str) -> Path:
    """The temporary folder a writer left when it ended before renaming it into place."""
    code = ("import pathlib, sys; from longweave.retrieval.durable import temp_folder; "
            "d = temp_folder(pathlib.Path(sys.argv[1]), sys.argv[2]); "
            "(d / 'index.json').write_text('{}'); print(d)")
    done = subprocess.run([sys.executable, "-c", code, str(folder), key], check=True,
                          capture_output=True, text=True)
    return Path(done.stdout.strip())


def _age(folder: Path) -> None:
    for here, _, files in os.walk(folder):
        for name in [*files, "."]:
            os.utime(os.path.join(here, name), (HOUR_AGO, HOUR_AGO))


def _copy(source: Path, name: str, format: int) -> Path:
    target = source.with_name(name)
    shutil.copytree(source, target)
    about = json.loads((target / "index.json").read_text(encoding="utf-8"))
    (target / "index.json").write_text(json.dumps({**about, "format": format}), "utf-8")
    return target


@pytest.fixture
def filled(model: ScriptedModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
           capsys: pytest.CaptureFixture[str]) -> Filled:
    from longweave.graphs.store import Fact, KeyGraph
    from longweave.memory.episodic import Episode, EpisodicMemory
    from longweave.memory.working import MemoryUnit
    from longweave.session import Session

    root = tmp_path / "cache"
    root.mkdir()
    (root / "completions.sqlite").write_bytes(b"not a database" * 100)  # set aside at first use
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("The harbour light was first kept by Mara Quill. " * 30, "utf-8")
    (folder / "b.txt").write_text("Tobias Quill kept it after her, for forty years. " * 30, "utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "-s", "truncate",
                       "--set", "max_new=32") == 0
        assert run_cli(monkeypatch, "index", str(EXAMPLE), "--chunk-tokens", "64") == 0
        assert run_cli(monkeypatch, "index", str(folder), "--chunk-tokens", "64") == 0
        longweave.ask(EXAMPLE, "Who kept the light?", strategy="mem-walker", model=model,
                      window=1024, max_children=3, segment_tokens=120, nav_max_new=48,
                      answer_max_new=32, reasoning_chars=100, margin=16)
        session = Session.open(EXAMPLE, strategy="truncate", model=model, max_new=32)
        asyncio.run(session.aask("Who was the first keeper?"))
        # The example's index damaged on disk: the next `index` moves it aside and rebuilds it.
        (index,) = (p for p in (root / "artifacts").glob("index-*")
                    if json.loads((p / "index.json").read_text())["source"] == str(EXAMPLE))
        (index / "vectors.npy").write_bytes(b"\x93NUMPY garbage")
        assert run_cli(monkeypatch, "index", str(EXAMPLE), "--chunk-tokens", "64") == 0
    capsys.readouterr()
    artifacts = root / "artifacts"
    (damaged,) = artifacts.glob(".index-*.unusable-*")
    KeyGraph.from_facts("d" * 64, [(0, 40)], [Fact(0, "Mara kept the light.", 0, ("mara",))],
                        {}).save(_made(artifacts / f"graph-reader-{'d' * 16}-{'1' * 20}"))
    memory = EpisodicMemory(HashEmbedder(), "doc")
    memory.add([Episode(MemoryUnit(0, 0, 10, "Mara kept"), "Mara kept the light", ())])
    memory.save(_made(artifacts / f"light-{'d' * 16}-{'2' * 20}"))
    old_memory = artifacts / f"light-{'d' * 16}-{'3' * 20}"
    shutil.copytree(artifacts / f"light-{'d' * 16}-{'2' * 20}", old_memory)
    about = json.loads((old_memory / "episodes.json").read_text("utf-8"))
    del about["checksums"]
    (old_memory / "episodes.json").write_text(json.dumps(about), "utf-8")
    old_corpus = _made(artifacts / f"corpus-{'4' * 40}" / "store")
    (old_corpus / "manifest.json").write_text('{"format": "longweave-vector-store"}', "utf-8")
    dead = _died_writing(artifacts, f"index-{'5' * 16}-{'5' * 24}")
    _age(dead)
    live = temp_folder(artifacts, f"index-{'6' * 16}-{'6' * 24}")
    (live / "index.json").write_text("{}", "utf-8")
    _age(live)
    (root / "chat_history").write_text("Who?\n", "utf-8")
    conversation = session.path
    del session
    gc.collect()  # SQLite connections still open fold their journals in as they close
    return Filled(
        root, damaged, _copy(index, f"index-{'7' * 16}-{'7' * 24}", 1), old_corpus.parent,
        old_memory, _copy(index, f"index-{'8' * 16}-{'8' * 24}", 99), dead,
        _died_writing(artifacts, f"index-{'9' * 16}-{'9' * 24}"), live, conversation)


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def _bytes(*paths: Path) -> int:
    """What the files at and under `paths` hold, counted here apart from the command's own sum."""
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        for here, _, files in os.walk(path):
            total += sum(os.lstat(os.path.join(here, f)).st_size for f in files)
    return total


def _files(root: Path) -> set[Path]:
    """The files under `root` but SQLite's journals, which come and go with its connections."""
    return {p for p in root.rglob("*") if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def _rows(file: Path, table: str) -> int:
    with closing(sqlite3.connect(file)) as conn:  # closed: an open one keeps a -shm and -wal
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _listing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             *args: str) -> dict:
    assert run_cli(monkeypatch, "cache", "--json", *args) == 0
    return json.loads(capsys.readouterr().out)


def _kinds(listing: dict) -> dict[str, tuple[int | None, int]]:
    return {row["kind"]: (row["count"], row["bytes"]) for row in listing["kinds"]}


def _artifact_names(root: Path) -> set[str]:
    return {p.name for p in (root / "artifacts").iterdir()}


# -- the listing --------------------------------------------------------------------------------


def test_the_listing_counts_and_sizes_each_kind(filled: Filled, monkeypatch, capsys) -> None:
    root, artifacts = filled.root, filled.artifacts
    listing = _listing(monkeypatch, capsys)
    kinds = _kinds(listing)

    def valid(prefix: str) -> list[Path]:
        return [p for p in artifacts.glob(f"{prefix}*")
                if p not in (filled.old_index, filled.old_corpus, filled.old_memory)]

    def journal(name: str) -> list[Path]:
        return [p for p in root.glob(f"{name}*") if ".corrupt" not in p.name]

    indexes = valid("index-")
    assert len(indexes) == 4  # the example (rebuilt), two files of the folder, the newer one
    assert filled.newer in indexes
    assert kinds["indexes"] == (4, _bytes(*indexes))
    assert kinds["corpora"] == (1, _bytes(*valid("corpus-")))
    assert kinds["trees"] == (1, _bytes(*valid("mem-walker-tree-")))
    assert kinds["graphs"] == (1, _bytes(*valid("graph-reader-")))
    assert kinds["memories"] == (1, _bytes(*valid("light-")))
    completions = _rows(root / "completions.sqlite", "completions")
    assert completions >= 3  # the truncate answer, MemWalker's calls, the session's answer
    assert kinds["completions"] == (completions, _bytes(*journal("completions.sqlite")))
    embedded = _rows(root / "embeddings.sqlite", "embeddings")
    assert embedded > 0 and kinds["embeddings"] == (embedded,
                                                    _bytes(*journal("embeddings.sqlite")))
    assert kinds["sessions"] == (1, _bytes(root / "sessions"))
    corrupt = list(root.glob("completions.sqlite.corrupt*"))
    gone = [filled.damaged, filled.old_index, filled.old_corpus, filled.old_memory, filled.dead]
    assert kinds["leftovers"] == (6, _bytes(*gone, *corrupt))
    assert kinds["in progress"] == (2, _bytes(filled.live, filled.dead_fresh))
    assert kinds["own files"] == (2, _bytes(root / "chat_history", root / "CACHEDIR.TAG"))
    assert "other" not in kinds or kinds["other"] == (0, 0)
    assert listing["total_bytes"] == _bytes(root) == sum(b for _, b in kinds.values())
    why = {row["path"]: row["why"] for row in listing["leftovers"]}
    assert why[str(filled.damaged)] == "damaged, set aside"
    assert why[str(filled.old_index)] == "old format (1)"
    assert why[str(filled.old_memory)] == "old format (no checksums)"
    assert why[str(filled.dead)] == "left by a writer that died"


def test_the_json_names_every_kind_in_order(filled: Filled, monkeypatch, capsys) -> None:
    listing = _listing(monkeypatch, capsys)
    assert set(listing) == {"cache_dir", "exists", "kinds", "total_bytes", "leftovers"}
    assert listing["cache_dir"] == str(filled.root) and listing["exists"] is True
    assert [row["kind"] for row in listing["kinds"]] == [*CACHE_KINDS, *KEPT_KINDS]
    assert all(set(row) == {"kind", "what", "count", "bytes"} for row in listing["kinds"])
    assert all(set(row) == {"path", "bytes", "why"} for row in listing["leftovers"])


def test_the_table_fits_80_columns_and_says_what_prune_frees(filled: Filled, monkeypatch,
                                                             capsys) -> None:
    assert run_cli(monkeypatch, "cache") == 0
    out, err = capsys.readouterr()
    first, *table = out.splitlines()
    assert first == f"cache folder: {filled.root}" and err == ""
    assert max(map(len, table)) <= 80
    rows = {line.split()[1]: line for line in table if line.startswith("│")}
    assert "4" in rows["indexes"].split("│")[3] and "…" not in out
    assert "in" in rows and "own" in rows  # shown because something is there
    assert "other" not in rows  # not shown: nothing is there
    assert table[-1].startswith("--prune removes the 6 leftovers (")


def test_kinds_are_not_cut_on_a_narrow_terminal(filled: Filled, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    assert run_cli(monkeypatch, "cache") == 0
    table = capsys.readouterr().out.splitlines()[1:]
    assert max(map(len, table)) <= 40
    shown = " ".join(table)
    assert all(f"│ {kind}" in shown for kind in CACHE_KINDS) and "…" not in shown


def test_a_cache_folder_not_made_yet_is_empty(model, monkeypatch, capsys, tmp_path) -> None:
    root = tmp_path / "cache"
    assert run_cli(monkeypatch, "cache") == 0
    out, err = capsys.readouterr()
    assert out == f"cache folder {root} does not exist yet: the cache is empty\n" and err == ""
    listing = _listing(monkeypatch, capsys)
    assert listing["exists"] is False and listing["total_bytes"] == 0
    assert run_cli(monkeypatch, "cache", "--prune") == 0
    assert capsys.readouterr().out == "nothing to remove\n"
    assert run_cli(monkeypatch, "cache", "--clear", "all", "--yes") == 0
    assert not root.exists()  # looking did not make it


def test_a_cache_folder_that_cannot_be_read_is_one_error(model, monkeypatch, capsys,
                                                         tmp_path) -> None:
    (tmp_path / "cache").write_text("a file where the folder should be", "utf-8")
    assert run_cli(monkeypatch, "cache") == 1
    error, hint = capsys.readouterr().err.splitlines()
    assert error == f"error: cannot read the cache folder {tmp_path / 'cache'}: Not a directory"
    assert hint == "check its permissions, or set LONGWEAVE_CACHE_DIR to another folder"


# -- prune --------------------------------------------------------------------------------------


def test_prune_removes_leftovers_only(filled: Filled, monkeypatch, capsys) -> None:
    root = filled.root
    before = _artifact_names(root)
    session = filled.session.read_bytes()
    completions = _rows(root / "completions.sqlite", "completions")
    freed = _bytes(filled.damaged, filled.old_index, filled.old_corpus, filled.old_memory,
                   filled.dead, *root.glob("completions.sqlite.corrupt*"))
    removed = _listing(monkeypatch, capsys, "--prune")
    assert removed["freed_bytes"] == freed
    assert {Path(r["path"]).name for r in removed["removed"]} == {
        p.name for p in (filled.damaged, filled.old_index, filled.old_corpus,
                         filled.old_memory, filled.dead)} | {"completions.sqlite.corrupt"}
    gone = {filled.damaged.name, filled.old_index.name, filled.old_corpus.name,
            filled.old_memory.name, filled.dead.name}
    assert _artifact_names(root) == before - gone  # the live and the fresh temp folders too
    assert filled.live.is_dir() and filled.dead_fresh.is_dir() and filled.newer.is_dir()
    assert not list(root.glob("*.corrupt*"))
    assert filled.session.read_bytes() == session
    assert _rows(root / "completions.sqlite", "completions") == completions
    assert (root / "chat_history").is_file()
    assert _kinds(_listing(monkeypatch, capsys))["leftovers"] == (0, 0)


def test_pruned_artifacts_were_the_unreadable_ones(filled: Filled, monkeypatch,
                                                  capsys) -> None:
    """What prune keeps still serves: the example's index is reused, not built again."""
    assert run_cli(monkeypatch, "cache", "--prune") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("freed ") and "old format (1)" in out
    assert run_cli(monkeypatch, "index", str(EXAMPLE), "--chunk-tokens", "64") == 0
    assert capsys.readouterr().out.startswith("reused")


# -- clear --------------------------------------------------------------------------------------


def test_clear_one_kind_leaves_the_others(filled: Filled, monkeypatch, capsys) -> None:
    before = _kinds(_listing(monkeypatch, capsys))
    removed = _listing(monkeypatch, capsys, "--clear", "indexes", "--yes")
    assert {r["kind"] for r in removed["removed"]} == {"indexes"}
    assert removed["freed_bytes"] == before["indexes"][1]
    after = _kinds(_listing(monkeypatch, capsys))
    assert after["indexes"] == (0, 0)
    for kind in after.keys() - {"indexes"}:  # a SQLite file's size moves with its journal
        stores = kind in ("completions", "embeddings")
        assert after[kind][:1 if stores else 2] == before[kind][:1 if stores else 2], kind
    assert not list(filled.artifacts.glob("*.stale"))  # removed, not only renamed


def test_clear_all_keeps_the_sessions(filled: Filled, monkeypatch, capsys) -> None:
    session = filled.session.read_bytes()
    assert run_cli(monkeypatch, "cache", "--clear", "all", "--yes") == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1].startswith("freed ")
    assert err == "chat sessions are kept: --clear sessions removes them\n"
    kinds = _kinds(_listing(monkeypatch, capsys))
    assert kinds["sessions"][0] == 1 and filled.session.read_bytes() == session
    assert all(kinds[k] == (0, kinds[k][1]) for k in ("completions", "embeddings"))
    emptied = [k for k in CACHE_KINDS if k not in ("sessions", "completions", "embeddings")]
    assert all(kinds[k] == (0, 0) for k in emptied), kinds
    assert kinds["in progress"][0] == 2 and kinds["own files"][0] == 2  # never ours to take
    assert _rows(filled.root / "completions.sqlite", "completions") == 0  # emptied in place


def test_sessions_go_only_when_named(filled: Filled, monkeypatch, capsys) -> None:
    assert run_cli(monkeypatch, "cache", "--clear", "all", "--clear", "sessions", "--yes") == 0
    assert "sessions" in capsys.readouterr().out and not filled.session.exists()


def test_clear_off_a_terminal_without_yes_is_refused(filled: Filled, monkeypatch,
                                                     capsys) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    before = _files(filled.root)
    assert run_cli(monkeypatch, "cache", "--clear", "indexes") == 1
    error, hint = capsys.readouterr().err.splitlines()
    assert error == "error: --clear asks before removing anything, and stdin is not a terminal"
    assert hint == "add --yes to clear without asking"
    assert _files(filled.root) == before


@pytest.mark.parametrize("agree", [False, True])
def test_clear_on_a_terminal_asks_first(filled: Filled, monkeypatch, capsys,
                                        agree: bool) -> None:
    asked: list[str] = []
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(typer, "confirm", lambda text, **_: asked.append(text) or agree)
    size = size_text(_bytes(*filled.artifacts.glob("mem-walker-tree-*")))
    assert size.endswith(" kB")
    assert run_cli(monkeypatch, "cache", "--clear", "trees") == (0 if agree else 1)
    out, err = capsys.readouterr()
    assert asked == ["remove them?"]
    assert err.startswith(f"this removes trees ({size}) from {filled.root}\n")
    assert bool(list(filled.artifacts.glob("mem-walker-tree-*"))) is not agree
    assert ("nothing removed" in err) is not agree


def test_an_unknown_kind_is_a_usage_error_that_says_which_was_meant(filled: Filled, monkeypatch,
                                                                     capsys) -> None:
    assert run_cli(monkeypatch, "cache", "--clear", "sesions", "--yes") == 2  # as typer's own
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert "Invalid value for '--clear': unknown cache kind 'sesions'; did you mean sessions? " \
        "choose one of: completions, embeddings" in err
    assert filled.session.exists()


def test_prune_and_clear_together_is_a_usage_error(filled: Filled, monkeypatch,
                                                   capsys) -> None:
    assert run_cli(monkeypatch, "cache", "--prune", "--clear", "indexes", "--yes") == 2
    assert "--clear leftovers prunes too" in capsys.readouterr().err
    assert filled.damaged.exists()


# -- a folder shared with others: only longweave's own shapes go ------------------------------

INDEX, TREE = f"index-{'a' * 16}-{'b' * 24}", f"mem-walker-tree-{'c' * 16}-{'d' * 20}"
UNPACKED = f"smollm2-135m-instruct-q8_0.gguf-{'e' * 12}"  # `ModelSource.cache_key` of a GGUF


@pytest.fixture
def cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty cache folder, LONGWEAVE_CACHE_DIR."""
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("LONGWEAVE_CACHE_DIR", str(root))
    monkeypatch.delenv("COLUMNS", raising=False)
    return root


def _write(path: Path, text: str = "x" * 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")
    return path


def _tag(root: Path) -> None:
    _write(root / "CACHEDIR.TAG", "Signature: 8a477f597d28d172789f06886806bc55\n")


def _ours(root: Path) -> list[Path]:
    """A cache folder as longweave leaves it: an index, a tree, an unpacked model, a page."""
    return [_write(root / "artifacts" / INDEX / "index.json",
                   json.dumps({"format": index_module.INDEX_FORMAT})),
            _write(root / "artifacts" / TREE / "tree.json"),
            _write(root / "models" / UNPACKED / "model" / "model.safetensors"),
            _write(root / "views" / f"{'f' * 16}-turn1.html")]


def _others(root: Path) -> list[Path]:
    """What other programs keep in a folder they share with longweave (a home, a project)."""
    dead = _write(root / ".build.tmp" / "f")
    _age(dead.parent)
    return [
        _write(root / "models" / "llama-3-8b" / "original" / "consolidated.00.pth"),
        _write(root / "models" / "README.txt"),
        _write(root / "models" / UNPACKED / "notes.txt"),  # beside longweave's own
        _write(root / "views" / "dashboard.html"),
        _write(root / "Documents" / "thesis.tex"),
        dead, _write(root / ".backup.unusable-2023" / "g"),
        _write(root / ".old.stale" / "h"),
        _write(root / "artifacts" / "notes.txt"),  # a file, not an artifact folder
        _write(root / "artifacts" / ".build.tmp" / "f"),
    ]


def test_longweave_tags_its_cache_folder_at_its_first_run(model, monkeypatch, capsys,
                                                          tmp_path) -> None:
    assert run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "-s", "truncate",
                   "--set", "max_new=32") == 0
    tag = (tmp_path / "cache" / "CACHEDIR.TAG").read_text("utf-8")
    assert tag.startswith("Signature: 8a477f597d28d172789f06886806bc55\n# ")
    assert "longweave" in tag.splitlines()[1]


def test_a_cache_folder_made_before_tags_is_tagged_by_the_listing(cache_dir, monkeypatch,
                                                                  capsys) -> None:
    _ours(cache_dir)
    assert run_cli(monkeypatch, "cache") == 0
    assert (cache_dir / "CACHEDIR.TAG").is_file()


def test_a_shared_folder_is_listed_but_never_tagged_pruned_or_cleared(cache_dir, monkeypatch,
                                                                     capsys) -> None:
    ours, others = _ours(cache_dir), _others(cache_dir)
    before = _files(cache_dir)
    kinds = _kinds(_listing(monkeypatch, capsys))  # listing always works
    assert kinds["other"][0] == 10 and kinds["leftovers"] == (0, 0)
    assert kinds["indexes"][0] == 1 and kinds["views"][0] == 1 and kinds["models"][0] == 1
    assert not (cache_dir / "CACHEDIR.TAG").exists()  # not longweave's alone
    for args in (["--prune"], ["--clear", "all", "--yes"]):
        assert run_cli(monkeypatch, "cache", *args) == 1
        error, hint = capsys.readouterr().err.splitlines()
        assert error == (f"error: {cache_dir} has no CACHEDIR.TAG and holds what longweave did "
                         "not write (.backup.unusable-2023 and 9 more): longweave removes "
                         "nothing there")
        assert hint.startswith("set LONGWEAVE_CACHE_DIR to a folder of longweave's own")
    assert _files(cache_dir) == before and all(p.exists() for p in [*ours, *others])


def test_in_a_tagged_folder_only_longweaves_own_shapes_go(cache_dir, monkeypatch,
                                                          capsys) -> None:
    _tag(cache_dir)
    ours, others = _ours(cache_dir), _others(cache_dir)
    assert run_cli(monkeypatch, "cache", "--prune") == 0
    assert run_cli(monkeypatch, "cache", "--clear", "all", "--yes") == 0
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in others)


@pytest.mark.parametrize("above", [False, True])
def test_the_home_folder_is_never_pruned_nor_cleared(cache_dir, monkeypatch, capsys,
                                                     above: bool) -> None:
    home = cache_dir / "home"
    monkeypatch.setenv("HOME", str(home))
    root = cache_dir if above else home
    monkeypatch.setenv("LONGWEAVE_CACHE_DIR", str(root))
    ours = _ours(root)
    _write(root / "artifacts" / f".{INDEX}.unusable-1234abcd" / "index.json")
    if not above:
        assert run_cli(monkeypatch, "cache") == 0
        assert not (home / "CACHEDIR.TAG").exists()  # backups must not skip a home
    _tag(root)
    for args in (["--prune"], ["--clear", "indexes", "--yes"]):
        assert run_cli(monkeypatch, "cache", *args) == 1
        error = capsys.readouterr().err.splitlines()[0]
        assert error == (f"error: {root} is the home folder or holds it: longweave removes "
                         "nothing there")
    assert all(p.exists() for p in ours)
    assert (root / "artifacts" / f".{INDEX}.unusable-1234abcd").exists()


def test_links_are_never_followed(cache_dir, monkeypatch, capsys, tmp_path) -> None:
    outside = tmp_path / "outside"
    kept = [_write(outside / name / "weights" / "w.bin") for name in ("models", "model", "art")]
    kept.append(_write(outside / "page.html"))
    _tag(cache_dir)
    (cache_dir / "models").mkdir()
    (cache_dir / "models" / UNPACKED).symlink_to(outside / "models", target_is_directory=True)
    other = cache_dir / "models" / f"other-{'1' * 12}"
    other.mkdir()
    (other / "model").symlink_to(outside / "model", target_is_directory=True)
    (cache_dir / "artifacts").mkdir()
    (cache_dir / "artifacts" / INDEX).symlink_to(outside / "art", target_is_directory=True)
    (cache_dir / "views").mkdir()
    (cache_dir / "views" / f"{'f' * 16}-turn1.html").symlink_to(outside / "page.html")
    listing = _kinds(_listing(monkeypatch, capsys))
    assert listing["models"] == (0, 0) and listing["indexes"] == (0, 0)
    assert run_cli(monkeypatch, "cache", "--clear", "models", "--clear", "views",
                   "--clear", "indexes", "--yes") == 0
    assert all(p.read_text("utf-8") == "x" * 100 for p in kept)


def test_a_plugins_artifacts_are_never_taken_for_a_built_in_ones(cache_dir, monkeypatch,
                                                                 capsys) -> None:
    """Keys that only start as a built-in's are a plugin's, in its own current format."""
    from longweave.cache import ArtifactCache

    artifacts = ArtifactCache(cache_dir / "artifacts")
    artifacts.get_or_build("index-summaries-doc1", lambda d: _write(
        d / "index.json", '{"format": 1, "summaries": []}'))
    artifacts.get_or_build("light-rerank-doc1", lambda d: _write(d / "episodes.json", "[]"))
    artifacts.get_or_build("graph-reader-plus-doc1", lambda d: _write(
        d / "graph.json", '{"format": 1}'))
    artifacts.get_or_build(f"index-{'a' * 15}-{'b' * 24}", lambda d: _write(
        d / "index.json", '{"format": 1}'))  # an index of a document id not longweave's
    kinds = _kinds(_listing(monkeypatch, capsys))
    assert kinds["artifacts"][0] == 4 and kinds["leftovers"] == (0, 0)
    assert _listing(monkeypatch, capsys, "--prune")["removed"] == []
    assert len(_artifact_names(cache_dir)) == 4


# -- what could not be removed ------------------------------------------------------------------


def test_what_cannot_be_removed_is_an_error(cache_dir, monkeypatch, capsys) -> None:
    ours = _ours(cache_dir)

    def refused(src, dst, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(os, "rename", refused)
    assert run_cli(monkeypatch, "cache", "--clear", "indexes", "--clear", "trees",
                   "--yes") == 1
    out, err = capsys.readouterr()
    assert out == ""  # not "nothing to remove": the error says what is left
    error, hint = err.splitlines()
    assert error == f"error: 2 not removed: artifacts/{INDEX}: Permission denied"
    assert hint == "check the permissions of the cache folder, then run it again"
    assert run_cli(monkeypatch, "cache", "--json", "--clear", "all", "--yes") == 1
    result = json.loads(capsys.readouterr().out)
    assert [Path(r["path"]).name for r in result["not_removed"]] == [INDEX, TREE, "model"]
    assert {r["why"] for r in result["not_removed"]} == {"Permission denied"}
    assert [Path(r["path"]).name for r in result["removed"]] == [ours[3].name]  # a file


@pytest.mark.parametrize("refuse", ["rename", "rmtree"])
def test_a_dead_writers_folder_that_cannot_be_removed_is_an_error(cache_dir, monkeypatch,
                                                                  capsys, refuse: str) -> None:
    dead = _died_writing(_made(cache_dir / "artifacts"), INDEX)
    _age(dead)
    real_rmtree = shutil.rmtree

    def refused(path, *args, ignore_errors=False, **kwargs):
        if refuse == "rename" or not ignore_errors:
            raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os if refuse == "rename" else shutil, refuse, refused)
    assert run_cli(monkeypatch, "cache", "--prune") == 1
    error = capsys.readouterr().err.splitlines()[0]
    assert error.startswith("error: 1 not removed: artifacts/.") and "Permission denied" in error
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    if refuse == "rmtree":
        (claimed,) = (cache_dir / "artifacts").glob(".*.stale")  # a prune finishes it
        assert _kinds(_listing(monkeypatch, capsys))["leftovers"][0] == 1
        assert run_cli(monkeypatch, "cache", "--prune") == 0 and not claimed.exists()


# -- removal beside running longweave processes -------------------------------------------------


def test_prune_keeps_an_old_memory_rebuilt_since_it_was_listed(tmp_path, monkeypatch) -> None:
    """A LIGHT run refuses an old-format memory, moves it aside and saves the rebuilt one under
    its key between prune's listing and its removal: the rebuilt one stays."""
    import longweave.cache_removal as removal
    from longweave.cache import ArtifactCache
    from longweave.memory.episodic import Episode, EpisodicMemory
    from longweave.memory.working import MemoryUnit

    root = tmp_path / "cache"
    artifacts = ArtifactCache(root / "artifacts")
    key = f"light-{'d' * 16}-{'2' * 20}"

    def memory(folder: Path) -> None:
        made = EpisodicMemory(HashEmbedder(), "doc")
        made.add([Episode(MemoryUnit(0, 0, 10, "Mara kept"), "Mara kept the light", ())])
        made.save(folder)

    final = artifacts.get_or_build(key, memory)
    about = json.loads((final / "episodes.json").read_text("utf-8"))
    del about["checksums"]
    (final / "episodes.json").write_text(json.dumps(about), "utf-8")
    listed = removal.cache_contents

    def a_light_run_finishes_meanwhile(at: Path) -> list:
        items = listed(at)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert artifacts.load(key, lambda d: EpisodicMemory.load(d, HashEmbedder()),
                                  "the memory") is None  # refused, moved aside
        artifacts.get_or_build(key, memory)
        return items

    monkeypatch.setattr(removal, "cache_contents", a_light_run_finishes_meanwhile)
    result = removal.prune_cache(root)
    assert result.removed == () and result.not_removed == ()
    assert EpisodicMemory.load(root / "artifacts" / key, HashEmbedder()) is not None
    assert not list((root / "artifacts").glob("*.stale"))

"""The completion cache (SQLite), the caching LLM wrapper, and the per-document artifact cache."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import BaseModel

from longweave.answer import Usage
from longweave.cache import ArtifactCache, CachedLLM, CompletionCache, completion_key
from longweave.llm import LLM, Completion, Message, system, user

ROOT = Path(__file__).resolve().parents[1]


class City(BaseModel):
    name: str


class Country(BaseModel):
    name: str


class FakeLLM:
    """Answers "Lima" (or City JSON), counts calls, and can refuse anything that loads weights."""

    def __init__(self, name: str = "fake-1", *, loaded: bool = True, parse: bool = True,
                 text: str = "Lima", finish_reason: str = "stop") -> None:
        self.name = name
        self.text = text
        self.finish_reason = finish_reason
        self.calls: list[tuple[list[Message], float]] = []
        self.loaded = loaded
        self.parse = parse

    def _weights(self) -> None:
        # Local backends load weights lazily; a cache hit must not trigger that.
        if not self.loaded:
            raise AssertionError("a cache hit touched the model")

    @property
    def context_window(self) -> int:
        self._weights()
        return 4096

    @property
    def tokenizer(self) -> str:
        self._weights()
        return "whitespace"

    def count_tokens(self, text: str) -> int:
        self._weights()
        return len(text.split())

    def count_prompt_tokens(self, messages: Sequence[Message]) -> int:
        self._weights()
        return sum(len(m.content.split()) + 2 for m in messages)

    def extra_feature(self) -> str:
        return "backend-specific"

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        schema: type[BaseModel] | None = None,
        role: str = "",
    ) -> Completion:
        self._weights()
        self.calls.append((list(messages), temperature))
        text = '{"name": "Lima"}' if schema else self.text
        parsed = schema.model_validate_json(text) if schema and self.parse else None
        return Completion(
            text=text,
            usage=Usage(calls=1, prompt_tokens=12, completion_tokens=3, seconds=0.5),
            parsed=parsed,
            finish_reason=self.finish_reason,
            model=f"{self.name}-v2",
        )


QUESTION = [system("Answer briefly."), user("What is the capital of Peru?")]


# -- completion_key ------------------------------------------------------------------------


def key(**changes: object) -> str:
    args: dict = {
        "model": "m",
        "messages": QUESTION,
        "max_tokens": 16,
        "temperature": 0.0,
        "schema": None,
    } | changes
    model, messages = args.pop("model"), args.pop("messages")
    return completion_key(model, messages, **args)


def test_completion_key_covers_everything_that_shapes_the_output() -> None:
    base = key()
    assert len(base) == 64 and base == key()
    assert key(messages=[m.as_dict() for m in QUESTION]) == base  # dicts and Messages agree
    variants = [
        key(model="other"),
        key(messages=[system("Answer briefly."), user("What is the capital of Chile?")]),
        key(messages=[user("Answer briefly."), user("What is the capital of Peru?")]),
        key(messages=QUESTION[1:]),
        key(max_tokens=17),
        key(temperature=0.7),
        key(schema=City),
        key(schema=Country),
    ]
    assert len({base, *variants}) == len(variants) + 1


# -- CompletionCache -----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["not json", '{"text": null}', "[]", '"Lima"'])
async def test_a_damaged_row_is_a_miss_and_the_new_answer_replaces_it(
    tmp_path: Path, damage: str
) -> None:
    inner = FakeLLM()
    cached = CachedLLM(inner, CompletionCache(tmp_path / "c.sqlite"))
    first = await cached.complete(QUESTION, max_tokens=16)
    cached.cache.close()
    with sqlite3.connect(tmp_path / "c.sqlite") as conn:
        conn.execute("UPDATE completions SET record = ?", (damage,))
    again = await cached.complete(QUESTION, max_tokens=16)  # asked again, not a crash
    assert again.text == first.text and again.meta.get("cache") != "hit"
    assert len(inner.calls) == 2
    hit = await cached.complete(QUESTION, max_tokens=16)  # the new answer replaced the row
    assert hit.meta["cache"] == "hit" and len(inner.calls) == 2


def test_the_key_of_an_openai_compatible_model_names_its_server() -> None:
    """Local servers answer to any model name: two of them must not share cached answers."""
    from longweave.llm import model_identity
    from longweave.openai_backend import OpenAILLM

    a = OpenAILLM("default", base_url="http://127.0.0.1:8001/v1", api_key="x")
    b = OpenAILLM("default", base_url="http://127.0.0.1:8002/v1/", api_key="x")
    same = OpenAILLM("default", base_url="http://127.0.0.1:8001/v1/", api_key="x")
    assert a.name == b.name == "openai:default"
    assert model_identity(a) != model_identity(b) and model_identity(a) == model_identity(same)
    assert model_identity(OpenAILLM("default", base_url=a.base_url, api_key="x",
                                    structured="instructions")) != model_identity(a)
    assert model_identity(CachedLLM(a, CompletionCache(":memory:"))) == model_identity(a)


def test_put_get_roundtrip_persists_in_a_wal_database(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "completions.sqlite"
    cache = CompletionCache(path)
    assert cache.get("k") is None
    record = {"text": "Lima ✓", "finish_reason": "stop", "usage": {"prompt_tokens": 3}}
    cache.put("k", record)
    assert cache.get("k") == record
    cache.put("k", {"text": "replaced"})
    cache.close()
    assert CompletionCache(path).get("k") == {"text": "replaced"}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_only_the_cache_folders_completion_cache_tags_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CACHEDIR.TAG tells backup tools to skip a folder: the completion cache that `make_model`
    puts in longweave's cache folder writes it there; a file the user named the same in a
    folder of their own does not (that folder would silently drop out of their backups)."""
    from longweave.api import make_model

    monkeypatch.setenv("LONGWEAVE_CACHE_DIR", str(tmp_path / "cache"))
    default = make_model(FakeLLM())
    assert isinstance(default, CachedLLM)
    default.cache.put("k", {"text": "Lima"})
    assert (tmp_path / "cache" / "completions.sqlite").is_file()
    assert (tmp_path / "cache" / "CACHEDIR.TAG").read_bytes().startswith(b"Signature: ")
    from longweave.config import Settings

    given = make_model(FakeLLM(), settings=Settings(cache_dir=tmp_path / "given"))
    given.cache.put("k", {"text": "Lima"})  # a cache folder given in code, not the environment
    assert (tmp_path / "given" / "CACHEDIR.TAG").is_file()
    mine = CompletionCache(tmp_path / "mine" / "completions.sqlite")
    mine.put("k", {"text": "Lima"})
    assert mine.get("k") == {"text": "Lima"} and mine.path.is_file()
    assert not (tmp_path / "mine" / "CACHEDIR.TAG").exists()


@pytest.mark.parametrize("damage", ["garbage", "malformed"])
def test_a_corrupt_database_is_moved_aside_and_rebuilt(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "completions.sqlite"
    cache = CompletionCache(path)
    for i in range(300):
        cache.put(f"k{i}", {"text": "x" * 500})
    cache.close()
    with sqlite3.connect(path) as conn:  # fold the WAL into the main file before damaging it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(b"not a database " * 100)
    else:
        for offset in range(4096, len(data), 4096):  # keep the header, wreck every page
            data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))

    cache = CompletionCache(path)
    with pytest.warns(RuntimeWarning, match="moving it aside"):
        assert cache.get("k1") is None
    cache.put("fresh", {"text": "ok"})
    assert cache.get("fresh") == {"text": "ok"}
    assert (tmp_path / "completions.sqlite.corrupt").exists()


async def test_an_unusable_cache_location_never_fails_the_question(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    cache = CompletionCache(tmp_path / "a-file" / "c.sqlite")  # its parent is not a directory
    inner = FakeLLM()
    with pytest.warns(RuntimeWarning, match="completion cache") as caught:
        answer = await CachedLLM(inner, cache).complete(QUESTION, max_tokens=16)
        again = await CachedLLM(inner, cache).complete(QUESTION, max_tokens=16)
    assert answer.text == again.text == "Lima" and len(inner.calls) == 2
    # One warning for the run, not one per lookup and store.
    assert len(caught) == 1 and "completions are not cached in this run" in str(caught[0].message)


def test_many_threads_share_one_cache(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")

    def work(worker: int) -> int:
        seen = 0
        for i in range(40):
            cache.put(f"own-{worker}-{i}", {"worker": worker, "i": i})
            cache.put(f"shared-{i}", {"i": i})  # every thread writes the same keys
            assert cache.get(f"own-{worker}-{i}") == {"worker": worker, "i": i}
            seen += cache.get(f"shared-{i}") == {"i": i}
        return seen

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(work, range(16))) == [40] * 16
    assert all(cache.get(f"own-{w}-39") == {"worker": w, "i": 39} for w in range(16))


WRITER = """
import sys
from longweave.cache import CompletionCache
cache = CompletionCache(sys.argv[1])
for i in range(60):
    cache.put(f"{sys.argv[2]}-{i}", {"text": str(i)})
    assert cache.get(f"{sys.argv[2]}-{i}") == {"text": str(i)}
"""


def test_several_processes_write_one_cache(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"p{n}"], env=env)
        for n in range(3)
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    cache = CompletionCache(path)
    assert all(cache.get(f"p{n}-{i}") == {"text": str(i)} for n in range(3) for i in range(60))


# -- CachedLLM -----------------------------------------------------------------------------


async def test_a_miss_calls_the_model_and_a_hit_does_not(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    inner = FakeLLM()
    llm = CachedLLM(inner, cache)
    assert isinstance(llm, LLM)

    first = await llm.complete(QUESTION, max_tokens=16, role="worker")
    assert len(inner.calls) == 1
    assert first.text == "Lima" and first.usage.prompt_tokens == 12 and first.meta == {}

    # A later session: a fresh backend that has not loaded its weights.
    cold = FakeLLM(loaded=False)
    again = await CachedLLM(cold, cache).complete(QUESTION, max_tokens=16, role="judge")
    assert cold.calls == []
    assert again.text == "Lima" and again.finish_reason == "stop" and again.model == "fake-1-v2"
    assert again.meta == {"cache": "hit"}
    assert again.usage.calls == 1 and again.usage.cache_hits == 1
    assert again.usage.prompt_tokens == again.usage.completion_tokens == 0  # nothing ran
    stored = cache.get(key(model="fake-1"))
    assert stored is not None and stored["usage"]["prompt_tokens"] == 12


async def test_miss_returns_the_inner_completion_unchanged(tmp_path: Path) -> None:
    inner = FakeLLM()
    llm = CachedLLM(inner, CompletionCache(tmp_path / "c.sqlite"))
    sentinel = await inner.complete(QUESTION, max_tokens=8)

    async def fixed(*args: object, **kwargs: object) -> Completion:
        return sentinel

    inner.complete = fixed  # type: ignore[method-assign]
    assert await llm.complete(QUESTION, max_tokens=8) is sentinel


async def test_a_different_model_or_prompt_misses(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    await CachedLLM(FakeLLM(), cache).complete(QUESTION, max_tokens=16)
    other = FakeLLM(name="fake-2")
    await CachedLLM(other, cache).complete(QUESTION, max_tokens=16)
    await CachedLLM(other, cache).complete(QUESTION[1:], max_tokens=16)
    assert len(other.calls) == 2


async def test_sampling_or_a_disabled_cache_always_runs_the_model(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    inner = FakeLLM()
    sampled = CachedLLM(inner, cache)
    for _ in range(2):
        await sampled.complete(QUESTION, max_tokens=16, temperature=0.8)
    disabled = CachedLLM(inner, cache, enabled=False)
    for _ in range(2):
        await disabled.complete(QUESTION, max_tokens=16)
    assert len(inner.calls) == 4
    assert cache.get(key(model="fake-1")) is None  # disabled means no writes either


async def test_schema_hits_are_parsed_again(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    await CachedLLM(FakeLLM(), cache).complete(QUESTION, max_tokens=16, schema=City)
    cold = FakeLLM(loaded=False)
    hit = await CachedLLM(cold, cache).complete(QUESTION, max_tokens=16, schema=City)
    assert hit.parsed == City(name="Lima") and hit.meta == {"cache": "hit"}
    # Another schema is another key: that call must reach the model.
    with pytest.raises(AssertionError, match="touched the model"):
        await CachedLLM(cold, cache).complete(QUESTION, max_tokens=16, schema=Country)


async def test_empty_replies_are_not_stored(tmp_path: Path) -> None:
    # A blank reply (a glitch, a cut stream) would otherwise be the answer forever.
    inner = FakeLLM(text=" \n")
    llm = CachedLLM(inner, CompletionCache(tmp_path / "c.sqlite"))
    await llm.complete(QUESTION, max_tokens=16)
    await llm.complete(QUESTION, max_tokens=16)
    assert len(inner.calls) == 2


async def test_a_reply_a_content_filter_stopped_is_not_stored(tmp_path: Path) -> None:
    # The backend warns when the filter stops a reply; a replay would come back silently.
    inner = FakeLLM(text="The first half of", finish_reason="content_filter")
    llm = CachedLLM(inner, CompletionCache(tmp_path / "c.sqlite"))
    await llm.complete(QUESTION, max_tokens=16)
    await llm.complete(QUESTION, max_tokens=16)
    assert len(inner.calls) == 2


async def test_unparsed_schema_completions_are_not_stored(tmp_path: Path) -> None:
    cache = CompletionCache(tmp_path / "c.sqlite")
    inner = FakeLLM(parse=False)
    llm = CachedLLM(inner, cache)
    await llm.complete(QUESTION, max_tokens=16, schema=City)
    await llm.complete(QUESTION, max_tokens=16, schema=City)
    assert len(inner.calls) == 2


def test_everything_else_is_delegated(tmp_path: Path) -> None:
    llm = CachedLLM(FakeLLM(), CompletionCache(tmp_path / "c.sqlite"))
    assert llm.name == "fake-1" and llm.context_window == 4096
    assert llm.tokenizer == "whitespace"
    assert llm.count_tokens("a b c") == 3
    assert llm.count_prompt_tokens(QUESTION) == 12
    assert llm.extra_feature() == "backend-specific"
    with pytest.raises(AttributeError):
        llm.no_such_attribute  # noqa: B018


# -- ArtifactCache -------------------------------------------------------------------------


def test_artifacts_are_built_once(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "artifacts")
    builds: list[Path] = []

    def build(into: Path) -> None:
        builds.append(into)
        (into / "tree.json").write_text('{"root": 1}')

    first = cache.get_or_build("doc-abc.tree.v1", build)
    second = cache.get_or_build("doc-abc.tree.v1", build)
    assert first == second == tmp_path / "artifacts" / "doc-abc.tree.v1"
    assert len(builds) == 1 and builds[0] != first  # built elsewhere, then moved into place
    assert (first / "tree.json").read_text() == '{"root": 1}'


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)

    def broken(into: Path) -> None:
        (into / "half.json").write_text("{")
        raise RuntimeError("model went away")

    with pytest.raises(RuntimeError, match="went away"):
        cache.get_or_build("k", broken)
    assert list(tmp_path.iterdir()) == []
    done = cache.get_or_build("k", lambda into: (into / "ok").write_text("1"))
    assert (done / "ok").read_text() == "1"


def test_racing_builders_agree_on_one_complete_copy(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    both_building = threading.Barrier(4)

    def build(into: Path) -> None:
        name = threading.current_thread().name
        (into / "a").write_text(name)
        both_building.wait(timeout=30)  # every builder is mid-build before any finishes
        (into / "b").write_text(name)

    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: cache.get_or_build("graph", build), range(4)))
    assert len(set(paths)) == 1
    winner = paths[0]
    assert (winner / "a").read_text() == (winner / "b").read_text()  # one builder's whole copy
    assert [p.name for p in tmp_path.iterdir()] == ["graph"]  # the losers' copies are gone


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", ".hidden", "x" * 300])
def test_unsafe_artifact_keys_are_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="artifact key"):
        ArtifactCache(tmp_path).get_or_build(bad, lambda into: None)


def test_artifact_load_moves_an_unusable_one_aside_and_save_warns_instead_of_failing(
    tmp_path: Path,
) -> None:
    import json

    from longweave.cache import ArtifactCache

    cache = ArtifactCache(tmp_path / "artifacts")

    def read(d: Path) -> int:
        return int(json.loads((d / "n.json").read_text())["n"])

    assert cache.load("k", read, "the number") is None  # nothing built yet
    assert cache.save("k", lambda d: (d / "n.json").write_text('{"n": 7}'), "the number")
    assert cache.load("k", read, "the number") == 7
    for damage in ("[]", "null", '{"m": 1}', '{"n": "x"}'):
        (cache.root / "k" / "n.json").write_text(damage)
        with pytest.warns(RuntimeWarning, match="rebuilding the number: .* moved to .k.unusable-"):
            assert cache.load("k", read, "the number") is None
        assert cache.find("k") is None  # moved aside: the rebuilt one takes its place
        assert cache.save("k", lambda d: (d / "n.json").write_text('{"n": 7}'), "the number")
    assert len(list(cache.root.glob(".k.unusable-*"))) == 4

    blocked = ArtifactCache(tmp_path / "a-file" / "artifacts")
    (tmp_path / "a-file").write_text("in the way")
    with pytest.warns(RuntimeWarning, match="the number is not cached .*next question"):
        assert not blocked.save("k", lambda d: (d / "n.json").write_text("{}"), "the number")


def test_an_artifact_removed_while_it_is_read_is_a_quiet_miss(tmp_path: Path) -> None:
    """`longweave cache --clear` took it meanwhile: nothing is damaged, nothing set aside."""
    cache = ArtifactCache(tmp_path / "artifacts")
    cache.save("k", lambda d: (d / "n.json").write_text('{"n": 7}'), "the number")

    def read(d: Path) -> int:
        shutil.rmtree(d)  # removed by another process after it was found
        return int((d / "n.json").read_text())

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load("k", read, "the number") is None
    assert list(cache.root.iterdir()) == []


def test_an_unusable_artifact_is_said_moved_only_when_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ArtifactCache(tmp_path / "artifacts")
    cache.save("k", lambda d: (d / "n.json").write_text("garbage"), "the number")

    def refused(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(os, "rename", refused)
    with pytest.warns(RuntimeWarning) as said:
        assert cache.load("k", lambda d: int((d / "n.json").read_text()), "the number") is None
    (message,) = [str(w.message) for w in said]
    assert "moved to" not in message
    assert message.endswith("; it could not be moved aside (Permission denied)")
    assert [p.name for p in cache.root.iterdir()] == ["k"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names fds through /proc")
def test_a_build_is_synced_to_disk_before_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without it, a power cut just after the rename could leave the artifact's name holding
    empty files (ext4 and XFS may write a rename before the data it names)."""
    events: list[tuple[str, ...]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: str, dst: str) -> None:
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)

    def build(into: Path) -> None:
        (into / "sub").mkdir()
        (into / "tree.json").write_text("{}")
        (into / "sub" / "vectors.npy").write_bytes(b"\x93NUMPY")

    final = ArtifactCache(tmp_path.resolve() / "artifacts").get_or_build("doc1-tree", build)
    (at,) = [i for i, e in enumerate(events) if e[0] == "rename"]
    tmp = events[at][1]
    synced = {e[1] for e in events[:at] if e[0] == "fsync"}
    assert {tmp, f"{tmp}/tree.json", f"{tmp}/sub", f"{tmp}/sub/vectors.npy"} <= synced
    assert ("fsync", str(final.parent)) in events[at + 1:]  # the rename itself, kept


def left_behind(root: Path, name: str, age_s: float) -> Path:
    """A temporary folder as a killed writer leaves it, last written `age_s` ago."""
    folder = root / name
    (folder / "store").mkdir(parents=True)
    (folder / "store" / "index.faiss").write_bytes(b"half a")
    when = time.time() - age_s
    for p in (folder / "store" / "index.faiss", folder / "store", folder):
        os.utime(p, (when, when))
    return folder


def test_a_build_sweeps_what_killed_writers_left_and_nothing_a_live_one_writes(
    tmp_path: Path,
) -> None:
    from longweave.retrieval import durable

    root = tmp_path / "artifacts"
    host, old = durable._host(), 2 * durable.STALE_AFTER_S
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        swept = [
            left_behind(root, ".index-a.x1y2z3w4.tmp", old),  # from before owners were named
            left_behind(root, f".index-b.{host}-{gone.stdout.strip()}.abcd1234.tmp", old),
            left_behind(root, ".index-c.x1y2z3w4.1234abcd.stale", 0),  # a sweep that died
        ]
        kept = [
            left_behind(root, f".index-d.{host}-{running.pid}.abcd1234.tmp", old),  # alive
            left_behind(root, f".index-e.{host}-{os.getpid()}.abcd1234.tmp", old),  # this one
            left_behind(root, f".index-f.{'0' * 8}-1.abcd1234.tmp", 60),  # another host, busy
            left_behind(root, ".index-g.x1y2z3w4.tmp", 60),  # written a minute ago
            left_behind(root, ".index-h.unusable-1234abcd", old),  # set aside by `load`
        ]
        ArtifactCache(root).get_or_build("doc1-tree", lambda into: None)
    finally:
        running.kill()
        running.wait()
    assert not any(p.exists() for p in swept)
    assert all(p.exists() for p in kept)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["doc1-tree"]


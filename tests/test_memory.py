"""Memory classes shared by LIGHT and chat: working, episodic, scratchpad."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from longweave.memory.episodic import Episode, EpisodicMemory
from longweave.memory.scratchpad import Bullet, Scratchpad, parse_bullet
from longweave.memory.working import MemoryUnit, WorkingMemory


class WordEmbedder:
    """Deterministic bag-of-words vectors: texts sharing words are similar."""

    name = "test:words"
    dim = 64

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                out[i, sum(map(ord, w)) % self.dim] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)


def unit(i: int, text: str = "x") -> MemoryUnit:
    return MemoryUnit(i, 10 * i, 10 * i + 5, text)


def test_working_memory_keeps_newest_in_order_and_selects_newest_first() -> None:
    wm = WorkingMemory(3)
    wm.extend(unit(i) for i in range(5))
    assert [u.index for u in wm.units] == [2, 3, 4]
    # budget for two units: the two newest, shown chronologically
    assert [u.index for u in wm.select(2, lambda u: 1)] == [3, 4]
    assert wm.select(0, lambda u: 1) == []


def test_episodic_search_returns_nearest_and_round_trips(tmp_path: Path) -> None:
    mem = EpisodicMemory(WordEmbedder(), "doc")
    mem.add([Episode(unit(0, "a"), "lighthouse keeper Mara"), Episode(unit(1, "b"), "fish market")])
    (best, _), *_ = mem.search("who was the lighthouse keeper", 1)
    assert best.unit.index == 0
    mem.save(tmp_path)
    again = EpisodicMemory.load(tmp_path, WordEmbedder())
    assert again.search("fish market prices", 1)[0][0].unit.index == 1
    # Swapped vectors still parse: the checksum, not numpy, says they are not these episodes.
    vectors = np.load(tmp_path / "episode_vectors.npy")
    np.save(tmp_path / "episode_vectors.npy", vectors[::-1].copy())
    with pytest.raises(ValueError, match="checksum"):
        EpisodicMemory.load(tmp_path, WordEmbedder())


def saved_memory(tmp_path: Path) -> Path:
    mem = EpisodicMemory(WordEmbedder(), "doc")
    mem.add([Episode(unit(i, str(i)), f"episode {i} about topic{i % 3}") for i in range(6)])
    mem.save(tmp_path)
    return tmp_path


def test_a_truncated_vectors_file_is_named_as_such(tmp_path: Path) -> None:
    d = saved_memory(tmp_path)
    data = (d / "episode_vectors.npy").read_bytes()
    (d / "episode_vectors.npy").write_bytes(data[:-64])
    with pytest.raises(ValueError, match="truncated"):
        EpisodicMemory.load(d, WordEmbedder())


@pytest.mark.parametrize("old", ["no checksum", "sha256 alone"])
def test_a_memory_without_a_checksum_is_rebuilt_as_an_index_would_be(tmp_path: Path,
                                                                     old: str) -> None:
    """Memories saved before the checksum loaded unchecked: a changed file still read as
    these episodes. Now they are refused, so the artifact cache moves them aside and LIGHT
    builds the memory again, as it does for a retrieval index of an older format. So is one
    saved in the brief format that recorded the vectors' sha256 without their size."""
    import hashlib

    from longweave.cache import ArtifactCache
    from longweave.cache_contents import why_outdated

    cache = ArtifactCache(tmp_path / "artifacts")
    d = cache.get_or_build("light-x", saved_memory)
    about = json.loads((d / "episodes.json").read_text())
    del about["checksums"]
    if old == "sha256 alone":
        vectors = (d / "episode_vectors.npy").read_bytes()
        about["vectors_sha256"] = hashlib.sha256(vectors).hexdigest()
    (d / "episodes.json").write_text(json.dumps(about))
    assert why_outdated("memories", d) == "old format (no checksums)"  # as `longweave cache` says
    with pytest.raises(ValueError, match="no checksum"):
        EpisodicMemory.load(d, WordEmbedder())
    with pytest.warns(RuntimeWarning, match="rebuilding the LIGHT memory.*no checksum"):
        assert cache.load("light-x", lambda f: EpisodicMemory.load(f, WordEmbedder()),
                          "the LIGHT memory") is None
    assert cache.find("light-x") is None


def test_scratchpad_tags_compression_trigger_and_pieces() -> None:
    pad = Scratchpad(target_tokens=10, count=lambda s: len(s.split()))
    pad.add(["Ana lives in Lima"], unit=0)
    assert pad.render() == "- Ana lives in Lima [u0]"
    assert not pad.needs_compression()
    pad.add(["Ben likes fish", "Rosa visits in May", "Ana works at the port"], unit=1)
    assert pad.tokens() > 20 and pad.needs_compression()
    pad.replace([Bullet("Ana: Lima, port", (0, 1)), Bullet("x " * 30)])
    assert pad.tokens() <= 10 and len(pad.bullets) == 1 and pad.compressions == 1
    assert parse_bullet("- fact [u3] [u7]") == Bullet("fact", (3, 7))
    pad2 = Scratchpad(100, lambda s: len(s.split()))
    for i in range(6):
        pad2.add([f"topic{i // 3} fact {i}"], unit=i)
    pieces = pad2.pieces(WordEmbedder(), max_tokens=8)
    assert all(p.bullets for p in pieces)
    assert [b for p in pieces for b in p.bullets] == pad2.bullets

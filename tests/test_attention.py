"""Question-row attention by recomputation against eager attention (STRATEGIES.md §7.6.1)."""

from __future__ import annotations

import numpy as np
import pytest

from longweave.agents.infini_retri_prompts import Template
from longweave.local_models.attention import (
    AttentionScorer,
    LocalAttentionScorer,
    eager_question_attention,
)

CONTEXT = [
    "The harbour wall was built in 1742 from granite. ",
    "The first keeper of the lighthouse was Mara Quill. ",
    "The railway reached the town in 1868.",
]
QUESTION = "Who was the first keeper of the lighthouse?"


@pytest.fixture(scope="module")
def scorer():
    from longweave.local_models import LocalLLM

    llm = LocalLLM.bundled()
    llm.load()
    yield LocalAttentionScorer(llm)
    llm.close()


@pytest.fixture(scope="module")
def prompt(scorer):
    template = Template.build(scorer, QUESTION)
    return template.assemble([scorer.encode(s) for s in CONTEXT])


def test_local_scorer_satisfies_the_protocol(scorer) -> None:
    assert isinstance(scorer, AttentionScorer)


@pytest.mark.real_model
@pytest.mark.parametrize("layer", [-1, 0, 14])
def test_recomputed_rows_match_eager_attention(scorer, prompt, layer: int) -> None:
    ids, c0, c1, q0 = prompt
    model = scorer.llm._weights()
    assert model.config._attn_implementation == "sdpa"  # the fast path runs under sdpa
    ours = scorer.attention(ids, q0, layer=layer)
    eager = eager_question_attention(model, ids, q0, layer=layer)
    assert model.config._attn_implementation == "sdpa"  # restored after the eager reference
    assert ours.shape == eager.shape == (len(ids) - q0, len(ids))
    assert np.abs(ours - eager).max() <= 1e-5
    # rows are softmax distributions summed over the 9 query heads (GQA over 3 KV heads)
    heads = model.config.num_attention_heads
    np.testing.assert_allclose(ours.sum(axis=1), heads, rtol=1e-4)
    assert np.all(np.triu(ours[:, q0:], k=1) == 0.0), "causal: no row attends to later tokens"
    k = 20
    top = set(np.argsort(-ours[:, c0:c1].sum(0))[:k])
    assert top == set(np.argsort(-eager[:, c0:c1].sum(0))[:k])


@pytest.mark.real_model
def test_segments_reassemble_the_chat_prompt(scorer, prompt) -> None:
    """Segment-wise ids decode to the same text the backend would send as a whole."""
    from longweave.agents.infini_retri_prompts import reader_messages

    ids, c0, c1, q0 = prompt
    hf = scorer.llm.tokenizer.tokenizer
    whole = scorer.render(reader_messages("".join(CONTEXT), QUESTION))
    assert hf.decode(ids) == whole
    assert hf.decode(ids[c0:c1]) == "".join(CONTEXT)
    assert hf.decode(ids[q0:]).startswith(QUESTION)

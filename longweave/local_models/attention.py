"""Question-row attention of one layer, without every layer's full attention matrix.

InfiniRetri (STRATEGIES.md §7.2) needs, for one decoder layer, the attention of the question
rows to every earlier position. `output_attentions=True` forces eager attention in every layer
and returns layers × heads × L² floats; instead the model runs under its own (sdpa) attention, a
forward pre-hook on the chosen layer's attention module captures that layer's input hidden
states and rotary cos/sin, stops the forward there (later layers and the LM head never run), and
softmax(q·kᵀ/√d + causal mask) is recomputed in float32 for the question rows only. Softmax rows
are independent, so this equals eager attention up to float error (pinned by a parity test).

Importing this module loads neither torch nor transformers.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

    from longweave.llm import Message
    from longweave.local_models.backend import LocalLLM

__all__ = [
    "AttentionScorer",
    "LocalAttentionScorer",
    "box_filter",
    "eager_question_attention",
    "question_attention",
    "question_weights",
    "token_scores",
]


@runtime_checkable
class AttentionScorer(Protocol):
    """A model whose attention can be read: renders and tokenizes prompts, returns question rows."""

    name: str
    context_window: int

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text the model sees for `messages`, generation prompt included."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        ...

    def attention(self, ids: Sequence[int], start: int, *, layer: int = -1) -> np.ndarray:
        """Attention of rows `start..len(ids)-1` to all positions at `layer`, summed over heads:
        float32 of shape [len(ids) - start, len(ids)]."""
        ...


class LocalAttentionScorer:
    """An `AttentionScorer` over a `LocalLLM`'s own weights and tokenizer (any causal HF model).

    >>> scorer = LocalAttentionScorer(LocalLLM.bundled())   # doctest: +SKIP
    >>> scorer.attention(scorer.encode("Hello there, friend."), 3).shape  # doctest: +SKIP
    (1, 4)
    """

    def __init__(self, llm: LocalLLM) -> None:
        self.llm = llm
        self.name = llm.name
        self.context_window = llm.context_window

    def _tokenizer(self) -> Any:
        return self.llm.tokenizer.tokenizer  # the HF tokenizer inside longweave's HFTokenizer

    def render(self, messages: Sequence[Message]) -> str:
        hf = self._tokenizer()
        if getattr(hf, "chat_template", None):
            return hf.apply_chat_template(
                [m.as_dict() for m in messages], tokenize=False, add_generation_prompt=True
            )
        # A base model: the same role-prefixed text LocalLLM.encode_prompt uses.
        return "".join(f"{m.role}: {m.content}\n\n" for m in messages) + "assistant:"

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer().encode(text, add_special_tokens=False))

    def attention(self, ids: Sequence[int], start: int, *, layer: int = -1) -> np.ndarray:
        # LocalLLM has no public accessor for its HF model yet; _weights() loads it once.
        model = self.llm._weights()
        return question_attention(model, ids, start, layer=layer)


class _Captured(Exception):
    """Raised by the hook to stop the forward once the chosen layer's inputs are captured."""


def _decoder_layers(model: Any) -> Any:
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no decoder layers at .model.layers")
    return layers


def _recomputable(attn: Any) -> bool:
    """Whether the attention module has the llama-family shape the recomputation assumes."""
    module = sys.modules.get(type(attn).__module__)
    return all(hasattr(attn, a) for a in ("q_proj", "k_proj", "head_dim", "scaling")) and hasattr(
        module, "apply_rotary_pos_emb"
    )


def question_attention(
    model: Any, ids: Sequence[int], start: int, *, layer: int = -1
) -> np.ndarray:
    """Rows `start..` of layer `layer`'s attention, summed over heads, float32 [rows, L].

    Llama-family modules (Llama, Mistral, Qwen2/3, SmolLM) are recomputed from the captured
    inputs; any other architecture falls back to an eager forward of the whole model."""
    import torch

    layers = _decoder_layers(model)
    attn = layers[layer].self_attn
    if not _recomputable(attn):
        return eager_question_attention(model, ids, start, layer=layer)
    captured: dict[str, Any] = {}

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured["hidden"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        captured["rope"] = kwargs.get("position_embeddings") or (args[1] if len(args) > 1 else None)
        raise _Captured

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
    try:
        with torch.inference_mode():
            try:
                getattr(model, "model", model)(input_ids=input_ids, use_cache=False)
            except _Captured:
                pass
            if "hidden" not in captured:
                raise RuntimeError("the attention hook did not fire")
            return _recompute(attn, captured["hidden"], captured["rope"], start)
    finally:
        handle.remove()


def _recompute(attn: Any, hidden: torch.Tensor, rope: Any, start: int) -> np.ndarray:
    """softmax(q·kᵀ·scaling + causal mask) for rows start.., in float32, summed over heads."""
    import torch

    module = sys.modules[type(attn).__module__]
    length = hidden.shape[1]
    head_dim = attn.head_dim
    q = attn.q_proj(hidden[:, start:]).view(1, length - start, -1, head_dim).transpose(1, 2)
    k = attn.k_proj(hidden).view(1, length, -1, head_dim).transpose(1, 2)
    if getattr(attn, "q_norm", None) is not None:  # Qwen3-style per-head norms come before RoPE
        q = attn.q_norm(q)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    cos, sin = rope
    # RoPE for the rows at their own positions; keys at all positions.
    q, _ = module.apply_rotary_pos_emb(q, q, cos[:, start:], sin[:, start:])
    _, k = module.apply_rotary_pos_emb(k, k, cos, sin)
    groups = q.shape[1] // k.shape[1]  # GQA: each key head serves `groups` query heads
    k = k.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(2, 3)) * float(attn.scaling)
    rows = torch.arange(start, length, device=hidden.device)[:, None]
    cols = torch.arange(length, device=hidden.device)[None, :]
    scores = scores.masked_fill(cols > rows, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return probs[0].sum(0).cpu().numpy().astype(np.float32)


def eager_question_attention(
    model: Any, ids: Sequence[int], start: int, *, layer: int = -1
) -> np.ndarray:
    """The reference path: an eager forward returning every layer's attention (slow, large).

    Used for the parity test and for architectures the recomputation does not know."""
    import torch

    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            out = getattr(model, "model", model)(
                input_ids=torch.tensor([list(ids)], device=device),
                output_attentions=True,
                use_cache=False,
            )
        return out.attentions[layer][0][:, start:, :].float().sum(0).cpu().numpy()
    finally:
        model.set_attn_implementation(previous)


# -- from question rows to token scores (numpy; STRATEGIES.md §7.2 lines 6-8) --------------------


def box_filter(rows: np.ndarray, width: int) -> np.ndarray:
    """Each row summed over a `width`-token window along the token axis: "same" size, zero
    padding, the window reaching (width-1)//2 tokens back (as conv1d with padding='same')."""
    if width <= 1:
        return rows.astype(np.float32)
    left = (width - 1) // 2
    padded = np.pad(rows.astype(np.float64), ((0, 0), (left, width - 1 - left)))
    sums = np.pad(np.cumsum(padded, axis=1), ((0, 0), (1, 0)))
    return (sums[:, width:] - sums[:, :-width]).astype(np.float32)


def question_weights(rows: np.ndarray, q0: int) -> np.ndarray:
    """Per question row, the attention mass it puts on the question itself (columns q0..)."""
    return rows[:, q0:].sum(axis=1).astype(np.float32)


def token_scores(
    rows: np.ndarray,
    c0: int,
    c1: int,
    weights: np.ndarray,
    *,
    method: int = 3,
    width: int = 8,
    square: bool = True,
) -> np.ndarray:
    """One score per context token (columns c0..c1) from the question rows.

    method 1: raw column sums; 2: rows weighted by the question weights; 3: rows box-filtered
    over `width` tokens (phrase smoothing), then weighted. `square` applies the weights twice,
    as the reference code does."""
    context = rows[:, c0:c1].astype(np.float32)
    if method == 1:
        return context.sum(axis=0)
    if method == 3:
        context = box_filter(context, width)
    w = weights.astype(np.float32)[:, None]
    return ((w * w if square else w) * context).sum(axis=0)

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

import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from longweave.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from longweave.llm import Message
    from longweave.local_models.backend import LocalLLM

__all__ = [
    "AttentionScorer",
    "LocalAttentionScorer",
    "box_filter",
    "check_layer",
    "eager_question_attention",
    "question_attention",
    "question_weights",
    "token_scores",
]


@runtime_checkable
class AttentionScorer(Protocol):
    """A model whose attention can be read: renders and tokenizes prompts, returns question rows.

    A scorer may also have `layers`, its number of decoder layers (None when unknown yet):
    InfiniRetri then checks its `layer` setting against it before any work.
    """

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
        self._layers: int | None = None

    @property
    def layers(self) -> int | None:
        """The number of decoder layers, from the loaded weights or else the model's config,
        never loading weights for it; None when only loading them would tell."""
        if self._layers is None:
            self._layers = (len(_decoder_layers(self.llm.hf_model())) if self.llm.loaded
                            else _config_layers(self.llm))
        return self._layers

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


def _config_layers(llm: LocalLLM) -> int | None:
    """num_hidden_layers of the model's config (of its text model, for a multimodal one); for a
    GGUF file, the block count in its header."""
    source = llm.source
    if source.gguf_file is not None:
        try:
            return _gguf_layers(Path(source.path) / source.gguf_file)
        except (OSError, ValueError, KeyError, struct.error):  # loading the file will say why
            return None
    from longweave.local_models.loader import loading, require_transformers

    require_transformers()
    from transformers import AutoConfig

    with loading(source, "configuration"):
        config = AutoConfig.from_pretrained(source.path)
    layers = getattr(config.get_text_config(), "num_hidden_layers", None)
    return layers if isinstance(layers, int) and layers > 0 else None


_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
"""Bytes of each GGUF scalar value type (8 is a string, 9 an array)."""
_GGUF_INTS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}


def _gguf_layers(path: Path) -> int | None:
    """`<architecture>.block_count` from a GGUF header, read up to that key only: the GGUF
    readers of `gguf` and transformers parse every tensor's entry first, which takes seconds."""
    with path.open("rb") as f:

        def read(fmt: str) -> Any:
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def text() -> str:
            size = read("<Q")
            if size > 1 << 16:  # no key or architecture name is that long: a damaged file
                raise ValueError(f"a {size}-byte GGUF string")
            return f.read(size).decode("utf-8", "replace")

        def skip(kind: int) -> None:
            if kind == 8:
                f.seek(read("<Q"), 1)
            elif kind == 9:
                item, count = read("<I"), read("<Q")
                if item in _GGUF_SIZES:
                    f.seek(_GGUF_SIZES[item] * count, 1)
                else:
                    for _ in range(count):
                        skip(item)
            else:
                f.seek(_GGUF_SIZES[kind], 1)

        if f.read(4) != b"GGUF" or read("<I") < 2:
            return None
        _tensors, entries = read("<Q"), read("<Q")
        architecture: str | None = None
        counts: dict[str, int] = {}
        for _ in range(entries):
            key, kind = text(), read("<I")
            if key == "general.architecture" and kind == 8:
                architecture = text()
            elif key.endswith(".block_count") and kind in _GGUF_INTS:
                counts[key] = read(_GGUF_INTS[kind])
            else:
                skip(kind)
            if architecture is not None and f"{architecture}.block_count" in counts:
                return int(counts[f"{architecture}.block_count"])
    return None


def check_layer(layer: int, layers: int, model: str) -> None:
    """Raise ConfigError unless `layer` indexes one of `layers` decoder layers (negative
    values count from the last, as in Python)."""
    if not -layers <= layer < layers:
        raise ConfigError(
            f"layer={layer} is out of range: {model} has {layers} decoder layers",
            hint=f"set layer to a value in {-layers}..{layers - 1} (-1, the last, is the default)",
        )


class _Captured(Exception):
    """Raised by the hook to stop the forward once the chosen layer's inputs are captured."""


def _decoder_layers(model: Any) -> Any:
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no decoder layers at .model.layers")
    return layers


def _model_name(model: Any) -> str:
    return str(getattr(model.config, "name_or_path", "") or type(model).__name__)


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
    check_layer(layer, len(layers), _model_name(model))
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

    check_layer(layer, len(_decoder_layers(model)), _model_name(model))
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

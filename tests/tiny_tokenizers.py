"""Small tokenizers the tokenizer and chunker tests share."""

from __future__ import annotations

from typing import Any

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It was not amused!",
    "Paragraphs are separated by blank lines.\n\nSentences end with stops.",
    "Numbers like 12345 and 3.14 appear, as do contractions: it's, we'll, they've.",
] * 20


def tiny_bpe(pre_tokenizer: str) -> Any:
    """A small BPE trained in milliseconds: byte-level (like GPT-2) or metaspace (like Llama 2)."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, trainers

    if pre_tokenizer == "bytelevel":
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet)
    else:
        backend = Backend(models.BPE(unk_token="[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]"])
    trainer.show_progress = False
    backend.train_from_iterator(CORPUS, trainer)
    return backend

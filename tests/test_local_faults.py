"""The local backend under bad input and misuse, on tiny random models built in milliseconds.

Every broken model folder, device, dtype or argument must end in a ConfigError that names the
model and the fix (the CLI prints it as one line, exit code 1), never in a library's own
exception (shown as "unexpected error"); a batch must survive one bad request, and a
cancelled call must stop generating.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, Field

from longweave.errors import ConfigError, LongweaveWarning, ParseError
from longweave.events import token_sink
from longweave.llm import resolve_model, user
from longweave.local_models import LocalLLM
from longweave.local_models.backend import _parse
from longweave.local_models.batcher import Batcher, GenRequest, GenResult
from tests.tiny_tokenizers import tiny_bpe

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class Place(BaseModel):
    city: str = Field(max_length=20)


class Essay(BaseModel):
    text: str = Field(max_length=2000)


def tokenizer() -> Any:
    from tokenizers import decoders
    from transformers import PreTrainedTokenizerFast

    backend = tiny_bpe("bytelevel")
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                   bos_token="<|im_start|>", pad_token="<|im_end|>")
    fast.chat_template = TEMPLATE
    return fast


def build(folder: Path) -> Path:
    """A 2-layer Llama with hidden size 32 and its tokenizer: loads and generates in ms."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, vocab_size=len(tok),
                         max_position_embeddings=512, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def broken(tiny: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model to break."""
    return Path(shutil.copytree(tiny, tmp_path / "model"))


@pytest.fixture(scope="session")
def llm(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLLM]:
    model = LocalLLM.from_pretrained(str(tiny), cache_dir=tmp_path_factory.mktemp("cache"),
                                     device="cpu")
    yield model
    model.close()


def load_error(spec: str, **options: Any) -> ConfigError:
    """The ConfigError a model string raises by its first call, wherever it is raised."""
    with pytest.raises(ConfigError) as caught:
        llm = resolve_model(spec, **options)
        asyncio.run(llm.complete([user("hi")], max_tokens=2))
    return caught.value


# -- model folders and files ----------------------------------------------------------------


def test_a_path_that_does_not_exist_is_named_not_taken_for_a_hub_id(tmp_path: Path) -> None:
    error = load_error(f"hf:{tmp_path}/nowhere")
    assert "model folder" in error.message and "not found" in error.message
    assert "Repo id" not in str(error)
    (tmp_path / "model.safetensors").touch()
    with pytest.raises(ConfigError, match="is a file, not a model folder"):
        resolve_model(f"hf:{tmp_path / 'model.safetensors'}")


def test_an_empty_folder_has_no_config(tmp_path: Path) -> None:
    assert "has no config.json" in load_error(f"hf:{tmp_path}").message
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert "hf:" in load_error(f"hf:{tmp_path}").hint  # points at the GGUF file in it


def test_a_damaged_config_is_named(broken: Path) -> None:
    (broken / "config.json").write_text('{"model_type": ')
    error = load_error(f"hf:{broken}")
    assert "configuration" in error.message and "config.json" in error.hint


def test_weights_without_tokenizer_files(broken: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (broken / name).unlink(missing_ok=True)
    error = load_error(f"hf:{broken}")
    assert "has no tokenizer files" in error.message and "repository" in error.hint


def test_a_folder_without_weights(broken: Path) -> None:
    (broken / "model.safetensors").unlink()
    assert "cannot load the weights" in load_error(f"hf:{broken}").message


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors_are_a_config_error(broken: Path, damage: str) -> None:
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"junk" * 100)
    error = load_error(f"hf:{broken}")
    assert f"cannot load the weights of 'hf:{broken}'" in error.message
    assert "SafetensorError" in error.message and "download them again" in error.hint


def test_an_architecture_transformers_does_not_know(broken: Path) -> None:
    config = json.loads((broken / "config.json").read_text())
    config.update(model_type="frobnicator", architectures=["FrobnicatorForCausalLM"])
    (broken / "config.json").write_text(json.dumps(config))
    error = load_error(f"hf:{broken}")
    assert "frobnicator" in error.message and "architecture" in error.hint


def test_weights_that_do_not_fit_in_memory(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def too_big(*args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", too_big)
    error = load_error(f"hf:{tiny}")
    assert "OutOfMemoryError: CUDA out of memory" in error.message
    assert "does not fit in memory" in error.hint


def test_a_hub_id_offline_and_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    error = load_error("hf:no-such-owner/no-such-model")
    assert "no-such-owner/no-such-model" in error.message and "offline" in error.hint
    assert "\n" not in error.message  # transformers' advice on connecting is left out


def test_gguf_files_that_are_not_gguf_or_are_truncated(tmp_path: Path) -> None:
    (tmp_path / "text.gguf").write_text("not a model\n" * 10)
    with pytest.raises(ConfigError, match="is not a GGUF file"):
        resolve_model(f"hf:{tmp_path / 'text.gguf'}")  # at once: 4 bytes read
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(20))
    error = load_error(f"hf:{tmp_path / 'cut.gguf'}", cache_dir=tmp_path / "cache")
    assert "cut.gguf" in error.message and "GGUF" in error.hint


def test_a_model_that_cannot_load_is_a_servers_fault_not_a_requests(broken: Path) -> None:
    """Over `longweave serve` the weights load at the first request: their failure is a 500
    for the operator (as the library's own error was), not a 400 blaming the request."""
    from longweave.local_models.server import _error_response

    (broken / "model.safetensors").write_bytes(b"junk" * 100)
    response = _error_response(load_error(f"hf:{broken}"))
    body = json.loads(response.body)
    assert response.status_code == 500 and body["error"]["code"] == "ModelLoadError"
    assert _error_response(ConfigError("max_tokens must be positive")).status_code == 400


# -- devices, dtypes and windows ------------------------------------------------------------


def test_cuda_without_cuda_is_refused_before_loading(tiny: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:3"):
        assert "sees no CUDA GPU" in load_error(f"hf:{tiny}", device=device).message
    assert "unknown device" in load_error(f"hf:{tiny}", device="gpu").message


def test_a_gpu_number_past_the_last_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from longweave.local_models.loader import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="sees 1 CUDA GPU") as caught:
        resolve_device("cuda:3")
    assert caught.value.hint == "use cuda:0 to cuda:0"
    assert resolve_device("cuda:0") == "cuda:0"


@pytest.mark.parametrize("dtype", ["float8", "nonsense", "float8_e4m3fn", "int8", "Tensor"])
def test_dtypes_that_cannot_run_a_model(tiny: Path, dtype: str) -> None:
    error = load_error(f"hf:{tiny}", dtype=dtype)
    assert repr(dtype) in error.message and "float32" in error.hint


def test_context_window_must_be_positive_and_is_warned_past_the_models_positions(
        tiny: Path) -> None:
    for window in (0, -5, 2.5):
        with pytest.raises(ConfigError, match="context_window must be a positive"):
            resolve_model(f"hf:{tiny}", context_window=window)
    with pytest.warns(LongweaveWarning, match="larger than the 512 positions"):
        assert resolve_model(f"hf:{tiny}", context_window=100_000).context_window == 100_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_model(f"hf:{tiny}", context_window=256).context_window == 256


def test_a_tokenizer_without_a_chat_template_is_warned(broken: Path) -> None:
    config = json.loads((broken / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (broken / "tokenizer_config.json").write_text(json.dumps(config))
    (broken / "chat_template.jinja").unlink(missing_ok=True)
    model = resolve_model(f"hf:{broken}")
    with pytest.warns(LongweaveWarning, match="has no chat template"):
        assert model.count_prompt_tokens([user("hi")]) > 0


# -- arguments of a call --------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": -3}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"), ({"max_tokens": 4, "temperature": -1.0}, "temperature"),
    ({"max_tokens": 4, "temperature": math.nan}, "temperature"),
    ({"max_tokens": 4, "temperature": math.inf}, "temperature"),
    ({"max_tokens": 4, "temperature": 2.5}, "temperature must be a number from 0 .* to 2"),
])
async def test_bad_arguments_are_refused_before_the_model_runs(
        tiny: Path, kwargs: dict[str, Any], named: str) -> None:
    model = LocalLLM.from_pretrained(str(tiny))
    with pytest.raises(ConfigError, match=named):
        await model.complete([user("hi")], **kwargs)
    with pytest.raises(ConfigError, match="no messages"):
        await model.complete([], max_tokens=4)
    assert not model.loaded


async def test_one_bad_call_among_many_fails_alone(llm: LocalLLM) -> None:
    calls = [llm.complete([user(f"question {i}")], max_tokens=4) for i in range(5)]
    calls.insert(2, llm.complete([user("bad")], max_tokens=0))
    replies = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(replies[2], ConfigError)
    good = [r for i, r in enumerate(replies) if i != 2]
    assert all(r.usage.completion_tokens == 4 for r in good)
    assert [r.meta["batch_size"] for r in good] == [5] * 5


async def test_a_failure_inside_generation_is_a_model_error_with_a_hint(
        tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt past the model's positions fails inside generate() (an IndexError, which the
    CLI printed as "unexpected error"); out of memory gets its own hint."""
    import longweave.local_models.generation as generation
    from longweave.errors import ModelError

    model = LocalLLM.from_pretrained(str(tiny), cache_dir=tmp_path)
    for raised, hint in ((IndexError("index out of range in self"), "positions"),
                         (RuntimeError("CUDA out of memory. Tried to allocate"), "out of memory")):
        def fail(*_: Any, error: Exception = raised, **__: Any) -> Any:
            raise error

        monkeypatch.setattr(generation, "run_batch", fail)
        with pytest.raises(ModelError, match="generation failed") as failed:
            await model.complete([user("hello")], max_tokens=4)
        assert hint in failed.value.hint
    model.close()


async def test_a_prompt_longer_than_the_window(llm: LocalLLM) -> None:
    from longweave.errors import BudgetExceeded

    with pytest.raises(BudgetExceeded, match="512-token window"):
        await llm.complete([user("words " * 600)], max_tokens=4)
    with pytest.raises(BudgetExceeded):
        await llm.complete([user("hi")], max_tokens=10**9)


# -- replies ----------------------------------------------------------------------------------


def eos_only(folder: Path) -> Path:
    """The tiny model rewired so that every step's most likely token is the end of turn."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    eos = AutoTokenizer.from_pretrained(folder).eos_token_id
    with torch.no_grad():
        for layer in model.model.layers:  # the residual stream is the embedding alone
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 100.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[eos, 0] = 1.0
    model.save_pretrained(folder)
    return folder


async def test_a_model_that_only_ends_its_turn(broken: Path) -> None:
    model = LocalLLM.from_pretrained(str(eos_only(broken)), device="cpu")
    reply = await model.complete([user("hi")], max_tokens=8)
    assert (reply.text, reply.finish_reason, reply.usage.completion_tokens) == ("", "stop", 1)
    # Under a schema the end of turn is masked until the JSON closes.
    placed = await model.complete([user("hi")], max_tokens=40, schema=Place)
    assert placed.finish_reason == "stop" and isinstance(placed.parsed, Place)
    model.close()


async def test_json_cut_by_max_tokens_says_so_and_counts_the_call(llm: LocalLLM) -> None:
    with pytest.raises(ParseError, match="cut at max_tokens") as caught:
        await llm.complete([user("write")], max_tokens=20, schema=Essay)
    assert caught.value.raw.startswith('{"text":"')
    usage = caught.value.usage  # exact, instruction included: strategies count it
    assert usage.completion_tokens == 20 and usage.prompt_tokens > llm.count_prompt_tokens(
        [user("write")])


def test_an_unconstrained_reply_cut_after_its_json_is_repaired() -> None:
    """A schema the grammar compiler rejects is decoded freely: the model may write the JSON
    and go on until max_tokens, as a remote model's reply would be repaired."""
    assert _parse('{"city":"Lima"} and more', Place, "length", constrained=False) == Place(
        city="Lima")
    with pytest.raises(ParseError, match="cut at max_tokens"):
        _parse('{"city":"Li', Place, "length", constrained=True)
    with pytest.raises(ParseError, match="could not be compiled"):
        _parse("no json here", Place, "length", constrained=False)


# -- the batcher: failures and cancellation ------------------------------------------------


async def test_a_request_that_sinks_its_batch_fails_alone() -> None:
    """One request (here [99]) that makes a whole batch fail gets the error; the others,
    rerun alone, complete; text streamed before the failure is voided."""
    sizes: list[int] = []
    shown: list[tuple[str, bool]] = []

    def runner(batch: list[GenRequest]) -> list[GenResult]:
        sizes.append(len(batch))
        for request in batch:
            if request.on_text is not None:
                request.on_text("partial")
        if any(r.prompt_ids == [99] for r in batch):
            raise IndexError("index out of range in self")
        return [GenResult(r.prompt_ids[::-1], "stop", len(batch), 0.0) for r in batch]

    batcher = Batcher(runner, max_batch_size=8, wait_s=0.0)
    requests = [GenRequest([i, i + 1], 4) for i in range(4)]
    requests.insert(1, GenRequest([99], 4))
    requests[0].on_text = lambda delta, restart=False: shown.append((delta, restart))
    results = await asyncio.gather(*(batcher.submit_async(r) for r in requests),
                                   return_exceptions=True)
    assert isinstance(results[1], IndexError)
    assert [r.token_ids for i, r in enumerate(results) if i != 1] == [
        [i + 1, i] for i in range(4)]
    assert sizes == [5, 1, 1, 1, 1, 1]
    assert shown == [("partial", False), ("", True), ("partial", False)]
    batcher.close()


async def test_a_rerun_voids_only_text_that_was_shown() -> None:
    from longweave.local_models.backend import _stream_to

    seen: list[tuple[str, bool]] = []
    send = _stream_to(lambda delta, restart=False: seen.append((delta, restart)))
    send("", restart=True)  # a rerun before any text: nothing to take back
    send("Li")
    send("", restart=True)
    send("Lima")
    await asyncio.sleep(0)  # the deltas travel through the event loop
    assert seen == [("Li", False), ("", True), ("Lima", False)]
    # A sink that takes the text alone, as the other backends may call one, still gets it.
    texts: list[str] = []
    plain = _stream_to(texts.append)  # type: ignore[arg-type]
    plain("Lima")
    await asyncio.sleep(0)
    assert texts == ["Lima"]


async def test_configuration_errors_are_not_rerun_per_request() -> None:
    calls: list[int] = []

    def runner(batch: list[GenRequest]) -> list[GenResult]:
        calls.append(len(batch))
        raise ConfigError("device 'cuda': torch sees no CUDA GPU here")

    batcher = Batcher(runner, max_batch_size=8, wait_s=0.0)
    results = await asyncio.gather(*(batcher.submit_async(GenRequest([i], 4)) for i in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, ConfigError) for r in results) and calls == [3]
    batcher.close()


async def test_cancelling_a_call_stops_its_generation(llm: LocalLLM,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker is held at the call's first token until the cancel has landed, then must stop
    that row at once instead of generating on to the end of the reply."""
    import threading

    produced: list[int] = []
    landed = threading.Event()
    run = llm._batcher.runner

    def held(send: Any) -> Any:
        def streamed(delta: str, **restart: bool) -> None:
            send(delta, **restart)
            landed.wait(10)

        return streamed

    def recorded(requests: list[GenRequest]) -> list[GenResult]:
        for request in requests:
            request.on_text = held(request.on_text) if request.on_text else None
        results = run(requests)
        produced.extend(len(r.token_ids) for r in results)
        return results

    monkeypatch.setattr(llm._batcher, "runner", recorded)
    started = asyncio.Event()

    async def long_call() -> None:
        token_sink.set(lambda delta, restart=False: started.set())
        await llm.complete([user("go on")], max_tokens=480)

    task = asyncio.create_task(long_call())
    await asyncio.wait_for(started.wait(), 30)  # the generation is running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    landed.set()
    after = await llm.complete([user("next")], max_tokens=3)  # the worker is free again
    full = await llm.complete([user("go on")], max_tokens=480)
    assert after.usage.completion_tokens == 3
    assert full.usage.completion_tokens > 100  # what the cancelled call would have made
    assert produced[0] < 10  # one token past its first text, not the whole reply


async def test_close_waits_for_the_queued_requests_before_the_weights_go() -> None:
    """LocalLLM.close drops the weights after Batcher.close: returning at once, it let the
    queued batches reload them."""
    import time

    def runner(batch: list[GenRequest]) -> list[GenResult]:
        time.sleep(0.2)
        return [GenResult([1], "stop", len(batch), 0.2) for _ in batch]

    batcher = Batcher(runner, max_batch_size=1, wait_s=0.0)
    waiters = [asyncio.ensure_future(batcher.submit_async(GenRequest([i], 4))) for i in range(3)]
    await asyncio.sleep(0.05)  # submitted and queued
    await asyncio.to_thread(batcher.close)
    assert all(w.done() for w in waiters)


def test_a_package_the_tokenizer_needs_is_named_as_missing(tmp_path: Path) -> None:
    from longweave.local_models.loader import ModelLoadError, ModelSource, loading

    source = ModelSource(name="hf:x", path=str(tmp_path))
    with pytest.raises(ModelLoadError, match="SentencePiece") as failed:
        with loading(source, "tokenizer"):
            raise ImportError("LlamaTokenizer requires the SentencePiece library",
                              name="sentencepiece")
    assert failed.value.hint == "install it: pip install sentencepiece"
    assert failed.value.fatal


def test_a_submit_while_close_waits_neither_overlaps_nor_hangs() -> None:
    """The submit starts a new worker while the stopped one still runs: they shared one queue
    (the new one could take the stop, and close waited forever) and ran generate() at once."""
    import threading
    import time

    running, peak, lock = [0], [0], threading.Lock()

    def runner(batch: list[GenRequest]) -> list[GenResult]:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return [GenResult([1], "stop", len(batch), 0.2) for _ in batch]

    batcher = Batcher(runner, max_batch_size=1, wait_s=0.0)
    first = batcher.submit(GenRequest([1], 4))
    time.sleep(0.05)  # the first batch is running
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)  # close is waiting for the worker
    second = batcher.submit(GenRequest([2], 4))
    closer.join(timeout=5)
    assert not closer.is_alive()
    assert first.result(timeout=5).token_ids == [1] and second.result(timeout=5).token_ids == [1]
    assert peak[0] == 1
    batcher.close()

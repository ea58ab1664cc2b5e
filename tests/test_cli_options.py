"""Options a command takes together: refused when they cannot work together (or would be
silently ignored), one bound for settings two commands share, and where each output goes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import longweave.retrieval.index as index_module
from longweave.batch import BatchItem, ResultLog
from longweave.cli import app
from longweave.errors import ConfigError
from longweave.testing import HashEmbedder, ScriptedModel
from tests.cli_run import run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "harbour_report.md"
ANSWER = "The spare lamp is under the stairs."


def _err(capsys: Any) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture
def model(scripted_cli: Callable[..., ScriptedModel]) -> ScriptedModel:
    """A scripted model that answers every reader call, laid out on a wide console."""
    scripted = scripted_cli(context_window=4096, columns=200)
    scripted.on("reader", reply=ANSWER)
    return scripted


@pytest.fixture
def embedder(monkeypatch: pytest.MonkeyPatch) -> list[HashEmbedder]:
    """Every embedder spec resolves to one fake, listed here each time one is resolved."""
    made: list[HashEmbedder] = []
    fake = HashEmbedder()

    def resolve(spec: str, cache_dir: object = None) -> HashEmbedder:
        made.append(fake)
        return fake

    monkeypatch.setattr(index_module, "resolve_embedder", resolve)
    return made


def _questions(tmp_path: Path, *questions: str) -> Path:
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"question": q, "document": str(EXAMPLE)}) + "\n"
                            for q in questions), encoding="utf-8")
    return path


def _batch(tmp_path: Path, *args: str) -> Any:
    """`longweave batch` of the example's folder (one question on the example), truncate."""
    questions = _questions(tmp_path, "Where is the spare lamp?")
    return CliRunner().invoke(app, ["batch", str(EXAMPLE.parent), "--questions", str(questions),
                                    "--out", str(tmp_path / "out.jsonl"), "-s", "truncate",
                                    *args])


# -- 1. the document size limit is range-checked like every other setting ----------------------


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_a_document_size_limit_below_one_byte_is_an_invalid_setting(
    model: ScriptedModel, monkeypatch: pytest.MonkeyPatch, capsys: Any, limit: str
) -> None:
    monkeypatch.setenv("LONGWEAVE_MAX_DOCUMENT_BYTES", limit)
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Where?", "--estimate")
    err = _err(capsys)
    assert code == 1 and model.requests == []
    assert err.startswith("error: invalid setting: LONGWEAVE_MAX_DOCUMENT_BYTES: ")
    assert f"greater than or equal to 1 (got '{limit}')" in err
    assert "fix or unset that environment variable" in err and "-byte limit" not in err


def test_a_document_size_limit_of_one_byte_is_a_limit(
    model: ScriptedModel, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("LONGWEAVE_MAX_DOCUMENT_BYTES", "1")
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Where?", "--estimate")
    assert code == 1 and model.requests == []
    assert f"the file is {EXAMPLE.stat().st_size:,} bytes, over the 1-byte limit" in _err(capsys)


# -- 2. what goes to stdout and what to stderr, as docs/scaling.md says -------------------------


def test_ask_estimate_alone_prints_the_table_on_stdout(
    model: ScriptedModel, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Where?", "-s", "truncate", "--estimate")
    captured = capsys.readouterr()
    assert code in (None, 0) and model.requests == []
    assert "truncate on scripted" in captured.out and "prompt tokens" in captured.out
    assert "prompt tokens" not in captured.err


def test_ask_estimate_and_run_prints_the_answer_on_stdout_and_the_comparison_on_stderr(
    model: ScriptedModel, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Where?", "-s", "truncate", "--estimate",
                   "--run")
    captured = capsys.readouterr()
    assert code in (None, 0) and len(model.requests) == 1
    assert ANSWER in captured.out
    assert "est/actual" not in captured.out and "truncate on scripted" not in captured.out
    assert "est/actual" in captured.err and "truncate on scripted" in captured.err
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Where?", "-s", "truncate", "--estimate",
                   "--run", "--json", "--no-cache")
    captured = capsys.readouterr()
    assert json.loads(captured.out)["text"] == ANSWER  # the Answer alone, not the estimate
    assert "est/actual" in captured.err


def test_batch_estimate_alone_prints_the_table_on_stdout(model: ScriptedModel,
                                                         tmp_path: Path) -> None:
    result = _batch(tmp_path, "--estimate")
    assert result.exit_code == 0, result.output
    assert model.requests == []
    assert "truncate on scripted" in result.stdout and "prompt tokens" in result.stdout
    assert "prompt tokens" not in result.stderr
    assert "1 questions to answer" in " ".join(result.stderr.split())


def test_batch_estimate_and_run_prints_the_summary_on_stdout_and_the_comparison_on_stderr(
    model: ScriptedModel, tmp_path: Path
) -> None:
    result = _batch(tmp_path, "--estimate", "--run")
    assert result.exit_code == 0, result.output
    assert len(model.requests) == 1 and len(ResultLog(tmp_path / "out.jsonl").answered()) == 1
    assert "answered" in result.stdout
    assert "est/actual" not in result.stdout and "truncate on scripted" not in result.stdout
    assert "est/actual" in result.stderr and "truncate on scripted" in result.stderr


# -- 4. prices and a throughput go with --estimate ----------------------------------------------


@pytest.mark.parametrize("flags", [
    ["--price-in", "1", "--price-out", "1"],
    ["--price-in", "1"],
    ["--throughput", "500"],
])
def test_ask_refuses_estimate_flags_without_estimate(
    model: ScriptedModel, monkeypatch: pytest.MonkeyPatch, capsys: Any, flags: list[str]
) -> None:
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Where?", "-s", "truncate", *flags)
    err = _err(capsys)
    assert code == 1 and model.requests == []
    if len(flags) == 4:
        said = "--price-in and --price-out go with --estimate: without it nothing would use them"
    else:
        said = f"{flags[0]} goes with --estimate: without it nothing would use it"
    assert err.startswith(f"error: {said}")
    assert "add --estimate to see what the run will cost first (with --run to answer as well)" \
        in err


def test_batch_refuses_prices_without_estimate(model: ScriptedModel, tmp_path: Path) -> None:
    result = _batch(tmp_path, "--price-in", "1", "--price-out", "1")
    assert isinstance(result.exception, ConfigError) and model.requests == []
    assert result.exception.message == ("--price-in and --price-out go with --estimate: "
                                        "without it nothing would use them")
    assert not (tmp_path / "out.jsonl").exists()


def test_prices_with_estimate_still_need_both(
    model: ScriptedModel, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Where?", "--estimate", "--price-out", "1")
    assert code == 1 and "needs both --price-in and --price-out" in _err(capsys)


# -- 5. --ray-address goes with --executor ray --------------------------------------------------


@pytest.mark.parametrize("executor", [[], ["--executor", "local"]])
def test_batch_refuses_a_ray_address_without_the_ray_executor(
    model: ScriptedModel, tmp_path: Path, executor: list[str]
) -> None:
    result = _batch(tmp_path, *executor, "--ray-address", "auto")
    assert isinstance(result.exception, ConfigError) and model.requests == []
    assert result.exception.message == ("--ray-address needs --executor ray (not local): the "
                                        "work would run here, not on that cluster")
    assert result.exception.hint == "add --executor ray, or drop --ray-address to run here"
    assert not (tmp_path / "out.jsonl").exists()


def test_eval_refuses_a_ray_address_without_the_ray_executor(
    model: ScriptedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    generic = Path(__file__).parent / "fixtures" / "eval" / "generic" / "questions.jsonl"
    code = run_cli(monkeypatch, "eval", str(generic), "-s", "truncate", "--ray-address", "auto",
                   "-o", str(tmp_path / "eval"))
    assert code == 1 and model.requests == []
    assert "error: --ray-address needs --executor ray (not local)" in _err(capsys)
    assert not (tmp_path / "eval").exists()


# -- 6. and 7. index takes the chunking rag takes, and says so in its own flags -----------------


def test_index_and_rag_share_the_smallest_chunk(
    model: ScriptedModel, embedder: list[HashEmbedder], monkeypatch: pytest.MonkeyPatch,
    capsys: Any
) -> None:
    from longweave.agents.rag import MIN_CHUNK_TOKENS

    below = str(MIN_CHUNK_TOKENS - 1)
    assert run_cli(monkeypatch, "index", str(EXAMPLE), "--chunk-tokens", below) == 2
    err = _err(capsys)
    assert f"Invalid value for '--chunk-tokens': {below} is below {MIN_CHUNK_TOKENS}" in err
    assert f"pass {MIN_CHUNK_TOKENS} or more" in err and embedder == []
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Where?", "-s", "rag", "--estimate",
                   "--set", f"chunk_tokens={below}")
    assert code == 1 and "invalid options for rag: chunk_tokens: " in _err(capsys)
    # At the bound, the index built is the one `ask -s rag` then reuses.
    at = str(MIN_CHUNK_TOKENS)
    assert run_cli(monkeypatch, "index", str(EXAMPLE), "--chunk-tokens", at,
                   "--overlap", "4") == 0
    assert "built" in capsys.readouterr().out
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Where is the lamp?", "-s", "rag", "--json",
                   "--set", f"chunk_tokens={at}", "--set", "overlap=4")
    answer = json.loads(capsys.readouterr().out)
    assert code in (None, 0) and answer["text"] == ANSWER
    index_step = next(s for s in answer["steps"] if s["role"] == "index")
    assert index_step["detail"]["reused"] is True and index_step["detail"]["embedded"] == 0


@pytest.mark.parametrize(("chunk_tokens", "overlap"), [("16", "20"), ("256", "256")])
def test_index_refuses_an_overlap_as_large_as_a_chunk_naming_its_flags(
    model: ScriptedModel, embedder: list[HashEmbedder], monkeypatch: pytest.MonkeyPatch,
    capsys: Any, chunk_tokens: str, overlap: str
) -> None:
    code = run_cli(monkeypatch, "index", str(EXAMPLE), "--chunk-tokens", chunk_tokens,
                   "--overlap", overlap)
    err = _err(capsys)
    assert code == 2 and embedder == []
    assert (f"Invalid value for '--overlap': {overlap} is not smaller than --chunk-tokens "
            f"({chunk_tokens})") in err
    assert "lower --overlap or raise --chunk-tokens" in err and "max_tokens" not in err


def test_rag_refuses_an_overlap_as_large_as_a_chunk_with_its_other_options(
    model: ScriptedModel, embedder: list[HashEmbedder], monkeypatch: pytest.MonkeyPatch,
    capsys: Any
) -> None:
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Where?", "-s", "rag", "--set",
                   "overlap=256", "--estimate")
    err = _err(capsys)
    assert code == 1 and model.requests == [] and embedder == []
    assert err.startswith("error: invalid options for rag: overlap: must be smaller than "
                          "chunk_tokens (256), got 256")
    assert "`longweave strategies rag` lists its settings" in err and "max_tokens" not in err
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Where?", "-s", "rag", "--set",
                   "chunk_tokens=32", "--set", "overlap=40", "--set", "k=None", "--estimate")
    assert code == 1 and "overlap: must be smaller than chunk_tokens (32), got 40" in _err(capsys)


def test_rag_takes_an_overlap_just_under_its_chunk() -> None:
    from longweave.agents.base import get_strategy

    rag = get_strategy("rag", chunk_tokens=32, overlap=31)
    assert (rag.chunk_tokens, rag.overlap) == (32, 31)


# -- 8. resume keys the options as the strategy validated them ----------------------------------


def test_a_rerun_with_equivalent_options_resumes_the_answers(model: ScriptedModel,
                                                             tmp_path: Path) -> None:
    first = _batch(tmp_path, "--set", "max_new=48", "--set", "temperature=0")
    assert first.exit_code == 0, first.output
    assert len(model.requests) == 1
    again = _batch(tmp_path, "--set", "max_new=48.0", "--set", "temperature=0.0")
    assert again.exit_code == 0, again.output
    assert len(model.requests) == 1  # nothing asked again
    other = _batch(tmp_path, "--set", "max_new=49", "--set", "temperature=0")
    assert other.exit_code == 0, other.output
    assert len(model.requests) == 2  # other settings: asked
    records = ResultLog(tmp_path / "out.jsonl").records()
    assert len(records) == 2 and records[0].key != records[1].key


def test_an_output_written_before_with_validated_values_keeps_its_keys(
    model: ScriptedModel, tmp_path: Path
) -> None:
    """The key format is unchanged: options given as their validated values (max_new=48, not
    48.0) key as they did, so outputs written before resume."""
    result = _batch(tmp_path, "--set", "max_new=48.0")
    assert result.exit_code == 0, result.output
    (record,) = ResultLog(tmp_path / "out.jsonl").records()
    item = BatchItem(document=str(EXAMPLE), question="Where is the spare lamp?")
    assert record.key == item.key("truncate", record.model, {"max_new": 48})


def test_a_whole_number_given_for_a_float_keeps_the_key_it_had(
    model: ScriptedModel, tmp_path: Path
) -> None:
    """temperature=0 is validated to 0.0; its key is still the one written before options were
    validated (the raw 0), so an output of an earlier version resumes."""
    result = _batch(tmp_path, "--set", "temperature=0")
    assert result.exit_code == 0, result.output
    (record,) = ResultLog(tmp_path / "out.jsonl").records()
    item = BatchItem(document=str(EXAMPLE), question="Where is the spare lamp?")
    assert record.key == item.key("truncate", record.model, {"temperature": 0})

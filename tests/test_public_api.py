"""The public surface: an explicit sorted __all__, and `import longweave` stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import longweave


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert longweave.__all__ == sorted(longweave.__all__)
    for name in longweave.__all__:
        assert getattr(longweave, name) is not None


def test_import_does_not_load_heavy_dependencies() -> None:
    code = (
        "import sys, longweave; "
        "heavy = [m for m in ('torch', 'transformers', 'faiss', 'openai', 'llguidance', "
        "'langgraph', 'sentence_transformers') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_strategies_lists_chain_of_agents() -> None:
    assert "chain-of-agents" in longweave.strategies()


def test_unknown_strategy_lists_the_choices() -> None:
    from longweave.agents.base import get_strategy
    from longweave.errors import ConfigError

    try:
        get_strategy("chain-of-agent")
    except ConfigError as exc:
        assert "did you mean chain-of-agents?" in exc.hint and "long-agent" in exc.hint
    else:
        raise AssertionError("an unknown strategy must raise ConfigError")


def test_bad_strategy_option_is_a_config_error() -> None:
    from longweave.agents.base import get_strategy
    from longweave.errors import ConfigError

    try:
        get_strategy("chain-of-agents", max_nwe=5)
    except ConfigError as exc:
        assert "max_nwe" in str(exc)
    else:
        raise AssertionError("a misspelt option must raise ConfigError")


def test_unknown_model_string_names_the_forms() -> None:
    from longweave.errors import ConfigError
    from longweave.llm import resolve_model

    try:
        resolve_model("gpt4")
    except ConfigError as exc:
        assert "openai:<model>" in str(exc)
    else:
        raise AssertionError("an unknown model string must raise ConfigError")


def test_load_source_reads_conversation_files_as_turns() -> None:
    from pathlib import Path

    path = Path(__file__).parent / "fixtures" / "conversations" / "turns.jsonl"
    document = longweave.load_source(str(path))
    assert document.meta["kind"] == "conversation"
    first = document.meta["turns"][0]
    assert document.text[first["start"] : first["end"]].startswith("[2024-03-01] Ana:")


def test_load_source_refuses_a_mistyped_path_instead_of_answering_it_as_text(tmp_path) -> None:
    import pytest

    from longweave.errors import DocumentError

    for typo in (str(tmp_path / "typo_report"), "docs/typo_report", "notes\\typo",
                 "https://example.com/report"):
        with pytest.raises(DocumentError, match="no such file") as info:
            longweave.load_source(typo)
        assert info.value.path == typo
    report = tmp_path / "report"  # an existing file without a suffix is read, as before
    report.write_text("The tide turns at noon.", encoding="utf-8")
    assert longweave.load_source(str(report)).text == "The tide turns at noon."
    # Literal text stays text: words with spaces, a word alone, several lines.
    for text in ("The key is under the mat.", "and/or is it 1/2?", "Lima", "a/b\nc/d"):
        document = longweave.load_source(text)
        assert document.text == text and document.source is None


def test_dir_lists_the_lazy_names_too() -> None:
    assert {"Document", "Session", "ask", "aask"} <= set(dir(longweave))


# -- bad arguments: a clear error before any model call ----------------------------------------

def _model():
    from longweave.testing import ScriptedModel

    model = ScriptedModel()
    model.on("reader", reply="It says so.")
    return model


def test_an_empty_source_is_refused_and_never_read_as_the_current_folder(tmp_path, monkeypatch):
    import pytest

    from longweave.errors import DocumentError

    (tmp_path / "secrets.md").write_text("The vault code is 4711.\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    model = _model()
    for source in ("", "   ", "\n"):
        with pytest.raises(DocumentError, match="the source is empty"):
            longweave.ask(source, "What does it say?", strategy="truncate", model=model,
                          cache=False)
    assert model.requests == []


def test_arguments_of_the_wrong_type_are_config_errors_before_any_call() -> None:
    import pytest

    from longweave.errors import ConfigError

    model, text = _model(), "The key is under the mat."
    cases = [
        (dict(source=text, question=None), "the question must be text"),
        (dict(source=text, question=42), "the question must be text"),
        (dict(source=text, question=b"Where?"), "the question must be text"),
        (dict(source=None, question="Where?"), "a source is a path"),
        (dict(source=text, question="Where?", model=42), "a model is a model string"),
        (dict(source=text, question="Where?", strategy=123), "a strategy is a name"),
        (dict(source=text, question="Where?", strategy=""), "unknown strategy ''"),
        (dict(source=text, question="Where?", model=""), "unknown model ''"),
    ]
    for kwargs, problem in cases:
        kwargs = {"strategy": "truncate", "model": model, **kwargs}
        with pytest.raises(ConfigError) as info:
            longweave.ask(kwargs.pop("source"), kwargs.pop("question"), cache=False, **kwargs)
        assert problem in info.value.message, kwargs
    assert model.requests == []


def test_a_document_of_only_whitespace_is_refused_alike_by_every_strategy() -> None:
    import pytest

    from longweave.documents import Document
    from longweave.errors import DocumentError

    model = _model()
    blank = Document.from_text("  \n\t\n ")
    from longweave.estimate import estimate

    for name in longweave.strategies():
        with pytest.raises(DocumentError, match="has no text to read"):
            longweave.ask(blank, "Where?", strategy=name, model=model, cache=False)
        with pytest.raises(DocumentError, match="has no text to read"):  # nor priced
            estimate(blank, name, model, "Where?")
    assert model.requests == []


def test_one_include_pattern_as_a_string_is_one_pattern(tmp_path) -> None:
    (tmp_path / "a.md").write_text("Markdown notes.\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("Plain notes.\n", encoding="utf-8")
    corpus = longweave.load_source(tmp_path, include="*.txt")
    assert "Plain notes." in corpus.text and "Markdown" not in corpus.text
    corpus = longweave.load_source(tmp_path, exclude="*.txt")
    assert "Markdown notes." in corpus.text and "Plain" not in corpus.text


def test_bad_environment_values_name_their_variable(monkeypatch, capsys) -> None:
    import pytest

    from longweave.config import Settings
    from longweave.errors import ConfigError
    from tests.cli_run import run_cli

    for var, value in [("LONGWEAVE_STRATEGY", "nope"), ("LONGWEAVE_MODEL", "gpt-4")]:
        monkeypatch.setenv(var, value)
        with pytest.raises(ConfigError) as info:
            Settings()
        assert info.value.message.startswith(f"invalid setting: {var}: unknown ")
        assert "Value error" not in info.value.message
        capsys.readouterr()
        assert run_cli(monkeypatch, "ask", "The key is under the mat.", "Where?",
                       "--estimate") == 1
        assert f"error: invalid setting: {var}: unknown" in capsys.readouterr().err
        monkeypatch.delenv(var)


def test_the_synchronous_calls_work_inside_a_running_event_loop(tmp_path, monkeypatch) -> None:
    """A Jupyter cell runs inside an event loop: `longweave.ask(...)` there used to fail with
    "asyncio.run() cannot be called from a running event loop"."""
    import asyncio

    from longweave.batch import BatchItem, BatchJob, ResultLog, run_batch
    from longweave.compare import compare
    from longweave.estimate import estimate
    from longweave.testing import ScriptedModel

    monkeypatch.setenv("LONGWEAVE_CACHE_DIR", str(tmp_path / "cache"))
    model = ScriptedModel()
    model.on("reader", reply="Under the mat.")
    text = "The key is under the mat."
    doc = tmp_path / "d.txt"
    doc.write_text(text, encoding="utf-8")

    async def cell() -> list[object]:
        answer = longweave.ask(text, "Where is the key?", strategy="truncate", model=model,
                               cache=False)
        session = longweave.Session.open(text, strategy="truncate", model=model, cache=False)
        turn = session.ask("Where is the key?")
        rows = compare(text, "Where is the key?", ["truncate"], model=model, cache=False)
        planned = estimate(text, "truncate", model, "Where is the key?")
        summary = run_batch([BatchItem(document=doc, question="Where is the key?")],
                            tmp_path / "out.jsonl", BatchJob("truncate", model, cache=False))
        return [answer.text, turn.text, rows[0].text, planned.calls, summary.answered]

    assert asyncio.run(cell()) == ["Under the mat."] * 3 + [1, 1]
    assert ResultLog(tmp_path / "out.jsonl").records()[0].answer == "Under the mat."


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGINT to send to oneself on Windows")
def test_an_interrupt_inside_a_running_loop_cancels_the_work(ctrl_c: None) -> None:
    """Ctrl-C (a notebook's "interrupt kernel") while a synchronous call waits on its worker
    thread used to wait for the whole run and leave it going."""
    import asyncio
    import os
    import signal
    import threading
    import time

    from longweave.sync import run_sync

    seen: list[str] = []

    async def work() -> None:
        try:
            await asyncio.sleep(30)
            seen.append("finished")
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def cell() -> None:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        run_sync(work())

    # As a notebook kernel runs its loop: no asyncio.run, whose own SIGINT handler would only
    # cancel the cell once it returned.
    loop = asyncio.new_event_loop()
    started = time.perf_counter()
    try:
        loop.run_until_complete(cell())
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interrupt was lost")
    finally:
        loop.close()
    assert seen == ["cancelled"] and time.perf_counter() - started < 10

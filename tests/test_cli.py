"""The command line wiring: ask (text and JSON), errors, the completion cache, strategies."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import longweave.llm
from longweave.testing import ScriptedModel
from tests.cli_run import run_cli

EXAMPLE = Path(__file__).parents[1] / "examples" / "harbour_report.md"


@pytest.fixture
def model(scripted_cli: Callable[..., ScriptedModel]) -> ScriptedModel:
    """A scripted model behind every model string, and a private cache directory."""
    scripted = scripted_cli(context_window=700)
    scripted.on("worker", reply=lambda r: "Mara Quill kept the light [c1].")
    scripted.on("manager", reply="Mara Quill [c1].")
    return scripted


def test_ask_prints_answer_citation_and_usage(model, monkeypatch, capsys) -> None:
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Who was the first keeper?",
                   "--set", "max_new=64")
    out, err = capsys.readouterr()
    assert code == 0
    assert "Mara Quill." in out
    assert "chars 0-" in out  # the cited span of chunk 1
    calls = len(model.requests)
    assert f"{calls} calls" in err


def test_ask_json_counts_one_call_per_chunk_plus_the_manager(model, monkeypatch, capsys) -> None:
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "--json", "--set", "max_new=64")
    answer = json.loads(capsys.readouterr().out)
    assert code == 0
    chunks = answer["steps"][0]["detail"]["chunks"]
    assert chunks >= 2
    assert answer["usage"]["calls"] == chunks + 1 == len(model.requests)
    assert answer["citations"][0]["start"] == 0


def test_second_identical_ask_is_served_from_the_cache(model, monkeypatch, capsys) -> None:
    args = ("ask", str(EXAMPLE), "Who?", "--json", "--set", "max_new=64")
    run_cli(monkeypatch, *args)
    first = json.loads(capsys.readouterr().out)
    sent = len(model.requests)
    run_cli(monkeypatch, *args)
    second = json.loads(capsys.readouterr().out)
    assert len(model.requests) == sent, "the model must not be called again"
    assert second["usage"]["cache_hits"] == second["usage"]["calls"] == first["usage"]["calls"]
    assert second["text"] == first["text"]


def test_the_environment_chooses_the_model_and_strategy(model, monkeypatch, capsys) -> None:
    asked: list[str] = []
    monkeypatch.setattr(longweave.llm, "resolve_model",
                        lambda spec, **_: asked.append(spec) or model)
    model.on("reader", reply="Mara Quill.")
    monkeypatch.setenv("LONGWEAVE_MODEL", "openai:from-env")
    monkeypatch.setenv("LONGWEAVE_STRATEGY", "truncate")
    assert run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "--json", "--no-cache") == 0
    assert json.loads(capsys.readouterr().out)["strategy"] == "truncate"
    assert asked == ["openai:from-env"]
    # an option on the command line still wins
    assert run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "--json", "--no-cache",
                   "-m", "local", "-s", "chain-of-agents", "--set", "max_new=64") == 0
    assert json.loads(capsys.readouterr().out)["strategy"] == "chain-of-agents"
    assert asked[-1] == "local"


def test_ask_shows_the_answer_as_it_streams(model, monkeypatch, capsys) -> None:
    from longweave.cli.progress import LiveAnswer
    from longweave.events import token_sink

    class Streaming(ScriptedModel):
        async def complete(self, messages, **kwargs):  # type: ignore[no-untyped-def]
            sink = token_sink.get()
            for word in ["Mara ", "Quill."] if sink is not None else []:
                sink(word)
            return await super().complete(messages, **kwargs)

    streaming = Streaming(context_window=700)
    streaming.on("reader", reply="Mara Quill.")
    monkeypatch.setattr(longweave.llm, "resolve_model", lambda spec, **_: streaming)
    shown: list[str] = []
    monkeypatch.setattr(LiveAnswer, "_tail", lambda self: shown.append(self.streamed) or "")
    assert run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "-s", "truncate", "--no-cache") == 0
    assert shown == ["Mara ", "Mara Quill."]  # the live view, before the final panel
    assert "Mara Quill." in capsys.readouterr().out


def test_no_cache_calls_the_model_again(model, monkeypatch, capsys) -> None:
    args = ("ask", str(EXAMPLE), "Who?", "--json", "--set", "max_new=64")
    run_cli(monkeypatch, *args)
    sent = len(model.requests)
    run_cli(monkeypatch, *args, "--no-cache")
    assert len(model.requests) == 2 * sent


def test_missing_file_is_a_clear_error(model, monkeypatch, capsys, tmp_path) -> None:
    missing = tmp_path / "nope.txt"
    code = run_cli(monkeypatch, "ask", str(missing), "Who?")
    err = capsys.readouterr().err
    assert code == 1
    assert "error:" in err and "nope.txt" in err
    assert model.requests == []


def test_bad_option_is_a_clear_error(model, monkeypatch, capsys) -> None:
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "--set", "max_nwe=3",
                   "--set", "window=lots")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and model.requests == []
    assert "error: invalid options for chain-of-agents: window: Input should be" in err
    assert "(got 'lots'); max_nwe: no such setting" in err and "did you mean max_new?" in err
    assert "pydantic.dev" not in err and "type=" not in err


def test_none_unsets_an_option_as_the_docs_write_it() -> None:
    from longweave.cli.options import parse_options

    assert parse_options(["k=None", "k2=null", "paths=bidir", "working_memory=none"]) == {
        "k": None, "k2": None, "paths": "bidir", "working_memory": "none"}


def test_a_bad_environment_setting_is_a_clear_error(model, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LONGWEAVE_PREFIX_CACHE_SIZE", "-1")
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "unexpected" not in err
    assert "error: invalid setting: LONGWEAVE_PREFIX_CACHE_SIZE: Input should be greater" in err


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("CONCURRENCY", "0", "greater than or equal to 1"),
    ("MAX_RETRIES", "-1", "greater than or equal to 0"),
    ("REQUEST_TIMEOUT", "0", "greater than 0"),
])
def test_numeric_settings_out_of_range_are_refused_before_any_call(
    model, monkeypatch, capsys, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(f"LONGWEAVE_{name}", value)
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "--no-cache")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and model.requests == [] and "unexpected" not in err
    assert f"error: invalid setting: LONGWEAVE_{name}: Input should be {problem}" in err


def test_strategies_lists_the_builtins(monkeypatch, capsys) -> None:
    code = run_cli(monkeypatch, "strategies")
    out = capsys.readouterr().out
    assert code == 0
    assert "chain-of-agents" in out and "max_new" in out


def test_version_and_python_dash_m(monkeypatch, capsys) -> None:
    import subprocess
    import sys

    assert run_cli(monkeypatch, "--version") == 0
    assert capsys.readouterr().out.strip() == f"longweave {longweave.__version__}"
    shown = subprocess.run([sys.executable, "-m", "longweave", "--version"], capture_output=True,
                           text=True, check=True, timeout=120)
    assert shown.stdout.strip() == f"longweave {longweave.__version__}"


def test_unexpected_errors_are_one_line_with_a_debug_hint(model, monkeypatch, capsys) -> None:
    def broken(request):
        raise RuntimeError("backend exploded")

    model.rules.clear()
    model.on("worker", reply=broken)
    monkeypatch.delenv("LONGWEAVE_DEBUG", raising=False)
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "--no-cache", "--set", "max_new=64")
    err = capsys.readouterr().err
    assert code == 1
    assert "RuntimeError: backend exploded" in err and "LONGWEAVE_DEBUG" in err
    assert "Traceback" not in err


def test_longweave_warnings_print_as_one_line(monkeypatch, capsys) -> None:
    import warnings

    from longweave.cli import _show_warnings
    from longweave.errors import LongweaveWarning

    passed: list[str] = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *_: passed.append(str(message)))
    _show_warnings()
    _show_warnings()  # main() run again in-process: installed once, not wrapped twice
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("cap too small for [type=missing] [/x]", LongweaveWarning, stacklevel=1)
        warnings.warn("from elsewhere", RuntimeWarning, stacklevel=1)
    err = capsys.readouterr().err
    # one line, brackets shown as written (not read as console markup, which would drop or fail)
    assert err == "warning: cap too small for [type=missing] [/x]\n"
    assert passed == ["from elsewhere"]  # other warnings keep Python's own display


def test_answers_and_errors_with_brackets_print_as_written(model, monkeypatch, capsys) -> None:
    model.rules = [r for r in model.rules if r.role != "manager"]
    model.on("manager", reply="Mara [bold]Quill[/] kept it [/x] [c1].")
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "--set", "max_new=64")
    out, err = capsys.readouterr()
    assert code == 0
    assert "Mara [bold]Quill[/] kept it [/x]" in out
    missing = EXAMPLE.parent / "[nope].txt"
    assert run_cli(monkeypatch, "ask", str(missing), "Who?") == 1
    assert "[nope].txt" in capsys.readouterr().err


def test_touching_citations_print_as_one_span_and_the_rest_are_counted() -> None:
    """Forty consecutive sentences (an InfiniRetri answer) read as a few passages, capped."""
    import io

    from rich.console import Console

    from longweave.answer import Answer, Citation
    from longweave.cli.render import joined, print_answer

    text = "".join(f"Sentence {i} is here. " for i in range(60))
    starts = [text.index(f"Sentence {i} ") for i in range(60)] + [len(text)]

    def cite(i: int, j: int | None = None) -> Citation:
        start, end = starts[i], starts[j if j is not None else i + 1]
        return Citation(doc_id="d", start=start, end=end, text=text[start:end], kind="sentence",
                        chunk_index=i // 30)

    # 0-4 touch; 10-11 touch; 12 inside 10-13; 20 stands alone; 29-30 cross a chunk border.
    cites = [cite(i) for i in range(5)] + [cite(10), cite(11, 14), cite(12), cite(20),
                                           cite(29), cite(30)]
    spans = joined(cites)
    assert [(c.start, c.end) for c in spans] == [
        (starts[0], starts[5]), (starts[10], starts[14]), (starts[20], starts[21]),
        (starts[29], starts[31])]
    assert all(c.text == text[c.start:c.end] for c in spans)
    assert [c.chunk_index for c in spans] == [0, 0, 0, None]

    apart = [cite(i) for i in range(0, 60, 2)]  # 30 spans that do not touch
    answer = Answer(text="Here.", strategy="infini-retri", model="m", citations=apart)
    out = io.StringIO()
    print_answer(Console(file=out, width=200), answer, shown=4, all_hint="--json prints them all")
    printed = out.getvalue()
    assert "[4]" in printed and "[5]" not in printed  # no words shared: the first four
    assert ("… 26 more spans, sharing fewer words with the answer (--json prints them all)"
            in printed)
    # The spans that share words with the answer are the ones shown, numbered as in the list.
    answer = answer.model_copy(update={"text": "Sentence 40 and sentence 8 say so."})
    out = io.StringIO()
    print_answer(Console(file=out, width=200), answer, shown=2)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in lines] == ["[5]", "[21]"]
    assert "Sentence 8 is here." in lines[0] and "Sentence 40 is here." in lines[1]


def test_progress_shows_what_a_run_prepares_until_its_first_call() -> None:
    """Chunking a large document takes seconds before any call: the view says so meanwhile."""
    import io

    from rich.console import Console

    from longweave.cli.progress import ProgressView
    from longweave.events import Event

    with ProgressView(Console(file=io.StringIO())) as view:
        view(Event("start", "mem-walker", data={"document": "big[/b].txt"}))
        assert [t.description for t in view.progress.tasks] == [
            "mem-walker preparing big\\[/b].txt"]  # a name is text, not markup
        assert view.progress.tasks[0].total is None  # open-ended: the bar pulses
        view(Event("call", "mem-walker", "summarizer", 0, 8))
        view(Event("progress", "mem-walker", "summarizer", 0, 8))
        assert [(t.description, t.completed, t.total) for t in view.progress.tasks] == [
            ("summarizer", 1, 8)]

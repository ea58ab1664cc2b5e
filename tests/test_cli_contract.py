"""What scripts rely on from the command line: stdout holds only the result, messages are whole
lines on stderr, tables survive narrow terminals, mistakes are refused before any model call,
and --help fits 80 columns."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import longweave.llm
from longweave.cli import app
from longweave.testing import ScriptedModel
from tests.cli_run import run_cli

REAL_RESOLVE = longweave.llm.resolve_model

EXAMPLE = Path(__file__).parents[1] / "examples" / "harbour_report.md"
GENERIC = Path(__file__).parent / "fixtures" / "eval" / "generic" / "questions.jsonl"
ANSWER = "Mara Quill kept the light first."


@pytest.fixture
def model(scripted_cli: Callable[..., ScriptedModel]) -> ScriptedModel:
    """A scripted model behind every model string, a private cache, and no COLUMNS: output is
    laid out as for a pipe (80 columns) unless a test says otherwise."""
    scripted = scripted_cli(context_window=700, columns="unset")
    scripted.on("reader", reply=ANSWER)
    return scripted


def _ask(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    return run_cli(monkeypatch, "ask", *args, "-s", "truncate", "--set", "max_new=32")


# -- stdout and stderr off a terminal -----------------------------------------------------------


def test_piped_progress_leaves_no_empty_lines(model, monkeypatch, capsys) -> None:
    # A transient bar off a terminal drew nothing but the empty line rich ends it with.
    assert _ask(monkeypatch, str(EXAMPLE), "Who?", "--no-cache") == 0
    out, err = capsys.readouterr()
    assert ANSWER in out
    assert len(err.splitlines()) == 1 and "1 call" in err  # the usage line alone
    assert run_cli(monkeypatch, "compare", str(EXAMPLE), "Who?", "-S", "truncate") == 0
    assert capsys.readouterr().err == ""


def test_json_stays_valid_beside_a_warning_and_from_the_cache(model, monkeypatch, capsys,
                                                              tmp_path) -> None:
    docs = tmp_path / "a folder with a rather long name, so the warning passes 80 columns"
    docs.mkdir()
    (docs / "keeper.txt").write_text("Mara Quill kept the light first.", encoding="utf-8")
    (docs / "broken.pdf").write_bytes(b"\x00\x01\xff\xfe not a pdf")
    assert _ask(monkeypatch, str(docs), "Who?", "--json") == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["text"] == ANSWER
    warning, usage = err.splitlines()  # each message one whole line, nothing else
    assert warning.startswith("warning: skipping ") and warning.endswith(")")
    assert "broken.pdf" in warning and "1 call" in usage
    assert _ask(monkeypatch, str(docs), "Who?", "--json") == 0
    out, err = capsys.readouterr()
    cached = json.loads(out)
    assert cached["text"] == ANSWER and cached["usage"]["cache_hits"] == 1
    assert all(line.strip() for line in err.splitlines())


def test_an_error_and_its_hint_are_one_line_each_off_a_terminal(model, monkeypatch,
                                                                 capsys) -> None:
    assert run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "-s", "truncat") == 1
    error, hint = capsys.readouterr().err.splitlines()  # not wrapped at rich's 80 columns
    assert error == "error: unknown strategy 'truncat'"
    assert hint.startswith("did you mean truncate? choose one of: chain-of-agents")
    assert hint.endswith("truncate")


@pytest.mark.parametrize("command", ["ask", "batch"])
def test_an_estimate_table_goes_to_stdout_and_its_notes_to_stderr(model, monkeypatch, capsys,
                                                                  tmp_path, command) -> None:
    """The notes are commentary (the scripted model's reply lengths are generic guesses): in
    the output, `--estimate > plan.txt` would mix them into the table."""
    if command == "ask":
        args = ["ask", str(EXAMPLE), "Who?"]
    else:
        questions = tmp_path / "q.jsonl"
        questions.write_text('{"question": "Who?"}\n', encoding="utf-8")
        args = ["batch", str(EXAMPLE.parent), "-q", str(questions), "-o", str(tmp_path / "a.jsonl"),
                "--include", EXAMPLE.name]
    assert run_cli(monkeypatch, *args, "--estimate", "-s", "truncate",
                   "--set", "max_new=32") == 0
    out, err = capsys.readouterr()
    assert "truncate on scripted" in out and "prompt tokens" in out
    assert "·" not in out and "generic guesses" not in out
    notes = [line for line in err.splitlines() if line.startswith("· ")]
    assert len(notes) == 1 and "generic guesses" in notes[0]  # whole, not wrapped at 80
    assert "--pilot N` measures them" in notes[0] and model.requests == []


# -- narrow terminals ---------------------------------------------------------------------------


@pytest.mark.parametrize("columns", ["40", "60"])
def test_compare_keeps_the_answer_on_a_narrow_terminal(model, monkeypatch, capsys,
                                                       columns: str) -> None:
    # The numbers never wrap, so beside them the answer column shrank to nothing.
    monkeypatch.setenv("COLUMNS", columns)
    assert run_cli(monkeypatch, "compare", str(EXAMPLE), "Who?", "-S", "truncate,chain-of-agents",
                   "--set", "max_new=32") == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= int(columns)
    shown = " ".join(out.replace("│", " ").split())
    assert "Mara Quill kept the light first." in shown and "calls 1" in shown


def test_compare_keeps_its_wide_table_where_it_fits(model, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    assert run_cli(monkeypatch, "compare", str(EXAMPLE), "Who?", "-S", "truncate") == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "truncate" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]][1:3] == [ANSWER, "1"]


def test_strategy_names_and_estimates_are_not_cut_at_40_columns(model, monkeypatch,
                                                                capsys) -> None:
    from longweave.agents.base import available

    monkeypatch.setenv("COLUMNS", "40")
    assert run_cli(monkeypatch, "strategies") == 0
    out = capsys.readouterr().out
    assert all(f" {name} " in out for name in available())  # "chain-of-…" before
    assert _ask(monkeypatch, str(EXAMPLE), "Who?", "--estimate", "--price-in", "3",
                "--price-out", "15") == 0
    out = capsys.readouterr().out
    assert "cost" in out and "…" not in out  # numbers fold; none is cut short


# -- mistakes refused before any model call -----------------------------------------------------


def test_compare_refuses_a_misspelt_option_of_one_strategy_up_front(model, monkeypatch,
                                                                    capsys) -> None:
    code = run_cli(monkeypatch, "compare", str(EXAMPLE), "Who?", "-S", "chain-of-agents,truncate",
                   "--set", "truncate.maxnew=32")
    err = capsys.readouterr().err
    assert code == 1 and model.requests == []  # chain-of-agents did not run first
    assert "error: invalid options for truncate: maxnew: no such setting" in err
    assert "did you mean max_new?" in err


@pytest.mark.parametrize("command", ["ask", "compare"])
def test_a_trace_under_a_file_is_refused_by_name(model, monkeypatch, capsys,
                                                 command: str) -> None:
    trace = EXAMPLE / "trace.jsonl"
    code = run_cli(monkeypatch, command, str(EXAMPLE), "Who?", "--trace", str(trace),
                   *(["-s", "truncate"] if command == "ask" else ["-S", "truncate"]))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and model.requests == []
    assert f"cannot be created: {EXAMPLE} is a file, not a folder" in err  # not "File exists"


@pytest.mark.parametrize(("name", "said"), [
    ("a file/graph.html", "is a file, not a folder"),
    ("folder.html", "is a directory"),
    ("graph.gif", "unknown output format"),
    ("graph.png", "matplotlib is not installed"),
])
def test_show_refuses_an_output_it_could_not_write_before_building(model, monkeypatch, capsys,
                                                                   tmp_path, name, said) -> None:
    """Found only once the page was drawn, a bad --out cost a --build every model call."""
    model.context_window = 4096  # room for GraphReader's build, which would call the model
    (tmp_path / "a file").write_text("x", encoding="utf-8")
    (tmp_path / "folder.html").mkdir()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    code = run_cli(monkeypatch, "show", str(EXAMPLE), "--graph", "--build",
                   "-o", str(tmp_path / name))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and model.requests == [] and said in err, err
    assert "unexpected" not in err


@pytest.mark.parametrize("inside", [False, True])
def test_eval_refuses_an_output_folder_that_is_or_is_under_a_file(model, monkeypatch, capsys,
                                                                  inside: bool) -> None:
    out = EXAMPLE / "results" if inside else EXAMPLE
    code = run_cli(monkeypatch, "eval", str(GENERIC), "-s", "truncate", "-o", str(out))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and model.requests == []
    assert err.startswith(f"error: {out}: ") and "is a file, not a folder" in err
    assert "unexpected" not in err  # a NotADirectoryError before


@pytest.mark.parametrize(("args", "flag"), [
    (["index", str(EXAMPLE), "--chunk-tokens", "0"], "--chunk-tokens"),
    (["index", str(EXAMPLE), "--overlap", "-1"], "--overlap"),
    (["eval", str(GENERIC), "--limit", "0"], "--limit"),
    (["eval", str(GENERIC), "--concurrency", "0"], "--concurrency"),
])
def test_counts_out_of_range_are_usage_errors_that_name_the_flag(model, monkeypatch, capsys,
                                                                 args: list[str],
                                                                 flag: str) -> None:
    # Before, exit 1 from deep inside, naming `max_tokens` or no flag at all.
    assert run_cli(monkeypatch, *args) == 2
    assert f"Invalid value for '{flag}'" in capsys.readouterr().err and model.requests == []


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """`serve` without a model or a server: the addresses it would have served on."""
    import longweave.local_models.server as server_module

    served: list[tuple[str, int]] = []
    monkeypatch.setattr(longweave.llm, "resolve_model", lambda spec, **_: spec)

    def serve(llm: object, host: str, port: int, sockets: list[socket.socket]) -> None:
        for sock in sockets:  # the sockets the command bound, closed as the server would
            sock.close()
        served.append((host, port))

    monkeypatch.setattr(server_module, "serve", serve)
    return served


def test_serve_refuses_a_port_in_use_before_loading_the_model(server, monkeypatch,
                                                               capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = run_cli(monkeypatch, "serve", "--port", str(port))
    err = capsys.readouterr().err
    assert code == 1 and server == []
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port} (")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert run_cli(monkeypatch, "serve", "--port", str(port)) == 0
    assert server == [("127.0.0.1", port)]


def no_openai_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"LONGWEAVE_{name}", raising=False)


def test_an_estimate_for_an_api_model_needs_no_key(monkeypatch, capsys, tmp_path) -> None:
    # Planning counts tokens and calls nothing: the key is asked for by the first call.
    no_openai_key(monkeypatch)
    monkeypatch.setenv("LONGWEAVE_CACHE_DIR", str(tmp_path / "cache"))
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "-s", "truncate",
                   "-m", "openai:gpt-4o-mini", "--estimate")
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "truncate" in out and "calls" in out and "API key" not in err
    code = run_cli(monkeypatch, "ask", str(EXAMPLE), "Who?", "-s", "truncate",
                   "-m", "openai:gpt-4o-mini", "--no-cache")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "error: no API key for model 'gpt-4o-mini'" in err
    assert "set OPENAI_API_KEY or use --model local" in err


def test_serve_refuses_an_api_model_without_a_key_at_start(server, monkeypatch, capsys) -> None:
    no_openai_key(monkeypatch)
    monkeypatch.setattr(longweave.llm, "resolve_model", REAL_RESOLVE)  # the fixture's stub aside
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    code = run_cli(monkeypatch, "serve", "-m", "openai:gpt-4o-mini", "--port", str(port))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and server == []
    assert "error: no API key for model 'gpt-4o-mini'" in err


def test_serve_refuses_a_port_out_of_range_as_a_usage_error(server, monkeypatch,
                                                            capsys) -> None:
    assert run_cli(monkeypatch, "serve", "--port", "70000") == 2  # a traceback before
    assert "Invalid value for '--port'" in capsys.readouterr().err and server == []


# -- help ---------------------------------------------------------------------------------------


def _help(*command: str) -> list[str]:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_every_help_fits_80_columns() -> None:
    for name in ["", *typer.main.get_command(app).commands]:  # type: ignore[attr-defined]
        lines = _help(*([name] if name else []))
        assert max(map(len, lines)) <= 80, name


@pytest.mark.parametrize("command", ["batch", "compare"])
def test_help_paragraphs_are_not_cut_where_the_source_wraps(command: str) -> None:
    lines = _help(command)
    prose = lines[lines.index(next(x for x in lines if "Usage:" in x)) + 2:
                  lines.index(next(x for x in lines if x.startswith("╭")))]
    paragraphs = "\n".join(line.strip() for line in prose).strip().split("\n\n")
    assert len(paragraphs) >= 2
    for paragraph in paragraphs:  # every line but a paragraph's last runs to the margin
        assert all(len(line) > 60 for line in paragraph.splitlines()[:-1]), paragraph

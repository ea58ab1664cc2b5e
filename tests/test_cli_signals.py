"""A command stopped from outside ends quietly, with the status a shell gives a command killed by
the signal: Ctrl-C says so in one line on stderr (and what was kept) and exits 130; a reader of
stdout that leaves (`longweave ... | head -1`) ends it with 141 and not a word."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from longweave.testing import Request, ScriptedModel
from tests.cli_run import run_cli

EXAMPLE = Path(__file__).parents[1] / "examples" / "harbour_report.md"
GENERIC = Path(__file__).parent / "fixtures" / "eval" / "generic" / "questions.jsonl"
ANSWER = "Mara Quill kept the light first."


@pytest.fixture
def model(scripted_cli: Callable[..., ScriptedModel]) -> ScriptedModel:
    """A scripted model behind every model string, a private cache, messages unwrapped."""
    return scripted_cli(context_window=700, columns=400)


def ctrl_c_here(request: Request) -> str:
    signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during the call
    return ANSWER


# -- Ctrl-C -------------------------------------------------------------------------------------


def test_ctrl_c_in_ask_says_so_and_where_the_trace_is(model, monkeypatch, capsys, tmp_path,
                                                      ctrl_c) -> None:
    model.on("reader", reply=ctrl_c_here)
    trace = tmp_path / "trace.jsonl"
    args = ("ask", str(EXAMPLE), "Who?", "-s", "truncate", "--set", "max_new=32", "--no-cache")
    assert run_cli(monkeypatch, *args, "--trace", str(trace)) == 130
    out, err = capsys.readouterr()
    assert out == "" and err == f"interrupted: the trace so far is in {trace}\n"
    assert run_cli(monkeypatch, *args) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_ctrl_c_in_compare_names_the_strategies_that_finished(model, monkeypatch, capsys,
                                                              tmp_path, ctrl_c) -> None:
    model.context_window = 4096  # room for chain-of-agents' worker prompt
    model.on("reader", reply=ANSWER)  # truncate answers; chain-of-agents' worker is stopped
    model.on("worker", reply=ctrl_c_here)
    trace = tmp_path / "trace.jsonl"
    code = run_cli(monkeypatch, "compare", str(EXAMPLE), "Who?", "-S", "truncate,chain-of-agents",
                   "--no-cache", "--trace", str(trace))
    out, err = capsys.readouterr()
    assert code == 130 and out == ""
    assert err == f"interrupted: truncate had finished; the trace so far is in {trace}\n"


def test_ctrl_c_in_any_other_command_is_one_line(model, monkeypatch, capsys) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("longweave.cli.strategies._overview", interrupted)
    assert run_cli(monkeypatch, "strategies") == 130
    assert capsys.readouterr() == ("", "interrupted\n")


def test_ctrl_c_in_eval_says_where_the_answers_are_kept(model, monkeypatch, capsys, tmp_path,
                                                        ctrl_c) -> None:
    """Batch's own test checks its line end to end; eval words it through the same helper."""
    model.on("reader", reply=ctrl_c_here)
    out = tmp_path / "out"
    code = run_cli(monkeypatch, "eval", str(GENERIC), "-s", "truncate", "-o", str(out),
                   "--no-cache", "--set", "max_new=32")
    stdout, err = capsys.readouterr()
    assert code == 130 and stdout == ""
    assert err.endswith(f"interrupted: answers so far are kept in {out / 'answers'}; rerun the "
                        "same command to resume\n"), err


# -- a reader that leaves -----------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="no SIGPIPE or EPIPE on Windows pipes")
@pytest.mark.parametrize("args", [["--version"], ["ask", "--help"]],
                         ids=["click-echo", "rich-console"])
def test_a_reader_that_leaves_ends_the_command_quietly(args: list[str]) -> None:
    """`--version` writes with click, help with rich: each met the closed pipe its own way
    (click's handler and rich's both exited 1)."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte: every write meets EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "longweave", *args], stdout=write,
                              stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, b"")

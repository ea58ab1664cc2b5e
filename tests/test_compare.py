"""`longweave compare` and `acompare`: one question, several strategies, one model and cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from longweave.cli import app
from longweave.compare import acompare, resolve_strategies, split_options
from longweave.errors import ConfigError
from longweave.testing import ScriptedModel
from tests.cli_run import run_cli

EXAMPLE = Path(__file__).parents[1] / "examples" / "harbour_report.md"


@pytest.fixture
def model(scripted_cli: Callable[..., ScriptedModel]) -> ScriptedModel:
    """Scripted replies for truncate (reader) and Chain-of-Agents (worker, manager)."""
    scripted = scripted_cli(context_window=700, columns=200)
    scripted.on("reader", reply="Mara Quill kept the light first.")
    scripted.on("worker", reply="Mara Quill was the first keeper [c1].")
    scripted.on("manager", reply="Mara Quill [c1].")
    return scripted


async def test_each_strategy_gets_a_row_and_a_failure_does_not_stop_the_others(model) -> None:
    seen: list[str] = []
    rows = await acompare(
        EXAMPLE, "Who was the first keeper?", "truncate,no-such-strategy,chain-of-agents",
        options={"max_new": 48}, on_row=lambda r: seen.append(r.strategy),
    )
    assert [r.strategy for r in rows] == seen == ["truncate", "no-such-strategy",
                                                   "chain-of-agents"]
    truncate, missing, coa = rows
    assert truncate.text == "Mara Quill kept the light first." and truncate.usage.calls == 1
    assert truncate.citations and truncate.options == {"max_new": 48}
    assert missing.text is None and missing.error_type == "ConfigError"
    assert "unknown strategy" in (missing.error or "")
    assert coa.text == "Mara Quill." and coa.citations[0].start == 0
    assert coa.usage.calls == len(model.calls("worker")) + 1 >= 3  # several chunks, one manager
    # Every request went to the one model, each strategy with its own options applied.
    assert {r.max_tokens for r in model.calls("reader")} == {48}
    assert all(r.max_tokens == 48 for r in model.calls("manager"))


async def test_a_second_comparison_is_served_from_the_shared_completion_cache(model) -> None:
    first = await acompare(EXAMPLE, "Who?", ["truncate", "chain-of-agents"],
                           options={"max_new": 32})
    sent = len(model.requests)
    second = await acompare(EXAMPLE, "Who?", ["truncate", "chain-of-agents"],
                            options={"max_new": 32})
    assert len(model.requests) == sent
    assert [r.text for r in second] == [r.text for r in first]
    assert all(r.usage.cache_hits == r.usage.calls > 0 for r in second)


async def test_a_strategy_whose_model_call_fails_reports_its_error(model) -> None:
    def broken(request: object) -> str:
        raise RuntimeError("backend exploded")

    model.rules[0].reply = broken  # the reader: truncate fails, Chain-of-Agents does not
    rows = await acompare(EXAMPLE, "Who?", ["truncate", "chain-of-agents"], cache=False,
                          options={"max_new": 32})
    assert rows[0].error == "RuntimeError: backend exploded" and rows[0].seconds >= 0
    assert rows[1].ok and rows[1].text == "Mara Quill."
    # A failed row still reports the calls it paid for before failing (here the workers',
    # the manager's failing); the table names the error's type once.
    model.rules[2].reply = broken
    (failed,) = await acompare(EXAMPLE, "Who?", ["chain-of-agents"], cache=False,
                               options={"max_new": 32})
    assert failed.error and failed.usage.calls == len(model.calls("worker")) // 2 > 0
    from rich.console import Console

    from longweave.cli.compare import compare_table

    console = Console(width=200, record=True, file=__import__("io").StringIO())
    console.print(compare_table(rows))
    shown = console.export_text()
    assert "RuntimeError: backend exploded" in shown and "RuntimeError: RuntimeError" not in shown


def test_options_go_to_the_strategies_that_have_them() -> None:
    per = split_options(
        {"max_new": 64, "truncate.keep": "middle", "chain_of_agents.paths": "bidir"},
        ["truncate", "chain-of-agents", "nope"],
    )
    assert per == {
        "truncate": {"max_new": 64, "keep": "middle"},
        "chain-of-agents": {"max_new": 64, "paths": "bidir"},
        "nope": {},
    }
    # The specific setting wins whatever the order it was given in.
    for given in ({"chain_of_agents.max_new": 32, "max_new": 48},
                  {"max_new": 48, "chain_of_agents.max_new": 32}):
        per = split_options(given, ["truncate", "chain-of-agents"])
        assert per == {"truncate": {"max_new": 48}, "chain-of-agents": {"max_new": 32}}
    with pytest.raises(ConfigError, match="no strategy in this run has the option 'max_nwe'"):
        split_options({"max_nwe": 1}, ["truncate"])
    with pytest.raises(ConfigError, match="names a strategy not in this run"):
        split_options({"rag.k": 1}, ["truncate"])


def test_all_means_every_registered_strategy() -> None:
    from longweave.agents.base import available

    assert resolve_strategies("all") == list(available())
    assert resolve_strategies(" truncate, rag,truncate ") == ["truncate", "rag"]
    with pytest.raises(ConfigError):
        resolve_strategies(" , ")


def test_cli_prints_the_table(model) -> None:
    result = CliRunner().invoke(app, [
        "compare", str(EXAMPLE), "Who was the first keeper?",
        "--strategies", "truncate,chain-of-agents", "--set", "max_new=48",
    ])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for header in ("strategy", "answer", "calls", "tokens", "time", "citations"):
        assert header in out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    assert "Mara Quill kept the light first." in lines["truncate"]
    assert "Mara Quill." in lines["chain-of-agents"]


def test_cli_refuses_an_unknown_strategy_before_any_call(model, monkeypatch, capsys) -> None:
    # acompare reports an unknown name in its row (above); the command refuses it up front.
    code = run_cli(monkeypatch, "compare", str(EXAMPLE), "Who?",
                   "--strategies", "truncate,chian-of-agents,bogus")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and model.requests == []
    assert "error: unknown strategies 'chian-of-agents', 'bogus'" in err
    assert "did you mean chain-of-agents?" in err and "unexpected" not in err


def test_cli_json_and_truncated_answers(model) -> None:
    result = CliRunner().invoke(app, [
        "compare", str(EXAMPLE), "Who?", "-S", "truncate", "--set", "max_new=48", "--json",
    ])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[0]["strategy"] == "truncate" and rows[0]["usage"]["calls"] == 1
    assert rows[0]["citations"][0]["start"] == 0 and rows[0]["error"] is None

    # -s names the strategies as it does in ask, batch, chat and eval (-S stays)
    table = CliRunner().invoke(app, ["compare", str(EXAMPLE), "Who?", "-s", "truncate",
                                     "--set", "max_new=48", "--width", "12"])
    assert "Mara Quill …" in table.stdout and "first." not in table.stdout


def test_cli_exits_1_when_every_strategy_failed(model) -> None:
    model.rules.clear()  # every call is unscripted: each strategy fails in its row
    result = CliRunner().invoke(app, ["compare", str(EXAMPLE), "Who?", "-S",
                                      "truncate,chain-of-agents", "--set", "max_new=48"])
    assert result.exit_code == 1
    assert result.stdout.count("UnscriptedCall") == 2


def test_docstring_examples_run() -> None:
    import doctest

    import longweave.compare

    assert doctest.testmod(longweave.compare).failed == 0

"""`longweave strategies`, and a third-party strategy registered through the entry point group.

The plugin is the example of docs/strategies/README.md, installed for real: its module and a
dist-info holding its `longweave.strategies` entry point on a temporary path, so discovery goes
through `importlib.metadata` exactly as for an installed package.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from longweave.agents.base import available, strategy_class
from longweave.cli import app
from longweave.errors import ConfigError
from longweave.testing import ScriptedModel

GUIDE = Path(__file__).parents[1] / "docs" / "strategies" / "README.md"
MODULE = "lw_test_plugin_first_chunk"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)


def _install(tmp_path: Path, entry_points: str, module: str | None = None) -> None:
    if module is not None:
        (tmp_path / f"{MODULE}.py").write_text(module, encoding="utf-8")
    info = tmp_path / "lw_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lw-test-plugin\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[longweave.strategies]\n{entry_points}\n", encoding="utf-8"
    )


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The guide's `first-chunk` strategy installed as a plugin package."""
    site = tmp_path / "site"
    site.mkdir()
    _install(site, f"first-chunk = {MODULE}:FirstChunk", module=_python_blocks()[0])
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop(MODULE, None)


@pytest.fixture
def model(scripted_cli: Callable[..., ScriptedModel]) -> ScriptedModel:
    scripted = scripted_cli(context_window=2048)  # COLUMNS: see `wide`
    scripted.on("reader", contains=["Mara Quill", "Who was the first keeper?"],
                reply="Mara Quill.")
    return scripted


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # table cells on one line, so rows can be matched


def _rows(out: str) -> dict[str, str]:
    """Table rows by their first cell (continuation lines are joined to their row)."""
    rows: dict[str, str] = {}
    last = ""
    for line in out.splitlines():
        cells = line.split("│")
        if len(cells) < 3:
            continue
        last = cells[1].strip() or last
        rows[last] = rows.get(last, "") + line
    return rows


def test_the_overview_lists_every_strategy_with_its_description_and_defaults() -> None:
    result = CliRunner().invoke(app, ["strategies"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    for name in available():
        cls = strategy_class(name)
        assert cls.summary in rows[name]
        first = next(iter(cls.model_fields))
        assert f"{first}=" in rows[name]
    assert "max_new=1024" in rows["chain-of-agents"] and "more" in rows["chain-of-agents"]
    assert "temperature=0.0" in rows["truncate"] and "more" not in rows["truncate"]
    assert max(len(line) for line in result.stdout.splitlines()) <= 250


def test_one_strategy_shows_every_setting_with_what_it_does() -> None:
    result = CliRunner().invoke(app, ["strategies", "truncate"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert set(strategy_class("truncate").model_fields) <= set(rows)
    assert "256" in rows["max_new"] and "Generation cap of the answer" in rows["max_new"]
    assert "'head'" in rows["keep"] and "LongBench" in rows["keep"]


def test_verbose_shows_every_setting_of_every_strategy() -> None:
    result = CliRunner().invoke(app, ["strategies", "--verbose"])
    assert result.exit_code == 0, result.output
    for name in available():
        assert f"{name}:" in result.stdout
    for field in strategy_class("graph-reader").model_fields:
        assert field in result.stdout
    # Users read the settings' help without the team's design notes it cites for developers.
    assert "§" not in result.stdout and "STRATEGIES.md" not in result.stdout


def test_design_note_references_leave_clean_help() -> None:
    from longweave.cli.strategies import for_users

    assert for_users("Schema bound (ours, §8.2: 600).") == "Schema bound (ours)."
    assert for_users("Bound of one fact (§3.3).") == "Bound of one fact."
    assert for_users("Most facts (§3.3 schema, ours).") == "Most facts (ours)."
    assert for_users("Zero them (ours, §7.5.5); 0 is off.") == "Zero them (ours); 0 is off."
    assert for_users("None fills the window (the same-window baseline of STRATEGIES.md §8.10).") \
        == "None fills the window (the same-window baseline)."
    assert for_users("Rejected and logged (§5.2 rule 5), so") == "Rejected and logged, so"


def test_an_unknown_name_lists_the_choices() -> None:
    result = CliRunner().invoke(app, ["strategies", "nope"])
    assert result.exit_code == 1 and isinstance(result.exception, ConfigError)
    assert "truncate" in (result.exception.hint or "")


def test_a_plugin_is_listed_described_and_asked_through_the_cli(plugin, model) -> None:
    assert available()["first-chunk"] == f"{MODULE}:FirstChunk"
    listing = CliRunner().invoke(app, ["strategies"])
    row = _rows(listing.stdout)["first-chunk"]
    assert "example plugin: answer from the first chunk only" in row
    assert "chunk_tokens=512, max_new=128" in row and f"plugin: {MODULE}:FirstChunk" in row

    details = CliRunner().invoke(app, ["strategies", "first-chunk"])
    assert "Tokens of the one chunk read." in _rows(details.stdout)["chunk_tokens"]

    example = Path(__file__).parents[1] / "examples" / "harbour_report.md"
    result = CliRunner().invoke(app, [
        "ask", str(example), "Who was the first keeper?", "--strategy", "first-chunk",
        "--set", "max_new=24", "--set", "chunk_tokens=1500", "--json",
    ])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["strategy"] == "first-chunk" and answer["text"] == "Mara Quill."
    assert answer["usage"]["calls"] == 1 and answer["citations"][0]["start"] == 0
    assert answer["flags"] == []  # the whole report fits one 1,500-token chunk
    assert model.requests[0].max_tokens == 24

    # Its own `estimate_cost` prices it: one reader call over the very prompt that was sent.
    from longweave.estimate import estimate

    est = estimate(example, "first-chunk", model, "Who was the first keeper?", max_new=24,
                   chunk_tokens=1500)
    assert (est.calls, est.prompt_tokens) == (1, answer["usage"]["prompt_tokens"])
    assert (est.completion_tokens, est.high.completion_tokens) == (12, 24)
    assert len(model.requests) == 1  # the estimate called no model
    shown = CliRunner().invoke(app, [
        "ask", str(example), "Who was the first keeper?", "--strategy", "first-chunk",
        "--set", "max_new=24", "--set", "chunk_tokens=1500", "--estimate",
    ])
    assert shown.exit_code == 0, shown.output
    assert "first-chunk on scripted: 1 chunk" in shown.output
    rows = {line.split("│")[1].strip(): line.split("│")[2:4]
            for line in shown.output.splitlines() if line.startswith("│")}
    assert [cell.strip() for cell in rows["calls"]] == ["1", "1-1"]
    assert [cell.strip() for cell in rows["completion tokens"]] == ["12", "1-24"]

    compared = CliRunner().invoke(app, [
        "compare", str(example), "Who was the first keeper?", "-S", "first-chunk,truncate",
        "--set", "first-chunk.max_new=24", "--json",
    ])
    rows = json.loads(compared.stdout)
    assert rows[0]["text"] == "Mara Quill." and rows[0]["options"] == {"max_new": 24}
    assert rows[1]["strategy"] == "truncate" and rows[1]["text"] == "Mara Quill."


def test_a_plugin_that_fails_to_import_is_listed_with_its_error(tmp_path, monkeypatch) -> None:
    _install(tmp_path, "broken-one = lw_test_no_such_module:Strategy")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(app, ["strategies"])
    assert result.exit_code == 0, result.output
    row = _rows(result.stdout)["broken-one"]
    assert "cannot load" in row and "lw_test_no_such_module" in row
    assert "truncate" in _rows(result.stdout)  # the others are still listed
    named = CliRunner().invoke(app, ["strategies", "broken-one"])
    assert isinstance(named.exception, ConfigError)  # the CLI prints it as one error line
    assert "strategy plugin 'broken-one'" in str(named.exception)
    assert "ModuleNotFoundError" in str(named.exception)


def test_the_guides_testing_example_runs() -> None:
    namespace: dict[str, object] = {}
    exec(_python_blocks()[0], namespace)  # FirstChunk, as the guide defines it
    exec(_python_blocks()[-1], namespace)  # its own asserts are the test
    assert namespace["answer"].usage.calls == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["light", "long-agent", "rag", "truncate"])
@pytest.mark.parametrize("window", [0, -5, 255])
def test_a_window_too_small_to_hold_a_prompt_is_refused(name: str, window: int) -> None:
    """0 used to mean the model's window silently, and a negative one failed deep in a run."""
    from longweave.agents.base import get_strategy

    with pytest.raises(ConfigError, match="window: Input should be greater than or equal to 256"):
        get_strategy(name, window=window)
    assert get_strategy(name, window=None).window is None

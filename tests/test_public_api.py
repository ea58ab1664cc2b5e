"""The public surface: an explicit sorted __all__, and `import longweave` stays light."""

from __future__ import annotations

import subprocess
import sys

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
        get_strategy("chain-of-nothing")
    except ConfigError as exc:
        assert "chain-of-agents" in str(exc)
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

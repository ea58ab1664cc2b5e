"""Running the `longweave` command in-process, as the CLI tests share it."""

from __future__ import annotations

import sys

import pytest


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """`longweave ARGS...` through the real entry point; its exit code."""
    from longweave.cli import main

    monkeypatch.setattr(sys, "argv", ["longweave", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code

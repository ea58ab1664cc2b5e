"""`longweave strategies`: the registered strategies and their defaults."""

from __future__ import annotations


def strategies() -> None:
    """List every registered strategy with a one-line description and its defaults."""
    from rich.console import Console
    from rich.table import Table

    from longweave.agents.base import available, strategy_class

    table = Table("name", "description", "defaults")
    for name in available():
        cls = strategy_class(name)
        defaults = ", ".join(
            f"{key}={field.default!r}" for key, field in cls.model_fields.items()
        )
        table.add_row(name, cls.summary, defaults)
    Console().print(table)

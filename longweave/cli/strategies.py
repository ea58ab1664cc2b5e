"""`longweave strategies [NAME]`: the registered strategies and their defaults."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from typing import Annotated, Any

import typer

_SHOWN = 6
"""Settings shown per strategy in the overview; the rest are one `strategies NAME` away."""
_DESIGN_REF = re.compile(r"\s*(?:\bof\s+)?(?:STRATEGIES\.md\s+)?§\d+(?:\.\d+)*"
                         r"(?:\s+(?:rule|line|step)\s+\d+|\s+schema)?(?::\s*\d+)?")
"""A reference into the team's design notes ("§5.2 rule 4"), which the docstrings keep for
developers and users do not have: docs/strategies/ is theirs."""


def strategies(
    name: Annotated[
        str | None, typer.Argument(help="Show one strategy's settings with what each does.")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Every setting of every strategy.")
    ] = False,
) -> None:
    """List every registered strategy (built-in, then plugins) with its description and defaults."""
    from rich.console import Console

    from longweave.agents.base import BUILTINS, available, strategy_class

    console = Console()
    names = available()
    if name is not None:
        strategy_class(name)  # an unknown name raises ConfigError listing the choices
        console.print(_details(name, names[name], name in BUILTINS))
        return
    if verbose:
        for n, target in names.items():
            console.print(_details(n, target, n in BUILTINS))
        return
    console.print(_overview(names, BUILTINS))
    console.print(
        "[dim]`longweave strategies NAME` shows every setting with what it does; "
        "change one with --set key=value[/]"
    )


def _overview(names: dict[str, str], builtins: dict[str, str]) -> Any:
    from rich.markup import escape
    from rich.table import Column, Table

    # Names and settings are what a user types next: on a narrow terminal they fold onto more
    # lines rather than end in "…" (rich's default), which would cut them off.
    table = Table(Column("name", no_wrap=True, overflow="fold"), Column("description"),
                  Column("defaults", overflow="fold"))
    for n, target in names.items():
        loaded = _load(n)
        if isinstance(loaded, str):
            table.add_row(n, f"[red]cannot load {escape(target)}: {escape(loaded)}[/]", "")
            continue
        fields = _defaults(loaded)
        shown = escape(", ".join(f"{k}={v}" for k, v in fields[:_SHOWN]))
        if len(fields) > _SHOWN:
            shown += f" [dim]+{len(fields) - _SHOWN} more[/]"
        description = escape(for_users(getattr(loaded, "summary", "") or ""))
        if n not in builtins:
            description += f"\n[dim]plugin: {escape(target)}[/]"
        table.add_row(n, description, shown, end_section=True)
    return table


def _details(name: str, target: str, builtin: bool) -> Any:
    from rich.markup import escape
    from rich.table import Column, Table

    loaded = _load(name)
    origin = "built-in" if builtin else f"plugin {target}"
    if isinstance(loaded, str):
        table = Table(title=f"{name} ({origin})", title_justify="left")
        table.add_row(f"[red]cannot load: {escape(loaded)}[/]")
        return table
    summary = getattr(loaded, "summary", "") or ""
    table = Table(Column("setting", overflow="fold"), Column("default", overflow="fold"),
                  "what it does",
                  title=f"[bold]{name}[/]: {escape(summary)} [dim]({escape(origin)})[/]",
                  title_justify="left")
    docs = _field_docs(loaded)
    for key, value in _defaults(loaded):
        table.add_row(key, escape(value), escape(docs.get(key, "")))
    return table


def _load(name: str) -> type | str:
    """The strategy class, or why it cannot be imported (a broken plugin is listed, not fatal)."""
    from longweave.agents.base import strategy_class

    try:
        return strategy_class(name)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _defaults(cls: type) -> list[tuple[str, str]]:
    fields = getattr(cls, "model_fields", None) or {}
    shown: list[tuple[str, str]] = []
    for key, field in fields.items():
        if field.is_required():
            shown.append((key, "(required)"))
        elif field.default_factory is not None:
            shown.append((key, "(computed)"))
        else:
            shown.append((key, repr(field.default)))
    return shown


def _field_docs(cls: type) -> dict[str, str]:
    """Each setting's attribute docstring (the string under the field), on one line.

    The settings classes document fields that way; pydantic keeps them only when asked to,
    so they are read from the source, and a class without source just has no docs.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.split(".")[0] in ("builtins", "pydantic", "typing"):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for field, doc in zip(body, body[1:], strict=False):
            if (
                isinstance(field, ast.AnnAssign)
                and isinstance(field.target, ast.Name)
                and isinstance(doc, ast.Expr)
                and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str)
            ):
                docs[field.target.id] = for_users(" ".join(doc.value.value.split()))
    return docs


def for_users(doc: str) -> str:
    """`doc` without its design-note references, and without the punctuation they leave."""
    text = _DESIGN_REF.sub("", doc)
    text = re.sub(r"\(\s*[,;]\s*", "(", text)
    text = re.sub(r"\s*[,;]\s*\)", ")", text)
    return re.sub(r"\s*\(\s*\)", "", text)

"""`longweave cache`: what the cache folder holds, by kind; `--prune` and `--clear` free space."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from longweave.answer import plural

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from longweave.cache_contents import CacheItem
    from longweave.cache_removal import Removal


def cache(
    prune: Annotated[bool, typer.Option(
        "--prune", help="Remove only leftovers: artifacts set aside as damaged, temporary "
        "folders of dead writers, old formats. Safe while longweave runs.")] = False,
    clear: Annotated[list[str] | None, typer.Option(
        "--clear", metavar="KIND", help="Remove a kind (repeatable), or 'all': every kind but "
        "sessions, which go only when named (they are conversations, not a cache).")] = None,
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="Clear without asking (required off a terminal).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Show where the cache is and what it holds, by kind; --prune or --clear free space.

    Kinds: completions, embeddings, indexes, corpora, graphs, trees, memories (LIGHT), schemas
    (PRISM), artifacts (other strategies'), models (unpacked from GGUF), views, sessions (saved
    chats) and leftovers. The folder is LONGWEAVE_CACHE_DIR (by default
    $XDG_CACHE_HOME/longweave, or ~/.cache/longweave when XDG_CACHE_HOME is not set). What
    longweave did not write is listed, never removed; --prune and --clear refuse the home
    folder, and a folder holding others' files without longweave's CACHEDIR.TAG."""
    from rich.console import Console

    from longweave.cache_contents import cache_contents, cache_kinds, mark_cache_folder
    from longweave.cache_removal import check_removable, clear_cache, prune_cache
    from longweave.config import Settings
    from longweave.errors import ConfigError

    root = Settings().cache_dir.expanduser()
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    if prune and clear:
        raise typer.BadParameter("--clear leftovers prunes too; give one of them",
                                 param_hint="'--prune'")
    if clear:
        try:
            kinds = cache_kinds(clear)
        except ConfigError as exc:
            raise typer.BadParameter(f"{exc.message}; {exc.hint}", param_hint="'--clear'"
                                     ) from None
    mark_cache_folder(root)  # a folder of longweave's only, made before tags were written
    if clear:
        if not yes:
            _ask_first()
        held = cache_contents(root)
        check_removable(root, held)
        chosen = [i for i in held if i.kind in kinds]
        if chosen and not yes and not _confirmed(err, chosen, root):
            raise typer.Exit(1)
        # Listed and checked just now, unless a question was asked since: then again.
        removal = clear_cache(root, kinds, held if yes else None)
        _removed(out, root, removal, as_json, each=False)
        if "sessions" not in kinds and any(i.kind == "sessions" for i in held) \
                and "all" in clear and not as_json:
            err.print("[dim]chat sessions are kept: --clear sessions removes them[/]")
        _not_removed(root, removal)
        return
    if prune:
        removal = prune_cache(root)
        _removed(out, root, removal, as_json, each=True)
        _not_removed(root, removal)
        return
    _listing(out, root, cache_contents(root), as_json)


def size_text(size: int) -> str:
    """`512 B`, `1.5 kB`, `12.3 MB`: decimal units, as `du --si` and file managers show them."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} TB"


def _listing(out: Console, root: Path, items: list[CacheItem], as_json: bool) -> None:
    from rich.table import Column, Table

    from longweave.cache_contents import CACHE_KINDS, KEPT_KINDS

    rows = [(kind, what, [i for i in items if i.kind == kind])
            for kind, what in {**CACHE_KINDS, **KEPT_KINDS}.items()]
    total = sum(i.size for i in items)
    leftovers = [i for i in items if i.kind == "leftovers"]
    if as_json:
        typer.echo(json.dumps({
            "cache_dir": str(root), "exists": root.is_dir(),
            "kinds": [{"kind": kind, "what": what, "count": _count(found),
                       "bytes": sum(i.size for i in found)} for kind, what, found in rows],
            "total_bytes": total,
            "leftovers": [{"path": str(i.paths[0]), "bytes": i.size, "why": i.why}
                          for i in leftovers],
        }))
        return
    if not root.exists():
        out.print(f"cache folder {escape(str(root))} does not exist yet: the cache is empty",
                  soft_wrap=True)
        return
    out.print(f"cache folder: {escape(str(root))}", soft_wrap=True)
    # The kind is what --clear takes, and numbers never wrap; on a narrow terminal the
    # description goes rather than be cut into pieces of words.
    described = out.width >= 64
    table = Table(Column("kind", no_wrap=True), *[Column("what")] * described,
                  Column("count", justify="right", no_wrap=True),
                  Column("size", justify="right", no_wrap=True))
    for kind, what, found in rows:
        if kind in KEPT_KINDS and not found:
            continue
        table.add_row(kind, *[escape(what)] * described, _count_text(found),
                      size_text(sum(i.size for i in found)))
    table.add_section()
    table.add_row("total", *[""] * described, "", size_text(total))
    out.print(table)
    if leftovers:
        out.print(f"[dim]--prune removes the {plural(len(leftovers), 'leftover')} "
                  f"({size_text(sum(i.size for i in leftovers))})[/]")


def _count_text(items: list[CacheItem]) -> str:
    count = _count(items)
    return "?" if count is None else f"{count:,}"


def _count(items: list[CacheItem]) -> int | None:
    """Entries of a kind; None when one of its stores cannot be read."""
    counts = [i.count for i in items]
    return None if None in counts else sum(c for c in counts if c is not None)


def _removed(out: Console, root: Path, removal: Removal, as_json: bool, *,
             each: bool) -> None:
    """What went: `each` item on its line (a prune's leftovers, with why), else a line a kind."""
    items = removal.removed
    freed = sum(i.size for i in items)
    if as_json:
        typer.echo(json.dumps({
            "removed": [{"kind": i.kind, "path": str(i.paths[0]), "count": i.count,
                         "bytes": i.size, "why": i.why} for i in items],
            "freed_bytes": freed,
            "not_removed": [{"kind": i.kind, "path": str(i.paths[0]), "why": why}
                            for i, why in removal.not_removed],
        }))
        return
    if each:
        for item in items:
            out.print(f"removed {escape(_where(item, root))} ({item.why}, "
                      f"{size_text(item.size)})", soft_wrap=True)
    else:
        for kind in dict.fromkeys(i.kind for i in items):
            found = [i for i in items if i.kind == kind]
            out.print(f"{kind}: {_count_text(found)} removed, "
                      f"{size_text(sum(i.size for i in found))}")
    if items:
        out.print(f"freed {size_text(freed)}")
    elif not removal.not_removed:
        out.print("nothing to remove")


def _not_removed(root: Path, removal: Removal) -> None:
    """What could not be removed is an error (exit 1) that gives the first reason."""
    from longweave.errors import LongweaveError

    if removal.not_removed:
        item, why = removal.not_removed[0]
        raise LongweaveError(
            f"{len(removal.not_removed):,} not removed: {_where(item, root)}: {why}",
            hint="check the permissions of the cache folder, then run it again")


def _where(item: CacheItem, root: Path) -> str:
    path = item.paths[0]
    return str(path.relative_to(root) if path.is_relative_to(root) else path)


def _ask_first() -> None:
    """Off a terminal nothing can be asked, so --clear without --yes is refused there, whether
    or not there is anything to remove: a script must say --yes."""
    from longweave.errors import ConfigError

    if not sys.stdin.isatty():
        raise ConfigError("--clear asks before removing anything, and stdin is not a terminal",
                          hint="add --yes to clear without asking")


def _confirmed(err: Console, items: list[CacheItem], root: Path) -> bool:
    """Whether the user, asked on the terminal, agrees to remove `items`."""
    kinds = dict.fromkeys(i.kind for i in items)
    what = ", ".join(f"{k} ({size_text(sum(i.size for i in items if i.kind == k))})"
                     for k in kinds)
    err.print(f"this removes {escape(what)} from {escape(str(root))}", soft_wrap=True)
    if typer.confirm("remove them?", default=False, err=True):
        return True
    err.print("nothing removed")
    return False

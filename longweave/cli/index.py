"""`longweave index PATH...`: build the retrieval index of files and folders ahead of questions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from longweave.answer import plural
from longweave.cli.options import Exclude, Include


def index(
    paths: Annotated[
        list[Path], typer.Argument(help="Documents, or folders indexed as one corpus each.")
    ],
    embedder: Annotated[
        str, typer.Option("--embedder", help="'bundled', 'st:<model>' or 'openai:<model>'.")
    ] = "bundled",
    chunk_tokens: Annotated[
        int, typer.Option("--chunk-tokens", help="Chunk size in the model's tokens.")
    ] = 256,
    overlap: Annotated[int, typer.Option("--overlap", min=0, help="Tokens chunks share.")] = 0,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Whose tokenizer cuts the chunks (as `ask` will)."),
    ] = None,
    include: Include = None,
    exclude: Exclude = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Chunk and embed PATHS once, so `ask --strategy rag` reuses the index; prints what it did."""
    from dataclasses import asdict

    from rich.console import Console

    from longweave.cache import ArtifactCache
    from longweave.config import Settings
    from longweave.llm import resolve_model
    from longweave.retrieval.index import IndexReport, index_paths, resolve_embedder

    _check_chunking(chunk_tokens, overlap)
    settings = Settings()
    out = Console(highlight=False)

    def show(row: IndexReport) -> None:
        if as_json:
            typer.echo(json.dumps(asdict(row)))
            return
        verb = "[dim]reused[/]" if row.reused else "[green]built[/] "
        what = "corpus " if row.kind == "corpus" else ""
        source = escape(str(row.source))
        out.print(f"{verb} {what}{source}: {plural(row.chunks, 'chunk')}, {row.embedded} embedded")

    tokenizer = resolve_model(model or settings.model).tokenizer
    index_paths(
        paths,
        embedder=resolve_embedder(embedder, settings.cache_dir),
        tokenizer=tokenizer,
        chunk_tokens=chunk_tokens,
        overlap=overlap,
        artifacts=ArtifactCache(settings.cache_dir / "artifacts"),
        include=include,
        exclude=exclude,
        on_report=show,
    )


def _check_chunking(chunk_tokens: int, overlap: int) -> None:
    """Refuse, as usage errors naming this command's flags, chunks that `ask --strategy rag`
    refuses (its bound, read from rag): it could never reuse such an index."""
    from longweave.agents.rag import MIN_CHUNK_TOKENS

    if chunk_tokens < MIN_CHUNK_TOKENS:
        raise typer.BadParameter(
            f"{chunk_tokens} is below {MIN_CHUNK_TOKENS}, the smallest chunk `ask --strategy rag` "
            f"takes, so it could never use the index: pass {MIN_CHUNK_TOKENS} or more",
            param_hint="'--chunk-tokens'")
    if overlap >= chunk_tokens:
        raise typer.BadParameter(
            f"{overlap} is not smaller than --chunk-tokens ({chunk_tokens}): a chunk cannot "
            "repeat all of the one before; lower --overlap or raise --chunk-tokens",
            param_hint="'--overlap'")

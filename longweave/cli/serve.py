"""`longweave serve`: an OpenAI-compatible HTTP server over a local model."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    model: Annotated[str, typer.Option(
        "--model", "-m", envvar="LONGWEAVE_MODEL", help="'local' or 'hf:<id>'.")] = "local",
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve /v1/chat/completions and /v1/models on HOST:PORT."""
    from longweave.llm import resolve_model
    from longweave.local_models.server import serve as run_server

    run_server(resolve_model(model), host=host, port=port)

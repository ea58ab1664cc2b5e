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
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
) -> None:
    """Serve /v1/chat/completions and /v1/models on HOST:PORT."""
    from longweave.llm import resolve_model
    from longweave.local_models.server import serve as run_server

    _check_address(host, port)
    run_server(resolve_model(model), host=host, port=port)


def _check_address(host: str, port: int) -> None:
    """Refuse an address that cannot be listened on (a port in use, a host not of this
    machine) before the model loads: the server would find out only after loading it, and
    say so in its log and exit 3 rather than with an error line and 1."""
    import socket

    from longweave.errors import ConfigError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            sock.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                          hint="pass another --port (or --host), or stop what is using it"
                          ) from None

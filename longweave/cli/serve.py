"""`longweave serve`: an OpenAI-compatible HTTP server over a local model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import socket


def serve(
    model: Annotated[str, typer.Option(
        "--model", "-m", envvar="LONGWEAVE_MODEL",
        help="'local', 'hf:<id>', or 'openai:<model>' to relay an API model.")] = "local",
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
) -> None:
    """Serve /v1/chat/completions and /v1/models on HOST:PORT."""
    from longweave.llm import resolve_model
    from longweave.local_models.server import serve as run_server

    sockets = _listen(host, port)
    try:
        llm = resolve_model(model)
        check_key = getattr(llm, "check_key", None)
        if check_key is not None:  # an API model without a key would fail every request
            check_key()
        run_server(llm, host=host, port=port, sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()


def _listen(host: str, port: int) -> list[socket.socket]:
    """The server's sockets, bound before the model loads: an address that cannot be listened
    on (a port in use, a host not of this machine) is refused at once with an error line and
    1, where the server would find out only after loading the model, and say so in its log and
    exit 3. The server accepts on these very sockets, so no other process can take the port
    in between."""
    from longweave.errors import ConfigError
    from longweave.local_models.server import listen

    try:
        return listen(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                          hint="pass another --port (or --host), or stop what is using it"
                          ) from None

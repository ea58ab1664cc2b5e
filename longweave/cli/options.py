"""Parsing of `--set key=value` strategy options shared by the commands."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from longweave.errors import ConfigError

# Options several commands share, declared once so their flags and help stay the same.
NoCache = Annotated[bool, typer.Option("--no-cache", help="Bypass the completion cache.")]
Include = Annotated[
    list[str] | None, typer.Option("--include", help="Folder: file glob to read (repeatable).")
]
Exclude = Annotated[
    list[str] | None, typer.Option("--exclude", help="Folder: file glob to skip (repeatable).")
]


def _from_environment(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    """A value read from a LONGWEAVE_* variable is checked as the settings check it, so a bad
    one is an error that names the variable, not a bare "unknown model"."""
    from click.core import ParameterSource

    if param.name and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT:
        from longweave.config import Settings

        Settings()
    return value


Model = Annotated[str, typer.Option(
    "--model", "-m", envvar="LONGWEAVE_MODEL", callback=_from_environment,
    help="'local', 'hf:<id>' or 'openai:<model>'.")]
StrategyName = Annotated[str, typer.Option(
    "--strategy", "-s", envvar="LONGWEAVE_STRATEGY", callback=_from_environment,
    help="Strategy name.")]
RayAddress = Annotated[
    str | None,
    typer.Option("--ray-address", help="Ray cluster: 'auto' or 'ray://host:port' "
                 "(default: a local Ray runtime)."),
]


def check_ray_address(executor: str, address: str | None) -> None:
    """A Ray address with another executor would be silently ignored and the work run here."""
    if address is not None and executor != "ray":
        raise ConfigError(f"--ray-address needs --executor ray (not {executor}): the work "
                          "would run here, not on that cluster",
                          hint="add --executor ray, or drop --ray-address to run here")


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise typer.BadParameter(f"must be more than 0, got {value:g}")
    return value


PriceIn = Annotated[float | None, typer.Option(
    "--price-in", min=0.0, help="Price per 1M prompt tokens, for the estimate's cost.")]
PriceOut = Annotated[float | None, typer.Option(
    "--price-out", min=0.0, help="Price per 1M completion tokens, for the estimate's cost.")]
Throughput = Annotated[float | None, typer.Option(
    "--throughput", callback=_positive,
    help="Measured tokens/s (prompt + completion), for the estimate's time.")]


def check_estimate_flags(
    estimate: bool, price_in: float | None, price_out: float | None, throughput: float | None
) -> None:
    """Prices and a throughput only feed the estimate: without --estimate they would be taken
    and silently ignored. Both prices or neither: a cost from one of them would be missing."""
    given = [flag for flag, value in (("--price-in", price_in), ("--price-out", price_out),
                                      ("--throughput", throughput)) if value is not None]
    if given and not estimate:
        one = len(given) == 1
        names = given[0] if one else f"{', '.join(given[:-1])} and {given[-1]}"
        raise ConfigError(f"{names} go{'es' if one else ''} with --estimate: without it nothing "
                          f"would use {'it' if one else 'them'}",
                          hint="add --estimate to see what the run will cost first (with --run "
                               f"to answer as well), or drop {'it' if one else 'them'}")
    if (price_in is None) != (price_out is None):
        raise ConfigError("the estimate's cost needs both --price-in and --price-out",
                          hint="pass both (0 for a side that is free)")


def parse_options(pairs: list[str] | None, *, form: str = "--set key=value") -> dict[str, Any]:
    """`["max_new=256", "paths=bidir", "k=None"]` -> `{"max_new": 256, "paths": "bidir",
    "k": None}`: JSON values (null or None for none), else the text as a string. `form` is how
    the caller's users write an option (the chat's /strategy has its own)."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad option {pair!r}", hint=f"write options as {form}")
        name = key.strip().replace("-", "_")
        if raw.strip() == "None":  # as the docs and `longweave strategies` print an unset value
            options[name] = None
            continue
        try:
            options[name] = json.loads(raw)
        except json.JSONDecodeError:
            options[name] = raw
    return options

"""Options the commands share (connections, folders, metrics), as decorators that build a ``Settings``.

Commands import these; ``cdc.cli`` imports the commands: the arrows point one way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from cdc.infra.config import DEFAULT_DATA_DIR, DEFAULT_MONGO_DB, Settings, refuse_password_in_argument

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Invocation:
    """What ``cdc``'s own options decided, handed by ``cli.main`` to the group as the context object."""

    verbose: bool = False


def data_dir_option(help_text: str) -> Callable[[F], F]:
    """``--data-dir`` (``CDC_DATA_DIR``): the embedded stack's folder; the help says what it holds here."""
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=DEFAULT_DATA_DIR,
        show_default=True,
        envvar="CDC_DATA_DIR",
        show_envvar=True,
        help=help_text,
    )


def settings_options(func: F) -> F:
    """The connection and folder options every command shares; builds a ``Settings``."""

    @data_dir_option("Folder of the embedded stack and the default archive.")
    @click.option(
        "--pg",
        "pg_dsn",
        envvar="CDC_PG_DSN",
        show_envvar=True,
        metavar="DSN",
        help="PostgreSQL URI or conninfo (no password here: use the environment or PGPASSFILE). "
        "Falls back to libpq's PG* variables, then the running embedded stack.",
    )
    @click.option(
        "--mongo",
        "mongo_uri",
        envvar="CDC_MONGO_URI",
        show_envvar=True,
        metavar="URI",
        help="MongoDB URI (no password here: use the environment). Falls back to the running embedded stack.",
    )
    @click.option(
        "--mongo-db",
        envvar="CDC_MONGO_DB",
        show_envvar=True,
        default=DEFAULT_MONGO_DB,
        show_default=True,
        help="MongoDB database name.",
    )
    @click.option(
        "--archive",
        "archive_dir",
        type=click.Path(path_type=Path, file_okay=False),
        envvar="CDC_ARCHIVE_DIR",
        show_envvar=True,
        help="Archive folder [default: <data-dir>/archive].",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        data_dir: Path,
        pg_dsn: str | None,
        mongo_uri: str | None,
        mongo_db: str,
        archive_dir: Path | None,
        **kwargs: Any,
    ) -> Any:
        ctx = click.get_current_context()
        if ctx.get_parameter_source("pg_dsn") == click.core.ParameterSource.COMMANDLINE:
            refuse_password_in_argument("--pg", pg_dsn)
        if ctx.get_parameter_source("mongo_uri") == click.core.ParameterSource.COMMANDLINE:
            refuse_password_in_argument("--mongo", mongo_uri)
        settings = Settings(
            data_dir=data_dir,
            pg_dsn_given=pg_dsn or None,
            mongo_uri_given=mongo_uri or None,
            mongo_db=mongo_db,
            archive_dir_given=archive_dir,
        )
        return func(*args, settings=settings, **kwargs)

    return wrapper  # type: ignore[return-value]


def metrics_options(func: F) -> F:
    """``--metrics-port`` and ``--metrics-host``: serve Prometheus metrics while the command runs."""
    return metrics_options_defaulting_to("no endpoint")(func)


def metrics_options_defaulting_to(port_default: str) -> Callable[[F], F]:
    """``metrics_options`` for a command whose endpoint without --metrics-port is ``port_default`` (its help)."""

    def decorate(func: F) -> F:
        func = click.option(
            "--metrics-host",
            default="127.0.0.1",
            show_default=True,
            envvar="CDC_METRICS_HOST",
            show_envvar=True,
            help="Address of the metrics endpoint (0.0.0.0 in a container, so Prometheus can reach it).",
        )(func)
        return click.option(
            "--metrics-port",
            type=click.IntRange(min=1, max=65535),
            envvar="CDC_METRICS_PORT",
            show_envvar=True,
            help=f"Serve Prometheus metrics on http://HOST:PORT/metrics [default: {port_default}].",
        )(func)

    return decorate

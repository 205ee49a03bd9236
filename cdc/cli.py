"""The ``cdc`` command line: a thin layer over the library, with one exit point.

Exit codes: 0 success; 1 an error or a failed check (one line per cause on stderr, traceback
only with -v); 2 a usage error.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from cdc import logs
from cdc.config import DEFAULT_DATA_DIR, DEFAULT_MONGO_DB, Settings, refuse_password_in_argument
from cdc.errors import CdcError, UsageError
from cdc.redact import redact

F = TypeVar("F", bound=Callable[..., Any])


class State:
    verbose: bool = False


def settings_options(func: F) -> F:
    """The connection and folder options every command shares; builds a ``Settings``."""

    @click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=DEFAULT_DATA_DIR,
        show_default=True,
        envvar="CDC_DATA_DIR",
        show_envvar=True,
        help="Folder of the embedded stack and the default archive.",
    )
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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging, and tracebacks on errors.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="CDC_LOG_FORMAT",
    show_envvar=True,
    help="Human-readable lines or one JSON object per line.",
)
@click.version_option(package_name="orininu-cdc")
def cli(verbose: bool, log_format: str) -> None:
    """orininu-cdc: keep MongoDB in step with PostgreSQL through a mongoimport-compatible archive.

    Connections come from flags or the environment (CDC_PG_DSN, CDC_MONGO_URI, then libpq's PG*
    variables), else from the embedded stack started by `cdc stack up`.
    """
    State.verbose = verbose
    logs.configure(verbose=verbose, json_format=log_format == "json")


def _register_commands() -> None:
    from cdc.commands import archive, bench, capture, demo, export, generate, schema, stack, sync, verify  # noqa: PLC0415

    cli.add_command(stack.stack)
    cli.add_command(schema.schema)
    cli.add_command(generate.generate)
    cli.add_command(generate.workload)
    cli.add_command(capture.install)
    cli.add_command(capture.uninstall)
    cli.add_command(export.export)
    for command in (sync.run, sync.snapshot_command, sync.replay, verify.verify_command, sync.status_command):
        cli.add_command(command)
    cli.add_command(archive.archive_group)
    cli.add_command(bench.bench)
    cli.add_command(demo.demo)


_register_commands()


def _cause_lines(exc: BaseException) -> list[str]:
    lines = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).strip() or type(current).__name__
        lines.append(redact(text.splitlines()[0]))
        current = current.__cause__
    return lines


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: the single place that turns errors into exit codes."""
    try:
        outcome = cli.main(args=argv, prog_name="cdc", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UsageError as exc:
        click.echo(f"cdc: usage error: {redact(str(exc))}", err=True)
        sys.exit(2)
    except CdcError as exc:
        if State.verbose:
            import traceback  # noqa: PLC0415

            click.echo(redact("".join(traceback.format_exception(exc))), err=True)
        for index, line in enumerate(_cause_lines(exc)):
            click.echo(("cdc: error: " if index == 0 else "  caused by: ") + line, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, the traceback with -v
        if State.verbose:
            raise
        first_line = (str(exc).strip().splitlines() or [""])[0]
        click.echo(f"cdc: internal error: {type(exc).__name__}: {redact(first_line)[:300]} (rerun with -v)", err=True)
        sys.exit(1)
    # click returns the code of `ctx.exit(code)` (e.g. 0 after --help); commands return None
    sys.exit(outcome if isinstance(outcome, int) else 0)

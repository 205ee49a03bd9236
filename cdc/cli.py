"""The ``cdc`` command line: a thin layer over the library, with one exit point.

Exit codes: 0 success; 1 an error or a failed check (one line per cause on stderr, traceback
only with -v); 2 a usage error.
"""

from __future__ import annotations

import sys

import click

from cdc.commands.options import Invocation
from cdc.infra import logs
from cdc.infra.errors import CdcError, UsageError
from cdc.infra.redact import redact


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
@click.pass_context
def cli(ctx: click.Context, verbose: bool, log_format: str) -> None:
    """orininu-cdc: keep MongoDB in step with PostgreSQL through a mongoimport-compatible archive.

    Connections come from flags or the environment (CDC_PG_DSN, CDC_MONGO_URI, then libpq's PG*
    variables), else from the embedded stack started by `cdc stack up`.
    """
    if isinstance(ctx.obj, Invocation):  # what `main` reads after the command, to report its errors
        ctx.obj.verbose = verbose
    logs.configure(verbose=verbose, json_format=log_format == "json")


def _register_commands() -> None:
    from cdc.commands import (  # noqa: PLC0415
        archive,
        bench,
        capture,
        demo,
        export,
        generate,
        replay,
        run,
        schema,
        snapshot,
        stack,
        status,
        verify,
    )

    cli.add_command(stack.stack)
    cli.add_command(schema.schema)
    cli.add_command(generate.generate)
    cli.add_command(generate.workload)
    cli.add_command(capture.install)
    cli.add_command(capture.uninstall)
    cli.add_command(export.export)
    for command in (run.run, snapshot.snapshot_command, replay.replay, verify.verify_command, status.status_command):
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
    invocation = Invocation()
    try:
        outcome = cli.main(args=argv, prog_name="cdc", standalone_mode=False, obj=invocation)
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
        if invocation.verbose:
            import traceback  # noqa: PLC0415

            click.echo(redact("".join(traceback.format_exception(exc))), err=True)
        for index, line in enumerate(_cause_lines(exc)):
            click.echo(("cdc: error: " if index == 0 else "  caused by: ") + line, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, the traceback with -v
        if invocation.verbose:
            raise
        first_line = (str(exc).strip().splitlines() or [""])[0]
        click.echo(f"cdc: internal error: {type(exc).__name__}: {redact(first_line)[:300]} (rerun with -v)", err=True)
        sys.exit(1)
    # click returns the code of `ctx.exit(code)` (e.g. 0 after --help); commands return None
    sys.exit(outcome if isinstance(outcome, int) else 0)

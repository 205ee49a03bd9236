"""`cdc install` and `cdc uninstall`: capture on the source tables."""

from __future__ import annotations

from collections.abc import Callable

import click

from cdc.capture import install as capture
from cdc.capture import row_security
from cdc.commands.options import F, settings_options
from cdc.infra import pg
from cdc.infra.config import Settings
from cdc.infra.errors import CheckFailed, UsageError
from cdc.usecases import install as usecase


def _table_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise UsageError(f"--tables has an empty name: {text!r}")
    return names


def _tables_options(help_text: str) -> Callable[[F], F]:
    """``--tables A,B`` (its help says what the command does with them) and ``--schema``."""

    def decorate(func: F) -> F:
        func = click.option("--schema", default="public", show_default=True, help="Schema of bare table names.")(func)
        return click.option("--tables", "table_list", metavar="A,B", help=help_text)(func)

    return decorate


@click.command()
@settings_options
@_tables_options(
    "Tables to capture: NAME, SCHEMA.NAME or SCHEMA.* (double-quote a name holding a dot or a comma-free"
    " odd name) [default: every table with a primary key in --schema]."
)
@click.option(
    "--notify/--no-notify",
    default=True,
    show_default=True,
    help="Send a NOTIFY wake-up (one per transaction) when changes are captured.",
)
@click.option(
    "--grant",
    "grant_role",
    metavar="ROLE",
    help="Grant ROLE what the worker needs (outbox, ledger, sequences, SELECT on the tables) and no more.",
)
@click.option(
    "--exclude",
    "exclude_list",
    metavar="T.COL,…",
    help="Columns never captured (personal data), as TABLE.COLUMN or SCHEMA.TABLE.COLUMN. Replaces the "
    "stored exclusions of the tables installed ('' clears them); left out, they stay as they are.",
)
@click.option(
    "--mapping",
    "mapping_path",
    metavar="FILE",
    envvar="CDC_MAPPING",
    show_envvar=True,
    help="A document model (TOML; see docs/document-model.md): collections rooted at tables with"
    " rows of other tables embedded. Stored in PostgreSQL; 'none' removes the installed one. Left out, the"
    " installed mapping (if any) stays.",
)
def install(
    settings: Settings,
    *,
    mapping_path: str | None,
    table_list: str | None,
    schema: str,
    notify: bool,
    grant_role: str | None,
    exclude_list: str | None,
) -> None:
    """Install the outbox, the ledger and the capture triggers; idempotent.

    Any table with a primary key works, in any schema, with any quoted name. Without --tables it
    captures every table with a primary key in --schema, and says which before it does. Refused,
    with nothing changed (one transaction, --grant included): an unknown table (the closest name is
    suggested), a table without a primary key, or with a column named _cdc, a column '_id' that is
    not its only key column, or a column starting with '$', and a partition or inheritance child
    named alone (capture its parent: partitions and children at any depth are captured with it,
    into the parent's collection). Re-running after adding a table adds its triggers; re-running
    after partitions were created, attached, detached or dropped brings their capture in step.
    Run it as the tables' owner; the worker itself needs no DDL rights.

    Excluded columns are stored in the ledger (cdc.captured), so export, snapshot and verify all
    leave them out; every batch manifest lists them. A primary-key column cannot be excluded. To
    leave a whole table out, do not name it in --tables. Documents already in MongoDB keep an
    excluded field until rewritten: run `cdc snapshot` (or `cdc verify --repair`) afterwards.
    """
    exclude = None if exclude_list is None else [name.strip() for name in exclude_list.split(",") if name.strip()]
    names = _table_list(table_list)
    mapping_file = usecase.read_mapping(mapping_path)  # (a bad --tables or --mapping before any connection)
    done = usecase.install(
        settings.pg_dsn(),
        names,
        schema=schema,
        notify=notify,
        exclude=exclude,
        grant=grant_role,
        mapping_file=mapping_file,
        announce=click.echo,
    )
    click.echo("capturing: " + ", ".join(table.display for table in done.tables))
    if done.mapping is not None:
        click.echo(f"mapping: {done.mapping}")
    if done.reshaped:
        click.echo(
            "collections whose shape changed: "
            + ", ".join(done.reshaped)
            + f"; rebuild them with `cdc snapshot --collections {','.join(done.reshaped)}`"
            + " (when they replace an installed mapping's, a running worker rebuilds them by itself)"
        )
    for table in done.tables:
        if table.excluded:
            click.echo(f"excluded from {table.display}: " + ", ".join(table.excluded))
    if grant_role:
        click.echo(f"granted the worker role {grant_role}")
    for table, role in done.hidden:
        click.echo(
            f"cdc: warning: {row_security.describe(table, role)}: `cdc run`, `cdc snapshot` and `cdc verify` as"
            f" {role} would refuse the table; {row_security.fix(table, role)}",
            err=True,
        )


@click.command()
@settings_options
@_tables_options("Stop capturing only these tables (and their partitions and children); the outbox and ledger stay.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def uninstall(settings: Settings, table_list: str | None, schema: str, yes: bool) -> None:
    """Remove capture. With no --tables: every capture trigger, the outbox and the ledger (schema "cdc"),
    and pending changes are lost. With --tables: only those tables stop being captured; their
    changes already claimed or waiting are still exported."""
    names = _table_list(table_list)
    question = (
        "Drop the capture triggers, the outbox and the ledger?"
        if names is None
        else f"Stop capturing {', '.join(names)}?"
    )
    if not yes and not _confirmed(question):
        raise CheckFailed("uninstall not confirmed: nothing removed")
    with pg.connect(settings.pg_dsn()) as conn:
        released = capture.uninstall(conn, names, schema=schema)
    click.echo(f"capture removed from {released} tables")


def _confirmed(question: str) -> bool:
    """A yes at the prompt; no, end of input or Ctrl-C is a no (exit 1, nothing done)."""
    try:
        return click.confirm(question, default=False)
    except click.Abort:
        click.echo("", err=True)
        return False

"""`cdc install`, `cdc uninstall` and `cdc export`: the capture half of the pipeline."""

from __future__ import annotations

import click

from cdc import capture, orininu, pg
from cdc.cli import settings_options
from cdc.config import Settings
from cdc.errors import ConfigError


def _table_list(text: str | None) -> list[str]:
    if not text:
        return list(orininu.TABLES)
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ConfigError(f"--tables has an empty name: {text!r}")
    return names


@click.command()
@settings_options
@click.option("--tables", "table_list", metavar="A,B", help="Tables to capture [default: all Orininu tables].")
@click.option("--schema", default="public", show_default=True, help="Schema of those tables.")
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
def install(
    settings: Settings,
    *,
    table_list: str | None,
    schema: str,
    notify: bool,
    grant_role: str | None,
    exclude_list: str | None,
) -> None:
    """Install the outbox, the ledger and the capture triggers; idempotent.

    Any table with a primary key works, in any schema, with any quoted name. Refused, with nothing
    changed: a table without a primary key, or with a column named _cdc, a column '_id' that is not
    its only key column, or a column starting with '$'. Re-running after adding a table adds its
    triggers. Run it as the tables' owner; the worker itself needs no DDL rights.

    Excluded columns are stored in the ledger (cdc.captured), so export, snapshot and verify all
    leave them out; every batch manifest lists them. A primary-key column cannot be excluded. To
    leave a whole table out, do not name it in --tables. Documents already in MongoDB keep an
    excluded field until rewritten: run `cdc snapshot` (or `cdc verify --repair`) afterwards.
    """
    exclude = None if exclude_list is None else [name.strip() for name in exclude_list.split(",") if name.strip()]
    with pg.connect(settings.pg_dsn()) as conn:
        installed = capture.install(conn, _table_list(table_list), schema=schema, notify=notify, exclude=exclude)
        if grant_role:
            capture.grant_worker(conn, grant_role, installed)
    click.echo("capturing: " + ", ".join(table.display for table in installed))
    for table in installed:
        if table.excluded:
            click.echo(f"excluded from {table.display}: " + ", ".join(table.excluded))
    if grant_role:
        click.echo(f"granted the worker role {grant_role}")


@click.command()
@settings_options
@click.confirmation_option(prompt="Drop the capture triggers, the outbox and the ledger?")
def uninstall(settings: Settings) -> None:
    """Remove every capture trigger, the outbox and the ledger (schema "cdc"). Pending changes are lost."""
    with pg.connect(settings.pg_dsn()) as conn:
        released = capture.uninstall(conn)
    click.echo(f"capture removed from {released} tables")

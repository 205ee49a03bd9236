"""`cdc stack up|down|status`: the embedded PostgreSQL and MongoDB-wire servers."""

from __future__ import annotations

from pathlib import Path

import click

from cdc.commands import options
from cdc.devtools.stack import Stack
from cdc.infra.errors import CheckFailed
from cdc.infra.redact import redact

data_dir_option = options.data_dir_option("Folder holding both servers' data, logs and stack.env.")


@click.group()
def stack() -> None:
    """Start, stop or inspect the embedded servers (PostgreSQL 18 and SecantusDB).

    The servers run as their own processes and outlive the command. Every other command finds a
    running stack under --data-dir by itself when no --pg/--mongo is given.
    """


@stack.command()
@data_dir_option
@click.option("--pg-port", type=click.IntRange(0, 65535), default=0, help="PostgreSQL port (0: a free one).")
@click.option("--mongo-port", type=click.IntRange(0, 65535), default=0, help="MongoDB port (0: a free one).")
@click.option("--fast", is_flag=True, help="fsync=off and friends: for throw-away test data only.")
def up(data_dir: Path, pg_port: int, mongo_port: int, fast: bool) -> None:
    """Start both servers (a no-op for those already running) and write `<data-dir>/stack.env`.

    Data is kept across restarts; a port is reused when still free. stack.env is mode 0600 and
    holds the PostgreSQL password; the copy printed here has it masked. Load it with
    `set -a; . <data-dir>/stack.env; set +a`.
    """
    running = Stack(data_dir, fast=fast)
    env = running.up(pg_port=pg_port, mongo_port=mongo_port)
    for key, value in env.items():
        click.echo(f"{key}={redact(value)}")
    click.echo(f"# written to {running.paths.env_file}", err=True)


@stack.command()
@data_dir_option
def down(data_dir: Path) -> None:
    """Stop both servers cleanly; their data stays under --data-dir.

    Says so when there is nothing to stop: no stack under --data-dir, or one already stopped (exit 0
    either way, so a clean-up script can run it twice).
    """
    embedded = Stack(data_dir)
    if not any(server.running for server in embedded.status()):
        paths = embedded.paths
        if any(path.exists() for path in (paths.state_file, paths.env_file, paths.pgdata, paths.mongo_data)):
            click.echo(f"the embedded stack under {data_dir} is not running: nothing to stop", err=True)
        else:
            click.echo(f"no embedded stack under {data_dir}: nothing to stop (is --data-dir right?)", err=True)
        return
    embedded.down()
    click.echo(f"stack under {data_dir} stopped (its data stays)", err=True)


@stack.command()
@data_dir_option
def status(data_dir: Path) -> None:
    """Show each server's state, pid, port, data and log; exit 1 unless both run."""
    servers = Stack(data_dir).status()
    for server in servers:
        state = "running" if server.running else "stopped"
        click.echo(
            f"{server.name:<10} {state:<8} pid={server.pid or '-'} port={server.port or '-'} "
            f"data={server.data_path} log={server.log_path}"
        )
    if not all(server.running for server in servers):
        raise CheckFailed(f"the embedded stack under {data_dir} is not fully running (`cdc stack up`)")

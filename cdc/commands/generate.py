"""`cdc generate` and `cdc workload`: synthetic Orininu data, bulk and live."""

from __future__ import annotations

from pathlib import Path

import click

from cdc.commands.options import settings_options
from cdc.demo import orininu
from cdc.infra import pg, shutdown
from cdc.infra.config import Settings
from generator import csv_io, load
from generator.sizes import NAMED_SCALES, counts_for, parse_scale
from generator.workload import Workload, WorkloadStats


@click.command()
@settings_options
@click.option(
    "--scale",
    default="small",
    show_default=True,
    help=f"A named size ({', '.join(NAMED_SCALES)}) or a multiplier of 'small'.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same data, byte for byte.")
@click.option("--csv", "csv_dir", type=click.Path(path_type=Path, file_okay=False), help="Also write <table>.csv here.")
@click.option("--replace", is_flag=True, help="Empty the Orininu tables first (TRUNCATE … CASCADE).")
def generate(settings: Settings, scale: str, seed: int, csv_dir: Path | None, replace: bool) -> None:
    """Load deterministic synthetic Orininu data through COPY, one transaction per table.

    Applies the schema first. Refuses tables that already hold rows unless --replace. Prints rows/s
    per table. Values include, at a low rate, the ones that break naive pipelines: CJK, emoji and
    RTL text, quotes and backslashes, very long text, NULLs, numerics with 40 digits, jsonb keys
    with '$' and '.', and microsecond timestamps.
    """
    counts = counts_for(parse_scale(scale))
    with pg.connect(settings.pg_dsn()) as conn:
        orininu.apply(conn)
        report = load.load(conn, seed=seed, counts=counts, replace=replace)
        if csv_dir is not None:
            files = csv_io.export_csv(conn, csv_dir)
            click.echo(f"CSV: {len(files)} files in {csv_dir}")
    total_rows = sum(entry.rows for entry in report)
    total_s = sum(entry.seconds for entry in report)
    click.echo(f"{'table':<18}{'rows':>10}{'seconds':>10}{'rows/s':>12}")
    for entry in report:
        click.echo(f"{entry.table:<18}{entry.rows:>10}{entry.seconds:>10.2f}{entry.rows_per_s:>12,.0f}")
    click.echo(f"{'total':<18}{total_rows:>10}{total_s:>10.2f}{total_rows / max(total_s, 1e-9):>12,.0f}")


@click.command()
@settings_options
@click.option("--rate", type=click.FloatRange(min=0.1), default=50, show_default=True, help="Target row changes/s.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=60,
    show_default=True,
    help="Seconds to run; 0 runs until Ctrl-C or SIGTERM.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seeds the choice of operations.")
@click.option("--no-long-transactions", is_flag=True, help="Skip the side connection that holds transactions open.")
def workload(settings: Settings, rate: float, duration: float, seed: int, no_long_transactions: bool) -> None:
    """A live mix of inserts, updates and deletes over the Orininu tables at RATE changes/s.

    Plays, new users, playlist edits and swaps, price changes, new albums (multi-statement
    transactions), bulk statements, cascading deletes, and transactions held open for seconds.
    Foreign keys stay valid. Stops cleanly on Ctrl-C or SIGTERM and prints the achieved rate.
    """
    live = Workload(
        settings.pg_dsn(),
        rate=rate,
        duration=duration or None,
        seed=seed,
        long_transactions=not no_long_transactions,
        # Ctrl-C or SIGTERM: the transaction under way finishes, then it stops; a second one stops at once
        stop=shutdown.install_handlers(again_stops_at_once=True),
    )
    try:
        stats = live.run()
    except KeyboardInterrupt:  # a second signal: stopped at once; what was done is still reported
        _report(live.stats, rate)
        raise click.exceptions.Exit(shutdown.exit_code()) from None
    _report(stats, rate)


def _report(stats: WorkloadStats, rate: float) -> None:
    click.echo(
        f"workload: {stats.changes} changes in {stats.transactions} transactions over {stats.seconds:.1f}s "
        f"= {stats.rate:.1f} changes/s (target {rate:g}); {stats.failures} failed transactions"
    )
    for name, changes in stats.by_operation.most_common():
        click.echo(f"  {name:<20}{changes:>8}")

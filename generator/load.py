"""Load generated rows into PostgreSQL through COPY, one transaction per table, parents first."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.demo import orininu
from cdc.infra import pg
from cdc.infra.errors import UsageError
from cdc.infra.progress import Progress, track
from generator import rows
from generator.pools import draw_pools
from generator.sizes import Counts

log = logging.getLogger(__name__)

LOAD_ORDER = ("users", "artists", "albums", "songs", "playlists", "user_interaction", "playlist_songs")
PRIMARY_KEYS = {
    "users": ("user_id",),
    "artists": ("artist_id",),
    "albums": ("album_id",),
    "songs": ("song_id",),
    "user_interaction": ("interaction_id",),
    "playlists": ("playlist_id",),
    "playlist_songs": ("playlist_id", "song_id"),
}
_PROGRESS_STEP = 5_000


@dataclass(frozen=True)
class TableLoad:
    table: str
    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def planned_rows(seed: int, counts: Counts) -> dict[str, Iterable[rows.Row]]:
    """Every table's rows, lazily where later tables do not need them."""
    pools = draw_pools(seed)
    album_rows = list(rows.albums(seed, counts, pools))
    song_rows = list(rows.songs(seed, counts, pools, album_rows))
    playlist_rows = list(rows.playlists(seed, counts, pools))
    catalogue = rows.catalogue(album_rows, song_rows, playlist_rows)
    return {
        "users": rows.users(seed, counts, pools),
        "artists": rows.artists(seed, counts, pools),
        "albums": album_rows,
        "songs": song_rows,
        "playlists": playlist_rows,
        "user_interaction": rows.user_interaction(seed, counts, catalogue),
        "playlist_songs": rows.playlist_songs(seed, counts, catalogue),
    }


def _refuse_non_empty(conn: psycopg.Connection[Any], replace: bool) -> None:
    if replace:
        tables = sql.SQL(", ").join(sql.Identifier(table) for table in orininu.TABLES)
        with pg.translated("emptying the Orininu tables"), conn.transaction():
            conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(tables))
        return
    for table in orininu.TABLES:
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table))
        with pg.translated(f"reading {table}"):
            row = conn.execute(query).fetchone()
        if row and row[0]:
            raise UsageError(f"table {table} already holds rows: pass --replace to empty the Orininu tables first")


def _copy_types(conn: psycopg.Connection[Any], table: str, columns: tuple[str, ...]) -> list[int]:
    """Type oids for a binary COPY; enums and char(n) travel as text (the same bytes on the wire)."""
    found = conn.execute(
        """SELECT CASE WHEN t.typtype = 'e' OR t.oid = 'bpchar'::regtype THEN 'text'::regtype::oid
                       ELSE t.oid END::int
           FROM unnest(%s::text[]) WITH ORDINALITY AS c(name, n)
           JOIN pg_attribute a ON a.attrelid = %s::regclass AND a.attname = c.name
           JOIN pg_type t ON t.oid = a.atttypid
           ORDER BY c.n""",
        [list(columns), sql.Identifier(table).as_string(conn)],
    ).fetchall()
    return [row[0] for row in found]


def _defer_constraints(conn: psycopg.Connection[Any], table: str) -> list[sql.Composed | sql.SQL]:
    """Drop the table's foreign keys and secondary indexes; return the statements that restore them.

    What pg_restore does: checking a foreign key or building an index once, after the load, costs
    a fraction of doing it row by row. Runs inside the load's transaction, so a failure restores
    everything.
    """
    relation = sql.Identifier(table).as_string(conn)
    restore: list[sql.Composed | sql.SQL] = []
    for name, definition in conn.execute(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass"
        " AND contype = 'f' ORDER BY conname",
        [relation],
    ).fetchall():
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.Identifier(table), sql.Identifier(name)))
        restore.append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(table), sql.Identifier(name), sql.SQL(definition)
            )
        )
    for schema, name, definition in conn.execute(
        """SELECT n.nspname::text, c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
           JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE i.indrelid = %s::regclass AND NOT i.indisprimary
             AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
           ORDER BY 2""",
        [relation],
    ).fetchall():
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
        restore.append(sql.SQL(definition))
    return restore


def _copy_table(conn: psycopg.Connection[Any], table: str, table_rows: Iterable[rows.Row], bar: Progress) -> int:
    columns = rows.COLUMNS[table]
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(column) for column in columns)
    )
    written = 0
    with pg.translated(f"loading {table}"), conn.transaction(), conn.cursor() as cur:
        restore = _defer_constraints(conn, table)
        types = _copy_types(conn, table, columns)
        with cur.copy(statement) as copy:
            copy.set_types(types)
            for row in table_rows:
                copy.write_row(row)
                written += 1
                if written % _PROGRESS_STEP == 0:
                    bar.update(_PROGRESS_STEP)
        bar.update(written % _PROGRESS_STEP)
        for statement_to_restore in restore:
            cur.execute(statement_to_restore)
        key = PRIMARY_KEYS[table]
        if len(key) == 1:  # identity columns continue after the generated ids
            cur.execute(
                sql.SQL("SELECT setval(pg_get_serial_sequence(%s, %s), greatest(max({}), 1)) FROM {}").format(
                    sql.Identifier(key[0]), sql.Identifier(table)
                ),
                [table, key[0]],
            )
    return written


def load(conn: psycopg.Connection[Any], *, seed: int, counts: Counts, replace: bool = False) -> list[TableLoad]:
    """Generate and load every table; returns rows and seconds per table."""
    _refuse_non_empty(conn, replace)
    plan = planned_rows(seed, counts)
    expected = counts.as_dict()
    report = []
    with track("generate", total=counts.total, unit="rows", scale=True, logger=log) as bar:
        for table in LOAD_ORDER:
            bar.note(table)
            started = time.perf_counter()
            written = _copy_table(conn, table, plan[table], bar)
            elapsed = time.perf_counter() - started
            if written != expected[table]:
                raise AssertionError(f"{table}: generated {written} rows, planned {expected[table]}")
            report.append(TableLoad(table, written, elapsed))
            log.info(
                "loaded %s: %d rows in %.2fs",
                table,
                written,
                elapsed,
                extra={"action": "generate_table", "table": table, "rows": written},
            )
    return report

"""Capture overhead: the same statements on a table with and without the capture triggers."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.capture import install as capture
from cdc.devtools.bench.timing import timed
from cdc.infra import pg
from cdc.ledger import queries as ledger

TABLE = "cdc_bench_songs"
DDL = sql.SQL(
    """DROP TABLE IF EXISTS {t};
       CREATE TABLE {t} (song_id bigint PRIMARY KEY, album_id bigint NOT NULL, title text NOT NULL,
           duration_ms integer NOT NULL, price numeric(6,2), popularity double precision,
           explicit boolean NOT NULL DEFAULT false, added_at timestamptz NOT NULL DEFAULT now())"""
)


@dataclass(frozen=True)
class CaptureCost:
    single_plain_s: float
    single_captured_s: float
    bulk_insert_plain_s: float
    bulk_insert_captured_s: float
    bulk_update_plain_s: float
    bulk_update_captured_s: float

    @property
    def single_ratio(self) -> float:
        return self.single_captured_s / self.single_plain_s

    @property
    def bulk_insert_ratio(self) -> float:
        return self.bulk_insert_captured_s / self.bulk_insert_plain_s

    @property
    def bulk_update_ratio(self) -> float:
        return self.bulk_update_captured_s / self.bulk_update_plain_s


def _bulk_insert(conn: psycopg.Connection[Any], rows: int) -> float:
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(TABLE)))
    conn.commit()
    statement = sql.SQL(
        "INSERT INTO {} (song_id, album_id, title, duration_ms, price, popularity)"
        " SELECT g, g %% 5000, 'song ' || g, 120000 + g %% 90000, (g %% 300) / 100.0, random()"
        " FROM generate_series(1, %s) g"
    ).format(sql.Identifier(TABLE))

    def run() -> None:
        conn.execute(statement, [rows])
        conn.commit()

    return timed(run)


def _bulk_update(conn: psycopg.Connection[Any]) -> float:
    statement = sql.SQL("UPDATE {} SET duration_ms = duration_ms + 1").format(sql.Identifier(TABLE))

    def run() -> None:
        conn.execute(statement)
        conn.commit()

    return timed(run)


def _single_updates(conn: psycopg.Connection[Any], count: int, rows: int) -> float:
    statement = sql.SQL("UPDATE {} SET popularity = %s WHERE song_id = %s").format(sql.Identifier(TABLE))

    def run() -> None:
        with conn.pipeline():  # each UPDATE its own transaction (autocommit), sent without waiting
            for index in range(count):
                conn.execute(statement, [index / count, 1 + (index * 7919) % rows])

    conn.autocommit = True
    try:
        return timed(run)
    finally:
        conn.autocommit = False


def measure(dsn: str, *, rows: int = 200_000, single: int = 5_000, rounds: int = 3) -> CaptureCost:
    """Median of ``rounds`` alternating runs without and with capture (noise hits both sides alike)."""
    timings: dict[str, list[float]] = {}
    with pg.connect(dsn) as conn:
        for _ in range(rounds):
            for captured in (False, True):
                conn.execute(DDL.format(t=sql.Identifier(TABLE)))
                conn.commit()
                if captured:
                    capture.install(conn, [TABLE])
                label = "captured" if captured else "plain"
                timings.setdefault(f"bulk_insert_{label}", []).append(_bulk_insert(conn, rows))
                timings.setdefault(f"bulk_update_{label}", []).append(_bulk_update(conn))
                timings.setdefault(f"single_{label}", []).append(_single_updates(conn, single, rows))
                if captured:
                    ledger.discard_outbox(conn)
                    conn.commit()
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(TABLE)))
        capture.forget_tables(conn, [TABLE])
        conn.commit()
    median = {name: statistics.median(values) for name, values in timings.items()}
    return CaptureCost(
        median["single_plain"],
        median["single_captured"],
        median["bulk_insert_plain"],
        median["bulk_insert_captured"],
        median["bulk_update_plain"],
        median["bulk_update_captured"],
    )

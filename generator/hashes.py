"""Content hashes of the Orininu tables, for comparing two databases row for row."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from cdc.demo import orininu
from cdc.infra import pg
from generator.load import PRIMARY_KEYS


def table_hashes(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, str]]:
    """Per table: row count and the md5 of every row's text form in primary-key order."""
    hashes = {}
    for table in orininu.TABLES:
        order = sql.SQL(", ").join(sql.Identifier(column) for column in PRIMARY_KEYS[table])
        statement = sql.SQL(
            "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY {})), '') FROM {} AS t"
        ).format(order, sql.Identifier(table))
        with pg.translated(f"hashing {table}"):
            row = conn.execute(statement).fetchone()
        assert row is not None
        hashes[table] = (int(row[0]), str(row[1]))
    return hashes

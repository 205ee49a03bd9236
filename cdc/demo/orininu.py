"""The Orininu reference schema: apply ``schema/DDL.sql`` and run the ``schema/DQL.sql`` checks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg

from cdc.infra import pg, sqlfiles

log = logging.getLogger(__name__)

TABLES = ("users", "artists", "albums", "songs", "user_interaction", "playlists", "playlist_songs")
# Serialises concurrent `schema apply` runs (CREATE ... IF NOT EXISTS is not race-free).
_APPLY_LOCK_KEY = 0x0121_1100


@dataclass(frozen=True)
class QueryResult:
    name: str
    kind: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    @property
    def problems(self) -> int:
        """For a check, the number of offending rows it counted."""
        return int(self.rows[0][0]) if self.kind == "check" and self.rows else 0


@dataclass(frozen=True)
class CheckReport:
    results: tuple[QueryResult, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> tuple[QueryResult, ...]:
        return tuple(result for result in self.results if result.problems)

    def lines(self) -> list[str]:
        """The report as `cdc schema check` and the demo print it: a verdict per check, rows per report."""
        lines = []
        for result in self.results:
            if result.kind == "check":
                verdict = "ok" if not result.problems else f"FAILED ({result.problems} rows)"
                lines.append(f"check  {result.name:<32} {verdict}")
            else:
                lines.append(f"report {result.name}: " + ", ".join(result.columns))
                lines += ["         " + " | ".join(str(value) for value in row) for row in result.rows]
        return lines


def apply(conn: psycopg.Connection[Any]) -> None:
    """Create the Orininu types, tables and indexes; idempotent."""
    with pg.translated("applying schema/DDL.sql"), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_APPLY_LOCK_KEY])
        conn.execute(sqlfiles.script("DDL.sql").encode())
    log.info("schema applied", extra={"action": "schema_apply"})


def check(conn: psycopg.Connection[Any]) -> CheckReport:
    """Run every named query of ``schema/DQL.sql``, in file order, in one read-only snapshot."""
    results = []
    with pg.translated("running schema/DQL.sql"), conn.transaction(), conn.cursor() as cur:
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for query in sqlfiles.queries("DQL.sql").values():
            cur.execute(query.text.encode())
            columns = tuple(column.name for column in cur.description or ())
            results.append(QueryResult(query.name, query.kind, columns, tuple(cur.fetchall())))
    return CheckReport(tuple(results))

"""The validation queries of schema/DQL.sql, answered by MongoDB aggregation pipelines, and compared.

The seed's "MongoDB queries returning expected results", made checkable: each report query that
has a MongoDB equivalent runs on both sides and the answers must be equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
from pymongo.database import Database

from cdc import pg, sqlfiles

PIPELINES: dict[str, tuple[str, list[dict[str, Any]]]] = {
    # name: (collection, pipeline) giving rows shaped like the SQL query's
    "top_songs": (
        "user_interaction",
        [
            {"$match": {"kind": "play"}},
            {"$group": {"_id": "$song_id", "plays": {"$sum": 1}}},
            {"$lookup": {"from": "songs", "localField": "_id", "foreignField": "_id", "as": "song"}},
            {"$unwind": "$song"},
            {"$sort": {"plays": -1, "_id": 1}},
            {"$limit": 5},
            {"$project": {"_id": 0, "song_id": "$_id", "title": "$song.title", "plays": 1}},
        ],
    ),
    "plays_per_user": (
        "user_interaction",
        [
            {"$match": {"kind": "play"}},
            {"$group": {"_id": "$user_id", "plays": {"$sum": 1}}},
            # the sum, not $avg: a double average rounds differently from PostgreSQL's exact numeric one
            {"$group": {"_id": None, "users": {"$sum": 1}, "plays": {"$sum": "$plays"}, "max": {"$max": "$plays"}}},
        ],
    ),
}


@dataclass(frozen=True)
class DqlComparison:
    name: str
    postgres: list[tuple[Any, ...]]
    mongodb: list[tuple[Any, ...]]

    @property
    def equal(self) -> bool:
        return self.postgres == self.mongodb


def _mongo_rows(name: str, documents: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    if name == "top_songs":
        return [(int(d["song_id"]), d["title"], int(d["plays"])) for d in documents]
    if not documents:
        return [(0, Decimal("0"), 0)]
    only = documents[0]
    # PostgreSQL's round(numeric, 2) rounds half away from zero: round(21.005, 2) is 21.01
    average = (Decimal(int(only["plays"])) / Decimal(int(only["users"]))).quantize(Decimal("0.01"), ROUND_HALF_UP)
    return [(int(only["users"]), average, int(only["max"]))]


def compare(conn: psycopg.Connection[Any], database: Database[Any]) -> list[DqlComparison]:
    """Run every query that has a pipeline on both sides (Orininu tables must be captured)."""
    queries = sqlfiles.queries("DQL.sql")
    found = []
    for name, (collection, pipeline) in PIPELINES.items():
        with pg.translated(f"running DQL {name}"):
            postgres = [tuple(row) for row in conn.execute(queries[name].text.encode()).fetchall()]
        conn.commit()
        if name == "top_songs":
            postgres = [(int(r[0]), r[1], int(r[2])) for r in postgres]
        else:
            postgres = [(int(r[0]), Decimal(r[1]), int(r[2])) for r in postgres]
        mongodb = _mongo_rows(name, list(database[collection].aggregate(pipeline)))
        found.append(DqlComparison(name, postgres, mongodb))
    return found

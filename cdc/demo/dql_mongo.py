"""The validation queries of schema/DQL.sql, answered by MongoDB aggregation pipelines, and compared.

The seed's "MongoDB queries returning expected results", made checkable: each report query that
has a MongoDB equivalent runs on both sides and the answers must be equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
from pymongo.database import Database

from cdc.capture.tables import TableInfo
from cdc.infra import pg, sqlfiles

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


def applies(conn: psycopg.Connection[Any], tables: Sequence[TableInfo]) -> bool:
    """Whether the verified tables are the Orininu ones the pipelines read, as table mirrors."""
    del conn
    return {"songs", "user_interaction"} <= {table.name for table in tables if table.collection == table.name}


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


def document_questions(conn: psycopg.Connection[Any], database: Database[Any]) -> list[DqlComparison]:
    """A few Orininu questions answered with plain finds on the document model, and in SQL."""
    found = []
    with pg.translated("asking the document questions"):
        first = conn.execute("SELECT min(playlist_id) FROM playlists").fetchone()
        playlist = first[0] if first else None
        sql_tracks = conn.execute(
            "SELECT ps.song_id, s.title, a.name FROM playlist_songs ps JOIN songs s USING (song_id)"
            " JOIN artists a ON a.artist_id = s.artist_id WHERE ps.playlist_id = %s AND ps.position <= 500"
            " ORDER BY ps.position",
            [playlist],
        ).fetchall()
        top_artist = conn.execute(
            "SELECT artist_id FROM albums GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
        ).fetchone()
        artist = top_artist[0] if top_artist else None
        sql_albums = conn.execute(
            "SELECT album_id, title FROM albums WHERE artist_id = %s ORDER BY album_id", [artist]
        ).fetchall()
        sql_song = conn.execute(
            "SELECT s.song_id, s.title, al.title, a.name FROM songs s JOIN albums al USING (album_id)"
            " JOIN artists a ON a.artist_id = s.artist_id ORDER BY s.song_id LIMIT 5"
        ).fetchall()
    conn.commit()
    document = database["playlists"].find_one({"_id": playlist}) or {}
    found.append(
        DqlComparison(
            "a playlist's songs in order",
            [tuple(row) for row in sql_tracks],
            [(int(e["song_id"]), e["song"]["title"], e["song"]["artist"]["name"]) for e in document.get("songs", [])],
        )
    )
    albums = database["albums"].find({"artist.artist_id": artist}, {"title": 1}).sort("_id", 1)
    found.append(
        DqlComparison(
            "an artist's albums", [tuple(r) for r in sql_albums], [(int(d["_id"]), d["title"]) for d in albums]
        )
    )
    songs = database["songs"].find({}, {"title": 1, "album.title": 1, "artist.name": 1}).sort("_id", 1).limit(5)
    found.append(
        DqlComparison(
            "songs with album and artist",
            [tuple(r) for r in sql_song],
            [(int(d["_id"]), d["title"], d["album"]["title"], d["artist"]["name"]) for d in songs],
        )
    )
    return found

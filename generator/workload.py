"""A live mix of inserts, updates and deletes over the Orininu tables, at a target change rate.

Single-row plays, new users, playlist edits (add, remove with renumbering, swaps that lean on the
deferred unique position), price changes, preference edits, new albums in multi-statement
transactions, bulk statements (plays, listener counts), deletes that cascade (playlists, users),
and a side connection that keeps a transaction open for seconds while others commit. Ids are
picked among rows that exist; a picked row deleted in between turns the statement into a no-op,
so foreign keys stay valid without the workload ever failing on them.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cdc.infra import pg
from generator.pools import GENRES, HOSTILE_TEXT

log = logging.getLogger(__name__)

Op = Callable[[psycopg.Connection[Any]], int]


@dataclass
class WorkloadStats:
    changes: int = 0
    transactions: int = 0
    failures: int = 0
    seconds: float = 0.0
    by_operation: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.changes / self.seconds if self.seconds > 0 else 0.0


class Workload:
    def __init__(
        self,
        dsn: str,
        *,
        rate: float,
        duration: float | None,
        seed: int = 1,
        long_transactions: bool = True,
        stop: threading.Event | None = None,
    ) -> None:
        self.dsn = dsn
        self.rate = rate
        self.duration = duration
        self.rng = random.Random(f"{seed}:workload")
        self.run_id = uuid.uuid4().hex[:8]  # unique names across runs with the same seed
        self.long_transactions = long_transactions
        self.stats = WorkloadStats()
        self.stop = threading.Event()  # ends the main loop and the side thread (set when ``run`` ends)
        self._requested = stop  # the caller's stop request (a signal, say), only read
        self._lock = threading.Lock()
        self._counter = 0
        self.max_ids: dict[str, int] = {}
        self.bulk_size = max(10, min(2_000, int(rate)))
        self.operations: list[tuple[str, int, Op]] = [
            ("play", 40, self.play),
            ("like_or_skip", 10, self.like_or_skip),
            ("new_user", 5, self.new_user),
            ("update_preferences", 5, self.update_preferences),
            ("playlist_add", 8, self.playlist_add),
            ("playlist_remove", 4, self.playlist_remove),
            ("playlist_swap", 4, self.playlist_swap),
            ("new_playlist", 3, self.new_playlist),
            ("delete_playlist", 2, self.delete_playlist),
            ("price_change", 3, self.price_change),
            ("rename_song", 2, self.rename_song),
            ("new_album", 2, self.new_album),
            ("delete_user", 1, self.delete_user),
            ("bulk_plays", 1, self.bulk_plays),
            ("bulk_listeners", 1, self.bulk_listeners),
        ]

    # ---- helpers ------------------------------------------------------------------------------
    def _next(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _pick(self, table: str) -> int:
        return self.rng.randint(1, max(1, self.max_ids.get(table, 1)))

    def _count(self, name: str, changes: int) -> None:
        with self._lock:
            self.stats.changes += changes
            self.stats.transactions += 1
            self.stats.by_operation[name] += changes

    def _read_max_ids(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(
            """SELECT (SELECT coalesce(max(user_id), 0) FROM users),
                      (SELECT coalesce(max(artist_id), 0) FROM artists),
                      (SELECT coalesce(max(album_id), 0) FROM albums),
                      (SELECT coalesce(max(song_id), 0) FROM songs),
                      (SELECT coalesce(max(playlist_id), 0) FROM playlists)"""
        ).fetchone()
        conn.commit()
        assert row is not None
        self.max_ids = dict(zip(("users", "artists", "albums", "songs", "playlists"), row, strict=True))
        if not (self.max_ids["users"] and self.max_ids["songs"] and self.max_ids["artists"]):
            from cdc.infra.errors import UsageError  # noqa: PLC0415

            raise UsageError("the workload needs data: run `cdc generate` first")

    # ---- operations: each runs in its own transaction and returns the rows it changed ----------
    def play(self, conn: psycopg.Connection[Any]) -> int:
        cur = conn.execute(
            """INSERT INTO user_interaction (user_id, song_id, kind, occurred_at, played_ms, device)
               SELECT u.user_id, s.song_id, 'play', clock_timestamp(), (s.duration_ms * %s)::int, %s
               FROM users u, songs s WHERE u.user_id = %s AND s.song_id = %s""",
            [self.rng.uniform(0.3, 1.0), self.rng.choice(("ios", "android", "web")), self._pick("users"),
             self._pick("songs")],
        )  # fmt: skip
        return cur.rowcount

    def like_or_skip(self, conn: psycopg.Connection[Any]) -> int:
        kind = self.rng.choice(("like", "skip"))
        cur = conn.execute(
            """INSERT INTO user_interaction (user_id, song_id, kind, occurred_at, played_ms, rating)
               SELECT u.user_id, s.song_id, %s::interaction_kind, clock_timestamp(),
                      CASE WHEN %s = 'skip' THEN least(s.duration_ms, 15000) END,
                      CASE WHEN %s = 'like' THEN 5 END
               FROM users u, songs s WHERE u.user_id = %s AND s.song_id = %s""",
            [kind, kind, kind, self._pick("users"), self._pick("songs")],
        )
        return cur.rowcount

    def new_user(self, conn: psycopg.Connection[Any]) -> int:
        name = f"live.{self.run_id}.{self._next()}"
        full_name = self.rng.choice(HOSTILE_TEXT) if self.rng.random() < 0.1 else f"Live User {name}"
        row = conn.execute(
            """INSERT INTO users (username, email, full_name, country, is_premium, preferences)
               VALUES (%s, %s, %s, %s, %s, %s) RETURNING user_id""",
            [name, f"{name}@orininu.example", full_name, self.rng.choice(("US", "BR", "JP", None)),
             self.rng.random() < 0.3, Jsonb({"theme": "dark", "onboarded": True})],
        ).fetchone()  # fmt: skip
        assert row is not None
        self.max_ids["users"] = max(self.max_ids["users"], int(row[0]))
        return 1

    def update_preferences(self, conn: psycopg.Connection[Any]) -> int:
        cur = conn.execute(
            """UPDATE users SET preferences = jsonb_set(preferences, '{volume}', to_jsonb(%s::numeric)),
                               is_premium = NOT is_premium
               WHERE user_id = %s""",
            [Decimal(self.rng.randint(0, 100)) / 100, self._pick("users")],
        )
        return cur.rowcount

    def playlist_add(self, conn: psycopg.Connection[Any]) -> int:
        cur = conn.execute(
            """INSERT INTO playlist_songs (playlist_id, song_id, position)
               SELECT p.playlist_id, s.song_id,
                      1 + coalesce(
                          (SELECT max(position) FROM playlist_songs WHERE playlist_id = p.playlist_id), 0)
               FROM playlists p, songs s WHERE p.playlist_id = %s AND s.song_id = %s
               FOR UPDATE OF p
               ON CONFLICT (playlist_id, song_id) DO NOTHING""",
            [self._pick("playlists"), self._pick("songs")],
        )
        return cur.rowcount

    def playlist_remove(self, conn: psycopg.Connection[Any]) -> int:
        playlist_id = self._pick("playlists")
        conn.execute("SELECT 1 FROM playlists WHERE playlist_id = %s FOR UPDATE", [playlist_id])
        removed = conn.execute(
            """DELETE FROM playlist_songs WHERE (playlist_id, position) =
                 (SELECT playlist_id, position FROM playlist_songs WHERE playlist_id = %s
                  ORDER BY position LIMIT 1 OFFSET %s)
               RETURNING position""",
            [playlist_id, self.rng.randint(0, 5)],
        ).fetchone()
        if removed is None:
            return 0
        shifted = conn.execute(
            "UPDATE playlist_songs SET position = position - 1 WHERE playlist_id = %s AND position > %s",
            [playlist_id, removed[0]],
        )
        return 1 + shifted.rowcount

    def playlist_swap(self, conn: psycopg.Connection[Any]) -> int:
        playlist_id = self._pick("playlists")
        conn.execute("SELECT 1 FROM playlists WHERE playlist_id = %s FOR UPDATE", [playlist_id])
        cur = conn.execute(
            """WITH two AS (SELECT song_id, position FROM playlist_songs WHERE playlist_id = %s
                            ORDER BY position LIMIT 2)
               UPDATE playlist_songs ps
               SET position = (SELECT max(position) + min(position) FROM two) - ps.position,
                   added_at = clock_timestamp()
               FROM two WHERE ps.playlist_id = %s AND ps.song_id = two.song_id
                 AND (SELECT count(*) FROM two) = 2""",
            [playlist_id, playlist_id],
        )
        return cur.rowcount

    def new_playlist(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            """INSERT INTO playlists (user_id, name, description, is_public)
               SELECT user_id, %s, %s, %s FROM users WHERE user_id = %s RETURNING playlist_id""",
            [f"Live mix {self._next()}", self.rng.choice((None, "made live", self.rng.choice(HOSTILE_TEXT))),
             self.rng.random() < 0.7, self._pick("users")],
        ).fetchone()  # fmt: skip
        if row is None:
            return 0
        playlist_id = int(row[0])
        self.max_ids["playlists"] = max(self.max_ids["playlists"], playlist_id)
        songs = self.rng.sample(
            range(1, self.max_ids["songs"] + 1), min(self.max_ids["songs"], self.rng.randint(1, 12))
        )
        cur = conn.execute(
            """INSERT INTO playlist_songs (playlist_id, song_id, position)
               SELECT %s, s.song_id, row_number() OVER (ORDER BY ord)
               FROM unnest(%s::bigint[]) WITH ORDINALITY AS pick(song_id, ord)
               JOIN songs s USING (song_id)""",
            [playlist_id, songs],
        )
        return 1 + cur.rowcount

    def delete_playlist(self, conn: psycopg.Connection[Any]) -> int:
        playlist_id = self._pick("playlists")
        members = conn.execute("SELECT count(*) FROM playlist_songs WHERE playlist_id = %s", [playlist_id]).fetchone()
        cur = conn.execute("DELETE FROM playlists WHERE playlist_id = %s", [playlist_id])
        return cur.rowcount * (1 + (members[0] if members else 0))

    def price_change(self, conn: psycopg.Connection[Any]) -> int:
        cur = conn.execute(
            "UPDATE songs SET price = %s WHERE album_id = %s",
            [Decimal(self.rng.choice((69, 99, 129, 149, 199))) / 100, self._pick("albums")],
        )
        conn.execute(
            "UPDATE albums SET price = round(price * %s, 2) WHERE album_id = %s AND price IS NOT NULL",
            [Decimal("1.05"), self._pick("albums")],
        )
        return cur.rowcount + 1

    def rename_song(self, conn: psycopg.Connection[Any]) -> int:
        title = self.rng.choice(HOSTILE_TEXT) if self.rng.random() < 0.3 else f"Remastered {self._next()}"
        cur = conn.execute(
            "UPDATE songs SET title = %s, genres = %s WHERE song_id = %s",
            [title, self.rng.sample(GENRES, 2), self._pick("songs")],
        )
        return cur.rowcount

    def new_album(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            """INSERT INTO albums (artist_id, title, release_date, album_type, price)
               SELECT artist_id, %s, current_date, 'album', 9.99 FROM artists WHERE artist_id = %s
               RETURNING album_id, artist_id""",
            [f"Live Album {self._next()}", self._pick("artists")],
        ).fetchone()
        if row is None:
            return 0
        self.max_ids["albums"] = max(self.max_ids["albums"], int(row[0]))
        tracks = self.rng.randint(3, 12)
        inserted = conn.execute(
            """INSERT INTO songs (album_id, artist_id, title, duration_ms, track_number, genres, price,
                                  popularity, royalty_rate)
               SELECT %s, %s, 'Track ' || n, 120000 + n * 7919, n, ARRAY['pop'], 1.29, 0.5, 0.00125
               FROM generate_series(1, %s) AS n
               RETURNING song_id""",
            [row[0], row[1], tracks],
        ).fetchall()
        self.max_ids["songs"] = max(self.max_ids["songs"], *(int(r[0]) for r in inserted))
        return 1 + tracks

    def delete_user(self, conn: psycopg.Connection[Any]) -> int:
        cur = conn.execute("DELETE FROM users WHERE user_id = %s", [self._pick("users")])
        return cur.rowcount

    def bulk_plays(self, conn: psycopg.Connection[Any]) -> int:
        cur = conn.execute(
            """INSERT INTO user_interaction (user_id, song_id, kind, occurred_at, played_ms, device)
               SELECT u.user_id, s.song_id, 'play', clock_timestamp(), s.duration_ms / 2, 'car'
               FROM generate_series(1, %s) AS g
               JOIN users u ON u.user_id = 1 + (g * 7919) %% %s
               JOIN songs s ON s.song_id = 1 + (g * 104729) %% %s""",
            [self.bulk_size, self.max_ids["users"], self.max_ids["songs"]],
        )
        return cur.rowcount

    def bulk_listeners(self, conn: psycopg.Connection[Any]) -> int:
        first = self._pick("artists")
        cur = conn.execute(
            "UPDATE artists SET monthly_listeners = monthly_listeners + %s WHERE artist_id BETWEEN %s AND %s",
            [self.rng.randint(1, 1000), first, first + self.bulk_size // 20],
        )
        return cur.rowcount

    # ---- the loops -------------------------------------------------------------------------------
    def _long_transactions(self) -> None:
        """Keep a transaction open for seconds while the main loop commits around it."""
        rng = random.Random(self.rng.random())
        while not self.stop.wait(rng.uniform(2, 6)):
            try:
                with pg.connect(self.dsn) as conn:
                    with conn.transaction():
                        for _ in range(rng.randint(1, 5)):
                            self.play(conn)
                        self.stop.wait(rng.uniform(1, 4))
                    self._count("long_transaction", 1)
            except Exception as exc:  # keep the side loop alive; the main loop reports health
                log.warning("long transaction failed: %s", exc, extra={"action": "workload_failure"})

    def run(self) -> WorkloadStats:
        names = [name for name, _, _ in self.operations]
        weights = [weight for _, weight, _ in self.operations]
        ops = {name: op for name, _, op in self.operations}
        started = time.monotonic()
        side = threading.Thread(target=self._long_transactions, name="long-transactions", daemon=True)
        conn = pg.connect(self.dsn)
        try:
            self._read_max_ids(conn)
            if self.long_transactions:
                side.start()
            while not self.stop.is_set():
                if self._requested is not None and self._requested.is_set():
                    break
                elapsed = time.monotonic() - started
                if self.duration is not None and elapsed >= self.duration:
                    break
                ahead = self.stats.changes / self.rate - elapsed
                if ahead > 0:
                    self.stop.wait(min(ahead, 0.5))
                    continue
                name = self.rng.choices(names, weights)[0]
                try:
                    with conn.transaction():
                        changed = ops[name](conn)
                    self._count(name, changed)
                except psycopg.Error as exc:
                    self.stats.failures += 1
                    log.warning("%s failed: %s", name, pg.describe(exc), extra={"action": "workload_failure"})
                    if conn.closed or conn.broken:
                        conn.close()
                        time.sleep(1)
                        conn = pg.connect(self.dsn)
        finally:
            self.stop.set()
            if side.is_alive():
                side.join(timeout=10)
            with contextlib.suppress(Exception):
                conn.close()
            self.stats.seconds = time.monotonic() - started
        return self.stats

"""Deterministic rows for every Orininu table.

Each table draws from its own ``random.Random(f"{seed}:{table}")``, so one table's rows do not
depend on how another table was generated. Times are fixed in the past (no ``now()``), so the
same seed and package versions give byte-identical data on every machine.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from generator.pools import DEVICES, GENRES, HOSTILE_TEXT, LANGUAGES, THEMES, Pools, slug
from generator.sizes import Counts

UTC = dt.UTC
INTERACTIONS_START = dt.datetime(2025, 1, 1, tzinfo=UTC)
INTERACTION_DAYS = 365
# Share of plays per hour of day (UTC): quiet nights, a lunch bump, an evening peak.
HOURLY_RHYTHM = (
    2, 1, 1, 1, 1, 2, 4, 6, 7, 6, 5, 6, 8, 7, 6, 6, 7, 8, 10, 12, 12, 10, 7, 4,
)  # fmt: skip
INTERACTION_KINDS = ("play", "skip", "like", "add_to_playlist", "share")
INTERACTION_KIND_WEIGHTS = (70, 12, 10, 5, 3)
HOSTILE_RATE = 0.02
EPOCH_DAY = dt.date(1970, 1, 1)

Row = tuple[Any, ...]

COLUMNS: dict[str, tuple[str, ...]] = {
    "users": (
        "user_id", "public_id", "username", "email", "full_name", "country", "birth_date",
        "signup_at", "is_premium", "preferences",
    ),
    "artists": (
        "artist_id", "public_id", "name", "country", "genres", "formed_on", "monthly_listeners", "verified",
    ),
    "albums": ("album_id", "artist_id", "title", "release_date", "album_type", "price", "label"),
    "songs": (
        "song_id", "public_id", "album_id", "artist_id", "title", "duration_ms", "track_number",
        "explicit", "genres", "price", "popularity", "royalty_rate", "added_at",
    ),
    "user_interaction": (
        "interaction_id", "user_id", "song_id", "kind", "occurred_at", "played_ms", "device", "rating",
    ),
    "playlists": (
        "playlist_id", "public_id", "user_id", "name", "description", "is_public", "created_at", "updated_at",
    ),
    "playlist_songs": ("playlist_id", "song_id", "position", "added_at"),
}  # fmt: skip


def _already_json(text: str) -> str:
    return text


def _rng(seed: int, table: str) -> random.Random:
    return random.Random(f"{seed}:{table}")


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _instant(rng: random.Random, start: dt.datetime, span_s: float) -> dt.datetime:
    """A time in [start, start + span) with microseconds."""
    return start + dt.timedelta(microseconds=rng.randrange(int(span_s * 1_000_000)))


def _date(rng: random.Random, first: dt.date, last: dt.date) -> dt.date:
    return first + dt.timedelta(days=rng.randrange((last - first).days + 1))


def _title(rng: random.Random, pools: Pools, most: int = 4) -> str:
    if rng.random() < HOSTILE_RATE:
        return rng.choice(HOSTILE_TEXT)
    return " ".join(rng.choices(pools.words, k=rng.randint(1, most)))


def _zipf_cum_weights(count: int, exponent: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, count + 1)))


@dataclass(frozen=True)
class Catalogue:
    """What later tables need to know about earlier ones (all derived from the seed)."""

    album_artist: Sequence[int]  # index album_id - 1
    album_release: Sequence[dt.date]
    song_duration: Sequence[int]  # index song_id - 1
    song_popularity_rank: Sequence[int]  # song ids, most popular first
    playlist_created: Sequence[dt.datetime]


def users(seed: int, counts: Counts, pools: Pools) -> Iterator[Row]:
    rng = _rng(seed, "users")
    for user_id in range(1, counts.users + 1):
        first, last = rng.choice(pools.first_names), rng.choice(pools.last_names)
        username = f"{slug(first)}.{slug(last)}{user_id}"
        full_name: str | None = f"{first} {last}"
        roll = rng.random()
        if roll < 0.03:
            full_name = None
        elif roll < 0.03 + HOSTILE_RATE:
            full_name = rng.choice(HOSTILE_TEXT)
        preferences: dict[str, Any] = {
            "theme": rng.choice(THEMES),
            "language": rng.choice(LANGUAGES),
            "autoplay": rng.random() < 0.7,
            "volume": round(rng.random(), 2),
            "favorite_genres": rng.sample(GENRES, rng.randint(0, 4)),
            "notifications": {"email": rng.random() < 0.5, "push": rng.random() < 0.8},
        }
        if rng.random() < 0.01:  # keys a naive MongoDB import rejects or misreads
            preferences["$legacy"] = {"ui.density": "compact", "bitrate.kbps": 320}
        yield (
            user_id,
            _uuid(rng),
            username,
            f"{username}@{rng.choice(pools.domains)}",
            full_name,
            None if rng.random() < 0.05 else rng.choice(pools.countries),
            None if rng.random() < 0.1 else _date(rng, dt.date(1940, 1, 1), dt.date(2010, 12, 31)),
            _instant(rng, dt.datetime(2015, 1, 1, tzinfo=UTC), 10 * 365 * 86400),
            rng.random() < 0.3,
            Jsonb(orjson.dumps(preferences).decode(), dumps=_already_json),
        )


def artists(seed: int, counts: Counts, pools: Pools) -> Iterator[Row]:
    rng = _rng(seed, "artists")
    for artist_id in range(1, counts.artists + 1):
        if rng.random() < 0.5:
            name = f"The {rng.choice(pools.words)} {rng.choice(pools.words)}s"
        else:
            name = f"{rng.choice(pools.first_names)} {rng.choice(pools.last_names)}"
        if rng.random() < HOSTILE_RATE * 1.5:
            name = rng.choice(HOSTILE_TEXT)
        # the top artists pass 2^31 listeners, so bigint is really exercised
        listeners = int(3_000_000_000 / artist_id**1.3) + rng.randrange(1000)
        yield (
            artist_id,
            _uuid(rng),
            name,
            None if rng.random() < 0.1 else rng.choice(pools.countries),
            rng.sample(GENRES, rng.randint(1, 3)),
            None if rng.random() < 0.2 else _date(rng, dt.date(1960, 1, 1), dt.date(2022, 12, 31)),
            listeners,
            rng.random() < 0.4,
        )


def _spread(rng: random.Random, items: int, owners: int) -> list[int]:
    """Assign ``items`` to ``owners`` (1-based): every owner gets one, the rest at random; sorted."""
    assigned = list(range(1, owners + 1)) + [rng.randint(1, owners) for _ in range(items - owners)]
    assigned.sort()
    return assigned


def albums(seed: int, counts: Counts, pools: Pools) -> Iterator[Row]:
    rng = _rng(seed, "albums")
    owners = _spread(rng, counts.albums, counts.artists)
    for album_id, artist_id in enumerate(owners, start=1):
        album_type = rng.choices(("album", "single", "ep", "compilation"), (60, 25, 10, 5))[0]
        price = None if album_type == "single" and rng.random() < 0.5 else Decimal(rng.randint(499, 1999)) / 100
        yield (
            album_id,
            artist_id,
            _title(rng, pools),
            _date(rng, dt.date(1990, 1, 1), dt.date(2024, 6, 30)),
            album_type,
            price,
            None if rng.random() < 0.15 else rng.choice(pools.labels),
        )


def catalogue(album_rows: Sequence[Row], song_rows: Sequence[Row], playlist_rows: Sequence[Row]) -> Catalogue:
    """What interactions and playlist entries need from the albums, songs and playlists."""
    popularity = COLUMNS["songs"].index("popularity")
    ranked = sorted(range(1, len(song_rows) + 1), key=lambda song_id: -song_rows[song_id - 1][popularity])
    return Catalogue(
        album_artist=[row[1] for row in album_rows],
        album_release=[row[3] for row in album_rows],
        song_duration=[row[5] for row in song_rows],
        song_popularity_rank=ranked,
        playlist_created=[row[6] for row in playlist_rows],
    )


def songs(seed: int, counts: Counts, pools: Pools, album_rows: Sequence[Row]) -> Iterator[Row]:
    rng = _rng(seed, "songs")
    album_of_song = _spread(rng, counts.songs, counts.albums)
    popularity_weights = _zipf_cum_weights(counts.songs, 1.07)
    top_weight = popularity_weights[0]
    ranks = list(range(counts.songs))
    rng.shuffle(ranks)
    track = 0
    previous_album = 0
    for song_id, album_id in enumerate(album_of_song, start=1):
        track = track + 1 if album_id == previous_album else 1
        previous_album = album_id
        album = album_rows[album_id - 1]
        duration = min(900_000, max(30_000, int(rng.gauss(215_000, 60_000))))
        rank = ranks[song_id - 1] + 1
        popularity = 100.0 * (1.0 / rank**1.07) / top_weight
        if rng.random() < 0.01:  # more digits than Decimal128 carries
            royalty = Decimal("0." + "".join(str(rng.randrange(10)) for _ in range(40)) + "1")
        else:
            royalty = Decimal(rng.randrange(1, 1_000_000)) / 10_000_000
        release = dt.datetime.combine(album[3], dt.time(), tzinfo=UTC)
        yield (
            song_id,
            _uuid(rng),
            album_id,
            album[1],
            _title(rng, pools, most=5),
            duration,
            track,
            rng.random() < 0.15,
            None if rng.random() < 0.1 else rng.sample(GENRES, rng.randint(1, 2)),
            None if rng.random() < 0.05 else Decimal(rng.choice((69, 99, 129, 149))) / 100,
            popularity,
            royalty,
            _instant(rng, release, 30 * 86400),
        )


def user_interaction(seed: int, counts: Counts, catalogue: Catalogue) -> Iterator[Row]:
    rng = _rng(seed, "user_interaction")
    count = counts.user_interaction
    song_ids = rng.choices(catalogue.song_popularity_rank, cum_weights=_zipf_cum_weights(counts.songs, 1.07), k=count)
    user_order = list(range(1, counts.users + 1))
    rng.shuffle(user_order)
    user_ids = rng.choices(user_order, cum_weights=_zipf_cum_weights(counts.users, 0.8), k=count)
    kinds = rng.choices(INTERACTION_KINDS, INTERACTION_KIND_WEIGHTS, k=count)
    hours = rng.choices(range(24), HOURLY_RHYTHM, k=count)
    offsets = sorted(
        (rng.randrange(INTERACTION_DAYS) * 86400 + hour * 3600) * 1_000_000 + rng.randrange(3_600_000_000)
        for hour in hours
    )
    for index in range(count):
        song_id, kind = song_ids[index], kinds[index]
        duration = catalogue.song_duration[song_id - 1]
        played: int | None = None
        rating: int | None = None
        if kind == "play":
            played = rng.randint(duration * 3 // 10, duration)
        elif kind == "skip":
            played = rng.randint(0, min(30_000, duration))
        elif kind == "like":
            rating = rng.choice((4, 5, 5))
        elif rng.random() < 0.05:
            rating = rng.randint(1, 5)
        yield (
            index + 1,
            user_ids[index],
            song_id,
            kind,
            INTERACTIONS_START + dt.timedelta(microseconds=offsets[index]),
            played,
            None if rng.random() < 0.05 else rng.choice(DEVICES),
            rating,
        )


def playlists(seed: int, counts: Counts, pools: Pools) -> Iterator[Row]:
    rng = _rng(seed, "playlists")
    for playlist_id in range(1, counts.playlists + 1):
        created = _instant(rng, dt.datetime(2020, 1, 1, tzinfo=UTC), 5 * 365 * 86400)
        roll = rng.random()
        description: str | None = None
        if roll < 0.005:
            description = pools.long_text
        elif roll < 0.005 + HOSTILE_RATE:
            description = rng.choice(HOSTILE_TEXT)
        elif roll < 0.6:
            description = rng.choice(pools.sentences)
        updated = None if rng.random() < 0.4 else created + dt.timedelta(microseconds=rng.randrange(10**13))
        yield (
            playlist_id,
            _uuid(rng),
            rng.randint(1, counts.users),
            _title(rng, pools, most=3),
            description,
            rng.random() < 0.7,
            created,
            updated,
        )


def playlist_lengths(rng: random.Random, counts: Counts) -> list[int]:
    """Varied lengths (log-normal) summing exactly to ``counts.playlist_songs``, each ≤ songs."""
    cap = min(counts.songs, 500)
    raw = [rng.lognormvariate(2.3, 0.9) for _ in range(counts.playlists)]
    scale = counts.playlist_songs / sum(raw)
    lengths = [min(cap, int(value * scale)) for value in raw]
    shortfall = counts.playlist_songs - sum(lengths)
    index = 0
    while shortfall > 0:  # hand out the remainder round-robin, respecting the cap
        if lengths[index] < cap:
            lengths[index] += 1
            shortfall -= 1
        index = (index + 1) % len(lengths)
    return lengths


def playlist_songs(seed: int, counts: Counts, catalogue: Catalogue) -> Iterator[Row]:
    rng = _rng(seed, "playlist_songs")
    lengths = playlist_lengths(rng, counts)
    for playlist_id, length in enumerate(lengths, start=1):
        created = catalogue.playlist_created[playlist_id - 1]
        for position, song_id in enumerate(rng.sample(range(1, counts.songs + 1), length), start=1):
            yield (playlist_id, song_id, position, created + dt.timedelta(microseconds=rng.randrange(10**12)))

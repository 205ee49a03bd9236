"""Row counts per table for each named scale (``--scale tiny|small|medium|large`` or a multiplier)."""

from __future__ import annotations

from dataclasses import dataclass

from cdc.infra.errors import UsageError

# Rows per table at multiplier 1.0 ("small").
BASE_COUNTS = {
    "users": 2_000,
    "artists": 300,
    "albums": 900,
    "songs": 9_000,
    "user_interaction": 60_000,
    "playlists": 2_500,
    "playlist_songs": 30_000,
}
NAMED_SCALES = {"tiny": 0.02, "small": 1.0, "medium": 10.0, "large": 50.0}


@dataclass(frozen=True)
class Counts:
    users: int
    artists: int
    albums: int
    songs: int
    user_interaction: int
    playlists: int
    playlist_songs: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    @property
    def total(self) -> int:
        return sum(self.__dict__.values())


def parse_scale(text: str) -> float:
    """A named scale or a positive multiplier."""
    if text in NAMED_SCALES:
        return NAMED_SCALES[text]
    try:
        multiplier = float(text)
    except ValueError:
        multiplier = 0.0
    if not 0 < multiplier <= 1000:
        names = ", ".join(NAMED_SCALES)
        raise UsageError(f"--scale must be one of {names} or a multiplier in (0, 1000], not {text!r}")
    return multiplier


def counts_for(multiplier: float) -> Counts:
    """Row counts at ``multiplier``: at least 1 per table, enough songs and playlist rows to be valid."""
    raw = {table: max(1, round(count * multiplier)) for table, count in BASE_COUNTS.items()}
    raw["albums"] = max(raw["albums"], raw["artists"])  # every artist has an album
    raw["songs"] = max(raw["songs"], raw["albums"])  # every album has a song
    # a playlist holds distinct songs
    raw["playlist_songs"] = min(raw["playlist_songs"], raw["playlists"] * raw["songs"])
    return Counts(**raw)

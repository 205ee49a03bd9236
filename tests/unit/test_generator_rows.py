"""Pure checks of the generated rows (no database): determinism, validity, realism, hostile values."""

import datetime as dt
import itertools
import random
from collections import Counter, defaultdict
from decimal import Decimal

import pytest

from cdc.infra.errors import UsageError
from generator import load, rows
from generator.sizes import BASE_COUNTS, NAMED_SCALES, counts_for, parse_scale


@pytest.fixture(scope="module")
def small():
    counts = counts_for(NAMED_SCALES["small"])
    plan = load.planned_rows(11, counts)
    return counts, {table: list(table_rows) for table, table_rows in plan.items()}


def test_scales():
    assert parse_scale("medium") == 10.0
    assert parse_scale("0.5") == 0.5
    for bad in ("huge", "0", "-1", "nan"):
        with pytest.raises(UsageError):
            parse_scale(bad)
    assert counts_for(10).total >= 1_000_000  # "medium" is at least a million rows
    assert counts_for(1).as_dict() == BASE_COUNTS


def test_counts_are_exact(small):
    counts, data = small
    assert {table: len(table_rows) for table, table_rows in data.items()} == counts.as_dict()


def test_same_seed_same_rows_and_other_seed_differs():
    counts = counts_for(0.02)
    first = {table: list(r) for table, r in load.planned_rows(5, counts).items()}
    again = {table: list(r) for table, r in load.planned_rows(5, counts).items()}
    other = {table: list(r) for table, r in load.planned_rows(6, counts).items()}
    assert repr(first) == repr(again)
    assert first["users"] != other["users"]


def test_foreign_keys_are_valid(small):
    _, data = small
    ids = {table: {row[0] for row in data[table]} for table in ("users", "artists", "albums", "songs", "playlists")}
    assert all(row[1] in ids["artists"] for row in data["albums"])
    assert all(row[2] in ids["albums"] and row[3] in ids["artists"] for row in data["songs"])
    assert all(row[1] in ids["users"] and row[2] in ids["songs"] for row in data["user_interaction"])
    assert all(row[2] in ids["users"] for row in data["playlists"])
    assert all(row[0] in ids["playlists"] and row[1] in ids["songs"] for row in data["playlist_songs"])


def test_plays_fit_the_song_and_follow_its_release(small):
    _, data = small
    duration = {row[0]: row[5] for row in data["songs"]}
    album_release = {row[0]: row[3] for row in data["albums"]}
    song_album = {row[0]: row[2] for row in data["songs"]}
    for row in data["user_interaction"]:
        if row[5] is not None:
            assert 0 <= row[5] <= duration[row[2]]
        assert row[4].date() > album_release[song_album[row[2]]]
    times = [row[4] for row in data["user_interaction"]]
    assert times == sorted(times)  # a time series, ids in time order


def test_daily_rhythm_and_popularity_skew(small):
    _, data = small
    by_hour = Counter(row[4].hour for row in data["user_interaction"])
    assert by_hour[20] > 3 * by_hour[3]  # evening peak, quiet night
    plays = Counter(row[2] for row in data["user_interaction"])
    top_1_percent = sum(count for _, count in plays.most_common(len(data["songs"]) // 100))
    assert top_1_percent > 0.2 * len(data["user_interaction"])  # Zipf-like


def test_playlists_have_positions_one_to_n_and_distinct_songs(small):
    _, data = small
    positions = defaultdict(list)
    songs = defaultdict(set)
    for playlist_id, song_id, position, _ in data["playlist_songs"]:
        positions[playlist_id].append(position)
        assert song_id not in songs[playlist_id]
        songs[playlist_id].add(song_id)
    for found in positions.values():
        assert sorted(found) == list(range(1, len(found) + 1))
    lengths = [len(found) for found in positions.values()]
    assert max(lengths) > 5 * (sum(lengths) / len(lengths))  # varied, with long ones


def test_playlist_lengths_sum_exactly_and_respect_the_cap():
    counts = counts_for(0.02)
    lengths = rows.playlist_lengths(random.Random(3), counts)
    assert sum(lengths) == counts.playlist_songs
    assert max(lengths) <= counts.songs


def test_hostile_values_are_present(small):
    _, data = small
    text_values = [value for row in itertools.chain(*data.values()) for value in row if isinstance(value, str)]
    assert any("東京" in value for value in text_values)
    assert any("🎶" in value for value in text_values)
    assert any("مرحبا" in value for value in text_values)
    assert any("'" in value and '"' in value for value in text_values)
    assert any(len(value) > 10_000 for value in text_values)
    assert any(row[4] is None for row in data["users"])  # NULL where nullable
    royalties = [row[11] for row in data["songs"]]
    assert any(isinstance(value, Decimal) and len(value.as_tuple().digits) > 34 for value in royalties)
    assert any('"$legacy"' in row[9].obj for row in data["users"])
    assert any(isinstance(row[7], dt.datetime) and row[7].microsecond % 1000 for row in data["users"])
    assert max(row[6] for row in data["artists"]) > 2**31  # bigint beyond int32

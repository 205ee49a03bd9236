"""`cdc snapshot` interrupted (SIGKILL at a page, SIGINT while a page waits, SIGKILL while applying)
says what is left, and a re-run continues it instead of enqueueing every key again."""

import re
import signal
import time

import psycopg
import pytest

from cdc.export import snapshot
from tests.fix_cli import start_cdc

ORININU = ("users", "artists", "albums", "songs", "user_interaction", "playlists", "playlist_songs")


@pytest.fixture
def env(dbs, cdc, tmp_path):
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_DATA_DIR": str(tmp_path / "data")}
    return env


def _prepare(cdc, env, scale="tiny"):
    for args in (("generate", "--scale", scale), ("install",)):
        result = cdc(*args, env=env)
        assert result.returncode == 0, result.stderr


def _progress(env):
    with psycopg.connect(env["CDC_PG_DSN"]) as conn:
        rows = conn.execute(
            "SELECT c.table_name, p.keys, p.done, p.last_key, p.mode FROM cdc.snapshot_progress p"
            " JOIN cdc.captured c ON c.relid = p.relid ORDER BY c.table_name"
        ).fetchall()
    return {name: (keys, done, last_key, mode) for name, keys, done, last_key, mode in rows}


def _rows(env, tables=ORININU):
    with psycopg.connect(env["CDC_PG_DSN"]) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in tables)


def _enqueued(stdout):
    found = re.search(r"snapshot: (\d+) rows of (\d+) collections enqueued", stdout)
    assert found, stdout
    return int(found.group(1))


def _verify(cdc, env, *args):
    result = cdc("verify", *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_composite_key_table_killed_after_its_first_page_continues_after_its_last_key(env, cdc):
    _prepare(cdc, env, scale="0.2")  # playlist_songs: 6,000 rows, two pages of 5,000
    crashed = cdc(
        "snapshot",
        "--collections",
        "playlist_songs",
        env={**env, "CDC_FAULT_POINT": "snapshot_chunk", "CDC_FAULT_AFTER": "1"},
    )
    assert crashed.returncode == -9
    progress = _progress(env)
    assert set(progress) == {"playlist_songs"}
    keys, done, last_key, mode = progress["playlist_songs"]
    assert (keys, done, mode) == (snapshot.CHUNK, False, "apply")
    assert last_key.startswith("(")  # a composite key's text
    again = cdc("snapshot", "--collections", "playlist_songs", env=env)
    assert again.returncode == 0, again.stderr
    assert "continuing the snapshot interrupted" in again.stderr
    assert _enqueued(again.stdout) == _rows(env, ["playlist_songs"]) - snapshot.CHUNK
    assert _progress(env) == {}, "a finished snapshot leaves no record"
    _verify(cdc, env, "--tables", "playlist_songs")
    # a snapshot after a finished one starts over
    fresh = cdc("snapshot", "--collections", "playlist_songs", env=env)
    assert fresh.returncode == 0, fresh.stderr
    assert _enqueued(fresh.stdout) == _rows(env, ["playlist_songs"])


def test_sigint_while_a_page_waits_says_what_is_left_and_a_rerun_skips_it(env, cdc):
    _prepare(cdc, env)
    with psycopg.connect(env["CDC_PG_DSN"]) as conn:
        order = [target.table.name for target in snapshot.targets(conn, None)]
    blocked = order[2]
    holder = psycopg.connect(env["CDC_PG_DSN"])
    try:
        holder.execute(f"SELECT 1 FROM {blocked} LIMIT 1 FOR UPDATE")
        process = start_cdc("snapshot", env=env)
        with psycopg.connect(env["CDC_PG_DSN"], autocommit=True) as watcher:
            for _ in range(600):  # until the snapshot's page of `blocked` waits for our row lock
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'orininu-cdc'"
                    " AND wait_event_type = 'Lock'"
                ).fetchone()[0]
                if waiting or process.poll() is not None:
                    break
                time.sleep(0.1)
        assert waiting, "the snapshot never waited for the row lock"
        process.send_signal(signal.SIGINT)
        time.sleep(0.5)  # let the handler run before the page can finish (the page waits either way)
    finally:
        holder.rollback()
        holder.close()
    _stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "cdc: snapshot interrupted: keys of 2 of 7 collections fully enqueued" in stderr, stderr
    assert "run `cdc snapshot` to continue it" in stderr
    progress = _progress(env)
    assert set(progress) == set(order[:3])
    assert all(done for name, (_k, done, _l, _m) in progress.items() if name in order[:2])
    assert not progress[blocked][1], "its page was committed, its end not yet seen"
    before = sum(keys for keys, *_ in progress.values())
    again = cdc("snapshot", env=env)
    assert again.returncode == 0, again.stderr
    assert _enqueued(again.stdout) == _rows(env) - before
    _verify(cdc, env)


def test_killed_while_applying_a_rerun_enqueues_nothing_and_finishes(env, cdc):
    _prepare(cdc, env)
    crashed = cdc(
        "snapshot",
        "--batch-size",
        "300",
        env={**env, "CDC_FAULT_POINT": "before_mark_applied", "CDC_FAULT_AFTER": "2"},
    )
    assert crashed.returncode == -9
    assert all(done for _keys, done, *_ in _progress(env).values())
    again = cdc("snapshot", "--batch-size", "300", env=env)
    assert again.returncode == 0, again.stderr
    assert _enqueued(again.stdout) == 0
    assert _progress(env) == {}
    _verify(cdc, env)

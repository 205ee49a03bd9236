"""The document model on real servers: every statement form that changes a row shown by a mapped
document, at three levels of nesting, ends with a clean `cdc verify` (documents compared with ones
PostgreSQL builds on its own); versions that follow snapshots; replay; refusals of bad mappings."""

from __future__ import annotations

import textwrap
from pathlib import Path

import psycopg
import pymongo
import pytest

pytestmark = pytest.mark.integration

DDL = """
CREATE TABLE owners (id int PRIMARY KEY, name text);
CREATE TABLE parents (id int PRIMARY KEY, owner_id int REFERENCES owners ON DELETE SET NULL, title text);
CREATE TABLE tags (id int PRIMARY KEY, name text, color text);
CREATE TABLE children (
    id int PRIMARY KEY, parent_id int REFERENCES parents ON DELETE CASCADE ON UPDATE CASCADE, pos int, label text,
    tag_id int REFERENCES tags ON DELETE SET NULL,
    CONSTRAINT children_pos UNIQUE (parent_id, pos) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE notes (id int PRIMARY KEY, child_id int REFERENCES children ON DELETE CASCADE, body text);

INSERT INTO owners SELECT i, 'owner ' || i FROM generate_series(1, 3) AS i;
INSERT INTO parents SELECT i, 1 + i % 3, 'parent ' || i FROM generate_series(1, 6) AS i;
INSERT INTO tags SELECT i, 'tag ' || i, 'red' FROM generate_series(1, 4) AS i;
INSERT INTO children SELECT i, 1 + i % 6, i, 'child ' || i, 1 + i % 4 FROM generate_series(1, 30) AS i;
INSERT INTO notes SELECT i, 1 + i % 30, 'note ' || i FROM generate_series(1, 60) AS i;
"""

MAPPING = """
[collections.parents]
table = "parents"
fields = ["id", "title"]
rename = { title = "heading" }

[collections.parents.embed.owner]
table = "owners"
on = { id = "owner_id" }
many = false

[collections.parents.embed.children]
table = "children"
on = { parent_id = "id" }
many = true
order_by = ["pos DESC"]
where = "label NOT LIKE '%hidden%'"
fields = ["id", "pos", "label"]

[collections.parents.embed.children.embed.tag]
table = "tags"
on = { id = "tag_id" }
many = false
fields = ["name"]

[collections.parents.embed.children.embed.notes]
table = "notes"
on = { child_id = "id" }
many = true

[collections.tags]
table = "tags"
"""

# (what it exercises, statements); each step is drained and verified on its own
STEPS = [
    ("a child moves to another parent", ["UPDATE children SET parent_id = 2 WHERE id = 1"]),
    ("a child's join column set to NULL, then back", ["UPDATE children SET parent_id = NULL WHERE id = 2"]),
    ("from NULL to set", ["UPDATE children SET parent_id = 3 WHERE id = 2"]),
    ("a referenced row's join column unset", ["UPDATE parents SET owner_id = NULL WHERE id = 4"]),
    ("a third-level row unset from its parent", ["UPDATE notes SET child_id = NULL WHERE id IN (1, 2, 3)"]),
    ("a third-level row moved", ["UPDATE notes SET child_id = 5 WHERE id = 4"]),
    ("a new child with notes", [
        "INSERT INTO children VALUES (31, 1, 99, 'new', 2)", "INSERT INTO notes VALUES (61, 31, 'n')",
    ]),
    ("a child hidden by the where clause", ["UPDATE children SET label = 'hidden now' WHERE id = 7"]),
    ("a cascaded delete of a parent", ["DELETE FROM parents WHERE id = 6"]),
    ("a cascaded delete of a child", ["DELETE FROM children WHERE id = 8"]),
    ("a delete that sets NULL", ["DELETE FROM owners WHERE id = 2"]),
    ("positions swapped inside one transaction", [
        "BEGIN",
        "UPDATE children SET pos = CASE id WHEN 9 THEN 15 WHEN 15 THEN 9 END WHERE id IN (9, 15)",
        "COMMIT",
    ]),
    ("a rename with fan-out", ["UPDATE tags SET name = 'renamed' WHERE id = 2"]),
    ("a primary key changed", ["UPDATE parents SET id = 60 WHERE id = 5"]),
    ("a root deleted and an embedded table truncated in one batch", [
        "DELETE FROM parents WHERE id = 3", "TRUNCATE notes",
    ]),
    ("TRUNCATE of an embedded table", ["INSERT INTO notes VALUES (70, 9, 'n')", "TRUNCATE notes"]),
    ("TRUNCATE of a referenced table", ["TRUNCATE tags CASCADE"]),
]  # fmt: skip


def run_sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture
def env(dbs, tmp_path):
    run_sql(dbs.pg_dsn, DDL)
    mapping = tmp_path / "model.toml"
    mapping.write_text(MAPPING)
    environment = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_MAPPING": str(mapping)}
    return environment


def _document(env: dict[str, str], collection: str, key: object) -> dict[str, object]:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(env["CDC_MONGO_URI"])
    try:
        found = client[env["CDC_MONGO_DB"]][collection].find_one({"_id": key})
    finally:
        client.close()
    assert found is not None
    return found


def _drain_and_verify(cdc, env, what: str) -> None:
    ran = cdc("run", "--once", env=env)
    assert ran.returncode == 0, f"{what}: {ran.stderr}"
    verified = cdc("verify", env=env)
    assert verified.returncode == 0, f"{what}:\n{verified.stdout}{verified.stderr}"


def test_every_statement_form_keeps_every_document_exact(env, dbs, cdc, tmp_path):
    installed = cdc("install", env=env)
    assert installed.returncode == 0, installed.stderr
    assert "parents" in installed.stdout and "rebuild them with `cdc snapshot --collections" in installed.stdout
    assert cdc("snapshot", env=env).returncode == 0
    assert cdc("verify", env=env).returncode == 0
    for what, statements in STEPS:
        run_sql(dbs.pg_dsn, *statements)
        _drain_and_verify(cdc, env, what)
        if what == "a child moves to another parent":
            assert 1 in [child["id"] for child in _document(env, "parents", 2)["children"]]

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(env["CDC_MONGO_URI"])
    try:
        parents = {doc["_id"]: doc for doc in client[env["CDC_MONGO_DB"]]["parents"].find()}
    finally:
        client.close()
    assert 6 not in parents and 5 not in parents and 60 in parents
    assert all(doc["children"] == [] for doc in parents.values())  # TRUNCATE tags CASCADE emptied children
    assert "heading" in parents[1] and "title" not in parents[1]

    # replay of the whole archive into an empty database gives the same documents
    replay_env = {**env, "CDC_MONGO_DB": env["CDC_MONGO_DB"] + "_replay"}
    replayed = cdc("replay", env["CDC_ARCHIVE_DIR"], env=replay_env)
    assert replayed.returncode == 0, replayed.stderr
    try:
        verified = cdc("verify", env=replay_env)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        client = pymongo.MongoClient(env["CDC_MONGO_URI"])
        client.drop_database(replay_env["CDC_MONGO_DB"])
        client.close()


def test_children_of_one_parent_committed_in_reverse_position_order_both_arrive(env, dbs, cdc):
    """T1 takes its position first and commits last; T2 commits in between and is drained alone."""
    assert cdc("install", env=env).returncode == 0
    assert cdc("snapshot", env=env).returncode == 0
    with psycopg.connect(dbs.pg_dsn) as first, psycopg.connect(dbs.pg_dsn) as second:
        first.execute("INSERT INTO children VALUES (101, 1, 101, 'first', 1)")  # position taken now
        second.execute("INSERT INTO children VALUES (102, 1, 102, 'second', 1)")
        second.commit()
        ran = cdc("run", "--once", env=env)  # a batch reads parent 1 with the second child only
        assert ran.returncode == 0, ran.stderr
        first.commit()
    _drain_and_verify(cdc, env, "the first child")
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(env["CDC_MONGO_URI"])
    try:
        parent = client[env["CDC_MONGO_DB"]]["parents"].find_one({"_id": 1})
    finally:
        client.close()
    assert parent is not None
    assert {101, 102} <= {child["id"] for child in parent["children"]}


def test_verify_names_the_first_differing_path_and_repair_rebuilds_the_root(env, cdc):
    assert cdc("install", env=env).returncode == 0
    assert cdc("snapshot", env=env).returncode == 0
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(env["CDC_MONGO_URI"])
    try:
        client[env["CDC_MONGO_DB"]]["parents"].update_one({"_id": 1}, {"$set": {"children.1.tag.name": "wrong"}})
        verified = cdc("verify", env=env)
        assert verified.returncode == 1
        assert "children[1].tag.name" in verified.stdout
        repaired = cdc("verify", "--repair", env=env)
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    finally:
        client.close()


BAD_MAPPINGS = [
    ('[collections.x]\ntable = "nosuch"', "collections.x.table", "does not exist"),
    ('[collections.x]\ntable = "parents"\nfields = ["nope"]', "collections.x.fields", "no column 'nope'"),
    (
        '[collections.x]\ntable = "parents"\n[collections.x.embed.c]\ntable = "children"\n'
        'on = { label = "id" }\nmany = true',
        "collections.x.embed.c.on",
        "different types",
    ),
    (
        '[collections.x]\ntable = "parents"\n[collections.x.embed.c]\ntable = "children"\non = { parent_id = "id" }',
        "collections.x.embed.c.on",
        "unique key",
    ),
    (
        '[collections.x]\ntable = "parents"\n[collections.x.embed.c]\ntable = "children"\non = { parent_id = "id" }\n'
        'many = true\n[collections.x.embed.c.embed.p]\ntable = "parents"\non = { id = "parent_id" }',
        "collections.x.embed.c.embed.p",
        "cycle",
    ),
    ('[collections.x]\ntable = "parents"\nrename = { title = "$t" }', "collections.x", "'$t'"),
    ('[collections.x]\ntable = "parents"\nrename = { title = "a.b" }', "collections.x", "'a.b'"),
    ('[collections.x]\ntable = "parents"\nrename = { title = "_cdc" }', "collections.x", "'_cdc'"),
    ('[collections.x]\ntable = "parents"\nrename = { title = "owner_id" }', "collections.x", "two fields"),
]


@pytest.mark.parametrize(("text", "path", "problem"), BAD_MAPPINGS)
def test_a_bad_mapping_is_refused_naming_file_and_key_path_and_nothing_is_installed(
    env, dbs, cdc, tmp_path: Path, text, path, problem
):
    bad = tmp_path / "bad.toml"
    bad.write_text(textwrap.dedent(text))
    refused = cdc("install", "--mapping", str(bad), env=env)
    assert refused.returncode == 2, refused.stderr
    assert str(bad) in refused.stderr and path in refused.stderr and problem in refused.stderr
    with psycopg.connect(dbs.pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass('cdc.outbox')").fetchone() == (None,)


@pytest.mark.parametrize(
    "fault", ["after_claim", "mid_archive", "before_commit", "after_commit", "mid_bulk_write", "before_mark_applied"]
)
def test_worker_killed_at_a_fault_point_with_a_mapping_loses_nothing(env, dbs, cdc, fault):
    assert cdc("install", env=env).returncode == 0
    assert cdc("snapshot", env=env).returncode == 0
    run_sql(dbs.pg_dsn, *STEPS[0][1], *STEPS[6][1], "UPDATE tags SET name = 'before the crash' WHERE id = 1")
    crashed = cdc("run", "--once", env={**env, "CDC_FAULT_POINT": fault})
    assert crashed.returncode == -9, (crashed.returncode, crashed.stderr)
    run_sql(dbs.pg_dsn, "UPDATE children SET parent_id = 4 WHERE id = 31", "DELETE FROM notes WHERE id = 61")
    _drain_and_verify(cdc, env, f"after a kill at {fault}")


def test_an_update_of_columns_no_embedding_shows_refreshes_only_the_tables_own_collection(env, dbs, cdc):
    assert cdc("install", env=env).returncode == 0
    assert cdc("snapshot", env=env).returncode == 0
    run_sql(dbs.pg_dsn, "UPDATE tags SET color = 'blue' WHERE id = 2")  # not shown inside parents
    quiet = cdc("run", "--once", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "1 changes" in quiet.stdout, quiet.stdout  # the tags document only
    run_sql(dbs.pg_dsn, "UPDATE tags SET name = 'shown' WHERE id = 2")  # shown: every parent holding it
    loud = cdc("run", "--once", env=env)
    assert loud.returncode == 0 and "1 changes" not in loud.stdout, loud.stdout
    _drain_and_verify(cdc, env, "after both updates")


ORININU_PLAYLISTS_ONLY = """
[collections.playlists]
table = "playlists"

[collections.playlists.embed.songs]
table = "playlist_songs"
on = { playlist_id = "playlist_id" }
many = true

[collections.playlists.embed.songs.embed.song]
table = "songs"
on = { song_id = "song_id" }
many = false
fields = ["title"]
"""


def test_the_orininu_validation_queries_only_run_over_table_mirrors(dbs, cdc, tmp_path):
    """Songs embedded in playlists, with no songs collection of their own: verify is clean (the
    pipelines that read a songs collection do not apply)."""
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    assert cdc("generate", "--scale", "tiny", env=env).returncode == 0
    model = tmp_path / "playlists.toml"
    model.write_text(ORININU_PLAYLISTS_ONLY)
    installed = cdc("install", "--mapping", str(model), "--tables", "user_interaction", env=env)
    assert installed.returncode == 0, installed.stderr
    assert cdc("snapshot", env=env).returncode == 0
    verified = cdc("verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "dql top_songs" not in verified.stdout
    assert "playlists" in verified.stdout and "user_interaction" in verified.stdout

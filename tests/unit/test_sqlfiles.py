from cdc.infra import sqlfiles


def test_dql_blocks_are_named_and_typed():
    blocks = sqlfiles.queries("DQL.sql")
    assert "row_counts" in blocks
    assert {block.kind for block in blocks.values()} == {"check", "report"}
    orphan_checks = [name for name, block in blocks.items() if name.startswith("orphan_")]
    # one orphan check per foreign key of the Orininu schema
    assert len(orphan_checks) == 8
    assert all(blocks[name].kind == "check" for name in orphan_checks)
    assert all(not block.text.rstrip().endswith(";") for block in blocks.values())


def test_ddl_ships_as_package_data():
    ddl = sqlfiles.script("DDL.sql")
    for table in ("users", "artists", "albums", "songs", "user_interaction", "playlists", "playlist_songs"):
        assert f"CREATE TABLE IF NOT EXISTS {table} (" in ddl

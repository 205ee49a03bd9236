"""The mongoimport path, whole: a snapshot into the archive without MongoDB, the printed mongoimport and
mongosh lines (run by ops/mongoimport/load-batches.sh through stand-ins for the two tools that do what
the real ones do, strictly), batches recorded as loaded, and prune and replay honouring that."""

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pymongo

from cdc.archive import mongoimport
from cdc.export import batch as drain
from tests.mongoimport_check import mongoimport_parse

ROOT = Path(__file__).resolve().parents[2]
CDC = str(Path(sys.executable).with_name("cdc"))

# mongoimport as far as the printed lines use it: unknown options fail, as they do in the real tool
FAKE_MONGOIMPORT = r"""#!{python}
import json, os, sys
import pymongo
from bson import json_util
args = sys.argv[1:]
log = open(os.environ["FAKE_TOOLS_LOG"], "a")
opts = {{}}
i = 0
while i < len(args):
    arg = args[i]
    if arg in ("--uri", "--config", "--db", "--collection", "--file"):
        opts[arg] = args[i + 1]; i += 2
    elif arg in ("--mode=upsert", "--mode=delete", "--upsertFields=_id", "--stopOnError"):
        opts[arg.split("=")[0]] = arg; i += 1
    else:
        sys.exit(f"mongoimport: error parsing command line options: unknown option {{arg}}")
uri = opts.get("--uri")
if "--config" in opts:
    assert uri is None
    text = open(opts["--config"]).read().strip()
    assert text.startswith("uri: '") and text.endswith("'"), text
    uri = text[6:-1].replace("''", "'")
assert opts["--upsertFields"] == "--upsertFields=_id" and "--stopOnError" in opts
client = pymongo.MongoClient(uri)
collection = client[opts["--db"]][opts["--collection"]]
mode = opts["--mode"].split("=")[1]
count = 0
for line in open(opts["--file"], "rb"):
    doc = json_util.loads(line)
    if mode == "upsert":
        collection.replace_one({{"_id": doc["_id"]}}, doc, upsert=True)
    else:
        collection.delete_one({{"_id": doc["_id"]}})
    count += 1
batch = os.path.basename(os.path.dirname(opts["--file"]))
log.write(json.dumps(["mongoimport", mode, opts["--collection"], batch, count]) + "\n")
"""

FAKE_MONGOSH = r"""#!{python}
import json, os, re, sys
import pymongo
args = sys.argv[1:]
assert args[:3] == ["--nodb", "--quiet", "--eval"] and len(args) == 4, args
pattern = (r'connect\(process\.env\[("[^"]+")\]\)\.getSiblingDB\(("(?:[^"\\]|\\.)*")\)'
           r'\.getCollection\(("(?:[^"\\]|\\.)*")\)'
           r'\.deleteMany\(\{{"_cdc\.pos": \{{\$lt: NumberLong\("(\d+)"\)\}}\}}\)')
found = re.fullmatch(pattern, args[3])
assert found, args[3]
uri = os.environ[json.loads(found.group(1))]
collection = pymongo.MongoClient(uri)[json.loads(found.group(2))][json.loads(found.group(3))]
removed = collection.delete_many({{"_cdc.pos": {{"$lt": int(found.group(4))}}}}).deleted_count
open(os.environ["FAKE_TOOLS_LOG"], "a").write(json.dumps(["mongosh", json.loads(found.group(3)), removed]) + "\n")
"""


def _tools(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, text in (("mongoimport", FAKE_MONGOIMPORT), ("mongosh", FAKE_MONGOSH)):
        path = folder / name
        path.write_text(text.format(python=sys.executable))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


def _ledger(env):
    with psycopg.connect(env["CDC_PG_DSN"]) as conn:
        return conn.execute("SELECT batch_id, mode, state FROM cdc.batches ORDER BY batch_id").fetchall()


def test_export_only_snapshot_then_load_batches_with_mongoimport_then_prune_and_replay(dbs, cdc, tmp_path, request):
    archive_dir = tmp_path / "archive"
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(archive_dir), "CDC_DATA_DIR": str(tmp_path / "data")}
    for args in (("generate", "--scale", "tiny"), ("install",)):
        result = cdc(*args, env=env)
        assert result.returncode == 0, result.stderr

    # 1. the initial load into the archive; MongoDB is a closed port, so any connection would fail
    nowhere = {**env, "CDC_MONGO_URI": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"}
    snap = cdc("snapshot", "--export-only", "--batch-size", "500", env=nowhere)
    assert snap.returncode == 0, snap.stderr
    assert "exported in" in snap.stdout and "not applied" in snap.stdout
    snapshot_batches = _ledger(env)
    assert snapshot_batches and {(mode, state) for _b, mode, state in snapshot_batches} == {("export", "exported")}
    client = pymongo.MongoClient(env["CDC_MONGO_URI"])
    request.addfinalizer(client.close)  # closed also when a step skips (no mongoimport parse check here)
    database = client[env["CDC_MONGO_DB"]]
    assert database.list_collection_names() == []

    # 2. changes after it: an update, a delete, a TRUNCATE (a marker for mongosh)
    with psycopg.connect(env["CDC_PG_DSN"], autocommit=True) as conn:
        conn.execute("UPDATE artists SET name = 'Ünïcode ''quoted'' \"name\"' WHERE artist_id = 1")
        conn.execute(
            "DELETE FROM user_interaction WHERE interaction_id IN (SELECT min(interaction_id) FROM user_interaction)"
        )
        conn.execute("TRUNCATE playlist_songs")

    # 3. the printed lines, as a script would use them
    printed = cdc("archive", "mongoimport-commands", env=env)
    assert printed.returncode == 0, printed.stderr
    commands = [shlex.split(line) for line in printed.stdout.splitlines() if line and not line.startswith("#")]
    assert len(commands) == sum(
        len(json.loads((path / "manifest.json").read_text())["files"])
        - ("rejected.jsonl" in json.loads((path / "manifest.json").read_text())["files"])
        for path in sorted(archive_dir.iterdir())
        if path.name.isdigit()
    )
    assert '--uri "$CDC_MONGO_URI"' in printed.stdout
    assert env["CDC_MONGO_URI"] not in printed.stdout
    files = []
    for argv in commands:
        assert argv[0] == "mongoimport"
        options = dict(zip(argv[1::2], argv[2::2], strict=False))
        assert options["--db"] == env["CDC_MONGO_DB"]
        mode = next(arg for arg in argv if arg.startswith("--mode="))
        file = Path(argv[argv.index("--file") + 1])
        assert file.is_file() and file.name.endswith(f".{mode.removeprefix('--mode=')}.jsonl")
        files.append(file)
    assert mongoimport_parse(*files)  # every line the commands load parses with mongoimport's own parser

    # 4. the seed's loop, as ops/mongoimport/load-batches.sh runs it: export, load, mark-loaded
    tools = _tools(tmp_path)
    log = tmp_path / "tools.log"
    run_env = {**env, "CDC": CDC, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "FAKE_TOOLS_LOG": str(log)}
    loaded = subprocess.run(
        ["sh", str(ROOT / "ops" / "mongoimport" / "load-batches.sh")],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    truncates = [call for call in calls if call[0] == "mongosh"]
    assert [call[1] for call in truncates] == ["playlist_songs"]
    assert truncates[0][2] > 0, "the marker emptied what the snapshot batches had loaded"
    batches = [call[3] for call in calls if call[0] == "mongoimport"]
    assert batches == sorted(batches), "batches are loaded in order"
    after = _ledger(env)
    assert len(after) == len(snapshot_batches) + 1
    assert {state for _b, _m, state in after} == {"applied"}
    assert sorted(doc["_id"] for doc in database["_cdc_batches"].find()) == [b for b, _m, _s in after]
    verify = cdc("verify", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # 5. nothing left to load; replay skips what was loaded; prune removes it
    again = cdc("archive", "mongoimport-commands", "--unloaded", env=env)
    assert again.returncode == 0, again.stderr
    assert [line for line in again.stdout.splitlines() if not line.startswith("#")] == []
    replay = cdc("replay", str(archive_dir), env=env)
    assert replay.returncode == 0, replay.stderr
    assert f"replayed 0 batches, skipped {len(after)} already applied" in replay.stdout
    pruned = cdc("archive", "prune", "--keep-days", "0", env=env)
    assert pruned.returncode == 0, pruned.stderr
    assert f"pruned {len(after)} batches" in pruned.stdout
    assert not [path for path in archive_dir.iterdir() if path.name.isdigit()]


def test_mark_loaded_refuses_what_it_cannot_record(dbs, cdc, tmp_path):
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_DATA_DIR": str(tmp_path / "data")}
    for args in (("generate", "--scale", "tiny"), ("install",), ("snapshot",)):
        result = cdc(*args, env=env)
        assert result.returncode == 0, result.stderr
    unknown = cdc("archive", "mark-loaded", "999999", env=env)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "cdc: error: batch 999999 is not in the ledger"
    with psycopg.connect(env["CDC_PG_DSN"], autocommit=True) as conn:
        conn.execute("UPDATE artists SET name = 'Pending' WHERE artist_id = 1")
    bad = cdc("archive", "mark-loaded", "abc", env=env)
    assert bad.returncode == 2
    # a batch of `cdc run`, exported and not applied, belongs to the worker
    drain_conn = drain.drain_connection(env["CDC_PG_DSN"])
    try:
        exported = drain.export_batch(drain_conn, tmp_path / "archive", batch_size=100, mode="run")
    finally:
        drain_conn.close()
    assert exported is not None
    refused = cdc("archive", "mark-loaded", str(exported.batch_id), env=env)
    assert refused.returncode == 1
    assert "belongs to `cdc run`" in refused.stderr


def test_the_lines_quote_every_name_for_their_shell():
    script = mongoimport.truncate_script("CDC_MONGO_URI", "orininu", "odd 'name\" é", 42, "sh")
    assert script == (
        'connect(process.env["CDC_MONGO_URI"]).getSiblingDB("orininu").getCollection("odd \'name\\" \\u00e9")'
        '.deleteMany({"_cdc.pos": {$lt: NumberLong("42")}})'
    )
    line = mongoimport.render(["mongosh", "--nodb", "--quiet", "--eval", script], "sh")
    assert shlex.split(line)[-1] == script
    ps = mongoimport.truncate_script("CDC_MONGO_URI", "orininu", "odd 'name\" é", 42, "powershell")
    assert ps.endswith(
        "getCollection('odd \\u0027name\\u0022 \\u00e9').deleteMany({'_cdc.pos': {$lt: NumberLong('42')}})"
    )
    assert '"' not in ps  # PowerShell 5 strips double quotes inside a native command's arguments
    assert mongoimport.render(
        ["mongoimport", "--uri", mongoimport.EnvRef("V"), "--file", "C:\\a b\\x.jsonl"], "powershell"
    ) == ("mongoimport --uri $env:V --file 'C:\\a b\\x.jsonl'")
    assert mongoimport.render(["C:\\x y\\cdc.exe", "archive"], "powershell") == "& 'C:\\x y\\cdc.exe' archive"
    assert re.fullmatch(
        r'mongoimport --uri "\$V" --collection \'a b\'',
        mongoimport.render(["mongoimport", "--uri", mongoimport.EnvRef("V"), "--collection", "a b"]),
    )

"""The command lines that load archive batches with `mongoimport` (and `mongosh` for truncates).

Per batch, in batch order:

1. each truncate marker: ``mongoimport`` cannot delete by a filter, so a ``mongosh`` line empties the
   collection of the documents older than the marker (``deleteMany({"_cdc.pos": {$lt: pos}})``),
   as the applier does;
2. each upsert file: ``mongoimport --mode=upsert --upsertFields=_id``;
3. each delete file: ``mongoimport --mode=delete --upsertFields=_id``.

A batch's upsert and delete files never share a key, so their order within the batch does not
matter; batches must be loaded in order. Mapped collections (archive format 2, ``documents``) hold
whole documents: the same commands. Names come from ``manifest.json``; every value is quoted for the
shell the lines are for. No password is ever printed: ``mongoimport`` reads the URI from an
environment variable reference (``--uri "$CDC_MONGO_URI"``) or from a YAML file given with
``--config`` (mongoimport 100.3 or later, which keeps the URI out of the process arguments), and
``mongosh`` connects from inside its script (``connect(process.env.CDC_MONGO_URI)``), so the URI is
never one of its arguments.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cdc.archive import folders as archive

SHELLS = ("sh", "powershell")


@dataclass(frozen=True)
class EnvRef:
    """An environment variable, expanded by the shell that runs the line."""

    name: str


Arg = str | EnvRef


def _js_string(text: str, shell: str) -> str:
    """A JavaScript string literal for ``text``: double-quoted for sh; single-quoted for PowerShell,
    whose Windows edition strips double quotes inside the arguments of native commands."""
    if shell == "sh":
        return json.dumps(text)  # ASCII only: non-ASCII characters become \\u escapes
    escaped = json.dumps(text)[1:-1].replace('\\"', "\\u0022").replace("'", "\\u0027")
    return f"'{escaped}'"


def truncate_script(uri_env: str, db: str, collection: str, pos: int, shell: str = "sh") -> str:
    """The mongosh script that empties ``collection`` of documents older than the marker at ``pos``."""
    target = (
        f"connect(process.env[{_js_string(uri_env, shell)}]).getSiblingDB({_js_string(db, shell)})"
        f".getCollection({_js_string(collection, shell)})"
    )
    return (
        f"{target}.deleteMany({{{_js_string('_cdc.pos', shell)}: {{$lt: NumberLong({_js_string(str(pos), shell)})}}}})"
    )


def batch_commands(
    batch: archive.Batch, *, db: str, uri_env: str, config: Path | None = None, shell: str = "sh"
) -> list[list[Arg]]:
    """The argument lists that load ``batch`` (see the module's docstring)."""
    commands: list[list[Arg]] = []
    for marker in batch.manifest.get("truncates", []):
        script = truncate_script(uri_env, db, marker["collection"], int(marker["pos"]), shell)
        commands.append(["mongosh", "--nodb", "--quiet", "--eval", script])
    source: list[Arg] = ["--config", str(config)] if config is not None else ["--uri", EnvRef(uri_env)]
    for op in ("upsert", "delete"):
        for collection, path in batch.files(op):
            commands.append(
                [
                    "mongoimport",
                    *source,
                    "--db",
                    db,
                    "--collection",
                    collection,
                    f"--mode={op}",
                    "--upsertFields=_id",
                    "--stopOnError",
                    "--file",
                    str(path.resolve()),
                ]
            )
    return commands


def _ps_quote(text: str) -> str:
    if text and all(ch.isascii() and (ch.isalnum() or ch in "-_=./:\\") for ch in text):
        return text
    return "'" + text.replace("'", "''") + "'"


def render(args: Sequence[Arg], shell: str = "sh") -> str:
    """One command line for ``shell``; an ``EnvRef`` stays a reference (``"$VAR"``, ``$env:VAR``)."""
    words: list[str] = []
    for index, arg in enumerate(args):
        if isinstance(arg, EnvRef):
            words.append(f'"${arg.name}"' if shell == "sh" else f"$env:{arg.name}")
        elif shell == "sh":
            words.append(shlex.quote(arg))
        elif index == 0:
            quoted = _ps_quote(arg)
            words.append(f"& {quoted}" if quoted.startswith("'") else quoted)
        else:
            words.append(_ps_quote(arg))
    return " ".join(words)


def batch_lines(
    batch: archive.Batch,
    *,
    db: str,
    uri_env: str,
    config: Path | None = None,
    shell: str = "sh",
    mark_loaded: Sequence[str] | None = None,
) -> list[str]:
    """A comment naming the batch, its command lines, and (``mark_loaded``: the ``cdc`` command to
    run) the line that records it as loaded."""
    counts = batch.manifest.get("counts", {})
    rejected = sum(int(c.get("rejected", 0)) for c in counts.values())
    comment = f"# batch {batch.batch_id}: {len(batch.manifest.get('truncates', []))} truncates, "
    comment += f"{len(batch.files('upsert'))} upsert and {len(batch.files('delete'))} delete files"
    if rejected:
        comment += f"; {rejected} rows rejected (see {batch.path / archive.REJECTED})"
    lines = [comment]
    lines += [render(args, shell) for args in batch_commands(batch, db=db, uri_env=uri_env, config=config, shell=shell)]
    if mark_loaded is not None:
        lines.append(render([*mark_loaded, "archive", "mark-loaded", str(batch.batch_id)], shell))
    return lines

"""SQL shipped in ``schema/`` (package ``cdc.sql``), loaded by name.

A file is either run whole (``script``) or split into named blocks (``queries``): each block
starts with ``-- name: <name>`` and may carry ``-- kind: <kind>``. ``run`` executes a block; a block of
``-- kind: script`` holds several statements and takes no parameters (PostgreSQL runs several statements
in one call only without parameters), so it is sent as it is.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

_BLOCK_START = re.compile(r"^--\s*name:\s*(?P<name>\w+)\s*$", re.M)
_KIND = re.compile(r"^--\s*kind:\s*(?P<kind>\w+)\s*$", re.M)


@dataclass(frozen=True)
class NamedQuery:
    name: str
    kind: str
    text: str


@functools.cache
def script(filename: str) -> str:
    """The whole text of ``schema/<filename>``."""
    return resources.files("cdc.sql").joinpath(filename).read_text(encoding="utf-8")


@functools.cache
def queries(filename: str) -> dict[str, NamedQuery]:
    """The named blocks of ``schema/<filename>``, in file order."""
    text = script(filename)
    starts = list(_BLOCK_START.finditer(text))
    blocks: dict[str, NamedQuery] = {}
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        body = text[match.end() : end]
        kind_match = _KIND.search(body)
        sql_text = "\n".join(line for line in body.strip().splitlines() if not line.lstrip().startswith("--")).strip()
        blocks[match.group("name")] = NamedQuery(
            name=match.group("name"),
            kind=kind_match.group("kind") if kind_match else "report",
            text=sql_text.rstrip(";"),
        )
    return blocks


@functools.cache
def _encoded(filename: str, name: str) -> bytes:
    return queries(filename)[name].text.encode()


def run(
    conn: psycopg.Connection[Any], filename: str, name: str, params: dict[str, Any] | None = None
) -> psycopg.Cursor[Any]:
    """Execute the block ``name`` of ``schema/<filename>``. Parameters are always passed (an empty dict
    at least), so a block reads the same with or without them: its ``%%`` is always one ``%``; but for a
    block of kind ``script`` (several statements), which takes none and is sent as it is."""
    if queries(filename)[name].kind == "script":
        if params:
            raise TypeError(f"{filename} {name}: a script block takes no parameters")
        return conn.execute(_encoded(filename, name))
    return conn.execute(_encoded(filename, name), params if params is not None else {})

"""Installing capture: the tables, the excluded columns, the worker's grants and the document model,
in one transaction (``cdc.capture.install``), with what the caller should tell the user."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cdc.capture import install as capture
from cdc.capture import mapping, row_security, tables
from cdc.capture.tables import TableInfo
from cdc.infra import pg


@dataclass(frozen=True)
class Installed:
    tables: list[TableInfo]
    mapping: str | None  # the mapping file installed (or "none": removed); None: the installed one stays
    reshaped: list[str]  # collections whose shape changed (rebuilt by a running worker, or `cdc snapshot`)
    hidden: list[tuple[TableInfo, str]]  # (table, role): rows row-level security hides from the worker role


def read_mapping(mapping_path: str | None) -> tuple[str, str] | None:
    """The document model to install: (filename, TOML text) of ``mapping_path``; ("none", "") to remove
    the installed one; None (no path) keeps what is installed. Read before anything connects, so a bad
    path is the error the user sees."""
    if mapping_path is None:
        return None
    return (mapping.NO_MAPPING, "") if mapping_path == mapping.NO_MAPPING else mapping.read_file(mapping_path)


def install(
    dsn: str,
    names: Sequence[str] | None,
    *,
    schema: str,
    notify: bool,
    exclude: Sequence[str] | None,
    grant: str | None,
    mapping_file: tuple[str, str] | None,
    announce: Callable[[str], None] = lambda _line: None,
) -> Installed:
    """Install capture on ``names`` (None: every table with a primary key in ``schema``, or the model's
    tables), with the document model ``mapping_file`` (``read_mapping``). ``announce`` is told, before
    anything is done, which tables are chosen when none were named."""
    reshaped: list[str] = []
    with pg.connect(dsn) as conn:
        if names is None and mapping_file is None:
            found = [tables.describe(conn, relid, excluded=()) for relid in tables.find_all(conn, None, schema)]
            announce(
                f"no --tables given: capturing every table with a primary key in schema {schema}: "
                + ", ".join(info.display for info in found if info is not None)
            )
        installed = capture.install(
            conn,
            names,
            schema=schema,
            notify=notify,
            exclude=exclude,
            grant=grant,
            mapping_file=mapping_file,
            reshaped=reshaped,
        )
        with pg.translated("reading row-level security"):
            hidden = row_security.hidden(conn, installed, grant) if grant else []
    return Installed(installed, mapping_file[0] if mapping_file is not None else None, reshaped, hidden)

"""Install and remove capture: the outbox, the ledger, and per-table statement-level triggers.

Capture is key-only: one outbox row per statement holds the array of changed keys (as text),
read from the statement's transition tables; the drain reads the committed rows later. A
statement touching a million rows writes one outbox row. An UPDATE records the old keys too, so
a changed primary key yields a delete of the old one. TRUNCATE gets its own statement trigger.
Triggers are ``ENABLE ALWAYS`` so ``session_replication_role = replica`` cannot bypass them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from cdc.capture import catalog, hierarchy, mapping, reshape, tables, triggers
from cdc.capture.tables import TableInfo
from cdc.capture.triggers import TRIGGERS
from cdc.infra import pg, sqlfiles
from cdc.infra.errors import ConfigError, PostgresUnavailable, UsageError
from cdc.ledger import queries as ledger

log = logging.getLogger("cdc.capture")  # the name users filter on, kept across the move to packages


@dataclass(frozen=True)
class CapturedTable:
    relid: int
    schema: str
    name: str
    exists: bool  # the oid still names a table
    triggers: int  # capture triggers present and enabled ALWAYS
    recreated_as: int | None  # a table with the same name but another oid

    @property
    def healthy(self) -> bool:
        return self.exists and self.triggers == len(TRIGGERS)


def _model(
    conn: psycopg.Connection[Any], mapping_file: tuple[str, str] | None, installed: mapping.DocumentModel | None
) -> tuple[mapping.DocumentModel | None, str]:
    """The model to install: the file's, none (``"none"``), or the installed one kept."""
    if mapping_file is None:
        return installed, ""
    filename, text = mapping_file
    if filename == mapping.NO_MAPPING:
        return None, filename
    return mapping.resolve(conn, mapping.parse(text, filename), filename, text), filename


def _refuse_member(conn: psycopg.Connection[Any], relid: int, display: str) -> None:
    """A partition or inheritance child is captured through its parent, never alone."""
    parents = hierarchy.ancestors(conn, relid)
    if parents:
        top = parents[-1]
        raise ConfigError(
            f"cannot capture {display} alone: it is a partition or inheritance child of {parents[0]}"
            + (f" (under {top})" if top != parents[0] else "")
            + f"; capture {top} instead: its partitions and children are captured with it"
        )


def install(
    conn: psycopg.Connection[Any],
    table_names: Sequence[str] | None,
    *,
    schema: str = "public",
    notify: bool = True,
    exclude: Sequence[str] | None = None,
    grant: str | None = None,
    mapping_file: tuple[str, str] | None = None,
    reshaped: list[str] | None = None,
) -> list[TableInfo]:
    """Create the outbox and ledger, and capture ``table_names``; idempotent, all or nothing.

    Names are resolved by ``tables.find`` (``t``, ``schema.t``, ``schema.*``, quoted identifiers;
    bare names in ``schema``); None captures every table with a primary key in ``schema`` except
    partitions and children (captured with their parent). ``exclude`` names columns left out of
    capture (``table.column`` or ``schema.table.column``); when given, it replaces the stored
    exclusions of every table installed here (an empty list clears them); when None, the stored
    exclusions stay. ``grant`` names the worker role to grant what it needs.

    ``mapping_file`` is (filename, TOML text) of a document model (``cdc.capture.mapping``), or
    (``"none"``, "") to remove the installed one; None keeps what is installed. With a model and no
    ``table_names``, the model's tables are captured. The names of the collections whose shape
    changed are appended to ``reshaped``. Everything happens in one transaction: a refused table, an
    invalid mapping or a failed grant leaves nothing done.
    """
    return _all_or_nothing(
        lambda: _install_once(
            conn,
            table_names,
            schema=schema,
            notify=notify,
            exclude=exclude,
            grant=grant,
            mapping_file=mapping_file,
            reshaped=reshaped,
        ),
        action="install_retry",
        again=reshaped.clear if reshaped is not None else None,
    )


INSTALL_ATTEMPTS = 3
_RETRIED_SQLSTATES = ("40P01", "40001")  # deadlock detected, serialization failure
_T = TypeVar("_T")


def _all_or_nothing(once: Callable[[], _T], *, action: str, again: Callable[[], None] | None = None) -> _T:
    """``once`` (one transaction), tried again after a deadlock with the application's writers or the
    worker (install and uninstall lock every table they capture or release), or a serialization
    failure: all or nothing, so it is simply run again, said in one line (``action``, its log action).
    ``again`` runs before each new attempt."""
    for attempt in range(1, INSTALL_ATTEMPTS + 1):
        try:
            return once()
        except PostgresUnavailable as exc:
            if getattr(exc.__cause__, "sqlstate", None) not in _RETRIED_SQLSTATES or attempt == INSTALL_ATTEMPTS:
                raise
            log.warning("%s; trying again", exc, extra={"action": action})
            if again is not None:
                again()
    raise AssertionError("unreachable")


def _install_once(
    conn: psycopg.Connection[Any],
    table_names: Sequence[str] | None,
    *,
    schema: str,
    notify: bool,
    exclude: Sequence[str] | None,
    grant: str | None,
    mapping_file: tuple[str, str] | None,
    reshaped: list[str] | None,
) -> list[TableInfo]:
    with pg.translated("installing capture"), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [ledger.INSTALL_LOCK_KEY])
        old_model = mapping.load(conn) if is_installed(conn) else None
        model, mapping_name = _model(conn, mapping_file, old_model)
        relids = (
            [t.relid for t in model.tables()]
            if model is not None and table_names is None and mapping_file is not None
            else tables.find_all(conn, table_names, schema)
        )
        relids += [t.relid for t in (model.tables() if model is not None else []) if t.relid not in relids]
        _lock_shapes(conn, relids)
        complete = []
        for relid in relids:
            info = tables.describe(conn, relid, excluded=())
            assert info is not None
            _refuse_member(conn, relid, info.display)
            complete.append(info)
        chosen = exclusions(complete, exclude, schema) if exclude is not None else None
        found = []
        for whole in complete:
            info = (
                tables.without_columns(whole, chosen.get(whole.relid, ()))
                if chosen is not None
                else tables.describe(conn, whole.relid) or whole  # the stored exclusions
            )
            reason = tables.refusal(info)
            if reason:
                raise ConfigError(f"cannot capture: {reason}")
            found.append(info)
        _install_base(conn, table_names, notify=notify)
        if mapping_file is not None:
            changed = _replace_mapping(conn, old_model, model, mapping_name)
            if reshaped is not None:
                reshaped += changed
        moved = reshape.moved(conn)  # captured tables a migration changed: followed as the worker would
        for described in found:
            joins = model.join_columns(described.relid) if model is not None else ()
            shown = model.shown_columns(described.relid) if model is not None else None
            info = described
            if described.relid in moved and chosen is None:  # excluded columns follow their renames
                reshape.follow_exclusions(conn, described.relid, moved[described.relid])
                info = tables.describe(conn, described.relid) or described
            hierarchy.capture_table(
                conn, info, notify=notify, set_exclusions=chosen is not None, joins=joins, shown=shown
            )
            for line in reshape.follow(conn, info.relid, moved.get(info.relid), model):
                log.warning("%s", line, extra={"action": "reshape", "table": info.display})
            log.info("capturing %s", info.display, extra={"action": "install_table", "table": info.display})
        if grant:
            grant_worker(conn, grant, found)
    return found


def _lock_shapes(conn: psycopg.Connection[Any], relids: Sequence[int]) -> None:
    """Before the tables are described: no DDL moves their shape until the install commits (and their
    writers finish first), so the functions written and the shapes recorded agree."""
    for relid in relids:
        named = catalog.relation_name(conn, relid)
        if named is not None:
            conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(named[0], named[1]))
            )


def _install_base(conn: psycopg.Connection[Any], table_names: Sequence[str] | None, *, notify: bool) -> None:
    """The outbox, the ledger and the catalog (idempotent); the event trigger that makes capture
    functions follow DDL, where the installer is a superuser (event triggers need one); the schemas
    named ``schema.*``, whose tables created later the worker captures."""
    sqlfiles.run(conn, "capture.sql", "install_base")
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if row and row[0]:
        sqlfiles.run(conn, "capture.sql", "install_ddl_follow")
    for pattern in schema_patterns(table_names):
        catalog.add_captured_schema(conn, pattern, notify=notify)


def schema_patterns(table_names: Sequence[str] | None) -> list[str]:
    """The schemas named as ``schema.*`` among ``--tables``."""
    found = []
    for spec in table_names or ():
        table_schema, name = tables.split_name(spec)
        if name == "*" and table_schema is not None and table_schema not in found:
            found.append(table_schema)
    return found


def capture_new_table(conn: psycopg.Connection[Any], relid: int, *, notify: bool) -> TableInfo | None:
    """A table created in a captured schema (``schema.*``) after install: captured, in the caller's
    transaction, and its rows enqueued by a rebuild of its collection. None when it cannot be (no
    primary key, a reserved column name, gone)."""
    info = tables.describe(conn, relid, excluded=())
    if info is None or tables.refusal(info):
        return None
    hierarchy.capture_table(conn, info, notify=notify)
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(info.qualified)).fetchone()
    catalog.start_rebuild(
        conn, relid, "k", info.collection, f"created in captured schema {info.schema}", int(row[0]) if row else 0
    )
    return info


def _replace_mapping(
    conn: psycopg.Connection[Any],
    old: mapping.DocumentModel | None,
    new: mapping.DocumentModel | None,
    filename: str,
) -> list[str]:
    """Store the new mapping; when it replaces one, the worker rebuilds by itself what changed shape
    (``_rebuild_collections``) and the tables that became collections of their own
    (``_rebuild_mirrors``). Returns the collections whose shape changed."""
    mapping.store(conn, new, filename)
    changed = mapping.collections_changed(old, new) if new is not None else []
    if old is not None:
        if new is not None:
            _rebuild_collections(conn, new, changed)
        changed += _rebuild_mirrors(conn, old, new)
    return changed


def _rebuild_collections(conn: psycopg.Connection[Any], model: mapping.DocumentModel, names: Sequence[str]) -> None:
    """A mapping replaced: each reshaped collection is rewritten whole by the next batch (a truncate
    marker on its root table: every document read again, the older ones removed), so the worker
    rebuilds it by itself, collections a migration had broken included."""
    roots = {c.root.table.relid for c in model.collections if c.name in names}
    for relid in sorted(roots):
        ledger.enqueue_truncate(conn, relid)


def _rebuild_mirrors(
    conn: psycopg.Connection[Any], old: mapping.DocumentModel, new: mapping.DocumentModel | None
) -> list[str]:
    """Tables the replaced mapping read and the new one does not (``--mapping none``: all of them) are
    collections of their own from now on: each gets a rebuild, so its collection holds every row, not
    only those changed since. Returns those collections."""
    staying = new.relids() if new is not None else set()
    captured = set(catalog.captured_relids(conn))
    collections = []
    for relid in sorted(old.relids() - staying):
        info = tables.describe(conn, relid) if relid in captured else None
        if info is None:
            continue
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(info.qualified)).fetchone()
        catalog.start_rebuild(conn, relid, "k", info.collection, "left the mapping", int(row[0]) if row else 0)
        collections.append(info.collection)
    return collections


def exclusions(found: Sequence[TableInfo], exclude: Sequence[str], schema: str) -> dict[int, list[str]]:
    """Parse ``table.column`` / ``schema.table.column`` entries against the tables being installed.

    A usage error (exit 2) names the entry: an unknown table or column, or a primary-key column
    (the key is the document's ``_id``: a document cannot exist without it).
    """
    chosen: dict[int, list[str]] = {}
    for entry in exclude:
        table_ref, dot, column = entry.strip().rpartition(".")
        if not dot or not table_ref or not column:
            raise UsageError(f"--exclude {entry!r}: expected TABLE.COLUMN or SCHEMA.TABLE.COLUMN")
        matches = [
            info
            for info in found
            if table_ref in (f"{info.schema}.{info.name}", info.name if info.schema == schema else None)
        ]
        if not matches:
            raise UsageError(f"--exclude {entry!r}: table {table_ref} is not among the tables being installed")
        info = matches[0]
        if column not in [c.name for c in info.columns]:
            raise UsageError(f"--exclude {entry!r}: table {info.schema}.{info.name} has no column {column!r}")
        if column in info.key_columns:
            raise UsageError(
                f"--exclude {entry!r}: column {column!r} is part of the primary key of table "
                f"{info.schema}.{info.name}, which becomes the document's _id; it cannot be excluded"
            )
        names = chosen.setdefault(info.relid, [])
        if column not in names:
            names.append(column)
    return chosen


def grant_worker(conn: psycopg.Connection[Any], role: str, table_infos: Sequence[TableInfo]) -> None:
    """The least a worker role needs: the outbox and ledger, the sequences, SELECT on captured tables
    (and UPDATE on their first key column only, which row locks require).

    No DDL, no ownership: ``cdc install`` stays with the tables' owner.
    """
    who = sql.Identifier(role)
    with pg.translated(f"granting the worker role {role}"), conn.transaction():
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA cdc TO {}").format(who))
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON cdc.outbox, cdc.batches, cdc.batch_changes TO {}").format(
                who
            )
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON cdc.captured, cdc.captured_parts, cdc.mapping, cdc.captured_schemas TO {}").format(
                who
            )
        )
        # rebuilds after a migration: the worker enqueues their pages and forgets them once applied
        conn.execute(sql.SQL("GRANT SELECT, UPDATE, DELETE ON cdc.rebuilds TO {}").format(who))
        # sweeps a snapshot leaves to the running worker (the worker role may run the snapshot too)
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON cdc.sweeps TO {}").format(who))
        # snapshots record their progress (resume after an interrupt)
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON cdc.snapshot_progress TO {}").format(who))
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON cdc.worker_state TO {}").format(who))  # its last cycle
        conn.execute(
            sql.SQL("GRANT USAGE, SELECT, UPDATE ON SEQUENCE cdc.position_seq, cdc.batch_seq TO {}").format(who)
        )
        for info in table_infos:
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(info.qualified, who))
            # row locks (snapshot pages are read FOR SHARE) need UPDATE on one column; the key
            # column, which the worker never writes
            conn.execute(
                sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(
                    sql.Identifier(info.key_columns[0]), info.qualified, who
                )
            )
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(info.schema), who))


def uninstall(
    conn: psycopg.Connection[Any], table_names: Sequence[str] | None = None, *, schema: str = "public"
) -> int:
    """Remove capture; returns the tables released.

    With no ``table_names``: every capture trigger, function and key type, the outbox and the ledger
    (schema ``cdc``). With names: only those captured tables (and their partitions and children)
    stop being captured; their changes already in the outbox or ledger are still exported. One
    transaction, tried again after a deadlock with the writers (``_all_or_nothing``).
    """
    return _all_or_nothing(lambda: _uninstall_once(conn, table_names, schema=schema), action="uninstall_retry")


def _uninstall_once(conn: psycopg.Connection[Any], table_names: Sequence[str] | None, *, schema: str) -> int:
    with pg.translated("removing capture"), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [ledger.INSTALL_LOCK_KEY])
        if not is_installed(conn):
            return 0
        captured = catalog.captured_relids(conn)
        if table_names is None:
            chosen = captured
        else:
            patterns = schema_patterns(table_names)
            for pattern in patterns:
                catalog.forget_captured_schema(conn, pattern)
            chosen = _named_or_dropped(conn, table_names, schema)
            followed = set(catalog.captured_schemas(conn))
            for relid in chosen:
                info = tables.describe(conn, relid, excluded=())
                if info is not None and info.schema in followed:
                    raise ConfigError(
                        f"table {info.display} is captured as part of schema {info.schema}"
                        f" (`cdc install --tables '{info.schema}.*'`): uninstall '{info.schema}.*' instead"
                    )
            model = mapping.load(conn)
            mapped = [t.display for t in (model.tables() if model is not None else []) if t.relid in chosen]
            if mapped:
                raise ConfigError(
                    f"{', '.join(mapped)} is read by the installed mapping: install a mapping without it first"
                    " (`cdc install --mapping FILE`, or `--mapping none`)"
                )
            missing = [relid for relid in chosen if relid not in captured]
            if missing:
                info = tables.describe(conn, missing[0], excluded=())
                raise ConfigError(f"table {info.display if info else missing[0]} is not captured")
        for relid in chosen:
            _release_table(conn, relid)
        if table_names is None:
            conn.execute("DROP SCHEMA IF EXISTS cdc CASCADE")
    return len(chosen)


def _named_or_dropped(conn: psycopg.Connection[Any], table_names: Sequence[str], schema: str) -> list[int]:
    """``tables.find_all``, where a name may also be a captured table that was dropped since."""
    dropped = {f"{s}.{n}": relid for relid, s, n in catalog.dropped_tables(conn)}
    dropped.update({n: relid for relid, s, n in catalog.dropped_tables(conn) if s == schema})
    chosen = [dropped[name] for name in table_names if name in dropped]
    rest = [name for name in table_names if name not in dropped]
    return chosen + [relid for relid in (tables.find_all(conn, rest, schema) if rest else []) if relid not in chosen]


def _release_table(conn: psycopg.Connection[Any], relid: int) -> None:
    """Drop the capture triggers of one captured table and of its recorded partitions and children."""
    info = tables.describe(conn, relid, excluded=())
    triggers.detach(conn, relid, info.qualified if info is not None else None)
    if hierarchy.has_parts_table(conn):
        for part in catalog.parts_of(conn, relid, with_dropped=True):
            member = tables.describe(conn, part, excluded=())
            triggers.detach(conn, part, member.qualified if member is not None else None)
        catalog.forget_parts_of(conn, relid)
    triggers.drop_root_functions(conn, relid)
    catalog.forget_table(conn, relid)


def captured_tables(conn: psycopg.Connection[Any]) -> list[CapturedTable]:
    """Every registered table, with whether it still exists and still has its triggers."""
    with pg.translated("reading captured tables"):
        rows = catalog.captured_tables(conn, triggers.TRIGGER_NAME_PATTERN)
    return [CapturedTable(*row) for row in rows]


def is_installed(conn: psycopg.Connection[Any]) -> bool:
    return ledger.installed(conn)


def require_installed(conn: psycopg.Connection[Any]) -> None:
    """``ConfigError`` telling to run `cdc install` when capture is not installed."""
    if not is_installed(conn):
        raise ConfigError("capture is not installed: run `cdc install` first")


def forget_tables(conn: psycopg.Connection[Any], names: Sequence[str], schema: str | None = None) -> None:
    """In the caller's transaction: forget the capture records of the tables ``names`` (in ``schema``,
    or any), which their owner dropped or is about to re-create (the bench's throw-away tables)."""
    catalog.forget_tables_named(conn, names, schema)

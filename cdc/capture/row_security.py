"""Whether row-level security hides rows of a captured table from a role.

Every command that reads captured rows asks this first (``cdc run`` and ``cdc export``,
``cdc snapshot``, ``cdc verify`` with or without ``--repair``), and ``cdc install --grant ROLE``
warns with it: a row the reading role cannot see becomes a delete in an export, is never enqueued
by a snapshot, and is invisible to a verify, which would then call a collection that lacks it ok.

PostgreSQL applies a table's policies to a role unless the role is a superuser, has ``BYPASSRLS``,
or owns the table (a member of its owner with the owner's rights) while the table is not
``FORCE ROW LEVEL SECURITY``. The answer is conservative: where RLS applies, the table counts as
hiding rows, unless a permissive policy for the role (or ``PUBLIC``) reads ``USING (true)`` for
``SELECT`` or ``ALL`` and no restrictive policy for the role limits ``SELECT``. That one policy is
read literally, never reasoned about: any other expression may hide rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import psycopg

from cdc.capture.tables import TableInfo
from cdc.infra.errors import RowSecurityError

# the policy applies to the role: PUBLIC (oid 0), or a role whose rights it has
_FOR_ROLE = """(0 = ANY (p.polroles) OR EXISTS (
                   SELECT FROM unnest(p.polroles) AS m(oid) WHERE m.oid <> 0 AND pg_has_role(r.oid, m.oid, 'USAGE')))"""

_HIDES = f"""
SELECT c.relrowsecurity
       AND NOT (r.rolsuper OR r.rolbypassrls
                OR (pg_has_role(r.oid, c.relowner, 'USAGE') AND NOT c.relforcerowsecurity))
       AND NOT (
           EXISTS (SELECT FROM pg_policy p
                   WHERE p.polrelid = c.oid AND p.polpermissive AND p.polcmd IN ('r', '*')
                     AND pg_get_expr(p.polqual, p.polrelid) = 'true' AND {_FOR_ROLE})
           AND NOT EXISTS (SELECT FROM pg_policy p
                           WHERE p.polrelid = c.oid AND NOT p.polpermissive AND p.polcmd IN ('r', '*')
                             AND pg_get_expr(p.polqual, p.polrelid) IS DISTINCT FROM 'true' AND {_FOR_ROLE})),
       r.rolname
FROM pg_class c, pg_roles r
WHERE c.oid = %(relid)s AND r.rolname = coalesce(%(role)s, current_user)
"""

_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")


def _ident(name: str) -> str:
    """``name`` as it is typed in SQL (for the user to copy; never executed here)."""
    return name if _PLAIN.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def fix(table: TableInfo, role: str) -> str:
    """What the user does about it, with the statements to run."""
    return (
        f"give the role BYPASSRLS (ALTER ROLE {_ident(role)} BYPASSRLS) or a policy that shows it every row"
        f" (CREATE POLICY cdc_reads_all ON {_ident(table.schema)}.{_ident(table.name)} FOR SELECT"
        f" TO {_ident(role)} USING (true)), or connect as the table's owner (unless it is FORCE ROW LEVEL SECURITY)"
    )


def hides_rows(conn: psycopg.Connection[Any], relid: int, role: str | None = None) -> str | None:
    """The role's name when row-level security may hide rows of table ``relid`` from ``role``
    (``current_user`` when None); None when it reads every row (or the table or role is gone)."""
    row = conn.execute(_HIDES, {"relid": relid, "role": role}).fetchone()
    return str(row[1]) if row is not None and row[0] else None


def hidden(
    conn: psycopg.Connection[Any], tables: Iterable[TableInfo], role: str | None = None
) -> list[tuple[TableInfo, str]]:
    """Each table (once, in order) whose rows may be hidden from ``role``, with the role's name."""
    found: list[tuple[TableInfo, str]] = []
    seen: set[int] = set()
    for table in tables:
        if table.relid in seen:
            continue
        seen.add(table.relid)
        name = hides_rows(conn, table.relid, role)
        if name is not None:
            found.append((table, name))
    return found


def describe(table: TableInfo, role: str) -> str:
    """The problem, in the words every message starts with."""
    return f"table {table.display} has row-level security that applies to role {role!r} and may hide rows from it"


def refuse(conn: psycopg.Connection[Any], tables: Iterable[TableInfo], consequence: str) -> None:
    """Raise ``RowSecurityError`` for the first table whose rows may be hidden from the connected role;
    ``consequence`` says what unseen rows would do (``rows it cannot see would be exported as deletes``)."""
    for table, role in hidden(conn, tables)[:1]:
        raise RowSecurityError(f"{describe(table, role)}: {consequence}; {fix(table, role)}")

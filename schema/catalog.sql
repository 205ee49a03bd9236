-- The capture catalog's SQL: what is captured (cdc.captured), the partitions and children recorded
-- under each captured root (cdc.captured_parts) and the installed document model (cdc.capture.mapping).
-- Only cdc/capture/catalog.py runs these blocks (loaded by name); readers never commit.

-- name: table_exists
-- Whether a catalog table exists (a ledger installed before it was added has not got it).
SELECT to_regclass(%(name)s) IS NOT NULL

-- name: table_readable
-- Whether a catalog table exists and this role may read it (a worker granted by an older version).
SELECT CASE WHEN to_regclass(%(name)s) IS NOT NULL THEN has_table_privilege(%(name)s, 'SELECT') ELSE false END

-- name: register_table
-- A captured table; its exclusions are kept unless they are being set, and so is the name it was
-- registered under (its collection's name: a renamed table keeps its collection).
INSERT INTO cdc.captured (relid, schema_name, table_name, key_columns, notify, excluded_columns)
VALUES (%(relid)s, %(schema)s, %(name)s, %(keys)s, %(notify)s, %(excluded)s)
ON CONFLICT (relid) DO UPDATE SET key_columns = excluded.key_columns, notify = excluded.notify,
    excluded_columns = CASE WHEN %(set_excluded)s THEN excluded.excluded_columns
                            ELSE cdc.captured.excluded_columns END

-- name: is_captured
SELECT 1 FROM cdc.captured WHERE relid = %(relid)s

-- name: set_join_columns
UPDATE cdc.captured SET join_columns = %(joins)s WHERE relid = %(relid)s

-- name: join_columns
-- Read through to_jsonb of the whole row: a ledger installed before the column existed reads as none.
SELECT to_jsonb(cp) -> 'join_columns' FROM cdc.captured cp WHERE relid = %(relid)s

-- name: excluded_columns
-- Read through to_jsonb of the whole row: a ledger installed before the column existed reads as none.
SELECT to_jsonb(cp) -> 'excluded_columns' FROM cdc.captured AS cp WHERE cp.relid = %(relid)s

-- name: captured_relids
SELECT relid::int FROM cdc.captured

-- name: forget_table
DELETE FROM cdc.captured WHERE relid = %(relid)s

-- name: forget_tables_named
-- The capture records of tables, by name, in one schema or any.
DELETE FROM cdc.captured
WHERE table_name = ANY(%(names)s) AND (%(schema)s::text IS NULL OR schema_name = %(schema)s)

-- name: captured_tables
-- Every registered table: whether it still exists, its enabled capture triggers, and another table
-- now holding its name.
SELECT cp.relid::int, cp.schema_name, cp.table_name, c.oid IS NOT NULL,
       (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = cp.relid AND t.tgenabled = 'A'
          AND t.tgname LIKE %(pattern)s)::int,
       (SELECT c2.oid::int FROM pg_class c2 JOIN pg_namespace n2 ON n2.oid = c2.relnamespace
         WHERE n2.nspname = cp.schema_name AND c2.relname = cp.table_name AND c2.oid <> cp.relid)
FROM cdc.captured cp LEFT JOIN pg_class c ON c.oid = cp.relid
ORDER BY cp.schema_name, cp.table_name

-- name: in_hierarchy
SELECT in_hierarchy FROM cdc.captured WHERE relid = %(relid)s

-- name: set_in_hierarchy
UPDATE cdc.captured SET in_hierarchy = %(value)s WHERE relid = %(relid)s

-- name: notify
SELECT notify FROM cdc.captured WHERE relid = %(relid)s

-- name: captured_children
-- Captured tables that are now a partition or child of another table.
SELECT c.oid::int, format('%%s.%%s', n.nspname, c.relname) FROM cdc.captured cp
JOIN pg_class c ON c.oid = cp.relid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = cp.relid)

-- name: drift
-- Members of a captured hierarchy out of step with cdc.captured_parts: (root, member, what happened).
WITH RECURSIVE tree (root, relid) AS (
    SELECT cp.relid, i.inhrelid FROM cdc.captured cp JOIN pg_inherits i ON i.inhparent = cp.relid
  UNION
    SELECT t.root, i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid
)
SELECT t.root::int, t.relid::int, 'uncaptured'
FROM tree t
WHERE NOT EXISTS (SELECT 1 FROM cdc.captured_parts p WHERE p.relid = t.relid AND p.root_relid = t.root)
   OR (SELECT count(*) FROM pg_trigger g WHERE g.tgrelid = t.relid AND g.tgenabled = 'A'
         AND g.tgname LIKE %(pattern)s) < %(expected)s
UNION ALL
SELECT p.root_relid::int, p.relid::int, CASE WHEN c.oid IS NULL THEN 'dropped' ELSE 'left' END
FROM cdc.captured_parts p LEFT JOIN pg_class c ON c.oid = p.relid
WHERE p.dropped_at IS NULL AND NOT EXISTS (SELECT 1 FROM tree t WHERE t.root = p.root_relid AND t.relid = p.relid)
UNION ALL
SELECT cp.relid::int, cp.relid::int, 'truncate mode'
FROM cdc.captured cp JOIN pg_class c ON c.oid = cp.relid
WHERE cp.in_hierarchy <> (c.relkind = 'p' OR EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = cp.relid))
ORDER BY 1, 2

-- name: live_parts
-- The members recorded under a root and not marked dropped.
SELECT relid::int FROM cdc.captured_parts WHERE root_relid = %(root)s AND dropped_at IS NULL

-- name: all_parts
-- Every member recorded under a root, dropped ones included.
SELECT relid::int FROM cdc.captured_parts WHERE root_relid = %(root)s

-- name: record_part
INSERT INTO cdc.captured_parts (relid, root_relid, schema_name, table_name)
VALUES (%(relid)s, %(root)s, %(schema)s, %(name)s)
ON CONFLICT (relid) DO UPDATE SET root_relid = excluded.root_relid,
    schema_name = excluded.schema_name, table_name = excluded.table_name, dropped_at = NULL

-- name: other_root
-- The live record of a member under another root than this one.
SELECT root_relid::int FROM cdc.captured_parts WHERE relid = %(relid)s AND root_relid <> %(root)s AND dropped_at IS NULL

-- name: mark_part_dropped
UPDATE cdc.captured_parts SET dropped_at = now() WHERE relid = %(relid)s

-- name: forget_part
DELETE FROM cdc.captured_parts WHERE relid = %(relid)s

-- name: forget_parts_of
DELETE FROM cdc.captured_parts WHERE root_relid = %(root)s

-- name: has_gone_parts
-- Whether a root has members marked dropped or gone from the catalog.
SELECT EXISTS (SELECT 1 FROM cdc.captured_parts p WHERE p.root_relid = %(root)s
               AND (p.dropped_at IS NOT NULL OR NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = p.relid)))

-- name: forget_gone_parts
DELETE FROM cdc.captured_parts p WHERE p.root_relid = %(root)s
    AND (p.dropped_at IS NOT NULL OR NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = p.relid))

-- name: gone_parts
-- Every member marked dropped or gone from the catalog: (root, member, schema, name).
SELECT root_relid::int, relid::int, schema_name, table_name FROM cdc.captured_parts
WHERE dropped_at IS NOT NULL OR NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = relid)
ORDER BY 1, 2

-- name: stored_mapping
SELECT filename, source FROM cdc.mapping

-- name: clear_mapping
DELETE FROM cdc.mapping

-- name: store_mapping
INSERT INTO cdc.mapping (filename, source) VALUES (%(filename)s, %(source)s)

-- name: relation_name
-- A relation's schema and name, and whether capture's catalog exists (None when the oid is gone).
SELECT n.nspname::text, c.relname::text, to_regclass('cdc.captured') IS NOT NULL
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %(relid)s

-- name: set_shape
-- The table's shape now, as its capture functions were written for it.
UPDATE cdc.captured SET shape = cdc.table_shape(relid) WHERE relid = %(relid)s

-- name: shape_drift
-- Captured tables (still existing) whose shape differs from the one recorded, with both; a table
-- recorded before shapes were kept (NULL) is not drift.
SELECT cp.relid::int, cp.shape, cdc.table_shape(cp.relid)
FROM cdc.captured cp JOIN pg_class c ON c.oid = cp.relid
WHERE cp.shape IS NULL OR cp.shape IS DISTINCT FROM cdc.table_shape(cp.relid)
ORDER BY cp.relid

-- name: shapes_supported
-- Whether the installed ledger keeps shapes (installed by this version or re-installed since).
SELECT to_regprocedure('cdc.table_shape(oid)') IS NOT NULL AND to_regclass('cdc.rebuilds') IS NOT NULL

-- name: set_exclusions
UPDATE cdc.captured SET excluded_columns = %(excluded)s WHERE relid = %(relid)s

-- name: start_rebuild
-- A rebuild of one collection from one table (op 'k': the table's own collection; 'r': a mapped
-- collection's roots); one already running starts over.
INSERT INTO cdc.rebuilds (relid, op, collection, reason, total)
VALUES (%(relid)s, %(op)s, %(collection)s, %(reason)s, %(total)s)
ON CONFLICT (relid, op, collection) DO UPDATE SET reason = excluded.reason, last_key = NULL, last_pos = NULL,
    keys = 0, total = excluded.total, done = false, started_at = now()

-- name: rebuild_page
UPDATE cdc.rebuilds SET last_key = %(last_key)s, last_pos = %(pos)s, keys = keys + %(keys)s
WHERE relid = %(relid)s AND op = %(op)s AND collection = %(collection)s

-- name: rebuild_enqueued
UPDATE cdc.rebuilds SET done = true WHERE relid = %(relid)s AND op = %(op)s AND collection = %(collection)s

-- name: rebuilds
SELECT relid::int, op::text, collection, reason, last_key, last_pos, keys, total, done, started_at
FROM cdc.rebuilds ORDER BY started_at, relid

-- name: forget_rebuild
DELETE FROM cdc.rebuilds WHERE relid = %(relid)s AND op = %(op)s AND collection = %(collection)s

-- name: mapping_relids
-- Read through to_jsonb of the whole row: a ledger installed before the column existed reads as none.
SELECT to_jsonb(m) -> 'relids' FROM cdc.mapping AS m

-- name: set_mapping_relids
UPDATE cdc.mapping SET relids = %(relids)s::oid[]

-- name: registered_name
-- The (schema, name) a captured table was registered under: its collection's name.
SELECT schema_name, table_name FROM cdc.captured WHERE relid = %(relid)s

-- name: add_captured_schema
-- `cdc install --tables 'schema.*'`: the schema's tables created later are captured too.
INSERT INTO cdc.captured_schemas (schema_name, notify) VALUES (%(schema)s, %(notify)s)
ON CONFLICT (schema_name) DO UPDATE SET notify = excluded.notify

-- name: forget_captured_schema
DELETE FROM cdc.captured_schemas WHERE schema_name = %(schema)s

-- name: captured_schemas
SELECT schema_name FROM cdc.captured_schemas ORDER BY 1

-- name: uncaptured_in_schemas
-- Tables of the captured schemas that are not captured (partitions and children are captured with
-- their parent), with whether they have a primary key.
SELECT c.oid::int, n.nspname::text, c.relname::text, s.notify,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
FROM cdc.captured_schemas s
JOIN pg_namespace n ON n.nspname = s.schema_name
JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
WHERE NOT EXISTS (SELECT 1 FROM cdc.captured cp WHERE cp.relid = c.oid)
  AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = c.oid)
ORDER BY 2, 3

-- name: dropped_tables
-- Captured tables whose oid no longer names a table.
SELECT cp.relid::int, cp.schema_name, cp.table_name FROM cdc.captured cp
WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = cp.relid) ORDER BY 2, 3

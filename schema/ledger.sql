-- The ledger's SQL: the outbox, the batches and their changes. Only cdc/ledger/queries.py runs these
-- blocks (loaded by name); readers never commit, their callers end the transaction.

-- name: draw_position
-- A position drawn now: every change captured or enqueued from now on gets a larger one.
SELECT nextval('cdc.position_seq')

-- name: request_sweep
-- A snapshot left to the running worker: the sweep of one collection, once its pages are applied.
INSERT INTO cdc.sweeps (collection, below, after_pos) VALUES (%(collection)s, %(below)s, %(after)s)
ON CONFLICT (collection) DO UPDATE SET below = greatest(cdc.sweeps.below, excluded.below),
    after_pos = greatest(cdc.sweeps.after_pos, excluded.after_pos), requested_at = now()

-- name: sweeps_readable
SELECT CASE WHEN to_regclass('cdc.sweeps') IS NOT NULL
            THEN has_table_privilege('cdc.sweeps', 'SELECT') AND has_table_privilege('cdc.sweeps', 'DELETE')
            ELSE false END

-- name: due_sweeps
-- The sweeps whose snapshot pages are all applied: no change up to after_pos waits, in the outbox or
-- in a batch of any mode not applied (pages an export claimed never reach this target). With whether
-- a batch among them rejected rows of the collection (their old documents must then stay).
SELECT s.collection, s.below,
       EXISTS (SELECT 1 FROM cdc.batches b
               WHERE b.pos_max >= s.below AND b.pos_min <= s.after_pos
                 AND coalesce((b.counts -> s.collection ->> 'rejected')::bigint, 0) > 0)
FROM cdc.sweeps s
WHERE NOT EXISTS (SELECT 1 FROM cdc.outbox WHERE pos <= s.after_pos)
  AND NOT EXISTS (SELECT 1 FROM cdc.batches b WHERE b.pos_min <= s.after_pos AND b.state <> 'applied')

-- name: forget_sweep
DELETE FROM cdc.sweeps WHERE collection = %(collection)s AND below = %(below)s

-- name: writers_in_progress
-- The transactions (with an id: writers) in progress now in this database, other than this one: each
-- holds a lock on its own id (pg_locks, readable by every role; pg_current_snapshot would miss ids past
-- its xmax). Prepared transactions (no backend) count too.
SELECT coalesce(array_agg(DISTINCT l.transactionid::text), '{}') FROM pg_locks l
WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
  AND l.pid IS DISTINCT FROM pg_backend_pid()
  AND (l.pid IS NULL OR l.pid IN (SELECT a.pid FROM pg_stat_activity a WHERE a.datname = current_database()))

-- name: writers_still_open
-- How many of those transactions are still open.
SELECT count(DISTINCT transactionid::text) FROM pg_locks
WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted AND transactionid::text = ANY(%(xids)s)

-- name: outbox_head
-- The highest position in the outbox now (0 when empty).
SELECT coalesce(max(pos), 0) FROM cdc.outbox

-- name: claim_candidates
-- The oldest outbox rows up to a position, locked; rows another claimer holds are skipped.
SELECT pos, coalesce(cardinality(keys), 0) FROM cdc.outbox WHERE pos <= %(up_to)s
ORDER BY pos LIMIT %(limit)s FOR UPDATE SKIP LOCKED

-- name: next_batch_id
SELECT nextval('cdc.batch_seq')

-- name: insert_batch
-- A claimed batch; its version (mapped documents carry it) is a position taken now, inside the
-- exporters' turn, so versions follow the order of the snapshots batches read.
INSERT INTO cdc.batches (batch_id, mode, state, pos_min, pos_max, key_count, version)
VALUES (%(batch)s, %(mode)s, 'claimed', %(pos_min)s, %(pos_max)s, %(keys)s, nextval('cdc.position_seq'))

-- name: move_claimed
-- The claimed outbox rows move into the batch, in the claim's transaction.
WITH claimed AS (DELETE FROM cdc.outbox WHERE pos = ANY(%(positions)s) RETURNING pos, relid, op, keys, joins, shown)
INSERT INTO cdc.batch_changes (batch_id, pos, relid, op, keys, joins, shown)
SELECT %(batch)s, pos, relid, op, keys, joins, shown FROM claimed

-- name: claim_completeness
-- After the claimed rows moved (this transaction no longer sees them): whether any outbox change
-- visible in the claim's snapshot is left; recorded with the snapshot's time and identity.
UPDATE cdc.batches
SET complete = NOT EXISTS (SELECT FROM cdc.outbox),
    snapshot_at = transaction_timestamp(),
    snapshot = pg_current_snapshot()::text
WHERE batch_id = %(batch)s
RETURNING complete, snapshot_at, snapshot

-- name: give_back_batch_id
-- An id drawn by a claim that rolled back, given back while nobody drew one since.
SELECT setval('cdc.batch_seq', %(batch)s, false) FROM cdc.batch_seq WHERE last_value = %(batch)s AND is_called

-- name: mark_exported
UPDATE cdc.batches SET state = 'exported', exported_at = now(), counts = %(counts)s WHERE batch_id = %(batch)s

-- name: batch_info
SELECT batch_id, mode, state, pos_min, pos_max, coalesce(version, pos_max) FROM cdc.batches WHERE batch_id = %(batch)s

-- name: batch_relations
-- Each relation in a batch with its truncate positions.
SELECT relid::int, coalesce(array_agg(pos ORDER BY pos) FILTER (WHERE op = 't'), '{}')
FROM cdc.batch_changes WHERE batch_id = %(batch)s GROUP BY relid ORDER BY relid

-- name: batch_table_keys
SELECT c.pos, k.key FROM cdc.batch_changes c CROSS JOIN LATERAL unnest(c.keys) AS k(key)
WHERE c.batch_id = %(batch)s AND c.relid = %(relid)s

-- name: pending_batches
-- Batches claimed for applying (run or snapshot) and not yet applied, in ledger order.
SELECT batch_id FROM cdc.batches WHERE state <> 'applied' AND mode IN ('run', 'snapshot') ORDER BY batch_id

-- name: committed_batches
SELECT batch_id FROM cdc.batches WHERE state <> 'claimed'
AND batch_id >= coalesce(%(first)s::bigint, batch_id) AND batch_id <= coalesce(%(last)s::bigint, batch_id)

-- name: mark_applied
UPDATE cdc.batches SET state = 'applied', applied_at = now() WHERE batch_id = %(batch)s

-- name: release_changes
-- The claimed keys of applied (or pruned) batches are released.
DELETE FROM cdc.batch_changes WHERE batch_id = ANY(%(batches)s)

-- name: enqueue_keys
-- Keys put back into the outbox as changes (a snapshot page, a repair): read again at drain time.
INSERT INTO cdc.outbox (relid, op, keys) VALUES (%(relid)s, %(op)s, %(keys)s)

-- name: unfinished
-- Outbox rows plus batches not applied: zero when everything captured is in MongoDB.
SELECT (SELECT count(*) FROM cdc.outbox) + (SELECT count(*) FROM cdc.batches WHERE state <> 'applied')

-- name: export_batches_not_loaded
SELECT batch_id FROM cdc.batches WHERE mode = 'export' AND state = 'exported'
AND batch_id < coalesce(%(before)s::bigint, batch_id + 1) ORDER BY batch_id

-- name: batches_between
SELECT batch_id, mode, state FROM cdc.batches WHERE batch_id BETWEEN %(first)s AND %(last)s ORDER BY batch_id

-- name: mark_loaded
-- Export batches loaded outside the pipeline (mongoimport) count as applied.
UPDATE cdc.batches SET state = 'applied', applied_at = now()
WHERE batch_id = ANY(%(batches)s) AND mode = 'export' AND state = 'exported'

-- name: prune_candidates
SELECT b.batch_id, b.mode, b.state, b.pos_min::text, b.pos_max::text, b.exported_at, b.applied_at
FROM cdc.batches b
WHERE b.batch_id = ANY(%(folders)s)
   OR (b.state IN ('exported', 'applied') AND b.mode = 'export'
       AND EXISTS (SELECT 1 FROM cdc.batch_changes c WHERE c.batch_id = b.batch_id))
ORDER BY b.batch_id

-- name: last_batches
-- The last exported and the last applied batch, with their ages, and whether a worker holds its lock.
WITH exported AS (SELECT batch_id, mode, exported_at FROM cdc.batches
                  WHERE state <> 'claimed' ORDER BY batch_id DESC LIMIT 1),
     applied AS (SELECT batch_id, applied_at FROM cdc.batches
                 WHERE state = 'applied' ORDER BY batch_id DESC LIMIT 1)
SELECT (SELECT batch_id FROM exported), (SELECT mode FROM exported), (SELECT exported_at FROM exported),
       extract(epoch FROM now() - (SELECT exported_at FROM exported)),
       (SELECT batch_id FROM applied), (SELECT applied_at FROM applied),
       extract(epoch FROM now() - (SELECT applied_at FROM applied)),
       EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %(lock_class)s
               AND objid = %(lock_object)s AND objsubid = 2 AND granted)

-- name: enqueue_keys_at
-- enqueue_keys, returning the position the keys were given.
INSERT INTO cdc.outbox (relid, op, keys) VALUES (%(relid)s, %(op)s, %(keys)s) RETURNING pos

-- name: drop_waiting_changes
-- A re-keyed table (cdc/capture/reshape.py): its changes still waiting, recorded under the old key, go; the
-- rebuild that follows reads every row again. Batches already archived keep their files.
WITH outbox AS (DELETE FROM cdc.outbox WHERE relid = %(relid)s RETURNING 1),
     held AS (DELETE FROM cdc.batch_changes c USING cdc.batches b
              WHERE c.relid = %(relid)s AND b.batch_id = c.batch_id AND b.state <> 'applied' RETURNING 1)
SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM held)

-- name: enqueue_truncate
-- A truncate marker: the collection's documents older than its position go (a re-keyed table).
INSERT INTO cdc.outbox (relid, op) VALUES (%(relid)s, 't') RETURNING pos

-- name: waiting_up_to
-- Whether changes up to a position still wait: in the outbox, or in batches not done (for applying:
-- not applied; for exporting: still claimed).
SELECT EXISTS (SELECT 1 FROM cdc.outbox WHERE pos <= %(pos)s)
    OR EXISTS (SELECT 1 FROM cdc.batches
               WHERE pos_min <= %(pos)s
                 AND CASE WHEN %(applying)s THEN state <> 'applied' AND mode IN ('run', 'snapshot')
                          ELSE state = 'claimed' END)

-- name: worker_running
-- Whether a worker (`cdc run`, an applying snapshot, a repair) holds the worker lock.
SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %(lock_class)s
               AND objid = %(lock_object)s AND objsubid = 2 AND granted)

-- name: snapshot_progress_access
-- Whether cdc.snapshot_progress exists, and whether this role may read and write it.
SELECT to_regclass('cdc.snapshot_progress') IS NOT NULL,
       CASE WHEN to_regclass('cdc.snapshot_progress') IS NOT NULL
            THEN has_table_privilege('cdc.snapshot_progress', 'SELECT, INSERT, UPDATE, DELETE')
            ELSE false END

-- name: snapshot_page
-- A snapshot page enqueued: how far its table (and op) got, in the page's transaction.
INSERT INTO cdc.snapshot_progress (relid, op, mode, last_key, last_pos, keys)
VALUES (%(relid)s, %(op)s, %(mode)s, %(last_key)s, %(pos)s, %(keys)s)
ON CONFLICT (relid, op) DO UPDATE SET last_key = excluded.last_key, last_pos = excluded.last_pos,
    keys = cdc.snapshot_progress.keys + excluded.keys, mode = excluded.mode, updated_at = now()

-- name: snapshot_table_done
-- Every key of a table (and op) is enqueued.
INSERT INTO cdc.snapshot_progress (relid, op, mode, done) VALUES (%(relid)s, %(op)s, %(mode)s, true)
ON CONFLICT (relid, op) DO UPDATE SET done = true, mode = excluded.mode, updated_at = now()

-- name: snapshot_steps
-- The recorded progress of some (relid, op) pairs.
SELECT relid::int, op::text, mode, last_key, last_pos, keys, done, started_at
FROM cdc.snapshot_progress
WHERE (relid::int, op::text) IN (SELECT * FROM unnest(%(relids)s::int[], %(ops)s::text[]))

-- name: forget_snapshot_steps
-- A snapshot finished, or starts over: its records go.
DELETE FROM cdc.snapshot_progress
WHERE (relid::int, op::text) IN (SELECT * FROM unnest(%(relids)s::int[], %(ops)s::text[]))

-- name: installed
-- Whether the ledger exists (capture is installed).
SELECT to_regclass('cdc.outbox') IS NOT NULL

-- name: discard_outbox
-- Every waiting change dropped: only the bench does this, on its throw-away table.
DELETE FROM cdc.outbox

-- name: batch_ops
-- The (relid, op) pairs present in a batch.
SELECT DISTINCT relid::int, op FROM cdc.batch_changes WHERE batch_id = %(batch)s

-- name: backlog
-- Changes not yet in MongoDB: the outbox's, and those of batches claimed for applying and not
-- applied, or (any mode) not yet archived; with the ages of the oldest outbox row and claim.
WITH waiting AS (SELECT batch_id, claimed_at FROM cdc.batches
                 WHERE state <> 'applied' AND (mode IN ('run', 'snapshot') OR state = 'claimed'))
SELECT o.statements, o.changes, extract(epoch FROM now() - o.oldest),
       h.statements, h.changes, w.batches, extract(epoch FROM now() - w.oldest)
FROM (SELECT count(*) AS statements, coalesce(sum(cardinality(keys)), 0) AS changes,
             min(created_at) AS oldest
      FROM cdc.outbox) o,
     (SELECT count(*) AS statements, coalesce(sum(cardinality(keys)), 0) AS changes
      FROM cdc.batch_changes WHERE batch_id IN (SELECT batch_id FROM waiting)) h,
     (SELECT count(*) AS batches, min(claimed_at) AS oldest FROM waiting) w

-- name: worker_state_session
-- The worker's record of its cycles (cdc.worker_state) never waits long: on its own connection.
SELECT set_config('lock_timeout', '2s', false), set_config('statement_timeout', '5s', false)

-- name: worker_started
-- A worker took the lock: its lock backend and interval. The last cycle's record stays until the next.
INSERT INTO cdc.worker_state (lock_pid, interval_s) VALUES (%(pid)s, %(interval)s)
ON CONFLICT (only_one) DO UPDATE SET lock_pid = excluded.lock_pid, interval_s = excluded.interval_s,
    started_at = now()

-- name: worker_cycle_ok
-- A cycle of the worker succeeded: a failing streak ends.
INSERT INTO cdc.worker_state (lock_pid, interval_s, last_cycle, last_cycle_at, last_ok_at)
VALUES (%(pid)s, %(interval)s, 'ok', now(), now())
ON CONFLICT (only_one) DO UPDATE SET lock_pid = excluded.lock_pid, interval_s = excluded.interval_s,
    last_cycle = 'ok', last_cycle_at = now(), last_ok_at = now(), failing_since = NULL, error = NULL

-- name: worker_cycle_failed
-- A cycle of the worker failed: its error line, and since when (the earlier start, when the recorded
-- cycle before it failed too).
INSERT INTO cdc.worker_state (lock_pid, interval_s, last_cycle, last_cycle_at, failing_since, error)
VALUES (%(pid)s, %(interval)s, 'failing', now(), %(since)s, %(error)s)
ON CONFLICT (only_one) DO UPDATE SET lock_pid = excluded.lock_pid, interval_s = excluded.interval_s,
    last_cycle = 'failing', last_cycle_at = now(), error = excluded.error,
    failing_since = CASE WHEN cdc.worker_state.last_cycle = 'failing'
                         THEN least(cdc.worker_state.failing_since, excluded.failing_since)
                         ELSE excluded.failing_since END

-- name: record_follow_problems
-- What the worker could not follow by itself (a row is made when the worker has none yet).
INSERT INTO cdc.worker_state (follow_problems) VALUES (%(problems)s)
ON CONFLICT (only_one) DO UPDATE SET follow_problems = excluded.follow_problems

-- name: follow_problems
-- Read through to_jsonb of the whole row: a ledger installed before the column existed reads as none.
SELECT to_jsonb(s) -> 'follow_problems' FROM cdc.worker_state AS s

-- name: worker_state_readable
-- Whether cdc.worker_state exists (an install older than it lacks it) and this role may read it.
SELECT CASE WHEN to_regclass('cdc.worker_state') IS NOT NULL
            THEN has_table_privilege('cdc.worker_state', 'SELECT')
            ELSE false END

-- name: worker_state
-- The worker's record, whether the backend that holds the worker lock is that worker's, and the
-- seconds since its last sign of life: its start, a cycle's end, a batch applied.
SELECT s.last_cycle, s.last_cycle_at, s.last_ok_at, s.failing_since, s.error, s.interval_s, s.started_at,
       coalesce(s.lock_pid = (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %(lock_class)s
                              AND objid = %(lock_object)s AND objsubid = 2 AND granted LIMIT 1), false),
       extract(epoch FROM now() - greatest(s.started_at, s.last_cycle_at,
           (SELECT applied_at FROM cdc.batches WHERE state = 'applied' ORDER BY batch_id DESC LIMIT 1)))
FROM cdc.worker_state s

-- ---- versions never go backwards against the target (cdc/sinks/epoch.py) --------------------------------

-- name: sequence_heads
-- The last position and batch id drawn (0: none yet), and whether this role may move them (setval).
SELECT (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM cdc.position_seq),
       (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM cdc.batch_seq),
       has_sequence_privilege('cdc.position_seq', 'UPDATE') AND has_sequence_privilege('cdc.batch_seq', 'UPDATE')

-- name: short_lock_wait
-- For the rest of the transaction: a lock not granted in 5 s fails it (retried later), instead of
-- making every capturing write queue behind the wait.
SELECT set_config('lock_timeout', '5s', true)

-- name: forget_sweeps
-- Positions move (a re-install, a restored backup): a pending sweep's positions no longer hold.
DELETE FROM cdc.sweeps

-- name: lock_outbox
-- While positions move: no statement takes a position, and no exporter claims, until the commit.
LOCK TABLE cdc.outbox IN EXCLUSIVE MODE

-- name: unapplied_positions
-- The lowest and highest position not yet in the target: the outbox's, and those of batches claimed
-- for applying and not applied (their changes and their versions).
SELECT min(p), max(p) FROM (
    SELECT pos FROM cdc.outbox
    UNION ALL
    SELECT c.pos FROM cdc.batch_changes c JOIN cdc.batches b ON b.batch_id = c.batch_id
    WHERE b.state <> 'applied' AND b.mode IN ('run', 'snapshot')
    UNION ALL
    SELECT version FROM cdc.batches WHERE state <> 'applied' AND mode IN ('run', 'snapshot')
) AS waiting(p)

-- name: renumber_outbox
-- Every waiting change moves up by the same amount: their order is kept.
UPDATE cdc.outbox SET pos = pos + %(shift)s

-- name: renumber_unapplied_changes
UPDATE cdc.batch_changes SET pos = pos + %(shift)s
WHERE batch_id IN (SELECT batch_id FROM cdc.batches WHERE state <> 'applied' AND mode IN ('run', 'snapshot'))

-- name: renumber_unapplied_batches
-- (their archive folders no longer match the ledger: the worker exports them again)
UPDATE cdc.batches SET pos_min = pos_min + %(shift)s, pos_max = pos_max + %(shift)s, version = version + %(shift)s
WHERE state <> 'applied' AND mode IN ('run', 'snapshot')

-- name: renumber_snapshot_progress
UPDATE cdc.snapshot_progress SET last_pos = last_pos + %(shift)s WHERE last_pos >= %(low)s

-- name: rebuilds_writable
-- Whether cdc.rebuilds (cdc/capture/reshape.py) exists and this role may update it.
SELECT CASE WHEN to_regclass('cdc.rebuilds') IS NOT NULL THEN has_table_privilege('cdc.rebuilds', 'UPDATE')
            ELSE false END

-- name: renumber_rebuilds
UPDATE cdc.rebuilds SET last_pos = last_pos + %(shift)s WHERE last_pos >= %(low)s

-- name: move_position_seq
SELECT setval('cdc.position_seq', %(value)s)

-- name: move_batch_seq
SELECT setval('cdc.batch_seq', %(value)s)

-- name: install_identity
-- Which install of capture this is: a re-install creates cdc.position_seq again, under a new oid.
SELECT to_regclass('cdc.position_seq')::oid

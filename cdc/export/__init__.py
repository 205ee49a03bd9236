"""From the ledger to the archive: export one batch of outbox changes (table lines and mapped documents) in one
REPEATABLE READ snapshot, read whole tables as lines, and take (and resume) a snapshot of every captured
table.
"""

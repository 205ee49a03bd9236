"""The outbox and the batch ledger in PostgreSQL (schema `cdc`): reading pending changes by position, claiming
and closing batches, the applied and exported positions, the worker's advisory lock, LISTEN/NOTIFY wake-ups
and the backlog that `cdc status` reports. It owns `schema/ledger.sql`; every statement on those tables goes
through `queries`.
"""

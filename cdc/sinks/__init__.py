"""Where batches go. `base.Sink` is the contract (apply a batch, record it as applied, report what is applied);
the worker, snapshot, replay and repair take a `Sink`. `mongo/` is the one real implementation (idempotent,
version-guarded bulk writes, the applied record and the target's version record); `memory` is an in-memory one
for unit tests of the pipeline's ordering and retry logic.
"""

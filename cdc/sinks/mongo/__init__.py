"""The MongoDB sink: the client and its error translation (`client`), and the applier of archive batches
(`applier`): idempotent, version-guarded bulk writes, the target's record of applied batches
(`_cdc_batches`) and of the highest version it was given (`_cdc_state`), which `cdc.sinks.epoch` reads
through `Sink.held` after a re-install.
"""

"""The use cases the command line, the demo and the bench share, over the worker and the pipeline:
installing capture (``install``), a sync pass up to the outbox head and the long-running worker of
`cdc run` (``sync``), a resumable snapshot (``snapshot``), replay of the archive (``replay``), verify
with repair (``repair``) and the status report (``status``). Those that write to the target take a
``Sink``; they return what happened, and leave printing it to the caller."""

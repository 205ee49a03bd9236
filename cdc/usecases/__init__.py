"""The use cases the command line, the demo and the bench share, over the worker and the pipeline: a
sync pass up to the outbox head and the long-running worker of `cdc run` (``sync``), a resumable
snapshot (``snapshot``), replay of the archive (``replay``), verify with repair (``repair``) and the
status report (``status``). They take a ``Sink``, return what happened, and leave printing it to the
caller."""

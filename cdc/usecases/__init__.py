"""The use cases the command line, the demo and the bench share, over the worker and the pipeline:
a sync pass up to the outbox head (``sync``), a resumable snapshot (``snapshot``), verify with
repair (``repair``) and the status report (``status``). They return what happened; printing it is
the caller's."""

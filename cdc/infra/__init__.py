"""The boundaries every stage stands on: the PostgreSQL connection and its error translation (`pg`), the SQL
shipped in `schema/` (`sqlfiles`), settings and the embedded stack's files (`config`, `stack_files`), logging
and secret redaction (`logs`, `redact`), durable file writes (`durable`), progress output, stop requests
(`shutdown`), the fault-injection points of the crash tests (`faults`), and the one exception root (`errors`).
Nothing here knows what a batch or a document is.
"""

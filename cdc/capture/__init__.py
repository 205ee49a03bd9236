"""What is captured and how: installing the triggers that write every change of a captured table to the outbox,
the catalog of captured tables, their columns and keys (`tables`, `catalog`), partitions and inheritance
(`hierarchy`), row-level security checks, the mapping of tables to MongoDB documents (`mapping`), and
following a migration when a captured table changes shape (`reshape`). It owns `schema/capture.sql` and
`schema/catalog.sql`.
"""

"""Developer tools: the embedded stack (embedded PostgreSQL and a MongoDB-wire server) and the
benchmark suite. Outside the pipeline core (checked by import-linter: see pyproject.toml)."""

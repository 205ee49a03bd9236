"""The Orininu demo domain: its schema helpers, its validation queries answered on MongoDB, and the
latency probe. Outside the pipeline core, which knows nothing of the Orininu dataset (checked by
import-linter: see pyproject.toml)."""

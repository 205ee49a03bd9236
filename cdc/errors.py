"""The one exception root, and its families.

Driver errors (psycopg, pymongo, OS) are translated into these at the boundary
(``cdc.pg``, ``cdc.mongo``, ``cdc.stack``); the CLI prints the chain of causes, one line each.
A class's docstring is its default message.
"""

from __future__ import annotations


class CdcError(Exception):
    """orininu-cdc failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(CdcError):
    """The configuration is incomplete or invalid."""


class UsageError(ConfigError):
    """The command line is wrong (exit code 2)."""


class PostgresError(CdcError):
    """PostgreSQL reported an error."""


class PostgresUnavailable(PostgresError):
    """PostgreSQL cannot be reached."""


class MongoError(CdcError):
    """MongoDB reported an error."""


class MongoUnavailable(MongoError):
    """MongoDB cannot be reached."""


class StackError(CdcError):
    """The embedded stack could not be managed."""


class CheckFailed(CdcError):
    """A check found problems."""

"""The one exception root, and its families.

Driver errors (psycopg, pymongo, OS) are translated into these at the boundary
(``cdc.infra.pg``, ``cdc.sinks.mongo.client``, ``cdc.devtools.stack``);
the CLI prints the chain of causes, one line each.
A class's docstring is its default message.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CdcError(Exception):
    """orininu-cdc failed."""

    # a fault that may pass on its own (a server away, the disk full): long-running loops retry it,
    # backing off; anything else stops them with one line
    transient: ClassVar[bool] = False

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

    transient = True


class ShapeChanged(PostgresError):
    """A captured table changed shape while a batch was read (a migration committed meanwhile)."""

    # the next cycle follows the migration first (cdc.capture.reshape), then reads the batch again
    transient = True


class LockBusy(PostgresError):
    """A lock was not granted within its lock_timeout (a long transaction holds the table)."""

    transient = True


class CaptureMissing(CdcError):
    """capture is not installed (removed under a running worker?): waiting for `cdc install`"""

    # a worker waits, backing off, for capture to be installed again
    transient = True


class MongoError(CdcError):
    """MongoDB reported an error."""


class MongoUnavailable(MongoError):
    """MongoDB cannot be reached."""

    transient = True


class StackError(CdcError):
    """The embedded stack could not be managed."""


class CheckFailed(CdcError):
    """A check found problems."""


class ServerDown(ConfigError):
    """The embedded stack's server is not running."""


class MappingError(UsageError):
    """The mapping file is invalid (exit 2)."""


class ArchiveError(CdcError):
    """The archive is incomplete or corrupt."""


class ArchiveWriteError(CdcError):
    """The archive could not be written (disk full, permissions): nothing was committed."""

    transient = True


class PrunedGap(ArchiveError):
    """Batches of the requested range were pruned from the archive and are not applied to the target."""


class LostBatches(ArchiveError):
    """Batches known to have been exported are missing from the archive, and the target does not hold them."""


class DocumentTooLarge(CdcError):
    """The document exceeds MongoDB's 16 MiB limit."""


class RowSecurityError(CdcError):
    """Row-level security hides rows from this role; unseen rows would be exported as deletes."""


class LockLost(CdcError):
    """The worker lock was lost (its connection dropped)."""

    transient = True


class Interrupted(CdcError):
    """The snapshot was stopped (SIGINT or SIGTERM) between two pages or two batches."""


def transient_errors() -> tuple[type[CdcError], ...]:
    """Every error class marked ``transient`` (its subclasses are caught with it)."""
    found: list[type[CdcError]] = []
    pending: list[type[CdcError]] = [CdcError]
    while pending:
        cls = pending.pop()
        if cls.transient:
            found.append(cls)
        else:
            pending.extend(cls.__subclasses__())
    return tuple(sorted(found, key=lambda cls: cls.__name__))


def shorten(value: Any, limit: int = 120) -> str:
    """``value`` as text for an error line, cut to ``limit`` characters with an ellipsis."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"

"""Versions never go backwards against the target.

Every document carries its version in ``_cdc.pos``, and a guarded write refuses a version that is not
above the stored one. Versions come from ``cdc.position_seq`` and batch ids from ``cdc.batch_seq``,
which start at 1 again after ``cdc uninstall`` and ``cdc install``, and move back with a PostgreSQL
restored from a backup: every change to a document that already exists would then be refused as
stale, and new batch ids would be ones the target and the archive already hold.

The rule: the target records the highest version it was ever given and the batches it applied
(``Sink.held``). Before ``cdc snapshot`` (at its start) and ``cdc run`` (``AligningLock``: each time it
takes its lock, and when it finds capture installed again under it) claim anything, ``align`` moves
both sequences past what the target and the archive hold, and with them the changes that wait with
positions below it, logging one line.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cdc.archive import folders as archive
from cdc.infra import pg
from cdc.infra.errors import CaptureMissing, CdcError, CheckFailed, ConfigError
from cdc.ledger import queries as ledger
from cdc.ledger.lock import WorkerLock
from cdc.sinks.base import Held, Sink

log = logging.getLogger("cdc.epoch")  # the name users filter on


def held(sink: Sink | None, archive_dir: Path | None) -> Held:
    """What the target (``sink.held``) and the archive hold: the highest batch folder counts as a batch
    the target holds. No ``sink``: the archive's alone (``cdc export``)."""
    folders = archive.batch_paths(archive_dir) if archive_dir is not None else []
    in_archive = int(folders[-1].name) if folders else 0
    if sink is None:
        return Held(0, in_archive, None)
    target = sink.held()
    return Held(target.version, max(target.batch, in_archive), target.scanned)


def align(dsn: str, sink: Sink | None, archive_dir: Path | None) -> ledger.Moved | None:
    """Move ``cdc.position_seq`` and ``cdc.batch_seq`` past what the target and the archive hold (and
    the changes waiting below it with them); one log line when they moved. None when they were past.
    Call it before anything is claimed; ``sink`` None (no target): batch ids past the archive's."""
    target = held(sink, archive_dir)
    where = sink.name if sink is not None else f"the archive {archive_dir}"
    if target.scanned is not None and target.version:
        log.info(
            "%s had no record of its versions: read the highest _cdc.pos of its %d collections (%d)",
            where,
            target.scanned,
            target.version,
        )
    with pg.connect(dsn) as conn:
        with pg.translated("checking that capture is installed"):
            installed = ledger.installed(conn)
        if not installed:
            raise CaptureMissing()
        heads = ledger.sequence_heads(conn)
        conn.rollback()
        if heads.position >= target.version and heads.batch >= target.batch:
            return None
        if not heads.may_move:
            raise ConfigError(
                f"{where} holds versions up to {target.version} and batches up to {target.batch},"
                f" beyond cdc.position_seq ({heads.position}) and cdc.batch_seq ({heads.batch}),"
                f" and role {conn.info.user} may not move them: run this command once as the owner of schema cdc,"
                f" or GRANT UPDATE ON SEQUENCE cdc.position_seq, cdc.batch_seq TO {conn.info.user}"
            )
        moved = ledger.move_past(conn, target.version, target.batch)
    if moved is not None:
        log.warning(
            "positions moved past what the target holds: cdc.position_seq %d → %d, cdc.batch_seq %d → %d,"
            " %d waiting changes renumbered (%s holds versions up to %d and batches up to %d, the archive's"
            " included: an earlier install of capture, or a PostgreSQL restored from a backup)",
            *moved.position,
            *moved.batch,
            moved.renumbered,
            where,
            target.version,
            target.batch,
            extra={"action": "positions_moved"},
        )
    return moved


class AligningLock(WorkerLock):
    """The worker lock of `cdc run`: each time it is taken, ``align`` runs before anything is claimed,
    and again when the check before a batch or a claim finds another install of capture (re-installed
    under a running worker). When MongoDB or PostgreSQL cannot be reached while the lock is taken,
    that check tries again, and its failure is the worker's to back off from."""

    def __init__(self, dsn: str, stop: threading.Event, sink: Sink, archive_dir: Path) -> None:
        super().__init__(dsn, stop)
        self.sink = sink
        self.archive_dir = archive_dir
        self.aligned = False
        self.install: int | None = None  # ledger.install_identity when last aligned

    def acquire(self, wait: bool = True) -> bool:
        if not super().acquire(wait):
            return False
        try:
            self._align()
        except CdcError as exc:
            if not exc.transient:
                self.release()
                raise
            log.warning("positions not yet compared with the target (%s); again before the first batch", exc)
        return True

    def check(self) -> None:
        super().check()
        if not self.aligned or self._install() != self.install:
            self._align()

    def _install(self) -> int | None:
        assert self.connection is not None  # the lock is held
        return ledger.install_identity(self.connection)

    def _align(self) -> None:
        self.aligned = False
        self.install = self._install()  # read first: an install made during ``align`` is seen next time
        align(self.dsn, self.sink, self.archive_dir)
        self.aligned = True


def refuse_mostly_stale(writes: int, stale: int, sink: Sink) -> None:
    """A snapshot whose writes were mostly refused as stale did not do its job: say why, and what to do."""
    if writes and stale * 2 > writes:
        raise CheckFailed(
            f"snapshot: {stale} of {writes} writes were refused as stale: {sink.name} holds"
            " newer versions (_cdc.pos) of those documents than this install of capture gives, most likely"
            " written by another install (an earlier one, a PostgreSQL restored from a backup, or another"
            f" database synced into this one). To move positions past them, drop {sink.versions_record}"
            " (the next `cdc snapshot` or `cdc run` then reads the highest _cdc.pos of every"
            " collection), then run `cdc snapshot` again"
        )

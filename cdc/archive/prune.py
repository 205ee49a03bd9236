"""Archive retention: remove batch folders applied to the target more than N days ago.

A batch folder is removed only when all of these hold:

- the ledger knows the batch, and its folder's manifest has the ledger's position range (a folder
  of another epoch, from before a reinstall, is kept);
- the batch is applied to the target: the ledger says ``applied`` (``cdc run``, ``cdc snapshot``:
  MongoDB acknowledged every write; ``cdc archive mark-loaded``: a ``cdc export`` batch loaded with
  mongoimport), or, for an ``exported`` batch of ``cdc export``, the target's
  own record (collection ``_cdc_batches``, written by ``cdc replay``) holds it, stamped after the
  ledger's ``exported_at`` (an older record belongs to another epoch);
- it was applied more than N days ago (the ledger's ``applied_at``, or the target record's).

Batches claimed and not applied, and ``.partial-*`` folders, are never touched. The changes the
ledger still holds for a pruned ``cdc export`` batch (``cdc.batch_changes``, which grows forever
otherwise) are deleted with it; the ledger's ``cdc.batches`` row stays. Pruned ids are recorded
in ``<archive>/pruned.json`` before any folder goes, so ``cdc replay`` can tell a pruned batch
(a hole it refuses to replay across) from an id burned by an interrupted export.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg

from cdc.archive import folders as archive
from cdc.infra import durable, pg
from cdc.infra.errors import ArchiveError, LostBatches, PrunedGap
from cdc.ledger import queries as ledger

log = logging.getLogger("cdc.prune")  # the name users filter on, kept across the move to packages

PRUNED = "pruned.json"
PRUNED_FORMAT = 1

TargetApplied = Callable[[Sequence[int]], dict[int, dt.datetime]]
"""The target's record of applied batches: ``{batch id: applied at}`` for those of ``ids`` it holds."""


@dataclass(frozen=True)
class Removal:
    batch_id: int
    path: Path | None  # None when the folder is already gone (its ledger changes are still dropped)
    size: int
    applied_at: dt.datetime


@dataclass
class PrunePlan:
    keep_days: float
    remove: list[Removal] = field(default_factory=list)
    kept_unapplied: list[int] = field(default_factory=list)  # not (yet) applied to the target
    kept_recent: list[int] = field(default_factory=list)  # applied within keep_days
    kept_unknown: list[int] = field(default_factory=list)  # folder of another epoch, or not in the ledger

    @property
    def bytes(self) -> int:
        return sum(item.size for item in self.remove)

    @property
    def folders(self) -> int:
        return sum(1 for item in self.remove if item.path is not None)


def folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except FileNotFoundError:
                continue
    return total


def _manifest_position(path: Path) -> tuple[str | None, str | None] | None:
    try:
        manifest = orjson.loads((path / archive.MANIFEST).read_bytes())
        position = manifest["position"]
        return position.get("min"), position.get("max")
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


def plan(
    conn: psycopg.Connection[Any], archive_dir: Path, keep_days: float, target_applied: TargetApplied
) -> PrunePlan:
    """What ``prune`` would remove; reads the ledger, the archive and (only for ``cdc export``
    batches) the target's record, and changes nothing."""
    folders = {int(path.name): path for path in archive.batch_paths(archive_dir)}
    with pg.translated("reading the ledger"):
        now_row = conn.execute("SELECT now()").fetchone()
        rows = ledger.prune_candidates(conn, sorted(folders))
    conn.commit()
    assert now_row is not None
    cutoff: dt.datetime = now_row[0] - dt.timedelta(days=keep_days)
    result = PrunePlan(keep_days)
    exported = [int(row[0]) for row in rows if row[2] == "exported" and row[1] == "export"]
    recorded = target_applied(exported) if exported else {}
    in_ledger = set()
    for batch_id, mode, state, pos_min, pos_max, exported_at, ledger_applied_at in rows:
        in_ledger.add(batch_id)
        applied_at: dt.datetime | None = None
        if state == "applied":
            applied_at = ledger_applied_at
        elif state == "exported" and mode == "export" and batch_id in recorded:
            stamp = recorded[batch_id]
            # BSON keeps milliseconds: allow the truncation, no more
            if exported_at is None or stamp >= exported_at - dt.timedelta(milliseconds=1):
                applied_at = stamp
        path = folders.get(batch_id)
        if applied_at is None:
            result.kept_unapplied.append(batch_id)
        elif applied_at > cutoff:
            result.kept_recent.append(batch_id)
        elif path is not None and _manifest_position(path) != (pos_min, pos_max):
            result.kept_unknown.append(batch_id)
        else:
            result.remove.append(Removal(batch_id, path, folder_size(path) if path else 0, applied_at))
    result.kept_unknown.extend(sorted(set(folders) - in_ledger))
    return result


def execute(conn: psycopg.Connection[Any], archive_dir: Path, chosen: PrunePlan) -> None:
    """Record the pruned ids, remove the folders, then drop the ledger's change lists of those batches."""
    if not chosen.remove:
        return
    ids = [item.batch_id for item in chosen.remove]
    record_pruned(archive_dir, ids)
    for item in chosen.remove:
        if item.path is not None:
            shutil.rmtree(item.path)
            log.info(
                "pruned batch %d (%d bytes)",
                item.batch_id,
                item.size,
                extra={"action": "prune", "batch": item.batch_id},
            )
    durable.fsync_dir(archive_dir)
    with pg.translated("dropping the ledger's changes of pruned batches"):
        ledger.release_changes(conn, ids)
        conn.commit()


# ---- the archive's record of pruned batches ------------------------------------------------------


def _ranges(ids: Iterable[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for batch_id in sorted(set(ids)):
        if ranges and batch_id == ranges[-1][1] + 1:
            ranges[-1][1] = batch_id
        else:
            ranges.append([batch_id, batch_id])
    return ranges


def describe_ids(ids: Iterable[int]) -> str:
    """``3, 5–9, 12``."""
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in _ranges(ids))


def read_pruned(archive_dir: Path) -> set[int]:
    """The batch ids ``cdc archive prune`` removed from this archive."""
    try:
        record = orjson.loads((archive_dir / PRUNED).read_bytes())
    except FileNotFoundError:
        return set()
    except orjson.JSONDecodeError as exc:
        raise ArchiveError(f"{archive_dir / PRUNED} is not valid JSON ({exc})") from None
    if record.get("format") != PRUNED_FORMAT:
        raise ArchiveError(f"{archive_dir / PRUNED}: unknown format {record.get('format')!r}")
    return {batch_id for first, last in record["batches"] for batch_id in range(int(first), int(last) + 1)}


def record_pruned(archive_dir: Path, ids: Iterable[int]) -> None:
    """Add ``ids`` to ``pruned.json`` durably (temporary file, fsync, rename, fsync the folder)."""
    record = {
        "format": PRUNED_FORMAT,
        "batches": _ranges(read_pruned(archive_dir) | set(ids)),
        "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
    }
    durable.write_file(archive_dir / PRUNED, orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))


# ---- replay across a pruned range, or a lost folder --------------------------------------------


@dataclass
class ReplayGaps:
    """Batch ids of a replay's range without a folder that do not stop the replay."""

    burned: list[int] = field(default_factory=list)  # the ledger never committed them: interrupted claims
    unpublished: list[int] = field(default_factory=list)  # committed, still a partial folder, after the range's last
    held: list[int] = field(default_factory=list)  # the target records them as applied: it has their changes
    unknown: list[int] = field(default_factory=list)  # between present folders; no ledger could be consulted


def check_replay(
    directory: Path,
    selected: Sequence[int],
    done: set[int],
    first: int | None,
    last: int | None,
    *,
    committed: set[int] | None,
) -> ReplayGaps:
    """Refuse a replay that would leave out changes the target does not hold; sort the other missing
    ids. Nothing is applied before this runs.

    ``selected`` are the batch folders of the range, ``done`` the target's record of applied batches
    and ``committed`` the ledger's batch ids of the range (``ledger.committed_batches``), or None
    when the ledger could not be consulted. Refused:

    - a batch pruned from the archive (``pruned.json``) that the target has not applied, when a
      later batch would be replayed over it (``PrunedGap``);
    - a batch the ledger committed (so it held changes) whose folder is missing, and that the target
      has not applied (``LostBatches``): a folder deleted or lost, including before the first and
      after the last folder of the range.

    A committed batch still in its ``.partial-`` folder after the range's last folder is being
    published by an export (or is, after a crash, by the next one): it is left for the next replay.
    Without the ledger, a gap between folders that the target has not applied cannot be told from
    an id burned by an interrupted claim: it is returned as ``unknown``, for a warning. Read the
    ledger before listing the folders, so a batch committed meanwhile is seen in one of its forms.
    """
    pruned = read_pruned(directory)

    def in_range(batch_id: int) -> bool:
        return (first is None or batch_id >= first) and (last is None or batch_id <= last)

    _refuse_pruned_holes(directory, [b for b in pruned if in_range(b) and b not in done], selected)
    present = set(selected)
    missing = {
        batch_id for before, after in itertools.pairwise(sorted(present)) for batch_id in range(before + 1, after)
    }
    if committed is not None:
        missing |= {batch_id for batch_id in committed if in_range(batch_id) and batch_id not in present}
    gaps = ReplayGaps()
    lost: list[int] = []
    for batch_id in sorted(missing - pruned):  # a pruned batch was checked above
        if batch_id in done:
            gaps.held.append(batch_id)
        elif committed is None:
            gaps.unknown.append(batch_id)
        elif batch_id not in committed:
            gaps.burned.append(batch_id)
        elif (directory / f"{archive.PARTIAL_PREFIX}{archive.batch_folder_name(batch_id)}").is_dir():
            # committed, not yet renamed into place: an export is publishing it (or will, after a crash)
            (gaps.unpublished if not present or batch_id > max(present) else lost).append(batch_id)
        else:
            lost.append(batch_id)
    if lost:
        follows = ""
        if lost[-1] < max(present, default=0):
            follows = f", or replay only what follows with --from {lost[-1] + 1}"
        raise LostBatches(
            f"batches {describe_ids(lost)} are missing from {directory}, but the ledger records them as exported "
            "and the target does not record them as applied: replaying without them would leave their changes "
            f"out. Restore the folders, or rebuild the target with `cdc snapshot`{follows}"
        )
    return gaps


def _refuse_pruned_holes(directory: Path, unapplied_pruned: Sequence[int], selected: Sequence[int]) -> None:
    """``PrunedGap`` when a batch pruned from the archive, and not applied by the target, would be
    replayed over: a batch after it is selected."""
    holes = sorted(
        batch_id
        for batch_id in unapplied_pruned
        if not (directory / archive.batch_folder_name(batch_id)).is_dir()
        and (not selected or batch_id < max(selected))  # nothing after it would be replayed over the hole
    )
    if holes:
        raise PrunedGap(
            f"batches {describe_ids(holes)} were pruned from {directory} (`cdc archive prune`) and the target "
            "does not record them as applied: replaying past them would leave their changes out. Rebuild the "
            f"target with `cdc snapshot` instead, or replay only what follows with --from {holes[-1] + 1}"
        )

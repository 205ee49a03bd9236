"""Replay: apply the archive's batches to a sink, in batch order (rebuild a target, audit)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cdc.archive import folders as archive
from cdc.archive.prune import ReplayGaps, check_replay
from cdc.infra.progress import track
from cdc.sinks.base import Sink

# its progress lines keep the command's logger name, what users filter on
log = logging.getLogger("cdc.commands.replay")


@dataclass(frozen=True)
class Replayed:
    applied: int
    skipped: int  # recorded as applied by the target already (without ``force``)


def replay(
    sink: Sink,
    directory: Path,
    *,
    first: int | None,
    last: int | None,
    force: bool,
    committed: set[int] | None,
    on_gaps: Callable[[ReplayGaps], None],
) -> Replayed:
    """Apply the batches of ``directory`` from ``first`` to ``last`` to ``sink``, in batch order.

    ``committed``: the ledger's committed batch ids of the range (None: the ledger could not be
    consulted), read before the folder is listed (see ``check_replay``), which refuses gaps that lose
    changes before anything is applied; ``on_gaps`` is told the harmless ones. Every batch of the range
    is checked (manifest, every file's sha256 and line count) before the first write, so a damaged
    batch stops the replay with nothing applied. Batches the sink records as applied are skipped
    unless ``force``."""
    done = sink.applied_batches()
    paths = [
        path
        for path in archive.batch_paths(directory)
        if (first is None or int(path.name) >= first) and (last is None or int(path.name) <= last)
    ]
    on_gaps(check_replay(directory, [int(path.name) for path in paths], done, first, last, committed=committed))
    batches = []
    with track("check", total=len(paths), unit="batches", logger=log) as progress:
        for path in paths:
            progress.note(path.name)
            batches.append(archive.read_batch(path))
            progress.update(1)
    applied = skipped = 0
    with track("replay", total=len(batches), unit="batches", logger=log) as progress:
        for batch in batches:
            progress.note(batch.path.name)
            if batch.batch_id in done and not force:
                skipped += 1
            else:
                sink.apply(batch)
                sink.mark_applied(batch.batch_id)
                applied += 1
            progress.update(1)
    return Replayed(applied, skipped)

"""The archive: the contract between export and apply.

::

    <archive>/<batch>/              batch = zero-padded ledger id; folder 0700, files 0600
        manifest.json               written last: a batch without a valid manifest is incomplete
        <file>.upsert.jsonl         mongoimport --mode=upsert --upsertFields=_id
        <file>.delete.jsonl         mongoimport --mode=delete --upsertFields=_id
        rejected.jsonl              rows that could not be carried: table, key, reason

A batch is written under ``.partial-<batch>``: each file to a temporary name, fsynced, renamed;
the folder fsynced; the manifest last; then the folder is renamed into place and the archive
folder fsynced. A crash leaves at worst a ``.partial-*`` folder, which is never applied.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import re
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from cdc.infra import durable, faults
from cdc.infra.errors import ArchiveError, ArchiveWriteError

# 2: mapped collections (documents built from many rows) carry the batch's version in ``_cdc.pos``
# instead of a row's position, and the manifest says which collections are mapped ("documents").
FORMAT_VERSION = 2
READABLE_FORMATS = frozenset({1, 2})
MANIFEST = "manifest.json"
REJECTED = "rejected.jsonl"
PARTIAL_PREFIX = ".partial-"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
REJECTED_COLLECTION = "\x00rejected"  # never a real collection name (NUL cannot appear in one)


def batch_folder_name(batch_id: int) -> str:
    return f"{batch_id:012d}"


def file_stem(collection: str) -> str:
    """A file name for ``collection`` that is safe on every file system and unique even when two
    collections differ only by case or by characters that are replaced."""
    readable = _UNSAFE.sub("_", collection).strip("_")[:48] or "collection"
    digest = hashlib.sha256(collection.encode("utf-8")).hexdigest()[:10]
    return f"{readable}-{digest}"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def check_writable(archive_dir: Path) -> None:
    """Raise ``ArchiveWriteError`` unless a file can be created and written in ``archive_dir``
    (created 0700 when missing). Exporters call it before claiming, so an archive that cannot be
    written costs no batch id and leaves the changes in the outbox."""
    try:
        faults.disk_write()
        if archive_dir.exists() and not archive_dir.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        _private_dir(archive_dir)
        probe = archive_dir / f".probe-{os.getpid()}-{threading.get_ident()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\n")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise ArchiveWriteError(f"cannot write to {archive_dir}: {exc.strerror or exc}") from None


def publish(partial: Path, final: Path) -> None:
    """Rename a finished batch folder into place; a re-export of the same batch replaces the old copy."""
    if final.exists():
        shutil.rmtree(final)
    os.rename(partial, final)
    durable.fsync_dir(final.parent)


@dataclass
class _OpenFile:
    name: str
    collection: str
    op: str
    handle: IO[bytes]
    digest: Any = field(default_factory=hashlib.sha256)
    lines: int = 0


class BatchWriter:
    """Writes one batch folder; ``commit`` makes it visible, ``abort`` removes it."""

    def __init__(self, archive_dir: Path, batch_id: int) -> None:
        self.archive_dir = archive_dir
        self.batch_id = batch_id
        _private_dir(archive_dir)
        self.final = archive_dir / batch_folder_name(batch_id)
        self.partial = archive_dir / f"{PARTIAL_PREFIX}{batch_folder_name(batch_id)}"
        if self.partial.exists():
            shutil.rmtree(self.partial)
        _private_dir(self.partial)
        self._files: dict[tuple[str, str], _OpenFile] = {}
        self.counts: dict[str, Counter[str]] = {}
        self.truncates: list[dict[str, str]] = []
        self.positions: list[int] = []
        self.excluded: dict[str, list[str]] = {}  # "schema.table" → columns left out by configuration
        # mapped collections → {"root": "schema.table", "version": "…"}: their documents carry the
        # batch's version in _cdc.pos (format 2)
        self.documents: dict[str, dict[str, str]] = {}

    def _file(self, collection: str, op: str) -> _OpenFile:
        entry = self._files.get((collection, op))
        if entry is None:
            name = f"{file_stem(collection)}.{op}.jsonl" if op != "rejected" else REJECTED
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | durable.binary_flag()  # Windows: no \r\n
            fd = os.open(self.partial / f".{name}.tmp", flags, 0o600)
            entry = _OpenFile(name, collection, op, os.fdopen(fd, "wb", buffering=1 << 20))
            self._files[(collection, op)] = entry
        return entry

    def write(self, collection: str, op: str, line: bytes) -> None:
        """Append one line (bytes ending in a newline) to the collection's ``op`` file."""
        faults.disk_write()
        entry = self._file(collection, op)
        entry.handle.write(line)
        entry.digest.update(line)
        entry.lines += 1
        self.counts.setdefault(collection, Counter())[op] += 1

    def write_many(self, collection: str, op: str, lines: list[bytes]) -> None:
        if not lines:
            return
        faults.disk_write()
        entry = self._file(collection, op)
        data = b"".join(lines)
        entry.handle.write(data)
        entry.digest.update(data)
        entry.lines += len(lines)
        self.counts.setdefault(collection, Counter())[op] += len(lines)

    def reject(self, table: str, key: Any, reason: str, pos: int, column: str | None = None) -> None:
        line = orjson.dumps(
            {"table": table, "key": key, "column": column, "reason": reason, "pos": pos},
            default=str,
            option=orjson.OPT_APPEND_NEWLINE,
        )
        self.write(REJECTED_COLLECTION, "rejected", line)
        self.counts.setdefault(table, Counter())["rejected"] += 1

    def collection_counts(self) -> dict[str, dict[str, int]]:
        """Lines per collection and op (``rejected`` counted under the table's name)."""
        return {
            collection: dict(counter)
            for collection, counter in sorted(self.counts.items())
            if collection != REJECTED_COLLECTION
        }

    def truncate(self, collection: str, pos: int) -> None:
        self.truncates.append({"collection": collection, "pos": str(pos)})

    def finish(self, pos_min: int | None, pos_max: int | None, extra: dict[str, Any] | None = None) -> None:
        """Make every file durable and write the manifest; the batch stays under its partial name."""
        files = {}
        for entry in self._files.values():
            entry.handle.flush()
            os.fsync(entry.handle.fileno())
            entry.handle.close()
            os.rename(self.partial / f".{entry.name}.tmp", self.partial / entry.name)
            files[entry.name] = {
                "collection": entry.collection,
                "op": entry.op,
                "lines": entry.lines,
                "sha256": entry.digest.hexdigest(),
            }
        durable.fsync_dir(self.partial)
        manifest = {
            "format": FORMAT_VERSION,
            "batch": self.batch_id,
            "position": {
                "min": str(pos_min) if pos_min is not None else None,
                "max": str(pos_max) if pos_max is not None else None,
            },
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "files": files,
            "counts": self.collection_counts(),
            "truncates": self.truncates,
            "excluded": self.excluded,
            "documents": self.documents,
            **(extra or {}),
        }
        durable.write_file(
            self.partial / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        )

    def publish(self) -> Path:
        """Move the finished batch into place (after the ledger committed it)."""
        publish(self.partial, self.final)
        return self.final

    def abort(self) -> None:
        for entry in self._files.values():
            entry.handle.close()
        shutil.rmtree(self.partial, ignore_errors=True)


@dataclass(frozen=True)
class Batch:
    """A complete batch on disk, its manifest checked against its files."""

    batch_id: int
    path: Path
    manifest: dict[str, Any]

    def files(self, op: str) -> list[tuple[str, Path]]:
        """(collection, path) of every ``op`` file."""
        return [
            (meta["collection"], self.path / name)
            for name, meta in sorted(self.manifest["files"].items())
            if meta["op"] == op
        ]


def read_batch(path: Path) -> Batch:
    """Load and verify one batch folder: manifest present and parsable, every file's sha256 and line count."""
    manifest_path = path / MANIFEST
    try:
        manifest = orjson.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        raise ArchiveError(f"batch {path.name} is incomplete: no {MANIFEST}") from None
    except orjson.JSONDecodeError as exc:
        raise ArchiveError(f"batch {path.name}: {MANIFEST} is not valid JSON ({exc})") from None
    if manifest.get("format") not in READABLE_FORMATS:
        raise ArchiveError(f"batch {path.name}: unknown format {manifest.get('format')!r}")
    for name, meta in manifest["files"].items():
        if "/" in name or name.startswith("."):
            raise ArchiveError(f"batch {path.name}: unsafe file name {name!r} in {MANIFEST}")
        digest = hashlib.sha256()
        lines = 0
        try:
            with (path / name).open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
                    lines += chunk.count(b"\n")
        except FileNotFoundError:
            raise ArchiveError(f"batch {path.name}: {name} is missing") from None
        if digest.hexdigest() != meta["sha256"] or lines != meta["lines"]:
            raise ArchiveError(f"batch {path.name}: {name} does not match its checksum in {MANIFEST}")
    return Batch(int(manifest["batch"]), path, manifest)


def batch_paths(archive_dir: Path) -> list[Path]:
    """Complete-looking batch folders in batch order (partial folders excluded)."""
    if not archive_dir.is_dir():
        return []
    return sorted(path for path in archive_dir.iterdir() if path.is_dir() and path.name.isdigit())


def partial_batches(archive_dir: Path) -> list[Path]:
    if not archive_dir.is_dir():
        return []
    return sorted(path for path in archive_dir.iterdir() if path.name.startswith(PARTIAL_PREFIX))


def top_version(manifest: dict[str, Any]) -> int:
    """The highest ``_cdc.pos`` a batch's documents and truncate markers carry: its last position, or
    a mapped collection's version (0 for a batch with none)."""
    found = [manifest.get("position", {}).get("max")]
    found += [entry.get("version") for entry in (manifest.get("documents") or {}).values()]
    found += [marker.get("pos") for marker in manifest.get("truncates") or ()]
    return max((int(value) for value in found if value is not None), default=0)

"""Durable writes where the POSIX-only calls are missing (Windows: no ``os.O_DIRECTORY``, a directory
cannot be opened, ``os.O_BINARY`` needed): an archive batch is still written and reads back whole."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cdc.archive import folders as archive
from cdc.infra import durable

FAKE_O_BINARY = 1 << 30  # a bit no POSIX open flag uses: stripped before the real open


@pytest.fixture
def windows_like(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Takes the POSIX-only attributes away, refuses to open a directory (as Windows does) and adds an
    ``O_BINARY``; returns the flags each file was opened with, by name."""
    for name in ("O_DIRECTORY", "O_NOFOLLOW", "O_CLOEXEC", "fchmod", "fchown", "fdatasync"):
        monkeypatch.delattr(os, name, raising=False)
    monkeypatch.setattr(os, "O_BINARY", FAKE_O_BINARY, raising=False)
    real_open = os.open
    flags_by_name: dict[str, int] = {}

    def windows_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if Path(path).is_dir():
            raise PermissionError(13, "Permission denied", str(path))
        flags_by_name[Path(path).name] = flags
        return real_open(path, flags & ~FAKE_O_BINARY, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", windows_open)
    return flags_by_name


def test_fsync_dir_is_skipped_where_a_directory_cannot_be_opened(tmp_path: Path, windows_like: dict[str, int]) -> None:
    durable.fsync_dir(tmp_path)  # no O_DIRECTORY: nothing opened, nothing raised
    assert windows_like == {}


def test_write_file_replaces_the_file_in_binary_mode(tmp_path: Path, windows_like: dict[str, int]) -> None:
    target = tmp_path / "state.json"
    durable.write_file(target, b"old\n")
    durable.write_file(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert windows_like[".state.json.tmp"] & FAKE_O_BINARY
    assert [path.name for path in tmp_path.iterdir()] == ["state.json"]  # no temporary file left


def test_an_archive_batch_is_written_and_readable(tmp_path: Path, windows_like: dict[str, int]) -> None:
    writer = archive.BatchWriter(tmp_path, 7)
    upserts = [b'{"_id": %d, "_cdc": {"pos": {"$numberLong": "%d"}}}\n' % (n, 70 + n) for n in range(3)]
    writer.write_many("users", "upsert", upserts)
    writer.write("users", "delete", b'{"_id": 9}\n')
    writer.reject("public.users", [10], "a value the mapping cannot carry", 79)
    writer.finish(70, 79, {"mode": "export"})
    path = writer.publish()

    batch = archive.read_batch(path)  # every file's checksum and line count, against the manifest
    assert batch.batch_id == 7 and path == tmp_path / archive.batch_folder_name(7)
    assert batch.manifest["position"] == {"min": "70", "max": "79"}
    assert batch.manifest["counts"] == {"public.users": {"rejected": 1}, "users": {"upsert": 3, "delete": 1}}
    [(collection, upsert_file)] = batch.files("upsert")
    assert collection == "users" and upsert_file.read_bytes() == b"".join(upserts)
    assert archive.batch_paths(tmp_path) == [path] and archive.partial_batches(tmp_path) == []
    assert windows_like[".manifest.json.tmp"] & FAKE_O_BINARY

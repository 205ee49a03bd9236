"""An in-memory MongoDB stand-in for pure tests: applies archive batches with the applier's rules
(guarded upserts and deletes on _cdc.pos, truncate markers first, batches in order)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from cdc.archive import folders as archive


def pos_of(document: dict[str, Any]) -> int:
    return int(document["_cdc"]["pos"]["$numberLong"])


def id_key(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document["_id"], option=orjson.OPT_SORT_KEYS)


class ModelStore:
    def __init__(self) -> None:
        self.collections: dict[str, dict[bytes, dict[str, Any]]] = {}

    def collection(self, name: str) -> dict[bytes, dict[str, Any]]:
        return self.collections.setdefault(name, {})

    def apply_batch(self, batch: archive.Batch) -> None:
        for marker in batch.manifest["truncates"]:
            docs = self.collection(marker["collection"])
            for key in [key for key, doc in docs.items() if pos_of(doc) < int(marker["pos"])]:
                del docs[key]
        for op in ("upsert", "delete"):
            for collection, path in batch.files(op):
                docs = self.collection(collection)
                for line in path.read_bytes().splitlines():
                    incoming = orjson.loads(line)
                    key = id_key(incoming)
                    current = docs.get(key)
                    if current is not None and pos_of(current) >= pos_of(incoming):
                        continue  # stale: a newer change is already there
                    if op == "upsert":
                        docs[key] = incoming
                    elif current is not None:
                        del docs[key]

    def apply_archive(self, archive_dir: Path) -> int:
        paths = archive.batch_paths(archive_dir)
        for path in paths:
            self.apply_batch(archive.read_batch(path))
        return len(paths)

    def without_positions(self, collection: str) -> dict[bytes, dict[str, Any]]:
        return {key: {k: v for k, v in doc.items() if k != "_cdc"} for key, doc in self.collection(collection).items()}


def documents_without_positions(lines: Iterable[bytes]) -> dict[bytes, dict[str, Any]]:
    found = {}
    for line in lines:
        doc = orjson.loads(line)
        found[id_key(doc)] = {k: v for k, v in doc.items() if k != "_cdc"}
    return found

"""The MongoDB boundary: clients and error translation. Plain pymongo only, so Atlas works unchanged."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pymongo
import pymongo.errors
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from cdc.infra.errors import MongoError, MongoUnavailable
from cdc.infra.redact import redact, register_secret, secrets_in


def codec_options(*, raw: bool = False) -> CodecOptions[Any]:
    """How the pipeline reads BSON: aware UTC datetimes, standard (subtype 4) UUIDs; with ``raw``,
    documents stay undecoded (``RawBSONDocument``) until a field is read."""
    if raw:
        return CodecOptions(document_class=RawBSONDocument, tz_aware=True, tzinfo=dt.UTC, uuid_representation=4)
    return CodecOptions(tz_aware=True, tzinfo=dt.UTC, uuid_representation=4)


def describe(exc: pymongo.errors.PyMongoError) -> str:
    """One line for a pymongo error, password-free."""
    text = str(exc).split(", Timeout:")[0]
    return redact(" ".join(text.split()))[:500]


def client(uri: str, *, timeout_ms: int = 10_000) -> pymongo.MongoClient[dict[str, Any]]:
    """A connected client; ``MongoUnavailable`` when the server does not answer a ping."""
    for secret in secrets_in(uri):
        register_secret(secret)
    try:
        options: dict[str, Any] = {"appname": "orininu-cdc", "tz_aware": True}
        if "serverselectiontimeoutms" not in uri.lower():  # a URI option wins over our default
            options["serverSelectionTimeoutMS"] = timeout_ms
        mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri, **options)
        mongo.admin.command("ping")
    except pymongo.errors.PyMongoError as exc:
        raise MongoUnavailable(f"cannot connect to MongoDB: {describe(exc)}") from None
    return mongo


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn pymongo errors raised inside the block into ``MongoError`` naming ``action``."""
    try:
        yield
    except (pymongo.errors.AutoReconnect, pymongo.errors.ServerSelectionTimeoutError) as exc:
        raise MongoUnavailable(f"{action}: {describe(exc)}") from exc
    except pymongo.errors.PyMongoError as exc:
        raise MongoError(f"{action}: {describe(exc)}") from exc

"""Where each setting comes from: flag, then ``CDC_*`` environment, then libpq's ``PG*`` variables
(PostgreSQL only), then a running embedded stack under the data folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cdc.infra.errors import (
    ConfigError,
    ServerDown,
    UsageError,
)
from cdc.infra.redact import register_secret, secrets_in
from cdc.infra.stack_files import StackFiles

DEFAULT_DATA_DIR = Path(".orininu")
DEFAULT_MONGO_DB = "orininu"
# Any of these set means "let libpq decide" (an empty conninfo string picks them up).
LIBPQ_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")


def refuse_password_in_argument(flag: str, value: str | None, variable: str | None = None) -> None:
    """Passwords on the command line are visible to every local user through ``ps``.

    The refusal names the server's own ways: ``variable`` (default ``CDC_PG_DSN`` for ``--pg``,
    ``CDC_MONGO_URI`` for ``--mongo``), and for PostgreSQL libpq's ``PGPASSFILE``.
    """
    if not value or not secrets_in(value):
        return
    if flag == "--mongo":
        ways = (
            f"put the URI in {variable or 'CDC_MONGO_URI'} in the environment, for instance from a 0600 file "
            "(`set -a; . FILE; set +a`, or systemd's EnvironmentFile=)"
        )
    else:
        ways = (
            f"put the DSN in {variable or 'CDC_PG_DSN'} in the environment, "
            "or keep the password in PGPASSFILE (a 0600 file)"
        )
    raise UsageError(f"{flag} must not contain a password (anyone can read process arguments): {ways}")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    pg_dsn_given: str | None = None
    mongo_uri_given: str | None = None
    mongo_db: str = DEFAULT_MONGO_DB
    archive_dir_given: Path | None = None

    def __post_init__(self) -> None:
        for value in (self.pg_dsn_given, self.mongo_uri_given):
            for secret in secrets_in(value or ""):
                register_secret(secret)

    @property
    def archive_dir(self) -> Path:
        return self.archive_dir_given or self.data_dir / "archive"

    def _stack_env(self, server: str) -> dict[str, str] | None:
        """The embedded stack's settings when its ``server`` ("postgresql" or "mongodb") runs: one
        server down does not hide the other (``cdc status`` needs PostgreSQL only)."""
        stack = StackFiles(self.data_dir)
        env = stack.running_env()
        if env:
            return env
        if stack.paths.env_file.exists() and any(state.name == server and state.running for state in stack.status()):
            return stack.env()
        return None

    def _stack_down(self, what: str, flag: str, variable: str) -> ServerDown | None:
        """The error naming the embedded stack's ``what`` server as down, when there is a stack."""
        if not StackFiles(self.data_dir).paths.env_file.exists():
            return None
        return ServerDown(
            f"the embedded stack's {what} server under {self.data_dir} is down: start it with "
            f"`cdc stack up --data-dir {self.data_dir}`, or pass {flag} / set {variable}"
        )

    def pg_dsn(self) -> str:
        """The PostgreSQL connection string to use, or ``ConfigError`` naming the ways to set one."""
        if self.pg_dsn_given:
            return self.pg_dsn_given
        if any(os.environ.get(name) for name in LIBPQ_VARIABLES):
            return ""
        stack_env = self._stack_env("postgresql")
        if stack_env:
            return stack_env["CDC_PG_DSN"]
        raise self._stack_down("PostgreSQL", "--pg", "CDC_PG_DSN") or ConfigError(
            "no PostgreSQL configured: pass --pg, set CDC_PG_DSN or PGHOST/PGDATABASE, "
            f"or start the embedded stack with `cdc stack up --data-dir {self.data_dir}`"
        )

    def mongo_uri(self) -> str:
        """The MongoDB URI to use, or ``ConfigError`` naming the ways to set one."""
        if self.mongo_uri_given:
            return self.mongo_uri_given
        stack_env = self._stack_env("mongodb")
        if stack_env:
            return stack_env["CDC_MONGO_URI"]
        raise self._stack_down("MongoDB", "--mongo", "CDC_MONGO_URI") or ConfigError(
            "no MongoDB configured: pass --mongo, set CDC_MONGO_URI, "
            f"or start the embedded stack with `cdc stack up --data-dir {self.data_dir}`"
        )

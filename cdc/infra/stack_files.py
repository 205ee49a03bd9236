"""What the embedded stack (``cdc stack up``, ``cdc.devtools.stack``) leaves under its data folder,
read without starting anything: where its files are, whether its servers run, and the connection
settings it wrote. The settings' last resort (``cdc.infra.config``) reads it here.

Layout of ``<data-dir>``:

- ``pg/``          PostgreSQL data directory (``pg/server.log`` is its log, ``pg/postmaster.pid`` its pid and port)
- ``mongo/``       SecantusDB storage; ``mongo.log`` its log, ``mongo.pid`` its process id and port
- ``stack.json``   ports and the generated PostgreSQL password (0600)
- ``stack.env``    ``CDC_PG_DSN=`` and ``CDC_MONGO_URI=`` (0600), read by every other command
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdc.infra.redact import register_secret

HOST = "127.0.0.1"
PG_DATABASE = "orininu"
PG_SUPERUSER = "postgres"


@dataclass(frozen=True)
class ServerState:
    name: str
    running: bool
    pid: int | None
    port: int | None
    data_path: Path
    log_path: Path


@dataclass(frozen=True)
class StackPaths:
    root: Path

    @property
    def pgdata(self) -> Path:
        return self.root / "pg"

    @property
    def pg_log(self) -> Path:
        return self.pgdata / "server.log"

    @property
    def mongo_data(self) -> Path:
        return self.root / "mongo"

    @property
    def mongo_log(self) -> Path:
        return self.root / "mongo.log"

    @property
    def mongo_pid(self) -> Path:
        return self.root / "mongo.pid"

    @property
    def state_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def env_file(self) -> Path:
        return self.root / "stack.env"


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class StackFiles:
    """The embedded stack's files under one data folder, read only."""

    def __init__(self, data_dir: Path) -> None:
        self.paths = StackPaths(data_dir.expanduser().resolve())

    def _state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.paths.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        register_secret(state.get("pg_password"))
        return state

    def env(self) -> dict[str, str]:
        """The connection settings of this stack (as written to ``stack.env``)."""
        state = self._state()
        return {
            "CDC_PG_DSN": (
                f"postgresql://{PG_SUPERUSER}:{state['pg_password']}@{HOST}:{state['pg_port']}/{PG_DATABASE}"
            ),
            "CDC_MONGO_URI": f"mongodb://{HOST}:{state['mongo_port']}/?directConnection=true",
        }

    def pg_state(self) -> ServerState:
        pid_file = self.paths.pgdata / "postmaster.pid"
        pid = port = None
        running = False
        with contextlib.suppress(OSError, ValueError, IndexError):
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
            running = pid_alive(pid)
        return ServerState("postgresql", running, pid, port, self.paths.pgdata, self.paths.pg_log)

    def mongo_state(self) -> ServerState:
        pid = port = None
        running = False
        with contextlib.suppress(OSError, ValueError):
            pid_text, port_text = self.paths.mongo_pid.read_text().split()
            pid, port = int(pid_text), int(port_text)
            running = pid_alive(pid) and self._is_secantus(pid)
        return ServerState("mongodb", running, pid, port, self.paths.mongo_data, self.paths.mongo_log)

    @staticmethod
    def _is_secantus(pid: int) -> bool:
        try:
            return b"secantus" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True  # no /proc: trust the pid

    def status(self) -> list[ServerState]:
        return [self.pg_state(), self.mongo_state()]

    def running_env(self) -> dict[str, str] | None:
        """The stack's settings when both servers run, else ``None``."""
        if not self.paths.env_file.exists():
            return None
        if not all(server.running for server in self.status()):
            return None
        return self.env()

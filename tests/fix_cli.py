"""Run the real `cdc` entry point in a child process, with a controlled environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

CdcRunner = Callable[..., subprocess.CompletedProcess[str]]

# Never let the developer's own settings leak into a test.
_SCRUBBED = ("CDC_", "PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE", "PGPASSWORD", "PGHOSTADDR")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(_SCRUBBED)}
    env.update(extra or {})
    return env


@pytest.fixture
def cdc(tmp_path: Path) -> CdcRunner:
    """``cdc(*args, env={...}, timeout=...)`` runs ``python -m cdc`` and returns the completed process."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cdc", *args],
            env=clean_env(env),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


def start_cdc(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdout: int = subprocess.PIPE
) -> subprocess.Popen[str]:
    """``python -m cdc *args`` started in the background (stderr piped, text mode), for a test that
    signals it, reads its lines while it runs, or runs something beside it."""
    return subprocess.Popen(
        [sys.executable, "-m", "cdc", *args],
        env=clean_env(env),
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )

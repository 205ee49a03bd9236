"""Every test in this folder runs against real servers: marked ``integration`` (``-m "not integration"``
runs the unit tests alone)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc.devtools.stack import Stack
from tests.fix_backends import backend_kind

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def own_stack() -> Iterator[tuple[Stack, dict[str, str], Path]]:
    """A private embedded stack (stack, its settings, its folder), for a test that stops or restarts
    one of its servers: other backends are not ours to stop, so those tests need the embedded one."""
    if backend_kind() != "embedded":
        pytest.skip("stops a server of its own embedded stack; other backends are not ours to stop")
    folder = Path(tempfile.mkdtemp(prefix="cdc-own-stack-"))
    stack = Stack(folder, fast=True)
    stack_env = stack.up()
    yield stack, stack_env, folder
    stack.down()
    shutil.rmtree(folder, ignore_errors=True)

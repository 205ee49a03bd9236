"""The Go driver's Extended JSON parser, as mongoimport calls it: ``shared/tools/mongoimport-parse/check``.

The tool lives in the workspace's ``shared/`` folder beside the clone (CI has it there), not in
the project. Where it is absent, the tests that need it say so and skip; ``MONGOIMPORT_PARSE_CHECK``
points at another copy.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest


def check_tool() -> Path:
    configured = os.environ.get("MONGOIMPORT_PARSE_CHECK")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared" / "tools" / "mongoimport-parse" / "check"


def mongoimport_parse(*paths: Path) -> list[dict[str, Any]]:
    """Run the parser over ``paths``; every line must parse. Returns what each line became."""
    tool = check_tool()
    if not tool.exists():
        pytest.skip(f"the mongoimport parse check is not beside this clone ({tool}); CI has it")
    result = subprocess.run([str(tool), *map(str, paths)], capture_output=True, text=True, timeout=540, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    parsed = []
    for output in result.stdout.splitlines():
        assert output.startswith("OK "), output
        parsed.append(json.loads(output.split(": ", 1)[1]))
    return parsed

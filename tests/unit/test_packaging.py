"""The wheel carries every package: `pip install -e` finds any folder, a real install only those
pyproject.toml lists (cdc/usecases was once missing from the list)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_python_package_is_listed_for_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("cdc", "generator")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found - listed == set()
    assert "cdc.sql" in listed and config["package-dir"]["cdc.sql"] == "schema"

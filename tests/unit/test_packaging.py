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


def test_every_module_of_cdc_is_in_a_layer():
    """The layers contract names packages: a module added at the top of cdc/, or a package left out of
    the list, would be checked by no layer."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    [layers] = [c["layers"] for c in contracts["contracts"] if c.get("containers") == ["cdc"]]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    top = {path.stem for path in (ROOT / "cdc").glob("*.py")} | {
        path.parent.name for path in (ROOT / "cdc").glob("*/__init__.py")
    }
    # the entry points are no layer's: __main__ only calls cli, and __init__ holds no code
    assert top - {"__init__", "__main__"} == named

"""Every command has help text and is documented; usage errors exit 2."""

from pathlib import Path

import click
import pytest

from cdc.cli import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def all_commands(group: click.Group, prefix: str = "cdc") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found += all_commands(command, path)
    return found


COMMANDS = all_commands(cli)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[path for path, _ in COMMANDS])
def test_every_command_has_help(path, command, cdc):
    assert (command.help or "").strip(), f"{path} has no help text"
    result = cdc(*path.split()[1:], "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[path for path, _ in COMMANDS])
def test_every_command_is_in_the_readme(path, command):
    assert f"`{path}" in README.read_text(encoding="utf-8"), f"README does not mention `{path}`"


def test_unknown_option_is_a_usage_error(cdc):
    result = cdc("schema", "check", "--no-such-option")
    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_password_on_the_command_line_is_refused(cdc):
    result = cdc("schema", "check", "--pg", "postgresql://app:Sekr1tPass@127.0.0.1:1/x")
    assert result.returncode == 2
    assert "Sekr1tPass" not in result.stderr + result.stdout
    assert "must not contain a password" in result.stderr


def test_missing_configuration_names_the_ways_to_set_it(cdc, tmp_path):
    result = cdc("schema", "check", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "no PostgreSQL configured" in lines[0]
    assert "Traceback" not in result.stderr

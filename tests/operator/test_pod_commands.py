"""Every command a built pod runs must be one the image's CLI accepts: the options are parsed by
the real `neuraxis` command tree (typer's own click) without running anything. A flag that does
not exist, or a missing required one, fails a pod only on a real kubelet."""

from __future__ import annotations

from typing import Any

import click
import pytest
import typer
from typer.core import TyperGroup

from neuraxis.cli import app, mount
from neuraxis.crds import Resource
from tests.operator.test_pod_references import CASES, pod_templates

Manifest = dict[str, Any]


def _containers(children: list[Manifest]) -> list[Manifest]:
    out: list[Manifest] = []
    for child in children:
        for template in pod_templates(child):
            spec = template["spec"]
            out += spec.get("initContainers", []) + spec["containers"]
    return out


def _neuraxis_argv(command: list[str]) -> list[str] | None:
    """The arguments after `neuraxis` (or `python -m neuraxis.cli`), or None for other tools."""
    if command[:1] == ["neuraxis"]:
        return command[1:]
    if command[:3] == ["python", "-m", "neuraxis.cli"]:
        return command[3:]
    if command[:1] == ["torchrun"] and "neuraxis.cli" in command:
        return command[command.index("neuraxis.cli") + 1 :]
    return None


def parse(argv: list[str]) -> None:
    """Resolve the sub-command and parse its options; raises click.ClickException (usage errors
    derive from it; typer 0.20, which flwr caps us at, is built on click) when the command line
    is invalid."""
    mount()
    command: Any = typer.main.get_command(app)
    while isinstance(command, TyperGroup):
        name, argv = argv[0], argv[1:]
        found = command.get_command(
            command.make_context("neuraxis", [], resilient_parsing=True), name
        )
        if found is None:
            raise click.ClickException(f"no such command {name!r}")
        command = found
    command.make_context(command.name or "", list(argv))


@pytest.mark.parametrize(("case", "res", "children"), CASES, ids=[c[0] for c in CASES])
def test_every_built_command_parses_with_the_real_cli(
    case: str, res: Resource, children: list[Manifest]
) -> None:
    commands = [c["command"] for c in _containers(children) if c.get("command")]
    parsed = [argv for argv in map(_neuraxis_argv, commands) if argv is not None]
    assert parsed, f"{case}: no neuraxis command among {commands}"
    for argv in parsed:
        try:
            parse(argv)
        except click.ClickException as exc:
            raise AssertionError(f"{case}: `neuraxis {' '.join(argv)}`: {exc}") from exc


def test_a_flag_the_cli_does_not_have_is_caught() -> None:
    with pytest.raises(click.ClickException, match="--no-such-flag"):
        parse(["workload", "edge", "--bundle", "s3://b/x", "--cache-dir", "/c", "--no-such-flag"])


def test_an_unknown_command_is_caught() -> None:
    with pytest.raises(click.ClickException, match="no such command"):
        parse(["workload", "edges", "--bundle", "s3://b/x"])


def test_a_missing_required_option_is_caught() -> None:
    with pytest.raises(click.ClickException, match="Missing parameter: bundle"):
        parse(["workload", "edge", "--cache-dir", "/c"])

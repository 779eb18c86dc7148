"""`neuraxis dev infra up|preview|down`: the local stack against the running local control plane,
with the file backend under `$NEURAXIS_HOME/pulumi` (default `.neuraxis/pulumi`).

The stack's secrets passphrase is the public development one (engine.LOCAL_PASSPHRASE) unless
PULUMI_CONFIG_PASSPHRASE is set.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml

from neuraxis.infra.engine import (
    LOCAL_PASSPHRASE,
    POLICY_PACK_DIR,
    POLICY_PACK_LAUNCHER,
    PROJECT_DIR,
    Engine,
    EngineError,
)

STACK = "local"
STACK_FILE = PROJECT_DIR / f"Pulumi.{STACK}.yaml"


def default_state_dir() -> Path:
    from neuraxis.dev.cluster import neuraxis_home

    return neuraxis_home() / "pulumi"


def stack_config_text(kubeconfig: Path | None) -> str:
    """The committed local stack file, pointed at another control plane when asked (tests run
    one of their own); secrets stay encrypted with the file's own salt."""
    text = STACK_FILE.read_text()
    if kubeconfig is None:
        return text
    doc = yaml.safe_load(text)
    doc["config"]["neuraxis:kubeconfig"] = str(kubeconfig)
    return yaml.safe_dump(doc, sort_keys=True)


@dataclass(frozen=True)
class Timed:
    seconds: float
    summary: dict[str, int]


@dataclass(frozen=True)
class LocalStack:
    engine: Engine
    kubeconfig: Path | None = None

    @classmethod
    def create(cls, state_dir: Path | None = None, kubeconfig: Path | None = None) -> LocalStack:
        passphrase = os.environ.get("PULUMI_CONFIG_PASSPHRASE") or LOCAL_PASSPHRASE
        return cls(Engine(state_dir or default_state_dir(), passphrase), kubeconfig)

    def _config_file(self) -> list[str]:
        path = self.engine.state_dir / f"Pulumi.{STACK}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(stack_config_text(self.kubeconfig))
        return ["--stack", STACK, "--config-file", str(path)]

    def select(self) -> None:
        self.engine.run(["stack", "select", "--create", STACK])

    def up(self, *, expect_no_changes: bool = False) -> Timed:
        self.select()
        args = ["up", "--yes", "--skip-preview", "--json", *self._config_file()]
        if expect_no_changes:
            args.append("--expect-no-changes")
        return self._timed(args)

    def preview(self, *, policy_pack: Path | None = None, expect_no_changes: bool = False) -> Timed:
        self.select()
        args = ["preview", "--json", *self._config_file()]
        if policy_pack is not None:
            # A pack folder runs through its launcher (neuraxis.infra.engine.POLICY_PACK_LAUNCHER).
            launcher = policy_pack / POLICY_PACK_LAUNCHER.name
            args += ["--policy-pack", str(launcher if launcher.is_file() else policy_pack)]
        if expect_no_changes:
            args.append("--expect-no-changes")
        return self._timed(args)

    def destroy(self) -> Timed:
        self.select()
        return self._timed(["destroy", "--yes", "--skip-preview", "--json", *self._config_file()])

    def outputs(self) -> dict[str, Any]:
        proc = self.engine.run(["stack", "output", "--json", "--show-secrets", "--stack", STACK])
        data = json.loads(proc.stdout or "{}")
        return data if isinstance(data, dict) else {}

    def remove(self) -> None:
        """Forget the (destroyed) stack's state."""
        # --preserve-config: the stack file is the committed Pulumi.local.yaml.
        self.engine.run(
            ["stack", "rm", "--yes", "--force", "--preserve-config", STACK], check=False
        )

    def _timed(self, args: list[str]) -> Timed:
        start = time.monotonic()
        proc = self.engine.run(args)
        return Timed(time.monotonic() - start, change_summary(proc.stdout))


def change_summary(stdout: str) -> dict[str, int]:
    """Operation -> count from `pulumi preview --json` (one document) or `pulumi up|destroy
    --json` (an event stream ending in a summaryEvent); empty when unreadable."""
    text = stdout.strip()
    summary: dict[str, object] = {}
    try:
        doc = json.loads(text) if text.startswith("{") and "\n{" not in text else None
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        summary = doc.get("changeSummary") or {}
    else:
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and "summaryEvent" in event:
                summary = event["summaryEvent"].get("resourceChanges") or {}
    return {str(k): int(str(v)) for k, v in summary.items()}


infra_app = typer.Typer(help="The local Pulumi stack (against `neuraxis dev cluster up --bare`).")


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


@infra_app.command("up")
def up_command(
    kubeconfig: Path | None = typer.Option(None, help="Another control plane's kubeconfig."),
) -> None:
    """Provision the local stack (CRDs, operator, fake GPU and edge nodes, MinIO, monitoring)."""
    try:
        result = LocalStack.create(kubeconfig=kubeconfig).up()
    except EngineError as exc:
        raise _fail(exc) from exc
    typer.echo(f"up in {result.seconds:.1f}s: {result.summary}")


@infra_app.command("preview")
def preview_command(
    policy: bool = typer.Option(True, help="Run the Neuraxis policy pack."),
    kubeconfig: Path | None = typer.Option(None, help="Another control plane's kubeconfig."),
) -> None:
    """Preview the local stack (with the CrossGuard pack by default)."""
    try:
        result = LocalStack.create(kubeconfig=kubeconfig).preview(
            policy_pack=POLICY_PACK_DIR if policy else None
        )
    except EngineError as exc:
        raise _fail(exc) from exc
    typer.echo(f"preview in {result.seconds:.1f}s: {result.summary}")


@infra_app.command("down")
def down_command(
    kubeconfig: Path | None = typer.Option(None, help="Another control plane's kubeconfig."),
) -> None:
    """Destroy everything the local stack made."""
    try:
        result = LocalStack.create(kubeconfig=kubeconfig).destroy()
    except EngineError as exc:
        raise _fail(exc) from exc
    typer.echo(f"destroyed in {result.seconds:.1f}s: {result.summary}")


if __name__ == "__main__":
    infra_app()

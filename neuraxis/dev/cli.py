"""`neuraxis dev ...`: tool builds and the local control plane."""

from __future__ import annotations

import typer

dev_app = typer.Typer(help="Developer tooling: the pinned toolchain and the local cluster.")

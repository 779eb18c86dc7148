"""Which code produced a model: the neuraxis version and, when known, the git commit (from
NEURAXIS_GIT_COMMIT, which images set at build time, or the checkout this runs from)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import neuraxis


def git_commit() -> str | None:
    if os.environ.get("NEURAXIS_GIT_COMMIT"):
        return os.environ["NEURAXIS_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(neuraxis.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def code_version() -> dict[str, str | None]:
    return {"neuraxis": neuraxis.__version__, "gitCommit": git_commit()}

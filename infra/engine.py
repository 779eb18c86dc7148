"""The Pulumi engine on this machine: where its binaries are, and how to run it offline.

`pulumi_bin_dir` is the one place that decides which binaries run (the CLI, the Python language
host and the Kubernetes provider must sit together there); everything else asks it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BIN_ENV = "NEURAXIS_PULUMI_BIN"
# The binaries a local `pulumi up` of the Python program needs (plugins are found on PATH).
REQUIRED_BINARIES = (
    "pulumi",
    "pulumi-language-python",
    "pulumi-language-python-exec",
    "pulumi-resource-kubernetes",
)
PROJECT_DIR = Path(__file__).resolve().parents[1] / "stacks"
POLICY_PACK_DIR = Path(__file__).resolve().parent / "policy"
# What `--policy-pack` names: the pack's launcher, run as a binary analyzer plugin (see the file).
POLICY_PACK_LAUNCHER = POLICY_PACK_DIR / "launch"
# The local stack's secrets passphrase: a development stack on a loopback-only control plane,
# so the passphrase is public (README). Other stacks must set PULUMI_CONFIG_PASSPHRASE.
LOCAL_PASSPHRASE = "neuraxis-local-dev"


# The Python language host lists the program's packages with `python -m pip list`; the project
# venv is synced by uv and has no pip. So the program runs in a small venv of its own (pip from
# the interpreter's bundled wheel, offline) that sees the project venv's packages via a .pth file.
PROJECT_ROOT = PROJECT_DIR.parent
PROGRAM_VENV = PROJECT_ROOT / ".neuraxis" / "pulumi-venv"
PROJECT_VENV = PROJECT_ROOT / ".venv"


class EngineError(RuntimeError):
    """A pulumi command failed or its binaries are missing; the message says which."""


def pulumi_bin_dir() -> Path:
    """$NEURAXIS_PULUMI_BIN when set, else the pinned toolchain's bin directory."""
    override = os.environ.get(BIN_ENV)
    if override:
        return Path(override).expanduser().resolve()
    from neuraxis.dev import toolchain

    return toolchain.bin_dir()


def missing_binaries(bin_dir: Path) -> list[str]:
    return [b for b in REQUIRED_BINARIES if not os.access(bin_dir / b, os.X_OK)]


def ensure_program_venv(venv: Path = PROGRAM_VENV, project_venv: Path = PROJECT_VENV) -> Path:
    """Create (once) the venv Pulumi.yaml names: pip + the project venv's packages."""
    site = project_venv / "lib" / "python3.11" / "site-packages"
    pth = venv / "lib" / "python3.11" / "site-packages" / "neuraxis-project-venv.pth"
    # addsitedir, not a bare path: the project's own .pth files (the editable neuraxis) must run.
    line = f"import site; site.addsitedir({str(site)!r})"
    if pth.is_file() and pth.read_text().strip() == line:
        return venv
    python = project_venv / "bin" / "python"
    proc = subprocess.run(
        [str(python), "-c", "import sys, venv; venv.create(sys.argv[1], with_pip=True)", str(venv)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if proc.returncode != 0:
        raise EngineError(f"could not create the program venv {venv}: {proc.stderr[-2000:]}")
    pth.write_text(line + "\n")
    return venv


@dataclass(frozen=True)
class Engine:
    """Runs the pulumi CLI against a local file backend, offline."""

    state_dir: Path
    passphrase: str = LOCAL_PASSPHRASE
    bin_dir: Path | None = None

    def env(self) -> dict[str, str]:
        bins = self.bin_dir or pulumi_bin_dir()
        missing = missing_binaries(bins)
        if missing:
            raise EngineError(
                f"Pulumi binaries missing in {bins}: {', '.join(missing)}; run `make tools` "
                f"or point ${BIN_ENV} at a folder holding them"
            )
        env = dict(os.environ)
        env.update(
            {
                # Plugins come from PATH: the language host and the provider next to the CLI.
                # The program venv's python comes next: the language host of sdk v3.68 does not
                # receive this CLI's runtime options (`virtualenv`), and runs `python3` from PATH.
                "PATH": os.pathsep.join(
                    [str(bins), str(PROGRAM_VENV / "bin"), env.get("PATH", "")]
                ),
                "PULUMI_HOME": str(self.state_dir / "home"),
                "PULUMI_BACKEND_URL": f"file://{self.state_dir / 'backend'}",
                "PULUMI_CONFIG_PASSPHRASE": self.passphrase,
                "PULUMI_SKIP_UPDATE_CHECK": "true",
                "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
                "PULUMI_SKIP_CONFIRMATIONS": "true",
                "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
            }
        )
        env.pop("PULUMI_IGNORE_AMBIENT_PLUGINS", None)
        return env

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path = PROJECT_DIR,
        timeout: float = 900.0,
        check: bool = True,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env(), **(extra_env or {})}
        ensure_program_venv()
        (self.state_dir / "backend").mkdir(parents=True, exist_ok=True)
        argv = [str(Path(env["PATH"].split(os.pathsep)[0]) / "pulumi"), *args, "--non-interactive"]
        try:
            proc = subprocess.run(
                argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise EngineError(f"`pulumi {' '.join(args)}` timed out after {timeout:.0f}s") from exc
        if check and proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
            raise EngineError(f"`pulumi {' '.join(args)}` exited {proc.returncode}:\n{tail}")
        return proc

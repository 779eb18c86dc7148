"""Commands, mounts and chroots for building root file systems on the host (as root).

What the offline image build needs from the machine: run a command with a clear error and a
fixed umask, an overlay to write a layer's changes apart from the layer below, a chroot with
its own minimal /dev (never the host's), and deletion that refuses to cross a mount point.
Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

STEP_TIMEOUT_S = 3600.0


class StepError(RuntimeError):
    """A command, mount or chroot step failed; the message names the step and shows output."""


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run(
    argv: Sequence[str],
    *,
    what: str,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = STEP_TIMEOUT_S,
    ok: Sequence[int] = (0,),
) -> str:
    """Run a command; its output goes to `log` when given (long steps), else is returned.

    The umask is fixed: the modes of what the command creates end up in image layers."""
    command = shlex.join(argv)
    try:
        if log is None:
            proc = subprocess.run(
                argv,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                umask=0o022,
            )
            output = proc.stdout + proc.stderr
            returncode = proc.returncode
        else:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as fh:
                fh.write(f"$ {command}\n")
                fh.flush()
                returncode = subprocess.run(
                    argv,
                    env=env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                    umask=0o022,
                ).returncode
            output = log.read_text(errors="replace")
    except FileNotFoundError as exc:
        raise StepError(f"{what}: {argv[0]} is not installed ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise StepError(f"{what}: `{command}` took over {timeout:.0f}s") from exc
    if returncode not in ok:
        where = f" (log: {log})" if log else ""
        raise StepError(f"{what}: `{command}` exited {returncode}{where}:\n{tail(output)}")
    return output if log is None else ""


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise StepError(f"{what} needs root (debootstrap, chroot and mount); run it as root")


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            # Spaces and the like are octal escapes in this file (\040).
            raw = line.split()[1]
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    return [p for p in _mount_points() if p.startswith(prefix) or p + "/" == prefix]


def unmount_below(path: Path) -> None:
    """Unmount everything mounted at or under `path`, deepest first."""
    for point in sorted(_mounts_below(path), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    left = _mounts_below(path)
    if left:
        raise StepError(f"could not unmount {left}; unmount them by hand before retrying")


def remove_tree(path: Path) -> None:
    """Delete a work or layer folder, never through a mount still in place (a bind-mounted
    /dev or cache below it would otherwise be emptied)."""
    if not path.exists() and not path.is_symlink():
        return
    unmount_below(path)
    shutil.rmtree(path)


@contextlib.contextmanager
def mounted(argv: Sequence[str], target: Path, what: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", *argv, str(target)], what=what)
    try:
        yield target
    finally:
        unmount_below(target)


# The device files a build needs; the chroot gets its own /dev on a tmpfs with these bound in
# one by one, rather than the host's /dev, so that nothing done below the chroot (unmounting,
# deleting a work folder) can reach the host's device tree.
CHROOT_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
CHROOT_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0"} | {
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """/proc, a minimal /dev and /dev/shm (Python's process pools need it) inside a chroot."""
    dev = root / "dev"
    with contextlib.ExitStack() as stack:
        stack.enter_context(mounted(["-t", "proc", "proc"], root / "proc", "mount /proc"))
        stack.enter_context(mounted(["-t", "tmpfs", "-o", "mode=755", "tmpfs"], dev, "mount /dev"))
        for name in CHROOT_DEVICES:
            (dev / name).touch()
            run(["mount", "--bind", f"/dev/{name}", str(dev / name)], what=f"mount /dev/{name}")
        for name, target in CHROOT_DEV_LINKS.items():
            os.symlink(target, dev / name)
        (dev / "shm").mkdir()
        run(
            ["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", str(dev / "shm")],
            what="mount /dev/shm",
        )
        yield


@contextlib.contextmanager
def overlay(lower: Path, work: Path) -> Iterator[tuple[Path, Path]]:
    """A writable view of `lower`; yields (merged, upper): what is written lands in `upper`."""
    upper, scratch, merged = work / "upper", work / "overlay-work", work / "merged"
    for folder in (upper, scratch, merged):
        folder.mkdir(parents=True, exist_ok=True)
    for folder in (lower, upper, scratch):
        if any(c in str(folder) for c in ",:"):
            raise StepError(f"overlay: {folder} holds ',' or ':'; move it elsewhere")
    options = f"lowerdir={lower},upperdir={upper},workdir={scratch}"
    with mounted(["-t", "overlay", "overlay", "-o", options], merged, "mount overlay"):
        yield merged, upper


def chroot_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if name in os.environ:
            env[name] = os.environ[name]
    return {**env, **(extra or {})}


def chroot(
    root: Path,
    argv: Sequence[str],
    *,
    what: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    ok: Sequence[int] = (0,),
) -> None:
    run(["chroot", str(root), *argv], what=what, log=log, env=chroot_env(env), ok=ok)


def copy_host_resolver(root: Path) -> None:
    """Name resolution for apt and uv inside the chroot; the layer keeps an empty file."""
    resolv = root / "etc" / "resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def copy_host_trust(root: Path) -> str | None:
    """The host's CA bundle, for uv inside the chroot: the package index may sit behind a proxy
    whose certificate only the host trusts. It goes to the chroot's /tmp, which the layer
    leaves out, so the image keeps Debian's own CA set."""
    bundle = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    if not os.path.isfile(bundle):
        return None
    shutil.copyfile(bundle, root / "tmp" / "host-ca.crt")
    return "/tmp/host-ca.crt"

"""The local lake: a real MinIO server (built by the toolchain) for the dev cluster and tests.

One server per home (`$NEURAXIS_HOME/lake/`): data in `data/`, its credentials in
`credentials.json` (generated once, so a restart keeps the same keys and objects), the pid in
`minio.pid`. Every S3 request is audited: MinIO's audit webhook posts to a small receiver
(`audit_sink.py`, pid in `audit.pid`) that appends one JSON line per request to `audit.jsonl`
(`read_audit`); undelivered entries wait in `audit-queue/`. The server binds one address:
loopback by default, or the real node's bridge address so that pods can reach it (they cannot
reach 127.0.0.1 of the host).

Standard library only for start/stop; the bucket is made with boto3 (imported when needed).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuraxis.dev import toolchain

DEFAULT_BUCKET = "neuraxis-lake"
DEFAULT_PORT = 9000
AUDIT_TARGET = "neuraxis"
# The Secret the operator mounts into workload pods (settings.lake_secret).
LAKE_SECRET = "neuraxis-lake"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
REGION = "us-east-1"

Progress = Callable[[str], None]


class LakeServerError(RuntimeError):
    """MinIO could not be started, reached or stopped; the message says which step and why."""


@dataclass(frozen=True)
class LakeServer:
    """Where a running MinIO answers and the keys that open it."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str = DEFAULT_BUCKET

    @property
    def lake_uri(self) -> str:
        return f"s3://{self.bucket}/lake"

    def env(self) -> dict[str, str]:
        """The variables `neuraxis.lake.S3Settings` reads (and the lake Secret carries)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
        }

    def secret_manifest(self, namespace: str, name: str = LAKE_SECRET) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque",
            "stringData": self.env(),
        }


@dataclass(frozen=True)
class LakePaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.json"

    @property
    def pid_file(self) -> Path:
        return self.root / "minio.pid"

    @property
    def log(self) -> Path:
        return self.root / "minio.log"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def audit_pid_file(self) -> Path:
        return self.root / "audit.pid"

    @property
    def audit_queue(self) -> Path:
        return self.root / "audit-queue"


def lake_paths(home: Path) -> LakePaths:
    return LakePaths(home / "lake")


def _credentials(paths: LakePaths) -> tuple[str, str]:
    """The root user and password of this home's MinIO, created on first use (mode 0600)."""
    try:
        saved = json.loads(paths.credentials.read_text())
        return str(saved["accessKey"]), str(saved["secretKey"])
    except (OSError, ValueError, KeyError):
        pass
    paths.root.mkdir(parents=True, exist_ok=True)
    access, secret = "nx" + secrets.token_hex(8), secrets.token_hex(20)
    tmp = paths.credentials.with_suffix(".tmp")
    tmp.write_text(json.dumps({"accessKey": access, "secretKey": secret}))
    tmp.chmod(0o600)
    os.replace(tmp, paths.credentials)
    return access, secret


def _running_pid(paths: LakePaths) -> int | None:
    try:
        pid = int(paths.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # A recycled pid belongs to another program: only ours names our data folder.
    return pid if str(paths.data).encode() in cmdline else None


def is_live(endpoint: str, path: str = "/minio/health/live") -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}{path}", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def start(
    home: Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    bucket: str = DEFAULT_BUCKET,
    progress: Progress = lambda _m: None,
) -> LakeServer:
    """Start this home's MinIO on host:port (or reuse it when it already runs there) and make
    sure the bucket exists. The process outlives the caller: `stop` ends it."""
    paths = lake_paths(home)
    access, secret = _credentials(paths)
    server = LakeServer(f"http://{host}:{port}", access, secret, bucket)
    pid = _running_pid(paths)
    if pid is not None and is_live(server.endpoint):
        progress(f"MinIO already running at {server.endpoint}")
    else:
        if pid is not None:
            stop(home)
        _spawn(paths, server, host, port)
        progress(f"MinIO started at {server.endpoint} (data {paths.data})")
    ensure_bucket(server)
    return server


def _spawn(paths: LakePaths, server: LakeServer, host: str, port: int) -> None:
    if _port_in_use(host, port):
        raise LakeServerError(f"MinIO: {host}:{port} is already in use by another process")
    paths.data.mkdir(parents=True, exist_ok=True)
    binary = toolchain.tool_path("minio")
    audit_port = _spawn_audit_sink(paths)
    env = {
        **os.environ,
        "MINIO_ROOT_USER": server.access_key,
        "MINIO_ROOT_PASSWORD": server.secret_key,
        "MINIO_BROWSER": "off",
        **audit_env(audit_port, paths.audit_queue),
    }
    with paths.log.open("ab") as log:
        proc = subprocess.Popen(
            [
                str(binary), "server", str(paths.data), "--address", f"{host}:{port}",
                # The console listens too; keep it on loopback with a port the kernel picks.
                "--console-address", "127.0.0.1:0", "--quiet",
            ],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # not killed with the terminal or test that started it
        )  # fmt: skip
    paths.pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not is_live(server.endpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(paths.log.read_text(errors="replace").splitlines()[-20:])
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise LakeServerError(f"MinIO did not become live at {server.endpoint}:\n{tail}")
        time.sleep(0.2)


def audit_env(port: int, queue: Path) -> dict[str, str]:
    """MinIO's audit webhook target `neuraxis`: every request, to the local receiver."""
    return {
        f"MINIO_AUDIT_WEBHOOK_ENABLE_{AUDIT_TARGET}": "on",
        f"MINIO_AUDIT_WEBHOOK_ENDPOINT_{AUDIT_TARGET}": f"http://127.0.0.1:{port}/audit",
        # Entries the receiver did not take yet are kept on disk and sent again.
        f"MINIO_AUDIT_WEBHOOK_QUEUE_DIR_{AUDIT_TARGET}": str(queue),
    }


def _spawn_audit_sink(paths: LakePaths) -> int:
    """Start the audit receiver (on a loopback port the kernel picks) and wait until it
    answers; it outlives the caller like MinIO, and `stop` ends both."""
    _stop_pid(paths.audit_pid_file, Path(__file__).with_name("audit_sink.py").name)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    paths.audit_queue.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).with_name("audit_sink.py")
    with paths.log.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--port", str(port), "--out", str(paths.audit_log)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    paths.audit_pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + START_TIMEOUT_S
    while not is_live(f"http://127.0.0.1:{port}", path="/"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LakeServerError(f"the audit receiver did not start on 127.0.0.1:{port}")
        time.sleep(0.1)
    return port


def read_audit(home: Path) -> list[dict[str, Any]]:
    """The audit entries received so far (MinIO delivers them asynchronously)."""
    path = lake_paths(home).audit_log
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ensure_bucket(server: LakeServer) -> None:
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=REGION,
    )
    try:
        client.create_bucket(Bucket=server.bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise LakeServerError(f"MinIO: cannot create bucket {server.bucket}: {exc}") from exc


def stop(home: Path) -> None:
    """Stop this home's MinIO (if it runs) and its audit receiver; data, credentials and the
    audit log stay for the next start."""
    paths = lake_paths(home)
    try:
        _stop_minio(paths)
    finally:
        _stop_pid(paths.audit_pid_file, "audit_sink.py")


def _stop_pid(pid_file: Path, marker: str) -> None:
    """End the process named in `pid_file` if its command line still names `marker`."""
    try:
        pid = int(pid_file.read_text().strip())
        mine = marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        mine = False
    if mine:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    pid_file.unlink(missing_ok=True)


def _stop_minio(paths: LakePaths) -> None:
    pid = _running_pid(paths)
    if pid is None:
        paths.pid_file.unlink(missing_ok=True)
        return
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _running_pid(paths) == pid and _alive(pid):
            time.sleep(0.1)
        if not _alive(pid):
            break
    if _alive(pid):
        raise LakeServerError(f"MinIO (pid {pid}) would not stop")
    paths.pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"

"""The runner's side of `neuraxis workload etl-server` (neuraxis/workloads/etl/server.py): one
process, and so one Spark, for the Dataset steps of a `neuraxis run`, started at the first
Dataset step and stopped when the run ends (or when the runner dies: end of its stdin)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any


class SharedSpark:
    def __init__(self, server_log: Path):
        self.server_log = server_log
        self.proc: subprocess.Popen[bytes] | None = None
        self.replies: IO[str] | None = None

    def start(self, env: Mapping[str, str]) -> int:
        """The server's pid (started once; again after it died)."""
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        self.close()
        read_end, write_end = os.pipe()
        self.server_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.server_log, "ab") as out:
            # Its own process group, as every workload: a later run of the same resource
            # stops it, and the JVM it started, together.
            command = [sys.executable, "-m", "neuraxis.cli", "workload", "etl-server"]
            command += ["--reply-fd", str(write_end), "--server-log", str(self.server_log)]
            self.proc = subprocess.Popen(
                command,
                env=dict(env),
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(write_end,),
                start_new_session=True,
            )
        os.close(write_end)
        self.replies = os.fdopen(read_end, "r")
        return self.proc.pid

    def run_step(
        self, args: Sequence[str], env: Mapping[str, str], log: Path
    ) -> dict[str, Any] | None:
        """The server's reply to one step (`exitCode` or `unsupported`); None when the server
        died during it (stopped by a later run, or killed)."""
        assert self.proc is not None and self.proc.stdin is not None and self.replies is not None
        request = {"args": list(args), "env": dict(env), "log": str(log)}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        line = self.replies.readline()
        if not line:
            self.close()
            return None
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        """End of stdin: the server stops its Spark and exits."""
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.replies is not None:
            self.replies.close()
        self.proc, self.replies = None, None

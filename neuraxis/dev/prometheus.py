"""A real Prometheus on loopback, from the pinned toolchain, for tests and local checks.

It scrapes static targets every second and evaluates rule files every second, so an alert with
`for: 0s` fires within seconds of its condition. The Monitoring component's rules run here as
they do in a cluster (the same `alert_rules()`); only the scrape discovery differs (static
targets instead of PodMonitors).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from neuraxis.dev.toolchain import tool_path

T = TypeVar("T")
STARTUP_TIMEOUT_S = 60.0


class PrometheusError(RuntimeError):
    """Prometheus did not start, or an API call failed."""


def rule_file(groups: Sequence[Mapping[str, Any]], for_override: str | None = None) -> str:
    """A Prometheus rule file for rule groups (a PrometheusRule's `spec.groups`). With
    `for_override`, every alert's `for` is replaced (a live test cannot wait ten minutes)."""
    out = []
    for group in groups:
        rules = [dict(r) for r in group["rules"]]
        if for_override is not None:
            for r in rules:
                if "alert" in r:
                    r["for"] = for_override
        out.append({**group, "rules": rules})
    return yaml.safe_dump({"groups": out}, sort_keys=False)


def config(targets: Mapping[str, Sequence[str]], rule_files: Sequence[Path]) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(hosts)}]}
            for job, hosts in targets.items()
        ],
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
                body = json.loads(r.read())
        except OSError as exc:
            raise PrometheusError(f"GET /api/v1/{path}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"GET /api/v1/{path}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr` (errors, e.g. a bad expression, raise)."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def firing(self) -> dict[str, list[dict[str, str]]]:
        """Alert name -> the label sets of its firing alerts."""
        out: dict[str, list[dict[str, str]]] = {}
        for alert in self.api("alerts")["alerts"]:
            if alert["state"] == "firing":
                out.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return out

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout_s: float = 120.0) -> T:
        """Poll `probe` until it returns something truthy; the error says what was awaited."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = probe()
            if found:
                return found
            time.sleep(0.5)
        raise PrometheusError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@contextlib.contextmanager
def running_prometheus(
    workdir: Path,
    targets: Mapping[str, Sequence[str]],
    rules: str | None = None,
) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (job -> host:port list) with the rule file text `rules`."""
    workdir.mkdir(parents=True, exist_ok=True)
    rule_paths = []
    if rules is not None:
        rule_paths.append(workdir / "rules.yaml")
        rule_paths[0].write_text(rules)
    config_path = workdir / "prometheus.yaml"
    config_path.write_text(yaml.safe_dump(config(targets, rule_paths), sort_keys=False))
    port = _free_port()
    log = workdir / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(tool_path("prometheus")),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait_ready(prometheus)
        yield prometheus
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(prometheus: Prometheus) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if prometheus.proc.poll() is not None:
            raise PrometheusError(f"prometheus exited:\n{prometheus.output()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as r,
        ):
            if r.status == 200:
                return
        time.sleep(0.2)
    raise PrometheusError(
        f"prometheus not ready in {STARTUP_TIMEOUT_S:.0f}s:\n{prometheus.output()}"
    )

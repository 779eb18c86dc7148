"""Leader election survives answers it cannot read: a 200 whose body is not JSON (a proxy's
error page, an API server half-way through starting) is a failed attempt, and the election
thread keeps campaigning instead of dying and leaving a follower that never takes over."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client as k8s

from neuraxis.operator.kube import Kube
from neuraxis.operator.leader import LeaderElector, LeaseConfig


@pytest.fixture
def html_server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = b"<html>starting</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def elector_for(url: str) -> LeaderElector:
    config = LeaseConfig("ns", "lease", "replica-0", lease_s=1.0, renew_s=0.2, retry_s=0.05)
    return LeaderElector(Kube(k8s.ApiClient(k8s.Configuration(host=url))), config)


def test_an_unreadable_answer_is_a_failed_attempt(html_server: tuple[str, list[str]]) -> None:
    url, seen = html_server
    assert elector_for(url).try_acquire_or_renew() is False
    assert seen == ["/apis/coordination.k8s.io/v1/namespaces/ns/leases/lease"]


def test_the_election_thread_keeps_campaigning(html_server: tuple[str, list[str]]) -> None:
    url, seen = html_server
    elector, stop, started = elector_for(url), threading.Event(), threading.Event()
    thread = threading.Thread(target=elector.run, args=(stop, started.set, stop.set))
    thread.start()
    try:
        stop.wait(0.5)
        assert thread.is_alive() and not started.is_set()
        assert len(seen) >= 3  # it tried again after each unreadable answer
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()

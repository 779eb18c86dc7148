"""The dev lake's audit receiver: MinIO's audit webhook (`MINIO_AUDIT_WEBHOOK_*`) POSTs one
JSON entry per S3 request (API, bucket, object, status, access key); each is appended as one
line to a JSONL file. Standard library only and run as a script, so it starts the same way
wherever the MinIO binary does (offline, no package import).

    python audit_sink.py --port 9123 --out /path/audit.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MAX_BODY = 1 << 20


def serve(port: int, out: Path) -> None:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            if not 0 < size <= MAX_BODY:
                self.send_error(413 if size else 411)
                return
            body = self.rfile.read(size)
            try:
                entry = json.loads(body)
            except ValueError:
                self.send_error(400, "body is not JSON")
                return
            line = json.dumps(entry, sort_keys=True) + "\n"
            with lock, out.open("a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())  # an answered entry is on disk (MinIO drops it then)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self.send_response(200)  # liveness for the starter
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return  # one line per request would double the audit log in the process log

    out.parent.mkdir(parents=True, exist_ok=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    serve(args.port, args.out)


if __name__ == "__main__":
    main()

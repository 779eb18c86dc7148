"""The cost of scoped lake credentials on the dev MinIO: minting one run's keys (STS AssumeRole
with its session policy, what the operator does once per run and per refresh), and a small
object read through scoped keys against the same read with the root keys (the baseline: MinIO
evaluates the session policy on every request).

    .venv/bin/python bench/lake_credentials.py [--quick]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from neuraxis.dev import lake as dev_lake
from neuraxis.lake import Lake, S3Settings
from neuraxis.lake_access import credentials_env, mint, serve_grant


def _median_ms(action: Callable[[], object], rounds: int) -> float:
    action()  # connection set-up outside the figure
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds = 20 if args.quick else 200
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    home = Path(tempfile.mkdtemp(prefix="nx-bench-lake-"))
    server = dev_lake.start(home, port=port, bucket="bench-lake")
    try:
        root = S3Settings(server.endpoint, server.access_key, server.secret_key, dev_lake.REGION)
        lake = Lake(server.lake_uri, s3=root)
        model = Lake.model_path("team-a", "m", "1")
        lake.write_bytes(f"{model}/model.ts", b"x" * 4096)
        grant = serve_grant("team-a", model, "pred")
        mint_ms = _median_ms(lambda: mint(server.lake_uri, grant, root, duration_s=900), rounds)
        env = credentials_env(mint(server.lake_uri, grant, root, duration_s=900), root)
        scoped = Lake(
            server.lake_uri,
            s3=S3Settings(
                env["AWS_ENDPOINT_URL"],
                env["AWS_ACCESS_KEY_ID"],
                env["AWS_SECRET_ACCESS_KEY"],
                env["AWS_REGION"],
                env["AWS_SESSION_TOKEN"],
            ),
        )
        base_ms = _median_ms(lambda: lake.read_bytes(f"{model}/model.ts"), rounds)
        scoped_ms = _median_ms(lambda: scoped.read_bytes(f"{model}/model.ts"), rounds)
    finally:
        dev_lake.stop(home)
    print(f"mint one run's keys (AssumeRole + session policy): {mint_ms:.2f} ms median")
    print(
        f"4 KiB read: scoped {scoped_ms:.2f} ms, root {base_ms:.2f} ms "
        f"(ratio {scoped_ms / base_ms:.2f}x, {rounds} rounds)"
    )


if __name__ == "__main__":
    main()

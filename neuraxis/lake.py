"""The lake: one root URI (a local folder or an S3 bucket prefix) with a fixed layout, used by
every workload. Files are written atomically (a reader sees the old or the new content, never
half), and the same relative paths work on `file://` and `s3://` (AWS S3 or MinIO).

Layout under the root:
    tables/<ns>/<table>/                 Delta tables (versioned, time travel)
    quarantine/<ns>/<table>/             rows that failed quality rules, with the rules they failed
    models/<ns>/<model>/<version>/       model artifact, signature, card, plots
    edge/<ns>/<model>/<version>/         edge bundle + sha256 manifest
    runs/<ns>/<run-id>/                  result.json, checkpoints
    lineage/<ns>/events.jsonl            OpenLineage run events of the namespace's runs
    inference-logs/<ns>/<deployment>/<node>/   raw JSONL segments uploaded by edge agents
    edge-logs/<ns>/<deployment>/         Delta table of those logs (partitioned by site, node, day)
    edge-health/<ns>/<deployment>/<node>/      health snapshots uploaded by edge agents

Every prefix starts with `<kind>/<ns>/`: scoped credentials (`neuraxis.lake_access`) grant a run
exactly the prefixes of its namespace that it needs, so nothing may live outside one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_HOME = ".neuraxis"
# The edge site an agent's inference-log rows name (set by the operator on the agent DaemonSet).
EDGE_SITE_ENV = "NEURAXIS_EDGE_SITE"
# With several sites: the agents' spec ConfigMap key mapping node name -> site (JSON).
NODE_SITES_FILE = "node-sites.json"


def neuraxis_home() -> Path:
    """Where local state lives: `$NEURAXIS_HOME`, default `.neuraxis` in the working folder."""
    return Path(os.environ.get("NEURAXIS_HOME", DEFAULT_HOME))


class LakeError(RuntimeError):
    """A lake operation failed; the message names the URI."""


@dataclass(frozen=True)
class S3Settings:
    """Endpoint and credentials for s3:// lakes. Read from the environment (which a mounted
    Secret populates in a pod): AWS_ENDPOINT_URL (MinIO), AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_REGION, and AWS_SESSION_TOKEN with scoped (STS) credentials."""

    endpoint: str | None
    access_key: str | None
    secret_key: str | None
    region: str
    session_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        """From the process environment, or from `env` (e.g. a lake Secret's data)."""
        env = os.environ if env is None else env
        return cls(
            endpoint=env.get("AWS_ENDPOINT_URL") or env.get("NEURAXIS_S3_ENDPOINT"),
            access_key=env.get("AWS_ACCESS_KEY_ID"),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
            region=env.get("AWS_REGION", "us-east-1"),
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )


class Lake:
    """A lake rooted at `root` (`file:///abs/path`, a plain path, or `s3://bucket/prefix`)."""

    def __init__(self, root: str, s3: S3Settings | None = None):
        parsed = urlparse(root)
        if parsed.scheme in ("", "file"):
            local = Path(parsed.path if parsed.scheme == "file" else root).resolve()
            self.scheme = "file"
            self.root = f"file://{local}"
            self._local: Path | None = local
        elif parsed.scheme in ("s3", "s3a"):
            if not parsed.netloc:
                raise LakeError(f"{root}: an s3 lake URI needs a bucket")
            self.scheme = "s3"
            self.root = f"s3://{parsed.netloc}{parsed.path.rstrip('/')}"
            self._local = None
        else:
            raise LakeError(f"{root}: unsupported lake scheme {parsed.scheme!r} (file or s3)")
        self.s3 = s3 or S3Settings.from_env()
        self._client: Any = None

    @classmethod
    def from_env(cls) -> Lake:
        """`$NEURAXIS_LAKE_URI`, default `<NEURAXIS_HOME>/lake`."""
        return cls(os.environ.get("NEURAXIS_LAKE_URI") or str(neuraxis_home() / "lake"))

    # ---- layout -------------------------------------------------------------------------------
    @staticmethod
    def table_path(namespace: str, table: str) -> str:
        return f"tables/{namespace}/{table}"

    @staticmethod
    def quarantine_path(namespace: str, table: str) -> str:
        return f"quarantine/{namespace}/{table}"

    @staticmethod
    def model_path(namespace: str, model: str, version: str) -> str:
        return f"models/{namespace}/{model}/{version}"

    @staticmethod
    def edge_path(namespace: str, model: str, version: str) -> str:
        return f"edge/{namespace}/{model}/{version}"

    @staticmethod
    def bundle_path(namespace: str, model: str, version: str, run_id: str) -> str:
        """One bundle build's folder: run-unique, so a later build never rewrites the bundle
        agents already run."""
        return f"{Lake.edge_path(namespace, model, version)}/{run_id}"

    @staticmethod
    def run_path(namespace: str, run_id: str) -> str:
        return f"runs/{namespace}/{run_id}"

    @staticmethod
    def inference_logs_path(namespace: str, deployment: str) -> str:
        """Where an EdgeDeployment's agents upload sealed log segments (one folder per node)."""
        return f"inference-logs/{namespace}/{deployment}"

    @staticmethod
    def edge_logs_table_path(namespace: str, deployment: str) -> str:
        """The Delta table the raw segments are ingested into; what a Dataset with
        `source.from.edgeDeploymentRef` reads (the agent, the ETL and the runners use this)."""
        return f"edge-logs/{namespace}/{deployment}"

    @staticmethod
    def edge_health_path(namespace: str, deployment: str) -> str:
        """Where an EdgeDeployment's agents upload health snapshots (one folder per node)."""
        return f"edge-health/{namespace}/{deployment}"

    # The files of an artifact folder that evaluation and bundling (re)write after training:
    # the manifest and the card folder it lists (the model files never change).
    ARTIFACT_MANIFEST = "manifest.json"
    CARD_FOLDER = "card"

    LINEAGE_PREFIX = "lineage"
    # The first folder of every namespaced prefix above (`<kind>/<ns>/...`).
    NAMESPACED_KINDS = (
        "tables", "quarantine", "models", "edge", "runs", "lineage",
        "inference-logs", "edge-logs", "edge-health",
    )  # fmt: skip

    @classmethod
    def namespace_prefixes(cls, namespace: str) -> tuple[str, ...]:
        """Every lake folder that belongs to `namespace` (what a namespace-wide identity, such
        as a cloud IAM role per namespace, may reach)."""
        return tuple(f"{kind}/{namespace}" for kind in cls.NAMESPACED_KINDS)

    @staticmethod
    def lineage_events_path(namespace: str) -> str:
        """The OpenLineage events of one namespace's runs (appended by the runs themselves)."""
        return f"lineage/{namespace}/events.jsonl"

    def uri(self, rel: str) -> str:
        """Absolute URI of a path inside the lake."""
        return f"{self.root}/{rel.strip('/')}" if rel else self.root

    def relative(self, uri: str) -> str:
        """The path inside this lake of an absolute URI that points into it."""
        for root in (self.root, self.spark_uri("")):
            if uri.startswith(root.rstrip("/") + "/"):
                return uri[len(root.rstrip("/")) + 1 :]
        raise LakeError(f"{uri} is not inside the lake {self.root}")

    def local_path(self, rel: str) -> Path:
        """The local file of `rel` (file lakes only), for libraries that want a path."""
        if self._local is None:
            raise LakeError(f"{self.uri(rel)}: not a local lake")
        return self._local / rel

    def spark_uri(self, rel: str) -> str:
        """The URI Spark's Hadoop file systems understand (s3a:// for S3)."""
        uri = self.uri(rel)
        return "s3a://" + uri[len("s3://") :] if self.scheme == "s3" else uri

    def storage_options(self) -> dict[str, str]:
        """Options for delta-rs / object_store readers and writers."""
        if self.scheme != "s3":
            return {}
        opts = {"AWS_REGION": self.s3.region}
        if self.s3.endpoint:
            opts["AWS_ENDPOINT_URL"] = self.s3.endpoint
            opts["AWS_ALLOW_HTTP"] = "true"
            # MinIO has no DynamoDB lock: it is a single writer per table here (one Job per run).
            opts["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
        if self.s3.access_key and self.s3.secret_key:
            opts["AWS_ACCESS_KEY_ID"] = self.s3.access_key
            opts["AWS_SECRET_ACCESS_KEY"] = self.s3.secret_key
            if self.s3.session_token:
                opts["AWS_SESSION_TOKEN"] = self.s3.session_token
        return opts

    def spark_conf(self) -> dict[str, str]:
        """Hadoop s3a settings for a Spark session that reads and writes this lake."""
        if self.scheme != "s3":
            return {}
        conf = {
            "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.endpoint.region": self.s3.region,
        }
        if self.s3.endpoint:
            conf["spark.hadoop.fs.s3a.endpoint"] = self.s3.endpoint
            secure = self.s3.endpoint.startswith("https")
            conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(secure).lower()
        if self.s3.access_key and self.s3.secret_key:
            conf["spark.hadoop.fs.s3a.access.key"] = self.s3.access_key
            conf["spark.hadoop.fs.s3a.secret.key"] = self.s3.secret_key
            if self.s3.session_token:
                conf["spark.hadoop.fs.s3a.session.token"] = self.s3.session_token
                conf["spark.hadoop.fs.s3a.aws.credentials.provider"] = (
                    "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
                )
        return conf

    # ---- object access ------------------------------------------------------------------------
    def _s3(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.s3.endpoint,
                aws_access_key_id=self.s3.access_key,
                aws_secret_access_key=self.s3.secret_key,
                aws_session_token=self.s3.session_token,
                region_name=self.s3.region,
            )
        return self._client

    def _bucket_key(self, rel: str) -> tuple[str, str]:
        parsed = urlparse(self.uri(rel))
        return parsed.netloc, parsed.path.lstrip("/")

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write a file atomically; returns its URI."""
        try:
            if self._local is not None:
                path = self._local / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)  # atomic on one file system
            else:
                bucket, key = self._bucket_key(rel)
                self._s3().put_object(Bucket=bucket, Key=key, Body=data)  # atomic per object
        except OSError as exc:
            raise LakeError(f"cannot write {self.uri(rel)}: {exc}") from exc
        return self.uri(rel)

    def read_bytes(self, rel: str) -> bytes:
        try:
            if self._local is not None:
                return (self._local / rel).read_bytes()
            bucket, key = self._bucket_key(rel)
            body: bytes = self._s3().get_object(Bucket=bucket, Key=key)["Body"].read()
            return body
        except FileNotFoundError as exc:
            raise LakeError(f"{self.uri(rel)}: not found") from exc
        except Exception as exc:
            if type(exc).__name__ in ("NoSuchKey", "ClientError"):
                raise LakeError(f"{self.uri(rel)}: not found ({exc})") from exc
            raise

    def exists(self, rel: str) -> bool:
        if self._local is not None:
            return (self._local / rel).exists()
        bucket, key = self._bucket_key(rel)
        resp = self._s3().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        return bool(resp.get("KeyCount"))

    def list_files(self, prefix: str) -> Iterator[str]:
        """Relative paths of every file under `prefix`, sorted."""
        if self._local is not None:
            base = self._local / prefix
            if base.exists():
                for path in sorted(p for p in base.rglob("*") if p.is_file()):
                    yield str(path.relative_to(self._local))
            return
        bucket, key = self._bucket_key(prefix)
        root_key = self._bucket_key("")[1]
        paginator = self._s3().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=key.rstrip("/") + "/"):
            for obj in page.get("Contents", []):
                yield obj["Key"][len(root_key) :].lstrip("/")

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def append_jsonl(self, rel: str, record: dict[str, Any]) -> None:
        """Append one JSON line. Local: O_APPEND (atomic for one line). S3 has no append, so
        each record is its own object under `<rel>.d/`, read back in order by `read_jsonl`."""
        line = json.dumps(record, sort_keys=True) + "\n"
        if self._local is not None:
            path = self._local / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line)
            return
        import uuid
        from datetime import UTC, datetime

        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.write_bytes(f"{rel}.d/{stamp}-{uuid.uuid4().hex[:8]}.json", line.encode())

    def read_jsonl(self, rel: str) -> list[dict[str, Any]]:
        if self._local is not None:
            path = self._local / rel
            if not path.exists():
                return []
            return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return [json.loads(self.read_bytes(p)) for p in self.list_files(f"{rel}.d")]

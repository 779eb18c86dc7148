"""Pulumi mocks that record every resource the program registers, answering with the outputs a
cloud would compute (ids, ARNs, endpoints) so dependent resources and outputs resolve."""

from __future__ import annotations

import asyncio
import json
import runpy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from neuraxis.infra.policy.validators import Resource

REPO = Path(__file__).resolve().parents[2]
STACKS = REPO / "stacks"


@dataclass(frozen=True)
class Recorded:
    type: str
    name: str
    inputs: dict[str, Any]
    id: str


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    resources: list[Recorded] = field(default_factory=list)

    def new_resource(
        self, args: pulumi.runtime.MockResourceArgs
    ) -> tuple[str | None, dict[str, Any]]:
        inputs = unwrap_secrets(dict(args.inputs))
        typ, name = args.typ, args.name
        rid = inputs.get("bucket") if typ == "aws:s3/bucket:Bucket" else f"{name}-id"
        outputs = dict(inputs)
        if typ.startswith("aws:"):
            outputs.setdefault("arn", f"arn:aws:mock:::{name}")
        if typ == "aws:s3/bucket:Bucket":
            outputs["arn"] = f"arn:aws:s3:::{rid}"
        if typ == "aws:eks/cluster:Cluster":
            outputs.update(name=name, endpoint=f"https://{name}.eks.mock",
                           certificateAuthority={"data": "Y2EtZGF0YQ=="},
                           identities=[{"oidcs": [{"issuer": f"https://oidc.mock/{name}"}]}],
                           )  # fmt: skip
        if typ == "aws:eks/nodeGroup:NodeGroup":
            outputs.setdefault("nodeGroupName", name)
        if typ == "aws:iam/role:Role":
            outputs["name"] = name
        if typ == "gcp:container/cluster:Cluster":
            outputs.update(name=name, endpoint="10.0.0.1",
                           masterAuth={"clusterCaCertificate": "Y2EtZGF0YQ=="})  # fmt: skip
        if typ == "gcp:serviceaccount/account:Account":
            outputs["email"] = f"{inputs.get('accountId')}@mock.iam.gserviceaccount.com"
        if typ == "gcp:storage/hmacKey:HmacKey":
            outputs.update(accessId="GOOGMOCKACCESS", secret="mock-hmac-secret")
        if typ == "gcp:container/nodePool:NodePool":
            outputs.setdefault("name", name)
        self.resources.append(Recorded(typ, name, inputs, str(rid)))
        return str(rid), outputs

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None

    def of_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name: str | None = None) -> Recorded:
        found = [r for r in self.of_type(typ) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {typ} {name or ''}, got {[r.name for r in found]}"
        return found[0]

    def policy_view(self) -> list[Resource]:
        """The recorded resources as the policy validators see them."""
        return [
            Resource(type=r.type, name=r.name, props={**r.inputs, "id": r.id}, urn=r.name)
            for r in self.resources
        ]


SECRET_SIG = "4dabf18193072939515e22adb298388d"


def unwrap_secrets(value: Any) -> Any:
    """Inputs with Pulumi's secret wrappers replaced by the values they wrap."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270":
            return unwrap_secrets(value.get("value"))
        return {k: unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v) for v in value]
    return value


def run(body: Callable[[], Any], *, stack: str = "test", config: Mapping[str, str] | None = None,
        ) -> RecordingMocks:  # fmt: skip
    """Run `body` as a Pulumi program under fresh mocks; returns what it registered."""
    # Pulumi's test runner works on the thread's current event loop; an asyncio.run() earlier
    # in the same pytest process (serving tests) leaves none set.
    asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="neuraxis", stack=stack, preview=False)
    pulumi.runtime.set_all_config(dict(config or {}), [])

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> Any:
        return body()

    program()
    return mocks


def stack_config(name: str) -> dict[str, str]:
    """The committed Pulumi.<name>.yaml config, secrets replaced by test values."""
    import yaml

    doc = yaml.safe_load((STACKS / f"Pulumi.{name}.yaml").read_text())
    config = {}
    for key, value in doc["config"].items():
        config[key] = "test-secret-value" if isinstance(value, dict) else str(value)
    return config


def run_stack(
    name: str, overrides: Mapping[str, str] | None = None
) -> tuple[RecordingMocks, dict[str, Any]]:
    """Run stacks/__main__.py (the real program entry) for one stack under mocks; returns the
    recorded resources and the stack's exported outputs (resolved)."""
    exported: dict[str, Any] = {}

    def body() -> Any:
        real_export = pulumi.export
        outputs: dict[str, Any] = {}

        def capture(name: str, value: Any) -> None:
            outputs[name] = value

        pulumi.export = capture  # the mock runtime has no root stack to export to
        try:
            runpy.run_path(str(STACKS / "__main__.py"), run_name="__main__")
        finally:
            pulumi.export = real_export
        return pulumi.Output.all(**outputs).apply(exported.update)

    config = {**stack_config(name), **(overrides or {})}
    mocks = run(body, stack=name, config=config)
    return mocks, exported


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)

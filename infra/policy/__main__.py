"""The CrossGuard pack (`pulumi preview --policy-pack infra/policy`): every policy MANDATORY.

Only adapts pulumi_policy's resources to the plain validators in `validators`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyPack,
    ResourceValidationPolicy,
    StackValidationPolicy,
)

from neuraxis.infra.policy.validators import (
    DESCRIPTIONS,
    RESOURCE_POLICIES,
    STACK_POLICIES,
    Resource,
)


def _resource(r: Any) -> Resource:
    deps = getattr(r, "property_dependencies", None) or {}
    return Resource(
        type=r.resource_type,
        name=r.name,
        props=r.props,
        urn=getattr(r, "urn", "") or "",
        prop_deps={k: [d.urn for d in v] for k, v in deps.items()},
    )


def _resource_policy(name: str, check: Callable[[Resource], list[str]]) -> ResourceValidationPolicy:
    def validate(args: Any, report_violation: Callable[..., None]) -> None:
        resource = Resource(type=args.resource_type, name=args.name, props=args.props,
                            urn=getattr(args, "urn", "") or "")  # fmt: skip
        for message in check(resource):
            report_violation(message)

    return ResourceValidationPolicy(name=name, description=DESCRIPTIONS[name], validate=validate)


def _stack_policy(
    name: str, check: Callable[[Sequence[Resource]], list[str]]
) -> StackValidationPolicy:
    def validate(args: Any, report_violation: Callable[..., None]) -> None:
        for message in check([_resource(r) for r in args.resources]):
            report_violation(message)

    return StackValidationPolicy(name=name, description=DESCRIPTIONS[name], validate=validate)


PolicyPack(
    name="neuraxis",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[
        *(_resource_policy(n, f) for n, f in RESOURCE_POLICIES.items()),
        *(_stack_policy(n, f) for n, f in STACK_POLICIES.items()),
    ],
)

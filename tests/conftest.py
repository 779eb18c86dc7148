"""Shared test helpers: repository paths, the bad-input corpus and the valid edge cases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
BAD_INPUTS = Path(__file__).resolve().parent / "bad_inputs"
GOOD_INPUTS = Path(__file__).resolve().parent / "good_inputs"


@dataclass(frozen=True)
class BadInput:
    """One corpus case: `object` must be rejected (as an update of `before`, when given) with an
    error on `field` whose text contains `message`."""

    name: str
    why: str
    field: str
    message: str
    object: dict[str, Any]
    before: dict[str, Any] | None


def load_bad_inputs() -> list[BadInput]:
    cases = []
    for path in sorted(BAD_INPUTS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        cases.append(
            BadInput(
                name=path.stem,
                why=doc["why"],
                field=doc["expect"]["field"],
                message=doc["expect"]["message"],
                object=doc["object"],
                before=doc.get("before"),
            )
        )
    return cases


@dataclass(frozen=True)
class GoodInput:
    """One valid edge case: `object` must be accepted (by the models and the API server), so
    that the validation rules are shown not to be stricter than the platform."""

    name: str
    why: str
    object: dict[str, Any]


def load_good_inputs() -> list[GoodInput]:
    cases = []
    for path in sorted(GOOD_INPUTS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        cases.append(GoodInput(name=path.stem, why=doc["why"], object=doc["object"]))
    return cases


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO

"""Every case of the bad-input corpus is rejected by the Python models with the field and the
words the API server uses (tests/cluster replays the same corpus against a real API server)."""

from __future__ import annotations

import pytest

from neuraxis.resources import ResourceError, check_update, parse_resource
from tests.conftest import BadInput, load_bad_inputs

CASES = load_bad_inputs()


def test_corpus_is_large_and_covers_every_kind() -> None:
    assert len(CASES) >= 40
    kinds = {c.object["kind"] for c in CASES}
    assert kinds == {"Dataset", "TrainingJob", "ModelVersion", "EdgeDeployment"}
    assert any(c.before is not None for c in CASES), "no immutability case"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_models_reject_bad_input(case: BadInput) -> None:
    with pytest.raises(ResourceError) as info:
        new = parse_resource(case.object)
        if case.before is not None:
            check_update(parse_resource(case.before), new)
    matching = [e for e in info.value.errors if (e.path == case.field or case.field in e.detail)]
    assert matching, f"no error on {case.field}: {info.value}"
    assert any(case.message in str(e) for e in matching), f"{case.message!r} not in {info.value}"


@pytest.mark.parametrize("case", [c for c in CASES if c.before is not None], ids=lambda c: c.name)
def test_immutability_cases_start_from_a_valid_object(case: BadInput) -> None:
    assert case.before is not None
    parse_resource(case.before)
    parse_resource(case.object)  # valid on its own; only the change is refused

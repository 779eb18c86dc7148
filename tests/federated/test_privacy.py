"""The epsilon budget: the figures are Opacus's RDP accountant's, and a run stops before the round
that would exceed the target, never after."""

from __future__ import annotations

import pytest
from opacus.accountants import RDPAccountant

from neuraxis.crds.trainingjob import FederationPrivacy
from neuraxis.workloads.federated.privacy import epsilon_after, plan_rounds


def _opacus_epsilon(rounds: int, sigma: float, rate: float, delta: float) -> float:
    # Stepped one round at a time, the way a training loop would drive the accountant.
    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=sigma, sample_rate=rate)
    return float(accountant.get_epsilon(delta=delta))


def _privacy(target: float, sigma: float = 1.1) -> FederationPrivacy:
    return FederationPrivacy.model_validate(
        {"mode": "central", "clippingNorm": 1.0, "noiseMultiplier": sigma,
         "targetEpsilon": target, "delta": 1e-5}
    )  # fmt: skip


@pytest.mark.parametrize(("sigma", "rate"), [(1.1, 1.0), (0.8, 1.0), (2.0, 2 / 3)])
def test_epsilon_is_opacus_rdp(sigma: float, rate: float) -> None:
    for rounds in (1, 2, 5):
        assert epsilon_after(rounds, sigma, rate, 1e-5) == pytest.approx(
            _opacus_epsilon(rounds, sigma, rate, 1e-5), rel=1e-12
        )


def test_epsilon_grows_with_rounds() -> None:
    values = [epsilon_after(r, 1.1, 1.0, 1e-5) for r in range(1, 6)]
    assert values == sorted(values) and len(set(values)) == 5


@pytest.mark.parametrize("k", [1, 2, 4])
def test_a_target_that_allows_k_rounds_runs_exactly_k(k: int) -> None:
    eps_k, eps_next = (_opacus_epsilon(r, 1.1, 1.0, 1e-5) for r in (k, k + 1))
    plan = plan_rounds(_privacy((eps_k + eps_next) / 2), requested=10, sample_rate=1.0)
    assert plan.rounds == k and plan.budget_exhausted
    assert max(plan.epsilons) <= (eps_k + eps_next) / 2 < eps_next


def test_a_target_equal_to_round_k_still_allows_round_k() -> None:
    eps_3 = _opacus_epsilon(3, 1.1, 1.0, 1e-5)
    plan = plan_rounds(_privacy(eps_3), requested=3, sample_rate=1.0)
    assert plan.rounds == 3 and not plan.budget_exhausted


def test_a_target_below_one_round_runs_none() -> None:
    plan = plan_rounds(_privacy(_opacus_epsilon(1, 1.1, 1.0, 1e-5) / 2), 5, 1.0)
    assert plan.rounds == 0 and plan.budget_exhausted and plan.epsilons == ()


def test_mode_none_spends_nothing() -> None:
    plan = plan_rounds(FederationPrivacy.model_validate({"mode": "none"}), 7, 1.0)
    assert plan.rounds == 7 and not plan.budget_exhausted and plan.epsilons == ()

"""The epsilon budget of a federated run, accounted with Opacus's RDP accountant.

One round is one Gaussian mechanism over each site's clipped update: the noise multiplier is the
spec's, and the sampling rate is the share of sites asked to train (1.0: every site, every round).
Central DP (sites clip, the server adds noise to the sum) and local DP (each site adds noise with
the same multiplier to its own update) give each site the same per-round guarantee, so both are
accounted the same way.

Epsilon after r rounds depends only on (noise multiplier, sampling rate, r, delta), never on the
updates, so the check "would round r exceed the target?" can be asked before round r starts."""

from __future__ import annotations

from dataclasses import dataclass

from opacus.accountants import RDPAccountant

from neuraxis.crds.trainingjob import FederationPrivacy


@dataclass(frozen=True)
class RoundPlan:
    """How many rounds the budget allows, and what they cost."""

    rounds: int  # rounds that will run
    requested: int  # rounds the spec asked for
    epsilons: tuple[float, ...]  # epsilon after each planned round (empty for mode none)

    @property
    def budget_exhausted(self) -> bool:
        """The run stops early: one more round would exceed targetEpsilon."""
        return self.rounds < self.requested


def epsilon_after(rounds: int, noise_multiplier: float, sample_rate: float, delta: float) -> float:
    """Opacus's RDP epsilon after `rounds` identical Gaussian rounds."""
    if rounds == 0:
        return 0.0
    accountant = RDPAccountant()
    # The accountant's history holds (noise, rate, steps); one entry for identical rounds.
    accountant.history = [(noise_multiplier, sample_rate, rounds)]
    return float(accountant.get_epsilon(delta=delta))


def plan_rounds(privacy: FederationPrivacy, requested: int, sample_rate: float) -> RoundPlan:
    """The rounds to run: round r starts only if epsilon after r stays within the target."""
    if privacy.mode == "none":
        return RoundPlan(rounds=requested, requested=requested, epsilons=())
    assert privacy.noise_multiplier is not None and privacy.target_epsilon is not None
    epsilons: list[float] = []
    for r in range(1, requested + 1):
        eps = epsilon_after(r, privacy.noise_multiplier, sample_rate, privacy.delta)
        if eps > privacy.target_epsilon:
            break
        epsilons.append(eps)
    return RoundPlan(rounds=len(epsilons), requested=requested, epsilons=tuple(epsilons))

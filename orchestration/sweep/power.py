"""The smallest objective difference a sweep can detect, computed before anything runs (``recon sweep plan``).

A sweep ranks settings by one score each on the same ``n`` dev examples. Whether two settings can be
told apart depends on that ``n`` far more than on the budget, so the plan says it up front and a user
sizes the probe (``finetune.data.max_eval``, ``objective.seeds``) before spending compute.

The formula (two-proportion test, normal approximation; Fleiss et al., *Statistical Methods for Rates
and Proportions*, ch. 4)::

    se    = sqrt(p (1 - p) / n)                        binomial standard error of one score
    delta = (z_{1 - alpha/2} + z_{power}) * sqrt(2) * se

with ``p`` the expected score (``objective.expected_score``; 0.5 when unset, where ``p (1 - p)`` is
largest, so the figure never flatters), ``alpha`` = 0.05 two-sided and 80% power: ``z`` = 1.96 + 0.84
= 2.80, so ``delta ~ 3.96 se``. Micro-F1 is a ratio of counts rather than a proportion; its standard
error is close to the binomial one at the same ``n`` when most examples count in both precision and
recall, which is what a plan can assume without data.

**Seeds.** The sweep's objective is the median over ``S`` seeds, scored on the *same* ``n`` examples.
Seeds that err on the same examples leave the example-sampling error as it is (the figure above, the
worst case); seeds that err independently divide the variance by ``S`` (``delta / sqrt(S)``, the best
case). The plan prints both: seeds never buy more than ``sqrt(S)``, dev examples always do.

**Pairing.** Two trials are compared on the same examples (``confidence``: paired bootstrap), so the
variance of their difference is ``2 p (1 - p) (1 - rho) / n`` with ``rho`` the correlation of their
per-example correctness, i.e. the detectable difference shrinks by ``sqrt(1 - rho)``. ``rho`` cannot be
known before a run, so the plan does not guess it (``rho = 0`` is the conservative figure); after the
run the best report states the paired detectable difference it measured from the bootstrap.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Optional

from recon.orchestration.report.significance import ALPHA  # two-sided: the study tables' level

POWER = 0.8
UNKNOWN_SCORE = 0.5   # the expected score when none is given: the largest binomial variance


def z_sum(alpha: float = ALPHA, power: float = POWER) -> float:
    """``z_{1 - alpha/2} + z_{power}`` (2.80 for 95% / 80%)."""
    normal = NormalDist()
    return normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)


def detectable_difference(n: Optional[int], seeds: int = 1, expected: Optional[float] = None,
                          alpha: float = ALPHA, power: float = POWER) -> Optional[dict]:
    """The module docstring's formula: a dict with the figure for seeds that agree (``delta``, what the plan
    states) and for independent seeds (``delta_independent_seeds``), or None when ``n`` is unknown."""
    if not n or n <= 0:
        return None
    p = UNKNOWN_SCORE if expected is None else float(expected)
    se = math.sqrt(p * (1 - p) / n)
    delta = z_sum(alpha, power) * math.sqrt(2) * se
    return {"n_examples": int(n), "seeds": int(seeds), "expected_score": p, "expected_given": expected is not None,
            "se": se, "delta": delta, "delta_independent_seeds": delta / math.sqrt(max(1, seeds)),
            "alpha": alpha, "power": power}


def paired_detectable(se_delta: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The difference a paired test with standard error ``se_delta`` of the difference detects (after a run)."""
    return z_sum(alpha, power) * se_delta


def describe(d: dict, what: str) -> str:
    """One sentence for ``recon sweep plan``."""
    expected = (f"expected score {d['expected_score']:.2f}" if d["expected_given"]
                else f"score {d['expected_score']:.2f} assumed, the worst case: set objective.expected_score")
    seeds = (f"; if the {d['seeds']} seeds erred independently: {d['delta_independent_seeds']:.3f}"
             if d["seeds"] > 1 else "")
    return (f"smallest difference this sweep can detect: {d['delta']:.3f} in {what} ({d['n_examples']} examples, "
            f"{expected}; standard error {d['se']:.3f} per trial; two-proportion test, "
            f"{100 * (1 - d['alpha']):.0f}% two-sided, {100 * d['power']:.0f}% power{seeds}); "
            "closer trials will read as ties")


__all__ = ["detectable_difference", "paired_detectable", "describe", "z_sum", "ALPHA", "POWER"]

"""The promotion gate: a pure function from an evaluation and a declarative policy to a decision.

Every rule is named, compares numbers that are kept in the decision, and says whether it passed, so a
reader of one decision can tell exactly why a model is, or is not, in production. Nothing here reads
the network, the clock or the environment.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

STATISTICAL_RULES = ("reject_significantly_worse", "require_significantly_better", "off")
CONFIDENCE_LEVELS = (0.8, 0.9, 0.95, 0.99)  # the intervals the trainer's bootstrap reports
BASELINES = ("mean", "linear")


class PolicyError(ValueError):
    """A policy value is out of range or unknown; the message names it."""


@dataclass(frozen=True)
class GatePolicy:
    """What a candidate must show to be promoted. RMSE and its differences are in rings.

    The defaults, and the reason for each, are in the README ("The gate").
    """

    # Absolute ceiling: above it the candidate is broken, whatever the champion scores.
    max_rmse: float = 2.5
    # Required gain over the champion: the larger of the absolute and the relative (fraction) one.
    # With both at 0 the candidate must still be strictly better: a tie keeps the champion.
    min_improvement: float = 0.0
    min_relative_improvement: float = 0.0
    # No slice (Sex, age band) may get worse than the champion's by more than this.
    slice_tolerance: float = 0.1
    # How the paired bootstrap interval of RMSE(candidate) - RMSE(champion) is used.
    statistical_rule: str = "reject_significantly_worse"
    confidence: float = 0.95
    # The candidate must beat each baseline (training mean, least squares) by at least this.
    baseline_margin: float = 0.02
    # Not worse than the median of recent runs by more than this (None: rule off) ...
    prior_runs_tolerance: float | None = 0.1
    # ... once there are at least this many of them.
    min_prior_runs: int = 3

    def __post_init__(self) -> None:
        for name in ("min_improvement", "min_relative_improvement", "slice_tolerance", "baseline_margin"):
            if not getattr(self, name) >= 0:
                raise PolicyError(f"gate policy {name} must be >= 0, got {getattr(self, name)}")
        if not self.max_rmse > 0:
            raise PolicyError(f"gate policy max_rmse must be > 0, got {self.max_rmse}")
        if not self.min_relative_improvement < 1:
            raise PolicyError(f"gate policy min_relative_improvement must be < 1, got {self.min_relative_improvement}")
        if self.statistical_rule not in STATISTICAL_RULES:
            raise PolicyError(f"gate policy statistical_rule must be one of {STATISTICAL_RULES}")
        if self.confidence not in CONFIDENCE_LEVELS:
            raise PolicyError(f"gate policy confidence must be one of {CONFIDENCE_LEVELS}, got {self.confidence}")
        if self.prior_runs_tolerance is not None and not self.prior_runs_tolerance >= 0:
            raise PolicyError(f"gate policy prior_runs_tolerance must be >= 0 or null, got {self.prior_runs_tolerance}")
        if self.min_prior_runs < 1:
            raise PolicyError(f"gate policy min_prior_runs must be >= 1, got {self.min_prior_runs}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], defaults: GatePolicy | None = None) -> GatePolicy:
        """``defaults`` with the keys of ``data`` replaced: a run may override one rule and keep the rest."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"unknown gate policy keys {unknown}; known: {sorted(known)}")
        return cls(**{**asdict(defaults or cls()), **data})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The JSON schema of the policy, for the DAG's Params form: the form refuses what the policy refuses.
POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_rmse": {"type": "number", "exclusiveMinimum": 0},
        "min_improvement": {"type": "number", "minimum": 0},
        "min_relative_improvement": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "slice_tolerance": {"type": "number", "minimum": 0},
        "statistical_rule": {"type": "string", "enum": list(STATISTICAL_RULES)},
        "confidence": {"type": "number", "enum": list(CONFIDENCE_LEVELS)},
        "baseline_margin": {"type": "number", "minimum": 0},
        "prior_runs_tolerance": {"type": ["number", "null"], "minimum": 0},
        "min_prior_runs": {"type": "integer", "minimum": 1},
    },
}


@dataclass(frozen=True)
class Check:
    """One rule's outcome. ``applied`` is False when the rule did not apply (and so did not block)."""

    rule: str
    passed: bool
    detail: str
    observed: float | None = None
    threshold: float | None = None
    applied: bool = True


@dataclass(frozen=True)
class Decision:
    promote: bool
    checks: tuple[Check, ...]
    candidate_rmse: float | None
    champion_rmse: float | None = None
    champion_version: str | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    forced: bool = False
    force_reason: str | None = None
    forced_by: str | None = None

    @property
    def verdict(self) -> str:
        if self.forced and self.promote:
            return "forced"
        return "promoted" if self.promote else "rejected"

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.passed)

    def summary(self) -> str:
        failed = self.failed
        if self.forced:
            head = f"FORCED by {self.forced_by or 'unknown'} ({self.force_reason})"
            head += "" if self.promote else ": refused, the candidate's metrics are not finite"
        else:
            head = "PROMOTE" if self.promote else "REJECT"
        if failed:
            return f"{head}: failed {', '.join(c.rule for c in failed)}: " + "; ".join(c.detail for c in failed)
        applied = sum(check.applied for check in self.checks)
        return f"{head}: all {applied} applicable rules passed"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        """Rebuild a decision from its XCom form (``to_dict``)."""
        return cls(
            promote=bool(data["promote"]),
            checks=tuple(Check(**check) for check in data["checks"]),
            candidate_rmse=data["candidate_rmse"],
            champion_rmse=data.get("champion_rmse"),
            champion_version=data.get("champion_version"),
            policy=dict(data.get("policy", {})),
            forced=bool(data.get("forced")),
            force_reason=data.get("force_reason"),
            forced_by=data.get("forced_by"),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checks"] = [asdict(check) for check in self.checks]
        data["verdict"] = self.verdict
        data["summary"] = self.summary()
        return data


def _finite(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _f(value: float | None) -> str:
    return f"{value:.4f}" if _finite(value) else "n/a"


def _s(value: float | None) -> str:
    """Signed, for differences: negative favours the candidate."""
    return f"{value:+.4f}" if _finite(value) else "n/a"


def _baseline_checks(rmse: float, baselines: dict[str, Any], policy: GatePolicy) -> list[Check]:
    checks = []
    for name in BASELINES:
        baseline = (baselines.get(name) or {}).get("test_rmse")
        if not _finite(baseline):
            checks.append(Check(f"baseline:{name}", False, f"the {name} baseline has no finite test_rmse ({baseline})"))
            continue
        limit = baseline - policy.baseline_margin
        passed = _finite(rmse) and rmse <= limit
        checks.append(
            Check(
                f"baseline:{name}",
                passed,
                f"test_rmse {_f(rmse)} {'beats' if passed else 'does not beat'} the {name} baseline {_f(baseline)} "
                f"by the margin {_f(policy.baseline_margin)}",
                rmse,
                limit,
            )
        )
    return checks


def _champion_checks(
    rmse: float, champion: dict[str, Any], comparison: dict[str, Any] | None, policy: GatePolicy
) -> list[Check]:
    version = champion["version"]
    champion_rmse = (champion.get("metrics") or {}).get("test_rmse")
    if champion.get("error") or comparison is None or not _finite(champion_rmse):
        why = champion.get("error") or f"its test_rmse is {champion_rmse}"
        return [
            Check(
                "champion_scorable",
                False,
                f"champion v{version} could not be scored on this test split ({why}); not promoting over a "
                "champion that cannot be compared: trigger with force_promote and a reason to replace it",
            )
        ]
    checks = []
    required = max(policy.min_improvement, policy.min_relative_improvement * champion_rmse)
    gain = champion_rmse - rmse if _finite(rmse) else None
    passed = gain is not None and gain > 0 and gain >= required
    if gain is None:
        detail = f"the candidate has no finite test_rmse to compare with champion v{version} {_f(champion_rmse)}"
    elif gain > 0:
        detail = f"test_rmse {_f(rmse)} is better than champion v{version} {_f(champion_rmse)} by {_f(gain)}"
    elif gain == 0:
        detail = f"test_rmse {_f(rmse)} ties champion v{version}: a tie keeps the champion"
    else:
        detail = f"test_rmse {_f(rmse)} is worse than champion v{version} {_f(champion_rmse)} by {_f(-gain)}"
    checks.append(Check("improvement", passed, f"{detail} (required: better, by >= {_f(required)})", gain, required))

    overall = comparison["overall"]
    level = str(policy.confidence)
    low, high = overall["intervals"].get(level, (None, None))
    interval = f"RMSE difference {_s(overall['rmse_diff'])}, {policy.confidence:.0%} interval [{_s(low)}, {_s(high)}]"
    if policy.statistical_rule == "off":
        checks.append(Check("significance", True, f"{interval}; statistical rule off", applied=False))
    elif not _finite(low, high):
        checks.append(Check("significance", False, f"no finite {level} interval in the evaluation ({interval})"))
    elif policy.statistical_rule == "reject_significantly_worse":
        worse = low > 0
        checks.append(
            Check(
                "significance",
                not worse,
                f"{interval}: {'significantly worse' if worse else 'not significantly worse'} than the champion",
                low,
                0.0,
            )
        )
    else:
        better = high < 0
        checks.append(
            Check(
                "significance",
                better,
                f"{interval}: {'significantly better' if better else 'not significantly better'} than the champion",
                high,
                0.0,
            )
        )

    for name, slice_comparison in sorted(comparison["slices"].items()):
        diff = slice_comparison["rmse_diff"]
        low, high = slice_comparison["intervals"].get(level, (None, None))
        passed = _finite(diff) and diff <= policy.slice_tolerance
        checks.append(
            Check(
                f"slice:{name}",
                passed,
                f"{name}: RMSE difference {_s(diff)} [{_s(low)}, {_s(high)}] "
                f"{'within' if passed else 'beyond'} the slice tolerance {_f(policy.slice_tolerance)}",
                diff,
                policy.slice_tolerance,
            )
        )
    return checks


def _prior_runs_check(rmse: float, prior: dict[str, Any], policy: GatePolicy) -> Check:
    count, median = prior.get("count", 0), prior.get("median_test_rmse")
    if policy.prior_runs_tolerance is None:
        return Check("prior_runs", True, "prior-runs rule off", applied=False)
    if count < policy.min_prior_runs:
        return Check(
            "prior_runs", True, f"{count} prior runs (< {policy.min_prior_runs}): rule not applied", applied=False
        )
    if not _finite(median):
        return Check("prior_runs", False, f"the median test_rmse of {count} prior runs is not a finite number")
    limit = median + policy.prior_runs_tolerance
    passed = _finite(rmse) and rmse <= limit
    return Check(
        "prior_runs",
        passed,
        f"test_rmse {_f(rmse)} is {'within' if passed else 'beyond'} the median {_f(median)} of {count} recent runs "
        f"({prior.get('basis')}) + {_f(policy.prior_runs_tolerance)}",
        rmse,
        limit,
    )


def _ceiling_check(rmse: float | None, policy: GatePolicy) -> Check:
    if rmse is None:
        return Check("ceiling", False, "the candidate's test_rmse is not a finite number", None, policy.max_rmse)
    passed = rmse <= policy.max_rmse
    return Check(
        "ceiling",
        passed,
        f"test_rmse {_f(rmse)} {'is within' if passed else 'exceeds'} the ceiling {_f(policy.max_rmse)}",
        rmse,
        policy.max_rmse,
    )


def decide(
    evaluation: dict[str, Any],
    policy: GatePolicy,
    *,
    force_reason: str | None = None,
    forced_by: str | None = None,
) -> Decision:
    """Judge the candidate in ``evaluation`` (see ``results.parse_evaluation``) by ``policy``.

    Without a champion (the first run) the ceiling, the baselines and, once there are enough, the prior
    runs decide. A champion that exists but cannot be scored blocks promotion. ``force_reason`` promotes
    whatever the rules say, except a candidate whose own metrics are not finite: that model cannot serve.
    """
    metrics = evaluation["candidate"]["metrics"]
    rmse = metrics.get("test_rmse") if _finite(metrics.get("test_rmse")) else None
    non_finite = evaluation["candidate"].get("non_finite_predictions", 0)
    finite = _finite(*metrics.values()) and rmse is not None and not non_finite
    checks = [
        Check(
            "metrics_finite",
            finite,
            "the candidate's test metrics are finite"
            if finite
            else f"the candidate's test metrics are missing or not finite ({metrics}); it cannot be scored",
        ),
        _ceiling_check(rmse, policy),
        *_baseline_checks(rmse, evaluation.get("baselines") or {}, policy),
    ]
    champion = evaluation.get("champion")
    if champion is None:
        checks.append(Check("champion", True, "no champion yet: judged without one", applied=False))
    else:
        checks.extend(_champion_checks(rmse, champion, evaluation.get("comparison"), policy))
    checks.append(_prior_runs_check(rmse, evaluation.get("prior_runs") or {}, policy))

    forced = bool(force_reason)
    passed = all(check.passed for check in checks)
    champion_rmse = ((champion or {}).get("metrics") or {}).get("test_rmse")
    return Decision(
        promote=finite if forced else passed,
        checks=tuple(checks),
        candidate_rmse=rmse,
        champion_rmse=champion_rmse,
        champion_version=None if champion is None else str(champion["version"]),
        policy=policy.to_dict(),
        forced=forced,
        force_reason=force_reason or None,
        forced_by=forced_by if forced else None,
    )

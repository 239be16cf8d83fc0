"""The promotion gate: a pure function from an evaluation and a declarative policy to a decision.

Every rule is named, compares numbers that are kept in the decision, and says whether it passed, so a
reader of one decision can tell exactly why a model is, or is not, in production. Nothing here reads
the network, the clock or the environment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from abalone_contract.constants import CONFIDENCE_LEVELS
from abalone_pipeline.numbers import finite, metric

STATISTICAL_RULES = ("reject_significantly_worse", "require_significantly_better", "off")
BASELINES = ("mean", "linear")


class PolicyError(ValueError):
    """A policy value is out of range or unknown; the message names it."""


# What a policy field's JSON schema may say, and so what GatePolicy checks: the form and the policy agree.
_TYPES = {
    "number": ("a number", lambda value: isinstance(value, int | float) and not isinstance(value, bool)),
    "integer": (
        "a whole number",
        lambda value: (
            (isinstance(value, int) and not isinstance(value, bool))
            or (isinstance(value, float) and value.is_integer())
        ),
    ),
    "string": ("a string", lambda value: isinstance(value, str)),
    "null": ("null", lambda value: value is None),
}
_BOUNDS = {
    "minimum": (">=", lambda value, bound: value >= bound),
    "exclusiveMinimum": (">", lambda value, bound: value > bound),
    "maximum": ("<=", lambda value, bound: value <= bound),
    "exclusiveMaximum": ("<", lambda value, bound: value < bound),
}


def rule(default: Any, description: str, **schema: Any) -> Any:
    """A policy field: its default, what it means, and its JSON schema, the one place its bounds are stated."""
    unchecked = set(schema) - {"type", "enum", *_BOUNDS}
    if unchecked:
        raise TypeError(f"GatePolicy does not check the JSON schema keywords {sorted(unchecked)}")
    return field(default=default, metadata={"schema": {**schema, "description": description}})


def violation(value: Any, schema: dict[str, Any]) -> str | None:
    """What ``value`` breaks in a field's ``schema`` (the keywords ``rule`` accepts), or None."""
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if not any(_TYPES[name][1](value) for name in types):
        return "must be " + " or ".join(_TYPES[name][0] for name in types)
    if "enum" in schema and value not in schema["enum"]:
        return f"must be one of {schema['enum']}"
    if value is None:
        return None
    for keyword, (sign, holds) in _BOUNDS.items():
        if keyword in schema and not holds(value, schema[keyword]):  # NaN holds no bound
            return f"must be {sign} {schema[keyword]}"
    return None


@dataclass(frozen=True)
class GatePolicy:
    """What a candidate must show to be promoted. RMSE and its differences are in rings.

    Each field declares its default, its meaning and its bounds once (``rule``): the policy checks them
    and the DAG's Params form shows them (``POLICY_SCHEMA``). The reasons for the defaults are in
    docs/gate.md.
    """

    max_rmse: float = rule(
        2.5,
        "Ceiling on the candidate's test RMSE: above it the candidate is broken, whatever the champion scores.",
        type="number",
        exclusiveMinimum=0,
    )
    min_improvement: float = rule(
        0.0,
        "Required gain in test RMSE over the champion. With both gains at 0 the candidate must still be "
        "strictly better: a tie keeps the champion.",
        type="number",
        minimum=0,
    )
    min_relative_improvement: float = rule(
        0.0,
        "Required gain as a fraction of the champion's RMSE; the larger of the two required gains applies.",
        type="number",
        minimum=0,
        exclusiveMaximum=1,
    )
    slice_tolerance: float = rule(
        0.1,
        "How much worse than the champion's any one slice (Sex, age band) may get.",
        type="number",
        minimum=0,
    )
    statistical_rule: str = rule(
        "reject_significantly_worse",
        "How the paired bootstrap interval of RMSE(candidate) - RMSE(champion) is used.",
        type="string",
        enum=list(STATISTICAL_RULES),
    )
    confidence: float = rule(
        0.95,
        "The level of that interval: one the trainer's bootstrap reports.",
        type="number",
        enum=list(CONFIDENCE_LEVELS),
    )
    baseline_margin: float = rule(
        0.02,
        "By how much the candidate must beat each baseline (training mean, least squares).",
        type="number",
        minimum=0,
    )
    prior_runs_tolerance: float | None = rule(
        0.1,
        "How much worse than the median of recent runs the candidate may be; null turns the rule off.",
        type=["number", "null"],
        minimum=0,
    )
    min_prior_runs: int = rule(
        3,
        "How many recent runs the prior-runs rule needs before it applies.",
        type="integer",
        minimum=1,
    )

    def __post_init__(self) -> None:
        for policy_field in fields(self):
            value = getattr(self, policy_field.name)
            problem = violation(value, policy_field.metadata["schema"])
            if problem:
                raise PolicyError(f"gate policy {policy_field.name} {problem}, got {value!r}")

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


# The JSON schema of the policy, for the DAG's Params form, derived from the fields' declarations.
POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {policy_field.name: dict(policy_field.metadata["schema"]) for policy_field in fields(GatePolicy)},
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


def _baseline_checks(rmse: float, baselines: dict[str, Any], policy: GatePolicy) -> list[Check]:
    checks = []
    for name in BASELINES:
        baseline = (baselines.get(name) or {}).get("test_rmse")
        if not finite(baseline):
            checks.append(Check(f"baseline:{name}", False, f"the {name} baseline has no finite test_rmse ({baseline})"))
            continue
        limit = baseline - policy.baseline_margin
        passed = finite(rmse) and rmse <= limit
        checks.append(
            Check(
                f"baseline:{name}",
                passed,
                f"test_rmse {metric(rmse)} {'beats' if passed else 'does not beat'} the {name} baseline "
                f"{metric(baseline)} "
                f"by the margin {metric(policy.baseline_margin)}",
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
    if champion.get("error") or comparison is None or not finite(champion_rmse):
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
    gain = champion_rmse - rmse if finite(rmse) else None
    passed = gain is not None and gain > 0 and gain >= required
    if gain is None:
        detail = f"the candidate has no finite test_rmse to compare with champion v{version} {metric(champion_rmse)}"
    elif gain > 0:
        detail = (
            f"test_rmse {metric(rmse)} is better than champion v{version} {metric(champion_rmse)} by {metric(gain)}"
        )
    elif gain == 0:
        detail = f"test_rmse {metric(rmse)} ties champion v{version}: a tie keeps the champion"
    else:
        detail = (
            f"test_rmse {metric(rmse)} is worse than champion v{version} {metric(champion_rmse)} by {metric(-gain)}"
        )
    checks.append(
        Check("improvement", passed, f"{detail} (required: better, by >= {metric(required)})", gain, required)
    )

    overall = comparison["overall"]
    level = str(policy.confidence)
    low, high = overall["intervals"].get(level, (None, None))
    interval = (
        f"RMSE difference {metric(overall['rmse_diff'], signed=True)}, {policy.confidence:.0%} interval "
        f"[{metric(low, signed=True)}, {metric(high, signed=True)}]"
    )
    if policy.statistical_rule == "off":
        checks.append(Check("significance", True, f"{interval}; statistical rule off", applied=False))
    elif not finite(low, high):
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
        passed = finite(diff) and diff <= policy.slice_tolerance
        checks.append(
            Check(
                f"slice:{name}",
                passed,
                f"{name}: RMSE difference {metric(diff, signed=True)} "
                f"[{metric(low, signed=True)}, {metric(high, signed=True)}] "
                f"{'within' if passed else 'beyond'} the slice tolerance {metric(policy.slice_tolerance)}",
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
    if not finite(median):
        return Check("prior_runs", False, f"the median test_rmse of {count} prior runs is not a finite number")
    limit = median + policy.prior_runs_tolerance
    passed = finite(rmse) and rmse <= limit
    return Check(
        "prior_runs",
        passed,
        f"test_rmse {metric(rmse)} is {'within' if passed else 'beyond'} the median {metric(median)} "
        f"of {count} recent runs "
        f"({prior.get('basis')}) + {metric(policy.prior_runs_tolerance)}",
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
        f"test_rmse {metric(rmse)} {'is within' if passed else 'exceeds'} the ceiling {metric(policy.max_rmse)}",
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
    """Decide on the candidate in ``evaluation`` (see ``abalone_contract.results.parse_evaluation``) by ``policy``.

    Without a champion (the first run) the ceiling, the baselines and, once there are enough, the prior
    runs decide. A champion that exists but cannot be scored blocks promotion. ``force_reason`` promotes
    whatever the rules say, except a candidate whose own metrics are not finite: that model cannot serve.
    """
    metrics = evaluation["candidate"]["metrics"]
    rmse = metrics.get("test_rmse") if finite(metrics.get("test_rmse")) else None
    # An evaluation parsed before the trainer's count was carried through has none: 0.
    non_finite = evaluation["candidate"].get("non_finite_predictions", 0)
    scorable = finite(*metrics.values()) and rmse is not None and not non_finite
    if scorable:
        finite_reason = "the candidate's test metrics are finite"
    elif non_finite:
        finite_reason = (
            f"the candidate predicts non-finite values for {non_finite} of {evaluation['test_rows']} test rows; "
            "it cannot serve"
        )
    else:
        finite_reason = f"the candidate's test metrics are missing or not finite ({metrics}); it cannot be scored"
    checks = [
        Check("metrics_finite", scorable, finite_reason),
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
        promote=scorable if forced else passed,
        checks=tuple(checks),
        candidate_rmse=rmse,
        champion_rmse=champion_rmse,
        champion_version=None if champion is None else str(champion["version"]),
        policy=policy.to_dict(),
        forced=forced,
        force_reason=force_reason or None,
        forced_by=forced_by if forced else None,
    )

"""The promotion gate: a pure function from scores and a policy to a decision with reasons."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds on test RMSE (rings)."""

    # The absolute ceiling: a candidate above it is broken, whatever the champion scores.
    max_test_rmse: float = 2.5
    # How much worse than the champion a candidate may score and still be promoted (test-set noise).
    rmse_tolerance: float = 0.02

    def __post_init__(self) -> None:
        if self.max_test_rmse <= 0:
            raise ValueError(f"max_test_rmse must be positive, got {self.max_test_rmse}")
        if self.rmse_tolerance < 0:
            raise ValueError(f"rmse_tolerance must be >= 0, got {self.rmse_tolerance}")


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: tuple[str, ...]
    candidate_rmse: float
    champion_rmse: float | None = None
    champion_version: str | None = None
    policy: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        verdict = "PROMOTE" if self.promote else "REJECT"
        return f"{verdict}: " + "; ".join(self.reasons)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        """Rebuild a decision from its XCom form (``to_dict``)."""
        return cls(
            promote=bool(data["promote"]),
            reasons=tuple(data["reasons"]),
            candidate_rmse=data["candidate_rmse"],
            champion_rmse=data.get("champion_rmse"),
            champion_version=data.get("champion_version"),
            policy=dict(data.get("policy", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        data["summary"] = self.summary()
        return data


def decide(candidate: dict[str, float], champion: dict[str, Any] | None, policy: GatePolicy) -> Decision:
    """Judge the candidate's test metrics against the policy and, if there is one, the champion's.

    ``champion`` is ``{"version": ..., "metrics": {...}}`` from the same test split, or None on the
    first run, which is judged by the ceiling alone.
    """
    rmse = candidate["test_rmse"]
    reasons: list[str] = []
    passed = True
    if rmse <= policy.max_test_rmse:
        reasons.append(f"test_rmse {rmse:.4f} is within the ceiling {policy.max_test_rmse:.4f}")
    else:
        passed = False
        reasons.append(f"test_rmse {rmse:.4f} exceeds the ceiling {policy.max_test_rmse:.4f}")

    champion_rmse = champion_version = None
    if champion is None:
        reasons.append("no champion yet: judged by the ceiling alone")
    else:
        champion_version = str(champion["version"])
        champion_rmse = champion["metrics"]["test_rmse"]
        limit = champion_rmse + policy.rmse_tolerance
        comparison = (
            f"champion v{champion_version} test_rmse {champion_rmse:.4f} + tolerance {policy.rmse_tolerance:.4f}"
        )
        if rmse <= limit:
            reasons.append(f"test_rmse {rmse:.4f} is not worse than {comparison}")
        else:
            passed = False
            reasons.append(f"test_rmse {rmse:.4f} is worse than {comparison}")
    return Decision(
        promote=passed,
        reasons=tuple(reasons),
        candidate_rmse=rmse,
        champion_rmse=champion_rmse,
        champion_version=champion_version,
        policy=asdict(policy),
    )

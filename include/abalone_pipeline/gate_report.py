"""The gate's decision as a readable Markdown report, logged beside its JSON on the candidate's run."""

from __future__ import annotations

import json
from typing import Any

from abalone_pipeline.gate import Decision
from abalone_pipeline.numbers import metric


def _interval(comparison: dict[str, Any] | None, level: str) -> str:
    if not comparison:
        return "n/a"
    low, high = comparison["intervals"].get(level, (None, None))
    return f"[{metric(low, signed=True)}, {metric(high, signed=True)}]"


def render(decision: Decision, evaluation: dict[str, Any], context: dict[str, str] | None = None) -> str:
    """The report: verdict, every rule, and candidate vs champion overall and per slice with intervals."""
    candidate, champion = evaluation["candidate"], evaluation.get("champion")
    comparison = evaluation.get("comparison") or {}
    level = str(decision.policy.get("confidence", 0.95))
    champion_name = f"champion v{champion['version']}" if champion else "champion (none)"
    lines = [
        f"# Gate decision: {decision.verdict.upper()}",
        "",
        decision.summary(),
        "",
    ]
    if context:
        lines += [*(f"- **{key}**: {value}" for key, value in context.items()), ""]
    lines += [
        f"Dataset `{evaluation['dataset_id']}`, {evaluation['test_rows']} test rows; paired bootstrap "
        f"of RMSE(candidate) - RMSE(champion), {evaluation.get('bootstrap', {}).get('resamples', '?')} resamples, "
        f"{float(level):.0%} intervals. Negative differences favour the candidate.",
        "",
        "## Rules",
        "",
        "| rule | result | observed | threshold | finding |",
        "|---|---|---|---|---|",
    ]
    for check in decision.checks:
        result = "pass" if check.passed else "FAIL"
        if not check.applied:
            result = "n/a"
        lines.append(
            f"| {check.rule} | {result} | {metric(check.observed)} | {metric(check.threshold)} | "
            f"{check.detail.replace('|', '/')} |"
        )
    lines += [
        "",
        f"## Candidate vs {champion_name}",
        "",
        "| slice | rows | candidate RMSE | champion RMSE | difference | interval |",
        "|---|---|---|---|---|---|",
    ]
    champion_metrics = (champion or {}).get("metrics") or {}
    overall = comparison.get("overall")
    lines.append(
        f"| all | {evaluation['test_rows']} | {metric(candidate['metrics'].get('test_rmse'))} | "
        f"{metric(champion_metrics.get('test_rmse'))} | {metric(overall and overall['rmse_diff'], signed=True)} | "
        f"{_interval(overall, level)} |"
    )
    for name, metrics in candidate.get("slices", {}).items():
        champion_slice = ((champion or {}).get("slices") or {}).get(name, {})
        slice_comparison = comparison.get("slices", {}).get(name)
        lines.append(
            f"| {name} | {metrics.get('rows', '')} | {metric(metrics.get('rmse'))} | "
            f"{metric(champion_slice.get('rmse'))} | "
            f"{metric(slice_comparison and slice_comparison['rmse_diff'], signed=True)} | "
            f"{_interval(slice_comparison, level)} |"
        )
    lines += ["", "## Baselines and history", "", "| reference | test RMSE |", "|---|---|"]
    lines.append(f"| candidate | {metric(candidate['metrics'].get('test_rmse'))} |")
    for name, metrics in evaluation.get("baselines", {}).items():
        lines.append(f"| {name} baseline (fitted on the training rows) | {metric(metrics.get('test_rmse'))} |")
    prior = evaluation.get("prior_runs") or {}
    if prior.get("count"):
        lines.append(
            f"| median of {prior['count']} recent runs ({prior['basis']}) | {metric(prior['median_test_rmse'])} |"
        )
        lines.append(f"| best of those runs | {metric(prior.get('best_test_rmse'))} |")
    if champion and champion.get("error"):
        lines += ["", f"Champion v{champion['version']} could not be scored: `{champion['error']}`"]
    lines += ["", "## Policy", "", "```json", json.dumps(decision.policy, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)

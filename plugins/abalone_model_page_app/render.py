"""The model page as self-contained HTML: inline CSS, the RMSE trend as inline SVG, no script and no CDN."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote

from abalone_pipeline.numbers import finite, metric

STYLE = """
:root { color-scheme: light dark; --fg: #1f2937; --muted: #6b7280; --bg: #fff; --card: #f8fafc; --line: #e5e7eb;
  --accent: #0369a1; --promoted: #15803d; --forced: #c2410c; --rejected: #b91c1c; --dry_run: #6b7280;
  --rollback: #7c3aed; --champion: #111827; --baseline: #9ca3af; }
@media (prefers-color-scheme: dark) { :root { --fg: #e5e7eb; --muted: #9ca3af; --bg: #111827; --card: #1f2937;
  --line: #374151; --accent: #38bdf8; --champion: #f9fafb; --baseline: #6b7280; } }
body { font: 14px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); margin: 16px 20px; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
a { color: var(--accent); } .muted { color: var(--muted); } .error { border-left: 4px solid var(--rejected); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 12px; margin-top: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
.card h2 { margin-top: 0; } .big { font-size: 22px; font-weight: 600; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 8px 0 0; }
dt { color: var(--muted); } dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: 4px 8px; vertical-align: top;
  border-bottom: 1px solid var(--line); } th { color: var(--muted); font-weight: 600; } td.num { text-align: right;
  font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; font-weight: 600; }
.promoted { background: var(--promoted); } .forced { background: var(--forced); }
.rejected { background: var(--rejected); } .dry_run { background: var(--dry_run); }
.rollback, .rollback_incomplete { background: var(--rollback); }
.undecided { background: var(--baseline); } .pass { color: var(--promoted); } .fail { color: var(--rejected);
  font-weight: 600; } .na { color: var(--muted); }
.legend span { margin-right: 16px; white-space: nowrap; } svg[role=img] { width: 100%; max-width: 960px; height: auto; }
.report { max-width: 1000px; } .report table { width: auto; } pre { white-space: pre-wrap; }
"""
SERIES = {"candidate": ("var(--accent)", ""), "champion": ("var(--champion)", "6 4")}
BASELINE_DASH = "2 4"


@dataclass(frozen=True)
class Links:
    """Paths on this API server: the page's own (``page``, its mount) and the Airflow UI's (``airflow``)."""

    page: str
    airflow: str

    def report(self, dag_id: str, run_id: str) -> str:
        return f"{self.page}/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"

    def slices(self, dag_id: str, run_id: str) -> str:
        return f"{self.report(dag_id, run_id)}/slices.png"

    def airflow_run(self, dag_id: str, run_id: str) -> str:
        return f"{self.airflow}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def when(iso: str | None) -> str:
    return escape(iso.replace("T", " ").replace("+00:00", " UTC")) if iso else "n/a"


def badge(outcome: str | None, text: str | None = None) -> str:
    css = outcome or "undecided"
    return f'<span class="badge {escape(css)}">{escape(text or (outcome or "undecided").replace("_", " "))}</span>'


def link(href: str | None, text: str, *, top: bool = False) -> str:
    """A link; ``top`` ones replace the Airflow UI around the page's frame, absolute ones open a new tab."""
    if not href:
        return ""
    target = ' target="_top"' if top else ' target="_blank" rel="noopener"' if "://" in href else ""
    return f'<a href="{escape(href)}"{target}>{escape(text)}</a>'


def page(title: str, body: str, refresh_seconds: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_seconds}">' if refresh_seconds else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>{refresh}'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
        f"<body>{body}</body></html>"
    )


def error_page(title: str, message: str, hint: str, refresh_seconds: int | None = None) -> str:
    return page(
        title,
        f'<h1>{escape(title)}</h1><div class="card error"><p><strong>{escape(message)}</strong></p>'
        f'<p class="muted">{escape(hint)}</p></div>',
        refresh_seconds,
    )


def _dl(items: list[tuple[str, str | None]]) -> str:
    """A definition list of (term, HTML) pairs; a None value leaves its term out."""
    return (
        "<dl>"
        + "".join(f"<dt>{escape(term)}</dt><dd>{value}</dd>" for term, value in items if value is not None)
        + "</dl>"
    )


def _card(title: str, headline: str, items: list[tuple[str, str | None]]) -> str:
    return f'<div class="card"><h2>{escape(title)}</h2><div class="big">{headline}</div>{_dl(items)}</div>'


def _version(number: str | None, none: str = "none") -> str:
    return f"v{escape(number)}" if number not in (None, "", "none") else none


def _airflow_link(row: dict[str, Any], links: Links) -> str:
    if not (row.get("dag_id") and row.get("airflow_run_id")):
        return ""
    return link(links.airflow_run(row["dag_id"], row["airflow_run_id"]), row["airflow_run_id"], top=True)


def _rmse_pair(row: dict[str, Any]) -> str:
    return f"candidate {metric(row['candidate_rmse'])}, champion {metric(row['champion_rmse'])}"


def _dry_run_verdict(row: dict[str, Any]) -> str:
    if row["outcome"] == "dry_run" and row["verdict"]:
        return f" (the gate would say {escape(row['verdict'])})"
    return ""


def champion_card(champion: dict[str, Any] | None, links: Links) -> str:
    if champion is None:
        return _card("Champion", "none yet", [("Next", "the first candidate that passes the gate becomes one")])
    forced = None
    if champion["forced"]:
        forced = f"{escape(champion['forced_by'] or 'unknown')}: {escape(champion['force_reason'] or '')}"
    decision = badge(champion["decision"]) if champion["decision"] else ""
    return _card(
        "Champion",
        f"{escape(champion['name'])} {_version(champion['version'])}",
        [
            ("Test RMSE", metric(champion["test_rmse"])),
            ("Dataset", escape(champion["dataset"] or "n/a")),
            ("Promoted", f"{when(champion['promoted_at'])} {decision}"),
            ("By Airflow run", _airflow_link(champion, links) or "n/a"),
            ("Forced by", forced),
            ("Why", escape(champion["reasons"] or "n/a")),
            ("Replaced", _version(champion["replaced"])),
            ("MLflow", f"{link(champion['mlflow_version_url'], 'version')} {link(champion['mlflow_run_url'], 'run')}"),
        ],
    )


def _rules(rules: list[str]) -> str:
    return ", ".join(f'<span class="fail">{escape(rule)}</span>' for rule in rules) or '<span class="muted">none</span>'


def _report_link(row: dict[str, Any], links: Links, text: str = "gate report") -> str:
    if row["kind"] != "decision" or not (row.get("dag_id") and row.get("airflow_run_id")):
        return ""
    return link(links.report(row["dag_id"], row["airflow_run_id"]), text)


def latest_card(rows: list[dict[str, Any]], links: Links) -> str:
    latest = next((row for row in rows if row["kind"] == "decision"), None)
    if latest is None:
        return _card("Latest candidate", "none judged yet", [])
    return _card(
        "Latest candidate",
        badge(latest["outcome"]) + _dry_run_verdict(latest),
        [
            ("When", when(latest["when"])),
            ("Failed rules", _rules(latest["failed_rules"])),
            ("Why", escape(latest["reasons"] or "see the gate report")),
            ("Test RMSE", _rmse_pair(latest)),
            ("Airflow run", _airflow_link(latest, links) or "n/a"),
            ("Details", f"{_report_link(latest, links)} {link(latest['mlflow_run_url'], 'MLflow run')}"),
        ],
    )


def _path(points: list[tuple[float, float] | None]) -> str:
    """An SVG path through the points, broken where one is missing."""
    commands, pen_down = [], False
    for point in points:
        if point is None:
            pen_down = False
            continue
        commands.append(f"{'L' if pen_down else 'M'}{point[0]:.1f},{point[1]:.1f}")
        pen_down = True
    return " ".join(commands)


def _swatch(colour: str, dash: str) -> str:
    dashes = f' stroke-dasharray="{dash}"' if dash else ""
    return (
        f'<svg width="24" height="8"><line x1="0" x2="24" y1="4" y2="4" stroke="{colour}" stroke-width="2"{dashes}/>'
        "</svg>"
    )


def _latest(line: list[Any], low: float, high: float) -> str:
    value = next((value for value in reversed(line) if finite(value)), None)
    if value is None:
        return "n/a"
    where = " (above the chart)" if value > high else " (below the chart)" if value < low else ""
    return f"{metric(value)}{where}"


def trend_svg(points: list[dict[str, Any]]) -> str:
    """Candidate, champion and baseline test RMSE per run, oldest left; a candidate's dot has its outcome's colour."""
    if not points:
        return '<p class="muted">No scored candidate yet.</p>'
    width, height, left, right, top, bottom = 760, 260, 56, 16, 12, 40
    baselines = sorted({name for point in points for name in point["baselines"]})
    series = {
        "candidate": [point["candidate"] for point in points],
        "champion": [point["champion"] for point in points],
        **{f"{name} baseline": [point["baselines"].get(name) for point in points] for name in baselines},
    }
    # The scale fits the candidate and the champion; a baseline far off (the mean's usually is) would flatten
    # them, so it is clipped and its latest value is in the legend.
    core = [value for name in ("candidate", "champion") for value in series[name] if finite(value)]
    low, high = min(core), max(core)
    span = max(high - low, 0.05)
    near = [v for name in series if name.endswith("baseline") for v in series[name] if finite(v)]
    near = [value for value in near if low - span <= value <= high + span]
    low, high = min([low, *near]), max([high, *near])
    margin = (high - low) * 0.08 or 0.5
    low, high = low - margin, high + margin
    count = len(points)

    def x(index: int) -> float:
        return left + (index * (width - left - right) / (count - 1) if count > 1 else (width - left - right) / 2)

    def y(value: float) -> float:
        return top + (high - value) / (high - low) * (height - top - bottom)

    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="Test RMSE per candidate run">'
        f'<clipPath id="plot"><rect x="{left}" y="{top}" width="{width - left - right}" '
        f'height="{height - top - bottom}"/></clipPath>'
    ]
    for step in range(5):
        value = low + (high - low) * step / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="var(--line)"/>'
            f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11" fill="var(--muted)">'
            f"{value:.3f}</text>"
        )
    label_every = max(1, math.ceil(count / 8))
    for index, point in enumerate(points):
        if index % label_every == 0 or index == count - 1:
            parts.append(
                f'<text x="{x(index):.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11" '
                f'fill="var(--muted)">{escape((point["when"] or "")[5:10])}</text>'
            )
    for name, line in series.items():
        colour, dash = SERIES.get(name, ("var(--baseline)", BASELINE_DASH))
        path = _path([(x(i), y(value)) if finite(value) else None for i, value in enumerate(line)])
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"{dashes} clip-path="url(#plot)">')
        parts.append(f"<title>{escape(name)}</title></path>")
    for index, point in enumerate(points):
        outcome = (point["outcome"] or "").replace("_", " ")
        tip = f"{when(point['when'])}: {outcome}, candidate {metric(point['candidate'])}"
        if finite(point["champion"]):
            tip += f", champion {metric(point['champion'])}"
        parts.append(
            f'<circle cx="{x(index):.1f}" cy="{y(point["candidate"]):.1f}" r="4.5" '
            f'fill="var(--{escape(point["outcome"] or "baseline")})"><title>{tip}</title></circle>'
        )
    parts.append("</svg>")
    legend = [
        f"<span>{_swatch(*SERIES['candidate'])} candidate</span>",
        f"<span>{_swatch(*SERIES['champion'])} champion at the time</span>",
        *(
            f"<span>{_swatch('var(--baseline)', BASELINE_DASH)} {escape(name)} baseline, "
            f"latest {_latest(series[f'{name} baseline'], low, high)}</span>"
            for name in baselines
        ),
        *(badge(outcome) for outcome in ("promoted", "forced", "rejected", "dry_run")),
    ]
    return "".join(parts) + f'<div class="legend muted">{" ".join(legend)}</div>'


def _note(row: dict[str, Any]) -> str:
    if row["kind"] == "rollback":
        return (
            f"{_version(row['version'], '?')} restored (was {_version(row['replaced'], '?')}) "
            f"by {escape(row['by'] or 'unknown')}: {escape(row['reasons'] or '')}"
        )
    if row["outcome"] == "dry_run" and row["verdict"]:
        return f"dry run, the gate would say {escape(row['verdict'])}; failed: {_rules(row['failed_rules'])}"
    return _rules(row["failed_rules"])


def _cells(*cells: str, numeric: tuple[int, ...] = ()) -> str:
    return "".join(
        f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>" for i, cell in enumerate(cells)
    )


def decisions_table(rows: list[dict[str, Any]], links: Links) -> str:
    if not rows:
        return '<p class="muted">No decisions yet.</p>'
    columns = ("When", "Outcome", "Failed rules / note", "Candidate", "Champion", "Baselines", "Version", "Airflow run")
    head = "<tr>" + "".join(f"<th>{name}</th>" for name in (*columns, "Details")) + "</tr>"
    body = []
    for row in rows:
        baselines = ", ".join(f"{escape(name)} {metric(value)}" for name, value in row["baselines"].items())
        cells = _cells(
            when(row["when"]),
            badge(row["outcome"]),
            _note(row),
            metric(row["candidate_rmse"]),
            metric(row["champion_rmse"]),
            baselines or "n/a",
            _version(row["version"], ""),
            _airflow_link(row, links),
            f"{_report_link(row, links, 'report')} {link(row['mlflow_run_url'], 'MLflow')}",
            numeric=(3, 4),
        )
        body.append(f'<tr title="{escape(row["reasons"] or "")}">{cells}</tr>')
    return f"<table>{head}{''.join(body)}</table>"


def model_page(summary: dict[str, Any], links: Links) -> str:
    """The nav page: the champion, the latest candidate's outcome, the RMSE trend and the decision history."""
    rows = summary["decisions"]
    body = (
        f"<h1>Model {escape(summary['model'])}</h1>"
        f'<div class="muted">Experiment {escape(summary["experiment"])} on MLflow {escape(summary["server"])}; '
        f"read at {when(summary['read_at'])}, kept for up to {summary['cache_seconds']:.0f} s.</div>"
        f'<div class="cards">{champion_card(summary["champion"], links)}{latest_card(rows, links)}</div>'
        f"<h2>Test RMSE per candidate run</h2>{trend_svg(summary['trend'])}"
        f"<h2>Decisions, newest first (latest {len(rows)})</h2>{decisions_table(rows, links)}"
    )
    return page(f"Model {summary['model']}", body)


def _markdown(text: str) -> str:
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return f"<pre>{escape(text)}</pre>"
    return MarkdownIt("js-default").render(text)  # raw HTML in the report is escaped, not rendered


def _checks_table(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return '<p class="muted">No gate checks recorded (gate/decision.json is missing).</p>'
    rows = []
    for check in checks:
        if not check["applied"]:
            result = '<span class="na">n/a</span>'
        else:
            result = '<span class="pass">pass</span>' if check["passed"] else '<span class="fail">FAIL</span>'
        cells = _cells(
            escape(str(check["rule"])),
            result,
            metric(check["observed"]),
            metric(check["threshold"]),
            escape(str(check["detail"] or "")),
            numeric=(2, 3),
        )
        rows.append(f"<tr>{cells}</tr>")
    head = "<tr><th>Rule</th><th>Result</th><th>Observed</th><th>Threshold</th><th>Detail</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def run_page(report: dict[str, Any], links: Links) -> str:
    """One DAG run's candidate: outcome, why, every check, the slices chart and the full gate report."""
    dag_id, run_id = report["dag_id"], report["run_id"]
    title = f"Gate report: {dag_id} / {run_id}"
    airflow_run = link(links.airflow_run(dag_id, run_id), "Airflow run", top=True)
    header = f"<p>{link(links.page + '/', '← Model page')} · {airflow_run}</p><h1>{escape(title)}</h1>"
    if not report["found"]:
        return page(
            title,
            f'{header}<div class="card"><p>No candidate MLflow run is tagged with this DAG run '
            f"(<code>airflow.dag_id={escape(dag_id)}</code>, <code>airflow.run_id={escape(run_id)}</code>).</p>"
            '<p class="muted">Runs of other DAGs have none; in the retraining DAG, a run whose training did not start '
            "has none either: its task logs say why.</p></div>",
        )
    row = report["run"]
    undecided = None if row["outcome"] else f"none recorded yet; the MLflow run is {escape(row['status'] or '?')}"
    card = _card(
        "Outcome",
        badge(row["outcome"]) + _dry_run_verdict(row),
        [
            ("Decision", undecided),
            ("Started", when(row["when"])),
            ("Failed rules", _rules(row["failed_rules"])),
            ("Why", escape(row["reasons"] or "n/a")),
            ("Test RMSE", _rmse_pair(row)),
            ("Version", _version(row["version"], "none registered")),
            (
                "MLflow",
                f"{link(row['mlflow_run_url'], 'run') or escape(row['mlflow_run_id'])} "
                f"{link(report.get('mlflow_report_url'), 'gate artifacts')}",
            ),
        ],
    )
    chart = ""
    if report["slices_chart"]:
        chart = (
            f'<h2>Candidate vs champion per slice</h2><img src="{escape(links.slices(dag_id, run_id))}" '
            'alt="test RMSE per slice, candidate vs champion" style="max-width:100%">'
        )
    markdown = ""
    if report["report_markdown"]:
        markdown = f'<h2>Gate report</h2><div class="report card">{_markdown(report["report_markdown"])}</div>'
    return page(title, f"{header}{card}<h2>Checks</h2>{_checks_table(report['checks'])}{chart}{markdown}")

"""The models page as one server-rendered HTML document from `collect.model_document`'s answer: inline CSS
and inline SVG plots, nothing fetched from anywhere. Links to Airflow runs are paths on the same host
(the page is served by the api-server); links to MLflow runs need the MLflow UI's address (`mlflow_ui`),
without one the run ids are shown as text."""
from __future__ import annotations

from html import escape
from urllib.parse import quote

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px;color:#1b1f24;font-size:14px}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:20px 0 8px}
.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;margin:8px 0;background:#f6f8fa}
.warn{border-color:#d4a72c;background:#fff8c5}
.plots{display:flex;flex-wrap:wrap;gap:12px}
.plots figure{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:6px;background:#fff}
figcaption{font-size:12px;color:#57606a;text-align:center}
table{border-collapse:collapse;font-size:12px;width:100%}
th,td{border-bottom:1px solid #d8dee4;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f6f8fa;position:sticky;top:0} td.num{text-align:right;font-variant-numeric:tabular-nums}
.outcome-promoted,.outcome-rolled_back{color:#1a7f37;font-weight:600}
.outcome-rejected,.outcome-refused,.outcome-not_approved{color:#cf222e;font-weight:600}
.drift-alert{color:#cf222e;font-weight:600} .drift-warn{color:#9a6700;font-weight:600} .drift-ok{color:#1a7f37}
.badge{display:inline-block;border-radius:10px;padding:0 6px;background:#ddf4ff;color:#0969da;font-size:11px}
.muted{color:#57606a} code{font-size:11px} ul.reasons{margin:0;padding-left:14px}
"""


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _short(run_id: str | None, width: int = 8) -> str:
    return run_id if run_id is None or len(run_id) <= width + 4 else run_id[:width] + "…"


def airflow_href(airflow: dict | None) -> str | None:
    if not airflow or not airflow.get("run_id") or not airflow.get("dag_id"):
        return None
    return f"/dags/{quote(airflow['dag_id'], safe='')}/runs/{quote(airflow['run_id'], safe='')}"


def mlflow_href(mlflow_ui: str | None, run_id: str | None, experiment_id: str | None = None) -> str | None:
    if not mlflow_ui or not run_id:
        return None
    base = mlflow_ui.rstrip("/")
    if experiment_id:
        return f"{base}/#/experiments/{quote(str(experiment_id))}/runs/{quote(run_id)}"
    return f"{base}/#/runs/{quote(run_id)}"


def _link(label: str, href: str | None, title: str | None = None) -> str:
    title_attr = f' title="{escape(title)}"' if title else ""
    if href is None:
        return f"<code{title_attr}>{escape(label)}</code>"
    return f'<a href="{escape(href)}" target="_top"{title_attr}>{escape(label)}</a>'


def _run_label(run_id: str) -> str:
    """`asset_triggered__2026-11-23T06:00:00+00:00` -> `2026-11-23T06:00` (the full id is the title)."""
    _, _, when = run_id.partition("__")
    return when[:16] if when else _short(run_id, 20)


def _airflow_link(phase: str, airflow: dict | None) -> str:
    if not airflow:
        return ""
    return f"{escape(phase)}: " + _link(_run_label(airflow["run_id"]), airflow_href(airflow),
                                        f"{airflow['dag_id']} / {airflow['run_id']}")


def _mlflow_link(phase: str, mlflow_ui: str | None, run_id: str | None, experiment_id: str | None = None) -> str:
    if not run_id:
        return ""
    return f"{escape(phase)}: " + _link(_short(run_id), mlflow_href(mlflow_ui, run_id, experiment_id), run_id)


# ------------------------------------------------------------------------------------------- plots


def line_chart(title: str, labels: list[str], series: dict[str, list[float | None]], digits: int = 3,
               width: int = 440, height: int = 170) -> str:
    """An inline SVG line chart: one line per series over the labels (versions); None leaves a gap."""
    left, right, top, bottom = 52, 10, 22 + (14 if len(series) > 1 else 0), 28
    values = [v for points in series.values() for v in points if v is not None]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
           f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12" font-weight="600">{escape(title)}</text>']
    if not values or not labels:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12" fill="#57606a">'
                   "not recorded</text></svg>")
        return "".join(out)
    low, high = min(values), max(values)
    if high == low:
        low, high = low - (abs(low) * 0.05 or 0.5), high + (abs(high) * 0.05 or 0.5)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * i / (len(labels) - 1) if len(labels) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - low) / (high - low))

    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#d0d7de"/>')
    for v in (low, (low + high) / 2, high):
        out.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="10" fill="#57606a">'
                   f"{v:.{digits}f}</text>")
    step = max(1, len(labels) // 10)
    for i, label in enumerate(labels):
        if i % step == 0 or i == len(labels) - 1:
            out.append(f'<text x="{x(i):.1f}" y="{height - 10}" text-anchor="middle" font-size="10" '
                       f'fill="#57606a">{escape(label)}</text>')
    legend_x = 0
    for k, (name, points) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        segments, current = [], []
        for i, v in enumerate(points):
            if v is None:
                if current:
                    segments.append(current)
                current = []
            else:
                current.append((x(i), y(v)))
        if current:
            segments.append(current)
        for segment in segments:
            if len(segment) > 1:
                path = " ".join(f"{px:.1f},{py:.1f}" for px, py in segment)
                out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        for i, v in enumerate(points):
            if v is not None:
                out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}">'
                           f"<title>{escape(name)} {escape(labels[i])}: {v:.{digits}f}</title></circle>")
        if len(series) > 1:
            out.append(f'<text x="{left + 4 + legend_x}" y="{top + 11}" font-size="10" fill="{color}">'
                       f"■ {escape(name)}</text>")
            legend_x += 6 * len(name) + 22
    out.append("</svg>")
    return "".join(out)


def timeline_chart(promotions: list[dict], width: int = 900, height: int = 170) -> str:
    """The champion's version after each change, as a step line; rollbacks in red."""
    title = "Champion over time (promotions and rollbacks)"
    if not promotions:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="60" role="img" '
                f'aria-label="{title}"><text x="10" y="30" font-size="12" fill="#57606a">no change of champion '
                "recorded yet</text></svg>")
    left, right, top, bottom = 52, 50, 22, 30
    versions = [int(p["version"]) for p in promotions] + [int(p["previous_version"]) for p in promotions
                                                          if p.get("previous_version")]
    low, high = min(versions), max(versions)
    if low == high:
        low, high = low - 1, high + 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * i / (len(promotions) - 1) if len(promotions) > 1 else plot_w / 2)

    def y(v: int) -> float:
        return top + plot_h * (1 - (v - low) / (high - low))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{title}"><title>{title}</title>',
           f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12" font-weight="600">{title}</text>',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#d0d7de"/>']
    for v in sorted({low, high, *[int(p["version"]) for p in promotions]}):
        out.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="10" fill="#57606a">'
                   f"v{v}</text>")
    previous = None
    for i, p in enumerate(promotions):
        px, py = x(i), y(int(p["version"]))
        rollback = p["change"] == "rolled_back"
        color = "#cf222e" if rollback else "#1a7f37"
        if previous is not None:
            out.append(f'<polyline points="{previous[0]:.1f},{previous[1]:.1f} {px:.1f},{previous[1]:.1f} '
                       f'{px:.1f},{py:.1f}" fill="none" stroke="#57606a" stroke-width="1.2"/>')
        out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{color}"><title>'
                   f'{escape(p["change"])} to v{escape(p["version"])} at {escape(p["changed_at"] or "")}'
                   f"</title></circle>")
        out.append(f'<text x="{px:.1f}" y="{height - 12}" text-anchor="middle" font-size="10" fill="{color}">'
                   f'{"rollback" if rollback else "promote"} v{escape(p["version"])}</text>')
        previous = (px, py)
    out.append("</svg>")
    return "".join(out)


def trend_plots(doc: dict) -> str:
    versions = doc["versions"]
    labels = [f"v{v['version']}" for v in versions]
    evaluation = [v["evaluation"] or {} for v in versions]
    reasons = sorted({r for v in versions for r in v["dataset"]["quarantine_share_by_reason"]})
    quarantine = {r: [v["dataset"]["quarantine_share_by_reason"].get(r) for v in versions] for r in reasons}
    drifts = [(v["dataset"].get("drift") or {}).get("psi", {}) for v in versions]
    drift = {f: [d.get(f) for d in drifts] for f in sorted({f for d in drifts for f in d})}
    plots = [
        ("Replay ROC AUC", line_chart("Replay ROC AUC", labels, {"roc_auc": [e.get("roc_auc") for e in evaluation]})),
        ("Replay log loss", line_chart("Replay log loss", labels,
                                       {"log_loss": [e.get("log_loss") for e in evaluation]})),
        ("Serving latency p95 (ms)", line_chart("Latency p95 (ms)", labels,
                                                {"p95": [e.get("latency_p95_ms") for e in evaluation]}, digits=1)),
        ("Dataset rows", line_chart("Dataset rows", labels,
                                    {"rows": [v["dataset"]["rows"] for v in versions]}, digits=0)),
        ("Quarantine share by reason", line_chart("Quarantine share by reason", labels, quarantine or {}, digits=4)),
        ("Dataset drift: PSI against the previous dataset",
         line_chart("Dataset drift (PSI vs the previous dataset)", labels, drift or {}, digits=3, width=900)),
    ]
    return '<div class="plots">' + "".join(f"<figure>{svg}<figcaption>{escape(caption)} by version</figcaption>"
                                           "</figure>" for caption, svg in plots) + "</div>"


# ------------------------------------------------------------------------------------------- tables


def _reasons(reasons) -> str:
    if not reasons:
        return ""
    return '<ul class="reasons">' + "".join(f"<li>{escape(str(r))}</li>" for r in reasons) + "</ul>"


def drift_cell(drift: dict | None) -> str:
    """The dataset's drift against the previous version, as logged (status, the inputs over their limit, max PSI)."""
    if not drift:
        return "<span class='muted'>not recorded</span>"
    status = drift["status"]
    if status == "no_previous":
        return "<span class='muted'>first version</span>"
    if status == "error":
        return f"<span class='drift-alert' title='{escape(drift.get('error') or '')}'>not compared (error)</span>"
    over = "".join(f"<li>{escape(f)} {_fmt(drift['psi'].get(f), 3)}</li>" for f in drift["over_threshold"])
    title = "; ".join(f"{f} {v:.3f}" for f, v in drift["psi"].items())
    return (f"<span class='drift-{escape(status)}' title='{escape(title)}'>{escape(status)}</span>"
            f" <span class='muted'>vs {_fmt(drift['previous_version'])}, max PSI {_fmt(drift['max_psi'], 3)}</span>"
            + (f"<ul class='reasons'>{over}</ul>" if over else ""))


def _version_row(v: dict, mlflow_ui: str | None) -> str:
    dataset, training, evaluation, gate = v["dataset"], v["training"], v["evaluation"] or {}, v["gate"] or {}
    aliases = "".join(f' <span class="badge">{escape(a)}</span>' for a in v["aliases"])
    promotion_airflow = gate.get("airflow")
    mlflow = [_mlflow_link("dataset", mlflow_ui, dataset["mlflow_run_id"], dataset.get("mlflow_experiment_id")),
              _mlflow_link("training", mlflow_ui, training["mlflow_run_id"]),
              _mlflow_link("evaluation", mlflow_ui, evaluation.get("run_id"), evaluation.get("mlflow_experiment_id"))]
    airflow = [_airflow_link("dataset", dataset["airflow"]), _airflow_link("training", training["airflow"]),
               _airflow_link("registration", v["registration"]["airflow"]),
               _airflow_link("evaluation", evaluation.get("airflow")), _airflow_link("promotion", promotion_airflow)]
    outcome = gate.get("outcome")
    cells = [
        f"<b>v{escape(v['version'])}</b>{aliases}<br><span class='muted'>{_fmt(v['promotion_status'])}</span>",
        f"{_fmt(dataset['version'])}<br><code>{_fmt(dataset['revision'])}</code>",
        drift_cell(dataset.get("drift")),
        f"<code title='{escape(training['training_run_id'] or '')}'>{_fmt(training['training_run_id'])}</code>",
        f"<td class='num'>{_fmt(training['val_auc'])}</td>",
        f"<td class='num'>{_fmt(evaluation.get('roc_auc'))}</td>",
        f"<td class='num'>{_fmt(evaluation.get('share_of_oracle'), 3)}</td>",
        f"<td class='num'>{_fmt(evaluation.get('log_loss'))}</td>",
        f"<td class='num'>{_fmt(evaluation.get('latency_p95_ms'), 1)}</td>",
        (f"<span class='outcome-{escape(outcome)}'>{escape(outcome)}</span>{_reasons(gate.get('reasons'))}"
         if outcome else "<span class='muted'>not gated</span>"),
        _fmt(gate.get("approver")) if gate.get("approver") else "–",
        "<br>".join(x for x in mlflow if x),
        "<br>".join(x for x in airflow if x),
    ]
    return "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>"


def versions_table(doc: dict, mlflow_ui: str | None) -> str:
    head = ("version", "dataset (revision)", "dataset drift", "training run", "val AUC", "replay ROC AUC", "share of oracle",
            "log loss", "latency p95 ms", "gate", "approver", "MLflow runs", "Airflow runs")
    rows = "".join(_version_row(v, mlflow_ui) for v in reversed(doc["versions"]))
    return ("<table id='versions'><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + (rows or f"<tr><td colspan='{len(head)}'>no version registered yet</td></tr>") + "</tbody></table>")


def timeline_table(doc: dict) -> str:
    head = ("changed at", "change", "from", "to", "decision", "approver", "reasons", "Airflow run")
    rows = []
    for p in reversed(doc["promotions"]):
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
            _fmt(p["changed_at"]), f"<span class='outcome-{escape(p['change'])}'>{escape(p['change'])}</span>",
            f"v{escape(p['previous_version'])}" if p.get("previous_version") else "–", f"v{escape(p['version'])}",
            f"#{p['decision_id']}", _fmt(p.get("approver")) if p.get("approver") else "–", _reasons(p.get("reasons")),
            _airflow_link("promotion", p.get("airflow")))) + "</tr>")
    return ("<table id='timeline'><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + ("".join(rows) or f"<tr><td colspan='{len(head)}'>no change of champion recorded</td></tr>")
            + "</tbody></table>")


def champion_card(doc: dict) -> str:
    champion = doc["champion"]
    if champion is None:
        return "<div class='card' id='champion'><b>No champion yet</b>: no version has been promoted.</div>"
    how = {"promoted": "promoted", "rolled_back": "champion again by a rollback"}.get(champion.get("change") or "",
                                                                                      "champion")
    since = champion.get("since")
    decision = f", decision #{champion['decision_id']}" if champion.get("decision_id") else ""
    uri = champion.get("deployment", {}) or {}
    deployed = f" Serving loads <code>{escape(uri['model_uri'])}</code>." if uri.get("model_uri") else ""
    return (f"<div class='card' id='champion'><b>Champion: version {escape(champion['version'])}</b> "
            f"since {escape(since) if since else '(time not recorded)'} ({escape(how)}{decision}).{deployed}</div>")


def page(doc: dict, mlflow_ui: str | None = None, api_prefix: str = "") -> str:
    warnings = "".join(f"<div class='card warn'>{escape(w)}</div>" for w in doc.get("warnings", []))
    api = f"{api_prefix}/api/models/{quote(doc['model'])}"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(doc['model'])}: models</title><style>{CSS}</style></head><body>"
        f"<h1>Registered model <code>{escape(doc['model'])}</code></h1>"
        f"<div class='muted'>{len(doc['versions'])} versions · from the MLflow registry and the "
        f"<code>ml</code> schema{' read at ' + escape(doc['read_at']) if doc.get('read_at') else ''}"
        f" (<a href='?fresh=1'>read again</a>) · the same as JSON: <a href='{escape(api)}'>{escape(api)}</a></div>"
        f"{warnings}{champion_card(doc)}"
        "<h2>Trends across versions</h2>" + trend_plots(doc)
        + "<h2>Promotion timeline</h2>" + timeline_chart(doc["promotions"]) + timeline_table(doc)
        + "<h2>Versions</h2>" + versions_table(doc, mlflow_ui) + "</body></html>")

"""The evaluation report: metrics per model and per slice (a plain dict, JSON-ready), its
Markdown rendering and its plots. No MLflow or Airflow here.

Models are named by role: `candidate` (the version under evaluation), `champion` (the
baseline version, absent for the first model), `keep_rate` (the per-recipe floor) and
`oracle` (the generator's true probabilities: the ceiling, only on generated data).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from include.evaluation import metrics

SLICES = ("workflow_type", "mode", "household_size", "policy_version_id")
MIN_SLICE_EXAMPLES = 1    # every slice is reported, with its counts; the gate decides what is enough
HEADLINE = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier", "ece", "plan_ranking")
ROLES = ("candidate", "champion", "keep_rate", "oracle")


def _clean(value):
    """JSON has no NaN: a metric that cannot be computed (one class only) is null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def slice_values(rows, examples: dict) -> dict[str, list[str]]:
    """Per slice dimension, the value of each example (from its row)."""
    positions = np.asarray(examples["row"])
    columns = {
        "workflow_type": rows["workflow_type"].astype(str).to_numpy(),
        "mode": rows["mode"].astype(str).to_numpy(),
        "household_size": np.asarray([metrics.size_bucket(s) for s in rows["household_size"].tolist()]),
        "policy_version_id": rows["policy_version_id"].astype(str).to_numpy(),
    }
    return {name: column[positions].tolist() if len(positions) else [] for name, column in columns.items()}


def build_report(*, rows, examples: dict, scores: dict[str, list[float]], serving: dict[str, dict],
                 versions: dict[str, str | None], window: dict, replay: dict) -> dict:
    """Every number of the evaluation. `scores` maps a role to probabilities in example order."""
    labels = np.asarray(examples["label"])
    plan_ids = examples["plan_id"]
    if len(labels) == 0:
        raise ValueError("no replayed examples to evaluate")
    models = {role: {**metrics.quality_metrics(labels, p, plan_ids), **serving.get(role, {})}
              for role, p in scores.items()}
    per_slice = {}
    values = slice_values(rows, examples)
    row_index = np.asarray(examples["row"])
    for dimension in SLICES:
        column = np.asarray(values[dimension])
        per_slice[dimension] = {}
        for value in sorted(set(values[dimension])):
            mask = column == value
            if mask.sum() < MIN_SLICE_EXAMPLES:
                continue
            entry = {"rows": int(len(set(row_index[mask].tolist()))), "examples": int(mask.sum()),
                     "observed_keep_rate": float(labels[mask].mean())}
            for role, p in scores.items():
                subset = np.asarray(p)[mask]
                entry[role] = metrics.quality_metrics(labels[mask], subset,
                                                      [plan_ids[i] for i in np.flatnonzero(mask)])
            per_slice[dimension][value] = entry
    comparison = {}
    if "champion" in models:
        comparison = {f"{k}_delta": models["candidate"][k] - models["champion"][k] for k in HEADLINE}
    if "oracle" in models and models["oracle"]["roc_auc"] and not math.isnan(models["oracle"]["roc_auc"]):
        comparison["auc_share_of_oracle"] = models["candidate"]["roc_auc"] / models["oracle"]["roc_auc"]
    return _clean({
        "model_version": versions["candidate"], "baseline_version": versions.get("champion"),
        "window": window, "replay": replay,
        "counts": {"rows": int(len(rows)), "examples": int(len(labels)), "keep_rate": float(labels.mean()),
                   "plans": int(len(set(plan_ids)))},
        "models": models, "comparison": comparison, "slices": per_slice,
        "reliability": {role: metrics.reliability_bins(labels, p) for role, p in scores.items()},
    })


def headline_tags(report: dict) -> dict[str, str]:
    """What goes on the model version: the candidate's headline metrics and serving latency."""
    candidate = report["models"]["candidate"]
    tags = {f"eval_{k}": f"{candidate[k]:.6f}" for k in HEADLINE if candidate.get(k) is not None}
    for key in ("latency_p95_ms", "throughput_examples_per_s"):
        if candidate.get(key) is not None:
            tags[f"eval_{key}"] = f"{candidate[key]:.3f}"
    tags["eval_examples"] = str(report["counts"]["examples"])
    tags["eval_replay_window"] = report["window"]["version"]
    tags["eval_baseline_version"] = str(report["baseline_version"] or "none")
    return tags


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_markdown(report: dict, run_id: str | None = None) -> str:
    roles = [r for r in ROLES if r in report["models"]]
    window = report["window"]
    lines = [f"# Offline evaluation of planner_acceptance version {report['model_version']}", "",
             f"- baseline (champion): {report['baseline_version'] or 'none (first model)'}",
             f"- replay window: [{window['start'][:10]}, {window['end'][:10]}) "
             f"({report['counts']['rows']} plans, {report['counts']['examples']} proposed meals, "
             f"keep rate {report['counts']['keep_rate']:.3f})",
             f"- quarantined events in the window: {report['replay'].get('quarantined', 0)}"]
    if run_id:
        lines.append(f"- MLflow run: {run_id}")
    lines += ["", "## Quality", "", "| metric | " + " | ".join(roles) + " |", "|---" * (len(roles) + 1) + "|"]
    for key in HEADLINE:
        lines.append(f"| {key} | " + " | ".join(_fmt(report["models"][r].get(key)) for r in roles) + " |")
    if report["comparison"]:
        lines += ["", "## Candidate against champion", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in report["comparison"].items()]
    lines += ["", "## Serving", "", "| model | p50 ms | p95 ms | p99 ms | examples/s |", "|---|---|---|---|---|"]
    for role in ("candidate", "champion"):
        m = report["models"].get(role)
        if m and "latency_p50_ms" in m:
            lines.append(f"| {role} | {_fmt(m['latency_p50_ms'], 1)} | {_fmt(m['latency_p95_ms'], 1)} | "
                         f"{_fmt(m['latency_p99_ms'], 1)} | {_fmt(m['throughput_examples_per_s'], 0)} |")
    lines += ["", "## Slices (ROC AUC; rows = plans)", ""]
    slice_roles = [r for r in ("candidate", "champion", "keep_rate") if r in report["models"]]
    for dimension, entries in report["slices"].items():
        lines += [f"### {dimension}", "", "| value | rows | examples | keep rate | " + " | ".join(slice_roles) + " |",
                  "|---" * (4 + len(slice_roles)) + "|"]
        for value, entry in entries.items():
            lines.append(f"| {value} | {entry['rows']} | {entry['examples']} | {entry['observed_keep_rate']:.3f} | "
                         + " | ".join(_fmt(entry[r]["roc_auc"]) for r in slice_roles) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_plots(report: dict, labels, scores: dict[str, list[float]], directory: Path) -> list[Path]:
    """ROC curves, the reliability diagram and per-slice bars, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    roles = [r for r in ROLES if r in scores]
    paths = []

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for role in roles:
        fpr, tpr = metrics.roc_curve(labels, scores[role])
        ax.plot(fpr, tpr, label=f"{role} (AUC {_fmt(report['models'][role]['roc_auc'], 3)})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC: replayed proposed meals")
    ax.legend(loc="lower right")
    paths.append(directory / "roc_curves.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for role in roles:
        bins = report["reliability"][role]
        ax.plot([b["mean_probability"] for b in bins], [b["keep_rate"] for b in bins], marker="o",
                label=f"{role} (ECE {_fmt(report['models'][role]['ece'], 3)})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    ax.set(xlabel="predicted keep probability", ylabel="observed keep rate", title="Reliability diagram",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    paths.append(directory / "reliability.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    slice_roles = [r for r in ("candidate", "champion", "keep_rate") if r in scores]
    dims = list(report["slices"])
    fig, axes = plt.subplots(len(dims), 1, figsize=(8, 2.6 * len(dims)), squeeze=False)
    for ax, dimension in zip(axes[:, 0], dims):
        entries = report["slices"][dimension]
        values = list(entries)
        x = np.arange(len(values))
        width = 0.8 / max(len(slice_roles), 1)
        for i, role in enumerate(slice_roles):
            heights = [entries[v][role]["roc_auc"] or 0.0 for v in values]
            ax.bar(x + i * width, heights, width, label=role)
        ax.set_xticks(x + width * (len(slice_roles) - 1) / 2,
                      [f"{v}\n(n={entries[v]['rows']})" for v in values], fontsize=8)
        ax.set(ylabel="ROC AUC", ylim=(0.4, 1.0), title=f"by {dimension}")
        ax.axhline(0.5, color="grey", linestyle=":")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    paths.append(directory / "slices_roc_auc.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths

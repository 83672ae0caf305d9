"""What the `planner_offline_eval` tasks do, as plain functions (no Airflow import).

plan -> replay set (+ leakage check) -> score and report (one MLflow run) -> tag the version.
Nothing is tagged until the report is logged, so a run that fails anywhere leaves the version's
tags as they were.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from include.core import names, storage
from include.evaluation.replay import EvaluationError, TrainingWindow

log = logging.getLogger(__name__)

NO_BASELINE = ("", "none", "null")
REPORT_JSON = names.EVAL_REPORT_FILE
REPORT_MD = names.EVAL_REPORT_MD_FILE


def client():
    import mlflow

    from include.core.tracking import configure_mlflow

    configure_mlflow()
    return mlflow.MlflowClient()


def plan(model_version: str | None, baseline: str | None, replay_start: str | None = None,
         replay_end: str | None = None) -> dict:
    """Which versions, on which window. A missing or unusable version is an EvaluationError."""
    from include.evaluation.replay import replay_window
    from include.evaluation.scoring import resolve_version

    registry = client()
    reference = model_version or names.CHALLENGER_ALIAS
    candidate = resolve_version(registry, reference)
    if candidate is None:
        raise EvaluationError(f"{names.REGISTERED_MODEL_NAME} has no version with alias {reference!r}: "
                              "register a model first, or give a version number")
    champion = None
    if str(baseline or "").strip().lower() not in NO_BASELINE:
        champion = resolve_version(registry, baseline)
        if champion is None:
            log.info("no version holds alias %r: the candidate is evaluated on its own (first model)", baseline)
        elif champion.version == candidate.version:
            log.info("version %s is itself the %s: no separate baseline", candidate.version, baseline)
            champion = None
    training = TrainingWindow.from_tags(candidate.version, candidate.tags)
    window = replay_window(training, replay_start, replay_end)
    trainings = [training] + ([TrainingWindow.from_tags(champion.version, champion.tags)] if champion else [])
    return {"candidate": {"version": candidate.version, "uri": candidate.uri},
            "champion": {"version": champion.version, "uri": champion.uri} if champion else None,
            "baseline_reference": baseline, "window": window.as_dict(), "window_version": window.version,
            "trainings": [_training_dict(t) for t in trainings]}


def _training_dict(training: TrainingWindow) -> dict:
    return {"model_version": training.model_version, "dataset_version": training.dataset_version,
            "dataset_uri": training.dataset_uri, "cutoff": training.cutoff.isoformat(),
            "dataset_digest": training.dataset_digest}


def _training(entry: dict) -> TrainingWindow:
    from datetime import datetime

    return TrainingWindow(entry["model_version"], entry["dataset_version"], entry["dataset_uri"],
                          datetime.fromisoformat(entry["cutoff"]), entry.get("dataset_digest", ""))


def _window(evaluation_plan: dict):
    from datetime import datetime

    from include.dataset.window import Window

    w = evaluation_plan["window"]
    return Window(evaluation_plan["window_version"], datetime.fromisoformat(w["start"]), datetime.fromisoformat(w["end"]))


def build_and_check_replay(dsn: str, evaluation_plan: dict, parts: int = 2) -> dict:
    """Build the replay rows, then refuse them if they touch any model's training data."""
    from include.evaluation.replay import build_replay_set, leakage_problems, plan_ids

    window = _window(evaluation_plan)
    replay = build_replay_set(dsn, window, parts=parts)
    if replay["rows"] == 0:
        raise EvaluationError(f"the replay window [{window.start.date()}, {window.end.date()}) has no accepted "
                              f"plans ({replay['quarantined']} events quarantined): nothing to evaluate")
    replayed = plan_ids(replay["uri"])
    trainings = [_training(t) for t in evaluation_plan["trainings"]]
    changed = [problem for t in trainings if t.dataset_digest
               for problem in storage.verify_revision(t.dataset_uri, t.dataset_digest)]
    if changed:
        raise EvaluationError("the training data of a compared version is not the data it was trained on, so the "
                              "leakage check cannot be made:\n- " + "\n- ".join(changed))
    problems = leakage_problems(window, replayed, [(t, plan_ids(t.dataset_uri, before=t.cutoff)) for t in trainings])
    if problems:
        raise EvaluationError("leakage: the replay set is not held out:\n- " + "\n- ".join(problems))
    return replay


def score_all(dsn: str, evaluation_plan: dict, replay: dict, max_rows: int | None, batch_size: int = 256):
    """(rows, examples, scores by role, serving figures by role): every scorer on identical examples."""
    from include.evaluation import metrics
    from include.evaluation.replay import load_replay_rows
    from include.evaluation.scoring import (
        ModelRef,
        examples,
        keep_rate_scores,
        load_model,
        oracle_scores,
        score_model,
        single_plan_latencies,
    )

    roles = {"candidate": evaluation_plan["candidate"], "champion": evaluation_plan["champion"]}
    rows = load_replay_rows(replay["uri"], max_rows)
    found = examples(rows)
    scores, serving = {}, {}
    # the models' downloads go to a scratch directory removed after scoring: a worker's disk does not
    # fill up with a copy of every version it ever evaluated
    with tempfile.TemporaryDirectory(prefix="planner-eval-models-") as scratch:
        models = {}
        for role, ref in roles.items():
            if ref:
                (Path(scratch) / role).mkdir()  # MLflow downloads into an existing directory
                models[role] = load_model(ModelRef(ref["version"], ref["uri"], {}, ()), dst_path=str(Path(scratch) / role))
        for role, model in models.items():
            probabilities, throughput = score_model(model, rows, batch_size)
            if len(probabilities) != len(found["label"]):
                raise EvaluationError(f"{role} returned {len(probabilities)} scores for {len(found['label'])} meals")
            scores[role] = probabilities
            latency = metrics.percentiles_ms(single_plan_latencies(model, rows))
            serving[role] = {f"latency_{k}": v for k, v in latency.items()} | {"throughput_examples_per_s": throughput}
        del models
    candidate_training = _training(evaluation_plan["trainings"][0])
    scores["keep_rate"] = keep_rate_scores(candidate_training.dataset_uri, candidate_training.cutoff,
                                           found["recipe_id"])
    oracle = oracle_scores(dsn, found["plan_id"], found["recipe_id"])
    if oracle is not None:
        scores["oracle"] = oracle
    return rows, found, scores, serving


def evaluate(dsn: str, evaluation_plan: dict, replay: dict, max_rows: int | None = None,
             airflow_run_id: str | None = None) -> dict:
    """Score, build the report and log it (metrics, JSON, Markdown, plots) as one MLflow run."""
    import mlflow

    from include.core.tracking import ensure_experiment
    from include.evaluation.report import build_report, render_markdown, write_plots

    rows, found, scores, serving = score_all(dsn, evaluation_plan, replay, max_rows)
    champion = evaluation_plan["champion"]
    report = build_report(rows=rows, examples=found, scores=scores, serving=serving,
                          versions={"candidate": evaluation_plan["candidate"]["version"],
                                    "champion": champion["version"] if champion else None},
                          window=evaluation_plan["window"] | {"version": evaluation_plan["window_version"]},
                          replay={k: replay[k] for k in ("uri", "rows", "quarantined")} | {"max_rows": max_rows})
    experiment_id = ensure_experiment(names.EXPERIMENT_OFFLINE_EVAL)
    candidate = evaluation_plan["candidate"]["version"]
    run_name = f"v{candidate}-vs-{champion['version'] if champion else 'none'}-{evaluation_plan['window_version']}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        report["evaluation_run_id"] = run.info.run_id
        mlflow.set_tags({"model_name": names.REGISTERED_MODEL_NAME, "model_version": candidate,
                         "baseline_version": champion["version"] if champion else "none",
                         "replay_window": evaluation_plan["window_version"], "replay_uri": replay["uri"],
                         "airflow_run_id": airflow_run_id or ""})
        mlflow.log_params({"replay_start": evaluation_plan["window"]["start"],
                           "replay_end": evaluation_plan["window"]["end"], "max_rows": max_rows or 0,
                           "baseline_reference": evaluation_plan.get("baseline_reference") or "none"})
        flat = {f"{role}.{key}": value for role, values in report["models"].items()
                for key, value in values.items() if isinstance(value, (int, float)) and value is not None}
        flat |= {f"comparison.{k}": v for k, v in report["comparison"].items() if v is not None}
        flat |= {f"counts.{k}": v for k, v in report["counts"].items()}
        mlflow.log_metrics(flat)
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            (directory / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
            (directory / REPORT_MD).write_text(render_markdown(report, run.info.run_id))
            write_plots(report, found["label"], scores, directory / "plots")
            mlflow.log_artifacts(str(directory))
    log.info("evaluation run %s: candidate AUC %s", run.info.run_id, report["models"]["candidate"]["roc_auc"])
    return report


def tag_version(report: dict) -> dict[str, str]:
    """Point the version's evaluation tags at this report (a newer evaluation re-points them)."""
    from include.evaluation.report import headline_tags

    tags = headline_tags(report) | {"evaluation_run_id": report["evaluation_run_id"]}
    registry = client()
    current = registry.get_model_version(names.REGISTERED_MODEL_NAME, report["model_version"]).tags
    for key in current:
        if key.startswith("eval_") and key not in tags:  # an older report's metric this one does not have
            registry.delete_model_version_tag(names.REGISTERED_MODEL_NAME, report["model_version"], key)
    for key, value in tags.items():
        registry.set_model_version_tag(names.REGISTERED_MODEL_NAME, report["model_version"], key, value)
    return tags


def read_report(evaluation_run_id: str) -> dict:
    """The JSON report of an evaluation run (what promotion gates on)."""
    import mlflow.artifacts

    from include.core.tracking import configure_mlflow

    configure_mlflow()
    return json.loads(mlflow.artifacts.load_text(f"runs:/{evaluation_run_id}/{REPORT_JSON}"))

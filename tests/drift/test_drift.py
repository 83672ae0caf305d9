"""Drift (include/drift/): PSI from binned counts, profiles read batch-wise from published revisions (any batch size
gives the same counts), the report against thresholds.json, and the MLflow record the models page reads."""
from __future__ import annotations

import json
import math
import random

import pytest

from include.core import names, storage
from include.drift import compare, profile, psi


def _meals(rng: random.Random, n: int) -> list[dict]:
    return [{"day": d, "recipe_id": f"R{rng.randint(1, 30)}", "servings": 2} for d in range(n)]


def _rows(seed: int, n: int, pantry_first: float, keep: float) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        proposed = _meals(rng, rng.randint(3, 7))
        accepted = [m if rng.random() < keep else {**m, "recipe_id": "OTHER"} for m in proposed]
        rows.append({
            "plan_id": f"{seed:02d}{i:06d}", "household_size": rng.choice([1, 2, 2, 3, 4, 5, 6, 7]),
            "workflow_type": "pantry-first" if rng.random() < pantry_first else rng.choice(["plan-first", "meal-first"]),
            "mode": rng.choice(["autopilot", "manual"]), "budget": round(rng.uniform(20, 520), 2),
            "n_pantry_items": rng.randint(4, 16), "proposed_plan": json.dumps({"meals": proposed}),
            "target": json.dumps({"accepted_plan": {"meals": accepted}, "user_edits": []})})
    return rows


def publish_version(root, version: str, rows: list[dict], reasons: dict[str, int]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    uri = storage.dataset_uri(version, str(root))
    staging = storage.new_staging_dir(uri)
    pq.write_table(pa.Table.from_pylist(rows), staging / names.DATASET_TRAINING_FILE, row_group_size=97)
    quarantine = [{"event_id": f"e{i}", "reject_reason": reason} for reason, n in reasons.items() for i in range(n)]
    schema = pa.schema([("event_id", pa.string()), ("reject_reason", pa.string())])
    pq.write_table(pa.Table.from_pylist(quarantine, schema=schema), staging / names.DATASET_QUARANTINE_FILE)
    storage.publish_revision(staging, uri)
    return uri


@pytest.fixture()
def versions(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_STORAGE_ROOT", str(tmp_path / "storage"))
    root = tmp_path / "storage"
    return {
        "2026-11-16": publish_version(root, "2026-11-16", _rows(1, 600, 0.1, 0.6), {"unknown_recipe_id": 6}),
        "2026-11-23": publish_version(root, "2026-11-23", _rows(2, 640, 0.1, 0.6), {"unknown_recipe_id": 7}),
        # a week whose producer changed: far more pantry-first plans, fewer kept meals, a new reject reason
        "2026-11-30": publish_version(root, "2026-11-30", _rows(3, 620, 0.6, 0.3),
                                      {"unknown_recipe_id": 6, "invalid_meals": 60}),
    }


# ------------------------------------------------------------------------------------------- PSI


def test_psi_of_binned_counts():
    assert psi.psi({"a": 10, "b": 30}, {"a": 20, "b": 60}) == pytest.approx(0.0)  # same shares, other totals
    expected = (0.5 - 0.25) * math.log(0.5 / 0.25) + (0.5 - 0.75) * math.log(0.5 / 0.75)
    assert psi.psi({"a": 25, "b": 75}, {"a": 50, "b": 50}) == pytest.approx(expected)
    # a bin empty on one side is floored, not infinite, and the union of bins is compared
    value = psi.psi({"a": 100}, {"a": 50, "new": 50})
    assert math.isfinite(value) and value > 1
    assert psi.shares({"a": 0, "b": 4}, floor=0) == {"a": 0.0, "b": 1.0}
    assert sum(psi.shares({"a": 0, "b": 4}).values()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        psi.psi({"a": 0}, {"a": 1})


def test_bins():
    edges, labels = profile.NUMERIC_BINS["budget_bucket"][1:]
    assert [profile.numeric_bin(v, edges, labels) for v in (10, 50, 99.9, 399, 400, 9000, None)] == [
        "<50", "50-100", "50-100", "300-400", "400+", "400+", "(null)"]
    assert [profile.keep_bin(v) for v in (0, 0.2, 0.5, 0.99, 1.0, None)] == [
        "0-0.2", "0.2-0.4", "0.4-0.6", "0.8-1", "0.8-1", "(null)"]
    plan = json.dumps({"meals": [{"day": 0, "recipe_id": "A"}, {"day": 1, "recipe_id": "B"}]})
    target = json.dumps({"accepted_plan": {"meals": [{"day": 0, "recipe_id": "a"}, {"day": 1, "recipe_id": "C"}]}})
    assert profile.keep_share(plan, target) == 0.5  # case-insensitive recipe ids, same day, as the labels


def test_thresholds_cover_every_feature():
    thresholds = compare.load_thresholds()
    assert set(thresholds["features"]) == set(profile.FEATURES)
    for feature in profile.FEATURES:
        limits = compare.limits_for(thresholds, feature)
        assert 0 < limits["warn"] <= limits["alert"] and limits["why"]


# ------------------------------------------------------------------------------------------- profiles and reports


def test_profile_reads_batch_wise_and_counts_every_row(versions, monkeypatch):
    import pyarrow.parquet as pq

    uri = versions["2026-11-30"]
    whole = profile.profile(uri)
    monkeypatch.setattr(profile, "BATCH_ROWS", 50)  # 13 batches: the same counts
    assert profile.profile(uri)["features"] == whole["features"]
    fs, path = storage.published(uri)
    table = pq.read_table(f"{path}/{names.DATASET_TRAINING_FILE}")
    assert whole["rows"] == table.num_rows == 620 and whole["quarantined"] == 66
    assert whole["revision"].startswith("rev-") and whole["version"] == "2026-11-30" and whole["missing"] == []
    for feature in profile.FEATURES:
        assert sum(whole["features"][feature].values()) == 620 + (66 if feature == "quarantine_reason" else 0)
    assert whole["features"]["workflow_type"]["pantry-first"] == sum(
        1 for v in table.column("workflow_type").to_pylist() if v == "pantry-first")
    assert whole["features"]["household_size"]["6+"] == sum(1 for v in table.column("household_size").to_pylist()
                                                             if v >= 6)
    assert whole["features"]["quarantine_reason"] == {"(row)": 620, "invalid_meals": 60, "unknown_recipe_id": 6}
    # a revision's own location reads the same content
    revision_uri = storage.join(uri, whole["revision"])
    again = profile.profile(revision_uri)
    assert (again["features"], again["revision"], again["digest"]) == (whole["features"], whole["revision"],
                                                                       whole["digest"])


def test_compare_versions_flags_what_moved(versions):
    quiet = compare.compare_versions(versions["2026-11-16"], versions["2026-11-23"])
    assert quiet["status"] == "ok" and quiet["over_threshold"] == [], {
        k: v["psi"] for k, v in quiet["features"].items()}
    assert set(quiet["features"]) == set(profile.FEATURES)
    assert (quiet["previous"]["version"], quiet["current"]["version"]) == ("2026-11-16", "2026-11-23")

    loud = compare.compare_versions(versions["2026-11-23"], versions["2026-11-30"])
    assert loud["status"] == "alert"
    assert {"workflow_type", "keep_rate", "quarantine_reason"} <= set(loud["over_threshold"])
    assert "household_size" not in loud["over_threshold"] and "mode" not in loud["over_threshold"]
    entry = loud["features"]["workflow_type"]
    assert entry["psi"] >= entry["alert"] == 0.25 and entry["status"] == "alert"
    assert entry["bins"]["pantry-first"]["current"] > 0.5 > entry["bins"]["pantry-first"]["previous"]
    assert loud["max_psi"] == max(f["psi"] for f in loud["features"].values())
    # the limits come from the thresholds data: raised high enough, nothing is over them
    lax = {"default": {"warn": 50, "alert": 100}, "features": {}}
    assert compare.compare_versions(versions["2026-11-23"], versions["2026-11-30"], lax)["over_threshold"] == []


def test_previous_version_is_the_one_published_before(versions, tmp_path):
    from include.drift.tracking import previous_version_uri

    assert previous_version_uri(versions["2026-11-30"]) == versions["2026-11-23"]
    revision = profile.profile(versions["2026-11-23"])["revision"]
    assert previous_version_uri(storage.join(versions["2026-11-23"], revision)) == versions["2026-11-16"]
    assert previous_version_uri(versions["2026-11-16"]) is None


# ------------------------------------------------------------------------------------------- MLflow


def _dataset_run(client, uri: str) -> str:
    from include.core.tracking import ensure_experiment

    content = storage.published_content(uri)
    run = client.create_run(ensure_experiment(names.EXPERIMENT_DATASET))
    client.set_tag(run.info.run_id, "dataset_version", storage.rsplit_name(uri))
    client.set_tag(run.info.run_id, "dataset_digest", content["digest"])
    return run.info.run_id


def test_log_drift_records_the_report_in_the_dataset_run_once(versions, fresh_mlflow, monkeypatch):
    import mlflow

    from include.core.tracking import configure_mlflow
    from include.drift.tracking import REPORT_FILE, log_drift

    monkeypatch.delenv("PLANNER_ALERT_EMAIL_TO", raising=False)
    configure_mlflow()
    client = mlflow.MlflowClient()
    first, current = _dataset_run(client, versions["2026-11-16"]), _dataset_run(client, versions["2026-11-30"])

    assert log_drift(versions["2026-11-16"]) is None  # the first version: nothing to compare with
    assert client.get_run(first).data.tags["drift_status"] == "no_previous"

    alerted = []
    monkeypatch.setattr("include.alerts.notify_drift", lambda report, run_id=None, context=None: alerted.append(
        (report["over_threshold"], run_id)))
    report = log_drift(versions["2026-11-30"])  # the run found by its version and digest
    assert alerted == [(report["over_threshold"], current)]  # over its limits: handed to the alert (tests/alerts)
    run = client.get_run(current)
    assert run.data.tags["drift_status"] == "alert" == report["status"]
    assert run.data.tags["drift_previous_version"] == "2026-11-23"
    assert run.data.tags["drift_previous_revision"] == report["previous"]["revision"]
    assert set(run.data.tags["drift_over_threshold"].split(",")) == set(report["over_threshold"])
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("drift.psi.")} == pytest.approx(
        {f"drift.psi.{k}": v["psi"] for k, v in report["features"].items()})
    assert run.data.metrics["drift.max_psi"] == pytest.approx(report["max_psi"])
    logged = json.loads(mlflow.artifacts.load_text(f"runs:/{current}/{REPORT_FILE}"))
    assert logged["features"]["workflow_type"]["psi"] == pytest.approx(report["features"]["workflow_type"]["psi"])

    # again (a retry, a rebuild with the same content): nothing logged twice
    log_drift(versions["2026-11-30"], run_id=current)
    assert len(client.get_metric_history(current, "drift.psi.workflow_type")) == 1
    assert len(alerted) == 1  # and no second alert

    # a comparison that breaks (the previous version is gone) does not fail the phase, and says so on the run
    gone = storage.dataset_uri("2026-11-09")
    assert log_drift(versions["2026-11-16"], gone, run_id=first) is None
    assert client.get_run(first).data.tags["drift_status"] == "error"
    assert "2026-11-09" in client.get_run(first).data.tags["drift_error"]
    with pytest.raises(FileNotFoundError):
        log_drift(versions["2026-11-16"], gone, run_id=first, raise_errors=True)

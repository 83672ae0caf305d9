"""Retention on an object-storage root (a real S3-protocol server on loopback): attempts the
`_PUBLISHED` pointer does not name go after their week, the named one never; revisions and versions
stay until their own age; objects the project did not write, even ones sharing a version's prefix,
are never touched; every version still resolves and reads afterwards."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from include.core import names, storage
from include.retention.plan import apply_removals, plan_removals
from include.retention.policy import load_policy
from include.retention.references import Referenced

RUN_ID = "planner_acceptance-v20261123_000000"


def _publish(final_uri: str, content: str, revision: bool = False):
    staging = storage.new_staging_dir(final_uri)
    (staging / names.DATASET_TRAINING_FILE).write_text(content)
    return storage.publish_revision(staging, final_uri) if revision else storage.publish_dir(staging, final_uri)


def _objects(root: str) -> set[str]:
    fs, path = storage.filesystem(root)
    return set(fs.find(path))


def test_superseded_attempts_go_the_pointed_one_and_foreign_objects_stay(s3_root):
    model = storage.join(storage.models_root(), RUN_ID)
    replay = storage.replay_uri("2026-11-16_2026-11-23")
    dataset = storage.dataset_uri("2026-11-23")
    _publish(model, "first")
    first_model_attempt = storage.resolve(model)
    _publish(model, "second")
    _publish(replay, "first")
    first_replay_attempt = storage.resolve(replay)
    _publish(replay, "second")
    old_revision = _publish(dataset, "first", revision=True)
    new_revision = _publish(dataset, "second", revision=True)
    fs, root_path = storage.filesystem(s3_root)
    foreign = [storage.join(root_path, "notes.txt"),
               storage.join(root_path, "datasets", "planner", "2026-11-23", "README"),
               storage.join(root_path, "models", names.REGISTERED_MODEL_NAME, RUN_ID, "_attempt-by-hand", "x"),
               storage.join(root_path, "replays", "planner", "2026-11-16_2026-11-23.bak", "training.parquet"),
               storage.join(root_path, "_staging", "2026-11-23-0123456789ab", "x")]  # not ours on object storage
    for key in foreign:
        fs.pipe_file(key, b"someone else's")
    before = _objects(s3_root)

    ten_days_on = datetime.now(UTC) + timedelta(days=10)
    removals = plan_removals(s3_root, load_policy(), ten_days_on, Referenced())
    assert {(r.uri, r.kind) for r in removals} == {(first_model_attempt, "superseded_attempt"),
                                                  (first_replay_attempt, "superseded_attempt")}
    assert apply_removals(removals, dry_run=True) and _objects(s3_root) == before

    done = apply_removals(removals, dry_run=False)
    assert [d["action"] for d in done] == ["removed", "removed"]
    gone = {key for key in before if key.startswith((storage.filesystem(first_model_attempt)[1] + "/",
                                                      storage.filesystem(first_replay_attempt)[1] + "/"))}
    assert gone and _objects(s3_root) == before - gone
    for key in foreign:
        assert fs.cat_file(key) == b"someone else's"
    assert storage.read_text(model, names.DATASET_TRAINING_FILE) == "second"
    assert storage.read_text(replay, names.DATASET_TRAINING_FILE) == "second"
    assert storage.verify_revision(new_revision["revision_uri"], new_revision["digest"]) == []
    assert storage.verify_revision(old_revision["revision_uri"], old_revision["digest"]) == []  # 10 < 90 days
    assert [d["action"] for d in apply_removals(removals, dry_run=False)] == ["absent", "absent"]
    assert _objects(s3_root) == before - gone


def test_months_later_only_what_nothing_references_goes(s3_root):
    model = storage.join(storage.models_root(), RUN_ID)
    dataset = storage.dataset_uri("2026-11-23")
    _publish(model, "weights")
    trained_on = _publish(dataset, "first", revision=True)
    superseded = _publish(dataset, "second", revision=True)
    current = _publish(dataset, "third", revision=True)
    referenced = Referenced()
    referenced.add(model, "model_path of registered version 1")
    referenced.add(trained_on["revision_uri"], "training dataset of registered version 1")

    removals = plan_removals(s3_root, load_policy(), datetime.now(UTC) + timedelta(days=200), referenced)
    assert [(r.uri, r.kind) for r in removals] == [(superseded["revision_uri"], "dataset_revision")]
    apply_removals(removals, dry_run=False)
    assert storage.resolve(dataset) == current["revision_uri"]
    assert storage.verify_revision(trained_on["revision_uri"], trained_on["digest"]) == []
    assert storage.verify_revision(current["revision_uri"], current["digest"]) == []
    assert not storage.is_complete(superseded["revision_uri"])
    assert storage.read_text(model, names.DATASET_TRAINING_FILE) == "weights"

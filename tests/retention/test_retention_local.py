"""Retention over a lifecycle's storage on a local root, built with the project's own publishing
functions and a real MLflow registry (SQLite) and promotion history (PostgreSQL): a dry run lists
exactly what may go and removes nothing; applying removes exactly that; what a registered version,
a champion or an open run needs, what a pointer names and what the project did not write stay; the
registered version still loads and its dataset revision still verifies; applying twice changes nothing."""
from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from include.core import names, storage
from include.retention.plan import apply_removals, plan_removals
from include.retention.policy import load_policy
from include.retention.references import Referenced, referenced_locations
from tests.retention.conftest import age, record_champion, snapshot

VERSION = "2026-11-23"
REGISTERED_RUN = "planner_acceptance-v20261123_010203"  # the trained_model fixture's run id
OLD_UNREGISTERED = "planner_acceptance-v20260101_000000"
RECENT_UNREGISTERED = "planner_acceptance-v20261120_000000"
OPEN_RUN = "planner_acceptance-v20260102_000000"


def _publish(final_uri: str, files: dict[str, str], revision: bool = False) -> dict | str:
    staging = storage.new_staging_dir(final_uri)
    for name, content in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(content)
    return storage.publish_revision(staging, final_uri) if revision else storage.publish_dir(staging, final_uri)


def _copy_published_dataset(source_uri: str, final_uri: str) -> dict:
    """The real dataset's content published again under this root: the same digest, the same revision."""
    staging = storage.new_staging_dir(final_uri)
    content = Path(storage.resolve(source_uri))
    for file in content.rglob("*"):
        if file.is_file() and file.name not in (names.SUCCESS_MARKER, storage.REVISION_FILE):
            target = staging / file.relative_to(content)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
    return storage.publish_revision(staging, final_uri)


def _stray_staging(parent: Path, name: str) -> Path:
    import uuid

    directory = parent / storage.STAGING_DIR / f"{name}-{uuid.uuid4().hex[:12]}"
    directory.mkdir(parents=True)
    (directory / "part-000.parquet").write_text("half written")
    return directory


@pytest.fixture()
def lifecycle_storage(fresh_mlflow, storage_root, model_in_storage, published_dataset, ml_dsn):
    """A lifecycle's storage, aged: what the chain leaves after months, with everything retention must
    tell apart. Returns the paths by role and the registered version."""
    from include.core.tracking import ensure_experiment
    from include.registration.registry import register, registry_client

    root = storage_root
    dataset_uri = storage.dataset_uri(VERSION)
    trained_on = _copy_published_dataset(published_dataset, dataset_uri)                     # revision R
    superseded = _publish(dataset_uri, {"training.parquet": "a rebuild"}, revision=True)     # revision X
    current = _publish(dataset_uri, {"training.parquet": "the newest rebuild"}, revision=True)  # C, pointed to
    legacy = _publish(storage.dataset_uri("2026-11-16"), {"training.parquet": "before revisions"})
    legacy_stray_revision = Path(legacy) / "rev-0123456789abcdef"   # no pointer: never a candidate
    legacy_stray_revision.mkdir()
    (legacy_stray_revision / "training.parquet").write_text("?")

    manifest_file = model_in_storage / names.MODEL_MANIFEST_FILE  # the model was trained on revision R here
    manifest = json.loads(manifest_file.read_text())
    manifest.update(dataset_uri=dataset_uri, dataset_revision=trained_on["revision"],
                    dataset_revision_uri=trained_on["revision_uri"], dataset_digest=trained_on["digest"])
    manifest_file.write_text(json.dumps(manifest))
    registration = register(model_in_storage)
    record_champion(ml_dsn, registration.version)

    models = storage.models_root()
    for run_id in (OLD_UNREGISTERED, RECENT_UNREGISTERED, OPEN_RUN):
        _publish(storage.join(models, run_id), {"config.json": "{}", "model.safetensors": "weights"})
    client = registry_client()
    open_run = client.create_run(ensure_experiment(names.EXPERIMENT_TRAINING), tags={"training_run_id": OPEN_RUN})

    used_replay = _publish(storage.replay_uri("2026-11-16_2026-11-23"), {"training.parquet": "replayed"})
    unused_replay = _publish(storage.replay_uri("2026-10-01_2026-10-08"), {"training.parquet": "replayed"})
    deleted_versions_replay = _publish(storage.replay_uri("2026-10-08_2026-10-15"), {"training.parquet": "r"})
    evaluation = ensure_experiment(names.EXPERIMENT_OFFLINE_EVAL)
    for version, replay in ((registration.version, used_replay), ("99", deleted_versions_replay)):
        run = client.create_run(evaluation, tags={"model_name": names.REGISTERED_MODEL_NAME,
                                                  "model_version": version, "replay_uri": replay})
        client.set_terminated(run.info.run_id)

    models_dir, datasets_dir = Path(models), Path(storage.datasets_root())
    paths = {
        "superseded_revision": Path(superseded["revision_uri"]),
        "trained_on_revision": Path(trained_on["revision_uri"]),
        "current_revision": Path(current["revision_uri"]),
        "legacy_version": Path(legacy),
        "registered_model": model_in_storage,
        "old_model": models_dir / OLD_UNREGISTERED,
        "recent_model": models_dir / RECENT_UNREGISTERED,
        "open_run_model": models_dir / OPEN_RUN,
        "old_staging": _stray_staging(models_dir, "planner_acceptance-v20260103_000000"),
        "replaced": _stray_staging(models_dir, "replaced-planner_acceptance-v20260104_000000"),
        "open_run_staging": _stray_staging(models_dir, OPEN_RUN),
        "young_staging": _stray_staging(datasets_dir, "2026-11-30"),
        "used_replay": Path(used_replay),
        "unused_replay": Path(unused_replay),
        "deleted_versions_replay": Path(deleted_versions_replay),
        "old_checkpoint": root / "checkpoints" / OLD_UNREGISTERED,
        "open_run_checkpoint": root / "checkpoints" / OPEN_RUN,
    }
    for key in ("old_checkpoint", "open_run_checkpoint"):
        paths[key].mkdir(parents=True)
        (paths[key] / "step-100.pt").write_text("checkpoint")
    # What the project did not write: never touched, however old.
    foreign = [root / "notes.txt", datasets_dir / VERSION / "README", models_dir / "my-notes" / "todo.txt",
               datasets_dir / storage.STAGING_DIR / "keep-me.txt", root / "checkpoints" / "other" / "x.pt",
               root / "replays" / names.DATASET_NAME / "2026-10-01_2026-10-08.bak" / "training.parquet"]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("someone else's")

    for path in [*foreign, *paths.values()]:
        age(path, 400)
    for key, days in {"recent_model": 5, "young_staging": 1, "old_staging": 3, "replaced": 3,
                      "open_run_staging": 3, "old_checkpoint": 30, "open_run_checkpoint": 30,
                      "old_model": 60, "open_run_model": 60, "registered_model": 100, "used_replay": 60,
                      "unused_replay": 60, "deleted_versions_replay": 60}.items():
        age(paths[key], days)
    return {"root": root, "paths": paths, "foreign": foreign, "version": registration.version,
            "trained_on": trained_on, "ml_dsn": ml_dsn, "open_run": open_run.info.run_id}


EXPECTED = {"superseded_revision": "dataset_revision", "old_model": "model_dir", "old_staging": "staging",
            "replaced": "replaced", "unused_replay": "replay_set", "deleted_versions_replay": "replay_set",
            "old_checkpoint": "checkpoint"}


def _plan(layout, kept=None):
    referenced = referenced_locations(events_dsn=layout["ml_dsn"])
    return plan_removals(str(layout["root"]), load_policy(), datetime.now(UTC), referenced, kept=kept), referenced


def test_dry_run_lists_exactly_what_may_go_and_removes_nothing(lifecycle_storage):
    layout, paths = lifecycle_storage, lifecycle_storage["paths"]
    before = snapshot(layout["root"])
    kept = []
    removals, referenced = _plan(layout, kept)

    assert {(r.uri, r.kind) for r in removals} == {(str(paths[key]), kind) for key, kind in EXPECTED.items()}
    assert all(r.age_days > load_policy()["kinds"][r.kind]["max_age_days"] and r.reason for r in removals)
    done = apply_removals(removals, dry_run=True)
    assert [d["action"] for d in done] == ["would_remove"] * len(removals)
    assert snapshot(layout["root"]) == before

    why = {k.uri: k.reason for k in kept}
    assert why[str(paths["registered_model"])].startswith("referenced: model_path of registered version")
    assert why[str(paths["trained_on_revision"])].startswith("referenced: training dataset of registered version")
    assert why[str(paths["used_replay"])].startswith("referenced: replay set of evaluation run")
    for key in ("open_run_model", "open_run_staging", "open_run_checkpoint"):
        assert f"training run {OPEN_RUN} is open" in why[str(paths[key])], key
    assert "days old" in why[str(paths["recent_model"])] and "days old" in why[str(paths["young_staging"])]
    assert "no _PUBLISHED pointer" in why[str(paths["legacy_version"] / "rev-0123456789abcdef")]
    # The pointed-to revision is never even a candidate, however old; nor is anything foreign.
    candidates = set(why) | {r.uri for r in removals}
    assert str(paths["current_revision"]) not in candidates
    assert not candidates & {str(p) for p in layout["foreign"]}
    assert referenced.unresolved == []


def test_apply_removes_exactly_the_plan_and_every_remaining_version_loads_and_verifies(lifecycle_storage):
    import mlflow
    import pyarrow.parquet as pq

    from include.registration.artifacts import artifact_problems

    layout, paths = lifecycle_storage, lifecycle_storage["paths"]
    before = snapshot(layout["root"])
    removals, _ = _plan(layout)
    done = apply_removals(removals, dry_run=False)

    assert sorted(d["action"] for d in done) == ["removed"] * len(EXPECTED)
    removed = [str(paths[key].relative_to(layout["root"])) for key in EXPECTED]
    expected_after = {name: size for name, size in before.items()
                      if not any(name == r + "/" or name.startswith(r + "/") for r in removed)}
    assert snapshot(layout["root"]) == expected_after
    for key in EXPECTED:
        assert not paths[key].exists(), key
    for path in layout["foreign"]:
        assert path.read_text() == "someone else's"

    # The registered version: its directory is intact, it loads and scores, its training data verifies.
    assert artifact_problems(paths["registered_model"]) == []
    model = mlflow.pyfunc.load_model(f"models:/{names.REGISTERED_MODEL_NAME}/{layout['version']}")
    rows = pq.read_table(paths["trained_on_revision"] / names.DATASET_TRAINING_FILE).slice(0, 3).to_pandas()
    assert len(model.predict(rows)) > 0
    trained_on = layout["trained_on"]
    assert storage.verify_revision(trained_on["revision_uri"], trained_on["digest"]) == []
    # Every version still resolves to complete content: the dataset's pointer, the legacy version, replays.
    assert storage.resolve(storage.dataset_uri(VERSION)) == str(paths["current_revision"])
    assert storage.resolve(storage.dataset_uri("2026-11-16")) == str(paths["legacy_version"])
    for key in ("registered_model", "recent_model", "open_run_model", "used_replay"):
        assert storage.is_complete(str(paths[key])), key


def test_applying_twice_ends_in_the_same_state(lifecycle_storage):
    layout = lifecycle_storage
    removals, _ = _plan(layout)
    apply_removals(removals, dry_run=False)
    after_first = snapshot(layout["root"])

    again = apply_removals(removals, dry_run=False)  # the same plan once more (a retried task)
    assert {d["action"] for d in again} == {"absent"}
    assert _plan(layout)[0] == []                      # a fresh plan finds nothing left to remove
    assert snapshot(layout["root"]) == after_first


def test_the_pointed_to_revision_stays_even_when_nothing_references_it(lifecycle_storage):
    """With no registry at all, old and unreferenced: still kept, because the version's pointer names it."""
    layout, paths = lifecycle_storage, lifecycle_storage["paths"]
    far_future = datetime(2036, 1, 1, tzinfo=UTC)
    removals = plan_removals(str(layout["root"]), load_policy(), far_future, Referenced())
    uris = {r.uri for r in removals}
    assert str(paths["current_revision"]) not in uris
    assert {str(paths["superseded_revision"]), str(paths["trained_on_revision"])} <= uris
    apply_removals(removals, dry_run=False)
    assert storage.resolve(storage.dataset_uri(VERSION)) == str(paths["current_revision"])
    for path in layout["foreign"]:
        assert path.exists()


def test_a_champion_the_registry_lost_holds_back_model_dirs_and_dataset_revisions(lifecycle_storage):
    layout, paths = lifecycle_storage, lifecycle_storage["paths"]
    record_champion(layout["ml_dsn"], "7", previous=layout["version"])  # version 7 was never registered here
    kept = []
    removals, referenced = _plan(layout, kept)

    assert len(referenced.unresolved) == 1 and "version 7" in referenced.unresolved[0]
    assert {r.kind for r in removals} == {"staging", "replaced", "replay_set"}
    why = {k.uri: k.reason for k in kept}
    assert why[str(paths["old_model"])].startswith("held: version 7")
    assert why[str(paths["superseded_revision"])].startswith("held: version 7")


def test_a_model_registered_between_plan_and_apply_is_not_removed(lifecycle_storage, trained_model):
    """The DAG's apply task plans again and removes only what both plans agree on."""
    from include.registration.registry import register
    from include.retention.plan import still_planned
    from tests.conftest import copy_as_new_training_run

    layout, paths = lifecycle_storage, lifecycle_storage["paths"]
    first, _ = _plan(layout)
    assert str(paths["old_model"]) in {r.uri for r in first}
    shutil.rmtree(paths["old_model"])  # the old unregistered run, now a real model that gets registered
    copy_as_new_training_run(trained_model, paths["old_model"])
    register(paths["old_model"])
    age(paths["old_model"], 60)

    agreed, dropped = still_planned([r.as_dict() for r in first], _plan(layout)[0])
    assert [d["uri"] for d in dropped] == [str(paths["old_model"])]
    apply_removals(agreed, dry_run=False)
    assert storage.is_complete(str(paths["old_model"]))

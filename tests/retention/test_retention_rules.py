"""Rules of the plan that need no registry: links and unreadable pointers are left alone, and a kind
the policy keeps forever is never removed."""
from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

from include.core import names, storage
from include.retention.plan import apply_removals, plan_removals
from include.retention.policy import load_policy
from include.retention.references import Referenced
from tests.retention.conftest import age


def _publish(final_uri: str, content: str, revision: bool = False):
    staging = storage.new_staging_dir(final_uri)
    (staging / names.DATASET_TRAINING_FILE).write_text(content)
    return storage.publish_revision(staging, final_uri) if revision else storage.publish_dir(staging, final_uri)


def test_a_symbolic_link_in_the_layout_and_what_it_points_to_are_left_alone(storage_root, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.safetensors").write_text("not ours")
    models = storage_root / "models" / names.REGISTERED_MODEL_NAME
    models.mkdir(parents=True)
    link = models / "planner_acceptance-v20260101_000000"
    os.symlink(outside, link)
    age(outside, 400)
    kept = []
    removals = plan_removals(str(storage_root), load_policy(), datetime.now(UTC) + timedelta(days=400), Referenced(),
                             kept=kept)
    assert removals == []
    assert [k.reason for k in kept if k.uri == str(link)] == ["a symbolic link: not something this project writes"]
    assert (outside / "model.safetensors").read_text() == "not ours"


def test_an_unreadable_pointer_keeps_everything_in_its_version(storage_root):
    uri = storage.dataset_uri("2026-11-23")
    first = _publish(uri, "first", revision=True)
    _publish(uri, "second", revision=True)
    (storage.local_path(uri) / storage.POINTER).write_text(json.dumps({"attempt": "../../elsewhere"}))
    kept = []
    removals = plan_removals(str(storage_root), load_policy(), datetime.now(UTC) + timedelta(days=400), Referenced(),
                             kept=kept)
    assert removals == []
    assert any(k.uri == uri and "pointer cannot be read" in k.reason for k in kept)
    assert storage.is_complete(first["revision_uri"])


def test_a_kind_kept_forever_is_never_removed_and_the_others_still_are(storage_root):
    old_model = storage.join(storage.models_root(), "planner_acceptance-v20260101_000000")
    _publish(old_model, "weights")
    stray = storage.new_staging_dir(storage.dataset_uri("2026-11-23"))
    policy = load_policy()
    policy["kinds"]["model_dir"] = {**policy["kinds"]["model_dir"], "max_age_days": None}
    removals = plan_removals(str(storage_root), policy, datetime.now(UTC) + timedelta(days=400), Referenced())
    assert [(r.uri, r.kind) for r in removals] == [(str(stray), "staging")]
    apply_removals(removals, dry_run=False)
    assert storage.is_complete(old_model) and not stray.exists()


def test_a_linked_dataset_version_is_not_descended_into(storage_root, tmp_path):
    elsewhere = tmp_path / "elsewhere-version"
    uri = storage.dataset_uri("2026-11-23", str(tmp_path / "other-root"))
    _publish(uri, "first", revision=True)
    _publish(uri, "second", revision=True)
    age(storage.local_path(uri), 400)
    os.rename(storage.local_path(uri), elsewhere)
    datasets = storage_root / "datasets" / names.DATASET_NAME
    datasets.mkdir(parents=True)
    os.symlink(elsewhere, datasets / "2026-11-23")
    before = sorted(p.name for p in elsewhere.iterdir())
    removals = plan_removals(str(storage_root), load_policy(), datetime.now(UTC) + timedelta(days=400), Referenced())
    assert removals == []
    assert sorted(p.name for p in elsewhere.iterdir()) == before

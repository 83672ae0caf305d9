"""`compare_versions(previous, current)`: the drift report of a dataset version against the previous one, by the
limits of `thresholds.json`."""
from __future__ import annotations

import json
from pathlib import Path

from include.drift.psi import psi, shares

THRESHOLDS_FILE = Path(__file__).with_name("thresholds.json")
REPORT_FORMAT = 1
STATUS_ORDER = {"ok": 0, "warn": 1, "alert": 2}


def load_thresholds(path: Path | str | None = None) -> dict:
    """{"default": {warn, alert}, "features": {feature: {warn, alert, why}}}, checked: 0 <= warn <= alert."""
    doc = json.loads(Path(path or THRESHOLDS_FILE).read_text())
    for name, limits in [("default", doc["default"]), *doc.get("features", {}).items()]:
        warn, alert = float(limits.get("warn", doc["default"]["warn"])), float(limits.get("alert", doc["default"]["alert"]))
        if not 0 <= warn <= alert:
            raise ValueError(f"{name}: warn {warn} / alert {alert} must satisfy 0 <= warn <= alert")
    return doc


def limits_for(thresholds: dict, feature: str) -> dict:
    own = thresholds.get("features", {}).get(feature, {})
    return {"warn": float(own.get("warn", thresholds["default"]["warn"])),
            "alert": float(own.get("alert", thresholds["default"]["alert"])), "why": own.get("why")}


def status_of(value: float, limits: dict) -> str:
    return "alert" if value >= limits["alert"] else "warn" if value >= limits["warn"] else "ok"


def _profile(dataset) -> dict:
    if isinstance(dataset, dict):
        return dataset
    from include.drift.profile import profile

    return profile(str(dataset))


def _side(p: dict) -> dict:
    return {k: p.get(k) for k in ("version", "revision", "digest", "uri", "content_uri", "rows", "quarantined")}


def compare_versions(previous, current, thresholds: dict | None = None) -> dict:
    """The drift report of `current` against `previous` (each a dataset location, read batch-wise, or a profile
    from `include.drift.profile.profile`):

    {format, previous: {version, revision, digest, uri, rows, ...}, current: {...}, features: {feature: {psi,
    status (ok / warn / alert), warn, alert, why, bins: {bin: {previous, current}} (shares)}}, status (the worst),
    max_psi, over_threshold: [features at or above their alert limit], warnings: [features at or above warn],
    skipped: {feature: why not compared}}"""
    thresholds = thresholds or load_thresholds()
    before, after = _profile(previous), _profile(current)
    features, skipped = {}, {}
    for feature in after["features"]:
        old, new = before["features"].get(feature), after["features"][feature]
        if old is None:
            skipped[feature] = "the previous version does not have it"
            continue
        if not sum(old.values()) or not sum(new.values()):
            skipped[feature] = "no rows on one side"
            continue
        value = psi(old, new)
        limits = limits_for(thresholds, feature)
        bins = list(dict.fromkeys([*old, *new]))
        old_shares, new_shares = shares(old, bins, floor=0), shares(new, bins, floor=0)
        features[feature] = {"psi": value, "status": status_of(value, limits), **limits,
                             "bins": {b: {"previous": old_shares[b], "current": new_shares[b]} for b in bins}}
    for feature in before["features"]:
        if feature not in after["features"]:
            skipped[feature] = "the current version does not have it"
    worst = max((f["status"] for f in features.values()), key=STATUS_ORDER.get, default="ok")
    return {"format": REPORT_FORMAT, "previous": _side(before), "current": _side(after), "features": features,
            "status": worst, "max_psi": max((f["psi"] for f in features.values()), default=None),
            "over_threshold": sorted(n for n, f in features.items() if f["status"] == "alert"),
            "warnings": sorted(n for n, f in features.items() if f["status"] == "warn"), "skipped": skipped}

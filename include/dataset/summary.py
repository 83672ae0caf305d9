"""`dataset_summary.md`: what is in the version, what was left out and why."""
from __future__ import annotations

from include.dataset import schema
from include.dataset.window import Window


def _shares(column) -> str:
    import pyarrow.compute as pc

    total = len(column)
    if not total:
        return "none"
    counts = pc.value_counts(column.fill_null("(missing)")).to_pylist()
    counts.sort(key=lambda item: (-item["counts"], str(item["values"])))
    return ", ".join(f"{item['values']} ({100 * item['counts'] / total:.0f}%)" for item in counts)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def render_summary(window: Window, counts: dict, rows) -> str:
    import pyarrow.compute as pc

    n = rows.num_rows
    lines = [
        f"# Dataset: planner/{window.version}",
        "",
        f"**Rows**: {n:,}",
        f"**Fields**: {len(schema.TRAINING_FIELDS)}",
        "**Task**: which proposed meals a household keeps in its accepted weekly plan (supervised)",
        "**Targets**: accepted meal plans and the user's edits",
        f"**Window**: {window.start.date()} to {(window.last_instant).date()} "
        f"({window.lookback_days} days, accepted_at in [{window.start.isoformat()}, {window.end.isoformat()}))",
        "",
        "## Coverage",
    ]
    if n:
        lines += [
            f"- Households: {len(pc.unique(rows['household_id'])):,}",
            f"- Date range (accepted): {pc.min(rows['accepted_at']).as_py().date()} to "
            f"{pc.max(rows['accepted_at']).as_py().date()}",
            f"- Workflow types: {_shares(rows['workflow_type'])}",
            f"- Modes: {_shares(rows['mode'])}",
            f"- Policy versions: {_shares(rows['policy_version_id'])}",
            f"- With a previous plan: {_pct(pc.sum(rows['has_previous_plan']).as_py() or 0, n)}; "
            f"with user edits: {_pct(pc.sum(pc.greater(rows['n_user_edits'], 0)).as_py() or 0, n)}",
            f"- Proposed meals: {pc.sum(rows['n_proposed_meals']).as_py():,}; "
            f"accepted meals: {pc.sum(rows['n_accepted_meals']).as_py():,}",
        ]
    else:
        lines.append("- No rows: no plan had its first acceptance in this window.")

    events = counts["events_by_type"]
    lines += ["", "## Source events in the window", "", "| event type | events | deliveries |", "|---|---:|---:|"]
    lines += [f"| {t} | {v['events']:,} | {v['deliveries']:,} |" for t, v in sorted(events.items())]
    lines += [
        "",
        "## Left out (no row), counted",
        f"- Duplicate deliveries (same event_id) collapsed: {counts['duplicate_deliveries']:,}",
        f"- Second acceptances of a plan collapsed to the first: {counts['duplicate_acceptances']:,}",
        f"- Plans generated in the window but not accepted by its end: {counts['generated_never_accepted']:,}",
        "- Events of other types (not used for rows): "
        + (", ".join(f"{t} {c:,}" for t, c in sorted(counts["unused_event_types"].items())) or "none"),
        "",
        "## Quarantine (`quarantine.parquet`, one record per rejected event, with its reason)",
        "",
        "| reason | events |",
        "|---|---:|",
    ]
    lines += [f"| {reason} | {count:,} |" for reason, count in counts["quarantined_by_reason"].items()]
    lines += [
        "",
        f"Bad share: {counts['bad_share']:.2%} of {n + counts['quarantined']:,} candidates "
        f"(limit {counts['max_bad_share']:.2%}).",
        "",
        "## Notes",
        "- Household, pantry and constraints are the versions in effect at the plan time (greatest "
        "valid_from <= the latest plan_generated before the acceptance); the *_valid_from columns record which.",
        "- previous_plan is the household's latest plan accepted strictly before the plan time; user_edits are "
        "the plan's edits up to its acceptance.",
        "- Rows are ordered by plan_id; rebuilding this version from the same database rewrites the same rows.",
        "",
    ]
    return "\n".join(lines)

"""`dataset_summary.md`: what is in the version, what was left out and why."""
from __future__ import annotations

from include.dataset import schema
from include.dataset.window import Window


class SummaryStats:
    """What the summary says about the rows, accumulated batch by batch (`add`): exact counts,
    sums, extremes and value counts, so the text is the same whatever the batch size. Distinct
    households are kept as one Arrow string array of the ids seen (a key set: about 40 bytes a
    household, never the rows)."""

    def __init__(self):
        self.rows = 0
        self.households = None
        self.first_accepted = self.last_accepted = None
        self.values: dict[str, dict] = {"workflow_type": {}, "mode": {}, "policy_version_id": {}}
        self.with_previous_plan = self.with_user_edits = self.proposed_meals = self.accepted_meals = 0

    def add(self, rows) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if not rows.num_rows:
            return
        self.rows += rows.num_rows
        seen = pc.unique(rows["household_id"].combine_chunks())
        self.households = seen if self.households is None else pc.unique(pa.concat_arrays([self.households, seen]))
        low, high = pc.min(rows["accepted_at"]).as_py(), pc.max(rows["accepted_at"]).as_py()
        self.first_accepted = low if self.first_accepted is None or (low is not None and low < self.first_accepted) \
            else self.first_accepted
        self.last_accepted = high if self.last_accepted is None or (high is not None and high > self.last_accepted) \
            else self.last_accepted
        for column, counts in self.values.items():
            for item in pc.value_counts(rows[column].fill_null("(missing)")).to_pylist():
                counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
        self.with_previous_plan += pc.sum(rows["has_previous_plan"]).as_py() or 0
        self.with_user_edits += pc.sum(pc.greater(rows["n_user_edits"], 0)).as_py() or 0
        self.proposed_meals += pc.sum(rows["n_proposed_meals"]).as_py() or 0
        self.accepted_meals += pc.sum(rows["n_accepted_meals"]).as_py() or 0

    @property
    def n_households(self) -> int:
        return 0 if self.households is None else len(self.households)  # a missing id counts once, as before

    def shares(self, column: str) -> str:
        total = sum(self.values[column].values())
        if not total:
            return "none"
        counts = sorted(self.values[column].items(), key=lambda item: (-item[1], str(item[0])))
        return ", ".join(f"{value} ({100 * count / total:.0f}%)" for value, count in counts)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def render_summary(window: Window, counts: dict, stats: SummaryStats) -> str:
    n = stats.rows
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
            f"- Households: {stats.n_households:,}",
            f"- Date range (accepted): {stats.first_accepted.date()} to {stats.last_accepted.date()}",
            f"- Workflow types: {stats.shares('workflow_type')}",
            f"- Modes: {stats.shares('mode')}",
            f"- Policy versions: {stats.shares('policy_version_id')}",
            f"- With a previous plan: {_pct(stats.with_previous_plan, n)}; "
            f"with user edits: {_pct(stats.with_user_edits, n)}",
            f"- Proposed meals: {stats.proposed_meals:,}; accepted meals: {stats.accepted_meals:,}",
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

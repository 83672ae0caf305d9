"""Columns of the published files, with the descriptions that go into `schema.json`.

The arrow schemas are the contract with training and offline evaluation: a build always
writes exactly these columns and types, also when the window is empty.
"""
from __future__ import annotations

import json

SCHEMA_VERSION = 1

_TS = "timestamp[us, tz=UTC]"

# (name, arrow type, description)
TRAINING_FIELDS: list[tuple[str, str, str]] = [
    ("plan_id", "string", "Plan key (UUID text); one row per plan whose first acceptance lies in the window."),
    ("household_id", "string", "The household (exp.events.unit_id of the acceptance)."),
    ("generated_at", _TS, "Plan time: the latest plan_generated of the plan at or before its acceptance."),
    ("accepted_at", _TS, "Time of the plan's first plan_accepted; inside [window start, window end)."),
    ("input", "string", "JSON: {household{id,size,preferences,restrictions}, pantry{items}, constraints{budget,"
     "max_prep_time,excluded_ingredients}, workflow_type, mode, previous_plan, proposed_plan}, all as of the plan time."),
    ("target", "string", "JSON: {accepted_plan{meals}, user_edits[{type, timestamp, day, from, to, servings}]} "
     "with edits up to the acceptance, in time order."),
    ("metadata", "string", "JSON: {timestamp (plan time), accepted_at, policy_version_id}."),
    ("proposed_plan", "string", "JSON: the plan as generated ({meals[{day, recipe_id, servings}]})."),
    ("workflow_type", "string", "Context of the generation: plan-first | meal-first | pantry-first | ..."),
    ("mode", "string", "Context of the generation: autopilot | assisted | ..."),
    ("policy_version_id", "string", "The serving policy that generated the plan."),
    ("household_size", "int32", "Household size as of the plan time."),
    ("n_preferences", "int32", "Number of household preferences as of the plan time."),
    ("n_restrictions", "int32", "Number of household restrictions as of the plan time."),
    ("n_pantry_items", "int32", "Pantry items as of the plan time."),
    ("budget", "float64", "Weekly budget as of the plan time."),
    ("max_prep_time", "int32", "Maximum preparation time (minutes) as of the plan time."),
    ("n_excluded_ingredients", "int32", "Excluded ingredients as of the plan time."),
    ("n_proposed_meals", "int32", "Meals in the proposed plan."),
    ("n_accepted_meals", "int32", "Meals in the accepted plan."),
    ("n_user_edits", "int32", "Edits of the plan up to its acceptance."),
    ("has_previous_plan", "bool", "Whether the household accepted a plan before this plan time."),
    ("household_valid_from", _TS, "Audit: valid_from of the household version used (<= generated_at)."),
    ("pantry_valid_from", _TS, "Audit: valid_from of the pantry snapshot used (<= generated_at)."),
    ("constraints_valid_from", _TS, "Audit: valid_from of the constraints version used (<= generated_at)."),
]

QUARANTINE_FIELDS: list[tuple[str, str, str]] = [
    ("event_id", "string", "The rejected event."),
    ("event_type", "string", "plan_generated | plan_accepted."),
    ("plan_id", "string", "payload.plan_id as given (may be missing or malformed)."),
    ("household_id", "string", "exp.events.unit_id."),
    ("event_time", _TS, "exp.events.timestamp."),
    ("reject_reason", "string", "invalid_plan_id | invalid_meals | no_generation_before_acceptance | "
     "invalid_generated_plan | unknown_recipe_id | no_household_state."),
    ("reject_detail", "string", "What exactly was wrong, when more can be said."),
    ("payload", "string", "The event payload as JSON text."),
]

RECIPE_FIELDS: list[tuple[str, str, str]] = [
    ("recipe_id", "string", "Recipe key (UUID text)."),
    ("name", "string", ""),
    ("cuisine", "string", ""),
    ("prep_time", "int32", "Minutes."),
    ("cost", "float64", "Cost per serving."),
    ("ingredients", "string", "JSON list of ingredient names."),
    ("tags", "string", "JSON list of tags."),
]

REJECT_REASONS = ["invalid_plan_id", "invalid_meals", "no_generation_before_acceptance",
                  "invalid_generated_plan", "unknown_recipe_id", "no_household_state"]


def _arrow_type(name: str):
    import pyarrow as pa

    if name == _TS:
        return pa.timestamp("us", tz="UTC")
    return {"string": pa.string(), "int32": pa.int32(), "float64": pa.float64(), "bool": pa.bool_()}[name]


def arrow_schema(fields: list[tuple[str, str, str]]):
    import pyarrow as pa

    return pa.schema([pa.field(name, _arrow_type(kind)) for name, kind, _ in fields])


def schema_document(version: str, window: dict) -> str:
    """`schema.json`: field definitions of every file in the version."""
    def describe(fields):
        return [{"name": n, "type": t, "description": d} for n, t, d in fields]

    return json.dumps({
        "schema_version": SCHEMA_VERSION,
        "dataset": f"planner/{version}",
        "window": window,
        "files": {
            "training.parquet": {"key": "plan_id", "order": "plan_id ascending", "fields": describe(TRAINING_FIELDS)},
            "quarantine.parquet": {"fields": describe(QUARANTINE_FIELDS)},
            "recipes.parquet": {"key": "recipe_id", "fields": describe(RECIPE_FIELDS)},
        },
    }, indent=2) + "\n"

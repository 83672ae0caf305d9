"""The dataset build against the two ways a user would build the same rows instead, at ~1M events.

    python -m bench.dataset_peers [--households 48000 --weeks 8] [--reuse]

The ways, each in a child process of its own (its peak RSS is `ru_maxrss` of that child alone,
taken as soon as its rows are written, before the digest is computed):

* **build**: `include.dataset.build.build_dataset` (plan_id ranges extracted concurrently in
  PostgreSQL, streamed to Parquet, all the version's files);
* **pandas**: `pandas.read_sql` of the source tables (SQLAlchemy + psycopg, JSON parsed by the
  driver), the as-of lookups as `pandas.merge_asof` per state table (generation, household,
  pantry, constraints, previous accepted plan), edits by a merge and a groupby, the rows' JSON
  rendered in Python;
* **duckdb**: the same source tables fetched to Arrow (ADBC, as the build's driver), the rules
  as one DuckDB SQL pipeline with `ASOF JOIN` per state table, the JSON assembled in SQL.

Both peers apply every rule of docs/contracts.md ("The rows", "Quarantine"): first acceptance
per plan in the window (deliveries collapsed, an acceptance before the window excluding the
plan), the latest generation at or before it, state as of the plan time, the previous *first*
acceptance strictly before it, edits up to the acceptance in (timestamp, edit_id) order, and
the quarantine rules in their order. They produce only what the comparison needs (plan_id,
household_id, generated_at, accepted_at, input, target) and the quarantine counts by reason,
written to one Parquet file: less than the build writes (no metadata or flat columns, no
recipes, counts or summary), which favours them.

Equality: a sha256 over the rows in plan_id order of `plan_id, input, target`. Both peers
render the JSON text byte for byte as PostgreSQL does (jsonb's key order and ", "/": " spacing,
json_build_object's " : ", timestamps as `YYYY-MM-DDTHH:MI:SS[.ffffff without trailing
zeros]+00:00`), so the *exact* digest must match. One documented limit: a JSON number that is
not an integer (`1.50`) is re-rendered by Python's float repr or DuckDB's writer (`1.5`), not
as PostgreSQL's numeric; the generator writes integers only in JSON (budgets are a numeric
column, passed as PostgreSQL's text), and a canonical digest (json.loads, then json.dumps with
sort_keys) is printed beside the exact one for that case. Quarantine counts by reason are
compared too. The small version of this comparison is tests/dataset/test_peers.py.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from include.dataset.window import Window, resolve_window

END = datetime(2026, 11, 23, tzinfo=UTC)
WINDOW = resolve_window("2026-11-23", 28)
DATABASE = "planner_bench_peers"
WAYS = ("build", "pandas", "duckdb")
PEER_COLUMNS = ["plan_id", "household_id", "generated_at", "accepted_at", "input", "target"]
REJECT_ORDER = ["invalid_plan_id", "invalid_meals", "no_generation_before_acceptance", "invalid_generated_plan",
                "unknown_recipe_id", "no_household_state"]
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)

# The source tables, read the same way by both peers (plan events up to the window's end: the
# generation, an earlier acceptance and the previous plan all lie before it).
SOURCE_SQL = {
    "events": 'SELECT event_id::text AS event_id, event_type, unit_id::text AS unit_id, "timestamp", context, payload '
              "FROM exp.events WHERE event_type IN ('plan_generated', 'plan_accepted') AND \"timestamp\" < {end}",
    "households": "SELECT household_id::text AS household_id, valid_from, size, preferences, restrictions "
                  "FROM app.households WHERE valid_from < {end}",
    "pantry": "SELECT household_id::text AS household_id, valid_from, items FROM app.pantry_snapshots "
              "WHERE valid_from < {end}",
    "constraints": "SELECT household_id::text AS household_id, valid_from, budget, max_prep_time, excluded_ingredients "
                   "FROM app.constraints WHERE valid_from < {end}",
    "edits": 'SELECT edit_id::text AS edit_id, plan_id::text AS plan_id, "timestamp", edit_type, details '
             'FROM app.plan_edits WHERE "timestamp" < {end}',
    "recipes": "SELECT recipe_id::text AS recipe_id FROM app.recipes",
}


# ---------------------------------------------------------------------------------------------
# JSON as PostgreSQL renders it (shared by the pandas peer and the digest)

def pg_json(value) -> str:
    """jsonb's text of a value parsed from jsonb text: dicts keep the order PostgreSQL sent
    (jsonb's own: shorter keys first, then bytes), separators ", " and ": ", UTF-8 unescaped."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def jsonb_object(pairs: dict) -> str:
    """A jsonb object built in Python (e.g. `details || {type, timestamp}`): jsonb's key order."""
    ordered = sorted(pairs.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
    return "{" + ", ".join(f"{pg_json(k)}: {pg_json(v)}" for k, v in ordered) + "}"


def pg_ts(ts) -> str:
    """A timestamptz inside JSON (session time zone UTC): fractional seconds without trailing zeros."""
    text = ts.strftime("%Y-%m-%dT%H:%M:%S")
    if ts.microsecond:
        text += f".{ts.microsecond:06d}".rstrip("0")
    return text + "+00:00"


def _text_of(obj, key):
    """`obj ->> key` of PostgreSQL: a string as is, JSON null or a missing key as NULL, else its JSON text."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(key)
    return value if value is None or isinstance(value, str) else pg_json(value)


def _missing(value) -> bool:
    """SQL NULL as it arrives in a pandas column: None, or NaN/NaT for a row a merge did not match."""
    if value is None:
        return True
    try:
        import pandas as pd

        return not isinstance(value, (list, dict, str)) and bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _plan(payload):
    return payload.get("plan") if isinstance(payload, dict) else None


def _meals(payload):
    plan = _plan(payload)
    return plan.get("meals") if isinstance(plan, dict) else None


# ---------------------------------------------------------------------------------------------
# pandas: read_sql + merge_asof

def pandas_peer(dsn: str, window: Window, out: Path) -> dict:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import sqlalchemy as sa

    from include.dataset.build import libpq_uri

    started = time.perf_counter()
    engine = sa.create_engine(libpq_uri(dsn).replace("postgresql://", "postgresql+psycopg://", 1),
                              connect_args={"options": "-c TimeZone=UTC"})
    with engine.connect() as conn:
        # coerce_float=False: budgets stay Decimal, rendered as PostgreSQL's numeric text (224.00, not 224.0)
        frames = {name: pd.read_sql(sa.text(sql.format(end=":end")), conn, params={"end": window.end},
                                    coerce_float=False)
                  for name, sql in SOURCE_SQL.items()}
    engine.dispose()
    fetch_seconds = time.perf_counter() - started
    ev, edits = frames["events"], frames["edits"]
    recipes = set(frames["recipes"]["recipe_id"])
    start, end = pd.Timestamp(window.start), pd.Timestamp(window.end)

    ev["plan_id"] = [_text_of(p, "plan_id") for p in ev["payload"]]
    meals = [_meals(p) for p in ev["payload"]]
    ev["meals_is_list"] = [isinstance(m, list) for m in meals]
    ev["has_meals"] = [isinstance(m, list) and len(m) > 0 for m in meals]
    del meals
    accepted_type = ev["event_type"] == "plan_accepted"

    # The window's events, one per event_id (the earliest delivery; the SQL's last tie-break, the
    # payload's jsonb order between two deliveries of one id at the same time and type, is left out).
    win = ev[(ev["timestamp"] >= start) & (ev["timestamp"] < end)]
    win = win.sort_values(["event_id", "timestamp", "event_type"], kind="stable").drop_duplicates("event_id")
    win = win.assign(has_plan_id=[isinstance(p, str) and UUID_RE.fullmatch(p) is not None for p in win["plan_id"]])
    quarantine = dict.fromkeys(REJECT_ORDER, 0)
    quarantine["invalid_plan_id"] += int((~win["has_plan_id"]).sum())
    quarantine["invalid_meals"] += int((win["has_plan_id"] & (win["event_type"] == "plan_generated")
                                        & ~win["has_meals"]).sum())

    # First acceptance per plan in the window; none if the plan was accepted before the window.
    earlier = ev.loc[accepted_type & (ev["timestamp"] < start) & ev["plan_id"].notna(), "plan_id"].unique()
    acc = win[(win["event_type"] == "plan_accepted") & win["has_plan_id"] & ~win["plan_id"].isin(earlier)]
    acc = acc.sort_values(["plan_id", "timestamp", "event_id"]).drop_duplicates("plan_id")
    acc = acc.rename(columns={"timestamp": "accepted_at"})[
        ["event_id", "plan_id", "unit_id", "accepted_at", "context", "payload", "has_meals"]]

    def latest_per_tie(frame, by, on):
        # merge_asof takes the last row among equal keys: make it the greatest event_id, as the SQL's tie-break.
        return frame.sort_values([on, "event_id"]).drop_duplicates([by, on], keep="last").drop(columns="event_id")

    def asof(left, right, left_on, right_on, left_by, right_by, exact=True):
        usable = left[left_on].notna() & left[left_by].notna()
        merged = pd.merge_asof(left[usable].sort_values(left_on), right.sort_values(right_on), left_on=left_on,
                               right_on=right_on, left_by=left_by, right_by=right_by, direction="backward",
                               allow_exact_matches=exact)
        return pd.concat([merged, left[~usable]], ignore_index=True)

    # Plan time: the latest plan_generated of the plan at or before the acceptance.
    gens = ev[(ev["event_type"] == "plan_generated") & ev["plan_id"].notna()]
    gens = gens.rename(columns={"timestamp": "generated_at", "plan_id": "gen_plan_id", "context": "gen_context",
                                "payload": "gen_payload", "has_meals": "generated_has_meals"})
    gens = latest_per_tie(gens[["gen_plan_id", "generated_at", "event_id", "gen_context", "gen_payload",
                                "generated_has_meals"]], "gen_plan_id", "generated_at")
    rows = asof(acc, gens, "accepted_at", "generated_at", "plan_id", "gen_plan_id")

    # Household, pantry and constraints as of the plan time (greatest valid_from <= plan time).
    for name, prefix in (("households", "household"), ("pantry", "pantry"), ("constraints", "constraints")):
        state = frames[name].rename(columns={"household_id": f"{prefix}_household_id",
                                             "valid_from": f"{prefix}_valid_from"})
        rows = asof(rows, state, "generated_at", f"{prefix}_valid_from", "unit_id", f"{prefix}_household_id")

    # Previous plan: the household's latest *first* acceptance strictly before the plan time (of
    # another plan: the row's own first acceptance is never before its plan time).
    firsts = ev[accepted_type & ev["plan_id"].notna() & ev["unit_id"].notna()]
    firsts = firsts[firsts["timestamp"] == firsts.groupby("plan_id")["timestamp"].transform("min")]
    firsts = firsts[firsts["meals_is_list"]].rename(columns={
        "timestamp": "prev_accepted_at", "unit_id": "prev_unit_id", "plan_id": "prev_plan_id",
        "payload": "prev_payload"})
    firsts = latest_per_tie(firsts[["prev_unit_id", "prev_accepted_at", "event_id", "prev_plan_id", "prev_payload"]],
                            "prev_unit_id", "prev_accepted_at")
    rows = asof(rows, firsts, "generated_at", "prev_accepted_at", "unit_id", "prev_unit_id", exact=False)
    del ev, gens, firsts, frames

    # Meals of both plans: objects with a string recipe_id, known (case-insensitively) to app.recipes.
    def check(has_meals, payload):
        malformed, unknown = False, set()
        if has_meals is True:
            for meal in _meals(payload):
                recipe_id = meal.get("recipe_id") if isinstance(meal, dict) else None
                if not isinstance(recipe_id, str):
                    malformed = True
                elif recipe_id.lower() not in recipes:
                    unknown.add(recipe_id.lower())
        return malformed, unknown

    reasons = []
    for has_meals, payload, gen_at, gen_has, gen_payload, hh, pan, con in zip(
            rows["has_meals"], rows["payload"], rows["generated_at"], rows["generated_has_meals"],
            rows["gen_payload"], rows["household_valid_from"], rows["pantry_valid_from"],
            rows["constraints_valid_from"]):
        accepted_bad, accepted_unknown = check(has_meals, payload)
        proposed_bad, proposed_unknown = check(gen_has, gen_payload)
        if not has_meals or accepted_bad:
            reasons.append("invalid_meals")
        elif pd.isna(gen_at):
            reasons.append("no_generation_before_acceptance")
        elif gen_has is not True or proposed_bad:
            reasons.append("invalid_generated_plan")
        elif accepted_unknown or proposed_unknown:
            reasons.append("unknown_recipe_id")
        elif pd.isna(hh) or pd.isna(pan) or pd.isna(con):
            reasons.append("no_household_state")
        else:
            reasons.append(None)
    rows["reject_reason"] = reasons
    for reason, count in rows["reject_reason"].value_counts().items():
        quarantine[reason] += int(count)
    rows = rows[rows["reject_reason"].isna()].sort_values("plan_id").reset_index(drop=True)

    # Edits up to the acceptance, in (timestamp, edit_id) order, each `details || {type, timestamp}`.
    keys = pd.DataFrame({"plan_key": rows["plan_id"].str.lower(), "accepted_at": rows["accepted_at"]})
    edits = edits.merge(keys, left_on="plan_id", right_on="plan_key")
    edits = edits[edits["timestamp"] <= edits["accepted_at"]].sort_values(["plan_key", "timestamp", "edit_id"])
    edits["text"] = [jsonb_object({**(details if isinstance(details, dict) else {}), "type": edit_type,
                                   "timestamp": pg_ts(ts)})
                     for details, edit_type, ts in zip(edits["details"], edits["edit_type"], edits["timestamp"])]
    edit_text = edits.groupby("plan_key", sort=False)["text"].agg(lambda texts: "[" + ", ".join(texts) + "]")
    user_edits = rows["plan_id"].str.lower().map(edit_text).fillna("[]")

    def field(value):
        return "null" if _missing(value) else str(value)

    def array(value):  # coalesce(value, '[]'::jsonb)
        return "[]" if _missing(value) else pg_json(value)

    inputs, targets = [], []
    for r, edits_text in zip(rows.itertuples(index=False), user_edits):
        context = r.context if _missing(r.gen_context) else r.gen_context
        previous = "null"
        if isinstance(r.prev_plan_id, str):
            previous = (f'{{"meals": {pg_json(_meals(r.prev_payload))}, "plan_id": {pg_json(r.prev_plan_id)}, '
                        f'"accepted_at": "{pg_ts(r.prev_accepted_at)}"}}')
        workflow_type, mode = _text_of(context, "workflow_type"), _text_of(context, "mode")
        size = "null" if _missing(r.size) else str(int(r.size))
        max_prep = "null" if _missing(r.max_prep_time) else str(int(r.max_prep_time))
        inputs.append(
            f'{{"household" : {{"id" : {pg_json(r.unit_id)}, "size" : {size}, '
            f'"preferences" : {array(r.preferences)}, '
            f'"restrictions" : {array(r.restrictions)}}}, '
            f'"pantry" : {{"items" : {array(r.items)}}}, '
            f'"constraints" : {{"budget" : {field(r.budget)}, "max_prep_time" : {max_prep}, '
            f'"excluded_ingredients" : {array(r.excluded_ingredients)}}}, '
            f'"workflow_type" : {"null" if workflow_type is None else pg_json(workflow_type)}, '
            f'"mode" : {"null" if mode is None else pg_json(mode)}, '
            f'"previous_plan" : {previous}, "proposed_plan" : {pg_json(_plan(r.gen_payload))}}}')
        targets.append(f'{{"accepted_plan" : {pg_json(_plan(r.payload))}, "user_edits" : {edits_text}}}')
    result = pd.DataFrame({"plan_id": rows["plan_id"], "household_id": rows["unit_id"],
                           "generated_at": rows["generated_at"], "accepted_at": rows["accepted_at"],
                           "input": inputs, "target": targets})
    pq.write_table(pa.Table.from_pandas(result, preserve_index=False), out, compression="zstd")
    return {"rows": len(result), "quarantined_by_reason": quarantine, "fetch_seconds": fetch_seconds}


# ---------------------------------------------------------------------------------------------
# DuckDB: the tables fetched to Arrow, ASOF JOIN

DUCKDB_SQL = r"""
-- jsonb's spacing from DuckDB's compact JSON text: a mark after every string literal and every
-- ',' or ':' outside one (string literals are consumed whole), then the marks after a string
-- literal dropped (a JSON string never holds a raw \x01), then the rest become spaces.
CREATE MACRO pg_spacing(j) AS
    replace(replace(regexp_replace(j, '("(?:[^"\\]|\\.)*"|[,:])', '\1' || chr(1), 'g'), '"' || chr(1), '"'),
            chr(1), ' ');
CREATE MACRO pg_ts(t) AS rtrim(rtrim(strftime(t, '%Y-%m-%dT%H:%M:%S.%f'), '0'), '.') || '+00:00';

CREATE TEMP TABLE ev AS
SELECT event_id, event_type, unit_id, "timestamp" AS ts, context, payload,
       json_extract_string(payload, '$.plan_id') AS plan_id,
       coalesce(json_type(payload, '$.plan.meals') = 'ARRAY', false) AS meals_is_array,
       coalesce(json_type(payload, '$.plan.meals') = 'ARRAY'
                AND json_array_length(payload, '$.plan.meals') > 0, false) AS has_meals
FROM events_src;

-- the window's events, one per event_id (the earliest delivery; no payload tie-break, as in the pandas peer)
CREATE TEMP TABLE win AS
SELECT *, coalesce(regexp_full_match(plan_id, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', 'i'),
                   false) AS has_plan_id
FROM ev WHERE ts >= $window_start AND ts < $window_end
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ts, event_type) = 1;

CREATE TEMP TABLE acc AS
SELECT w.* FROM win w
WHERE w.event_type = 'plan_accepted' AND w.has_plan_id
  AND NOT EXISTS (SELECT 1 FROM ev p WHERE p.plan_id = w.plan_id AND p.event_type = 'plan_accepted'
                  AND p.ts < $window_start)
QUALIFY row_number() OVER (PARTITION BY w.plan_id ORDER BY w.ts, w.event_id) = 1;

-- the right sides of the as-of joins, one row per (key, time): the greatest event_id, as the SQL's tie-break
CREATE TEMP TABLE gens AS
SELECT plan_id, ts AS generated_at, context, payload, has_meals FROM ev
WHERE event_type = 'plan_generated' AND plan_id IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY plan_id, ts ORDER BY event_id DESC) = 1;

CREATE TEMP TABLE firsts AS
SELECT unit_id, ts AS prev_accepted_at, plan_id AS prev_plan_id, payload AS prev_payload FROM (
    SELECT * FROM ev WHERE event_type = 'plan_accepted' AND plan_id IS NOT NULL AND unit_id IS NOT NULL
    QUALIFY ts = min(ts) OVER (PARTITION BY plan_id)
) WHERE meals_is_array
QUALIFY row_number() OVER (PARTITION BY unit_id, ts ORDER BY event_id DESC) = 1;

CREATE TEMP TABLE joined AS
SELECT a.plan_id, a.unit_id, a.ts AS accepted_at, a.payload, a.has_meals, a.context,
       g.generated_at, g.context AS gen_context, g.payload AS gen_payload, g.has_meals AS generated_has_meals,
       h.valid_from AS household_valid_from, h.size, h.preferences, h.restrictions,
       p.valid_from AS pantry_valid_from, p.items,
       c.valid_from AS constraints_valid_from, c.budget, c.max_prep_time, c.excluded_ingredients,
       f.prev_accepted_at, f.prev_plan_id, f.prev_payload
FROM acc a
ASOF LEFT JOIN gens g ON g.plan_id = a.plan_id AND a.ts >= g.generated_at
ASOF LEFT JOIN households_src h ON h.household_id = a.unit_id AND g.generated_at >= h.valid_from
ASOF LEFT JOIN pantry_src p ON p.household_id = a.unit_id AND g.generated_at >= p.valid_from
ASOF LEFT JOIN constraints_src c ON c.household_id = a.unit_id AND g.generated_at >= c.valid_from
ASOF LEFT JOIN firsts f ON f.unit_id = a.unit_id AND g.generated_at > f.prev_accepted_at;

-- every meal of both plans: a string recipe_id, known (lower case) to app.recipes
CREATE TEMP TABLE meal_checks AS
WITH meals AS (
    SELECT plan_id, 'accepted' AS side, unnest(json_extract(payload, '$.plan.meals[*]')) AS meal
    FROM joined WHERE has_meals
    UNION ALL
    SELECT plan_id, 'proposed', unnest(json_extract(gen_payload, '$.plan.meals[*]'))
    FROM joined WHERE generated_has_meals
), checked AS (
    SELECT plan_id, side, json_type(meal, '$.recipe_id') IS DISTINCT FROM 'VARCHAR' AS malformed,
           lower(json_extract_string(meal, '$.recipe_id')) AS recipe_id
    FROM meals
)
SELECT plan_id,
       bool_or(side = 'accepted' AND malformed) AS accepted_malformed,
       bool_or(side = 'proposed' AND malformed) AS proposed_malformed,
       bool_or(NOT malformed AND r.recipe_id IS NULL) AS unknown_recipe
FROM checked LEFT JOIN recipes_src r USING (recipe_id)
GROUP BY plan_id;

CREATE TEMP TABLE judged AS
SELECT j.*, CASE
    WHEN NOT j.has_meals OR m.accepted_malformed THEN 'invalid_meals'
    WHEN j.generated_at IS NULL THEN 'no_generation_before_acceptance'
    WHEN NOT j.generated_has_meals OR m.proposed_malformed THEN 'invalid_generated_plan'
    WHEN m.unknown_recipe THEN 'unknown_recipe_id'
    WHEN j.household_valid_from IS NULL OR j.pantry_valid_from IS NULL OR j.constraints_valid_from IS NULL
    THEN 'no_household_state'
END AS reject_reason
FROM joined j LEFT JOIN meal_checks m USING (plan_id);

-- edits up to the acceptance: each `details || {type, timestamp}` with jsonb's key order
CREATE TEMP TABLE edit_text AS
WITH e AS (
    SELECT d.edit_id, d.plan_id, d."timestamp" AS ts, d.edit_type, coalesce(d.details, '{}') AS details
    FROM edits_src d JOIN judged j ON d.plan_id = lower(j.plan_id) AND d."timestamp" <= j.accepted_at
    WHERE j.reject_reason IS NULL
), kv AS (
    SELECT e.edit_id, k.key, pg_spacing(k.value::varchar) AS v
    FROM e, json_each(e.details) k WHERE k.key NOT IN ('type', 'timestamp')
    UNION ALL SELECT edit_id, 'type', coalesce(to_json(edit_type)::varchar, 'null') FROM e
    UNION ALL SELECT edit_id, 'timestamp', to_json(pg_ts(ts))::varchar FROM e
), one AS (
    SELECT edit_id, '{' || string_agg(to_json(key)::varchar || ': ' || v, ', ' ORDER BY strlen(key), key) || '}' AS t
    FROM kv GROUP BY edit_id
)
SELECT e.plan_id, '[' || string_agg(one.t, ', ' ORDER BY e.ts, e.edit_id) || ']' AS user_edits
FROM e JOIN one USING (edit_id) GROUP BY e.plan_id;
"""

DUCKDB_ROWS = r"""
SELECT j.plan_id, j.unit_id AS household_id, j.generated_at, j.accepted_at,
       '{"household" : {"id" : ' || to_json(j.unit_id)::varchar
           || ', "size" : ' || coalesce(j.size::varchar, 'null')
           || ', "preferences" : ' || coalesce(j.preferences, '[]')
           || ', "restrictions" : ' || coalesce(j.restrictions, '[]') || '}'
           || ', "pantry" : {"items" : ' || coalesce(j.items, '[]') || '}'
           || ', "constraints" : {"budget" : ' || coalesce(j.budget, 'null')
           || ', "max_prep_time" : ' || coalesce(j.max_prep_time::varchar, 'null')
           || ', "excluded_ingredients" : ' || coalesce(j.excluded_ingredients, '[]') || '}'
           || ', "workflow_type" : ' || coalesce(to_json(json_extract_string(coalesce(j.gen_context, j.context), '$.workflow_type'))::varchar, 'null')
           || ', "mode" : ' || coalesce(to_json(json_extract_string(coalesce(j.gen_context, j.context), '$.mode'))::varchar, 'null')
           || ', "previous_plan" : ' || CASE WHEN j.prev_plan_id IS NULL THEN 'null' ELSE
                  '{"meals": ' || pg_spacing(json_extract(j.prev_payload, '$.plan.meals')::varchar)
                  || ', "plan_id": ' || to_json(j.prev_plan_id)::varchar
                  || ', "accepted_at": "' || pg_ts(j.prev_accepted_at) || '"}' END
           || ', "proposed_plan" : ' || coalesce(pg_spacing(json_extract(j.gen_payload, '$.plan')::varchar), 'null')
           || '}' AS input,
       '{"accepted_plan" : ' || coalesce(pg_spacing(json_extract(j.payload, '$.plan')::varchar), 'null')
           || ', "user_edits" : ' || coalesce(e.user_edits, '[]') || '}' AS target
FROM judged j LEFT JOIN edit_text e ON e.plan_id = lower(j.plan_id)
WHERE j.reject_reason IS NULL
ORDER BY j.plan_id
"""


def _plain_arrow(table):
    """Extension columns (json, numeric) as their text storage; timestamps as naive UTC."""
    import pyarrow as pa

    columns = []
    for column in table.columns:
        if isinstance(column.type, pa.ExtensionType):
            column = pa.chunked_array([chunk.storage for chunk in column.chunks], type=column.type.storage_type)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.timestamp("us"))
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def duckdb_peer(dsn: str, window: Window, out: Path) -> dict:
    import duckdb
    import pyarrow.parquet as pq

    from include.dataset.build import fetch_arrow

    started = time.perf_counter()
    con = duckdb.connect()
    for name, sql in SOURCE_SQL.items():
        table = _plain_arrow(fetch_arrow(dsn, sql.format(end="$1"), (window.end,)) if "{end}" in sql
                             else fetch_arrow(dsn, sql))
        con.register(f"{name}_src", table)
        del table
    fetch_seconds = time.perf_counter() - started
    start, end = window.start.replace(tzinfo=None), window.end.replace(tzinfo=None)
    for statement in [s for s in DUCKDB_SQL.split(";\n") if s.strip()]:
        params = {k: v for k, v in (("window_start", start), ("window_end", end)) if f"${k}" in statement}
        con.execute(statement, params or None)
    rows = con.sql(DUCKDB_ROWS).to_arrow_table()
    pq.write_table(rows, out, compression="zstd")
    quarantine = dict.fromkeys(REJECT_ORDER, 0)
    for reason, count in con.execute(
            "SELECT reject_reason, count(*) FROM judged WHERE reject_reason IS NOT NULL GROUP BY 1 "
            "UNION ALL SELECT 'invalid_plan_id', count(*) FROM win WHERE NOT has_plan_id "
            "UNION ALL SELECT 'invalid_meals', count(*) FROM win "
            "WHERE has_plan_id AND event_type = 'plan_generated' AND NOT has_meals").fetchall():
        quarantine[reason] += count
    con.close()
    return {"rows": rows.num_rows, "quarantined_by_reason": quarantine, "fetch_seconds": fetch_seconds}


# ---------------------------------------------------------------------------------------------
# The build, digests, the child processes

def build_way(dsn: str, window: Window, out: Path, parts: int = 2) -> dict:
    from include.dataset.build import build_dataset

    staging = out.parent / "build-staging"
    staging.mkdir()
    counts = build_dataset(dsn, window, staging, 0.05, parts)
    (staging / "training.parquet").replace(out)
    return {"rows": counts["rows"], "quarantined_by_reason": counts["quarantined_by_reason"]}


def rows_digest(path: Path, canonical: bool = False) -> str:
    """sha256 of `plan_id \\x1f input \\x1f target \\n` over the rows in plan_id order; `canonical`
    re-renders the JSON first (json.loads, then json.dumps with sort_keys)."""
    import pyarrow.parquet as pq

    def norm(text: str) -> str:
        return json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False) if canonical else text

    digest, last = hashlib.sha256(), None
    source = pq.ParquetFile(path)
    for index in range(source.num_row_groups):
        group = source.read_row_group(index, columns=["plan_id", "input", "target"])
        for plan_id, input_, target in zip(*(group[c].to_pylist() for c in ("plan_id", "input", "target"))):
            if last is not None and not last < plan_id:
                raise AssertionError(f"{path}: rows not in plan_id order at {plan_id}")
            last = plan_id
            digest.update(f"{plan_id}\x1f{norm(input_)}\x1f{norm(target)}\n".encode())
    return digest.hexdigest()


RUNNERS = {"build": build_way, "pandas": pandas_peer, "duckdb": duckdb_peer}


def run_way(way: str, dsn: str, window: Window, out: Path, parts: int = 2) -> dict:
    kwargs = {"parts": parts} if way == "build" else {}
    return RUNNERS[way](dsn, window, out, **kwargs)


def child(way: str, dsn: str, parts: int) -> None:
    """One way in this process: time, peak RSS (taken before the digests), rows, digests."""
    import resource

    with tempfile.TemporaryDirectory(prefix=f"peers-{way}-") as tmp:
        out = Path(tmp) / "rows.parquet"
        started = time.perf_counter()
        result = run_way(way, dsn, WINDOW, out, parts)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({**result, "way": way, "seconds": seconds, "peak_rss_mb": peak,
                          "digest": rows_digest(out), "canonical_digest": rows_digest(out, canonical=True)}))


def measure(way: str, dsn: str, parts: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.dataset_peers", "--child", way, "--dsn", dsn,
                          "--parts", str(parts)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{way} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bench_dsn() -> str:
    from include.core.config import settings
    from include.core.local_postgres import ensure_database

    return ensure_database(f"{settings().events_dsn.rsplit('/', 1)[0]}/{DATABASE}")


def _event_count(dsn: str) -> int:
    from include.events.db import connect

    with connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('exp.events')").fetchone()[0] is None:
            return 0
        return conn.execute("SELECT count(*) FROM exp.events").fetchone()[0]


def main(argv: list[str] | None = None) -> int:
    from include.core.config import settings

    parser = argparse.ArgumentParser(prog="python -m bench.dataset_peers", description=__doc__.split("\n")[0])
    parser.add_argument("--households", type=int, default=48_000, help="48k households x 8 weeks ~ 1M events")
    parser.add_argument("--weeks", type=int, default=8)
    parser.add_argument("--parts", type=int, default=settings().extract_parallelism)
    parser.add_argument("--reuse", action="store_true", help=f"keep the {DATABASE} database if it has events")
    parser.add_argument("--ways", default=",".join(WAYS), help="comma-separated subset of " + ",".join(WAYS))
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.dsn, args.parts)
        return 0

    from include.events import generate

    dsn = _bench_dsn()
    print(f"# dataset build vs its peers on {dsn}, window {WINDOW.start:%Y-%m-%d}..{WINDOW.end:%Y-%m-%d}")
    if not (args.reuse and _event_count(dsn)):
        started = time.perf_counter()
        generate.generate_and_load(dsn, args.households, args.weeks, seed=7, end=END, dirty_share=0.02, reset=True)
        print(f"generated in {time.perf_counter() - started:.1f}s")
    print(f"{_event_count(dsn):,} events; each way in a child process of its own, one after the other")
    ways = [w for w in WAYS if w in args.ways.split(",")]
    if "build" not in ways:
        ways.insert(0, "build")
    results = {way: measure(way, dsn, args.parts) for way in ways}
    build = results["build"]
    print(f"{'way':<8} {'seconds':>8} {'peak RSS MB':>12} {'rows':>9} {'digest match':>13} "
          f"{'time / build':>13} {'RSS / build':>12} {'of it, fetching the sources':>28}")
    for way, r in results.items():
        exact = r["digest"] == build["digest"]
        canonical = r["canonical_digest"] == build["canonical_digest"]
        match = "build" if way == "build" else ("exact" if exact else "canonical" if canonical else "NO")
        if r["quarantined_by_reason"] != build["quarantined_by_reason"]:
            match += " (quarantine differs)"
        print(f"{way:<8} {r['seconds']:>8.1f} {r['peak_rss_mb']:>12,.0f} {r['rows']:>9,} {match:>13} "
              f"{r['seconds'] / build['seconds']:>12.2f}x {r['peak_rss_mb'] / build['peak_rss_mb']:>11.2f}x "
              f"{(format(r['fetch_seconds'], '.1f') + ' s') if 'fetch_seconds' in r else '':>28}")
    print(f"digest (sha256 of plan_id, input, target in plan_id order): build {build['digest'][:16]}; "
          f"quarantine by reason {build['quarantined_by_reason']}")
    ok = all(r["digest"] == build["digest"] and r["quarantined_by_reason"] == build["quarantined_by_reason"]
             for r in results.values())
    ahead = all(build["seconds"] < r["seconds"] and build["peak_rss_mb"] < r["peak_rss_mb"]
                for way, r in results.items() if way != "build")
    print(f"same rows: {'yes' if ok else 'NO'}; the build ahead of every peer on time and memory "
          f"(goal): {'yes' if ahead else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

-- Source tables of docs/contracts.md (source schema; a contract: columns must not change) plus the
-- indexes the dataset extraction relies on. Idempotent: safe to run on every start.
CREATE SCHEMA IF NOT EXISTS exp;
CREATE SCHEMA IF NOT EXISTS app;
CREATE SCHEMA IF NOT EXISTS sim;

CREATE TABLE IF NOT EXISTS exp.events (
    event_id    uuid        NOT NULL,  -- NOT unique: a stream may deliver an event twice
    event_type  text        NOT NULL,
    unit_id     uuid,                  -- the household
    "timestamp" timestamptz NOT NULL,
    context     jsonb,                 -- {workflow_type, mode, policy_version_id}
    payload     jsonb
);

CREATE TABLE IF NOT EXISTS app.households (
    household_id uuid        NOT NULL,
    valid_from   timestamptz NOT NULL,
    size         int,
    preferences  jsonb,
    restrictions jsonb,
    PRIMARY KEY (household_id, valid_from)
);

CREATE TABLE IF NOT EXISTS app.pantry_snapshots (
    household_id uuid        NOT NULL,
    valid_from   timestamptz NOT NULL,
    items        jsonb,
    PRIMARY KEY (household_id, valid_from)
);

CREATE TABLE IF NOT EXISTS app.constraints (
    household_id         uuid        NOT NULL,
    valid_from           timestamptz NOT NULL,
    budget               numeric,
    max_prep_time        int,
    excluded_ingredients jsonb,
    PRIMARY KEY (household_id, valid_from)
);

CREATE TABLE IF NOT EXISTS app.recipes (
    recipe_id   uuid PRIMARY KEY,
    name        text,
    cuisine     text,
    prep_time   int,
    cost        numeric,
    ingredients jsonb,
    tags        jsonb
);

CREATE TABLE IF NOT EXISTS app.plan_edits (
    edit_id      uuid PRIMARY KEY,
    plan_id      uuid,
    household_id uuid,
    "timestamp"  timestamptz,
    edit_type    text,   -- swap_meal | adjust_servings | remove_meal
    details      jsonb   -- {day, from, to, servings}
);

-- The generator's ground truth; never read by the dataset code (evaluation's oracle ceiling).
CREATE TABLE IF NOT EXISTS sim.keep_truth (
    plan_id   uuid NOT NULL,
    recipe_id uuid NOT NULL,
    p_keep    double precision NOT NULL,
    PRIMARY KEY (plan_id, recipe_id)
);

-- Window scans by type and time; per-plan lookups (generation before acceptance, earlier
-- acceptances); per-household lookups (previous accepted plan); edits of a plan in time order.
CREATE INDEX IF NOT EXISTS events_type_time_idx ON exp.events (event_type, "timestamp");
-- (event_id last: the lookups order by time then event_id, so the index order serves LIMIT 1.)
CREATE INDEX IF NOT EXISTS events_plan_idx ON exp.events ((payload ->> 'plan_id'), event_type, "timestamp", event_id);
CREATE INDEX IF NOT EXISTS events_unit_type_time_idx ON exp.events (unit_id, event_type, "timestamp", event_id);
CREATE INDEX IF NOT EXISTS events_time_idx ON exp.events ("timestamp");
CREATE INDEX IF NOT EXISTS plan_edits_plan_time_idx ON app.plan_edits (plan_id, "timestamp");

-- Candidates of the window [start, end): one record per first acceptance of a plan and one per
-- malformed plan event. `reject_reason` is NULL for a training row, else why it goes to
-- quarantine (the first failing rule wins). The dataset rules (docs/contracts.md):
--   * events collapse by event_id (a stream may deliver one twice);
--   * a row needs the plan's FIRST acceptance in the window: an earlier acceptance, inside
--     or before the window, makes this one a duplicate (no row, counted by the caller);
--   * plan time = the latest plan_generated of the plan_id at or before the acceptance;
--   * household, pantry, constraints = the version with the greatest valid_from <= plan time;
--   * previous_plan = the household's latest first-acceptance strictly before the plan time;
--   * user_edits = the plan's edits with timestamp <= acceptance, in time order.
-- Per-plan lookups are index probes (LIMIT 1 on an index whose order matches the ORDER BY)
-- in one nested loop over the plans in plan_id order; meals are checked against one hashed
-- set of recipe ids (a cheap semi-join per plan; the detailed aggregate only for a plan that
-- fails it); each jsonb value is rendered as text once; never a query per event. Output: the training-row candidates in plan_id
-- order (C collation), then the malformed events. The wide rows are never sorted: the order
-- comes from `accepted` through the nested loop, and the caller (build.extract_partition)
-- checks it and runs this with parallel query off, so an Append can only read its branches
-- in turn.
-- Parameters are session settings the caller binds first (build.bind_settings), so this
-- statement has no bind parameters and the driver can stream it with COPY instead of
-- buffering the whole result: planner.window_start / planner.window_end (timestamptz),
-- planner.plan_id_from / planner.plan_id_to (plan_id text range in C collation, '' =
-- unbounded; callers run ranges concurrently and concatenate them in plan_id order; events
-- without a plan_id belong to the first range). The session time zone must be UTC:
-- timestamps inside JSON render in it.
WITH params AS MATERIALIZED (
    SELECT current_setting('planner.window_start')::timestamptz AS window_start,
           current_setting('planner.window_end')::timestamptz AS window_end,
           current_setting('planner.plan_id_from') AS plan_id_from,
           current_setting('planner.plan_id_to') AS plan_id_to
),
-- Sorted on the stored jsonb, not its text: ties between deliveries of one event_id are rare,
-- and jsonb compares without rendering every payload as text first.
window_events AS MATERIALIZED (
    SELECT DISTINCT ON (e.event_id)
           e.event_id, e.event_type, e.unit_id, e."timestamp", e.context, e.payload,
           e.payload ->> 'plan_id' AS plan_id,
           coalesce((e.payload ->> 'plan_id') ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$', false)
               AS has_plan_id,
           -- a non-empty list; its elements are checked per plan in `joined`
           coalesce(jsonb_typeof(e.payload -> 'plan' -> 'meals') = 'array'
                    AND jsonb_array_length(e.payload -> 'plan' -> 'meals') > 0, false) AS has_meals
    FROM exp.events e CROSS JOIN params
    WHERE e.event_type IN ('plan_generated', 'plan_accepted')
      AND e."timestamp" >= params.window_start AND e."timestamp" < params.window_end
      AND CASE WHEN e.payload ->> 'plan_id' IS NULL THEN params.plan_id_from = ''
               ELSE (e.payload ->> 'plan_id') COLLATE "C" >= params.plan_id_from
                    AND (params.plan_id_to = '' OR (e.payload ->> 'plan_id') COLLATE "C" < params.plan_id_to) END
    ORDER BY e.event_id, e."timestamp", e.event_type, e.payload
),
-- In plan_id order (C collation): every join below is a per-plan nested loop that keeps it,
-- so the wide rows are never sorted.
accepted AS (
    SELECT DISTINCT ON (c.plan_id COLLATE "C") c.*
    FROM window_events c CROSS JOIN params
    WHERE c.event_type = 'plan_accepted' AND c.has_plan_id
      AND NOT EXISTS (
          SELECT 1 FROM exp.events p
          WHERE (p.payload ->> 'plan_id') = c.plan_id AND p.event_type = 'plan_accepted'
            AND p."timestamp" < params.window_start)
    ORDER BY c.plan_id COLLATE "C", c."timestamp", c.event_id
),
joined AS (
    SELECT
        a.event_id, a.event_type, a.plan_id, a.unit_id, a."timestamp" AS accepted_at, a.payload, a.has_meals,
        gen.generated_at, gen.has_meals AS generated_has_meals,
        coalesce(gen.context, a.context) AS context,
        gen.payload -> 'plan' AS proposed_plan,
        a.payload -> 'plan' AS accepted_plan,
        hh.size, hh.preferences, hh.restrictions, hh.valid_from AS household_valid_from,
        pan.items, pan.valid_from AS pantry_valid_from,
        con.budget, con.max_prep_time, con.excluded_ingredients, con.valid_from AS constraints_valid_from,
        prev.previous_plan,
        ed.user_edits AS edits_text, ed.n_user_edits AS edits_count
    FROM accepted a
    LEFT JOIN LATERAL (
        SELECT g."timestamp" AS generated_at, g.context, g.payload,
               coalesce(jsonb_typeof(g.payload -> 'plan' -> 'meals') = 'array'
                        AND jsonb_array_length(g.payload -> 'plan' -> 'meals') > 0, false) AS has_meals
        FROM exp.events g
        WHERE (g.payload ->> 'plan_id') = a.plan_id AND g.event_type = 'plan_generated'
          AND g."timestamp" <= a."timestamp"
        ORDER BY g."timestamp" DESC, g.event_id DESC
        LIMIT 1
    ) gen ON true
    LEFT JOIN LATERAL (
        SELECT h.size, h.preferences, h.restrictions, h.valid_from
        FROM app.households h
        WHERE h.household_id = a.unit_id AND h.valid_from <= gen.generated_at
        ORDER BY h.valid_from DESC LIMIT 1
    ) hh ON true
    LEFT JOIN LATERAL (
        SELECT p.items, p.valid_from
        FROM app.pantry_snapshots p
        WHERE p.household_id = a.unit_id AND p.valid_from <= gen.generated_at
        ORDER BY p.valid_from DESC LIMIT 1
    ) pan ON true
    LEFT JOIN LATERAL (
        SELECT c.budget, c.max_prep_time, c.excluded_ingredients, c.valid_from
        FROM app.constraints c
        WHERE c.household_id = a.unit_id AND c.valid_from <= gen.generated_at
        ORDER BY c.valid_from DESC LIMIT 1
    ) con ON true
    LEFT JOIN LATERAL (
        SELECT jsonb_build_object('plan_id', p.payload ->> 'plan_id', 'accepted_at', p."timestamp",
                                  'meals', p.payload -> 'plan' -> 'meals') AS previous_plan
        FROM exp.events p
        WHERE p.unit_id = a.unit_id AND p.event_type = 'plan_accepted' AND p."timestamp" < gen.generated_at
          AND (p.payload ->> 'plan_id') <> a.plan_id
          AND jsonb_typeof(p.payload -> 'plan' -> 'meals') = 'array'
          AND NOT EXISTS (  -- only a plan's first acceptance accepts it
              SELECT 1 FROM exp.events q
              WHERE (q.payload ->> 'plan_id') = (p.payload ->> 'plan_id') AND q.event_type = 'plan_accepted'
                AND q."timestamp" < p."timestamp")
        ORDER BY p."timestamp" DESC, p.event_id DESC
        LIMIT 1
    ) prev ON true
    LEFT JOIN LATERAL (
        -- The text of jsonb_agg(...) without building the array first: '[' elements ', ' ']'
        SELECT '[' || string_agg((coalesce(e.details, '{}'::jsonb)
                                  || jsonb_build_object('type', e.edit_type, 'timestamp', e."timestamp"))::text,
                                 ', ' ORDER BY e."timestamp", e.edit_id) || ']' AS user_edits,
               count(*) AS n_user_edits
        FROM app.plan_edits e
        WHERE e.plan_id = a.plan_id::uuid AND e."timestamp" <= a."timestamp"
    ) ed ON true
),
-- Every meal of both plans of a plan that is not clean: a meal that is not an object with a
-- string recipe_id makes its plan invalid; a recipe_id not in app.recipes makes it unknown.
meals AS (
    SELECT j.*,
           (k.problems ->> 'accepted_malformed')::boolean AS accepted_malformed,
           (k.problems ->> 'proposed_malformed')::boolean AS proposed_malformed,
           k.problems ->> 'unknown_recipe_ids' AS unknown_recipe_ids
    FROM joined j
    CROSS JOIN LATERAL (
        -- A semi-join per plan that stops at the first bad meal; only a plan with one gets the
        -- detailed aggregate. OFFSET 0 keeps this subquery (and so each check) evaluated once.
        SELECT CASE WHEN (j.has_meals AND EXISTS (
                              SELECT 1 FROM jsonb_array_elements(j.accepted_plan -> 'meals') x
                              WHERE jsonb_typeof(x -> 'recipe_id') IS DISTINCT FROM 'string'
                                 OR lower(x ->> 'recipe_id') NOT IN (SELECT r.recipe_id::text FROM app.recipes r)))
                      OR (j.generated_has_meals AND EXISTS (
                              SELECT 1 FROM jsonb_array_elements(j.proposed_plan -> 'meals') x
                              WHERE jsonb_typeof(x -> 'recipe_id') IS DISTINCT FROM 'string'
                                 OR lower(x ->> 'recipe_id') NOT IN (SELECT r.recipe_id::text FROM app.recipes r)))
               THEN (
            SELECT jsonb_build_object(
                       'accepted_malformed', bool_or(m.side = 'accepted' AND m.recipe_id IS NULL),
                       'proposed_malformed', bool_or(m.side = 'proposed' AND m.recipe_id IS NULL),
                       'unknown_recipe_ids', string_agg(DISTINCT m.recipe_id, ',' ORDER BY m.recipe_id)
                                                 FILTER (WHERE m.recipe_id IS NOT NULL))
            FROM (
                SELECT 'proposed' AS side,
                       CASE WHEN jsonb_typeof(x -> 'recipe_id') = 'string' THEN lower(x ->> 'recipe_id') END AS recipe_id
                FROM jsonb_array_elements(CASE WHEN j.generated_has_meals THEN j.proposed_plan -> 'meals' END) x
                UNION ALL
                SELECT 'accepted',
                       CASE WHEN jsonb_typeof(x -> 'recipe_id') = 'string' THEN lower(x ->> 'recipe_id') END
                FROM jsonb_array_elements(CASE WHEN j.has_meals THEN j.accepted_plan -> 'meals' END) x
            ) m
            WHERE m.recipe_id IS NULL OR m.recipe_id NOT IN (SELECT r.recipe_id::text FROM app.recipes r)
        ) END AS problems
        OFFSET 0
    ) k
),
judged AS (
    SELECT j.*,
           coalesce(j.edits_text, '[]') AS user_edits,
           coalesce(j.edits_count, 0) AS n_user_edits,
           CASE
               WHEN NOT j.has_meals OR j.accepted_malformed THEN 'invalid_meals'
               WHEN j.generated_at IS NULL THEN 'no_generation_before_acceptance'
               WHEN NOT j.generated_has_meals OR j.proposed_malformed THEN 'invalid_generated_plan'
               WHEN j.unknown_recipe_ids IS NOT NULL THEN 'unknown_recipe_id'
               WHEN j.household_valid_from IS NULL OR j.pantry_valid_from IS NULL OR j.constraints_valid_from IS NULL
               THEN 'no_household_state'
           END AS reject_reason,
           CASE
               WHEN j.accepted_malformed OR j.proposed_malformed
               THEN 'a meal is not an object with a string recipe_id'
               WHEN j.unknown_recipe_ids IS NOT NULL THEN 'not in app.recipes: ' || j.unknown_recipe_ids
               WHEN j.generated_at IS NOT NULL
                    AND (j.household_valid_from IS NULL OR j.pantry_valid_from IS NULL OR j.constraints_valid_from IS NULL)
               THEN 'no state as of plan time for: ' || concat_ws(',',
                   CASE WHEN j.household_valid_from IS NULL THEN 'household' END,
                   CASE WHEN j.pantry_valid_from IS NULL THEN 'pantry' END,
                   CASE WHEN j.constraints_valid_from IS NULL THEN 'constraints' END)
           END AS reject_detail
    FROM meals j
)
(
    SELECT
        s.plan_id,
        s.unit_id::text AS household_id,
        s.generated_at,
        s.accepted_at,
        -- input and target are the text json_build_object would make ('{"key" : value, ...}'),
        -- assembled by concatenation so that proposed_plan and user_edits are rendered once.
        '{"household" : ' || json_build_object('id', s.unit_id, 'size', s.size,
                                               'preferences', coalesce(s.preferences, '[]'::jsonb),
                                               'restrictions', coalesce(s.restrictions, '[]'::jsonb))::text
            || ', "pantry" : ' || json_build_object('items', coalesce(s.items, '[]'::jsonb))::text
            || ', "constraints" : ' || json_build_object('budget', s.budget, 'max_prep_time', s.max_prep_time,
                                                         'excluded_ingredients', coalesce(s.excluded_ingredients, '[]'::jsonb))::text
            || ', "workflow_type" : ' || coalesce(to_json(s.context ->> 'workflow_type')::text, 'null')
            || ', "mode" : ' || coalesce(to_json(s.context ->> 'mode')::text, 'null')
            || ', "previous_plan" : ' || coalesce(s.previous_plan::text, 'null')
            || ', "proposed_plan" : ' || coalesce(pt.proposed_plan_text, 'null') || '}' AS input,
        '{"accepted_plan" : ' || coalesce(s.accepted_plan::text, 'null')
            || ', "user_edits" : ' || s.user_edits || '}' AS target,
        json_build_object('timestamp', s.generated_at, 'accepted_at', s.accepted_at,
                           'policy_version_id', s.context ->> 'policy_version_id')::text AS metadata,
        pt.proposed_plan_text AS proposed_plan,
        s.context ->> 'workflow_type' AS workflow_type,
        s.context ->> 'mode' AS mode,
        s.context ->> 'policy_version_id' AS policy_version_id,
        s.size AS household_size,
        jsonb_array_length(coalesce(s.preferences, '[]'::jsonb)) AS n_preferences,
        jsonb_array_length(coalesce(s.restrictions, '[]'::jsonb)) AS n_restrictions,
        jsonb_array_length(coalesce(s.items, '[]'::jsonb)) AS n_pantry_items,
        s.budget::float8 AS budget,
        s.max_prep_time,
        jsonb_array_length(coalesce(s.excluded_ingredients, '[]'::jsonb)) AS n_excluded_ingredients,
        CASE WHEN s.generated_has_meals THEN jsonb_array_length(s.proposed_plan -> 'meals') END AS n_proposed_meals,
        CASE WHEN s.has_meals THEN jsonb_array_length(s.accepted_plan -> 'meals') END AS n_accepted_meals,
        s.n_user_edits,
        s.previous_plan IS NOT NULL AS has_previous_plan,
        s.household_valid_from,
        s.pantry_valid_from,
        s.constraints_valid_from,
        s.event_id::text AS event_id,
        s.event_type,
        s.accepted_at AS event_time,
        s.reject_reason,
        s.reject_detail,
        CASE WHEN s.reject_reason IS NOT NULL THEN s.payload::text END AS payload
    FROM judged s
    -- rendered once for two columns; OFFSET 0 keeps the planner from copying the expression into both
    CROSS JOIN LATERAL (SELECT s.proposed_plan::text AS proposed_plan_text OFFSET 0) pt
    ORDER BY s.plan_id COLLATE "C"  -- already in this order (see `accepted`): no sort
)
UNION ALL
(
    -- Malformed plan events of the window: no usable plan_id, or a generated plan without meals.
    SELECT
        c.plan_id, c.unit_id::text,
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,  -- the 23 row columns
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        c.event_id::text, c.event_type, c."timestamp",
        CASE WHEN NOT c.has_plan_id THEN 'invalid_plan_id' ELSE 'invalid_meals' END,
        CASE WHEN NOT c.has_plan_id THEN 'payload.plan_id missing or not a UUID'
             ELSE 'payload.plan.meals is not a non-empty list' END,
        c.payload::text
    FROM window_events c
    WHERE NOT c.has_plan_id OR (c.event_type = 'plan_generated' AND NOT c.has_meals)
)

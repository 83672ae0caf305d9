-- Counts of the window [$1, $2) for the dataset summary: events per type (raw deliveries and
-- distinct event_ids), acceptances with a usable plan_id, and plans generated in the window
-- but never accepted by its end. Deliveries collapse per (type, event_id) in one hash
-- aggregate over narrow rows; the UUID check runs on acceptances only (the only type it is
-- reported for: events_with_plan_id is 0 for the others).
WITH per_event AS (
    SELECT e.event_type, e.event_id, count(*) AS deliveries,
           bool_or(e.event_type = 'plan_accepted'
                   AND e.payload ->> 'plan_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$')
               AS with_plan_id
    FROM exp.events e
    WHERE e."timestamp" >= $1 AND e."timestamp" < $2
    GROUP BY e.event_type, e.event_id
),
per_type AS (
    SELECT event_type, sum(deliveries)::bigint AS deliveries, count(*) AS events,
           count(*) FILTER (WHERE with_plan_id) AS events_with_plan_id
    FROM per_event
    GROUP BY event_type
),
never_accepted AS (
    SELECT count(DISTINCT g.payload ->> 'plan_id') AS plans
    FROM exp.events g
    WHERE g.event_type = 'plan_generated' AND g."timestamp" >= $1 AND g."timestamp" < $2
      AND g.payload ->> 'plan_id' IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM exp.events a
          WHERE (a.payload ->> 'plan_id') = (g.payload ->> 'plan_id') AND a.event_type = 'plan_accepted'
            AND a."timestamp" < $2)
)
SELECT p.event_type, p.deliveries, p.events, p.events_with_plan_id, n.plans AS generated_never_accepted
FROM per_type p CROSS JOIN never_accepted n
ORDER BY p.event_type COLLATE "C"

-- Counts of the window [$1, $2) for the dataset summary: events per type (raw deliveries and
-- distinct event_ids), acceptances with a usable plan_id, and plans generated in the window
-- but never accepted by its end.
WITH per_type AS (
    SELECT e.event_type,
           count(*) AS deliveries,
           count(DISTINCT e.event_id) AS events,
           count(DISTINCT e.event_id) FILTER (
               WHERE e.payload ->> 'plan_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
           ) AS events_with_plan_id
    FROM exp.events e
    WHERE e."timestamp" >= $1 AND e."timestamp" < $2
    GROUP BY e.event_type
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

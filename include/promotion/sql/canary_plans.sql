-- Plans generated in [$1, $2) and how many of them were accepted by $2, per arm: the arm is the
-- context.policy_version_id of the plan's first generation in the window (deliveries of one event
-- collapse: a plan counts once). The dataset code builds the rows of the accepted plans; this
-- counts the plans it makes no row for (never accepted), for the acceptance rate.
WITH generated AS (
    SELECT DISTINCT ON (g.payload ->> 'plan_id')
           g.payload ->> 'plan_id' AS plan_id, g.context ->> 'policy_version_id' AS policy_version_id
    FROM exp.events g
    WHERE g.event_type = 'plan_generated' AND g."timestamp" >= $1 AND g."timestamp" < $2
      AND g.payload ->> 'plan_id' IS NOT NULL
    ORDER BY g.payload ->> 'plan_id', g."timestamp", g.event_id
)
SELECT g.policy_version_id, count(*) AS plans_generated,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM exp.events a
           WHERE a.event_type = 'plan_accepted' AND (a.payload ->> 'plan_id') = g.plan_id AND a."timestamp" < $2))
           AS plans_accepted
FROM generated g
GROUP BY g.policy_version_id
ORDER BY g.policy_version_id COLLATE "C"

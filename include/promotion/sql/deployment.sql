-- The deployment of one model: the champion row and, while one runs, its canary.
SELECT d.version, d.previous_version, d.model_uri, d.decision_id, d.updated_at,
       c.canary_id, c.canary_version, c.canary_model_uri, c.canary_policy_version_id, c.share, c.experiment_id,
       c.started_at, c.champion_version, c.champion_policy_version_id
FROM ml.model_deployments d
LEFT JOIN ml.canaries c ON c.model_name = d.model_name AND c.state = 'running'
WHERE d.model_name = %s

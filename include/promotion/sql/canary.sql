-- Canary experiments, their daily looks, and what promotion records about them (docs/contracts.md,
-- canary). Idempotent: every statement may run again; it runs after schema.sql.

-- Two outcomes of a promotion decision came with the canary: a passed gate that starts a canary, and a
-- canary that ends without promoting its version. The check is replaced only while it lacks them.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'ml.promotion_decisions'::regclass AND conname = 'promotion_decisions_outcome_check'
                     AND pg_get_constraintdef(oid) LIKE '%canary_rolled_back%') THEN
        ALTER TABLE ml.promotion_decisions DROP CONSTRAINT IF EXISTS promotion_decisions_outcome_check;
        ALTER TABLE ml.promotion_decisions ADD CONSTRAINT promotion_decisions_outcome_check CHECK (outcome IN (
            'promoted', 'rolled_back', 'rejected', 'refused', 'not_approved', 'dry_run', 'no_op',
            'canary_started', 'canary_rolled_back'));
    END IF;
END
$$;
-- The canary a decision started or ended (null for the others).
ALTER TABLE ml.promotion_decisions ADD COLUMN IF NOT EXISTS canary_id bigint;

-- One row per canary experiment: the two arms as they were when it started, and how it ended.
CREATE TABLE IF NOT EXISTS ml.canaries (
    canary_id                  bigserial   PRIMARY KEY,
    model_name                 text        NOT NULL,
    champion_version           text        NOT NULL,
    canary_version             text        NOT NULL,
    champion_model_uri         text        NOT NULL,
    canary_model_uri           text        NOT NULL,
    champion_policy_version_id text        NOT NULL,
    canary_policy_version_id   text        NOT NULL,
    experiment_id              text        NOT NULL,
    share                      double precision NOT NULL CHECK (share > 0 AND share < 1),
    policy                     jsonb       NOT NULL,
    state                      text        NOT NULL DEFAULT 'running'
                                           CHECK (state IN ('running', 'promoted', 'rolled_back', 'abandoned')),
    started_at                 timestamptz NOT NULL DEFAULT now(),
    ended_at                   timestamptz,
    end_reason                 text,
    start_decision_id          bigint      NOT NULL REFERENCES ml.promotion_decisions (decision_id),
    end_decision_id            bigint      REFERENCES ml.promotion_decisions (decision_id),
    mlflow_run_id              text
);
-- At most one canary of a model runs at a time (what the serving side routes between).
CREATE UNIQUE INDEX IF NOT EXISTS canaries_one_running ON ml.canaries (model_name) WHERE state = 'running';

-- Every look planner_online_eval took at a canary: the per-arm figures since the start and the verdict.
CREATE TABLE IF NOT EXISTS ml.canary_looks (
    look_id         bigserial   PRIMARY KEY,
    canary_id       bigint      NOT NULL REFERENCES ml.canaries (canary_id),
    look_key        text        NOT NULL,
    day             integer     NOT NULL,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    action          text        NOT NULL CHECK (action IN ('promote', 'continue', 'rollback')),
    reason          text        NOT NULL,
    statistic       double precision NOT NULL,
    p_value         double precision NOT NULL,
    lift            double precision NOT NULL,
    ci_low          double precision NOT NULL,
    ci_high         double precision NOT NULL,
    arms            jsonb       NOT NULL,
    other           jsonb       NOT NULL DEFAULT '{}',
    airflow_dag_id  text,
    airflow_run_id  text,
    looked_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS canary_looks_key ON ml.canary_looks (canary_id, look_key);
CREATE INDEX IF NOT EXISTS canary_looks_canary ON ml.canary_looks (canary_id, look_id);

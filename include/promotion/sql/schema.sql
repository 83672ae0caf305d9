-- Promotion history and the current deployment (docs/contracts.md, promotion records).
-- Idempotent: every statement may run again.
CREATE SCHEMA IF NOT EXISTS ml;

-- Every decision, passed or not: what was asked, what was decided and why.
CREATE TABLE IF NOT EXISTS ml.promotion_decisions (
    decision_id        bigserial PRIMARY KEY,
    model_name         text        NOT NULL,
    version            text        NOT NULL,
    action             text        NOT NULL CHECK (action IN ('promote', 'rollback')),
    outcome            text        NOT NULL CHECK (outcome IN ('promoted', 'rolled_back', 'rejected', 'refused',
                                                             'not_approved', 'dry_run', 'no_op')),
    previous_champion  text,
    reasons            jsonb       NOT NULL DEFAULT '[]',
    metrics            jsonb       NOT NULL DEFAULT '{}',
    policy             jsonb       NOT NULL DEFAULT '{}',
    approver           text,
    evaluation_run_id  text,
    airflow_dag_id     text,
    airflow_run_id     text,
    decided_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS promotion_decisions_model_time ON ml.promotion_decisions (model_name, decided_at);
-- A decision that moves the champion is committed 'pending' before the alias moves and made 'complete' with
-- its deployment and history rows after; 'abandoned' when the champion moved elsewhere in between. plan_key
-- names the plan and task that wrote it, so that a retry finds its own record. Added after the first
-- release: existing databases get the columns here, their rows stay 'complete'.
ALTER TABLE ml.promotion_decisions ADD COLUMN IF NOT EXISTS state text NOT NULL DEFAULT 'complete'
    CHECK (state IN ('pending', 'complete', 'abandoned'));
ALTER TABLE ml.promotion_decisions ADD COLUMN IF NOT EXISTS plan_key text;
CREATE UNIQUE INDEX IF NOT EXISTS promotion_decisions_plan ON ml.promotion_decisions (model_name, plan_key)
    WHERE state <> 'abandoned';

-- The champion the serving side should load, one row per model.
CREATE TABLE IF NOT EXISTS ml.model_deployments (
    model_name         text        PRIMARY KEY,
    version            text        NOT NULL,
    previous_version   text,
    model_uri          text        NOT NULL,
    decision_id        bigint      NOT NULL REFERENCES ml.promotion_decisions (decision_id),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Every change of champion, in order (what rollback walks back through).
CREATE TABLE IF NOT EXISTS ml.model_version_history (
    history_id         bigserial   PRIMARY KEY,
    model_name         text        NOT NULL,
    version            text        NOT NULL,
    previous_version   text,
    change             text        NOT NULL CHECK (change IN ('promoted', 'rolled_back')),
    decision_id        bigint      NOT NULL REFERENCES ml.promotion_decisions (decision_id),
    changed_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS model_version_history_model ON ml.model_version_history (model_name, history_id);
CREATE UNIQUE INDEX IF NOT EXISTS model_version_history_decision ON ml.model_version_history (decision_id);

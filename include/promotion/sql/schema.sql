-- Promotion history and the current deployment (seed 002's domain configuration role).
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

-- One PostgreSQL for the stack: Airflow's metadata, the product events (+ the ml schema), MLflow's
-- store and its users. Run once by the postgres image, as the superuser, on an empty data
-- directory (docker-entrypoint-initdb.d); the roles' passwords come from the postgres service's
-- environment (.env). Every other service signs in as one of these roles, never as the superuser:
--
--   planner_airflow        owns database airflow (Airflow's metadata, Celery's results)
--   planner_events_owner   owns database planner_events and the source schemas exp, app, sim
--                          (their DDL, what writes the events: airflow-init, the generator)
--   planner_events_reader  (no login) reads exp, app, sim: what the dataset and evaluation phases need
--   planner_ml_writer      (no login) owns schema ml: what promotion writes (decisions, history)
--   planner_tasks          the tasks' login (connection events_db): a member of the reader and of
--                          the ml writer; it cannot change the events or reach another database
--   planner_mlflow         owns databases mlflow (backend store) and mlflow_auth (MLflow's users)
\set ON_ERROR_STOP on
\getenv airflow_db_password AIRFLOW_DB_PASSWORD
\getenv events_owner_password EVENTS_OWNER_PASSWORD
\getenv tasks_db_password TASKS_DB_PASSWORD
\getenv mlflow_db_password MLFLOW_DB_PASSWORD

CREATE ROLE planner_airflow LOGIN PASSWORD :'airflow_db_password';
CREATE ROLE planner_events_owner LOGIN PASSWORD :'events_owner_password';
CREATE ROLE planner_events_reader NOLOGIN;
CREATE ROLE planner_ml_writer NOLOGIN;
CREATE ROLE planner_tasks LOGIN PASSWORD :'tasks_db_password' IN ROLE planner_events_reader, planner_ml_writer;
CREATE ROLE planner_mlflow LOGIN PASSWORD :'mlflow_db_password';

CREATE DATABASE airflow OWNER planner_airflow;
CREATE DATABASE planner_events OWNER planner_events_owner;
CREATE DATABASE mlflow OWNER planner_mlflow;
CREATE DATABASE mlflow_auth OWNER planner_mlflow;
-- Nobody but a database's owner (and whom it is granted to below) connects to it.
REVOKE ALL ON DATABASE airflow, planner_events, mlflow, mlflow_auth FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE planner_events TO planner_events_reader, planner_ml_writer;
-- `CREATE SCHEMA IF NOT EXISTS ml` (promotion makes its schema idempotently) checks this privilege
-- before it finds the schema; the only schema the tasks own is ml.
GRANT CREATE ON DATABASE planner_events TO planner_ml_writer;

\connect planner_events
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SET ROLE planner_events_owner;
CREATE SCHEMA exp;
CREATE SCHEMA app;
CREATE SCHEMA sim;
GRANT USAGE ON SCHEMA exp, app, sim TO planner_events_reader;
-- The tables planner_events_owner creates there later (include/events/schema.sql) are readable.
ALTER DEFAULT PRIVILEGES IN SCHEMA exp, app, sim GRANT SELECT ON TABLES TO planner_events_reader;
RESET ROLE;
CREATE SCHEMA ml AUTHORIZATION planner_ml_writer;

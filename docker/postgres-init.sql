-- One PostgreSQL for the stack: Airflow's metadata, the product events (+ the ml schema), MLflow's store.
CREATE DATABASE airflow;
CREATE DATABASE planner_events;
CREATE DATABASE mlflow;

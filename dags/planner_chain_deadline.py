"""planner_chain_deadline: the Airflow DAG that watches the weekly chain's deadline and alerts when no promotion
decision was made in time (the logic and its doc: include/alerts/chain_deadline.py). Scheduled only when alerts
are configured (PLANNER_ALERT_EMAIL_TO)."""
from include.alerts.chain_deadline import chain_deadline_dag

chain_deadline_dag()

"""The compose stack's Airflow cluster policy (mounted as /opt/airflow/config/airflow_local_settings.py
in every Airflow container, so the dag-processor and the Celery workers, which both parse the DAG
files, apply it alike).

Who approves is the deployment's choice, not the DAG's: every human-in-the-loop task that names
no respondents of its own (promotion's `await_approval`) is assigned to the users of
PLANNER_APPROVERS (comma-separated user ids; the simple auth manager's id is the username). With
`[core] simple_auth_manager_all_admins` off, Airflow then refuses (403) an answer from anyone
else, the admin included. Unset or empty: nothing is assigned, and any user allowed to edit the
DAG's runs may answer, as in `make lifecycle`.
"""
from __future__ import annotations

import os


def approvers() -> list[str]:
    return [user.strip() for user in os.environ.get("PLANNER_APPROVERS", "").split(",") if user.strip()]


def task_policy(task) -> None:
    # By class name: importing the standard provider here, while airflow.settings loads this
    # module, would be a circular import.
    is_hitl = any(cls.__name__ == "HITLOperator" for cls in type(task).__mro__)
    users = approvers()
    if is_hitl and users and not getattr(task, "assigned_users", None):
        task.assigned_users = [{"id": user, "name": user} for user in users]

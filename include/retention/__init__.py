"""Storage retention: what the `planner_retention` DAG deletes, as plain functions (no Airflow import).

- `policy.py`: the ages per kind (`policy.json`) and their checks;
- `references.py`: every location something still needs (registered versions, champions, open runs);
- `plan.py`: `plan_removals` (pure over storage listings: what may go, and why each kept item stays)
  and `apply_removals` (deletes, or lists in a dry run).
"""
from __future__ import annotations

DAG_RETENTION = "planner_retention"

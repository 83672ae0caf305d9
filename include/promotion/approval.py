"""The approval step: Airflow's human-in-the-loop ApprovalOperator, keeping the answer.

On Reject the stock operator skips its downstream tasks before its return value is stored, so
nothing downstream could record who said no. This keeps every answer (who, what, when) as the
XCom `response` first.
"""
from __future__ import annotations

from airflow.providers.standard.operators.hitl import ApprovalOperator


class RecordedApprovalOperator(ApprovalOperator):
    def execute_complete(self, context, event):
        if "error" not in event:
            responded_at = event.get("responded_at")
            context["ti"].xcom_push(key="response", value={
                "chosen_options": list(event.get("chosen_options") or []),
                "responded_by_user": dict(event.get("responded_by_user") or {}),
                "responded_at": responded_at.isoformat() if hasattr(responded_at, "isoformat") else responded_at})
        return super().execute_complete(context=context, event=event)


def approver_of(response: dict | None) -> str | None:
    user = (response or {}).get("responded_by_user") or {}
    return user.get("name") or user.get("id")
